"""The splits the host picks where a kernel preset leaves them open (``split_k: 0``, ``num_splits: 0``).

The triton validation forward runs the split the latency model prices fastest for each shape (with the
constants it predicts with), so the forward that is timed is the implementation that is predicted.
Pure: no torch.
"""

from __future__ import annotations

import dataclasses

from nfpsim.config import KernelPreset
from nfpsim.latency.pricing.attention import triton_cost
from nfpsim.latency.pricing.common import power_of_two_splits
from nfpsim.latency.pricing.gemm import gemm_cost
from nfpsim.latency.constants import LatencyConstants
from nfpsim.shapes import AttentionShape, GemmShape


def constants_of(latency_model) -> LatencyConstants:
    """The constants a latency model prices with (for a calibrated model, its fitted analytic ones)."""
    return getattr(latency_model, "fitted", latency_model).constants


def gemm_split(shape: GemmShape, kernels: KernelPreset, constants: LatencyConstants) -> int:
    """The preset's split-K, or (split_k 0) the power of two the analytic model prices fastest."""
    tile = kernels.gemm.select(shape.tokens)
    if tile.split_k:
        return tile.split_k
    candidates = power_of_two_splits(shape.k, tile.block_k, kernels.gemm.max_split_k)

    def time_s(split: int) -> float:
        fixed = dataclasses.replace(kernels.gemm, tiles=(dataclasses.replace(tile, split_k=split, max_tokens=None),))
        return gemm_cost(shape, fixed, constants.gemm, constants.device).time_s

    return min(candidates, key=time_s)  # the first of equals, as the latency model's min() takes


def attention_splits(shape: AttentionShape, kernels: KernelPreset, constants: LatencyConstants) -> int:
    """The preset's split-KV count, or (num_splits 0) the power of two the analytic model prices fastest."""
    attn = kernels.attention
    if attn.num_splits:
        return attn.num_splits
    candidates = power_of_two_splits(shape.kv_len, attn.block_kv, attn.max_splits)

    def time_s(split: int) -> float:
        fixed = dataclasses.replace(attn, num_splits=split)
        return triton_cost(shape, fixed, constants.attention, constants.device).time_s

    return min(candidates, key=time_s)
