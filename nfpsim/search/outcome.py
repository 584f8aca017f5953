"""What a search found: the trial records, the best design, and how much it gains over the reference.

The gain is split in two, so that a better serving setup is not credited to the model's shape:

- **from serving knobs**: the reference shape served with the best design's knobs (decoding method
  and size, max_num_seqs, tp, expert parallelism, weight dtype) over the reference as given;
- **from shape**: the best design over the reference shape with those same knobs.

Their product is the gain over the reference as given. The *tuned reference* is the best feasible of the
reference shape under its own knobs, each max_num_seqs choice, and the best design's knobs; the
headline ``improvement`` is over it (None, with a reason, when no reference setup is feasible).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

import optuna

from nfpsim.search.objective import OBJECTIVE_MEASURE, evaluate
from nfpsim.search.search_settings import SearchSettings
from nfpsim.search.space import Candidate
from nfpsim.search.study import BASELINE


@dataclass
class TrialRecord:
    number: int
    state: str
    role: str | None
    params: dict[str, Any]
    objectives: dict[str, float] | None
    constraints: dict[str, float]
    attrs: dict[str, Any]

    @property
    def feasible(self) -> bool:
        """Simulated and within every constraint (a trial not simulated is never feasible)."""
        return (self.state == "COMPLETE" and "near_free" in self.constraints
                and max(self.constraints.values()) <= 0)

    @property
    def binding_constraint(self) -> str | None:
        """The constraint closest to (or furthest past) its bound."""
        return max(self.constraints, key=self.constraints.get) if self.constraints else None

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "state": self.state, "role": self.role, "params": self.params,
                "objectives": self.objectives, "constraints": self.constraints, "feasible": self.feasible,
                "binding_constraint": self.binding_constraint, **self.attrs}


def records(study: optuna.Study, names: tuple[str, ...]) -> list[TrialRecord]:
    out = []
    for t in study.get_trials(deepcopy=False):
        values = t.values if t.state == optuna.trial.TrialState.COMPLETE else None
        attrs = {k: v for k, v in t.user_attrs.items() if k != "role"}
        out.append(TrialRecord(t.number, t.state.name, t.user_attrs.get("role"), dict(t.params),
                               dict(zip(names, values)) if values else None, dict(t.constraints or {}), attrs))
    return out


def _evaluated(settings: SearchSettings, latency, candidate: Candidate, label: str) -> dict[str, Any]:
    result = evaluate(settings.problem, latency, candidate)
    record = TrialRecord(-1, "COMPLETE", label, candidate.serving(),
                         dict(zip(settings.problem.objective_names, result.objectives)), result.constraints,
                         result.attrs)
    return record.to_dict()


def reference_setups(settings: SearchSettings, best: TrialRecord | None) -> dict[str, Candidate]:
    """The reference shape under its own knobs, each max_num_seqs choice, and the best design's knobs."""
    base = settings.baseline
    setups = {"given": base}
    for seqs in settings.problem.space.max_num_seqs:
        if seqs != base.max_num_seqs:
            setups[f"max_num_seqs={seqs}"] = dataclasses.replace(base, max_num_seqs=seqs)
    if best is not None:
        knobs = best.attrs["serving"]
        model = dataclasses.replace(base.model, dtype=knobs["weight_dtype"])
        setups["best_knobs"] = Candidate(model, knobs["method"], knobs["method_size"], knobs["max_num_seqs"],
                                         knobs["tp"], knobs["expert_parallel"])
    return setups


def gains(primary: str, maximize: bool, best: dict | None, references: dict[str, dict]) -> dict[str, Any]:
    def value(r: dict | None) -> float | None:
        return r["objectives"][primary] if r and r["feasible"] and r["objectives"][primary] else None

    def ratio(a: float | None, b: float | None) -> float | None:
        if a is None or b is None:
            return None
        return a / b if maximize else b / a

    feasible = [r for r in references.values() if value(r) is not None]
    tuned = max(feasible, key=lambda r: value(r) * (1 if maximize else -1)) if feasible else None
    given, at_best_knobs = value(references.get("given")), value(references.get("best_knobs"))
    out = {"over_tuned_reference": ratio(value(best), value(tuned)),
           "tuned_reference": tuned["role"] if tuned else None,
           "from_serving_knobs": ratio(at_best_knobs, given), "from_shape": ratio(value(best), at_best_knobs),
           "over_given_reference": ratio(value(best), given)}
    if tuned is None:
        out["reason"] = "no setup of the reference model is feasible"
    elif given is None:
        out["reason"] = "the reference as given is infeasible: improvement is over its best feasible setup"
    return out


def outcome(study: optuna.Study, settings: SearchSettings, latency) -> dict[str, Any]:
    """The data of ``search.json``: baseline, best, Pareto set, gains over the reference, violations."""
    problem = settings.problem
    names, directions = problem.objective_names, problem.directions
    all_records = [r for r in records(study, names) if r.role != "surplus"]
    feasible = [r for r in all_records if r.feasible]
    by_number = {r.number: r for r in all_records}
    pareto = [by_number[t.number] for t in study.best_trials if t.number in by_number] if feasible else []
    primary, maximize = names[0], directions[0] == "maximize"
    best = max(pareto, key=lambda r: r.objectives[primary] * (1 if maximize else -1)) if pareto else None
    baseline = next((r for r in all_records if r.role == BASELINE and r.state == "COMPLETE"), None)
    references = {label: _evaluated(settings, latency, c, label)
                  for label, c in reference_setups(settings, best).items()}
    gain = gains(primary, maximize, best.to_dict() if best else None, references)
    states = [r.state for r in all_records]
    return {
        "preset": settings.preset,
        "study_name": settings.study_name,
        "storage": settings.storage or "sqlite (run dir)",
        "hardware": problem.hardware.name,
        "kernels": problem.kernels.name,
        "objectives": list(names),
        "directions": list(directions),
        "objective_measure": OBJECTIVE_MEASURE,
        "budget": asdict(problem.budget),
        "n_trials": len(all_records),
        "n_complete": states.count("COMPLETE"),
        "n_pruned": states.count("PRUNED"),
        "n_failed": states.count("FAIL"),
        "n_simulated": sum("near_free" in r.constraints for r in all_records),
        "n_feasible": len(feasible),
        "baseline": baseline.to_dict() if baseline else None,
        "best": best.to_dict() if best else None,
        "pareto": [r.to_dict() for r in pareto],
        "references": references,
        "improvement": gain["over_tuned_reference"],
        "gains": gain,
        "violations": sum(not r.feasible for r in pareto),
        "trials": [r.to_dict() for r in all_records],
    }
