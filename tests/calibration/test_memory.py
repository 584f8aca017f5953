"""Every point of the default calibration and validation plans, built on ``meta`` (sizes, no memory):
what it really allocates matches the planner, and its peak fits a GPU with 75 GiB to spare."""

import pytest
import torch
from hydra import compose, initialize_config_dir

from nfpsim.calibration import plan as calibration_plan
from nfpsim.calibration.measure import plan_memory, tensor_bytes, workload_for
from nfpsim.calibration.run import CalibrationSettings
from nfpsim.config import CONF_DIR
from nfpsim.validation import plan as validation_plan
from nfpsim.validation.model import KVCache, ModelWeights
from nfpsim.validation.run import forward_sets

LIMIT = 75 * 2**30


def _config(name):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name)


@pytest.mark.slow
def test_every_default_calibration_point_fits_and_allocates_what_the_plan_says():
    settings = CalibrationSettings.from_config(_config("calibrate"))
    hw = settings.hardware
    info = {"num_sms": hw.num_sms, "l2_bytes": hw.l2_bytes}
    budget = settings.memory_fraction * hw.memory_bytes
    plan = calibration_plan.build_plan(settings.plan)
    peaks = {}
    for point in plan.points:
        kernels = settings.presets[point.implementation]
        memory = plan_memory(point, kernels, torch.bfloat16, info, budget)
        assert memory.set_bytes == calibration_plan.set_bytes(point), point
        assert memory.peak_bytes <= LIMIT, (point, memory)
        work = workload_for(point, kernels, torch.device("meta"), torch.bfloat16, hw.num_sms)
        assert len(work.variants) == calibration_plan.num_variants(point, kernels, hw.num_sms), point
        peaks[point.op.name] = max(peaks.get(point.op.name, 0), memory.peak_bytes)
    # the rotary workload no longer allocates a [T, T+1] cache (64 GiB for two sets at 4096 tokens)
    assert 0 < peaks["rope_kv_write"] < 2 * 2**30


def test_each_eager_kernel_moves_exactly_the_bytes_its_point_claims():
    """A vendor (eager glue) point is timed with a generic torch kernel: the tensors it really builds hold
    the op's bytes, each read or written once (operands, output, ids), so the fit prices what ran."""
    settings = CalibrationSettings.from_config(_config("calibrate"))
    generic = [p for p in calibration_plan.build_plan(settings.plan).points if p.generic]
    assert {p.implementation for p in generic} == {"vendor"}
    for point in generic:
        work = workload_for(point, settings.presets[point.implementation], torch.device("meta"), torch.bfloat16, 1)
        assert tensor_bytes(work.make_set().values()) == point.op.shape.bytes
        assert list(work.variants) == [dict(point.dims)["kernel"]]


def test_the_rotation_exceeds_the_l2_or_flushes_it():
    settings = CalibrationSettings.from_config(_config("calibrate"))
    l2 = settings.hardware.l2_bytes
    for point in calibration_plan.build_plan(settings.plan).points[::50]:
        one = calibration_plan.set_bytes(point)
        sets = calibration_plan.num_sets(one, l2)
        assert sets * one + calibration_plan.flush_bytes(one, sets, l2) >= calibration_plan.ROTATION_L2_MULTIPLE * l2


def test_every_default_validation_curve_fits_and_its_weights_and_caches_are_planned_exactly():
    settings = validation_plan.ValidationSettings.from_config(_config("validate"))
    curves, _ = validation_plan.plan_curves(settings)
    meta, bf16 = torch.device("meta"), torch.bfloat16
    checked = set()
    for curve in curves:
        sets = forward_sets(curve.model, settings.hardware.l2_bytes)
        peak = validation_plan.peak_bytes(curve, 2, sets, settings.max_positions)
        assert peak <= settings.memory_fraction * settings.hardware.memory_bytes and peak <= LIMIT, curve.key
        if (curve.model.name, curve.batch, curve.context) in checked:
            continue
        checked.add((curve.model.name, curve.batch, curve.context))
        weights = ModelWeights.random(curve.model, meta, bf16)
        tensors = [weights.embed, weights.final_norm, weights.lm_head] + [
            t for layer in weights.layers for t in vars(layer).values() if isinstance(t, torch.Tensor)]
        assert tensor_bytes(tensors) == validation_plan.weight_bytes(curve.model, 2)
        slots = curve.context + settings.max_positions
        cache = KVCache.random(curve.model, curve.batch, slots, meta, bf16)
        assert tensor_bytes(cache.k + cache.v) == validation_plan.cache_bytes(curve.model, curve.batch, slots, 2)
