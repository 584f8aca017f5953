"""Random weights and a KV cache for a :class:`~nfpsim.config.ModelSpec`: what a validation forward runs on.

Legend: H = hidden size, Hq / Hkv = query / KV heads, D / Dv = key / value head dims, F = dense FFN width,
E = experts, Fe = expert FFN width, Fs = shared-expert FFN width, V = vocabulary, B = sequences,
S = cache slots per sequence.

Weights are drawn ``N(0, 1/fan_in)`` so activations keep unit scale through any number of layers; norm
weights are ``1 + N(0, 0.2)`` so a forward that applied the wrong one would not agree with the other
implementation. Latency does not depend on the values (device METHOD.md: never time zeros).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nfpsim.config import ModelSpec
from nfpsim.errors import ConfigError

ROPE_THETA = 10000.0


def generator(device, seed: int) -> torch.Generator | None:
    """A seeded generator on ``device`` (none on ``meta``, where tensors have shapes but no values)."""
    return None if torch.device(device).type == "meta" else torch.Generator(device=device).manual_seed(seed)


def _randn(shape: tuple[int, ...], std: float, generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=device, dtype=dtype).mul_(std)


@dataclass
class LayerWeights:
    """One decoder layer; the FFN is dense (``gate_up``/``down``) or MoE (``router``/``experts_*``, and
    ``shared_*`` when the model has shared experts)."""

    attn_norm: torch.Tensor  # [H]
    qkv: torch.Tensor  # [Hq*D + Hkv*(D + Dv), H]: q rows, then k rows, then v rows
    o: torch.Tensor  # [H, Hq*Dv]
    ffn_norm: torch.Tensor  # [H]
    gate_up: torch.Tensor | None = None  # [2F, H], gate rows first
    down: torch.Tensor | None = None  # [H, F]
    router: torch.Tensor | None = None  # [E, H]
    experts_gate_up: torch.Tensor | None = None  # [E, 2Fe, H]
    experts_down: torch.Tensor | None = None  # [E, H, Fe]
    shared_gate_up: torch.Tensor | None = None  # [2Fs, H]
    shared_down: torch.Tensor | None = None  # [H, Fs]

    @property
    def is_moe(self) -> bool:
        return self.router is not None

    def by_op(self) -> dict[str, tuple[torch.Tensor, ...]]:
        """The weights each op of :func:`nfpsim.shapes.decompose` streams, by op name."""
        named = {"qkv_proj": (self.qkv,), "o_proj": (self.o,), "gate_up_proj": (self.gate_up,),
                 "down_proj": (self.down,), "router": (self.router,),
                 "experts": (self.experts_gate_up, self.experts_down),
                 "shared_gate_up_proj": (self.shared_gate_up,), "shared_down_proj": (self.shared_down,)}
        return {name: ws for name, ws in named.items() if ws[0] is not None}


@dataclass
class ModelWeights:
    model: ModelSpec
    embed: torch.Tensor  # [V, H]
    final_norm: torch.Tensor  # [H]
    lm_head: torch.Tensor  # [V, H]; the embedding itself when the model ties them
    layers: list[LayerWeights]

    @classmethod
    def random(cls, model: ModelSpec, device, dtype: torch.dtype, seed: int = 0) -> ModelWeights:
        if model.is_mla:
            raise ConfigError(f"model={model.name}: multi-head latent attention has no validation forward "
                              f"(our attention kernel runs it, but no vendor path exists)")
        g = generator(device, seed)
        h, hq, hkv, d, dv = model.hidden_size, model.num_heads, model.num_kv_heads, model.head_dim, model.v_head_dim

        def w(*shape: int) -> torch.Tensor:  # a weight [..., N, K]: std 1/sqrt(K)
            return _randn(shape, shape[-1] ** -0.5, g, device, dtype)

        def norm() -> torch.Tensor:
            return _randn((h,), 0.2, g, device, dtype).add_(1.0)

        layers = []
        for i in range(model.num_layers):
            layer = LayerWeights(attn_norm=norm(), qkv=w(hq * d + hkv * (d + dv), h), o=w(h, hq * dv),
                                 ffn_norm=norm())
            if i < model.num_dense_layers:
                layer.gate_up, layer.down = w(2 * model.ffn_size, h), w(h, model.ffn_size)
            else:
                e, fe = model.num_experts, model.expert_ffn_size
                layer.router, layer.experts_gate_up, layer.experts_down = w(e, h), w(e, 2 * fe, h), w(e, h, fe)
                if model.num_shared_experts:
                    layer.shared_gate_up = w(2 * model.shared_ffn_size, h)
                    layer.shared_down = w(h, model.shared_ffn_size)
            layers.append(layer)
        embed = _randn((model.vocab_size, h), 1.0, g, device, dtype)
        lm_head = embed if model.tie_embeddings else w(model.vocab_size, h)
        return cls(model, embed, norm(), lm_head, layers)

    def bytes_by_op(self) -> dict[str, int]:
        """Weight bytes each GEMM/MoE op streams per forward (all layers), by op name."""
        totals: dict[str, int] = {"lm_head": _nbytes(self.lm_head)}
        for layer in self.layers:
            for name, weights in layer.by_op().items():
                totals[name] = totals.get(name, 0) + sum(_nbytes(t) for t in weights)
        return totals


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass
class KVCache:
    """Per-layer caches ``k [B, S, Hkv, D]``, ``v [B, S, Hkv, Dv]`` filled with random keys and values,
    and the rotary tables ``cos, sin [S, D/2]`` of absolute positions ``0..S-1``."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    cos: torch.Tensor
    sin: torch.Tensor

    @property
    def batch(self) -> int:
        return self.k[0].shape[0]

    @property
    def slots(self) -> int:
        return self.k[0].shape[1]

    @classmethod
    def random(cls, model: ModelSpec, batch: int, slots: int, device, dtype: torch.dtype, seed: int = 1) -> KVCache:
        g = generator(device, seed)
        hkv, d, dv = model.num_kv_heads, model.head_dim, model.v_head_dim
        k = [_randn((batch, slots, hkv, d), 1.0, g, device, dtype) for _ in range(model.num_layers)]
        v = [_randn((batch, slots, hkv, dv), 1.0, g, device, dtype) for _ in range(model.num_layers)]
        half = d // 2
        inv_freq = ROPE_THETA ** (-torch.arange(half, device=device, dtype=torch.float32) / half)
        angles = torch.arange(slots, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
        return cls(k, v, angles.cos().to(dtype), angles.sin().to(dtype))

    def clone(self) -> KVCache:
        return KVCache([t.clone() for t in self.k], [t.clone() for t in self.v], self.cos, self.sin)

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(t) for t in self.k + self.v)
