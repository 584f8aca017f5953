"""How well the latency model predicts kernel timings it was not fitted on.

A calibration table keeps every point with its split tag; its constants were fitted on the training
points only. This module prices the held-out points two ways, the fitted pricers alone (what a GPU
without measurements of that shape gets, and what carries to another GPU of the same architecture) and
the calibrated model (fit plus corrections from measured neighbours of the same op), and reports the
mean absolute percentage error per implementation, pricer key and op.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from nfpsim.calibration.fit import is_heldout, mape, points_of
from nfpsim.config import load_hardware, load_kernels
from nfpsim.latency.calibrated import MeasurementIndex, is_preset_choice
from nfpsim.latency.analytic import AnalyticLatencyModel
from nfpsim.latency.constants import LatencyConstants
from nfpsim.latency.pricing import price, pricer_key
from nfpsim.latency.table import CalibrationTable, load_table


@dataclass(frozen=True)
class Row:
    implementation: str
    key: str  # pricer key
    op: str  # op name, or "*" for the whole key
    points: int
    fitted_mape: float
    calibrated_mape: float


def fidelity(table: CalibrationTable) -> list[Row]:
    hardware = load_hardware(table.slug)
    rows: list[Row] = []
    for impl in table.implementations():
        kernels = load_kernels(impl)
        measurements = [m for m in table.measurements if m.implementation == impl]
        constants = table.constants(impl, hardware, LatencyConstants.defaults(hardware, kernels))
        fitted = AnalyticLatencyModel(hardware, kernels, constants)
        index = MeasurementIndex([(m.op, m.time_s) for m in measurements
                                  if not is_heldout(m) and is_preset_choice(m, kernels, hardware.arch)],
                                 kernels, fitted)
        groups: dict[tuple[str, str], list[tuple[float, float, float]]] = defaultdict(list)
        for point in points_of([m for m in measurements if is_heldout(m)], kernels):
            m = point.measurement
            key = pricer_key(m.op, point.kernels, hardware.arch)
            fitted_s = price(m.op, point.kernels, constants).time_s
            hit = index.lookup(m.op, fitted_s) if point.kernels == kernels else None
            triple = (fitted_s, hit[0] if hit else fitted_s, m.time_s)
            groups[(key, "*")].append(triple)
            groups[(key, m.op.name.split(":")[-1])].append(triple)
        for (key, op), triples in sorted(groups.items()):
            fitted_p, calibrated_p, measured = zip(*triples)
            rows.append(Row(impl, key, op, len(triples), mape(fitted_p, measured), mape(calibrated_p, measured)))
    return rows


def format_quality(table: CalibrationTable) -> list[str]:
    """The table's own fit report: held-out MAPE per implementation and key, saturated parameters."""
    lines = [f"  {'implementation':<14} {'kernel':<16} {'points':>6} {'held-out':>8} {'fitted':>7} "
             f"{'calibrated':>10}  saturated"]
    for impl, keys in sorted(table.fit_quality.items()):
        for key, q in sorted(keys.items()):
            lines.append(f"  {impl:<14} {key:<16} {q['points']:>6} {q['heldout_points']:>8} "
                         f"{q['heldout_mape_fitted']:>7.1%} {q['heldout_mape_calibrated']:>10.1%}  "
                         f"{', '.join(q.get('saturated', [])) or '-'}")
    return lines


def format_rows(rows: list[Row], per_op: bool = True) -> list[str]:
    lines = [f"{'implementation':<14} {'kernel':<16} {'op':<22} {'points':>6} {'fitted':>7} {'calibrated':>10}"]
    for r in rows:
        if r.op != "*" and not per_op:
            continue
        lines.append(f"{r.implementation:<14} {r.key:<16} {r.op if r.op != '*' else '(all)':<22} {r.points:>6} "
                     f"{r.fitted_mape:>7.1%} {r.calibrated_mape:>10.1%}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """``nfpsim-fidelity [table.json ...]``: held-out error of the committed calibration tables."""
    import argparse

    from nfpsim.latency.table import CALIBRATION_DIR

    parser = argparse.ArgumentParser(prog="nfpsim-fidelity", description="held-out error of calibration tables")
    parser.add_argument("tables", nargs="*", type=Path, help="calibration tables (default: calibration/*.json)")
    parser.add_argument("--families", action="store_true", help="one line per kernel, no per-op lines")
    args = parser.parse_args(argv)
    paths = args.tables or sorted(CALIBRATION_DIR.glob("*.json"))
    if not paths:
        print("no calibration tables")
        return 2
    for path in paths:
        table = load_table(path)
        origin = "imported" if table.imported else "measured"
        print(f"{path} ({table.gpu.get('name', table.slug)}, {origin}): held-out MAPE")
        for line in format_rows(fidelity(table), per_op=not args.families):
            print("  " + line)
    return 0
