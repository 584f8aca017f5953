"""What one aten op launches on a CUDA GPU, and the op shape nfpsim prices it as.

:func:`classify` maps an op overload (with its real input and output tensors) to one of: free (a view,
an uninitialised allocation), an op shape of :mod:`nfpsim.shapes` (one kernel), or an error for the ops
whose output shape depends on tensor values, which ``meta`` tensors do not have. The counting rules are
listed in the package docstring (:mod:`nfpsim.capture`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from nfpsim.errors import ConfigError
from nfpsim.shapes import AttentionShape, GemmShape, GroupedGemmShape, OpShape, PointwiseShape

aten = torch.ops.aten


class CaptureError(ConfigError):
    """A forward cannot be captured on ``meta`` (a data-dependent op, a failing user function)."""


# Ops that never launch a kernel: views and aliases (metadata only), uninitialised allocations, and
# wrapped Python scalars (CUDA kernels take them as arguments).
_FREE = {
    "_unsafe_view", "_reshape_alias", "alias", "detach", "lift_fresh", "view_as_real", "view_as_complex",
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "empty_permuted",
    "scalar_tensor", "resize_", "set_", "record_stream", "_assert_async",
    "_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size", "_functional_assert_async",
    "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "is_same_size", "_has_compatible_shallow_copy_type",
    "_nested_tensor_from_tensor_list", "prim_layout", "set_grad_enabled",
}

# Ops writing their output without reading anything (a fill kernel).
_FILLS = {
    "zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "new_zeros", "new_ones", "new_full",
    "arange", "linspace", "logspace", "eye", "fill", "fill_", "zero_", "rand", "randn", "randint", "rand_like",
    "randn_like", "randint_like", "normal_", "uniform_", "random_", "bernoulli_", "exponential_", "randperm",
    "normal", "bernoulli", "multinomial",
}

_GATHERS = {"embedding", "index_select", "gather", "index", "take", "take_along_dim"}

_SCATTERS = {"index_put_", "index_put", "_index_put_impl_", "index_copy_", "index_copy", "index_add_", "index_add",
             "scatter_", "scatter", "scatter_add_", "scatter_add", "scatter_reduce_", "scatter_reduce", "index_fill_",
             "index_fill", "masked_scatter_", "masked_scatter"}

_KINDS = {
    "copy": {"_to_copy", "clone", "copy_", "copy", "contiguous", "lift_fresh_copy", "_copy_from",
             "_copy_from_and_resize", "repeat", "repeat_interleave", "expand_copy", "permute_copy", "t_copy",
             "transpose_copy", "view_copy", "slice_copy", "select_copy", "unsqueeze_copy", "squeeze_copy",
             "flip", "roll", "tile", "constant_pad_nd", "pad", "_pad_enum", "to", "narrow_copy", "diagonal_copy",
             "unfold_copy", "as_strided_copy", "alias_copy", "detach_copy", "split_with_sizes_copy",
             "unbind_copy", "pixel_shuffle", "channel_shuffle", "_to_dtype"},
    "softmax": {"_softmax", "_log_softmax", "_safe_softmax", "softmax", "log_softmax"},
    "topk": {"topk", "sort", "argsort", "kthvalue", "msort", "median", "mode"},
    "cat": {"cat", "stack", "hstack", "vstack", "concat", "concatenate", "_cat"},
    "reduction": {"native_layer_norm", "_fused_rms_norm", "native_group_norm", "native_batch_norm",
                  "_native_batch_norm_legit_no_training", "cumsum", "cumprod", "cummax", "cummin", "logcumsumexp",
                  "histc", "bincount", "aminmax", "var_mean", "std_mean", "_weight_norm_interface", "renorm",
                  "count_nonzero", "searchsorted", "bucketize", "one_hot", "tril_indices", "triu_indices"},
    "elementwise": {"tril", "triu", "masked_fill", "masked_fill_", "clamp", "clamp_", "lerp", "polar", "floor_divide",
                    "floor_divide_", "remainder", "fmod", "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not",
                    "logical_and", "logical_or", "logical_not", "logical_xor", "complex", "view_as_real_copy",
                    "_conj", "dropout", "native_dropout", "bernoulli_p", "fused_moving_avg_obs_fake_quant"},
}
_KIND_OF = {name: kind for kind, names in _KINDS.items() for name in names}

GEMMS = {"mm", "addmm", "bmm", "baddbmm", "mv", "addmv", "dot", "vdot", "_grouped_mm", "_scaled_mm",
         "_scaled_grouped_mm", "_int_mm", "addbmm", "outer", "ger", "_addmm_activation"}

ATTENTIONS = {"_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
              "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
              "_flash_attention_forward", "_efficient_attention_forward", "_scaled_dot_product_fused_attention_overrideable"}

COLLECTIVES = {"all_reduce", "all_reduce_", "allreduce_", "all_gather_into_tensor", "reduce_scatter_tensor",
               "_allgather_base_", "_reduce_scatter_base_", "all_to_all_single", "broadcast_", "all_gather"}


def op_name(func) -> str:
    """``aten.mul.Tensor`` -> ``mul``: the packet name (an overload's kernel is the packet's)."""
    return func.__name__.split(".")[0]


# ----------------------------------------------------------------------------------------------------
# Bytes
# ----------------------------------------------------------------------------------------------------


def tensors(value) -> Iterator[torch.Tensor]:
    """Every tensor in a (nested) argument or result."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors(item)


def footprint(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a kernel touches: a broadcast (stride-0) dimension is read once."""
    elements = 1
    for size, stride in zip(t.shape, t.stride()):
        if size == 0:
            return 0
        if stride != 0:
            elements *= size
    return elements * t.element_size()


def _numel(value) -> int:
    return sum(t.numel() for t in tensors(value))


def _bytes(value) -> int:
    return sum(footprint(t) for t in tensors(value))


@dataclass(frozen=True)
class Kernel:
    """What one aten op launches: ``shape`` for nfpsim to price, ``family`` to group it by."""

    family: str  # gemm, attention, pointwise, collective
    shape: OpShape


def _pointwise(bytes_: float, elements: float, kind: str) -> Kernel:
    return Kernel("pointwise", PointwiseShape(float(bytes_), float(elements), kind))


# ----------------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------------


def classify(func, args: tuple, kwargs: dict, out) -> Kernel | None:
    """The kernel ``func(*args, **kwargs) -> out`` launches, None when it launches none.

    Raises :class:`UnknownOp` for ops without a rule (the caller prices those generically and lists them).
    """
    name = op_name(func)
    tags = func.tags
    if name in _FREE or func.is_view:
        return None
    if name in GEMMS:
        return gemm_kernel(name, args, kwargs)
    if name in ATTENTIONS:
        return attention_kernel(func, args, kwargs)
    if name in COLLECTIVES:
        return None  # recorded by the caller, which knows the group size
    outputs = _bytes(out)
    elements = _numel(out) if not isinstance(out, (list, tuple)) else _numel(out[0])
    if name in _FILLS:
        return _pointwise(outputs, elements, "fill")
    if name in _GATHERS:
        return _gather(name, args, out, elements)
    if name in _SCATTERS:
        return _scatter(name, args, kwargs, out)
    if name in ("copy_", "_copy_from"):  # writes dst, reads src only
        return _pointwise(footprint(args[1]) + footprint(args[0]), args[0].numel(), "copy")
    kind = _KIND_OF.get(name)
    if kind is None:
        if torch.Tag.pointwise in tags:
            kind = "elementwise"
        elif torch.Tag.reduction in tags:
            kind = "reduction"
        else:
            raise UnknownOp(name)
    reads = _bytes(args) + _bytes({k: v for k, v in kwargs.items() if k != "out"})
    return _pointwise(reads + outputs, elements, kind)


class UnknownOp(Exception):
    """An op without a rule; ``args[0]`` names it."""


# Tagged dynamic-output because a boolean index selects a data-dependent count; integer indices do not.
_INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_", "_unsafe_index", "_unsafe_index_put"}


def is_data_dependent(func, args: tuple) -> bool:
    """Whether the op's output (shape or value on the host) depends on tensor values."""
    tags = func.tags
    if torch.Tag.data_dependent_output not in tags and torch.Tag.dynamic_output_shape not in tags:
        return False
    if op_name(func) in _INDEXING:
        return any(t.dtype in (torch.bool, torch.uint8) for t in tensors(args[1:2]))
    return True


def data_dependent(func) -> str:
    return (f"{func}: its output depends on tensor values (.item(), bool(tensor), nonzero, masked_select, "
            f"unique, boolean-mask indexing), which meta tensors do not have; make the forward's shapes static "
            f"(index with integer tensors, use torch.where, keep control flow off tensor values)")


def generic_kernel(args: tuple, kwargs: dict, out) -> Kernel:
    """An op without a rule: one memory-bound kernel reading its inputs and writing its outputs."""
    elements = _numel(out) if not isinstance(out, (list, tuple)) else _numel(out[:1])
    return _pointwise(_bytes(args) + _bytes(kwargs) + _bytes(out), elements, "elementwise")


def _gather(name: str, args: tuple, out, elements: int) -> Kernel:
    """Reads the indices and, from the source, as many elements as it writes."""
    index_bytes = sum(footprint(t) for t in tensors(args[1:]) if not t.is_floating_point())
    return _pointwise(index_bytes + 2 * _bytes(out), elements, "gather")


def _scatter(name: str, args: tuple, kwargs: dict, out) -> Kernel:
    """Reads the indices and the values, writes the region they land in (reading it first when it
    accumulates); an out-of-place variant also copies the whole tensor."""
    target, base = args[0], name.rstrip("_")
    index_pos, value_pos = {"index_put": (1, 2), "_index_put_impl": (1, 2), "masked_scatter": (1, 2)}.get(base, (2, 3))
    indices = list(tensors(args[index_pos] if len(args) > index_pos else ()))
    values = list(tensors(args[value_pos] if len(args) > value_pos else ()))
    if base in ("index_put", "_index_put_impl"):
        region = _indexed_elements(target, args[1])
        accumulate = bool(args[3] if len(args) > 3 else kwargs.get("accumulate", False))
    else:
        region = max([t.numel() for t in values + indices] or [0])
        if base == "index_fill":
            region = indices[0].numel() * target.numel() // max(1, target.shape[args[1]] if target.dim() else 1)
        accumulate = base in ("index_add", "scatter_add", "scatter_reduce")
    written = region * target.element_size()
    bytes_ = sum(footprint(t) for t in indices + values) + written * (2 if accumulate else 1)
    if not name.endswith("_"):
        bytes_ += footprint(target) + _bytes(out)
    return _pointwise(bytes_, region, "scatter")


def _indexed_elements(target: torch.Tensor, indices) -> int:
    """Elements ``target[indices]`` selects (integer indices broadcast together; None keeps a dim)."""
    index_shapes = [t.shape for t in indices if t is not None]
    elements = 1
    for size in torch.broadcast_shapes(*index_shapes) if index_shapes else ():
        elements *= size
    for dim, size in enumerate(target.shape):
        if dim >= len(indices) or indices[dim] is None:
            elements *= size
    return elements


# ----------------------------------------------------------------------------------------------------
# GEMMs and attention
# ----------------------------------------------------------------------------------------------------


def gemm_kernel(name: str, args: tuple, kwargs: dict) -> Kernel:
    mats = [t for t in tensors(args) if t.dim() >= 1]
    if name in ("addmm", "baddbmm", "addmv", "addbmm", "_addmm_activation"):
        mats = mats[1:3]  # the bias is read in the epilogue
    a, b = mats[0], mats[1]
    s = a.element_size()
    if name in ("_grouped_mm", "_scaled_grouped_mm") and a.dim() == 2 and b.dim() == 3:
        return Kernel("gemm", GroupedGemmShape(a.shape[0], b.shape[-1], a.shape[1], b.shape[0], s))
    if name in ("mv", "addmv"):
        return Kernel("gemm", GemmShape(1, a.shape[0], a.shape[1], s))
    if name in ("dot", "vdot"):
        return Kernel("gemm", GemmShape(1, 1, a.shape[0], s))
    if name in ("outer", "ger"):
        return Kernel("gemm", GemmShape(a.shape[0], b.shape[0], 1, s))
    if a.dim() == 3 and b.dim() == 3:  # bmm: a [batch, T, K] x b [batch, K, N]
        batch, tokens, k, n = a.shape[0], a.shape[1], a.shape[2], b.shape[2]
        if b.stride(0) == 0 or batch == 1:  # one weight broadcast over the batch: one GEMM of batch*T rows
            return Kernel("gemm", GemmShape(batch * tokens, n, k, s))
        return Kernel("gemm", GemmShape(tokens, n, k, s, batch))
    return Kernel("gemm", GemmShape(a.shape[-2] if a.dim() > 1 else 1, b.shape[-1], a.shape[-1], s))


def sdpa_shape(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, masked: bool) -> AttentionShape:
    """One SDPA call exactly as called: ``q [..., Hq, Sq, D]``, ``k [..., Hkv, Sk, D]``, ``v [..., Hkv, Sk, Dv]``."""
    batch = 1
    for size in q.shape[:-3]:
        batch *= size
    q_heads = q.shape[-3] if q.dim() >= 3 else 1
    kv_heads = k.shape[-3] if k.dim() >= 3 else 1
    s_q, s_k = q.shape[-2], k.shape[-2]
    qk_dim, v_dim = q.shape[-1], v.shape[-1]
    # context = s_k - s_q keeps kv_len = s_k exact (it is negative for a GQA-folded call over a short cache)
    return AttentionShape(batch, s_q, s_k - s_q, q_heads, kv_heads, qk_dim, v_dim, qk_dim + v_dim,
                          bool(causal), q.element_size(), explicit_mask=bool(masked))


def attention_kernel(func, args: tuple, kwargs: dict) -> Kernel:
    """The backend ops SDPA dispatches to, called directly by some code: ``(q, k, v, ...)`` by schema name."""
    named = {a.name: v for a, v in zip(func._schema.arguments, args)} | kwargs
    q, k, v = args[0], args[1], args[2]
    if op_name(func) in ("_flash_attention_forward", "_efficient_attention_forward"):  # [B, S, H, D] layout
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    causal = bool(named.get("is_causal", False)) or bool(named.get("custom_mask_type") or 0)
    masked = any(isinstance(named.get(key), torch.Tensor) for key in ("attn_bias", "attn_mask", "bias"))
    return Kernel("attention", sdpa_shape(q, k, v, causal, masked))
