"""Bad input to every app, as a user types it: one ``error:`` line naming the key, exit 2, nothing written.

Each case runs the real console entry point in a subprocess in an empty directory and then checks that
the directory is still empty (no run dir, no ``outputs/``, no sweep debris).
"""

import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "MPLBACKEND": "Agg"}


def app(name: str, args: list[str], cwd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"nfpsim.cli.{name}", *args], cwd=cwd, capture_output=True,
                          text=True, env=ENV, timeout=180, **kwargs)


def assert_one_line_error(result, *words):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize("name, args, words", [
    ("simulate", ["engine.max_num_seq=8"], ["engine.max_num_seq: unknown engine setting", "max_num_seqs"]),
    ("search", ["search.budget.total=30"], ["search.budget.total: unknown search.budget setting",
                                           "total_params_b"]),
    ("simulate", ["+experiment=spec_width"], ["experiment=spec_width: unknown experiment",
                                              "spec_width_llama3_8b_h100"]),
    ("simulate", ["experiment=dense_vs_moe"], ["+experiment=dense_vs_moe"]),
    ("simulate", ["model=llama3_8b", "decoding=diffusion"], ["decoding=diffusion", "llama3_8b is causal",
                                                             "model=llada_8b"]),
    ("nfp", ["eps=2"], ["eps=2.0: must be in (0, 1]"]),
    ("simulate", ["eps=1.5"], ["eps=1.5: must be in (0, 1]"]),
])
def test_typos_and_meaningless_values_are_one_line(tmp_path, name, args, words):
    result = app(name, args, tmp_path)
    assert_one_line_error(result, *words)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("config, args, message", [
    ("simulate", ["slo.ttft=1"], "slo.ttft: unknown slo setting; allowed: tpot_s, ttft_s"),
    ("simulate", ["output.plots=false"], "output.plots: unknown output setting; allowed: chrome_trace,"),
    ("simulate", ["decoding=speculative", "decoding.acceptance.rat=0.5"],
     "decoding.acceptance.rat: unknown decoding.acceptance setting; allowed: rate, rates"),
    ("nfp", ["model.num_head=8"], "model.num_head: unknown model setting; allowed: "),
    ("nfp", ["batchh=3"], "batchh: unknown setting; allowed: "),
    ("simulate", ["--multirun", "+experiment=dense_vs_mo"], "experiment=dense_vs_mo: unknown experiment"),
    ("simulate", ["-m", "model=llama3_8b,lama3_70b"], "model=lama3_70b: unknown model"),
    ("nfp", ["+experiment=dense_vs_moe"], None),  # an experiment only simulate uses: Hydra decides
])
def test_overrides_are_checked_against_every_level_of_the_config(config, args, message):
    from nfpsim.cli.overrides import check_overrides
    from nfpsim.errors import ConfigError

    if message is None:
        check_overrides(args, config)
        return
    with pytest.raises(ConfigError) as error:
        check_overrides(args, config)
    assert str(error.value).startswith(message)


@pytest.mark.parametrize("config, args", [
    ("simulate", ["engine.max_num_seqs=8", "slo.ttft_s=1", "output.plot=false", "decoding=speculative",
                  "decoding.acceptance.rate=0.5", "workload.prompt_tokens.value=64", "hydra.run.dir=x/y",
                  "+experiment=dense_vs_moe", "++seed=3", "~calibration"]),
    ("search", ["search.budget.total_params_b=30", "search.space.num_layers.low=8", "search.decoding.speculative.k=2"]),
    ("nfp", ["model=qwen3_30b_a3b", "model.routing_skew=0.8", "kernels.gemm.tiles=[]"]),
])
def test_every_real_setting_passes(config, args):
    from nfpsim.cli.overrides import check_overrides

    check_overrides(args, config)


def test_eps_of_one_is_the_top_of_the_range(tmp_path):
    result = app("nfp", ["eps=1", "plot=false", "hydra.run.dir=run"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "nfp.json").is_file()


def test_a_missing_calibration_table_is_an_error(tmp_path):
    result = app("nfp", ["calibration=/missing.json"], tmp_path)
    assert_one_line_error(result, "calibration=/missing.json")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------------
# Run directories that cannot be written
# ----------------------------------------------------------------------------------------------------

APP_ARGS = {  # the cheapest valid run of each app
    "nfp": ["plot=false"],
    "simulate": ["workload.num_requests=5", "output.plot=false"],
    "search": ["search.n_trials=2", "plot=false"],
    "calibrate": ["plan=true"],
    "validate": ["plan=true"],
}


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody may write: chmod for a normal user; root ignores modes, so a read-only tmpfs."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("running as root without permission to mount a read-only tmpfs")
    yield path
    subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("name", sorted(APP_ARGS))
def test_a_read_only_run_dir_is_one_line(tmp_path, read_only_dir, name):
    result = app(name, [*APP_ARGS[name], f"hydra.run.dir={read_only_dir}/run"], tmp_path)
    assert_one_line_error(result, f"hydra.run.dir={read_only_dir}/run", "not writable")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro"] and list(read_only_dir.iterdir()) == []


@pytest.mark.parametrize("name", ["nfp", "simulate"])
def test_a_run_dir_below_a_file_is_one_line(tmp_path, name):
    (tmp_path / "results").write_text("not a directory")
    result = app(name, [*APP_ARGS[name], "hydra.run.dir=results/run"], tmp_path)
    assert_one_line_error(result, "hydra.run.dir=results/run", "is a file, not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_a_sweep_into_a_read_only_dir_is_one_line(tmp_path, read_only_dir):
    result = app("nfp", ["--multirun", "batch=1,8", f"hydra.sweep.dir={read_only_dir}/sweep"], tmp_path)
    assert_one_line_error(result, "hydra.sweep.dir=", "not writable")


def test_report_into_a_read_only_dir_is_one_line(tmp_path):
    runs = tmp_path / "outputs"
    runs.mkdir()
    as_root = os.geteuid() == 0  # root ignores modes: a tmpfs remounted read-only instead
    if as_root and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(runs)]).returncode != 0:
        pytest.skip("running as root without permission to mount a tmpfs")
    try:
        made = app("nfp", ["plot=false", f"hydra.run.dir={runs}/nfp/r1"], tmp_path)
        assert made.returncode == 0, made.stderr
        if as_root:
            subprocess.run(["mount", "-o", "remount,ro", str(runs)], check=True)
        else:
            runs.chmod(0o555)
        result = app("report", [str(runs)], tmp_path)
        written = sorted(p.name for p in runs.iterdir())
    finally:
        subprocess.run(["umount", str(runs)], check=True) if as_root else runs.chmod(0o755)
    assert_one_line_error(result, str(runs), "not writable")
    assert written == ["nfp"]


# ----------------------------------------------------------------------------------------------------
# A closed pipe, a missing torch
# ----------------------------------------------------------------------------------------------------


def test_a_closed_pipe_ends_the_printing_quietly_and_the_run_still_completes(tmp_path):
    """``nfpsim-nfp | head -1``: no BrokenPipeError traceback; the files are written all the same."""
    process = subprocess.Popen([sys.executable, "-m", "nfpsim.cli.nfp", "plot=false", "hydra.run.dir=run"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    first = process.stdout.readline()
    process.stdout.close()  # what `head -1` does once it has its line
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0, stderr
    assert first.startswith(b"NFP of llama3_8b")
    assert stderr == ""
    assert (tmp_path / "run" / "nfp.json").is_file()


@pytest.mark.parametrize("name", ["calibrate", "validate"])
def test_gpu_apps_without_torch_say_how_to_install_it(tmp_path, name):
    code = (f"import sys; sys.modules['torch'] = None; sys.argv = ['nfpsim-{name}']; "
            f"from nfpsim.cli.{name} import main; main()")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=ENV,
                            timeout=120)
    assert_one_line_error(result, f"nfpsim-{name} needs torch: pip install", "[gpu]")
    assert list(tmp_path.iterdir()) == []


def test_only_a_plain_single_run_skips_hydras_mode_probe():
    """The probe reads ``hydra.mode`` from the composed config: skipped only where nothing can set it."""
    from nfpsim.cli.common import _plain_run

    assert _plain_run(["model=llama3_8b", "workload.num_requests=10", "hydra.run.dir=out"])
    for args in (["-m", "seed=1,2"], ["--multirun"], ["hydra.mode=MULTIRUN"], ["+experiment=dense_vs_moe"],
                 ["hydra/launcher=joblib"], ["--cfg", "job"]):
        assert not _plain_run(args), args
