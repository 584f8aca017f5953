"""``nfpsim-calibrate``: time kernels on this GPU and write ``calibration/<gpu-slug>.json``."""

from __future__ import annotations

import warnings
from pathlib import Path

from nfpsim import io
from nfpsim.calibration.plan import build_plan, describe, estimate_seconds
from nfpsim.calibration.run import CalibrationSettings, calibrate, plan_record
from nfpsim.calibration.table import table_path
from nfpsim.cli.common import hydra_app, require_torch
from nfpsim.errors import ConfigError


def task(cfg, run_dir: Path) -> None:
    settings = CalibrationSettings.from_config(cfg)
    if not settings.plan_only:
        torch = require_torch("calibrate")
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


def _timer(settings: CalibrationSettings):
    from nfpsim.calibration.measure import GraphTimer

    return GraphTimer(settings.timing)


main = hydra_app("calibrate", task, validate=CalibrationSettings.from_config)

if __name__ == "__main__":
    main()
