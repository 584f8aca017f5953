"""Ctrl-C: a real SIGINT to a running app ends it with one ``interrupted:`` line and exit status 130, no
traceback (nor a plot worker's), and a run directory that is complete, marked partial, or gone."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nfpsim.cli import common

ENV = {**os.environ, "MPLBACKEND": "Agg"}
LONG_RUN = "workload.num_requests=1000000"  # minutes of simulation: still running when the signal comes


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nfpsim.cli.simulate", *args], cwd=cwd, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_ctrl_c_as_in_a_terminal)


def _ctrl_c_as_in_a_terminal() -> None:
    """A shell starts background jobs (CI's among them) with SIGINT ignored, and Python keeps it so."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def interrupt(process: subprocess.Popen) -> tuple[int, str, str]:
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def assert_interrupted(returncode: int, out: str, err: str) -> str:
    assert returncode == common.EXIT_INTERRUPTED, err
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), err
    return lines[0]


@pytest.mark.slow
def test_ctrl_c_during_a_simulation_leaves_no_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    process = start([LONG_RUN, f"hydra.run.dir={run_dir}"], tmp_path)  # with the plot worker
    wait_for(run_dir, process)
    time.sleep(2.0)  # inside the simulation, the plot worker forked and warming up
    line = assert_interrupted(*interrupt(process))
    assert line == "interrupted: nothing was written"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ctrl_c_during_a_sweep_summarises_the_finished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    process = start(["--multirun", "workload.num_requests=20,30,1000000", "output.plot=false",
                     f"hydra.sweep.dir={sweep}"], tmp_path)
    wait_for(sweep / "2", process)
    time.sleep(1.0)
    line = assert_interrupted(*interrupt(process))
    assert "covers the 2 finished jobs" in line
    rows = (sweep / "summary.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["0", "1"]
    assert (sweep / "summary.png").is_file() and (sweep / "report.md").is_file()
    assert "covers the 2 jobs" in (sweep / common.PARTIAL_MARKER).read_text()
    assert not (sweep / "2").exists()  # the interrupted job had written nothing
    assert all((sweep / job / "simulate.json").is_file() for job in ("0", "1"))


def test_an_interrupted_run_dir_with_files_is_marked_partial(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "outputs" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "requests.csv").write_text("id\n")
    (run_dir / ".report.md.x1.tmp").write_text("half")  # a write cut short
    message = common._settle_interrupted_run(run_dir)
    assert message == f"{run_dir} is partial (see {common.PARTIAL_MARKER})"
    assert sorted(p.name for p in run_dir.iterdir()) == [common.PARTIAL_MARKER, "requests.csv"]
    assert "requests.csv were written before it stopped" in (run_dir / common.PARTIAL_MARKER).read_text()


def test_an_interrupted_empty_run_dir_is_removed_up_to_the_working_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "outputs" / "simulate" / "2026-01-01_00-00-00"
    run_dir.mkdir(parents=True)
    (tmp_path / "outputs" / "nfp").mkdir()  # an earlier app's results stay
    assert common._settle_interrupted_run(run_dir) == "nothing was written"
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["nfp"]
