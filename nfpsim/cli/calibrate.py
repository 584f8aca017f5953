"""``nfpsim-calibrate``: time kernels on this GPU and write ``calibration/<gpu-slug>.json``."""

from __future__ import annotations

import warnings
from pathlib import Path

from nfpsim import io
from nfpsim.calibration.plan import build_plan, describe, estimate_seconds
from nfpsim.calibration.run import CalibrationSettings, calibrate, plan_record
from nfpsim.latency.table import table_path
from nfpsim.cli.common import hydra_app
from nfpsim.errors import ConfigError


def task(cfg, run_dir: Path) -> None:
    if cfg.get("source"):
        return import_task(cfg, run_dir)
    settings = CalibrationSettings.from_config(cfg)
    if not settings.plan_only:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("nfpsim-calibrate needs a CUDA GPU and this machine has none; nothing was written "
                              "(plan=true shows the plan anywhere)")
    plan = build_plan(settings.plan)
    estimate = estimate_seconds(plan, settings.hardware, settings.presets, settings.timing)
    for line in describe(plan):
        print(line)
    print(f"{len(plan.points)} shapes; estimated GPU time on {settings.hardware.name}: {estimate:.0f} s")
    if settings.plan_only:
        io.write_json(run_dir / "plan.json", plan_record(plan, settings, estimate))
        print(f"wrote {run_dir}/plan.json")
        return
    import torch

    log_lines: list[str] = []

    def log(line: str) -> None:
        print(line)
        log_lines.append(line)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's SDPA/backend chatter; failures still raise
        table = calibrate(settings, torch.device("cuda"), torch.bfloat16,
                          _timer(settings), progress=True, log=log)
    path = table_path(table.slug, settings.output_dir)
    io.write_json(path, table.to_dict())  # atomic: an interrupted run keeps the previous table
    log(f"wrote {path} ({len(table.measurements)} measurements)")
    io.write_text(run_dir / "calibrate.log", "\n".join(log_lines) + "\n")


def import_task(cfg, run_dir: Path) -> None:
    """``source=<file or dir>``: tables built from measurements taken elsewhere (no GPU needed)."""
    from nfpsim.calibration.fidelity import format_quality
    from nfpsim.calibration.importer import import_source
    from nfpsim.latency.table import load_table

    source = Path(str(cfg.source)).expanduser()
    output = Path(str(cfg.output_dir)) if cfg.get("output_dir") else None
    lines = []
    for path in import_source(source, output, progress=lambda impl: print(f"fitted {impl}", flush=True)):
        table = load_table(path)
        lines.append(f"wrote {path} ({len(table.measurements)} imported measurements)")
        lines.extend(format_quality(table))
    for line in lines:
        print(line)
    io.write_text(run_dir / "calibrate.log", "\n".join(lines) + "\n")


def _timer(settings: CalibrationSettings):
    from nfpsim.calibration.measure import GraphTimer

    return GraphTimer(settings.timing)


def _validate(cfg) -> None:
    if not cfg.get("source"):
        CalibrationSettings.from_config(cfg)


main = hydra_app("calibrate", task, validate=_validate)

if __name__ == "__main__":
    main()
