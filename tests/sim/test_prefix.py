"""Prefix caching: hand-worked reuse, session histories, recompute after preemption, conservation."""

import dataclasses

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from nfpsim.sim import Autoregressive, LengthSpec, WorkloadSpec, simulate
from nfpsim.sim.workload import SharingSpec, generate

from .stubs import Constant, Linear, engine, specs


def system_prompts(n, rate, prompt=40, output=5, count=1, prefix=64):
    return WorkloadSpec("poisson", n, rate_per_s=rate, prompt=LengthSpec("fixed", prompt, prompt),
                        output=LengthSpec("fixed", output, output),
                        sharing=SharingSpec("system_prompt", count, prefix_tokens=prefix))


def test_a_second_request_reuses_the_first_ones_system_prompt():
    # two requests far apart, one system prompt of 64 tokens (4 blocks of 16) + 40 own tokens:
    # the first prefills 104 tokens; the second finds the 4 blocks cached and prefills only 40
    workload = system_prompts(2, rate=0.5)
    result = simulate(specs(), Constant(0.01), workload, Autoregressive(), engine(prefix_caching=True,
                      block_size_tokens=16), seed=0)
    fwd = result.forwards
    assert fwd["prefill_tokens"][fwd["prefill_tokens"] > 0].tolist() == [104, 40]
    s = result.summary
    assert (s["prefix_lookups"], s["prefix_hits"], s["prefix_token_hit_rate"]) == (2, 1, 0.5)
    off = simulate(specs(), Constant(0.01), workload, Autoregressive(), engine(block_size_tokens=16), seed=0)
    assert off.forwards["prefill_tokens"][off.forwards["prefill_tokens"] > 0].tolist() == [104, 104]
    assert "prefix_hit_rate" not in off.summary


def test_a_session_turn_is_its_history_plus_its_own_prompt():
    spec = WorkloadSpec("poisson", 6, rate_per_s=1.0, prompt=LengthSpec("fixed", 10, 10),
                        output=LengthSpec("fixed", 5, 5), sharing=SharingSpec("session", 2, max_tokens=40))
    drawn = generate(spec, np.random.default_rng(0))
    # sessions 0 and 1 alternate; turns grow by 15 tokens; the third turn (30 + 10 + 5 > 40) starts over
    assert drawn.prompt_tokens.tolist() == [10, 10, 25, 25, 10, 10]
    assert drawn.prefix_tokens.tolist() == [0, 0, 15, 15, 0, 0]
    assert drawn.prefix_id.tolist() == [0, 1, 0, 1, 2, 3]
    assert drawn.cache_tokens.tolist() == [15, 15, 30, 30, 15, 15]


def test_recompute_after_preemption_reuses_the_cached_blocks():
    # a cache too small for the batch: requests are preempted; with prefix caching their own computed
    # blocks stay cached and the recompute prefills less
    workload = WorkloadSpec("poisson", 40, rate_per_s=200.0, prompt=LengthSpec("fixed", 60, 60),
                            output=LengthSpec("fixed", 60, 60))
    spec = engine(kv_capacity_tokens=600, max_num_seqs=8, block_size_tokens=4)
    off = simulate(specs(), Linear(0.002, 1e-5), workload, Autoregressive(), spec, seed=1)
    on = simulate(specs(), Linear(0.002, 1e-5), workload, Autoregressive(),
                  dataclasses.replace(spec, prefix_caching=True), seed=1)
    assert off.summary["preemptions"] > 0 and on.summary["preemptions"] > 0
    assert on.summary["recompute_reused_tokens"] > 0
    recompute = on.forwards["prefill_tokens"].sum() - 40 * 60
    assert recompute < off.forwards["prefill_tokens"].sum() - 40 * 60
    assert on.summary["num_finished"] == 40 and on.summary["output_tokens"] == 40 * 60


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.sampled_from(["system_prompt", "session"]), st.integers(1, 4), st.integers(8, 40),
       st.sampled_from([1, 4, 16]), st.integers(0, 999))
def test_with_prefix_caching_every_request_finishes_with_exactly_its_tokens(n, kind, count, blocks, block, seed):
    sharing = (SharingSpec("system_prompt", count, prefix_tokens=24, zipf=1.0) if kind == "system_prompt"
               else SharingSpec("session", count, max_tokens=90))
    workload = WorkloadSpec("poisson", n, rate_per_s=50.0, prompt=LengthSpec("uniform", 1, 30),
                            output=LengthSpec("uniform", 1, 30), sharing=sharing)
    capacity = max(blocks * block, -(-(workload.max_request_tokens + 1) // block) * block)
    spec = engine(kv_capacity_tokens=capacity, max_num_seqs=4, block_size_tokens=block, prefix_caching=True)
    result = simulate(specs(), Linear(0.002, 1e-4), workload, Autoregressive(), spec, seed)
    req, fwd = result.requests, result.forwards
    assert result.summary["num_finished"] == n
    assert (req["generated_tokens"] == req["output_tokens"]).all()
    assert fwd["committed_tokens"].sum() + fwd["emitted_tokens"].sum() == req["output_tokens"].sum()
    assert (fwd["kv_used_blocks"] <= result.kv.num_blocks).all()
