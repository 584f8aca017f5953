"""``nfpsim-simulate`` end to end, as a user runs it (a subprocess per command)."""

import csv
import json
import os
import subprocess
import sys

import pytest

SIMULATE = [sys.executable, "-m", "nfpsim.cli.simulate"]
CONTRACT_KEYS = ("num_finished", "throughput_tokens_per_s", "tokens_per_forward_mean", "num_forwards", "sim_time_s")


def run(args, cwd):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run(SIMULATE + args, cwd=cwd, capture_output=True, text=True, env=env, timeout=180)


def test_the_contract_command_writes_its_run_directory(tmp_path):
    out = tmp_path / "run"
    result = run(["model=llama3_8b", "hardware=h100_sxm", "decoding=speculative", "decoding.k=3",
                  "workload.num_requests=40", "seed=5", "output.chrome_trace=true", "output.trace_forwards=3",
                  f"hydra.run.dir={out}"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "throughput" in result.stdout and "TTFT" in result.stdout
    data = json.loads((out / "simulate.json").read_text())
    for key in CONTRACT_KEYS:
        assert isinstance(data[key], (int, float)), key
    for key in ("ttft_s", "tpot_s"):
        assert set(data[key]) >= {"p50", "p90", "p99"}
    assert data["num_finished"] == 40 and data["decoding"]["width"] == 4 and data["seed"] == 5
    assert data["config"]["decoding"]["k"] == 3
    rows = list(csv.DictReader((out / "requests.csv").open()))
    assert len(rows) == 40 and all(r["finished"] == "True" for r in rows)
    assert sum(int(r["generated_tokens"]) for r in rows) == sum(int(r["output_tokens"]) for r in rows)
    for name in ("latency_cdf.png", "throughput.png", "tokens_per_forward.png", "width_nfp.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    trace = json.loads((out / "trace.json").read_text())
    assert {e["cat"] for e in trace["traceEvents"] if e["ph"] == "X"} == {"step", "forward", "layer", "op"}
    report = (out / "report.md").read_text()
    assert "Key figures" in report and "![" in report
    assert not list(out.glob(".*.tmp"))


def test_a_seed_fixes_the_results(tmp_path):
    common = ["decoding=jacobi", "workload=bursty", "workload.num_requests=30", "output.plot=false"]
    data = []
    for name in ("a", "b"):
        result = run(common + ["seed=11", f"hydra.run.dir={tmp_path / name}"], tmp_path)
        assert result.returncode == 0, result.stderr
        payload = json.loads((tmp_path / name / "simulate.json").read_text())
        payload.pop("wall_time_s")
        data.append(payload)
    assert data[0] == data[1]
    assert (tmp_path / "a" / "requests.csv").read_text() == (tmp_path / "b" / "requests.csv").read_text()


def test_an_experiment_sweep_writes_a_combined_summary(tmp_path):
    sweep = tmp_path / "sweep"
    result = run(["--multirun", "+experiment=spec_width_llama3_8b_h100", "workload.num_requests=15",
                  "output.plot=false", "output.requests_csv=false", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [r["decoding.k"] for r in rows] == ["1", "2", "3", "4", "6", "8"]
    assert all(float(r["throughput_tokens_per_s"]) > 0 for r in rows)
    assert (sweep / "summary.png").read_bytes()[:4] == b"\x89PNG"
    assert "decoding.k=8" in (sweep / "report.md").read_text()
    assert "data:image/png;base64," in (sweep / "report.html").read_text()


@pytest.mark.parametrize("args, key", [
    (["workload.rate_per_s=0"], "workload.rate_per_s=0.0: must be > 0"),
    (["decoding=speculative", "decoding.k=0"], "decoding.k=0: must be in [1, 63]"),
    (["decoding=jacobi", "decoding.width=0"], "decoding.width=0"),
    (["decoding=diffusion", "decoding.block_size=0"], "decoding.block_size=0"),
    (["model=llama3_70b", "hardware=a100_80g", "engine.tp=1"], "engine.tp=1: llama3_70b weights need"),
    (["engine.kv_capacity_tokens=600"], "can never run"),
    (["workload.prompt_tokens.value=9000"], "exceeds model.max_context=8192"),
    (["decoding=warp"], "decoding=warp: unknown decoding; allowed:"),
    (["workload.rate=3"], "workload.rate: unknown workload setting"),
    (["--multirun", "decoding=speculative", "decoding.k=2,0"], "decoding.k=0 workload.num_requests=5] decoding.k=0: must be"),
])
def test_bad_input_is_one_line_naming_the_problem_and_writes_nothing(tmp_path, args, key):
    result = run(args + ["workload.num_requests=5", f"hydra.run.dir={tmp_path / 'run'}",
                         f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [lines[-1]] and lines[0].startswith("error: ")
    assert key in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("body, key", [
    ("arrival_s,prompt_tokens,output_tokens\n0,100,10\n1,-5,10\n", "line 3: prompt_tokens=-5 must be >= 1"),
    ("arrival_s,prompt_tokens,output_tokens\n3,100,10\n1,100,10\n", "line 3: arrival_s=1.0 is before"),
])
def test_a_bad_trace_is_refused_before_anything_is_written(tmp_path, body, key):
    trace = tmp_path / "in" / "trace.csv"
    trace.parent.mkdir()
    trace.write_text(body)
    result = run(["workload=trace", f"workload.trace_file={trace}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: ")
    assert key in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_a_cluster_run_writes_pools_and_every_request(tmp_path):
    out = tmp_path / "run"
    result = run(["cluster=disagg", "model=llama3_70b", "decoding=speculative", "workload.num_requests=30",
                  f"hydra.run.dir={out}"], tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "simulate.json").read_text())
    assert data["num_finished"] == 30 and data["cluster"]["disaggregated"]
    assert set(data["pools"]) == {"prefill", "decode"} and data["pools"]["prefill"]["kv_transfers"] == 30
    rows = list(csv.DictReader((out / "requests.csv").open()))
    assert sorted(int(r["id"]) for r in rows) == list(range(30))
    assert "Pools" in (out / "report.md").read_text()


def _sweep_jobs(tmp_path, name, launcher_args):
    sweep = tmp_path / name
    result = run(["--multirun", *launcher_args, "decoding=speculative", "decoding.k=1,3", "workload=bursty",
                  "workload.num_requests=25", "output.plot=false", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = {}
    for path in sorted(sweep.glob("*/simulate.json")):
        data = json.loads(path.read_text())
        data.pop("wall_time_s")
        jobs[data["config"]["decoding"]["k"]] = (data, (path.parent / "requests.csv").read_text())
    return jobs


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [
    ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    ["hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2", "+hydra.launcher.ray.init.include_dashboard=false",
     "+hydra.launcher.ray.init._node_ip_address=127.0.0.1"],  # a local Ray head on loopback
], ids=["joblib", "ray"])
def test_a_parallel_sweep_gives_each_job_the_serial_runs_outputs(tmp_path, launcher):
    pytest.importorskip(f"hydra_plugins.hydra_{launcher[0].split('=')[1]}_launcher")
    serial = _sweep_jobs(tmp_path, "serial", [])
    parallel = _sweep_jobs(tmp_path, "parallel", launcher)
    assert set(serial) == set(parallel) == {1, 3}
    assert serial == parallel
