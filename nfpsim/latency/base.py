"""The narrow latency interface: ops in, a per-op breakdown out.

The simulator and the search see only :meth:`LatencyModel.forward_time` / :meth:`LatencyModel.forward`;
whether a time came from the analytic NFP model or a calibration table is recorded per op in
``OpTiming.source`` and is nobody else's business.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass

from nfpsim.config import HardwareSpec, KernelPreset, ModelSpec
from nfpsim.shapes import ForwardShape, Op, decompose, submodule

BOUNDS = ("memory", "compute", "launch", "network")


@dataclass(frozen=True)
class OpCost:
    """What one instance of an op costs on one implementation."""

    time_s: float
    bytes: float  # bytes actually moved, re-streaming and partials included
    flops: float  # FLOPs actually executed, tile padding included
    bound: str  # one of BOUNDS: which term set the time
    source: str  # "analytic" or "measured"


@dataclass(frozen=True)
class OpTiming:
    name: str
    module: str
    submodule: str | None
    count: int
    useful_flops: float  # compulsory, per instance (shapes.py)
    useful_bytes: float
    cost: OpCost

    @property
    def total_s(self) -> float:
        return self.cost.time_s * self.count


@dataclass(frozen=True)
class Breakdown:
    """Per-op times of one forward; ``total_s`` is the forward latency."""

    ops: tuple[OpTiming, ...]

    @property
    def total_s(self) -> float:
        return sum(op.total_s for op in self.ops)

    def by_module(self) -> dict[str, float]:
        """Seconds per top-level module and per FFN sub-module (``gate_up_proj``, ``experts``, ...)."""
        times: dict[str, float] = defaultdict(float)
        for op in self.ops:
            times[op.module] += op.total_s
            if op.submodule:
                times[op.submodule] += op.total_s
        return dict(times)

    def by_op(self) -> dict[str, float]:
        return {op.name: op.total_s for op in self.ops}


# Bounded so that a long simulation over ever-new shapes cannot grow it without limit.
_CACHE_LIMIT = 200_000


class LatencyModel(ABC):
    """Prices ops of a forward on one GPU with one kernel implementation."""

    kind: str = "abstract"

    def __init__(self, hardware: HardwareSpec, kernels: KernelPreset):
        self.hardware = hardware
        self.kernels = kernels
        self.origin = f"{self.kind} model of {kernels.name} kernels on {hardware.name}"
        self._costs: dict[tuple[str, object], OpCost] = {}

    @abstractmethod
    def _price(self, op: Op) -> OpCost:
        """Cost of one instance of ``op``."""

    def op_cost(self, op: Op) -> OpCost:
        key = (op.name, op.shape)
        cost = self._costs.get(key)
        if cost is None:
            if len(self._costs) >= _CACHE_LIMIT:
                self._costs.clear()
            cost = self._costs[key] = self._price(op)
        return cost

    def forward(self, model: ModelSpec, shape: ForwardShape) -> Breakdown:
        timings = tuple(
            OpTiming(op.name, op.module, submodule(op), op.count, op.flops, op.bytes, self.op_cost(op))
            for op in self.decompose(model, shape)
        )
        return Breakdown(timings)

    def forward_time(self, model: ModelSpec, shape: ForwardShape) -> float:
        """Latency in seconds of one forward of ``shape`` (the simulator's hot path)."""
        return sum(self.op_cost(op).time_s * op.count for op in self.decompose(model, shape))

    def decompose(self, model: ModelSpec, shape: ForwardShape) -> tuple[Op, ...]:
        """The kernels this implementation launches for one forward."""
        return decompose(model, shape, self.kernels.pointwise.glue)
