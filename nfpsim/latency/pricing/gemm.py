"""Dense GEMMs ``y[T, N] = x[T, K] @ W[N, K]^T`` (``batch`` of them per launch for ``bmm``).

Structure of a tiled GEMM kernel: ``ceil(T/BM) x ceil(N/BN) x split`` CTAs, each computing a padded
``BM x BN`` output tile over ``K/split``. Every CTA of an M-tile row loads its ``BN x K`` weight panel, but
M-tiles resident at the same time share it through L2: the weights come from HBM once per *wave* that
holds the panel, and re-reads by later waves hit L2 with the kernel's hit fraction. Split-K writes fp32
partials that one more kernel reduces.

``cublas``: the library has many kernels and picks one per shape; the model takes the fastest of the
preset's candidate tiles and splits (the heuristic aims for it; where it misses, a calibration table's
measurement of that shape corrects it). ``triton``: the host's tile for this token count, split-K picked
as the fastest when the tile leaves it to the host.
"""

from __future__ import annotations

import math

from nfpsim.config import GemmKernel, GemmTile
from nfpsim.latency.base import OpCost
from nfpsim.latency.constants import DeviceCeilings, KernelConstants
from nfpsim.latency.pricing.common import (assemble, compute_time, memory_time, op_time, partial_bytes,
                                            power_of_two_splits)
from nfpsim.shapes import GemmShape


def gemm_cost(shape: GemmShape, kernel: GemmKernel, kc: KernelConstants, dev: DeviceCeilings) -> OpCost:
    best, best_s = None, math.inf
    for tile in kernel.candidates(shape.tokens):
        splits = [tile.split_k] if tile.split_k else power_of_two_splits(shape.k, tile.block_k, kernel.max_split_k)
        for split in splits:
            terms = tile_terms(shape, tile, split, kernel.ctas_per_sm, kernel.launches, kc, dev)
            compute, memory, launches, _, _ = terms
            time_s = op_time(compute, memory, launches, kc)
            if time_s < best_s:  # the first of equally fast candidates
                best, best_s = terms, time_s
    compute, memory, launches, hbm_bytes, flops = best
    return assemble(compute, memory, launches, kc, hbm_bytes, flops)


def tile_cost(shape: GemmShape, tile: GemmTile, split: int, ctas_per_sm: int, launches: int, kc: KernelConstants,
              dev: DeviceCeilings, *, panels: float | None = None, rows_padded: float | None = None) -> OpCost:
    """One tiled GEMM launch. ``panels``/``rows_padded`` let a grouped GEMM say how many distinct weight
    matrices its rows touch and how many padded rows it computes (defaults: one per batch, ``T``)."""
    compute, memory, launches, hbm_bytes, flops = tile_terms(shape, tile, split, ctas_per_sm, launches, kc, dev,
                                                             panels=panels, rows_padded=rows_padded)
    return assemble(compute, memory, launches, kc, hbm_bytes, flops)


def tile_terms(shape: GemmShape, tile: GemmTile, split: int, ctas_per_sm: int, launches: int, kc: KernelConstants,
               dev: DeviceCeilings, *, panels: float | None = None, rows_padded: float | None = None
               ) -> tuple[float, float, int, float, float]:
    """``(compute s, memory s, launches, HBM bytes, FLOPs)`` of :func:`tile_cost`."""
    t, n, k, s, batch = shape.tokens, shape.n, shape.k, shape.bytes_per_element, shape.batch
    m_tiles = math.ceil(t / tile.block_m) if rows_padded is None else rows_padded / tile.block_m
    n_tiles = math.ceil(n / tile.block_n)
    groups = batch if panels is None else panels
    ctas = max(1.0, (batch if panels is None else 1) * m_tiles * n_tiles * split)
    slots = dev.num_sms * ctas_per_sm
    waves = math.ceil(ctas / slots)
    m_tiles_per_group = m_tiles / groups if panels is not None else m_tiles
    weight = groups * n * k * s
    # M-tiles resident together share a weight panel through L2; later waves re-read it, partly from L2
    weight_reads = 1 + (min(m_tiles_per_group, waves) - 1) * (1 - kc.l2_hit_fraction) if m_tiles_per_group > 1 else 1
    activations = s * batch * t * (k + n)
    partials = 0.0 if split == 1 else partial_bytes(split * batch * t * n, kc)
    hbm_bytes = weight * weight_reads + activations + partials
    loaded = weight * max(m_tiles_per_group, 1.0) + s * batch * t * k * n_tiles
    k_padded = math.ceil(k / (tile.block_k * split)) * tile.block_k * split
    flops = 2.0 * (batch if panels is None else 1) * m_tiles * tile.block_m * n_tiles * tile.block_n * k_padded
    compute = compute_time(flops, ctas, tile.block_m * tile.block_n, s, kc, dev)
    memory = memory_time(hbm_bytes, loaded, min(ctas, slots), kc, dev)
    return compute, memory, launches + (split > 1), hbm_bytes, flops
