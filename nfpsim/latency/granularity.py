"""The NFP principle per op family: roofline terms plus the granularity of the implementation.

Each function prices one instance of an op as ``max(compute, memory) + launches * launch_overhead``,
where compute counts the FLOPs the kernel really executes (tile padding, wave quantization) and memory
the bytes it really moves (one weight/KV pass per M-tile, partly served by L2; split partials):

- GEMM ``[T,K] x [K,N]`` with tile ``BM x BN``: ``ceil(T/BM)`` M-tiles each read all of ``W``;
  the re-reads hit L2 with probability ``h``, so weight bytes are ``W * (1 + (ceil(T/BM)-1)(1-h))``.
- fused MoE: weights of the expected distinct experts, each expert's tokens padded to ``BM`` rows.
- attention: the ``g*M`` query rows of a KV head (GQA-packed) or ``M`` rows of a query head padded to
  ``BQ``; every query tile re-reads its KV; split-KV adds fp32 partials and a reduction launch.
"""

from __future__ import annotations

import dataclasses
import math

from nfpsim.config import AttentionKernel, GemmKernel, GemmTile, MoeKernel, PointwiseKernel
from nfpsim.latency.base import OpCost
from nfpsim.latency.constants import DeviceCeilings, FamilyConstants
from nfpsim.routing import expected_padded_blocks
from nfpsim.shapes import AttentionShape, CollectiveShape, GemmShape, MoeShape, PointwiseShape

FP32_BYTES = 4


def _compute_time(flops: float, ctas: float, ctas_per_sm: int, flop_per_s: float,
                  dev: DeviceCeilings) -> float:
    """Executed FLOPs at the matmul rate, stretched by idle SMs: fewer programs than SMs leave SMs
    idle; more run in waves of ``num_sms * ctas_per_sm`` and the last wave may be partly empty."""
    if flops <= 0:
        return 0.0
    if ctas <= dev.num_sms:
        spread = dev.num_sms / ctas
    else:
        slots = dev.num_sms * ctas_per_sm
        spread = math.ceil(ctas / slots) * slots / ctas
    return flops / flop_per_s * spread


def _cost(compute_s: float, memory_s: float, launch_s: float, bytes_: float, flops: float) -> OpCost:
    body = max(compute_s, memory_s)
    if launch_s > body:
        bound = "launch"
    else:
        bound = "compute" if compute_s > memory_s else "memory"
    return OpCost(body + launch_s, bytes_, flops, bound, "analytic")


def _partial_bytes(elements: float, fam: FamilyConstants) -> float:
    """fp32 split partials: written once, read back by the reduction, mostly from L2."""
    return elements * FP32_BYTES * (2 - fam.l2_hit_fraction)


def power_of_two_splits(length: int, block: int, max_split: int) -> list[int]:
    """Split counts a host heuristic may choose: powers of two that keep a block per split."""
    splits, split = [1], 2
    while split <= max_split and length / split >= block:
        splits.append(split)
        split *= 2
    return splits


def gemm_cost(shape: GemmShape, kernel: GemmKernel, fam: FamilyConstants, dev: DeviceCeilings) -> OpCost:
    """Split-K 0 in the tile means the host picks the split; it picks the fastest (split-K pays only
    where too few programs would otherwise leave HBM or the SMs idle)."""
    tile = kernel.select(shape.tokens)
    if tile.split_k:
        return _gemm_cost(shape, kernel, tile, tile.split_k, fam, dev)
    return min((_gemm_cost(shape, kernel, tile, split, fam, dev)
                for split in power_of_two_splits(shape.k, tile.block_k, kernel.max_split_k)),
               key=lambda cost: cost.time_s)


def _gemm_cost(shape: GemmShape, kernel: GemmKernel, tile: GemmTile, split: int, fam: FamilyConstants,
               dev: DeviceCeilings) -> OpCost:
    t, n, k, s = shape.tokens, shape.n, shape.k, shape.bytes_per_element
    m_tiles = math.ceil(t / tile.block_m)
    n_tiles = math.ceil(n / tile.block_n)
    ctas = m_tiles * n_tiles * split
    weight = shape.weight_bytes * (1 + (m_tiles - 1) * (1 - fam.l2_hit_fraction))
    partials = 0 if split == 1 else _partial_bytes(split * t * n, fam)
    bytes_ = weight + s * t * (k + n) + partials
    k_padded = math.ceil(k / (tile.block_k * split)) * tile.block_k * split
    flops = 2.0 * m_tiles * tile.block_m * n_tiles * tile.block_n * k_padded
    compute = _compute_time(flops, ctas, kernel.ctas_per_sm,
                            dev.matmul_flop_per_s(s) * fam.compute_efficiency, dev)
    memory = bytes_ / dev.stream_rate(ctas, fam.mem_efficiency)
    launches = kernel.launches + (split > 1)
    return _cost(compute, memory, launches * fam.launch_overhead_s, bytes_, flops)


def moe_cost(shape: MoeShape, kernel: MoeKernel, fam: FamilyConstants, dev: DeviceCeilings) -> OpCost:
    h, f, s = shape.hidden, shape.ffn, shape.bytes_per_element
    active = shape.active_experts
    blocks = expected_padded_blocks(shape.tokens, shape.inclusion, kernel.block_m)
    rows = blocks * kernel.block_m
    # An expert with more than one M-tile re-reads its weights once per extra tile.
    weight_passes = active + max(0.0, blocks - active) * (1 - fam.l2_hit_fraction)
    flop_per_s = dev.matmul_flop_per_s(s) * fam.compute_efficiency
    body = compute_total = memory_total = 0.0
    # gate_up [rows, H] x [H, 2F], then down [rows, F] x [F, H]: two grouped GEMMs over the padded layout
    for n_out, k_in in ((2 * f, h), (h, f)):
        ctas = blocks * math.ceil(n_out / kernel.block_n)
        compute = _compute_time(2.0 * rows * n_out * k_in, ctas, kernel.ctas_per_sm, flop_per_s, dev)
        memory = weight_passes * n_out * k_in * s / dev.stream_rate(ctas, fam.mem_efficiency)
        body += max(compute, memory)
        compute_total += compute
        memory_total += memory
    activations = shape.activation_bytes
    streamed = activations / (dev.stream_bytes_per_s * fam.mem_efficiency)
    body += streamed
    launch = kernel.launches * fam.launch_overhead_s
    bytes_ = weight_passes * shape.expert_bytes + activations
    # the phases run one after the other: time is their sum, the bound that of the totals
    cost = _cost(compute_total, memory_total + streamed, launch, bytes_, 2.0 * rows * 3 * h * f)
    return dataclasses.replace(cost, time_s=body + launch)


def attention_cost(shape: AttentionShape, kernel: AttentionKernel, fam: FamilyConstants,
                   dev: DeviceCeilings) -> OpCost:
    """``num_splits`` 0 lets the host pick the fastest split-KV count (as flash-decoding heuristics do)."""
    if kernel.num_splits:
        return _attention_cost(shape, kernel, kernel.num_splits, fam, dev)
    return min((_attention_cost(shape, kernel, split, fam, dev)
                for split in power_of_two_splits(shape.kv_len, kernel.block_kv, kernel.max_splits)),
               key=lambda cost: cost.time_s)


def _attention_cost(shape: AttentionShape, kernel: AttentionKernel, split: int, fam: FamilyConstants,
                    dev: DeviceCeilings) -> OpCost:
    s, g = shape.bytes_per_element, shape.group
    if kernel.pack_gqa:
        units, rows, reads_per_tile = shape.num_seqs * shape.kv_heads, g * shape.positions, 1
    else:  # one program per query head: the g heads of a KV head each read it
        units, rows, reads_per_tile = shape.num_seqs * shape.q_heads, shape.positions, g
    q_tiles = math.ceil(rows / kernel.block_q)
    kv_len = shape.kv_len
    ctas = units * q_tiles * split
    reads = q_tiles * reads_per_tile
    cache = shape.cache_bytes * (1 + (reads - 1) * (1 - fam.l2_hit_fraction))
    q_and_out = shape.num_seqs * shape.positions * shape.q_heads * (shape.qk_dim + shape.v_dim) * s
    partials = 0 if split == 1 else _partial_bytes(
        shape.num_seqs * shape.q_heads * shape.positions * split * (shape.v_dim + 1), fam)
    bytes_ = cache + q_and_out + partials
    kv_padded = math.ceil(kv_len / (split * kernel.block_kv)) * split * kernel.block_kv
    flops = 2.0 * units * q_tiles * kernel.block_q * kv_padded * (shape.qk_dim + shape.v_dim)
    compute = _compute_time(flops, ctas, kernel.ctas_per_sm,
                            dev.matmul_flop_per_s(s) * fam.compute_efficiency, dev)
    memory = bytes_ / dev.stream_rate(ctas, fam.mem_efficiency)
    launches = kernel.launches + (split > 1)
    return _cost(compute, memory, launches * fam.launch_overhead_s, bytes_, flops)


def pointwise_cost(name: str, shape: PointwiseShape, kernel: PointwiseKernel, fam: FamilyConstants,
                   dev: DeviceCeilings) -> OpCost:
    bytes_ = shape.bytes * kernel.traffic_factor
    memory = bytes_ / (dev.stream_bytes_per_s * fam.mem_efficiency)
    return _cost(0.0, memory, kernel.launches_for(name) * fam.launch_overhead_s, bytes_, 0.0)


def collective_cost(shape: CollectiveShape, dev: DeviceCeilings) -> OpCost:
    time = shape.bytes / dev.interconnect_bytes_per_s + dev.collective_latency_s
    return OpCost(time, shape.bytes, 0.0, "network", "analytic")
