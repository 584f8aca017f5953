"""Records of a run and the figures computed from them.

Per request: arrival, first token, finish, lengths, preemptions. Per forward: start, duration (the
target forward plus proposals), its one-position latency, decode rows and width, prefill tokens,
committed tokens, KV blocks in use.

Definitions (every time in seconds of simulated time):

- ``ttft_s``: arrival to the first output token; ``e2e_s``: arrival to the last;
- ``tpot_s``: ``(e2e - ttft) / (output_tokens - 1)`` per request with more than one output token;
- ``itl_s``: gaps between successive token deliveries of a sequence (a parallel forward delivers
  several tokens at once: one gap), weighted by the rows that saw them;
- ``throughput_tokens_per_s``: output tokens of finished requests over ``sim_time_s``;
- goodput: finished requests meeting both SLOs (``ttft_s <= slo.ttft_s`` and ``tpot_s <= slo.tpot_s``),
  per second and in their output tokens per second;
- ``tokens_per_forward_mean``: tokens a decode row commits per forward (1 for autoregressive), over
  every (row, forward) pair; ``forward_latency_ratio_mean``: forward latency over the latency of the
  same forward with one position per row, averaged over decode forwards (1 = all parallelism free);
- ``gpu_busy_fraction``: time spent in forwards over ``sim_time_s``;
- KV utilization: blocks in use over the cache, time-weighted mean and peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Slo:
    ttft_s: float = 1.0
    tpot_s: float = 0.1


class ForwardLog:
    """One tuple of :attr:`COLUMNS` per forward (a list append per step; columns are built at the end)."""

    COLUMNS = ("start_s", "duration_s", "forward_s", "proposal_s", "one_position_s", "num_decode", "width",
               "context_sum", "prefill_tokens", "num_chunks", "committed_tokens", "emitted_tokens", "itl_rows", "kv_used_blocks")

    def __init__(self):
        self.rows: list[tuple] = []

    def arrays(self) -> dict[str, np.ndarray]:
        table = np.array(self.rows, dtype=np.float64).reshape(len(self.rows), len(self.COLUMNS))
        return {name: table[:, j] if name.endswith("_s") else table[:, j].astype(np.int64)
                for j, name in enumerate(self.COLUMNS)}


def distribution(values: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float | None]:
    """Mean and percentiles (nearest rank on the weighted CDF); None for no values."""
    if len(values) == 0:
        return {"mean": None, **{f"p{q}": None for q in PERCENTILES}, "max": None}
    if weights is None:
        points = np.percentile(values, PERCENTILES, method="inverted_cdf")
        mean = float(values.mean())
    else:
        order = np.argsort(values, kind="stable")
        sorted_values, cdf = values[order], np.cumsum(weights[order])
        total = cdf[-1]
        points = [sorted_values[min(np.searchsorted(cdf, q / 100 * total), len(values) - 1)] for q in PERCENTILES]
        mean = float(np.dot(values, weights) / total)
    return {"mean": mean, **{f"p{q}": float(p) for q, p in zip(PERCENTILES, points)},
            "max": float(values.max())}


def request_latencies(req: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-request ``ttft_s``, ``tpot_s``, ``e2e_s`` (NaN where undefined)."""
    ttft = req["first_token_s"] - req["arrival_s"]
    e2e = req["finish_s"] - req["arrival_s"]
    out = req["output_tokens"]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(out > 1, (e2e - ttft) / (out - 1), np.nan)
    return {"ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e}


def summarize(req: dict[str, np.ndarray], fwd: dict[str, np.ndarray], *, sim_time_s: float, slo: Slo,
              num_blocks: int, resume_gaps_s: list[float], num_preemptions: int) -> dict:
    lat = request_latencies(req)
    arrived = ~np.isnan(req["arrival_s"])
    finished = ~np.isnan(req["finish_s"])
    done = {k: v[finished] for k, v in lat.items()}
    output_done = req["output_tokens"][finished]
    tpot_ok = np.where(np.isnan(done["tpot_s"]), True, done["tpot_s"] <= slo.tpot_s)
    good = (done["ttft_s"] <= slo.ttft_s) & tpot_ok
    span = sim_time_s if sim_time_s > 0 else math.nan

    decode = fwd["num_decode"] > 0
    row_forwards = int(fwd["num_decode"].sum())
    itl_values = np.concatenate([fwd["duration_s"][decode], np.asarray(resume_gaps_s, dtype=np.float64)])
    itl_weights = np.concatenate([fwd["itl_rows"][decode], np.ones(len(resume_gaps_s))]).astype(np.float64)
    keep = itl_weights > 0
    busy_s = float(fwd["duration_s"].sum())
    kv_used = fwd["kv_used_blocks"] / num_blocks if num_blocks else np.zeros(0)
    ratio = fwd["forward_s"][decode] / fwd["one_position_s"][decode]
    return {
        "num_requests": int(len(arrived)),
        "num_arrived": int(arrived.sum()),
        "num_finished": int(finished.sum()),
        "num_unfinished": int((arrived & ~finished).sum()),
        "sim_time_s": sim_time_s,
        "output_tokens": int(req["generated_tokens"].sum()),
        "throughput_tokens_per_s": float(output_done.sum() / span),
        "throughput_requests_per_s": float(finished.sum() / span),
        "goodput_requests_per_s": float(good.sum() / span),
        "goodput_tokens_per_s": float(output_done[good].sum() / span),
        "slo_attainment": float(good.mean()) if len(good) else None,
        "ttft_s": distribution(done["ttft_s"]),
        "tpot_s": distribution(done["tpot_s"][~np.isnan(done["tpot_s"])]),
        "itl_s": distribution(itl_values[keep], itl_weights[keep]),
        "e2e_s": distribution(done["e2e_s"]),
        "num_forwards": int(len(fwd["start_s"])),
        "num_decode_forwards": int(decode.sum()),
        "tokens_per_forward_mean": float(fwd["committed_tokens"].sum() / row_forwards) if row_forwards else None,
        "tokens_per_step_mean": float((fwd["committed_tokens"] + fwd["emitted_tokens"]).mean())
        if len(fwd["start_s"]) else None,
        "batch_size_mean": float(fwd["num_decode"][decode].mean()) if decode.any() else None,
        "width_mean": float(np.average(fwd["width"][decode], weights=fwd["num_decode"][decode]))
        if decode.any() else None,
        "forward_latency_ratio_mean": float(ratio.mean()) if len(ratio) else None,
        "forward_latency_ratio_max": float(ratio.max()) if len(ratio) else None,
        "proposal_time_fraction": float(fwd["proposal_s"].sum() / busy_s) if busy_s else 0.0,
        "gpu_busy_fraction": float(busy_s / span) if sim_time_s > 0 else 0.0,
        "kv_utilization_mean": float(np.dot(kv_used, fwd["duration_s"]) / busy_s) if busy_s else 0.0,
        "kv_utilization_peak": float(kv_used.max()) if len(kv_used) else 0.0,
        "preemptions": int(num_preemptions),
    }


def throughput_over_time(fwd: dict[str, np.ndarray], sim_time_s: float, num_bins: int = 60
                         ) -> tuple[np.ndarray, np.ndarray]:
    """``(bin centres s, output tokens/s)``: tokens delivered by forwards ending in each bin."""
    if sim_time_s <= 0 or not len(fwd["start_s"]):
        return np.zeros(0), np.zeros(0)
    edges = np.linspace(0.0, sim_time_s, num_bins + 1)
    ends = fwd["start_s"] + fwd["duration_s"]
    tokens = fwd["committed_tokens"] + fwd["emitted_tokens"]
    counts, _ = np.histogram(ends, bins=edges, weights=tokens)
    return (edges[:-1] + edges[1:]) / 2, counts / np.diff(edges)
