"""Near-Free Parallelism: how many positions per sequence a decode forward runs at near-free latency.

``NFP(eps)`` is the largest ``M`` whose latency stays within ``(1 + eps) * t(1)``, scanning upward from
``M = 1``: the first crossing decides, and positions beyond it that dip back under the budget are
reported, not counted. It is computed for the whole forward, per module, per FFN
sub-module and per op, next to the *idle-compute* NFP: what the hardware balance predicts if extra
positions only used idle compute (weights and KV read once, no padding, FLOPs at the datasheet peak).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from nfpsim.config import KernelPreset, ModelSpec
from nfpsim.latency.base import Breakdown, LatencyModel
from nfpsim.shapes import ForwardShape, Op, submodule

FORWARD = "forward"

# ----------------------------------------------------------------------------------------------------
# The position grid
# ----------------------------------------------------------------------------------------------------

# Tile multiples whose both sides get a grid point: dense where the first steps happen, then 1-2-3
# geometric so the grid stays near 64-100 points however small the tiles are.
_TILE_MULTIPLES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


def position_grid(kernels: KernelPreset, model: ModelSpec, batch: int, max_positions: int) -> tuple[int, ...]:
    """Positions ``1..max_positions`` to sweep: every M up to 16, powers of two, and both sides of the
    tile boundaries of this implementation at this batch (GEMM/MoE M-tiles in tokens ``B*M``,
    attention query tiles in rows ``g*M`` when GQA-packed, ``M`` otherwise, kernel switch points)."""
    points = set(range(1, min(16, max_positions) + 1))
    points.update(2**i for i in range(int(math.log2(max_positions)) + 1))
    points.add(max_positions)
    token_edges = {t.block_m for t in kernels.gemm.tiles} | {kernels.moe.block_m}
    switch_points = {t.max_tokens for t in kernels.gemm.tiles if t.max_tokens is not None}
    attn = kernels.attention
    if attn.backend == "triton":
        rows_per_position, query_tiles = (model.gqa_group if attn.pack_gqa else 1), (attn.block_q,)
    else:  # torch SDPA backends tile the call's rows by 64 or 128; eager glue folds GQA into them
        rows_per_position, query_tiles = (model.gqa_group if kernels.pointwise.glue == "eager" else 1), (64, 128)
    boundaries: set[float] = {s / batch for s in switch_points}
    for tile in token_edges:
        boundaries.update(j * tile / batch for j in _TILE_MULTIPLES)
    for tile in query_tiles:
        boundaries.update(j * tile / rows_per_position for j in _TILE_MULTIPLES)
    for edge in boundaries:
        below = math.floor(edge)
        points.update(m for m in (below, below + 1) if 1 <= m <= max_positions)
    return tuple(sorted(points))


# ----------------------------------------------------------------------------------------------------
# NFP of one curve
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NfpPoint:
    nfp: int  # largest M before the first crossing of the budget
    crossing: int | None  # first M over budget (None: the whole range is near-free)
    later_within: tuple[int, ...] = ()  # grid positions past the crossing that dip back under


def first_crossing(positions: Sequence[int], latency_s: Sequence[float], eps: float,
                   refine: Callable[[int], float] | None = None) -> NfpPoint:
    """NFP of a sampled curve (``positions[0]`` must be 1).

    With ``refine``, a latency function of any ``M``, the integers between the last near-free grid
    point and the crossing are bisected, so the NFP is exact even off the grid.
    """
    if positions[0] != 1:
        raise ValueError("a position grid must start at 1")
    budget = (1.0 + eps) * latency_s[0]
    over = next((i for i, t in enumerate(latency_s) if t > budget), None)
    if over is None:
        return NfpPoint(positions[-1], None)
    within, crossing = positions[over - 1], positions[over]
    if refine is not None:
        while crossing - within > 1:
            mid = (within + crossing) // 2
            if refine(mid) > budget:
                crossing = mid
            else:
                within = mid
    later = tuple(m for m, t in zip(positions[over + 1:], latency_s[over + 1:]) if t <= budget)
    return NfpPoint(within, crossing, later)


# ----------------------------------------------------------------------------------------------------
# Curves per key: the forward, modules, FFN sub-modules, ops
# ----------------------------------------------------------------------------------------------------


def _keys_of(name: str, module: str, sub: str | None) -> tuple[str, ...]:
    """The curves an op adds to: ``forward``, its module, its FFN sub-module, itself as ``op:<name>``."""
    keys = (FORWARD, module, f"op:{name}")
    return keys + (sub,) if sub else keys


def _group_times(breakdown: Breakdown) -> dict[str, float]:
    """Seconds per key of one forward."""
    times: dict[str, float] = {}
    for op in breakdown.ops:
        for key in _keys_of(op.name, op.module, op.submodule):
            times[key] = times.get(key, 0.0) + op.total_s
    return times


@dataclass
class Curve:
    key: str
    positions: tuple[int, ...]
    latency_s: tuple[float, ...]
    nfp: NfpPoint
    idle_nfp: int | None  # None: no FLOPs, so idle compute never runs out
    parent: str | None = None

    @property
    def factor(self) -> float | None:
        """Idle-compute over-prediction: idle NFP / NFP."""
        return None if self.idle_nfp is None else self.idle_nfp / self.nfp.nfp

    def to_dict(self) -> dict:
        return {
            "nfp": self.nfp.nfp,
            "idle_nfp": self.idle_nfp,
            "factor": self.factor,
            "first_crossing": self.nfp.crossing,
            "later_within_budget": list(self.nfp.later_within),
            "saturated": self.nfp.crossing is None,
            "parent": self.parent,
            "curve": [{"positions": m, "latency_s": t} for m, t in zip(self.positions, self.latency_s)],
        }


@dataclass
class NfpReport:
    hardware: str
    model: str
    kernels: str
    latency: str
    latency_origin: str
    batch: int
    context: int
    eps: float
    tp: int
    balance_flop_per_byte: float
    forward: Curve
    modules: dict[str, Curve]
    ops: dict[str, Curve]
    breakdown_at_1: Breakdown
    breakdown_at_nfp: Breakdown
    sources: dict[str, int] = field(default_factory=dict)

    @property
    def positions(self) -> tuple[int, ...]:
        return self.forward.positions

    def to_dict(self) -> dict:
        return {
            "hardware": self.hardware,
            "model": self.model,
            "kernels": self.kernels,
            "latency": self.latency,
            "latency_origin": self.latency_origin,
            "batch": self.batch,
            "context": self.context,
            "eps": self.eps,
            "tp": self.tp,
            "positions": list(self.positions),
            "balance_flop_per_byte": self.balance_flop_per_byte,
            "nfp": self.forward.nfp.nfp,
            "idle_nfp": self.forward.idle_nfp,
            "overprediction": self.forward.factor,
            "forward": self.forward.to_dict(),
            "modules": {k: c.to_dict() for k, c in self.modules.items()},
            "ops": {k: c.to_dict() for k, c in self.ops.items()},
            "breakdown_at_1": _breakdown_rows(self.breakdown_at_1),
            "breakdown_at_nfp": _breakdown_rows(self.breakdown_at_nfp),
            "sources": self.sources,
        }


def _breakdown_rows(breakdown: Breakdown) -> list[dict]:
    return [{"name": op.name, "module": op.module, "count": op.count, "time_s": op.total_s,
             "bytes": op.cost.bytes * op.count, "flops": op.cost.flops * op.count,
             "bound": op.cost.bound, "source": op.cost.source} for op in breakdown.ops]


# ----------------------------------------------------------------------------------------------------
# The analysis
# ----------------------------------------------------------------------------------------------------


ForwardOps = Callable[[int], Sequence[Op]]  # the ops of a forward at M positions (e.g. a captured one)


class _Sweep:
    """Forwards of one (model, batch, context) at any ``M``, memoized: the grid and the bisection
    share them, so each ``M`` is priced once. ``forward`` replaces :func:`decompose` as the source of ops."""

    def __init__(self, latency: LatencyModel, model: ModelSpec, batch: int, context: int, tp: int,
                 forward: ForwardOps | None = None):
        self.latency, self.model, self.forward = latency, model, forward
        self.batch, self.context, self.tp = batch, context, tp
        self._times: dict[int, dict[str, float]] = {}
        self._breakdowns: dict[int, Breakdown] = {}
        self._ops: dict[int, tuple[Op, ...]] = {}

    def shape(self, positions: int) -> ForwardShape:
        return ForwardShape.uniform(self.batch, positions, self.context, self.tp)

    def breakdown(self, positions: int) -> Breakdown:
        if positions not in self._breakdowns:
            if self.forward is None:
                self._breakdowns[positions] = self.latency.forward(self.model, self.shape(positions))
            else:
                self._breakdowns[positions] = self.latency.breakdown(self.ops(positions))
        return self._breakdowns[positions]

    def time(self, key: str, positions: int) -> float:
        if positions not in self._times:
            self._times[positions] = _group_times(self.breakdown(positions))
        return self._times[positions].get(key, 0.0)

    def ops(self, positions: int) -> tuple[Op, ...]:
        if positions not in self._ops:
            self._ops[positions] = tuple(self.forward(positions)) if self.forward else \
                self.latency.decompose(self.model, self.shape(positions))
        return self._ops[positions]


def _paired(ops: Sequence[Op], base: Sequence[Op]) -> list[tuple[Op, Op | None]]:
    """Each op with the op it is at ``M = 1``: the same name, the same occurrence of it (a forward may
    launch ops at larger M that it does not at M = 1, such as a layout copy: those pair with None)."""
    first: dict[tuple[str, int], Op] = {}
    seen: dict[str, int] = {}
    for op in base:
        first[(op.name, seen.get(op.name, 0))] = op
        seen[op.name] = seen.get(op.name, 0) + 1
    pairs, seen = [], {}
    for op in ops:
        pairs.append((op, first.get((op.name, seen.get(op.name, 0)))))
        seen[op.name] = seen.get(op.name, 0) + 1
    return pairs


# The idle-compute argument is the hardware's answer, not the model's: it is not capped by the model's
# context window (a cap made it 1 at long contexts), only searched up to this many positions.
IDLE_LIMIT = 1 << 16


def idle_nfp(sweep: _Sweep, key: str, eps: float, peak_flop_per_s: float, hbm_bytes_per_s: float,
             limit: int) -> int | None:
    """Largest ``M <= limit`` the idle-compute argument allows for ``key``: each op's bytes stay at
    their ``M = 1`` value and only its FLOPs grow, at the datasheet peak. None when ``key`` has no FLOPs.
    """

    def idle_time(positions: int) -> tuple[float, float]:
        total = flops_total = 0.0
        for op, op1 in _paired(sweep.ops(positions), base_ops):
            if key in _keys_of(op.name, op.module, submodule(op)):
                # an op that only exists with several positions (a layout copy) moved no bytes at M = 1
                bytes_ = op1.shape.bytes if op1 is not None else 0.0
                total += op.count * max(bytes_ / hbm_bytes_per_s, op.shape.flops / peak_flop_per_s)
                flops_total += op.count * op.shape.flops
        return total, flops_total

    base_ops = sweep.ops(1)
    t1, flops1 = idle_time(1)
    if flops1 == 0.0:
        return None
    budget = (1.0 + eps) * t1
    within, over = 1, 2
    while over <= limit and idle_time(over)[0] <= budget:  # double until over budget
        within, over = over, over * 2
    if over > limit:
        if idle_time(limit)[0] <= budget:
            return limit
        over = limit
    while over - within > 1:
        mid = (within + over) // 2
        within, over = (mid, over) if idle_time(mid)[0] <= budget else (within, mid)
    return within


def analyze(latency: LatencyModel, model: ModelSpec, *, batch: int, context: int, eps: float,
            positions: Sequence[int] | None = None, max_positions: int = 512, tp: int = 1,
            forward: ForwardOps | None = None, name: str | None = None) -> NfpReport:
    """NFP and idle-compute NFP of the forward, its modules and its ops at one (batch, context).

    ``positions=None`` sweeps :func:`position_grid` and bisects between grid points for an exact NFP;
    an explicit ``positions`` is the grid and the NFP is one of its points. ``forward`` (``M -> ops``,
    e.g. a captured user forward) replaces ``decompose(model, ...)``; ``model`` then only sets the grid's
    tile edges, the dtype of the peak FLOP rate and the context window, and ``name`` names the forward.
    """
    grid = tuple(positions) if positions is not None else position_grid(
        latency.kernels, model, batch, max_positions)
    refine = positions is None
    sweep = _Sweep(latency, model, batch, context, tp, forward)
    hw = latency.hardware
    peak, bandwidth = hw.peak_flop_per_s(model.dtype), hw.hbm_bytes_per_s

    first = sweep.breakdown(1)
    keys = list(_group_times(first))

    def curve(key: str, parent: str | None = None) -> Curve:
        times = tuple(sweep.time(key, m) for m in grid)
        point = first_crossing(grid, times, eps, (lambda m: sweep.time(key, m)) if refine else None)
        return Curve(key, grid, times, point, idle_nfp(sweep, key, eps, peak, bandwidth, IDLE_LIMIT), parent)

    forward = curve(FORWARD)
    modules: dict[str, Curve] = {}
    sub_parent = {op.submodule: "ffn" for op in first.ops if op.submodule}
    for key in keys:
        if key == FORWARD or key.startswith("op:"):
            continue
        modules[key] = curve(key, sub_parent.get(key))
    module_of = {op.name: op.module for op in first.ops}
    ops = {key[3:]: curve(key, module_of[key[3:]]) for key in keys if key.startswith("op:")}
    sources: dict[str, int] = {}
    for op in first.ops:
        sources[op.cost.source] = sources.get(op.cost.source, 0) + 1
    return NfpReport(
        hardware=hw.name, model=name or model.name, kernels=latency.kernels.name, latency=latency.kind,
        latency_origin=latency.origin,
        batch=batch, context=context, eps=eps, tp=tp,
        balance_flop_per_byte=hw.balance_flop_per_byte(model.dtype),
        forward=forward, modules=modules, ops=ops,
        breakdown_at_1=first, breakdown_at_nfp=sweep.breakdown(forward.nfp.nfp), sources=sources,
    )
