"""``nfpsim-search`` end to end: the contract, resuming, reproducibility, bad input, shared storage."""

import json
import os
import sqlite3
import subprocess
import sys
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
    assert data["improvement"] >= 1.0  # the baseline is a trial too: the best is never worse
    assert data["violations"] == 0
    best = data["best"]
    assert best["feasible"] and max(best["constraints"].values()) <= 0
    budget = data["budget"]
    assert best["total_params"] <= budget["total_params"] and best["active_params"] <= budget["active_params"]
    assert best["active_params"] >= (1 - budget["tolerance"]) * budget["active_params"]
    for name in ("trials.csv", "report.md", "study.db", "trials.png"):
        assert (out / name).exists(), name
    assert len((out / "trials.csv").read_text().strip().splitlines()) == 21
    assert "improvement over the baseline" in result.stdout


def test_rerun_resumes_the_same_study(tmp_path):
    out = tmp_path / "run"
    for _ in range(2):
        result = run(["search=width_batch_llama3_8b", "search.n_trials=3", "plot=false", f"hydra.run.dir={out}"],
                     tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((out / "search.json").read_text())
    assert data["n_trials"] == 6
    assert [t["number"] for t in data["trials"]] == list(range(6))
    assert sum(t["role"] == "baseline" for t in data["trials"]) == 1


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


POSTGRES = os.environ.get("NFPSIM_TEST_POSTGRES_URL")


@pytest.mark.skipif(not POSTGRES, reason="set NFPSIM_TEST_POSTGRES_URL (.ci/run starts a server)")
def test_two_workers_share_one_postgres_study(tmp_path):
    study = f"shared_{uuid.uuid4().hex[:8]}"
    procs = [subprocess.Popen(SEARCH + ["search=width_batch_llama3_8b", "search.n_trials=4", "plot=false",
                                        f"search.storage={POSTGRES}", f"search.study_name={study}",
                                        f"search.worker={w}", f"hydra.run.dir={tmp_path / f'w{w}'}"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    import optuna

    trials = optuna.load_study(study_name=study, storage=POSTGRES).get_trials(deepcopy=False)
    assert len(trials) == 8  # 4 + 4: none lost
    assert sorted(t.number for t in trials) == list(range(8))  # none duplicated
    assert sum(t.user_attrs.get("role") == "baseline" for t in trials) == 1
