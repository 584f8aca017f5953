"""Row logs of a run in bounded memory: exact tables while small, folded into running summaries beyond.

A :class:`RowLog` takes one tuple per row (a list append: the hot path stays one call). Every
``chunk_rows`` rows the tuples become a float64 block. While the log holds at most ``exact_rows`` rows it
keeps its blocks, and :meth:`RowLog.finish` returns the whole table: figures computed from it are exact
(the same numbers as a run that kept everything). Past ``exact_rows`` the log hands each block to its
``fold`` callback and drops it, so memory stays at about one block whatever the length of the run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

CHUNK_ROWS = 32_768
EXACT_ROWS = 1 << 18

Table = dict[str, np.ndarray]


def columns_of(block: np.ndarray, names: Sequence[str], float_suffix: str = "_s") -> Table:
    """Named columns of a float64 block; names not ending in ``float_suffix`` are int64 counts."""
    return {name: block[:, j] if name.endswith(float_suffix) else block[:, j].astype(np.int64)
            for j, name in enumerate(names)}


class RowLog:
    """Rows of ``columns`` (floats; integer columns are exact up to 2**53)."""

    def __init__(self, columns: Sequence[str], fold: Callable[[Table], None], *, exact_rows: int = EXACT_ROWS,
                 chunk_rows: int = CHUNK_ROWS, on_block: Callable[[Table], None] | None = None):
        self.columns = tuple(columns)
        self._on_block = on_block  # sees every block, kept or folded (an on-disk log)
        self.rows: list[tuple] = []
        self.chunk_rows = chunk_rows
        self.exact_rows = exact_rows
        self._fold = fold
        self._blocks: list[np.ndarray] = []
        self._kept = 0
        self.num_rows = 0
        self.folded = False
        self.sample: Table | None = None  # the first block, kept for plots once the log folds

    def append(self, row: tuple) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.chunk_rows:
            self.spill()

    def spill(self) -> None:
        """Turn the pending tuples into a block (and fold it once the log is past ``exact_rows``)."""
        if not self.rows:
            return
        block = np.array(self.rows, dtype=np.float64).reshape(len(self.rows), len(self.columns))
        self.rows.clear()
        self._add(block)

    def extend(self, block: np.ndarray) -> None:
        """Append rows given as a float64 array (after :meth:`spill`, so the order is kept)."""
        self.spill()
        for start in range(0, len(block), self.chunk_rows):
            self._add(block[start:start + self.chunk_rows])

    def _add(self, block: np.ndarray) -> None:
        self.num_rows += len(block)
        if self.sample is None:
            self.sample = columns_of(block, self.columns)
        if self._on_block is not None:
            self._on_block(columns_of(block, self.columns))
        if not self.folded and self._kept + len(block) <= self.exact_rows:
            self._blocks.append(block)
            self._kept += len(block)
            return
        self.fold_kept()
        self._fold(columns_of(block, self.columns))

    def fold_all(self) -> None:
        """Fold everything logged so far, pending rows included, and stream from now on."""
        self.spill()
        self.fold_kept()

    def fold_kept(self) -> None:
        """Fold the kept blocks and stream from now on."""
        self.folded = True
        if self._blocks:
            self._fold(columns_of(np.concatenate(self._blocks), self.columns))
        self._blocks, self._kept = [], 0

    def finish(self) -> Table | None:
        """The whole table if the log never folded, else None (everything went through ``fold``)."""
        self.spill()
        if self.folded:
            return None
        block = np.concatenate(self._blocks) if self._blocks else np.zeros((0, len(self.columns)))
        return columns_of(block, self.columns)
