"""Dense decode GEMM ``y[T, N] = x[T, K] @ w[N, K]^T`` for a few to a few thousand tokens.

At decode sizes the weight ``w`` dominates the bytes (``K*N`` against ``T*K + T*N``), so the kernel
is built around streaming it once:
- grouped program order: consecutive programs take the ``GROUP_M`` M-tiles that share one N-slab of
  ``w``, so the slab is re-read from L2 rather than HBM while more than one M-tile exists;
- split-K: for small ``T`` there are too few ``(M, N)`` tiles to fill the GPU, so the K loop is cut in
  ``split_k`` chunks run by separate programs. Each writes fp32 partials into a workspace
  ``[split_k, T, N]`` that a second launch sums in a fixed order: deterministic, no atomics, static
  shapes (CUDA-graph capturable).

Tile sizes are always explicit keyword arguments so calibration can sweep them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from nfpsim.kernels._checks import (
    check_device,
    check_dtype,
    check_ndim,
    check_positive,
    check_same_dtype,
    check_tile,
    check_unit_inner_stride,
    output_buffer,
)
from nfpsim.kernels.pointwise import sum_slices


@triton.jit
def grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Map a linear program id to ``(pid_m, pid_n)`` walking ``GROUP_M`` M-tiles per N-tile.

    Programs ``pid`` and ``pid + 1`` land on the same N-tile (same weight slab) until the group of
    M-tiles is exhausted; the last group may be shorter.
    """
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _decode_gemm_kernel(
    # Pointers
    x_ptr,  # [T, K]
    w_ptr,  # [N, K]
    y_ptr,  # [T, N] in x's dtype, or the fp32 workspace [SPLIT_K, T, N]
    # Sizes
    T,
    N,
    K,
    k_per_split,  # multiple of BLOCK_K, so a K-tile never straddles two splits
    # Strides
    stride_xt, stride_xk,
    stride_wn, stride_wk,
    stride_ys, stride_yt, stride_yn,
    # Meta-parameters
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):  # fmt: skip
    # ---- which output tile and which K chunk ----
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(T, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    pid_k = tl.program_id(1)
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < T
    mask_n = offs_n < N
    # Row offsets of w in int64: an LM head has N*K beyond 2**31 elements for large vocabularies.
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xt
    w_cols = w_ptr + offs_n[None, :].to(tl.int64) * stride_wn

    # ---- main loop: acc[BLOCK_M, BLOCK_N] += x[:, k-tile] @ w[n-tile, k-tile]^T ----
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < k_hi
        a = tl.load(x_rows + offs_k[None, :] * stride_xk, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(w_cols + offs_k[:, None] * stride_wk, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(a, b, acc)

    # ---- epilogue: the final output, or this split's fp32 partial ----
    y = y_ptr + pid_k * stride_ys + offs_m[:, None] * stride_yt + offs_n[None, :] * stride_yn
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def decode_gemm(
    x: torch.Tensor,
    w: torch.Tensor,
    *,
    block_m: int,
    block_n: int,
    block_k: int,
    split_k: int = 1,
    group_m: int = 8,
    num_warps: int = 4,
    num_stages: int = 2,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y[T, N] = x[T, K] @ w[N, K]^T`` with fp32 accumulation, output in ``x.dtype``.

    ``x`` and ``w`` share a float dtype and have a dense innermost dimension; ``out`` may be any
    ``[T, N]`` view with a dense last dimension. ``split_k > 1`` adds an fp32 workspace
    ``[split_k, T, N]`` and a reduction launch. Tails of T, N and K are masked, so no dimension needs
    to be a multiple of its tile.
    """
    check_ndim("x", x, 2, "[T, K]")
    check_ndim("w", w, 2, "[N, K]")
    check_dtype("x", x)
    check_same_dtype("w", w, "x", x)
    check_device("w", w, x)
    check_unit_inner_stride("x", x)
    check_unit_inner_stride("w", w)
    T, K = x.shape
    N = w.shape[0]
    if w.shape[1] != K:
        raise ValueError(f"w: shape {tuple(w.shape)} must be [N, K] with K = {K} (x is {tuple(x.shape)})")
    for name, value in (("block_m", block_m), ("block_n", block_n), ("block_k", block_k)):
        check_tile(name, value, x.is_cuda)
    for name, value in (("split_k", split_k), ("group_m", group_m)):
        check_positive(name, value)
    out = output_buffer("out", out, (T, N), x.dtype, x.device)
    if T == 0 or N == 0:
        return out
    if K == 0:
        return out.zero_()

    # Each split gets a whole number of K-tiles; trailing splits may get none and write zeros.
    k_per_split = triton.cdiv(triton.cdiv(K, block_k), split_k) * block_k
    if split_k == 1:
        y, y_strides = out, (0, out.stride(0), out.stride(1))
    else:
        y = torch.empty((split_k, T, N), dtype=torch.float32, device=x.device)
        y_strides = y.stride()

    grid = (triton.cdiv(T, block_m) * triton.cdiv(N, block_n), split_k)
    _decode_gemm_kernel[grid](
        x, w, y,
        T, N, K, k_per_split,
        x.stride(0), x.stride(1),
        w.stride(0), w.stride(1),
        *y_strides,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    if split_k > 1:
        sum_slices(y.permute(1, 0, 2), out=out)
    return out
