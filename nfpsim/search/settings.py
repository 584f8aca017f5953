"""Validated settings of a co-design search, from ``conf/search.yaml`` and a ``conf/search/`` preset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import optuna

from nfpsim.config import ConfigReader, HardwareSpec, KernelPreset, ModelSpec, load_model
from nfpsim.errors import ConfigError
from nfpsim.latency import LATENCY_KINDS
from nfpsim.search.objective import OBJECTIVES, Budget, Problem, decoding_configs, decoding_for
from nfpsim.search.space import Candidate, Space, params_of, sample
from nfpsim.sim.metrics import Slo
from nfpsim.sim.settings import engine_from_config
from nfpsim.sim.workload import WorkloadSpec

SAMPLERS = ("tpe", "nsga2", "random")


@dataclass(frozen=True)
class SearchSettings:
    preset: str
    problem: Problem
    baseline: Candidate
    baseline_params: dict[str, Any]
    latency: str
    n_trials: int
    seed: int
    worker: int
    sampler: str
    study_name: str
    storage: str | None
    plot: bool

    @classmethod
    def from_config(cls, cfg: Any) -> SearchSettings:
        root = ConfigReader(cfg, "")
        r = root.section("search")
        hardware = HardwareSpec.from_config(root.raw("hardware"), "hardware")
        kernels = KernelPreset.from_config(root.raw("kernels"), "kernels")
        space = Space.from_config(r.raw("space"), "search.space")
        template = _named_model(r, "template")
        b = r.section("budget")
        budget = Budget(
            total_params=_billions(b, "total_params_b"), active_params=_billions(b, "active_params_b"),
            tolerance=b.float("tolerance", low=0, high=1, default=0.15),
            eps=b.float("eps", low=0, high=10, low_open=True, default=0.1),
        )
        objective = r.str("objective", choices=tuple(OBJECTIVES), default="throughput")
        given = r.raw("decoding", {}) or {}
        engine = engine_from_config(r.raw("engine"), "search.engine")
        tp = r.int("tp", low=1, high=64, default=1)
        problem = Problem(
            hardware=hardware, kernels=kernels, template=template, space=space, budget=budget, objective=objective,
            decoding_configs=decoding_configs({str(k): v for k, v in dict(given).items()}, space.methods),
            workload=WorkloadSpec.from_config(r.raw("workload"), "search.workload"),
            engine=dataclasses.replace(engine, tp=tp), slo=_slo(r), tp=tp,
            prune=r.bool("prune", default=True),
        )
        base = r.section("baseline")
        baseline_model = _named_model(base, "model")
        baseline = Candidate(
            dataclasses.replace(baseline_model, vocab_size=template.vocab_size, max_context=template.max_context,
                                dtype=template.dtype, attention_mask=template.attention_mask,
                                tie_embeddings=template.tie_embeddings),
            base.str("method", choices=space.methods), base.int("width", low=1, default=1),
            base.int("max_num_seqs", low=1))
        _check_budget_reachable(space, template, budget)
        for method in space.methods:  # every width the space allows must make a valid policy
            for width in (space.width.low, space.width.high):
                decoding_for(problem, method, width, template)
        sampler = r.str("sampler", choices=SAMPLERS, default="tpe" if objective == "throughput" else "nsga2")
        preset = r.str("name")
        return cls(
            preset=preset, problem=problem, baseline=baseline,
            baseline_params=params_of(baseline.model, baseline.method, baseline.width, baseline.max_num_seqs, space,
                                      budget.targets()),
            latency=root.str("latency", choices=LATENCY_KINDS, default="auto"),
            n_trials=r.int("n_trials", low=1, high=100_000), seed=root.int("seed", low=0),
            worker=r.int("worker", low=0, default=0), sampler=sampler,
            study_name=r.str("study_name", default=preset), storage=r.raw("storage", None),
            plot=root.bool("plot", default=True),
        )


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
        "num_experts": pick(space.num_experts), "top_k": pick(space.top_k),
        "expert_ffn_size": pick((space.expert_ffn_size.low, space.expert_ffn_size.high)),
        "num_shared_experts": pick(space.num_shared_experts),
        "ffn_multiple": pick((space.ffn_multiple.low, space.ffn_multiple.high)),
        "method": "ar", "max_num_seqs": space.max_num_seqs[0],
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
