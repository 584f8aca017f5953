"""Fixed-size, mergeable summaries of a run too long to keep: exact counts and sums, quantile sketches.

A run whose tables outgrow :data:`~nfpsim.sim.tables.EXACT_ROWS` folds them block by block into a
:class:`RunStats` (per-request and per-forward sums, maxima, counts by width, and a DDSketch per latency),
which gives the same figures as :func:`~nfpsim.sim.metrics.summarize`: counts and means exactly (up to
float summation order), percentiles within the sketch's relative accuracy. Summaries of replicas merge.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, fields

import numpy as np
from ddsketch import DDSketch

from nfpsim.sim.metrics import PERCENTILES, Slo, request_latencies
from nfpsim.sim.tables import Table

RELATIVE_ACCURACY = 0.005  # of the sketch; values are binned 10x finer before they reach it
_BIN_LOG = math.log1p(RELATIVE_ACCURACY / 10)


class Quantiles:
    """Weighted values: exact count, sum and maximum; quantiles from a DDSketch (relative error <= 1%).

    Values are first rounded to bins 10x finer than the sketch's and merged per bin with numpy, so a block
    of a million values costs a few thousand sketch insertions."""

    def __init__(self):
        self.sketch = DDSketch(RELATIVE_ACCURACY)
        self.weight = 0.0
        self.total = 0.0
        self.max = -math.inf

    def add(self, values: np.ndarray, weights: np.ndarray | None = None) -> None:
        if not len(values):
            return
        w = np.ones(len(values)) if weights is None else np.asarray(weights, dtype=np.float64)
        keep = w > 0
        values, w = values[keep], w[keep]
        if not len(values):
            return
        self.weight += float(w.sum())
        self.total += float(np.dot(values, w))
        self.max = max(self.max, float(values.max()))
        positive = values > 0
        bins = np.zeros(len(values), dtype=np.int64)
        bins[positive] = np.ceil(np.log(values[positive]) / _BIN_LOG).astype(np.int64)
        keys, index = np.unique(np.where(positive, bins, np.iinfo(np.int64).min), return_inverse=True)
        sums = np.bincount(index, weights=w)
        for key, weight in zip(keys.tolist(), sums.tolist()):
            self.sketch.add(0.0 if key == np.iinfo(np.int64).min else math.exp(key * _BIN_LOG), weight)

    def merge(self, other: Quantiles) -> None:
        self.sketch.merge(other.sketch)
        self.weight += other.weight
        self.total += other.total
        self.max = max(self.max, other.max)

    def _nearest_rank(self, percent: float) -> float:
        """The sketch's quantile argument that selects the nearest-rank (inverted-CDF) percentile, as
        the exact figures do: the value at 0-based rank ``ceil(q * weight) - 1`` (the sketch counts rank
        ``q' * (weight - 1)``; half a rank more lands inside that value's weight)."""
        if self.weight <= 1:
            return 0.0
        rank = max(0, math.ceil(percent / 100 * self.weight - 1e-9) - 1)
        return min(1.0, (rank + 0.5) / (self.weight - 1))

    def figures(self) -> dict[str, float | None]:
        if not self.weight:
            return {"mean": None, **{f"p{q}": None for q in PERCENTILES}, "max": None}
        points = {f"p{q}": min(self.max, float(self.sketch.get_quantile_value(self._nearest_rank(q))))
                  for q in PERCENTILES}
        return {"mean": self.total / self.weight, **points, "max": self.max}


class _Merging:
    """Summaries of two runs (replicas, blocks) merged field by field: counts and sums add, the fields named in
    ``MAXIMA`` keep the larger, quantile sketches and counters merge."""

    MAXIMA: tuple[str, ...] = ()

    def merge(self, other) -> None:
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, Quantiles):
                mine.merge(theirs)
            elif isinstance(mine, Counter):
                mine.update(theirs)
            elif f.name in self.MAXIMA:
                setattr(self, f.name, max(mine, theirs))
            else:
                setattr(self, f.name, mine + theirs)


@dataclass
class RequestStats(_Merging):
    """Sums over finished and unfinished requests (rows of the request log)."""

    arrived: int = 0
    finished: int = 0
    e2e_s: Quantiles = field(default_factory=Quantiles)  # of the finished requests, as the two below
    ttft_s: Quantiles = field(default_factory=Quantiles)
    tpot_s: Quantiles = field(default_factory=Quantiles)
    generated_tokens: int = 0
    finished_output_tokens: int = 0
    good: int = 0  # finished within the SLO
    good_output_tokens: int = 0

    def fold(self, req: Table, slo: Slo) -> None:
        lat = request_latencies(req)
        finished = ~np.isnan(req["finish_s"])
        done = {k: v[finished] for k, v in lat.items()}
        output_done = req["output_tokens"][finished]
        tpot_ok = np.where(np.isnan(done["tpot_s"]), True, done["tpot_s"] <= slo.tpot_s)
        good = (done["ttft_s"] <= slo.ttft_s) & tpot_ok
        self.arrived += int((~np.isnan(req["arrival_s"])).sum())
        self.finished += int(finished.sum())
        self.generated_tokens += int(req["generated_tokens"].sum())
        self.finished_output_tokens += int(output_done.sum())
        self.good += int(good.sum())
        self.good_output_tokens += int(output_done[good].sum())
        self.ttft_s.add(done["ttft_s"])
        self.tpot_s.add(done["tpot_s"][~np.isnan(done["tpot_s"])])
        self.e2e_s.add(done["e2e_s"])


@dataclass
class ForwardStats(_Merging):
    """Sums over forwards (rows of the forward log), the inter-token gaps, and decode rows per width."""

    MAXIMA = ("kv_peak", "ratio_max")

    num_forwards: int = 0
    num_decode_forwards: int = 0
    row_forwards: int = 0
    committed_tokens: int = 0
    emitted_tokens: int = 0
    width_rows: int = 0
    busy_s: float = 0.0
    proposal_s: float = 0.0
    kv_weighted_s: float = 0.0  # sum of (blocks in use / cache) x duration
    kv_peak: float = 0.0
    ratio_sum: float = 0.0
    ratio_max: float = -math.inf
    rows_by_width: Counter = field(default_factory=Counter)
    itl_s: Quantiles = field(default_factory=Quantiles)

    def fold(self, fwd: Table, num_blocks: int) -> None:
        decode = fwd["num_decode"] > 0
        rows = fwd["num_decode"][decode]
        ratio = fwd["forward_s"][decode] / fwd["one_position_s"][decode]
        kv_used = fwd["kv_used_blocks"] / num_blocks if num_blocks else np.zeros(len(decode))
        self.num_forwards += len(decode)
        self.num_decode_forwards += int(decode.sum())
        self.row_forwards += int(rows.sum())
        self.committed_tokens += int(fwd["committed_tokens"].sum())
        self.emitted_tokens += int(fwd["emitted_tokens"].sum())
        self.width_rows += int((fwd["width"][decode] * rows).sum())
        self.busy_s += float(fwd["duration_s"].sum())
        self.proposal_s += float(fwd["proposal_s"].sum())
        self.kv_weighted_s += float(np.dot(kv_used, fwd["duration_s"]))
        self.kv_peak = max(self.kv_peak, float(kv_used.max()) if len(kv_used) else 0.0)
        self.ratio_sum += float(ratio.sum())
        self.ratio_max = max(self.ratio_max, float(ratio.max()) if len(ratio) else -math.inf)
        widths, index = np.unique(fwd["width"][decode], return_inverse=True)
        for width, count in zip(widths.tolist(), np.bincount(index, weights=rows).tolist()):
            self.rows_by_width[int(width)] += int(count)
        self.itl_s.add(fwd["duration_s"][decode], fwd["itl_rows"][decode])

    def fold_resume_gaps(self, gaps: Table) -> None:
        self.itl_s.add(gaps["gap_s"])



def stream_summary(req: RequestStats, fwd: ForwardStats, *, num_requests: int, sim_time_s: float,
                   busy_time_s: float | None = None, num_preemptions: int) -> dict:
    """The figures of :func:`~nfpsim.sim.metrics.summarize` from folded summaries. ``busy_time_s``: the
    time the forwards could have been busy (``sim_time_s`` on one replica, times the replicas of a cluster)."""
    span = sim_time_s if sim_time_s > 0 else math.nan
    capacity_s = busy_time_s if busy_time_s is not None else sim_time_s
    n, d = fwd.num_forwards, fwd.num_decode_forwards
    busy = fwd.busy_s
    return {
        "num_requests": int(num_requests),
        "num_arrived": req.arrived,
        "num_finished": req.finished,
        "num_unfinished": req.arrived - req.finished,
        "sim_time_s": sim_time_s,
        "output_tokens": req.generated_tokens,
        "throughput_tokens_per_s": float(req.finished_output_tokens / span),
        "throughput_requests_per_s": float(req.finished / span),
        "goodput_requests_per_s": float(req.good / span),
        "goodput_tokens_per_s": float(req.good_output_tokens / span),
        "slo_attainment": req.good / req.finished if req.finished else None,
        "ttft_s": req.ttft_s.figures(),
        "tpot_s": req.tpot_s.figures(),
        "itl_s": fwd.itl_s.figures(),
        "e2e_s": req.e2e_s.figures(),
        "num_forwards": n,
        "num_decode_forwards": d,
        "tokens_per_forward_mean": fwd.committed_tokens / fwd.row_forwards if fwd.row_forwards else None,
        "tokens_per_step_mean": (fwd.committed_tokens + fwd.emitted_tokens) / n if n else None,
        "batch_size_mean": fwd.row_forwards / d if d else None,
        "width_mean": fwd.width_rows / fwd.row_forwards if d else None,
        "forward_latency_ratio_mean": fwd.ratio_sum / d if d else None,
        "forward_latency_ratio_max": fwd.ratio_max if d else None,
        "proposal_time_fraction": fwd.proposal_s / busy if busy else 0.0,
        "gpu_busy_fraction": busy / capacity_s if capacity_s > 0 else 0.0,
        "kv_utilization_mean": fwd.kv_weighted_s / busy if busy else 0.0,
        "kv_utilization_peak": fwd.kv_peak,
        "preemptions": int(num_preemptions),
    }
