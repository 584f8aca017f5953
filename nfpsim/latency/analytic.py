"""The analytic latency model: each kernel priced from its parallel structure and the GPU's ceilings."""

from __future__ import annotations

from nfpsim.config import HardwareSpec, KernelPreset
from nfpsim.latency.base import LatencyModel, OpCost
from nfpsim.latency.constants import LatencyConstants
from nfpsim.latency.pricing import family_of, price
from nfpsim.shapes import Op

__all__ = ["AnalyticLatencyModel", "family_of", "price"]


class AnalyticLatencyModel(LatencyModel):
    """Per-kernel pricers with the default constants of each implementation; pass ``constants`` to use
    fitted ones (a calibration table's, or those of another GPU of the same architecture)."""

    kind = "analytic"

    def __init__(self, hardware: HardwareSpec, kernels: KernelPreset, constants: LatencyConstants | None = None):
        super().__init__(hardware, kernels)
        self.constants = constants or LatencyConstants.defaults(hardware, kernels)

    def _price(self, op: Op) -> OpCost:
        return price(op, self.kernels, self.constants)
