"""The Optuna study: storage, fingerprint, sampler, the enqueued baseline, and the run loop.

The study lives in any Optuna RDB storage (SQLite in the run dir by default; PostgreSQL for workers on
many machines, each running ``nfpsim-search`` with the same ``search.storage``, ``search.study_name``
and ``seed``, and its own ``search.worker``). ``search.n_trials`` is the number of finished trials the
study should hold: every worker stops there, a rerun of an interrupted search runs what is missing, and
raising it extends a finished one.

- **Fingerprint.** Everything that changes a trial's result (hardware, kernels, latency model, space,
  budgets, objective, decoding, workload and its seed, engine, SLO, baseline) is hashed into the study;
  opening it under a different problem is refused before a trial is added, naming what differs.
- **Fresh points on resume.** The sampler's seed mixes the seed, the worker and the trials the study
  already holds, so a resumed run does not replay the first run's proposals.
- **Failover.** Workers send heartbeats; a trial whose worker falls silent is failed and re-queued with
  the same parameters (Optuna's stale-trial callback), and a baseline that did not finish is queued again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna

from nfpsim.errors import ConfigError
from nfpsim.latency import make_latency_model
from nfpsim.search.objective import FINISHED, Objective, SurplusTrial
from nfpsim.search.search_settings import SearchSettings

BASELINE = "baseline"
RUNNING, WAITING = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING


# The code a trial's result follows from: pricing, the simulator and the objective (a change elsewhere, to
# the storage, reports or the command line, leaves the results of a resumed study comparable).
TRIAL_SOURCES = ("config.py", "shapes.py", "routing.py", "nfp.py", "latency", "sim", "search/objective.py",
                 "search/space.py", "search/search_settings.py")


def problem_document(settings: SearchSettings, latency) -> dict[str, Any]:
    """Everything that changes a trial's result, as plain JSON data: the problem, the latency model's
    state (specs, constants, calibration table) and the code that prices and simulates a trial, so that a
    study is never resumed into trials scored by other prices."""
    from nfpsim.cache import source_digest
    from nfpsim.latency.remembered import digest

    doc = json.loads(json.dumps(asdict(settings.problem), sort_keys=True, default=str))
    try:
        state = digest(latency)[:16]
    except TypeError:  # a latency model that cannot be fingerprinted (a test stub): its type names it
        state = None
    # the state holds a calibrated model's table (by its file's sha256)
    doc["latency"] = {"model": type(latency).__name__, "state": state, "code": source_digest(*TRIAL_SOURCES)[:16]}
    doc["baseline"] = settings.baseline_params
    return doc


def fingerprint(document: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


def default_storage(run_dir: Path) -> str:
    return f"sqlite:///{Path(run_dir).resolve() / 'study.db'}"


def normalize_url(url: str) -> str:
    """``postgresql://`` means psycopg2 to SQLAlchemy; nfpsim ships psycopg 3, so a bare URL uses it."""
    return "postgresql+psycopg://" + url[len("postgresql://"):] if url.startswith("postgresql://") else url


def make_sampler(settings: SearchSettings, trials_so_far: int) -> optuna.samplers.BaseSampler:
    seed = int(np.random.SeedSequence([settings.seed, settings.worker, trials_so_far]).generate_state(1)[0])
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if settings.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    with warnings.catch_warnings():  # multivariate/group TPE are marked experimental; they are well used
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=8)


def connect(storage_url: str, heartbeat_s: int, attempts: int = 5) -> optuna.storages.RDBStorage:
    """Open an RDB storage with heartbeats. Workers starting together on an empty database race to
    create its schema; the loser sees a duplicate-object error and retries once the winner is done."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    url = normalize_url(storage_url)
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=heartbeat_s,
                    grace_period=2 * heartbeat_s,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))
                if url.startswith("sqlite"):
                    _write_ahead_log(storage.engine)
                return storage
        except (IntegrityError, ProgrammingError, OperationalError) as error:
            # PostgreSQL reports the lost race as a duplicate object; SQLite as "table ... already
            # exists" or a locked database. Any other operational error (no such file) is final.
            raced = not isinstance(error, OperationalError) or any(
                words in str(error) for words in ("already exists", "database is locked"))
            if raced and attempt < attempts - 1:
                time.sleep(0.2 + random.random() * 0.5)
                continue
            raise _cannot_open(storage_url, error) from None
        except Exception as error:  # SQLAlchemy and DB drivers raise many kinds; the user needs one line
            raise _cannot_open(storage_url, error) from None
    raise AssertionError("unreachable")


def _cannot_open(storage_url: str, error: Exception) -> ConfigError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ConfigError(f"search.storage={storage_url!r}: cannot open it ({reason})")


def _write_ahead_log(engine) -> None:
    """SQLite in WAL mode with ``synchronous=NORMAL``: a trial writes some thirty rows (parameters,
    attributes, constraints, state), and the default rollback journal syncs the disk for each (about half
    of a trial's storage time here). In WAL mode the database stays consistent whatever stops the
    process; an OS crash or power loss may lose the last commits, i.e. the last trials, which a rerun
    (resume) runs again. Readers (``optuna-dashboard``, workers on this host) work as before."""
    from sqlalchemy import event

    def pragmas(connection, _record) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", pragmas)
    engine.dispose()  # the connections opened so far (Optuna's schema check) reopen with the pragmas


def _differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The settings that differ between two problem documents (one level deep: ``workload.num_requests``)."""
    out = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key), current.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            out.append(key)
    return out


def open_study(settings: SearchSettings, storage_url: str, document: dict[str, Any]) -> optuna.Study:
    """Create or resume the study; a bad URL or a study of another problem is a ConfigError, and the
    study is left untouched."""
    storage = connect(storage_url, settings.heartbeat_s)
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if settings.study_name in existing:
        study = optuna.load_study(study_name=settings.study_name, storage=storage)
        _check_same_problem(study, settings, storage_url, document)
    else:
        try:
            study = optuna.create_study(study_name=settings.study_name, storage=storage,
                                        directions=list(settings.problem.directions))
            study.set_user_attr("fingerprint", fingerprint(document))
            study.set_user_attr("problem", document)
            study.set_user_attr("preset", settings.preset)
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it meanwhile
            study = optuna.load_study(study_name=settings.study_name, storage=storage)
    study.sampler = make_sampler(settings, len(study.get_trials(deepcopy=False)))
    return study


def _check_same_problem(study: optuna.Study, settings: SearchSettings, url: str, document: dict[str, Any]) -> None:
    for _ in range(50):  # a worker that just created the study may still be writing its fingerprint
        if "fingerprint" in study.user_attrs:
            break
        time.sleep(0.1)
    found = [d.name.lower() for d in study.directions]
    if found == list(settings.problem.directions) and study.user_attrs.get("fingerprint") == fingerprint(document):
        return
    differs = _differences(study.user_attrs.get("problem") or {}, document) or ["objectives"]
    shown = ", ".join(differs[:6]) + (f" and {len(differs) - 6} more" if len(differs) > 6 else "")
    raise ConfigError(f"search.study_name={settings.study_name}: the study in {url} was made for another problem "
                      f"(differs in {shown}); it is left untouched — use a new search.study_name or the "
                      f"original settings")


def enqueue_baseline(study: optuna.Study, settings: SearchSettings) -> None:
    """The reference model runs first, once per study. Only worker 0 enqueues it (two workers checking
    at once could both see none); a resumed study whose baseline never finished queues it again."""
    if settings.worker != 0:
        return
    alive = FINISHED + (RUNNING, WAITING)
    if any(t.user_attrs.get("role") == BASELINE and t.state in alive for t in study.get_trials(deepcopy=False)):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.enqueue_trial(settings.baseline_params, user_attrs={"role": BASELINE})


def open_existing(settings: SearchSettings, run_dir: Path) -> tuple[optuna.Study, Any]:
    """The study other processes (Ray workers) ran, checked against these settings."""
    latency = make_latency_model(settings.latency, settings.problem.hardware, settings.problem.kernels)
    return open_study(settings, settings.storage or default_storage(run_dir),
                      problem_document(settings, latency)), latency


@dataclass
class SearchRun:
    study: optuna.Study
    latency: Any
    interrupted: bool = False

    def finished(self) -> int:
        return sum(t.state in FINISHED for t in self.study.get_trials(deepcopy=False))


def run_search(settings: SearchSettings, run_dir: Path, progress: bool = True) -> SearchRun:
    """Run trials until the study holds ``n_trials`` finished ones. Ctrl-C ends the run after the trial in
    flight (a second one at once) with ``interrupted`` set, so the caller can still write what completed."""
    optuna.logging.set_verbosity(logging.ERROR)  # a failed trial (Ctrl-C, a lost worker) is in search.json, not a traceback
    latency = make_latency_model(settings.latency, settings.problem.hardware, settings.problem.kernels)
    document = problem_document(settings, latency)
    study = open_study(settings, settings.storage or default_storage(run_dir), document)
    run = SearchRun(study, latency)
    enqueue_baseline(study, settings)
    objective = Objective(settings.problem, latency, settings.n_trials, settings.worker)
    bar = _progress(settings.n_trials, run.finished()) if progress else None
    ctrl_c = _CtrlC()
    try:
        while _next_step(study, settings.n_trials, settings.heartbeat_s, lambda: ctrl_c.pressed):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.optimize(objective, n_trials=1, catch=(SurplusTrial,), gc_after_trial=False)
            if bar is not None:
                bar.n = run.finished()
                bar.refresh()
    except KeyboardInterrupt:  # Optuna has marked the trial in flight FAIL
        run.interrupted = True
    finally:
        ctrl_c.restore()
        if bar is not None:
            bar.close()
    run.interrupted = run.interrupted or ctrl_c.pressed
    return run


class _CtrlC:
    """The first Ctrl-C lets the trial in flight finish, then ends the loop; a second one stops at once
    (Optuna marks the trial in flight FAIL). Raising on the first would be lost where it lands in a
    weakref or finalizer callback, which SQLAlchemy runs between trials: Python prints such an
    exception and carries on. A process started with SIGINT ignored keeps ignoring it."""

    def __init__(self) -> None:
        self.pressed = False
        self._previous = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True
        print("\nstopping after the trial in flight (Ctrl-C again to stop now)", file=sys.stderr, flush=True)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _next_step(study: optuna.Study, n_trials: int, heartbeat_s: int, stopped: Callable[[], bool]) -> bool:
    """True when this worker should start a trial. While the remaining slots are all held by running
    trials it waits: they finish, or their silent workers' trials are failed over and re-queued."""
    while not stopped():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in trials)
        if finished >= n_trials:
            return False
        if finished + sum(t.state == RUNNING for t in trials) < n_trials:
            return True
        time.sleep(min(1.0, heartbeat_s / 2))
    return False


def _progress(total: int, done: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="trial", dynamic_ncols=True)
