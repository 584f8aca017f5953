"""Memory-bound kernels: element-wise ops, reductions, copies, gathers, top-k, softmax, collectives.

One launch each. Torch's element-wise kernels give each CTA a few hundred elements (128 threads x 4
vectorized), its row reductions one CTA per row: a tiny output is a few CTAs, which stream at a few
CTAs' rate, not at HBM's. What dominates small ones is the fixed cost of a kernel in a CUDA graph.

The fused per-token kernels of the serving engines (vLLM/SGLang ``rms_norm``, ``fused_add_rms_norm``,
``rotary_embedding``, ``silu_and_mul``) launch one CTA per token row (grid = num_tokens) whose threads
walk the row in a strided loop: a decode step's few rows run at a few CTAs' rate, so their time is the
launch plus one row at one CTA's rate, whatever the GPU's bandwidth. Rows beyond the resident CTAs
queue; at thousands of rows HBM bounds them, less the share of the input the previous kernel left in L2.
nfpsim's own Triton kernels (:mod:`nfpsim.kernels.pointwise`) have the same geometry: one program per
token row for RMSNorm and rotary+KV write, per row chunk for SiLU-and-mul.
"""

from __future__ import annotations

import math

from nfpsim.latency.base import OpCost
from nfpsim.latency.constants import DeviceCeilings, KernelConstants
from nfpsim.latency.pricing.common import assemble, memory_time
from nfpsim.shapes import CollectiveShape, PointwiseShape

# output elements one CTA produces, by kind (torch's launch geometry: element-wise kernels give a
# 128-thread CTA 4 vectorized elements per thread; a softmax or top-k gives a CTA a row; reductions below)
ELEMENTS_PER_CTA = {"elementwise": 512, "copy": 512, "fill": 512, "cat": 512, "gather": 512, "scatter": 512,
                    "softmax": 1, "topk": 1}

# A long row reduction (an argmax over the vocabulary, a norm over a wide row) is split across CTAs by
# torch's reduction kernel once a 512-thread CTA would walk more than ~16 values per thread: a CTA then
# takes ~32 KiB of the row (512 x 16 values of 4 bytes; the reduced rows of a forward are fp32 norms and
# bf16 logits) and the partial results meet in a second pass.
REDUCTION_BYTES_PER_CTA = 512 * 16 * 4

# threads per CTA of the fused per-token kernels (vLLM: blocks of min(row width, 1024) threads for the
# norms and the activation, min(heads * rot_dim / 2, 512) for rotary); an SM holds 2048 threads
ROW_THREADS = {"norm": 1024, "add_norm": 1024, "rotary": 512, "act": 1024}
THREADS_PER_SM = 2048


def row_cost(shape: PointwiseShape, kc: KernelConstants, dev: DeviceCeilings) -> OpCost:
    """One CTA per token row: resident rows each at one CTA's rate, the rest queued behind them."""
    slots = dev.num_sms * THREADS_PER_SM // ROW_THREADS[shape.kind]
    rows_s = shape.bytes / shape.rows / kc.cta_bytes_per_s * max(1.0, shape.rows / slots)
    in_l2 = kc.l2_hit_fraction * min(1.0, dev.l2_bytes / shape.bytes) if dev.l2_bytes else 0.0
    hbm_s = shape.bytes * (1.0 - in_l2) / (dev.stream_bytes_per_s * kc.mem_efficiency)
    return assemble(0.0, max(rows_s, hbm_s), 1, kc, shape.bytes, 0.0)


def pointwise_cost(shape: PointwiseShape, kc: KernelConstants, dev: DeviceCeilings) -> OpCost:
    if shape.rows > 0 and shape.kind in ROW_THREADS:
        return row_cost(shape, kc, dev)
    if shape.kind == "reduction" and shape.elements > 0:
        ctas = shape.elements * max(1, math.ceil(shape.bytes / shape.elements / REDUCTION_BYTES_PER_CTA))
    elif shape.elements > 0:
        ctas = math.ceil(shape.elements / ELEMENTS_PER_CTA.get(shape.kind, 512))
    else:
        ctas = 4 * dev.num_sms
    resident = min(ctas, 8 * dev.num_sms)
    memory = memory_time(shape.bytes, shape.bytes, resident, kc, dev)
    return assemble(0.0, memory, 1, kc, shape.bytes, 0.0)


def collective_cost(shape: CollectiveShape, dev: DeviceCeilings) -> OpCost:
    time = shape.bytes / dev.interconnect_bytes_per_s + dev.collective_latency_s
    return OpCost(time, shape.bytes, 0.0, "network", "analytic")
