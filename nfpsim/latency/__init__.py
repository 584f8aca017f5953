"""Latency models of a decode forward: one interface, analytic or calibrated behind it."""

from __future__ import annotations

import warnings
from pathlib import Path

from nfpsim.config import HardwareSpec, KernelPreset
from nfpsim.latency.analytic import AnalyticLatencyModel
from nfpsim.latency.base import Breakdown, LatencyModel, OpCost, OpTiming
from nfpsim.latency.constants import DeviceCeilings, FamilyConstants, LatencyConstants

LATENCY_KINDS = ("auto", "analytic", "calibrated")


def make_latency_model(kind: str, hardware: HardwareSpec, kernels: KernelPreset,
                       table: str | Path | None = None) -> LatencyModel:
    """``analytic``: the NFP principle from the specs. ``calibrated``: measurements and constants
    fitted on this GPU (``table``, default ``calibration/<hardware>.json``; a missing, foreign or corrupt
    table is an error). ``auto``: calibrated when a table for this GPU has this implementation,
    analytic otherwise (a table of another GPU warns; a corrupt one is still an error)."""
    from nfpsim.calibration.table import load_table, table_path
    from nfpsim.latency.calibrated import CalibratedLatencyModel, CalibrationWarning, load_calibrated

    if kind == "analytic":
        return AnalyticLatencyModel(hardware, kernels)
    if kind == "calibrated":
        return load_calibrated(hardware, kernels, table)
    path = Path(table) if table else table_path(hardware.name)
    if not path.exists():
        return AnalyticLatencyModel(hardware, kernels)
    loaded = load_table(path)
    if loaded.slug != hardware.name:
        warnings.warn(f"{path} was measured on {loaded.gpu.get('name', '?')} ({loaded.slug}), not on "
                      f"hardware={hardware.name}; using the analytic model", CalibrationWarning, stacklevel=2)
        return AnalyticLatencyModel(hardware, kernels)
    if kernels.name not in loaded.fitted:  # a table may cover only some implementations
        return AnalyticLatencyModel(hardware, kernels)
    return CalibratedLatencyModel(hardware, kernels, loaded, str(path))


__all__ = [
    "LATENCY_KINDS",
    "AnalyticLatencyModel",
    "Breakdown",
    "DeviceCeilings",
    "FamilyConstants",
    "LatencyConstants",
    "LatencyModel",
    "OpCost",
    "OpTiming",
    "make_latency_model",
]
