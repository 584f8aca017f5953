"""The analytic latency model: the NFP principle with no measurements, constants from the specs."""

from __future__ import annotations

import math

from nfpsim.config import HardwareSpec, KernelPreset
from nfpsim.latency import granularity
from nfpsim.latency.base import LatencyModel, OpCost
from nfpsim.latency.constants import LatencyConstants
from nfpsim.shapes import AttentionShape, CollectiveShape, GemmShape, GroupedGemmShape, MoeShape, Op, PointwiseShape

FAMILY_OF = {GemmShape: "gemm", GroupedGemmShape: "gemm", MoeShape: "moe", AttentionShape: "attention",
             PointwiseShape: "pointwise", CollectiveShape: "collective"}


def family_of(op: Op) -> str:
    return FAMILY_OF[type(op.shape)]


def price(op: Op, kernels: KernelPreset, c: LatencyConstants) -> OpCost:
    """One instance of ``op`` on ``kernels`` with constants ``c`` (no caching: calibration fits call it)."""
    shape = op.shape
    if isinstance(shape, GemmShape):
        return granularity.gemm_cost(shape, kernels.gemm, c.gemm, c.device)
    if isinstance(shape, GroupedGemmShape):  # temporary, until grouped GEMMs get their own pricer
        return granularity.gemm_cost(_as_gemm(shape), kernels.gemm, c.gemm, c.device)
    if isinstance(shape, MoeShape):
        return granularity.moe_cost(shape, kernels.moe, c.moe, c.device)
    if isinstance(shape, AttentionShape):
        return granularity.attention_cost(shape, kernels.attention, c.attention, c.device)
    if isinstance(shape, PointwiseShape):
        return granularity.pointwise_cost(op.name, shape, kernels.pointwise, c.pointwise, c.device)
    if isinstance(shape, CollectiveShape):
        return granularity.collective_cost(shape, c.device)
    raise TypeError(f"no cost model for {type(shape).__name__}")


def _as_gemm(shape: GroupedGemmShape) -> GemmShape:
    """A grouped GEMM as one GEMM: the rows spread evenly over the groups they can touch, those groups'
    weights side by side (``N = touched * n``), so weights are read once and the groups run in parallel."""
    touched = max(1, min(shape.groups, shape.rows))
    return GemmShape(max(1, math.ceil(shape.rows / touched)), touched * shape.n, shape.k, shape.bytes_per_element)


class AnalyticLatencyModel(LatencyModel):
    """Roofline plus implementation granularity; pass ``constants`` to override the spec defaults
    (a calibration does: fitted efficiencies, L2 hit fraction, launch overhead)."""

    kind = "analytic"

    def __init__(self, hardware: HardwareSpec, kernels: KernelPreset, constants: LatencyConstants | None = None):
        super().__init__(hardware, kernels)
        self.constants = constants or LatencyConstants.defaults(hardware, kernels)

    def _price(self, op: Op) -> OpCost:
        return price(op, self.kernels, self.constants)
