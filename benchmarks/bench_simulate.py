"""Wall time and peak memory of ``nfpsim-simulate`` on the workload Vidur was timed on here.

Llama-3-8B on one A100 80GB (TP 1), at most 128 sequences and 4,096 tokens per forward, Poisson arrivals
at 20 requests/s, prompt 512 and output 256 tokens, 10,000 requests; autoregressive and speculative
(k = 4, Llama-3.2-1B draft). Vidur took 13.7 s of wall time for it on this machine (after a first run of
29 minutes training its predictors); the target is the whole command, start-up included, 10x faster
(about 1.4 s), with no training step and no GPU.

Each command runs as a user runs it (a fresh process: Python, Hydra, the simulation, every output file),
with its default outputs and once more without plots. Wall time is the median of ``--repeats`` runs;
peak memory is the largest resident set of the process and its plot worker.

Run: python benchmarks/bench_simulate.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VIDUR_WALL_S = 13.7
TARGET_S = VIDUR_WALL_S / 10
WORKLOAD = ["model=llama3_8b", "hardware=a100_80g", "kernels=vendor", "engine.tp=1", "engine.max_num_seqs=128",
            "engine.max_num_batched_tokens=4096", "workload=poisson", "workload.rate_per_s=20",
            "workload.prompt_tokens.value=512", "workload.output_tokens.value=256", "workload.num_requests=10000",
            "seed=0"]
DECODINGS = {"autoregressive": ["decoding=ar"], "speculative k=4": ["decoding=speculative", "decoding.k=4"]}
OUTPUTS = {"all outputs": [], "no plots": ["output.plot=false"]}


def command() -> list[str]:
    exe = shutil.which("nfpsim-simulate")
    return [exe] if exe else [sys.executable, "-m", "nfpsim.cli.simulate"]


def timed_run(args: list[str], run_dir: Path) -> tuple[float, float, dict]:
    """``(wall s, peak resident MiB, simulate.json)`` of one command."""
    start = time.perf_counter()
    process = subprocess.Popen(command() + args + [f"hydra.run.dir={run_dir}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env={**os.environ, "MPLBACKEND": "Agg"})
    _, status, usage = os.wait4(process.pid, 0)
    wall_s = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(args)}\n{process.stderr.read().decode()}")
    process.stderr.close()
    return wall_s, usage.ru_maxrss / 1024, json.loads((run_dir / "simulate.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    print("nfpsim-simulate, llama3_8b on a100_80g, TP 1, <=128 seqs, <=4096 tokens/forward, Poisson 20 req/s, "
          "prompt 512, output 256, 10000 requests")
    print(f"median of {repeats} runs; Vidur: {VIDUR_WALL_S} s; target <= {TARGET_S:.2f} s\n")
    print(f"{'decoding':<17}{'outputs':<13}{'wall s':>8}{'sim s':>8}{'peak MiB':>10}{'req/s':>9}{'tok/s':>11}"
          f"{'forwards':>10}{'vs Vidur':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for decoding, decoding_args in DECODINGS.items():
            for outputs, output_args in OUTPUTS.items():
                runs = [timed_run(WORKLOAD + decoding_args + output_args, Path(tmp) / f"{decoding}-{outputs}-{i}".replace(" ", "_").replace("=", ""))
                        for i in range(repeats)]
                wall_s = statistics.median(r[0] for r in runs)
                peak_mib = max(r[1] for r in runs)
                data = runs[0][2]
                sim_s = statistics.median(r[2]["wall_time_s"] for r in runs)
                print(f"{decoding:<17}{outputs:<13}{wall_s:>8.2f}{sim_s:>8.2f}{peak_mib:>10.0f}"
                      f"{data['num_finished'] / wall_s:>9.0f}{data['output_tokens'] / wall_s:>11.0f}"
                      f"{data['num_forwards']:>10}{VIDUR_WALL_S / wall_s:>9.1f}x")
    print("\nwall s: the whole command (start-up, simulation, every file); sim s: the simulation alone, in process;"
          "\nreq/s, tok/s: simulated requests and output tokens per second of wall time.")


if __name__ == "__main__":
    main()
