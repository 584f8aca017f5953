import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfpsim.routing import (
    expected_active_experts,
    expected_blocks,
    expected_padded_blocks,
    inclusion_probabilities,
)


def brute_force_expected_blocks(tokens, q, block):
    return sum(math.comb(tokens, n) * q**n * (1 - q) ** (tokens - n) * math.ceil(n / block)
               for n in range(tokens + 1))


@given(tokens=st.integers(1, 300), q=st.floats(0.001, 0.999), block=st.sampled_from([1, 4, 16, 64]))
@settings(max_examples=60, deadline=None)
def test_expected_blocks_matches_the_exact_binomial_sum(tokens, q, block):
    assert expected_blocks(tokens, q, block) == pytest.approx(brute_force_expected_blocks(tokens, q, block),
                                                              rel=1e-9, abs=1e-12)


def test_expected_blocks_edges():
    assert expected_blocks(0, 0.5, 16) == 0.0
    assert expected_blocks(100, 1.0, 16) == 7  # always all 100 tokens: ceil(100/16)
    assert expected_blocks(100, 0.0, 16) == 0.0


def test_uniform_active_experts_is_the_closed_form():
    q = inclusion_probabilities(128, 8, 0.0)
    for tokens in (1, 2, 7, 64, 1000):
        assert expected_active_experts(tokens, q) == pytest.approx(128 * (1 - (1 - 8 / 128) ** tokens))


@given(experts=st.integers(2, 160), data=st.data(), skew=st.floats(0.0, 3.0))
@settings(max_examples=60, deadline=None)
def test_inclusion_probabilities_sum_to_top_k_and_stay_probabilities(experts, data, skew):
    k = data.draw(st.integers(1, experts))
    q = inclusion_probabilities(experts, k, skew)
    assert len(q) == experts
    assert sum(q) == pytest.approx(k)
    assert all(0.0 <= v <= 1.0 + 1e-12 for v in q)
    assert list(q) == sorted(q, reverse=True)  # popularity falls with rank


def test_skewed_routing_wakes_fewer_experts_than_uniform():
    uniform = inclusion_probabilities(64, 6, 0.0)
    skewed = inclusion_probabilities(64, 6, 1.2)
    for tokens in (2, 8, 32):
        assert expected_active_experts(tokens, skewed) < expected_active_experts(tokens, uniform)


@given(tokens=st.integers(1, 4000), skew=st.sampled_from([0.0, 0.7]), block=st.sampled_from([16, 64]))
@settings(max_examples=40, deadline=None)
def test_padded_blocks_bound_the_rows_from_both_sides(tokens, skew, block):
    q = inclusion_probabilities(64, 4, skew)
    blocks = expected_padded_blocks(tokens, q, block)
    active = expected_active_experts(tokens, q)
    # at least one block per woken expert and enough rows for every assignment; at most one
    # padding block per woken expert on top of the rows
    assert blocks >= active - 1e-9
    assert blocks * block >= tokens * 4 - 1e-6
    assert blocks <= tokens * 4 / block + active + 1e-9
