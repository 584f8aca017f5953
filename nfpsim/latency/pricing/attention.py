"""Attention over a KV cache, priced per backend from how each kernel tiles the work.

One ``scaled_dot_product_attention``-style call sees ``heads`` query heads of ``s_q`` rows each over
``s_k`` keys (GQA-folded calls pass the ``g`` query heads of a KV head as ``g*M`` rows of one head).
Every backend launches CTAs over (sequence, head, query tile[, KV split]); each CTA streams the K/V of
its head (CTAs sharing a KV head at the same time share it through L2) and computes a padded
``block_q x s_k`` tile. The backends differ in exactly those choices:

- ``cudnn`` (torch SDPA's first choice on Hopper/Blackwell with cuDNN >= 9.15): 128-row query tiles, no
  split-KV, so one CTA streams a whole context at one CTA's rate; a single-row query (``s_q = 1``) goes to
  a split-KV decode kernel instead.
- ``flash`` (FlashAttention-2 as vendored by torch): splits the KV by FA2's own heuristic (enough splits
  to fill two CTAs per SM at >= 85% wave efficiency) with 64-row query tiles, else 128-row tiles and no
  split; a one-row GQA query is folded into the rows of its KV head. No explicit masks; ``is_causal`` only
  for square calls.
- ``efficient`` (xFormers/CUTLASS memory-efficient): 64-row query tiles, no split; takes masks.
- ``triton`` (nfpsim's kernel): the preset's ``block_q``/``block_kv``, GQA packing, the fastest split.
- ``paged`` (what vLLM and SGLang run: FlashAttention/FlashInfer over a paged KV cache): the ``g`` query
  heads of a KV head packed into the query rows for every call (decode, speculative verify, diffusion
  blocks, chunked prefill), FA2's split-KV heuristic and tiles, each sequence's keys read in whole pages
  of ``page_size`` tokens. Priced with the ``sdpa.flash`` constants (the same FlashAttention tiles) until
  a calibration of the paged kernels fits its own.

:func:`sdpa_backend` says which of the first three torch picks on a GPU for a call (the rules of torch's
``sdp_utils``: priority order by architecture, then each backend's constraints).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from nfpsim.config import AttentionKernel
from nfpsim.latency.base import OpCost
from nfpsim.latency.constants import DeviceCeilings, KernelConstants
from nfpsim.latency.pricing.common import assemble, compute_time, memory_time, partial_bytes, power_of_two_splits
from nfpsim.shapes import AttentionShape

# torch SDPA's priority order per GPU architecture: cuDNN first on sm90/sm100 (torch >= 2.9 with
# cuDNN >= 9.15), FlashAttention-2 first elsewhere; AMD GPUs run AOTriton flash / memory-efficient.
SDPA_PRIORITY = {
    "sm90": ("cudnn", "flash", "efficient"),
    "sm100": ("cudnn", "flash", "efficient"),
    "sm80": ("flash", "efficient"),
    "cdna3": ("flash", "efficient"),
}


@dataclass(frozen=True)
class Call:
    """An attention call as the kernel sees it."""

    batch: int
    heads: int  # query heads in the call
    kv_heads: int
    s_q: int  # query rows per head
    s_k: int  # keys per head
    qk_dim: int
    v_dim: int
    cache_dim: int
    s: int  # bytes per element
    causal: bool
    explicit_mask: bool

    @classmethod
    def of(cls, shape: AttentionShape) -> Call:
        if shape.folded_gqa:
            heads, rows = shape.kv_heads, shape.positions * shape.group
        else:
            heads, rows = shape.q_heads, shape.positions
        return cls(shape.num_seqs, heads, shape.kv_heads, rows, shape.kv_len, shape.qk_dim, shape.v_dim,
                   shape.cache_dim, shape.bytes_per_element, shape.causal, shape.explicit_mask)

    @property
    def group(self) -> int:
        return max(1, self.heads // self.kv_heads)

    @property
    def kv_bytes(self) -> float:
        return float(self.batch * self.kv_heads * self.s_k * self.cache_dim * self.s)

    @property
    def mask_bytes(self) -> float:
        """An explicit mask as the kernel reads it: torch turns a boolean mask into an additive bias of the
        query's dtype, ``[s_q, s_k]``, broadcast over batch and heads."""
        return float(self.s_q * self.s_k * self.s) if self.explicit_mask else 0.0

    @property
    def io_bytes(self) -> float:
        """q read, output written, and an explicit mask read once from HBM (later CTAs hit L2)."""
        q_out = self.batch * self.heads * self.s_q * (self.qk_dim + self.v_dim) * self.s
        return float(q_out + self.mask_bytes)


def sdpa_backend(shape: AttentionShape, arch: str) -> str:
    """The backend torch's ``scaled_dot_product_attention`` dispatches this call to on ``arch``."""
    call = Call.of(shape)
    for backend in SDPA_PRIORITY.get(arch, ("flash", "efficient")):
        if _eligible(backend, call, arch):
            return backend
    return "efficient"  # torch would fall back to its math path: priced as the unfused-like slow kernel


def _eligible(backend: str, call: Call, arch: str) -> bool:
    aligned = call.qk_dim % 8 == 0 and call.v_dim % 8 == 0
    if backend == "cudnn":
        max_dim = 256 if arch in ("sm90", "sm100") else 128
        return call.s == 2 and aligned and max(call.qk_dim, call.v_dim) <= max_dim and call.s_k != 1
    if backend == "flash":
        square = call.s_q == call.s_k
        return (not call.explicit_mask and call.qk_dim == call.v_dim <= 256 and call.s == 2
                and (square or not call.causal))
    return aligned


# ----------------------------------------------------------------------------------------------------
# The tiled-attention cost shared by every backend
# ----------------------------------------------------------------------------------------------------


def tiled_cost(call: Call, block_q: int, block_kv: int, splits: int, ctas_per_sm: int, launches: int,
               kc: KernelConstants, dev: DeviceCeilings, rows: int | None = None, units: int | None = None) -> OpCost:
    rows = call.s_q if rows is None else rows
    units = call.batch * call.heads if units is None else units
    q_tiles = math.ceil(rows / block_q)
    ctas = units * q_tiles * splits
    slots = dev.num_sms * ctas_per_sm
    waves = math.ceil(ctas / slots)
    keys_per_cta = math.ceil(call.s_k / splits)
    per_cta_kv = keys_per_cta * call.cache_dim * call.s
    # CTAs of one KV head resident together share its K/V through L2; later waves re-read it
    sharers = ctas / (call.batch * call.kv_heads)
    rereads = 1 + (min(sharers, waves) - 1) * (1 - kc.l2_hit_fraction) if sharers > 1 else 1
    partials = 0.0 if splits == 1 else partial_bytes(call.batch * call.heads * call.s_q * splits * (call.v_dim + 1), kc)
    hbm = call.kv_bytes * rereads + call.io_bytes + partials
    # each CTA streams its K/V slice and, with an explicit mask, the bias rows of its query tile over the
    # same keys: a mask as wide as the context adds to what one CTA moves, in proportion to its rows
    per_cta_mask = call.mask_bytes / q_tiles / splits
    loaded = ctas * (per_cta_kv + per_cta_mask)
    kv_padded = math.ceil(keys_per_cta / block_kv) * block_kv
    visible = 1.0
    if call.causal and not call.explicit_mask:  # masked-out key blocks above the diagonal are skipped
        visible = (call.s_k - call.s_q + (call.s_q + 1) / 2) / call.s_k
    flops = 2.0 * ctas * block_q * kv_padded * (call.qk_dim + call.v_dim) * visible
    compute = compute_time(flops, ctas, block_q * block_kv, call.s, kc, dev)
    memory = memory_time(hbm, loaded, min(ctas, slots), kc, dev)
    return assemble(compute, memory, launches + (splits > 1), kc, hbm, flops)


def fa2_num_splits(batch_heads_mblocks: int, num_slots: int, num_n_blocks: int, max_splits: int = 128) -> int:
    """FlashAttention-2's split-KV heuristic: the fewest splits whose wave efficiency is within 85% of
    the best, counting only split counts that change the blocks per split."""
    if batch_heads_mblocks >= 0.8 * num_slots:
        return 1
    max_splits = min(max_splits, num_slots, num_n_blocks)

    def eligible(n: int) -> bool:
        return n == 1 or math.ceil(num_n_blocks / n) != math.ceil(num_n_blocks / (n - 1))

    def efficiency(n: int) -> float:
        waves = batch_heads_mblocks * n / num_slots
        return waves / math.ceil(waves)

    candidates = [n for n in range(1, max_splits + 1) if eligible(n)]
    best = max(efficiency(n) for n in candidates)
    return next(n for n in candidates if efficiency(n) >= 0.85 * best)


def cudnn_cost(shape: AttentionShape, kc: KernelConstants, dev: DeviceCeilings) -> OpCost:
    call = Call.of(shape)
    if call.s_q == 1:  # the decode kernel: split-KV to fill the SMs
        blocks = math.ceil(call.s_k / 128)
        splits = fa2_num_splits(call.batch * call.heads, 2 * dev.num_sms, blocks)
        return tiled_cost(call, 64, 128, splits, 2, 1, kc, dev)
    return tiled_cost(call, 128, 128, 1, 2, 1, kc, dev)


def flash_cost(shape: AttentionShape, kc: KernelConstants, dev: DeviceCeilings) -> OpCost:
    call = Call.of(shape)
    rows, units = call.s_q, call.batch * call.heads
    if call.s_q == 1 and call.group > 1:  # one-row GQA query: the group becomes the rows of its KV head
        rows, units = call.group, call.batch * call.kv_heads
    block_n = 256 if call.qk_dim <= 64 else (128 if call.qk_dim <= 128 else 64)
    splits = fa2_num_splits(units * math.ceil(rows / 64), 2 * dev.num_sms, math.ceil(call.s_k / block_n))
    if splits > 1:
        return tiled_cost(call, 64, block_n, splits, 2, 1, kc, dev, rows=rows, units=units)
    return tiled_cost(call, 128, 64, 1, 1, 1, kc, dev, rows=rows, units=units)


def efficient_cost(shape: AttentionShape, kc: KernelConstants, dev: DeviceCeilings) -> OpCost:
    return tiled_cost(Call.of(shape), 64, 64, 1, 1, 1, kc, dev)


def triton_cost(shape: AttentionShape, kernel: AttentionKernel, kc: KernelConstants, dev: DeviceCeilings) -> OpCost:
    """nfpsim's kernel: GQA packing puts the ``g*M`` rows of a KV head in one program; without it each
    query head is a program. ``num_splits`` 0: the host picks the fastest split-KV count."""
    call = Call.of(shape)
    if kernel.pack_gqa:
        rows, units = shape.positions * shape.group, shape.num_seqs * shape.kv_heads
    else:
        rows, units = shape.positions, shape.num_seqs * shape.q_heads
    splits = [kernel.num_splits] if kernel.num_splits else power_of_two_splits(call.s_k, kernel.block_kv,
                                                                               kernel.max_splits)
    return min((tiled_cost(call, kernel.block_q, kernel.block_kv, split, kernel.ctas_per_sm, kernel.launches, kc,
                           dev, rows=rows, units=units) for split in splits), key=lambda cost: cost.time_s)


def paged_cost(shape: AttentionShape, kernel: AttentionKernel, kc: KernelConstants, dev: DeviceCeilings) -> OpCost:
    """A serving engine's paged FlashAttention: GQA packed into the rows of each KV head at any number of
    positions, keys read in whole pages, FA2's split-KV choice and tiles."""
    call = Call.of(shape)
    page = max(1, kernel.page_size)
    call = dataclasses.replace(call, s_k=math.ceil(call.s_k / page) * page)
    rows, units = shape.positions * call.group, call.batch * call.kv_heads
    block_n = 256 if call.qk_dim <= 64 else (128 if call.qk_dim <= 128 else 64)
    splits = fa2_num_splits(units * math.ceil(rows / 64), 2 * dev.num_sms, math.ceil(call.s_k / block_n))
    if splits > 1:
        return tiled_cost(call, 64, block_n, splits, 2, 1, kc, dev, rows=rows, units=units)
    return tiled_cost(call, 128, 64, 1, 1, 1, kc, dev, rows=rows, units=units)
