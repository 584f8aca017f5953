"""Capture on hand-worked forwards: which kernels an op launches and how many bytes each moves."""

import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

import nfpsim
from nfpsim.capture import CaptureError, CaptureWarning, OpGraph
from nfpsim.errors import ConfigError
from nfpsim.shapes import AttentionShape, GemmShape, GroupedGemmShape, PointwiseShape

BF16 = torch.bfloat16


def meta(*shape, dtype=BF16):
    return torch.empty(shape, dtype=dtype, device="meta")


def eager(batch: int, positions: int, context: int) -> OpGraph:
    from examples.llama_eager import builder

    fn, args = builder(batch, positions, context)
    return nfpsim.capture(fn, *args)


def atens(graph: OpGraph) -> list[str]:
    return [c.aten for c in graph.ops]


def test_views_are_free_and_a_linear_on_a_contiguous_input_is_one_mm():
    x, w = meta(2, 3, 64), meta(128, 64)
    graph = nfpsim.capture(lambda: F.linear(x.view(6, 64).view(2, 3, 64).transpose(0, 1).transpose(0, 1), w))
    assert atens(graph) == ["mm"]
    assert graph.ops[0].op.shape == GemmShape(6, 128, 64, 2)


def test_a_non_contiguous_reshape_is_a_copy_of_its_bytes():
    x = meta(4, 8, 16)
    graph = nfpsim.capture(lambda: x.transpose(0, 1).reshape(32, 16))
    assert atens(graph) == ["clone"]
    shape = graph.ops[0].op.shape
    assert shape == PointwiseShape(2 * 4 * 8 * 16 * 2, 4 * 8 * 16, "copy")  # read + write, bf16
    assert nfpsim.capture(lambda: x.reshape(32, 16)).ops == ()  # viewable: free


def test_matmul_of_a_non_contiguous_3d_input_is_one_gemm_over_the_broadcast_weight():
    x, w = meta(3, 2, 64).transpose(0, 1), meta(128, 64)  # [2, 3, 64], not contiguous
    graph = nfpsim.capture(lambda: F.linear(x, w))
    assert atens(graph) == ["bmm"]
    assert graph.ops[0].op.shape == GemmShape(6, 128, 64, 2)  # one weight read, 6 rows


def test_bmm_with_its_own_right_operands_is_a_batched_gemm():
    a, b = meta(4, 5, 32), meta(4, 32, 16)
    graph = nfpsim.capture(torch.bmm, a, b)
    assert graph.ops[0].op.shape == GemmShape(5, 16, 32, 2, batch=4)


def test_sdpa_is_one_attention_kernel_exactly_as_called():
    q, k = meta(2, 32, 4, 128), meta(2, 8, 4100, 128)
    graph = nfpsim.capture(lambda: F.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True))
    assert atens(graph) == ["sdpa"]
    assert graph.ops[0].op.shape == AttentionShape(2, 4, 4096, 32, 8, 128, 128, 256, True, 2)
    assert graph.ops[0].family == "attention"
    mask = meta(4, 4100, dtype=torch.bool)
    masked = nfpsim.capture(lambda: F.scaled_dot_product_attention(q, k, k, attn_mask=mask, enable_gqa=True))
    assert atens(masked) == ["full", "where", "sdpa"]  # the boolean mask made additive (cuDNN does not pad it)
    assert masked.ops[-1].op.shape.explicit_mask and not masked.ops[-1].op.shape.causal


def test_sdpa_with_a_causal_bias_object_is_causal_and_masked_only_when_it_needs_a_mask():
    """(A CausalBias cannot be created under a dispatch mode, a torch limitation: it is passed in.)"""
    from torch.nn.attention.bias import causal_lower_right, causal_upper_left

    q, k = meta(1, 8, 4, 64), meta(1, 8, 100, 64)
    sdpa = lambda bias: F.scaled_dot_product_attention(q, k, k, attn_mask=bias)  # noqa: E731
    lower = nfpsim.capture(sdpa, causal_lower_right(4, 100)).ops[-1].op.shape
    assert lower.causal and lower.explicit_mask  # memory-efficient attention with its lower-right mask
    upper = nfpsim.capture(sdpa, causal_upper_left(4, 100)).ops[-1].op.shape
    assert upper.causal and not upper.explicit_mask  # flash with is_causal


def test_sdpa_backend_ops_called_directly_count_the_same():
    q, k = meta(1, 8, 4, 64), meta(1, 8, 100, 64)
    bias = meta(1, 8, 4, 100)
    flash = nfpsim.capture(lambda: torch.ops.aten._scaled_dot_product_flash_attention(q, k, k, 0.0, True))
    assert flash.ops[0].op.shape == AttentionShape(1, 4, 96, 8, 8, 64, 64, 128, True, 2)
    efficient = nfpsim.capture(
        lambda: torch.ops.aten._scaled_dot_product_efficient_attention(q, k, k, bias, False, 0.0, False))
    assert efficient.ops[0].op.shape == AttentionShape(1, 4, 96, 8, 8, 64, 64, 128, False, 2, explicit_mask=True)


def test_a_mask_costs_what_sdpa_does_to_it_before_a_fused_backend():
    """A boolean mask is made additive (a 0-d fill and a where); cuDNN, torch's choice for masked calls on
    Hopper, takes ragged rows as they are (only memory-efficient attention would pad them)."""
    q = meta(1, 8, 4, 64)
    sdpa = lambda k, mask: F.scaled_dot_product_attention(q, k, k, attn_mask=mask)  # noqa: E731
    aligned, ragged = meta(1, 8, 104, 64), meta(1, 8, 100, 64)
    assert atens(nfpsim.capture(sdpa, aligned, meta(4, 104, dtype=torch.bool))) == ["full", "where", "sdpa"]
    assert atens(nfpsim.capture(sdpa, ragged, meta(4, 100, dtype=torch.bool))) == ["full", "where", "sdpa"]
    assert atens(nfpsim.capture(sdpa, aligned, meta(4, 104))) == ["sdpa"]  # additive already: as is


def test_sdpa_output_layout_follows_the_cuda_kernels():
    """Flash writes in q's layout: q from a [B, S, H, D] projection gives an output whose
    transpose(1, 2).contiguous() is free; a contiguous [B, H, S, D] q makes that a real copy."""
    q_bshd = meta(1, 4, 8, 64).transpose(1, 2)
    free = nfpsim.capture(lambda: F.scaled_dot_product_attention(q_bshd, q_bshd, q_bshd).transpose(1, 2).contiguous())
    assert atens(free) == ["sdpa"]
    q_bhsd = meta(1, 8, 4, 64)
    copied = nfpsim.capture(lambda: F.scaled_dot_product_attention(q_bhsd, q_bhsd, q_bhsd).transpose(1, 2).contiguous())
    assert atens(copied) == ["sdpa", "clone"]


def test_fp32_upcast_rmsnorm_counts_its_casts_at_four_bytes():
    x, w = meta(4, 64), meta(64)

    def rms(x):
        x32 = x.float()
        return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype)

    graph = nfpsim.capture(rms, x)
    assert atens(graph) == ["_to_copy", "pow", "mean", "add", "rsqrt", "mul", "_to_copy", "mul"]
    by_aten = {c.aten: c.op.shape for c in graph.ops}
    assert by_aten["pow"].bytes == 2 * 4 * 64 * 4  # fp32 in, fp32 out
    assert by_aten["mean"].bytes == 4 * 64 * 4 + 4 * 4 and by_aten["mean"].kind == "reduction"
    assert graph.ops[0].op.shape.bytes == 4 * 64 * (2 + 4)  # bf16 read, fp32 written
    assert nfpsim.capture(lambda: F.rms_norm(x, (64,), w)).ops[0].aten == "rms_norm"  # fused on CUDA


def test_in_place_ops_read_and_write_their_target_and_broadcasts_are_read_once():
    x, bias = meta(8, 64), meta(64)
    graph = nfpsim.capture(lambda: x.add_(bias))
    assert graph.ops[0].op.shape.bytes == 8 * 64 * 2 * 2 + 64 * 2
    expanded = nfpsim.capture(lambda: x * bias.expand(8, 64))
    assert expanded.ops[0].op.shape.bytes == 8 * 64 * 2 * 2 + 64 * 2


def test_cat_gather_scatter_and_fills():
    a, b = meta(4, 16), meta(4, 48)
    assert nfpsim.capture(torch.cat, [a, b], -1).ops[0].op.shape == PointwiseShape(2 * 4 * 64 * 2, 4 * 64, "cat")
    table, ids = meta(1000, 32), meta(2, 3, dtype=torch.long)
    gather = nfpsim.capture(F.embedding, ids, table).ops[0].op.shape
    assert gather == PointwiseShape(6 * 8 + 2 * 6 * 32 * 2, 6 * 32, "gather")  # the rows it reads, not the table
    cache, new = meta(2, 100, 8), meta(2, 3, 8)

    def write():
        cache[:, 10:13] = new  # slice + copy_
        cache.index_copy_(1, torch.arange(3), new)
        rows = torch.arange(2)[:, None].expand(2, 3)
        cache[rows, torch.arange(3)[None, :]] = new  # index_put_

    graph = nfpsim.capture(write)
    kernels = {c.aten: c.op.shape for c in graph.ops}
    assert kernels["copy_"].bytes == 2 * 48 * 2
    assert kernels["index_copy_"].bytes == 3 * 8 + 2 * 48 * 2  # the index, the values, the region written
    assert kernels["index_put_"].bytes == 2 * 8 + 3 * 8 + 2 * 48 * 2  # rows read once (broadcast)
    assert kernels["arange"].kind == "fill" and "empty" not in kernels
    assert nfpsim.capture(lambda: torch.empty(10, 10)).ops == ()


def test_grouped_mm_is_one_grouped_gemm():
    x, w = meta(24, 64), meta(8, 64, 32)
    offsets = torch.empty(8, dtype=torch.int32, device="meta")
    graph = nfpsim.capture(lambda: torch._grouped_mm(x, w, offs=offsets))
    assert graph.ops[0].op.shape == GroupedGemmShape(24, 32, 64, 8, 2)


def test_data_dependent_ops_fail_with_one_clear_line():
    x = meta(4)
    with pytest.raises(CaptureError, match="nonzero.*depends on tensor values"):
        nfpsim.capture(lambda: x.nonzero())
    with pytest.raises(CaptureError, match="_local_scalar_dense"):
        nfpsim.capture(lambda: x.sum().item())


def test_an_op_without_a_rule_warns_once_and_is_listed_and_priced():
    x = meta(4, 8, 8, 8)
    w = meta(4, 8, 3, 3)
    with pytest.warns(CaptureWarning, match="convolution") as record:
        graph = nfpsim.capture(lambda: (F.conv2d(x, w), F.conv2d(x, w)))
    assert len([r for r in record if "convolution" in str(r.message)]) == 1
    assert graph.unpriced == ("convolution",)
    assert len(graph.ops) == 2 and graph.ops[0].op.shape.bytes > 0


def test_code_written_for_cuda_runs_on_meta():
    def forward(x):
        mask = torch.ones(4, 4, device="cuda", dtype=torch.bool)
        y = x.cuda() * 2
        return y.to("cuda:0", torch.float32).masked_fill(mask, 0.0)

    graph = nfpsim.capture(forward, meta(4, 4))
    assert atens(graph) == ["ones", "mul", "_to_copy", "masked_fill"]


def test_a_failing_function_is_one_capture_error_naming_it():
    def broken(x):
        raise ValueError("shapes do not match\nsecond line")

    with pytest.raises(CaptureError, match=r"broken failed on meta tensors: ValueError: shapes do not match$"):
        nfpsim.capture(broken, meta(2))


def test_module_paths_map_to_nfp_modules():
    from examples.llama_eager import Decoder
    from nfpsim.config import ModelSpec

    spec = ModelSpec("tiny", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16, ffn_size=128,
                     vocab_size=100, max_context=64)
    with torch.device("meta"):
        decoder = Decoder(spec)
    caches = [(meta(1, 2, 10, 16), meta(1, 2, 10, 16)) for _ in range(2)]
    graph = nfpsim.capture(decoder, meta(1, 2, dtype=torch.long), caches, 8)
    modules = {c.op.module for c in graph.ops}
    assert modules == {"embedding", "qkv_proj", "attention", "o_proj", "ffn", "lm_head", "pointwise"}
    gemms = [(c.op.module, c.op.shape.n) for c in graph.ops if c.family == "gemm"]
    assert gemms[:6] == [("qkv_proj", 64), ("qkv_proj", 32), ("qkv_proj", 32), ("o_proj", 64), ("ffn", 128),
                         ("ffn", 128)]
    assert gemms[-1] == ("lm_head", 100)


def test_time_is_the_sum_of_the_rows_and_merging_changes_nothing():
    graph = eager(1, 3, 256)
    latency = nfpsim.latency_model(hardware="h200", kernels="vendor")
    rows = graph.table(latency)
    assert len(rows) == len(graph.ops)
    assert graph.time(latency) == pytest.approx(sum(r.seconds for r in rows), rel=1e-12)
    merged = graph.merged()
    assert len(merged.ops) < len(graph.ops) / 10 and merged.num_kernels == graph.num_kernels
    assert merged.time(latency) == pytest.approx(graph.time(latency), rel=1e-9)
    for family, totals in graph.by_family().items():
        assert merged.by_family()[family] == pytest.approx(totals)


def test_more_positions_cost_more_and_the_weights_stay_read_once():
    small, large = eager(1, 1, 1024), eager(1, 256, 1024)
    latency = nfpsim.latency_model(hardware="h100_sxm", kernels="vendor", latency="analytic")
    assert large.time(latency) > small.time(latency)
    weights = lambda g: sum(c.op.shape.weight_bytes for c in g.ops if c.family == "gemm")  # noqa: E731
    assert weights(small) == weights(large) > 15e9  # ~8B parameters in bf16, read once at any M


def test_latency_model_rejects_bad_names_listing_the_allowed_ones():
    with pytest.raises(ConfigError, match="hardware=h300.*allowed:.*h200"):
        nfpsim.latency_model(hardware="h300")
    with pytest.raises(ConfigError, match="kernels=cudnn.*allowed:.*vendor"):
        nfpsim.latency_model(kernels="cudnn")
    with pytest.raises(ConfigError, match="latency=fast.*analytic"):
        nfpsim.latency_model(latency="fast")
    assert nfpsim.latency_model(hardware="h200", kernels="triton", latency="analytic").kind == "analytic"


def test_importing_nfpsim_stays_free_of_torch():
    code = "import sys, nfpsim; assert 'torch' not in sys.modules; assert callable(nfpsim.capture)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_capture_warns_nothing_on_the_example_forward():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        graph = eager(2, 4, 64)
    assert graph.unpriced == ()
