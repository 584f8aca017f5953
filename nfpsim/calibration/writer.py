"""Writing a calibration table while it is measured: atomically, at most every ``interval_s``, with what
was measured so far, so a run cut short (time limit, a crash, a lost machine) still leaves a valid table.

A checkpoint holds the measurements and no fitted constants yet (``provenance.complete`` false); the
final write, after the fit, replaces it. Nothing is written before the first measurement.
"""

from __future__ import annotations

import time
from pathlib import Path

from nfpsim.latency.table import CalibrationTable, write_table


class TableWriter:
    def __init__(self, path: Path, interval_s: float = 20.0, clock=time.monotonic):
        self.path, self.interval_s, self.clock = Path(path), interval_s, clock
        self.last_s: float | None = None
        self.writes = 0

    def checkpoint(self, table: CalibrationTable, force: bool = False) -> bool:
        """Write ``table`` if it has measurements and ``interval_s`` passed since the last write."""
        now = self.clock()
        if not table.measurements or not (force or self.last_s is None or now - self.last_s >= self.interval_s):
            return False
        self.write(table)
        return True

    def write(self, table: CalibrationTable) -> None:
        write_table(self.path, table)
        self.last_s = self.clock()
        self.writes += 1
