"""Scale a search out on Ray: N workers, each a Ray task running the ordinary search loop against one
shared Optuna RDB study (``search.storage``), then the driver writes the outputs from the study.

    nfpsim-search search.storage=postgresql+psycopg://user@db-host/nfpsim search.n_trials=400 \\
        ray_workers=16 ray_address=auto

Ray only places the workers; the study does the coordination, so what holds for workers started by hand
holds here: the study ends with exactly ``n_trials`` finished trials, a worker lost mid-trial has its
trial failed over by the heartbeat and re-run, and worker ``i`` samples with its own seed. Worker 0
enqueues the baseline. ``ray_address=null`` starts a private Ray on this machine (127.0.0.1), where the
default SQLite study in the run dir is shared too; on a cluster, use a database all nodes reach.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nfpsim.errors import ConfigError


def _worker(config: dict[str, Any], worker: int, run_dir: str) -> int:
    """One Ray task: the search loop as worker ``worker``; returns the trials it saw finished."""
    from nfpsim.search.search_settings import SearchSettings
    from nfpsim.search.study import run_search

    config = {**config, "search": {**config["search"], "worker": worker}}
    settings = SearchSettings.from_config(config)
    return run_search(settings, Path(run_dir), progress=False).finished()


def run_workers(config: dict[str, Any], n_workers: int, address: str | None, run_dir: Path) -> list[int]:
    """Run ``n_workers`` Ray tasks on the cluster at ``address`` (None: a local one on loopback) and
    wait for all of them; the config is the resolved search config, storage already set."""
    try:
        import ray
    except ImportError:
        raise ConfigError("ray_workers: Ray is not installed; pip install 'nfpsim[ray]'") from None
    started = not ray.is_initialized()
    if started:
        if address is None:
            ray.init(num_cpus=n_workers, include_dashboard=False, _node_ip_address="127.0.0.1",
                     log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_worker)
        return ray.get([task.remote(config, worker, str(run_dir)) for worker in range(n_workers)])
    finally:
        if started:
            ray.shutdown()
