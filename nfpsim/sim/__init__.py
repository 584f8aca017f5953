"""The serving simulator: workload -> simpy server (scheduler, decoding, KV cache, priced forwards) -> metrics.

``simulate(target, latency, workload, decoding, engine_spec, seed)`` is pure (no Hydra, no printing; a
per-request CSV only when asked); ``simulate_cluster`` serves it on pools of replicas;
``SimulateSettings.from_config`` builds its arguments from a composed ``conf/simulate.yaml``.
"""

from nfpsim.sim.decoding import Acceptance, Autoregressive, Decoding, Diffusion, Jacobi, Speculative, Utilization
from nfpsim.sim.metrics import Slo
from nfpsim.sim.simulator import EngineSpec, Observe, SimResult, plan_memory, simulate
from nfpsim.sim.workload import LengthSpec, WorkloadSpec

__all__ = [
    "Acceptance",
    "Autoregressive",
    "Decoding",
    "Diffusion",
    "EngineSpec",
    "Jacobi",
    "LengthSpec",
    "Observe",
    "SimResult",
    "Slo",
    "Speculative",
    "Utilization",
    "WorkloadSpec",
    "plan_memory",
    "simulate",
]
