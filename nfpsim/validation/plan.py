"""What a validation runs: the curves (model, implementation, batch, context, position grid) and their cost.

Pure: no torch, runs anywhere. Each model runs with ``num_layers`` layers (``null``: all of them) and the
latency model prices exactly that reduced model, so measurement and prediction describe the same work; the
output states both layer counts. The position grid is :func:`nfpsim.nfp.position_grid` of the
implementation (every M up to 16, powers of two, both sides of its tile boundaries at this batch), thinned
to ``max_points`` where set.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from nfpsim.calibration.plan import (COMPILE_S, FILL_BYTES_PER_S, HOST_CALL_S, KERNEL_MARGIN, MIN_KERNEL_S, POINT_S,
                                     ROTATION_L2_MULTIPLE, TimingSettings, timer_seconds)
from nfpsim.calibration.run import read_ints, read_names
from nfpsim.config import ConfigReader, HardwareSpec, KernelPreset, ModelSpec, load_kernels, load_model
from nfpsim.errors import ConfigError
from nfpsim.latency import LATENCY_KINDS, AnalyticLatencyModel
from nfpsim.latency.constants import LatencyConstants
from nfpsim.nfp import position_grid
from nfpsim.shapes import AttentionShape, ForwardShape, GemmShape, MoeShape, decompose
from nfpsim.validation.splits import attention_splits, gemm_split

EPS = (0.05, 0.1, 0.2)
# Grid points kept whatever max_points says: the dense start, where near-free budgets usually end (one
# position past a 16-token tile at batch 1).
ALWAYS_KEPT = 17


@dataclass(frozen=True)
class ValidationSettings:
    hardware: HardwareSpec  # the GPU the plan is estimated for (on a GPU, the device decides)
    models: tuple[ModelSpec, ...]  # as configured (full layer counts)
    implementations: tuple[KernelPreset, ...]
    batches: tuple[int, ...]
    contexts: tuple[int, ...]
    max_positions: int
    max_points: int | None
    num_layers: int | None
    eps: tuple[float, ...]
    latency: str
    calibration_dir: str | None
    timing: TimingSettings
    time_budget_s: float | None
    profile_positions: tuple[int, ...]
    seed: int
    memory_fraction: float
    plan_only: bool
    output_dir: str | None
    measured: str | None
    plot: bool

    @property
    def presets(self) -> dict[str, KernelPreset]:
        return {k.name: k for k in self.implementations}

    @classmethod
    def from_config(cls, cfg: Any) -> ValidationSettings:
        r = ConfigReader(cfg, "")
        eps = tuple(sorted({ConfigReader({"eps": v}, "").float("eps", low=0, high=10, low_open=True)
                            for v in r.raw("eps")}))
        profile = r.raw("profile_positions", None) or []
        settings = cls(
            hardware=HardwareSpec.from_config(r.raw("hardware"), "hardware"),
            models=tuple(read_names(r, "models", "model", load_model)),
            implementations=tuple(read_names(r, "implementations", "kernels", load_kernels)),
            batches=tuple(read_ints(r, "batches")),
            contexts=tuple(read_ints(r, "contexts", low=0)),
            max_positions=r.int("max_positions", low=1, high=4096),
            max_points=r.int("max_points", low=ALWAYS_KEPT + 2, default=None),
            num_layers=r.int("num_layers", low=1, default=None),
            eps=eps,
            latency=r.str("latency", choices=LATENCY_KINDS),
            calibration_dir=r.raw("calibration_dir", None),
            timing=TimingSettings(warmup=r.int("warmup", low=0, high=100), repeats=r.int("repeats", low=1, high=1000),
                                  min_replay_s=r.float("min_replay_ms", low=0) * 1e-3),
            time_budget_s=r.float("time_budget_s", low=0, low_open=True, default=None),
            profile_positions=tuple(ConfigReader({"p": p}, "profile_positions").int("p", low=1) for p in profile),
            seed=r.int("seed", low=0),
            memory_fraction=r.float("memory_fraction", low=0.05, high=0.95),
            plan_only=r.bool("plan"),
            output_dir=r.raw("output_dir", None),
            measured=r.raw("measured", None),
            plot=r.bool("plot"),
        )
        if not settings.eps:
            raise ConfigError("eps: must list at least one budget such as [0.05, 0.1, 0.2]")
        return settings


# ----------------------------------------------------------------------------------------------------
# Models, curves and their grids
# ----------------------------------------------------------------------------------------------------


def reduced(model: ModelSpec, num_layers: int | None) -> ModelSpec:
    """``model`` with ``num_layers`` layers (dense-first layers kept first, as many as fit); the latency
    model then prices exactly the forward that runs. ``None`` keeps every layer."""
    if num_layers is None or num_layers >= model.num_layers:
        return model
    if num_layers < 1:
        raise ConfigError(f"num_layers={num_layers}: must be >= 1")
    return dataclasses.replace(model, num_layers=num_layers,
                               num_dense_layers=min(model.num_dense_layers, num_layers))


def cache_bytes(model: ModelSpec, batch: int, slots: int, bytes_per_element: int) -> int:
    """Bytes ``KVCache.random`` allocates, without allocating them (for memory planning)."""
    return model.num_layers * batch * slots * model.cache_elements_per_token * bytes_per_element


def weight_bytes(model: ModelSpec, bytes_per_element: int) -> int:
    """Bytes ``ModelWeights.random`` allocates (tied embeddings once)."""
    total, _ = model.param_counts()
    norms = (2 * model.num_layers + 1) * model.hidden_size
    return (total + norms) * bytes_per_element


@dataclass(frozen=True)
class CurvePlan:
    model: ModelSpec  # what runs and is priced: reduced layers, window widened to the context if needed
    full_num_layers: int
    kernels: KernelPreset
    batch: int
    context: int
    positions: tuple[int, ...]
    beyond_max_context: bool  # the configured model's window is shorter than context + max positions

    @property
    def implementation(self) -> str:
        return self.kernels.name

    @property
    def key(self) -> tuple[str, str, int, int]:
        return self.model.name, self.implementation, self.batch, self.context


def thin(grid: tuple[int, ...], max_points: int | None) -> tuple[int, ...]:
    """About ``max_points`` of ``grid`` (never fewer than the kept ones): every point up to
    :data:`ALWAYS_KEPT`, both sides of each power of two (``p, p+1``: where a 16-multiple tile fills) and
    the last point, then other boundary pairs evenly by rank, both sides together so a step stays visible."""
    if max_points is None or len(grid) <= max_points:
        return grid
    points = set(grid)
    kept = {m for m in grid if m <= ALWAYS_KEPT or m == grid[-1]}
    kept |= {n for m in grid if m & (m - 1) == 0 for n in (m, m + 1) if n in points}
    units: list[tuple[int, ...]] = []  # the rest as boundary pairs (m, m+1), else single points
    for m in sorted(points - kept):
        if units and units[-1] == (m - 1,):
            units[-1] = (m - 1, m)
        else:
            units.append((m,))
    room = max_points - len(kept)
    if units and room > 0:
        count = min(len(units), max(1, round(room * len(units) / sum(map(len, units)))))
        for i in range(count):
            kept.update(units[int(i * len(units) / count)])
    return tuple(sorted(kept))


def validation_grid(kernels: KernelPreset, model: ModelSpec, batch: int, max_positions: int,
                    max_points: int | None) -> tuple[int, ...]:
    return thin(position_grid(kernels, model, batch, max_positions), max_points)


def plan_curves(settings: ValidationSettings) -> tuple[list[CurvePlan], list[dict]]:
    """Every curve to measure, in run order (model, batch, context, implementation: each model's weights
    and each cache are made once), and the skipped ones with their reason."""
    curves, skipped = [], []
    for configured in settings.models:
        if configured.is_mla:
            skipped.append({"model": configured.name, "reason": "multi-head latent attention: no vendor path "
                            "(FlashAttention-2 has no 576-wide heads) and no validation forward yet"})
            continue
        top = max(settings.contexts) + settings.max_positions
        model = reduced(configured, settings.num_layers)
        model = dataclasses.replace(model, max_context=max(model.max_context, top))
        for batch in settings.batches:
            for context in settings.contexts:
                for kernels in settings.implementations:
                    grid = validation_grid(kernels, model, batch, settings.max_positions, settings.max_points)
                    curves.append(CurvePlan(model, configured.num_layers, kernels, batch, context, grid,
                                            context + settings.max_positions > configured.max_context))
    return curves, skipped


# ----------------------------------------------------------------------------------------------------
# Cost
# ----------------------------------------------------------------------------------------------------

MODEL_SETUP_S = 5.0  # per model: weights drawn, the two implementations' agreement check, allocator warm-up
PLOT_S = 2.0  # the model's overlay redrawn and written after each curve
START_S = 20.0  # imports, CUDA context, the latency models, the result's writes


def point_seconds(curve: CurvePlan, positions: int, latency: AnalyticLatencyModel, hardware: HardwareSpec,
                  timing: TimingSettings, sets: int, profiled: bool) -> float:
    """Upper bound of one grid point: building its forwards and timing them (the calibration timer's
    schedule, :func:`nfpsim.calibration.plan.timer_seconds`, with every op at ``KERNEL_MARGIN`` times
    its analytic time and ``HOST_CALL_S`` of Python per step), and each op alone where profiled."""
    shape = ForwardShape.uniform(curve.batch, positions, curve.context)
    breakdown = latency.forward(curve.model, shape)
    steps = sum(op.count for op in breakdown.ops)
    forward_bytes = sum(op.shape.bytes * op.count for op in decompose(curve.model, shape))  # least it must move
    floor_s = max(steps * MIN_KERNEL_S, forward_bytes / hardware.hbm_bytes_per_s)
    total = POINT_S + steps * HOST_CALL_S + timer_seconds(
        sets, max(KERNEL_MARGIN * breakdown.total_s, floor_s), steps * HOST_CALL_S, timing, min_call_s=floor_s)
    if profiled:
        for op in breakdown.ops:
            calls = op.count * sets
            total += timer_seconds(calls, max(KERNEL_MARGIN * op.cost.time_s, MIN_KERNEL_S), HOST_CALL_S, timing)
    return total


def estimate_seconds(curves: list[CurvePlan], hardware: HardwareSpec, timing: TimingSettings,
                     profile_positions: tuple[int, ...] = (), max_positions: int | None = None) -> float:
    """Upper bound of the GPU-machine time the curves take on ``hardware``: start-up, per model its
    weights and agreement check, per (model, batch, context) its caches, every point
    (:func:`point_seconds`), an overlay per curve, and one compilation per Triton kernel specialization."""
    models: dict[str, AnalyticLatencyModel] = {}
    total = START_S + MODEL_SETUP_S * len({c.model.name for c in curves})
    caches = set()
    specializations: set[tuple] = set()
    for curve in curves:
        latency = models.setdefault(curve.implementation, AnalyticLatencyModel(hardware, curve.kernels))
        sets = forward_sets(curve.model, hardware.l2_bytes)
        bytes_per_element = curve.model.bytes_per_element
        if (curve.model.name, curve.batch, curve.context) not in caches:
            caches.add((curve.model.name, curve.batch, curve.context))
            total += sets * memory_bytes(curve, bytes_per_element) / FILL_BYTES_PER_S
        total += PLOT_S
        for m in curve.positions:
            total += point_seconds(curve, m, latency, hardware, timing, sets, m in profile_positions)
            if curve.implementation == "triton":
                specializations.update(_specializations(curve, m, latency.constants))
    return total + COMPILE_S * len(specializations)


def _divisibility(n: int) -> int:
    return 1 if n == 1 else (16 if n % 16 == 0 else 0)


def _specializations(curve: CurvePlan, positions: int, constants: LatencyConstants) -> set[tuple]:
    """Triton kernels the forward may compile (as :func:`nfpsim.calibration.plan.specializations`
    counts them: a split-K or split-KV reduction and the MoE's five kernels each count)."""
    out = set()
    tokens = curve.batch * positions
    for op in decompose(curve.model, ForwardShape.uniform(curve.batch, positions, curve.context)):
        if isinstance(op.shape, GemmShape):
            split = gemm_split(op.shape, curve.kernels, constants)
            key = (_divisibility(op.shape.n), _divisibility(op.shape.k), _divisibility(tokens))
            out.add(("gemm", key, split > 1))
            if split > 1:
                out.add(("sum_slices", key))
        elif isinstance(op.shape, AttentionShape):
            split = attention_splits(op.shape, curve.kernels, constants)
            out.add(("attention", op.shape.causal, _divisibility(positions), split))
            if split > 1:
                out.add(("merge_splits", split))
        elif isinstance(op.shape, MoeShape):
            out.update(("moe", kernel, _divisibility(tokens)) for kernel in range(5))
        else:
            out.add((op.name, _divisibility(tokens)))
    return out


def memory_bytes(curve: CurvePlan, bytes_per_element: int) -> int:
    """Weights plus a cache for the largest grid point (activations are small beside them)."""
    slots = curve.context + curve.positions[-1]
    return weight_bytes(curve.model, bytes_per_element) + cache_bytes(curve.model, curve.batch, slots,
                                                                      bytes_per_element)


def activation_bytes(curve: CurvePlan, bytes_per_element: int, max_split: int = 32) -> int:
    """A bound of what a forward at the curve's largest grid point allocates beside weights and caches:
    every step output of one layer alive at once, the logits, and fp32 split-KV partials at ``max_split``
    splits (the largest the triton preset allows)."""
    m = curve.model
    tokens = curve.batch * curve.positions[-1]
    qkv = m.num_heads * m.head_dim + m.num_kv_heads * (m.head_dim + m.v_head_dim)
    ffn = max(m.ffn_size if m.num_dense_layers else 0, m.top_k * m.expert_ffn_size, m.shared_ffn_size)
    per_token = 2 * qkv + 2 * m.num_heads * m.v_head_dim + 8 * m.hidden_size + 4 * ffn + 2 * m.top_k * m.hidden_size
    logits = tokens * m.vocab_size * (bytes_per_element + 4)
    partials = max_split * tokens * m.num_heads * (m.v_head_dim + 1) * 4
    return tokens * per_token * bytes_per_element + logits + partials


def peak_bytes(curve: CurvePlan, bytes_per_element: int, sets: int, max_positions: int) -> int:
    """What measuring the curve holds at most: ``sets`` copies of the weights and of caches of
    ``context + max_positions`` slots (as the run makes them), plus one forward's activations."""
    slots = curve.context + max_positions
    held = weight_bytes(curve.model, bytes_per_element) + cache_bytes(curve.model, curve.batch, slots,
                                                                      bytes_per_element)
    return sets * held + activation_bytes(curve, bytes_per_element)


def plan_record(curves: list[CurvePlan], skipped: list[dict], settings: ValidationSettings, estimate_s: float) -> dict:
    return {
        "hardware": settings.hardware.name,
        "estimated_gpu_seconds": estimate_s,
        "num_layers": settings.num_layers,
        "eps": list(settings.eps),
        "num_curves": len(curves),
        "num_points": sum(len(c.positions) for c in curves),
        "curves": [{"model": c.model.name, "implementation": c.implementation, "batch": c.batch,
                    "context": c.context, "num_layers": c.model.num_layers, "full_num_layers": c.full_num_layers,
                    "positions": list(c.positions), "memory_gib": memory_bytes(c, c.model.bytes_per_element) / 2**30,
                    "beyond_max_context": c.beyond_max_context} for c in curves],
        "skipped": skipped,
    }


def describe(curves: list[CurvePlan], skipped: list[dict]) -> list[str]:
    lines = []
    for c in curves:
        layers = f"{c.model.num_layers}/{c.full_num_layers} layers"
        note = " (beyond the model's window)" if c.beyond_max_context else ""
        lines.append(f"{c.model.name} {c.implementation} batch {c.batch} context {c.context}{note}, {layers}: "
                     f"{len(c.positions)} positions {', '.join(map(str, c.positions))}")
    lines += [f"skipped {s['model']}: {s['reason']}" for s in skipped]
    return lines


MAX_FORWARD_SETS = 4


def forward_sets(model: ModelSpec, l2_bytes: int) -> int:
    """Independent weight/cache sets per timed point: one, unless a forward moves less than three L2s."""
    ops = decompose(model, ForwardShape.uniform(1, 1, 0))
    forward_bytes = sum(op.shape.bytes * op.count for op in ops)
    return max(1, min(MAX_FORWARD_SETS, math.ceil(ROTATION_L2_MULTIPLE * l2_bytes / forward_bytes)))
