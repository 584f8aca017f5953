"""How long one full NFP sweep takes: every module and op, 64 position points, cold caches.

The co-design search calls this thousands of times, so it has to stay well under a second.
Run: python benchmarks/bench_nfp.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from nfpsim.config import available, load_hardware, load_kernels, load_model
from nfpsim.latency import AnalyticLatencyModel
from nfpsim.nfp import analyze



def geometric_grid(points: int, top: int) -> tuple[int, ...]:
    """``points`` distinct integers from 1 to ``top``, spaced geometrically."""
    for k in range(points, 10 * points):
        grid = np.unique(np.geomspace(1, top, k).round().astype(int))
        if len(grid) >= points:
            return tuple(int(m) for m in grid[: points - 1]) + (top,)
    raise ValueError("cannot place that many points")


def time_sweep(model, hardware, kernels, positions, repeats=5) -> float:
    times = []
    for _ in range(repeats):
        latency = AnalyticLatencyModel(hardware, kernels)  # fresh: no cached op costs (the routing
        # statistics cache is process-wide, as in a search)
        start = time.perf_counter()
        analyze(latency, model, batch=8, context=4096, eps=0.1, positions=positions)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    hardware = load_hardware("h100_sxm")
    grid = geometric_grid(64, 512)
    print(f"NFP sweep, batch 8, context 4096, {len(grid)} explicit positions 1..{grid[-1]} "
          f"(and the tile-aware grid with bisection), median of 5 cold runs")
    print(f"{'model':<18}{'kernels':<9}{'64 points':>12}{'auto grid':>12}")
    worst = 0.0
    for name in available("model"):
        model = load_model(name)
        for preset in ("triton", "vendor"):
            kernels = load_kernels(preset)
            fixed = time_sweep(model, hardware, kernels, grid)
            auto = time_sweep(model, hardware, kernels, None)
            worst = max(worst, fixed, auto)
            print(f"{name:<18}{preset:<9}{fixed * 1e3:>10.1f}ms{auto * 1e3:>10.1f}ms")
    print(f"slowest full sweep: {worst * 1e3:.1f} ms (target: well under 1000 ms)")


if __name__ == "__main__":
    main()
