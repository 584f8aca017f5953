"""The study itself, in process: common random numbers, resume, fingerprint, failover, scoring rules."""

import dataclasses
import sqlite3

import numpy as np
import optuna
import pytest

from nfpsim.errors import ConfigError
from nfpsim.latency import make_latency_model
from nfpsim.config import load_model
from nfpsim.latency.remembered import RememberedForwardTimes
from nfpsim.search.objective import capacity, evaluate, near_free_ratio
from nfpsim.shapes import ForwardShape
from nfpsim.search.outcome import TrialRecord, gains, outcome
from nfpsim.search.study import BASELINE, _CtrlC, connect, default_storage, enqueue_baseline, normalize_url, \
    open_study, problem_document, run_search
from tests.search.test_space import settings_for

optuna.logging.set_verbosity(optuna.logging.WARNING)
FAST = ["search.workload.num_clients=129", "search.workload.num_requests=258",
        "search.workload.output_tokens.value=32"]


def fast_moe(*overrides):
    return settings_for("moe_30b_a3b_h100_speculative", *FAST, *overrides)


def latency_of(s):
    return make_latency_model(s.latency, s.problem.hardware, s.problem.kernels)


def test_the_same_design_scores_bit_identically_within_a_study(tmp_path):
    """Issue 12 #4: one workload draw per study (common random numbers)."""
    s = dataclasses.replace(fast_moe(), n_trials=3)
    document = problem_document(s, latency_of(s))
    study = open_study(s, default_storage(tmp_path), document)
    for _ in range(2):  # the reference twice, beside the baseline trial
        study.enqueue_trial(s.baseline_params)
    enqueue_baseline(study, s)
    run = run_search(s, tmp_path, progress=False)
    trials = [t for t in run.study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 3 and len({tuple(sorted(t.params.items())) for t in trials}) == 1
    assert len({tuple(t.values) for t in trials}) == 1
    assert len({tuple(sorted(t.constraints.items())) if isinstance(t.constraints, dict) else tuple(t.constraints)
                for t in trials}) == 1


def test_a_resume_adds_only_new_points(tmp_path):
    """Issue 12 #1: the resumed sampler must not replay the first run's proposals."""
    first = dataclasses.replace(fast_moe("search.sampler=random"), n_trials=3)
    run_search(first, tmp_path, progress=False)
    run = run_search(dataclasses.replace(first, n_trials=6), tmp_path, progress=False)
    trials = run.study.get_trials()
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    old = {tuple(sorted(t.params.items())) for t in trials[:3]}
    assert not old & {tuple(sorted(t.params.items())) for t in trials[3:]}
    # n_trials is what the study holds: rerunning a finished study adds nothing
    assert len(run_search(dataclasses.replace(first, n_trials=6), tmp_path, progress=False).study.trials) == 6


@pytest.mark.parametrize("override, named", [
    ("search.workload.num_requests=300", "workload.num_requests"),
    ("seed=1", "workload_seed"),
    ("search.budget.eps=0.2", "budget.eps"),
    ("search.engine.block_size_tokens=32", "engine.block_size_tokens"),
    ("search.slo.tpot_s=0.2", "slo.tpot_s"),
    ("search.decoding.speculative.acceptance.rate=0.6", "decoding_configs.speculative"),
    ("hardware=h200", "hardware"),
])
def test_a_resume_under_another_problem_is_refused_and_leaves_the_study_untouched(tmp_path, override, named):
    """Issue 12 #2: every setting that changes a result is in the fingerprint."""
    s = dataclasses.replace(fast_moe(), n_trials=1)
    run_search(s, tmp_path, progress=False)
    before = len(optuna.load_study(study_name=s.study_name, storage=default_storage(tmp_path)).trials)
    other = dataclasses.replace(fast_moe(override), n_trials=2)
    with pytest.raises(ConfigError, match=f"differs in .*{named}"):
        run_search(other, tmp_path, progress=False)
    assert len(optuna.load_study(study_name=s.study_name, storage=default_storage(tmp_path)).trials) == before


def test_a_resume_under_other_pricing_code_is_refused(tmp_path, monkeypatch):
    """A study is never resumed into trials scored by other code: the pricing and simulator sources are
    in the fingerprint (a change to them would mix two latency models' scores in one study)."""
    import nfpsim.cache

    s = dataclasses.replace(fast_moe(), n_trials=1)
    run_search(s, tmp_path, progress=False)
    assert problem_document(s, latency_of(s)) == problem_document(s, latency_of(s))
    monkeypatch.setattr(nfpsim.cache, "source_digest", lambda *parts: "0" * 64)  # the code changed since
    with pytest.raises(ConfigError, match="differs in .*latency.code"):
        run_search(dataclasses.replace(s, n_trials=2), tmp_path, progress=False)


def test_a_baseline_that_did_not_finish_is_queued_again(tmp_path):
    """Issue 12 #3 (second half): an interrupted baseline is re-run on resume."""
    s = dataclasses.replace(fast_moe(), n_trials=2)
    study = open_study(s, default_storage(tmp_path), problem_document(s, latency_of(s)))
    enqueue_baseline(study, s)
    trial = study.ask()  # the baseline, then its worker stops
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    enqueue_baseline(study, s)
    waiting = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.WAITING]
    assert [t.user_attrs.get("role") for t in waiting] == [BASELINE]
    enqueue_baseline(study, s)  # queued once, not once per call
    assert sum(t.state == optuna.trial.TrialState.WAITING for t in study.get_trials()) == 1


def test_a_silent_workers_trial_is_failed_over_and_the_study_ends_at_n_trials(tmp_path):
    """Issue 12 #3: no heartbeat used to leave a dead worker's trial RUNNING forever."""
    s = dataclasses.replace(fast_moe(), n_trials=3, heartbeat_s=1)
    study = open_study(s, default_storage(tmp_path), problem_document(s, latency_of(s)))
    study.enqueue_trial(s.baseline_params, user_attrs={"role": BASELINE})
    dead = study.ask()  # a worker that took the baseline and died: RUNNING, one heartbeat, no more
    study._storage.record_heartbeat(dead._trial_id)
    run = run_search(s, tmp_path, progress=False)
    trials = run.study.get_trials()
    assert trials[dead.number].state == optuna.trial.TrialState.FAIL
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    assert sum(t.user_attrs.get("role") == BASELINE for t in complete) == 1  # the re-run of the dead trial


def _result(**columns):
    n = len(next(iter(columns.values())))
    defaults = {"num_chunks": np.zeros(n, np.int64), "emitted_tokens": np.zeros(n, np.int64)}
    forwards = {**defaults, **{k: np.asarray(v) for k, v in columns.items()}}
    return type("R", (), {"forwards": forwards, "requests": {"first_token_s": np.array([2.5, 1.0])}})()


def test_capacity_counts_the_saturated_part_only():
    # forwards at t=0,1,2 while a request waits (the last first token comes at 2.5), then a slow drain
    result = _result(start_s=[0.0, 1.0, 2.0, 3.0], duration_s=[1.0, 1.0, 1.0, 4.0],
                     committed_tokens=[10, 10, 10, 2], emitted_tokens=[2, 0, 0, 0])
    assert capacity(result) == pytest.approx(32 / 3)


def test_the_near_free_ratio_uses_the_steps_run_and_counts_the_proposer():
    # two pure decode steps (forward 1.0 + proposals 0.1 against 1.0 at one position), one prefill step
    result = _result(num_decode=[8, 8, 8], num_chunks=[0, 0, 1], duration_s=[1.1, 1.1, 5.0],
                     one_position_s=[1.0, 1.0, 1.0], start_s=[0.0, 1.0, 2.0], committed_tokens=[1, 1, 1])
    assert near_free_ratio(result) == pytest.approx(1.1)


def test_a_near_free_policy_is_judged_at_the_widths_it_ran():
    """Issue 12 #6: a near-free width shrinks to fit the budget, so its steps meet it. The width budgets the
    forward alone; the guesses' host time (per sequence, whatever the width) is zeroed to judge the widths."""
    s = settings_for("width_batch_llama3_8b", *FAST, "search.space.max_num_seqs=[32,64]",
                     "search.decoding.jacobi={method: jacobi, width_policy: near_free, width: 8, "
                     "proposal_host_us: 0, utilization: [[1, 1.0], [8, 2.0]]}")
    candidate = dataclasses.replace(s.baseline, method="jacobi", method_size=64, max_num_seqs=32)
    result = evaluate(s.problem, latency_of(s), candidate)
    assert result.constraints["near_free"] <= 0


def test_a_study_prices_a_forward_once_whatever_its_trial_named_the_model():
    calls = []

    def seconds(model, shape):
        return 0.001 * shape.num_tokens + 1e-3 * model.num_layers

    class Recording:
        kernels = "the latency model's"

        def forward_time(self, model, shape):
            calls.append(model.name)
            return seconds(model, shape)

    shared = RememberedForwardTimes(Recording(), None)
    model = load_model("llama3_8b")
    shape = ForwardShape.uniform(8, 2, 512)
    first = shared.forward_time(dataclasses.replace(model, name="trial1_dense_32L"), shape)
    again = shared.forward_time(dataclasses.replace(model, name="trial7_dense_32L"), shape)
    assert first == again == seconds(model, shape) and calls == ["trial1_dense_32L"]
    deeper = dataclasses.replace(model, name="trial9_dense_32L", num_layers=33)
    assert shared.forward_time(deeper, shape) == seconds(deeper, shape) and len(calls) == 2
    assert shared.forward_time(model, ForwardShape.uniform(8, 1, 512)) != first and len(calls) == 3
    assert shared.kernels == "the latency model's"  # the near-free scan's grid still comes from it


def test_capacity_does_not_depend_on_the_run_length():
    """Issue 12 #5: throughput at 256 requests used to read 11% under 4096."""
    values = []
    for requests in (2 * 129, 8 * 129):
        s = settings_for("width_batch_llama3_8b", "search.space.max_num_seqs=[32,64]",
                         "search.workload.num_clients=129",
                         f"search.workload.num_requests={requests}", "search.workload.output_tokens.value=64")
        values.append(evaluate(s.problem, latency_of(s), s.baseline).objectives[0])
    assert values[0] == pytest.approx(values[1], rel=0.03)


def test_gains_split_into_serving_knobs_and_shape():
    def ref(value, feasible=True, role="x"):
        return {"objectives": {"t": value}, "feasible": feasible, "role": role}

    refs = {"given": ref(100.0, role="given"), "best_knobs": ref(150.0, role="best_knobs"),
            "max_num_seqs=128": ref(120.0)}
    g = gains("t", True, ref(180.0), refs)
    assert g["from_serving_knobs"] == pytest.approx(1.5) and g["from_shape"] == pytest.approx(1.2)
    assert g["over_given_reference"] == pytest.approx(1.8)
    assert g["over_tuned_reference"] == pytest.approx(1.2) and g["tuned_reference"] == "best_knobs"
    # an infeasible reference as given: improvement is over the best feasible setup, and says so
    refs["given"] = ref(500.0, feasible=False, role="given")
    g = gains("t", True, ref(180.0), refs)
    assert g["over_tuned_reference"] == pytest.approx(1.2) and g["from_serving_knobs"] is None and g["reason"]


def test_a_trial_not_simulated_is_never_feasible():
    """Issue 12 #9: pruned trials were written as feasible with placeholder constraints."""
    pruned = TrialRecord(3, "PRUNED", None, {}, None, {"total_params_over": -0.1, "memory": -0.5}, {})
    skipped = TrialRecord(4, "COMPLETE", None, {}, {"t": 0.0}, {"total_params_over": -0.1, "memory": -0.5}, {})
    assert not pruned.feasible and not skipped.feasible


def test_a_budget_breaker_records_only_the_constraints_it_checked():
    s = fast_moe()
    small = dataclasses.replace(s.baseline, model=dataclasses.replace(s.baseline.model, num_layers=8))
    result = evaluate(s.problem, latency_of(s), small)
    assert result.attrs["skipped"] == "budget" and "near_free" not in result.constraints


def test_the_outcome_names_its_objective_and_splits_the_gain(tmp_path):
    s = dataclasses.replace(fast_moe(), n_trials=4)
    run = run_search(s, tmp_path, progress=False)
    data = outcome(run.study, s, run.latency)
    assert "capacity" in data["objective_measure"]
    assert data["n_pruned"] == 0  # no analytic pre-screen discards a candidate unsimulated
    assert set(data["references"]) >= {"given", "best_knobs"}
    assert {"from_serving_knobs", "from_shape", "over_tuned_reference"} <= set(data["gains"])


def test_the_documented_postgres_urls_load_a_shipped_driver():
    """Issue 12 #11: SQLAlchemy 2 needs psycopg 3 for postgresql+psycopg://; plain postgresql:// uses it too."""
    import sqlalchemy

    for url in ("postgresql+psycopg://u@127.0.0.1:1/db", normalize_url("postgresql://u@127.0.0.1:1/db")):
        assert sqlalchemy.create_engine(url).dialect.driver == "psycopg"


def test_a_sqlite_study_writes_ahead_and_reads_back_from_another_connection(tmp_path):
    storage = connect(default_storage(tmp_path), heartbeat_s=10)
    study = optuna.create_study(study_name="wal", storage=storage)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    with sqlite3.connect(tmp_path / "study.db") as con:  # what optuna-dashboard or a worker sees
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0] == 2


@pytest.mark.parametrize("preset", ["moe_30b_a3b_h100_speculative", "dense_8b_h200_diffusion",
                                    "width_batch_llama3_8b"])
def test_every_preset_baseline_is_feasible(preset):
    """Issue 12 #8: an infeasible reference made "improvement 0.24x" meaningless."""
    s = settings_for(preset)
    result = evaluate(s.problem, latency_of(s), s.baseline)
    assert "near_free" in result.constraints and max(result.constraints.values()) <= 0


def test_the_first_ctrl_c_is_remembered_and_the_second_stops_at_once():
    """A first SIGINT only sets the flag the run loop checks (an exception raised in a weakref callback
    would be lost); the second raises; the previous handler comes back after the run."""
    import os
    import signal

    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even where CI ignores it
    try:
        ctrl_c = _CtrlC()
        try:
            os.kill(os.getpid(), signal.SIGINT)
            assert ctrl_c.pressed
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
        finally:
            ctrl_c.restore()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)
