"""The Hydra callback that summarises a finished ``--multirun`` sweep (named in an app's config as
``hydra.callbacks``); apart from :mod:`nfpsim.cli.common`, so that a run which needs no Hydra imports none."""

from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback

from nfpsim.cli.common import summarize_sweep


class SweepSummary(Callback):
    """Once a ``--multirun`` sweep has finished, summarises its ``kind`` jobs (:func:`summarize_sweep`)."""

    def __init__(self, kind: str):
        self._kind = kind

    def on_multirun_end(self, config, **kwargs) -> None:
        summarize_sweep(Path(config.hydra.sweep.dir), self._kind)
