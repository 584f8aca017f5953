"""What every kernel pricer shares: how a grid of CTAs turns bytes and FLOPs into time.

A kernel launches ``ctas`` programs. Memory: the bytes it really moves, at the lower of the GPU's copy
ceiling (times the kernel's efficiency) and what its resident CTAs can keep in flight (each CTA streams
at ``cta_bytes_per_s``: its bytes in flight over the memory latency, Little's law). Compute: the FLOPs it
really executes (padded tiles) at the matmul ceiling times the kernel's efficiency and the fill of its
MMA tiles, stretched by wave quantization (work is spread over SMs in whole CTAs). The body is the larger
of the two plus the unhidden share of the smaller (``overlap``); each launch adds a fixed cost.
"""

from __future__ import annotations

import math

from nfpsim.latency.base import OpCost
from nfpsim.latency.constants import DeviceCeilings, KernelConstants

FP32_BYTES = 4


def wave_spread(ctas: float, num_sms: int) -> float:
    """Factor by which whole-CTA scheduling stretches perfectly spread work: fewer CTAs than SMs leave
    SMs idle; more run in waves, the last one partly empty."""
    if ctas <= 0:
        return 1.0
    return math.ceil(ctas / num_sms) * num_sms / ctas


FULL_TILE_AREA = 128 * 256  # the largest MMA tiles of Hopper/Ampere GEMM libraries


def mma_fill(tile_area: float, kc: KernelConstants) -> float:
    """Share of the full-tile MMA rate a ``rows x cols`` output tile reaches: small tiles cannot keep the
    tensor cores' pipelines full (``area / (area + half)``, 1 at the largest library tile). Measured on
    H100 Triton GEMMs: 16x64 tiles run at about a quarter of the rate of 128x128 tiles."""
    half = kc.tile_area_half
    return (tile_area / (tile_area + half)) / (FULL_TILE_AREA / (FULL_TILE_AREA + half))


def memory_time(hbm_bytes: float, loaded_bytes: float, resident_ctas: float, kc: KernelConstants,
                dev: DeviceCeilings) -> float:
    """``hbm_bytes`` from HBM at the kernel's share of the copy ceiling; ``loaded_bytes`` (what the CTAs
    load, L2 hits included) at what the resident CTAs keep in flight. The slower of the two."""
    hbm = hbm_bytes / (dev.stream_bytes_per_s * kc.mem_efficiency)
    return max(hbm, loaded_bytes / (max(resident_ctas, 1.0) * kc.cta_bytes_per_s))


def compute_time(flops: float, ctas: float, tile_area: float, bytes_per_element: int, kc: KernelConstants,
                 dev: DeviceCeilings) -> float:
    if flops <= 0:
        return 0.0
    rate = dev.matmul_flop_per_s(bytes_per_element) * kc.compute_efficiency * mma_fill(tile_area, kc)
    return flops / rate * wave_spread(ctas, dev.num_sms)


def _body_and_launches(compute_s: float, memory_s: float, launches: float, kc: KernelConstants
                       ) -> tuple[float, float]:
    """The larger term plus the unhidden share of the smaller, and the launches' fixed cost."""
    return max(compute_s, memory_s) + kc.overlap * min(compute_s, memory_s), launches * kc.launch_overhead_s


def op_time(compute_s: float, memory_s: float, launches: float, kc: KernelConstants) -> float:
    """The time :func:`assemble` gives these terms (to compare candidates without building their costs)."""
    body, launch_s = _body_and_launches(compute_s, memory_s, launches, kc)
    return body + launch_s


def assemble(compute_s: float, memory_s: float, launches: float, kc: KernelConstants, bytes_: float,
             flops: float) -> OpCost:
    body, launch_s = _body_and_launches(compute_s, memory_s, launches, kc)
    if launch_s > body:
        bound = "launch"
    else:
        bound = "compute" if compute_s > memory_s else "memory"
    return OpCost(body + launch_s, bytes_, flops, bound, "analytic")


def power_of_two_splits(length: int, block: int, max_split: int) -> list[int]:
    """Split counts a host heuristic may choose: powers of two that keep at least a block per split."""
    splits, split = [1], 2
    while split <= max_split and length / split >= block:
        splits.append(split)
        split *= 2
    return splits


def partial_bytes(elements: float, kc: KernelConstants) -> float:
    """fp32 split partials: written once, read back by the reduction (partly from L2)."""
    return elements * FP32_BYTES * (2 - kc.l2_hit_fraction)
