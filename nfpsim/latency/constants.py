"""The constants of the latency model, kept apart so a calibration can replace any of them.

Two kinds:

- :class:`DeviceCeilings`: what the GPU can do at all (SMs, achievable copy and matmul rates, the
  interconnect). From the hardware spec, or measured by a calibration.
- :class:`KernelConstants`, one set per *pricer key*: how close one kernel implementation gets to
  those ceilings and what it pays on top. Keys: ``gemm`` (cuBLAS or nfpsim's Triton GEMM, whichever the
  preset runs), ``moe``, ``attention`` (nfpsim's Triton attention), ``pointwise`` (torch's element-wise,
  copy and reduction kernels), ``pointwise.<kind>`` for the fused per-token kernels and gathers (``norm``,
  ``add_norm``, ``rotary``, ``act``, ``gather``: each its own kernel with its own fixed cost), and
  ``sdpa.cudnn``, ``sdpa.flash``, ``sdpa.efficient`` for the backends torch's scaled_dot_product_attention
  dispatches to (``sdpa.flash`` also prices the serving engines' paged FlashAttention).

The defaults below were fitted on real H100 SXM kernel timings (cuBLAS and Triton GEMMs, fused MoE,
the three SDPA backends; see ``nfpsim-calibrate source=``) and are expressed so that they carry to
another GPU of the same architecture: rates per CTA (bytes in flight / memory latency, Little's law)
and fractions of that GPU's own copy and matmul ceilings, not absolute bandwidths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from nfpsim.config import HardwareSpec, KernelPreset
from nfpsim.errors import ConfigError

SDPA_BACKENDS = ("cudnn", "flash", "efficient")
POINTWISE_KINDS = ("norm", "add_norm", "rotary", "act", "gather")  # kinds with their own pricer key
KERNEL_KEYS = (("gemm", "moe", "attention", "pointwise") + tuple(f"sdpa.{b}" for b in SDPA_BACKENDS)
               + tuple(f"pointwise.{k}" for k in POINTWISE_KINDS))
FAMILIES = KERNEL_KEYS  # the keys a calibration table stores fitted constants under


@dataclass(frozen=True)
class DeviceCeilings:
    arch: str  # sm80, sm90, sm100, cdna3: which kernels the libraries dispatch to
    num_sms: int
    stream_bytes_per_s: float  # achievable HBM streaming rate (copy ceiling)
    bf16_flop_per_s: float  # achievable dense matmul rate
    fp8_flop_per_s: float | None
    interconnect_bytes_per_s: float
    collective_latency_s: float
    l2_bytes: float = 0.0  # last-level cache: activations just written by the previous kernel stay there

    def matmul_flop_per_s(self, bytes_per_element: int) -> float:
        if bytes_per_element == 1:
            if self.fp8_flop_per_s is None:
                raise ConfigError("model.dtype=fp8: this hardware has no fp8 matmul rate (allowed: bf16, fp16)")
            return self.fp8_flop_per_s
        return self.bf16_flop_per_s


@dataclass(frozen=True)
class KernelConstants:
    """How one kernel implementation uses the GPU. Rates are per CTA so they transfer across GPUs of one
    architecture; efficiencies are fractions of the GPU's own ceilings."""

    mem_efficiency: float  # fraction of the copy ceiling the kernel reaches with every SM streaming
    compute_efficiency: float  # fraction of the matmul ceiling at full MMA tiles
    l2_hit_fraction: float  # share of re-read weight/KV panels served by L2 instead of HBM
    launch_overhead_s: float  # fixed cost per kernel inside a CUDA graph (issue, ramp, tail)
    cta_bytes_per_s: float = 40e9  # one CTA's streaming rate: its bytes in flight over memory latency
    overlap: float = 0.3  # share of the smaller of compute and memory time not hidden behind the larger
    tile_area_half: float = 4600.0  # MMA tile area (rows x cols) at which a tile runs at half the rate of a full one


@dataclass(frozen=True)
class LatencyConstants:
    device: DeviceCeilings
    gemm: KernelConstants
    moe: KernelConstants
    attention: KernelConstants
    pointwise: KernelConstants
    sdpa: Mapping[str, KernelConstants] = field(default_factory=dict)
    pointwise_kinds: Mapping[str, KernelConstants] = field(default_factory=dict)

    def kernel(self, key: str) -> KernelConstants:
        family, _, variant = key.partition(".")
        if variant:
            return getattr(self, _VARIANTS[family])[variant]
        return getattr(self, key)

    def with_kernel(self, key: str, constants: KernelConstants) -> LatencyConstants:
        family, _, variant = key.partition(".")
        if variant:
            field_name = _VARIANTS[family]
            return dataclasses.replace(self, **{field_name: {**getattr(self, field_name), variant: constants}})
        return dataclasses.replace(self, **{key: constants})

    def with_launch_overhead(self, launch_s: float) -> LatencyConstants:
        """Every kernel's fixed cost set to a measured launch overhead (a calibration's ceiling)."""
        out = self
        for key in KERNEL_KEYS:
            out = out.with_kernel(key, dataclasses.replace(self.kernel(key), launch_overhead_s=launch_s))
        return out

    @classmethod
    def defaults(cls, hardware: HardwareSpec, kernels: KernelPreset | None = None) -> LatencyConstants:
        fp8 = hardware.matmul_flop_per_s("fp8") if hardware.fp8_flop_per_s else None
        device = DeviceCeilings(
            arch=hardware.arch,
            num_sms=hardware.num_sms,
            stream_bytes_per_s=hardware.stream_bytes_per_s,
            bf16_flop_per_s=hardware.matmul_flop_per_s("bf16"),
            fp8_flop_per_s=fp8,
            interconnect_bytes_per_s=hardware.interconnect_bytes_per_s,
            collective_latency_s=hardware.collective_latency_s,
            l2_bytes=float(hardware.l2_bytes),
        )
        gemm_key = "gemm.triton" if kernels is not None and kernels.gemm.backend == "triton" else "gemm.cublas"
        moe_key = "moe.triton" if kernels is not None and kernels.moe.backend == "triton" else "moe.grouped_mm"

        def make(key: str) -> KernelConstants:
            return KernelConstants(launch_overhead_s=hardware.launch_overhead_s, **BACKEND_DEFAULTS[key])

        return cls(device=device, gemm=make(gemm_key), moe=make(moe_key), attention=make("attention.triton"),
                   pointwise=make("pointwise"), sdpa={b: make(f"sdpa.{b}") for b in SDPA_BACKENDS},
                   pointwise_kinds={k: make(f"pointwise.{k}") for k in POINTWISE_KINDS})


# keys ``<family>.<variant>`` live in a mapping field of LatencyConstants
_VARIANTS = {"sdpa": "sdpa", "pointwise": "pointwise_kinds"}


def _streaming(mem_efficiency: float, l2_hit_fraction: float, cta_bytes_per_s: float) -> dict[str, float]:
    """A memory-bound kernel's constants: no MMA tiles, so nothing to overlap and no compute ceiling."""
    return dict(mem_efficiency=mem_efficiency, compute_efficiency=1.0, l2_hit_fraction=l2_hit_fraction,
                cta_bytes_per_s=cta_bytes_per_s, overlap=0.0)


# Per-implementation defaults (everything but the launch overhead, which is the GPU's). Fitted on the
# H100 SXM reference sweep with a held-out split; a calibration of the GPU at hand replaces them.
BACKEND_DEFAULTS: dict[str, dict[str, float]] = {
    "gemm.cublas": dict(mem_efficiency=1.0, compute_efficiency=1.1, l2_hit_fraction=1.0, cta_bytes_per_s=150e9,
                        overlap=0.27, tile_area_half=600.0),
    "gemm.triton": dict(mem_efficiency=1.0, compute_efficiency=1.0, l2_hit_fraction=1.0, cta_bytes_per_s=90e9,
                        overlap=0.45, tile_area_half=5500.0),
    "moe.triton": dict(mem_efficiency=1.0, compute_efficiency=0.7, l2_hit_fraction=1.0, cta_bytes_per_s=37e9,
                       overlap=0.23, tile_area_half=2200.0),
    "moe.grouped_mm": dict(mem_efficiency=1.0, compute_efficiency=0.6, l2_hit_fraction=1.0, cta_bytes_per_s=60e9,
                           overlap=0.23, tile_area_half=2300.0),
    "attention.triton": dict(mem_efficiency=0.9, compute_efficiency=0.5, l2_hit_fraction=0.8, cta_bytes_per_s=60e9,
                             overlap=0.2),
    "sdpa.cudnn": dict(mem_efficiency=1.1, compute_efficiency=1.1, l2_hit_fraction=0.45, cta_bytes_per_s=160e9,
                       overlap=0.3),
    "sdpa.flash": dict(mem_efficiency=0.93, compute_efficiency=0.57, l2_hit_fraction=0.4, cta_bytes_per_s=140e9,
                       overlap=0.0),
    "sdpa.efficient": dict(mem_efficiency=0.6, compute_efficiency=0.8, l2_hit_fraction=0.8, cta_bytes_per_s=16e9,
                           overlap=0.0),
    # torch's element-wise kernels: a CTA moves its few KB in about one memory round trip (~4 GB/s per CTA;
    # Vidur's H100 profile of torch's residual add: 16% MAPE over 1..32k tokens with this structure)
    "pointwise": _streaming(mem_efficiency=1.0, l2_hit_fraction=0.0, cta_bytes_per_s=4e9),
    # vLLM's fused per-token kernels (one CTA per token row), fitted on Vidur's H100 profiles; each also has
    # its own fixed cost there (act ~0.9 us, rotary ~1.7 us, the norms ~2.2 us; see the calibration tables)
    "pointwise.norm": _streaming(mem_efficiency=0.3, l2_hit_fraction=0.42, cta_bytes_per_s=11e9),
    "pointwise.add_norm": _streaming(mem_efficiency=0.68, l2_hit_fraction=0.37, cta_bytes_per_s=19e9),
    "pointwise.rotary": _streaming(mem_efficiency=0.49, l2_hit_fraction=0.16, cta_bytes_per_s=11e9),
    "pointwise.act": _streaming(mem_efficiency=0.63, l2_hit_fraction=0.0, cta_bytes_per_s=13e9),
    # torch's embedding gather: the generic element-wise constants (Vidur's embedding timings are too
    # irregular to fit: 14 us at 16 tokens, 6 us at 64)
    "pointwise.gather": _streaming(mem_efficiency=0.85, l2_hit_fraction=0.0, cta_bytes_per_s=20e9),
}
