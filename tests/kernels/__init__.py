"""Helpers shared by the kernel tests: device, dtypes, tolerances, seeded inputs, poisoned outputs.

The same tests run on the CPU interpreter and, unchanged, on a CUDA GPU; every tile they use is >= 16
so ``tl.dot`` compiles there too.
"""

from __future__ import annotations

import pytest
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = DEVICE.type == "cuda"

# bf16 arithmetic is wrong in the CPU interpreter (Triton 3.7), so bf16 numerics are checked on the GPU.
DTYPES = [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.cuda)]

# (atol, rtol) against the fp32 reference, on O(1) inputs.
# - fp32: the interpreter multiplies in exact fp32, only the summation order differs (~1e-6);
#   on the GPU tl.dot rounds fp32 operands to tf32 (10-bit mantissa, 2**-11 relative per product).
# - fp16 / bf16: the output is rounded once (2**-11 / 2**-8 relative) and some kernels round
#   intermediates too (attention's probabilities before P@V, the MoE activations between GEMMs):
#   a few roundings of O(1) values, hence a few times the unit roundoff.
TOLERANCES = {
    torch.float32: (2e-2, 2e-2) if ON_GPU else (1e-4, 1e-4),
    torch.float16: (4e-3, 4e-3),
    torch.bfloat16: (3e-2, 3e-2),
}


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """No NaN left (outputs start poisoned) and within the dtype's tolerance of the reference."""
    assert not actual.isnan().any(), "output still holds NaN: some element was never written"
    atol, rtol = TOLERANCES[expected.dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)


def poisoned(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    """An output buffer full of NaN, so any element a kernel forgets to write shows up."""
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def randn(gen: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    """Seeded normal samples (drawn on the CPU so the values do not depend on the device)."""
    return (torch.randn(shape, generator=gen) * scale).to(device=DEVICE, dtype=dtype)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
