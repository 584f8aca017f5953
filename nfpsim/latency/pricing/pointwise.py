"""Memory-bound kernels: element-wise ops, reductions, copies, gathers, top-k, softmax, collectives.

One launch each. Torch's element-wise kernels give each CTA a few hundred elements (128 threads x 4
vectorized), its row reductions one CTA per row: a tiny output is a few CTAs, which stream at a few
CTAs' rate, not at HBM's. What dominates small ones is the fixed cost of a kernel in a CUDA graph.
"""

from __future__ import annotations

import math

from nfpsim.latency.base import OpCost
from nfpsim.latency.constants import DeviceCeilings, KernelConstants
from nfpsim.latency.pricing.common import assemble, memory_time
from nfpsim.shapes import CollectiveShape, PointwiseShape

# output elements one CTA produces, by kind (torch's launch geometry: element-wise kernels give a
# 128-thread CTA 4 vectorized elements per thread; a row reduction, softmax or top-k gives a CTA a row)
ELEMENTS_PER_CTA = {"elementwise": 512, "copy": 512, "fill": 512, "cat": 512, "gather": 512, "scatter": 512,
                    "reduction": 1, "softmax": 1, "topk": 1}


def pointwise_cost(shape: PointwiseShape, kc: KernelConstants, dev: DeviceCeilings) -> OpCost:
    if shape.elements > 0:
        ctas = math.ceil(shape.elements / ELEMENTS_PER_CTA.get(shape.kind, 512))
    else:
        ctas = 4 * dev.num_sms
    resident = min(ctas, 8 * dev.num_sms)
    memory = memory_time(shape.bytes, shape.bytes, resident, kc, dev)
    return assemble(0.0, memory, 1, kc, shape.bytes, 0.0)


def collective_cost(shape: CollectiveShape, dev: DeviceCeilings) -> OpCost:
    time = shape.bytes / dev.interconnect_bytes_per_s + dev.collective_latency_s
    return OpCost(time, shape.bytes, 0.0, "network", "analytic")
