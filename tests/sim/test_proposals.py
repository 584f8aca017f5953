"""What proposals cost: a proposer model's catch-up over the committed tokens, and the host time of
proposals made without a model (n-gram lookup, lookahead guesses)."""

import numpy as np
import pytest

from nfpsim.config import load_model
from nfpsim.errors import ConfigError
from nfpsim.search.objective import near_free_ratio
from nfpsim.shapes import ForwardShape, SeqGroup
from nfpsim.sim import Acceptance, Autoregressive, Jacobi, Speculative, simulate
from nfpsim.sim.cost import ForwardPricer
from nfpsim.sim.decoding import FREE_PROPOSAL_HOST_S, apportion, mtp_model
from nfpsim.sim.decoding_config import decoding_from_config

from .golden.scenarios import NoCatchUp
from .stubs import Linear, engine, specs, trace
from .test_simulate import analytic

TARGET = load_model("llama3_8b")
DRAFT = load_model("llama3_1b")


def test_the_tokens_a_verification_commits_are_distributed_as_the_accepted_prefix_plus_one():
    # i.i.d. 0.7, k = 2: P(1) = 0.3, P(2) = 0.7 * 0.3, P(3) = 0.7 * 0.7
    assert Acceptance((0.7,)).tokens_pmf(2) == pytest.approx([0.3, 0.21, 0.49])
    # per-position rates 0.9, 0.5: P(1) = 0.1, P(2) = 0.9 * 0.5, P(3) = 0.9 * 0.5
    assert Acceptance((0.9, 0.5, 0.2)).tokens_pmf(2) == pytest.approx([0.1, 0.45, 0.45])
    for acceptance, k in ((Acceptance((0.7,)), 4), (Acceptance((0.9, 0.6, 0.4)), 3), (Acceptance((1.0,)), 3)):
        pmf = acceptance.tokens_pmf(k)
        assert pmf.sum() == pytest.approx(1.0)
        assert np.dot(np.arange(1, k + 2), pmf) == pytest.approx(acceptance.expected_tokens(k))


def test_rows_are_split_over_widths_by_largest_remainder():
    # 10 rows x (0.3, 0.21, 0.49) = 3, 2.1, 4.9: floors 3, 2, 4 and the one left over to the largest remainder
    assert apportion(10, np.array([0.3, 0.21, 0.49])) == ((3, 1), (2, 2), (5, 3))
    assert apportion(4, np.array([1.0, 0.0, 0.0])) == ((4, 1),)
    assert apportion(2, np.array([0.5, 0.5])) == ((1, 1), (1, 2))


def draft_step(decoding, latency, n=16, context=1024):
    pricer = ForwardPricer(latency, TARGET, context_bucket_tokens=64, decoding=decoding)
    return pricer.step(n, decoding.width, n * context)


def test_a_draft_model_catches_up_on_the_committed_tokens_before_it_proposes():
    latency = analytic()
    spec = Speculative(width=5, acceptance=Acceptance((0.7,)), proposer="draft", proposer_model=DRAFT)
    # k = 4 at 0.7: P(a+1 = 1..5) = 0.3, 0.21, 0.147, 0.1029, 0.2401; 16 rows x that = 4.8, 3.36, 2.352,
    # 1.6464, 3.8416, floors 4, 3, 2, 1, 3 (13) and the 3 left to the remainders .8416, .8, .6464
    catch_up = ForwardShape((SeqGroup(5, 1, 1024), SeqGroup(3, 2, 1024, 1), SeqGroup(2, 3, 1024, 1),
                             SeqGroup(2, 4, 1024, 1), SeqGroup(4, 5, 1024, 1)))
    one = ForwardShape.uniform(16, 1, 1024)
    cost = draft_step(spec, latency)
    assert cost.proposal_s == latency.forward_time(DRAFT, catch_up) + 3 * latency.forward_time(DRAFT, one)
    # the same step without the catch-up runs its first proposal over one position per row
    plain = draft_step(NoCatchUp(width=5, acceptance=Acceptance((0.7,)), proposer="draft", proposer_model=DRAFT),
                       latency)
    extra = latency.forward_time(DRAFT, catch_up) - latency.forward_time(DRAFT, one)
    assert extra > 0
    assert cost.total_s - plain.total_s == pytest.approx(extra, rel=1e-12)
    assert cost.forward_s == plain.forward_s and cost.one_position_s == plain.one_position_s


def test_a_proposer_that_never_gets_a_proposal_accepted_catches_up_on_one_token():
    latency = analytic()
    never = Speculative(width=5, acceptance=Acceptance((0.0,)), proposer="draft", proposer_model=DRAFT)
    plain = NoCatchUp(width=5, acceptance=Acceptance((0.0,)), proposer="draft", proposer_model=DRAFT)
    assert draft_step(never, latency) == draft_step(plain, latency)


def test_mtp_heads_catch_up_too():
    # one MTP layer, k = 1 at 0.8: 16 rows split 0.2 / 0.8 = 3.2, 12.8 -> 3 rows of one position, 13 of two
    latency = analytic()
    head = mtp_model(TARGET, 1)
    mtp = Speculative(width=2, acceptance=Acceptance((0.8,)), proposer="mtp", proposer_model=head)
    catch_up = ForwardShape((SeqGroup(3, 1, 1024), SeqGroup(13, 2, 1024, 1)))
    assert draft_step(mtp, latency).proposal_s == latency.forward_time(head, catch_up)
    assert draft_step(mtp, latency).proposal_s > latency.forward_time(head, ForwardShape.uniform(16, 1, 1024))


def test_the_near_free_ratio_counts_the_catch_up():
    # one request, so both runs make the same steps; acceptance 0.9 at k = 4 makes "all four accepted"
    # (0.9**4 = 0.66) the likeliest, so the lone row's catch-up runs 5 positions instead of 1: on a
    # latency linear in tokens, 4 tokens' worth more per verification
    latency = Linear(0.004, 2e-6)
    kwargs = dict(width=5, acceptance=Acceptance((0.9,)), proposer="draft", proposer_model=DRAFT)
    spec, plain = Speculative(**kwargs), NoCatchUp(**kwargs)
    assert spec.catch_up(1, 5) == ((1, 5),)
    runs = [simulate(specs(), latency, trace([(0.0, 64, 80)]), d, engine(), seed=0) for d in (spec, plain)]
    fwd = runs[0].forwards
    assert (fwd["num_decode"] == runs[1].forwards["num_decode"]).all()
    decode = (fwd["num_decode"] > 0) & (fwd["num_chunks"] == 0)
    one = fwd["one_position_s"][decode].sum()
    expected = decode.sum() * 4 * latency.per_token_s / one
    assert near_free_ratio(runs[0]) - near_free_ratio(runs[1]) == pytest.approx(expected, rel=1e-9)


# -- proposals without a model -----------------------------------------------------------------------

@pytest.mark.parametrize("policy", [
    lambda host: Speculative(width=5, acceptance=Acceptance((0.5,)), proposal_host_s=host),
    lambda host: Jacobi(width=8, proposal_host_s=host),
])
def test_free_proposals_cost_their_host_time_per_sequence(policy):
    latency = analytic()
    free = policy(0.0)
    for n in (1, 8, 64):
        base = draft_step(free, latency, n=n)
        for host in (10e-6, 50e-6):
            cost = draft_step(policy(host), latency, n=n)
            assert cost.total_s - base.total_s == pytest.approx(host * n, rel=1e-9)
            assert cost.forward_s == base.forward_s and cost.proposal_s == pytest.approx(host * n, rel=1e-12)


def test_free_proposals_are_charged_the_documented_estimate_unless_configured():
    assert Speculative(width=5).host_s_per_seq() == Jacobi().host_s_per_seq() == FREE_PROPOSAL_HOST_S > 0
    # a proposer model's forwards are priced instead; autoregressive decoding proposes nothing
    assert Speculative(width=5, proposer="draft", proposer_model=DRAFT).host_s_per_seq() == 0.0
    assert Autoregressive().host_s_per_seq() == 0.0
    ngram = dict(name="ngram", method="speculative", k=4, proposer="free", acceptance={"rate": 0.5})
    assert decoding_from_config(ngram, TARGET, eps=0.1).proposal_host_s == FREE_PROPOSAL_HOST_S
    assert decoding_from_config(ngram | {"proposal_host_us": 35}, TARGET, eps=0.1).proposal_host_s == 35e-6
    assert decoding_from_config(ngram | {"proposal_host_us": 0}, TARGET, eps=0.1).proposal_host_s == 0.0
    jacobi = dict(name="jacobi", method="jacobi", width=8, utilization=[[1, 1.0], [8, 1.9]], proposal_host_us=5)
    assert decoding_from_config(jacobi, TARGET, eps=0.1).proposal_host_s == 5e-6


@pytest.mark.parametrize("value", [-1, "fast", True])
def test_a_bad_host_cost_is_a_one_line_error(value):
    ngram = dict(name="ngram", method="speculative", k=4, proposer="free", acceptance={"rate": 0.5},
                 proposal_host_us=value)
    with pytest.raises(ConfigError) as error:
        decoding_from_config(ngram, TARGET, eps=0.1)
    assert str(error.value).startswith("decoding.proposal_host_us=") and "\n" not in str(error.value)


def test_a_free_proposers_steps_take_longer_by_their_host_time():
    latency = Linear(0.004, 2e-6)
    runs = [simulate(specs(), latency, trace([(0.0, 64, 40), (0.0, 32, 40)]), decoding, engine(), seed=0)
            for decoding in (Speculative(width=3, acceptance=Acceptance((0.6,)), proposal_host_s=0.0),
                             Speculative(width=3, acceptance=Acceptance((0.6,)), proposal_host_s=30e-6))]
    free, charged = (run.forwards for run in runs)
    assert (free["num_decode"] == charged["num_decode"]).all()
    assert charged["duration_s"] - free["duration_s"] == pytest.approx(30e-6 * free["num_decode"], abs=1e-15)
