"""Single-replica scenarios pinned by ``single_replica.json`` (see ``generate.py``): every decoding family,
open and closed loops, preemption under a tight cache, near-free widths, a horizon that leaves requests
unfinished. ``seed`` is the last positional argument; the rest is what ``simulate`` took on that commit.

Features priced since are turned off here, so the figures still pin the engine loop: the host time of
proposals made without a model (``proposal_host_s=0``) and a draft model's catch-up pass
(:class:`NoCatchUp`); their prices are tested in ``tests/sim/test_proposals.py``."""

from __future__ import annotations

from dataclasses import dataclass

from nfpsim.config import load_model
from nfpsim.sim.decoding import Decoding
from nfpsim.sim import (Acceptance, Autoregressive, Diffusion, EngineSpec, Jacobi, LengthSpec, Speculative,
                        WorkloadSpec)

from ..stubs import Linear, specs


def _bursty(n: int) -> WorkloadSpec:
    return WorkloadSpec("gamma", n, rate_per_s=30.0, cv=2.0, prompt=LengthSpec("lognormal", 16, 900, 200.0, 0.8),
                        output=LengthSpec("lognormal", 4, 300, 80.0, 0.7))


def _closed(n: int) -> WorkloadSpec:
    return WorkloadSpec("closed", n, num_clients=12, think_time_s=0.05, prompt=LengthSpec("uniform", 32, 512),
                        output=LengthSpec("uniform", 8, 200))


def _poisson(n: int) -> WorkloadSpec:
    return WorkloadSpec("poisson", n, rate_per_s=15.0, prompt=LengthSpec("fixed", 384, 384),
                        output=LengthSpec("fixed", 128, 128))


@dataclass(frozen=True)
class NoCatchUp(Speculative):
    """Speculative decoding whose proposer's first forward runs one position per row, as it was priced
    when these figures were made (before the catch-up over the accepted tokens)."""

    catch_up = Decoding.catch_up


def _latency():
    return Linear(0.004, 2e-6)


SCENARIOS = {
    "ar_bursty_preempting": lambda: ((specs(), _latency(), _bursty(400), Autoregressive(),
                                      EngineSpec(max_num_seqs=32, kv_capacity_tokens=6000), 7), {}),
    "speculative_draft_near_free": lambda: ((specs(), _latency(), _poisson(300),
                                             NoCatchUp(width=5, acceptance=Acceptance((0.7,)), proposer="draft",
                                                       proposer_model=load_model("llama3_1b"), near_free=True, eps=0.1),
                                             EngineSpec(), 3), {}),
    "speculative_rates_no_chunking": lambda: ((specs(), _latency(), _bursty(250),
                                               Speculative(width=4, acceptance=Acceptance((0.9, 0.6, 0.4)),
                                                           proposal_host_s=0.0),
                                               EngineSpec(chunked_prefill=False, max_num_seqs=16,
                                                          kv_capacity_tokens=5000), 11), {}),
    "diffusion_closed_loop": lambda: ((specs(), _latency(), _closed(200),
                                       Diffusion(width=16, commit_model="threshold", unmask_prob=0.3),
                                       EngineSpec(), 5), {}),
    "jacobi_horizon": lambda: ((specs(), _latency(), _bursty(300), Jacobi(width=8, proposal_host_s=0.0),
                                EngineSpec(max_sim_time_s=4.0, max_num_seqs=4), 2), {}),
}
