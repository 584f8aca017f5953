"""``nfpsim-simulate``: serve a workload on one replica with a decoding method; metrics, plots, report.

Writes into the run directory ``requests.csv``, the plots, ``trace.json`` (with ``output.chrome_trace``),
``report.md`` and, last, ``simulate.json``. After ``--multirun`` the sweep directory gets
``summary.csv``, ``summary.png``, ``report.md`` and ``report.html`` across the jobs.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path

from nfpsim import io
from nfpsim.cli.common import config_data, hydra_app
from nfpsim.latency.remembered import remember_forward_times
from nfpsim.report import render
from nfpsim.report import simulate as sim_report
from nfpsim.sim import SimResult, simulate
from nfpsim.sim.cluster import ClusterResult, simulate_cluster
from nfpsim.sim.simulate_settings import SimulateSettings


def run(settings: SimulateSettings, latency=None, requests_path: Path | None = None) -> SimResult:
    """The simulation alone: no printing; the per-request log goes to ``requests_path`` if given."""
    observe = replace(settings.observe, requests_path=str(requests_path)) if requests_path else settings.observe
    return simulate(settings.target, latency or settings.latency_model(), settings.workload, settings.decoding,
                    settings.engine_spec, settings.seed, slo=settings.slo, observe=observe)


def result_data(settings: SimulateSettings, result: SimResult, latency) -> dict:
    """``simulate.json`` without the config: what was simulated, then the figures."""
    specs, decoding, engine = settings.specs, settings.decoding, settings.engine_spec
    return {
        "model": specs.model.name,
        "hardware": specs.hardware.name,
        "kernels": specs.kernels.name,
        "latency": latency.kind,  # what "auto" resolved to
        "seed": settings.seed,
        "eps": settings.eps,
        "decoding": {"name": decoding.name, "method": decoding.method, "width": decoding.width,
                     "near_free": decoding.near_free, "description": decoding.describe()},
        "workload": {"arrival": settings.workload.arrival, "num_requests": settings.workload.num_requests,
                     "description": settings.workload.describe()},
        "engine": {"max_num_seqs": engine.max_num_seqs, "max_num_batched_tokens": engine.max_num_batched_tokens,
                   "chunked_prefill": engine.chunked_prefill, "block_size_tokens": engine.block_size_tokens,
                   "context_bucket_tokens": engine.context_bucket_tokens},
        "slo": {"ttft_s": settings.slo.ttft_s, "tpot_s": settings.slo.tpot_s},
        **result.summary,
    }


class PlotWorker:
    """Renders a run's plots in a forked process, which imports matplotlib and draws a first figure (half
    a second) while the simulation runs; once the results come, it forks again (matplotlib warm in both)
    and each process draws half of the figures, on two cores where there are. The run directory is
    complete once :meth:`wait` returns. The worker runs at the simulation's priority: the command waits
    for both, and a lowered priority only made it wait longer for the plots on a machine shared with
    other work."""

    def __init__(self, run_dir: Path):
        import multiprocessing  # only a run with plots needs it

        context = multiprocessing.get_context("fork")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_render_plots, args=(child, run_dir), daemon=True)
        self._process.start()

    def render(self, result: SimResult, title: str) -> None:
        self._conn.send((result, title))

    def wait(self) -> None:
        self._process.join()
        if self._process.exitcode != 0:
            raise RuntimeError(f"plotting failed (exit status {self._process.exitcode})")

    def cancel(self) -> None:
        """Stop the worker: at once if it has a job (Ctrl-C), else once it has warmed up."""
        if self._process.is_alive():
            try:
                self._conn.send(None)
            except OSError:
                pass
            self._process.join(timeout=1.0)
            self._process.terminate()
        self._process.join()


def _render_plots(conn, run_dir: Path) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops this worker
    sim_report.warm_up()
    job = conn.recv()
    if job is None:
        return
    names = tuple(sim_report.PLOTS)
    half = len(names) // 2
    helper = os.fork()
    if helper == 0:  # the helper draws the second half and leaves without the worker's clean-up
        status = 1
        try:
            _save_plots(run_dir, sim_report.plots(*job, names=names[half:]))
            status = 0
        finally:
            os._exit(status)
    def stop(*_) -> None:  # stopped (Ctrl-C in the parent), the worker stops its helper too
        try:
            os.kill(helper, signal.SIGTERM)
        except ProcessLookupError:
            pass
        os._exit(1)

    signal.signal(signal.SIGTERM, stop)
    _save_plots(run_dir, sim_report.plots(*job, names=names[:half]))
    _, status = os.waitpid(helper, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"plotting {', '.join(names[half:])} failed")


def _save_plots(run_dir: Path, figures: dict[str, object]) -> None:
    for name, figure in figures.items():
        io.save_figure(run_dir / name, figure)


def write_run(cfg, run_dir: Path, data: dict) -> None:
    """``report.md``, then ``simulate.json`` (last: its presence marks a complete run)."""
    data["config"] = config_data(cfg)
    report = render.Report(f"simulate: {run_dir.name}", tuple(sim_report.section(run_dir, data)), "run")
    io.write_text(run_dir / "report.md", report.markdown(run_dir))
    io.write_json(run_dir / "simulate.json", data)
    print(f"\nwrote {run_dir}/simulate.json")


def cluster_task(cfg, settings: SimulateSettings, run_dir: Path) -> ClusterResult:
    """A cluster run: the summary, per-pool figures, requests.csv, report and simulate.json (no plots)."""
    start = time.perf_counter()
    remembered: dict[int, object] = {}  # pools on one GPU share their latency model, and its times
    latencies = {name: remembered.setdefault(id(latency), remember_forward_times(latency))
                 for name, latency in settings.pool_latency_models().items()}
    observe = replace(settings.observe, requests_path=str(run_dir / "requests.csv")) if settings.requests_csv \
        else settings.observe
    result = simulate_cluster(settings.cluster, latencies, settings.workload, settings.seed, slo=settings.slo,
                              observe=observe)
    for latency in remembered.values():
        latency.save()
    data = result_data(settings, SimResult(result.summary, {}, {}, {}, settings.kv), next(iter(latencies.values())))
    cluster = settings.cluster
    data.update(hardware=" + ".join(dict.fromkeys(p.hardware.name for p in cluster.pools)),
                tp=" / ".join(f"{p.name} {result.pools[p.name]['tp']}" for p in cluster.pools),
                kv_capacity_tokens=min(plan.capacity_tokens for plan in result.kv.values()),
                cluster={"router": cluster.router, "kv_link_gb_per_s": cluster.kv_link_gb_per_s,
                         "disaggregated": cluster.disaggregated, "num_replicas": cluster.num_replicas},
                pools=result.pools, wall_time_s=time.perf_counter() - start)
    print(sim_report.format_summary(data))
    print(sim_report.format_pools(data))
    write_run(cfg, run_dir, data)
    return result


def task(cfg, run_dir: Path) -> SimResult | ClusterResult:
    settings = SimulateSettings.from_config(cfg)
    if settings.cluster is not None:
        return cluster_task(cfg, settings, run_dir)
    worker = PlotWorker(run_dir) if settings.plot else None
    try:
        return _simulate_and_write(cfg, settings, run_dir, worker)
    except BaseException:  # Ctrl-C or an error: no plot worker outlives the run
        if worker is not None:
            worker.cancel()
        raise


def _simulate_and_write(cfg, settings: SimulateSettings, run_dir: Path, worker: PlotWorker | None) -> SimResult:
    start = time.perf_counter()
    latency = remember_forward_times(settings.latency_model())
    result = run(settings, latency, run_dir / "requests.csv" if settings.requests_csv else None)
    latency.save()
    data = result_data(settings, result, latency)
    data["wall_time_s"] = time.perf_counter() - start
    if worker is not None:
        worker.render(result, f"{data['model']} on {data['hardware']}, {data['decoding']['description']}")
    print(sim_report.format_summary(data))
    if settings.chrome_trace:
        from nfpsim.sim.trace import chrome_trace

        io.write_json(run_dir / "trace.json", chrome_trace(result.traced, latency, settings.specs.model,
                                                           settings.decoding.proposer_model))
    if worker is not None:
        worker.wait()
    write_run(cfg, run_dir, data)
    return result


main = hydra_app("simulate", task, validate=SimulateSettings.from_config, sweep_summary=True, compose_cache=True)

if __name__ == "__main__":
    main()
