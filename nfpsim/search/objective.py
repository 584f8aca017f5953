"""One trial of the co-design search: sample, check the budgets, pre-screen, simulate, score.

Constraints (Optuna's convention: feasible when <= 0), in the order they are checked:

- ``total_params_over`` / ``active_params_over``: parameters above the budget (relative);
- ``total_params_under`` / ``active_params_under``: parameters below ``(1 - tolerance)`` of the budget,
  the quality proxy: a search must not win by shrinking the model;
- ``memory``: weights plus the KV cache of the longest request over the usable GPU memory, minus 1;
- ``near_free``: ``t(B, M) / t(B, 1) - (1 + eps)`` at the simulated mean decode batch ``B`` and the
  positions per forward ``M`` of the chosen width (the near-free budget).

A trial that breaks a budget or memory is not simulated (its objectives are the worst possible), so
its cost is the analytic check alone. The analytic pre-screen bounds throughput from above by
``B_max * E[tokens per forward] / t(B_max, M)``; a single-objective trial whose bound is below the best
feasible result so far is pruned before it is simulated.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from nfpsim.config import HardwareSpec, KernelPreset, ModelSpec, load_group
from nfpsim.errors import ConfigError
from nfpsim.latency.base import LatencyModel
from nfpsim.search.space import BudgetTarget, Candidate, Space, sample
from nfpsim.settings import Specs
from nfpsim.shapes import ForwardShape
from nfpsim.sim.decoding import Decoding, proposer_weight_bytes
from nfpsim.sim.decoding_config import decoding_from_config
from nfpsim.sim.metrics import Slo
from nfpsim.sim.simulator import EngineSpec, plan_memory, simulate
from nfpsim.sim.workload import WorkloadSpec

GIB = 2**30
WIDTH_KEYS = {"speculative": "k", "diffusion": "block_size", "jacobi": "width"}
OBJECTIVES = {
    "throughput": (("throughput_tokens_per_s_per_gpu",), ("maximize",)),
    "throughput_tpot": (("throughput_tokens_per_s_per_gpu", "tpot_p99_s"), ("maximize", "minimize")),
}
WORST = {"maximize": 0.0, "minimize": 1e9}


@dataclass(frozen=True)
class Budget:
    total_params: float | None
    active_params: float | None
    tolerance: float  # feasible parameters lie in [(1 - tolerance) * budget, budget]
    eps: float  # near-free budget of the chosen width

    def targets(self) -> dict[str, BudgetTarget]:
        """The budget each family's FFN width is derived from (MoE: active if given; dense: total)."""
        out = {}
        moe = self.active_params or self.total_params
        if moe:
            out["moe"] = BudgetTarget(moe, 1 if self.active_params else 0, self.tolerance)
        if self.total_params or self.active_params:
            out["dense"] = BudgetTarget(self.total_params or self.active_params, 0, self.tolerance)
        return out

    def violations(self, total: int, active: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, value, budget in (("total_params", total, self.total_params),
                                    ("active_params", active, self.active_params)):
            if budget is not None:
                out[f"{name}_over"] = value / budget - 1.0
                out[f"{name}_under"] = (1.0 - self.tolerance) - value / budget
        return out


@dataclass(frozen=True)
class Problem:
    """Everything a trial needs, fixed for the whole study."""

    hardware: HardwareSpec
    kernels: KernelPreset
    template: ModelSpec  # vocabulary, window, dtype of every candidate
    space: Space
    budget: Budget
    objective: str
    decoding_configs: dict[str, dict]  # method -> conf/decoding mapping (width set per trial)
    workload: WorkloadSpec
    engine: EngineSpec
    slo: Slo
    tp: int
    prune: bool

    @property
    def directions(self) -> tuple[str, ...]:
        return OBJECTIVES[self.objective][1]

    @property
    def objective_names(self) -> tuple[str, ...]:
        return OBJECTIVES[self.objective][0]


def decoding_for(problem: Problem, method: str, width: int, model: ModelSpec) -> Decoding:
    data = dict(problem.decoding_configs[method])
    if method in WIDTH_KEYS:
        data[WIDTH_KEYS[method]] = width
    return decoding_from_config(data, model, problem.budget.eps, prefix=f"search.decoding.{method}")


def decoding_configs(given: dict[str, Any], methods: tuple[str, ...]) -> dict[str, dict]:
    """The decoding mapping of each searched method: ``given[method]`` names a ``conf/decoding`` config
    or is a mapping written inline; a method not given uses the config of its own name."""
    configs = {}
    for method in methods:
        entry = given.get(method, method)
        data = dict(entry) if isinstance(entry, Mapping) else load_group("decoding", str(entry))
        if data.get("method") != method:
            raise ConfigError(f"search.decoding.{method}: that config is method={data.get('method')}, not {method}")
        configs[method] = data
    return configs


def engine_for(problem: Problem, candidate: Candidate, decoding: Decoding) -> EngineSpec:
    """The engine limits of a candidate: its batch cap, and a token budget that holds the whole batch."""
    tokens = max(problem.engine.max_num_batched_tokens, candidate.max_num_seqs * decoding.width + 512)
    return dataclasses.replace(problem.engine, max_num_seqs=candidate.max_num_seqs, max_num_batched_tokens=tokens,
                               tp=problem.tp)


def memory_violation(problem: Problem, model: ModelSpec, decoding: Decoding) -> float:
    """(weights + proposer weights + KV of the longest request per rank) / usable memory - 1."""
    usable = (problem.hardware.memory_bytes * problem.engine.gpu_memory_utilization
              - problem.engine.activation_reserve_gib * GIB)
    weights = (model.weight_bytes() + proposer_weight_bytes(decoding, model)) / problem.tp
    kv = model.kv_bytes_per_token / problem.tp * (problem.workload.max_request_tokens + decoding.width)
    return (weights + kv) / usable - 1.0


def _typical(length) -> float:
    return length.median if length.kind == "lognormal" else (length.low + length.high) / 2


def operating_context(workload: WorkloadSpec) -> int:
    """Typical cached context of a decoding sequence: the prompt plus half the output."""
    if workload.trace is not None:
        n = workload.num_requests
        prompt = sum(workload.trace.prompt_tokens[:n]) / n
        output = sum(workload.trace.output_tokens[:n]) / n
        return int(prompt + output / 2)
    return int(_typical(workload.prompt) + _typical(workload.output) / 2)


def near_free_ratio(latency: LatencyModel, model: ModelSpec, batch: int, positions: int, context: int, tp: int) -> float:
    one = latency.forward_time(model, ForwardShape.uniform(batch, 1, context, tp))
    return latency.forward_time(model, ForwardShape.uniform(batch, positions, context, tp)) / one


@dataclass
class Evaluation:
    objectives: tuple[float, ...]
    constraints: dict[str, float]
    attrs: dict[str, Any]
    pruned: bool = False


def evaluate(problem: Problem, latency: LatencyModel, candidate: Candidate, seed: int,
             best_so_far: float | None = None) -> Evaluation:
    """Score one candidate (pure: no Optuna here, so the baseline and tests call it directly)."""
    model = candidate.model
    total, active = model.param_counts()
    decoding = decoding_for(problem, candidate.method, candidate.width, model)
    constraints = problem.budget.violations(total, active)
    constraints["memory"] = memory_violation(problem, model, decoding)
    attrs: dict[str, Any] = {"total_params": total, "active_params": active, "positions": decoding.width,
                             "decoding": decoding.describe(), "model": dataclasses.asdict(model)}
    worst = tuple(WORST[d] for d in problem.directions)
    if max(constraints.values()) > 0:
        constraints["near_free"] = 0.0  # not reached: the budgets already rule the candidate out
        attrs["skipped"] = "budget"
        return Evaluation(worst, constraints, attrs)
    context = operating_context(problem.workload)
    b_max = candidate.max_num_seqs
    bound_ratio = near_free_ratio(latency, model, b_max, decoding.width, context, problem.tp)
    t_max = latency.forward_time(model, ForwardShape.uniform(b_max, decoding.width, context, problem.tp))
    bound = b_max * decoding.expected_tokens(decoding.width) / t_max / problem.tp
    attrs.update(throughput_bound=bound, near_free_ratio_at_max_batch=bound_ratio)
    if problem.prune and best_so_far is not None and bound < best_so_far:
        attrs["skipped"] = "pre-screen"
        return Evaluation(worst, constraints | {"near_free": 0.0}, attrs, pruned=True)
    engine = engine_for(problem, candidate, decoding)
    try:
        plan_memory(problem.hardware, model, decoding, engine, problem.workload)
    except ConfigError as error:
        constraints["memory"] = max(constraints["memory"], 1e-3)
        constraints["near_free"] = 0.0
        attrs.update(skipped="memory", reason=str(error))
        return Evaluation(worst, constraints, attrs)
    result = simulate(Specs(problem.hardware, model, problem.kernels), latency, problem.workload, decoding,
                      engine, seed, slo=problem.slo)
    summary = result.summary
    batch = max(1, round(summary.get("batch_size_mean") or 1))
    ratio = near_free_ratio(latency, model, batch, decoding.width, context, problem.tp)
    constraints["near_free"] = ratio - (1.0 + problem.budget.eps)
    throughput = summary["throughput_tokens_per_s"] / problem.tp
    tpot = (summary.get("tpot_s") or {}).get("p99")
    values = {"throughput_tokens_per_s_per_gpu": throughput,
              "tpot_p99_s": tpot if tpot is not None and math.isfinite(tpot) else WORST["minimize"]}
    attrs.update(summary={k: summary[k] for k in ("num_finished", "throughput_tokens_per_s", "tokens_per_forward_mean",
                                                  "batch_size_mean", "sim_time_s", "num_forwards") if k in summary},
                 near_free_ratio=ratio, operating_batch=batch, ttft_p99_s=(summary.get("ttft_s") or {}).get("p99"))
    return Evaluation(tuple(values[n] for n in problem.objective_names), constraints, attrs)


class Objective:
    """The Optuna objective: sample a candidate, evaluate it, record constraints and attributes."""

    def __init__(self, problem: Problem, latency: LatencyModel, seed: int):
        self.problem, self.latency, self.seed = problem, latency, seed

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...] | float:
        candidate = sample(trial, self.problem.space, self.problem.template, self.problem.budget.targets())
        best = self._best_feasible(trial.study) if len(self.problem.directions) == 1 else None
        result = evaluate(self.problem, self.latency, candidate, self.seed + trial.number, best)
        for name, value in result.constraints.items():
            trial.set_constraint(name, float(value))
        for key, value in result.attrs.items():
            trial.set_user_attr(key, value)
        if result.pruned:
            raise optuna.TrialPruned(f"throughput bound {result.attrs['throughput_bound']:.0f} below the best "
                                     f"{best:.0f} tokens/s")
        return result.objectives if len(result.objectives) > 1 else result.objectives[0]

    @staticmethod
    def _best_feasible(study: optuna.Study) -> float | None:
        """The best value among feasible trials (Optuna's best_trial honours the constraints)."""
        try:
            return study.best_trial.value
        except ValueError:  # no feasible trial yet
            return None
