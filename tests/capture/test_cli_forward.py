"""``nfpsim-nfp forward=...``: the usual sweep on a captured user forward, and one line for a bad builder."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a subprocess per case (hydra and torch imports)

ROOT = Path(__file__).resolve().parents[2]
NFP = [sys.executable, "-m", "nfpsim.cli.nfp"]


def run(args, out):
    """From the run directory's parent (a failed run removes what it created there), the repository on
    the path so that ``tests.capture.forwards`` and ``examples`` import."""
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(NFP + args + [f"hydra.run.dir={out}"], cwd=out.parent, capture_output=True, text=True,
                          env=env, timeout=300)


def test_forward_runs_the_nfp_sweep_on_the_captured_graph(tmp_path):
    out = tmp_path / "run"
    result = run(["forward=tests.capture.forwards:tiny", "hardware=h200", "kernels=vendor", "context=512",
                  "positions=[1,2,4,8,16,64]"], out)
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "nfp.json").read_text())
    assert data["model"] == "forward=tests.capture.forwards:tiny"
    assert data["config"]["forward"] == "tests.capture.forwards:tiny"
    assert data["positions"] == [1, 2, 4, 8, 16, 64]
    assert {"qkv_proj", "attention", "o_proj", "ffn", "lm_head", "pointwise", "embedding"} <= set(data["modules"])
    curve = [p["latency_s"] for p in data["forward"]["curve"]]
    assert len(curve) == 6 and curve[-1] > curve[0]  # (not monotone: mask padding depends on alignment)
    assert sorted(p.name for p in out.iterdir()) == ["nfp.csv", "nfp.json", "nfp.png"]


@pytest.mark.parametrize("builder, reason", [
    ("tests.capture.forwards:raises", r"builder\(1, 1, 4096\) raised RuntimeError: no weights here"),
    ("tests.capture.forwards:wrong_return", r"returned Linear; it must return \(fn, args\)"),
    ("tests.capture.forwards:cuda_only", r"builder\(1, 1, 4096\): aten._cslt_compress.default cannot run on meta tensors"),
    ("tests.capture.forwards:data_dependent", r"depends on tensor values"),
    ("tests.capture.forwards:missing", r"has no callable 'missing'"),
    ("tests.capture.forwards:not_callable", r"has no callable 'not_callable'"),
    ("tests.capture.nowhere:builder", r"cannot import tests.capture.nowhere: ModuleNotFoundError"),
    ("no_colon", r"must name a builder as package.module:builder"),
])
def test_a_bad_builder_is_one_line_naming_it_exit_2_nothing_written(tmp_path, builder, reason):
    out = tmp_path / "run"
    result = run([f"forward={builder}", "positions=[1,2]"], out)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"forward={builder}" in lines[0], result.stderr
    assert re.search(reason, lines[0]), lines[0]
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []
