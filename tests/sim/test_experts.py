"""Expert parallelism: routing imbalance by hand, the all-to-all per MoE layer, and its cost in a run."""

import pytest

from nfpsim.config import load_hardware, load_model
from nfpsim.errors import ConfigError
from nfpsim.sim import Autoregressive, EngineSpec, LengthSpec, WorkloadSpec, plan_memory, simulate
from nfpsim.sim.experts import all_to_all_s, routing_imbalance

from .stubs import Constant, specs


def test_routing_skew_loads_the_busiest_rank():
    # 4 experts on 2 ranks (0, 2 on rank 0; 1, 3 on rank 1), popularity 1 : 1/2 : 1/3 : 1/4 (sum 25/12):
    # rank 0 gets (1 + 1/3) / (25/12) = 0.64 of the tokens, 1.28x the mean share of 0.5
    assert routing_imbalance(4, 2, 1.0) == pytest.approx(1.28)
    assert routing_imbalance(64, 8, 0.0) == pytest.approx(1.0)
    assert routing_imbalance(64, 8, 1.2) > routing_imbalance(64, 8, 0.6) > 1.0


def test_an_all_to_all_moves_each_tokens_hidden_state_to_its_experts_and_back():
    model, hw = load_model("mixtral_8x7b"), load_hardware("h100_sxm")
    sent = 10 * model.top_k * model.hidden_size * model.bytes_per_element * 3 / 4
    expected = 2 * (hw.collective_latency_s + sent / hw.interconnect_bytes_per_s)
    assert all_to_all_s(model, hw, 10, 4) == pytest.approx(expected)


def test_expert_parallelism_adds_its_all_to_alls_to_every_forward():
    target = specs("mixtral_8x7b")
    model = target.model
    w = WorkloadSpec("poisson", 1, rate_per_s=1.0, prompt=LengthSpec("fixed", 8, 8), output=LengthSpec("fixed", 3, 3))
    spec = EngineSpec(tp=2, ep=4, context_bucket_tokens=1)
    result = simulate(target, Constant(0.01), w, Autoregressive(), spec, 0)
    hw = target.hardware
    moe_layers = model.num_layers - model.num_dense_layers
    # a stub latency has no breakdown: only the all-to-alls are added (8 prompt tokens, then 1 per step)
    expected = [0.01 + moe_layers * all_to_all_s(model, hw, t, 4) for t in (8, 1, 1)]
    assert result.forwards["duration_s"].tolist() == pytest.approx(expected)


def test_expert_parallelism_needs_an_moe_model_whose_experts_it_divides():
    with pytest.raises(ConfigError, match="engine.ep=2: needs an MoE model"):
        plan_memory(load_hardware("h100_sxm"), load_model("llama3_8b"), Autoregressive(), EngineSpec(ep=2),
                    WorkloadSpec("poisson", 1))


def test_routing_skew_stretches_the_expert_time_of_the_latency_models_breakdown():
    from nfpsim.config import load_kernels
    from nfpsim.latency import AnalyticLatencyModel
    from nfpsim.shapes import ForwardShape
    from nfpsim.sim.cost import ForwardPricer

    model, hw = load_model("mixtral_8x7b"), load_hardware("h100_sxm")
    latency = AnalyticLatencyModel(hw, load_kernels("vendor"))
    shape = ForwardShape.uniform(64, 1, 1024, 2)
    experts_s = latency.forward(model, shape).by_module()["experts"]
    balanced = ForwardPricer(latency, model, tp=2, expert_parallel=(hw, 4, 0.0)).time(model, shape)
    skewed = ForwardPricer(latency, model, tp=2, expert_parallel=(hw, 4, 1.0)).time(model, shape)
    assert balanced > latency.forward_time(model, shape)  # the all-to-alls
    assert skewed - balanced == pytest.approx((routing_imbalance(8, 4, 1.0) - 1) * experts_s)
