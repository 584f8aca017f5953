"""How long capturing a whole forward takes, and that it never allocates its weights.

Captures nfpsim's vendor reference forward of Llama-3-8B (the one nfpsim-validate runs, built on
``meta``) and the eager example decoder (examples/llama_eager.py) at B=1, L=4096, M=1..512; prints per
point the build and capture seconds, the kernels launched, and at the end the peak RSS of the process.
Targets: capture <= 2 s per point, peak RSS < 1 GB (16 GB of bf16 weights never materialise).
Run: python benchmarks/bench_capture.py
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/

import nfpsim  # noqa: E402
from examples import llama_eager, reference_forward  # noqa: E402

POSITIONS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CONTEXT = 4096


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench(name: str, build) -> float:
    latency = nfpsim.latency_model(hardware="h200", kernels="vendor")
    print(f"\n{name}: B=1, L={CONTEXT}")
    print(f"{'M':>5} {'build s':>8} {'capture s':>10} {'kernels':>8} {'priced ms':>10}")
    worst = 0.0
    for m in POSITIONS:
        start = time.perf_counter()
        fn, args = build(m)
        built = time.perf_counter()
        graph = nfpsim.capture(fn, *args)
        done = time.perf_counter()
        worst = max(worst, done - built)
        print(f"{m:>5} {built - start:>8.2f} {done - built:>10.2f} {graph.num_kernels:>8} "
              f"{graph.time(latency) * 1e3:>10.3f}")
    return worst


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    start = time.perf_counter()
    reference_forward.builder(1, 1, CONTEXT)
    llama_eager.builder(1, 1, CONTEXT)
    print(f"both models built on meta in {time.perf_counter() - start:.2f} s (once; builders cache them)")
    worst_reference = bench("nfpsim vendor reference forward, Llama-3-8B",
                            lambda m: reference_forward.builder(1, m, CONTEXT))
    worst_eager = bench("eager example decoder (examples/llama_eager.py), Llama-3-8B",
                        lambda m: llama_eager.builder(1, m, CONTEXT))
    print(f"\nslowest capture per point: reference {worst_reference:.2f} s, eager {worst_eager:.2f} s (target <= 2 s)")
    print(f"peak RSS: {peak_rss_mb():.0f} MB (target < 1024 MB; the bf16 weights alone would be ~16 GB)")


if __name__ == "__main__":
    main()
