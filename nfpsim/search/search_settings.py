"""Validated settings of a co-design search, from ``conf/search.yaml`` and a ``conf/search/`` preset.

This is the config layer of the search: it resolves named configs (models, ``conf/decoding``) into
typed specs, so the objective never reads a config file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from nfpsim.config import ConfigReader, HardwareSpec, KernelPreset, ModelSpec, load_group, load_model
from nfpsim.errors import ConfigError
from nfpsim.latency import LATENCY_KINDS
from nfpsim.search.objective import OBJECTIVES, Problem, decoding_for, memory_violation, sharding_error
from nfpsim.search.space import Budget, Candidate, Space, params_of, sample
from nfpsim.sim.metrics import Slo
from nfpsim.sim.simulate_settings import engine_from_config
from nfpsim.sim.workload import WorkloadSpec

SAMPLERS = ("tpe", "nsga2", "random")


@dataclass(frozen=True)
class SearchSettings:
    preset: str
    problem: Problem
    baseline: Candidate
    baseline_params: dict[str, Any]
    latency: str
    n_trials: int  # finished trials the study should hold (every worker stops there)
    seed: int
    worker: int
    sampler: str
    study_name: str
    storage: str | None
    heartbeat_s: int  # a running trial whose worker is silent for 2x this is failed and re-run
    plot: bool

    @classmethod
    def from_config(cls, cfg: Any) -> SearchSettings:
        root = ConfigReader(cfg, "")
        r = root.section("search")
        hardware = HardwareSpec.from_config(root.raw("hardware"), "hardware")
        space = Space.from_config(r.raw("space"), "search.space")
        if "fp8" in space.weight_dtype:
            hardware.peak_flop_per_s("fp8")  # a ConfigError on a GPU without fp8
        template = _named_model(r, "template")
        budget = _budget(r.section("budget"))
        objective = r.str("objective", choices=tuple(OBJECTIVES), default="throughput")
        engine = engine_from_config(r.raw("engine"), "search.engine")
        workload = WorkloadSpec.from_config(r.raw("workload"), "search.workload")
        _check_saturating(workload, space)
        problem = Problem(
            hardware=hardware, kernels=KernelPreset.from_config(root.raw("kernels"), "kernels"), template=template,
            space=space, budget=budget, objective=objective,
            decoding_configs=decoding_configs(dict(r.raw("decoding", {}) or {}), space.methods),
            workload=workload, workload_seed=root.int("seed", low=0), engine=engine, slo=_slo(r),
        )
        baseline = _baseline(r.section("baseline"), template, space)
        _check_budget_reachable(space, template, budget)
        for method in space.methods:  # every size the space allows must make a valid policy
            for size in (space.method_size.low, space.method_size.high):
                decoding_for(problem, method, size, template)
        _check_baseline_runs(problem, baseline)
        sampler = r.str("sampler", choices=SAMPLERS, default="tpe" if objective == "throughput" else "nsga2")
        preset = r.str("name")
        return cls(
            preset=preset, problem=problem, baseline=baseline, baseline_params=params_of(baseline, space, budget),
            latency=root.str("latency", choices=LATENCY_KINDS, default="auto"),
            n_trials=r.int("n_trials", low=1, high=100_000), seed=root.int("seed", low=0),
            worker=r.int("worker", low=0, default=0), sampler=sampler,
            study_name=r.str("study_name", default=preset), storage=r.raw("storage", None),
            heartbeat_s=r.int("heartbeat_s", low=1, high=3600, default=10),
            plot=root.bool("plot", default=True),
        )


def decoding_configs(given: dict[str, Any], methods: tuple[str, ...]) -> dict[str, dict]:
    """The decoding mapping of each searched method: ``given[method]`` names a ``conf/decoding`` config
    or is a mapping written inline; a method not given uses the config of its own name."""
    configs = {}
    for method in methods:
        if method == "ar":
            configs[method] = {"method": "ar"}
            continue
        entry = given.get(method, method)
        data = dict(entry) if isinstance(entry, Mapping) else load_group("decoding", str(entry))
        if data.get("method") != method:
            raise ConfigError(f"search.decoding.{method}: that config is method={data.get('method')}, not {method}")
        configs[method] = data
    return configs


def _budget(b: ConfigReader) -> Budget:
    return Budget(total_params=_billions(b, "total_params_b"), active_params=_billions(b, "active_params_b"),
                  tolerance=b.float("tolerance", low=0, high=1, default=0.15),
                  eps=b.float("eps", low=0, high=10, low_open=True, default=0.1))


def _baseline(base: ConfigReader, template: ModelSpec, space: Space) -> Candidate:
    model = _named_model(base, "model")
    model = dataclasses.replace(model, vocab_size=template.vocab_size, max_context=template.max_context,
                                attention_mask=template.attention_mask, tie_embeddings=template.tie_embeddings,
                                dtype=base.str("weight_dtype", choices=space.weight_dtype, default=template.dtype))
    return Candidate(model, base.str("method", choices=space.methods), base.int("method_size", low=1, default=1),
                     base.int("max_num_seqs", low=1), base.int("tp", low=1, default=1),
                     base.bool("expert_parallel", default=False))


def _check_baseline_runs(problem: Problem, baseline: Candidate) -> None:
    """The reference model must split over its tp: a bad search.baseline.tp is exit 2 before a study."""
    decoding = decoding_for(problem, baseline.method, baseline.method_size, baseline.model)
    reason = sharding_error(baseline, decoding)
    if reason:
        raise ConfigError(f"search.baseline.tp={baseline.tp}: {reason}")
    if memory_violation(problem, baseline, decoding) > 0:
        raise ConfigError(f"search.baseline: {baseline.model.name} does not fit {problem.hardware.name} at "
                          f"tp={baseline.tp}; raise search.baseline.tp")


def _check_saturating(workload: WorkloadSpec, space: Space) -> None:
    """Capacity needs a queue: a closed loop with more clients than the largest batch, all at once."""
    need = max(space.max_num_seqs)
    if workload.arrival != "closed" or workload.num_clients <= need or workload.think_time_s:
        raise ConfigError(f"search.workload: the objective is capacity, so it must saturate every candidate: "
                          f"arrival=closed, think_time_s=0 and num_clients > {need} (the largest max_num_seqs)")
    if workload.num_requests < 2 * workload.num_clients:
        raise ConfigError(f"search.workload.num_requests={workload.num_requests}: at least 2 x num_clients "
                          f"({2 * workload.num_clients}) so that requests wait for most of the run")


def _named_model(r: ConfigReader, key: str) -> ModelSpec:
    name = r.str(key)
    try:
        return load_model(name)
    except ConfigError:
        from nfpsim.config import available

        raise ConfigError(f"{r.key(key)}={name}: unknown model; allowed: {', '.join(available('model'))}") from None


def _billions(r: ConfigReader, key: str) -> float | None:
    value = r.float(key, low=0, low_open=True, default=None)
    return None if value is None else value * 1e9


def _slo(r: ConfigReader) -> Slo:
    s = r.section("slo")
    return Slo(ttft_s=s.float("ttft_s", low=0, low_open=True), tpot_s=s.float("tpot_s", low=0, low_open=True))


def _extreme(space: Space, template: ModelSpec, family: str, pick) -> ModelSpec:
    """The smallest (``pick=min``) or largest (``max``) model of a family, sampled from the corner of the
    space: every parameter count grows with every space dimension, so the corners bound the budgets."""
    params = {
        "family": family, "num_kv_heads": pick(space.num_kv_heads), "gqa_group": pick(space.gqa_group),
        "head_dim": pick(space.head_dim), "hidden_per_head": pick(space.hidden_per_head),
        "num_layers": pick((space.num_layers.low, space.num_layers.high)),
        "num_experts": pick((space.num_experts.low, space.num_experts.high)), "top_k": pick(space.top_k),
        "expert_ffn_size": pick((space.expert_ffn_size.low, space.expert_ffn_size.high)),
        "num_shared_experts": pick(space.num_shared_experts),
        "ffn_multiple": pick((space.ffn_multiple.low, space.ffn_multiple.high)),
        "weight_dtype": space.weight_dtype[0], "method": "ar", "max_num_seqs": space.max_num_seqs[0],
        "tp": space.tp[0], "expert_parallel": space.expert_parallel[0],
    }
    return sample(optuna.trial.FixedTrial(params), dataclasses.replace(space, methods=("ar",)), template).model


def _check_budget_reachable(space: Space, template: ModelSpec, budget: Budget) -> None:
    """An unreachable budget is a config error, found before any trial runs."""
    for which, index, target in (("total", 0, budget.total_params), ("active", 1, budget.active_params)):
        if target is None:
            continue
        low = min(_extreme(space, template, f, min).param_counts()[index] for f in space.families)
        high = max(_extreme(space, template, f, max).param_counts()[index] for f in space.families)
        floor = (1 - budget.tolerance) * target
        if low > target or high < floor:
            raise ConfigError(
                f"search.budget.{which}_params_b={target / 1e9:g}: unreachable; the space spans "
                f"{low / 1e9:.2f}B to {high / 1e9:.2f}B {which} parameters and the budget asks for "
                f"{floor / 1e9:.2f}B to {target / 1e9:.2f}B")
