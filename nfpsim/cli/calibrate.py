"""``nfpsim-calibrate``: time kernels on this GPU and write ``calibration/<gpu-slug>.json``;
``refit=<table>`` fits a stored table again on any machine.

The table is written as the run goes (atomically, with what was measured so far) and once more after
the fit. A point that fails is left out with its reason; a run that measured something exits 0 (with a
warning when points are missing), one that measured nothing exits 2 and writes nothing.
"""

from __future__ import annotations

import signal
import warnings
from pathlib import Path

from nfpsim import io
from nfpsim.calibration.plan import build_plan, describe, estimate_seconds, fit_seconds
from nfpsim.calibration.run import STOP, CalibrationSettings, calibrate, plan_record, refit, request_stop
from nfpsim.latency.table import load_table, table_path, write_table
from nfpsim.calibration.writer import TableWriter
from nfpsim.cli.common import hydra_app, require_torch
from nfpsim.config import CONF_DIR
from nfpsim.errors import ConfigError


def task(cfg, run_dir: Path) -> None:
    if cfg.get("source"):
        return import_task(cfg, run_dir)
    settings = CalibrationSettings.from_config(cfg)
    if settings.refit:
        refit_table(settings)
        return
    if not settings.plan_only and settings.device == "cuda":
        torch = require_torch("calibrate")

        if not torch.cuda.is_available():
            raise ConfigError("nfpsim-calibrate needs a CUDA GPU and this machine has none; nothing was written "
                              "(plan=true shows the plan anywhere)")
    plan = build_plan(settings.plan)
    estimate = estimate_seconds(plan, settings.hardware, settings.presets, settings.timing)
    for line in describe(plan):
        print(line)
    fit_s = fit_seconds(len(plan.points))
    fitting = f" + about {fit_s:.0f} s fitting (fit=false: later, anywhere)" if settings.fit else ""
    print(f"{len(plan.points)} shapes; estimated GPU time on {settings.hardware.name}: at most {estimate:.0f} s"
          f"{fitting}" + (f" (time budget {settings.time_budget_s:g} s)" if settings.time_budget_s else ""))
    if settings.plan_only:
        io.write_json(run_dir / "plan.json", plan_record(plan, settings, estimate))
        print(f"wrote {run_dir}/plan.json")
        return
    run(settings, run_dir)


def run(settings: CalibrationSettings, run_dir: Path) -> None:
    import torch

    log_lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        log_lines.append(line)

    device = torch.device(settings.device)
    dtype, timer = (torch.bfloat16, _graph_timer(settings)) if device.type == "cuda" else (torch.float32,
                                                                                           _wall_timer(settings))
    slug = _slug(device)
    writer = TableWriter(table_path(slug, settings.output_dir))
    STOP.clear()
    previous = signal.signal(signal.SIGTERM, request_stop)  # `timeout` stops the run: write what ran
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's SDPA/backend chatter; failures still raise
            table = calibrate(settings, device, dtype, timer, progress=True, log=log, writer=writer)
    finally:
        signal.signal(signal.SIGTERM, previous)
    prov = table.provenance
    if not table.measurements:
        raise ConfigError(f"nothing was measured ({_why(prov)}); no table was written")
    io.write_text(run_dir / "calibrate.log", "\n".join(log_lines) + "\n")
    writer.write(table)  # atomic: replaces the last checkpoint
    log(f"wrote {writer.path} ({len(table.measurements)} measurements)")
    if not prov["complete"]:
        warnings.warn(f"calibration incomplete: {len(table.measurements)} of {prov['planned_points']} points "
                      f"measured ({_why(prov)}); the table holds what was measured")


def import_task(cfg, run_dir: Path) -> None:
    """``source=<file or dir>``: tables built from measurements taken elsewhere (no GPU needed)."""
    from nfpsim.calibration.fidelity import format_quality
    from nfpsim.calibration.importer import import_source
    source = Path(str(cfg.source)).expanduser()
    if not source.exists() and (CONF_DIR.parent / source).exists():  # the shipped data, from anywhere
        source = CONF_DIR.parent / source
    output = Path(str(cfg.output_dir)) if cfg.get("output_dir") else None
    lines = []
    for path in import_source(source, output, progress=lambda impl: print(f"fitted {impl}", flush=True)):
        table = load_table(path)
        lines.append(f"wrote {path} ({len(table.measurements)} imported measurements)")
        lines.extend(format_quality(table))
    for line in lines:
        print(line)
    io.write_text(run_dir / "calibrate.log", "\n".join(lines) + "\n")


def refit_table(settings: CalibrationSettings) -> None:
    """``refit=<table>``: fit a stored table's measurements again and write it to ``output_dir``."""
    stored = load_table(Path(settings.refit))
    if not stored.measurements:
        raise ConfigError(f"refit={settings.refit}: the table holds no measurements")
    table = refit(stored, settings)
    path = write_table(table_path(table.slug, settings.output_dir), table)
    print(f"wrote {path} ({len(table.measurements)} measurements, fitted: {', '.join(table.fitted) or 'none'})")


def _why(prov: dict) -> str:
    parts = [f"{len(prov['failed'])} failed"] if prov["failed"] else []
    if prov["stop_reason"]:
        parts.append(f"stopped: {prov['stop_reason']}")
    if prov["skipped"]:
        parts.append(f"{len(prov['skipped'])} skipped")
    return ", ".join(parts) or "no points planned"


def _slug(device) -> str:
    from nfpsim.calibration.measure import device_info

    return device_info(device)["slug"]


def _graph_timer(settings: CalibrationSettings):
    from nfpsim.calibration.measure import GraphTimer

    return GraphTimer(settings.timing)


def _wall_timer(settings: CalibrationSettings):
    from nfpsim.calibration.measure import WallTimer

    return WallTimer(settings.timing)


def _validate(cfg) -> None:
    if not cfg.get("source"):
        CalibrationSettings.from_config(cfg)


main = hydra_app("calibrate", task, validate=_validate)

if __name__ == "__main__":
    main()
