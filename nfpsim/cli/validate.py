"""``nfpsim-validate``: time real decode forwards on this GPU against the latency model's predictions.

Writes ``calibration/validation/<gpu-slug>.json`` (atomically, after every curve, so a run cut short keeps
what it measured) and ``<gpu-slug>-<model>.png`` overlays there, and ``validate.json``, the overlays and
``validate.log`` into the run dir. ``plan=true`` and ``measured=<validate.json>`` run anywhere.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from nfpsim import io
from nfpsim.cli.common import hydra_app, require_torch
from nfpsim.config import CONF_DIR
from nfpsim.errors import ConfigError
from nfpsim.validation.plan import ValidationSettings, describe, estimate_seconds, plan_curves, plan_record
from nfpsim.validation.run import format_summary, repredict, validate

VALIDATION_DIR = CONF_DIR.parent / "calibration" / "validation"


def _write_result(result: dict, run_dir: Path, output_dir: Path | None, plot: bool) -> None:
    """The run dir's validate.json (+ overlays), and ``<slug>.json`` (+ overlays) in ``output_dir``."""
    from nfpsim.validation.plot import models_of, overlay

    slug = result["gpu"]["slug"]
    if plot and result["curves"]:
        for model in models_of(result):
            figure = overlay(result, model)
            io.save_figure(run_dir / f"validate-{model}.png", figure)
            if output_dir is not None:
                io.save_figure(output_dir / f"{slug}-{model}.png", figure)
    if output_dir is not None:
        io.write_json(output_dir / f"{slug}.json", result)
    io.write_json(run_dir / "validate.json", result)  # last: its presence marks a complete run


def _load_measured(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"measured={path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"measured={path}: not valid JSON ({error.__class__.__name__})") from None


def task(cfg, run_dir: Path) -> dict | None:
    settings = ValidationSettings.from_config(cfg)
    if settings.measured:
        result = repredict(_load_measured(settings.measured), settings)
        print("\n".join(format_summary(result)))
        _write_result(result, run_dir, Path(settings.output_dir) if settings.output_dir else None, settings.plot)
        print(f"wrote {run_dir}/validate.json (re-predicted)")
        return result
    if not settings.plan_only:
        torch = require_torch("validate")
        if not torch.cuda.is_available():
            raise ConfigError("nfpsim-validate needs a CUDA GPU and this machine has none; nothing was written "
                              "(plan=true shows the plan anywhere, measured=<validate.json> re-predicts anywhere)")
    curves, skipped = plan_curves(settings)
    estimate = estimate_seconds(curves, settings.hardware, settings.timing, settings.profile_positions)
    for line in describe(curves, skipped):
        print(line)
    print(f"{len(curves)} curves, {sum(len(c.positions) for c in curves)} forwards; estimated GPU time on "
          f"{settings.hardware.name}: {estimate:.0f} s")
    if settings.plan_only:
        io.write_json(run_dir / "plan.json", plan_record(curves, skipped, settings, estimate))
        print(f"wrote {run_dir}/plan.json")
        return None
    import torch

    from nfpsim.calibration.measure import GraphTimer

    output_dir = Path(settings.output_dir) if settings.output_dir else VALIDATION_DIR
    log_lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        log_lines.append(line)

    def partial(result: dict) -> None:  # a run cut short keeps every finished curve
        io.write_json(output_dir / f"{result['gpu']['slug']}.json", result)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's backend chatter; failures still raise
        result = validate(settings, torch.device("cuda"), torch.bfloat16, GraphTimer(settings.timing), log=log,
                          on_curve=partial)
    for line in format_summary(result):
        log(line)
    _write_result(result, run_dir, output_dir, settings.plot)
    log(f"wrote {output_dir}/{result['gpu']['slug']}.json ({len(result['curves'])} curves)")
    io.write_text(run_dir / "validate.log", "\n".join(log_lines) + "\n")
    return result


main = hydra_app("validate", task, validate=ValidationSettings.from_config)

if __name__ == "__main__":
    main()
