"""One calibration: plan, time every point, fit the constants, assemble the table (no file writes)."""

from __future__ import annotations

import dataclasses
import datetime
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nfpsim.calibration.fit import fit_implementation
from nfpsim.calibration.plan import (CalibPoint, Plan, PlanSettings, TimingSettings, build_plan, fit_seconds,
                                     point_summary)
from nfpsim.calibration.writer import TableWriter
from nfpsim.latency.table import CalibrationTable, Measurement
from nfpsim.config import ConfigReader, HardwareSpec, KernelPreset, available, load_hardware, load_kernels, load_model
from nfpsim.errors import ConfigError
from nfpsim.latency.calibrated import preset_fingerprint
from nfpsim.latency.constants import LatencyConstants


@dataclass(frozen=True)
class CalibrationSettings:
    hardware: HardwareSpec  # the GPU the plan is estimated for (on a GPU, the device decides the table)
    plan: PlanSettings
    timing: TimingSettings
    holdout_fraction: float
    seed: int
    plan_only: bool
    output_dir: str | None
    copy_mib: int
    matmul_size: int
    memory_fraction: float
    time_budget_s: float | None = None  # start no new point after this many seconds; fit and write what ran
    device: str = "cuda"  # cpu: exercise the pipeline with a host clock (tests; the times mean nothing)
    fit: bool = True  # false: write the measurements only (fit later, anywhere, with refit=<table>)
    refit: str | None = None  # a stored table to fit again from its measurements (no GPU)

    @property
    def presets(self) -> dict[str, KernelPreset]:
        return {k.name: k for k in self.plan.implementations}

    @classmethod
    def from_config(cls, cfg: Any) -> CalibrationSettings:
        r = ConfigReader(cfg, "")
        a = r.section("attention")
        models = tuple(read_names(r, "models", "model", load_model))
        implementations = tuple(read_names(r, "implementations", "kernels", load_kernels))
        return cls(
            hardware=HardwareSpec.from_config(r.raw("hardware"), "hardware"),
            plan=PlanSettings(
                models=models, implementations=implementations,
                max_tokens=r.int("max_tokens", low=1, high=16384),
                batches=tuple(read_ints(a, "batches")), contexts=tuple(read_ints(a, "contexts", low=0)),
                max_positions=a.int("max_positions", low=1, high=4096),
                pointwise_tokens=tuple(read_ints(r, "pointwise_tokens")),
                eager_tokens=tuple(read_ints(r, "eager_tokens")),
                eager_positions=tuple(read_ints(r, "eager_positions", low=2)),
                max_cached_tokens=a.int("max_cached_tokens", low=1, default=None),
            ),
            timing=TimingSettings(warmup=r.int("warmup", low=0, high=100), repeats=r.int("repeats", low=1, high=1000),
                                  min_replay_s=r.float("min_replay_ms", low=0) * 1e-3),
            holdout_fraction=r.float("holdout_fraction", low=0, high=0.9),
            seed=r.int("seed", low=0),
            plan_only=r.bool("plan"),
            output_dir=r.raw("output_dir", None),
            copy_mib=r.int("copy_mib", low=1),
            matmul_size=r.int("matmul_size", low=16),
            memory_fraction=r.float("memory_fraction", low=0.01, high=0.9),
            time_budget_s=r.float("time_budget_s", low=0, low_open=True, default=None),
            device=r.str("device", choices=("cuda", "cpu")),
            fit=r.bool("fit"),
            refit=r.raw("refit", None),
        )


def read_ints(r: ConfigReader, key: str, low: int = 1) -> list[int]:
    values = r.raw(key)
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__") or not len(values):
        raise ConfigError(f"{r.key(key)}={values!r}: must be a non-empty list of integers")
    return [ConfigReader({key: v}, r.prefix).int(key, low=low) for v in values]


def read_names(r: ConfigReader, key: str, group: str, loader: Callable[[str], Any]) -> list:
    names = r.raw(key)
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ConfigError(f"{key}: must name at least one {group}; allowed: {', '.join(available(group))}")
    for name in names:
        if name not in available(group):
            raise ConfigError(f"{key}: unknown {group} {name!r}; allowed: {', '.join(available(group))}")
    return [loader(name) for name in names]


def plan_record(plan: Plan, settings: CalibrationSettings, estimate_s: float) -> dict:
    return {
        "hardware": settings.hardware.name,
        "estimated_gpu_seconds": estimate_s,
        "estimated_fit_seconds": fit_seconds(len(plan.points)) if settings.fit else 0.0,
        "models": [m.name for m in settings.plan.models],
        "implementations": list(settings.presets),
        "num_points": len(plan.points),
        "counts": plan.counts(),
        "token_grid": list(plan.token_grid),
        "attention_positions": {k: list(v) for k, v in plan.attention_grids.items()},
        "attention_batches": list(settings.plan.batches),
        "attention_contexts": list(settings.plan.contexts),
        "points": [point_summary(p) for p in plan.points],
    }


MAX_CONSECUTIVE_FAILURES = 5  # then the device is probed; where it no longer runs a kernel the run stops
MAX_OP_FAILURES = 3  # an op that failed this often is not tried at its remaining shapes
# Set by a SIGTERM (``timeout``): the run stops at the next point even where the KeyboardInterrupt the
# signal raises was replaced by another error while a CUDA graph capture unwound.
STOP = threading.Event()


def request_stop(signum=None, frame=None) -> None:
    """A signal handler: stop measuring, then fit and write what was measured."""
    STOP.set()
    raise KeyboardInterrupt


@dataclass
class PointLog:
    """What became of the planned points: measured, skipped (cannot run here), failed (an error, after
    which the run went on), not run (time budget, interruption, too many failures in a row)."""

    measurements: list[Measurement] = field(default_factory=list)
    variants: dict[str, int] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    not_run: int = 0
    stop_reason: str | None = None

    def record(self, point: CalibPoint, reason: str, into: list[dict]) -> None:
        into.append({**point_summary(point), "reason": reason})

    @property
    def complete(self) -> bool:
        return not (self.failed or self.not_run)

    def summary(self) -> dict:
        return {"skipped": self.skipped, "failed": self.failed, "not_run": self.not_run,
                "stop_reason": self.stop_reason, "complete": self.complete, "variants": self.variants}


def measure_points(plan: Plan, settings: CalibrationSettings, device, dtype, timer, info: dict, memory_budget: float,
                   started: float, on_point: Callable[[PointLog], None] = lambda log: None,
                   progress: bool = True) -> PointLog:
    """Time every point; a point that fails (out of memory, an op error) is recorded with its reason and
    the run goes on (an op that failed ``MAX_OP_FAILURES`` times is not tried again); the time budget, an
    interruption (Ctrl-C, SIGTERM), or ``MAX_CONSECUTIVE_FAILURES`` failures in a row on a device that
    no longer runs a kernel stop it. ``on_point`` sees the log after every point (checkpoints)."""
    from tqdm import tqdm

    from nfpsim.calibration import measure

    out, failures_in_a_row, op_failures = PointLog(), 0, {}
    for i, point in enumerate(tqdm(plan.points, desc="timing", unit="shape", disable=not progress)):
        if failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
            failures_in_a_row = 0 if measure.device_ok(device) else failures_in_a_row
        out.stop_reason = _stop_reason(settings.time_budget_s, started, failures_in_a_row)
        if out.stop_reason:
            out.not_run = len(plan.points) - i
            break
        op = (point.implementation, point.op.name)
        if len(op_failures.get(op, ())) >= MAX_OP_FAILURES:
            out.record(point, f"not tried: {point.op.name} failed {MAX_OP_FAILURES} times ({op_failures[op][0]})",
                       out.skipped)
            continue
        try:
            measurement, variant = measure.measure_point(point, settings.presets[point.implementation], timer,
                                                         device, dtype, info, memory_budget)
        except measure.SkipPoint as reason:
            out.record(point, str(reason), out.skipped)
            continue
        except KeyboardInterrupt:
            out.stop_reason, out.not_run = "interrupted", len(plan.points) - i
            break
        except Exception as error:  # noqa: BLE001 -- one shape's failure must not lose the others
            reason = measure.recover(error, device)
            out.record(point, reason, out.failed)
            op_failures.setdefault(op, []).append(reason)
            failures_in_a_row += 1
            continue
        failures_in_a_row = 0
        out.measurements.append(measurement)
        out.variants[variant] = out.variants.get(variant, 0) + 1
        try:
            on_point(out)
        except KeyboardInterrupt:
            out.stop_reason, out.not_run = "interrupted", len(plan.points) - i - 1
            break
    return out


def _stop_reason(budget_s: float | None, started: float, failures_in_a_row: int) -> str | None:
    if STOP.is_set():
        return "interrupted"
    if budget_s is not None and time.perf_counter() - started > budget_s:
        return f"time budget of {budget_s:g} s spent"
    if failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
        return f"{failures_in_a_row} points failed in a row and the device no longer runs a kernel"
    return None


def calibrate(settings: CalibrationSettings, device, dtype, timer, progress: bool = True,
              log: Callable[[str], None] = print, writer: TableWriter | None = None) -> CalibrationTable:
    """Time the plan on ``device`` and fit. A point that cannot run or fails is recorded and left out;
    ``writer`` gets a checkpoint of what was measured so far as the run goes (see :func:`measure_points`)."""
    import torch

    from nfpsim.calibration import measure

    started = time.perf_counter()
    info = measure.device_info(device)
    hardware = hardware_for_device(info, settings.hardware, log)
    plan = build_plan(settings.plan)
    log(f"device: {info['name']} ({info['slug']}), {info['num_sms']} SMs, L2 {info['l2_bytes'] / 2**20:.0f} MiB")
    ceilings = measure.measure_ceilings(timer, device, dtype, settings.copy_mib * 2**20, settings.matmul_size)
    log(f"ceilings: copy {ceilings['copy_bytes_per_s'] / 1e12:.2f} TB/s, matmul "
        f"{ceilings['bf16_flop_per_s'] / 1e12:.0f} TFLOP/s, launch {ceilings['launch_overhead_s'] * 1e6:.2f} us")
    if device.type == "cuda":
        info["free_bytes"] = torch.cuda.mem_get_info(device)[0]
    budget = settings.memory_fraction * info.get("free_bytes", 2**30)
    prov = measure.provenance(device)
    prov.update(models=[m.name for m in settings.plan.models], timing=dataclasses.asdict(settings.timing),
                planned_points=len(plan.points))

    def table(points: PointLog, fitted: dict, quality: dict) -> CalibrationTable:
        record = {**prov, **points.summary(), "gpu_seconds": time.perf_counter() - started, "fitted": bool(fitted)}
        gpu = {k: v for k, v in info.items() if k != "free_bytes"} | {"arch": hardware.arch}
        return CalibrationTable(gpu=gpu, provenance=record,
                                ceilings=ceilings, measurements=tuple(points.measurements), fitted=fitted,
                                fit_quality=quality,
                                kernel_configs={name: preset_fingerprint(k) for name, k in settings.presets.items()})

    checkpoint = (lambda points: writer.checkpoint(table(points, {}, {}))) if writer else (lambda points: None)
    points = measure_points(plan, settings, device, dtype, timer, info, budget, started, checkpoint, progress)
    for item in points.skipped + points.failed:
        log(f"left out {item['implementation']}/{item['family']} {item['op']}: {item['reason']}")
    if points.stop_reason:
        log(f"stopped: {points.stop_reason}; {points.not_run} of {len(plan.points)} points not run")
    if not settings.fit:
        log("not fitted (fit=false): fit on any machine with nfpsim-calibrate refit=<this table>")
        return table(points, {}, {})
    fitted, quality = fit_measurements(points.measurements, settings.presets, settings, hardware, info, ceilings,
                                       log)
    return table(points, fitted, quality)


def refit(stored: CalibrationTable, settings: CalibrationSettings, log: Callable[[str], None] = print
          ) -> CalibrationTable:
    """``stored`` with its constants fitted again from its measurements by the current model, on any
    machine (a table measured with ``fit=false``, or one fitted by an older model)."""
    presets = {}
    for name in sorted({m.implementation for m in stored.measurements}):
        if name not in available("kernels"):
            raise ConfigError(f"refit: the table's implementation {name!r} has no conf/kernels entry")
        presets[name] = load_kernels(name)
        if stored.kernel_configs.get(name) != preset_fingerprint(presets[name]):
            log(f"warning: kernels={name} changed since the table was measured; fitting the current one")
    hardware = hardware_for_device(stored.gpu, settings.hardware, log)
    fitted, quality = fit_measurements(list(stored.measurements), presets, settings, hardware, stored.gpu,
                                       stored.ceilings, log)
    provenance = {**stored.provenance, "fitted": bool(fitted),
                  "refitted": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    return dataclasses.replace(stored, fitted=fitted, fit_quality=quality, provenance=provenance)


def fit_measurements(measurements: list[Measurement], presets: dict[str, KernelPreset],
                     settings: CalibrationSettings, hardware: HardwareSpec, info: dict, ceilings: dict,
                     log: Callable[[str], None]) -> tuple[dict, dict]:
    """Fitted constants and fit quality per implementation that has measurements (a fit that fails is
    logged and left out: the measurements stay in the table)."""
    fitted, quality = {}, {}
    for name, kernels in presets.items():
        ms = [m for m in measurements if m.implementation == name]
        if not ms:
            continue
        defaults = LatencyConstants.defaults(hardware, kernels)
        defaults = dataclasses.replace(defaults, device=dataclasses.replace(
            defaults.device, num_sms=info["num_sms"], stream_bytes_per_s=ceilings["copy_bytes_per_s"],
            bf16_flop_per_s=ceilings["bf16_flop_per_s"]))
        defaults = defaults.with_launch_overhead(ceilings["launch_overhead_s"])
        try:
            fitted[name], quality[name] = fit_implementation(ms, hardware, kernels, defaults,
                                                             settings.holdout_fraction, settings.seed)
        except Exception as error:  # noqa: BLE001 -- the measurements are worth keeping without a fit
            log(f"fit {name} failed ({type(error).__name__}: {error}); its measurements are kept unfitted")
            continue
        for family, q in quality[name].items():
            log(f"fit {name}/{family}: {q['points']} points, train MAPE {q['train_mape']:.1%}, held-out MAPE "
                f"{q['heldout_mape_fitted']:.1%} fitted, {q['heldout_mape_calibrated']:.1%} calibrated")
    return fitted, quality



def hardware_for_device(info: dict, configured: HardwareSpec, log) -> HardwareSpec:
    if info["slug"] in available("hardware"):
        return load_hardware(info["slug"])
    log(f"note: no conf/hardware entry matches {info['name']!r}; using the specs of hardware={configured.name} "
        f"with this device's SM count (add a config with device_names for this GPU)")
    return dataclasses.replace(configured, name=info["slug"], num_sms=max(1, info["num_sms"]))
