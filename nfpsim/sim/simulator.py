"""``simulate``: one serving replica, end to end, as a pure function (no Hydra, no files, no printing).

The pieces, each replaceable on its own: workload (what arrives), scheduler (policy), decoding
(tokens per forward), KV cache (memory), pricer (cost through the latency model), simpy (clock).
One ``numpy.random.Generator`` seeded with ``seed`` draws the workload, then every acceptance sample,
so a seed fixes the result.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import simpy

from nfpsim.config import HardwareSpec, ModelSpec
from nfpsim.errors import ConfigError
from nfpsim.shapes import ForwardShape, decompose
from nfpsim.sim.cost import ForwardPricer, StepCost
from nfpsim.sim.decoding import Decoding, proposer_weight_bytes
from nfpsim.sim.kvcache import GIB, KvCache, KvPlan, plan_kv
from nfpsim.sim.metrics import ForwardLog, Slo, summarize
from nfpsim.sim.scheduler import Limits, Scheduler, Step
from nfpsim.sim.server import Doorbell, closed_loop_client, engine, open_loop
from nfpsim.sim.state import Request
from nfpsim.sim.workload import WorkloadSpec, generate

TP_CHOICES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class EngineSpec:
    """One replica's serving engine. ``tp=None`` picks the smallest power of two whose KV cache holds
    the largest request; ``kv_capacity_tokens`` overrides the cache size derived from memory;
    ``max_sim_time_s`` stops the clock (simpy: events at exactly that time are not processed)."""

    max_num_seqs: int = 128
    max_num_batched_tokens: int = 4096
    chunked_prefill: bool = True
    tp: int | None = 1
    block_size_tokens: int = 16
    gpu_memory_utilization: float = 0.9
    activation_reserve_gib: float = 1.0
    kv_capacity_tokens: int | None = None
    context_bucket_tokens: int = 64
    max_sim_time_s: float | None = None

    @property
    def limits(self) -> Limits:
        return Limits(self.max_num_seqs, self.max_num_batched_tokens, self.chunked_prefill)


@dataclass(frozen=True)
class Observe:
    """What to keep beyond the metrics: near-free budgets of sampled forwards, shapes to trace."""

    nfp_samples: int = 0  # decode forwards, evenly spaced, whose near-free width is computed
    nfp_cap: int = 128  # widths scanned for them
    trace_forwards: int = 0  # first forwards kept for the Chrome trace


@dataclass(frozen=True)
class TracedForward:
    start_s: float
    cost: StepCost
    shape: ForwardShape
    proposal_shapes: tuple[ForwardShape, ...]


@dataclass(frozen=True)
class SimResult:
    summary: dict
    requests: dict[str, np.ndarray]
    forwards: dict[str, np.ndarray]
    near_free: dict[str, np.ndarray]
    kv: KvPlan
    traced: tuple[TracedForward, ...] = field(default=(), repr=False)


# ----------------------------------------------------------------------------------------------------
# Memory plan and the checks that a workload can run at all
# ----------------------------------------------------------------------------------------------------


def plan_memory(hardware: HardwareSpec, model: ModelSpec, decoding: Decoding, engine_spec: EngineSpec,
                workload: WorkloadSpec) -> KvPlan:
    """The KV cache of one rank at ``engine.tp`` (``None``: the smallest that fits), after checking that
    the largest request fits the model's window, the token budget and the cache."""
    if workload.max_request_tokens > model.max_context:
        raise ConfigError(
            f"workload: prompt up to {workload.max_prompt_tokens} + output up to {workload.max_output_tokens} "
            f"tokens exceeds model.max_context={model.max_context} of {model.name}")
    limits = engine_spec.limits
    width = 1 if decoding.near_free else decoding.width  # a near-free width shrinks to fit the budget
    if limits.max_num_batched_tokens < limits.max_num_seqs * width:
        raise ConfigError(
            f"engine.max_num_batched_tokens={limits.max_num_batched_tokens} is below engine.max_num_seqs="
            f"{limits.max_num_seqs} x {width} positions per sequence ({decoding.describe()}); "
            f"raise it or lower engine.max_num_seqs")
    if not limits.chunked_prefill and workload.max_prompt_tokens > limits.max_num_batched_tokens:
        raise ConfigError(
            f"engine.chunked_prefill=false: a prompt of {workload.max_prompt_tokens} tokens never fits "
            f"engine.max_num_batched_tokens={limits.max_num_batched_tokens}")
    longest = workload.max_request_tokens + decoding.width  # its cache while its last forward runs
    if engine_spec.tp is not None:
        return _check_holds(_plan(hardware, model, decoding, engine_spec, engine_spec.tp), longest, model, hardware)
    error = None
    for tp in TP_CHOICES:
        try:
            return _check_holds(_plan(hardware, model, decoding, engine_spec, tp), longest, model, hardware)
        except ConfigError as failure:
            error = error or failure
    raise ConfigError(f"engine.tp=auto: no tensor-parallel degree up to {TP_CHOICES[-1]} works; at tp=1: {error}")


def _plan(hardware: HardwareSpec, model: ModelSpec, decoding: Decoding, engine_spec: EngineSpec, tp: int) -> KvPlan:
    proposer = decoding.proposer_model
    for m in (model, proposer):  # tp must divide heads, hidden and FFN of both models
        if m is not None:
            decompose(m, ForwardShape.uniform(1, 1, 0, tp))
    plan = plan_kv(hardware, model, tp, block_size=engine_spec.block_size_tokens,
                   gpu_memory_utilization=engine_spec.gpu_memory_utilization,
                   activation_reserve_bytes=engine_spec.activation_reserve_gib * GIB,
                   proposer=proposer, proposer_weight_bytes=proposer_weight_bytes(decoding, model))
    if engine_spec.kv_capacity_tokens is not None:
        blocks = engine_spec.kv_capacity_tokens // engine_spec.block_size_tokens
        plan = KvPlan(tp, plan.block_size, blocks, plan.weight_bytes_per_rank, plan.kv_bytes_per_token)
    return plan


def _check_holds(plan: KvPlan, longest: int, model: ModelSpec, hardware: HardwareSpec) -> KvPlan:
    if plan.blocks(longest) > plan.num_blocks:
        raise ConfigError(
            f"workload: a request of up to {longest} tokens (prompt + output + positions of a forward) needs "
            f"{plan.blocks(longest)} KV blocks but {model.name} on {hardware.name} at engine.tp={plan.tp} "
            f"holds {plan.num_blocks} ({plan.capacity_tokens} tokens); it can never run")
    return plan


# ----------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------


def simulate(specs, latency, workload: WorkloadSpec, decoding: Decoding, engine_spec: EngineSpec, seed: int, *,
             slo: Slo = Slo(), observe: Observe = Observe()) -> SimResult:
    """Serve ``workload`` with ``decoding`` on one replica of ``specs.model`` on ``specs.hardware``
    (:class:`~nfpsim.settings.Specs`); ``latency`` is anything with
    ``forward_time(model, ForwardShape) -> seconds`` (a :class:`~nfpsim.latency.LatencyModel`)."""
    hardware, model = specs.hardware, specs.model
    plan = plan_memory(hardware, model, decoding, engine_spec, workload)
    rng = np.random.default_rng(seed)
    drawn = generate(workload, rng)
    requests = [Request(i, int(p), int(o)) for i, (p, o) in enumerate(zip(drawn.prompt_tokens, drawn.output_tokens))]
    pricer = ForwardPricer(latency, model, tp=plan.tp, context_bucket_tokens=engine_spec.context_bucket_tokens,
                           proposer=decoding.proposer_model)
    kv = KvCache(plan.num_blocks, plan.block_size)
    env = simpy.Environment()
    bell = Doorbell(env)
    done: dict[int, simpy.Event] = {}

    def on_finish(req: Request) -> None:
        event = done.pop(req.id, None)
        if event is not None:
            event.succeed()

    scheduler = Scheduler(engine_spec.limits, decoding, kv, pricer, requests, rng,
                          on_finish if drawn.arrival_s is None else None)
    log = ForwardLog()
    traced: list[TracedForward] = []
    env.process(engine(env, scheduler, pricer, bell, _recorder(log, pricer, decoding, observe, traced)))
    if drawn.arrival_s is None:
        pending: Iterator[Request] = iter(requests)
        for _ in range(min(workload.num_clients, len(requests))):
            env.process(closed_loop_client(env, lambda: next(pending, None), done, workload.think_time_s,
                                           scheduler.submit, bell))
    else:
        env.process(open_loop(env, drawn.arrival_s, requests, scheduler.submit, bell))
    env.run(until=engine_spec.max_sim_time_s)
    scheduler.flush()

    table = _request_table(requests)
    forwards = log.arrays()
    sim_time_s = float(env.now)
    summary = summarize(table, forwards, sim_time_s=sim_time_s, slo=slo, num_blocks=kv.num_blocks,
                        resume_gaps_s=scheduler.resume_gaps_s, num_preemptions=scheduler.num_preemptions)
    summary.update(tp=plan.tp, kv_capacity_tokens=plan.capacity_tokens,
                   expected_tokens_per_forward=_expected_tokens(forwards, decoding))
    near_free = _near_free_samples(forwards, pricer, decoding, observe)
    if len(near_free["nfp"]):
        summary["near_free_fraction"] = float(np.mean(near_free["width"] <= near_free["nfp"]))
        summary["near_free_width_mean"] = float(near_free["nfp"].mean())
    return SimResult(summary, table, forwards, near_free, plan, tuple(traced))


def _recorder(log: ForwardLog, pricer: ForwardPricer, decoding: Decoding, observe: Observe,
              traced: list[TracedForward]):
    append = log.rows.append

    def record(start: float, step: Step, cost: StepCost, outcome) -> None:
        append((start, cost.total_s, cost.forward_s, cost.proposal_s, cost.one_position_s, step.num_decode,
                step.width, step.context_sum, step.prefill_tokens, len(step.prefill), outcome.committed,
                outcome.emitted, step.itl_rows, step.kv_used_blocks))
        if len(traced) < observe.trace_forwards:
            traced.append(_traced(start, step, cost, pricer, decoding))

    return record


def _expected_tokens(fwd: dict[str, np.ndarray], decoding: Decoding) -> float:
    """What the acceptance model expects a row to commit per forward, at the widths the run used."""
    decode = fwd["num_decode"] > 0
    if not decode.any():
        return decoding.expected_tokens(decoding.width)
    widths, index = np.unique(fwd["width"][decode], return_inverse=True)
    expected = np.array([decoding.expected_tokens(int(w)) for w in widths])[index]
    return float(np.average(expected, weights=fwd["num_decode"][decode]))


def _traced(start: float, step: Step, cost: StepCost, pricer: ForwardPricer, decoding: Decoding) -> TracedForward:
    n = step.num_decode
    context = pricer.bucket(step.context_sum / n) if n else 0
    chunks = [(t, pricer.bucket(p), s) for t, p, s in step.prefill]
    proposals = decoding.proposals(step.width) if n else 0
    extra: tuple[ForwardShape, ...] = ()
    if cost.proposal_s:
        first = pricer.shape(n if proposals else 0, 1, context, chunks)
        extra = (first,) + (pricer.shape(n, 1, context),) * max(0, proposals - 1)
    return TracedForward(start, cost, pricer.shape(n, step.width, context, chunks), extra)


def _request_table(requests: list[Request]) -> dict[str, np.ndarray]:
    def column(attr: str, dtype) -> np.ndarray:
        return np.fromiter((getattr(r, attr) for r in requests), dtype=dtype, count=len(requests))

    return {
        "id": column("id", np.int64),
        "arrival_s": column("arrival_s", np.float64),
        "prompt_tokens": column("prompt_tokens", np.int64),
        "output_tokens": column("output_tokens", np.int64),
        "generated_tokens": column("generated", np.int64),
        "first_token_s": column("first_token_s", np.float64),
        "finish_s": column("finish_s", np.float64),
        "preemptions": column("preemptions", np.int64),
    }


def _near_free_samples(fwd: dict[str, np.ndarray], pricer: ForwardPricer, decoding: Decoding,
                       observe: Observe) -> dict[str, np.ndarray]:
    """Near-free width (NFP at ``decoding.eps``) of evenly spaced decode forwards, next to their width."""
    decode = np.flatnonzero(fwd["num_decode"] > 0)
    picks = decode[np.unique(np.linspace(0, len(decode) - 1, min(observe.nfp_samples, len(decode))).round()
                             .astype(np.int64))] if len(decode) and observe.nfp_samples else np.zeros(0, np.int64)
    nfp = np.zeros(len(picks), dtype=np.int64)
    for j, i in enumerate(picks):
        n = int(fwd["num_decode"][i])
        context = pricer.bucket(fwd["context_sum"][i] / n)
        cap = max(1, min(observe.nfp_cap, pricer.model.max_context - context))
        nfp[j] = pricer.near_free_width(n, context, decoding.eps, cap)
    return {"start_s": fwd["start_s"][picks], "num_decode": fwd["num_decode"][picks],
            "width": fwd["width"][picks], "nfp": nfp}
