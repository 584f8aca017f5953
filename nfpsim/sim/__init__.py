"""The serving simulator: workload -> simpy server (scheduler, decoding, KV cache, priced forwards) -> metrics.

``simulate(specs, latency, workload, decoding, engine, seed)`` is pure (no Hydra, no files, no printing);
``SimulateSettings.from_config`` builds its arguments from a composed ``conf/simulate.yaml``.
"""

from nfpsim.sim.decoding import Acceptance, Decoding, Diffusion, Jacobi, Speculative, Utilization
from nfpsim.sim.metrics import Slo
from nfpsim.sim.simulator import EngineSpec, Observe, SimResult, plan_memory, simulate
from nfpsim.sim.workload import LengthSpec, WorkloadSpec

__all__ = [
    "Acceptance",
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
