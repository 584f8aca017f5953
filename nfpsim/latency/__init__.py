"""Latency models of a decode forward: one interface, analytic or calibrated behind it."""

from __future__ import annotations

import warnings
from pathlib import Path

from nfpsim.config import HardwareSpec, KernelPreset
from nfpsim.errors import ConfigError
from nfpsim.latency.analytic import AnalyticLatencyModel
from nfpsim.latency.base import Breakdown, LatencyModel, OpCost, OpTiming
from nfpsim.latency.calibrated import CalibratedLatencyModel, CalibrationWarning, load_calibrated
from nfpsim.latency.constants import DeviceCeilings, KernelConstants, LatencyConstants
from nfpsim.latency.table import CALIBRATION_DIR, CalibrationTable, load_table, table_path

LATENCY_KINDS = ("auto", "analytic", "calibrated")


def make_latency_model(kind: str, hardware: HardwareSpec, kernels: KernelPreset,
                       table: str | Path | None = None) -> LatencyModel:
    """``analytic``: the per-kernel pricers with their default constants, no tables. ``calibrated``:
    measurements and constants fitted on this GPU (``table``, default ``calibration/<hardware>.json``; a
    missing, foreign or corrupt table is an error). ``auto``: calibrated when a table for this GPU has this
    implementation; else the constants fitted on the nearest calibrated GPU of the same architecture with
    this GPU's own ceilings; else analytic. A ``table`` named explicitly must exist in every mode."""
    if kind not in LATENCY_KINDS:
        raise ConfigError(f"latency={kind!r}: allowed: {', '.join(LATENCY_KINDS)}")
    if table is not None and not Path(table).is_file():
        raise ConfigError(f"calibration={table}: no such file")
    if kind == "analytic":
        return AnalyticLatencyModel(hardware, kernels)
    if kind == "calibrated":
        return load_calibrated(hardware, kernels, table)
    path = Path(table) if table else table_path(hardware.name)
    if path.exists():
        loaded = load_table(path)
        if loaded.slug != hardware.name:
            warnings.warn(f"{path} was measured on {loaded.gpu.get('name', '?')} ({loaded.slug}), not on "
                          f"hardware={hardware.name}; not using it", CalibrationWarning, stacklevel=2)
        elif kernels.name in loaded.fitted:  # a table may cover only some implementations
            return CalibratedLatencyModel(hardware, kernels, loaded, str(path))
    return transferred_model(hardware, kernels) or AnalyticLatencyModel(hardware, kernels)


def transferred_model(hardware: HardwareSpec, kernels: KernelPreset,
                      directory: Path | None = None) -> AnalyticLatencyModel | None:
    """The analytic model of ``hardware`` with the kernel constants fitted on the nearest calibrated GPU of
    the same architecture (nearest in copy bandwidth), or None when no such table has ``kernels``."""
    candidates: list[tuple[float, Path, CalibrationTable]] = []
    for path in sorted(Path(directory or CALIBRATION_DIR).glob("*.json")):
        try:
            other = load_table(path)
        except ConfigError:
            continue
        if other.slug == hardware.name or other.arch != hardware.arch or kernels.name not in other.fitted:
            continue
        distance = abs(float(other.ceilings["copy_bytes_per_s"]) / hardware.stream_bytes_per_s - 1.0)
        candidates.append((distance, path, other))
    if not candidates:
        return None
    _, path, other = min(candidates, key=lambda c: c[0])
    constants = other.kernel_constants(kernels.name, LatencyConstants.defaults(hardware, kernels))
    model = AnalyticLatencyModel(hardware, kernels, constants)
    model.kind = "transferred"
    model.origin = (f"no calibration table for {hardware.name}: {hardware.name}'s own ceilings with the "
                    f"{kernels.name} kernel constants fitted on {other.slug} ({path.name}, same {hardware.arch} "
                    f"architecture)")
    return model


__all__ = [
    "LATENCY_KINDS",
    "AnalyticLatencyModel",
    "Breakdown",
    "CalibratedLatencyModel",
    "CalibrationWarning",
    "DeviceCeilings",
    "KernelConstants",
    "LatencyConstants",
    "LatencyModel",
    "OpCost",
    "OpTiming",
    "make_latency_model",
    "transferred_model",
]
