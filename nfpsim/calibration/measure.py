"""Timing kernels on the GPU: the only calibration module that imports torch and triton.

Each point of a plan becomes a :class:`Workload`: several independent sets of inputs (enough that
the sets together exceed the L2 several times, so weights and KV come from HBM as in a real forward)
and one call per set. A :class:`GraphTimer` captures ``inner`` passes over the sets in a CUDA graph
and replays it, so launch gaps are those of a graph-captured forward; the median replay over the calls
is the time. Splits the host would choose (split-K, split-KV) are timed as variants and the fastest
kept, as the latency model assumes (device METHOD.md: warm up, median of repeats, rotate inputs).
"""

from __future__ import annotations

import datetime
import math
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from nfpsim import __version__
from nfpsim.calibration.plan import CalibPoint, TimingSettings
from nfpsim.latency.table import Measurement, slug_for_device
from nfpsim.config import CONF_DIR, KernelPreset
from nfpsim.kernels import vendor
from nfpsim.latency.pricing.common import power_of_two_splits
from nfpsim.shapes import AttentionShape, GemmShape, MoeShape

ROTATION_L2_MULTIPLE = 3  # input sets together exceed the L2 this many times
MAX_SETS = 64


class SkipPoint(Exception):
    """This implementation cannot run this shape here (e.g. no torch._grouped_mm, no flash backend)."""


# ----------------------------------------------------------------------------------------------------
# Timers
# ----------------------------------------------------------------------------------------------------


class GraphTimer:
    """Median seconds per call of a list of calls, replayed inside a CUDA graph."""

    def __init__(self, timing: TimingSettings):
        self.timing = timing

    def __call__(self, calls: list[Callable[[], object]]) -> tuple[float, float]:
        for call in calls:  # compile Triton kernels and warm cuBLAS outside the capture
            call()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for call in calls:
            call()
        end.record()
        end.synchronize()
        one_pass_s = max(start.elapsed_time(end) * 1e-3, 1e-7)
        inner = max(1, math.ceil(self.timing.min_replay_s / one_pass_s))
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for call in calls:  # the side stream needs its own warm pass before capture
                call()
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            for _ in range(inner):
                for call in calls:
                    call()
        for _ in range(self.timing.warmup):
            graph.replay()
        samples = []
        for _ in range(self.timing.repeats):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) * 1e-3 / (inner * len(calls)))
        del graph
        return _median_and_spread(samples)


class WallTimer:
    """The same interface on the CPU with a host clock: only to exercise the pipeline in tests."""

    def __init__(self, timing: TimingSettings):
        self.timing = timing

    def __call__(self, calls: list[Callable[[], object]]) -> tuple[float, float]:
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
    set_bytes: float  # bytes of one input set (weights, KV, activations)
    make_set: Callable[[], dict]
    variants: dict[str, Callable[[dict], object]]  # name -> call on one set


def _randn(*shape, dtype, device, scale=1.0):
    return torch.randn(*shape, dtype=torch.float32, device=device).mul_(scale).to(dtype)


def gemm_workload(shape: GemmShape, implementation: str, kernels: KernelPreset, device, dtype) -> Workload:
    from nfpsim.kernels import decode_gemm

    t, n, k = shape.tokens, shape.n, shape.k

    def make_set():
        return {"x": _randn(t, k, dtype=dtype, device=device), "w": _randn(n, k, dtype=dtype, device=device,
                                                                              scale=k ** -0.5),
                "y": torch.empty(t, n, dtype=dtype, device=device)}

    if implementation == "vendor":
        variants = {"cublas": lambda s: torch.matmul(s["x"], s["w"].t(), out=s["y"])}
    else:
        tile = kernels.gemm.select(t)
        splits = [tile.split_k] if tile.split_k else power_of_two_splits(k, tile.block_k, kernels.gemm.max_split_k)
        variants = {f"split_k={split}": (lambda s, split=split: decode_gemm(
            s["x"], s["w"], block_m=tile.block_m, block_n=tile.block_n, block_k=tile.block_k, split_k=split,
            out=s["y"])) for split in splits}
    return Workload(shape.weight_bytes + shape.bytes_per_element * t * (k + n), make_set, variants)


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
    return Workload(shape.num_experts * shape.expert_bytes, make_set, variants)


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
        rows = m * (hq // hkv if attn.pack_gqa else 1)
        units = b * (hkv if attn.pack_gqa else hq) * math.ceil(rows / attn.block_q)
        splits = [attn.num_splits] if attn.num_splits else _near_fill(
            power_of_two_splits(seq, attn.block_kv, attn.max_splits), units, num_sms)
        variants = {f"num_splits={split}": (lambda s, split=split: decode_attention(
            s["q"], s["k"], s["v"], s["lens"], causal=shape.causal, block_q=attn.block_q, block_kv=attn.block_kv,
            num_splits=split, pack_gqa=attn.pack_gqa, out=s["o"])) for split in splits}
    return Workload(shape.cache_bytes + shape.bytes_per_element * b * m * hq * (dqk + dv), make_set, variants)


def _near_fill(splits: list[int], units: int, sms: int) -> list[int]:
    """The candidate split that first fills the SMs and its two neighbours (the fastest is among them:
    fewer splits leave SMs idle, more only add partials)."""
    fill = next((i for i, split in enumerate(splits) if units * split >= sms), len(splits) - 1)
    return splits[max(0, fill - 1): fill + 2]


def pointwise_workload(point: CalibPoint, implementation: str, device, dtype) -> Workload:
    from nfpsim.kernels import fused_add_rmsnorm, rotary_kv_write, silu_and_mul

    dims = dict(point.dims)
    t = dims["tokens"]
    name = point.op.name
    if name == "add_norm":
        h = dims["hidden"]

        def make_set():
            return {"x": _randn(t, h, dtype=dtype, device=device), "r": _randn(t, h, dtype=dtype, device=device),
                    "w": _randn(h, dtype=dtype, device=device), "out": torch.empty(t, h, dtype=dtype, device=device),
                    "r_out": torch.empty(t, h, dtype=dtype, device=device)}

        def torch_path(s):
            return vendor.add_rms_norm(s["x"], s["r"], s["w"])

        def ours(s):
            return fused_add_rmsnorm(s["x"], s["r"], s["w"], vendor.RMS_EPS, out=s["out"], residual_out=s["r_out"])
    elif name == "act_mul":
        f = dims["ffn"]

        def make_set():
            return {"gu": _randn(t, 2 * f, dtype=dtype, device=device), "out": torch.empty(t, f, dtype=dtype,
                                                                                            device=device)}

        def torch_path(s):
            return vendor.silu_mul(s["gu"])

        def ours(s):
            return silu_and_mul(s["gu"], out=s["out"])
    elif name == "rope_kv_write":
        hq, hkv, d = dims["q_heads"], dims["kv_heads"], dims["head_dim"]
        slots = t + 1

        def make_set():
            angles = torch.rand(slots, d // 2, device=device) * 6.28
            return {"q": _randn(t, 1, hq, d, dtype=dtype, device=device),
                    "k": _randn(t, 1, hkv, d, dtype=dtype, device=device),
                    "v": _randn(t, 1, hkv, d, dtype=dtype, device=device),
                    "cos": angles.cos().to(dtype), "sin": angles.sin().to(dtype),
                    "kc": torch.zeros(t, slots, hkv, d, dtype=dtype, device=device),
                    "vc": torch.zeros(t, slots, hkv, d, dtype=dtype, device=device),
                    "pos": torch.arange(t, dtype=torch.int32, device=device) % slots}

        def torch_path(s):  # the eager path gathers full-width rows at [B, M] positions once per forward
            positions = s["pos"].long()[:, None]
            cos, sin = (torch.cat((table, table), -1)[positions] for table in (s["cos"], s["sin"]))
            return vendor.rotary_kv_write(s["q"], s["k"], s["v"], s["kc"], s["vc"], cos, sin, positions)

        def ours(s):
            return rotary_kv_write(s["q"], s["k"], s["v"], s["cos"], s["sin"], s["kc"], s["vc"], s["pos"])
    else:
        raise SkipPoint(f"no workload for pointwise op {name}")
    variants = {"torch": torch_path} if implementation == "vendor" else {"fused": ours}
    return Workload(point.op.shape.bytes, make_set, variants)


def workload_for(point: CalibPoint, kernels: KernelPreset, device, dtype, num_sms: int) -> Workload:
    shape = point.op.shape
    if isinstance(shape, GemmShape):
        return gemm_workload(shape, point.implementation, kernels, device, dtype)
    if isinstance(shape, MoeShape):
        return moe_workload(shape, point.implementation, kernels, device, dtype)
    if isinstance(shape, AttentionShape):
        return attention_workload(shape, point.implementation, kernels, device, dtype, num_sms)
    return pointwise_workload(point, point.implementation, device, dtype)


def measure_point(point: CalibPoint, kernels: KernelPreset, timer, device, dtype, info: dict,
                  memory_budget_bytes: float) -> tuple[Measurement, str]:
    """The fastest variant's median time on rotated input sets; returns it with the variant's name."""
    work = workload_for(point, kernels, device, dtype, info["num_sms"])
    l2_bytes = info["l2_bytes"]
    wanted = math.ceil(ROTATION_L2_MULTIPLE * l2_bytes / max(work.set_bytes, 1.0))
    affordable = max(1, int(memory_budget_bytes // max(work.set_bytes, 1.0)))
    sets = [work.make_set() for _ in range(max(1, min(wanted, affordable, MAX_SETS)))]
    best: tuple[float, float, str] | None = None
    for name, call in work.variants.items():
        median, spread = timer([lambda s=s, call=call: call(s) for s in sets])
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
