"""The narrow latency interface: ops in, a per-op breakdown out.

The simulator and the search see only :meth:`LatencyModel.forward_time` / :meth:`LatencyModel.forward`;
whether a time came from the analytic NFP model or a calibration table is recorded per op in
``OpTiming.source`` and is nobody else's business.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from nfpsim.config import HardwareSpec, KernelPreset, ModelSpec
from nfpsim.shapes import ForwardShape, Op, SeqGroup, decompose, submodule

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
        return self.breakdown(self.decompose(model, shape))

    def breakdown(self, ops: Iterable[Op]) -> Breakdown:
        """Each op priced, in order: a forward's time by module."""
        return Breakdown(tuple(OpTiming(op.name, op.module, submodule(op), op.count, op.shape.flops, op.shape.bytes,
                                        self.op_cost(op)) for op in ops))

    def forward_time(self, model: ModelSpec, shape: ForwardShape) -> float:
        """Latency in seconds of one forward of ``shape`` (the simulator's hot path)."""
        return sum(self.op_cost(op).time_s * op.count for op in self.decompose(model, shape))

    def decompose(self, model: ModelSpec, shape: ForwardShape) -> tuple[Op, ...]:
        """The kernels this implementation launches for one forward (a decode-only forward padded to the
        preset's next CUDA-graph size: see :func:`cuda_graph_padding`)."""
        glue = self.kernels.pointwise.glue
        padding = cuda_graph_padding(shape, self.kernels.cuda_graph_batch_sizes)
        if not padding:
            return decompose(model, shape, glue)
        # the padded rows run through every GEMM and pointwise kernel; the attention kernel skips them
        # (zero-length sequences) and the LM head scores only the real rows
        real = len(shape.groups)
        positions = shape.groups[0].positions
        padded = ForwardShape(shape.groups + (SeqGroup(padding, positions, 0, scored=0),), shape.tp)
        ops = []
        for op in decompose(model, padded, glue):
            if op.name.endswith(f"[{real}]"):
                continue
            if real == 1 and op.name.endswith("[0]"):  # the names of a one-group forward
                op = dataclasses.replace(op, name=op.name[:-3])
            ops.append(op)
        return tuple(ops)


def cuda_graph_padding(shape: ForwardShape, sizes: tuple[int, ...]) -> int:
    """Sequences a serving engine adds to a decode-only forward to replay a captured CUDA graph.

    Decode-only: every sequence runs the same ``M`` positions, all scored (decode, speculative verify,
    a diffusion block). The engine replays the graph of the smallest captured token count that holds the
    forward's tokens and is a multiple of ``M``, padding it with empty sequences; a forward larger than
    every captured size, or with a prefill chunk, runs eagerly at its own size (0 padding)."""
    if not sizes:
        return 0
    positions = {g.positions for g in shape.groups}
    if len(positions) != 1 or any(g.scored not in (None, g.positions) for g in shape.groups):
        return 0
    m, tokens = positions.pop(), shape.num_tokens
    size = next((s for s in sizes if s >= tokens and s % m == 0), tokens)
    return (size - tokens) // m
