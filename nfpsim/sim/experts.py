"""Expert parallelism for MoE models: an all-to-all per MoE layer and the load imbalance of routing skew.

With ``ep`` ranks each holding ``num_experts / ep`` experts (dealt round-robin), every MoE layer sends
each token's hidden state to its ``top_k`` experts' ranks and back (dispatch and combine), and the
layer waits for its busiest rank. Expert popularity follows ``1 / rank**skew`` (0: uniform), so rank
``r`` gets the share ``sum(p_e for e on r)`` of the routed tokens and the expert time grows by the
busiest share over the mean, ``max_r share_r * ep``.

Kept here, next to its one user, until the latency layer prices collectives and routing itself: the
expert time comes from the latency model's own breakdown (its ``experts`` sub-module).
"""

from __future__ import annotations

import numpy as np

from nfpsim.config import HardwareSpec, ModelSpec


def routing_imbalance(num_experts: int, ep: int, skew: float) -> float:
    """The busiest rank's share of routed tokens over the mean share ``1/ep``."""
    popularity = 1.0 / np.arange(1, num_experts + 1) ** skew
    shares = np.bincount(np.arange(num_experts) % ep, weights=popularity / popularity.sum(), minlength=ep)
    return float(shares.max() * ep)


def all_to_all_s(model: ModelSpec, hardware: HardwareSpec, tokens: int, ep: int) -> float:
    """Dispatch and combine of one MoE layer: each token's hidden state to its ``top_k`` experts, the
    ``(ep - 1) / ep`` of them on other ranks, and back."""
    sent = tokens * model.top_k * model.hidden_size * model.bytes_per_element * (ep - 1) / ep
    return 2 * (hardware.collective_latency_s + sent / hardware.interconnect_bytes_per_s)


def expert_parallel_extra_s(experts_s: float, model: ModelSpec, hardware: HardwareSpec, tokens: int, ep: int,
                            skew: float) -> float:
    """What EP adds to a forward whose balanced expert time is ``experts_s``."""
    moe_layers = model.num_layers - model.num_dense_layers
    return (moe_layers * all_to_all_s(model, hardware, tokens, ep)
            + (routing_imbalance(model.num_experts, ep, skew) - 1.0) * experts_s)
