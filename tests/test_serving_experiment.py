"""The serving concurrency experiment end to end: a closed-loop sweep on A100 and H100, then its knee."""

import csv
import os
import subprocess
import sys


def run(args, cwd):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=300)


def test_the_concurrency_sweep_runs_on_both_gpus_and_reports_its_knee(tmp_path):
    sweep = tmp_path / "sweep"
    result = run(["nfpsim.cli.simulate", "+experiment=serving_concurrency", "workload.num_clients=1,8",
                  "workload.num_requests=16", "output.requests_csv=false", f"hydra.sweep.dir={sweep}",
                  "--multirun"], tmp_path)
    assert result.returncode == 0, result.stderr
    result = run(["nfpsim.report.concurrency", str(sweep)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "a100_80g" in result.stdout and "h100_sxm" in result.stdout and "knee at" in result.stdout
    rows = list(csv.DictReader((sweep / "concurrency.csv").open()))
    by = {(r["hardware"], int(r["clients"])): r for r in rows}
    assert set(by) == {(h, c) for h in ("a100_80g", "h100_sxm") for c in (1, 8)}
    for hardware in ("a100_80g", "h100_sxm"):
        # eight clients share each weight read: several times the throughput, not eight (prefills interleave)
        gain = float(by[(hardware, 8)]["throughput_tokens_per_s"]) / float(by[(hardware, 1)]["throughput_tokens_per_s"])
        assert 3 < gain < 8
        assert all(r["kernels"] == "serving" for r in rows)
    # one client's decode step streams the weights: the faster HBM gives the shorter TPOT
    assert float(by[("h100_sxm", 1)]["tpot_p50_ms"]) < float(by[("a100_80g", 1)]["tpot_p50_ms"])
