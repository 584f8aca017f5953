"""``nfpsim-validate`` as a user runs it: no GPU here, so a measuring run exits 2 and writes nothing;
``plan=true`` and ``measured=`` (re-prediction of stored measurements) run anywhere."""

import json
import os
import subprocess
import sys

import pytest
import torch

from nfpsim.io import write_json

VALIDATE = [sys.executable, "-m", "nfpsim.cli.validate"]


def run(args, cwd):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run(VALIDATE + args, cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_cuda_exits_2_with_one_line_and_writes_nothing(tmp_path):
    result = run([f"hydra.run.dir={tmp_path / 'run'}", f"output_dir={tmp_path / 'out'}"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: nfpsim-validate needs a CUDA GPU and this machine has none; nothing was written (plan=true shows "
        "the plan anywhere, measured=<validate.json> re-predicts anywhere)"]
    assert list(tmp_path.iterdir()) == []


def test_plan_prints_curves_and_estimate_and_writes_plan_json(tmp_path):
    result = run(["plan=true", "hardware=h200", "batches=[1]", "contexts=[4096]", f"hydra.run.dir={tmp_path}"],
                 tmp_path)
    assert result.returncode == 0, result.stderr
    assert "estimated GPU time on h200" in result.stdout and "llama3_8b triton batch 1 context 4096" in result.stdout
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["num_curves"] == 4 and plan["estimated_gpu_seconds"] > 0
    assert {c["model"] for c in plan["curves"]} == {"llama3_8b", "qwen3_30b_a3b"}
    assert all(c["num_layers"] == 2 and c["positions"][0] == 1 for c in plan["curves"])


def test_measured_repredicts_a_stored_result_without_a_gpu(tmp_path):
    from tests.validation.test_pipeline import run as run_validation
    from tests.validation.test_pipeline import settings
    from tests.validation import ModelTimer

    stored = run_validation(settings(), ModelTimer(lambda f: 1e-3 * (1 + f.shape.groups[0].positions / 8)))
    write_json(tmp_path / "h.json", stored)
    result = run([f"measured={tmp_path / 'h.json'}", f"hydra.run.dir={tmp_path / 'run'}",
                  f"output_dir={tmp_path / 'out'}"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "re-predicted" in result.stdout and "NFP meas" in result.stdout
    again = json.loads((tmp_path / "run" / "validate.json").read_text())
    assert again["repredicted"]["latency"] == "auto" and len(again["curves"]) == len(stored["curves"])
    assert json.loads((tmp_path / "out" / "cpu.json").read_text())["curves"] == again["curves"]
    for png in (tmp_path / "out" / "cpu-tiny.png", tmp_path / "run" / "validate-tiny_moe.png"):
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size < 400_000
    broken = run([f"measured={tmp_path / 'missing.json'}", f"hydra.run.dir={tmp_path / 'r2'}"], tmp_path)
    assert broken.returncode == 2 and "measured=" in broken.stderr and not (tmp_path / "r2").exists()
