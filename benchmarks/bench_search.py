"""Trials per minute of each search preset on this machine (in-process, SQLite in a temp dir).

Run: python benchmarks/bench_search.py [n_trials]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from nfpsim.config import CONF_DIR, available
from nfpsim.search.settings import SearchSettings
from nfpsim.search.study import outcome, run_search


def main() -> None:
    n_trials = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    print(f"{'preset':<32}{'trials':>7}{'seconds':>9}{'trials/min':>12}{'pruned':>8}{'feasible':>9}")
    for preset in available("search"):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="search", overrides=[f"search={preset}", f"search.n_trials={n_trials}"])
        settings = SearchSettings.from_config(cfg)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            study = run_search(settings, Path(tmp), progress=False)
            seconds = time.perf_counter() - start
            data = outcome(study, settings)
        print(f"{preset:<32}{data['n_trials']:>7}{seconds:>9.1f}{60 * data['n_trials'] / seconds:>12.0f}"
              f"{data['n_pruned']:>8}{data['n_feasible']:>9}")


if __name__ == "__main__":
    main()
