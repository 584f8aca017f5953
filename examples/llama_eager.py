"""A plain eager Llama-style decoder, written the way research code usually is, to price with nfpsim.

The decoder is built from a :class:`~nfpsim.config.ModelSpec` on ``meta`` (no weights are allocated):
an fp32-upcast RMSNorm, rotate-half RoPE from a precomputed table, separate q/k/v/o and gate/up/down
``nn.Linear`` layers (cuBLAS), the new keys and values written into a preallocated cache, one
``F.scaled_dot_product_attention`` per layer (a bottom-right causal mask once a step has more than
one position, GQA passed through), and the LM head on every position.

Builder contract (what ``nfpsim-nfp forward=examples.llama_eager:builder`` calls): ``builder(batch,
positions, context) -> (fn, args)`` or ``(fn, args, kwargs)``, where ``fn(*args, **kwargs)`` runs one
forward of ``batch`` sequences, each with ``positions`` new tokens over ``context`` cached ones, on
tensors created on ``meta``. From Python::

    import nfpsim
    from examples.llama_eager import builder

    fn, args = builder(1, 4, 4096)
    graph = nfpsim.capture(fn, *args)
    print(graph.time(nfpsim.latency_model(hardware="h200", kernels="vendor")))

``make_builder("llama3_70b")`` gives the builder of another model config.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from nfpsim.config import ModelSpec, load_model

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
ROPE_THETA = 500000.0
RMS_EPS = 1e-5


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, dtype: torch.dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + RMS_EPS)
        return self.weight * x32.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec, dtype: torch.dtype):
        super().__init__()
        h, d = spec.hidden_size, spec.head_dim
        self.heads, self.kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, d
        self.q_proj = nn.Linear(h, spec.num_heads * d, bias=False, dtype=dtype)
        self.k_proj = nn.Linear(h, spec.num_kv_heads * d, bias=False, dtype=dtype)
        self.v_proj = nn.Linear(h, spec.num_kv_heads * d, bias=False, dtype=dtype)
        self.o_proj = nn.Linear(spec.num_heads * d, h, bias=False, dtype=dtype)

    def forward(self, x, cos, sin, k_cache, v_cache, start: int, mask):
        b, m, _ = x.shape
        q = self.q_proj(x).view(b, m, self.heads, self.head_dim).transpose(1, 2)  # [B, Hq, M, D]
        k = self.k_proj(x).view(b, m, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, m, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k_cache[:, :, start:start + m] = k  # the cache is [B, Hkv, S, D]
        v_cache[:, :, start:start + m] = v
        end = start + m
        out = F.scaled_dot_product_attention(q, k_cache[:, :, :end], v_cache[:, :, :end], attn_mask=mask,
                                             enable_gqa=self.heads != self.kv_heads)
        return self.o_proj(out.transpose(1, 2).reshape(b, m, -1))


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec, dtype: torch.dtype):
        super().__init__()
        h, f = spec.hidden_size, spec.ffn_size
        self.gate_proj = nn.Linear(h, f, bias=False, dtype=dtype)
        self.up_proj = nn.Linear(h, f, bias=False, dtype=dtype)
        self.down_proj = nn.Linear(f, h, bias=False, dtype=dtype)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, spec: ModelSpec, dtype: torch.dtype):
        super().__init__()
        self.input_layernorm = RMSNorm(spec.hidden_size, dtype)
        self.self_attn = Attention(spec, dtype)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, dtype)
        self.mlp = MLP(spec, dtype)

    def forward(self, x, cos, sin, k_cache, v_cache, start, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, k_cache, v_cache, start, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """``forward(ids [B, M], caches, start)``: logits ``[B, M, V]`` of M new tokens at positions
    ``start .. start + M - 1``; ``caches`` holds per layer ``(k, v)`` of ``[B, Hkv, S, D]``."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        dtype = DTYPES[spec.dtype]
        self.spec = spec
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList(Layer(spec, dtype) for _ in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, dtype)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False, dtype=dtype)
        half = spec.head_dim // 2
        inv_freq = ROPE_THETA ** (-torch.arange(half, dtype=torch.float32) / half)
        angles = torch.arange(spec.max_context, dtype=torch.float32)[:, None] * inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", angles.cos().to(dtype), persistent=False)
        self.register_buffer("sin", angles.sin().to(dtype), persistent=False)

    def forward(self, ids, caches, start: int):
        m = ids.shape[1]
        x = self.embed_tokens(ids)
        cos, sin = self.cos[start:start + m], self.sin[start:start + m]  # [M, D], broadcast over heads
        mask = None
        if m > 1:  # query i sees the cache and new keys 0..i: a bottom-right causal mask
            keys = torch.arange(start + m, device=ids.device)
            mask = keys[None, :] <= (torch.arange(m, device=ids.device)[:, None] + start)
        for layer, (k_cache, v_cache) in zip(self.layers, caches):
            x = layer(x, cos, sin, k_cache, v_cache, start, mask)
        return self.lm_head(self.norm(x))


@functools.lru_cache(maxsize=4)
def _decoder(name: str) -> Decoder:
    with torch.device("meta"):
        return Decoder(load_model(name))


def make_builder(model: str = "llama3_8b"):
    """The builder of the eager decoder of ``conf/model/<model>.yaml`` (dense models)."""

    def build(batch: int, positions: int, context: int):
        decoder = _decoder(model)
        spec = decoder.spec
        dtype = DTYPES[spec.dtype]
        slots = context + positions
        shape = (batch, spec.num_kv_heads, slots, spec.head_dim)
        caches = [(torch.empty(shape, dtype=dtype, device="meta"), torch.empty(shape, dtype=dtype, device="meta"))
                  for _ in range(spec.num_layers)]
        ids = torch.zeros((batch, positions), dtype=torch.long, device="meta")
        return decoder, (ids, caches, context)

    build.__qualname__ = f"make_builder({model!r})"
    return build


builder = make_builder("llama3_8b")
