"""Exact timelines of tiny scenarios, worked out by hand from the scheduling rules.

Rules used below: a step runs every decode row first, then prefill chunks (continuing prefills, then
new requests FCFS) within the token budget; the forward that ends a prompt samples its first token; a
request leaves the rows the step its last token is committed.
"""

import math

import pytest

from nfpsim.shapes import SeqGroup
from nfpsim.sim import Acceptance, Autoregressive, Diffusion, Speculative, simulate

from .stubs import Constant, Linear, engine, specs, trace


def times(result, column):
    return [round(t, 9) for t in result.requests[column]]


def forward_column(result, column):
    values = result.forwards[column]
    return [round(v, 9) for v in values] if column.endswith("_s") else values.tolist()


def test_two_requests_with_a_constant_10ms_forward():
    # req0 arrives at 0 (prompt 4, output 3), req1 at 5 ms (prompt 4, output 2).
    #   [0, 10]   prefill req0                 -> req0 token 1 (TTFT 10 ms)
    #   [10, 20]  decode req0 + prefill req1   -> req0 token 2, req1 token 1 (TTFT 15 ms)
    #   [20, 30]  decode req0, req1            -> req0 token 3, req1 token 2: both done at 30 ms
    result = simulate(specs(), Constant(0.010), trace([(0.0, 4, 3), (0.005, 4, 2)]), Autoregressive(), engine(), seed=0)
    assert forward_column(result, "start_s") == [0.0, 0.01, 0.02]
    assert forward_column(result, "num_decode") == [0, 1, 2]
    assert forward_column(result, "prefill_tokens") == [4, 4, 0]
    assert times(result, "first_token_s") == [0.01, 0.02]
    assert times(result, "finish_s") == [0.03, 0.03]
    s = result.summary
    assert (s["num_finished"], s["num_forwards"], s["sim_time_s"]) == (2, 3, pytest.approx(0.03))
    assert s["ttft_s"]["mean"] == pytest.approx(0.0125)
    assert s["tpot_s"]["p50"] == pytest.approx(0.010)  # (30 - 10) / 2 and (30 - 20) / 1
    assert s["throughput_tokens_per_s"] == pytest.approx(5 / 0.03)
    assert s["gpu_busy_fraction"] == pytest.approx(1.0)


def test_chunked_prefill_with_a_linear_forward():
    # t = 1 ms + 1 ms per token; prompt 6, output 2, at most 4 tokens per forward:
    #   [0, 5]   chunk of 4 prompt tokens        (1 + 4 ms)
    #   [5, 8]   last 2 prompt tokens -> token 1 (1 + 2 ms)
    #   [8, 10]  one decode position  -> token 2 (1 + 1 ms), done
    latency = Linear(0.001, 0.001)
    result = simulate(specs(), latency, trace([(0.0, 6, 2)]), Autoregressive(),
                      engine(max_num_seqs=1, max_num_batched_tokens=4), seed=0)
    assert forward_column(result, "start_s") == [0.0, 0.005, 0.008]
    assert forward_column(result, "duration_s") == [0.005, 0.003, 0.002]
    assert times(result, "first_token_s") == [0.008]
    assert times(result, "finish_s") == [0.01]


def test_step_shapes_mix_decode_rows_and_scored_prefill_chunks():
    latency = Constant(0.01)
    simulate(specs(), latency, trace([(0.0, 6, 3), (0.0, 3, 2)]), Autoregressive(),
             engine(max_num_seqs=2, max_num_batched_tokens=5), seed=0)
    shapes = [shape.groups for _, shape in latency.calls]
    # step 1: req0's first 5 prompt tokens, not yet scored; req1 waits for budget
    assert shapes[0] == (SeqGroup(1, 5, 0, 0),)
    # step 2: req0's last prompt token (scored: it samples token 1) and req1's whole prompt (scored)
    assert shapes[1] == (SeqGroup(1, 1, 5, 1), SeqGroup(1, 3, 0, 1))
    # step 3: both decode, one position each, over contexts 6+1 and 3+1: mean 5.5, rounded to 6
    assert shapes[2] == (SeqGroup(2, 1, 6),)


def test_speculative_with_every_proposal_accepted_commits_k_plus_one():
    # k = 2, acceptance 1: each verification commits 3 tokens; output 7 = 1 (prefill) + 3 + 3
    # three 10 ms forwards, the two verifications each after a host lookup for the one decode row
    decoding = Speculative(width=3, acceptance=Acceptance((1.0,)))
    result = simulate(specs(), Constant(0.01), trace([(0.0, 4, 7)]), decoding, engine(), seed=0)
    assert forward_column(result, "committed_tokens") == [0, 3, 3]
    assert times(result, "finish_s") == [pytest.approx(0.03 + 2 * decoding.proposal_host_s, rel=1e-12)]
    assert result.summary["tokens_per_forward_mean"] == 3.0


def test_speculative_never_accepting_commits_one_token_per_forward():
    decoding = Speculative(width=5, acceptance=Acceptance((0.0,)))
    result = simulate(specs(), Constant(0.01), trace([(0.0, 4, 4)]), decoding, engine(), seed=0)
    assert forward_column(result, "committed_tokens") == [0, 1, 1, 1]


def test_the_last_verification_is_capped_at_the_tokens_still_owed():
    decoding = Speculative(width=5, acceptance=Acceptance((1.0,)))
    result = simulate(specs(), Constant(0.01), trace([(0.0, 4, 7)]), decoding, engine(), seed=0)
    assert forward_column(result, "committed_tokens") == [0, 5, 1]
    assert result.requests["generated_tokens"].tolist() == [7]


def test_draft_proposals_run_before_each_verification():
    # target 10 ms, draft 1 ms per forward whatever its shape, k = 2:
    #   [0, 11]   target prefill 10 + draft prefill 1          -> token 1
    #   [11, 23]  two draft forwards 2 (the first catching up on the committed tokens) + verification 10
    #                                                          -> +3 tokens (4)
    #   [23, 35]  same                                         -> +3 tokens (7), done
    draft = specs("llama3_1b").model
    decoding = Speculative(width=3, acceptance=Acceptance((1.0,)), proposer="draft", proposer_model=draft)
    latency = Constant(0.010, per_model={"llama3_1b": 0.001})
    result = simulate(specs(), latency, trace([(0.0, 4, 7)]), decoding, engine(), seed=0)
    assert forward_column(result, "start_s") == [0.0, 0.011, 0.023]
    assert forward_column(result, "proposal_s") == [0.001, 0.002, 0.002]
    assert times(result, "finish_s") == [0.035]
    assert result.summary["proposal_time_fraction"] == pytest.approx(0.005 / 0.035)


def test_diffusion_commits_on_a_schedule_and_takes_its_first_token_from_a_block_forward():
    # block 4 over 2 steps: 2 tokens per forward; output 6 = blocks of 4 and 2 (the second padded)
    #   [0, 10]   prefill (the prompt is cached, no token)
    #   [10, 20]  block 1 step 1: tokens 1-2 (TTFT 20 ms)
    #   [20, 30]  block 1 step 2: tokens 3-4, the block is cached
    #   [30, 40]  block 2 step 1: tokens 5-6, done
    decoding = Diffusion(width=4, commit_model="schedule", steps_per_block=2)
    result = simulate(specs("llada_8b"), Constant(0.01), trace([(0.0, 8, 6)]), decoding, engine(), seed=0)
    assert forward_column(result, "committed_tokens") == [0, 2, 2, 2]
    assert times(result, "first_token_s") == [0.02]
    assert times(result, "finish_s") == [0.04]
    # the block's tokens join the cache only when the block is done
    assert forward_column(result, "context_sum") == [0, 8, 8, 12]


def test_preemption_by_recompute_when_the_cache_is_full():
    # 7 cache slots (blocks of 1 token); two requests at 0, prompt 2, output 3, 10 ms forwards.
    #   [0, 10]   prefill both (4 slots)                    -> token 1 each; rows at context 3
    #   [10, 20]  both rows need 2 slots, 3 free: req1 (admitted last) is preempted, freeing 2;
    #             req0 decodes; nothing new is admitted in a step that preempted  -> req0 token 2
    #   [20, 30]  req0 decodes (1 slot); req1 re-prefills prompt + token 1 = 3, but only 2 slots are
    #             free: a chunk of 2                          -> req0 token 3, done, 5 slots back
    #   [30, 40]  req1's last prefill token                  -> req1 token 2
    #   [40, 50]  req1 decodes                               -> req1 token 3, done
    result = simulate(specs(), Constant(0.01), trace([(0.0, 2, 3), (0.0, 2, 3)]), Autoregressive(),
                      engine(block_size_tokens=1, kv_capacity_tokens=7), seed=0)
    assert times(result, "first_token_s") == [0.01, 0.01]
    assert times(result, "finish_s") == [0.03, 0.05]
    assert result.requests["preemptions"].tolist() == [0, 1]
    assert forward_column(result, "num_decode") == [0, 1, 1, 0, 1]
    assert forward_column(result, "prefill_tokens") == [4, 0, 2, 1, 0]
    assert forward_column(result, "kv_used_blocks") == [4, 4, 7, 3, 5]
    s = result.summary
    assert s["preemptions"] == 1
    assert s["itl_s"]["max"] == pytest.approx(0.03)  # req1: token 1 at 10 ms, token 2 at 40 ms


def test_an_idle_engine_waits_for_the_next_arrival():
    result = simulate(specs(), Constant(0.01), trace([(0.0, 4, 1), (1.0, 4, 1)]), Autoregressive(), engine(), seed=0)
    assert forward_column(result, "start_s") == [0.0, 1.0]
    assert times(result, "finish_s") == [0.01, 1.01]
    assert result.summary["gpu_busy_fraction"] == pytest.approx(0.02 / 1.01)


def test_a_horizon_reports_unfinished_requests():
    rows = [(0.0, 4, 100), (0.0, 4, 2), (5.0, 4, 2)]
    result = simulate(specs(), Constant(0.01), trace(rows), Autoregressive(), engine(max_sim_time_s=0.5), seed=0)
    s = result.summary
    assert (s["num_arrived"], s["num_finished"], s["num_unfinished"]) == (2, 1, 1)
    assert math.isnan(result.requests["arrival_s"][2])
    assert 0 < result.requests["generated_tokens"][0] < 100


def test_closed_loop_clients_send_the_next_request_after_the_last_token():
    from nfpsim.sim import LengthSpec, WorkloadSpec

    workload = WorkloadSpec("closed", 4, num_clients=2, think_time_s=0.5, prompt=LengthSpec("fixed", 4, 4),
                            output=LengthSpec("fixed", 2, 2))
    result = simulate(specs(), Constant(0.01), workload, Autoregressive(), engine(), seed=0)
    # clients start requests 0 and 1 at 0: both prefill [0, 10], decode [10, 20], done at 20 ms;
    # each thinks 0.5 s, then requests 2 and 3 arrive at 0.52 s and finish at 0.54 s
    assert times(result, "arrival_s") == [0.0, 0.0, 0.52, 0.52]
    assert times(result, "finish_s") == [0.02, 0.02, 0.54, 0.54]


def test_cpu_overhead_adds_to_every_step():
    # the two-request timeline above, each step 10 ms of GPU plus 1 ms + 0.5 ms per sequence of CPU:
    #   [0, 11.5]      prefill req0 (1 sequence)
    #   [11.5, 23.5]   decode req0 + prefill req1 (2)
    #   [23.5, 35.5]   decode req0, req1 (2)
    result = simulate(specs(), Constant(0.010), trace([(0.0, 4, 3), (0.005, 4, 2)]), Autoregressive(),
                      engine(cpu_step_overhead_s=0.001, cpu_seq_overhead_s=0.0005), seed=0)
    assert forward_column(result, "start_s") == [0.0, 0.0115, 0.0235]
    assert times(result, "finish_s") == [0.0355, 0.0355]
