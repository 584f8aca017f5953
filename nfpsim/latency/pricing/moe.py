"""Routed experts of an MoE layer and single grouped-GEMM launches.

A fused/grouped MoE runs each projection as one grouped GEMM over the tokens sorted by expert, each
expert's rows padded to the M-tile (``block_m``). Its cost follows the *distinct experts woken*: their
weights stream at near copy speed (the wake-up), and an expert holding more than one row block re-reads
its panel from L2 (priced by the GEMM tile model with one weight panel per active expert). Activation
traffic (gather, the gate_up and activated rows, the weighted combine) streams on top.
"""

from __future__ import annotations

from nfpsim.config import GemmTile, MoeKernel
from nfpsim.latency.base import OpCost
from nfpsim.latency.constants import DeviceCeilings, KernelConstants
from nfpsim.latency.pricing.gemm import tile_cost
from nfpsim.routing import expected_active_experts, expected_padded_blocks, inclusion_probabilities
from nfpsim.shapes import GemmShape, GroupedGemmShape, MoeShape


def grouped_gemm_cost(rows: int, n: int, k: int, s: int, active: float, blocks: float, kernel: MoeKernel,
                      kc: KernelConstants, dev: DeviceCeilings, launches: int) -> OpCost:
    """One grouped GEMM of ``rows`` rows over ``active`` expert matrices ``[N, K]`` in ``blocks`` padded
    row blocks of ``block_m``."""
    tile = GemmTile(kernel.block_m, kernel.block_n, kernel.block_k, 1)
    shape = GemmShape(rows, n, k, s)
    return tile_cost(shape, tile, 1, kernel.ctas_per_sm, launches, kc, dev, panels=max(active, 1.0),
                     rows_padded=blocks * kernel.block_m)


def moe_cost(shape: MoeShape, kernel: MoeKernel, kc: KernelConstants, dev: DeviceCeilings) -> OpCost:
    h, f, s = shape.hidden, shape.ffn, shape.bytes_per_element
    active = shape.active_experts
    blocks = expected_padded_blocks(shape.tokens, shape.inclusion, kernel.block_m)
    assignments = shape.tokens * shape.top_k
    gate_up = grouped_gemm_cost(assignments, 2 * f, h, s, active, blocks, kernel, kc, dev, 0)
    down = grouped_gemm_cost(assignments, h, f, s, active, blocks, kernel, kc, dev, 0)
    # gather/activation/combine traffic beyond the GEMMs' own operands: the activated row [F] written and
    # read, the output rows [H] read back by the combine, the combined [H] row per token
    extra = s * (assignments * (2 * f + h) + shape.tokens * h)
    streamed = extra / (dev.stream_bytes_per_s * kc.mem_efficiency)
    launch = kernel.launches * kc.launch_overhead_s
    time_s = gate_up.time_s + down.time_s + streamed + launch
    if launch > time_s - launch:
        bound = "launch"
    else:
        bound = "compute" if gate_up.bound == down.bound == "compute" else "memory"
    return OpCost(time_s, gate_up.bytes + down.bytes + extra, gate_up.flops + down.flops, bound, "analytic")


def grouped_launch_cost(shape: GroupedGemmShape, kernel: MoeKernel, kc: KernelConstants,
                        dev: DeviceCeilings) -> OpCost:
    """One ``_grouped_mm`` launch: rows spread uniformly over the ``active_groups`` they fall into (when
    unknown, over all groups, each row an independent draw)."""
    groups = max(1, round(shape.active_groups)) if shape.active_groups else shape.groups
    inclusion = inclusion_probabilities(groups, 1, 0.0)
    active = shape.active_groups or expected_active_experts(shape.rows, inclusion)
    blocks = max(expected_padded_blocks(shape.rows, inclusion, kernel.block_m), active)
    return grouped_gemm_cost(shape.rows, shape.n, shape.k, shape.bytes_per_element, active, blocks, kernel, kc,
                             dev, 1)
