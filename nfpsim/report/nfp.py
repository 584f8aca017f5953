"""Human-readable views of an :class:`~nfpsim.nfp.NfpReport`: a console table and a plot."""

from __future__ import annotations

from typing import Any

from nfpsim.latency.base import Breakdown
from nfpsim.nfp import Curve, NfpReport
from nfpsim.report.render import SweepAxes, nfp_label, plot_sweep_series
from nfpsim.shapes import MODULES


def _fmt_time(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} us"


def _bound(breakdown: Breakdown, key: str) -> str:
    """The bound of the op that takes most of ``key``'s time."""
    ops = [op for op in breakdown.ops if key in ("forward", op.module, op.submodule)]
    return max(ops, key=lambda op: op.total_s).cost.bound if ops else "-"


def _row(label: str, curve: Curve, total_s: float, breakdown: Breakdown) -> str:
    t1 = curve.latency_s[0]
    idle = "-" if curve.idle_nfp is None else str(curve.idle_nfp)
    factor = "-" if curve.factor is None else f"{curve.factor:.1f}"
    nfp = f"{curve.nfp.nfp}{'+' if curve.nfp.crossing is None else ''}"
    return (f"{label:<22}{nfp:>6}{idle:>10}{factor:>8}{_fmt_time(t1):>12}{t1 / total_s:>8.1%}"
            f"  {_bound(breakdown, curve.key)}")


def format_table(report: NfpReport) -> str:
    """The console table: module, NFP, idle NFP, factor, latency at one position and its share."""
    grid = report.positions
    lines = [
        f"NFP of {report.model} on {report.hardware} · {report.kernels} kernels · {report.latency} latency",
        f"batch {report.batch} · context {report.context} · eps {report.eps:g} · tp {report.tp} · "
        f"balance {report.balance_flop_per_byte:.0f} FLOP/byte · {len(grid)} positions {grid[0]}..{grid[-1]}",
        "",
        f"{'module':<22}{'NFP':>6}{'idle NFP':>10}{'factor':>8}{'t(M=1)':>12}{'share':>8}  bound at M=1",
    ]
    total = report.forward.latency_s[0]
    first = report.breakdown_at_1
    lines.append(_row("forward", report.forward, total, first))
    for module in MODULES:
        if module not in report.modules:
            continue
        lines.append(_row(f"  {module}", report.modules[module], total, first))
        for key, curve in report.modules.items():
            if curve.parent == module:
                lines.append(_row(f"    {key}", curve, total, first))
    lines.append("")
    lines.append(f"latency: {report.latency_origin}")
    if report.latency != "analytic":
        counts = ", ".join(f"{n} {source}" for source, n in sorted(report.sources.items()))
        lines.append(f"op sources at M=1: {counts} (measured: timed shape; corrected: fitted model scaled by "
                     f"timed neighbours in the same tile bucket; fitted: analytic with calibrated constants)")
    lines.append("NFP: largest positions per sequence within (1+eps) of one position; '+' = near-free over the "
                 "whole grid. idle NFP: what the FLOP/byte balance predicts; factor = idle / NFP.")
    dips = report.forward.nfp.later_within
    if dips:
        lines.append(f"note: the forward first crosses the budget at M={report.forward.nfp.crossing} but is back "
                     f"within it at M={', '.join(map(str, dips))} (kernel switches make the curve non-monotone).")
    return "\n".join(lines)


def plot(report: NfpReport):
    """Latency / latency(M=1) versus positions per module, with each NFP and the idle-compute NFP."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    curves = [("forward", report.forward)] + [(k, report.modules[k]) for k in MODULES if k in report.modules]
    for i, (label, curve) in enumerate(curves):
        ratio = [t / curve.latency_s[0] for t in curve.latency_s]
        is_forward = label == "forward"
        (line,) = ax.plot(curve.positions, ratio, color="black" if is_forward else f"C{i % 10}",
                          linewidth=2.4 if is_forward else 1.3, label=f"{label} (NFP {nfp_label(curve.to_dict())})")
        nfp = curve.nfp.nfp
        at_nfp = curve.latency_s[curve.positions.index(nfp)] / curve.latency_s[0] if nfp in curve.positions \
            else None
        if at_nfp is not None:
            ax.plot([nfp], [at_nfp], "o", color=line.get_color(), markersize=6 if is_forward else 4)
    budget = 1.0 + report.eps
    ax.axhline(budget, color="grey", linestyle="--", linewidth=1, label=f"budget 1+eps = {budget:g}")
    idle = report.forward.idle_nfp
    if idle is not None:
        ax.axvline(idle, color="firebrick", linestyle=":", linewidth=1.5,
                   label=f"idle-compute NFP of the forward ({idle})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("positions per sequence M")
    ax.set_ylabel("latency(M) / latency(1)")
    ax.set_title(f"{report.model} on {report.hardware}, {report.kernels} kernels: batch {report.batch}, "
                 f"context {report.context}, eps {report.eps:g}")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def curve_rows(report: NfpReport) -> list[dict]:
    """Every curve point as a CSV row: key, kind, positions, latency_s, ratio to one position."""
    rows = []
    named = [("forward", "forward", report.forward)]
    named += [(k, "module", c) for k, c in report.modules.items()]
    named += [(k, "op", c) for k, c in report.ops.items()]
    for key, kind, curve in named:
        for m, t in zip(curve.positions, curve.latency_s):
            rows.append({"key": key, "kind": kind, "positions": m, "latency_s": t,
                         "ratio": t / curve.latency_s[0]})
    return rows


def sweep_rows(labels: list[str], settings: list[dict], runs: list[dict], jobs: list[str]) -> list[dict[str, Any]]:
    """One CSV row per job of an ``nfpsim-nfp --multirun`` sweep: its settings and the forward's NFP."""
    rows = []
    for job, label, setting, data in zip(jobs, labels, settings, runs):
        forward = data.get("forward", {})
        curve = forward.get("curve") or [{}]
        rows.append({"job": job, "settings": label, **setting, "nfp": forward.get("nfp"),
                     "saturated": forward.get("saturated"), "idle_nfp": forward.get("idle_nfp"),
                     "factor": forward.get("factor"), "latency_at_1_s": curve[0].get("latency_s")})
    return rows


def sweep_plot(rows: list[dict[str, Any]], settings: list[dict], title: str):
    """NFP, idle-compute NFP and the one-position latency across the jobs, each axis from zero."""
    from matplotlib.figure import Figure

    axes = SweepAxes.of(settings, [r["settings"] for r in rows])
    fig = Figure(figsize=(15, 3.8))
    panels = fig.subplots(1, 3, gridspec_kw={"wspace": 0.25})
    for ax, key, ylabel in ((panels[0], "nfp", "NFP (positions per sequence)"),
                            (panels[1], "idle_nfp", "idle-compute NFP"),
                            (panels[2], "latency_at_1_s", "forward latency at one position (s)")):
        plot_sweep_series(ax, axes, rows, ((key, ylabel.split(" (")[0], "o"),))
        ax.set_ylabel(ylabel)
    fig.suptitle(title, fontsize=10)
    return fig
