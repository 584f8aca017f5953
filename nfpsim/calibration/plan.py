"""What a calibration times: the ops of the configured models, on grids straddling tile boundaries.

Every point is an op exactly as :func:`nfpsim.shapes.decompose` produces it, so a measurement answers
the latency model's own question for that shape. Token counts (GEMM, MoE, pointwise) sit on both
sides of each multiple of 16 up to 128, of 32 up to 256, of 64 up to 512 and of 128 beyond; attention
positions on both sides of every query-tile boundary of the implementation (``block_q / g`` with GQA
packing), at a few batch sizes and contexts. Pure: no torch, runs anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nfpsim.latency.table import shape_to_dict
from nfpsim.config import HardwareSpec, KernelPreset, ModelSpec
from nfpsim.latency.analytic import AnalyticLatencyModel, family_of
from nfpsim.shapes import AttentionShape, ForwardShape, GemmShape, MoeShape, Op, PointwiseShape, decompose

IMPLEMENTATIONS = ("triton", "vendor")
POINTWISE_OPS = ("add_norm", "act_mul", "rope_kv_write")


def straddle(boundaries: list[float], top: int, base: tuple[int, ...] = (1, 2, 3, 4, 6, 8)) -> tuple[int, ...]:
    """``base`` plus both sides (``b``, ``b+1`` and ``b-1`` where integral) of every boundary <= top."""
    points = {m for m in base if m <= top}
    for edge in boundaries:
        below = math.floor(edge)
        candidates = (below - 1, below, below + 1) if edge == below else (below, below + 1)
        points.update(m for m in candidates if 1 <= m <= top)
    return tuple(sorted(points))


def token_grid(max_tokens: int) -> tuple[int, ...]:
    """Both sides of each multiple of 16 up to 128, of 32 up to 256, of 64 up to 512, of 128 beyond."""
    edges: list[float] = list(range(16, 129, 16)) + list(range(160, 257, 32)) + list(range(320, 513, 64))
    edges += list(range(640, max_tokens + 1, 128))
    return straddle(edges, max_tokens)


def attention_positions(kernels: KernelPreset, model: ModelSpec, max_positions: int) -> tuple[int, ...]:
    rows_per_position = model.gqa_group if kernels.attention.pack_gqa else 1
    tile = kernels.attention.block_q / rows_per_position
    edges = [tile * j for j in range(1, 1 + int(max_positions / tile))] if tile >= 1 else []
    edges = [e for e in edges if e <= 32 or math.log2(e).is_integer() or e % 64 == 0]
    return straddle(edges + [16, 32, 64, 128, 256], max_positions)


@dataclass(frozen=True)
class CalibPoint:
    """One shape to time with one implementation. ``dims`` carries the tensor sizes a pointwise op
    needs (its :class:`PointwiseShape` keeps only bytes)."""

    implementation: str
    model: str
    op: Op
    dims: tuple[tuple[str, int], ...] = ()

    @property
    def family(self) -> str:
        return family_of(self.op)

    @property
    def key(self) -> tuple:
        """Identity for de-duplication: the same shape from two models is timed once."""
        return self.implementation, self.op.name if self.family == "pointwise" else self.family, \
            self.op.shape, self.dims


@dataclass(frozen=True)
class PlanSettings:
    models: tuple[ModelSpec, ...]
    implementations: tuple[KernelPreset, ...]
    max_tokens: int = 1024
    batches: tuple[int, ...] = (1, 8, 32)
    contexts: tuple[int, ...] = (1024, 4096, 16384)
    max_positions: int = 256
    pointwise_tokens: tuple[int, ...] = (1, 16, 64, 256, 1024, 4096)


@dataclass
class Plan:
    points: list[CalibPoint]
    token_grid: tuple[int, ...]
    attention_grids: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for p in self.points:
            out.setdefault(p.implementation, {}).setdefault(p.family, 0)
            out[p.implementation][p.family] += 1
        return out


def _pointwise_dims(model: ModelSpec, name: str, tokens: int) -> tuple[tuple[str, int], ...] | None:
    if name == "add_norm":
        return ("tokens", tokens), ("hidden", model.hidden_size)
    if name == "act_mul":
        return (("tokens", tokens), ("ffn", model.ffn_size)) if model.num_dense_layers else None
    if name == "rope_kv_write" and not model.is_mla:
        return (("tokens", tokens), ("q_heads", model.num_heads), ("kv_heads", model.num_kv_heads),
                ("head_dim", model.head_dim))
    return None


def build_plan(settings: PlanSettings) -> Plan:
    tokens = token_grid(settings.max_tokens)
    points: dict[tuple, CalibPoint] = {}

    def add(point: CalibPoint) -> None:
        points.setdefault(point.key, point)

    attention_grids = {}
    for kernels in settings.implementations:
        for model in settings.models:
            for t in tokens:  # GEMMs and MoE experts depend on the token count only
                for op in decompose(model, ForwardShape.uniform(t, 1, 0)):
                    if isinstance(op.shape, (GemmShape, MoeShape)):
                        add(CalibPoint(kernels.name, model.name, op))
            for t in settings.pointwise_tokens:
                by_name = {op.name: op for op in decompose(model, ForwardShape.uniform(t, 1, 0))}
                for name in POINTWISE_OPS:
                    dims = _pointwise_dims(model, name, t)
                    if dims is not None and name in by_name:
                        add(CalibPoint(kernels.name, model.name, by_name[name], dims))
            if kernels.name == "vendor" and model.is_mla:
                continue  # FlashAttention-2 has no 576-wide heads; torch would fall back to another kernel
            grid = attention_positions(kernels, model, settings.max_positions)
            attention_grids[f"{kernels.name}/{model.name}"] = grid
            for batch in settings.batches:
                for context in settings.contexts:
                    for m in grid:  # a kernel does not know the model's window: contexts may exceed it
                        shape = ForwardShape.uniform(batch, m, context)
                        op = next(o for o in decompose(model, shape, kernels.pointwise.glue)
                                  if isinstance(o.shape, AttentionShape))
                        add(CalibPoint(kernels.name, model.name, op))
    return Plan(list(points.values()), tokens, attention_grids)


# ----------------------------------------------------------------------------------------------------
# How long it will take
# ----------------------------------------------------------------------------------------------------

# Per timed point: Python set-up, buffer allocation and one graph capture (seen ~5-10 ms per point with
# torch CUDA graphs), and the first launch of each new Triton specialization (~1.5 s of compilation).
POINT_OVERHEAD_S = 0.01
COMPILE_S = 1.5


@dataclass(frozen=True)
class TimingSettings:
    warmup: int = 3
    repeats: int = 10
    min_replay_s: float = 2e-4  # each graph replay runs at least this long, so launch gaps amortize


def split_candidates(point: CalibPoint) -> int:
    """How many split variants a point is timed with (the host picks the fastest, like the model)."""
    if point.implementation != "triton" or point.family not in ("gemm", "attention"):
        return 1
    return 3


def estimate_seconds(plan: Plan, hardware: HardwareSpec, presets: dict[str, KernelPreset],
                     timing: TimingSettings) -> float:
    """GPU time the plan needs on ``hardware``: per point, warm-up and timed graph replays at the
    analytic model's kernel time (never shorter than ``min_replay_s``), plus fixed per-point costs and
    one compilation per Triton kernel specialization."""
    models = {name: AnalyticLatencyModel(hardware, preset) for name, preset in presets.items()}
    total = 0.0
    specializations = set()
    for point in plan.points:
        kernel_s = models[point.implementation].op_cost(point.op).time_s
        replay_s = max(kernel_s, timing.min_replay_s)
        total += split_candidates(point) * ((timing.warmup + timing.repeats + 1) * replay_s + POINT_OVERHEAD_S)
        if point.implementation == "triton":
            specializations.add((point.family, point.op.name, _divisibility(point.op)))
    return total + COMPILE_S * len(specializations)


def _divisibility(op: Op) -> tuple:
    """Triton recompiles an integer argument's kernel when it is 1 or a multiple of 16."""
    shape = op.shape
    sizes = [getattr(shape, f) for f in ("tokens", "num_seqs", "positions", "context") if hasattr(shape, f)]
    return tuple(1 if s == 1 else (16 if s % 16 == 0 else 0) for s in sizes)


def describe(plan: Plan) -> list[str]:
    lines = [f"tokens ({len(plan.token_grid)}): {', '.join(map(str, plan.token_grid))}"]
    for key, grid in plan.attention_grids.items():
        lines.append(f"attention positions {key} ({len(grid)}): {', '.join(map(str, grid))}")
    for impl, families in plan.counts().items():
        lines.append(f"{impl}: " + ", ".join(f"{n} {family}" for family, n in sorted(families.items())))
    return lines


def point_summary(point: CalibPoint) -> dict:
    shape = point.op.shape
    fields = dict(point.dims) if isinstance(shape, PointwiseShape) else shape_to_dict(shape)
    return {"implementation": point.implementation, "family": point.family, "op": point.op.name,
            "model": point.model, **fields}
