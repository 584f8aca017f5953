"""Decode attention of ``M`` new positions per sequence over a KV cache (speculative verify, diffusion block).

Legend: B = sequences, M = new positions per sequence, Hq / Hkv = query / KV heads, g = Hq / Hkv,
D / Dv = key / value head dims (may differ: MLA uses D = 576, Dv = 512), S = cache slots,
L_b = ``context_lens[b]`` valid slots of sequence b, counting its M new positions.

Query ``i`` of sequence ``b`` sits at absolute position ``L_b - M + i``. Causal (speculative verify):
it sees keys ``j <= L_b - M + i``; bidirectional (diffusion block): all ``j < L_b``.

Work decomposition, grid ``(B * head_groups, q_tiles, num_splits)``:
- GQA packing (``pack_gqa=True``): one program per (sequence, KV head) owns the ``g*M`` query rows
  reading that head, ordered position-major (row ``r`` = position ``r // g``, head ``r % g``) and tiled
  by ``block_q``; each K/V tile is loaded once for all ``g`` heads. While memory-bound its cost is flat
  until ``g*M`` fills ``block_q``. Without packing a program owns one query head
  (``M`` rows), as a FlashAttention-2-style kernel does, and K/V are re-read ``g`` times.
- Split-KV (flash-decoding): the ``L_b`` keys are cut into ``num_splits`` chunks of whole KV tiles,
  each written as an fp32 partial output plus its log-sum-exp; a second launch merges them. With
  ``num_splits == 1`` the first launch writes the final output and there is no second launch.
Softmax runs online in fp32 in base 2 (``exp2`` with the scale folded in); the stored log-sum-exp is
base 2 too.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from nfpsim.kernels._checks import (INDEX_DTYPES, MIN_DOT_TILE, check_device, check_dtype, check_ndim,
                                    check_positive, check_same_dtype, check_shape, check_tile,
                                    check_unit_inner_stride, next_power_of_2, output_buffer)

LOG2_E = math.log2(math.e)  # exp(x) = exp2(x * LOG2_E)
# Rows of the split-KV merge handled per program.
MERGE_BLOCK_ROWS = 16


@triton.jit
def _decode_attention_kernel(
    # Pointers
    q_ptr,  # [B, M, Hq, D]
    k_ptr,  # [B, S, Hkv, D]
    v_ptr,  # [B, S, Hkv, Dv]
    context_lens_ptr,  # [B]
    o_ptr,  # [B, M, Hq, Dv] when NUM_SPLITS == 1, else fp32 partials [NUM_SPLITS, B, M, Hq, Dv]
    lse_ptr,  # fp32 [NUM_SPLITS, B, M, Hq], written only when NUM_SPLITS > 1
    # Sizes
    M,
    D,
    Dv,
    heads_per_program,  # g with GQA packing, else 1
    heads_per_kv,  # g
    num_head_groups,  # Hkv with GQA packing, else Hq
    qk_scale,  # sm_scale * log2(e)
    # Strides
    stride_qb, stride_qm, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_os, stride_ob, stride_om, stride_oh, stride_od,
    stride_ls, stride_lb, stride_lm, stride_lh,
    # Meta-parameters
    CAUSAL: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_KV: tl.constexpr,
    BLOCK_D: tl.constexpr,  # largest power of two <= D (16 at least): the first chunk of D
    BLOCK_D_TAIL: tl.constexpr,  # power of two covering D - BLOCK_D, 0 when D is a power of two
    BLOCK_DV: tl.constexpr,
):  # fmt: skip
    # ---- which sequence, heads, query rows and KV chunk ----
    pid_bh = tl.program_id(0)
    pid_q = tl.program_id(1)
    split = tl.program_id(2)
    b = (pid_bh // num_head_groups).to(tl.int64)
    head_base = (pid_bh % num_head_groups) * heads_per_program
    kv_head = head_base // heads_per_kv
    context_len = tl.load(context_lens_ptr + b).to(tl.int32)

    num_rows = heads_per_program * M
    rows = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_valid = rows < num_rows
    pos_in_block = rows // heads_per_program  # i in [0, M)
    head = head_base + rows % heads_per_program
    query_pos = context_len - M + pos_in_block  # absolute position of each query row

    # Split on whole KV tiles of this sequence's own length, so splits are balanced per sequence.
    kv_tiles_per_split = tl.cdiv(tl.cdiv(context_len, BLOCK_KV), NUM_SPLITS)
    kv_lo = split * kv_tiles_per_split * BLOCK_KV
    kv_hi = tl.minimum(kv_lo + kv_tiles_per_split * BLOCK_KV, context_len)
    if CAUSAL:
        # No row of this tile sees past the last row's own position.
        last_pos = (tl.minimum(pid_q * BLOCK_Q + BLOCK_Q, num_rows) - 1) // heads_per_program
        kv_hi = tl.minimum(kv_hi, context_len - M + last_pos + 1)

    # ---- load the query tile once: [BLOCK_Q, BLOCK_D] (+ the tail of D) ----
    q_rows = q_ptr + b * stride_qb + pos_in_block[:, None] * stride_qm + head[:, None] * stride_qh
    offs_d = tl.arange(0, BLOCK_D)
    q = tl.load(q_rows + offs_d[None, :] * stride_qd, mask=row_valid[:, None] & (offs_d[None, :] < D), other=0.0)
    k_base = k_ptr + b * stride_kb + kv_head * stride_kh
    v_base = v_ptr + b * stride_vb + kv_head * stride_vh
    if BLOCK_D_TAIL > 0:
        offs_dt = BLOCK_D + tl.arange(0, BLOCK_D_TAIL)
        q_tail = tl.load(
            q_rows + offs_dt[None, :] * stride_qd, mask=row_valid[:, None] & (offs_dt[None, :] < D), other=0.0
        )
    offs_dv = tl.arange(0, BLOCK_DV)
    dv_valid = offs_dv < Dv

    # ---- online softmax over this chunk's KV tiles ----
    # A finite floor instead of -inf keeps exp2(m_old - m_new) defined while a row has seen only
    # masked keys.
    m_i = tl.full([BLOCK_Q], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_Q], dtype=tl.float32)
    acc = tl.zeros([BLOCK_Q, BLOCK_DV], dtype=tl.float32)
    for start in range(kv_lo, kv_hi, BLOCK_KV):
        offs_kv = start + tl.arange(0, BLOCK_KV)
        kv_valid = offs_kv < kv_hi
        k_cols = k_base + offs_kv[None, :].to(tl.int64) * stride_ks
        k = tl.load(k_cols + offs_d[:, None] * stride_kd, mask=(offs_d[:, None] < D) & kv_valid[None, :], other=0.0)
        scores = tl.dot(q, k)  # [BLOCK_Q, BLOCK_KV]
        if BLOCK_D_TAIL > 0:
            k_tail = tl.load(
                k_cols + offs_dt[:, None] * stride_kd, mask=(offs_dt[:, None] < D) & kv_valid[None, :], other=0.0
            )
            scores = tl.dot(q_tail, k_tail, scores)
        scores *= qk_scale
        visible = kv_valid[None, :]
        if CAUSAL:
            visible = visible & (offs_kv[None, :] <= query_pos[:, None])
        scores = tl.where(visible, scores, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        p = tl.math.exp2(scores - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v_rows = v_base + offs_kv[:, None].to(tl.int64) * stride_vs
        v = tl.load(v_rows + offs_dv[None, :] * stride_vd, mask=kv_valid[:, None] & dv_valid[None, :], other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new

    # ---- epilogue: normalised output (final or partial) and, for splits, the log-sum-exp ----
    # An empty chunk (l_i == 0) stores zeros and lse = -inf, which the merge weighs as zero.
    has_keys = l_i > 0.0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    o_rows = o_ptr + split * stride_os + b * stride_ob + pos_in_block * stride_om + head * stride_oh
    o_mask = row_valid[:, None] & dv_valid[None, :]
    tl.store(o_rows[:, None] + offs_dv[None, :] * stride_od, out.to(o_ptr.dtype.element_ty), mask=o_mask)
    if NUM_SPLITS > 1:
        lse = tl.where(has_keys, m_i + tl.math.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        lse_rows = lse_ptr + split * stride_ls + b * stride_lb + pos_in_block * stride_lm + head * stride_lh
        tl.store(lse_rows, lse, mask=row_valid)


@triton.jit
def _merge_splits_kernel(
    # Pointers
    partial_ptr,  # fp32 [NUM_SPLITS, R, Dv], R = B*M*Hq rows in (b, i, h) order
    lse_ptr,  # fp32 [NUM_SPLITS, R], base 2
    o_ptr,  # [B, M, Hq, Dv]
    # Sizes
    R,
    M,
    Hq,
    Dv,
    # Strides
    stride_ob, stride_om, stride_oh, stride_od,
    # Meta-parameters
    NUM_SPLITS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_valid = rows < R
    offs_dv = tl.arange(0, BLOCK_DV)
    mask = row_valid[:, None] & (offs_dv[None, :] < Dv)

    # ---- o = sum_s 2^(lse_s - lse_max) o_s / sum_s 2^(lse_s - lse_max), splits in fixed order ----
    lse_max = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    for s in tl.static_range(NUM_SPLITS):
        lse_max = tl.maximum(lse_max, tl.load(lse_ptr + s * R + rows, mask=row_valid, other=float("-inf")))
    # Rows with no key anywhere (masked rows only, given the contract) must not turn into NaN.
    lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)
    acc = tl.zeros([BLOCK_R, BLOCK_DV], dtype=tl.float32)
    denom = tl.zeros([BLOCK_R], dtype=tl.float32)
    for s in tl.static_range(NUM_SPLITS):
        weight = tl.math.exp2(tl.load(lse_ptr + s * R + rows, mask=row_valid, other=float("-inf")) - lse_max)
        partial_rows = partial_ptr + (s * R + rows).to(tl.int64) * Dv
        acc += weight[:, None] * tl.load(partial_rows[:, None] + offs_dv[None, :], mask=mask, other=0.0)
        denom += weight
    out = acc / tl.where(denom > 0.0, denom, 1.0)[:, None]

    b = (rows // (M * Hq)).to(tl.int64)
    i = (rows // Hq) % M
    h = rows % Hq
    o = o_ptr + b * stride_ob + i * stride_om + h * stride_oh
    tl.store(o[:, None] + offs_dv[None, :] * stride_od, out.to(o_ptr.dtype.element_ty), mask=mask)


def _head_dim_blocks(D: int) -> tuple[int, int]:
    """Split ``D`` into a power-of-two chunk and a power-of-two tail, each >= 16 (``tl.dot``'s minimum).

    576 -> (512, 64), 192 -> (128, 64), 128 -> (128, 0), 8 -> (16, 0): padding stays far below the
    ``next_power_of_2(D)`` a single chunk would cost (1024 for 576).
    """
    if D <= MIN_DOT_TILE:
        return MIN_DOT_TILE, 0
    main = 1 << (D.bit_length() - 1)
    tail = 0 if main == D else max(MIN_DOT_TILE, next_power_of_2(D - main))
    return main, tail


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    context_lens: torch.Tensor,
    *,
    causal: bool,
    block_q: int,
    block_kv: int,
    num_splits: int,
    pack_gqa: bool = True,
    sm_scale: float | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of ``M`` new positions per sequence over its first ``context_lens[b]`` cache slots.

    Shapes: ``q [B, M, Hq, D]``, ``k_cache [B, S, Hkv, D]``, ``v_cache [B, S, Hkv, Dv]`` (any strides
    with a dense head dim: ``v_cache`` may be a view into ``k_cache`` as in MLA), ``context_lens [B]``
    int32/int64 -> ``o [B, M, Hq, Dv]`` in ``q.dtype``. ``sm_scale`` defaults to ``D**-0.5``.
    The caller guarantees ``M <= context_lens[b] <= S`` (the new positions are already in the cache);
    that is not checked, as it would need a device sync.
    """
    for name, t, legend in (("q", q, "[B, M, Hq, D]"), ("k_cache", k_cache, "[B, S, Hkv, D]"),
                            ("v_cache", v_cache, "[B, S, Hkv, Dv]")):  # fmt: skip
        check_ndim(name, t, 4, legend)
        check_device(name, t, q)
        check_unit_inner_stride(name, t)
    check_dtype("q", q)
    check_same_dtype("k_cache", k_cache, "q", q)
    check_same_dtype("v_cache", v_cache, "q", q)
    B, M, Hq, D = q.shape
    S, Hkv = k_cache.shape[1], k_cache.shape[2]
    Dv = v_cache.shape[3]
    check_shape("k_cache", k_cache, (B, S, Hkv, D))
    check_shape("v_cache", v_cache, (B, S, Hkv, Dv))
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"q: {Hq} query heads must be a multiple of k_cache's {Hkv} KV heads")
    check_shape("context_lens", context_lens, (B,))
    check_dtype("context_lens", context_lens, INDEX_DTYPES)
    check_device("context_lens", context_lens, q)
    check_tile("block_q", block_q, q.is_cuda)
    check_tile("block_kv", block_kv, q.is_cuda)
    check_positive("num_splits", num_splits)
    out = output_buffer("out", out, (B, M, Hq, Dv), q.dtype, q.device)
    if out.numel() == 0:
        return out

    group = Hq // Hkv
    heads_per_program = group if pack_gqa else 1
    num_head_groups = Hq // heads_per_program
    block_d, block_d_tail = _head_dim_blocks(D)
    block_dv = max(MIN_DOT_TILE, next_power_of_2(Dv))
    scale = D**-0.5 if sm_scale is None else sm_scale
    if not math.isfinite(scale):
        raise ValueError(f"sm_scale: must be finite, got {sm_scale}")

    if num_splits == 1:
        o, o_strides = out, (0, *out.stride())
        lse, lse_strides = None, (0, 0, 0, 0)
    else:
        o = torch.empty((num_splits, B, M, Hq, Dv), dtype=torch.float32, device=q.device)
        lse = torch.empty((num_splits, B, M, Hq), dtype=torch.float32, device=q.device)
        o_strides, lse_strides = o.stride(), lse.stride()

    grid = (B * num_head_groups, triton.cdiv(heads_per_program * M, block_q), num_splits)
    _decode_attention_kernel[grid](
        q, k_cache, v_cache, context_lens, o, lse,
        M, D, Dv, heads_per_program, group, num_head_groups, scale * LOG2_E,
        *q.stride(), *k_cache.stride(), *v_cache.stride(), *o_strides, *lse_strides,
        CAUSAL=causal, NUM_SPLITS=num_splits, BLOCK_Q=block_q, BLOCK_KV=block_kv,
        BLOCK_D=block_d, BLOCK_D_TAIL=block_d_tail, BLOCK_DV=block_dv,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    if num_splits > 1:
        num_rows = B * M * Hq
        _merge_splits_kernel[(triton.cdiv(num_rows, MERGE_BLOCK_ROWS),)](
            o, lse, out,
            num_rows, M, Hq, Dv,
            *out.stride(),
            NUM_SPLITS=num_splits, BLOCK_R=MERGE_BLOCK_ROWS, BLOCK_DV=block_dv,
            num_warps=num_warps,
        )  # fmt: skip
    return out
