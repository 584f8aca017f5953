"""The serving preset: per-token fused kernels, paged attention, CUDA-graph batch padding."""

import dataclasses

import pytest

from nfpsim.config import KernelPreset, load_group, load_hardware, load_kernels, load_model
from nfpsim.errors import ConfigError
from nfpsim.latency import AnalyticLatencyModel
from nfpsim.latency.base import cuda_graph_padding
from nfpsim.latency.constants import LatencyConstants
from nfpsim.latency.pricing import price, pricer_key
from nfpsim.latency.pricing.pointwise import ROW_THREADS, THREADS_PER_SM
from nfpsim.shapes import AttentionShape, ForwardShape, Op, PointwiseShape, SeqGroup

H100, A100 = load_hardware("h100_sxm"), load_hardware("a100_80g")
SERVING, VENDOR = load_kernels("serving"), load_kernels("vendor")
LLAMA = load_model("llama3_8b")


def cost(shape, kernels=SERVING, hardware=H100):
    return price(Op("probe", "probe", shape), kernels, LatencyConstants.defaults(hardware, kernels))


# -- fused per-token kernels ----------------------------------------------------------------------------

def test_each_fused_kernel_has_its_own_constants():
    keys = {kind: pricer_key(Op("x", "pointwise", PointwiseShape(1e4, 1e4, kind, 1)), SERVING, "sm90")
            for kind in ("norm", "add_norm", "rotary", "act")}
    assert keys == {k: f"pointwise.{k}" for k in keys}
    assert pricer_key(Op("x", "pointwise", PointwiseShape(1e4, 1e4)), SERVING, "sm90") == "pointwise"


def test_a_decode_row_runs_at_one_ctas_rate():
    """One token: launch + the row at one CTA's streaming rate, far slower than HBM would allow."""
    kc = LatencyConstants.defaults(H100, SERVING).kernel("pointwise.act")
    row_bytes = 3 * 14336 * 2
    expected = kc.launch_overhead_s + row_bytes / kc.cta_bytes_per_s
    assert cost(PointwiseShape(row_bytes, 14336, "act", 1)).time_s == pytest.approx(expected)
    assert row_bytes / kc.cta_bytes_per_s > 10 * row_bytes / H100.stream_bytes_per_s


def test_a_decode_batch_of_rows_costs_what_one_row_costs():
    """Every row has its own CTA: while they all fit on the SMs and HBM is not the bound, more tokens take
    no longer; once they queue, the time grows with them."""
    slots = H100.num_sms * THREADS_PER_SM // ROW_THREADS["norm"]
    row = 2 * 4096 * 2
    one, batch = (cost(PointwiseShape(row * t, 4096 * t, "norm", t)).time_s for t in (1, 32))
    assert batch == pytest.approx(one)
    assert cost(PointwiseShape(row * 4 * slots, 4096 * 4 * slots, "norm", 4 * slots)).time_s > 2 * one


def test_fused_glue_ops_carry_their_rows():
    ops = {op.name: op.shape for op in SERVING_MODEL().decompose(LLAMA, ForwardShape.uniform(5, 2, 100))}
    for name, kind in (("add_norm", "add_norm"), ("rope_kv_write", "rotary"), ("act_mul", "act"),
                       ("final_norm", "norm")):
        assert ops[name].kind == kind and ops[name].rows == 16  # 5 sequences x 2 positions, padded to 16


def SERVING_MODEL(kernels=SERVING, hardware=H100):
    return AnalyticLatencyModel(hardware, kernels)


# -- paged attention ------------------------------------------------------------------------------------

def paged(batch=8, positions=1, context=1000, causal=False):
    return AttentionShape(batch, positions, context, 32, 8, 128, 128, 256, causal, 2)


def with_page(page):
    return dataclasses.replace(SERVING, attention=dataclasses.replace(SERVING.attention, page_size=page))


def test_paged_attention_reads_whole_pages():
    kernels = with_page(16)
    # 1000 + 1 keys and 1007 + 1 keys both fill 63 pages; 1008 + 1 needs a 64th
    assert cost(paged(context=1000), kernels).bytes == cost(paged(context=1007), kernels).bytes
    assert cost(paged(context=1008), kernels).bytes > cost(paged(context=1007), kernels).bytes
    assert cost(paged(context=1000), with_page(256)).bytes > cost(paged(context=1000), kernels).bytes


def test_paged_attention_is_priced_with_the_flash_constants():
    assert pricer_key(Op("attention", "attention", paged()), SERVING, "sm90") == "sdpa.flash"


def test_paged_decode_with_page_one_is_flash_decode():
    """One position, one-token pages: exactly FlashAttention's GQA-packed split-KV decode."""
    flash = dataclasses.replace(SERVING, attention=dataclasses.replace(SERVING.attention, backend="flash"))
    shape = dataclasses.replace(paged(batch=4, context=8191), folded_gqa=False)
    assert cost(shape, with_page(1)).time_s == pytest.approx(cost(shape, flash).time_s)


def test_multi_position_attention_packs_the_group_into_rows():
    """A verify block of M positions over a long context reads each KV head once: it costs about what a
    one-position decode costs, not M times more."""
    one, eight = cost(paged(batch=16, context=8192)).time_s, cost(paged(batch=16, positions=8, context=8192,
                                                                        causal=True)).time_s
    assert one <= eight < 1.5 * one


# -- CUDA-graph padding ---------------------------------------------------------------------------------

SIZES = (1, 2, 4, 8, 16)


@pytest.mark.parametrize("batch,pad", [(1, 0), (3, 1), (5, 3), (9, 7), (16, 0), (17, 0)])
def test_decode_batches_pad_to_the_next_captured_size(batch, pad):
    assert cuda_graph_padding(ForwardShape.uniform(batch, 1, 100), SIZES) == pad


def test_multi_position_forwards_pad_to_a_size_that_holds_whole_sequences():
    # 3 sequences x 4 positions = 12 tokens: the 16-token graph holds 4 sequences
    assert cuda_graph_padding(ForwardShape.uniform(3, 4, 100), SIZES) == 1
    # 3 x 3 = 9 tokens: 16 is no multiple of 3, nothing captured holds it
    assert cuda_graph_padding(ForwardShape.uniform(3, 3, 100), SIZES) == 0


def test_forwards_with_a_prefill_chunk_or_no_sizes_are_not_padded():
    mixed = ForwardShape((SeqGroup(3, 1, 100), SeqGroup(1, 64, 0, scored=1)))
    assert cuda_graph_padding(mixed, SIZES) == 0
    assert cuda_graph_padding(ForwardShape.uniform(3, 1, 100), ()) == 0


def test_padding_runs_the_gemms_at_the_padded_size_and_attention_at_the_real_one():
    model = SERVING_MODEL()
    ops = {op.name: op.shape for op in model.decompose(LLAMA, ForwardShape.uniform(5, 1, 2048))}
    assert ops["qkv_proj"].tokens == 8 and ops["down_proj"].tokens == 8
    assert ops["attention"].num_seqs == 5 and ops["lm_head"].tokens == 5
    # the names are those of the unpadded forward
    unpadded = {op.name for op in AnalyticLatencyModel(H100, VENDOR).decompose(LLAMA, ForwardShape.uniform(5, 1, 2048))}
    assert {"qkv_proj", "attention", "o_proj", "lm_head"} <= unpadded & set(ops)


def test_a_padded_batch_costs_the_captured_batch_minus_its_empty_attention():
    """Batches 5 and 8 replay the same graph: only attention over the real sequences differs."""
    model = SERVING_MODEL()
    five, eight = (model.forward(LLAMA, ForwardShape.uniform(b, 1, 2048)).by_op() for b in (5, 8))
    for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "add_norm", "act_mul"):
        assert five[name] == eight[name]
    assert five["attention"] < eight["attention"]
    unpadded = dataclasses.replace(SERVING, cuda_graph_batch_sizes=())
    assert SERVING_MODEL(unpadded).forward_time(LLAMA, ForwardShape.uniform(5, 1, 2048)) < \
        model.forward_time(LLAMA, ForwardShape.uniform(5, 1, 2048))


# -- the preset's settings ------------------------------------------------------------------------------

def test_serving_preset_captures_vllms_default_sizes():
    sizes = SERVING.cuda_graph_batch_sizes
    assert sizes[:4] == (1, 2, 4, 8) and sizes[-1] == 512
    assert all(b - a == 8 for a, b in zip(sizes[3:], sizes[4:]))
    assert SERVING.attention.page_size == 16
    assert VENDOR.cuda_graph_batch_sizes == () and VENDOR.attention.page_size == 0


@pytest.mark.parametrize("sizes,message", [([1, 4, 2], "strictly increasing"), ([0, 8], ">= 1"),
                                           ("8", "list of positive integers")])
def test_bad_capture_sizes_name_the_key(sizes, message):
    data = {**load_group("kernels", "serving"), "cuda_graph_batch_sizes": sizes}
    with pytest.raises(ConfigError, match=f"cuda_graph_batch_sizes.*{message}"):
        KernelPreset.from_config(data)


def test_bad_page_size_names_the_key():
    data = load_group("kernels", "serving")
    data["attention"] = {**data["attention"], "page_size": 0}
    with pytest.raises(ConfigError, match="kernels.attention.page_size"):
        KernelPreset.from_config(data)


def test_chunked_prefill_over_pages_skips_the_masked_half():
    """A prefill chunk over its own keys only (no prefix): the causal kernel skips the key blocks above
    the diagonal, about half the work of a bidirectional block; a cached prefix adds its full share."""
    causal, full = (cost(paged(batch=1, positions=2048, context=0, causal=c)).flops for c in (True, False))
    assert 0.45 < causal / full < 0.55
    with_prefix = cost(paged(batch=1, positions=2048, context=2048, causal=True)).flops
    assert with_prefix / causal == pytest.approx((2048 + 1024.5) / 1024.5, rel=0.05)
