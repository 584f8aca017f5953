"""One real decode forward of ``B`` sequences x ``M`` positions over ``L`` cached tokens, in two implementations.

Legend: B = sequences, M = new positions per sequence, T = B*M tokens, L = cached context (uniform over
the batch), H = hidden size, Hq / Hkv = query / KV heads, D / Dv = key / value head dims, V = vocabulary.

The forward runs exactly the ops :func:`nfpsim.shapes.decompose` prices for
``ForwardShape.uniform(B, M, L)``, each one step named by its op, at the shape decompose gives it:

    embedding -> [plain RMSNorm] -> per layer: qkv_proj, rope_kv_write, attention, o_proj, add_norm,
    gate_up_proj, act_mul, down_proj (dense) | router, router_topk, experts (+ shared_*) (MoE), add_norm
    -> lm_head on all T positions -> sampling (greedy argmax)

Norms: the first norm (on the embedding) has nothing to add, the last (before the LM head) adds the
final FFN output, as vLLM runs them; decompose places the plain norm last instead. The counts (2 per
layer add+norm, one plain norm, priced as ``final_norm``) and the bytes agree.

Implementations:
- ``triton``: our kernels (decode_gemm, rotary_kv_write, decode_attention, fused_add_rmsnorm, silu_and_mul,
  fused_moe) with the tiles of the :class:`~nfpsim.config.KernelPreset`. Where the preset leaves split-K or
  split-KV to the host (0), the split is the one the latency model finds fastest for that shape
  (:mod:`nfpsim.validation.splits`), so measurement and prediction describe one implementation.
- ``vendor``: plain eager PyTorch, the kernels :func:`decompose` prices with ``glue="eager"``: torch GEMMs
  (cuBLAS), fp32-upcast RMSNorm (eight kernels), rotate-half RoPE (five per tensor) with cos/sin rows
  gathered once per forward, cache writes by index, MoE through ``torch._grouped_mm`` (the same code
  calibration times), and ``scaled_dot_product_attention`` with no backend forced (cuDNN on Hopper). The
  ``g`` query heads of each KV head are passed as ``g*M`` rows of one head, with an explicit
  bottom-right causal mask over those rows when there are several positions (torch's ``is_causal`` is
  top-left aligned, wrong for queries at the end of a cache); bidirectional blocks use no mask.
Both share embedding (a gather), routing (softmax + top-k in torch) and sampling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from nfpsim.kernels import vendor
from nfpsim.config import KernelPreset, ModelSpec
from nfpsim.kernels import decode_attention, decode_gemm, fused_add_rmsnorm, fused_moe, rmsnorm, rotary_kv_write, \
    route, silu_and_mul
from nfpsim.latency.constants import LatencyConstants
from nfpsim.shapes import AttentionShape, ForwardShape, GemmShape, Op, decompose
from nfpsim.validation.model import KVCache, ModelWeights, generator
from nfpsim.validation.splits import attention_splits, gemm_split

IMPLEMENTATIONS = ("triton", "vendor")


# ----------------------------------------------------------------------------------------------------
# The two implementations of each op, one interface. Methods taking an Op resolve its static choices
# once (tiles, splits) and return the call the forward's step makes.
# ----------------------------------------------------------------------------------------------------


class TritonOps:
    def __init__(self, kernels: KernelPreset, constants: LatencyConstants):
        self.kernels, self.constants = kernels, constants
        self.splits: dict[str, int] = {}

    def gemm(self, op: Op) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        tile = self.kernels.gemm.select(op.shape.tokens)
        split = self.splits[op.name] = gemm_split(op.shape, self.kernels, self.constants)
        return lambda x, w: decode_gemm(x, w, block_m=tile.block_m, block_n=tile.block_n, block_k=tile.block_k,
                                        split_k=split)

    def attention(self, op: Op, causal: bool) -> Callable[..., torch.Tensor]:
        shape: AttentionShape = op.shape
        attn = self.kernels.attention
        split = self.splits[op.name] = attention_splits(shape, self.kernels, self.constants)

        def run(q, k_cache, v_cache, context_lens, mask):  # q [B, M, Hq, D] -> [T, Hq*Dv]
            o = decode_attention(q, k_cache, v_cache, context_lens, causal=causal, block_q=attn.block_q,
                                 block_kv=attn.block_kv, num_splits=split, pack_gqa=attn.pack_gqa)
            return o.reshape(q.shape[0] * q.shape[1], -1)

        return run

    @staticmethod
    def norm(x, w):
        return rmsnorm(x, w, vendor.RMS_EPS)

    @staticmethod
    def add_norm(x, residual, w):
        return fused_add_rmsnorm(x, residual, w, vendor.RMS_EPS)

    @staticmethod
    def act_mul(gate_up):
        return silu_and_mul(gate_up)

    @staticmethod
    def rope_kv_write(q, k, v, k_cache, v_cache, state, cache):
        return rotary_kv_write(q, k, v, cache.cos, cache.sin, k_cache, v_cache, state.start_pos)

    def experts(self, x, weights, ids, w_gate_up, w_down, num_experts: int):
        moe = self.kernels.moe
        return fused_moe(x, w_gate_up, w_down, weights, ids, block_m=moe.block_m, block_n=moe.block_n,
                         block_k=moe.block_k)


class VendorOps:
    """Plain eager PyTorch, one kernel per torch op (what :func:`decompose` prices with ``glue="eager"``)."""

    def __init__(self):
        self.splits: dict[str, int] = {}  # cuBLAS and SDPA choose their own

    @staticmethod
    def gemm(op: Op) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return lambda x, w: torch.matmul(x, w.t())

    @staticmethod
    def attention(op: Op, causal: bool) -> Callable[..., torch.Tensor]:
        kv_len = op.shape.kv_len

        def run(q, k_cache, v_cache, context_lens, mask):  # q [B, Hq, M, D] -> [T, Hq*Dv]
            # [B, Hkv, S, D] views of the [B, S, Hkv, D] cache (strided, D dense)
            k, v = k_cache[:, :kv_len].transpose(1, 2), v_cache[:, :kv_len].transpose(1, 2)
            o = vendor.attention(q, k, v, mask)  # [B, Hq, M, Dv]
            return o.transpose(1, 2).reshape(q.shape[0] * q.shape[2], -1)  # a copy once M > 1

        return run

    norm = staticmethod(vendor.rms_norm)
    add_norm = staticmethod(vendor.add_rms_norm)
    act_mul = staticmethod(vendor.silu_mul)

    @staticmethod
    def rope_kv_write(q, k, v, k_cache, v_cache, state, cache):
        return vendor.rotary_kv_write(q, k, v, k_cache, v_cache, state.cos, state.sin, state.positions, state.rows)

    @staticmethod
    def experts(x, weights, ids, w_gate_up, w_down, num_experts: int):
        return vendor.grouped_moe(x, ids, weights, w_gate_up, w_down, torch.empty_like(x))


# The kernels a multi-kernel step launches, as decompose names them (``prefix.*`` covers every kernel of
# the step); otherwise a step launches exactly the op it is named for. Routing is torch ops either way.
ROUTING_STEPS = {"router_topk": ("router_upcast", "router_softmax", "router_topk", "router_sum", "router_div",
                                 "router_ids")}
EAGER_STEPS = {
    "forward_setup": ("positions", "rope_cos", "rope_sin", "mask_compare", "mask_fold"),
    "final_norm": ("final_norm.*",),
    "add_norm": ("residual_add", "norm.*"),
    "rope_kv_write": ("rope_q.*", "rope_k.*", "cache_write_k", "cache_write_v"),
    "attention": ("q_fold_copy", "mask_bias.*", "attention", "attn_out_copy"),
    "act_mul": ("act_mul.*",),
    "shared_act_mul": ("shared_act_mul.*",),
}


def launched_ops(step: str, glue: str, priced: dict[str, Op]) -> tuple[str, ...]:
    """The priced ops a step named ``step`` launches under ``glue``."""
    patterns = ROUTING_STEPS.get(step) or (EAGER_STEPS.get(step) if glue == "eager" else None)
    if patterns is None:
        return (step,)
    out = []
    for pattern in patterns:
        if pattern.endswith(".*"):
            out += [name for name in priced if name.startswith(pattern[:-1])]
        elif pattern in priced:
            out.append(pattern)
    return tuple(out)


# ----------------------------------------------------------------------------------------------------
# The forward
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One step of the forward: ``op`` names the op of :func:`nfpsim.shapes.decompose` it runs (fused glue) or
    the group of eager kernels it launches, listed in ``ops``."""

    op: str
    layer: int | None
    run: Callable[[], None]
    ops: tuple[str, ...] = ()


class DecodeForward:
    """A built forward: calling it runs every step (CUDA-graph capturable: no host syncs, every shape fixed
    at build). ``logits [T, V]`` and ``tokens [T]`` hold the last run's results."""

    def __init__(self, implementation: str, model: ModelSpec, shape: ForwardShape, steps: tuple[Step, ...],
                 state: SimpleNamespace, splits: dict[str, int]):
        self.implementation, self.model, self.shape = implementation, model, shape
        self.steps, self.state, self.splits = steps, state, splits

    def __call__(self) -> None:
        for step in self.steps:
            step.run()

    @property
    def logits(self) -> torch.Tensor:
        return self.state.logits

    @property
    def tokens(self) -> torch.Tensor:
        return self.state.tokens

    def op_calls(self, op: str) -> list[Callable[[], None]]:
        """Every instance of one op (one per layer that has it), to time it alone on the forward's buffers."""
        return [step.run for step in self.steps if step.op == op]


def build_forward(weights: ModelWeights, cache: KVCache, implementation: str, kernels: KernelPreset | None, *,
                  batch: int, positions: int, context: int, constants: LatencyConstants | None = None,
                  seed: int = 0) -> DecodeForward:
    """The forward of ``batch`` sequences x ``positions`` new tokens over ``context`` cached ones.

    ``cache`` must hold ``batch`` sequences of at least ``context + positions`` slots; the new positions'
    keys and values are written at ``[context, context + positions)`` on every run (idempotent).
    ``constants`` prices the split choices of the triton implementation (:func:`nfpsim.validation.splits.constants_of`).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r}: allowed: {', '.join(IMPLEMENTATIONS)}")
    if cache.batch != batch or cache.slots < context + positions:
        raise ValueError(f"cache: {cache.batch} sequences x {cache.slots} slots cannot hold batch {batch} x "
                         f"{context + positions} tokens")
    if implementation == "triton" and (kernels is None or constants is None):
        raise ValueError("implementation=triton needs the kernel preset and latency constants (its splits)")
    impl = TritonOps(kernels, constants) if implementation == "triton" else VendorOps()
    builder = _Builder(weights, cache, impl, "eager" if implementation == "vendor" else "fused", batch, positions,
                       context, seed)
    builder.head()
    for i in range(weights.model.num_layers):
        builder.layer(i)
    builder.tail()
    return DecodeForward(implementation, weights.model, builder.shape, tuple(builder.steps), builder.s,
                         dict(impl.splits))


class _Builder:
    """Appends the forward's steps in launch order. Each step is a closure over the shared state ``s``
    (the forward's live tensors) and checks that :func:`nfpsim.shapes.decompose` prices what it launches."""

    def __init__(self, weights: ModelWeights, cache: KVCache, impl: TritonOps | VendorOps, glue: str, batch: int,
                 positions: int, context: int, seed: int):
        model = weights.model
        self.weights, self.cache, self.impl, self.glue, self.model = weights, cache, impl, glue, model
        self.batch, self.positions, self.context = batch, positions, context
        self.shape = ForwardShape.uniform(batch, positions, context)
        self.priced = {op.name: op for op in decompose(model, self.shape, glue)}
        self.device = weights.embed.device
        self.causal = model.attention_mask == "causal"
        g = generator(self.device, seed)
        b, m, ctx = self.batch, self.positions, self.context
        self.s = SimpleNamespace(
            ids=torch.randint(0, model.vocab_size, (b, m), generator=g, device=self.device),
            start_pos=torch.full((b,), ctx, dtype=torch.int32, device=self.device),
            context_lens=torch.full((b,), ctx + m, dtype=torch.int32, device=self.device),
        )
        self.steps: list[Step] = []
        self.gemm = {name: impl.gemm(op) for name, op in self.priced.items() if isinstance(op.shape, GemmShape)}
        self.attention = impl.attention(self.priced["attention"], self.causal)

    def add(self, op: str, layer: int | None, run: Callable[[], None]) -> None:
        ops = launched_ops(op, self.glue, self.priced)
        if not ops or any(name not in self.priced for name in ops):
            raise AssertionError(f"the forward runs {op!r}, which decompose() does not price")
        self.steps.append(Step(op, layer, run, ops))

    def head(self) -> None:
        """The embedding, the eager forward's per-forward tables, and the first norm."""
        s, weights, impl = self.s, self.weights, self.impl

        def embed():
            s.residual = F.embedding(s.ids.view(-1), weights.embed)  # [T, H]

        def first_norm():
            s.x = impl.norm(s.residual, weights.layers[0].attn_norm)

        self.add("embedding", None, embed)
        if self.glue == "eager":
            self.add("forward_setup", None, self._eager_tables())
        else:
            s.mask = None
        self.add("final_norm", None, first_norm)

    def _eager_tables(self) -> Callable[[], None]:
        s, cache, device, m = self.s, self.cache, self.device, self.positions
        new_positions = torch.arange(m, device=device)  # static buffers: no kernel per run
        s.rows = torch.arange(self.batch, device=device)[:, None]
        key_positions = torch.arange(self.context + m, device=device)
        cos_full, sin_full = torch.cat((cache.cos, cache.cos), -1), torch.cat((cache.sin, cache.sin), -1)
        group = self.model.num_heads // self.model.num_kv_heads
        folded_mask = self.causal and m > 1

        def setup():  # absolute positions, rotary rows gathered once, the folded causal mask
            s.positions = s.start_pos[:, None] + new_positions  # [B, M]
            s.cos, s.sin = cos_full[s.positions], sin_full[s.positions]  # [B, M, D]
            s.mask = vendor.folded_causal_mask(s.positions[0], key_positions, group) if folded_mask else None

        return setup

    def layer(self, i: int) -> None:
        """Attention, then the dense or MoE FFN, each behind its add+norm."""
        s, impl, cache, gemm, attention = self.s, self.impl, self.cache, self.gemm, self.attention
        b, m = self.batch, self.positions
        hq, hkv, d, dv = self.model.num_heads, self.model.num_kv_heads, self.model.head_dim, self.model.v_head_dim
        layers = self.weights.layers
        lw = layers[i]
        next_norm = layers[i + 1].attn_norm if i + 1 < len(layers) else self.weights.final_norm

        def qkv():
            s.qkv = gemm["qkv_proj"](s.x, lw.qkv)  # [T, (Hq + Hkv) D + Hkv Dv]

        def rope_kv():
            qkv_bm = s.qkv.unflatten(0, (b, m))
            q = qkv_bm[..., : hq * d].unflatten(-1, (hq, d))
            k = qkv_bm[..., hq * d: (hq + hkv) * d].unflatten(-1, (hkv, d))
            v = qkv_bm[..., (hq + hkv) * d:].unflatten(-1, (hkv, dv))
            # q rotated [B, M, Hq, D]; k, v into the cache at positions [L, L + M)
            s.q = impl.rope_kv_write(q, k, v, cache.k[i], cache.v[i], s, cache)

        def attend():
            s.attn = attention(s.q, cache.k[i], cache.v[i], s.context_lens, s.mask)  # [T, Hq*Dv]

        def o_proj():
            s.y = gemm["o_proj"](s.attn, lw.o)

        def pre_ffn_norm():
            s.x, s.residual = impl.add_norm(s.y, s.residual, lw.ffn_norm)

        def post_ffn_norm():
            s.x, s.residual = impl.add_norm(s.y, s.residual, next_norm)

        for op, run in (("qkv_proj", qkv), ("rope_kv_write", rope_kv), ("attention", attend), ("o_proj", o_proj),
                        ("add_norm", pre_ffn_norm)):
            self.add(op, i, run)
        if lw.is_moe:
            self._moe(i, lw)
        else:
            self._dense(i, lw)
        self.add("add_norm", i, post_ffn_norm)

    def _dense(self, i: int, lw) -> None:
        s, impl, gemm = self.s, self.impl, self.gemm

        def gate_up():
            s.gate_up = gemm["gate_up_proj"](s.x, lw.gate_up)

        def act():
            s.act = impl.act_mul(s.gate_up)

        def down():
            s.y = gemm["down_proj"](s.act, lw.down)

        self.add("gate_up_proj", i, gate_up)
        self.add("act_mul", i, act)
        self.add("down_proj", i, down)

    def _moe(self, i: int, lw) -> None:
        s, impl, gemm, model = self.s, self.impl, self.gemm, self.model

        def router():
            s.router_logits = gemm["router"](s.x, lw.router)  # [T, E]

        def topk():
            s.topk_weights, s.topk_ids = route(s.router_logits, model.top_k)

        def routed():
            s.y = impl.experts(s.x, s.topk_weights, s.topk_ids, lw.experts_gate_up, lw.experts_down,
                               model.num_experts)

        self.add("router", i, router)
        self.add("router_topk", i, topk)
        self.add("experts", i, routed)
        if lw.shared_gate_up is not None:
            self._shared_experts(i, lw)

    def _shared_experts(self, i: int, lw) -> None:
        s, impl, gemm = self.s, self.impl, self.gemm

        def shared_gate_up():
            s.shared_gate_up = gemm["shared_gate_up_proj"](s.x, lw.shared_gate_up)

        def shared_act():
            s.shared_act = impl.act_mul(s.shared_gate_up)

        def shared_down():  # the add of the two expert outputs is one unpriced [T, H] pass
            s.y = s.y + gemm["shared_down_proj"](s.shared_act, lw.shared_down)

        self.add("shared_gate_up_proj", i, shared_gate_up)
        self.add("shared_act_mul", i, shared_act)
        self.add("shared_down_proj", i, shared_down)

    def tail(self) -> None:
        """The LM head on every position, then greedy sampling."""
        s, gemm, lm = self.s, self.gemm, self.weights.lm_head

        def lm_head():
            s.logits = gemm["lm_head"](s.x, lm)  # [T, V]

        def sample():
            s.tokens = s.logits.argmax(dim=-1)

        self.add("lm_head", None, lm_head)
        self.add("sampling", None, sample)
