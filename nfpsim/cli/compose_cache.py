"""Hydra's composition of a plain run, remembered: a repeated run starts without Hydra.

Composing a config is the same work every time the same overrides meet the same ``conf/``: Hydra reads
the defaults lists and files, merges them and checks the overrides, and importing it and OmegaConf alone
takes a tenth of a second. A what-if study reruns one command with a handful of different values, so
an app that opts in (``hydra_app(..., compose_cache=True)``) keeps, for each plain run (overrides only:
no flag, no ``hydra.*`` setting but the run directory, no experiment), what Hydra composed: the job's
config as plain data, the run-directory pattern and the job's logging setup. The next run with the same
overrides, ``conf/`` and Hydra reads that entry and runs the job directly, on the same config; a
changed byte under ``conf/``, another Hydra or OmegaConf, or other overrides miss and go through Hydra
(which stores a new entry).

Only configs Hydra's run would hand over unchanged are kept: no interpolation left (``${...}`` values are
resolved by OmegaConf as they are read, and may depend on the time or the environment), no missing
value (``???``), nothing JSON does not carry exactly. The run directory may hold ``${now:...}`` and
``${hydra.job.name}``, resolved as Hydra resolves them; any other interpolation there goes through Hydra.

Entries are small JSON files, ``compose/<sha256>.json`` in the cache directory (:mod:`nfpsim.cache`:
``$NFPSIM_CACHE_DIR``, ``off`` turns it off). The newest
:data:`MAX_ENTRIES` are kept. The cache is an optimisation: an unreadable or unwritable one is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from nfpsim import io
from nfpsim.cache import cache_dir, files_digest, keep_newest, source_digest
from nfpsim.config import CONF_DIR

FORMAT = 1  # bump when what an entry means changes
MAX_ENTRIES = 256
RUN_DIR_KEY = "hydra.run.dir"
_INTERPOLATION = re.compile(r"\$\{([^{}]*)\}")
# a strftime format Hydra's grammar reads as a string: path characters and at least one directive
_NOW_FORMAT = re.compile(r"[A-Za-z0-9_./:+-]*%[A-Za-z0-9_%./:+-]*")
# what a run directory given on the command line may hold to be taken as Hydra reads it: plain path
# characters, at least one "/" (so that the grammar cannot read it as a number, a boolean or null) and
# the interpolations above; anything else (quoting included) is left to Hydra's parser
_PLAIN_RUN_DIR = re.compile(r"(?=.*/)(?:[A-Za-z0-9_./+-]|\$\{hydra\.job\.name\}|\$\{now:[A-Za-z0-9_%./:+-]*\})+")


@dataclass(frozen=True)
class Composed:
    """What a cached run needs: the job's config, its run directory (resolved now) and logging setup."""

    config: dict[str, Any]
    run_dir: Path
    logging: dict[str, Any] | None


def _split(args: list[str]) -> tuple[list[str], str | None] | None:
    """The overrides that decide the config, and the run directory given (None if none); None when the
    run directory given is not one this module reads exactly as Hydra would."""
    given = [arg.split("=", 1)[1] for arg in args if arg.startswith(RUN_DIR_KEY + "=")]
    if len(given) > 1 or (given and not _PLAIN_RUN_DIR.fullmatch(given[0])):
        return None
    if any(arg.lstrip("+~").startswith("hydra") and not arg.startswith(RUN_DIR_KEY + "=") for arg in args):
        return None  # another Hydra setting (output_subdir, job.chdir, logging...): what it does is Hydra's
    return [arg for arg in args if not arg.startswith(RUN_DIR_KEY + "=")], (given[0] if given else None)


def _file_stamp(path: str | None) -> list:
    try:
        stat = os.stat(path)
    except (OSError, TypeError):
        return [path]
    return [path, stat.st_size, stat.st_mtime_ns]


def _key(config_name: str, overrides: list[str]) -> str:
    """Everything the composition depends on: the app, the overrides, every byte under ``conf/``, which
    Hydra and OmegaConf (their installed files) compose it, and the code that reads and checks it."""
    import importlib.util

    conf = files_digest(CONF_DIR, (path for path in CONF_DIR.rglob("*") if path.is_file()))
    engines = []
    for name in ("hydra", "omegaconf"):
        spec = importlib.util.find_spec(name)
        engines.append(_file_stamp(spec.origin if spec is not None else None))
    code = source_digest("cli/compose_cache.py", "cli/overrides.py")  # this reading, the override check
    blob = json.dumps([FORMAT, config_name, overrides, conf, engines, code])
    return hashlib.sha256(blob.encode()).hexdigest()


def _resolve_run_dir(pattern: str, job_name: str) -> str | None:
    """``pattern`` with ``${hydra.job.name}`` and ``${now:FORMAT}`` resolved (Hydra's ``now`` resolver is
    cached per format: one instant per run); None if it holds any other interpolation."""
    now = datetime.now()
    unknown = []

    def value(match: re.Match) -> str:
        expression = match.group(1)
        if expression == "hydra.job.name":
            return job_name
        if expression.startswith("now:") and _NOW_FORMAT.fullmatch(expression[len("now:"):]):
            return now.strftime(expression[len("now:"):])
        unknown.append(expression)
        return ""

    resolved = _INTERPOLATION.sub(value, pattern)
    return None if unknown or "$" in resolved or "\\" in resolved else resolved


def _entry(config_name: str, args: list[str]) -> tuple[Path, str | None] | None:
    """The entry file of this run, and the run directory its command line gives (None if none); None when
    the cache is off or the run is not one it keeps."""
    root = cache_dir()
    split = _split(args)
    if root is None or split is None:
        return None
    overrides, run_dir = split
    return root / "compose" / f"{_key(config_name, overrides)}.json", run_dir


def lookup(config_name: str, args: list[str]) -> Composed | None:
    """The remembered composition of this plain run, or None (not cached, cache off, or unreadable)."""
    found = _entry(config_name, args)
    if found is None:
        return None
    path, run_dir = found
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not _well_formed(entry):
        return None
    pattern = run_dir if run_dir is not None else entry["run_dir"]
    resolved = _resolve_run_dir(pattern, entry["job_name"]) if pattern is not None else None
    if resolved is None:
        return None
    return Composed(entry["config"], Path(os.path.abspath(resolved)), entry["logging"])


def _well_formed(entry: Any) -> bool:
    """An entry of this format with fields of the right types (anything else is a miss)."""
    return (isinstance(entry, dict) and entry.get("format") == FORMAT and isinstance(entry.get("config"), dict)
            and isinstance(entry.get("job_name"), str) and isinstance(entry.get("run_dir"), (str, type(None)))
            and isinstance(entry.get("logging"), (dict, type(None))))


def store(config_name: str, args: list[str], cfg: Any, hydra_cfg: Any) -> bool:
    """Remember what Hydra composed for this plain run (``cfg`` the job's config, ``hydra_cfg`` the
    ``hydra`` node); False when it cannot be kept (see the module's rules) or the cache is off."""
    from omegaconf import OmegaConf

    found = _entry(config_name, args)
    if found is None:
        return False
    path, run_dir = found
    try:
        config = _as_given(cfg)
        logging = _as_given(hydra_cfg.job_logging) if hydra_cfg.job_logging is not None else None
    except Exception:  # noqa: BLE001 - an interpolation that fails to resolve: the job will say so itself
        return False
    if config is None or (logging is None and hydra_cfg.job_logging is not None):
        return False
    if run_dir is None:
        pattern = OmegaConf.to_container(hydra_cfg.run, resolve=False)["dir"]
    else:  # a run directory given on the command line is not part of the key: the config's own is kept
        pattern = _stored_run_dir(path)
    entry = {
        "format": FORMAT,
        "config": config,
        "run_dir": pattern,
        "job_name": str(hydra_cfg.job.name),
        "logging": logging,
    }
    try:
        io.write_text(path, json.dumps(entry))
        keep_newest(path.parent, MAX_ENTRIES)
    except OSError:
        return False
    return True


def _as_given(node: Any) -> Any:
    """``node`` as plain data if reading it resolves nothing (no interpolation, no missing value) and JSON
    carries it exactly; else None."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(node, resolve=False)
    if OmegaConf.missing_keys(node) or OmegaConf.to_container(node, resolve=True) != data:
        return None
    return data if json.loads(json.dumps(data)) == data else None  # JSON turns integer keys into strings


def _stored_run_dir(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("run_dir")
    except (OSError, ValueError, AttributeError):
        return None


def configure_logging(config: dict[str, Any] | None) -> None:
    """The job's logging, as Hydra sets it up before a job (its ``job_logging`` dict)."""
    if config:
        import logging.config

        logging.config.dictConfig(config)
