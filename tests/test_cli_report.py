"""``nfpsim-report``: a run, a sweep, or every run below a directory, as markdown and one HTML page."""

import json
import os
import subprocess
import sys

import pytest

REPORT = [sys.executable, "-m", "nfpsim.cli.report"]
ENV = {**os.environ, "MPLBACKEND": "Agg"}


def cli(module, args, cwd):
    return subprocess.run([sys.executable, "-m", module] + args, cwd=cwd, capture_output=True, text=True, env=ENV,
                          timeout=180)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """An outputs/ tree: a simulate run, an nfp run, an nfp sweep and a run of a kind nobody registered."""
    root = tmp_path_factory.mktemp("work")
    out = root / "outputs"
    steps = [
        ("nfpsim.cli.simulate", ["workload.num_requests=20", f"hydra.run.dir={out}/simulate/run1"]),
        ("nfpsim.cli.nfp", ["plot=false", f"hydra.run.dir={out}/nfp/run2"]),
        ("nfpsim.cli.nfp", ["--multirun", "batch=1,8", "plot=false", f"hydra.sweep.dir={out}/nfp/multirun/s1"]),
    ]
    for module, args in steps:
        result = cli(module, args, root)
        assert result.returncode == 0, result.stderr
    search = out / "search" / "run3"
    search.mkdir(parents=True)
    (search / "search.json").write_text(json.dumps({"best_value": 1.5, "num_trials": 40, "study": "s"}))
    (search / "pareto.png").write_bytes((out / "simulate" / "run1" / "throughput.png").read_bytes())
    return out


def report(path, cwd):
    return subprocess.run(REPORT + [str(path)], cwd=cwd, capture_output=True, text=True, env=ENV, timeout=120)


def test_a_simulate_run_gets_markdown_and_a_self_contained_page(outputs):
    run_dir = outputs / "simulate" / "run1"
    (run_dir / "report.md").unlink()
    result = report(run_dir, outputs)
    assert result.returncode == 0, result.stderr
    markdown = (run_dir / "report.md").read_text()
    assert "Key figures" in markdown and "TTFT" in markdown and "](latency_cdf.png)" in markdown
    page = (run_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "<table>" in page
    assert "throughput (output tokens/s)" in result.stdout


def test_an_nfp_run_gets_its_module_table(outputs):
    result = report(outputs / "nfp" / "run2", outputs)
    assert result.returncode == 0, result.stderr
    markdown = (outputs / "nfp" / "run2" / "report.md").read_text()
    assert "| module | NFP | idle NFP | factor |" in markdown and "| lm_head |" in markdown


def test_a_sweep_gets_one_table_with_the_settings_that_vary(outputs):
    sweep = outputs / "nfp" / "multirun" / "s1"
    result = report(sweep, outputs)
    assert result.returncode == 0, result.stderr
    markdown = (sweep / "report.md").read_text()
    assert "nfp: 2 jobs" in markdown and "| batch=1 |" in markdown and "| batch=8 |" in markdown


def test_the_outputs_listing_shows_every_run_with_key_figures(outputs):
    result = report(outputs, outputs.parent)
    assert result.returncode == 0, result.stderr
    listing = (outputs / "report.md").read_text()
    assert "5 runs below" in listing
    assert "## simulate (1)" in listing and "## nfp (3)" in listing and "## search (1)" in listing
    assert "simulate/run1" in listing and "nfp/multirun/s1/0" in listing and "tok/s" in listing
    assert "| search/run3 |" in listing and "1.5" in listing  # an unregistered kind: its figures
    assert "nfp/run2" in result.stdout


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.mkdir()])
def test_no_directory_or_no_runs_is_an_error_and_writes_nothing(tmp_path, make):
    target = tmp_path / "empty"
    make(target)
    result = report(target, tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert not target.exists() or list(target.iterdir()) == []
