"""One calibration: plan, time every point, fit the constants, assemble the table (no file writes)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nfpsim.calibration.fit import fit_implementation
from nfpsim.calibration.plan import Plan, PlanSettings, TimingSettings, build_plan, point_summary
from nfpsim.latency.table import CalibrationTable
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


def calibrate(settings: CalibrationSettings, device, dtype, timer, progress: bool = True,
              log: Callable[[str], None] = print) -> CalibrationTable:
    """Time the plan on ``device`` and fit; raises nothing for a shape one implementation cannot run
    (it is logged and left out), everything else propagates."""
    import torch
    from tqdm import tqdm

    from nfpsim.calibration import measure

    info = measure.device_info(device)
    hardware = hardware_for_device(info, settings.hardware, log)
    plan = build_plan(settings.plan)
    started = time.perf_counter()
    log(f"device: {info['name']} ({info['slug']}), {info['num_sms']} SMs, L2 {info['l2_bytes'] / 2**20:.0f} MiB")
    ceilings = measure.measure_ceilings(timer, device, dtype, settings.copy_mib * 2**20, settings.matmul_size)
    log(f"ceilings: copy {ceilings['copy_bytes_per_s'] / 1e12:.2f} TB/s, matmul "
        f"{ceilings['bf16_flop_per_s'] / 1e12:.0f} TFLOP/s, launch {ceilings['launch_overhead_s'] * 1e6:.2f} us")
    budget = settings.memory_fraction * (torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 2**30)
    measurements, skipped, variants = [], {}, {}
    for point in tqdm(plan.points, desc="timing", unit="shape", disable=not progress):
        try:
            measurement, variant = measure.measure_point(point, settings.presets[point.implementation], timer,
                                                         device, dtype, info, budget)
        except measure.SkipPoint as reason:
            skipped.setdefault(f"{point.implementation}/{point.family}", str(reason))
            continue
        measurements.append(measurement)
        variants[variant] = variants.get(variant, 0) + 1
    for what, reason in skipped.items():
        log(f"skipped {what}: {reason}")
    fitted, quality = {}, {}
    for name, kernels in settings.presets.items():
        ms = [m for m in measurements if m.implementation == name]
        if not ms:
            continue
        defaults = LatencyConstants.defaults(hardware, kernels)
        defaults = dataclasses.replace(defaults, device=dataclasses.replace(
            defaults.device, num_sms=info["num_sms"], stream_bytes_per_s=ceilings["copy_bytes_per_s"],
            bf16_flop_per_s=ceilings["bf16_flop_per_s"]))
        defaults = _with_launch(defaults, ceilings["launch_overhead_s"])
        fitted[name], quality[name] = fit_implementation(ms, hardware, kernels, defaults,
                                                         settings.holdout_fraction, settings.seed)
        for family, q in quality[name].items():
            log(f"fit {name}/{family}: {q['points']} points, train MAPE {q['train_mape']:.1%}, held-out MAPE "
                f"{q['heldout_mape_fitted']:.1%} fitted, {q['heldout_mape_calibrated']:.1%} calibrated")
    from nfpsim.calibration.measure import provenance

    prov = provenance(device)
    prov.update(gpu_seconds=time.perf_counter() - started, skipped=skipped, variants=variants,
                models=[m.name for m in settings.plan.models], timing=dataclasses.asdict(settings.timing))
    return CalibrationTable(
        gpu={**info, "arch": hardware.arch}, provenance=prov, ceilings=ceilings,
        kernel_configs={name: preset_fingerprint(k) for name, k in settings.presets.items()},
        measurements=tuple(measurements), fitted=fitted, fit_quality=quality)


def _with_launch(constants: LatencyConstants, launch_s: float) -> LatencyConstants:
    """Start every family's launch overhead at the measured one (the fit moves it from there)."""
    families = {f: dataclasses.replace(getattr(constants, f), launch_overhead_s=launch_s)
                for f in ("gemm", "moe", "attention", "pointwise")}
    return dataclasses.replace(constants, **families)


def hardware_for_device(info: dict, configured: HardwareSpec, log) -> HardwareSpec:
    if info["slug"] in available("hardware"):
        return load_hardware(info["slug"])
    log(f"note: no conf/hardware entry matches {info['name']!r}; using the specs of hardware={configured.name} "
        f"with this device's SM count (add a config with device_names for this GPU)")
    return dataclasses.replace(configured, name=info["slug"], num_sms=max(1, info["num_sms"]))
