"""The price of moving a prompt's KV cache from a prefill engine to a decode engine.

Layer ``i``'s KV is ready when layer ``i`` of the prefill forward ends, and is sent while the later
layers compute (layer-by-layer overlap, as DistServe and Mooncake do). With ``L`` layers, a per-layer
compute time ``c`` and a per-layer transfer time ``x`` over one serial link, the last layer lands at
``L*c + x`` when ``x <= c`` and at ``c + L*x`` otherwise, so the time the transfer adds after the
forward is ``x + (L - 1) * max(0, x - c)``, plus the link's fixed latency.

Kept here, next to its one user, until the latency layer prices communication itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from nfpsim.config import HardwareSpec, ModelSpec


@dataclass(frozen=True)
class KvLink:
    """A prefill-to-decode link: bytes per second (all ranks together) and a fixed latency per transfer."""

    bytes_per_s: float
    latency_s: float

    @classmethod
    def between(cls, prefill: HardwareSpec, prefill_tp: int, decode_tp: int, gb_per_s: float | None = None) -> KvLink:
        """Rank-to-rank over the prefill GPU's interconnect (``min(tp)`` links in parallel), unless
        ``gb_per_s`` (a network between nodes, say) overrides the total."""
        total = gb_per_s * 1e9 if gb_per_s else prefill.interconnect_bytes_per_s * min(prefill_tp, decode_tp)
        return cls(total, prefill.collective_latency_s)


def kv_transfer_bytes(model: ModelSpec, tokens: int) -> int:
    """The KV cache of ``tokens`` tokens, all layers, each head once (the decode engine lays it out again)."""
    return model.kv_bytes_per_token * tokens


def exposed_transfer_s(total_bytes: float, link: KvLink, num_layers: int, prefill_forward_s: float) -> float:
    """Time the transfer adds after a prefill forward of ``prefill_forward_s``, overlapped layer by layer."""
    layers = max(1, num_layers)
    per_layer_s = total_bytes / layers / link.bytes_per_s
    compute_s = prefill_forward_s / layers
    return link.latency_s + per_layer_s + (layers - 1) * max(0.0, per_layer_s - compute_s)
