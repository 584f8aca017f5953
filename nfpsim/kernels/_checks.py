"""Argument checks shared by the kernel wrappers.

Every failure is a ``ValueError`` whose message starts with the argument's name, so a caller sweeping
tile configurations sees at once which knob or tensor was wrong.
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)

# tl.dot on the GPU needs every tile dimension >= 16; the CPU interpreter accepts smaller tiles.
MIN_DOT_TILE = 16


def check_dtype(name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...] = FLOAT_DTYPES) -> None:
    if t.dtype not in allowed:
        raise ValueError(f"{name}: dtype {t.dtype} not supported, expected one of {allowed}")


def check_same_dtype(name: str, t: torch.Tensor, like_name: str, like: torch.Tensor) -> None:
    if t.dtype != like.dtype:
        raise ValueError(f"{name}: dtype {t.dtype} must match {like_name} ({like.dtype})")


def check_shape(name: str, t: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name}: shape {tuple(t.shape)} must be {tuple(expected)}")


def check_ndim(name: str, t: torch.Tensor, ndim: int, legend: str) -> None:
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor {legend}, got shape {tuple(t.shape)}")


def check_unit_inner_stride(name: str, t: torch.Tensor) -> None:
    # Kernels index every other dimension through strides, but the innermost one must be dense for
    # the loads to coalesce.
    if t.numel() > 0 and t.stride(-1) != 1:
        raise ValueError(f"{name}: innermost dimension must have stride 1, got strides {t.stride()}")


def check_contiguous(name: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name}: must be contiguous, got strides {t.stride()} for shape {tuple(t.shape)}")


def check_device(name: str, t: torch.Tensor, like: torch.Tensor) -> None:
    if t.device != like.device:
        raise ValueError(f"{name}: on {t.device}, expected {like.device}")


def check_tile(name: str, value: int, on_gpu: bool) -> None:
    """A ``tl.dot`` tile size: a power of two (``tl.arange``), and >= 16 on the GPU."""
    if not isinstance(value, int) or value < 1 or value & (value - 1):
        raise ValueError(f"{name}: must be a positive power of two, got {value!r}")
    if on_gpu and value < MIN_DOT_TILE:
        raise ValueError(f"{name}: tl.dot tiles must be >= {MIN_DOT_TILE} on the GPU, got {value}")


def check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: must be a positive int, got {value!r}")


def output_buffer(
    name: str, out: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Return ``out`` after checking it can receive the result, or a fresh tensor."""
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    check_shape(name, out, shape)
    if out.dtype != dtype:
        raise ValueError(f"{name}: dtype {out.dtype} must be {dtype}")
    if out.device != device:
        raise ValueError(f"{name}: on {out.device}, expected {device}")
    check_unit_inner_stride(name, out)
    return out


def next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()
