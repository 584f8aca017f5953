"""One pricer per (op family, implementation): ops in, :class:`~nfpsim.latency.base.OpCost` out.

:func:`pricer_key` names which set of :class:`~nfpsim.latency.constants.KernelConstants` prices an op
(what a calibration fits per implementation); :func:`price` prices one instance.
"""

from __future__ import annotations

from nfpsim.config import KernelPreset
from nfpsim.latency.base import OpCost
from nfpsim.latency.constants import POINTWISE_KINDS, LatencyConstants
from nfpsim.latency.pricing.attention import (cudnn_cost, efficient_cost, flash_cost, paged_cost, sdpa_backend,
                                              triton_cost)
from nfpsim.latency.pricing.gemm import gemm_cost
from nfpsim.latency.pricing.moe import grouped_launch_cost, moe_cost
from nfpsim.latency.pricing.pointwise import collective_cost, pointwise_cost
from nfpsim.shapes import (AttentionShape, CollectiveShape, GemmShape, GroupedGemmShape, MoeShape, Op,
                           PointwiseShape)

FAMILY_OF = {GemmShape: "gemm", GroupedGemmShape: "moe", MoeShape: "moe", AttentionShape: "attention",
             PointwiseShape: "pointwise", CollectiveShape: "collective"}
_SDPA = {"cudnn": cudnn_cost, "flash": flash_cost, "efficient": efficient_cost}


def family_of(op: Op) -> str:
    return FAMILY_OF[type(op.shape)]


def attention_backend(shape: AttentionShape, kernels: KernelPreset, arch: str) -> str:
    backend = kernels.attention.backend
    return sdpa_backend(shape, arch) if backend == "auto" else backend


def pricer_key(op: Op, kernels: KernelPreset, arch: str) -> str | None:
    """The constants that price ``op`` (None: priced from the ceilings alone, e.g. collectives)."""
    family = family_of(op)
    if family == "attention":
        backend = attention_backend(op.shape, kernels, arch)
        if backend == "paged":  # the same FlashAttention tiles as torch's flash backend: its constants
            return "sdpa.flash"
        return "attention" if backend == "triton" else f"sdpa.{backend}"
    if family == "pointwise" and op.shape.kind in POINTWISE_KINDS:
        return f"pointwise.{op.shape.kind}"
    return None if family == "collective" else family


def price(op: Op, kernels: KernelPreset, c: LatencyConstants) -> OpCost:
    """One instance of ``op`` on ``kernels`` with constants ``c`` (no caching: calibration fits call it)."""
    shape, dev = op.shape, c.device
    if isinstance(shape, GemmShape):
        return gemm_cost(shape, kernels.gemm, c.gemm, dev)
    if isinstance(shape, MoeShape):
        return moe_cost(shape, kernels.moe, c.moe, dev)
    if isinstance(shape, GroupedGemmShape):
        return grouped_launch_cost(shape, kernels.moe, c.moe, dev)
    if isinstance(shape, AttentionShape):
        backend = attention_backend(shape, kernels, dev.arch)
        if backend == "triton":
            return triton_cost(shape, kernels.attention, c.attention, dev)
        if backend == "paged":
            return paged_cost(shape, kernels.attention, c.sdpa["flash"], dev)
        return _SDPA[backend](shape, c.sdpa[backend], dev)
    if isinstance(shape, PointwiseShape):
        kind = shape.kind if shape.kind in POINTWISE_KINDS else None
        return pointwise_cost(shape, c.pointwise_kinds[kind] if kind else c.pointwise, dev)
    if isinstance(shape, CollectiveShape):
        return collective_cost(shape, dev)
    raise TypeError(f"no cost model for {type(shape).__name__}")
