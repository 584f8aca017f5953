"""Fused mixture-of-experts FFN over an expert-sorted, block-padded token layout.

Legend: T = tokens, H = hidden size, F = expert FFN width, E = experts, k = experts per token,
slot = one (token, choice) pair, numbered ``t*k + j`` (T*k slots in all).

Pipeline (every step has static shapes, so the whole layer can be captured in a CUDA graph):
1. ``route``: softmax over the router logits, top-k, optional renormalisation.
2. ``moe_align``: slots sorted by expert, each expert's run padded to a multiple of ``block_m`` with a
   sentinel slot ``T*k``, so one M-tile of the grouped GEMM never mixes two experts. The buffers are
   sized for the worst case ``P_max = T*k + E*(block_m - 1)`` (rounded up to ``block_m``); only the
   first ``num_tokens_post_padded`` entries are live and the GEMM skips the tiles past them.
   One Triton kernel: as ~30 torch ops, at ~2.5 us per CUDA-graph node, it cost more than the expert
   GEMMs at batch 1.
3. grouped GEMM ``x @ w_gate_up[e]^T`` -> ``[T*k, 2F]``, SiLU-and-mul -> ``[T*k, F]``, grouped GEMM
   ``act @ w_down[e]^T`` scaled by the routing weight -> ``[T*k, H]``, then a fixed-order sum over the
   ``k`` choices -> ``y [T, H]``.
``fused_moe`` is 5 kernel launches: align, gate_up GEMM, SiLU-and-mul, down GEMM, combine.
The padding is what makes compute follow ``sum_e ceil(n_e / block_m) * block_m``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from nfpsim.kernels._checks import (INDEX_DTYPES, check_contiguous, check_device, check_dtype, check_ndim,
                                    check_positive, check_same_dtype, check_shape, check_tile,
                                    check_unit_inner_stride, next_power_of_2, output_buffer)
from nfpsim.kernels.gemm import grouped_tile
from nfpsim.kernels.pointwise import silu_and_mul, sum_slices


# ---------------------------------------------------------------------------------------------
# Routing (torch ops) and alignment (one kernel); device-resident, static shapes
# ---------------------------------------------------------------------------------------------
# Slots per chunk of the alignment kernel's loops over the ids and the padding.
MAX_ALIGN_CHUNK = 1024


def route(router_logits: torch.Tensor, top_k: int, renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over experts then top-k: ``router_logits [T, E]`` -> ``(weights [T, k] fp32, ids [T, k] int32)``.

    With ``renormalize`` each token's ``k`` weights are rescaled to sum to one (Mixtral, Qwen-MoE).
    """
    check_ndim("router_logits", router_logits, 2, "[T, E]")
    check_dtype("router_logits", router_logits)
    if not 1 <= top_k <= router_logits.shape[1]:
        raise ValueError(f"top_k: must be in [1, E={router_logits.shape[1]}], got {top_k}")
    weights, ids = router_logits.float().softmax(dim=-1).topk(top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids.to(torch.int32)


def padded_slots(num_slots: int, num_experts: int, block_m: int) -> int:
    """``P_max``: slots after padding every expert's run to ``block_m``, in the worst case."""
    worst = num_slots + num_experts * (block_m - 1)
    return triton.cdiv(worst, block_m) * block_m


@triton.jit
def _moe_align_kernel(
    # Pointers
    topk_ids_ptr,  # [T, k] int32/int64
    sorted_token_ids_ptr,  # [P] int32
    expert_ids_ptr,  # [P // BLOCK_M] int32
    num_tokens_post_padded_ptr,  # [1] int32
    # Sizes
    num_slots,  # T*k, also the padding sentinel
    top_k,
    num_experts,
    num_padded,  # P
    # Strides
    stride_idt, stride_idk,
    # Meta-parameters
    BLOCK_M: tl.constexpr,  # the alignment (any positive int)
    BLOCK_PAD: tl.constexpr,  # next power of two >= BLOCK_M - 1: one expert's padding in one store
    BLOCK: tl.constexpr,  # slots per chunk, >= 32 * num_warps (tl.histogram miscounts replicated layouts)
    NUM_BINS: tl.constexpr,  # power of two > E: bin E collects masked lanes and out-of-range ids
):  # fmt: skip
    # Program e < E owns expert e's padded run [start, end); program E owns the tail [live end, P).
    pid = tl.program_id(0)
    is_expert = pid < num_experts

    # ---- every expert's count, so every program knows every padded start ----
    bins = tl.arange(0, NUM_BINS)
    counts = tl.zeros([NUM_BINS], dtype=tl.int32)
    for s0 in range(0, num_slots, BLOCK):
        slots = s0 + tl.arange(0, BLOCK)
        in_range = slots < num_slots
        ids = tl.load(topk_ids_ptr + (slots // top_k) * stride_idt + (slots % top_k) * stride_idk,
                      mask=in_range, other=0).to(tl.int32)  # fmt: skip
        ids = tl.where(in_range & (ids >= 0) & (ids < num_experts), ids, num_experts)
        counts += tl.histogram(ids, NUM_BINS)
    padded = tl.where(bins < num_experts, tl.cdiv(counts, BLOCK_M) * BLOCK_M, 0)
    start = tl.sum(tl.where(bins < pid, padded, 0))  # exclusive prefix sum at pid; the live end for pid E
    num_own = tl.sum(tl.where(bins == pid, counts, 0))  # n_e (experts only: bin E holds the masked lanes)
    end = tl.where(is_expert, start + tl.sum(tl.where(bins == pid, padded, 0)), num_padded)

    # ---- own slots in slot order: position = start + rank among this expert's slots ----
    next_pos = start
    for s0 in range(0, num_slots, BLOCK):
        slots = s0 + tl.arange(0, BLOCK)
        in_range = slots < num_slots
        ids = tl.load(topk_ids_ptr + (slots // top_k) * stride_idt + (slots % top_k) * stride_idk,
                      mask=in_range, other=-1).to(tl.int32)  # fmt: skip
        own = in_range & (ids == pid) & is_expert
        rank = tl.cumsum(own.to(tl.int32), 0) - 1
        tl.store(sorted_token_ids_ptr + next_pos + rank, slots, mask=own)
        next_pos += tl.sum(own.to(tl.int32))

    # ---- sentinels: below BLOCK_M past an expert's slots, the whole tail for program E ----
    if is_expert:
        offs = start + num_own + tl.arange(0, BLOCK_PAD)
        tl.store(sorted_token_ids_ptr + offs, num_slots, mask=offs < end)
    else:
        for p0 in range(start, num_padded, BLOCK):
            offs = p0 + tl.arange(0, BLOCK)
            tl.store(sorted_token_ids_ptr + offs, num_slots, mask=offs < num_padded)
        tl.store(num_tokens_post_padded_ptr, start)

    # ---- the expert of each owned block (-1 in the tail) ----
    block_expert = tl.where(is_expert, pid, -1)
    for b0 in range(start // BLOCK_M, end // BLOCK_M, BLOCK):
        blocks = b0 + tl.arange(0, BLOCK)
        tl.store(expert_ids_ptr + blocks, block_expert, mask=blocks < end // BLOCK_M)


def moe_align(
    topk_ids: torch.Tensor,
    num_experts: int,
    block_m: int,
    *,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    num_warps: int = 4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort slots by expert and pad each expert's run to a multiple of ``block_m``: one kernel launch.

    Returns, with ``P = padded_slots(T*k, E, block_m)`` and all int32:
    - ``sorted_token_ids [P]``: slot ids (``t*k + j``) grouped by expert, ascending within an expert;
      padding holds the sentinel ``T*k``;
    - ``expert_ids [P // block_m]``: the expert of each ``block_m`` block; ``-1`` past the live part;
    - ``num_tokens_post_padded [1]``: ``sum_e ceil(n_e / block_m) * block_m``.
    ``out`` takes the three buffers (e.g. static ones for a CUDA graph). No host sync, no
    data-dependent shapes, no atomics (the result is deterministic). The grid is ``E + 1`` programs,
    each reading all ``T*k`` ids twice (count, then place): ``2 (E + 1) T*k`` reads, from L2. Ids outside
    ``[0, E)`` are not checked (that would need a sync): such slots are left out, so the result is
    undefined for them.
    """
    check_ndim("topk_ids", topk_ids, 2, "[T, k]")
    check_dtype("topk_ids", topk_ids, INDEX_DTYPES)
    check_positive("num_experts", num_experts)
    check_positive("block_m", block_m)
    num_slots = topk_ids.numel()
    num_padded = padded_slots(num_slots, num_experts, block_m)
    shapes = ((num_padded,), (num_padded // block_m,), (1,))
    names = ("sorted_token_ids", "expert_ids", "num_tokens_post_padded")
    if out is not None and len(out) != 3:
        raise ValueError(f"out: expected 3 buffers ({', '.join(names)}), got {len(out)}")
    buffers = (None,) * 3 if out is None else out
    sorted_token_ids, expert_ids, num_tokens_post_padded = (
        output_buffer(f"out.{name}", buf, shape, torch.int32, topk_ids.device)
        for name, buf, shape in zip(names, buffers, shapes, strict=True)
    )
    _moe_align_kernel[(num_experts + 1,)](
        topk_ids, sorted_token_ids, expert_ids, num_tokens_post_padded,
        num_slots, topk_ids.shape[1], num_experts, num_padded,
        topk_ids.stride(0), topk_ids.stride(1),
        BLOCK_M=block_m, BLOCK_PAD=next_power_of_2(block_m),
        BLOCK=min(MAX_ALIGN_CHUNK, max(32 * num_warps, next_power_of_2(num_slots))),
        NUM_BINS=next_power_of_2(num_experts + 1),
        num_warps=num_warps,
    )  # fmt: skip
    return sorted_token_ids, expert_ids, num_tokens_post_padded


# ---------------------------------------------------------------------------------------------
# Grouped GEMM over the aligned layout
# ---------------------------------------------------------------------------------------------
@triton.jit
def _moe_grouped_gemm_kernel(
    # Pointers
    a_ptr,  # [rows, K]: x (row = slot // top_k) for gate_up, the activation (row = slot) for down
    w_ptr,  # [E, N, K]
    c_ptr,  # [T*k, N], row = slot
    topk_weights_ptr,  # [T*k] fp32, read only when MUL_ROUTED_WEIGHT
    sorted_token_ids_ptr,  # [P]
    expert_ids_ptr,  # [P // BLOCK_M]
    num_tokens_post_padded_ptr,  # [1]
    # Sizes
    N,
    K,
    num_slots,  # T*k, also the padding sentinel
    slots_per_a_row,
    num_pid_m,  # P // BLOCK_M
    # Strides
    stride_am, stride_ak,
    stride_we, stride_wn, stride_wk,
    stride_cm, stride_cn,
    # Meta-parameters
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    MUL_ROUTED_WEIGHT: tl.constexpr,
):  # fmt: skip
    pid_m, pid_n = grouped_tile(tl.program_id(0), num_pid_m, tl.cdiv(N, BLOCK_N), GROUP_M)
    # The grid covers the worst-case padding; tiles past the live part hold only sentinels.
    if pid_m * BLOCK_M >= tl.load(num_tokens_post_padded_ptr):
        return

    # ---- this tile's slots and their (single) expert ----
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    slots = tl.load(sorted_token_ids_ptr + offs_m)
    mask_m = slots < num_slots
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    a_rows = a_ptr + (slots // slots_per_a_row)[:, None].to(tl.int64) * stride_am
    # int64: E*N*K passes 2**31 elements for large MoE layers.
    w_cols = w_ptr + expert * stride_we + offs_n[None, :].to(tl.int64) * stride_wn

    # ---- main loop: gathered rows of a times this expert's weight tile ----
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        a = tl.load(a_rows + offs_k[None, :] * stride_ak, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(w_cols + offs_k[:, None] * stride_wk, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(a, b, acc)

    # ---- epilogue: routing weight, scatter rows back to slot order ----
    if MUL_ROUTED_WEIGHT:
        acc *= tl.load(topk_weights_ptr + slots, mask=mask_m, other=0.0)[:, None]
    c = c_ptr + slots[:, None].to(tl.int64) * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _grouped_gemm(a, w, c, topk_weights, alignment, slots_per_a_row, *, block_m, block_n, block_k, group_m,
                  num_warps, num_stages):  # fmt: skip
    """``c[slot] = a[slot // slots_per_a_row] @ w[expert(slot)]^T`` (times the slot's weight if given)."""
    sorted_token_ids, expert_ids, num_tokens_post_padded = alignment
    num_pid_m = expert_ids.shape[0]
    N, K = w.shape[1], w.shape[2]
    grid = (num_pid_m * triton.cdiv(N, block_n),)
    _moe_grouped_gemm_kernel[grid](
        a, w, c, topk_weights, sorted_token_ids, expert_ids, num_tokens_post_padded,
        N, K, c.shape[0], slots_per_a_row, num_pid_m,
        a.stride(0), a.stride(1),
        w.stride(0), w.stride(1), w.stride(2),
        c.stride(0), c.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m,
        MUL_ROUTED_WEIGHT=topk_weights is not None,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip


def fused_moe(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    block_m: int,
    block_n: int,
    block_k: int,
    group_m: int = 8,
    num_warps: int = 4,
    num_stages: int = 2,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y[t] = sum_j topk_weights[t, j] * (silu(x[t] W_g^T) * (x[t] W_u^T)) W_d^T`` of expert ``topk_ids[t, j]``.

    Shapes: ``x [T, H]``; ``w_gate_up [E, 2F, H]`` with gate rows ``[0, F)`` and up rows ``[F, 2F)``;
    ``w_down [E, H, F]``; ``topk_weights [T, k]`` fp32 (contiguous); ``topk_ids [T, k]`` int32/int64
    -> ``y [T, H]`` in ``x.dtype``. Both GEMMs use the same tiles; ``block_m`` is also the alignment.
    Intermediates (``[T*k, 2F]``, ``[T*k, F]``, ``[T*k, H]``) are rounded to ``x.dtype``, as a
    serving engine stores them.
    """
    check_ndim("x", x, 2, "[T, H]")
    check_ndim("w_gate_up", w_gate_up, 3, "[E, 2F, H]")
    check_ndim("w_down", w_down, 3, "[E, H, F]")
    check_dtype("x", x)
    T, H = x.shape
    E, two_f = w_gate_up.shape[:2]
    if two_f % 2:
        raise ValueError(f"w_gate_up: dimension 1 ({two_f}) must be even (gate and up halves)")
    check_shape("w_gate_up", w_gate_up, (E, two_f, H))
    check_shape("w_down", w_down, (E, H, two_f // 2))
    for name, t in (("w_gate_up", w_gate_up), ("w_down", w_down)):
        check_same_dtype(name, t, "x", x)
        check_device(name, t, x)
        check_unit_inner_stride(name, t)
    check_unit_inner_stride("x", x)
    check_ndim("topk_ids", topk_ids, 2, "[T, k]")
    check_shape("topk_weights", topk_weights, tuple(topk_ids.shape))
    if topk_ids.shape[0] != T:
        raise ValueError(f"topk_ids: {topk_ids.shape[0]} rows, expected T = {T}")
    check_dtype("topk_ids", topk_ids, INDEX_DTYPES)
    check_dtype("topk_weights", topk_weights, (torch.float32,))
    check_contiguous("topk_weights", topk_weights)
    for name, t in (("topk_weights", topk_weights), ("topk_ids", topk_ids)):
        check_device(name, t, x)
    for name, value in (("block_m", block_m), ("block_n", block_n), ("block_k", block_k)):
        check_tile(name, value, x.is_cuda)
    check_positive("group_m", group_m)
    out = output_buffer("out", out, (T, H), x.dtype, x.device)
    top_k = topk_ids.shape[1]
    if T == 0 or H == 0:
        return out

    alignment = moe_align(topk_ids, E, block_m)
    tiles = dict(block_m=block_m, block_n=block_n, block_k=block_k, group_m=group_m,
                 num_warps=num_warps, num_stages=num_stages)  # fmt: skip
    gate_up = torch.empty((T * top_k, two_f), dtype=x.dtype, device=x.device)
    _grouped_gemm(x, w_gate_up, gate_up, None, alignment, top_k, **tiles)
    act = silu_and_mul(gate_up)  # [T*k, F]
    expert_out = torch.empty((T * top_k, H), dtype=x.dtype, device=x.device)
    _grouped_gemm(act, w_down, expert_out, topk_weights, alignment, 1, **tiles)
    return sum_slices(expert_out.view(T, top_k, H), out=out)
