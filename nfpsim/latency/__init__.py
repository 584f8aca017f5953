"""Latency models of a decode forward: one interface, analytic or calibrated behind it."""

from nfpsim.latency.analytic import AnalyticLatencyModel
from nfpsim.latency.base import Breakdown, LatencyModel, OpCost, OpTiming
from nfpsim.latency.constants import DeviceCeilings, FamilyConstants, LatencyConstants

__all__ = [
    "AnalyticLatencyModel",
    "Breakdown",
    "DeviceCeilings",
    "FamilyConstants",
    "LatencyConstants",
    "LatencyModel",
    "OpCost",
    "OpTiming",
]
