"""Hugging Face ``transformers`` decoders, priced by nfpsim from the kernels they really launch.

Llama-3-8B and Qwen3-30B-A3B are built from their published config values in code (no hub download,
no weights: every parameter lives on ``meta``), run with their own ``DynamicCache`` prefilled with
``context`` tokens, SDPA attention, and Qwen3-MoE's experts through ``torch._grouped_mm``
(``experts_implementation="grouped_mm"``). Needs ``pip install -e .[dev]`` (transformers).

Builders for ``nfpsim-nfp forward=examples.hf_decoders:llama3_8b`` (or ``:qwen3_30b_a3b``): each returns
``(model, (), kwargs)`` for one forward of ``batch`` x ``positions`` new tokens over ``context`` cached.

``python examples/hf_decoders.py [hardware]`` (from the repository root) prints the NFP of the HF Llama
forward next to nfpsim's own reference forward of the same shapes (the vendor path nfpsim-validate runs),
priced from decompose and captured, and the HF forward's kernels per family.
"""

from __future__ import annotations

import functools
import inspect
import sys

import torch


def llama3_8b_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                       rope_theta=500000.0, rms_norm_eps=1e-5, attn_implementation="sdpa")


def qwen3_30b_a3b_config():
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                          num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                          num_experts=128, num_experts_per_tok=8, norm_topk_prob=True,
                          max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6,
                          attn_implementation="sdpa", experts_implementation="grouped_mm")


@functools.lru_cache(maxsize=2)
def _model(name: str):
    from transformers import LlamaForCausalLM, Qwen3MoeForCausalLM

    config = {"llama3_8b": llama3_8b_config, "qwen3_30b_a3b": qwen3_30b_a3b_config}[name]()
    cls = LlamaForCausalLM if name == "llama3_8b" else Qwen3MoeForCausalLM
    with torch.device("meta"):
        return cls(config).to(torch.bfloat16).eval()


def _build(name: str, batch: int, positions: int, context: int):
    from transformers import DynamicCache

    model = _model(name)
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    cache = DynamicCache(config=config)
    for layer in range(config.num_hidden_layers):  # the context already cached (not part of the forward)
        kv = torch.empty(batch, config.num_key_value_heads, context, head_dim, dtype=torch.bfloat16, device="meta")
        cache.update(kv, kv, layer)
    ids = torch.zeros(batch, positions, dtype=torch.long, device="meta")
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return model, (), {"input_ids": ids, cache_kw: cache, "use_cache": True}


def llama3_8b(batch: int, positions: int, context: int):
    return _build("llama3_8b", batch, positions, context)


def qwen3_30b_a3b(batch: int, positions: int, context: int):
    return _build("qwen3_30b_a3b", batch, positions, context)


def compare(hardware: str = "h200", batch: int = 1, context: int = 4096, eps: float = 0.1) -> None:
    """NFP of the HF Llama forward next to nfpsim's reference forward, and their kernels per family."""
    import nfpsim
    from nfpsim.capture.builder import forward_ops
    from nfpsim.config import load_model
    from nfpsim.nfp import analyze

    latency = nfpsim.latency_model(hardware=hardware, kernels="vendor")
    model = load_model("llama3_8b")
    runs = {"nfpsim reference, decompose": None,
            "nfpsim reference, captured": forward_ops("examples.reference_forward:builder", batch, context),
            "HF transformers LlamaForCausalLM": forward_ops("examples.hf_decoders:llama3_8b", batch, context)}
    print(f"Llama-3-8B on {hardware}, vendor kernels, {latency.kind} latency, B={batch}, L={context}, eps={eps}")
    for name, ops in runs.items():
        report = analyze(latency, model, batch=batch, context=context, eps=eps, forward=ops, name=name)
        t = dict(zip(report.positions, report.forward.latency_s))
        print(f"  {name:<36} NFP {report.forward.nfp.nfp:>4}   t(M=1) {t[1] * 1e3:7.3f} ms   "
              f"t(M=2) {t[2] * 1e3:7.3f} ms   t(M=64) {t[64] * 1e3:7.3f} ms")
    fn, args, kwargs = llama3_8b(batch, 4, context)
    for family, totals in nfpsim.capture(fn, *args, **kwargs).by_family().items():
        print(f"  HF at M=4, {family:<10} {totals['kernels']:>5} kernels {totals['bytes'] / 1e6:10.1f} MB")


if __name__ == "__main__":
    compare(*sys.argv[1:2])
