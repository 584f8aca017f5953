import dataclasses
import json
import warnings

import pytest

from nfpsim.latency.table import load_table
from nfpsim.config import GemmTile, load_hardware, load_kernels, load_model
from nfpsim.errors import ConfigError
from nfpsim.io import write_json
from nfpsim.latency import make_latency_model, transferred_model
from nfpsim.latency.analytic import AnalyticLatencyModel, price
from nfpsim.latency.calibrated import CalibratedLatencyModel, CalibrationWarning
from nfpsim.latency.constants import KERNEL_KEYS
from nfpsim.nfp import analyze
from nfpsim.shapes import ForwardShape, GemmShape, Op
from tests.calibration import small_plan, synthetic_measurements, synthetic_table, true_constants

HW = load_hardware("h100_sxm")


@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    """A table whose measurements come from a known 'true' model, with fitted constants stored."""
    presets = [load_kernels("triton"), load_kernels("vendor")]
    truth = {k.name: true_constants(HW, k) for k in presets}
    plan = small_plan(presets, [load_model("llama3_8b"), load_model("qwen3_30b_a3b")])
    measured = synthetic_measurements(plan.points, {k.name: k for k in presets}, truth, noise=0.0)
    fitted = {name: {key: dataclasses.asdict(c.kernel(key)) for key in KERNEL_KEYS if not key.startswith("sdpa.")}
              for name, c in truth.items()}
    path = tmp_path_factory.mktemp("cal") / "h100_sxm.json"
    write_json(path, synthetic_table(HW, presets, [], fitted, measured).to_dict())
    return path, truth


def op(tokens, n=6144, k=4096):
    return Op("qkv_proj", "qkv_proj", GemmShape(tokens, n, k, 2))


def test_measured_corrected_and_fitted_sources(table_file):
    path, truth = table_file
    model = make_latency_model("calibrated", HW, load_kernels("triton"), path)
    assert isinstance(model, CalibratedLatencyModel)
    exact = model.op_cost(op(17))  # on the token grid
    assert exact.source == "measured"
    assert exact.time_s == pytest.approx(price(op(17), load_kernels("triton"), truth["triton"]).time_s)
    between = model.op_cost(op(20))  # not timed; 17 and 31 are, in the same bucket of two 16-row tiles
    assert between.source == "corrected"
    assert between.time_s == pytest.approx(price(op(20), load_kernels("triton"), truth["triton"]).time_s, rel=1e-6)
    unseen = model.op_cost(op(20, n=1234, k=4096))  # a GEMM no model has
    assert unseen.source == "fitted"


def test_corrections_never_cross_a_tile_boundary(table_file):
    path, truth = table_file
    triton = load_kernels("triton")
    model = make_latency_model("calibrated", HW, triton, path)
    for edge in (16, 32, 64):  # the host switches to a larger tile past each edge: the step survives
        below, above = model.op_cost(op(edge)), model.op_cost(op(edge + 1))
        true_step = price(op(edge + 1), triton, truth["triton"]).time_s / price(op(edge), triton,
                                                                                  truth["triton"]).time_s
        assert above.time_s / below.time_s == pytest.approx(true_step, rel=0.01)
    # within one tile bucket the prediction stays flat, as the measurements it interpolates are
    first_bucket = [model.op_cost(op(t)).time_s for t in (1, 8, 16)]
    assert max(first_bucket) < 1.05 * min(first_bucket)


def test_nfp_runs_from_a_table_on_the_cpu(table_file):
    path, truth = table_file
    report = analyze(make_latency_model("calibrated", HW, load_kernels("triton"), path), load_model("llama3_8b"),
                     batch=1, context=4096, eps=0.1)
    assert report.latency == "calibrated"
    assert {"measured", "fitted"} <= set(report.sources) or "corrected" in report.sources
    true_model = AnalyticLatencyModel(HW, load_kernels("triton"), truth["triton"])
    reference = analyze(true_model, load_model("llama3_8b"), batch=1, context=4096, eps=0.1)
    assert report.forward.nfp.nfp == reference.forward.nfp.nfp


def test_auto_uses_the_table_only_when_it_fits(table_file, tmp_path):
    path, _ = table_file
    assert make_latency_model("auto", HW, load_kernels("triton"), path).kind == "calibrated"
    for kind in ("auto", "analytic", "calibrated"):  # a table named explicitly must exist
        with pytest.raises(ConfigError, match="none.json: no such file"):
            make_latency_model(kind, HW, load_kernels("triton"), tmp_path / "none.json")


def test_a_gpu_without_a_table_borrows_the_constants_of_its_architecture(table_file, tmp_path):
    """H200 (sm90, no table): its own ceilings with the kernel constants fitted on the H100 table."""
    path, truth = table_file
    directory = tmp_path / "tables"
    directory.mkdir()
    (directory / "h100_sxm.json").write_text(path.read_text())
    h200, a100 = load_hardware("h200"), load_hardware("a100_80g")
    model = transferred_model(h200, load_kernels("triton"), directory)
    assert model.kind == "transferred" and "h100_sxm" in model.origin
    assert model.constants.gemm == truth["triton"].gemm
    assert model.constants.device.stream_bytes_per_s == h200.stream_bytes_per_s
    assert transferred_model(a100, load_kernels("triton"), directory) is None  # sm80: nothing to borrow


def test_a_table_from_another_gpu_is_an_error(table_file):
    path, _ = table_file
    with pytest.warns(CalibrationWarning, match="not on hardware=h200"):  # auto: never silently ignored
        assert make_latency_model("auto", load_hardware("h200"), load_kernels("triton"), path).kind != "calibrated"
    with pytest.raises(ConfigError, match="measured on .* not on hardware=h200"):
        make_latency_model("calibrated", load_hardware("h200"), load_kernels("triton"), path)
    with pytest.raises(ConfigError, match="measured on .* not on hardware=h200"):
        CalibratedLatencyModel(load_hardware("h200"), load_kernels("triton"), load_table(path))


@pytest.mark.parametrize("content", ["", "{not json", json.dumps({"format": "other"}),
                                     json.dumps({"format": "nfpsim-calibration/1", "gpu": {}})])
def test_a_corrupt_table_is_an_error_even_for_auto(tmp_path, content):
    bad = tmp_path / "h100_sxm.json"
    bad.write_text(content)
    for kind in ("calibrated", "auto"):
        with pytest.raises(ConfigError):
            make_latency_model(kind, HW, load_kernels("triton"), bad)


def test_another_kernel_configuration_warns_and_uses_only_the_constants(table_file):
    path, _ = table_file
    triton = load_kernels("triton")
    other = dataclasses.replace(triton, gemm=dataclasses.replace(triton.gemm, tiles=(GemmTile(32, 64, 128),)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = make_latency_model("calibrated", HW, other, path)
    assert any(issubclass(w.category, CalibrationWarning) and "gemm" in str(w.message) for w in caught)
    assert model.op_cost(op(17)).source == "fitted"
    # the other families were timed with the configuration they still have: their measurements hold
    attention = next(o for o in model.decompose(load_model("llama3_8b"), ForwardShape.uniform(1, 4, 4096))
                     if o.name == "attention")
    assert model.op_cost(attention).source in ("measured", "corrected")


def test_missing_implementation_in_the_table(tmp_path, table_file):
    path, _ = table_file
    data = json.loads(path.read_text())
    del data["fitted"]["vendor"]
    only_triton = tmp_path / "h100_sxm.json"
    only_triton.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="no measurements of kernels=vendor; measured: triton"):
        make_latency_model("calibrated", HW, load_kernels("vendor"), only_triton)
    assert make_latency_model("auto", HW, load_kernels("vendor"), only_triton).kind == "analytic"
