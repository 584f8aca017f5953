"""The Optuna study: storage, sampler, the enqueued baseline, the run, and what came out of it.

The study lives in any Optuna RDB storage (SQLite in the run dir by default; PostgreSQL for workers on
many machines, each running ``nfpsim-search`` with the same ``search.storage`` and
``search.study_name``). Opening checks the study was made for the same objectives and search space,
so a mismatched resume fails before a trial is added instead of mixing incompatible trials.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna

from nfpsim.errors import ConfigError
from nfpsim.latency import make_latency_model
from nfpsim.search.objective import Objective
from nfpsim.search.settings import SearchSettings

BASELINE = "baseline"


def space_fingerprint(settings: SearchSettings) -> str:
    problem = settings.problem
    data = {"space": asdict(problem.space), "objective": problem.objective, "template": problem.template.name,
            "hardware": problem.hardware.name, "kernels": problem.kernels.name}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def default_storage(run_dir: Path) -> str:
    return f"sqlite:///{Path(run_dir).resolve() / 'study.db'}"


def make_sampler(settings: SearchSettings) -> optuna.samplers.BaseSampler:
    seed = settings.seed + settings.worker  # workers sharing a study must not propose the same points
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if settings.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    with warnings.catch_warnings():  # multivariate/group TPE are marked experimental; they are well used
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=8)


def _connect(storage_url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """Open an RDB storage. Workers starting together on an empty database race to create its schema;
    the loser sees a duplicate-object error and simply retries once the winner is done."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(storage_url, engine_kwargs={"pool_pre_ping": True})
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 + random.random() * 0.5)
        except Exception as error:  # SQLAlchemy and DB drivers raise many kinds; the user needs one line
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(f"search.storage={storage_url!r}: cannot open it ({reason})") from None
    raise AssertionError("unreachable")


def open_study(settings: SearchSettings, storage_url: str) -> optuna.Study:
    """Create or resume the study; a bad URL or an incompatible existing study is a ConfigError."""
    storage = _connect(storage_url)
    fingerprint = space_fingerprint(settings)
    directions = list(settings.problem.directions)
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if settings.study_name in existing:
        study = optuna.load_study(study_name=settings.study_name, storage=storage, sampler=make_sampler(settings))
        found = [d.name.lower() for d in study.directions]
        if found != directions or study.user_attrs.get("space") != fingerprint:
            raise ConfigError(
                f"search.study_name={settings.study_name}: the study in {storage_url} was made for another "
                f"search (objectives {found}, space {study.user_attrs.get('space')}); it is left untouched — "
                f"use a new search.study_name")
        return study
    try:
        study = optuna.create_study(study_name=settings.study_name, storage=storage, directions=directions,
                                    sampler=make_sampler(settings), load_if_exists=True)
    except optuna.exceptions.DuplicatedStudyError:  # another worker created it meanwhile
        study = optuna.load_study(study_name=settings.study_name, storage=storage, sampler=make_sampler(settings))
    study.set_user_attr("space", fingerprint)
    study.set_user_attr("preset", settings.preset)
    return study


def enqueue_baseline(study: optuna.Study, settings: SearchSettings) -> None:
    """The reference model runs first, once per study: only worker 0 enqueues it (two workers checking
    at once could both see none), and a resumed study that has it does not repeat it."""
    if settings.worker != 0:
        return
    trials = study.get_trials(deepcopy=False)
    if any(t.user_attrs.get("role") == BASELINE for t in trials):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.enqueue_trial(settings.baseline_params, user_attrs={"role": BASELINE})


def run_search(settings: SearchSettings, run_dir: Path, progress: bool = True) -> optuna.Study:
    optuna.logging.set_verbosity(logging.WARNING)
    latency = make_latency_model(settings.latency, settings.problem.hardware, settings.problem.kernels)
    study = open_study(settings, settings.storage or default_storage(run_dir))
    enqueue_baseline(study, settings)
    objective = Objective(settings.problem, latency, settings.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.optimize(objective, n_trials=settings.n_trials, show_progress_bar=progress, gc_after_trial=False)
    return study


# ----------------------------------------------------------------------------------------------------
# Reading a finished study
# ----------------------------------------------------------------------------------------------------


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
        return bool(self.constraints) and max(self.constraints.values()) <= 0

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


def outcome(study: optuna.Study, settings: SearchSettings) -> dict[str, Any]:
    """The data of ``search.json``: baseline, best, Pareto set, improvement, violations."""
    problem = settings.problem
    names, directions = problem.objective_names, problem.directions
    all_records = records(study, names)
    by_number = {r.number: r for r in all_records}
    pareto = [by_number[t.number] for t in study.best_trials] if any(r.feasible for r in all_records) else []
    primary, sign = names[0], (1 if directions[0] == "maximize" else -1)
    best = max(pareto, key=lambda r: sign * r.objectives[primary]) if pareto else None
    baseline = next((r for r in all_records if r.role == BASELINE), None)
    improvement = None
    if best and baseline and baseline.objectives and baseline.objectives[primary]:
        ratio = best.objectives[primary] / baseline.objectives[primary]
        improvement = ratio if directions[0] == "maximize" else 1 / ratio
    states = [r.state for r in all_records]
    return {
        "preset": settings.preset,
        "study_name": settings.study_name,
        "storage": settings.storage or "sqlite (run dir)",
        "hardware": problem.hardware.name,
        "kernels": problem.kernels.name,
        "objectives": list(names),
        "directions": list(directions),
        "budget": asdict(problem.budget),
        "n_trials": len(all_records),
        "n_complete": states.count("COMPLETE"),
        "n_pruned": states.count("PRUNED"),
        "n_failed": states.count("FAIL"),
        "n_feasible": sum(r.feasible and r.objectives is not None for r in all_records),
        "baseline": baseline.to_dict() if baseline else None,
        "best": best.to_dict() if best else None,
        "pareto": [r.to_dict() for r in pareto],
        "improvement": improvement,
        "violations": sum(not r.feasible for r in pareto),
        "trials": [r.to_dict() for r in all_records],
    }

