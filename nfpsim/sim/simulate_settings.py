"""Validated settings of a simulation, built once from the composed config (``conf/simulate.yaml``).

Every check that needs more than one key happens here too (a request within the model's window and
the KV cache, the token budget against the batch and the width, ``tp`` against the model's heads),
so a bad combination fails before anything runs or is written.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from nfpsim.config import ConfigReader, load_group, load_hardware
from nfpsim.errors import ConfigError
from nfpsim.latency import LATENCY_KINDS
from nfpsim.config import Specs
from nfpsim.sim.cluster import ROLES, ClusterSpec, PoolSpec
from nfpsim.sim.decoding import Decoding
from nfpsim.sim.decoding_config import decoding_from_config
from nfpsim.sim.kvcache import KvPlan
from nfpsim.sim.metrics import Slo
from nfpsim.sim.simulator import EngineSpec, Observe, Target, plan_memory
from nfpsim.sim.workload import WorkloadSpec


def engine_from_config(data: Any, prefix: str = "engine") -> EngineSpec:
    r = ConfigReader(data, prefix)
    tp_raw = r.raw("tp", "auto")
    tp = None if tp_raw == "auto" else r.int("tp", low=1, high=64)
    max_seqs = r.int("max_num_seqs", low=1, high=65536)
    return EngineSpec(
        max_num_seqs=max_seqs,
        max_num_batched_tokens=r.int("max_num_batched_tokens", low=1, high=1 << 20),
        chunked_prefill=r.bool("chunked_prefill", default=True),
        tp=tp,
        block_size_tokens=r.int("block_size_tokens", low=1, high=1024, default=16),
        gpu_memory_utilization=r.float("gpu_memory_utilization", low=0, high=1, low_open=True, default=0.9),
        activation_reserve_gib=r.float("activation_reserve_gib", low=0, default=1.0),
        kv_capacity_tokens=r.int("kv_capacity_tokens", low=1, default=None),
        context_bucket_tokens=r.int("context_bucket_tokens", low=1, high=4096, default=64),
        max_sim_time_s=r.float("max_sim_time_s", low=0, low_open=True, default=None),
        pp=r.int("pp", low=1, high=64, default=1),
        prefix_caching=r.bool("prefix_caching", default=False),
        cpu_step_overhead_s=r.float("cpu_step_overhead_ms", low=0, high=1000, default=0.0) * 1e-3,
        cpu_seq_overhead_s=r.float("cpu_seq_overhead_us", low=0, high=1e6, default=0.0) * 1e-6,
        ep=r.int("ep", low=1, high=1024, default=1),
        expert_skew=r.float("expert_skew", low=0, high=10, default=0.0),
    )


def _merged(base: Any, changes: Any) -> dict:
    from omegaconf import OmegaConf

    plain = {} if base is None else (OmegaConf.to_container(base) if OmegaConf.is_config(base) else dict(base))
    if changes is not None:
        plain.update(OmegaConf.to_container(changes) if OmegaConf.is_config(changes) else dict(changes))
    return plain


def cluster_from_config(data: Any, specs: Specs, decoding: Decoding, engine_data: Any, eps: float,
                        workload: WorkloadSpec) -> ClusterSpec:
    """``conf/cluster/*.yaml``: ``router``, ``kv_link_gb_per_s`` and ``pools`` by name, each with ``role``,
    ``replicas`` and optionally ``hardware`` (a conf/hardware name), ``decoding`` (a conf/decoding name)
    and ``engine`` (changes to the top-level engine section). Unset, a pool takes the run's settings."""
    from nfpsim.sim.router import ROUTERS

    r = ConfigReader(data, "cluster")
    pools_data = r.raw("pools")
    if not hasattr(pools_data, "items") or not pools_data:
        raise ConfigError("cluster.pools: must map pool names to their settings")
    pools = []
    for name, raw in pools_data.items():
        key = f"cluster.pools.{name}"
        p = ConfigReader(raw, key)
        hardware_name = p.raw("hardware", None)
        hardware = load_hardware(hardware_name) if hardware_name else specs.hardware
        decoding_name = p.raw("decoding", None)
        pool_decoding = (decoding_from_config(load_group("decoding", decoding_name), specs.model, eps, f"{key}.decoding")
                         if decoding_name else decoding)
        engine_spec = engine_from_config(_merged(engine_data, p.raw("engine", None)), f"{key}.engine")
        kv = plan_memory(hardware, specs.model, pool_decoding, engine_spec, workload)
        pools.append(PoolSpec(str(name), p.str("role", choices=ROLES, default="mixed"),
                              p.int("replicas", low=1, high=4096), hardware, specs.model, pool_decoding,
                              replace(engine_spec, tp=kv.tp)))
    cluster = ClusterSpec(tuple(pools), r.str("router", choices=ROUTERS, default="least_tokens"),
                          r.float("kv_link_gb_per_s", low=0, low_open=True, default=None))
    cluster.check()
    return cluster


@dataclass(frozen=True)
class SimulateSettings:
    specs: Specs
    latency: str
    calibration: str | None
    seed: int
    eps: float
    workload: WorkloadSpec
    decoding: Decoding
    engine_spec: EngineSpec  # tp resolved
    kv: KvPlan
    slo: Slo
    observe: Observe
    plot: bool
    requests_csv: bool
    chrome_trace: bool
    cluster: ClusterSpec | None = None  # many replicas (conf/cluster); None: one replica

    @classmethod
    def from_config(cls, cfg: Any) -> SimulateSettings:
        specs = Specs.from_config(cfg)
        r = ConfigReader(cfg, "")
        eps = r.float("eps", low=0, high=1, low_open=True)  # beyond 1 a forward may double: not near-free
        decoding = decoding_from_config(r.raw("decoding"), specs.model, eps)
        if decoding.method == "diffusion" and specs.model.attention_mask != "bidirectional":
            raise ConfigError(f"decoding={decoding.name}: needs a diffusion LLM (model.attention_mask="
                              f"bidirectional, e.g. model=llada_8b); {specs.model.name} is causal")
        workload = WorkloadSpec.from_config(r.raw("workload"))
        engine_spec = engine_from_config(r.raw("engine"))
        kv = plan_memory(specs.hardware, specs.model, decoding, engine_spec, workload)
        s, o = r.section("slo"), r.section("output")
        cluster_data = r.raw("cluster", None)
        cluster = (cluster_from_config(cluster_data, specs, decoding, r.raw("engine"), eps, workload)
                   if cluster_data else None)
        if cluster is None and engine_spec.pp > 1:  # one pipelined replica: its stages are events
            cluster = ClusterSpec((PoolSpec("replica", "mixed", 1, specs.hardware, specs.model, decoding,
                                            replace(engine_spec, tp=kv.tp)),))
        return cls(
            specs=specs,
            latency=r.str("latency", choices=LATENCY_KINDS, default="auto"),
            calibration=r.raw("calibration", None),
            seed=r.int("seed", low=0, high=2**63 - 1),
            eps=eps,
            workload=workload,
            decoding=decoding,
            engine_spec=replace(engine_spec, tp=kv.tp),
            kv=kv,
            slo=Slo(ttft_s=s.float("ttft_s", low=0, low_open=True), tpot_s=s.float("tpot_s", low=0, low_open=True)),
            observe=Observe(nfp_samples=o.int("nfp_samples", low=0, high=10_000, default=60),
                            nfp_cap=o.int("nfp_cap", low=1, high=4096, default=128),
                            trace_forwards=o.int("trace_forwards", low=0, high=100_000, default=0)
                            if o.bool("chrome_trace", default=False) else 0,
                            trace_from_s=o.float("trace_from_s", low=0, default=0.0)),
            plot=o.bool("plot", default=True),
            requests_csv=o.bool("requests_csv", default=True),
            chrome_trace=o.bool("chrome_trace", default=False),
            cluster=cluster,
        )

    @property
    def target(self) -> Target:
        return Target(self.specs.hardware, self.specs.model)

    def latency_model(self, hardware=None):
        """The latency model ``latency`` names on ``hardware`` (default: the run's; a calibrated one loads
        its table, ``calibration`` only for the run's hardware)."""
        from nfpsim.latency import make_latency_model

        hardware = hardware or self.specs.hardware
        calibration = self.calibration if hardware == self.specs.hardware else None
        return make_latency_model(self.latency, hardware, self.specs.kernels, calibration)

    def pool_latency_models(self) -> dict[str, Any]:
        """One latency model per cluster pool (shared by pools on the same hardware)."""
        by_hardware: dict[str, Any] = {}
        for pool in self.cluster.pools:
            if pool.hardware.name not in by_hardware:
                by_hardware[pool.hardware.name] = self.latency_model(pool.hardware)
        return {pool.name: by_hardware[pool.hardware.name] for pool in self.cluster.pools}
