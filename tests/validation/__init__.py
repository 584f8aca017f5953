"""Helpers: tiny models every validation test shares, and a timer that reports the latency model's own times."""

import dataclasses

from nfpsim.config import ModelSpec, load_kernels

TINY = ModelSpec(name="tiny", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16, ffn_size=128,
                 vocab_size=256, max_context=4096)
TINY_MOE = dataclasses.replace(TINY, name="tiny_moe", num_experts=4, top_k=2, expert_ffn_size=32, num_dense_layers=0)
TINY_BIDIRECTIONAL = dataclasses.replace(TINY, name="tiny_bidirectional", attention_mask="bidirectional")
# One dense layer first, then MoE layers with a shared expert (DeepSeek-style layout, ordinary attention).
TINY_SHARED = dataclasses.replace(TINY, name="tiny_shared", num_layers=3, num_experts=4, top_k=2,
                                  expert_ffn_size=32, num_shared_experts=1, num_dense_layers=1)


def small_k_tiles():
    """The triton preset with 16-wide K and KV tiles, so split-K and split-KV have room on tiny shapes."""
    k = load_kernels("triton")
    tile = dataclasses.replace(k.gemm.tiles[0], block_k=16)
    return dataclasses.replace(k, gemm=dataclasses.replace(k.gemm, tiles=(tile,)),
                               attention=dataclasses.replace(k.attention, block_kv=16))


class ModelTimer:
    """A timer that 'measures' each whole forward as ``time_of(forward)`` without running a kernel:
    exact scenarios. Per-op calls (profiling) get ``op_s`` each."""

    def __init__(self, time_of, op_s=1e-6):
        self.time_of, self.op_s = time_of, op_s

    def __call__(self, calls):
        first = calls[0]
        if hasattr(first, "shape"):  # a DecodeForward
            return self.time_of(first), 0.0
        return self.op_s, 0.0
