"""The NFP principle as properties of the model: tile granularity, expert wake-up, query tiles, glue.

These check the latency model against its own principle (what its structure must imply on every GPU),
not against measurements; the held-out comparison with real GPU timings is in tests/latency/test_fidelity.py.
"""

import dataclasses as dc

import pytest

from nfpsim.config import GemmTile, load_hardware, load_kernels, load_model
from nfpsim.latency import AnalyticLatencyModel
from nfpsim.nfp import analyze
from nfpsim.routing import expected_active_experts, inclusion_probabilities
from nfpsim.shapes import ForwardShape, GemmShape, Op

GPUS = ["h100_sxm", "h200", "a100_80g", "b200", "mi300x"]


def fixed_tile(preset, block_m, block_n=64, block_k=128):
    return dc.replace(preset, gemm=dc.replace(preset.gemm, tiles=(GemmTile(block_m, block_n, block_k),)))


def report(model, hardware="h100_sxm", kernels="triton", batch=1, context=4096, eps=0.1, **kw):
    preset = kernels if not isinstance(kernels, str) else load_kernels(kernels)
    model = model if not isinstance(model, str) else load_model(model)
    return analyze(AnalyticLatencyModel(load_hardware(hardware), preset), model,
                   batch=batch, context=context, eps=eps, **kw)


@pytest.mark.parametrize("hardware", GPUS)
@pytest.mark.parametrize("block_m", [16, 32, 64])
def test_a_tiled_gemm_has_the_nfp_of_a_few_m_tiles_not_the_balance(hardware, block_m):
    """The first M-tile is free; once the tokens need more tiles than can share the weights through L2 at
    the same time, every tile re-streams them. Real H100 Triton GEMMs reach NFP(0.1) of one or two
    M-tiles (two 16-row tiles resident together share a weight panel), against a balance of ~300."""
    preset = fixed_tile(load_kernels("triton"), block_m)
    r = report("llama3_8b", hardware, preset)
    for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head"):
        op = r.ops[name]
        assert op.idle_nfp > 2 * block_m  # the balance says far more
        assert op.nfp.nfp <= 4 * block_m, name
        assert op.idle_nfp >= 2 * op.nfp.nfp, name
    # at batch B the tile holds B*M tokens: the NFP in positions shrinks by B
    r4 = report("llama3_8b", hardware, fixed_tile(load_kernels("triton"), block_m), batch=4)
    assert r4.ops["gate_up_proj"].nfp.nfp <= max(1, r.ops["gate_up_proj"].nfp.nfp // 4 + 1)


@pytest.mark.parametrize("kernels", ["triton", "vendor"])
@pytest.mark.parametrize("model", ["qwen3_30b_a3b", "mixtral_8x7b", "deepseek_v2_lite"])
def test_an_moe_layer_at_batch_one_has_nfp_one(model, kernels):
    r = report(model, kernels=kernels)
    assert r.modules["experts"].nfp.nfp == 1
    assert r.modules["experts"].idle_nfp > 100  # idle compute would say hundreds


@pytest.mark.parametrize("kernels", ["triton", "vendor"])
def test_moe_nfp_grows_again_once_all_experts_are_awake(kernels):
    mixtral = load_model("mixtral_8x7b")
    q = inclusion_probabilities(8, 2, 0.0)
    batch = 16
    assert expected_active_experts(batch, q) > 7.9  # all 8 experts already awake at M=1
    assert report(mixtral, kernels=kernels, batch=batch).modules["experts"].nfp.nfp >= 3
    assert report(mixtral, kernels=kernels, batch=1).modules["experts"].nfp.nfp == 1


def test_packed_attention_nfp_shrinks_with_the_gqa_group():
    """With GQA packing the g*M rows of a KV head share a query tile: the more heads per KV head, the
    sooner extra positions cost (at batch 32 and a long context, attention is the whole story)."""
    llama = load_model("llama3_8b")
    preset = load_kernels("triton")
    assert preset.attention.pack_gqa
    nfps = {}
    for kv_heads in (32, 8, 2):
        group = 32 // kv_heads
        nfps[group] = report(dc.replace(llama, num_kv_heads=kv_heads), kernels=preset, batch=32,
                             context=8192).modules["attention"].nfp.nfp
    assert list(nfps.values()) == sorted(nfps.values(), reverse=True)
    assert nfps[1] > nfps[16]


def test_cudnn_attention_is_flat_while_its_query_tiles_fit_on_the_sms():
    """Eager SDPA folds the g query heads of a KV head into the rows of one call; cuDNN runs a CTA per
    (sequence, KV head, 128-row tile). At batch 1 (8 CTAs per tile) many tiles run side by side for free
    (H100: flat to M = 256); at batch 16 (128 CTAs) a second tile is a second wave of work."""
    tile = 128 // load_model("llama3_8b").gqa_group  # positions per 128-row tile
    single = report("llama3_8b", kernels="vendor", batch=1, context=4096, eps=0.05)
    serving = report("llama3_8b", kernels="vendor", batch=16, context=4096, eps=0.05)
    assert single.modules["attention"].nfp.nfp >= 4 * tile
    assert serving.modules["attention"].nfp.nfp <= 2 * tile


def test_eager_glue_launches_tens_of_kernels_per_layer():
    llama = load_model("llama3_8b")
    latency = AnalyticLatencyModel(load_hardware("h100_sxm"), load_kernels("vendor"))
    one = latency.decompose(llama, ForwardShape.uniform(1, 1, 4096))
    two = latency.decompose(llama, ForwardShape.uniform(1, 2, 4096))
    per_layer = sum(op.count for op in one if op.count % llama.num_layers == 0) / llama.num_layers
    assert 35 <= per_layer <= 42
    # the attention output copy (and the causal mask) appear only with several positions
    assert {op.name for op in two} - {op.name for op in one} >= {"attn_out_copy", "mask_fold"}


@pytest.mark.parametrize("model", ["llama3_8b", "llama3_70b", "llada_8b", "qwen3_30b_a3b", "deepseek_v2_lite"])
def test_idle_compute_over_predicts_the_forward_several_times(model):
    context = 2048
    r = report(model, context=context)
    assert r.forward.factor >= 5


def test_vendor_gemms_stay_flat_over_small_token_counts():
    """cuBLAS picks a kernel per shape: a Llama-3-8B layer's linears barely move from 1 to 64 tokens
    (H100 measurements: within a few percent)."""
    latency = AnalyticLatencyModel(load_hardware("h100_sxm"), load_kernels("vendor"))
    llama = load_model("llama3_8b")

    def linears(tokens):
        b = latency.forward(llama, ForwardShape.uniform(tokens, 1, 0)).by_module()
        return b["qkv_proj"] + b["o_proj"] + b["gate_up_proj"] + b["down_proj"]

    assert linears(64) < 1.1 * linears(1)
    assert linears(1024) > 2 * linears(1)


def test_long_context_attention_dominates_at_large_batch():
    r = report("llama3_8b", batch=64, context=4096)
    shares = r.breakdown_at_1.by_module()
    assert shares["attention"] > shares["ffn"]  # 64 x 4096 cached tokens outweigh 16 GB of weights


@pytest.mark.parametrize("kernels", ["triton", "vendor"])
def test_beyond_the_tiles_gemm_time_is_linear_in_tokens_and_never_beats_the_roofline(kernels):
    latency = AnalyticLatencyModel(load_hardware("h100_sxm"), load_kernels(kernels))
    flop_rate = latency.constants.device.bf16_flop_per_s * max(1.0, latency.constants.gemm.compute_efficiency)

    def cost(tokens):
        return latency.op_cost(Op("probe", "probe", GemmShape(tokens, 8192, 8192, 2)))

    big = cost(16384)
    assert big.time_s >= big.flops / flop_rate  # FLOPs at the fitted full-tile rate are a floor
    assert cost(32768).time_s / big.time_s == pytest.approx(2.0, rel=0.05)
    assert cost(1).bound == "memory"
