"""The analytic latency model against its own principle, as properties: no real GPU is involved.

NFP is set by kernel granularity, not by the FLOP/byte balance: a tiled GEMM is near-free up to its
M-tile, an MoE layer at batch one wakes new experts with every token, packed attention's NFP shrinks
with the GQA group, the idle-compute answer over-predicts by an order of magnitude, vendor GEMMs
switch tiles, and beyond the tiles time is linear in tokens and never beats the roofline. These check
that the model implements that reasoning consistently on every GPU spec; whether real GPUs agree is
what ``nfpsim-validate`` measures.
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
def test_a_tiled_gemm_has_the_nfp_of_its_m_tile_not_the_balance(hardware, block_m):
    preset = fixed_tile(load_kernels("triton"), block_m)
    r = report("llama3_8b", hardware, preset)
    constants = AnalyticLatencyModel(load_hardware(hardware), preset).constants
    # FLOP per weight byte the kernel can afford before compute binds, at its fitted efficiencies
    ridge = (constants.device.bf16_flop_per_s * constants.gemm.compute_efficiency
             / (constants.device.stream_bytes_per_s * constants.gemm.mem_efficiency))
    for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head"):
        op = r.ops[name]
        assert op.idle_nfp > 2 * block_m  # the balance says far more
        if block_m <= 0.6 * ridge:  # the padded tile stays memory-bound: the tile alone sets NFP
            assert op.nfp.nfp == block_m, name
        else:  # padded compute already near the ridge (A100 with 64-row tiles): never past the tile
            assert op.nfp.nfp <= block_m, name
    # at batch B the tile holds B*M tokens
    r4 = report("llama3_8b", hardware, fixed_tile(load_kernels("triton"), block_m), batch=4)
    assert r4.ops["gate_up_proj"].nfp.nfp == block_m // 4


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
    llama = load_model("llama3_8b")
    preset = load_kernels("triton")
    assert preset.attention.pack_gqa
    nfps = {}
    for kv_heads in (32, 16, 8, 4, 2):
        group = 32 // kv_heads
        nfps[group] = report(dc.replace(llama, num_kv_heads=kv_heads), kernels=preset).modules["attention"].nfp.nfp
        # the g*M packed rows of a KV head fill one query tile at M = block_q / g
        assert nfps[group] == max(1, preset.attention.block_q // group)
    assert list(nfps.values()) == sorted(nfps.values(), reverse=True)


@pytest.mark.parametrize("model", ["llama3_8b", "llama3_70b", "llada_8b", "qwen3_30b_a3b", "deepseek_v2_lite"])
def test_idle_compute_over_predicts_the_forward_by_an_order_of_magnitude(model):
    context = 2048
    r = report(model, context=context)
    assert r.forward.factor >= 10


def test_vendor_gemms_switch_kernels_and_a_larger_batch_can_be_faster():
    # Vidur's H100 profile of Llama-2-7B linears: 72 tokens slower than 128 (DESIGN.md section 5)
    latency = AnalyticLatencyModel(load_hardware("h100_sxm"), load_kernels("vendor"))
    llama = load_model("llama3_8b")

    def linears(tokens):
        b = latency.forward(llama, ForwardShape.uniform(tokens, 1, 0)).by_module()
        return b["qkv_proj"] + b["o_proj"] + b["ffn"]

    assert linears(72) > linears(128)
    assert linears(64) < 1.1 * linears(1)  # flat up to the first 64-row tile


def test_long_context_attention_dominates_at_large_batch():
    r = report("llama3_8b", batch=64, context=4096)
    shares = r.breakdown_at_1.by_module()
    assert shares["attention"] > shares["ffn"]  # 64 x 4096 cached tokens outweigh 16 GB of weights


@pytest.mark.parametrize("kernels", ["triton", "vendor"])
def test_beyond_the_tiles_gemm_time_is_linear_in_tokens_and_never_beats_the_roofline(kernels):
    latency = AnalyticLatencyModel(load_hardware("h100_sxm"), load_kernels(kernels))
    flop_rate = latency.constants.device.bf16_flop_per_s * latency.constants.gemm.compute_efficiency

    def cost(tokens):
        return latency.op_cost(Op("probe", "probe", GemmShape(tokens, 8192, 8192, 2)))

    big = cost(16384)
    assert big.time_s >= big.flops / flop_rate  # padded FLOPs at the fitted rate are a floor
    assert cost(32768).time_s / big.time_s == pytest.approx(2.0, rel=0.05)
    assert cost(1).bound == "memory"
