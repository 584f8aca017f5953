"""``nfpsim-validate``: time real decode forwards on this GPU against the latency model's predictions.

Writes ``calibration/validation/<gpu-slug>.json`` (atomically, after every curve, so a run cut short keeps
what it measured) and ``<gpu-slug>-<model>.png`` overlays there, and ``validate.json``, the overlays and
``validate.log`` into the run dir. ``plan=true`` and ``measured=<validate.json>`` run anywhere.
"""

from __future__ import annotations

import json
import signal
import warnings
from pathlib import Path

from nfpsim import io
from nfpsim.calibration.run import STOP, request_stop
from nfpsim.cli.common import hydra_app, require_torch
from nfpsim.config import CONF_DIR
from nfpsim.errors import ConfigError
from nfpsim.validation.plan import ValidationSettings, describe, estimate_seconds, plan_curves, plan_record
from nfpsim.validation.run import format_summary, repredict, validate

VALIDATION_DIR = CONF_DIR.parent / "calibration" / "validation"


def _write_overlays(result: dict, run_dir: Path, output_dir: Path | None, models: list[str]) -> None:
    """The overlay of each of ``models`` as the result now stands, into the run dir and ``output_dir``."""
    import matplotlib.pyplot as plt

    from nfpsim.validation.plot import overlay

    slug = result["gpu"]["slug"]
    for model in models:
        figure = overlay(result, model)
        io.save_figure(run_dir / f"validate-{model}.png", figure)
        if output_dir is not None:
            io.save_figure(output_dir / f"{slug}-{model}.png", figure)
        plt.close(figure)


def curve_writer(run_dir: Path, output_dir: Path, plot: bool):
    """What runs after every curve: the result so far and the finished curve's model overlay, so a run
    cut short keeps every finished curve, plotted."""

    def write(result: dict) -> None:
        io.write_json(output_dir / f"{result['gpu']['slug']}.json", result)
        if plot:
            _write_overlays(result, run_dir, output_dir, [result["curves"][-1]["model"]])

    return write


def _write_result(result: dict, run_dir: Path, output_dir: Path | None, plot: bool) -> None:
    """The run dir's validate.json (+ overlays), and ``<slug>.json`` (+ overlays) in ``output_dir``."""
    from nfpsim.validation.plot import models_of

    slug = result["gpu"]["slug"]
    if plot and result["curves"]:
        _write_overlays(result, run_dir, output_dir, models_of(result))
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
          f"{settings.hardware.name}: at most {estimate:.0f} s"
          + (f" (no new curve after {settings.time_budget_s:g} s)" if settings.time_budget_s else ""))
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

    partial = curve_writer(run_dir, output_dir, settings.plot)

    STOP.clear()
    previous = signal.signal(signal.SIGTERM, request_stop)  # `timeout` stops the run: write what ran
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's backend chatter; failures still raise
            result = validate(settings, torch.device("cuda"), torch.bfloat16, GraphTimer(settings.timing),
                              log=log, on_curve=partial)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not result["curves"]:
        raise ConfigError(f"no curve was measured ({_why(result)}); nothing was written")
    for line in format_summary(result):
        log(line)
    _write_result(result, run_dir, output_dir, settings.plot)
    log(f"wrote {output_dir}/{result['gpu']['slug']}.json ({len(result['curves'])} curves)")
    io.write_text(run_dir / "validate.log", "\n".join(log_lines) + "\n")
    if not result["complete"]:
        warnings.warn(f"validation incomplete: {len(result['curves'])} curves measured ({_why(result)})")
    return result


def _why(result: dict) -> str:
    parts = [f"{len(result[key])} {key.replace('_', ' ')}" for key in ("failed", "not_run", "skipped") if result[key]]
    reasons = {item["reason"] for key in ("failed", "not_run") for item in result[key]}
    return ", ".join(parts) + (f": {'; '.join(sorted(reasons))}" if reasons else "") if parts else "no curves"


main = hydra_app("validate", task, validate=ValidationSettings.from_config)

if __name__ == "__main__":
    main()
