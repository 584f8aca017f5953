"""Where nfpsim keeps what it may reuse between runs (:mod:`nfpsim.cli.compose_cache`,
:mod:`nfpsim.latency.remembered`): ``$NFPSIM_CACHE_DIR``, else ``$XDG_CACHE_HOME/nfpsim``, else
``~/.cache/nfpsim``. ``NFPSIM_CACHE_DIR=off`` (or empty) turns every cache off."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path | None:
    """The cache directory, or None when caching is off."""
    configured = os.environ.get("NFPSIM_CACHE_DIR")
    if configured is not None:
        return None if configured.strip().lower() in ("", "off", "0", "false", "no") else Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nfpsim"
