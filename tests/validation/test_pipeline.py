"""The validation pipeline except CUDA graphs: forwards built and timed (host clock, or the latency model's
own times for exact scenarios), predicted with a calibration table, compared, written as the contract."""

import dataclasses
import json

import pytest
import torch

from nfpsim.calibration.measure import WallTimer
from nfpsim.calibration.plan import TimingSettings
from nfpsim.config import load_hardware, load_kernels
from nfpsim.io import write_json
from nfpsim.latency import AnalyticLatencyModel
from nfpsim.validation.plan import ValidationSettings
from nfpsim.validation.run import format_summary, repredict, summarize, validate
from tests.calibration import small_plan, synthetic_measurements, synthetic_table, true_constants
from tests.validation import TINY, TINY_MOE, ModelTimer

EPS_KEYS = {"0.05", "0.1", "0.2"}
TIMING = TimingSettings(warmup=0, repeats=2, min_replay_s=0.0)
CPU_HW = dataclasses.replace(load_hardware("h100_sxm"), name="cpu", num_sms=1)  # what a CPU device resolves to


def settings(**changes):
    base = ValidationSettings(
        hardware=load_hardware("h100_sxm"), models=(TINY, TINY_MOE),
        implementations=(load_kernels("triton"), load_kernels("vendor")), batches=(2,), contexts=(8,),
        max_positions=4, max_points=None, num_layers=1, eps=(0.05, 0.1, 0.2), latency="analytic",
        calibration_dir=None, timing=TIMING, time_budget_s=None, profile_positions=(1,), seed=0,
        memory_fraction=0.5, plan_only=False, output_dir=None, measured=None, plot=False)
    return dataclasses.replace(base, **changes)


def run(s, timer):
    return validate(s, torch.device("cpu"), torch.float32, timer, log=lambda line: None)


def test_exact_scenario_measured_nfp_overprediction_and_mape():
    """'Measured' = the analytic prediction on one curve, a step of 1.5x at M=3 on the other."""
    presets = {k: load_kernels(k) for k in ("triton", "vendor")}
    truth = {name: AnalyticLatencyModel(CPU_HW, k) for name, k in presets.items()}

    def time_of(forward):
        predicted = truth[forward.implementation].forward_time(forward.model, forward.shape)
        if forward.implementation == "vendor":
            return 1e-3 * (1.5 if forward.shape.groups[0].positions >= 3 else 1.0)
        return predicted

    result = run(settings(models=(TINY,)), ModelTimer(time_of))
    exact, stepped = result["curves"]
    assert exact["implementation"] == "triton" and exact["mape"] == pytest.approx(0.0, abs=1e-12)
    assert all(exact["nfp_exact"].values()) and exact["nfp_measured"] == exact["nfp_predicted"]
    assert [p["positions"] for p in stepped["points"]] == [1, 2, 3, 4]
    assert stepped["nfp_measured"] == {"0.05": 2, "0.1": 2, "0.2": 2}
    assert stepped["first_crossing_measured"] == {"0.05": 3, "0.1": 3, "0.2": 3}
    for key in EPS_KEYS:
        assert stepped["overprediction_measured"][key] == stepped["idle_nfp"][key] / 2
        assert stepped["overprediction_predicted"][key] == stepped["idle_nfp"][key] / stepped["nfp_predicted"][key]
    predicted = [p["predicted_s"] for p in stepped["points"]]
    measured = [1e-3, 1e-3, 1.5e-3, 1.5e-3]
    assert stepped["mape"] == pytest.approx(sum(abs(p - m) / m for p, m in zip(predicted, measured)) / 4)
    summary = result["summary"]
    assert summary["by_implementation"]["triton"]["meets_targets"]
    assert not summary["by_implementation"]["vendor"]["meets_targets"]
    assert [(m["implementation"], m["worst_point"]["positions"]) for m in summary["misses"]][0][0] == "vendor"
    assert summary["misses"][0]["largest_op_miss"]["positions"] == 1  # the per-op evidence is attached
    assert result["complete"] and result["agreement"]["tiny"]["token_agreement"] == 1.0


def test_cpu_run_writes_the_contract_with_a_calibration_table(tmp_path):
    presets = [load_kernels("triton"), load_kernels("vendor")]
    truth = {k.name: true_constants(CPU_HW, k) for k in presets}
    plan = small_plan(presets, [TINY, TINY_MOE], max_tokens=20, batches=(2,), contexts=(8,), max_positions=4)
    measured = synthetic_measurements(plan.points, {k.name: k for k in presets}, truth)
    fitted = {name: {f: dataclasses.asdict(getattr(c, f)) for f in ("gemm", "moe", "attention", "pointwise")}
              for name, c in truth.items()}
    write_json(tmp_path / "cpu.json", synthetic_table(CPU_HW, presets, [], fitted, measured, slug="cpu").to_dict())
    s = settings(latency="calibrated", calibration_dir=str(tmp_path))
    result = run(s, WallTimer(TIMING))
    write_json(tmp_path / "validate.json", result)
    data = json.loads((tmp_path / "validate.json").read_text())

    assert data["format"] == "nfpsim-validation/1" and data["gpu"]["slug"] == "cpu"
    assert data["provenance"]["torch"] == torch.__version__ and data["provenance"]["gpu_seconds"] > 0
    assert data["calibration_table"]["path"].endswith("cpu.json")
    assert {(c["model"], c["implementation"]) for c in data["curves"]} == {
        (m, i) for m in ("tiny", "tiny_moe") for i in ("triton", "vendor")}
    for curve in data["curves"]:
        assert curve["latency"] == "calibrated" and (curve["batch"], curve["context"]) == (2, 8)
        assert (curve["num_layers"], curve["full_num_layers"]) == (1, 2)
        assert [p["positions"] for p in curve["points"]] == [1, 2, 3, 4]
        assert all(p["measured_s"] > 0 and p["predicted_s"] > 0 for p in curve["points"])
        for key in ("nfp_measured", "nfp_predicted", "idle_nfp", "overprediction_measured"):
            assert set(curve[key]) == EPS_KEYS
        assert curve["mape"] >= 0 and set(curve["sources_at_1"]) <= {"measured", "corrected", "fitted", "analytic"}
        assert "measured" in curve["sources_at_1"] or "corrected" in curve["sources_at_1"]
        profiled = curve["op_profile"][0]
        assert profiled["positions"] == 1 and {"qkv_proj", "attention", "lm_head"} <= set(profiled["ops"])
    assert set(data["agreement"]) == {"tiny", "tiny_moe"}
    assert all(a["logits_rel_error"] < 1e-4 for a in data["agreement"].values())
    assert data["complete"] and data["summary"]["overall"]["curves"] == 4
    assert len(format_summary(data)) == 1 + 4 + 2

    again = repredict(data, s)  # the same table predicts the same numbers from the stored measurements
    for old, new in zip(data["curves"], again["curves"]):
        assert [p["predicted_s"] for p in new["points"]] == pytest.approx([p["predicted_s"] for p in old["points"]])
        assert [p["measured_s"] for p in new["points"]] == [p["measured_s"] for p in old["points"]]
    analytic = repredict(data, settings(latency="analytic"))
    assert {c["latency"] for c in analytic["curves"]} == {"analytic"} and analytic["calibration_table"] is None


def test_time_budget_stops_starting_curves_and_says_so():
    seen = []
    s = settings(models=(TINY,), time_budget_s=1e-9, implementations=(load_kernels("vendor"),))
    result = validate(s, torch.device("cpu"), torch.float32, ModelTimer(lambda f: 1e-3), log=lambda line: None,
                      on_curve=seen.append)
    assert result["curves"] == [] and not result["complete"] and seen == []
    assert result["not_run"] == [{"model": "tiny", "implementation": "vendor", "batch": 2, "context": 8,
                                  "reason": "time budget"}]
    assert summarize([])["overall"] == {"curves": 0}


@pytest.mark.cuda
def test_gpu_validation_of_a_small_model_in_cuda_graphs():
    from nfpsim.calibration.measure import GraphTimer

    model = dataclasses.replace(TINY, name="tiny_d128", hidden_size=512, head_dim=128, vocab_size=1024)
    timing = TimingSettings(warmup=1, repeats=3)
    s = settings(models=(model, dataclasses.replace(TINY_MOE, name="tiny_moe_d128", hidden_size=512, head_dim=128)),
                 batches=(1, 4), contexts=(256,), max_positions=8)
    result = validate(s, torch.device("cuda"), torch.bfloat16, GraphTimer(timing), log=lambda line: None)
    assert result["complete"] and len(result["curves"]) == 8
    assert all(a["logits_rel_error"] < 3e-2 for a in result["agreement"].values())
    for curve in result["curves"]:
        assert all(0 < p["measured_s"] < 0.1 for p in curve["points"])
        assert set(curve["nfp_measured"]) == EPS_KEYS
