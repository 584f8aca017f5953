"""``scripts/device_run.sh --dry-run`` as the lent GPU machine runs it before any CUDA: with neither torch
nor simpy nor optuna importable (that machine has no simpy/optuna; the dry run must not need torch)."""

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCKER = '''import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "triton", "simpy", "optuna"}:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, _Blocked())
'''


@pytest.mark.slow
def test_dry_run_prints_both_plans_without_torch_simpy_or_optuna(tmp_path):
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCKER)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{tmp_path / "block"}:$PYTHONPATH" exec {sys.executable} "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PYTHON": str(python), "OUT": str(tmp_path / "out"), "RUNS": str(tmp_path / "runs"),
           "SITE": str(tmp_path / "site")}
    run = subprocess.run(["bash", str(ROOT / "scripts" / "device_run.sh"), "--dry-run"], capture_output=True,
                         text=True, timeout=600, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "torch is blocked" in (tmp_path / "out" / "device.txt").read_text()  # the blocker was in force
    calibration = re.search(r"(\d+) shapes; estimated GPU time on h200: at most (\d+) s", run.stdout)
    assert calibration and int(calibration.group(1)) > 1000 and int(calibration.group(2)) <= 360
    assert re.search(r"\d+ curves, \d+ forwards; estimated GPU time on h200: at most \d+ s", run.stdout)
    assert "would run: timeout 390" in run.stdout and "fit=false" in run.stdout
