"""``nfpsim-search`` end to end: the contract, resuming, reproducibility, bad input, shared storage."""

import json
import os
import sqlite3
import signal
import subprocess
import sys
import time
import uuid

import pytest

SEARCH = [sys.executable, "-m", "nfpsim.cli.search"]


def run(args, cwd, timeout=300):
    return subprocess.run(SEARCH + args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "MPLBACKEND": "Agg"})


def test_twenty_trials_on_defaults_meet_the_contract(tmp_path):
    out = tmp_path / "run"
    result = run(["search.n_trials=20", "seed=0", f"hydra.run.dir={out}"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((out / "search.json").read_text())
    assert data["n_trials"] == 20
    for key in ("baseline", "best"):
        assert data[key]["params"] and data[key]["objectives"]
    assert data["baseline"]["role"] == "baseline" and data["baseline"]["number"] == 0
    assert data["violations"] == 0
    assert "capacity" in data["objective_measure"] and "from_shape" in data["gains"]
    best = data["best"]
    assert best["feasible"] and max(best["constraints"].values()) <= 0
    budget = data["budget"]
    assert best["total_params"] <= budget["total_params"] and best["active_params"] <= budget["active_params"]
    assert best["active_params"] >= (1 - budget["tolerance"]) * budget["active_params"]
    for name in ("trials.csv", "report.md", "study.db", "trials.png"):
        assert (out / name).exists(), name
    assert len((out / "trials.csv").read_text().strip().splitlines()) == 21
    assert "over the tuned reference" in result.stdout


def test_rerun_resumes_the_same_study(tmp_path):
    out = tmp_path / "run"
    for n in (3, 6):  # n_trials is what the study holds: raising it extends the study
        result = run(["search=width_batch_llama3_8b", f"search.n_trials={n}", "plot=false", f"hydra.run.dir={out}"],
                     tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((out / "search.json").read_text())
    assert data["n_trials"] == 6
    assert [t["number"] for t in data["trials"]] == list(range(6))
    assert sum(t["role"] == "baseline" for t in data["trials"]) == 1


def test_ctrl_c_writes_what_completed_and_says_how_to_resume(tmp_path):
    """Issue 11 item 4: a real SIGINT mid-search."""
    out = tmp_path / "run"
    proc = subprocess.Popen(SEARCH + ["search=width_batch_llama3_8b", "search.n_trials=500", "plot=true",
                                      f"hydra.run.dir={out}"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "MPLBACKEND": "Agg"},
                            preexec_fn=_ctrl_c_as_in_a_terminal)
    deadline = time.time() + 120
    while time.time() < deadline and (not (out / "study.db").exists() or _finished(out / "study.db") < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert "rerun the same command to resume" in stderr.strip().splitlines()[-1]
    data = json.loads((out / "search.json").read_text())
    assert data["interrupted"] and 2 <= data["n_complete"] < 500
    assert (out / "trials.csv").exists() and (out / "pareto.png").exists()


def _ctrl_c_as_in_a_terminal():
    """A shell starts background jobs (CI's among them) with SIGINT ignored, and Python keeps it so."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _finished(db):
    try:
        with sqlite3.connect(db) as con:
            return con.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:
        return 0


def _trial_count(db):
    with sqlite3.connect(db) as con:
        return con.execute("select count(*) from trials").fetchone()[0]


def test_an_incompatible_resume_or_bad_storage_is_one_line_and_damages_nothing(tmp_path):
    out = tmp_path / "run"
    first = run(["search=width_batch_llama3_8b", "search.n_trials=2", "plot=false", f"hydra.run.dir={out}"],
                tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    db = out / "study.db"
    before = (db.read_bytes(), _trial_count(db))
    other = run(["search=width_batch_llama3_8b", "search.objective=throughput", "search.n_trials=2",
                 f"hydra.run.dir={out}"], tmp_path)
    assert other.returncode == 2
    assert other.stderr.strip().splitlines()[-1].startswith("error: search.study_name=width_batch_llama3_8b")
    assert _trial_count(db) == before[1]
    for url in ("nosuchdb://x", "postgresql://nobody@127.0.0.1:1/none"):
        bad = run([f"search.storage={url}", "search.n_trials=1", f"hydra.run.dir={tmp_path / 'bad'}"], tmp_path)
        assert bad.returncode == 2, bad.stderr[-2000:]
        lines = bad.stderr.strip().splitlines()
        assert lines[-1].startswith("error: search.storage=") and "Traceback" not in bad.stderr
        assert not (tmp_path / "bad").exists()


def test_same_seed_same_study(tmp_path):
    results = []
    for name in ("a", "b"):
        result = run(["search.n_trials=6", "seed=7", "plot=false", f"hydra.run.dir={tmp_path / name}"], tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        data = json.loads((tmp_path / name / "search.json").read_text())
        results.append([(t["params"], t["objectives"], t["state"]) for t in data["trials"]])
    assert results[0] == results[1]


@pytest.mark.parametrize("override, message", [
    ("search.baseline.tp=3", "error: search.baseline.tp=3: tp=3 must divide"),
    ("search.tp=3", "error: search.tp: unknown search setting"),
])
def test_an_impossible_tp_is_one_line_and_leaves_no_study(tmp_path, override, message):
    """Issue 12 #10: search.tp=3 gave a traceback and left a FAIL study."""
    result = run([override, "search.n_trials=1", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    assert not (tmp_path / "run").exists()


POSTGRES = os.environ.get("NFPSIM_TEST_POSTGRES_URL")
SLOW_TRIALS = ["search=width_batch_llama3_8b", "search.workload.num_requests=6000", "search.heartbeat_s=1",
               "plot=false"]


def _worker(tmp_path, study, worker, n_trials):
    return subprocess.Popen(SEARCH + SLOW_TRIALS + [f"search.n_trials={n_trials}", f"search.storage={POSTGRES}",
                                                    f"search.study_name={study}", f"search.worker={worker}",
                                                    f"hydra.run.dir={tmp_path / f'w{worker}'}"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.skipif(not POSTGRES, reason="set NFPSIM_TEST_POSTGRES_URL (.ci/run starts a server)")
def test_two_workers_on_postgres_survive_one_killed_mid_trial(tmp_path):
    """Issue 12: the killed worker's trial is failed over and re-run; exactly n_trials complete."""
    import optuna

    from nfpsim.search.study import normalize_url

    study, n_trials = f"shared_{uuid.uuid4().hex[:8]}", 6
    victim = _worker(tmp_path, study, 1, n_trials)
    deadline, running = time.time() + 120, []
    while time.time() < deadline and not running:
        time.sleep(0.2)
        try:
            trials = optuna.load_study(study_name=study, storage=normalize_url(POSTGRES)).get_trials()
        except KeyError:
            continue
        running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    victim.kill()  # SIGKILL mid-trial: no chance to mark anything
    victim.communicate()
    survivor = _worker(tmp_path, study, 0, n_trials)
    _, err = survivor.communicate(timeout=600)
    assert survivor.returncode == 0, err[-2000:]
    trials = optuna.load_study(study_name=study, storage=normalize_url(POSTGRES)).get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == n_trials
    killed = trials[running[0].number]
    assert killed.state == optuna.trial.TrialState.FAIL
    assert any(t.system_attrs.get("failed_trial") == killed.number for t in complete)  # its re-run
    assert sum(t.user_attrs.get("role") == "baseline" for t in complete) == 1


@pytest.mark.skipif(not POSTGRES, reason="set NFPSIM_TEST_POSTGRES_URL (.ci/run starts a server)")
def test_two_workers_share_one_postgres_study(tmp_path):
    study = f"shared_{uuid.uuid4().hex[:8]}"
    procs = [subprocess.Popen(SEARCH + ["search=width_batch_llama3_8b", "search.n_trials=8", "plot=false",
                                        f"search.storage={POSTGRES}", f"search.study_name={study}",
                                        f"search.worker={w}", f"hydra.run.dir={tmp_path / f'w{w}'}"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    import optuna

    from nfpsim.search.study import normalize_url

    trials = optuna.load_study(study_name=study, storage=normalize_url(POSTGRES)).get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 8  # exactly n_trials between them: none lost
    assert len({t.number for t in complete}) == 8  # none duplicated
    assert sum(t.user_attrs.get("role") == "baseline" for t in complete) == 1


@pytest.mark.slow
def test_ray_workers_on_a_local_head_share_one_study(tmp_path):
    """Issue 12: N workers on a Ray cluster (a private head on 127.0.0.1), one RDB study, no trial lost or
    duplicated."""
    pytest.importorskip("ray")
    out = tmp_path / "run"
    storage = [f"search.storage={POSTGRES}", f"search.study_name=ray_{uuid.uuid4().hex[:8]}"] if POSTGRES else []
    result = run(["search=width_batch_llama3_8b", "search.n_trials=10", "plot=false", "ray_workers=2",
                  f"hydra.run.dir={out}", *storage], tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "search.json").read_text())
    complete = [t for t in data["trials"] if t["state"] == "COMPLETE"]
    assert len(complete) == 10 and len({t["number"] for t in complete}) == 10
    assert sum(t["role"] == "baseline" for t in complete) == 1
    # both workers ran trials: each writes its worker index into the trials it samples
    assert {t["worker"] for t in complete if t["role"] != "baseline"} == {0, 1}


@pytest.mark.slow
def test_sixty_tpe_trials_on_the_moe_preset_simulate_most_and_beat_the_tuned_reference(tmp_path):
    out = tmp_path / "run"
    result = run(["search=moe_30b_a3b_h100_speculative", "search.n_trials=60", "plot=false",
                  f"hydra.run.dir={out}"], tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((out / "search.json").read_text())
    assert data["n_simulated"] >= 40
    gains = data["gains"]
    assert gains["over_tuned_reference"] > 1.0
    assert gains["from_serving_knobs"] is not None and gains["from_shape"] is not None
    assert gains["from_serving_knobs"] * gains["from_shape"] == pytest.approx(gains["over_given_reference"])
