"""Validated settings of an ``nfpsim-nfp`` run, built once at the CLI boundary from the composed config.

The specs (hardware, model, kernels) and the app's own keys; every check that needs more than one key
(a context within the model's window, tp dividing the heads) happens here too, so a bad combination
fails before anything is computed or written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nfpsim.config import ConfigReader, Specs
from nfpsim.errors import ConfigError
from nfpsim.latency import LATENCY_KINDS
from nfpsim.shapes import ForwardShape, decompose


def read_positions(r: ConfigReader, key: str = "positions") -> tuple[int, ...] | None:
    """An explicit position grid: positive integers, starting at 1 (NFP is relative to one position)."""
    raw = r.raw(key, None)
    if raw is None:
        return None
    if isinstance(raw, (str, bytes)) or not hasattr(raw, "__iter__"):
        raise ConfigError(f"{key}={raw!r}: must be a list of positions such as [1,2,4,8]")
    values = []
    for item in raw:
        if isinstance(item, bool) or not isinstance(item, int) or item < 1:
            raise ConfigError(f"{key}={list(raw)}: every position must be an integer >= 1")
        values.append(item)
    grid = tuple(sorted(set(values)))
    if not grid or grid[0] != 1:
        raise ConfigError(f"{key}={list(raw)}: must include 1 (NFP is measured against one position)")
    return grid


@dataclass(frozen=True)
class NfpSettings:
    specs: Specs
    batch: int
    context: int
    eps: float
    positions: tuple[int, ...] | None
    max_positions: int
    tp: int
    latency: str
    calibration: str | None
    plot: bool

    @classmethod
    def from_config(cls, cfg: Any) -> NfpSettings:
        specs = Specs.from_config(cfg)
        r = ConfigReader(cfg, "")
        settings = cls(
            specs=specs,
            batch=r.int("batch", low=1, high=65536),
            context=r.int("context", low=0),
            eps=r.float("eps", low=0, high=1, low_open=True),  # beyond 1 a forward may double: not near-free
            positions=read_positions(r),
            max_positions=r.int("max_positions", low=1, high=16384, default=512),
            tp=r.int("tp", low=1, high=64, default=1),
            latency=r.str("latency", choices=LATENCY_KINDS, default="auto"),
            calibration=r.raw("calibration", None),
            plot=r.bool("plot", default=True),
        )
        settings.check_window()
        decompose(specs.model, ForwardShape.uniform(settings.batch, 1, settings.context, settings.tp))
        return settings

    def latency_model(self):
        from nfpsim.latency import make_latency_model

        return make_latency_model(self.latency, self.specs.hardware, self.specs.kernels, self.calibration)

    @property
    def top_position(self) -> int:
        return self.positions[-1] if self.positions else self.max_positions

    def check_window(self) -> None:
        model, end = self.specs.model, self.context + self.top_position
        if end > model.max_context:
            room = model.max_context - self.top_position
            hint = f"use context <= {room}" if room >= 0 else "lower max_positions"
            raise ConfigError(
                f"context={self.context}: with up to {self.top_position} positions a sequence reaches {end} "
                f"tokens, beyond model.max_context={model.max_context} of {model.name}; {hint}")
