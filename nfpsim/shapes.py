"""The one place that decomposes a decode forward into ops and counts their FLOPs and bytes.

Notation: ``B`` sequences, ``M`` positions per sequence, ``T = B*M`` tokens,
``L`` cached context, ``s`` bytes per element, ``H`` hidden size, ``F`` FFN size, ``E`` experts.

FLOPs and bytes here are *compulsory*: what the math needs with every weight and cached token read once.
What a real kernel adds on top (tile padding, re-streaming, split-K partials) is the latency model's job.
Every op is per tensor-parallel rank: with ``tp > 1`` heads, FFN columns and the vocabulary are sharded.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

from nfpsim.config import ModelSpec
from nfpsim.errors import ConfigError
from nfpsim.routing import expected_active_experts, inclusion_probabilities

# ----------------------------------------------------------------------------------------------------
# What one forward runs
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeqGroup:
    """``num_seqs`` sequences that each run ``positions`` new tokens over ``context`` cached ones.

    ``scored`` positions per sequence go through the LM head: all of them in parallel decoding (every
    position is verified or unmasked), only the last one of a prefill chunk that ends a prompt.
    """

    num_seqs: int
    positions: int
    context: int
    scored: int | None = None

    @property
    def num_scored(self) -> int:
        per_seq = self.positions if self.scored is None else self.scored
        return self.num_seqs * per_seq

    @property
    def num_tokens(self) -> int:
        return self.num_seqs * self.positions


@dataclass(frozen=True)
class ForwardShape:
    groups: tuple[SeqGroup, ...]
    tp: int = 1
    ep: int = 1  # expert parallelism: each MoE layer's experts spread whole over ep of the tp ranks

    @classmethod
    def uniform(cls, batch: int, positions: int, context: int, tp: int = 1) -> ForwardShape:
        """``batch`` sequences, each with ``positions`` new, all scored, over ``context`` cached tokens."""
        return cls((SeqGroup(batch, positions, context),), tp)

    @property
    def num_tokens(self) -> int:
        return sum(g.num_tokens for g in self.groups)

    @property
    def num_scored(self) -> int:
        return sum(g.num_scored for g in self.groups)


# ----------------------------------------------------------------------------------------------------
# Op shapes: each knows its compulsory FLOPs and bytes
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GemmShape:
    """``y[T, N] = x[T, K] @ W[N, K]^T``; ``batch`` independent such products in one launch (``bmm``),
    each with its own ``W``."""

    tokens: int
    n: int
    k: int
    bytes_per_element: int
    batch: int = 1

    @property
    def weight_bytes(self) -> int:
        return self.batch * self.n * self.k * self.bytes_per_element

    @property
    def flops(self) -> float:
        return 2.0 * self.batch * self.tokens * self.k * self.n

    @property
    def bytes(self) -> float:
        s = self.bytes_per_element
        return float(self.weight_bytes + s * self.batch * self.tokens * (self.k + self.n))


@dataclass(frozen=True)
class GroupedGemmShape:
    """One grouped GEMM launch (``torch._grouped_mm``): ``rows`` rows sorted by group, each group's rows
    times its own ``W[g] [N, K]``. Which groups the rows fall into is data (routing); the latency model
    assumes ``rows`` spread uniformly over the ``groups`` unless told otherwise."""

    rows: int
    n: int
    k: int
    groups: int
    bytes_per_element: int
    active_groups: float = 0.0  # groups the rows fall into, where known (0: expected under uniform routing)

    @property
    def flops(self) -> float:
        return 2.0 * self.rows * self.k * self.n

    @property
    def bytes(self) -> float:
        s = self.bytes_per_element
        touched = min(self.groups, self.rows)  # at least this many groups' weights could be read
        return float(touched * self.n * self.k * s + s * self.rows * (self.k + self.n))


@dataclass(frozen=True)
class MoeShape:
    """Routed experts of one MoE layer: gate_up ``[2F, H]`` and down ``[H, F]`` per expert."""

    tokens: int
    hidden: int
    ffn: int
    num_experts: int
    top_k: int
    routing_skew: float
    bytes_per_element: int

    @property
    def expert_bytes(self) -> int:
        return 3 * self.hidden * self.ffn * self.bytes_per_element

    @cached_property
    def inclusion(self) -> tuple[float, ...]:
        return inclusion_probabilities(self.num_experts, self.top_k, self.routing_skew)

    @cached_property
    def active_experts(self) -> float:
        """Expected distinct experts woken: their weights are what the layer streams."""
        return expected_active_experts(self.tokens, self.inclusion)

    @property
    def flops(self) -> float:
        return 2.0 * self.tokens * self.top_k * 3 * self.hidden * self.ffn

    @property
    def activation_bytes(self) -> float:
        """Per (token, choice): read x [H], write then read the gate_up row [2F], write then read the
        activated row [F], write the output row [H] that the combine reads back [H]; then one [H] row
        per token out of the combine."""
        s, h, f = self.bytes_per_element, self.hidden, self.ffn
        per_assignment = h + 2 * (2 * f) + 2 * f + 2 * h
        return float(s * (self.tokens * self.top_k * per_assignment + self.tokens * h))

    @property
    def bytes(self) -> float:
        return self.active_experts * self.expert_bytes + self.activation_bytes


@dataclass(frozen=True)
class AttentionShape:
    """``num_seqs`` sequences x ``positions`` queries over ``context + positions`` cached tokens.

    ``cache_dim`` counts the cached elements per token per KV head (``qk_dim + v_dim`` normally, the
    shared latent for MLA). ``causal`` is the causal-within-block mask of speculative verification;
    otherwise the block is bidirectional (diffusion LLMs).
    """

    num_seqs: int
    positions: int
    context: int
    q_heads: int
    kv_heads: int
    qk_dim: int
    v_dim: int
    cache_dim: int
    causal: bool
    bytes_per_element: int
    explicit_mask: bool = False  # an attn_mask tensor is passed (rules out FlashAttention in torch SDPA)
    folded_gqa: bool = False  # the caller passes the g query heads of a KV head as g*M rows of one head

    @property
    def kv_len(self) -> int:
        return self.context + self.positions

    @property
    def group(self) -> int:
        return self.q_heads // self.kv_heads

    @property
    def cache_bytes(self) -> int:
        """Every cached token of every KV head read once."""
        return self.num_seqs * self.kv_heads * self.kv_len * self.cache_dim * self.bytes_per_element

    @property
    def flops(self) -> float:
        # QK^T and PV: 2*(qk_dim + v_dim) per (query, key, head). Within a causal block query i sees
        # i+1 of the M new keys, (M+1)/2 on average.
        block_keys = (self.positions + 1) / 2 if self.causal else self.positions
        keys = self.context + block_keys
        return 2.0 * self.num_seqs * self.positions * self.q_heads * keys * (self.qk_dim + self.v_dim)

    @property
    def bytes(self) -> float:
        s = self.bytes_per_element
        q_and_out = self.num_seqs * self.positions * self.q_heads * (self.qk_dim + self.v_dim) * s
        return float(self.cache_bytes + q_and_out)


POINTWISE_KINDS = ("elementwise", "reduction", "copy", "gather", "scatter", "topk", "softmax", "cat", "fill")


@dataclass(frozen=True)
class PointwiseShape:
    """One memory-bound kernel (element-wise, reduction, copy, gather, ...): only bytes matter, its FLOPs
    never bind on a GPU. ``elements`` counts the output elements (the kernel's parallelism: tiny outputs
    launch few CTAs, which cannot pull full HBM bandwidth); 0 means unknown (priced as fully parallel).
    ``rows``: the token rows of a fused per-token kernel (kinds ``norm``, ``rotary``, ``act``), which the
    serving engines' kernels launch one CTA each; 0 for every other kind."""

    bytes: float
    elements: float = 0.0
    kind: str = "elementwise"
    rows: float = 0.0

    flops = 0.0


@dataclass(frozen=True)
class CollectiveShape:
    """An all-reduce of ``payload_bytes`` across ``tp`` ranks (ring: 2(tp-1)/tp of it on each link)."""

    payload_bytes: float
    tp: int

    flops = 0.0

    @property
    def bytes(self) -> float:
        return 2.0 * (self.tp - 1) / self.tp * self.payload_bytes


OpShape = GemmShape | GroupedGemmShape | MoeShape | AttentionShape | PointwiseShape | CollectiveShape


@dataclass(frozen=True)
class Op:
    """One op of a forward, run ``count`` times (once per layer that has it).

    ``module`` is the top-level group (qkv_proj, attention, o_proj, ffn, pointwise, embedding, lm_head,
    allreduce); ``name`` is unique within a forward and names the op's own curve.
    """

    name: str
    module: str
    shape: OpShape
    count: int = 1


# Top-level modules in the order a layer runs them; FFN ops are reported as sub-modules of "ffn".
MODULES = ("embedding", "qkv_proj", "attention", "o_proj", "ffn", "pointwise", "allreduce", "lm_head")
GLUE_STYLES = ("fused", "eager")
FP32 = 4


# ----------------------------------------------------------------------------------------------------
# Decomposition
# ----------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8192)
def decompose(model: ModelSpec, shape: ForwardShape, glue: str = "fused") -> tuple[Op, ...]:
    """The kernels of one forward of ``shape`` through ``model``, layers of the same kind merged by count.

    ``glue`` says how the implementation runs the work between GEMMs and attention: ``fused`` (one kernel
    per fused step: add+RMSNorm, rotary+KV write, SiLU*up) or ``eager`` (the kernels a plain PyTorch forward
    launches, one per torch op: fp32-upcast RMSNorm, rotate-half RoPE, cache copies, the attention output
    copy that a forward needs once it has more than one position per sequence; attention as one
    ``scaled_dot_product_attention`` call with the ``g`` query heads of each KV head folded into its rows,
    and an explicit causal mask when a causal forward has several positions).
    """
    if glue not in GLUE_STYLES:
        raise ConfigError(f"glue={glue!r}: allowed: {', '.join(GLUE_STYLES)}")
    tp = shape.tp
    _check_tp(model, tp, shape.ep)
    tokens, scored = shape.num_tokens, shape.num_scored
    if tokens <= 0:
        raise ConfigError(f"forward shape has no tokens: {shape}")
    s, h, n_layers = model.bytes_per_element, model.hidden_size, model.num_layers
    q_heads = model.num_heads // tp
    row = tokens * h * s  # one [T, H] activation
    eager = glue == "eager"

    # the gather reads int64 ids and the rows, writes the rows
    ops: list[Op] = [Op("embedding", "embedding", PointwiseShape(2.0 * row + 8 * tokens, tokens * h, "gather"))]
    if eager:
        ops += _eager_forward_setup(model, shape)
    # -- attention block, every layer --------------------------------------------------------------
    if eager:  # residual add, then RMSNorm; twice per layer (before attention, before the FFN)
        ops.append(Op("residual_add", "pointwise", PointwiseShape(3.0 * row, tokens * h), 2 * n_layers))
        ops += _eager_rmsnorm("norm", tokens, h, s, 2 * n_layers)
    else:  # fused add + RMSNorm: read x and the residual, write both
        ops.append(Op("add_norm", "pointwise", PointwiseShape(4.0 * row + h * s, tokens * h, "add_norm", tokens),
                      2 * n_layers))
    ops.extend(_attention_ops(model, shape, q_heads, eager))
    ops.append(Op("o_proj", "o_proj", GemmShape(tokens, h, q_heads * model.v_head_dim, s), n_layers))
    if tp > 1:
        ops.append(Op("allreduce", "allreduce", CollectiveShape(row, tp), 2 * n_layers))
    # -- FFN: dense layers and MoE layers ----------------------------------------------------------
    if model.num_dense_layers:
        ops.extend(_dense_ffn_ops(model, tokens, model.ffn_size // tp, model.num_dense_layers,
                                  ("gate_up_proj", "act_mul", "down_proj"), eager))
    if model.num_moe_layers:
        ops.extend(_moe_ops(model, tokens, tp, shape.ep, eager))
    # -- head --------------------------------------------------------------------------------------
    if eager:
        ops += _eager_rmsnorm("final_norm", tokens, h, s, 1)
    else:
        ops.append(Op("final_norm", "pointwise", PointwiseShape(2.0 * row + h * s, tokens * h, "norm", tokens)))
    if scored:
        vocab = -(-model.vocab_size // tp)
        ops.append(Op("lm_head", "lm_head", GemmShape(scored, vocab, h, s)))
        # greedy sampling: an argmax over each scored row of logits
        ops.append(Op("sampling", "lm_head", PointwiseShape(float(scored * vocab * s + 8 * scored), scored,
                                                            "reduction")))
    return tuple(ops)


def _eager_rmsnorm(prefix: str, tokens: int, h: int, s: int, count: int) -> list[Op]:
    """``w * (x.float() * rsqrt(x.float().pow(2).mean(-1) + eps)).to(dtype)``: eight torch kernels, the
    middle ones on fp32 ``[T, H]`` (``X`` elements) or ``[T, 1]``."""
    x = tokens * h
    kernels = (
        ("to_fp32", PointwiseShape(x * (s + FP32), x, "copy")),
        ("pow", PointwiseShape(x * 2 * FP32, x)),
        ("mean", PointwiseShape(x * FP32 + tokens * FP32, tokens, "reduction")),
        ("add_eps", PointwiseShape(tokens * 2 * FP32, tokens)),
        ("rsqrt", PointwiseShape(tokens * 2 * FP32, tokens)),
        ("scale", PointwiseShape(x * 2 * FP32 + tokens * FP32, x)),
        ("to_dtype", PointwiseShape(x * (FP32 + s), x, "copy")),
        ("weight", PointwiseShape(x * 2 * s + h * s, x)),
    )
    return [Op(f"{prefix}.{name}", "pointwise", shape, count) for name, shape in kernels]


def _eager_forward_setup(model: ModelSpec, shape: ForwardShape) -> list[Op]:
    """Once per forward: the absolute positions of the new tokens, rotary cos/sin rows gathered at them,
    and (causal, several positions) the explicit bottom-right causal mask over the GQA-folded query rows."""
    tokens = shape.num_tokens
    rot = (model.qk_rope_head_dim if model.is_mla else model.head_dim) * model.bytes_per_element
    ops = [Op("positions", "pointwise", PointwiseShape(16.0 * tokens, tokens)),
           Op("rope_cos", "pointwise", PointwiseShape(2.0 * tokens * rot + 8 * tokens, tokens * rot, "gather")),
           Op("rope_sin", "pointwise", PointwiseShape(2.0 * tokens * rot + 8 * tokens, tokens * rot, "gather"))]
    if model.attention_mask == "causal" and not model.is_mla:
        for i, group in enumerate(shape.groups):
            if group.positions > 1:
                rows = group.positions * model.gqa_group
                keys = group.context + group.positions
                tag = "" if len(shape.groups) == 1 else f"[{i}]"
                # key positions are a static buffer; the comparison and the fold of the group are kernels
                ops += [Op(f"mask_compare{tag}", "pointwise",
                           PointwiseShape(8.0 * (keys + group.positions) + group.positions * keys,
                                          group.positions * keys)),
                        Op(f"mask_fold{tag}", "pointwise",
                           PointwiseShape(1.0 * (rows + group.positions) * keys, rows * keys, "copy"))]
    return ops


def _check_tp(model: ModelSpec, tp: int, ep: int = 1) -> None:
    if tp < 1:
        raise ConfigError(f"tp={tp}: must be an integer >= 1")
    if ep != 1 and (ep > tp or tp % ep):
        raise ConfigError(f"ep={ep} must divide tp={tp}")
    dims = {"num_heads": model.num_heads, "hidden_size": model.hidden_size}
    if model.num_dense_layers:
        dims["ffn_size"] = model.ffn_size
    if model.is_moe and ep > 1 and model.num_experts % ep:
        raise ConfigError(f"ep={ep} must divide model.num_experts={model.num_experts} of {model.name}")
    if model.is_moe and ep == 1:
        dims["expert_ffn_size"] = model.expert_ffn_size
    for key, value in dims.items():
        if value % tp:
            raise ConfigError(f"tp={tp} must divide model.{key}={value} of {model.name}")
    kv = model.num_kv_heads
    if not model.is_mla and (kv % tp if kv >= tp else tp % kv):
        raise ConfigError(f"tp={tp} and model.num_kv_heads={kv} of {model.name}: one must divide the other")


def _attention_ops(model: ModelSpec, shape: ForwardShape, q_heads: int, eager: bool) -> list[Op]:
    tokens, s, h, n_layers = shape.num_tokens, model.bytes_per_element, model.hidden_size, model.num_layers
    causal = model.attention_mask == "causal"
    if model.is_mla:
        # Absorbed MLA decode (as FlashMLA runs it): q = W_q x per head (nope | rope), the latent
        # c = W_kva x shared by all heads, q_nope absorbed into the latent space through W_UK, MQA over
        # the latent cache, and the latent output expanded per head through W_UV before o_proj.
        latent = model.kv_lora_rank + model.qk_rope_head_dim
        qkv = GemmShape(tokens, q_heads * model.qk_head_dim + latent, h, s)
        cache_write = tokens * latent * s
        q_rope = tokens * q_heads * model.qk_rope_head_dim * s
        glue = [Op("rope_kv_write", "pointwise", PointwiseShape(2.0 * q_rope + 2.0 * cache_write,
                                                                (q_rope + cache_write) / s), n_layers)]
        kv_heads, qk_dim, v_dim, cache_dim = 1, latent, model.kv_lora_rank, latent
        extra = [
            Op("q_absorb", "attention",
               GemmShape(tokens, q_heads * model.kv_lora_rank, model.head_dim, s), n_layers),
            Op("v_absorb", "attention",
               GemmShape(tokens, q_heads * model.v_head_dim, model.kv_lora_rank, s), n_layers),
        ]
    else:
        kv_heads = max(1, model.num_kv_heads // shape.tp)  # fewer KV heads than ranks: replicated
        qk_dim, v_dim = model.head_dim, model.v_head_dim
        qkv = GemmShape(tokens, q_heads * qk_dim + kv_heads * (qk_dim + v_dim), h, s)
        cache_dim = qk_dim + v_dim
        glue = _rope_cache_ops(tokens, q_heads, kv_heads, qk_dim, v_dim, s, n_layers, eager)
        extra = []
        if eager:  # [B, Hkv, g*M, Dv] -> [T, Hq*Dv]: a transpose that is a copy once M > 1
            extra = [Op(f"attn_out_copy[{i}]" if len(shape.groups) > 1 else "attn_out_copy", "pointwise",
                        PointwiseShape(2.0 * g.num_tokens * q_heads * v_dim * s, g.num_tokens * q_heads * v_dim,
                                       "copy"), n_layers)
                     for i, g in enumerate(shape.groups) if g.positions > 1]
            # the rotated q keeps the [B, M, Hq, D] layout of the qkv output: folding the GQA group into the
            # query rows of [B, Hkv, g*M, D] is a copy once M > 1
            layout = [Op(f"q_fold_copy[{i}]" if len(shape.groups) > 1 else "q_fold_copy", "pointwise",
                         PointwiseShape(2.0 * g.num_tokens * q_heads * qk_dim * s, g.num_tokens * q_heads * qk_dim,
                                        "copy"), n_layers)
                      for i, g in enumerate(shape.groups) if g.positions > 1]
            glue = glue + layout
    ops = [Op("qkv_proj", "qkv_proj", qkv, n_layers), *glue]
    for i, group in enumerate(shape.groups):
        name = "attention" if len(shape.groups) == 1 else f"attention[{i}]"
        fold = eager and not model.is_mla
        masked = fold and causal and group.positions > 1
        attn = AttentionShape(group.num_seqs, group.positions, group.context, q_heads, kv_heads,
                              qk_dim, v_dim, cache_dim, causal, s, explicit_mask=masked, folded_gqa=fold)
        if masked:  # SDPA turns the boolean mask into an additive one on every call: a 0-d fill, a where
            cells = group.positions * model.gqa_group * (group.context + group.positions)
            tag = "" if len(shape.groups) == 1 else f"[{i}]"
            ops += [Op(f"mask_bias{tag}.fill", "pointwise", PointwiseShape(float(s), 1.0, "fill"), n_layers),
                    Op(f"mask_bias{tag}.where", "pointwise", PointwiseShape(cells * (1.0 + s) + s, cells), n_layers)]
        ops.append(Op(name, "attention", attn, n_layers))
    return ops + extra


def _rope_cache_ops(tokens: int, q_heads: int, kv_heads: int, qk_dim: int, v_dim: int, s: int, count: int,
                    eager: bool) -> list[Op]:
    q, k, v = tokens * q_heads * qk_dim, tokens * kv_heads * qk_dim, tokens * kv_heads * v_dim
    if not eager:  # one fused kernel: rotary reads and writes q and k, the cache write reads k and v
        return [Op("rope_kv_write", "pointwise", PointwiseShape(2.0 * s * (q + k) + 2.0 * s * (k + v), q + k + v,
                                                                "rotary", tokens), count)]
    ops = []
    for name, n in (("q", q), ("k", k)):
        # x*cos + rotate_half(x)*sin, rotate_half = cat(-x2, x1): mul, neg, cat, mul, add
        cos_row = tokens * qk_dim * s
        ops += [Op(f"rope_{name}.mul_cos", "pointwise", PointwiseShape(2.0 * n * s + cos_row, n), count),
                Op(f"rope_{name}.neg", "pointwise", PointwiseShape(1.0 * n * s, n / 2), count),
                Op(f"rope_{name}.cat", "pointwise", PointwiseShape(2.0 * n * s, n, "cat"), count),
                Op(f"rope_{name}.mul_sin", "pointwise", PointwiseShape(2.0 * n * s + cos_row, n), count),
                Op(f"rope_{name}.add", "pointwise", PointwiseShape(3.0 * n * s, n), count)]
    ops += [Op("cache_write_k", "pointwise", PointwiseShape(2.0 * k * s, k, "copy"), count),
            Op("cache_write_v", "pointwise", PointwiseShape(2.0 * v * s, v, "copy"), count)]
    return ops


def _dense_ffn_ops(model: ModelSpec, tokens: int, ffn: int, count: int, names: tuple[str, str, str],
                   eager: bool) -> list[Op]:
    s, h = model.bytes_per_element, model.hidden_size
    gate_up, act, down = names
    x = tokens * ffn
    if eager:  # silu(gate) then * up: two kernels over [T, F]
        acts = [Op(f"{act}.silu", "ffn", PointwiseShape(2.0 * x * s, x), count),
                Op(f"{act}.mul", "ffn", PointwiseShape(3.0 * x * s, x), count)]
    else:
        acts = [Op(act, "ffn", PointwiseShape(3.0 * x * s, x, "act", tokens), count)]
    return [Op(gate_up, "ffn", GemmShape(tokens, 2 * ffn, h, s), count), *acts,
            Op(down, "ffn", GemmShape(tokens, h, ffn, s), count)]


def _moe_ops(model: ModelSpec, tokens: int, tp: int, ep: int, eager: bool) -> list[Op]:
    s, h, count = model.bytes_per_element, model.hidden_size, model.num_moe_layers
    e, k = model.num_experts, model.top_k
    logits = tokens * e
    # logits to fp32, softmax, top-k (fp32 weights, int64 ids), renormalize (sum, divide), ids to int32:
    # six torch kernels either way
    pairs = tokens * k
    routing = [("router_upcast", PointwiseShape(logits * (s + FP32), logits, "copy")),
               ("router_softmax", PointwiseShape(logits * 2.0 * FP32, logits, "softmax")),
               ("router_topk", PointwiseShape(logits * FP32 + pairs * 12.0, pairs, "topk")),
               ("router_sum", PointwiseShape(pairs * FP32 + tokens * FP32, tokens, "reduction")),
               ("router_div", PointwiseShape(pairs * 2.0 * FP32 + tokens * FP32, pairs)),
               ("router_ids", PointwiseShape(pairs * 12.0, pairs, "copy"))]
    # Expert parallelism (attention stays tensor-parallel, so every rank holds every token): a rank runs
    # its e/ep whole experts on the ~tokens*k/ep (token, choice) pairs routed to them, each pair one
    # top-1 pick among its experts; the outputs combine in the all-reduce TP already has (no all-to-all).
    routed = MoeShape(tokens, h, model.expert_ffn_size // tp, e, k, model.routing_skew, s) if ep == 1 else \
        MoeShape(-(-tokens * k // ep), h, model.expert_ffn_size * ep // tp, e // ep, 1, model.routing_skew, s)
    ops = [Op("router", "ffn", GemmShape(tokens, e, h, s), count),
           *(Op(name, "ffn", shape, count) for name, shape in routing),
           Op("experts", "ffn", routed, count)]
    if model.num_shared_experts:
        ops += _dense_ffn_ops(model, tokens, model.shared_ffn_size // tp, count,
                              ("shared_gate_up_proj", "shared_act_mul", "shared_down_proj"), eager)
    return ops


def submodule(op: Op) -> str | None:
    """The FFN sub-module an op belongs to (reported under ``ffn``), or None outside the FFN."""
    if op.module != "ffn":
        return None
    if op.name.startswith("shared_"):
        return "shared_experts"
    if op.name.startswith("router"):
        return "router"
    return op.name.split(".")[0]
