"""Memory-bound work of a decoder layer around its GEMMs and attention.

Each op is one launch whose bytes grow linearly with the number of tokens ``T = B*M``; fusing the
residual add into the norm and the KV-cache write into the rotary embedding saves a round trip of the
activations through HBM each.

Legend: T = tokens, H = hidden size, F = FFN width, B = sequences, M = new positions per sequence,
Hq / Hkv = query / KV heads, D / Dv = key / value head dims, S = cache slots per sequence.

Block sizes here are not tuning knobs: one program covers a whole row (norms, rotary) or a fixed
1024-wide chunk of it, so only ``num_warps`` is exposed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from nfpsim.kernels._checks import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_device,
    check_dtype,
    check_ndim,
    check_same_dtype,
    check_shape,
    check_unit_inner_stride,
    next_power_of_2,
    output_buffer,
)

# Widest chunk of a row one elementwise program handles; larger rows get more programs.
MAX_CHUNK = 1024
# A norm keeps its whole row in registers to reduce it in one pass.
MAX_NORM_WIDTH = 65536


# ---------------------------------------------------------------------------------------------
# RMSNorm, optionally fused with the residual add
# ---------------------------------------------------------------------------------------------
@triton.jit
def _rmsnorm_kernel(
    # Pointers
    x_ptr,  # [T, H]
    residual_ptr,  # [T, H], read only when ADD_RESIDUAL
    weight_ptr,  # [H]
    out_ptr,  # [T, H]
    residual_out_ptr,  # [T, H], written only when ADD_RESIDUAL
    # Sizes
    H,
    eps,
    # Strides (the hidden dimension is dense)
    stride_xt,
    stride_rt,
    stride_ot,
    stride_rot,
    # Meta-parameters
    ADD_RESIDUAL: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_H)
    mask = offs < H

    x = tl.load(x_ptr + row * stride_xt + offs, mask=mask, other=0.0)
    if ADD_RESIDUAL:
        # The next layer reads the residual stream in the activation dtype, so the norm must see the
        # same rounded sum, not the fp32 one.
        r = tl.load(residual_ptr + row * stride_rt + offs, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(residual_out_ptr.dtype.element_ty)
        tl.store(residual_out_ptr + row * stride_rot + offs, x, mask=mask)

    # ---- mean of squares in fp32, then scale ----
    x = x.to(tl.float32)
    inv_rms = tl.math.rsqrt(tl.sum(x * x, axis=0) / H + eps)
    w = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_ot + offs, (x * inv_rms * w).to(out_ptr.dtype.element_ty), mask=mask)


def _check_norm_args(x: torch.Tensor, weight: torch.Tensor) -> int:
    check_ndim("x", x, 2, "[T, H]")
    check_dtype("x", x)
    check_unit_inner_stride("x", x)
    H = x.shape[1]
    check_shape("weight", weight, (H,))
    check_dtype("weight", weight)
    check_device("weight", weight, x)
    check_unit_inner_stride("weight", weight)
    if H > MAX_NORM_WIDTH:
        raise ValueError(f"x: hidden size {H} exceeds the one-pass limit {MAX_NORM_WIDTH}")
    return H


def rmsnorm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor | None = None, *, num_warps: int = 4
) -> torch.Tensor:
    """``out[t] = x[t] / sqrt(mean(x[t]**2) + eps) * weight``, statistics in fp32.

    Shapes: ``x [T, H]``, ``weight [H]`` -> ``out [T, H]`` in ``x.dtype``.
    """
    H = _check_norm_args(x, weight)
    out = output_buffer("out", out, tuple(x.shape), x.dtype, x.device)
    if x.shape[0] == 0:
        return out
    _rmsnorm_kernel[(x.shape[0],)](
        x, None, weight, out, None,
        H, eps,
        x.stride(0), 0, out.stride(0), 0,
        ADD_RESIDUAL=False, BLOCK_H=next_power_of_2(H),
        num_warps=num_warps,
    )  # fmt: skip
    return out


def fused_add_rmsnorm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    out: torch.Tensor | None = None,
    residual_out: torch.Tensor | None = None,
    num_warps: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add then RMSNorm in one pass over the activations.

    Shapes: ``x, residual [T, H]``, ``weight [H]`` -> ``(normed [T, H], residual_out [T, H])`` with
    ``residual_out = x + residual`` (rounded to ``x.dtype``) and ``normed = rmsnorm(residual_out)``.
    """
    H = _check_norm_args(x, weight)
    check_shape("residual", residual, tuple(x.shape))
    check_same_dtype("residual", residual, "x", x)
    check_device("residual", residual, x)
    check_unit_inner_stride("residual", residual)
    out = output_buffer("out", out, tuple(x.shape), x.dtype, x.device)
    residual_out = output_buffer("residual_out", residual_out, tuple(x.shape), x.dtype, x.device)
    if x.shape[0] == 0:
        return out, residual_out
    _rmsnorm_kernel[(x.shape[0],)](
        x, residual, weight, out, residual_out,
        H, eps,
        x.stride(0), residual.stride(0), out.stride(0), residual_out.stride(0),
        ADD_RESIDUAL=True, BLOCK_H=next_power_of_2(H),
        num_warps=num_warps,
    )  # fmt: skip
    return out, residual_out


# ---------------------------------------------------------------------------------------------
# SiLU-and-mul (the gated FFN activation)
# ---------------------------------------------------------------------------------------------
@triton.jit
def _silu_and_mul_kernel(
    # Pointers
    gate_up_ptr,  # [T, 2F]: gate in [0, F), up in [F, 2F)
    out_ptr,  # [T, F]
    # Sizes
    F,
    # Strides (the feature dimension is dense)
    stride_gt,
    stride_ot,
    # Meta-parameters
    BLOCK_F: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    mask = offs < F
    gate = tl.load(gate_up_ptr + row * stride_gt + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * stride_gt + F + offs, mask=mask, other=0.0).to(tl.float32)
    act = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + row * stride_ot + offs, act.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(gate_up: torch.Tensor, out: torch.Tensor | None = None, *, num_warps: int = 4) -> torch.Tensor:
    """``out = silu(gate) * up`` with ``gate, up = gate_up[:, :F], gate_up[:, F:]``, math in fp32.

    Shapes: ``gate_up [T, 2F]`` -> ``out [T, F]`` in ``gate_up.dtype``.
    """
    check_ndim("gate_up", gate_up, 2, "[T, 2F]")
    check_dtype("gate_up", gate_up)
    check_unit_inner_stride("gate_up", gate_up)
    T, two_f = gate_up.shape
    if two_f % 2:
        raise ValueError(f"gate_up: last dimension {two_f} must be even (gate and up halves)")
    F = two_f // 2
    out = output_buffer("out", out, (T, F), gate_up.dtype, gate_up.device)
    if T == 0 or F == 0:
        return out
    block_f = min(MAX_CHUNK, next_power_of_2(F))
    _silu_and_mul_kernel[(T, triton.cdiv(F, block_f))](
        gate_up, out, F, gate_up.stride(0), out.stride(0), BLOCK_F=block_f, num_warps=num_warps
    )
    return out


# ---------------------------------------------------------------------------------------------
# Deterministic sum over the middle dimension (split-K partials, MoE top-k combine)
# ---------------------------------------------------------------------------------------------
@triton.jit
def _sum_slices_kernel(
    # Pointers
    src_ptr,  # [R, S, C]
    dst_ptr,  # [R, C]
    # Sizes
    C,
    # Strides (C is dense)
    stride_sr,
    stride_ss,
    stride_dr,
    # Meta-parameters
    NUM_SLICES: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = offs < C
    # A fixed summation order keeps the result bitwise reproducible (no atomics).
    acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    for s in tl.static_range(NUM_SLICES):
        acc += tl.load(src_ptr + row * stride_sr + s * stride_ss + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(dst_ptr + row * stride_dr + offs, acc.to(dst_ptr.dtype.element_ty), mask=mask)


def sum_slices(src: torch.Tensor, out: torch.Tensor | None = None, *, num_warps: int = 4) -> torch.Tensor:
    """``out[r, c] = sum_s src[r, s, c]`` in fp32, summed in the order ``s = 0, 1, ...``.

    Shapes: ``src [R, S, C]`` (any strides, ``C`` dense) -> ``out [R, C]``, in ``out``'s dtype when
    given (any float dtype), else in ``src.dtype``. Serves the split-K reduction (``src`` = the
    workspace viewed as ``[T, split_k, N]``) and the MoE combine over the ``k`` choices (``[T, k, H]``).
    """
    check_ndim("src", src, 3, "[R, S, C]")
    check_dtype("src", src)
    check_unit_inner_stride("src", src)
    R, S, C = src.shape
    if out is not None:
        check_dtype("out", out)
    out = output_buffer("out", out, (R, C), src.dtype if out is None else out.dtype, src.device)
    if R == 0 or C == 0:
        return out
    if S == 0:
        return out.zero_()
    block_c = min(MAX_CHUNK, next_power_of_2(C))
    _sum_slices_kernel[(R, triton.cdiv(C, block_c))](
        src, out, C, src.stride(0), src.stride(1), out.stride(0),
        NUM_SLICES=S, BLOCK_C=block_c, num_warps=num_warps,
    )  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
# Rotary embedding of q and k fused with the KV-cache write
# ---------------------------------------------------------------------------------------------
@triton.jit
def _rotate_heads(
    src_ptr,  # first element of head 0 of one token, [heads, 2*half] with dense head dim
    dst_ptr,
    stride_src_h,
    stride_dst_h,
    num_heads,
    half,
    cos,  # [1, BLOCK_HALF] fp32
    sin,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    # Neox / Llama half-split rotary: element c of the first half pairs with element c of the second.
    offs_h = tl.arange(0, BLOCK_H)[:, None]
    offs_c = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (offs_h < num_heads) & (offs_c < half)
    src = src_ptr + offs_h * stride_src_h + offs_c
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + half, mask=mask, other=0.0).to(tl.float32)
    dst = dst_ptr + offs_h * stride_dst_h + offs_c
    tl.store(dst, (x1 * cos - x2 * sin).to(dst_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + half, (x2 * cos + x1 * sin).to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kv_write_kernel(
    # Pointers
    q_ptr,  # [B, M, Hq, D]
    k_ptr,  # [B, M, Hkv, D]
    v_ptr,  # [B, M, Hkv, Dv]
    cos_ptr,  # [S_rope, D/2]
    sin_ptr,  # [S_rope, D/2]
    k_cache_ptr,  # [B, S, Hkv, D]
    v_cache_ptr,  # [B, S, Hkv, Dv]
    start_pos_ptr,  # [B]
    q_out_ptr,  # [B, M, Hq, D]
    # Sizes
    M,
    Hq,
    Hkv,
    half,
    Dv,
    # Strides (head dims are dense)
    stride_qb, stride_qm, stride_qh,
    stride_kb, stride_km, stride_kh,
    stride_vb, stride_vm, stride_vh,
    stride_cos, stride_sin,
    stride_kcb, stride_kcs, stride_kch,
    stride_vcb, stride_vcs, stride_vch,
    stride_ob, stride_om, stride_oh,
    # Meta-parameters
    BLOCK_HQ: tl.constexpr,
    BLOCK_HKV: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):  # fmt: skip
    # One program per new token: all its heads of q, k and v.
    pid = tl.program_id(0)
    b = (pid // M).to(tl.int64)
    i = pid % M
    pos = tl.load(start_pos_ptr + b).to(tl.int64) + i

    # ---- cos/sin of this absolute position, shared by every head ----
    offs_c = tl.arange(0, BLOCK_HALF)[None, :]
    cos = tl.load(cos_ptr + pos * stride_cos + offs_c, mask=offs_c < half, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + pos * stride_sin + offs_c, mask=offs_c < half, other=0.0).to(tl.float32)

    # ---- rotate q into the output and k into the cache ----
    _rotate_heads(
        q_ptr + b * stride_qb + i * stride_qm, q_out_ptr + b * stride_ob + i * stride_om,
        stride_qh, stride_oh, Hq, half, cos, sin, BLOCK_HQ, BLOCK_HALF,
    )  # fmt: skip
    _rotate_heads(
        k_ptr + b * stride_kb + i * stride_km, k_cache_ptr + b * stride_kcb + pos * stride_kcs,
        stride_kh, stride_kch, Hkv, half, cos, sin, BLOCK_HKV, BLOCK_HALF,
    )  # fmt: skip

    # ---- copy v into the cache ----
    offs_h = tl.arange(0, BLOCK_HKV)[:, None]
    offs_d = tl.arange(0, BLOCK_DV)[None, :]
    mask = (offs_h < Hkv) & (offs_d < Dv)
    v = tl.load(v_ptr + b * stride_vb + i * stride_vm + offs_h * stride_vh + offs_d, mask=mask)
    v_dst = v_cache_ptr + b * stride_vcb + pos * stride_vcs + offs_h * stride_vch + offs_d
    tl.store(v_dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def rotary_kv_write(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start_pos: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
    num_warps: int = 4,
) -> torch.Tensor:
    """Rotate q and k at their absolute positions, write k and v into the caches, return rotated q.

    Shapes: ``q [B, M, Hq, D]``, ``k [B, M, Hkv, D]``, ``v [B, M, Hkv, Dv]``, ``cos, sin [S_rope, D/2]``,
    ``k_cache [B, S, Hkv, D]``, ``v_cache [B, S, Hkv, Dv]``, ``start_pos [B]`` int32/int64.
    New position ``i`` of sequence ``b`` sits at ``start_pos[b] + i``; the caller guarantees
    ``start_pos[b] + M <= min(S, S_rope)`` (not checked: that would need a device sync). After the
    call ``decode_attention`` with ``context_lens = start_pos + M`` sees these positions.
    The caches are updated in place; the result (``out``) has ``q``'s shape and dtype.
    """
    for name, t, legend in (("q", q, "[B, M, Hq, D]"), ("k", k, "[B, M, Hkv, D]"), ("v", v, "[B, M, Hkv, Dv]"),
                            ("k_cache", k_cache, "[B, S, Hkv, D]"), ("v_cache", v_cache, "[B, S, Hkv, Dv]")):
        check_ndim(name, t, 4, legend)
        check_dtype(name, t)
        check_device(name, t, q)
        check_unit_inner_stride(name, t)
    B, M, Hq, D = q.shape
    Hkv, Dv = v.shape[2], v.shape[3]
    S = k_cache.shape[1]
    if D % 2:
        raise ValueError(f"q: head dim {D} must be even for half-split rotary")
    check_shape("k", k, (B, M, Hkv, D))
    check_shape("v", v, (B, M, Hkv, Dv))
    check_shape("k_cache", k_cache, (B, S, Hkv, D))
    check_shape("v_cache", v_cache, (B, S, Hkv, Dv))
    for name, t in (("cos", cos), ("sin", sin)):
        check_ndim(name, t, 2, "[S_rope, D/2]")
        check_dtype(name, t, FLOAT_DTYPES)
        check_device(name, t, q)
        check_unit_inner_stride(name, t)
        if t.shape[1] != D // 2:
            raise ValueError(f"{name}: last dimension {t.shape[1]} must be D/2 = {D // 2}")
    check_shape("start_pos", start_pos, (B,))
    check_dtype("start_pos", start_pos, INDEX_DTYPES)
    check_device("start_pos", start_pos, q)
    out = output_buffer("out", out, tuple(q.shape), q.dtype, q.device)
    if B * M == 0:
        return out

    _rotary_kv_write_kernel[(B * M,)](
        q, k, v, cos, sin, k_cache, v_cache, start_pos, out,
        M, Hq, Hkv, D // 2, Dv,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        cos.stride(0), sin.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        BLOCK_HQ=next_power_of_2(Hq), BLOCK_HKV=next_power_of_2(Hkv),
        BLOCK_HALF=next_power_of_2(D // 2), BLOCK_DV=next_power_of_2(Dv),
        num_warps=num_warps,
    )  # fmt: skip
    return out
