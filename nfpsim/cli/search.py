"""``nfpsim-search``: Optuna co-design search under the near-free budget; writes search.json and plots."""

from __future__ import annotations

from pathlib import Path

from nfpsim import io
from nfpsim.cli.common import hydra_app
from nfpsim.search.settings import SearchSettings
from nfpsim.search.study import outcome, run_search


def task(cfg, run_dir: Path) -> dict:
    from omegaconf import OmegaConf

    from nfpsim.report import render
    from nfpsim.report import search as search_report

    settings = SearchSettings.from_config(cfg)
    study = run_search(settings, run_dir)
    data = outcome(study, settings)
    data["config"] = OmegaConf.to_container(cfg, resolve=True)
    print(search_report.format_summary(data))
    io.write_csv(run_dir / "trials.csv", *search_report.trial_rows(data))
    if settings.plot:
        for name, figure in search_report.plots(data, study).items():
            io.save_figure(run_dir / name, figure)
    report = render.Report(f"search: {run_dir.name}", tuple(search_report.section(run_dir, data)), "run")
    io.write_text(run_dir / "report.md", report.markdown(run_dir))
    io.write_json(run_dir / "search.json", data)  # last: its presence marks a complete run
    print(f"\nwrote {run_dir}/search.json")
    return data


main = hydra_app("search", task, validate=SearchSettings.from_config)

if __name__ == "__main__":
    main()
