"""Where nfpsim keeps what it may reuse between runs (:mod:`nfpsim.cli.compose_cache`,
:mod:`nfpsim.latency.remembered`): ``$NFPSIM_CACHE_DIR``, else ``$XDG_CACHE_HOME/nfpsim``, else
``~/.cache/nfpsim``. ``NFPSIM_CACHE_DIR=off`` (or empty) turns every cache off."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def cache_dir() -> Path | None:
    """The cache directory, or None when caching is off."""
    configured = os.environ.get("NFPSIM_CACHE_DIR")
    if configured is not None:
        return None if configured.strip().lower() in ("", "off", "0", "false", "no") else Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nfpsim"


def files_digest(root: Path, files) -> str:
    """sha256 over ``files`` (paths under ``root``): each one's path relative to ``root``, then its bytes."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def source_digest(*parts: str) -> str:
    """:func:`files_digest` of nfpsim's own source: the modules and packages named in ``parts`` (relative
    to the package, e.g. ``"shapes.py"``, ``"latency"``), or every module. What decides whether a result
    kept from another run is still the result this code would give."""
    paths = [PACKAGE / part for part in parts] if parts else [PACKAGE]
    return files_digest(PACKAGE, {f for p in paths for f in ([p] if p.is_file() else p.rglob("*.py"))})


def keep_newest(directory: Path, count: int) -> None:
    """Delete all but the ``count`` most recently written ``*.json`` files of ``directory``."""
    files = sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    for old in files[:-count]:
        old.unlink(missing_ok=True)
