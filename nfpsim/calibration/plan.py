"""What a calibration times: the ops of the configured models, on grids straddling tile boundaries.

Every point is an op exactly as :func:`nfpsim.shapes.decompose` produces it, so a measurement answers
the latency model's own question for that shape. Token counts (GEMM, MoE, pointwise) sit on both
sides of each multiple of 16 up to 128, of 32 up to 256, of 64 up to 512 and of 128 beyond; attention
positions on both sides of every query-tile boundary of the implementation (``block_q / g`` with GQA
packing), at a few batch sizes and contexts. Small sizes come first, so a run its time budget cuts short
keeps the points near-free budgets are made of.

Pointwise work is timed as the implementation's forward runs it. Fused glue (``pointwise.glue: fused``):
each fused step (add+RMSNorm, rotary+KV write, SiLU*up) with its own kernel, at ``pointwise_tokens``.
Eager glue: every torch kernel an eager forward launches between the GEMMs and attention (the eight of an
fp32-upcast RMSNorm, rotate-half RoPE, cache copies, residual adds, the embedding gather, the router's
softmax and top-k, greedy sampling's argmax; masks and layout copies once a sequence has several
positions), each timed as a generic torch kernel of its class that moves exactly its bytes into its
output elements (:func:`recipe_for`); the same kernel from two models or two layer roles is timed once.

The module also says what one point allocates (:func:`set_bytes`, checked against the tensors really
built on ``meta``) and how long the plan takes at most (:func:`estimate_seconds`: the timer's schedule,
:func:`timer_seconds`, at pessimistic kernel and host costs). Pure: no torch, runs anywhere.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import lru_cache

from nfpsim.latency.table import shape_to_dict
from nfpsim.config import HardwareSpec, KernelPreset, ModelSpec
from nfpsim.latency.analytic import AnalyticLatencyModel, family_of
from nfpsim.latency.pricing.common import power_of_two_splits
from nfpsim.shapes import AttentionShape, ForwardShape, GemmShape, MoeShape, Op, PointwiseShape, decompose

IMPLEMENTATIONS = ("triton", "vendor")
POINTWISE_OPS = ("add_norm", "act_mul", "rope_kv_write")


def straddle(boundaries: list[float], top: int, base: tuple[int, ...] = (1, 2, 3, 4, 6, 8)) -> tuple[int, ...]:
    """``base`` plus both sides (``floor(b)``, the last size that fits, and the next) of every boundary <= top."""
    points = {m for m in base if m <= top}
    for edge in boundaries:
        below = math.floor(edge)
        points.update(m for m in (below, below + 1) if 1 <= m <= top)
    return tuple(sorted(points))


def token_grid(max_tokens: int) -> tuple[int, ...]:
    """Both sides of each multiple of 16 up to 128, of 32 up to 256, of 64 up to 512, of 128 beyond."""
    edges: list[float] = list(range(16, 129, 16)) + list(range(160, 257, 32)) + list(range(320, 513, 64))
    edges += list(range(640, max_tokens + 1, 128))
    return straddle(edges, max_tokens)


def attention_positions(kernels: KernelPreset, model: ModelSpec, max_positions: int) -> tuple[int, ...]:
    attn = kernels.attention
    if attn.backend == "triton":
        rows_per_position, block = (model.gqa_group if attn.pack_gqa else 1), attn.block_q
    else:  # torch SDPA backends tile the call's rows by 128 (cuDNN); eager glue folds the GQA group into them
        rows_per_position, block = (model.gqa_group if kernels.pointwise.glue == "eager" else 1), 128
    tile = block / rows_per_position
    edges = [tile * j for j in range(1, 1 + int(max_positions / tile))] if tile >= 1 else []
    edges = [e for e in edges if e <= 32 or math.log2(e).is_integer() or e % 64 == 0]
    return straddle(edges + [16, 32, 64, 128, 256], max_positions)


@dataclass(frozen=True)
class CalibPoint:
    """One shape to time with one implementation. ``dims`` carries the tensor sizes a pointwise op
    needs (its :class:`PointwiseShape` keeps only bytes): a fused step's sizes, or the :class:`Recipe`
    of the generic kernel that times an eager one (with the ``tokens`` of the forward it came from)."""

    implementation: str
    model: str
    op: Op
    dims: tuple[tuple[str, int | str], ...] = ()

    @property
    def family(self) -> str:
        return family_of(self.op)

    @property
    def generic(self) -> bool:
        """Timed with a generic torch kernel (:class:`Recipe`): an eager-glue op."""
        return any(name == "kernel" for name, _ in self.dims)

    @property
    def key(self) -> tuple:
        """Identity for de-duplication: the same shape from two models is timed once; a generic kernel also
        from two layer roles, forwards or kinds it times alike (a cat and a copy): its recipe is what runs."""
        if self.generic:
            return self.implementation, self.family, tuple(d for d in self.dims if d[0] != "tokens")
        return self.implementation, self.op.name if self.family == "pointwise" else self.family, \
            self.op.shape, self.dims


@dataclass(frozen=True)
class PlanSettings:
    models: tuple[ModelSpec, ...]
    implementations: tuple[KernelPreset, ...]
    max_tokens: int = 1024
    batches: tuple[int, ...] = (1, 8, 32)
    contexts: tuple[int, ...] = (1024, 4096, 16384)
    max_positions: int = 256
    pointwise_tokens: tuple[int, ...] = (1, 16, 64, 256, 1024, 4096)
    max_cached_tokens: int | None = None  # attention: skip batch x context above this (time, not memory)
    # eager glue: token counts its kernels are timed at (generic kernels: a handful of sizes is enough), and
    # positions per sequence (one sequence, at each of ``contexts``) whose masks and layout copies are timed
    # (kernels a forward of one position per sequence does not run)
    eager_tokens: tuple[int, ...] = (1, 16, 256, 4096)
    eager_positions: tuple[int, ...] = (4, 16)


@dataclass
class Plan:
    points: list[CalibPoint]
    token_grid: tuple[int, ...]
    attention_grids: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for p in self.points:
            out.setdefault(p.implementation, {}).setdefault(p.family, 0)
            out[p.implementation][p.family] += 1
        return out


def _pointwise_dims(model: ModelSpec, name: str, tokens: int) -> tuple[tuple[str, int], ...] | None:
    if name == "add_norm":
        return ("tokens", tokens), ("hidden", model.hidden_size)
    if name == "act_mul":
        return (("tokens", tokens), ("ffn", model.ffn_size)) if model.num_dense_layers else None
    if name == "rope_kv_write" and not model.is_mla:
        return (("tokens", tokens), ("q_heads", model.num_heads), ("kv_heads", model.num_kv_heads),
                ("head_dim", model.head_dim))
    return None


# ----------------------------------------------------------------------------------------------------
# Eager glue: each torch kernel timed as a generic torch kernel of its class that moves its bytes
# ----------------------------------------------------------------------------------------------------

# bytes of the dtypes a recipe may use, tried in this order (config.DTYPE_BYTES is the models' weight dtypes)
RECIPE_DTYPE_BYTES = {"bf16": 2, "fp32": 4, "int64": 8, "uint8": 1}
INTEGER_DTYPES = ("int64", "uint8")
IDS_BYTES = 8  # int64 indices of a gather and of top-k
# kinds of op -> the generic kernels that may time them (the first also times what no kernel fits exactly)
KERNELS_OF = {"elementwise": ("add",), "scatter": ("add",), "copy": ("copy",), "cat": ("copy",), "fill": ("fill",),
              "reduction": ("sum", "argmax"), "gather": ("gather",), "softmax": ("softmax",), "topk": ("topk",)}
# generic kernel -> the kind it is named for (the first kind that lists it)
KIND_OF = {kernel: kind for kind, kernels in reversed(KERNELS_OF.items()) for kernel in kernels}
ROW_KINDS = ("softmax", "topk")  # row-wise kinds whose row width the shape does not say (the router's experts)
ALIGNED = 3  # widths that are multiples of 2**ALIGNED elements are preferred: real tensors' sizes are


@dataclass(frozen=True)
class Recipe:
    """A generic torch kernel that writes ``rows x width`` elements of dtype ``out`` (``rows`` for a row
    reduction, ``rows x k`` for top-k) from operand ``a`` and, for ``add``, ``b`` (a dtype, "" if absent),
    each of extent ``rw`` (a full ``[rows, width]`` tensor), ``r1`` (one value per row) or ``1w`` (one row,
    broadcast over the rows).

    Kernels: ``add`` (``torch.add(a, b or 1, out=)``), ``copy`` (``out.copy_(a)``, broadcasting a
    ``r1``/``1w`` operand), ``fill`` (``out.fill_``), ``sum`` and ``argmax`` over each row of ``a``,
    ``gather`` (``index_select`` of ``rows`` rows of the table ``a`` by int64 ids), ``softmax`` over each
    row of ``a`` (into ``out`` of its dtype), ``topk`` (the ``k`` largest of each row of ``a``: values of its
    dtype and int64 ids)."""

    kernel: str
    rows: int
    width: int
    out: str
    a: str = ""
    a_shape: str = "rw"
    b: str = ""
    b_shape: str = "rw"
    k: int = 0

    def extent(self, shape: str) -> int:
        return {"rw": self.rows * self.width, "r1": self.rows, "1w": self.width}[shape]

    @property
    def out_elements(self) -> int:
        if self.kernel in ("sum", "argmax"):
            return self.rows
        return self.rows * self.k if self.kernel == "topk" else self.rows * self.width

    @property
    def bytes(self) -> int:
        """What its tensors hold, each read or written once: the bytes it moves and one set allocates."""
        size = RECIPE_DTYPE_BYTES
        if self.kernel == "gather":  # the gathered rows of the table, the ids, the output
            return 2 * self.rows * self.width * size[self.a] + IDS_BYTES * self.rows
        if self.kernel == "topk":
            return self.rows * self.width * size[self.a] + self.out_elements * (size[self.a] + IDS_BYTES)
        operands = sum(self.extent(shape) * size[dtype] for dtype, shape in ((self.a, self.a_shape),
                                                                               (self.b, self.b_shape)) if dtype)
        return operands + self.out_elements * size[self.out]

    def shape(self, kind: str) -> PointwiseShape:
        """The op it times exactly (of ``kind`` where the kernel times that kind, else its own)."""
        kind = kind if self.kernel in KERNELS_OF.get(kind, ()) else KIND_OF[self.kernel]
        return PointwiseShape(float(self.bytes), float(self.out_elements), kind)

    @property
    def dims(self) -> tuple[tuple[str, int | str], ...]:
        return tuple((f.name, getattr(self, f.name)) for f in dataclasses.fields(self)
                     if getattr(self, f.name) != f.default)

    @classmethod
    def from_dims(cls, dims) -> Recipe:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in dict(dims).items() if name in names})


def _divides(part: int, whole: int) -> bool:
    return 0 < part <= whole and whole % part == 0


def _dtype_pairs(integer_out: bool | None = None):
    for out in RECIPE_DTYPE_BYTES:
        if integer_out is None or (out in INTEGER_DTYPES) == integer_out:
            yield out, [a for a in RECIPE_DTYPE_BYTES if out not in INTEGER_DTYPES or a in INTEGER_DTYPES]


def _map_recipes(kernel: str, total: int, n: int):
    """``add``/``copy``/``fill`` recipes with ``n`` output elements and ``total`` bytes (outer products,
    whose shape needs a divisor search, only where nothing simpler fits)."""
    size = RECIPE_DTYPE_BYTES
    for out, inputs in _dtype_pairs():
        if kernel == "fill":
            if n * size[out] == total:
                yield Recipe("fill", 1, n, out)
            continue
        for a in inputs:
            rest = total - n * (size[a] + size[out])
            if rest == 0:
                yield Recipe(kernel, 1, n, out, a)
            for b in inputs if kernel == "add" else ():
                if rest == n * size[b]:
                    yield Recipe(kernel, 1, n, out, a, b=b)
                if rest > 0 and rest % size[b] == 0 and _divides(rest // size[b], n):
                    small = rest // size[b]
                    yield Recipe(kernel, n // small, small, out, a, b=b, b_shape="1w")
                    yield Recipe(kernel, small, n // small, out, a, b=b, b_shape="r1")
            if kernel == "copy":  # a row or a column broadcast into the output
                rest = total - n * size[out]
                if rest > 0 and rest % size[a] == 0 and _divides(rest // size[a], n):
                    small = rest // size[a]
                    yield Recipe(kernel, n // small, small, out, a, a_shape="1w")
                    yield Recipe(kernel, small, n // small, out, a, a_shape="r1")


def _outer_recipes(total: int, n: int):
    """``out[r, w] = a[r, 1] + b[1, w]`` (a comparison of positions, say) with ``r * w = n``."""
    size = RECIPE_DTYPE_BYTES
    for out, inputs in _dtype_pairs():
        rest = total - n * size[out]
        if rest <= 0:
            continue
        for r in range(1, math.isqrt(n) + 1):
            if n % r:
                continue
            for rows, width in {(r, n // r), (n // r, r)}:
                for a in inputs:
                    for b in inputs:
                        if rows * size[a] + width * size[b] == rest:
                            yield Recipe("add", rows, width, out, a, "r1", b, "1w")


def _row_recipes(kernel: str, total: int, n: int, row: int):
    """Row-wise kernels: reductions (``n`` rows), gathers, softmax and top-k (rows of ``row`` elements)."""
    size = RECIPE_DTYPE_BYTES
    floats = [d for d in RECIPE_DTYPE_BYTES if d not in INTEGER_DTYPES]
    if kernel in ("sum", "argmax"):
        for a in floats:
            for out in (["int64"] if kernel == "argmax" else floats):
                rest = total - n * size[out]
                if rest > 0 and rest % (n * size[a]) == 0:
                    yield Recipe(kernel, n, rest // (n * size[a]), out, a)
    elif kernel == "gather":
        for a in RECIPE_DTYPE_BYTES:
            rest = total - 2 * n * size[a]
            if rest > 0 and rest % IDS_BYTES == 0 and _divides(rest // IDS_BYTES, n):
                rows = rest // IDS_BYTES
                yield Recipe("gather", rows, n // rows, a, a)
    elif kernel == "softmax":
        width = row if _divides(row, n) else n
        for a in floats:
            if 2 * n * size[a] == total:
                yield Recipe("softmax", n // width, width, a, a)
    elif kernel == "topk" and row:
        for a in floats:
            rest = total - n * (size[a] + IDS_BYTES)
            if rest > 0 and rest % (row * size[a]) == 0 and _divides(rest // (row * size[a]), n):
                rows = rest // (row * size[a])
                if n // rows <= row:
                    yield Recipe("topk", rows, row, a, a, k=n // rows)


def _preference(recipe: Recipe) -> tuple:
    """Among exact recipes: an aligned width (real tensors' sizes are), no broadcast operand, one dtype
    throughout, then the wider rows (a model's hidden size is the contiguous one)."""
    width = recipe.width
    aligned = min(ALIGNED, (width & -width).bit_length() - 1)
    simple = recipe.a_shape == "rw" and (not recipe.b or recipe.b_shape == "rw")
    return aligned, simple, len({recipe.out, recipe.a, recipe.b} - {""}) == 1, width


@lru_cache(maxsize=4096)
def recipe_for(shape: PointwiseShape, row: int = 0) -> tuple[Recipe, PointwiseShape]:
    """The generic kernel that times ``shape`` and the op shape it times: ``shape`` itself where a recipe
    moves exactly its bytes into its output elements, else the nearest element-wise (or row reduction)
    kernel's own shape, so a fit compares the measured kernel with the price of what really ran.
    ``row``: the row width of a softmax or top-k (the shape does not say it)."""
    total, n = shape.bytes, shape.elements
    kernels = KERNELS_OF.get(shape.kind, ("add",))
    if float(total).is_integer() and float(n).is_integer() and n >= 1:
        total, n = int(total), int(n)
        for search in (lambda k: _map_recipes(k, total, n) if k in ("add", "copy", "fill")
                       else _row_recipes(k, total, n, row),
                       lambda k: _outer_recipes(total, n) if k == "add" else ()):
            exact = [r for kernel in kernels for r in search(kernel)]
            if exact:  # max() keeps the first of equals: the order above is a preference too
                return max(exact, key=_preference), shape
    n = max(1, round(n))
    if kernels[0] in ("sum", "argmax"):
        recipe = Recipe("sum", n, max(1, round((total - 4 * n) / (4 * n))), "fp32", "fp32")
    else:
        kernel = kernels[0] if kernels[0] in ("copy", "fill") else "add"
        recipe = min((Recipe(kernel, 1, n, out, "" if kernel == "fill" else a)
                      for out, inputs in _dtype_pairs(integer_out=False) for a in inputs),
                     key=lambda r: abs(r.bytes - total))
    return recipe, recipe.shape(shape.kind)


def build_plan(settings: PlanSettings) -> Plan:
    tokens = token_grid(settings.max_tokens)
    points: dict[tuple, CalibPoint] = {}

    def add(point: CalibPoint) -> None:
        points.setdefault(point.key, point)

    attention_grids = {}
    for kernels in settings.implementations:
        for model in settings.models:
            for t in tokens:  # GEMMs and MoE experts depend on the token count only
                for op in decompose(model, ForwardShape.uniform(t, 1, 0)):
                    if isinstance(op.shape, (GemmShape, MoeShape)):
                        add(CalibPoint(kernels.name, model.name, op))
            if kernels.pointwise.glue == "eager":
                for point in eager_points(kernels.name, model, settings):
                    add(point)
            else:
                for t in settings.pointwise_tokens:
                    by_name = {op.name: op for op in decompose(model, ForwardShape.uniform(t, 1, 0))}
                    for name in POINTWISE_OPS:
                        dims = _pointwise_dims(model, name, t)
                        if dims is not None and name in by_name:
                            add(CalibPoint(kernels.name, model.name, by_name[name], dims))
            if kernels.name == "vendor" and model.is_mla:
                continue  # FlashAttention-2 has no 576-wide heads; torch would fall back to another kernel
            grid = attention_positions(kernels, model, settings.max_positions)
            attention_grids[f"{kernels.name}/{model.name}"] = grid
            for batch in settings.batches:
                for context in settings.contexts:
                    if settings.max_cached_tokens is not None and batch * context > settings.max_cached_tokens:
                        continue
                    for m in grid:  # a kernel does not know the model's window: contexts may exceed it
                        shape = ForwardShape.uniform(batch, m, context)
                        op = next(o for o in decompose(model, shape, kernels.pointwise.glue)
                                  if isinstance(o.shape, AttentionShape))
                        add(CalibPoint(kernels.name, model.name, op))
    return Plan(sorted(points.values(), key=_rank), tokens, attention_grids)


def eager_points(implementation: str, model: ModelSpec, settings: PlanSettings) -> list[CalibPoint]:
    """The pointwise kernels of ``model``'s eager forward at each of ``eager_tokens`` (one position per
    sequence), and those only a forward of several positions per sequence adds (masks, layout copies) at
    ``eager_positions`` x ``contexts``; each with the generic kernel that times it (:func:`recipe_for`)."""
    forwards = [(ForwardShape.uniform(t, 1, 0), t) for t in settings.eager_tokens]
    forwards += [(ForwardShape.uniform(1, m, context), m) for m in settings.eager_positions
                 for context in settings.contexts]
    single = {op.name for op in decompose(model, ForwardShape.uniform(1, 1, 0), "eager")}
    points = []
    for shape, tokens in forwards:
        for op in decompose(model, shape, "eager"):
            if not isinstance(op.shape, PointwiseShape) or (shape.groups[0].positions > 1 and op.name in single):
                continue
            recipe, timed = recipe_for(op.shape, model.num_experts if op.shape.kind in ROW_KINDS else 0)
            points.append(CalibPoint(implementation, model.name, dataclasses.replace(op, shape=timed),
                                     (("tokens", tokens), *recipe.dims)))
    return points


NEAR_FREE_SIZE = 65  # tokens / positions up to which near-free budgets live: measured first


def _rank(point: CalibPoint) -> int:
    """Points at small sizes first (stable otherwise), so a run cut short by its budget loses the large,
    compute-bound sizes the fit constrains from many points, not the tile boundaries NFP is made of."""
    shape = point.op.shape
    size = shape.positions if isinstance(shape, AttentionShape) else dict(point.dims).get(
        "tokens", getattr(shape, "tokens", 0))
    return 0 if size <= NEAR_FREE_SIZE else 1


# ----------------------------------------------------------------------------------------------------
# What one point allocates and how it is timed (shared with measure.py, which must agree: tests check
# every default point's set against the tensors really built on ``meta``)
# ----------------------------------------------------------------------------------------------------

ROTATION_L2_MULTIPLE = 3  # input sets together exceed the L2 this many times (else a flush buffer does)
MAX_SETS = 64
FIRST_REPLAYS = 3  # replays of the one-pass graph that size ``inner``
ROPE_CACHE_SLOTS = 4  # cache slots per sequence of the rope_kv_write workload; positions wrap around them


@dataclass(frozen=True)
class TimingSettings:
    warmup: int = 3
    repeats: int = 10
    min_replay_s: float = 2e-4  # each graph replay runs at least this long, so launch gaps amortize


def near_fill(splits: list[int], units: int, num_sms: int) -> list[int]:
    """The split that first gives every SM a program and its two neighbours: the fastest is among them
    (fewer splits leave SMs idle, more only add partials to write and reduce)."""
    fill = next((i for i, split in enumerate(splits) if units * split >= num_sms), len(splits) - 1)
    return splits[max(0, fill - 1): fill + 2]


def gemm_splits(shape: GemmShape, kernels: KernelPreset, num_sms: int) -> list[int]:
    """Split-K variants a Triton GEMM point is timed with: every power of two the latency model chooses
    among (the host picks the fastest, like the model; ``num_sms`` is unused, kept beside attention's)."""
    tile = kernels.gemm.select(shape.tokens)
    if tile.split_k:
        return [tile.split_k]
    return power_of_two_splits(shape.k, tile.block_k, kernels.gemm.max_split_k)


def attention_splits(shape: AttentionShape, kernels: KernelPreset, num_sms: int) -> list[int]:
    """Split-KV variants of a Triton attention point."""
    attn = kernels.attention
    if attn.num_splits:
        return [attn.num_splits]
    rows = shape.positions * (shape.q_heads // shape.kv_heads if attn.pack_gqa else 1)
    units = shape.num_seqs * (shape.kv_heads if attn.pack_gqa else shape.q_heads) * math.ceil(rows / attn.block_q)
    return near_fill(power_of_two_splits(shape.kv_len, attn.block_kv, attn.max_splits), units, num_sms)


def num_variants(point: CalibPoint, kernels: KernelPreset, num_sms: int) -> int:
    if point.implementation == "vendor":
        return 1
    if isinstance(point.op.shape, GemmShape):
        return len(gemm_splits(point.op.shape, kernels, num_sms))
    if isinstance(point.op.shape, AttentionShape):
        return len(attention_splits(point.op.shape, kernels, num_sms))
    return 1


def set_bytes(point: CalibPoint) -> int:
    """Bytes one input set of ``point`` allocates (measure.py's workloads; bf16 data, int32 indices,
    fp32 routing weights)."""
    shape, dims = point.op.shape, dict(point.dims)
    if isinstance(shape, GemmShape):
        return shape.bytes_per_element * (shape.tokens * shape.k + shape.n * shape.k + shape.tokens * shape.n)
    if isinstance(shape, MoeShape):
        t, h, f, e, k = shape.tokens, shape.hidden, shape.ffn, shape.num_experts, shape.top_k
        return shape.bytes_per_element * (2 * t * h + 3 * e * f * h) + 8 * t * k
    if isinstance(shape, AttentionShape):
        b, m, seq = shape.num_seqs, shape.positions, shape.kv_len
        cache = b * seq * shape.kv_heads * (shape.qk_dim + (0 if shape.cache_dim == shape.qk_dim else shape.v_dim))
        queries = b * m * shape.q_heads * (shape.qk_dim + shape.v_dim)
        return shape.bytes_per_element * (cache + queries) + 4 * b
    if point.generic:  # its tensors, each the size the recipe moves through it
        return Recipe.from_dims(point.dims).bytes
    t, e = dims["tokens"], 2  # fused pointwise sets are bf16
    if point.op.name == "add_norm":
        return e * (4 * t * dims["hidden"] + dims["hidden"])
    if point.op.name == "act_mul":
        return e * 3 * t * dims["ffn"]
    hq, hkv, d, slots = dims["q_heads"], dims["kv_heads"], dims["head_dim"], ROPE_CACHE_SLOTS
    return e * (t * d * (hq + 2 * hkv) + slots * d + 2 * t * slots * hkv * d) + 4 * t


def set_tensors(point: CalibPoint) -> int:
    """Tensors one input set holds at most: a generic kernel's operands, output and ids; 8 otherwise."""
    if not point.generic:
        return 8
    recipe = Recipe.from_dims(point.dims)
    return 1 + bool(recipe.a) + bool(recipe.b) + (recipe.kernel in ("gather", "topk"))


def num_sets(point_bytes: int, l2_bytes: int, memory_budget_bytes: float = math.inf) -> int:
    """Sets that together exceed the L2 ``ROTATION_L2_MULTIPLE`` times, within the memory budget and
    ``MAX_SETS`` (never fewer than one)."""
    wanted = math.ceil(ROTATION_L2_MULTIPLE * l2_bytes / max(point_bytes, 1))
    affordable = memory_budget_bytes // max(point_bytes, 1)
    return int(max(1, min(wanted, affordable, MAX_SETS)))


def flush_bytes(point_bytes: int, sets: int, l2_bytes: int) -> int:
    """Bytes written before each pass where the sets alone do not evict the L2 (tiny ops stay cold)."""
    return max(0, ROTATION_L2_MULTIPLE * l2_bytes - sets * point_bytes)


# ----------------------------------------------------------------------------------------------------
# How long it will take: an upper bound, not a guess (the run must fit its window)
# ----------------------------------------------------------------------------------------------------

# Host costs, as upper bounds (seen: a Triton launch from Python 20-40 us, a torch op ~10 us, a graph
# instantiation a few ms). The vendor MoE is ~15 torch ops per call.
HOST_CALL_S = 60e-6
HOST_TORCH_OP_S = 30e-6  # one plain torch op (a generic pointwise kernel)
HOST_CALL_MANY_OPS_S = 400e-6
CAPTURE_S = 0.005  # fixed cost of one capture and instantiation
GRAPH_LAUNCH_S = 20e-6  # one graph replay beside its kernels, event records and the sync
MIN_KERNEL_S = 2e-6  # no kernel inside a graph takes less (bounds ``inner`` whatever the kernel's speed)
POINT_S = 0.015  # planning on meta, building the workload, Python around it
FILL_BYTES_PER_S = 2e11  # filling input sets with random numbers (draw + scale), far below HBM speed
FILL_TENSOR_S = 50e-6
# The analytic time is optimistic for the variants the host would not pick and for Triton attention at
# large batch and context (measured ~2x at B=32, 32k): every kernel is priced at this multiple.
KERNEL_MARGIN = 2.5
COMPILE_S = 2.0  # the first launch of each new Triton specialization (seen 0.5-2 s)
STARTUP_S = 40.0  # imports, CUDA context, ceilings, nvidia-smi, the checkpoints and the final table write


FIT_S_PER_POINT = 0.08  # fitting after the measurements (seen ~0.03-0.065 s per point on a loaded 2-core CPU)


def fit_seconds(num_points: int) -> float:
    """About how long the fit after the measurements takes (CPU only: ``fit=false`` moves it off the GPU)."""
    return FIT_S_PER_POINT * num_points


def host_call_s(point: CalibPoint) -> float:
    """Python per call: a kernel launch, a plain torch op for a generic pointwise kernel, ~15 torch ops for
    the vendor MoE."""
    if point.generic:
        return HOST_TORCH_OP_S
    many = point.implementation == "vendor" and point.op.name == "experts"
    return HOST_CALL_MANY_OPS_S if many else HOST_CALL_S


def timer_seconds(calls: int, call_s: float, host_s: float, timing: TimingSettings, flush_s: float = 0.0,
                  min_call_s: float = MIN_KERNEL_S) -> float:
    """Wall time :class:`~nfpsim.calibration.measure.GraphTimer` spends at most on ``calls`` calls that
    take between ``min_call_s`` and ``call_s`` each on the device, ``host_s`` each in Python, and
    ``flush_s`` per pass: an eager pass, a one-pass capture and its first replays, a capture of
    ``inner`` passes, the warm-up and timed replays, and, with a flush, the flush alone the same way."""
    body = calls + (1 if flush_s else 0)
    pass_s = calls * call_s + flush_s
    inner = max(1, math.ceil(timing.min_replay_s / (calls * min_call_s + flush_s)))  # the largest possible

    def capture(repeats: int, size: int, size_s: float) -> float:  # warm pass on the side stream + capture
        return size * host_s + size_s + repeats * size * host_s + CAPTURE_S

    replay_s = timing.min_replay_s + pass_s + GRAPH_LAUNCH_S  # inner passes overshoot by < one pass
    total = calls * (host_s + call_s) + capture(1, body, pass_s) + FIRST_REPLAYS * (pass_s + GRAPH_LAUNCH_S)
    if inner > 1:  # captured again with ``inner`` passes (one pass that fills the replay is replayed as is)
        total += capture(inner, body, pass_s)
    total += (timing.warmup + timing.repeats) * replay_s
    if flush_s:
        total += capture(inner, 1, flush_s) + (timing.warmup + timing.repeats) * replay_s
    return total


def point_seconds(point: CalibPoint, kernel_s: float, kernels: KernelPreset, hardware: HardwareSpec,
                  timing: TimingSettings, memory_budget_bytes: float = math.inf) -> float:
    """Upper bound of the wall time one point takes: building its sets, then every variant timed."""
    one_set = set_bytes(point)
    sets = num_sets(one_set, hardware.l2_bytes, memory_budget_bytes)
    flush = flush_bytes(one_set, sets, hardware.l2_bytes)
    flush_s = flush / (0.5 * hardware.hbm_bytes_per_s) if flush else 0.0
    # no call is faster than its bytes at the datasheet bandwidth (its inputs come cold from HBM)
    min_call_s = max(MIN_KERNEL_S, point.op.shape.bytes / hardware.hbm_bytes_per_s)
    call_s = max(KERNEL_MARGIN * kernel_s, min_call_s)
    fill_s = sets * (one_set / FILL_BYTES_PER_S + set_tensors(point) * FILL_TENSOR_S)
    variants = num_variants(point, kernels, hardware.num_sms)
    return POINT_S + fill_s + variants * timer_seconds(sets, call_s, host_call_s(point), timing, flush_s, min_call_s)


def _divisibility(n: int) -> int:
    """Triton specializes an integer argument on being 1, a multiple of 16, or neither."""
    return 1 if n == 1 else (16 if n % 16 == 0 else 0)


def specializations(point: CalibPoint, kernels: KernelPreset, num_sms: int) -> set[tuple]:
    """The Triton kernels timing ``point`` may compile: per kernel, its constexprs (tiles, split counts
    of attention, head sizes) and the divisibility of its integer arguments. Ops that share a kernel
    are told apart where their sizes differ in any of these, so the count stays an upper bound."""
    shape = point.op.shape
    if isinstance(shape, GemmShape):  # split-K > 1 writes fp32 partials and adds a reduction kernel
        tile = kernels.gemm.select(shape.tokens)
        divisible = tuple(map(_divisibility, (shape.tokens, shape.n, shape.k)))
        out = {("decode_gemm", tile, divisible, split > 1) for split in gemm_splits(shape, kernels, num_sms)}
        if any(split > 1 for split in gemm_splits(shape, kernels, num_sms)):
            out.add(("sum_slices", divisible[:2]))
        return out
    if isinstance(shape, AttentionShape):  # NUM_SPLITS is a constexpr: each split compiles, with a merge
        dims = (shape.q_heads, shape.kv_heads, shape.qk_dim, shape.v_dim, shape.causal)
        out = set()
        for split in attention_splits(shape, kernels, num_sms):
            out.add(("decode_attention", dims, _divisibility(shape.positions), split))
            if split > 1:
                out.add(("merge_splits", shape.v_dim, split))
        return out
    if isinstance(shape, MoeShape):  # align, two grouped GEMMs, silu_and_mul, the combine
        dims = (shape.hidden, shape.ffn, shape.num_experts, shape.top_k)
        return {("moe", kernel, dims, _divisibility(shape.tokens)) for kernel in range(5)}
    return {(point.op.name, tuple(v if name != "tokens" else _divisibility(v) for name, v in point.dims))}


def estimate_seconds(plan: Plan, hardware: HardwareSpec, presets: dict[str, KernelPreset],
                     timing: TimingSettings, memory_budget_bytes: float = math.inf) -> float:
    """Upper bound of the GPU-machine time the plan takes on ``hardware``: start-up, every point
    (:func:`point_seconds` at ``KERNEL_MARGIN`` times the analytic kernel time, every split variant)
    and one compilation per Triton specialization and split variant."""
    models = {name: AnalyticLatencyModel(hardware, preset) for name, preset in presets.items()}
    total = STARTUP_S
    compiled: set[tuple] = set()
    for point in plan.points:
        kernels = presets[point.implementation]
        kernel_s = models[point.implementation].op_cost(point.op).time_s
        total += point_seconds(point, kernel_s, kernels, hardware, timing, memory_budget_bytes)
        if point.implementation == "triton":
            compiled |= specializations(point, kernels, hardware.num_sms)
    return total + COMPILE_S * len(compiled)


def describe(plan: Plan) -> list[str]:
    lines = [f"tokens ({len(plan.token_grid)}): {', '.join(map(str, plan.token_grid))}"]
    for key, grid in plan.attention_grids.items():
        lines.append(f"attention positions {key} ({len(grid)}): {', '.join(map(str, grid))}")
    for impl, families in plan.counts().items():
        lines.append(f"{impl}: " + ", ".join(f"{n} {family}" for family, n in sorted(families.items())))
    return lines


def point_summary(point: CalibPoint) -> dict:
    shape = point.op.shape
    fields = dict(point.dims) if isinstance(shape, PointwiseShape) else shape_to_dict(shape)
    return {"implementation": point.implementation, "family": point.family, "op": point.op.name,
            "model": point.model, **fields}
