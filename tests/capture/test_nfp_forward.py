"""The NFP sweep's seam for other forwards: ``analyze(..., forward=M -> ops)``."""

import pytest

import nfpsim
from nfpsim.config import load_model
from nfpsim.nfp import analyze
from nfpsim.shapes import ForwardShape, decompose


@pytest.mark.parametrize("model_name", ["llama3_8b", "qwen3_30b_a3b"])
def test_decompose_passed_as_the_forward_gives_the_same_report(model_name):
    model = load_model(model_name)
    latency = nfpsim.latency_model(hardware="h200", kernels="vendor", latency="analytic")
    kwargs = dict(batch=2, context=2048, eps=0.1)
    plain = analyze(latency, model, **kwargs)
    seam = analyze(latency, model, **kwargs,
                   forward=lambda m: decompose(model, ForwardShape.uniform(2, m, 2048), "eager"), name="same")
    assert seam.model == "same"
    assert seam.forward.latency_s == pytest.approx(plain.forward.latency_s)
    assert (seam.forward.nfp, seam.forward.idle_nfp) == (plain.forward.nfp, plain.forward.idle_nfp)
    for key, curve in plain.modules.items():
        assert (seam.modules[key].nfp, seam.modules[key].idle_nfp) == (curve.nfp, curve.idle_nfp)


def test_an_op_that_appears_only_at_larger_m_counts_in_the_forward_curve():
    """A captured forward can launch kernels at M > 1 it does not at M = 1 (a mask, a layout copy)."""
    from nfpsim.shapes import Op, PointwiseShape

    model = load_model("llama3_8b")
    latency = nfpsim.latency_model(hardware="h200", kernels="vendor", latency="analytic")
    extra = Op("pointwise.clone", "pointwise", PointwiseShape(2e9))  # ~1 ms of copies from M = 2 on

    def forward(m):
        ops = decompose(model, ForwardShape.uniform(1, m, 4096))
        return ops + (extra,) if m > 1 else ops

    report = analyze(latency, model, batch=1, context=4096, eps=0.1, positions=[1, 2, 4], forward=forward)
    assert report.forward.nfp.nfp == 1 and report.forward.nfp.crossing == 2
