"""The serving simulator: workload -> simpy server (scheduler, decoding, KV cache, priced forwards) -> metrics.

``simulate(target, latency, workload, decoding, engine_spec, seed)`` is pure (no Hydra, no printing; a
per-request CSV only when asked); ``simulate_cluster`` serves it on pools of replicas;
``SimulateSettings.from_config`` builds its arguments from a composed ``conf/simulate.yaml``.
"""

from nfpsim.sim.cluster import ClusterResult, ClusterSpec, PoolSpec, simulate_cluster
from nfpsim.sim.decoding import Acceptance, Autoregressive, Decoding, Diffusion, Jacobi, Speculative, Utilization
from nfpsim.sim.metrics import Slo
from nfpsim.sim.simulator import EngineSpec, Observe, SimResult, plan_memory, simulate
from nfpsim.sim.workload import LengthSpec, SharingSpec, WorkloadSpec

__all__ = [
    "Acceptance",
    "Autoregressive",
    "ClusterResult",
    "ClusterSpec",
    "Decoding",
    "Diffusion",
    "EngineSpec",
    "Jacobi",
    "LengthSpec",
    "Observe",
    "PoolSpec",
    "SharingSpec",
    "SimResult",
    "Slo",
    "Speculative",
    "Utilization",
    "WorkloadSpec",
    "plan_memory",
    "simulate",
    "simulate_cluster",
]
