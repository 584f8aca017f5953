"""What every nfpsim Hydra app shares: config lookup, one-line errors, Ctrl-C, and no debris.

Only this package imports Hydra. An app is a pure ``task(cfg, run_dir)`` that validates, computes and
then writes; :func:`hydra_app` turns it into a console-script ``main``. A typo in a key or a config
group name (``model=lama3_8b``, ``engine.max_num_seq=8``) and an unwritable run directory are caught
before Hydra starts, a bad value by the task's validation: either way the user sees ``error: <key>=<value>:
<what is allowed>`` and exit status 2, and the run directory Hydra created for the failed job is removed
again if nothing was written into it.

Ctrl-C ends the app with one ``interrupted: ...`` line and exit status 130. A run directory left empty is
removed; one holding files written before the interruption gets ``interrupted.txt`` saying the run is
partial. In a ``--multirun`` sweep of an app with ``sweep_summary`` the finished jobs are then summarised.
A task that saves its own partial results on Ctrl-C (a search keeps its finished trials) raises
:class:`InterruptedRun` with the line to print.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import warnings
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from nfpsim import io
from nfpsim.config import CONF_DIR
from nfpsim.errors import ConfigError

if TYPE_CHECKING:
    from nfpsim.report.render import Report

EXIT_CONFIG_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a process ended by Ctrl-C
PARTIAL_MARKER = "interrupted.txt"
# A write that fails for one of these reasons is the user's run directory, not a bug: one line, exit 2.
WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR}

__all__ = ["EXIT_CONFIG_ERROR", "EXIT_INTERRUPTED", "InterruptedRun", "check_writable", "config_data", "hydra_app",
           "mark_partial", "one_line_warnings", "quiet_stdout", "require_torch", "write_report"]

class InterruptedRun(KeyboardInterrupt):
    """Ctrl-C handled by the task itself, which saved what had finished; ``str`` is the line to print.

    A KeyboardInterrupt, so that Hydra (which reports every Exception as a failed job) lets it through.
    """


class _Current:
    """The job running now, for the Ctrl-C handler outside Hydra's call."""

    run_dir: Path | None = None
    sweep_dir: Path | None = None


def require_torch(app: str):
    """``torch``, or the one-line error saying how to install it (the default install has no torch)."""
    try:
        import torch
    except ImportError:
        raise ConfigError(f"nfpsim-{app} needs torch: pip install -e '.[gpu]' (plan=true runs without it); "
                          "nothing was written") from None
    return torch


def check_writable(path: Path, label: str, hint: str) -> None:
    """``path`` can be created and written: its nearest existing ancestor is a writable directory."""
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{label}: {probe} is a file, not a directory; {hint}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{label}: {probe} is not writable (read-only or no permission); {hint}")


def _check_run_dir(args: list[str]) -> None:
    """The directory Hydra will create for the run (or sweep) must be writable, before Hydra tries."""
    key = "hydra.sweep.dir" if "-m" in args or "--multirun" in args else "hydra.run.dir"
    value = "outputs"  # conf/runtime/default.yaml puts every run below it
    for arg in args:
        if arg.startswith(key + "="):
            value = arg.split("=", 1)[1]
    check_writable(Path(value.split("${")[0] or "."), f"{key}={value}", f"choose another {key}")


def _sweep_points(args: list[str]) -> list[list[str]] | None:
    """Every job's overrides of a ``--multirun`` sweep (None where Hydra alone can expand it: glob)."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    overrides = OverridesParser.create().parse_overrides(
        [a for a in args if not a.startswith("-") and not a.startswith("hydra.")])
    choices = []
    try:
        for o in overrides:
            if o.is_sweep_override():
                key = o.input_line.split("=", 1)[0]
                choices.append([f"{key}={v}" for v in o.sweep_string_iterator()])
            else:
                choices.append([o.input_line])
    except HydraException:
        return None
    return [list(point) for point in itertools.product(*choices)]


def validate_sweep(args: list[str], config_name: str, validate: Callable[[object], object]) -> None:
    """Validate every job of a sweep before the first one runs, so a bad point cannot leave a sweep
    half-done; raises the first job's ConfigError, prefixed with its overrides."""
    from hydra import compose, initialize_config_dir

    points = _sweep_points(args)
    if not points or len(points) == 1:
        return
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for point in points:
            try:
                validate(compose(config_name=config_name, overrides=point))
            except ConfigError as error:
                raise ConfigError(f"[{' '.join(point)}] {error}") from None


def _remove_empty_dirs(path: Path, stop: Path) -> None:
    """Remove ``path`` and its parents while they are empty, never reaching ``stop`` or above it."""
    path, stop = path.resolve(), stop.resolve()
    while path != stop and stop in path.parents:
        try:
            path.rmdir()  # fails on a non-empty directory: earlier results stay
        except OSError:
            return
        path = path.parent


def _clean_failed_run() -> None:
    cwd = Path(os.getcwd())
    if _Current.run_dir is not None:
        _remove_empty_dirs(_Current.run_dir, cwd)
    sweep_dir = _Current.sweep_dir
    if sweep_dir is not None:
        leftovers = [p.name for p in sweep_dir.iterdir()] if sweep_dir.is_dir() else []
        if leftovers == ["multirun.yaml"]:  # Hydra's own record of a sweep that produced nothing
            (sweep_dir / "multirun.yaml").unlink()
            _remove_empty_dirs(sweep_dir, cwd)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_CONFIG_ERROR)


def mark_partial(directory: Path, note: str) -> None:
    """Say in ``directory`` that what it holds is partial: ``interrupted.txt`` with the time and ``note``."""
    io.write_text(directory / PARTIAL_MARKER, f"interrupted (Ctrl-C) at {datetime.now():%Y-%m-%d %H:%M:%S}: "
                                              f"{note}\n")


def _settle_interrupted_run(run_dir: Path) -> str:
    """Remove an interrupted job's run dir if it holds nothing, else mark it partial; say which."""
    if run_dir.is_dir():
        for leftover in run_dir.glob(".*.tmp"):  # io's temporary files of writes that were cut short
            leftover.unlink(missing_ok=True)
    _remove_empty_dirs(run_dir, Path(os.getcwd()))
    if not run_dir.exists():
        return "nothing was written"
    kept = sorted(p.name for p in run_dir.iterdir())
    mark_partial(run_dir, f"the run did not finish; {', '.join(kept)} were written before it stopped")
    return f"{run_dir} is partial (see {PARTIAL_MARKER})"


def _settle_interrupted_sweep(sweep_dir: Path, summarize: Callable[[Path], int] | None) -> str:
    done = summarize(sweep_dir) if summarize is not None and sweep_dir.is_dir() else 0
    _clean_failed_run()
    if not sweep_dir.exists():
        return "no job of the sweep had finished"
    mark_partial(sweep_dir, f"the sweep did not finish; the summary covers the {done} jobs that did")
    return f"the sweep summary in {sweep_dir} covers the {done} finished jobs (marked {PARTIAL_MARKER})"


def _interrupted(stop: KeyboardInterrupt, summarize: Callable[[Path], int] | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
    if isinstance(stop, InterruptedRun):
        parts = [str(stop)]
    elif _Current.run_dir is not None:
        parts = [_settle_interrupted_run(_Current.run_dir)]
    else:
        parts = []
    if _Current.sweep_dir is not None:
        parts.append(_settle_interrupted_sweep(_Current.sweep_dir, summarize))
    print(f"interrupted: {'; '.join(parts) or 'nothing was written'}", file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)


class _QuietPipe:
    """stdout that falls silent when its reader has gone (``nfpsim-nfp | head -1``): no BrokenPipeError
    traceback, and the run still finishes and writes its files."""

    def __init__(self, stream):
        self._stream = stream
        self._gone = False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._silence()
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._silence()

    def _silence(self) -> None:
        self._gone = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())  # the interpreter's final flush then goes nowhere, quietly
        os.close(devnull)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def quiet_stdout() -> None:
    """Let a closed pipe on stdout end the printing quietly rather than with a traceback."""
    if not isinstance(sys.stdout, _QuietPipe):
        sys.stdout = _QuietPipe(sys.stdout)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def one_line_warnings() -> None:
    """Print each warning as ``warning: <message>``, without source paths."""
    warnings.showwarning = _show_warning


def summarize_sweep(sweep_dir: Path, kind: str) -> int:
    """``summary.csv`` and ``summary.png`` across the finished ``kind`` jobs of a sweep (rows and plot from
    ``sweep_rows`` / ``sweep_plot`` of the app's report module, ``nfpsim.report.<kind>``), then the sweep's
    report; returns how many jobs it covers."""
    import importlib

    from nfpsim.report import render

    report_module = importlib.import_module(f"nfpsim.report.{kind}")
    runs = [run for run in render.multirun_jobs(sweep_dir) if run.kind.name == kind]
    if not runs:
        return 0
    settings = render.varying_settings([run.data.get("config", {}) for run in runs])
    rows = report_module.sweep_rows(render.job_labels(runs), settings, [run.data for run in runs],
                                    [run.path.name for run in runs])
    io.write_csv(sweep_dir / "summary.csv", rows, list(rows[0]))
    io.save_figure(sweep_dir / "summary.png", report_module.sweep_plot(rows, settings, f"sweep {sweep_dir.name}"))
    write_report(sweep_dir)
    print(f"wrote {sweep_dir}/summary.csv, summary.png, report.md")
    return len(runs)


def write_report(path: Path, report: Report | None = None) -> Report:
    """``report.md`` and ``report.html`` of a run, a sweep or a directory of runs."""
    from nfpsim.report.render import build_report

    report = report or build_report(path)
    io.write_text(path / "report.md", report.markdown(path))
    io.write_text(path / "report.html", report.html())
    return report


def _plain_run(args: list[str]) -> bool:
    """A single run: overrides only, no flag (``-m``, ``--cfg``, ``--help``...), no ``hydra.mode``, no
    Hydra config group and no experiment (config files that may set Hydra's mode)."""
    return not any(arg.startswith("-") or "hydra.mode" in arg or "hydra/" in arg or "experiment" in arg
                   for arg in args)


def _run_without_mode_probe(entry: Callable[[], None]) -> None:
    """``entry()`` without Hydra's mode probe: before it runs an app, Hydra composes the whole config once
    just to read ``hydra.mode`` (``Hydra.get_mode``), a tenth of a second of every run's start-up. No config
    of this package sets the mode, so for a plain run the probe answers None (Hydra then runs one job);
    it is told so directly."""
    from hydra._internal.hydra import Hydra

    probe = getattr(Hydra, "get_mode", None)
    if probe is None:  # a Hydra without the probe
        entry()
        return
    Hydra.get_mode = lambda self, config_name, overrides: None
    try:
        entry()
    finally:
        Hydra.get_mode = probe


def config_data(cfg) -> dict:
    """A job's config as plain data: from Hydra an OmegaConf node (resolved), from the compose cache
    already a dict (copied, so that the caller may change it)."""
    if isinstance(cfg, dict):
        import copy

        return copy.deepcopy(cfg)
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def _run_job(task: Callable[..., object], cfg, run_dir: Path, sweep_dir: Path | None) -> None:
    """``task(cfg, run_dir)`` with the one-line errors and the clean-up of a failed job."""
    _Current.run_dir, _Current.sweep_dir = run_dir, sweep_dir
    try:
        task(cfg, run_dir)
    except ConfigError as error:
        _clean_failed_run()
        _fail(str(error))
    except OSError as error:
        if error.errno not in WRITE_ERRNOS:
            raise
        _clean_failed_run()
        _fail(f"cannot write {error.filename or run_dir}: {error.strerror}")
    _Current.run_dir = None  # finished: a Ctrl-C from here on leaves this job alone


def _run_composed(task: Callable[..., object], composed) -> bool:
    """A plain run from the compose cache: what Hydra does before a job (the job's logging, the run
    directory), then the job. False, with nothing run, if the logging set-up does not apply here (then
    Hydra runs the job)."""
    from nfpsim.cli import compose_cache

    try:
        compose_cache.configure_logging(composed.logging)
    except Exception:  # noqa: BLE001 - whatever dictConfig refuses, Hydra reports as it would uncached
        return False

    def in_run_dir(cfg, run_dir: Path):
        run_dir.mkdir(parents=True, exist_ok=True)  # as Hydra makes it before a job
        return task(cfg, run_dir)

    _run_job(in_run_dir, composed.config, composed.run_dir, None)
    return True


def _hydra_entry(config_name: str, task: Callable[..., object], remember: list[str] | None) -> Callable[[], None]:
    """Hydra's ``main`` running ``task``; with ``remember`` (a plain run's overrides) the composition is
    stored in the compose cache before the job runs."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    def _entry(cfg) -> None:
        hc = HydraConfig.get()
        if remember is not None:
            from nfpsim.cli import compose_cache

            compose_cache.store(config_name, remember, cfg, hc)
        _run_job(task, cfg, Path(hc.runtime.output_dir),
                 Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None)

    return _entry


def hydra_app(config_name: str, task: Callable[..., object],
              validate: Callable[[object], object] | None = None,
              sweep_summary: bool = False, compose_cache: bool = False) -> Callable[[], None]:
    """A console-script entry point running ``task(cfg, run_dir)`` as a Hydra app; ``validate(cfg)``,
    when given, checks every job of a ``--multirun`` sweep up front; with ``sweep_summary`` (an app whose
    config has a :class:`~nfpsim.cli.sweep.SweepSummary`), a sweep cut short by Ctrl-C is summarised over
    its finished jobs. With ``compose_cache`` a plain run that ran before starts without Hydra
    (:mod:`nfpsim.cli.compose_cache`); ``task`` then gets the config as a dict (:func:`config_data`
    reads either). Hydra is imported only when a run needs it."""

    def main() -> None:
        one_line_warnings()
        quiet_stdout()
        args = sys.argv[1:]
        plain = _plain_run(args)
        try:
            try:
                if compose_cache and plain:
                    from nfpsim.cli import compose_cache as cache

                    composed = cache.lookup(config_name, args)
                    if composed is not None:
                        _check_run_dir(args)
                        if _run_composed(task, composed):
                            return
                from nfpsim.cli.overrides import check_overrides

                check_overrides(args, config_name)
                _check_run_dir(args)
                if validate is not None and ("-m" in args or "--multirun" in args):
                    validate_sweep(args, config_name, validate)
            except ConfigError as error:
                _fail(str(error))
            entry = _hydra_entry(config_name, task, args if compose_cache and plain else None)
            if plain:
                _run_without_mode_probe(entry)
            else:
                entry()
        except KeyboardInterrupt as stop:
            _interrupted(stop, partial(summarize_sweep, kind=config_name) if sweep_summary else None)

    return main
