"""Search throughput on this machine: analytic and simulated trials per minute (targets: >= 300 and >= 60).

- analytic: trials decided without a simulation (sample a shape, check budgets, sharding and memory),
  the cost of every trial that breaks a budget; measured on random MoE samples with the simulation
  left out;
- simulated: whole trials of each preset as the search runs them (in process, SQLite in a temp dir),
  budget-breakers included, so the figure is what a user sees.

Both are printed per wall-clock minute and per CPU minute of this process: on a shared machine the
second is what the search costs, the first what it got.

Run: python benchmarks/bench_search.py [n_trials]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # measure this checkout, not an installed nfpsim

import optuna
from hydra import compose, initialize_config_dir

from nfpsim.config import CONF_DIR, available
from nfpsim.latency import make_latency_model
from nfpsim.search.objective import decoding_for, memory_violation, sharding_error
from nfpsim.search.outcome import outcome
from nfpsim.search.search_settings import SearchSettings
from nfpsim.search.space import sample
from nfpsim.search.study import run_search

ANALYTIC_TARGET, SIMULATED_TARGET = 300, 60


def settings_for(preset: str, n_trials: int) -> SearchSettings:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="search", overrides=[f"search={preset}", f"search.n_trials={n_trials}"])
    return SearchSettings.from_config(cfg)


def analytic_rate(settings: SearchSettings, n: int) -> float:
    """Trials per minute of the checks that decide a trial before any simulation."""
    problem = settings.problem
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), storage=None)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        trial = study.ask()
        candidate = sample(trial, problem.space, problem.template, problem.budget)
        decoding = decoding_for(problem, candidate.method, candidate.method_size, candidate.model)
        problem.budget.violations(*candidate.model.param_counts())
        sharding_error(candidate, decoding) or memory_violation(problem, candidate, decoding)
        study.tell(trial, 0.0)
    return 60 * n / (time.perf_counter() - start), 60 * n / (time.process_time() - cpu)


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    n_trials = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    moe = settings_for("moe_30b_a3b_h100_speculative", n_trials)
    make_latency_model(moe.latency, moe.problem.hardware, moe.problem.kernels)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    wall, cpu = analytic_rate(moe, 300)
    print(f"analytic trials/min (moe preset, 300 samples): {wall:.0f} wall, {cpu:.0f} CPU "
          f"(target >= {ANALYTIC_TARGET})")
    print(f"{'preset':<32}{'trials':>7}{'simulated':>10}{'seconds':>9}{'CPU s':>7}{'sim/min':>9}{'sim/CPU min':>12}")
    for preset in available("search"):
        settings = settings_for(preset, n_trials)
        with tempfile.TemporaryDirectory() as tmp:
            start, cpu = time.perf_counter(), time.process_time()
            run = run_search(settings, Path(tmp), progress=False)
            seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
            data = outcome(run.study, settings, run.latency)
        simulated = data["n_simulated"]
        print(f"{preset:<32}{data['n_trials']:>7}{simulated:>10}{seconds:>9.1f}{cpu_s:>7.1f}"
              f"{60 * simulated / seconds:>9.0f}{60 * simulated / cpu_s:>12.0f}  (target >= {SIMULATED_TARGET})")


if __name__ == "__main__":
    main()
