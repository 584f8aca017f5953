"""Timing kernels on the GPU: the only calibration module that imports torch and triton.

Each point of a plan becomes a :class:`Workload`: several independent sets of inputs (enough that
the sets together exceed the L2 several times, so weights and KV come from HBM as in a real forward)
and one call per set. How many sets is decided from what one set really allocates, measured on the
``meta`` device before anything is allocated on the GPU (:func:`plan_memory`). A :class:`GraphTimer`
captures ``inner`` passes over the sets in a CUDA graph and replays it, so launch gaps are those of a
graph-captured forward; the median replay over the calls is the time. Splits the host would choose
(split-K, split-KV) are timed as variants and the fastest kept, as the latency model assumes (device
METHOD.md: warm up, median of repeats, rotate inputs).
"""

from __future__ import annotations

import datetime
import gc
import math
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from nfpsim import __version__
from nfpsim.calibration import plan
from nfpsim.calibration.plan import FIRST_REPLAYS, CalibPoint, TimingSettings
from nfpsim.latency.table import Measurement, slug_for_device
from nfpsim.config import CONF_DIR, KernelPreset
from nfpsim.kernels import vendor
from nfpsim.shapes import AttentionShape, GemmShape, MoeShape

CUBLAS_WORKSPACE_BYTES = 64 * 2**20  # what one cuBLAS / flash call may take beside its output (bound)


class SkipPoint(Exception):
    """This implementation cannot run this shape here (e.g. no torch._grouped_mm, no flash backend)."""


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def release_memory(device) -> None:
    """Return a failed point's buffers to the device (after an out-of-memory error, before the next point)."""
    gc.collect()
    if torch.device(device).type == "cuda":
        try:
            torch.cuda.empty_cache()
        except RuntimeError:  # a sticky CUDA error: the next points fail too and the run stops
            pass


def device_ok(device) -> bool:
    """Whether the device still runs a kernel (after failures in a row: a sticky CUDA error kills the
    context, and every later point would fail too)."""
    if torch.device(device).type != "cuda":
        return True
    try:
        probe = torch.ones(1, device=device).add_(1)
        torch.cuda.synchronize(device)
        return float(probe.item()) == 2.0
    except RuntimeError:
        return False


def recover(error: Exception, device) -> str:
    """After a point or curve failed: free what it held and say why, in one line."""
    release_memory(device)
    if is_out_of_memory(error):
        return "out of memory"
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line[:300]}"


# ----------------------------------------------------------------------------------------------------
# Timers
# ----------------------------------------------------------------------------------------------------


class CudaGraphs:
    """What :class:`GraphTimer` does on the device: eager passes, graph captures, event-timed replays."""

    def __init__(self):
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    @staticmethod
    def eager(calls: list[Callable[[], object]]) -> None:
        for call in calls:
            call()
        torch.cuda.synchronize()

    @staticmethod
    def capture(body: list[Callable[[], object]], repeats: int):
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for call in body:  # the side stream needs its own warm pass before capture
                call()
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            for _ in range(repeats):
                for call in body:
                    call()
        return graph

    def replay_s(self, graph) -> float:
        self.start.record()
        graph.replay()
        self.end.record()
        self.end.synchronize()
        return self.start.elapsed_time(self.end) * 1e-3

    @staticmethod
    def flush_buffer(num_bytes: int):
        return torch.empty(num_bytes, dtype=torch.uint8, device="cuda")


class GraphTimer:
    """Median seconds per call of a list of calls, replayed inside a CUDA graph.

    ``inner`` (passes over the calls per replay) is sized from a first replay of a one-pass graph, not
    from an eager pass the host slows down, so each timed replay lasts at least ``min_replay_s`` and
    the graph's own launch is spread over enough calls. Where the calls' inputs together are smaller
    than the rotation needs (``flush_bytes > 0``), each pass first writes a flush buffer of that size, so
    every call finds its inputs evicted from L2 ("cold"); the flush alone is timed in the same graph
    structure and subtracted. The schedule (passes, captures, replays) is what
    :func:`nfpsim.calibration.plan.timer_seconds` prices."""

    def __init__(self, timing: TimingSettings, device=None):
        self.timing = timing
        self.device = device if device is not None else CudaGraphs()
        self._flush = None

    def __call__(self, calls: list[Callable[[], object]], flush_bytes: int = 0) -> tuple[float, float]:
        d = self.device
        d.eager(calls)  # compile Triton kernels and warm cuBLAS outside the capture
        body = [self._flusher(flush_bytes)] + calls if flush_bytes > 0 else calls
        graph = d.capture(body, 1)
        pass_s = min(d.replay_s(graph) for _ in range(FIRST_REPLAYS))
        inner = max(1, math.ceil(self.timing.min_replay_s / max(pass_s, 1e-9)))
        if inner > 1:
            del graph
            graph = d.capture(body, inner)
        samples = self._replays(graph)
        del graph
        if flush_bytes > 0:
            flush_graph = d.capture(body[:1], inner)
            flush_s = statistics.median(self._replays(flush_graph))
            del flush_graph
            samples = [max(s - flush_s, 0.0) for s in samples]
        return _median_and_spread([s / (inner * len(calls)) for s in samples])

    def _replays(self, graph) -> list[float]:
        for _ in range(self.timing.warmup):
            self.device.replay_s(graph)
        return [self.device.replay_s(graph) for _ in range(self.timing.repeats)]

    def _flusher(self, num_bytes: int) -> Callable[[], object]:
        if self._flush is None or self._flush.numel() < num_bytes:
            self._flush = None
            self._flush = self.device.flush_buffer(num_bytes)
        flush = self._flush[:num_bytes]
        return lambda: flush.fill_(1)


class WallTimer:
    """The same interface on the CPU with a host clock: only to exercise the pipeline in tests."""

    def __init__(self, timing: TimingSettings):
        self.timing = timing

    def __call__(self, calls: list[Callable[[], object]], flush_bytes: int = 0) -> tuple[float, float]:
        for call in calls:
            call()
        samples = []
        for _ in range(self.timing.repeats):
            start = time.perf_counter()
            for call in calls:
                call()
            samples.append((time.perf_counter() - start) / len(calls))
        return _median_and_spread(samples)


def _median_and_spread(samples: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return statistics.median(samples), q[2] - q[0]


# ----------------------------------------------------------------------------------------------------
# Workloads: inputs and calls per point
# ----------------------------------------------------------------------------------------------------


@dataclass
class Workload:
    make_set: Callable[[], dict]
    variants: dict[str, Callable[[dict], object]]  # name -> call on one set
    workspace_bytes: int  # what one call may allocate beyond its set (split partials, unfused temporaries)


def _randn(*shape, dtype, device, scale=1.0):
    """Drawn in ``dtype`` itself: no float32 staging copy, so a set allocates exactly its tensors."""
    return torch.randn(*shape, dtype=dtype, device=device).mul_(scale)


def tensor_bytes(tensors: Iterable[object]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a view counts once, with its base); works on
    ``meta`` tensors, which have sizes but no memory."""
    seen, total = set(), 0
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        base = t._base if t._base is not None else t
        if id(base) not in seen:
            seen.add(id(base))
            total += base.untyped_storage().nbytes()
    return total


def gemm_workload(shape: GemmShape, implementation: str, kernels: KernelPreset, device, dtype,
                  num_sms: int) -> Workload:
    from nfpsim.kernels import decode_gemm

    t, n, k = shape.tokens, shape.n, shape.k

    def make_set():
        return {"x": _randn(t, k, dtype=dtype, device=device), "w": _randn(n, k, dtype=dtype, device=device,
                                                                              scale=k ** -0.5),
                "y": torch.empty(t, n, dtype=dtype, device=device)}

    if implementation == "vendor":
        variants = {"cublas": lambda s: torch.matmul(s["x"], s["w"].t(), out=s["y"])}
        return Workload(make_set, variants, CUBLAS_WORKSPACE_BYTES)
    tile = kernels.gemm.select(t)
    splits = plan.gemm_splits(shape, kernels, num_sms)
    variants = {f"split_k={split}": (lambda s, split=split: decode_gemm(
        s["x"], s["w"], block_m=tile.block_m, block_n=tile.block_n, block_k=tile.block_k, split_k=split,
        out=s["y"])) for split in splits}
    return Workload(make_set, variants, 4 * max(splits) * t * n)  # split-K partials: fp32 [split, T, N]


def moe_workload(shape: MoeShape, implementation: str, kernels: KernelPreset, device, dtype) -> Workload:
    from nfpsim.kernels import fused_moe, route

    t, h, f, e, k = shape.tokens, shape.hidden, shape.ffn, shape.num_experts, shape.top_k
    if implementation == "vendor" and not hasattr(torch, "_grouped_mm"):
        raise SkipPoint("this torch has no torch._grouped_mm")

    def make_set():
        weights, ids = route(torch.randn(t, e, device=device), k)  # uniform routing, as the model assumes
        return {"x": _randn(t, h, dtype=dtype, device=device), "ids": ids, "weights": weights,
                "w_gate_up": _randn(e, 2 * f, h, dtype=dtype, device=device, scale=h ** -0.5),
                "w_down": _randn(e, h, f, dtype=dtype, device=device, scale=f ** -0.5),
                "y": torch.empty(t, h, dtype=dtype, device=device)}

    if implementation == "vendor":
        variants = {"grouped_mm": lambda s: vendor.grouped_moe(s["x"], s["ids"], s["weights"], s["w_gate_up"],
                                                               s["w_down"], s["y"])}
    else:
        moe = kernels.moe
        variants = {"fused": lambda s: fused_moe(s["x"], s["w_gate_up"], s["w_down"], s["weights"], s["ids"],
                                                 block_m=moe.block_m, block_n=moe.block_n, block_k=moe.block_k,
                                                 out=s["y"])}
    # routed intermediates [T*k, 2F], [T*k, F], [T*k, H] and the gathered / weighted copies (unfused torch)
    slot_bytes = t * k * (2 * h + 3 * f) * shape.bytes_per_element
    return Workload(make_set, variants, 2 * slot_bytes + 4 * t * k * 8 + CUBLAS_WORKSPACE_BYTES)


def attention_workload(shape: AttentionShape, implementation: str, kernels: KernelPreset, device, dtype,
                       num_sms: int) -> Workload:
    from nfpsim.kernels import decode_attention

    b, m, seq = shape.num_seqs, shape.positions, shape.kv_len
    hq, hkv, dqk, dv = shape.q_heads, shape.kv_heads, shape.qk_dim, shape.v_dim
    latent = shape.cache_dim == dqk  # MLA: values are the first dv channels of the cached latent

    def make_set():
        k_cache = _randn(b, seq, hkv, dqk, dtype=dtype, device=device)
        v_cache = k_cache[..., :dv] if latent else _randn(b, seq, hkv, dv, dtype=dtype, device=device)
        data = {"q": _randn(b, m, hq, dqk, dtype=dtype, device=device), "k": k_cache, "v": v_cache,
                "lens": torch.full((b,), seq, dtype=torch.int32, device=device),
                "o": torch.empty(b, m, hq, dv, dtype=dtype, device=device)}
        if implementation == "vendor":  # [B, H, S, D] views of the [B, S, H, D] cache, as a forward runs it
            data.update(qt=data["q"].transpose(1, 2), kt=k_cache.transpose(1, 2), vt=v_cache.transpose(1, 2))
        return data

    if implementation == "vendor":
        mask = None  # decompose prices eager attention with an explicit mask when it has one
        if shape.explicit_mask:
            mask = vendor.folded_causal_mask(torch.arange(seq - m, seq, device=device),
                                             torch.arange(seq, device=device), hq // hkv)
        variants = {"sdpa": lambda s: vendor.attention(s["qt"].contiguous(), s["kt"], s["vt"], mask)}
    else:
        attn = kernels.attention
        splits = plan.attention_splits(shape, kernels, num_sms)
        variants = {f"num_splits={split}": (lambda s, split=split: decode_attention(
            s["q"], s["k"], s["v"], s["lens"], causal=shape.causal, block_q=attn.block_q, block_kv=attn.block_kv,
            num_splits=split, pack_gqa=attn.pack_gqa, out=s["o"])) for split in splits}
    query_rows = b * m * hq
    if implementation == "vendor":  # flash: output and fp32 log-sum-exp (the set's own "o" is unused)
        workspace = query_rows * (dv * shape.bytes_per_element + 4) + CUBLAS_WORKSPACE_BYTES
    else:  # split-KV partials: fp32 [splits, B, M, Hq, Dv] and their log-sum-exp
        workspace = max(variant_splits(variants)) * query_rows * (dv + 1) * 4
    return Workload(make_set, variants, workspace)


def variant_splits(variants: dict) -> list[int]:
    return [int(name.split("=")[1]) for name in variants if "=" in name] or [1]


TORCH_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "int64": torch.int64, "uint8": torch.uint8}


def _filled(size: tuple[int, ...], dtype_name: str, device) -> torch.Tensor:
    dtype = TORCH_DTYPES[dtype_name]
    if dtype.is_floating_point:
        return _randn(*size, dtype=dtype, device=device)
    return torch.randint(0, 100, size, dtype=dtype, device=device)


def recipe_workload(recipe: plan.Recipe, device) -> Workload:
    """The generic torch kernel timing an eager-glue op: its operands, output (and ids) in one set, each
    exactly the size :attr:`~nfpsim.calibration.plan.Recipe.bytes` counts."""
    r, w = recipe.rows, recipe.width
    extent = {"rw": (r, w), "r1": (r, 1), "1w": (1, w)}
    out_size = {"sum": (r,), "argmax": (r,), "topk": (r, recipe.k)}.get(recipe.kernel, (r, w))

    def make_set():
        data = {name: _filled(extent[shape], dtype, device)
                for name, dtype, shape in (("a", recipe.a, recipe.a_shape), ("b", recipe.b, recipe.b_shape)) if dtype}
        data["out"] = torch.empty(out_size, dtype=TORCH_DTYPES[recipe.out], device=device)
        if recipe.kernel in ("gather", "topk"):
            data["ids"] = (torch.randint(0, r, (r,), device=device) if recipe.kernel == "gather"
                           else torch.empty(out_size, dtype=torch.int64, device=device))
        return data

    calls = {
        "add": lambda s: torch.add(s["a"], s["b"] if "b" in s else 1, out=s["out"]),
        "copy": lambda s: s["out"].copy_(s["a"]),
        "fill": lambda s: s["out"].fill_(1),
        "sum": lambda s: torch.sum(s["a"], dim=-1, out=s["out"]),
        "argmax": lambda s: torch.argmax(s["a"], dim=-1, out=s["out"]),
        "gather": lambda s: torch.index_select(s["a"], 0, s["ids"], out=s["out"]),
        "softmax": lambda s: torch._softmax(s["a"], -1, False, out=s["out"]),
        "topk": lambda s: torch.topk(s["a"], recipe.k, dim=-1, out=(s["out"], s["ids"])),
    }
    # a long row reduction's partial results across CTAs: a few KiB
    return Workload(make_set, {recipe.kernel: calls[recipe.kernel]}, 2**20)


def pointwise_workload(point: CalibPoint, device, dtype) -> Workload:
    """An eager-glue op: its generic kernel; a fused step: nfpsim's fused Triton kernel."""
    from nfpsim.kernels import fused_add_rmsnorm, rotary_kv_write, silu_and_mul

    if point.generic:
        return recipe_workload(plan.Recipe.from_dims(point.dims), device)
    dims = dict(point.dims)
    t = dims["tokens"]
    name = point.op.name
    if name == "add_norm":
        h = dims["hidden"]

        def make_set():
            return {"x": _randn(t, h, dtype=dtype, device=device), "r": _randn(t, h, dtype=dtype, device=device),
                    "w": _randn(h, dtype=dtype, device=device), "out": torch.empty(t, h, dtype=dtype, device=device),
                    "r_out": torch.empty(t, h, dtype=dtype, device=device)}

        def fused(s):
            return fused_add_rmsnorm(s["x"], s["r"], s["w"], vendor.RMS_EPS, out=s["out"], residual_out=s["r_out"])
    elif name == "act_mul":
        f = dims["ffn"]

        def make_set():
            return {"gu": _randn(t, 2 * f, dtype=dtype, device=device), "out": torch.empty(t, f, dtype=dtype,
                                                                                            device=device)}

        def fused(s):
            return silu_and_mul(s["gu"], out=s["out"])
    elif name == "rope_kv_write":
        hq, hkv, d = dims["q_heads"], dims["kv_heads"], dims["head_dim"]
        slots = plan.ROPE_CACHE_SLOTS  # T sequences of one new position each; each writes its own cache row

        def make_set():
            angles = torch.rand(slots, d // 2, device=device) * 6.28
            return {"q": _randn(t, 1, hq, d, dtype=dtype, device=device),
                    "k": _randn(t, 1, hkv, d, dtype=dtype, device=device),
                    "v": _randn(t, 1, hkv, d, dtype=dtype, device=device),
                    "cos": angles.cos().to(dtype), "sin": angles.sin().to(dtype),
                    "kc": torch.zeros(t, slots, hkv, d, dtype=dtype, device=device),
                    "vc": torch.zeros(t, slots, hkv, d, dtype=dtype, device=device),
                    "pos": torch.arange(t, dtype=torch.int32, device=device) % slots}  # wrapped positions

        def fused(s):
            return rotary_kv_write(s["q"], s["k"], s["v"], s["cos"], s["sin"], s["kc"], s["vc"], s["pos"])
    else:
        raise SkipPoint(f"no workload for pointwise op {name}")
    return Workload(make_set, {"fused": fused}, 2**20)


def workload_for(point: CalibPoint, kernels: KernelPreset, device, dtype, num_sms: int) -> Workload:
    shape = point.op.shape
    if isinstance(shape, GemmShape):
        return gemm_workload(shape, point.implementation, kernels, device, dtype, num_sms)
    if isinstance(shape, MoeShape):
        return moe_workload(shape, point.implementation, kernels, device, dtype)
    if isinstance(shape, AttentionShape):
        return attention_workload(shape, point.implementation, kernels, device, dtype, num_sms)
    return pointwise_workload(point, device, dtype)


@dataclass(frozen=True)
class MemoryPlan:
    """What timing one point allocates, from one input set built on ``meta``."""

    set_bytes: int
    num_sets: int
    workspace_bytes: int
    flush_bytes: int  # written before each pass where the sets alone are smaller than the rotation needs

    @property
    def peak_bytes(self) -> int:
        return self.num_sets * self.set_bytes + self.workspace_bytes + self.flush_bytes


def plan_memory(point: CalibPoint, kernels: KernelPreset, dtype, info: dict, memory_budget_bytes: float) -> MemoryPlan:
    """Build one input set of ``point`` on ``meta`` (sizes, no memory) and size the rotation from it."""
    work = workload_for(point, kernels, torch.device("meta"), dtype, info["num_sms"])
    one_set = tensor_bytes(work.make_set().values())
    sets = plan.num_sets(one_set, info["l2_bytes"], memory_budget_bytes)
    return MemoryPlan(one_set, sets, work.workspace_bytes, plan.flush_bytes(one_set, sets, info["l2_bytes"]))


def measure_point(point: CalibPoint, kernels: KernelPreset, timer, device, dtype, info: dict,
                  memory_budget_bytes: float) -> tuple[Measurement, str]:
    """The fastest variant's median time on rotated input sets; returns it with the variant's name."""
    memory = plan_memory(point, kernels, dtype, info, memory_budget_bytes)
    if memory.peak_bytes > info.get("free_bytes", math.inf):
        raise SkipPoint(f"needs {memory.peak_bytes / 2**30:.1f} GiB, {info['free_bytes'] / 2**30:.1f} GiB are free")
    work = workload_for(point, kernels, device, dtype, info["num_sms"])
    sets = [work.make_set() for _ in range(memory.num_sets)]
    best: tuple[float, float, str] | None = None
    for name, call in work.variants.items():
        median, spread = timer([lambda s=s, call=call: call(s) for s in sets], flush_bytes=memory.flush_bytes)
        if best is None or median < best[0]:
            best = (median, spread, name)
    del sets
    return Measurement(point.implementation, point.op, best[0], best[1], point.dims), best[2]


# ----------------------------------------------------------------------------------------------------
# Ceilings and provenance
# ----------------------------------------------------------------------------------------------------


def measure_ceilings(timer, device, dtype, copy_bytes: int, matmul_size: int, launches: int = 200) -> dict:
    """Device-to-device copy bytes/s (read + write), dense matmul FLOP/s on random data, and the cost
    of one tiny kernel inside a graph (the launch overhead)."""
    return {"copy_bytes_per_s": 2 * copy_bytes / _copy_seconds(timer, device, dtype, copy_bytes),
            "bf16_flop_per_s": 2 * matmul_size**3 / _matmul_seconds(timer, device, dtype, matmul_size),
            "launch_overhead_s": _launch_seconds(timer, device, launches),
            "copy_bytes": copy_bytes, "matmul_size": matmul_size}


def _copy_seconds(timer, device, dtype, copy_bytes: int) -> float:
    elements = copy_bytes // torch.tensor([], dtype=dtype).element_size()
    src, dst = torch.randn(elements, device=device).to(dtype), torch.empty(elements, dtype=dtype, device=device)
    return timer([lambda: dst.copy_(src)])[0]


def _matmul_seconds(timer, device, dtype, size: int) -> float:
    a, b = _randn(size, size, dtype=dtype, device=device), _randn(size, size, dtype=dtype, device=device)
    c = torch.empty(size, size, dtype=dtype, device=device)
    return timer([lambda: torch.matmul(a, b, out=c)])[0]


def _launch_seconds(timer, device, launches: int) -> float:
    tiny = torch.zeros(1, device=device)
    return timer([lambda: tiny.add_(1.0)] * launches)[0]


def device_info(device) -> dict:
    if device.type != "cuda":
        return {"name": f"cpu ({platform.processor() or platform.machine()})", "slug": "cpu", "num_sms": 1,
                "l2_bytes": 0, "memory_bytes": 0, "capability": None}
    props = torch.cuda.get_device_properties(device)
    return {"name": props.name, "slug": slug_for_device(props.name), "num_sms": props.multi_processor_count,
            "l2_bytes": getattr(props, "L2_cache_size", 0), "memory_bytes": props.total_memory,
            "capability": f"{props.major}.{props.minor}"}


def provenance(device) -> dict:
    import triton

    driver = "unknown"
    if device.type == "cuda":
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            pass
    return {"driver": driver, "cuda": torch.version.cuda, "torch": torch.__version__, "triton": triton.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "python": platform.python_version(), "nfpsim": __version__,
            "git": _git_commit()}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=CONF_DIR.parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
