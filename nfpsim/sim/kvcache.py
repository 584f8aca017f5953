"""KV-cache memory: how many blocks one tensor-parallel rank holds, and who owns them.

Capacity per rank, as vLLM sizes it::

    kv_bytes = memory_bytes * gpu_memory_utilization - weight_bytes / tp - activation_reserve_bytes
    capacity_tokens = kv_bytes / kv_bytes_per_token_per_rank      (in whole blocks of block_size)

KV heads shard over ranks (``max(1, num_kv_heads // tp)`` per rank, replicated when fewer than ranks);
an MLA latent is shared by all heads and is cached whole on every rank. A draft model or MTP layers add
their weights and their own cache per token.
"""

from __future__ import annotations

from dataclasses import dataclass

from nfpsim.config import HardwareSpec, ModelSpec
from nfpsim.errors import ConfigError

GIB = 2**30


def kv_bytes_per_token_per_rank(model: ModelSpec, tp: int) -> int:
    if model.is_mla:
        return model.kv_bytes_per_token
    per_rank_heads = max(1, model.num_kv_heads // tp)
    return model.num_layers * per_rank_heads * (model.head_dim + model.v_head_dim) * model.bytes_per_element


@dataclass(frozen=True)
class KvPlan:
    tp: int
    block_size: int  # tokens per block
    num_blocks: int
    weight_bytes_per_rank: float
    kv_bytes_per_token: int  # per rank, proposer's cache included

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def blocks(self, tokens: int) -> int:
        return -(-tokens // self.block_size)


def plan_kv(hardware: HardwareSpec, model: ModelSpec, tp: int, *, block_size: int,
            gpu_memory_utilization: float, activation_reserve_bytes: float,
            proposer: ModelSpec | None = None, proposer_weight_bytes: int = 0) -> KvPlan:
    """The cache one rank holds; a ConfigError when the weights leave no room for it."""
    weights, per_token, usable = _rank_bytes(hardware, model, tp, gpu_memory_utilization, activation_reserve_bytes,
                                             proposer, proposer_weight_bytes)
    room = usable - weights
    if room < per_token * block_size:
        raise ConfigError(
            f"engine.tp={tp}: {model.name} weights need {weights / GIB:.1f} GiB per rank but "
            f"{hardware.name} offers {usable / GIB:.1f} GiB (hardware.memory_gib x "
            f"engine.gpu_memory_utilization - engine.activation_reserve_gib): no room for a KV cache; "
            f"raise engine.tp or use engine.tp=auto")
    return KvPlan(tp, block_size, int(room // (per_token * block_size)), weights, per_token)


def _rank_bytes(hardware: HardwareSpec, model: ModelSpec, tp: int, gpu_memory_utilization: float,
                activation_reserve_bytes: float, proposer: ModelSpec | None,
                proposer_weight_bytes: int) -> tuple[float, int, float]:
    """(weight bytes, KV bytes per token, usable bytes) of one rank."""
    weights = (model.weight_bytes() + proposer_weight_bytes) / tp
    per_token = kv_bytes_per_token_per_rank(model, tp)
    if proposer is not None:
        per_token += kv_bytes_per_token_per_rank(proposer, tp)
    return weights, per_token, hardware.memory_bytes * gpu_memory_utilization - activation_reserve_bytes


def memory_use(hardware: HardwareSpec, model: ModelSpec, tp: int, tokens: int, *, block_size: int,
               gpu_memory_utilization: float, activation_reserve_bytes: float,
               proposer: ModelSpec | None = None, proposer_weight_bytes: int = 0) -> float:
    """(weights + the KV blocks of one ``tokens``-long request) per rank over the usable memory: the
    check :func:`plan_kv` and the longest-request check make, as one number (<= 1: it fits)."""
    weights, per_token, usable = _rank_bytes(hardware, model, tp, gpu_memory_utilization, activation_reserve_bytes,
                                             proposer, proposer_weight_bytes)
    blocks = max(1, -(-tokens // block_size))
    return (weights + blocks * block_size * per_token) / usable


class KvCache:
    """Free-block count of one rank; owners (prefilling requests, decode rows) track what they hold."""

    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free = num_blocks

    @property
    def used(self) -> int:
        return self.num_blocks - self.free

    def blocks(self, tokens: int) -> int:
        return -(-tokens // self.block_size)
