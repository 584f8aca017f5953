"""Run a function once on ``meta`` tensors and record the kernels it launches.

Two torch modes cooperate: a :class:`~torch.overrides.TorchFunctionMode` catches the calls whose CUDA
kernel is one fused launch but whose meta/CPU path decomposes into many ops (``scaled_dot_product_attention``,
``rms_norm``), a :class:`~torch.utils._python_dispatch.TorchDispatchMode` sees every aten op that remains
(after autograd and the composite decompositions CUDA runs too: ``linear`` -> ``mm`` on a view,
``reshape`` -> ``clone`` when the input is not viewable, ...). Global module hooks track which
``nn.Module`` is running, so each op can be labelled with the NFP module it belongs to.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import CausalBias, CausalVariant
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from nfpsim.capture import rules
from nfpsim.capture.rules import CaptureError, Kernel, UnknownOp
from nfpsim.shapes import CollectiveShape, Op, PointwiseShape


class CaptureWarning(UserWarning):
    """An op of a captured forward has no pricing rule (it is priced generically and listed)."""


@dataclass(frozen=True)
class CapturedOp:
    """One kernel launch of a captured forward."""

    op: Op  # name ``<module>.<aten op>``, count 1
    aten: str  # the aten op (or ``sdpa``/``rms_norm`` for the fused calls)
    family: str  # gemm, attention, pointwise, collective
    path: str  # the nn.Module running it ("" outside any module)


# ----------------------------------------------------------------------------------------------------
# Module labels
# ----------------------------------------------------------------------------------------------------

_QKV = {"q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "c_attn", "wqkv", "Wqkv", "wq", "wk", "wv",
        "query", "key", "value", "kv_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj"}
_O = {"o_proj", "out_proj", "wo", "dense", "c_proj"}
_FFN = {"mlp", "feed_forward", "ffn", "block_sparse_moe", "moe", "experts", "shared_expert", "shared_experts"}
_HEAD = {"lm_head", "output", "embed_out"}
_EMBED = {"embed_tokens", "wte", "tok_embeddings", "word_embeddings", "embedding", "embeddings"}


def nfp_module(path: str, family: str) -> str:
    """The NFP module (``qkv_proj``, ``attention``, ``o_proj``, ``ffn``, ``lm_head``, ``embedding``,
    ``pointwise``, ``allreduce``) an op belongs to, from the module path that ran it; the family
    (``gemm``, ``attention``, ``pointwise``, ``collective``) when the path says nothing."""
    if family == "attention":
        return "attention"
    if family == "collective":
        return "allreduce"
    parts = path.split(".") if path else []
    last = parts[-1] if parts else ""
    if last in _HEAD:
        return "lm_head"
    if last in _EMBED:
        return "embedding"
    if family == "gemm" and last in _QKV:
        return "qkv_proj"
    if family == "gemm" and last in _O and not any(p in _FFN for p in parts):
        return "o_proj"
    if any(p in _FFN for p in parts):
        return "ffn"
    return family


class _ModuleStack:
    """Which module is running: names from the roots' ``named_modules()``, class names otherwise."""

    def __init__(self, roots: list[torch.nn.Module]):
        self.names: dict[int, str] = {}
        for root in roots:
            for name, module in root.named_modules():
                self.names.setdefault(id(module), name)
        self.stack: list[str] = []
        self.handles = []

    def __enter__(self):
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        def push(module, args):
            self.stack.append(self.names.get(id(module), type(module).__name__))

        def pop(module, args, output):
            if self.stack:
                self.stack.pop()

        self.handles = [register_module_forward_pre_hook(push), register_module_forward_hook(pop, always_call=True)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()

    @property
    def path(self) -> str:
        return self.stack[-1] if self.stack else ""


# ----------------------------------------------------------------------------------------------------
# The recorder and its two modes
# ----------------------------------------------------------------------------------------------------


class Recorder:
    def __init__(self, modules: _ModuleStack):
        self.modules = modules
        self.ops: list[CapturedOp] = []
        self.unpriced: list[str] = []

    def add(self, aten: str, kernel: Kernel) -> None:
        path = self.modules.path
        module = nfp_module(path, kernel.family)
        self.ops.append(CapturedOp(Op(f"{module}.{aten}", module, kernel.shape), aten, kernel.family, path))

    def dispatch(self, func, args: tuple, kwargs: dict):
        name = rules.op_name(func)
        if rules.is_data_dependent(func, args):
            raise CaptureError(rules.data_dependent(func))
        out = _run_meta(func, args, kwargs)
        if func.namespace in ("_c10d_functional", "c10d", "c10d_functional"):
            self._collective(name, args)
            return out
        try:
            kernel = rules.classify(func, args, kwargs, out)
        except UnknownOp:
            kernel = rules.generic_kernel(args, kwargs, out)
            if name not in self.unpriced:
                self.unpriced.append(name)
                warnings.warn(f"capture: {func} has no pricing rule; priced as one memory-bound kernel over "
                              f"its inputs and outputs and listed in OpGraph.unpriced", CaptureWarning,
                              stacklevel=2)
        if kernel is not None:
            self.add(name, kernel)
        return out

    def _collective(self, name: str, args: tuple) -> None:
        payload = sum(rules.footprint(t) for t in rules.tensors(args[:1]))
        ranks = _group_size(args)
        if ranks is None:
            if name not in self.unpriced:
                self.unpriced.append(name)
                warnings.warn(f"capture: collective {name} over an unknown process group is not priced "
                              f"(listed in OpGraph.unpriced)", CaptureWarning, stacklevel=2)
            return
        if ranks > 1:
            self.add(name, Kernel("collective", CollectiveShape(float(payload), ranks)))

    def sdpa(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
             enable_gqa=False):
        """One attention kernel. Its output follows q's layout, as cuDNN (torch's choice on Hopper and
        Blackwell, masks included) and FlashAttention lay it out (memory-efficient attention, the masked
        path on older GPUs, would write ``[B, S, H, Dv]``: capture does not know the target GPU)."""
        causal, masked = is_causal, attn_mask is not None
        if isinstance(attn_mask, CausalBias):  # no mask tensor: flash (top-left, or square), else efficient
            causal = True
            masked = attn_mask.variant == CausalVariant.LOWER_RIGHT and attn_mask.seq_len_q != attn_mask.seq_len_kv
        shape = rules.sdpa_shape(query, key, value, causal, masked)
        if isinstance(attn_mask, torch.Tensor) and not isinstance(attn_mask, CausalBias):
            _prepare_mask(attn_mask, query.dtype)
        self.add("sdpa", Kernel("attention", shape))
        out_shape = (*query.shape[:-1], value.shape[-1])
        kw = {"dtype": query.dtype, "device": query.device}
        if query.dim() != 4:
            return torch.empty(out_shape, **kw)
        if query.transpose(1, 2).is_contiguous():
            b, h, s, dv = out_shape
            return torch.empty((b, s, h, dv), **kw).transpose(1, 2)
        return torch.empty(out_shape, **kw)

    def rms_norm(self, x, normalized_shape, weight=None, eps=None):
        """One fused kernel (``aten._fused_rms_norm`` on CUDA): reads x and the weight, writes y and one
        fp32 rstd per row."""
        rows = x.numel() // max(1, x.shape[-1]) if x.dim() else 1
        bytes_ = 2 * rules.footprint(x) + (rules.footprint(weight) if weight is not None else 0) + 4 * rows
        self.add("rms_norm", Kernel("pointwise", PointwiseShape(float(bytes_), float(x.numel()), "reduction")))
        return torch.empty_like(x)


# ----------------------------------------------------------------------------------------------------
# Meta kernels, memoized: many are Python reference implementations, and a decoder runs the same op on the
# same shapes in every layer (and a sweep captures the same forward at many M)
# ----------------------------------------------------------------------------------------------------

_SCALARS = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.memory_format, torch.layout)
_OUTPUTS: dict[tuple, tuple] = {}
_OUTPUTS_LIMIT = 100_000


def _key_of(value):
    if isinstance(value, torch.Tensor):
        return ("T", tuple(value.shape), value.stride(), value.dtype, value.device.type)
    if isinstance(value, (list, tuple)):
        return tuple(_key_of(v) for v in value)
    if isinstance(value, _SCALARS):
        return (type(value), value)
    raise TypeError  # not a value a meta kernel's output can depend on alone: do not memoize


def _run_meta(func, args: tuple, kwargs: dict):
    """``func`` on meta tensors; a functional op (fresh outputs, no aliasing, no mutation) seen before
    with the same shapes, strides and arguments gets new tensors of the memoized output layout."""
    key = None
    schema = func._schema
    if not func.is_view and not schema.is_mutable and all(r.alias_info is None for r in schema.returns):
        try:
            key = (func, _key_of(args), tuple(sorted((k, _key_of(v)) for k, v in kwargs.items())))
        except TypeError:
            key = None
    layout = _OUTPUTS.get(key) if key is not None else None
    if layout is not None:
        outs = tuple(torch.empty_strided(shape, stride, dtype=dtype, device="meta") for shape, stride, dtype in layout[1])
        return outs[0] if layout[0] else outs
    try:
        out = func(*args, **kwargs)
    except NotImplementedError as error:
        raise CaptureError(f"{func} cannot run on meta tensors (a CUDA-only or data-dependent op?): "
                           f"{str(error).splitlines()[0]}") from None
    single = isinstance(out, torch.Tensor)
    outs = (out,) if single else out
    if key is not None and isinstance(outs, tuple) and all(isinstance(t, torch.Tensor) for t in outs):
        if len(_OUTPUTS) >= _OUTPUTS_LIMIT:
            _OUTPUTS.clear()
        _OUTPUTS[key] = (single, tuple((tuple(t.shape), t.stride(), t.dtype) for t in outs))
    return out


def _prepare_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What SDPA runs on a mask before any fused backend (run here on meta, so the dispatch mode records
    it): a boolean mask becomes an additive one (one ``where`` against a 0-d ``-inf``). Memory-efficient
    attention would also pad rows that are not 8-element aligned; cuDNN and flash do not."""
    if mask.dtype == torch.bool:
        mask = torch.where(mask, 0.0, torch.full((), float("-inf"), dtype=dtype, device=mask.device))
    return mask


def _group_size(args: tuple) -> int | None:
    import torch.distributed as dist

    group = next((a for a in args if isinstance(a, str)), None)
    try:
        if group is not None:
            from torch.distributed.distributed_c10d import _resolve_process_group
            return _resolve_process_group(group).size()
        return dist.get_world_size() if dist.is_initialized() else None
    except Exception:  # no such group on this machine
        return None


class _Functions(TorchFunctionMode):
    def __init__(self, recorder: Recorder):
        super().__init__()
        self.recorder = recorder
        self.fused = {F.scaled_dot_product_attention: recorder.sdpa, F.rms_norm: recorder.rms_norm}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = self.fused.get(func)
        if handler is not None:
            return handler(*args, **kwargs)
        if func in _MOVES:  # x.cuda(), x.to("cuda"): the tensor stays on meta
            args = tuple(_META if _is_cuda(a) else a for a in args)
            if func is torch.Tensor.cuda:
                return args[0]
        if _is_cuda(kwargs.get("device")):  # torch.zeros(..., device="cuda"): created on meta
            kwargs = {**kwargs, "device": _META}
        return func(*args, **kwargs)


_META = torch.device("meta")
_MOVES = {torch.Tensor.cuda, torch.Tensor.to}


def _is_cuda(device) -> bool:
    """A device argument naming a GPU (code written for CUDA runs unchanged on meta)."""
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, int) and not isinstance(device, bool):
        return False  # an int positional of .to() is not a device here
    return isinstance(device, str) and device.split(":")[0] == "cuda"


class _Dispatch(TorchDispatchMode):
    def __init__(self, recorder: Recorder):
        super().__init__()
        self.recorder = recorder

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return self.recorder.dispatch(func, args, kwargs or {})


def record(fn, args: tuple, kwargs: dict) -> Recorder:
    """Run ``fn(*args, **kwargs)`` once on ``meta`` under both modes; the recorder holds its kernels."""
    roots = [m for m in (fn, getattr(fn, "__self__", None), *args, *kwargs.values()) if isinstance(m, torch.nn.Module)]
    modules = _ModuleStack(roots)
    recorder = Recorder(modules)
    args = tuple(_to_meta(a) for a in args)
    kwargs = {k: _to_meta(v) for k, v in kwargs.items()}
    with torch.device("meta"), torch.no_grad(), modules, _Functions(recorder), _Dispatch(recorder):
        fn(*args, **kwargs)
    return recorder


def _to_meta(value):
    """A tensor argument on another device is moved to ``meta`` (shapes only, no copy of its data)."""
    if type(value) is torch.Tensor and value.device.type != "meta":  # subclasses keep their own state
        return value.to("meta")
    return value
