"""The per-kernel pricers: the parallel structure each kernel really has, checked as properties."""

import math

import pytest

from nfpsim.config import load_hardware, load_kernels
from nfpsim.latency.constants import LatencyConstants
from nfpsim.latency.pricing import price, pricer_key
from nfpsim.latency.pricing.attention import Call, fa2_num_splits, sdpa_backend
from nfpsim.latency.pricing.pointwise import REDUCTION_BYTES_PER_CTA
from nfpsim.shapes import AttentionShape, GemmShape, GroupedGemmShape, Op, PointwiseShape

H100 = load_hardware("h100_sxm")
VENDOR, TRITON = load_kernels("vendor"), load_kernels("triton")


def cost(shape, kernels=VENDOR, hardware=H100, constants=None):
    constants = constants or LatencyConstants.defaults(hardware, kernels)
    return price(Op("probe", "probe", shape), kernels, constants)


def attention(batch=1, positions=1, context=4096, q_heads=32, kv_heads=8, causal=False, mask=False, folded=True):
    return AttentionShape(batch, positions, context, q_heads, kv_heads, 128, 128, 256, causal, 2,
                          explicit_mask=mask, folded_gqa=folded)


# -- which backend torch SDPA picks -------------------------------------------------------------------

def test_sdpa_prefers_cudnn_on_hopper_and_flash_on_ampere():
    shape = attention(positions=4)
    assert sdpa_backend(shape, "sm90") == "cudnn"
    assert sdpa_backend(shape, "sm100") == "cudnn"
    assert sdpa_backend(shape, "sm80") == "flash"


def test_flash_refuses_masks_and_non_square_causal_calls():
    assert sdpa_backend(attention(positions=4, mask=True), "sm80") == "efficient"
    assert sdpa_backend(attention(positions=4, causal=True), "sm80") == "efficient"  # s_q != s_k
    square = AttentionShape(1, 64, 0, 32, 8, 128, 128, 256, True, 2)
    assert sdpa_backend(square, "sm80") == "flash"


def test_cudnn_needs_half_precision_and_aligned_head_dims():
    odd = AttentionShape(1, 4, 1024, 8, 8, 100, 100, 200, False, 2)
    assert sdpa_backend(odd, "sm90") == "flash"  # cuDNN wants multiples of 8; flash takes any <= 256
    fp8 = AttentionShape(1, 4, 1024, 8, 8, 128, 128, 256, False, 1)
    assert sdpa_backend(fp8, "sm90") == "efficient"


def test_vendor_preset_prices_the_backend_sdpa_picks():
    shape = attention(positions=4)
    assert pricer_key(Op("a", "attention", shape), VENDOR, "sm90") == "sdpa.cudnn"
    assert pricer_key(Op("a", "attention", shape), VENDOR, "sm80") == "sdpa.flash"
    assert pricer_key(Op("a", "attention", shape), TRITON, "sm90") == "attention"


# -- attention structure -----------------------------------------------------------------------------

def test_cudnn_is_flat_until_the_folded_rows_fill_its_128_row_tile():
    """One CTA per (sequence, KV head, 128-row tile): g*M rows of Llama-3-8B (g = 4) fill it at M = 32."""
    times = {m: cost(attention(positions=m)).time_s for m in (1, 8, 16, 32, 33, 64)}
    assert times[32] == pytest.approx(times[1], rel=0.02)
    assert times[33] > times[32]


def test_cudnn_without_split_kv_streams_a_long_context_slower_than_flash():
    """cuDNN runs one CTA per KV head over the whole context; FA2 splits the KV to fill the SMs."""
    long = attention(positions=1, context=65536)
    constants = LatencyConstants.defaults(H100, VENDOR)
    cudnn = cost(long, constants=constants)
    flash = price(Op("a", "a", long), _forced("flash"), constants)
    assert cudnn.time_s > 3 * flash.time_s


def test_decode_attention_at_serving_batch_is_bound_by_reading_the_kv_cache():
    """Batch 256 x 640 context: attention must cost about the KV-cache read, not padded compute."""
    shape = attention(batch=256, positions=2, context=640)
    kv_read_s = shape.cache_bytes / H100.stream_bytes_per_s
    assert kv_read_s <= cost(shape).time_s <= 2 * kv_read_s


def test_fa2_split_heuristic_fills_the_gpu_and_skips_equivalent_splits():
    assert fa2_num_splits(300, 264, 32) == 1  # enough blocks already
    splits = fa2_num_splits(8, 264, 32)
    assert 8 * splits / 264 > 0.8  # fills at least 80% of the slots
    # only split counts that change the blocks per split are eligible
    assert splits == 1 or math.ceil(32 / splits) != math.ceil(32 / (splits - 1))


def test_single_row_gqa_query_is_folded_by_flash():
    unfolded = attention(positions=1, folded=False)
    assert Call.of(unfolded).s_q == 1 and Call.of(attention(positions=1)).s_q == 4


# -- GEMM structure ----------------------------------------------------------------------------------

def test_concurrent_m_tiles_share_the_weights_through_l2():
    """Two 16-row tiles of one weight panel resident together read the weights from HBM once."""
    kernels = _fixed_tile(16)
    one, two = cost(GemmShape(16, 6144, 4096, 2), kernels), cost(GemmShape(32, 6144, 4096, 2), kernels)
    weight = 6144 * 4096 * 2
    assert two.bytes - one.bytes < 0.05 * weight


def test_large_gemms_run_near_the_matmul_ceiling():
    shape = GemmShape(8192, 8192, 8192, 2)
    achieved = shape.flops / cost(shape).time_s
    assert 0.6 * H100.matmul_flop_per_s("bf16") < achieved <= 1.25 * H100.matmul_flop_per_s("bf16")


def test_triton_host_picks_the_tile_per_token_count():
    assert TRITON.gemm.select(16).block_m == 16
    assert TRITON.gemm.select(17).block_m == 32
    assert TRITON.gemm.select(512).block_m == 128


def test_small_tiles_run_their_mma_slower():
    """Per FLOP, 16-row tiles cost more than 128-row tiles once compute-bound."""
    shape = GemmShape(1024, 6144, 4096, 2)
    assert cost(shape, _fixed_tile(16)).time_s > 2 * cost(shape, _fixed_tile(128)).time_s


# -- MoE and pointwise -------------------------------------------------------------------------------

def test_grouped_gemm_cost_follows_the_experts_woken():
    few = cost(GroupedGemmShape(8, 1536, 2048, 128, 2, active_groups=8))
    many = cost(GroupedGemmShape(64, 1536, 2048, 128, 2, active_groups=64))
    assert many.time_s > 4 * few.time_s


def test_tiny_pointwise_kernels_cost_their_launch():
    constants = LatencyConstants.defaults(H100, VENDOR)
    tiny = cost(PointwiseShape(16e3, 4096), constants=constants)
    assert tiny.bound == "launch"
    assert tiny.time_s == pytest.approx(constants.pointwise.launch_overhead_s, rel=0.2)
    big = cost(PointwiseShape(1e9, 2.5e8), constants=constants)
    assert big.time_s > 1e9 / H100.stream_bytes_per_s


def test_a_long_row_reduction_is_split_across_ctas_and_a_short_one_is_not():
    """Greedy sampling's argmax over a 128k vocabulary: torch's reduction spreads one long row over
    several CTAs, so it costs far less than one CTA streaming the row; a 4096-wide fp32 norm row stays
    one CTA's work."""
    constants = LatencyConstants.defaults(H100, VENDOR)
    launch_s, cta_rate = constants.pointwise.launch_overhead_s, constants.pointwise.cta_bytes_per_s
    row = 256_512  # Llama-3's 128,256 bf16 logits and the int64 index
    argmax = cost(PointwiseShape(row, 1, "reduction"), constants=constants)
    ctas = math.ceil(row / REDUCTION_BYTES_PER_CTA)  # 8: each CTA walks its share of the row
    assert ctas > 1
    assert argmax.time_s == pytest.approx(launch_s + row / (ctas * cta_rate), rel=0.1)
    norm_row = cost(PointwiseShape(16_388, 1, "reduction"), constants=constants)
    assert norm_row.time_s == pytest.approx(launch_s + 16_388 / cta_rate, rel=0.1)


def test_a_ctas_mask_rows_add_to_what_it_streams():
    """With an explicit mask each CTA also loads the bias rows of its query tile over its keys: a
    single-CTA call bound by one CTA's streaming grows by exactly the bias over the K/V it streams."""
    constants = LatencyConstants.defaults(H100, VENDOR)
    kc = constants.sdpa["efficient"]
    rows, keys = 64, 65536  # one 64-row tile of one head over a long context: one CTA streams it all
    plain, masked = (AttentionShape(1, rows, keys - rows, 1, 1, 128, 128, 256, False, 2, explicit_mask=m)
                     for m in (False, True))
    t_plain, t_masked = (price(Op("attention", "attention", shape), _forced("efficient"), constants).time_s
                         - kc.launch_overhead_s for shape in (plain, masked))
    kv = keys * 256 * 2
    bias = rows * keys * 2
    assert t_masked / t_plain == pytest.approx((kv + bias) / kv, rel=0.02)


def _fixed_tile(block_m: int):
    import dataclasses

    from nfpsim.config import GemmTile

    tile = {16: GemmTile(16, 64, 128, 1), 128: GemmTile(128, 128, 64, 1)}[block_m]
    return dataclasses.replace(TRITON, gemm=dataclasses.replace(TRITON.gemm, tiles=(tile,)))


def _forced(backend: str):
    import dataclasses

    return dataclasses.replace(VENDOR, attention=dataclasses.replace(VENDOR.attention, backend=backend))
