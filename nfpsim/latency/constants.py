"""The constants of the analytic latency model, kept apart so a calibration can replace any of them.

Defaults come from the hardware spec (measured ceilings where known, L2 hit fraction, launch overhead)
and the kernel preset (how close each kernel family gets to those ceilings). A calibration fits the same
fields from timed kernels and swaps them in with :func:`dataclasses.replace`.
"""

from __future__ import annotations

from dataclasses import dataclass

from nfpsim.config import HardwareSpec, KernelPreset
from nfpsim.errors import ConfigError

FAMILIES = ("gemm", "moe", "attention", "pointwise")


@dataclass(frozen=True)
class DeviceCeilings:
    num_sms: int
    stream_bytes_per_s: float  # achievable HBM streaming rate (copy ceiling)
    bf16_flop_per_s: float  # achievable dense matmul rate
    fp8_flop_per_s: float | None
    sm_bandwidth_headroom: float
    interconnect_bytes_per_s: float
    collective_latency_s: float

    def matmul_flop_per_s(self, bytes_per_element: int) -> float:
        if bytes_per_element == 1:
            if self.fp8_flop_per_s is None:
                raise ConfigError("model.dtype=fp8: this hardware has no fp8 matmul rate (allowed: bf16, fp16)")
            return self.fp8_flop_per_s
        return self.bf16_flop_per_s

    def stream_rate(self, ctas: float, efficiency: float) -> float:
        """Bytes/s a kernel of ``ctas`` programs can pull: few programs cannot saturate HBM."""
        per_cta = self.stream_bytes_per_s / self.num_sms * self.sm_bandwidth_headroom
        return min(self.stream_bytes_per_s * efficiency, max(ctas, 1.0) * per_cta)


@dataclass(frozen=True)
class FamilyConstants:
    mem_efficiency: float  # fraction of the streaming ceiling this kernel family reaches
    compute_efficiency: float  # fraction of the matmul ceiling
    l2_hit_fraction: float  # re-streamed tiles served by L2
    launch_overhead_s: float  # per kernel launch inside a CUDA graph


@dataclass(frozen=True)
class LatencyConstants:
    device: DeviceCeilings
    gemm: FamilyConstants
    moe: FamilyConstants
    attention: FamilyConstants
    pointwise: FamilyConstants

    @classmethod
    def defaults(cls, hardware: HardwareSpec, kernels: KernelPreset) -> LatencyConstants:
        fp8 = hardware.matmul_flop_per_s("fp8") if hardware.fp8_flop_per_s else None
        device = DeviceCeilings(
            num_sms=hardware.num_sms,
            stream_bytes_per_s=hardware.stream_bytes_per_s,
            bf16_flop_per_s=hardware.matmul_flop_per_s("bf16"),
            fp8_flop_per_s=fp8,
            sm_bandwidth_headroom=hardware.sm_bandwidth_headroom,
            interconnect_bytes_per_s=hardware.interconnect_bytes_per_s,
            collective_latency_s=hardware.collective_latency_s,
        )

        def family(kernel, compute_efficiency: float) -> FamilyConstants:
            return FamilyConstants(kernel.mem_efficiency, compute_efficiency,
                                   hardware.l2_hit_fraction, hardware.launch_overhead_s)

        return cls(
            device=device,
            gemm=family(kernels.gemm, kernels.gemm.compute_efficiency),
            moe=family(kernels.moe, kernels.moe.compute_efficiency),
            attention=family(kernels.attention, kernels.attention.compute_efficiency),
            pointwise=family(kernels.pointwise, 1.0),
        )
