"""A concurrency sweep as serving-engine benchmarks report it: per concurrency, output throughput, TTFT
and TPOT; per curve, the gain from one client to eight and the knee.

The knee is the concurrency with the most *power* (throughput over TPOT, Kleinrock's operating point):
past it, each extra client buys less throughput than it costs in per-token latency. With a TPOT that
grows linearly in the batch, ``t0 + a*c``, power ``c / (t0 + a*c)^2`` peaks where TPOT has doubled.

    python -m nfpsim.report.concurrency outputs/multirun/<date>/<time>   # after a --multirun sweep
"""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from nfpsim import io
from nfpsim.report import render


@dataclass(frozen=True)
class Point:
    clients: int
    throughput_tokens_per_s: float
    ttft_p50_s: float
    tpot_p50_s: float


def knee(points: list[Point]) -> Point:
    """The point of highest throughput / TPOT."""
    return max(points, key=lambda p: p.throughput_tokens_per_s / p.tpot_p50_s)


def gain(points: list[Point], low: int = 1, high: int = 8) -> float | None:
    """Throughput at ``high`` clients over throughput at ``low`` (None when either is missing)."""
    by_clients = {p.clients: p.throughput_tokens_per_s for p in points}
    if low in by_clients and high in by_clients:
        return by_clients[high] / by_clients[low]
    return None


def curves(runs: list[dict]) -> dict[tuple[str, str, str], list[Point]]:
    """(model, hardware, kernels) -> points sorted by clients, from ``simulate.json`` data of closed loops."""
    out: dict[tuple[str, str, str], list[Point]] = defaultdict(list)
    for data in runs:
        clients = data.get("config", {}).get("workload", {}).get("num_clients")
        if clients is None or not data.get("tpot_s", {}).get("p50"):
            continue
        out[(data["model"], data["hardware"], data["kernels"])].append(
            Point(int(clients), float(data["throughput_tokens_per_s"]), float(data["ttft_s"]["p50"]),
                  float(data["tpot_s"]["p50"])))
    return {key: sorted(points, key=lambda p: p.clients) for key, points in sorted(out.items())}


def rows(all_curves: dict[tuple[str, str, str], list[Point]]) -> list[dict]:
    out = []
    for (model, hardware, kernels), points in all_curves.items():
        best = knee(points)
        for p in points:
            out.append({"model": model, "hardware": hardware, "kernels": kernels, "clients": p.clients,
                        "throughput_tokens_per_s": round(p.throughput_tokens_per_s, 1),
                        "ttft_p50_ms": round(p.ttft_p50_s * 1e3, 2), "tpot_p50_ms": round(p.tpot_p50_s * 1e3, 3),
                        "knee": p is best})
    return out


def format_curves(all_curves: dict[tuple[str, str, str], list[Point]]) -> list[str]:
    lines = []
    for (model, hardware, kernels), points in all_curves.items():
        best, ratio = knee(points), gain(points)
        lines.append(f"{model} on {hardware} ({kernels} kernels): knee at {best.clients} clients; "
                     f"throughput 1 -> 8 clients x{ratio:.2f}" if ratio else
                     f"{model} on {hardware} ({kernels} kernels): knee at {best.clients} clients")
        lines.append(f"  {'clients':>7} {'tok/s':>9} {'TTFT p50 ms':>12} {'TPOT p50 ms':>12}")
        for p in points:
            mark = "  <- knee" if p is best else ""
            lines.append(f"  {p.clients:>7} {p.throughput_tokens_per_s:>9.1f} {p.ttft_p50_s * 1e3:>12.1f} "
                         f"{p.tpot_p50_s * 1e3:>12.2f}{mark}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m nfpsim.report.concurrency <multirun sweep directory>")
        return 2
    sweep = Path(args[0])
    runs = [run.data for run in render.multirun_jobs(sweep) if run.kind.name == "simulate"]
    found = curves(runs)
    if not found:
        print(f"{sweep}: no closed-loop simulate runs in it")
        return 2
    print("\n".join(format_curves(found)))
    table = rows(found)
    io.write_csv(sweep / "concurrency.csv", table, list(table[0]))
    print(f"\nwrote {sweep}/concurrency.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
