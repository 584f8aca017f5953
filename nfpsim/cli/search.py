"""``nfpsim-search``: Optuna co-design search under the near-free budget; writes search.json and plots.

Ctrl-C stops the search after the trial in flight (a second Ctrl-C at once, failing that trial):
search.json, trials.csv and the plots are written from the trials that finished, one line says how to
resume, and the exit status is 130.
"""

from __future__ import annotations

import sys
from pathlib import Path

from nfpsim import io
from nfpsim.cli.common import config_data, hydra_app
from nfpsim.search.search_settings import SearchSettings

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


def task(cfg, run_dir: Path) -> dict:
    settings = SearchSettings.from_config(cfg)
    run = _run(cfg, settings, run_dir)
    try:
        data = write_outputs(cfg, settings, run, run_dir)
    except KeyboardInterrupt:  # a second Ctrl-C while writing: stop without a traceback
        sys.exit(EXIT_INTERRUPTED)
    if run.interrupted:
        done = run.finished()
        print(f"interrupted after {done} of {settings.n_trials} trials; rerun the same command to resume "
              f"(it runs the remaining {settings.n_trials - done})", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    return data


def _run(cfg, settings: SearchSettings, run_dir: Path):
    """The search in this process, or (``ray_workers`` > 0) in Ray tasks, read back from the study."""
    from nfpsim.config import ConfigReader
    from nfpsim.search.study import SearchRun, open_existing, run_search

    root = ConfigReader(cfg, "")
    workers = root.int("ray_workers", low=0, high=10_000, default=0)
    if not workers:
        return run_search(settings, run_dir)
    from nfpsim.search.ray_workers import run_workers

    config = config_data(cfg)
    config.pop("hydra", None)
    try:
        run_workers(config, workers, root.raw("ray_address", None), run_dir)
    except KeyboardInterrupt:
        study, latency = open_existing(settings, run_dir)
        return SearchRun(study, latency, interrupted=True)
    study, latency = open_existing(settings, run_dir)
    return SearchRun(study, latency)


def write_outputs(cfg, settings: SearchSettings, run, run_dir: Path) -> dict:
    from nfpsim.report import render
    from nfpsim.report import search as search_report
    from nfpsim.search.outcome import outcome

    data = outcome(run.study, settings, run.latency)
    data["interrupted"] = run.interrupted
    data["config"] = config_data(cfg)
    print(search_report.format_summary(data))
    io.write_csv(run_dir / "trials.csv", *search_report.trial_rows(data))
    if settings.plot:
        for name, figure in search_report.plots(data, run.study).items():
            io.save_figure(run_dir / name, figure)
    report = render.Report(f"search: {run_dir.name}", tuple(search_report.section(run_dir, data)), "run")
    io.write_text(run_dir / "report.md", report.markdown(run_dir))
    io.write_json(run_dir / "search.json", data)  # last: its presence marks a written run
    print(f"\nwrote {run_dir}/search.json")
    return data


main = hydra_app("search", task, validate=SearchSettings.from_config)

if __name__ == "__main__":
    main()
