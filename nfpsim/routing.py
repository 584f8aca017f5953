"""Expert-routing statistics of an MoE layer: which experts ``T`` tokens wake, and how full they are.

Each token picks ``k`` distinct experts of ``E``. Expert ``e`` is among a token's choices with
probability ``q_e`` (``sum_e q_e = k``); tokens route independently, so expert ``e`` receives
``n_e ~ Binomial(T, q_e)`` tokens. Under uniform routing ``q_e = k/E`` and the expected number of
distinct experts is ``A(T) = E * (1 - (1 - k/E)**T)``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=256)
def inclusion_probabilities(num_experts: int, top_k: int, skew: float) -> tuple[float, ...]:
    """Per-expert probability ``q_e`` of being one of a token's ``top_k`` choices.

    Popularity follows a Zipf law ``p_e ~ (e+1)**-skew`` (``skew = 0``: uniform). ``q_e = min(1, c*p_e)``
    with ``c`` chosen so the ``q_e`` sum to ``top_k``: an expert cannot be chosen twice by one token, so
    the most popular ones saturate at 1 and the rest share what is left (water-filling).
    """
    if skew == 0.0:
        return (top_k / num_experts,) * num_experts
    popularity = np.arange(1, num_experts + 1, dtype=np.float64) ** -skew
    q = np.zeros(num_experts)
    capped = np.zeros(num_experts, dtype=bool)
    remaining = float(top_k)
    for _ in range(num_experts):
        free = ~capped
        q[free] = remaining * popularity[free] / popularity[free].sum()
        over = free & (q >= 1.0)
        if not over.any():
            break
        capped |= over
        q[capped] = 1.0
        remaining = top_k - int(capped.sum())
    return tuple(float(v) for v in q)


def expected_active_experts(tokens: float, q: tuple[float, ...]) -> float:
    """Expected number of distinct experts woken by ``tokens`` tokens."""
    if tokens <= 0:
        return 0.0
    return float(sum(1.0 - (1.0 - qe) ** tokens for qe in q))


@lru_cache(maxsize=65536)
def expected_blocks(tokens: int, qe: float, block: int) -> float:
    """``E[ceil(n / block)]`` for ``n ~ Binomial(tokens, qe)``: one expert's expected padded tiles.

    Exact up to a window of 12 sigma plus 14 counts around the mean (the mass outside is below 1e-15
    even where the mean is tiny and the tail Poisson-like), so the cost is ``O(sqrt(tokens))``.
    """
    if tokens <= 0 or qe <= 0.0:
        return 0.0
    if qe >= 1.0:
        return float(math.ceil(tokens / block))
    mean = tokens * qe
    sd = math.sqrt(mean * (1.0 - qe))
    lo = max(0, int(mean - 12 * sd) - 14)
    hi = min(tokens, int(mean + 12 * sd) + 14)
    n = np.arange(lo, hi + 1, dtype=np.float64)
    log_pmf_lo = (math.lgamma(tokens + 1) - math.lgamma(lo + 1) - math.lgamma(tokens - lo + 1)
                  + lo * math.log(qe) + (tokens - lo) * math.log1p(-qe))
    # pmf(n+1)/pmf(n) = (T-n)/(n+1) * q/(1-q), accumulated in log space from the window's start.
    steps = np.log((tokens - n[:-1]) / (n[:-1] + 1.0)) + math.log(qe / (1.0 - qe))
    log_pmf = log_pmf_lo + np.concatenate(([0.0], np.cumsum(steps)))
    pmf = np.exp(log_pmf - log_pmf.max())
    pmf /= pmf.sum()
    return float(np.dot(pmf, np.ceil(n / block)))


def expected_padded_blocks(tokens: int, q: tuple[float, ...], block: int) -> float:
    """Expected ``sum_e ceil(n_e / block)``: the M-tiles a fused-MoE kernel runs over all experts."""
    if len(set(q)) == 1:
        return len(q) * expected_blocks(tokens, q[0], block)
    return float(sum(expected_blocks(tokens, qe, block) for qe in q))
