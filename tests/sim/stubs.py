"""Latency stubs and small builders for hand-worked simulator scenarios."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from nfpsim.config import load_hardware, load_model
from nfpsim.sim import EngineSpec, WorkloadSpec
from nfpsim.sim.workload import Trace


class Constant:
    """Every forward takes ``seconds``, whatever its shape or model; records the shapes it priced."""

    def __init__(self, seconds: float, per_model: dict[str, float] | None = None):
        self.seconds = seconds
        self.per_model = per_model or {}
        self.calls: list[tuple[str, object]] = []

    def forward_time(self, model, shape) -> float:
        self.calls.append((model.name, shape))
        return self.per_model.get(model.name, self.seconds)


class Linear:
    """``base_s + per_token_s * tokens`` per forward."""

    def __init__(self, base_s: float, per_token_s: float):
        self.base_s, self.per_token_s = base_s, per_token_s

    def forward_time(self, model, shape) -> float:
        return self.base_s + self.per_token_s * shape.num_tokens


class Knee:
    """Flat up to ``knee`` positions per sequence, doubled beyond: the near-free width is ``knee``."""

    def __init__(self, seconds: float, knee: int):
        self.seconds, self.knee = seconds, knee

    def forward_time(self, model, shape) -> float:
        positions = max(g.positions for g in shape.groups if g.scored is None) if any(
            g.scored is None for g in shape.groups) else 1
        return self.seconds * (1 if positions <= self.knee else 2)


def specs(model: str = "llama3_8b", hardware: str = "h100_sxm") -> SimpleNamespace:
    return SimpleNamespace(hardware=load_hardware(hardware), model=load_model(model))


def trace(rows: list[tuple[float, int, int]]) -> WorkloadSpec:
    """A workload of ``(arrival_s, prompt_tokens, output_tokens)`` rows."""
    arrivals, prompts, outputs = zip(*rows)
    return WorkloadSpec("trace", len(rows), trace=Trace(Path("hand.csv"), arrivals, prompts, outputs))


def engine(**changes) -> EngineSpec:
    """Exact contexts (no rounding) unless asked; everything else at its default."""
    return EngineSpec(**{"context_bucket_tokens": 1, **changes})
