"""Views of a simulation: the console summary, per-request rows, plots, the report section, sweep plots.

Everything here reads a :class:`~nfpsim.sim.simulator.SimResult` or the ``simulate.json`` written from it
and returns strings, rows or figures; :mod:`nfpsim.cli.simulate` writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nfpsim.report.render import Block, Heading, RunKind, SweepAxes, Table, Text, fmt, images, plot_sweep_series
from nfpsim.sim.metrics import request_latencies, throughput_over_time
from nfpsim.sim.simulator import SimResult

LATENCIES = (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("itl_s", "inter-token"), ("e2e_s", "end-to-end"))
PLOTS = {
    "latency_cdf.png": "CDFs of TTFT, TPOT and end-to-end latency per request",
    "throughput.png": "output tokens per second and decode batch over time",
    "tokens_per_forward.png": "tokens committed per sequence per decode forward",
    "width_nfp.png": "positions per sequence of sampled forwards against their near-free width (NFP)",
}

# ----------------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.1f}"


def format_summary(data: dict) -> str:
    """The console summary of one run (from its ``simulate.json`` data)."""
    lines = [
        f"simulate {data['model']} on {data['hardware']} · {data['kernels']} kernels · tp {data['tp']} · "
        f"{data['decoding']['description']}",
        f"workload: {data['workload']['description']}",
        f"finished {data['num_finished']}/{data['num_arrived']} requests in {data['sim_time_s']:.1f} s simulated, "
        f"{data['num_forwards']} forwards",
        f"throughput {data['throughput_tokens_per_s']:.0f} tok/s · goodput {data['goodput_requests_per_s']:.2f} req/s "
        f"({_percent(data['slo_attainment'])} of requests meet TTFT <= {data['slo']['ttft_s']:g} s and "
        f"TPOT <= {data['slo']['tpot_s']:g} s)",
        "",
        f"{'latency (ms)':<14}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}",
    ]
    for key, label in LATENCIES:
        d = data[key]
        lines.append(f"{label:<14}" + "".join(f"{_ms(d[q]):>10}" for q in ("mean", "p50", "p90", "p99")))
    lines += ["", "  ".join(f"{label} {value}" for label, value in _parallelism(data))]
    return "\n".join(lines)


def _parallelism(data: dict) -> list[tuple[str, str]]:
    figures = [
        ("tokens/forward", f"{fmt(data['tokens_per_forward_mean'])} (expected {fmt(data['expected_tokens_per_forward'])})"),
        ("batch", fmt(data["batch_size_mean"])),
        ("width", fmt(data["width_mean"])),
        ("t(M)/t(1)", fmt(data["forward_latency_ratio_mean"])),
    ]
    if data.get("near_free_fraction") is not None:
        figures.append(("near-free forwards", _percent(data["near_free_fraction"])))
    if data.get("prefix_hit_rate") is not None:
        figures.append(("prefix hits", f"{_percent(data['prefix_hit_rate'])} of requests, "
                                       f"{_percent(data['prefix_token_hit_rate'])} of prefix tokens"))
    figures += [("GPU busy", _percent(data["gpu_busy_fraction"])),
                ("KV", f"{_percent(data['kv_utilization_mean'])} (peak {_percent(data['kv_utilization_peak'])})"),
                ("preemptions", str(data["preemptions"]))]
    return figures


# ----------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------


def new_figure(width_in: float, height_in: float, columns: int = 1):
    """A figure and its axes, without pyplot's global state. No ``tight_layout``: files are saved with
    a tight bounding box anyway, and every layout pass measures every label again."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in))
    return figure, figure.subplots(1, columns, gridspec_kw={"wspace": 0.25} if columns > 1 else None)


def warm_up() -> None:
    """Draw a throwaway figure in memory: the first drawing loads fonts and fills caches."""
    import io

    figure, ax = new_figure(2, 2)
    ax.plot([1, 2], [1, 2], label="warm")
    ax.legend()
    ax.set_title("warm")
    figure.savefig(io.BytesIO(), format="png", bbox_inches="tight")


def plots(result: SimResult, title: str, names: tuple[str, ...] = tuple(PLOTS)) -> dict[str, object]:
    """The run's figures by file name (see :data:`PLOTS`), those in ``names``."""
    draw = {"latency_cdf.png": _latency_cdf, "throughput.png": _throughput,
            "tokens_per_forward.png": _tokens_per_forward, "width_nfp.png": _width_nfp}
    return {name: draw[name](result, title) for name in names}


# Plotted series are thinned to about this many points: a PNG cannot show more, and drawing them costs.
MAX_POINTS = 1000


def _thin(*columns: np.ndarray) -> tuple[np.ndarray, ...]:
    stride = max(1, len(columns[0]) // MAX_POINTS)
    return tuple(c[::stride] for c in columns)


def _latency_cdf(result: SimResult, title: str):
    lat = request_latencies(result.requests)
    fig, ax = new_figure(8, 3.4)
    for key, label in (("tpot_s", "TPOT"), ("ttft_s", "TTFT"), ("e2e_s", "end-to-end")):
        values = lat[key][~np.isnan(lat[key])]
        if len(values):
            levels = np.linspace(0.0, 1.0, min(len(values), MAX_POINTS))
            ax.plot(np.quantile(values, levels), levels, label=label)
    _log_axis(ax.xaxis)
    ax.set_xlabel("latency per request (s)")
    ax.set_ylabel("fraction of requests")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


def _log_axis(axis, base: float = 10) -> None:
    """A log axis labelled with plain numbers and no minor ticks (mathtext labels and the many minor
    ticks of a log axis are most of the time it takes to draw)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    axis.axes.set_xscale("log", base=base) if axis.axis_name == "x" else axis.axes.set_yscale("log", base=base)
    if base == 10:  # 1-2-5 steps label even a range narrower than a decade
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_locator(NullLocator())


def _throughput(result: SimResult, title: str):
    fwd = result.forwards
    centres, rate = throughput_over_time(fwd, result.summary["sim_time_s"])
    fig, ax = new_figure(8, 3.4)
    ax.plot(centres, rate, label="output tokens/s")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("output tokens/s")
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(*_thin(fwd["start_s"], fwd["num_decode"]), color="C1", linewidth=0.6, alpha=0.7)
    twin.set_ylabel("decode batch", color="C1")
    ax.set_title(title, fontsize=10)
    return fig


def _tokens_per_forward(result: SimResult, title: str):
    fwd = result.forwards
    decode = fwd["num_decode"] > 0
    per_row = fwd["committed_tokens"][decode] / fwd["num_decode"][decode]
    fig, ax = new_figure(8, 3.4)
    if len(per_row):
        counts, edges = np.histogram(per_row, bins=min(60, max(10, len(np.unique(per_row)))))
        ax.stairs(counts, edges, fill=True, color="C2")  # one artist, not a patch per bin
    expected = result.summary["expected_tokens_per_forward"]
    ax.axvline(expected, color="black", linestyle="--", label=f"expected {expected:.2f}")
    mean = result.summary["tokens_per_forward_mean"]
    if mean is not None:
        ax.axvline(mean, color="C3", label=f"mean {mean:.2f}")
    ax.set_xlabel("tokens committed per sequence in a decode forward (mean over its batch)")
    ax.set_ylabel("forwards")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


def _width_nfp(result: SimResult, title: str):
    fwd, nf = result.forwards, result.near_free
    decode = fwd["num_decode"] > 0
    fig, (ax, ratio_ax) = new_figure(12, 3.4, columns=2)
    if len(nf["start_s"]):
        ax.step(nf["start_s"], nf["nfp"], where="post", label="near-free width (NFP) of the batch")
        ax.step(nf["start_s"], nf["width"], where="post", label="positions run")
        _log_axis(ax.yaxis, base=2)
        ax.legend(fontsize=8)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("positions per sequence")
    ax.grid(alpha=0.3)
    ratio = fwd["forward_s"][decode] / fwd["one_position_s"][decode]
    ratio_ax.plot(*_thin(fwd["start_s"][decode], ratio), ".", markersize=2)
    ratio_ax.set_xlabel("simulated time (s)")
    ratio_ax.set_ylabel("forward latency / one-position latency")
    ratio_ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------------
# Report section and sweeps
# ----------------------------------------------------------------------------------------------------


def key_figures(data: dict) -> dict[str, Any]:
    """What a listing or a sweep table shows of a run."""
    return {
        "model": data.get("model"), "hardware": data.get("hardware"), "kernels": data.get("kernels"),
        "latency": data.get("latency"), "eps": data.get("eps"),
        "workload": data.get("workload", {}).get("description"),
        "decoding": data.get("decoding", {}).get("description"),
        "tok/s": data.get("throughput_tokens_per_s"), "goodput req/s": data.get("goodput_requests_per_s"),
        "TTFT p50 s": data.get("ttft_s", {}).get("p50"), "TPOT p50 s": data.get("tpot_s", {}).get("p50"),
        "TPOT p99 s": data.get("tpot_s", {}).get("p99"), "tokens/forward": data.get("tokens_per_forward_mean"),
        "t(M)/t(1)": data.get("forward_latency_ratio_mean"), "finished": data.get("num_finished"),
    }


def section(path: Path, data: dict) -> list[Block]:
    engine = data["engine"]
    blocks: list[Block] = [
        Text(f"{data['model']} on {data['hardware']} with {data['kernels']} kernels, tp {data['tp']}; "
             f"{data['decoding']['description']}; {data['workload']['description']}; continuous batching up to "
             f"{engine['max_num_seqs']} sequences and {engine['max_num_batched_tokens']} tokens per forward, "
             f"KV cache {data['kv_capacity_tokens']} tokens; seed {data['seed']}."),
        Heading("Key figures", 3),
        Table(("figure", "value"), (
            ("requests finished / arrived", f"{data['num_finished']} / {data['num_arrived']}"),
            ("simulated time (s)", data["sim_time_s"]),
            ("throughput (output tokens/s)", data["throughput_tokens_per_s"]),
            ("goodput (requests/s)", data["goodput_requests_per_s"]),
            ("goodput (output tokens/s)", data["goodput_tokens_per_s"]),
            (f"SLO attainment (TTFT <= {data['slo']['ttft_s']:g} s, TPOT <= {data['slo']['tpot_s']:g} s)",
             _percent(data["slo_attainment"])),
            ("forwards", data["num_forwards"]),
            *_parallelism(data),
        )),
        Heading("Latency (s)", 3),
        Table(("latency", "mean", "p50", "p90", "p99", "max"),
              tuple((label, *(data[key][q] for q in ("mean", "p50", "p90", "p99", "max"))) for key, label in LATENCIES)),
    ]
    if "pools" in data:
        blocks += pool_blocks(data)
    return blocks + images(path, PLOTS)


POOL_COLUMNS = (("role", "role"), ("replicas", "replicas"), ("hardware", "hardware"), ("tp", "tp"),
                ("decoding", "decoding"), ("gpu_busy_fraction", "GPU busy"), ("batch_size_mean", "batch"),
                ("tokens_per_forward_mean", "tokens/forward"), ("kv_utilization_mean", "KV use"),
                ("preemptions", "preemptions"), ("kv_transfer_s_mean", "KV transfer s"),
                ("bubble_fraction_mean", "PP bubble"))


def pool_blocks(data: dict) -> list[Block]:
    """The pools of a cluster run, one row each."""
    cluster = data["cluster"]
    return [Heading("Pools", 3),
            Text(f"{cluster['num_replicas']} replicas, router {cluster['router']}"
                 f"{', disaggregated prefill/decode' if cluster['disaggregated'] else ''}."),
            Table(("pool", *(label for _, label in POOL_COLUMNS)),
                  tuple((name, *(pool.get(key) for key, _ in POOL_COLUMNS)) for name, pool in data["pools"].items()))]


def format_pools(data: dict) -> str:
    """The console lines of a cluster run's pools."""
    lines = ["", f"{'pool':<10}{'role':<9}{'replicas':>9}{'tp':>4}{'busy':>7}{'batch':>8}{'tok/fwd':>9}  decoding"]
    for name, p in data["pools"].items():
        lines.append(f"{name:<10}{p['role']:<9}{p['replicas']:>9}{p['tp']:>4}{_percent(p['gpu_busy_fraction']):>7}"
                     f"{fmt(p['batch_size_mean']):>8}{fmt(p['tokens_per_forward_mean']):>9}  {p['decoding']}")
    return "\n".join(lines)


KIND = RunKind("simulate", "simulate.json", key_figures, section)

# (key, percentile) of the figures a sweep summary shows per job
SWEEP_FIGURES = (("throughput_tokens_per_s", None), ("goodput_tokens_per_s", None), ("goodput_requests_per_s", None),
                 ("ttft_s", "p50"), ("ttft_s", "p99"), ("tpot_s", "p50"), ("tpot_s", "p99"),
                 ("tokens_per_forward_mean", None), ("forward_latency_ratio_mean", None), ("near_free_fraction", None),
                 ("num_finished", None))


def sweep_rows(labels: list[str], settings: list[dict], runs: list[dict], jobs: list[str]) -> list[dict[str, Any]]:
    """One CSV row per job: job, each varying setting, the sweep figures."""
    rows = []
    for job, label, setting, data in zip(jobs, labels, settings, runs):
        row: dict[str, Any] = {"job": job, "settings": label, **setting}
        for key, sub in SWEEP_FIGURES:
            value = data.get(key)
            row[f"{key}.{sub}" if sub else key] = value.get(sub) if sub and isinstance(value, dict) else value
        rows.append(row)
    return rows


def sweep_plot(rows: list[dict[str, Any]], settings: list[dict], title: str):
    """Throughput, TTFT and TPOT across the sweep, each axis from zero (a 0.5% change looks like one);
    lines join only jobs that differ in the one swept number (see :class:`SweepAxes`)."""
    axes = SweepAxes.of(settings, [r["settings"] for r in rows])
    fig, panels = new_figure(15, 3.8, columns=3)
    metrics = ((panels[0], "tokens/s", (("throughput_tokens_per_s", "throughput", "o"),
                                        ("goodput_tokens_per_s", "goodput (requests within SLO)", "s"))),
               (panels[1], "TTFT (s)", (("ttft_s.p50", "p50", "o"), ("ttft_s.p99", "p99", "s"))),
               (panels[2], "TPOT (s)", (("tpot_s.p50", "p50", "o"), ("tpot_s.p99", "p99", "s"))))
    for ax, ylabel, series in metrics:
        plot_sweep_series(ax, axes, rows, series)
        ax.set_ylabel(ylabel)
    fig.suptitle(title, fontsize=10)
    return fig
