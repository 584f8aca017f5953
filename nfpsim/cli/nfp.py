"""``nfpsim-nfp``: NFP of a model on a GPU with a kernel implementation, per module, with the plot."""

from __future__ import annotations

from pathlib import Path

from nfpsim import io
from nfpsim.cli.common import hydra_app
from nfpsim.cli.report import write_report
from nfpsim.nfp import NfpReport, analyze
from nfpsim.report import nfp as nfp_report
from nfpsim.nfp_settings import NfpSettings


def run(settings: NfpSettings, forward: str | None = None) -> NfpReport:
    """The computation alone: no printing, no files. ``forward`` (``package.module:builder``) prices a
    user's forward captured at each M instead of the model's decomposition (:mod:`nfpsim.capture.builder`)."""
    ops = name = None
    if forward:
        from nfpsim.capture.builder import forward_ops

        ops, name = forward_ops(forward, settings.batch, settings.context), f"forward={forward}"
    return analyze(settings.latency_model(), settings.specs.model, batch=settings.batch,
                   context=settings.context, eps=settings.eps, positions=settings.positions,
                   max_positions=settings.max_positions, tp=settings.tp, forward=ops, name=name)


def task(cfg, run_dir: Path) -> NfpReport:
    from omegaconf import OmegaConf

    settings = NfpSettings.from_config(cfg)
    report = run(settings, cfg.get("forward"))
    print(nfp_report.format_table(report))
    data = report.to_dict()
    data["config"] = OmegaConf.to_container(cfg, resolve=True)
    io.write_csv(run_dir / "nfp.csv", nfp_report.curve_rows(report),
                 ["key", "kind", "positions", "latency_s", "ratio"])
    if settings.plot:
        io.save_figure(run_dir / "nfp.png", nfp_report.plot(report))
    io.write_json(run_dir / "nfp.json", data)  # last: its presence marks a complete run
    print(f"\nwrote {run_dir}/nfp.json")
    return report


def write_sweep_summary(sweep_dir: Path) -> int:
    """``summary.csv`` and ``summary.png`` across the finished nfp jobs of a sweep, then its report;
    returns how many jobs it covers."""
    from nfpsim.report import render

    runs = [run for run in render.multirun_jobs(sweep_dir) if run.kind.name == "nfp"]
    if not runs:
        return 0
    settings = render.varying_settings([run.data.get("config", {}) for run in runs])
    rows = nfp_report.sweep_rows(render.job_labels(runs), settings, [run.data for run in runs],
                                 [run.path.name for run in runs])
    io.write_csv(sweep_dir / "summary.csv", rows, list(rows[0]))
    io.save_figure(sweep_dir / "summary.png", nfp_report.sweep_plot(rows, settings, f"sweep {sweep_dir.name}"))
    write_report(sweep_dir)
    print(f"wrote {sweep_dir}/summary.csv, summary.png, report.md")
    return len(runs)


main = hydra_app("nfp", task, validate=NfpSettings.from_config, summarize=write_sweep_summary)

if __name__ == "__main__":
    main()
