import pytest

from nfpsim.calibration.fit import fit_implementation, free_parameters
from nfpsim.config import load_hardware, load_kernels, load_model
from nfpsim.latency.constants import LatencyConstants
from tests.calibration import small_plan, synthetic_measurements, true_constants


@pytest.mark.parametrize("implementation", ["triton", "vendor"])
def test_fit_recovers_the_constants_that_made_the_measurements(implementation):
    hw, kernels = load_hardware("h100_sxm"), load_kernels(implementation)
    truth = true_constants(hw, kernels)
    # fused glue fits a key per kernel (4 constants each): enough token counts to hold some out
    plan = small_plan([kernels], [load_model("llama3_8b"), load_model("qwen3_30b_a3b")],
                      pointwise_tokens=(1, 16, 64, 256, 1024, 4096))
    measured = synthetic_measurements(plan.points, {implementation: kernels}, {implementation: truth}, noise=0.01)
    fitted, quality = fit_implementation(measured, hw, kernels, LatencyConstants.defaults(hw, kernels),
                                         holdout_fraction=0.25, seed=1)
    # the identifiable constants come back; others may trade off along a valley (e.g. an unpacked
    # attention kernel's L2 hit fraction against its bandwidth) without hurting predictions
    assert fitted["gemm"]["mem_efficiency"] == pytest.approx(truth.gemm.mem_efficiency, rel=0.05)
    fused = {"pointwise.add_norm", "pointwise.rotary", "pointwise.act"}
    if kernels.pointwise.glue == "fused":
        # the plan times the fused glue ops, a key per kernel: at one row width a kernel's launch and row time
        # trade off, so only their predictions (below) are checked
        assert fused <= set(fitted)
    else:  # eager glue: torch's generic kernels, from tiny (launch-bound) to large (HBM-bound) ones
        assert not fused & set(fitted) and {"pointwise", "pointwise.gather"} <= set(fitted)
        for name in ("mem_efficiency", "launch_overhead_s"):
            assert fitted["pointwise"][name] == pytest.approx(getattr(truth.pointwise, name), rel=0.1), name
    for family, q in quality.items():
        assert q["heldout_points"] > 0, family
        assert q["train_mape"] < 0.04, (family, q)
        if q["points"] - q["heldout_points"] < 3 * len(free_parameters(family)):
            continue  # too few training shapes to pin this kernel's constants: nothing to say about unseen ones
        # 1% measurement noise: a right model predicts unseen shapes within a few percent
        assert q["heldout_mape_fitted"] < 0.04, (family, q)
        assert q["heldout_mape_calibrated"] < 0.04, (family, q)


def test_noise_free_measurements_are_fitted_closely():
    hw, kernels = load_hardware("h100_sxm"), load_kernels("triton")
    truth = true_constants(hw, kernels)
    plan = small_plan([kernels], [load_model("llama3_8b")])
    measured = synthetic_measurements(plan.points, {"triton": kernels}, {"triton": truth}, noise=0.0)
    _, quality = fit_implementation(measured, hw, kernels, LatencyConstants.defaults(hw, kernels), 0.2, 0)
    assert quality["gemm"]["train_mape"] < 0.02
    assert quality["attention"]["train_mape"] < 0.02
