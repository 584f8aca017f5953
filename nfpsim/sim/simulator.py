"""``simulate``: one serving replica, end to end, as a pure function (no Hydra, no files, no printing).

The pieces, each replaceable on its own: workload (what arrives), scheduler (policy), decoding
(tokens per forward), KV cache (memory), pricer (cost through the latency model), the clock (simpy, or
:func:`~nfpsim.sim.server.serve_open_loop` for open-loop arrivals).
One ``numpy.random.Generator`` seeded with ``seed`` draws the workload, then every acceptance sample,
so a seed fixes the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from nfpsim.config import HardwareSpec, ModelSpec
from nfpsim.errors import ConfigError
from nfpsim.shapes import ForwardShape, decompose
from nfpsim.sim.cost import ForwardPricer
from nfpsim.sim.decoding import Decoding, proposer_weight_bytes
from nfpsim.sim.kvcache import GIB, KvPlan, plan_kv
from nfpsim.sim.metrics import Slo, summarize
from nfpsim.sim.replica import Replica, TracedForward
from nfpsim.sim.requests import RequestLog, Requests
from nfpsim.sim.scheduler import Limits
from nfpsim.sim.server import arrivals, fewer_collections, serve_open_loop
from nfpsim.sim.stream import stream_summary
from nfpsim.sim.tables import EXACT_ROWS
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
    pp: int = 1  # pipeline stages (and virtual engines, each with 1/pp of the KV cache)
    prefix_caching: bool = False  # finished and preempted requests leave their blocks cached for reuse
    cpu_step_overhead_s: float = 0.0  # CPU time per step the GPU waits for (scheduler, input preparation)
    cpu_seq_overhead_s: float = 0.0  # and per sequence in the step
    ep: int = 1  # expert-parallel ranks of an MoE model: an all-to-all per MoE layer
    expert_skew: float = 0.0  # expert popularity ~ 1/rank**skew: the busiest rank sets the MoE layer's time

    @property
    def limits(self) -> Limits:
        return Limits(self.max_num_seqs, self.max_num_batched_tokens, self.chunked_prefill)


@dataclass(frozen=True)
class Observe:
    """What to keep beyond the metrics: near-free budgets of sampled forwards, shapes to trace."""

    nfp_samples: int = 0  # decode forwards, evenly spaced, whose near-free width is computed
    nfp_cap: int = 128  # widths scanned for them
    trace_forwards: int = 0  # forwards kept for the Chrome trace, layer by layer: the first from trace_from_s
    trace_from_s: float = 0.0  # the window of the trace starts at this simulated time
    requests_path: str | None = None  # per-request CSV written as requests finish (bounded memory)
    exact_rows: int = EXACT_ROWS  # tables kept whole up to this many rows, then streamed


@dataclass(frozen=True)
class Target:
    """What runs the workload: the model on the hardware (the kernels live in the latency model)."""

    hardware: HardwareSpec
    model: ModelSpec


@dataclass(frozen=True)
class SimResult:
    """``requests`` and ``forwards`` are the whole per-request and per-forward tables when ``exact``
    (the run fit :data:`~nfpsim.sim.tables.EXACT_ROWS`); otherwise their first block, for plots, and
    the summary comes from the streamed summaries."""

    summary: dict
    requests: dict[str, np.ndarray]
    forwards: dict[str, np.ndarray]
    near_free: dict[str, np.ndarray]
    kv: KvPlan
    traced: tuple[TracedForward, ...] = field(default=(), repr=False)
    exact: bool = True


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
    if engine_spec.ep > 1 and (not model.is_moe or model.num_experts % engine_spec.ep):
        raise ConfigError(f"engine.ep={engine_spec.ep}: needs an MoE model whose experts it divides "
                          f"({model.name} has {model.num_experts})")
    if not limits.chunked_prefill and workload.max_prompt_tokens > limits.max_num_batched_tokens:
        raise ConfigError(
            f"engine.chunked_prefill=false: a prompt of {workload.max_prompt_tokens} tokens never fits "
            f"engine.max_num_batched_tokens={limits.max_num_batched_tokens}")
    longest = workload.max_request_tokens + decoding.width  # its cache while its last forward runs
    pp = engine_spec.pp
    if engine_spec.tp is not None:
        return _check_holds(_plan(hardware, model, decoding, engine_spec, engine_spec.tp), longest, model, hardware, pp)
    error = None
    for tp in TP_CHOICES:
        try:
            return _check_holds(_plan(hardware, model, decoding, engine_spec, tp), longest, model, hardware, pp)
        except ConfigError as failure:
            error = error or failure
    raise ConfigError(f"engine.tp=auto: no tensor-parallel degree up to {TP_CHOICES[-1]} works; at tp=1: {error}")


def _plan(hardware: HardwareSpec, model: ModelSpec, decoding: Decoding, engine_spec: EngineSpec, tp: int) -> KvPlan:
    proposer = decoding.proposer_model
    for m in (model, proposer):  # tp must divide heads, hidden and FFN of both models
        if m is not None:
            decompose(m, ForwardShape.uniform(1, 1, 0, tp))
    if engine_spec.pp > 1:  # a stage holds the weights and KV cache of its share of the layers
        layers = -(-model.num_layers // engine_spec.pp)
        model = replace(model, num_layers=layers, num_dense_layers=min(model.num_dense_layers, layers))
    plan = plan_kv(hardware, model, tp, block_size=engine_spec.block_size_tokens,
                   gpu_memory_utilization=engine_spec.gpu_memory_utilization,
                   activation_reserve_bytes=engine_spec.activation_reserve_gib * GIB,
                   proposer=proposer, proposer_weight_bytes=proposer_weight_bytes(decoding, model))
    if engine_spec.kv_capacity_tokens is not None:
        blocks = engine_spec.kv_capacity_tokens // engine_spec.block_size_tokens
        plan = KvPlan(tp, plan.block_size, blocks, plan.weight_bytes_per_rank, plan.kv_bytes_per_token)
    return plan


def _check_holds(plan: KvPlan, longest: int, model: ModelSpec, hardware: HardwareSpec, pp: int = 1) -> KvPlan:
    if plan.blocks(longest) > plan.num_blocks // pp:
        share = f" (a 1/{pp} share per virtual engine at engine.pp={pp})" if pp > 1 else ""
        raise ConfigError(
            f"workload: a request of up to {longest} tokens (prompt + output + positions of a forward) needs "
            f"{plan.blocks(longest)} KV blocks but {model.name} on {hardware.name} at engine.tp={plan.tp} "
            f"holds {plan.num_blocks // pp} ({plan.capacity_tokens // pp} tokens){share}; it can never run")
    return plan


# ----------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------


def simulate(target, latency, workload: WorkloadSpec, decoding: Decoding, engine_spec: EngineSpec, seed: int, *,
             slo: Slo = Slo(), observe: Observe = Observe()) -> SimResult:
    """Serve ``workload`` with ``decoding`` on one replica of ``target.model`` on ``target.hardware``
    (a :class:`Target`, or anything with those two attributes); ``latency`` is anything with
    ``forward_time(model, ForwardShape) -> seconds`` (a :class:`~nfpsim.latency.LatencyModel`)."""
    if engine_spec.pp > 1:
        raise ConfigError(f"engine.pp={engine_spec.pp}: a pipelined replica runs in simulate_cluster (one pool)")
    plan = plan_memory(target.hardware, target.model, decoding, engine_spec, workload)
    rng = np.random.default_rng(seed)
    drawn = generate(workload, rng)
    log = RequestLog(slo, observe.requests_path, exact_rows=observe.exact_rows)
    requests = Requests(drawn)
    wake = None

    def on_finish(req) -> None:
        log.record(req)
        if wake is not None:
            wake(req)

    open_loop = drawn.arrival_s is not None  # then the engine runs without simpy (same events, same order)
    if open_loop:
        env = None
    else:
        import simpy  # imported where a clock runs on it

        env = simpy.Environment()
    replica = Replica(env, latency=latency, model=target.model, hardware=target.hardware, decoding=decoding,
                      engine_spec=engine_spec,
                      plan=plan, rng=rng, on_finish=on_finish, trace=(observe.trace_forwards, observe.trace_from_s),
                      nfp_samples=observe.nfp_samples, exact_rows=observe.exact_rows)
    if not open_loop:
        wake = arrivals(env, workload, drawn, requests, replica.submit)
    try:
        with fewer_collections():
            if open_loop:
                sim_time_s = float(serve_open_loop(replica.scheduler, replica.pricer, replica.bell, replica.recorder(),
                                                   drawn.arrival_s, requests.next, replica.submit,
                                                   engine_spec.max_sim_time_s))
            else:
                env.run(until=engine_spec.max_sim_time_s)
                sim_time_s = float(env.now)
        for req in replica.scheduler.flush():
            log.record(req)
        table = log.finish(requests)
    except BaseException:
        log.abort()
        raise
    forwards, gaps = replica.log.finish(), replica.gaps.finish()
    exact = table is not None and forwards is not None and gaps is not None
    if exact:
        summary = summarize(table, forwards, sim_time_s=sim_time_s, slo=slo, num_blocks=replica.kv.num_blocks,
                            resume_gaps_s=gaps["gap_s"], num_preemptions=replica.scheduler.num_preemptions)
        expected = _expected_tokens(forwards, decoding)
        near_free = _near_free_samples(forwards, replica.pricer, decoding, observe)
    else:
        for rowlog in (log.rows, replica.log, replica.gaps):
            rowlog.fold_kept()
        summary = stream_summary(log.stats, replica.stats, num_requests=drawn.num_requests, sim_time_s=sim_time_s,
                                 num_preemptions=replica.scheduler.num_preemptions)
        expected = expected_from_rows(replica.stats.rows_by_width, decoding)
        near_free = _near_free_samples(replica.sample.table(), replica.pricer, decoding, observe)
        table, forwards = log.rows.sample, replica.log.sample
    summary.update(tp=plan.tp, kv_capacity_tokens=plan.capacity_tokens, expected_tokens_per_forward=expected)
    if replica.scheduler.cache is not None:
        summary.update(replica.scheduler.cache.figures())
    if len(near_free["nfp"]):
        summary["near_free_fraction"] = float(np.mean(near_free["width"] <= near_free["nfp"]))
        summary["near_free_width_mean"] = float(near_free["nfp"].mean())
    return SimResult(summary, table, forwards, near_free, plan, tuple(replica.traced), exact)


def _expected_tokens(fwd: dict[str, np.ndarray], decoding: Decoding) -> float:
    """What the acceptance model expects a row to commit per forward, at the widths the run used."""
    decode = fwd["num_decode"] > 0
    if not decode.any():
        return decoding.expected_tokens(decoding.width)
    widths, index = np.unique(fwd["width"][decode], return_inverse=True)
    expected = np.array([decoding.expected_tokens(int(w)) for w in widths])[index]
    return float(np.average(expected, weights=fwd["num_decode"][decode]))


def expected_from_rows(rows_by_width, decoding: Decoding) -> float:
    """:func:`_expected_tokens` from decode rows counted per width (a streamed run)."""
    total = sum(rows_by_width.values())
    if not total:
        return decoding.expected_tokens(decoding.width)
    return sum(decoding.expected_tokens(w) * rows for w, rows in sorted(rows_by_width.items())) / total


def _near_free_samples(fwd: dict[str, np.ndarray], pricer: ForwardPricer, decoding: Decoding,
                       observe: Observe) -> dict[str, np.ndarray]:
    """Near-free width (NFP at ``decoding.eps``) of evenly spaced decode forwards, next to their width."""
    decode = np.flatnonzero(fwd["num_decode"] > 0)
    picks = np.zeros(0, np.int64)
    if len(decode) and observe.nfp_samples:
        spaced = np.linspace(0, len(decode) - 1, min(observe.nfp_samples, len(decode))).round().astype(np.int64)
        # non-decreasing: drop repeats (np.unique would import numpy.ma, a fiftieth of a second, to check a mask)
        picks = decode[spaced[np.concatenate(([True], spaced[1:] != spaced[:-1]))]]
    nfp = np.zeros(len(picks), dtype=np.int64)
    for j, i in enumerate(picks):
        n = int(fwd["num_decode"][i])
        context = pricer.bucket(fwd["context_sum"][i] / n)
        cap = max(1, min(observe.nfp_cap, pricer.model.max_context - context))
        nfp[j] = pricer.near_free_width(n, context, decoding.eps, cap)
    return {"start_s": fwd["start_s"][picks], "num_decode": fwd["num_decode"][picks],
            "width": fwd["width"][picks], "nfp": nfp}
