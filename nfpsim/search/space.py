"""The co-design search space: model shape, expert layout, decoding and batch limits, sampled per trial.

Every sampled shape is valid by construction: attention is parametrized by KV heads, query heads per
KV head (GQA group), head width and hidden width per head, so ``num_heads`` divides ``hidden_size`` and
``num_kv_heads`` divides ``num_heads`` without rejection. Expert parameters are sampled only for MoE
trials (define-by-run conditionals), decoding parameters only for their method.

Under a parameter budget the budget-bound width is derived instead of sampled: a trial samples how
full it makes the budget (``budget_fill`` in ``[1 - tolerance, 1]``) and the expert FFN width (MoE:
against the active budget, else the total) or the FFN width (dense: against the total) follows, rounded
to ``ffn_unit``. Every candidate then spends its budget, the quality proxy holds by construction for
that count, and the trials explore how to spend it (depth, width, experts, top-k, decoding).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from nfpsim.config import ConfigReader, ModelSpec
from nfpsim.errors import ConfigError

FAMILIES = ("dense", "moe")
METHODS = ("ar", "speculative", "diffusion", "jacobi")


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
    num_experts: tuple[int, ...]
    top_k: tuple[int, ...]
    expert_ffn_size: IntRange
    num_shared_experts: tuple[int, ...]
    methods: tuple[str, ...]
    width: IntRange  # speculative k, diffusion block, Jacobi width
    max_num_seqs: tuple[int, ...]
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
            num_experts=_choices(r, "num_experts", int),
            top_k=_choices(r, "top_k", int),
            expert_ffn_size=_range(r, "expert_ffn_size"),
            num_shared_experts=_choices(r, "num_shared_experts", int, low=0),
            methods=_choices(r, "methods", str, METHODS),
            width=_range(r, "width"),
            max_num_seqs=_choices(r, "max_num_seqs", int),
            ffn_unit=r.int("ffn_unit", low=1, default=256),
        )
        if "moe" in space.families and max(space.top_k) > min(space.num_experts):
            raise ConfigError(f"{prefix}: top_k up to {max(space.top_k)} contradicts num_experts down to "
                              f"{min(space.num_experts)}: every MoE trial needs top_k <= num_experts")
        return space


def _choices(r: ConfigReader, key: str, kind: type, allowed: tuple | None = None, low: int = 1) -> tuple:
    values = r.raw(key)
    if isinstance(values, (str, int)) and not isinstance(values, bool):
        values = [values]
    values = list(values)
    if not values:
        raise ConfigError(f"{r.key(key)}: empty; the search needs at least one choice")
    for value in values:
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
# Sampling (define-by-run) and the inverse for the baseline
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    model: ModelSpec
    method: str
    width: int
    max_num_seqs: int


def _suggest_range(trial, name: str, rng: IntRange) -> int:
    return trial.suggest_int(name, rng.low, rng.high, step=rng.step)


@dataclass(frozen=True)
class BudgetTarget:
    """The parameter count a derived width is solved for: ``active`` (index 1) or ``total`` (index 0)."""

    params: float
    index: int
    tolerance: float


def _solve_width(model: ModelSpec, field: str, unit: int, low: int, high: int, target: float,
                 index: int) -> int:
    """The multiple of ``unit`` for ``field`` in ``[low, high]`` whose parameter count is nearest
    ``target`` (counts are linear in a FFN width)."""
    a = dataclasses.replace(model, **{field: unit}).param_counts()[index]
    b = dataclasses.replace(model, **{field: 2 * unit}).param_counts()[index]
    slope = b - a
    width = round(((target - a) / slope + 1)) * unit if slope > 0 else low
    return int(min(max(width, low), high))


def sample(trial, space: Space, template: ModelSpec, targets: dict[str, BudgetTarget] | None = None) -> Candidate:
    """One candidate from ``trial``; fields the space does not vary come from ``template``. ``targets``
    maps ``"moe"`` / ``"dense"`` to the budget its FFN width is derived from (absent: sampled)."""
    targets = targets or {}
    family = trial.suggest_categorical("family", list(space.families))
    kv_heads = trial.suggest_categorical("num_kv_heads", list(space.num_kv_heads))
    group = trial.suggest_categorical("gqa_group", list(space.gqa_group))
    head_dim = trial.suggest_categorical("head_dim", list(space.head_dim))
    hidden_per_head = trial.suggest_categorical("hidden_per_head", list(space.hidden_per_head))
    layers = _suggest_range(trial, "num_layers", space.num_layers)
    heads = kv_heads * group
    hidden = heads * hidden_per_head
    fields: dict[str, Any] = dict(num_layers=layers, hidden_size=hidden, num_heads=heads, num_kv_heads=kv_heads,
                                  head_dim=head_dim, v_head_dim=head_dim, kv_lora_rank=0, qk_rope_head_dim=0)
    target = targets.get(family)
    fill = trial.suggest_float("budget_fill", 1.0 - target.tolerance, 1.0) if target else None
    if family == "moe":
        experts = trial.suggest_categorical("num_experts", list(space.num_experts))
        fields.update(num_experts=experts, top_k=trial.suggest_categorical("top_k", list(space.top_k)),
                      num_shared_experts=trial.suggest_categorical("num_shared_experts",
                                                                   list(space.num_shared_experts)),
                      num_dense_layers=0, ffn_size=0)
        rng = space.expert_ffn_size
        if target:
            probe = dataclasses.replace(template, **fields, expert_ffn_size=rng.step)
            fields["expert_ffn_size"] = _solve_width(probe, "expert_ffn_size", rng.step, rng.low, rng.high,
                                                     fill * target.params, target.index)
        else:
            fields["expert_ffn_size"] = _suggest_range(trial, "expert_ffn_size", rng)
    else:
        fields.update(num_experts=0, top_k=0, expert_ffn_size=0, num_shared_experts=0, num_dense_layers=layers)
        rng, unit = space.ffn_multiple, space.ffn_unit
        if target:
            probe = dataclasses.replace(template, **fields, ffn_size=unit)
            fields["ffn_size"] = _solve_width(probe, "ffn_size", unit, rng.low * unit, rng.high * unit,
                                              fill * target.params, target.index)
        else:
            fields["ffn_size"] = _suggest_range(trial, "ffn_multiple", rng) * unit
    method = trial.suggest_categorical("method", list(space.methods))
    width = 1 if method == "ar" else _suggest_range(trial, f"width_{method}", space.width)
    max_num_seqs = trial.suggest_categorical("max_num_seqs", list(space.max_num_seqs))
    name = f"trial{trial.number}_{family}_{layers}L_{hidden}h"
    model = dataclasses.replace(template, name=name, description="co-design candidate", **fields)
    return Candidate(model, method, width, max_num_seqs)


def params_of(model: ModelSpec, method: str, width: int, max_num_seqs: int, space: Space,
              targets: dict[str, BudgetTarget] | None = None) -> dict[str, Any]:
    """The trial parameters that reproduce ``model`` (the baseline, enqueued first); a ConfigError
    names what the space cannot express."""
    targets = targets or {}
    group = model.num_heads // model.num_kv_heads
    hidden_per_head, rest = divmod(model.hidden_size, model.num_heads)
    if model.is_mla or rest:
        raise ConfigError(f"search.baseline: {model.name} cannot be expressed by the search space "
                          f"(MLA attention or hidden_size not a multiple of num_heads)")
    params: dict[str, Any] = {
        "family": "moe" if model.is_moe else "dense", "num_kv_heads": model.num_kv_heads, "gqa_group": group,
        "head_dim": model.head_dim, "hidden_per_head": hidden_per_head, "num_layers": model.num_layers,
        "method": method, "max_num_seqs": max_num_seqs,
    }
    target = targets.get(params["family"])
    if target:
        params["budget_fill"] = model.param_counts()[target.index] / target.params
        if not 1.0 - target.tolerance <= params["budget_fill"] <= 1.0:
            raise ConfigError(f"search.baseline: {model.name} fills {params['budget_fill']:.3f} of the budget, "
                              f"outside [{1 - target.tolerance:.3f}, 1]; adjust search.budget")
    if model.is_moe:
        params.update(num_experts=model.num_experts, top_k=model.top_k, num_shared_experts=model.num_shared_experts)
        if not target:
            params["expert_ffn_size"] = model.expert_ffn_size
    elif not target:
        multiple, rest = divmod(model.ffn_size, space.ffn_unit)
        params["ffn_multiple"] = multiple if not rest else math.nan
    if method != "ar":
        params[f"width_{method}"] = width
    _check_in_space(params, space, model.name)
    return params


def _check_in_space(params: dict[str, Any], space: Space, name: str) -> None:
    ranges = {"num_layers": space.num_layers, "ffn_multiple": space.ffn_multiple,
              "expert_ffn_size": space.expert_ffn_size, **{f"width_{m}": space.width for m in METHODS}}
    choices = {"family": space.families, "num_kv_heads": space.num_kv_heads, "gqa_group": space.gqa_group,
               "head_dim": space.head_dim, "hidden_per_head": space.hidden_per_head,
               "num_experts": space.num_experts, "top_k": space.top_k,
               "num_shared_experts": space.num_shared_experts, "method": space.methods,
               "max_num_seqs": space.max_num_seqs}
    for key, value in params.items():
        if key == "budget_fill":
            continue
        ok = ranges[key].contains(value) if key in ranges else value in choices[key]
        if not ok:
            allowed = ranges[key] if key in ranges else list(choices[key])
            raise ConfigError(f"search.baseline: {name} has {key}={value}, outside the search space ({allowed}); "
                              f"widen search.space or pick another baseline")
