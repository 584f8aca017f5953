"""Fit the latency model's kernel constants to timed kernels, and say how well it then predicts unseen points.

Per implementation and pricer key (``gemm``, ``moe``, ``sdpa.cudnn``, ...) the fit chooses the
:class:`~nfpsim.latency.constants.KernelConstants` that minimize the mean squared log error of the
analytic pricers over the measurements: a coordinate search over shrinking windows finds the basin, then
Nelder-Mead follows the valleys where parameters trade off (numpy only: the GPU machine runs it without
scipy). Each measurement is priced as the kernel variant it timed (a fixed tile, a forced backend).

Points tagged held-out (``dims["split"] == "heldout"``, set by the importer or a random share of a fresh
calibration) never enter a fit: the reported error on them is the error on shapes the model never saw,
for the fitted pricers alone and for the calibrated model (fit plus neighbour corrections). Parameters
that end at a bound of their range are reported: the model's structure, not the data, set them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from nfpsim.config import HardwareSpec, KernelPreset
from nfpsim.latency.analytic import AnalyticLatencyModel
from nfpsim.latency.calibrated import VARIANT_DIMS, MeasurementIndex, is_preset_choice, variant_preset
from nfpsim.latency.constants import KernelConstants, LatencyConstants
from nfpsim.latency.pricing import price, pricer_key
from nfpsim.latency.table import Measurement

# (low, high, log-scaled)
BOUNDS = {
    # a read-mostly kernel may stream a little faster than the copy ceiling (which also writes), and a
    # library GEMM run a little faster than the ceiling's own 8192^3 matmul
    "mem_efficiency": (0.3, 1.2, False),
    "compute_efficiency": (0.05, 1.2, False),
    "l2_hit_fraction": (0.0, 1.0, False),
    "launch_overhead_s": (0.3e-6, 15e-6, True),
    "cta_bytes_per_s": (4e9, 300e9, True),
    "overlap": (0.0, 1.0, False),
    "tile_area_half": (64.0, 65536.0, True),
}
ALL = tuple(BOUNDS)
FREE_PARAMETERS = {
    "gemm": ALL,
    "moe": ALL,
    "attention": tuple(p for p in ALL if p != "tile_area_half"),
    "pointwise": ("mem_efficiency", "launch_overhead_s", "cta_bytes_per_s"),
    # the fused per-token kernels: their input was just written, partly still in L2
    "pointwise.row": ("mem_efficiency", "launch_overhead_s", "cta_bytes_per_s", "l2_hit_fraction"),
}
# A fit looks at most this many points per key (an even subsample): the constants are few, and the
# fit runs on the GPU machine's clock.
MAX_FIT_POINTS = 160
SATURATION = 0.01  # a parameter within 1% of its range's end is reported as saturated


def free_parameters(key: str) -> tuple[str, ...]:
    if key.startswith("pointwise."):
        return FREE_PARAMETERS["pointwise" if key == "pointwise.gather" else "pointwise.row"]
    return FREE_PARAMETERS["attention" if key.startswith("sdpa.") else key]


def is_heldout(m: Measurement) -> bool:
    return dict(m.dims).get("split") == "heldout"


@dataclasses.dataclass(frozen=True)
class Point:
    """A measurement with the preset variant that runs it."""

    measurement: Measurement
    kernels: KernelPreset


def points_of(measurements: Sequence[Measurement], kernels: KernelPreset) -> list[Point]:
    return [Point(m, variant_preset(kernels, {k: v for k, v in m.dims if k in VARIANT_DIMS})) for m in measurements]


def _to_unit(name: str, value: float) -> float:
    low, high, log = BOUNDS[name]
    if log:
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


def _from_unit(name: str, u: float) -> float:
    low, high, log = BOUNDS[name]
    u = min(1.0, max(0.0, float(u)))
    return math.exp(math.log(low) + u * (math.log(high) - math.log(low))) if log else low + u * (high - low)


def _log_errors(points: Sequence[Point], constants: LatencyConstants) -> np.ndarray:
    predicted = np.array([price(p.measurement.op, p.kernels, constants).time_s for p in points])
    measured = np.array([p.measurement.time_s for p in points])
    return np.log(predicted) - np.log(measured)


def fit_key(points: Sequence[Point], key: str, constants: LatencyConstants, rounds: int = 3, steps: int = 7,
            simplex_iterations: int = 250) -> KernelConstants:
    """The constants of ``key`` minimizing the squared log error over ``points``."""
    if len(points) > MAX_FIT_POINTS:
        stride = len(points) / MAX_FIT_POINTS
        points = [points[int(i * stride)] for i in range(MAX_FIT_POINTS)]
    names = free_parameters(key)
    start = constants.kernel(key)

    def unpack(u: np.ndarray) -> KernelConstants:
        return dataclasses.replace(start, **{p: _from_unit(p, v) for p, v in zip(names, u)})

    def loss(u: np.ndarray) -> float:
        errors = _log_errors(points, constants.with_kernel(key, unpack(u)))
        return float(np.mean(errors ** 2))

    u = np.clip(np.array([_to_unit(p, getattr(start, p)) for p in names]), 0.0, 1.0)
    best = loss(u)
    width = 1.0
    for _ in range(rounds):
        for i in range(len(names)):
            for value in np.linspace(max(0.0, u[i] - width / 2), min(1.0, u[i] + width / 2), steps):
                trial = u.copy()
                trial[i] = value
                trial_loss = loss(trial)
                if trial_loss < best:
                    best, u = trial_loss, trial
        width /= 3
    u = _nelder_mead(loss, u, simplex_iterations, step=width)
    return unpack(_nelder_mead(loss, u, simplex_iterations, step=width / 3))


def saturated(key: str, constants: KernelConstants) -> list[str]:
    """Free parameters of ``key`` that ended within 1% of an end of their range."""
    out = []
    for name in free_parameters(key):
        u = _to_unit(name, getattr(constants, name))
        if u <= SATURATION or u >= 1 - SATURATION:
            out.append(name)
    return out


def _nelder_mead(f, x0: np.ndarray, iterations: int, step: float) -> np.ndarray:
    """Minimize ``f`` from ``x0`` with the Nelder-Mead simplex (standard coefficients)."""
    simplex = [x0] + [x0 + step * np.eye(len(x0))[i] for i in range(len(x0))]
    values = [f(x) for x in simplex]
    for _ in range(iterations):
        order = np.argsort(values)
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        centroid = np.mean(simplex[:-1], axis=0)
        reflected = centroid + (centroid - simplex[-1])
        r = f(reflected)
        if r < values[0]:
            expanded = centroid + 2.0 * (centroid - simplex[-1])
            e = f(expanded)
            simplex[-1], values[-1] = (expanded, e) if e < r else (reflected, r)
        elif r < values[-2]:
            simplex[-1], values[-1] = reflected, r
        else:
            contracted = centroid + 0.5 * (simplex[-1] - centroid)
            c = f(contracted)
            if c < values[-1]:
                simplex[-1], values[-1] = contracted, c
            else:  # shrink towards the best point
                simplex = [simplex[0]] + [simplex[0] + 0.5 * (x - simplex[0]) for x in simplex[1:]]
                values = [values[0]] + [f(x) for x in simplex[1:]]
        if max(values) - min(values) < 1e-12:
            break
    return simplex[int(np.argmin(values))]


def mape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    return float(np.mean(np.abs(p - m) / m)) if len(m) else float("nan")


def group_by_key(points: Sequence[Point], arch: str) -> dict[str, list[Point]]:
    groups: dict[str, list[Point]] = {}
    for p in points:
        key = pricer_key(p.measurement.op, p.kernels, arch)
        if key is not None:
            groups.setdefault(key, []).append(p)
    return groups


def fit_implementation(measurements: Sequence[Measurement], hardware: HardwareSpec, kernels: KernelPreset,
                       defaults: LatencyConstants, holdout_fraction: float = 0.0, seed: int = 0,
                       **fit_options) -> tuple[dict, dict]:
    """Constants per pricer key fitted on the training points, and the fit quality per key: train error,
    held-out error of the fitted pricers and of the calibrated model, saturated parameters.

    Points without a split tag are held out at random with ``holdout_fraction`` (a fresh calibration);
    imported points carry their own deterministic tag."""
    rng = np.random.default_rng(seed)
    tagged = []
    for m in measurements:
        if "split" not in dict(m.dims):
            split = "heldout" if rng.random() < holdout_fraction else "train"
            m = dataclasses.replace(m, dims=tuple(sorted(dict(m.dims, split=split).items())))
        tagged.append(m)
    groups = group_by_key(points_of(tagged, kernels), hardware.arch)
    constants = defaults
    for key, points in groups.items():
        train = [p for p in points if not is_heldout(p.measurement)] or points
        constants = constants.with_kernel(key, fit_key(train, key, constants, **fit_options))
    quality = evaluate(tagged, hardware, kernels, constants, groups)
    fitted = {key: dataclasses.asdict(constants.kernel(key)) for key in groups}
    return fitted, quality


def evaluate(measurements: Sequence[Measurement], hardware: HardwareSpec, kernels: KernelPreset,
             constants: LatencyConstants, groups: dict[str, list[Point]] | None = None) -> dict:
    """Per pricer key: points, train and held-out MAPE of the fitted pricers, held-out MAPE of the
    calibrated model (neighbour corrections from the training points only), saturated parameters."""
    groups = groups or group_by_key(points_of(measurements, kernels), hardware.arch)
    fitted_model = AnalyticLatencyModel(hardware, kernels, constants)
    index = MeasurementIndex([(m.op, m.time_s) for m in measurements
                              if not is_heldout(m) and is_preset_choice(m, kernels, hardware.arch)],
                             kernels, fitted_model)
    quality = {}
    for key, points in groups.items():
        held = [p for p in points if is_heldout(p.measurement)]
        train = [p for p in points if not is_heldout(p.measurement)]

        def predicted(ps: Sequence[Point]) -> list[float]:
            return [price(p.measurement.op, p.kernels, constants).time_s for p in ps]

        calibrated = []
        for p, fitted_s in zip(held, predicted(held)):
            hit = index.lookup(p.measurement.op, fitted_s) if p.kernels == kernels else None
            calibrated.append(hit[0] if hit else fitted_s)
        measured_held = [p.measurement.time_s for p in held]
        quality[key] = {
            "points": len(points),
            "heldout_points": len(held),
            "train_mape": mape(predicted(train), [p.measurement.time_s for p in train]),
            "heldout_mape_fitted": mape(predicted(held), measured_held),
            "heldout_mape_calibrated": mape(calibrated, measured_held),
            "saturated": saturated(key, constants.kernel(key)),
        }
    return quality
