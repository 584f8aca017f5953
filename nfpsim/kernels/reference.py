"""Plain torch references of every kernel op: fp32 math, explicit loops where that is clearer.

They define what the kernels must compute (tests compare against them) and favour obviousness over
speed. Each returns its result cast to the activation dtype, like the kernel it mirrors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def decode_gemm_ref(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``y[T, N] = x[T, K] @ w[N, K]^T``."""
    return (x.float() @ w.float().T).to(x.dtype)


def rmsnorm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x[T, H] / sqrt(mean(x**2) + eps) * weight[H]``."""
    xf = x.float()
    inv_rms = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (xf * inv_rms * weight.float()).to(x.dtype)


def fused_add_rmsnorm_ref(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rmsnorm(x + residual), x + residual)``, the sum rounded to ``x.dtype`` before the norm."""
    residual_out = (x.float() + residual.float()).to(x.dtype)
    return rmsnorm_ref(residual_out, weight, eps), residual_out


def silu_and_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate_up[:, :F]) * gate_up[:, F:]``."""
    gate, up = gate_up.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(gate_up.dtype)


def rotary_kv_write_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                        k_cache: torch.Tensor, v_cache: torch.Tensor,
                        start_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Half-split rotary of q, k at ``start_pos[b] + i``; returns ``(q_rot, new k_cache, new v_cache)``.

    Unlike the kernel it leaves its inputs untouched and returns updated copies of the caches.
    """
    B, M = q.shape[:2]
    positions = start_pos.long()[:, None] + torch.arange(M, device=q.device)  # [B, M]
    cos_bm = cos.float()[positions][:, :, None, :]  # [B, M, 1, D/2]
    sin_bm = sin.float()[positions][:, :, None, :]

    def rotate(t: torch.Tensor) -> torch.Tensor:
        t1, t2 = t.float().chunk(2, dim=-1)
        return torch.cat([t1 * cos_bm - t2 * sin_bm, t2 * cos_bm + t1 * sin_bm], dim=-1)

    k_cache, v_cache = k_cache.clone(), v_cache.clone()
    batch = torch.arange(B, device=q.device)[:, None].expand(B, M)
    k_cache[batch, positions] = rotate(k).to(k_cache.dtype)
    v_cache[batch, positions] = v.to(v_cache.dtype)
    return rotate(q).to(q.dtype), k_cache, v_cache


def route_ref(router_logits: torch.Tensor, top_k: int, renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over ``E`` experts then the ``top_k`` largest: ``(weights [T, k] fp32, ids [T, k] int32)``."""
    probs = router_logits.float().softmax(dim=-1)
    weights, ids = probs.sort(dim=-1, descending=True, stable=True)
    weights, ids = weights[:, :top_k], ids[:, :top_k]
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids.to(torch.int32)


def moe_align_ref(
    topk_ids: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slots ``t*k + j`` sorted by expert, each expert's run padded to a multiple of ``block_m``.

    Returns int32 ``(sorted_token_ids [P], expert_ids [P // block_m], num_tokens_post_padded [1])``
    with ``P = ceil((T*k + E*(block_m - 1)) / block_m) * block_m``; padding holds the sentinel
    ``T*k``, blocks past the live part have expert ``-1``. Torch ops only, no host sync.
    """
    device = topk_ids.device
    num_slots = topk_ids.numel()
    num_padded = -(-(num_slots + num_experts * (block_m - 1)) // block_m) * block_m

    expert_of_slot = topk_ids.reshape(-1).long()  # [T*k]
    counts = torch.zeros(num_experts, dtype=torch.long, device=device)
    counts.scatter_add_(0, expert_of_slot, torch.ones_like(expert_of_slot))  # [E]: n_e
    padded_counts = (counts + block_m - 1) // block_m * block_m
    padded_end = padded_counts.cumsum(0)  # [E]: end of each expert's padded run
    padded_start = padded_end - padded_counts
    count_start = counts.cumsum(0) - counts

    # A stable sort keeps slots of one expert in ascending order; a slot's rank within its expert
    # is its distance from the first slot of that expert in the sorted order.
    order = expert_of_slot.argsort(stable=True)  # [T*k]
    sorted_expert = expert_of_slot[order]
    rank = torch.arange(num_slots, device=device) - count_start[sorted_expert]
    sorted_token_ids = torch.full((num_padded,), num_slots, dtype=torch.int32, device=device)
    sorted_token_ids.scatter_(0, padded_start[sorted_expert] + rank, order.to(torch.int32))

    # Block b starts at b*block_m; its expert is the first whose padded run ends after that.
    block_start = torch.arange(0, num_padded, block_m, device=device)
    expert_ids = torch.searchsorted(padded_end, block_start, right=True)
    expert_ids = torch.where(expert_ids < num_experts, expert_ids, -1).to(torch.int32)
    return sorted_token_ids, expert_ids, padded_end[-1:].to(torch.int32)


def fused_moe_ref(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    """``y[t] = sum_j topk_weights[t, j] * ffn_{topk_ids[t, j]}(x[t])`` with a SiLU-gated FFN per expert.

    Shapes: ``x [T, H]``, ``w_gate_up [E, 2F, H]`` (gate rows first), ``w_down [E, H, F]``,
    ``topk_weights, topk_ids [T, k]``.
    """
    T, H = x.shape
    y = torch.zeros(T, H, dtype=torch.float32, device=x.device)
    xf = x.float()
    for e in range(w_gate_up.shape[0]):
        token, choice = (topk_ids == e).nonzero(as_tuple=True)
        if token.numel() == 0:
            continue
        gate, up = (xf[token] @ w_gate_up[e].float().T).chunk(2, dim=-1)
        expert_out = (F.silu(gate) * up) @ w_down[e].float().T  # [n_e, H]
        y.index_add_(0, token, expert_out * topk_weights[token, choice].float()[:, None])
    return y.to(x.dtype)


def decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    context_lens: torch.Tensor,
    *,
    causal: bool,
    sm_scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention of ``M`` new positions per sequence over its first ``context_lens[b]`` cache slots.

    Shapes: ``q [B, M, Hq, D]``, ``k_cache [B, S, Hkv, D]``, ``v_cache [B, S, Hkv, Dv]`` ->
    ``o [B, M, Hq, Dv]``. Query ``i`` sits at ``context_lens[b] - M + i``; with ``causal`` it sees keys
    up to and including its own position, otherwise all ``context_lens[b]`` keys. Query head ``h`` reads
    KV head ``h // (Hq // Hkv)``.
    """
    B, M, Hq, D = q.shape
    group = Hq // k_cache.shape[2]
    scale = D**-0.5 if sm_scale is None else sm_scale
    out = torch.empty(B, M, Hq, v_cache.shape[-1], dtype=torch.float32, device=q.device)
    for b in range(B):
        L = int(context_lens[b])
        k = k_cache[b, :L].float().repeat_interleave(group, dim=1)  # [L, Hq, D]
        v = v_cache[b, :L].float().repeat_interleave(group, dim=1)  # [L, Hq, Dv]
        scores = torch.einsum("mhd,lhd->hml", q[b].float(), k) * scale  # [Hq, M, L]
        if causal:
            query_pos = L - M + torch.arange(M, device=q.device)
            allowed = torch.arange(L, device=q.device)[None, :] <= query_pos[:, None]  # [M, L]
            scores = scores.masked_fill(~allowed, float("-inf"))
        out[b] = torch.einsum("hml,lhd->mhd", scores.softmax(dim=-1), v)
    return out.to(q.dtype)
