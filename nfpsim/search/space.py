"""The co-design search space: model shape, expert layout, deployment and decoding, sampled per trial.

Every sampled shape is valid by construction: attention is parametrized by KV heads, query heads per
KV head (GQA group), head width and hidden width per head, so ``num_heads`` divides ``hidden_size`` and
``num_kv_heads`` divides ``num_heads`` without rejection. Expert parameters are sampled only for MoE
trials (define-by-run conditionals), the method's size only for its method.

Under parameter budgets the budget-bound sizes are derived instead of sampled, so that a sampled shape
meets its budgets by construction. A trial samples how full it makes each budget (``fill_active`` /
``fill_total`` in ``[1 - tolerance, 1]``); then (see :func:`derive_budget_sizes`)

- dense: the FFN width follows from the total budget;
- MoE with both budgets: the expert FFN width follows from the active budget and the expert count
  from the total budget (total minus active is the idle experts' share);
- MoE with one budget: the expert FFN width follows from it and the expert count is sampled.

Deployment dimensions: tensor-parallel degree ``tp``, expert parallelism (an MoE layer's experts
spread whole over the ``tp`` ranks instead of each split ``tp`` ways) and the weight dtype.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from nfpsim.config import DTYPE_BYTES, ConfigReader, ModelSpec
from nfpsim.errors import ConfigError

FAMILIES = ("dense", "moe")
METHODS = ("ar", "speculative", "diffusion", "jacobi")
# The key of each parallel method's size in its conf/decoding mapping. Not the positions per forward:
# speculative k proposals run k + 1 positions (``Decoding.width``); a block or Jacobi width runs itself.
METHOD_SIZE_KEY = {"speculative": "k", "diffusion": "block_size", "jacobi": "width"}


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1

    def values(self) -> range:
        return range(self.low, self.high + 1, self.step)

    def contains(self, value: int) -> bool:
        return self.low <= value <= self.high and (value - self.low) % self.step == 0


@dataclass(frozen=True)
class Space:
    families: tuple[str, ...]
    num_layers: IntRange
    num_kv_heads: tuple[int, ...]
    gqa_group: tuple[int, ...]
    head_dim: tuple[int, ...]
    hidden_per_head: tuple[int, ...]  # hidden_size = num_heads * hidden_per_head
    ffn_multiple: IntRange  # dense FFN size in units of ffn_unit (sampled when no budget binds it)
    num_experts: IntRange  # sampled, or derived from the total budget in its steps
    top_k: tuple[int, ...]
    expert_ffn_size: IntRange
    num_shared_experts: tuple[int, ...]
    methods: tuple[str, ...]
    method_size: IntRange  # speculative k, diffusion block_size, Jacobi width (METHOD_SIZE_KEY)
    max_num_seqs: tuple[int, ...]
    tp: tuple[int, ...] = (1,)
    expert_parallel: tuple[bool, ...] = (False,)
    weight_dtype: tuple[str, ...] = ("bf16",)
    ffn_unit: int = 256

    @classmethod
    def from_config(cls, data: Any, prefix: str = "search.space") -> Space:
        r = ConfigReader(data, prefix)
        space = cls(
            families=_choices(r, "families", str, FAMILIES),
            num_layers=_range(r, "num_layers"),
            num_kv_heads=_choices(r, "num_kv_heads", int),
            gqa_group=_choices(r, "gqa_group", int),
            head_dim=_choices(r, "head_dim", int),
            hidden_per_head=_choices(r, "hidden_per_head", int),
            ffn_multiple=_range(r, "ffn_multiple"),
            num_experts=_range(r, "num_experts"),
            top_k=_choices(r, "top_k", int),
            expert_ffn_size=_range(r, "expert_ffn_size"),
            num_shared_experts=_choices(r, "num_shared_experts", int, low=0),
            methods=_choices(r, "methods", str, METHODS),
            method_size=_range(r, "method_size"),
            max_num_seqs=_choices(r, "max_num_seqs", int),
            tp=_choices(r, "tp", int, default=[1]),
            expert_parallel=_choices(r, "expert_parallel", bool, default=[False]),
            weight_dtype=_choices(r, "weight_dtype", str, tuple(DTYPE_BYTES), default=["bf16"]),
            ffn_unit=r.int("ffn_unit", low=1, default=256),
        )
        if "moe" in space.families and max(space.top_k) > space.num_experts.low:
            raise ConfigError(f"{prefix}: top_k up to {max(space.top_k)} contradicts num_experts down to "
                              f"{space.num_experts.low}: every MoE trial needs top_k <= num_experts")
        return space


def _choices(r: ConfigReader, key: str, kind: type, allowed: tuple | None = None, low: int = 1,
             default: Any = None) -> tuple:
    values = r.raw(key, default) if default is not None else r.raw(key)
    if isinstance(values, (str, int)):
        values = [values]
    values = list(values)
    if not values:
        raise ConfigError(f"{r.key(key)}: empty; the search needs at least one choice")
    for value in values:
        if kind is bool and not isinstance(value, bool):
            raise ConfigError(f"{r.key(key)}={values}: every choice must be true or false")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ConfigError(f"{r.key(key)}={values}: every choice must be an integer >= {low}")
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{r.key(key)}={values}: {value!r} is not one of {', '.join(allowed)}")
    return tuple(dict.fromkeys(values))


def _range(r: ConfigReader, key: str) -> IntRange:
    sub = r.section(key)
    low, high = sub.int("low", low=1), sub.int("high", low=1)
    if high < low:
        raise ConfigError(f"{r.key(key)}: empty range, high={high} < low={low}")
    return IntRange(low, high, sub.int("step", low=1, default=1))


# ----------------------------------------------------------------------------------------------------
# Budgets and the sizes derived from them
# ----------------------------------------------------------------------------------------------------

TOTAL, ACTIVE = 0, 1  # indices into ModelSpec.param_counts()


@dataclass(frozen=True)
class Budget:
    total_params: float | None
    active_params: float | None
    tolerance: float  # feasible parameters lie in [(1 - tolerance) * budget, budget]
    eps: float  # near-free budget: a decode step may take (1 + eps) x the one-position forward

    def fills(self, family: str) -> dict[str, int]:
        """The budget fills a trial of ``family`` samples: name -> index into ``param_counts()``. A
        dense model has no idle parameters, so its one derived width answers the total budget (or
        the active one when only that is given)."""
        if family == "dense":
            return {"fill_total": TOTAL} if (self.total_params or self.active_params) else {}
        out = {}
        if self.active_params:
            out["fill_active"] = ACTIVE
        if self.total_params:
            out["fill_total"] = TOTAL
        return out

    def target(self, index: int, family: str) -> float:
        if family == "dense":
            return self.total_params or self.active_params
        return self.total_params if index == TOTAL else self.active_params

    def violations(self, total: int, active: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, value, budget in (("total_params", total, self.total_params),
                                    ("active_params", active, self.active_params)):
            if budget is not None:
                out[f"{name}_over"] = value / budget - 1.0
                out[f"{name}_under"] = (1.0 - self.tolerance) - value / budget
        return out


def solve_size(model: ModelSpec, field: str, rng: IntRange, target: float, index: int,
               window: tuple[float, float] | None = None) -> int:
    """The value of ``field`` in ``rng`` (on its steps) whose parameter count comes nearest ``target``;
    when rounding to a step lands outside ``window`` (the budget's feasible counts), the neighbouring
    step inside it is taken instead.

    Every count is affine in a FFN width or an expert count, so two probes give it exactly:
    ``count(v) = count(low) + (v - low) / step * per_step``; invert and round to a step.
    """
    at_low = dataclasses.replace(model, **{field: rng.low}).param_counts()[index]
    per_step = dataclasses.replace(model, **{field: rng.low + rng.step}).param_counts()[index] - at_low
    if per_step <= 0:
        return rng.low
    top = (rng.high - rng.low) // rng.step
    steps = min(max(round((target - at_low) / per_step), 0), top)
    if window is not None:
        count = at_low + steps * per_step
        if count < window[0] and steps < top:
            steps += 1
        elif count > window[1] and steps > 0:
            steps -= 1
    return rng.low + steps * rng.step


def derive_budget_sizes(model: ModelSpec, space: Space, budget: Budget, fills: dict[str, float]) -> ModelSpec:
    """``model`` with its budget-bound sizes solved for the sampled fills (module docstring)."""
    family = "moe" if model.is_moe else "dense"
    names = budget.fills(family)
    goal = {names[name]: fill * budget.target(names[name], family) for name, fill in fills.items()}
    window = {names[name]: ((1 - budget.tolerance) * budget.target(names[name], family),
                            budget.target(names[name], family)) for name in fills}
    if not model.is_moe:
        rng = IntRange(space.ffn_multiple.low * space.ffn_unit, space.ffn_multiple.high * space.ffn_unit,
                       space.ffn_multiple.step * space.ffn_unit)
        return dataclasses.replace(model, ffn_size=solve_size(model, "ffn_size", rng, goal[TOTAL], TOTAL,
                                                              window[TOTAL]))
    width_index = ACTIVE if ACTIVE in goal else TOTAL

    def solve_width(m: ModelSpec) -> ModelSpec:
        f = solve_size(m, "expert_ffn_size", space.expert_ffn_size, goal[width_index], width_index,
                       window[width_index])
        return dataclasses.replace(m, expert_ffn_size=f)

    model = solve_width(model)
    if ACTIVE in goal and TOTAL in goal:
        # the expert count answers the total budget; the router grows with it, so re-solve the width
        experts = solve_size(model, "num_experts", space.num_experts, goal[TOTAL], TOTAL, window[TOTAL])
        model = solve_width(dataclasses.replace(model, num_experts=experts))
    return model


# ----------------------------------------------------------------------------------------------------
# Sampling (define-by-run) and the inverse for the reference model
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    model: ModelSpec  # its dtype is the sampled weight dtype
    method: str
    method_size: int  # the value of METHOD_SIZE_KEY[method]; 1 and unused for autoregressive decoding
    max_num_seqs: int
    tp: int = 1
    expert_parallel: bool = False

    @property
    def ep(self) -> int:
        """Ranks an MoE layer's experts are spread over (1: every rank holds a slice of every expert)."""
        return self.tp if self.expert_parallel and self.model.is_moe else 1

    def serving(self) -> dict[str, Any]:
        """The serving knobs (everything but the model's shape)."""
        return {"method": self.method, "method_size": self.method_size, "max_num_seqs": self.max_num_seqs,
                "tp": self.tp, "expert_parallel": self.expert_parallel, "weight_dtype": self.model.dtype}


def _suggest_range(trial, name: str, rng: IntRange) -> int:
    return trial.suggest_int(name, rng.low, rng.high, step=rng.step)


def size_param(method: str) -> str:
    """The Optuna parameter name of a method's size (``speculative_k``, ``diffusion_block_size``)."""
    return f"{method}_{METHOD_SIZE_KEY[method]}"


def sample(trial, space: Space, template: ModelSpec, budget: Budget | None = None) -> Candidate:
    """One candidate from ``trial``; fields the space does not vary come from ``template``."""
    family = trial.suggest_categorical("family", list(space.families))
    kv_heads = trial.suggest_categorical("num_kv_heads", list(space.num_kv_heads))
    group = trial.suggest_categorical("gqa_group", list(space.gqa_group))
    head_dim = trial.suggest_categorical("head_dim", list(space.head_dim))
    hidden_per_head = trial.suggest_categorical("hidden_per_head", list(space.hidden_per_head))
    layers = _suggest_range(trial, "num_layers", space.num_layers)
    heads = kv_heads * group
    fields: dict[str, Any] = dict(num_layers=layers, hidden_size=heads * hidden_per_head, num_heads=heads,
                                  num_kv_heads=kv_heads, head_dim=head_dim, v_head_dim=head_dim, kv_lora_rank=0,
                                  qk_rope_head_dim=0)
    fill_names = budget.fills(family) if budget else {}
    fills = {name: trial.suggest_float(name, 1.0 - budget.tolerance, 1.0) for name in fill_names}
    if family == "moe":
        fields.update(top_k=trial.suggest_categorical("top_k", list(space.top_k)),
                      num_shared_experts=trial.suggest_categorical("num_shared_experts",
                                                                   list(space.num_shared_experts)),
                      num_dense_layers=0, ffn_size=0, num_experts=space.num_experts.low,
                      expert_ffn_size=space.expert_ffn_size.low)
        if "fill_total" not in fills or "fill_active" not in fills:
            fields["num_experts"] = _suggest_range(trial, "num_experts", space.num_experts)
        if not fills:
            fields["expert_ffn_size"] = _suggest_range(trial, "expert_ffn_size", space.expert_ffn_size)
    else:
        fields.update(num_experts=0, top_k=0, expert_ffn_size=0, num_shared_experts=0, num_dense_layers=layers,
                      ffn_size=space.ffn_multiple.low * space.ffn_unit)
        if not fills:
            fields["ffn_size"] = _suggest_range(trial, "ffn_multiple", space.ffn_multiple) * space.ffn_unit
    dtype = trial.suggest_categorical("weight_dtype", list(space.weight_dtype))
    model = dataclasses.replace(template, name=f"trial{trial.number}_{family}_{layers}L", dtype=dtype,
                                description="co-design candidate", **fields)
    if fills:
        model = derive_budget_sizes(model, space, budget, fills)
    method = trial.suggest_categorical("method", list(space.methods))
    size = 1 if method == "ar" else _suggest_range(trial, size_param(method), space.method_size)
    max_num_seqs = trial.suggest_categorical("max_num_seqs", list(space.max_num_seqs))
    tp = trial.suggest_categorical("tp", list(space.tp))
    ep = trial.suggest_categorical("expert_parallel", list(space.expert_parallel)) if family == "moe" else False
    return Candidate(model, method, size, max_num_seqs, tp, ep)


def params_of(candidate: Candidate, space: Space, budget: Budget | None = None) -> dict[str, Any]:
    """The inverse of :func:`sample`: the trial parameters that rebuild ``candidate`` (the reference
    model, enqueued first); a ConfigError names what the space cannot express."""
    model = candidate.model
    group = model.num_heads // model.num_kv_heads
    hidden_per_head, rest = divmod(model.hidden_size, model.num_heads)
    if model.is_mla or rest:
        raise ConfigError(f"search.baseline: {model.name} cannot be expressed by the search space "
                          f"(MLA attention or hidden_size not a multiple of num_heads)")
    family = "moe" if model.is_moe else "dense"
    params: dict[str, Any] = {
        "family": family, "num_kv_heads": model.num_kv_heads, "gqa_group": group, "head_dim": model.head_dim,
        "hidden_per_head": hidden_per_head, "num_layers": model.num_layers, "weight_dtype": model.dtype,
        "method": candidate.method, "max_num_seqs": candidate.max_num_seqs, "tp": candidate.tp,
    }
    counts = model.param_counts()
    fills = budget.fills(family) if budget else {}
    for name, index in fills.items():  # the fill that reproduces the model's own count
        params[name] = counts[index] / budget.target(index, family)
        if not 1.0 - budget.tolerance <= params[name] <= 1.0:
            which = "total" if index == TOTAL else "active"
            raise ConfigError(f"search.baseline: {model.name} fills {params[name]:.3f} of the {which} budget, "
                              f"outside [{1 - budget.tolerance:.3f}, 1]; adjust search.budget")
    if model.is_moe:
        params.update(top_k=model.top_k, num_shared_experts=model.num_shared_experts,
                      expert_parallel=candidate.expert_parallel)
        if len(fills) < 2:
            params["num_experts"] = model.num_experts
        if not fills:
            params["expert_ffn_size"] = model.expert_ffn_size
    elif not fills:
        multiple, rest = divmod(model.ffn_size, space.ffn_unit)
        params["ffn_multiple"] = multiple if not rest else math.nan
    if candidate.method != "ar":
        params[size_param(candidate.method)] = candidate.method_size
    _check_in_space(params, space, model.name)
    return params


def _check_in_space(params: dict[str, Any], space: Space, name: str) -> None:
    ranges = {"num_layers": space.num_layers, "ffn_multiple": space.ffn_multiple, "num_experts": space.num_experts,
              "expert_ffn_size": space.expert_ffn_size, **{size_param(m): space.method_size for m in METHOD_SIZE_KEY}}
    choices = {"family": space.families, "num_kv_heads": space.num_kv_heads, "gqa_group": space.gqa_group,
               "head_dim": space.head_dim, "hidden_per_head": space.hidden_per_head, "top_k": space.top_k,
               "num_shared_experts": space.num_shared_experts, "method": space.methods,
               "max_num_seqs": space.max_num_seqs, "tp": space.tp, "expert_parallel": space.expert_parallel,
               "weight_dtype": space.weight_dtype}
    for key, value in params.items():
        if key.startswith("fill_"):
            continue
        ok = ranges[key].contains(value) if key in ranges else value in choices[key]
        if not ok:
            allowed = ranges[key] if key in ranges else list(choices[key])
            raise ConfigError(f"search.baseline: {name} has {key}={value}, outside the search space ({allowed}); "
                              f"widen search.space or pick another baseline")
