"""Fit the analytic model's constants to timed kernels, and say how well it then predicts unseen points.

Per implementation and op family the fit chooses the family constants (fraction of the copy ceiling,
fraction of the matmul ceiling, L2 hit fraction of re-streamed tiles, launch overhead) that minimize
the mean squared log error of the analytic model over the measurements, by coordinate descent over
shrinking windows (numpy only: the GPU machine runs it without scipy). A held-out share of the points
is kept out of one fit to report the error on shapes the model never saw, both for the fitted analytic
model alone and for the calibrated model (fit + neighbour corrections).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from nfpsim.calibration.table import Measurement
from nfpsim.config import HardwareSpec, KernelPreset
from nfpsim.latency.analytic import AnalyticLatencyModel, family_of, price
from nfpsim.latency.calibrated import MeasurementIndex
from nfpsim.latency.constants import FamilyConstants, LatencyConstants

BOUNDS = {
    "mem_efficiency": (0.05, 1.0),
    "compute_efficiency": (0.02, 1.0),
    "l2_hit_fraction": (0.0, 1.0),
    "launch_overhead_s": (0.0, 40e-6),
}
FREE_PARAMETERS = {
    "gemm": tuple(BOUNDS),
    "moe": tuple(BOUNDS),
    "attention": tuple(BOUNDS),
    "pointwise": ("mem_efficiency", "launch_overhead_s"),
}


def _log_errors(measurements: Sequence[Measurement], kernels: KernelPreset, constants: LatencyConstants) -> np.ndarray:
    predicted = np.array([price(m.op, kernels, constants).time_s for m in measurements])
    measured = np.array([m.time_s for m in measurements])
    return np.log(predicted) - np.log(measured)


# A fit looks at most this many points per family (an even subsample): the constants are few, and the
# fit runs on the GPU machine's clock.
MAX_FIT_POINTS = 160


def fit_family(measurements: Sequence[Measurement], family: str, kernels: KernelPreset,
               constants: LatencyConstants, rounds: int = 3, steps: int = 9,
               simplex_iterations: int = 300) -> FamilyConstants:
    """Constants of ``family`` minimizing the squared log error over ``measurements``: a coarse
    coordinate search over shrinking windows finds the basin, then Nelder-Mead (in bound-normalized
    coordinates, restarted once from its result) follows the valleys where parameters trade off
    (launch overhead against bandwidth)."""
    if len(measurements) > MAX_FIT_POINTS:
        stride = len(measurements) / MAX_FIT_POINTS
        measurements = [measurements[int(i * stride)] for i in range(MAX_FIT_POINTS)]
    names = FREE_PARAMETERS[family]
    lows = np.array([BOUNDS[p][0] for p in names])
    spans = np.array([BOUNDS[p][1] - BOUNDS[p][0] for p in names])
    start = getattr(constants, family)

    def unpack(u: np.ndarray) -> FamilyConstants:
        values = lows + np.clip(u, 0.0, 1.0) * spans
        return dataclasses.replace(start, **{p: float(v) for p, v in zip(names, values)})

    def loss(u: np.ndarray) -> float:
        trial = dataclasses.replace(constants, **{family: unpack(u)})
        return float(np.mean(_log_errors(measurements, kernels, trial) ** 2))

    u = np.clip((np.array([getattr(start, p) for p in names]) - lows) / spans, 0.0, 1.0)
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
    p, m = np.asarray(predicted), np.asarray(measured)
    return float(np.mean(np.abs(p - m) / m)) if len(m) else float("nan")


def fit_implementation(measurements: Sequence[Measurement], hardware: HardwareSpec, kernels: KernelPreset,
                       defaults: LatencyConstants, holdout_fraction: float, seed: int) -> tuple[dict, dict]:
    """Fitted constants per family (on all points) and fit quality (held-out error from a fit on the
    rest) for one implementation."""
    rng = np.random.default_rng(seed)
    by_family: dict[str, list[Measurement]] = {}
    for m in measurements:
        by_family.setdefault(family_of(m.op), []).append(m)
    held = {id(m): rng.random() < holdout_fraction for m in measurements}

    train_constants = defaults
    for family, ms in by_family.items():
        train = [m for m in ms if not held[id(m)]] or ms
        train_constants = dataclasses.replace(train_constants,
                                              **{family: fit_family(train, family, kernels, train_constants)})
    fitted_model = AnalyticLatencyModel(hardware, kernels, train_constants)
    index = MeasurementIndex([(m.op, m.time_s) for m in measurements if not held[id(m)]], kernels, fitted_model)

    fitted: dict[str, dict] = {}
    quality: dict[str, dict] = {}
    final = defaults
    for family, ms in by_family.items():
        final = dataclasses.replace(final, **{family: fit_family(ms, family, kernels, final)})
        fitted[family] = dataclasses.asdict(getattr(final, family))
        heldout = [m for m in ms if held[id(m)]]
        train = [m for m in ms if not held[id(m)]]
        fitted_heldout = [fitted_model.op_cost(m.op).time_s for m in heldout]
        calibrated_heldout = []
        for m, fitted_s in zip(heldout, fitted_heldout):
            hit = index.lookup(m.op, fitted_s)
            calibrated_heldout.append(hit[0] if hit else fitted_s)
        quality[family] = {
            "points": len(ms),
            "heldout_points": len(heldout),
            "train_mape": mape([fitted_model.op_cost(m.op).time_s for m in train], [m.time_s for m in train]),
            "heldout_mape_fitted": mape(fitted_heldout, [m.time_s for m in heldout]),
            "heldout_mape_calibrated": mape(calibrated_heldout, [m.time_s for m in heldout]),
        }
    return fitted, quality
