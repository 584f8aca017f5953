"""nfpsim's own vendor reference forward (the one ``nfpsim-validate`` times on a GPU), built on ``meta``.

``nfpsim-nfp forward=examples.reference_forward:builder`` prices it from the kernels it launches, next to
``nfpsim-nfp`` on the same model, which prices ``nfpsim.shapes.decompose``'s description of it.
``make_builder("qwen3_30b_a3b")`` gives the builder of another model config (MLA models have none).
"""

from __future__ import annotations

import functools

import torch

from nfpsim.config import load_model
from nfpsim.validation.forward import build_forward
from nfpsim.validation.model import KVCache, ModelWeights


@functools.lru_cache(maxsize=2)
def _weights(model: str) -> ModelWeights:
    return ModelWeights.random(load_model(model), "meta", torch.bfloat16)


def make_builder(model: str = "llama3_8b"):
    def build(batch: int, positions: int, context: int):
        weights = _weights(model)
        cache = KVCache.random(weights.model, batch, context + positions, "meta", torch.bfloat16)
        forward = build_forward(weights, cache, "vendor", None, batch=batch, positions=positions, context=context)
        return forward, ()

    build.__qualname__ = f"make_builder({model!r})"
    return build


builder = make_builder("llama3_8b")
