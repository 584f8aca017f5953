"""``nfpsim.latency_model``: a latency model from config names, resolved exactly as the CLI resolves them."""

from __future__ import annotations

from pathlib import Path

from nfpsim.config import load_hardware, load_kernels
from nfpsim.errors import ConfigError
from nfpsim.latency import LATENCY_KINDS, LatencyModel, make_latency_model


def latency_model(hardware: str = "h100_sxm", kernels: str = "vendor", latency: str = "auto",
                  table: str | Path | None = None) -> LatencyModel:
    """The latency model of ``nfpsim-nfp hardware=<hardware> kernels=<kernels> latency=<latency>
    calibration=<table>``: names of ``conf/hardware`` and ``conf/kernels``; ``latency`` one of
    ``auto`` (calibrated where ``calibration/<hardware>.json`` measured these kernels, else analytic),
    ``analytic``, ``calibrated``. A bad name raises ConfigError listing the allowed ones."""
    if latency not in LATENCY_KINDS:
        raise ConfigError(f"latency={latency}: allowed: {', '.join(LATENCY_KINDS)}")
    return make_latency_model(latency, load_hardware(hardware), load_kernels(kernels), table)
