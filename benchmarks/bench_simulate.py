"""Wall time and peak memory of ``nfpsim-simulate``, against Vidur on the same workload, and at scale.

The Vidur workload: Llama-3-8B on one A100 80GB (TP 1), at most 128 sequences and 4,096 tokens per
forward, Poisson arrivals at 20 requests/s, prompt 512 and output 256 tokens. Vidur, measured on the
machine this project is developed on: 10,000 requests in 13.9-14.5 s without writing its outputs and
about 41 s with them; 100,000 requests in 95.7 s (after a first run training its predictors).

Each command runs as a user runs it (a fresh process: Python, Hydra, the simulation, the files), as
``python -m nfpsim.cli.simulate`` from the root of this checkout: the code measured is this checkout's,
whichever copy of nfpsim is installed. "All outputs" writes the plots, requests.csv, report and
simulate.json; "no outputs" only simulate.json and the report. Wall time is the median of ``--repeats``
runs, after one untimed run; peak memory is the process's largest resident set.

As a user runs it also means: Python caches compiled bytecode (``PYTHONDONTWRITEBYTECODE`` is dropped
for the runs; a machine that sets it recompiles nfpsim at every start), and only the plugins the user
installed are there. Hydra imports every launcher plugin it finds at start-up; the dev install's joblib
and Ray launchers cost ~40 ms per run that the default install (``pip install -e .``) does not pay. Run
the benchmark with the interpreter of the install to measure (``/path/to/venv/bin/python
benchmarks/bench_simulate.py``); it prints the launchers it found.

A plain run that ran before starts from the compose cache (``nfpsim.cli.compose_cache``: what Hydra
composed for the same overrides, without importing Hydra) and reads the forward times it priced then
(``nfpsim.latency.remembered``); the untimed first run fills both, as a user's first run does. The runs
use a cache directory of their own, and one figure is of a first run, with the cache empty.

``--scale`` adds the scale figures: one replica with 1,000,000 requests (the same overloaded workload:
the queue, and memory, grow with it), 16 replicas with 100,000 requests at 16x the rate, and with
``--ten-million`` 10,000,000 requests on one replica at 5 requests/s (a load it keeps up with, so only
the simulator's own memory is measured).

Run: python benchmarks/bench_simulate.py [--repeats 3] [--scale [--ten-million]]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VIDUR_NO_OUTPUTS_S = (13.9, 14.5)
VIDUR_OUTPUTS_S = 41.0
VIDUR_100K_S = 95.7
WORKLOAD = ["model=llama3_8b", "hardware=a100_80g", "kernels=vendor", "latency=analytic", "engine.tp=1",
            "engine.max_num_seqs=128", "engine.max_num_batched_tokens=4096", "workload=poisson",
            "workload.rate_per_s=20", "workload.prompt_tokens.value=512", "workload.output_tokens.value=256",
            "seed=0"]
NO_OUTPUTS = ["output.plot=false", "output.requests_csv=false"]
DECODINGS = {"autoregressive": ["decoding=ar"], "speculative k=4": ["decoding=speculative", "decoding.k=4"]}


# The command runs from this checkout's root, so ``-m`` imports this checkout's nfpsim (the code being
# measured), whichever copy is installed.
ROOT = Path(__file__).resolve().parent.parent


def command() -> list[str]:
    return [sys.executable, "-m", "nfpsim.cli.simulate"]


def user_env(cache: Path) -> dict[str, str]:
    env = {**os.environ, "MPLBACKEND": "Agg", "NFPSIM_CACHE_DIR": str(cache)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def launcher_plugins() -> list[str]:
    """The Hydra launcher plugins this interpreter has (each imported at every start)."""
    import importlib.util

    if importlib.util.find_spec("hydra_plugins") is None:
        return []
    names = ("hydra_plugins.hydra_joblib_launcher", "hydra_plugins.hydra_ray_launcher")
    return [name.rsplit(".", 1)[1] for name in names if importlib.util.find_spec(name) is not None]


def timed_run(args: list[str], run_dir: Path, cache: Path) -> tuple[float, float, dict]:
    """``(wall s, peak resident MiB, simulate.json)`` of one command, with its compose cache in ``cache``."""
    start = time.perf_counter()
    process = subprocess.Popen(command() + args + [f"hydra.run.dir={run_dir}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, cwd=ROOT, env=user_env(cache))
    _, status, usage = os.wait4(process.pid, 0)
    wall_s = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(args)}\n{process.stderr.read().decode()}")
    process.stderr.close()
    return wall_s, usage.ru_maxrss / 1024, json.loads((run_dir / "simulate.json").read_text())


def measure(args: list[str], tmp: Path, repeats: int, first_run: bool = False) -> tuple[float, float, dict]:
    """Median wall time, peak memory and the result of ``repeats`` runs; ``first_run``: each with an
    empty compose cache (as the first run of these overrides), else after one untimed run that fills it."""
    cache = tmp / "cache"
    if repeats > 1 and not first_run:
        timed_run(args, tmp / f"run-{time.monotonic_ns()}", cache)  # untimed: bytecode, page and compose caches
    runs = [timed_run(args, tmp / f"run-{time.monotonic_ns()}",
                      tmp / f"cache-{time.monotonic_ns()}" if first_run else cache) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs), runs[0][2]


def row(label: str, wall_s: float, peak_mib: float, data: dict, vidur: str) -> str:
    return (f"{label:<44}{wall_s:>9.2f}{data['wall_time_s']:>8.2f}{peak_mib:>10.0f}{data['num_finished']:>10}"
            f"{data['num_forwards']:>10}  {vidur}")


def ratio(reference_s: float | tuple[float, float], wall_s: float) -> str:
    if isinstance(reference_s, tuple):
        return f"{reference_s[0] / wall_s:.1f}-{reference_s[1] / wall_s:.1f}x faster than Vidur"
    return f"{reference_s / wall_s:.1f}x faster than Vidur"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", action="store_true", help="also 1M requests, and 16 replicas x 100k")
    parser.add_argument("--ten-million", action="store_true", help="with --scale: also 10M requests")
    args = parser.parse_args()
    print(f"python -m nfpsim.cli.simulate from {ROOT}: llama3_8b on a100_80g, TP 1, <=128 seqs, <=4096 tokens/forward, "
          f"Poisson 20 req/s, prompt 512, output 256; 10k rows: median of {args.repeats} runs after one untimed "
          f"(100k and scale rows: one run each); "
          f"Hydra launcher plugins installed: {', '.join(launcher_plugins()) or 'none'}\n")
    print(f"{'run':<44}{'wall s':>9}{'sim s':>8}{'peak MiB':>10}{'finished':>10}{'forwards':>10}")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        first = WORKLOAD + ["workload.num_requests=10000"] + DECODINGS["autoregressive"] + NO_OUTPUTS
        wall_s, peak, data = measure(first, tmp, args.repeats, first_run=True)
        print(row("10k, autoregressive, no outputs, first run", wall_s, peak, data, ratio(VIDUR_NO_OUTPUTS_S, wall_s)))
        for decoding, decoding_args in DECODINGS.items():
            base = WORKLOAD + ["workload.num_requests=10000"] + decoding_args
            wall_s, peak, data = measure(base + NO_OUTPUTS, tmp, args.repeats)
            print(row(f"10k, {decoding}, no outputs", wall_s, peak, data, ratio(VIDUR_NO_OUTPUTS_S, wall_s)))
            wall_s, peak, data = measure(base, tmp, args.repeats)
            print(row(f"10k, {decoding}, all outputs", wall_s, peak, data, ratio(VIDUR_OUTPUTS_S, wall_s)))
        wall_s, peak, data = measure(WORKLOAD + ["workload.num_requests=100000"] + NO_OUTPUTS, tmp, 1)
        print(row("100k, autoregressive, no outputs", wall_s, peak, data, ratio(VIDUR_100K_S, wall_s)))
        if args.scale:
            scale(tmp, args.ten_million)
    print("\nwall s: the whole command (start-up, simulation, files); sim s: the simulation alone, in process; "
          "first run: an empty cache (Hydra composes the config, every forward shape is priced)")
    print(f"{os.cpu_count()} CPUs; load average at the end (1, 5, 15 min): "
          + ", ".join(f"{load:.2f}" for load in os.getloadavg()))


def scale(tmp: Path, ten_million: bool) -> None:
    wall_s, peak, data = measure(WORKLOAD + ["workload.num_requests=1000000"] + NO_OUTPUTS, tmp, 1)
    print(row("1M, one replica, no outputs (target <= 60 s)", wall_s, peak, data, "target <= 500 MiB"))
    cluster = WORKLOAD + ["cluster=dp16", "workload.rate_per_s=320", "workload.num_requests=100000"] + NO_OUTPUTS
    wall_s, peak, data = measure(cluster, tmp, 1)
    print(row("16 replicas x 100k, no outputs (<= 30 s)", wall_s, peak, data, ""))
    if ten_million:
        ten = WORKLOAD + ["workload.rate_per_s=5", "workload.num_requests=10000000"] + NO_OUTPUTS
        wall_s, peak, data = measure(ten, tmp, 1)
        print(row("10M, one replica at 5 req/s, no outputs", wall_s, peak, data, "target <= 500 MiB"))


if __name__ == "__main__":
    main()
