"""``nfpsim-nfp``: NFP of a model on a GPU with a kernel implementation, per module, with the plot."""

from __future__ import annotations

from pathlib import Path

from nfpsim import io
from nfpsim.cli.common import config_data, hydra_app
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
    settings = NfpSettings.from_config(cfg)
    report = run(settings, cfg.get("forward"))
    print(nfp_report.format_table(report))
    data = report.to_dict()
    data["config"] = config_data(cfg)
    io.write_csv(run_dir / "nfp.csv", nfp_report.curve_rows(report),
                 ["key", "kind", "positions", "latency_s", "ratio"])
    if settings.plot:
        io.save_figure(run_dir / "nfp.png", nfp_report.plot(report))
    io.write_json(run_dir / "nfp.json", data)  # last: its presence marks a complete run
    print(f"\nwrote {run_dir}/nfp.json")
    return report


main = hydra_app("nfp", task, validate=NfpSettings.from_config, sweep_summary=True, compose_cache=True)

if __name__ == "__main__":
    main()
