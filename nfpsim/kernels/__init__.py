"""Triton kernels of a decode forward, timed by calibration; torch references live in ``reference``.

Every wrapper takes its tile configuration as explicit keyword arguments (no autotuning), so
calibration can sweep it, and validates its inputs with ``ValueError``s that name the argument.
"""

from nfpsim.kernels.attention import decode_attention
from nfpsim.kernels.gemm import decode_gemm
from nfpsim.kernels.moe import fused_moe, moe_align, padded_slots, route
from nfpsim.kernels.pointwise import fused_add_rmsnorm, rmsnorm, rotary_kv_write, silu_and_mul, sum_slices

__all__ = [
    "decode_attention",
    "decode_gemm",
    "fused_add_rmsnorm",
    "fused_moe",
    "moe_align",
    "padded_slots",
    "rmsnorm",
    "rotary_kv_write",
    "route",
    "silu_and_mul",
    "sum_slices",
]
