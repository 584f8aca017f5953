"""Many replicas under one simpy environment: pools of engines behind a router.

A :class:`ClusterSpec` is a set of pools. Every pool has ``replicas`` identical engines (data
parallelism: each engine is one tensor-parallel group) with its own hardware, decoding method and engine
settings, so pools may differ (heterogeneous GPUs, speculative decoding on some). Pools are either all
``mixed`` (each engine prefills and decodes, as one replica does) or split into ``prefill`` and
``decode`` pools (disaggregated serving): a prefill engine runs the prompt and samples the first token,
the prompt's KV cache crosses the link (:mod:`nfpsim.sim.transfer`, overlapped layer by layer, one
transfer at a time per prefill engine), and a decode engine generates the rest.

Arrivals go through the router (:mod:`nfpsim.sim.router`) to an engine of the entry pools (mixed, or
prefill); transferred requests go through a second router of the same policy to a decode engine.
Results are always streamed (:mod:`nfpsim.sim.stream`): the summary is the one replica's, over every
engine, plus figures per pool.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from nfpsim.config import HardwareSpec, ModelSpec
from nfpsim.errors import ConfigError
from nfpsim.sim.decoding import Decoding
from nfpsim.sim.kvcache import KvPlan
from nfpsim.sim.metrics import Slo
from nfpsim.sim.pipeline import Pipeline, stage_send_s
from nfpsim.sim.prefix import cache_figures
from nfpsim.sim.replica import Replica
from nfpsim.sim.requests import RequestLog, Requests
from nfpsim.sim.router import Router
from nfpsim.sim.server import arrivals, fewer_collections
from nfpsim.sim.simulator import EngineSpec, Observe, expected_from_rows, plan_memory
from nfpsim.sim.state import Request
from nfpsim.sim.stream import ForwardStats, stream_summary
from nfpsim.sim.transfer import KvLink, exposed_transfer_s, kv_transfer_bytes
from nfpsim.sim.workload import WorkloadSpec, generate

if TYPE_CHECKING:
    import simpy

ROLES = ("mixed", "prefill", "decode")


@dataclass(frozen=True)
class PoolSpec:
    """``replicas`` identical replicas: one GPU type, model, decoding method and engine. A ``mixed`` pool
    serves requests whole; a ``prefill`` pool hands each request's KV cache to a ``decode`` pool."""

    name: str
    role: str
    replicas: int
    hardware: HardwareSpec
    model: ModelSpec
    decoding: Decoding
    engine_spec: EngineSpec


@dataclass(frozen=True)
class ClusterSpec:
    pools: tuple[PoolSpec, ...]
    router: str = "least_tokens"
    kv_link_gb_per_s: float | None = None  # prefill-to-decode bandwidth; None: the GPUs' interconnect

    @property
    def disaggregated(self) -> bool:
        return any(p.role != "mixed" for p in self.pools)

    @property
    def num_replicas(self) -> int:
        return sum(p.replicas for p in self.pools)

    @property
    def num_stages(self) -> int:
        """Replicas times pipeline stages: what can be busy at once."""
        return sum(p.replicas * p.engine_spec.pp for p in self.pools)

    def check(self) -> None:
        roles = {p.role for p in self.pools}
        if self.disaggregated and roles != {"prefill", "decode"}:
            raise ConfigError(f"cluster.pools: roles {sorted(roles)}: either every pool is mixed, or there are "
                              f"prefill and decode pools and no mixed one")
        if len({p.model.name for p in self.pools}) > 1:
            raise ConfigError("cluster.pools: every pool serves the same model")


@dataclass(frozen=True)
class ClusterResult:
    summary: dict
    pools: dict[str, dict]
    kv: dict[str, KvPlan]
    requests: dict[str, np.ndarray] | None = field(default=None, repr=False)  # the first block, for plots


def simulate_cluster(cluster: ClusterSpec, latencies: Mapping[str, object], workload: WorkloadSpec, seed: int, *,
                     slo: Slo = Slo(), observe: Observe = Observe()) -> ClusterResult:
    """Serve ``workload`` on ``cluster``; ``latencies[pool name]`` prices that pool's forwards."""
    cluster.check()
    plans = {p.name: plan_memory(p.hardware, p.model, p.decoding, p.engine_spec, workload) for p in cluster.pools}
    rng = np.random.default_rng(seed)
    drawn = generate(workload, rng)
    import simpy  # imported where a clock runs on it (a single replica's run does without)

    env = simpy.Environment()
    log = RequestLog(slo, observe.requests_path, exact_rows=0)
    requests = Requests(drawn)
    wake = None

    def on_finish(req: Request) -> None:
        log.record(req)
        if wake is not None:
            wake(req)

    pipelines: dict[str, list[Pipeline]] = {}
    pools = {p.name: _engines(env, p, latencies[p.name], plans[p.name], rng, on_finish, pipelines)
             for p in cluster.pools}
    router_rng = np.random.default_rng([seed, 1])
    entry = [r for p in cluster.pools if p.role in ("mixed", "prefill") for r in pools[p.name]]
    entry_router = Router(cluster.router, router_rng)

    def route(req: Request, now: float) -> None:
        entry[entry_router.pick(entry, req)].submit(req, now)

    if cluster.disaggregated:
        _connect(env, cluster, pools, plans, Router(cluster.router, router_rng))
    wake = arrivals(env, workload, drawn, requests, route)
    try:
        with fewer_collections():
            env.run(until=max((p.engine_spec.max_sim_time_s for p in cluster.pools
                               if p.engine_spec.max_sim_time_s is not None), default=None))
        for replicas in pools.values():
            for replica in replicas:
                for req in replica.scheduler.flush():
                    log.record(req)
        for req in _in_transfer(pools):
            log.record(req)
        log.finish(requests)
    except BaseException:
        log.abort()
        raise
    return _result(cluster, pools, plans, log, drawn.num_requests, float(env.now), pipelines)


def _engines(env: simpy.Environment, pool: PoolSpec, latency, plan: KvPlan, rng: np.random.Generator, on_finish,
             pipelines: dict[str, list[Pipeline]]) -> list[Replica]:
    """The pool's engines: one per replica, or ``pp`` virtual engines per replica sharing its stages
    (each with a ``1/pp`` share of the KV cache)."""
    pp = pool.engine_spec.pp
    common = dict(latency=latency, model=pool.model, hardware=pool.hardware, decoding=pool.decoding,
                  engine_spec=pool.engine_spec, rng=rng,
                  on_finish=on_finish, exact_rows=0)
    if pp == 1:
        return [Replica(env, plan=plan, **common) for _ in range(pool.replicas)]
    share = dataclasses.replace(plan, num_blocks=plan.num_blocks // pp)
    engines = []
    for _ in range(pool.replicas):
        pipeline = Pipeline(env, pp, lambda tokens: stage_send_s(pool.model, pool.hardware, tokens))
        pipelines.setdefault(pool.name, []).append(pipeline)
        engines += [Replica(env, plan=share, run=pipeline.run, **common) for _ in range(pp)]
    return engines


def _connect(env: simpy.Environment, cluster: ClusterSpec, pools: dict[str, list[Replica]],
             plans: dict[str, KvPlan], router: Router) -> None:
    """Prefill engines hand requests to decode engines over a KV link each."""
    import simpy

    decode_pools = [p for p in cluster.pools if p.role == "decode"]
    decoders = [r for p in decode_pools for r in pools[p.name]]
    decode_tp = min(plans[p.name].tp for p in decode_pools)
    for pool in (p for p in cluster.pools if p.role == "prefill"):
        link = KvLink.between(pool.hardware, plans[pool.name].tp, decode_tp, cluster.kv_link_gb_per_s)
        for replica in pools[pool.name]:
            channel = simpy.Resource(env, capacity=1)

            def deliver(req: Request, replica=replica, channel=channel, link=link, model=pool.model) -> None:
                prefill_s = replica.pricer.step(0, 1, 0, ((req.prompt_tokens, 0, 1),)).forward_s
                delay_s = exposed_transfer_s(kv_transfer_bytes(model, req.cached_tokens), link, model.num_layers,
                                             prefill_s)
                replica.in_transfer[req.id] = req
                env.process(_transfer(env, channel, delay_s, req, replica, decoders, router))

            replica.hand_off_to(deliver)


def _transfer(env, channel: simpy.Resource, delay_s: float, req: Request, source: Replica,
              decoders: list[Replica], router: Router):
    with channel.request() as slot:
        yield slot
        yield env.timeout(delay_s)
    del source.in_transfer[req.id]
    source.transfer_s += delay_s
    source.transfers += 1
    decoders[router.pick(decoders, req)].submit_cached(req)


def _in_transfer(pools: dict[str, list[Replica]]) -> list[Request]:
    return [req for replicas in pools.values() for r in replicas for req in r.in_transfer.values()]


def _result(cluster: ClusterSpec, pools: dict[str, list[Replica]], plans: dict[str, KvPlan], log: RequestLog,
            num_requests: int, sim_time_s: float, pipelines: dict[str, list[Pipeline]]) -> ClusterResult:
    merged = ForwardStats()
    per_pool: dict[str, dict] = {}
    rows_expected = 0.0
    for spec in cluster.pools:
        stats = ForwardStats()
        for replica in pools[spec.name]:
            replica.log.fold_all()
            replica.gaps.fold_all()
            stats.merge(replica.stats)
        merged.merge(stats)
        expected = expected_from_rows(stats.rows_by_width, spec.decoding)
        rows_expected += expected * stats.row_forwards
        per_pool[spec.name] = _pool_figures(spec, plans[spec.name], stats, pools[spec.name], sim_time_s, expected)
        if spec.name in pipelines:
            per_pool[spec.name].update(_pipeline_figures(pipelines[spec.name], sim_time_s))
    log.rows.fold_all()
    preemptions = sum(r.scheduler.num_preemptions for rs in pools.values() for r in rs)
    summary = stream_summary(log.stats, merged, num_requests=num_requests, sim_time_s=sim_time_s,
                             busy_time_s=sim_time_s * cluster.num_stages, num_preemptions=preemptions)
    caches = [r.scheduler.cache for rs in pools.values() for r in rs if r.scheduler.cache is not None]
    if caches:
        summary.update(cache_figures(caches))
    summary.update(num_replicas=cluster.num_replicas, router=cluster.router,
                   disaggregated=cluster.disaggregated,
                   expected_tokens_per_forward=rows_expected / merged.row_forwards if merged.row_forwards else None)
    return ClusterResult(summary, per_pool, plans, log.rows.sample)


def _pipeline_figures(pipelines: list[Pipeline], sim_time_s: float) -> dict:
    """Measured idle share per stage (the bubbles), averaged over the pool's replicas."""
    fractions = [p.bubble_fractions(sim_time_s) for p in pipelines]
    per_stage = [sum(f[i] for f in fractions) / len(fractions) for i in range(len(fractions[0]))]
    return {"pp": len(per_stage), "bubble_fraction_per_stage": per_stage,
            "bubble_fraction_mean": sum(per_stage) / len(per_stage),
            "micro_batches": sum(p.micro_batches for p in pipelines)}


def _pool_figures(spec: PoolSpec, plan: KvPlan, stats: ForwardStats, replicas: list[Replica], sim_time_s: float,
                  expected: float) -> dict:
    busy = sim_time_s * spec.replicas * spec.engine_spec.pp  # stage-seconds: a forward's cost spreads over pp
    transfers = sum(r.transfers for r in replicas)
    caches = [r.scheduler.cache for r in replicas if r.scheduler.cache is not None]
    return {
        **(cache_figures(caches) if caches else {}),
        "role": spec.role, "replicas": spec.replicas, "hardware": spec.hardware.name, "tp": plan.tp,
        "gpus": spec.replicas * plan.tp, "decoding": spec.decoding.describe(),
        "num_forwards": stats.num_forwards, "committed_tokens": stats.committed_tokens,
        "emitted_tokens": stats.emitted_tokens,
        "gpu_busy_fraction": stats.busy_s / busy if busy > 0 else 0.0,
        "batch_size_mean": stats.row_forwards / stats.num_decode_forwards if stats.num_decode_forwards else None,
        "tokens_per_forward_mean": stats.committed_tokens / stats.row_forwards if stats.row_forwards else None,
        "expected_tokens_per_forward": expected,
        "kv_utilization_mean": stats.kv_weighted_s / stats.busy_s if stats.busy_s else 0.0,
        "preemptions": sum(r.scheduler.num_preemptions for r in replicas),
        "kv_transfers": transfers,
        "kv_transfer_s_mean": sum(r.transfer_s for r in replicas) / transfers if transfers else None,
    }
