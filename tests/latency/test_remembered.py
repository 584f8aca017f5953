"""Forward times remembered across runs: reused only for the same computation, with the same figures."""

import dataclasses
import shutil

import numpy as np
import pytest

from nfpsim.config import KernelPreset, ModelSpec, load_group, load_hardware
from nfpsim.latency import make_latency_model
from nfpsim.latency import remembered
from nfpsim.latency.analytic import AnalyticLatencyModel
from nfpsim.latency.table import load_table
from nfpsim.shapes import ForwardShape, SeqGroup
from nfpsim.sim import simulate
from nfpsim.sim.decoding_config import decoding_from_config
from nfpsim.sim.simulator import EngineSpec, Observe, Target
from nfpsim.sim.workload import WorkloadSpec


class Counting:
    """A latency model that counts the forwards it prices."""

    def __init__(self, latency):
        self.latency = latency
        self.priced = 0

    def forward_time(self, model, shape):
        self.priced += 1
        return self.latency.forward_time(model, shape)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NFPSIM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def model(name="llama3_8b", **changes):
    return ModelSpec.from_config({**load_group("model", name), **changes})


def analytic(hardware="h100_sxm", kernels="vendor"):
    return make_latency_model("analytic", load_hardware(hardware), KernelPreset.from_config(load_group("kernels", kernels)))


def remembered_counting(latency):
    """``latency`` remembered, with the file of its own fingerprint, counting what reaches it."""
    counting = Counting(latency)
    wrapper = remembered.remember_forward_times(latency)
    wrapper._latency = counting
    return wrapper, counting


def run(latency, m):
    decoding = decoding_from_config(load_group("decoding", "speculative"), m, 0.1)
    workload = WorkloadSpec.from_config({**load_group("workload", "poisson"), "num_requests": 60})
    engine = EngineSpec(max_num_seqs=32, max_num_batched_tokens=2048, tp=1)
    return simulate(Target(load_hardware("h100_sxm"), m), latency, workload, decoding, engine, seed=3,
                    observe=Observe(nfp_samples=10))


def test_a_second_run_prices_nothing_and_gives_the_same_figures_bit_for_bit(cache):
    m = model()
    first, counting = remembered_counting(analytic())
    cold = run(first, m)
    assert counting.priced > 0 and first.new_entries == counting.priced
    first.save()
    assert len(list((cache / "prices").glob("*.json"))) == 1

    second, counting = remembered_counting(analytic())
    warm = run(second, m)
    assert counting.priced == 0
    assert warm.summary == cold.summary
    for name in cold.forwards:
        np.testing.assert_array_equal(warm.forwards[name], cold.forwards[name])
    for name in cold.requests:
        np.testing.assert_array_equal(warm.requests[name], cold.requests[name])


def test_another_model_spec_or_another_latency_model_is_priced_again(cache):
    shape = ForwardShape((SeqGroup(8, 4, 1024),))
    base, _ = remembered_counting(analytic())
    base.forward_time(model(), shape)
    base.save()

    again, counting = remembered_counting(analytic())
    again.forward_time(model(), shape)
    assert counting.priced == 0
    deeper = model(num_layers=40)  # same name, another model
    assert again.forward_time(deeper, shape) != again.forward_time(model(), shape)
    assert counting.priced == 1

    other, counting = remembered_counting(analytic("h200"))
    other.forward_time(model(), shape)
    assert counting.priced == 1
    hardware, kernels = load_hardware("h100_sxm"), KernelPreset.from_config(load_group("kernels", "vendor"))
    fitted = AnalyticLatencyModel(hardware, kernels)
    constants = fitted.constants
    changed = AnalyticLatencyModel(hardware, kernels, constants.with_kernel(
        "gemm", dataclasses.replace(constants.gemm, l2_hit_fraction=constants.gemm.l2_hit_fraction / 2)))
    assert remembered.remember_forward_times(changed)._path != remembered.remember_forward_times(fitted)._path


def test_a_calibration_table_is_named_by_its_bytes(cache, tmp_path):
    source = load_table("calibration/h100_sxm.json")
    assert source.source_sha256 is not None
    copy = tmp_path / "h100_sxm.json"
    shutil.copy("calibration/h100_sxm.json", copy)
    text = copy.read_text()
    same = make_latency_model("calibrated", load_hardware("h100_sxm"),
                              KernelPreset.from_config(load_group("kernels", "vendor")), copy)
    original = make_latency_model("calibrated", load_hardware("h100_sxm"),
                                  KernelPreset.from_config(load_group("kernels", "vendor")))
    assert remembered.digest(same) == remembered.digest(original)
    copy.write_text(text + " ")  # one more byte, the same data
    edited = make_latency_model("calibrated", load_hardware("h100_sxm"),
                                KernelPreset.from_config(load_group("kernels", "vendor")), copy)
    assert remembered.digest(edited) != remembered.digest(original)


def test_the_canonical_form_does_not_depend_on_set_order_or_float_spelling():
    assert remembered.digest({"a": {3, 1, 2}}) == remembered.digest({"a": {2, 3, 1}})
    assert remembered.digest([1.0]) != remembered.digest([1])
    assert remembered.digest([0.1 + 0.2]) != remembered.digest([0.3])
    with pytest.raises(TypeError):
        remembered.canonical(object())


def test_without_a_cache_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("NFPSIM_CACHE_DIR", "off")
    wrapper = remembered.remember_forward_times(analytic())
    wrapper.forward_time(model(), ForwardShape((SeqGroup(1, 1, 64),)))
    wrapper.save()
    assert wrapper._path is None


def test_an_unfingerprintable_latency_is_remembered_in_process_only(cache):
    class Opaque:
        __slots__ = ()

        def forward_time(self, model, shape):
            return 1.0

    wrapper = remembered.remember_forward_times(Opaque())
    assert wrapper._path is None and wrapper.forward_time(model(), ForwardShape((SeqGroup(1, 1, 0),))) == 1.0


def test_the_newest_files_are_kept_and_a_corrupt_one_is_a_miss(cache, monkeypatch):
    monkeypatch.setattr(remembered, "MAX_FILES", 2)
    shape = ForwardShape((SeqGroup(2, 2, 128),))
    for hardware in ("a100_80g", "h100_sxm", "h200"):
        wrapper = remembered.remember_forward_times(analytic(hardware))
        wrapper.forward_time(model(), shape)
        wrapper.save()
    files = list((cache / "prices").glob("*.json"))
    assert len(files) == 2
    for path in files:
        path.write_text("{corrupt")
    wrapper, counting = remembered_counting(analytic("h200"))
    wrapper.forward_time(model(), shape)
    assert counting.priced == 1
