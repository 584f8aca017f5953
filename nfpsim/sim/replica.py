"""One serving engine inside a simpy environment: scheduler, KV cache, pricer, and its forward records.

A :class:`Replica` is the unit the single-replica simulator and the cluster simulator share. It runs its
engine process from construction; requests come in through :meth:`Replica.submit`. Every forward
becomes a row of its forward log, every token gap across a preemption a row of its gap log; both fold
into fixed-size summaries once the run outgrows an exact table (:mod:`nfpsim.sim.tables`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nfpsim.shapes import ForwardShape
from nfpsim.sim.cost import ForwardPricer, StepCost
from nfpsim.sim.decoding import Decoding
from nfpsim.sim.kvcache import KvCache, KvPlan
from nfpsim.sim.prefix import PrefixCache
from nfpsim.sim.scheduler import Scheduler, Step
from nfpsim.sim.server import Bell, Doorbell, engine
from nfpsim.sim.state import Request
from nfpsim.sim.stream import ForwardStats
from nfpsim.sim.tables import EXACT_ROWS, RowLog, Table

if TYPE_CHECKING:
    import simpy

FORWARD_COLUMNS = ("start_s", "duration_s", "forward_s", "proposal_s", "one_position_s", "num_decode", "width",
                   "context_sum", "prefill_tokens", "num_chunks", "committed_tokens", "emitted_tokens", "itl_rows",
                   "kv_used_blocks")
GAP_COLUMNS = ("gap_s",)
SAMPLE_COLUMNS = ("index", "start_s", "num_decode", "width", "context_sum")


@dataclass(frozen=True)
class TracedForward:
    start_s: float
    cost: StepCost
    shape: ForwardShape
    proposal_shapes: tuple[ForwardShape, ...]


class Thinned:
    """Every ``stride``-th decode forward of a stream, the stride doubling whenever more than ``limit``
    are kept: an evenly spaced sample of a run of unknown length in bounded memory."""

    def __init__(self, limit: int):
        self.limit = max(1, limit)
        self.stride = 1
        self.seen = 0
        self.kept = np.zeros((0, len(SAMPLE_COLUMNS)))

    def add(self, fwd: Table) -> None:
        decode = np.flatnonzero(fwd["num_decode"] > 0)
        index = self.seen + np.arange(len(decode))
        self.seen += len(decode)
        block = np.column_stack([index, fwd["start_s"][decode], fwd["num_decode"][decode], fwd["width"][decode],
                                 fwd["context_sum"][decode]])
        self.kept = np.concatenate([self.kept, block[index % self.stride == 0]])
        while len(self.kept) > self.limit:
            self.stride *= 2
            self.kept = self.kept[self.kept[:, 0] % self.stride == 0]

    def table(self) -> Table:
        return {name: self.kept[:, j] if name == "start_s" else self.kept[:, j].astype(np.int64)
                for j, name in enumerate(SAMPLE_COLUMNS)}


class Replica:
    """An engine (one TP group) serving the requests submitted to it; ``run`` runs its forwards through
    pipeline stages (:class:`~nfpsim.sim.pipeline.Pipeline`), when it is one virtual engine of several."""

    def __init__(self, env: simpy.Environment | None, *, latency, model, hardware, decoding: Decoding, engine_spec,
                 plan: KvPlan,
                 rng: np.random.Generator, on_finish: Callable[[Request], None],
                 trace: tuple[int, float] = (0, 0.0), nfp_samples: int = 0, exact_rows: int = EXACT_ROWS, run=None):
        self.env = env
        self.model = model
        self.decoding = decoding
        self.plan = plan
        self.pricer = ForwardPricer(latency, model, tp=plan.tp, context_bucket_tokens=engine_spec.context_bucket_tokens,
                                    decoding=decoding,
                                    cpu_overhead=(engine_spec.cpu_step_overhead_s, engine_spec.cpu_seq_overhead_s),
                                    expert_parallel=(hardware, engine_spec.ep, engine_spec.expert_skew)
                                    if engine_spec.ep > 1 else None)
        self.kv = KvCache(plan.num_blocks, plan.block_size)
        self.bell = Doorbell(env) if env is not None else Bell()
        self.stats = ForwardStats()
        self.in_flight_tokens = 0  # prompt + output tokens of the requests submitted here and not finished
        self.in_transfer: dict[int, Request] = {}  # handed off, their KV still on the link (prefill engines)
        self.transfers = 0
        self.transfer_s = 0.0  # exposed KV-transfer time, summed
        self.sample = Thinned(4 * nfp_samples)
        self.log = RowLog(FORWARD_COLUMNS, self._fold, exact_rows=exact_rows)
        self.gaps = RowLog(GAP_COLUMNS, self.stats.fold_resume_gaps, exact_rows=exact_rows)
        def finished(req: Request) -> None:
            self.in_flight_tokens -= req.prompt_tokens + req.output_tokens
            on_finish(req)

        self.scheduler = Scheduler(engine_spec.limits, decoding, self.kv, self.pricer, rng, finished,
                                   lambda gap_s: self.gaps.append((gap_s,)))
        if engine_spec.prefix_caching:
            self.scheduler.cache = PrefixCache(self.kv)
        self.trace_forwards, self.trace_from_s = trace  # how many forwards, from what simulated time
        self.traced: list[TracedForward] = []
        if env is not None:  # else the caller drives the engine (:func:`~nfpsim.sim.server.serve_open_loop`)
            env.process(engine(env, self.scheduler, self.pricer, self.bell, self.recorder(), run))

    def submit(self, req: Request, now: float) -> None:
        self.in_flight_tokens += req.prompt_tokens + req.output_tokens
        self.scheduler.submit(req, now)
        self.bell.ring()

    def submit_cached(self, req: Request) -> None:
        """A request whose prompt KV was computed by a prefill engine and has arrived here."""
        self.in_flight_tokens += req.prompt_tokens + req.output_tokens
        self.scheduler.submit_cached(req)
        self.bell.ring()

    def hand_off_to(self, deliver: Callable[[Request], None]) -> None:
        """Make this a prefill-only engine: a request whose prompt is cached goes to ``deliver``."""
        def hand_off(req: Request) -> None:
            self.in_flight_tokens -= req.prompt_tokens + req.output_tokens
            deliver(req)

        self.scheduler.handoff = hand_off

    def _fold(self, fwd: Table) -> None:
        self.stats.fold(fwd, self.kv.num_blocks)
        self.sample.add(fwd)

    def recorder(self):
        """``record(start, step, cost, outcome)``: a finished forward into the forward log (and the trace)."""
        log = self.log
        rows = log.rows
        append, chunk_rows = rows.append, log.chunk_rows

        def record(start: float, step: Step, cost: StepCost, outcome) -> None:
            append((start, cost.total_s, cost.forward_s, cost.proposal_s, cost.one_position_s, step.num_decode,
                    step.width, step.context_sum, step.prefill_tokens, len(step.prefill), outcome.committed,
                    outcome.emitted, step.itl_rows, step.kv_used_blocks))
            if len(rows) >= chunk_rows:
                log.spill()
            if len(self.traced) < self.trace_forwards and start >= self.trace_from_s:
                self.traced.append(traced_forward(start, step, cost, self.pricer, self.decoding))

        return record


def traced_forward(start: float, step: Step, cost: StepCost, pricer: ForwardPricer, decoding: Decoding
                   ) -> TracedForward:
    n = step.num_decode
    context = pricer.bucket(step.context_sum / n) if n else 0
    chunks = [(t, pricer.bucket(p), s) for t, p, s in step.prefill]
    extra = pricer.proposal_shapes(n, step.width, context, chunks)
    return TracedForward(start, cost, pricer.shape(n, step.width, context, chunks), extra)
