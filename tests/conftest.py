"""Test set-up shared by every tier.

Triton kernels run on the CPU through the interpreter; the variable has to be set before the first
``@triton.jit`` is created, so it is set here, before any test module imports ``nfpsim.kernels``.
"""

import os

import pytest

try:
    import torch
except ImportError:  # the default install has no torch: the tests that run torch are not collected
    torch = None

collect_ignore_glob = [] if torch is not None else [
    "kernels/*", "validation/test_cli.py", "validation/test_pipeline.py", "validation/test_forward.py",
    "calibration/test_pipeline.py"]

HAS_CUDA = torch is not None and torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)
