"""The vendor path: what users run without nfpsim's kernels, as calibration times it and validation runs it.

One definition for both, so a calibrated "vendor" table describes exactly the forward that validation
measures: cuBLAS GEMMs (``torch.matmul``), the FlashAttention-2 kernel that SDPA's flash backend
dispatches to, MoE through ``torch._grouped_mm``, and unfused torch pointwise ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

RMS_EPS = 1e-6


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``q [B, Hq, M, D]`` (contiguous) over ``k [B, Hkv, S, D]``, ``v [B, Hkv, S, Dv]`` -> ``[B, Hq, M, Dv]``.

    Plain ``F.scaled_dot_product_attention`` with no backend forced: torch picks it (cuDNN on Hopper with
    current torch). The ``g = Hq/Hkv`` query heads of each KV head are passed as ``g*M`` rows of one head
    (a free view of a contiguous ``q``), as decode kernels pack them; ``mask`` is the ``[g*M, S]`` boolean
    mask of those rows (:func:`folded_causal_mask`), or None (one position, or a bidirectional block).
    """
    b, hq, m, d = q.shape
    hkv = k.shape[1]
    o = F.scaled_dot_product_attention(q.reshape(b, hkv, hq // hkv * m, d), k, v, attn_mask=mask)
    return o.view(b, hq, m, v.shape[-1])


def folded_causal_mask(query_positions: torch.Tensor, key_positions: torch.Tensor, group: int) -> torch.Tensor:
    """``[g*M, S]``: row ``(j, i)`` (head ``j`` of a KV head's group, new position ``i``) may see the keys
    at or before its own absolute position (the bottom-right aligned causal mask of decoding). Two
    kernels: the comparison and the copy that folds the group into the rows."""
    allowed = key_positions[None, :] <= query_positions[:, None]  # [M, S]
    return allowed.expand(group, *allowed.shape).reshape(group * allowed.shape[0], allowed.shape[1])


def grouped_moe(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, w_gate_up: torch.Tensor,
                w_down: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Routed experts: sort by expert, two ``torch._grouped_mm`` calls, weighted scatter-add into ``out``.

    ``x [T, H]``, ``ids``/``weights [T, k]``, ``w_gate_up [E, 2F, H]``, ``w_down [E, H, F]`` -> ``out [T, H]``.
    Static shapes and no host sync (counts by ``scatter_add_``), so it can be captured in a CUDA graph.
    """
    num_experts, top_k = w_gate_up.shape[0], ids.shape[1]
    flat = ids.reshape(-1).long()
    order = flat.argsort(stable=True)
    counts = torch.zeros(num_experts, dtype=torch.int32, device=x.device).scatter_add_(
        0, flat, torch.ones_like(flat, dtype=torch.int32))
    offsets = counts.cumsum(0, dtype=torch.int32)
    rows = order // top_k
    gate_up = torch._grouped_mm(x[rows], w_gate_up.transpose(1, 2), offs=offsets)
    down = torch._grouped_mm(silu_mul(gate_up), w_down.transpose(1, 2), offs=offsets)
    down = down * weights.reshape(-1)[order].unsqueeze(1).to(down.dtype)
    return out.zero_().index_add_(0, rows, down)


def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """RMSNorm as eager model code writes it: eight kernels (upcast, square, mean, add eps, rsqrt, scale,
    downcast, weight), the middle ones in fp32."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + RMS_EPS)
    return weight * h.to(x.dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rmsnorm(x + residual), x + residual)``: the residual add, then the eager RMSNorm."""
    summed = x + residual
    return rms_norm(summed, weight), summed


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    f = gate_up.shape[-1] // 2
    return F.silu(gate_up[:, :f]) * gate_up[:, f:]


def rotate_half_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = cat(-x2, x1)``: five kernels. ``x [B, H, M, D]``
    (any strides), ``cos``/``sin [B, 1, M, D]`` (the half-width tables repeated); the result is contiguous."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def rotary_kv_write(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on ``q [B, M, Hq, D]`` and ``k [B, M, Hkv, D]`` (views of the qkv output) at
    ``positions [B, M]`` with ``cos``/``sin [B, M, D]`` gathered once per forward; rotated ``k`` and ``v`` are
    written into the caches ``[B, S, Hkv, D]`` at ``(rows [B, 1], positions)`` by index (one kernel each). Returns the rotated ``q [B, Hq, M, D]``
    (contiguous, so attention can fold the GQA group into its rows for free)."""
    cos, sin = cos[:, None], sin[:, None]  # [B, 1, M, D]
    q_rot = rotate_half_rope(q.transpose(1, 2), cos, sin)
    k_rot = rotate_half_rope(k.transpose(1, 2), cos, sin)
    k_cache[rows, positions] = k_rot.transpose(1, 2)
    v_cache[rows, positions] = v
    return q_rot
