"""Whole-run properties: conservation, determinism, memory, the near-free width policy, costs, traces."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfpsim.config import load_hardware, load_kernels, load_model
from nfpsim.errors import ConfigError
from nfpsim.latency import AnalyticLatencyModel
from nfpsim.shapes import ForwardShape, SeqGroup
from nfpsim.sim import (Acceptance, Autoregressive, Diffusion, EngineSpec, Jacobi, LengthSpec, Observe, Speculative,
                        WorkloadSpec, plan_memory, simulate)
from nfpsim.sim.cost import ForwardPricer, near_free_positions
from nfpsim.sim.kvcache import GIB, kv_bytes_per_token_per_rank
from nfpsim.sim.trace import chrome_trace

from .stubs import Constant, Knee, Linear, engine, specs, trace

DECODINGS = [
    Autoregressive(),
    Speculative(width=4, acceptance=Acceptance((0.6,))),
    Speculative(width=3, acceptance=Acceptance((0.9, 0.5))),
    Diffusion(width=8, commit_model="threshold", unmask_prob=0.3),
    Diffusion(width=4, commit_model="schedule", steps_per_block=3),
    Jacobi(width=8),
]


@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 25))
    gaps = draw(st.lists(st.floats(0, 0.05), min_size=n, max_size=n))
    prompts = draw(st.lists(st.integers(1, 40), min_size=n, max_size=n))
    outputs = draw(st.lists(st.integers(1, 30), min_size=n, max_size=n))
    decoding = draw(st.sampled_from(DECODINGS))
    longest = max(p + o for p, o in zip(prompts, outputs)) + decoding.width
    block = draw(st.sampled_from([1, 4]))
    blocks = draw(st.integers(-(-longest // block), -(-4 * longest // block)))  # tight caches preempt
    seqs = draw(st.integers(1, 8))
    budget = draw(st.integers(seqs * decoding.width, seqs * decoding.width + 64))
    rows = list(zip(np.cumsum(gaps).tolist(), prompts, outputs))
    spec = engine(max_num_seqs=seqs, max_num_batched_tokens=budget, block_size_tokens=block,
                  kv_capacity_tokens=blocks * block, chunked_prefill=draw(st.booleans()) or max(prompts) > budget)
    return rows, decoding, spec, draw(st.integers(0, 1000))


@settings(max_examples=60, deadline=None)
@given(scenarios())
def test_every_request_finishes_with_exactly_its_tokens(scenario):
    rows, decoding, spec, seed = scenario
    result = simulate(specs(), Linear(0.002, 0.0001), trace(rows), decoding, spec, seed)
    req, s = result.requests, result.summary
    assert s["num_finished"] == s["num_arrived"] == len(rows) and s["num_unfinished"] == 0
    assert req["generated_tokens"].tolist() == [o for _, _, o in rows]
    fwd = result.forwards
    assert fwd["committed_tokens"].sum() + fwd["emitted_tokens"].sum() == sum(o for _, _, o in rows)
    assert (req["first_token_s"] >= req["arrival_s"]).all() and (req["finish_s"] >= req["first_token_s"]).all()
    assert (fwd["kv_used_blocks"] <= result.kv.num_blocks).all()
    assert (fwd["num_decode"] * fwd["width"] + fwd["prefill_tokens"] <= spec.max_num_batched_tokens).all()
    # forwards never overlap: one replica
    assert np.all(fwd["start_s"][1:] >= fwd["start_s"][:-1] + fwd["duration_s"][:-1] - 1e-12)


@settings(max_examples=20, deadline=None)
@given(scenarios(), st.floats(0.01, 0.3))
def test_a_horizon_leaves_every_arrived_request_finished_or_reported(scenario, horizon_s):
    rows, decoding, spec, seed = scenario
    result = simulate(specs(), Linear(0.002, 0.0001), trace(rows), decoding,
                      dataclasses.replace(spec, max_sim_time_s=horizon_s), seed)
    s, req = result.summary, result.requests
    assert s["num_finished"] + s["num_unfinished"] == s["num_arrived"] == int((~np.isnan(req["arrival_s"])).sum())
    finished = ~np.isnan(req["finish_s"])
    assert (req["generated_tokens"][finished] == req["output_tokens"][finished]).all()
    assert (req["generated_tokens"][~finished] < req["output_tokens"][~finished]).all()


def poisson(n=300, rate=20.0, prompt=128, output=64):
    return WorkloadSpec("poisson", n, rate_per_s=rate, prompt=LengthSpec("fixed", prompt, prompt),
                        output=LengthSpec("fixed", output, output))


def analytic(hardware="h100_sxm", kernels="vendor"):
    return AnalyticLatencyModel(load_hardware(hardware), load_kernels(kernels))


def test_a_seed_fixes_the_run_and_another_seed_changes_it():
    decoding = Speculative(width=5, acceptance=Acceptance((0.7,)))
    runs = [simulate(specs(), analytic(), poisson(), decoding, EngineSpec(), seed) for seed in (3, 3, 4)]
    assert runs[0].summary == runs[1].summary
    for column in runs[0].forwards:
        assert np.array_equal(runs[0].forwards[column], runs[1].forwards[column])
    assert runs[0].summary != runs[2].summary


@pytest.mark.parametrize("decoding", [Speculative(width=5, acceptance=Acceptance((0.7,))),
                                      Speculative(width=4, acceptance=Acceptance((0.9, 0.8, 0.5))),
                                      Jacobi(width=16),
                                      Diffusion(width=16, commit_model="threshold", unmask_prob=0.25),
                                      Diffusion(width=16, commit_model="schedule", steps_per_block=5)])
def test_simulated_tokens_per_forward_match_the_acceptance_model(decoding):
    # long outputs (whole blocks), so capping at the last tokens barely matters
    result = simulate(specs(), Constant(0.01), poisson(n=200, output=2048), decoding, EngineSpec(), seed=1)
    expected = decoding.expected_tokens(decoding.width)
    assert result.summary["expected_tokens_per_forward"] == pytest.approx(expected)
    assert result.summary["tokens_per_forward_mean"] == pytest.approx(expected, rel=0.02)


def test_near_free_width_follows_the_batch():
    # flat up to 3 positions, double beyond: a near-free policy capped at k+1 = 8 runs 3 positions
    decoding = Speculative(width=8, acceptance=Acceptance((0.8,)), near_free=True, eps=0.1)
    result = simulate(specs(), Knee(0.01, knee=3), poisson(n=50), decoding, EngineSpec(), seed=0,
                      observe=Observe(nfp_samples=10, nfp_cap=16))
    decode = result.forwards["num_decode"] > 0
    assert set(result.forwards["width"][decode].tolist()) == {3}
    assert result.summary["tokens_per_forward_mean"] == pytest.approx(decoding.expected_tokens(3), rel=0.05)
    assert result.near_free["nfp"].tolist() == [3] * len(result.near_free["nfp"])
    assert result.summary["near_free_fraction"] == 1.0


def test_near_free_width_is_capped_by_the_token_budget():
    decoding = Jacobi(width=16, near_free=True)
    spec = EngineSpec(max_num_seqs=8, max_num_batched_tokens=16)
    result = simulate(specs(), Constant(0.01), poisson(n=40, prompt=8, output=32), decoding, spec, seed=0)
    fwd = result.forwards
    decode = fwd["num_decode"] > 0
    assert (fwd["width"][decode] == np.minimum(16, 16 // fwd["num_decode"][decode])).all()


def test_near_free_positions_bisects_to_the_first_crossing():
    def linear(m):
        return 1.0 + 0.01 * m  # within 1.1 * t(1) = 1.111 up to m = 11

    assert near_free_positions(linear, 0.1, [1, 2, 4, 8, 16, 32, 512]) == 11
    assert near_free_positions(lambda m: 1.0, 0.1, [1, 2, 40]) == 40
    assert near_free_positions(lambda m: 1.0 if m < 30 else 2.0, 0.1, [1, 2, 4, 64, 100]) == 29


def test_the_pricer_memoizes_steps_and_rounds_contexts():
    latency = Constant(0.01)
    pricer = ForwardPricer(latency, load_model("llama3_8b"), context_bucket_tokens=64)
    assert pricer.bucket(31) == 0 and pricer.bucket(32) == 64 and pricer.bucket(100) == 128
    first = pricer.step(4, 2, 4 * 1000, [(100, 0, 1)])
    again = pricer.step(4, 2, 4 * 1010, [(100, 10, 1)])  # same buckets: priced once
    assert first == again and len(latency.calls) == 2  # the forward and its one-position twin
    assert latency.calls[0][1] == ForwardShape((SeqGroup(4, 2, 1024), SeqGroup(1, 100, 0, 1)))
    assert latency.calls[1][1] == ForwardShape((SeqGroup(4, 1, 1024), SeqGroup(1, 100, 0, 1)))


def test_kv_capacity_is_memory_minus_weights_over_bytes_per_token():
    hardware, model = load_hardware("h100_sxm"), load_model("llama3_8b")
    plan = plan_memory(hardware, model, Autoregressive(), EngineSpec(tp=1), poisson())
    free = hardware.memory_bytes * 0.9 - 1 * GIB - model.weight_bytes()
    assert plan.kv_bytes_per_token == model.kv_bytes_per_token == 32 * 8 * 256 * 2
    assert plan.num_blocks == int(free // (model.kv_bytes_per_token * 16))
    # TP shards GQA heads; an MLA latent is cached whole on every rank
    assert kv_bytes_per_token_per_rank(model, 2) == model.kv_bytes_per_token // 2
    mla = load_model("deepseek_v2_lite")
    assert kv_bytes_per_token_per_rank(mla, 2) == mla.kv_bytes_per_token
    # a draft adds its weights and its cache
    draft = Speculative(width=5, proposer="draft", proposer_model=load_model("llama3_1b"))
    with_draft = plan_memory(hardware, model, draft, EngineSpec(tp=1), poisson())
    assert with_draft.kv_bytes_per_token == model.kv_bytes_per_token + load_model("llama3_1b").kv_bytes_per_token
    assert with_draft.weight_bytes_per_rank > plan.weight_bytes_per_rank


def test_auto_tp_picks_the_smallest_degree_that_holds_the_model():
    plan = plan_memory(load_hardware("a100_80g"), load_model("llama3_70b"), Autoregressive(), EngineSpec(tp=None), poisson())
    assert plan.tp == 2


@pytest.mark.parametrize("model, engine_spec, workload, message", [
    ("llama3_70b", EngineSpec(tp=1), poisson(), "engine.tp=1: llama3_70b weights need"),
    ("llama3_8b", EngineSpec(tp=1, kv_capacity_tokens=160), poisson(), "can never run"),
    ("llama3_8b", EngineSpec(tp=1), poisson(prompt=8000, output=500), "exceeds model.max_context=8192"),
    ("llama3_8b", EngineSpec(tp=3), poisson(), "tp=3 must divide"),
    ("llama3_8b", EngineSpec(max_num_batched_tokens=64), poisson(), "engine.max_num_batched_tokens=64 is below"),
])
def test_workloads_that_can_never_run_are_refused_up_front(model, engine_spec, workload, message):
    with pytest.raises(ConfigError) as error:
        plan_memory(load_hardware("a100_80g"), load_model(model), Autoregressive(), engine_spec, workload)
    assert message in str(error.value)


def test_the_chrome_trace_lays_each_forward_out_layer_by_layer():
    latency = analytic()
    model = load_model("llama3_8b")
    decoding = Speculative(width=3, acceptance=Acceptance((0.7,)), proposer="draft", proposer_model=load_model("llama3_1b"))
    result = simulate(specs(), latency, poisson(n=5), decoding, EngineSpec(tp=2), seed=0,
                      observe=Observe(trace_forwards=3))
    trace_data = chrome_trace(result.traced, latency, model, decoding.proposer_model)
    events = [e for e in trace_data["traceEvents"] if e["ph"] == "X"]
    for step in (e for e in events if e["cat"] == "step"):
        inside = [e for e in events if step["ts"] <= e["ts"] < step["ts"] + step["dur"]]
        forwards = [e for e in inside if e["cat"] == "forward"]
        assert sum(f["dur"] for f in forwards) == pytest.approx(step["dur"], rel=1e-9)
        ops = [e for e in inside if e["cat"] == "op"]
        assert sum(o["dur"] for o in ops) == pytest.approx(step["dur"], rel=1e-9)
    verify = [e for e in events if e["name"] == "verify"][0]
    layers = [e for e in events if e["cat"] == "layer" and verify["ts"] <= e["ts"] < verify["ts"] + verify["dur"]]
    assert len(layers) == model.num_layers
    assert "allreduce" in {e["name"] for e in events}  # tp 2: an all-reduce after attention and FFN


def test_the_trace_window_holds_every_forward_from_its_start():
    result = simulate(specs(), Constant(0.01), poisson(n=20), Autoregressive(), EngineSpec(), seed=0,
                      observe=Observe(trace_forwards=5, trace_from_s=0.3))
    starts = [f.start_s for f in result.traced]
    all_starts = result.forwards["start_s"]
    first = int(np.searchsorted(all_starts, 0.3 - 1e-12))
    assert starts == all_starts[first:first + 5].tolist()
