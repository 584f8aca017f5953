"""A captured forward: its kernels in launch order, priced by any :class:`~nfpsim.latency.LatencyModel`."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass

from nfpsim.capture.recorder import CapturedOp
from nfpsim.latency.base import LatencyModel
from nfpsim.shapes import Op


@dataclass(frozen=True)
class OpRow:
    """One row of :meth:`OpGraph.table`: ``count`` launches of one kernel, their totals."""

    op: str  # <module>.<aten op>
    family: str  # gemm, attention, pointwise, collective
    module: str  # the NFP module (qkv_proj, attention, o_proj, ffn, lm_head, embedding, pointwise, ...)
    shape: str
    count: int
    flops: float  # compulsory FLOPs of all ``count`` launches
    bytes: float  # bytes read and written at their real dtypes, all launches
    seconds: float
    bound: str  # memory, compute, launch, network

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class OpGraph:
    """The kernels one eager forward launches, in order (``count`` 1 each unless :meth:`merged`).

    ``unpriced`` names the aten ops that had no pricing rule: each of their launches is still in ``ops``,
    priced as one memory-bound kernel over its real bytes.
    """

    ops: tuple[CapturedOp, ...]
    unpriced: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.ops)

    @property
    def num_kernels(self) -> int:
        return sum(c.op.count for c in self.ops)

    def merged(self) -> OpGraph:
        """Identical kernels of one NFP module (same shape, whatever their layer) merged into counts, in
        order of first launch; prices the same, far fewer ops to price."""
        merged: dict[tuple, CapturedOp] = {}
        for captured in self.ops:
            key = (captured.op.module, captured.aten, captured.op.shape)
            first = merged.get(key)
            if first is None:
                merged[key] = captured
            else:
                op = dataclasses.replace(first.op, count=first.op.count + captured.op.count)
                merged[key] = dataclasses.replace(first, op=op)
        return OpGraph(tuple(merged.values()), self.unpriced)

    def priced_ops(self) -> tuple[Op, ...]:
        """The ops as :func:`nfpsim.shapes.decompose` would list them (what the NFP sweep prices)."""
        return tuple(c.op for c in self.ops)

    def time(self, latency: LatencyModel) -> float:
        """Seconds of the whole forward replayed as one CUDA graph: the sum of its kernels' times."""
        return sum(latency.op_cost(c.op).time_s * c.op.count for c in self.ops)

    def table(self, latency: LatencyModel) -> list[OpRow]:
        rows = []
        for c in self.ops:
            cost = latency.op_cost(c.op)
            n = c.op.count
            rows.append(OpRow(c.op.name, c.family, c.op.module, _describe(c.op.shape), n, c.op.shape.flops * n,
                              c.op.shape.bytes * n, cost.time_s * n, cost.bound))
        return rows

    def by_family(self) -> dict[str, dict[str, float]]:
        """Kernels, FLOPs and bytes per family: what two forwards must agree on to be the same forward."""
        totals: dict[str, dict[str, float]] = defaultdict(lambda: {"kernels": 0, "flops": 0.0, "bytes": 0.0})
        for c in self.ops:
            t = totals[c.family]
            t["kernels"] += c.op.count
            t["flops"] += c.op.shape.flops * c.op.count
            t["bytes"] += c.op.shape.bytes * c.op.count
        return dict(totals)


def _describe(shape) -> str:
    fields = ", ".join(f"{f.name}={getattr(shape, f.name)}" for f in dataclasses.fields(shape))
    return f"{type(shape).__name__}({fields})"
