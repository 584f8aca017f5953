"""One trial of the co-design search: sample, check the budgets, simulate, score.

Constraints (Optuna's convention: feasible when <= 0), in the order they are checked:

- ``total_params_over`` / ``active_params_over``: parameters above the budget (relative);
- ``total_params_under`` / ``active_params_under``: parameters below ``(1 - tolerance)`` of the budget,
  the quality proxy: a search must not win by shrinking the model;
- ``memory``: weights plus the KV cache of the longest request per rank over the usable memory, minus 1
  (the simulator's own check, :func:`nfpsim.sim.kvcache.memory_use`);
- ``near_free``: over the decode steps the simulation actually ran (at their own batch, widths and
  context), step time including the proposer's forwards (its catch-up over the committed tokens
  included) or free proposals' host time, over the one-position forward, minus ``(1 + eps)``: the
  near-free budget.

A trial that breaks a budget or memory is not simulated, so its cost is the analytic check alone, and
the constraints it never reached are not recorded (no placeholder values).

Every trial of a study serves the same workload draw (common random numbers, ``Problem.workload_seed``):
one design always scores the same, and two designs differ only by what they are.

The objective is capacity: output tokens per second per GPU while requests wait to be served
(:func:`capacity`), on a closed-loop workload that keeps every candidate saturated.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from nfpsim.config import HardwareSpec, KernelPreset, ModelSpec
from nfpsim.latency.remembered import RememberedForwardTimes
from nfpsim.errors import ConfigError
from nfpsim.search.space import METHOD_SIZE_KEY, Budget, Candidate, Space, sample
from nfpsim.config import Specs
from nfpsim.shapes import ForwardShape, decompose
from nfpsim.sim.decoding import Decoding, proposer_weight_bytes
from nfpsim.sim.decoding_config import decoding_from_config
from nfpsim.sim.kvcache import GIB, memory_use
from nfpsim.sim.metrics import Slo
from nfpsim.sim.simulator import EngineSpec, SimResult, plan_memory, simulate
from nfpsim.sim.workload import WorkloadSpec

OBJECTIVES = {
    "throughput": (("throughput_tokens_per_s_per_gpu",), ("maximize",)),
    "throughput_tpot": (("throughput_tokens_per_s_per_gpu", "tpot_p99_s"), ("maximize", "minimize")),
}
WORST = {"maximize": 0.0, "minimize": 1e9}
OBJECTIVE_MEASURE = ("capacity: output tokens per second per GPU over the part of a closed-loop run in which "
                     "requests wait to be served (every candidate saturated); the same workload draw for every "
                     "trial")


@dataclass(frozen=True)
class Problem:
    """Everything a trial needs, fixed for the whole study (resolved by the config layer)."""

    hardware: HardwareSpec
    kernels: KernelPreset
    template: ModelSpec  # vocabulary, window and attention mask of every candidate
    space: Space
    budget: Budget
    objective: str
    decoding_configs: dict[str, dict]  # method -> its decoding mapping; the method's size is set per trial
    workload: WorkloadSpec
    workload_seed: int  # one draw for the whole study: common random numbers
    engine: EngineSpec
    slo: Slo

    @property
    def directions(self) -> tuple[str, ...]:
        return OBJECTIVES[self.objective][1]

    @property
    def objective_names(self) -> tuple[str, ...]:
        return OBJECTIVES[self.objective][0]


def decoding_for(problem: Problem, method: str, size: int, model: ModelSpec) -> Decoding:
    """The decoding policy of ``method`` with its size key set to ``size`` (k, block_size, width)."""
    data = dict(problem.decoding_configs.get(method, {"method": "ar"}))
    if method in METHOD_SIZE_KEY:
        data[METHOD_SIZE_KEY[method]] = size
    return decoding_from_config(data, model, problem.budget.eps, prefix=f"search.decoding.{method}")


def engine_for(problem: Problem, candidate: Candidate, decoding: Decoding) -> EngineSpec:
    """The engine limits of a candidate: its batch cap and tp, and a token budget that holds the batch."""
    tokens = max(problem.engine.max_num_batched_tokens, candidate.max_num_seqs * decoding.width + 512)
    return dataclasses.replace(problem.engine, max_num_seqs=candidate.max_num_seqs, max_num_batched_tokens=tokens,
                               tp=candidate.tp)


class ExpertParallel:
    """A latency model whose forwards spread each MoE layer's experts over ``ep`` ranks."""

    def __init__(self, latency, ep: int):
        self.latency, self.ep = latency, ep

    def forward_time(self, model: ModelSpec, shape: ForwardShape) -> float:
        return self.latency.forward_time(model, dataclasses.replace(shape, ep=self.ep))


def latency_for(latency, candidate: Candidate):
    return ExpertParallel(latency, candidate.ep) if candidate.ep > 1 else latency


def memory_violation(problem: Problem, candidate: Candidate, decoding: Decoding) -> float:
    engine = problem.engine
    longest = problem.workload.max_request_tokens + decoding.width
    return memory_use(problem.hardware, candidate.model, candidate.tp, longest, block_size=engine.block_size_tokens,
                      gpu_memory_utilization=engine.gpu_memory_utilization,
                      activation_reserve_bytes=engine.activation_reserve_gib * GIB,
                      proposer=decoding.proposer_model,
                      proposer_weight_bytes=proposer_weight_bytes(decoding, candidate.model)) - 1.0


def sharding_error(candidate: Candidate, decoding: Decoding) -> str | None:
    """Why ``tp`` / expert parallelism cannot split the candidate (or its proposer), if it cannot."""
    for model in (candidate.model, decoding.proposer_model):
        if model is None:
            continue
        try:
            decompose(model, ForwardShape(ForwardShape.uniform(1, 1, 0).groups, candidate.tp, candidate.ep))
        except ConfigError as error:
            return str(error)
    return None


# ----------------------------------------------------------------------------------------------------
# What a simulation is scored on
# ----------------------------------------------------------------------------------------------------


def capacity(result: SimResult) -> float:
    """Output tokens (committed by decode rows, and first tokens sampled by prefills) per second over
    the forwards that start while a request still waits for its first token: the engine is saturated
    there, so this is what it can serve, not what it was offered. The drain at the end (the last
    requests finishing at a shrinking batch) is left out."""
    fwd = result.forwards
    if not len(fwd["start_s"]):
        return 0.0
    first = result.requests["first_token_s"]
    waiting_until = float(np.nanmax(first)) if np.isfinite(first).any() else float(fwd["start_s"][-1])
    window = fwd["start_s"] < waiting_until
    if not window.any():
        window = np.ones(len(fwd["start_s"]), dtype=bool)
    busy_s = float(fwd["duration_s"][window].sum())
    tokens = fwd["committed_tokens"][window].sum() + fwd["emitted_tokens"][window].sum()
    return float(tokens) / busy_s if busy_s > 0 else 0.0


def near_free_ratio(result: SimResult) -> float:
    """Decode-step time (the verification forward plus what the proposals cost: the proposer's forwards,
    its catch-up included, or the host time of free proposals) over the time of the same forwards at one
    position per row, summed over the pure decode steps the run made (at their own batch, width and
    context). Steps that also prefill are left out: a prompt chunk would dilute the ratio. 1.0 for
    autoregressive decoding."""
    fwd = result.forwards
    steps = (fwd["num_decode"] > 0) & (fwd["num_chunks"] == 0)
    if not steps.any():
        steps = fwd["num_decode"] > 0
    one = float(fwd["one_position_s"][steps].sum())
    return float(fwd["duration_s"][steps].sum()) / one if one > 0 else 1.0


# ----------------------------------------------------------------------------------------------------
# One evaluation
# ----------------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    objectives: tuple[float, ...]
    constraints: dict[str, float]  # only those checked
    attrs: dict[str, Any]


def evaluate(problem: Problem, latency, candidate: Candidate) -> Evaluation:
    """Score one candidate (pure: no Optuna here, so the reference model and tests call it directly)."""
    model = candidate.model
    total, active = model.param_counts()
    decoding = decoding_for(problem, candidate.method, candidate.method_size, model)
    constraints = problem.budget.violations(total, active)
    attrs: dict[str, Any] = {"total_params": total, "active_params": active, "positions": decoding.width,
                             "decoding": decoding.describe(), "model": dataclasses.asdict(model),
                             "serving": candidate.serving()}
    worst = tuple(WORST[d] for d in problem.directions)
    reason = sharding_error(candidate, decoding)
    if reason:
        constraints["sharding"] = 1.0
        return Evaluation(worst, constraints, attrs | {"skipped": "sharding", "reason": reason})
    constraints["memory"] = memory_violation(problem, candidate, decoding)
    if max(constraints.values()) > 0:
        return Evaluation(worst, constraints, attrs | {"skipped": "budget"})
    engine = engine_for(problem, candidate, decoding)
    try:
        plan_memory(problem.hardware, model, decoding, engine, problem.workload)
    except ConfigError as error:  # the token budget or the model's window: not a memory-fit question
        constraints["engine"] = 1.0
        return Evaluation(worst, constraints, attrs | {"skipped": "engine", "reason": str(error)})
    result = simulate(Specs(problem.hardware, model, problem.kernels), latency_for(latency, candidate),
                      problem.workload, decoding, engine, problem.workload_seed, slo=problem.slo)
    ratio = near_free_ratio(result)
    constraints["near_free"] = ratio - (1.0 + problem.budget.eps)
    summary = result.summary
    tpot = (summary.get("tpot_s") or {}).get("p99")
    values = {"throughput_tokens_per_s_per_gpu": capacity(result) / candidate.tp,
              "tpot_p99_s": tpot if tpot is not None and math.isfinite(tpot) else WORST["minimize"]}
    attrs.update(summary={k: summary[k] for k in ("num_finished", "throughput_tokens_per_s", "tokens_per_forward_mean",
                                                  "batch_size_mean", "sim_time_s", "num_forwards") if k in summary},
                 near_free_ratio=ratio, ttft_p99_s=(summary.get("ttft_s") or {}).get("p99"))
    return Evaluation(tuple(values[n] for n in problem.objective_names), constraints, attrs)


class SurplusTrial(Exception):
    """Raised for a trial that would take the study past its ``n_trials`` (workers racing for the last)."""


class Objective:
    """The Optuna objective: claim a slot, sample a candidate, evaluate it, record what was checked."""

    def __init__(self, problem: Problem, latency, n_trials: int, worker: int = 0):
        self.problem, self.n_trials, self.worker = problem, n_trials, worker
        # forward times kept across the study's trials (every trial prices forwards on the same hardware and
        # kernels; trials that sample the same shape run many of the same forwards); scores do not change
        self.latency = RememberedForwardTimes(latency, None)

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...] | float:
        if not has_slot(trial.study, trial.number, self.n_trials):
            trial.set_user_attr("role", "surplus")
            raise SurplusTrial(f"trial {trial.number}: the study already has {self.n_trials} trials")
        trial.set_user_attr("worker", self.worker)
        candidate = sample(trial, self.problem.space, self.problem.template, self.problem.budget)
        result = evaluate(self.problem, self.latency, candidate)
        for name, value in result.constraints.items():
            trial.set_constraint(name, float(value))
        for key, value in result.attrs.items():
            trial.set_user_attr(key, value)
        return result.objectives if len(result.objectives) > 1 else result.objectives[0]


FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def has_slot(study: optuna.Study, number: int, n_trials: int) -> bool:
    """Whether trial ``number`` is among the first ``n_trials - finished`` running trials, in the order
    they started: workers that start trials at the same moment agree on which of them proceed."""
    trials = study.get_trials(deepcopy=False)
    finished = sum(t.state in FINISHED for t in trials)
    running = sorted((t for t in trials if t.state == optuna.trial.TrialState.RUNNING),
                     key=lambda t: (t.datetime_start, t.number))
    order = [t.number for t in running]
    return number in order and order.index(number) < n_trials - finished
