"""``nfpsim-nfp`` end to end, as a user runs it (a subprocess per command)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

NFP = [sys.executable, "-m", "nfpsim.cli.nfp"]


def run(args, cwd):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run(NFP + args, cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


def test_issue_example_prints_the_table_and_writes_json_and_plot(tmp_path):
    out = tmp_path / "run"
    result = run(["model=qwen3_30b_a3b", "hardware=h200", "batch=1", "context=4096", "eps=0.1",
                  "kernels=triton", f"hydra.run.dir={out}"], tmp_path)
    assert result.returncode == 0, result.stderr
    for word in ("module", "NFP", "idle NFP", "factor", "experts", "lm_head"):
        assert word in result.stdout
    data = json.loads((out / "nfp.json").read_text())
    assert (data["model"], data["hardware"], data["batch"], data["context"]) == ("qwen3_30b_a3b", "h200", 1, 4096)
    assert data["modules"]["experts"]["nfp"] == 1
    assert data["config"]["kernels"]["name"] == "triton"
    assert (out / "nfp.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "nfp.csv").read_text().startswith("key,kind,positions,latency_s,ratio")
    assert sorted(p.name for p in out.iterdir()) == ["nfp.csv", "nfp.json", "nfp.png"]


def test_console_script_runs_on_defaults(tmp_path):
    exe = shutil.which("nfpsim-nfp")
    if exe is None:
        pytest.skip("package not installed with its console scripts")
    result = subprocess.run([exe, f"hydra.run.dir={tmp_path / 'd'}", "plot=false"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "d" / "nfp.json").read_text())["model"] == "llama3_8b"


def test_multirun_over_batches(tmp_path):
    sweep = tmp_path / "sweep"
    result = run(["--multirun", "batch=1,8,64", "plot=false", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr
    batches = sorted(json.loads(p.read_text())["batch"] for p in sweep.glob("*/nfp.json"))
    assert batches == [1, 8, 64]


def test_positions_set_the_grid_exactly(tmp_path):
    result = run(["positions=[1,2,4,8]", "plot=false", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "r" / "nfp.json").read_text())
    assert data["positions"] == [1, 2, 4, 8]
    assert [p["positions"] for p in data["forward"]["curve"]] == [1, 2, 4, 8]


@pytest.mark.parametrize("args, key", [
    (["model=llama9"], "model=llama9: unknown model; allowed:"),
    (["hardware=h300"], "hardware=h300: unknown hardware"),
    (["model.num_heads=30"], "model.num_heads=30 must divide model.hidden_size=4096"),
    (["model=mixtral_8x7b", "model.top_k=9"], "model.top_k=9 must be in [1, model.num_experts=8]"),
    (["eps=0"], "eps=0.0: must be in (0, 1]"),
    (["batch=0"], "batch=0: must be in [1, 65536]"),
    (["context=9000"], "beyond model.max_context=8192"),
    (["batchh=3"], "batchh: unknown setting"),
    (["positions=[2,4]"], "positions=[2, 4]: must include 1"),
    (["--multirun", "batch=1,0"], "[batch=0] batch=0"),
])
def test_bad_input_is_one_line_naming_the_key_and_writes_nothing(tmp_path, args, key):
    result = run(args + [f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                 tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [lines[-1]] and lines[0].startswith("error: ")
    assert key in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == []
