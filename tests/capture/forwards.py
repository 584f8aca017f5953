"""Builders for the ``forward=`` tests: a tiny eager decoder, and ones that break the contract."""

import torch

from nfpsim.config import ModelSpec

TINY = ModelSpec("tiny", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16, ffn_size=128,
                 vocab_size=100, max_context=8192)


def tiny(batch, positions, context):
    from examples.llama_eager import Decoder

    with torch.device("meta"):
        decoder = Decoder(TINY)
    shape = (batch, TINY.num_kv_heads, context + positions, TINY.head_dim)
    caches = [(torch.empty(shape, dtype=torch.bfloat16, device="meta"),) * 2 for _ in range(TINY.num_layers)]
    ids = torch.zeros((batch, positions), dtype=torch.long, device="meta")
    return decoder, (ids, caches, context)


def raises(batch, positions, context):
    raise RuntimeError("no weights here")


def wrong_return(batch, positions, context):
    return torch.nn.Linear(2, 2)


def cuda_only(batch, positions, context):
    x = torch.empty(4, 8, device="meta")
    return (lambda t: torch.ops.aten._cslt_compress(t)), (x,)  # cuSPARSELt: CUDA kernels only, no meta


def data_dependent(batch, positions, context):
    x = torch.empty(4, device="meta")
    return (lambda t: t[t > 0]), (x,)


not_callable = 3
