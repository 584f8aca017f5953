"""The compose cache: a repeated plain run starts without Hydra and runs on the config Hydra composed."""

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nfpsim.cli import compose_cache
from nfpsim.config import CONF_DIR


def run_app(name: str, args: list[str], cwd: Path, cache: Path, importtime: bool = False):
    env = {**os.environ, "MPLBACKEND": "Agg", "NFPSIM_CACHE_DIR": str(cache)}
    flags = ["-X", "importtime"] if importtime else []
    result = subprocess.run([sys.executable, *flags, "-m", f"nfpsim.cli.{name}", *args], cwd=cwd,
                            capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stderr
    return result


def imported_modules(importtime_stderr: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in importtime_stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def without_timing(path: Path) -> dict:
    data = json.loads(path.read_text())
    data.pop("wall_time_s", None)
    return data


@pytest.mark.parametrize("name, args, result_file", [
    ("simulate", ["model=llama3_8b", "decoding=speculative", "decoding.k=3", "workload.num_requests=30",
                  "output.plot=false"], "simulate.json"),
    ("nfp", ["model=qwen3_30b_a3b", "batch=4", "plot=false"], "nfp.json"),
])
def test_a_repeated_run_skips_hydra_and_writes_the_same_results(tmp_path, name, args, result_file):
    cache = tmp_path / "cache"
    first = run_app(name, args + [f"hydra.run.dir={tmp_path / 'first'}"], tmp_path, cache, importtime=True)
    assert "hydra" in imported_modules(first.stderr)  # composed by Hydra, and remembered
    assert len(list((cache / "compose").glob("*.json"))) == 1
    if name == "simulate":  # and the forward times it priced (nfpsim.latency.remembered)
        assert len(list((cache / "prices").glob("*.json"))) == 1
    second = run_app(name, args + [f"hydra.run.dir={tmp_path / 'second'}"], tmp_path, cache, importtime=True)
    modules = imported_modules(second.stderr)
    assert not {m for m in modules if m.split(".")[0] in ("hydra", "omegaconf")}
    assert without_timing(tmp_path / "first" / result_file) == without_timing(tmp_path / "second" / result_file)
    assert sorted(p.name for p in (tmp_path / "first").iterdir()) == sorted(
        p.name for p in (tmp_path / "second").iterdir())
    assert first.stdout.replace("first", "second") == second.stdout


def test_the_default_run_directory_is_resolved_as_hydra_resolves_it(tmp_path):
    cache = tmp_path / "cache"
    args = ["batch=2", "plot=false"]
    run_app("nfp", args, tmp_path, cache)
    run_app("nfp", args, tmp_path, cache)  # from the cache
    runs = sorted((tmp_path / "outputs" / "nfp").iterdir())
    assert 1 <= len(runs) <= 2  # two runs in the same second share Hydra's directory name
    for run in runs:
        datetime.strptime(run.name, "%Y-%m-%d_%H-%M-%S")
        assert (run / "nfp.json").is_file()


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("NFPSIM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def composed(overrides: list[str], config_name: str = "simulate"):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    hydra_cfg = cfg.hydra
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    return job, hydra_cfg


def test_an_entry_serves_the_same_overrides_with_any_run_directory(cache_env, tmp_path):
    job, hydra_cfg = composed(["decoding=jacobi"])
    assert compose_cache.store("simulate", ["decoding=jacobi", f"hydra.run.dir={tmp_path}/a"], job, hydra_cfg)
    # the run directory given is not the config's: without one, the entry has no directory to offer yet
    assert compose_cache.lookup("simulate", ["decoding=jacobi"]) is None
    hit = compose_cache.lookup("simulate", ["decoding=jacobi", f"hydra.run.dir={tmp_path}/b"])
    assert hit is not None and hit.run_dir == tmp_path / "b"
    assert hit.config == OmegaConf.to_container(job, resolve=True)
    assert compose_cache.lookup("simulate", ["decoding=ar"]) is None
    assert compose_cache.lookup("nfp", ["decoding=jacobi", f"hydra.run.dir={tmp_path}/b"]) is None

    assert compose_cache.store("simulate", ["decoding=jacobi"], job, hydra_cfg)  # now with the config's own
    hit = compose_cache.lookup("simulate", ["decoding=jacobi"])
    assert hit.run_dir.parent == Path.cwd() / "outputs" / "simulate"
    # a run with a directory of its own keeps the config's for the runs without
    assert compose_cache.store("simulate", ["decoding=jacobi", f"hydra.run.dir={tmp_path}/c"], job, hydra_cfg)
    assert compose_cache.lookup("simulate", ["decoding=jacobi"]) is not None


def test_a_changed_config_file_misses(cache_env, tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "a.yaml").write_text("x: 1\n")
    monkeypatch.setattr(compose_cache, "CONF_DIR", conf)
    before = compose_cache._key("simulate", ["x=2"])
    assert compose_cache._key("simulate", ["x=2"]) == before
    (conf / "a.yaml").write_text("x: 3\n")
    assert compose_cache._key("simulate", ["x=2"]) != before
    (conf / "a.yaml").write_text("x: 1\n")
    (conf / "b.yaml").write_text("")
    assert compose_cache._key("simulate", ["x=2"]) != before
    assert compose_cache._key("simulate", ["x=3"]) != compose_cache._key("simulate", ["x=2"])


def test_what_hydra_would_resolve_differently_is_not_kept(cache_env):
    _, hydra_cfg = composed([])
    for data in ({"a": "${b}", "b": 1}, {"a": "${oc.env:HOME}"}, {"a": "???"}, {"a": {1: "integer key"}}):
        job = OmegaConf.create(data)
        assert not compose_cache.store("simulate", [], job, hydra_cfg), data
    assert not (cache_env / "compose").exists() or not list((cache_env / "compose").glob("*.json"))


@pytest.mark.parametrize("pattern, expected", [
    ("outputs/${hydra.job.name}/${now:%Y}", f"outputs/simulate/{datetime.now():%Y}"),
    ("runs/plain-dir_1.x", "runs/plain-dir_1.x"),
    ("outputs/${hydra.job.override_dirname}", None),
    ("outputs/${oc.env:HOME}", None),
])
def test_run_directory_patterns(pattern, expected):
    assert compose_cache._resolve_run_dir(pattern, "simulate") == expected


@pytest.mark.parametrize("args", [
    ["hydra.run.dir='quoted/dir'"],
    ["hydra.run.dir=a/b,c"],
    ["hydra.run.dir=x/1", "hydra.run.dir=y/1"],
    ["hydra.run.dir=1e3"], ["hydra.run.dir=true"], ["hydra.run.dir=1_000"], ["hydra.run.dir=runs"],
    ["hydra.run.dir=out/${now:2024}"],
    # any other Hydra setting changes what Hydra does around the job: those runs are Hydra's
    ["hydra.output_subdir=.hydra"], ["hydra.job.chdir=true"], ["+hydra.job_logging.root.level=DEBUG"],
    ["seed=1", "hydra.verbose=true"], ["~hydra.callbacks"],
])
def test_a_run_hydra_reads_differently_is_left_to_hydra(args):
    split = compose_cache._split(args)
    # refused as it is read, or (a pattern) as it is resolved
    assert split is None or compose_cache._resolve_run_dir(split[1], "simulate") is None


def test_a_plain_run_directory_is_taken_as_given():
    assert compose_cache._split(["seed=1", "hydra.run.dir=runs/1e3"]) == (["seed=1"], "runs/1e3")
    assert compose_cache._split(["hydra.run.dir=/tmp/a_b-c.d"]) == ([], "/tmp/a_b-c.d")


def test_logging_that_reads_anything_is_not_kept(cache_env):
    job, _ = composed([])
    hydra_cfg = OmegaConf.create({"run": {"dir": "outputs/x"}, "job": {"name": "simulate"},
                                  "job_logging": {"version": 1, "root": {"level": "${job.name}"}}})
    assert not compose_cache.store("simulate", [], job, hydra_cfg)


def test_an_interpolation_that_fails_is_not_kept_and_does_not_raise(cache_env):
    _, hydra_cfg = composed([])
    assert not compose_cache.store("simulate", [], OmegaConf.create({"a": "${oc.env:NFPSIM_NO_SUCH_VAR}"}),
                                   hydra_cfg)


@pytest.mark.parametrize("damaged", ["[]", '{"format": 1, "config": [], "job_name": "x", "run_dir": null, '
                                           '"logging": null}', '{"format": 1}'])
def test_a_damaged_entry_is_a_miss(cache_env, damaged):
    job, hydra_cfg = composed([])
    assert compose_cache.store("simulate", [], job, hydra_cfg)
    (entry,) = (cache_env / "compose").glob("*.json")
    entry.write_text(damaged)
    assert compose_cache.lookup("simulate", []) is None


def test_a_logging_setup_that_does_not_apply_goes_through_hydra(tmp_path):
    cache = tmp_path / "cache"
    args = ["batch=2", "plot=false", f"hydra.run.dir={tmp_path / 'first'}"]
    run_app("nfp", args, tmp_path, cache)
    (entry,) = (cache / "compose").glob("*.json")
    data = json.loads(entry.read_text())
    data["logging"] = {"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}}
    entry.write_text(json.dumps(data))
    second = run_app("nfp", args[:-1] + [f"hydra.run.dir={tmp_path / 'second'}"], tmp_path, cache)
    assert "Traceback" not in second.stderr
    assert without_timing(tmp_path / "first" / "nfp.json") == without_timing(tmp_path / "second" / "nfp.json")
    assert json.loads(entry.read_text())["logging"] != data["logging"]  # Hydra's run stored its own again


@pytest.mark.parametrize("value", ["off", "", "0"])
def test_the_cache_can_be_turned_off(monkeypatch, value):
    monkeypatch.setenv("NFPSIM_CACHE_DIR", value)
    job, hydra_cfg = composed([])
    assert compose_cache.cache_dir() is None
    assert not compose_cache.store("simulate", [], job, hydra_cfg)
    assert compose_cache.lookup("simulate", []) is None


def test_the_newest_entries_are_kept(cache_env, monkeypatch):
    monkeypatch.setattr(compose_cache, "MAX_ENTRIES", 2)
    job, hydra_cfg = composed([])
    for seed in range(4):
        assert compose_cache.store("simulate", [f"seed={seed}"], job, hydra_cfg)
    assert len(list((cache_env / "compose").glob("*.json"))) == 2
    assert compose_cache.lookup("simulate", ["seed=3"]) is not None
    assert compose_cache.lookup("simulate", ["seed=0"]) is None


def test_an_unreadable_entry_is_a_miss(cache_env):
    job, hydra_cfg = composed([])
    assert compose_cache.store("simulate", [], job, hydra_cfg)
    (entry,) = (cache_env / "compose").glob("*.json")
    entry.write_text("{not json")
    assert compose_cache.lookup("simulate", []) is None


def test_an_unwritable_cache_is_ignored(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("NFPSIM_CACHE_DIR", str(blocker / "cache"))
    job, hydra_cfg = composed([])
    assert not compose_cache.store("simulate", [], job, hydra_cfg)
    assert compose_cache.lookup("simulate", []) is None
