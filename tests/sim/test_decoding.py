"""Acceptance models match their expected tokens per step; policies commit what they promise."""

import numpy as np
import pytest

from nfpsim.config import load_model
from nfpsim.errors import ConfigError
from nfpsim.sim import Acceptance, Autoregressive, Decoding, Diffusion, Jacobi, Speculative, Utilization
from nfpsim.sim.decoding import forwards_per_block, mtp_model, proposer_weight_bytes
from nfpsim.sim.decoding_config import decoding_from_config
from nfpsim.sim.state import DecodeRows

DRAWS = 200_000


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.7, 0.95])
@pytest.mark.parametrize("k", [1, 4, 8])
def test_iid_acceptance_commits_its_closed_form_mean(rate, k):
    acceptance = Acceptance((rate,))
    expected = k + 1 if rate == 1 else (1 - rate ** (k + 1)) / (1 - rate)
    assert acceptance.expected_tokens(k) == pytest.approx(expected)
    tokens = acceptance.sample_tokens(np.random.default_rng(0), DRAWS, k)
    assert tokens.min() >= 1 and tokens.max() <= k + 1
    assert tokens.mean() == pytest.approx(expected, abs=4 * tokens.std() / DRAWS**0.5 + 1e-9)


def test_per_position_acceptance_keeps_the_accepted_prefix():
    rates = (0.9, 0.6, 0.3)
    acceptance = Acceptance(rates)
    expected = 1 + 0.9 + 0.9 * 0.6 + 0.9 * 0.6 * 0.3
    assert acceptance.expected_tokens(3) == pytest.approx(expected)
    tokens = acceptance.sample_tokens(np.random.default_rng(1), DRAWS, 3)
    assert tokens.mean() == pytest.approx(expected, abs=0.01)
    # P(exactly 2 tokens) = a1 * (1 - a2)
    assert np.mean(tokens == 2) == pytest.approx(0.9 * 0.4, abs=0.01)


def test_fully_accepting_and_zero_proposals_are_exact():
    rng = np.random.default_rng(0)
    assert Acceptance((1.0,)).sample_tokens(rng, 5, 3).tolist() == [4] * 5
    assert Acceptance((0.5,)).sample_tokens(rng, 5, 0).tolist() == [1] * 5


def test_jacobi_utilization_mean_is_tau():
    utilization = Utilization((1, 4, 16), (1.0, 1.6, 2.2))
    assert utilization.tau(1) == 1.0
    assert utilization.tau(2) == pytest.approx(1.3)  # halfway in log2 between 1 and 4
    assert utilization.tau(64) == 2.2  # flat past the last point
    tokens = utilization.sample_tokens(np.random.default_rng(0), DRAWS, 8)
    assert tokens.mean() == pytest.approx(utilization.tau(8), abs=0.01)
    assert set(np.unique(tokens)) == {1, 2}


def rows_with(n, remaining, context=100):
    rows = DecodeRows(n)
    rows.n = n
    rows.remaining[:] = remaining
    rows.context[:] = context
    return rows


def test_diffusion_threshold_commit_matches_its_mean_for_a_fresh_block():
    decoding = Diffusion(width=16, commit_model="threshold", unmask_prob=0.2)
    rows = rows_with(DRAWS, 10_000)
    tokens = decoding.commit(np.random.default_rng(0), rows, DRAWS, 16)
    expected = 16 * 0.2 + 0.8**16
    assert decoding.expected_first_commit(16) == pytest.approx(expected)
    assert tokens.mean() == pytest.approx(expected, abs=0.02)
    assert tokens.min() >= 1
    assert (rows.progress == tokens).all() and (rows.context == 100).all()  # block not done: not cached


def test_diffusion_threshold_blocks_take_their_expected_forwards():
    # F(2) by hand at p = 0.5: commit 1 (P = 0.25 + 0.5) then 1 more, or both at once (P = 0.25)
    assert forwards_per_block(2, 0.5) == pytest.approx(1 + 0.75)
    assert forwards_per_block(7, 1.0) == 1.0
    decoding = Diffusion(width=12, commit_model="threshold", unmask_prob=0.3)
    rows = rows_with(20_000, 10**6)
    rng = np.random.default_rng(0)
    forwards_taken = np.zeros(20_000, dtype=np.int64)  # until each row caches its first block
    for forward in range(1, 13):
        decoding.commit(rng, rows, 20_000, 12)
        forwards_taken[(rows.context > 100) & (forwards_taken == 0)] = forward
    assert (forwards_taken > 0).all()
    assert forwards_taken.mean() == pytest.approx(forwards_per_block(12, 0.3), rel=0.01)
    assert decoding.expected_tokens(12) == pytest.approx(12 / forwards_per_block(12, 0.3))


def test_diffusion_schedule_spreads_a_block_over_its_steps():
    # LLaDA: 10 tokens over 4 steps -> 3, 3, 2, 2; then the block is cached and the next one starts
    decoding = Diffusion(width=10, commit_model="schedule", steps_per_block=4)
    rows = rows_with(1, 100)
    commits = [int(decoding.commit(None, rows, 1, 10)[0]) for _ in range(5)]
    assert commits == [3, 3, 2, 2, 3]
    assert rows.context[0] == 110 and rows.progress[0] == 3


def test_commits_are_capped_at_what_a_row_still_owes():
    rows = rows_with(3, [1, 2, 10])
    tokens = Speculative(width=5, acceptance=Acceptance((1.0,))).commit(None, rows, 3, 5)
    assert tokens.tolist() == [1, 2, 5]
    assert rows.context.tolist() == [101, 102, 105]


def test_expected_tokens_of_each_method():
    assert Autoregressive().expected_tokens(1) == 1.0
    assert Speculative(width=3, acceptance=Acceptance((0.5,))).expected_tokens(3) == pytest.approx(1.75)
    assert Jacobi(width=8).expected_tokens(8) == pytest.approx(1.9)
    assert Diffusion(width=8, commit_model="schedule", steps_per_block=4).expected_tokens(8) == 2.0


def config(**fields):
    return {"name": fields.get("method", "x"), **fields}


def test_configs_build_their_policies():
    target = load_model("llama3_8b")
    spec = decoding_from_config(config(method="speculative", k=3, proposer="draft", draft_model="llama3_1b",
                                       acceptance={"rate": 0.6}, width_policy="near_free"), target, eps=0.05)
    assert (spec.width, spec.k, spec.near_free, spec.eps, spec.proposer_model.name) == (4, 3, True, 0.05, "llama3_1b")
    assert spec.proposals(4) == 3
    mtp = decoding_from_config(config(method="speculative", k=2, proposer="mtp", mtp_layers=1,
                                      acceptance={"rates": [0.8, 0.6]}), target, eps=0.1)
    assert mtp.proposer_model.num_layers == 1 and mtp.proposer_model.hidden_size == target.hidden_size
    free = decoding_from_config(config(method="speculative", k=4, proposer="free", acceptance={"rate": 0.5}),
                                target, eps=0.1)
    assert free.proposer_model is None and free.proposals(5) == 0


def test_mtp_layers_add_their_layers_but_share_embedding_and_head():
    target = load_model("llama3_8b")
    decoding = Speculative(width=2, proposer="mtp", proposer_model=mtp_model(target, 1))
    layer_bytes = (target.weight_bytes() - 2 * target.vocab_size * target.hidden_size * 2) / target.num_layers
    assert proposer_weight_bytes(decoding, target) == pytest.approx(layer_bytes)
    moe = mtp_model(load_model("qwen3_30b_a3b"), 2)
    assert (moe.num_layers, moe.num_dense_layers, moe.num_moe_layers) == (2, 0, 2)


@pytest.mark.parametrize("fields, key", [
    (dict(method="speculative", k=0, proposer="free", acceptance={"rate": 0.5}), "decoding.k=0: must be in [1, 63]"),
    (dict(method="speculative", k=2, proposer="free", acceptance={"rate": 1.5}), "decoding.acceptance.rate=1.5"),
    (dict(method="speculative", k=4, proposer="free", acceptance={"rates": [0.9, 0.8]}),
     "decoding.acceptance.rates: 2 rates for k=4"),
    (dict(method="speculative", k=2, proposer="draft", draft_model="llama9", acceptance={"rate": 0.5}),
     "decoding.draft_model=llama9: unknown model"),
    (dict(method="diffusion", block_size=0, commit="threshold", unmask_prob=0.1), "decoding.block_size=0"),
    (dict(method="diffusion", block_size=4, commit="schedule", steps_per_block=8),
     "decoding.steps_per_block=8: must be in [1, 4]"),
    (dict(method="jacobi", width=0, utilization=[[1, 1.0]]), "decoding.width=0"),
    (dict(method="jacobi", width=4, utilization=[[2, 1.5]]), "must start at [1, 1.0]"),
    (dict(method="jacobi", width=4, utilization=[[1, 1.0], [4, 5.0]]), "must be <= their width"),
    (dict(method="beam"), "decoding.method='beam': allowed: ar, speculative, diffusion, jacobi"),
])
def test_bad_decoding_configs_name_their_key(fields, key):
    with pytest.raises(ConfigError) as error:
        decoding_from_config(config(**fields), load_model("llama3_8b"), eps=0.1)
    assert key in str(error.value)


def test_the_decoding_base_is_not_a_policy_itself():
    with pytest.raises(TypeError, match="abstract"):
        Decoding()
    assert Autoregressive().describe() == "autoregressive"
