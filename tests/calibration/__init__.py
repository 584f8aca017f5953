"""Helpers: tables of synthetic measurements made from a known "true" analytic model."""

import dataclasses

import numpy as np

from nfpsim.calibration.plan import PlanSettings, build_plan
from nfpsim.latency.table import CalibrationTable, Measurement
from nfpsim.latency.analytic import price
from nfpsim.latency.calibrated import preset_fingerprint
from nfpsim.latency.constants import LatencyConstants


def true_constants(hardware, kernels):
    """A GPU unlike its spec: other efficiencies, L2 hit fraction and launch overhead per family."""
    base = LatencyConstants.defaults(hardware, kernels)
    return dataclasses.replace(
        base,
        gemm=dataclasses.replace(base.gemm, mem_efficiency=0.62, compute_efficiency=0.47, l2_hit_fraction=0.25,
                                 launch_overhead_s=4e-6),
        attention=dataclasses.replace(base.attention, mem_efficiency=0.55, l2_hit_fraction=0.7,
                                      launch_overhead_s=5e-6),
        moe=dataclasses.replace(base.moe, mem_efficiency=0.5, launch_overhead_s=3e-6),
        pointwise=dataclasses.replace(base.pointwise, mem_efficiency=0.4, launch_overhead_s=3.5e-6),
        pointwise_kinds={kind: dataclasses.replace(c, cta_bytes_per_s=0.7 * c.cta_bytes_per_s, launch_overhead_s=3.5e-6)
                         for kind, c in base.pointwise_kinds.items()},
    )


def synthetic_measurements(points, kernels_by_name, truth_by_name, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    return [Measurement(p.implementation, p.op,
                        price(p.op, kernels_by_name[p.implementation], truth_by_name[p.implementation]).time_s
                        * (1 + noise * rng.standard_normal()), 0.0, p.dims)
            for p in points]


def synthetic_table(hardware, presets, models, fitted, measurements, slug=None):
    return CalibrationTable(
        gpu={"name": f"synthetic {hardware.name}", "slug": slug or hardware.name, "num_sms": hardware.num_sms},
        provenance={"date": "synthetic", "note": "made from a known analytic model by the tests"},
        ceilings={"copy_bytes_per_s": hardware.stream_bytes_per_s,
                  "bf16_flop_per_s": hardware.matmul_flop_per_s("bf16"), "launch_overhead_s": 3e-6},
        kernel_configs={k.name: preset_fingerprint(k) for k in presets},
        measurements=tuple(measurements), fitted=fitted, fit_quality={})


def small_plan(presets, models, max_tokens=130, batches=(1, 8), contexts=(1024, 4096), max_positions=64,
               pointwise_tokens=(1, 64, 1024)):
    return build_plan(PlanSettings(models=tuple(models), implementations=tuple(presets), max_tokens=max_tokens,
                                   batches=batches, contexts=contexts, max_positions=max_positions,
                                   pointwise_tokens=pointwise_tokens))
