"""Capture: price any PyTorch forward from the kernels it really launches.

``nfpsim.capture(fn, *args, **kwargs)`` runs ``fn`` once on ``meta`` tensors (shapes, dtypes and strides,
no data, no memory for weights) and records every kernel an eager CUDA run of it would launch, as the
op shapes of :mod:`nfpsim.shapes`; :meth:`OpGraph.time` prices them with a latency model as one CUDA
graph (the sum of the kernels' times), :meth:`OpGraph.table` row by row.

Tensors created inside ``fn`` without a device land on ``meta``; tensor arguments on another device are
moved to ``meta``. Modules passed in (or ``fn`` itself, or its ``self``) must hold ``meta`` parameters
(build them under ``with torch.device("meta"):``).

Counting rules (what eager CUDA launches, per aten op after autograd and composite decompositions):

- **Free**: views and aliases (``view``, ``reshape`` when viewable, ``transpose``, ``permute``, ``expand``,
  ``slice``, ``select``, ``[un]squeeze``, ``_unsafe_view``, ``alias``, ``as_strided``, ``detach``),
  uninitialised allocations (``empty``, ``empty_like``, ``empty_strided``) and wrapped Python scalars.
- **GEMMs** (family ``gemm``): ``mm``, ``addmm`` (bias in the epilogue), ``bmm``/``baddbmm`` (a batched
  GEMM; a right operand broadcast over the batch, as ``matmul`` of a non-contiguous 3-D input by a
  weight produces, is one GEMM of ``batch*T`` rows), ``mv``, ``_scaled_mm``; ``_grouped_mm`` of 2-D rows
  by 3-D per-group weights is a :class:`~nfpsim.shapes.GroupedGemmShape`. ``linear``/``matmul`` are
  recorded as what they decompose into: ``mm`` on a view for a contiguous input, ``bmm`` or a copy plus
  ``mm`` otherwise.
- **Attention** (family ``attention``): one ``F.scaled_dot_product_attention`` call is one kernel, caught
  before it decomposes on meta, as :class:`~nfpsim.shapes.AttentionShape` exactly as called (``B``
  sequences, ``s_q`` positions, ``context = s_k - s_q``, the head counts of q and k as passed,
  ``causal = is_causal``, ``explicit_mask = attn_mask is not None``). Its output is laid out as the CUDA
  backends lay it out (FlashAttention follows q's layout; with a mask, memory-efficient attention
  writes ``[B, S, H, Dv]``), so a following ``transpose(1, 2).contiguous()`` costs what it costs on the
  GPU. A mask costs what SDPA does to it first: a boolean one becomes additive (a 0-d fill and a
  ``where``), one whose rows are not 8-element aligned is padded (a copy). The backend ops called directly (``_scaled_dot_product_flash_attention``, ...) count the same.
- **rms_norm**: ``F.rms_norm`` is one fused kernel (``aten._fused_rms_norm``, torch >= 2.9 on CUDA).
  A hand-written RMSNorm is what it is: ``_to_copy``, ``pow``, ``mean``, ``add``, ``rsqrt``, ``mul``...
- **Memory-bound kernels** (family ``pointwise``, one :class:`~nfpsim.shapes.PointwiseShape` each, its
  ``bytes`` read plus written at the real dtypes, fp32 upcasts at 4 bytes, a broadcast operand read
  once; ``elements`` = output elements), by ``kind``:
  ``elementwise`` (every op torch tags pointwise: ``mul``, ``add``, ``silu``, ``rsqrt``, ``neg``,
  ``where``, ``masked_fill``, comparisons, ...; in-place variants read and write their target),
  ``reduction`` (``mean``, ``sum``, ``amax``, ``argmax``, ``cumsum``, ``layer_norm``, ``histc``, ...),
  ``softmax``, ``topk`` (``topk``, ``sort``, ``argsort``), ``cat`` (reads the inputs, writes the output:
  a growing KV cache concatenated every step pays for all of it), ``copy`` (``_to_copy`` casts,
  ``clone``/``contiguous``, non-viewable ``reshape``, ``copy_`` reads its source and writes its
  destination), ``gather`` (``embedding``, ``index_select``, ``index``: the indices plus as many source
  elements as it writes), ``scatter`` (``index_put_``, ``index_copy_``, ``scatter[_add]_``,
  ``index_add_``: indices and values read, the region they land in written, read first when it
  accumulates; out-of-place variants copy the whole tensor too), ``fill`` (``zeros``, ``ones``, ``full``,
  ``fill_``, ``zero_``, ``arange``, random fills: the output written).
- **Collectives** (``_c10d_functional`` ops) of a resolvable process group: a
  :class:`~nfpsim.shapes.CollectiveShape` of the tensor's bytes.
- **Anything else** warns once, naming the op, is priced as one memory-bound kernel over its inputs
  and outputs, and is listed in :attr:`OpGraph.unpriced`: never dropped silently.
- **Data-dependent ops** (``.item()``, ``bool(tensor)``, ``nonzero``, ``masked_select``, ``unique``,
  boolean-mask indexing) cannot run on ``meta``: :class:`CaptureError` names the op. Forwards meant
  for CUDA graphs have none.
"""

from __future__ import annotations

import sys
import types

from nfpsim.capture.graph import OpGraph, OpRow
from nfpsim.capture.latency import latency_model
from nfpsim.capture.recorder import CapturedOp, CaptureWarning, record
from nfpsim.capture.rules import CaptureError


def capture(fn, *args, **kwargs) -> OpGraph:
    """Run ``fn(*args, **kwargs)`` once on ``meta`` and return the kernels an eager CUDA run launches."""
    try:
        recorder = record(fn, args, kwargs)
    except CaptureError:
        raise
    except Exception as error:  # the user's function failed on meta: say where, in one line
        raise CaptureError(f"{_name(fn)} failed on meta tensors: {type(error).__name__}: "
                           f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}") from error
    return OpGraph(tuple(recorder.ops), tuple(recorder.unpriced))


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


class _CallableModule(types.ModuleType):
    """``nfpsim.capture`` is both this package and the function: once the package is imported, Python
    binds the attribute ``nfpsim.capture`` to it, so calling it must capture."""

    def __call__(self, fn, *args, **kwargs) -> OpGraph:
        return capture(fn, *args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["CaptureError", "CaptureWarning", "CapturedOp", "OpGraph", "OpRow", "capture", "latency_model"]
