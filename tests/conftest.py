"""Test set-up shared by every tier.

Triton kernels run on the CPU through the interpreter; the variable has to be set before the first
``@triton.jit`` is created, so it is set here, before any test module imports ``nfpsim.kernels``.
"""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)
