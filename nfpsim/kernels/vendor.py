"""The vendor path: what users run without nfpsim's kernels, as calibration times it and validation runs it.

One definition for both, so a calibrated "vendor" table describes exactly the forward that validation
measures: cuBLAS GEMMs (``torch.matmul``), the FlashAttention-2 kernel that SDPA's flash backend
dispatches to, MoE through ``torch._grouped_mm``, and unfused torch pointwise ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

RMS_EPS = 1e-6


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """``q [B, Hq, M, D]`` over ``k [B, Hkv, S, D]``, ``v [B, Hkv, S, Dv]`` -> ``[B, Hq, M, Dv]``.

    The M queries are the last M of the S cached positions. On CUDA this calls the flash kernel
    directly: FlashAttention-2 aligns ``is_causal`` bottom-right (query i sees keys up to S - M + i) and
    reads GQA K/V without repeating them, whereas SDPA's own ``is_causal`` is top-left aligned, wrong for
    decode. Elsewhere (CPU tests) SDPA with the explicit bottom-right mask computes the same function.
    """
    if q.is_cuda or q.is_meta:  # meta: what CUDA runs, for nfpsim.capture
        return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False,
                                                                  scale=q.shape[-1] ** -0.5)[0]
    m, s = q.shape[2], k.shape[2]
    mask = None
    if causal:
        rows = torch.arange(m, device=q.device)[:, None] + (s - m)
        mask = torch.arange(s, device=q.device)[None, :] <= rows
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


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
    return F.rms_norm(x, (x.shape[-1],), weight, RMS_EPS)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rmsnorm(x + residual), x + residual)`` as two unfused ops."""
    summed = x + residual
    return rms_norm(summed, weight), summed


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    f = gate_up.shape[-1] // 2
    return F.silu(gate_up[:, :f]) * gate_up[:, f:]


def rotary_kv_write(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    cos_table: torch.Tensor, sin_table: torch.Tensor, start_pos: torch.Tensor) -> torch.Tensor:
    """Rotary on ``q``/``k [B, M, H, D]`` at positions ``start_pos[b] + i`` (neox half split), rotated ``k``
    and ``v`` written into the caches ``[B, S, Hkv, D]`` by index; returns rotated ``q``."""
    batch, positions, half = q.shape[0], q.shape[1], q.shape[-1] // 2
    pos = start_pos.long()[:, None] + torch.arange(positions, device=q.device)  # [B, M]
    cos, sin = cos_table[pos][:, :, None, :], sin_table[pos][:, :, None, :]  # [B, M, 1, D/2]

    def rotate(x):
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    rows = torch.arange(batch, device=q.device)[:, None].expand(batch, positions)
    k_cache[rows, pos] = rotate(k)
    v_cache[rows, pos] = v
    return rotate(q)
