"""What every nfpsim Hydra app shares: config lookup, one-line errors, and no debris on failure.

Only this package imports Hydra. An app is a pure ``task(cfg, run_dir)`` that validates, computes and
then writes; :func:`hydra_app` turns it into a console-script ``main``. A typo in a config group name
(``model=lama3_8b``) is caught before Hydra starts, a bad value by the task's validation: either way the
user sees ``error: <key>=<value>: <what is allowed>`` and exit status 2, and the run directory Hydra
created for the failed job is removed again if nothing was written into it.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from nfpsim.config import CONF_DIR, available
from nfpsim.errors import ConfigError

EXIT_CONFIG_ERROR = 2
INTERNAL_GROUPS = {"runtime"}  # groups that configure Hydra itself, not the user's question


def _yaml_keys(path: Path) -> set[str]:
    import yaml

    with path.open() as f:
        data = yaml.safe_load(f) or {}
    return {str(k) for k in data if k != "defaults"}


def check_overrides(args: list[str], config_name: str, conf_dir: Path = CONF_DIR) -> None:
    """Catch the typos Hydra would answer with a multi-line message, before Hydra starts.

    ``group=name`` must name an existing config of the group (each value of a ``a,b`` sweep too);
    ``key=value`` and ``group.key=value`` must name a setting that exists. ``+key`` additions and
    ``hydra.*`` settings are left to Hydra.
    """
    groups = {p.name for p in conf_dir.iterdir() if p.is_dir()} - INTERNAL_GROUPS
    top_level = _yaml_keys(conf_dir / f"{config_name}.yaml") | groups | {"hydra"}
    for arg in args:
        if arg.startswith(("-", "+", "hydra/")) or "=" not in arg:  # hydra/launcher=joblib: Hydra's own group
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("~")
        head, _, rest = key.partition(".")
        if head not in top_level:
            raise ConfigError(f"{head}: unknown setting; allowed: {', '.join(sorted(top_level - {'hydra'}))}")
        if head not in groups:
            continue
        if rest:
            known = set().union(*(_yaml_keys(p) for p in (conf_dir / head).glob("*.yaml")))
            field = rest.split(".")[0]
            if field not in known:
                raise ConfigError(f"{head}.{field}: unknown {head} setting; allowed: {', '.join(sorted(known))}")
            continue
        for name in value.split(","):  # multirun sweeps: model=a,b
            name = name.strip()
            if name and name not in available(head):
                raise ConfigError(f"{head}={name}: unknown {head}; allowed: {', '.join(available(head))}")


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
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    cwd = Path(os.getcwd())
    _remove_empty_dirs(Path(hc.runtime.output_dir), cwd)
    if hc.mode == RunMode.MULTIRUN:
        sweep_dir = Path(hc.sweep.dir)
        leftovers = [p.name for p in sweep_dir.iterdir()] if sweep_dir.is_dir() else []
        if leftovers == ["multirun.yaml"]:  # Hydra's own record of a sweep that produced nothing
            (sweep_dir / "multirun.yaml").unlink()
            _remove_empty_dirs(sweep_dir, cwd)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_CONFIG_ERROR)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def hydra_app(config_name: str, task: Callable[..., object],
              validate: Callable[[object], object] | None = None) -> Callable[[], None]:
    """A console-script entry point running ``task(cfg, run_dir)`` as a Hydra app; ``validate(cfg)``,
    when given, checks every job of a ``--multirun`` sweep up front."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    def _entry(cfg) -> None:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            task(cfg, run_dir)
        except ConfigError as error:
            _clean_failed_run()
            _fail(str(error))

    def main() -> None:
        warnings.showwarning = _show_warning  # one line per warning, no source paths
        args = sys.argv[1:]
        try:
            check_overrides(args, config_name)
            if validate is not None and ("-m" in args or "--multirun" in args):
                validate_sweep(args, config_name, validate)
        except ConfigError as error:
            _fail(str(error))
        _entry()

    return main
