"""Requests of a run: created when they arrive, recorded when they leave, never all held at once.

:class:`Requests` turns the drawn workload into :class:`~nfpsim.sim.state.Request` objects one at a time,
in id order, as arrivals or clients ask for them. :class:`RequestLog` takes one row per request as it
finishes (or as the run ends with it unfinished, or never arrived): an exact table while the run is
small, fixed-size summaries beyond (:mod:`nfpsim.sim.tables`), and optionally a CSV file written block by
block, renamed into place by :meth:`RequestLog.finish`.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from nfpsim.sim.metrics import Slo, request_latencies
from nfpsim.sim.state import Request
from nfpsim.sim.stream import RequestStats
from nfpsim.sim.tables import EXACT_ROWS, RowLog, Table
from nfpsim.sim.workload import Workload

REQUEST_COLUMNS = ("id", "arrival_s", "prompt_tokens", "output_tokens", "generated_tokens", "first_token_s",
                   "finish_s", "preemptions")
CSV_COLUMNS = ["id", "arrival_s", "prompt_tokens", "output_tokens", "generated_tokens", "first_token_s",
               "finish_s", "ttft_s", "tpot_s", "e2e_s", "preemptions", "finished"]


class Requests:
    """The drawn workload as requests, made on demand in id order."""

    def __init__(self, drawn: Workload):
        self.drawn = drawn
        self.issued = 0

    def __len__(self) -> int:
        return self.drawn.num_requests

    def next(self) -> Request | None:
        i = self.issued
        if i >= self.drawn.num_requests:
            return None
        self.issued = i + 1
        req = Request(i, int(self.drawn.prompt_tokens[i]), int(self.drawn.output_tokens[i]))
        if self.drawn.prefix_id is not None:
            req.prefix_id = int(self.drawn.prefix_id[i])
            req.prefix_tokens = int(self.drawn.prefix_tokens[i])
            req.cache_tokens = int(self.drawn.cache_tokens[i])
        return req

    def never_arrived(self) -> np.ndarray:
        """Rows of the requests no arrival or client reached before the run ended."""
        ids = np.arange(self.issued, self.drawn.num_requests)
        rows = np.full((len(ids), len(REQUEST_COLUMNS)), np.nan)
        rows[:, 0] = ids
        rows[:, 2] = self.drawn.prompt_tokens[ids]
        rows[:, 3] = self.drawn.output_tokens[ids]
        rows[:, 4] = rows[:, 7] = 0
        return rows


def request_csv_rows(req: Table) -> list[list]:
    lat = request_latencies(req)
    columns = {**req, **lat, "finished": ~np.isnan(req["finish_s"])}
    return [list(row) for row in zip(*(columns[name].tolist() for name in CSV_COLUMNS))]


class RequestLog:
    """One row per request (:data:`REQUEST_COLUMNS`), summarised into :class:`RequestStats` when long."""

    def __init__(self, slo: Slo, path: str | None = None, *, exact_rows: int = EXACT_ROWS):
        self.slo = slo
        self.stats = RequestStats()
        self.path = Path(path) if path else None
        self._file = self._writer = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = self.path.with_name(f".{self.path.name}.tmp")
            self._file = self._tmp.open("w", newline="")
            self._writer = csv.writer(self._file, lineterminator="\n")
            self._writer.writerow(CSV_COLUMNS)
        self.rows = RowLog(REQUEST_COLUMNS, lambda req: self.stats.fold(req, slo), exact_rows=exact_rows,
                           on_block=self._write if self._writer else None)

    def record(self, req: Request) -> None:
        self.rows.append((req.id, req.arrival_s, req.prompt_tokens, req.output_tokens, req.generated,
                          req.first_token_s, req.finish_s, req.preemptions))

    def _write(self, block: Table) -> None:
        self._writer.writerows(request_csv_rows(block))

    def abort(self) -> None:
        """Drop the partial CSV (the run failed or was interrupted)."""
        if self._file is not None:
            self._file.close()
            self._tmp.unlink(missing_ok=True)

    def finish(self, requests: Requests) -> Table | None:
        """Adds the requests that never arrived; the whole table in id order, or None once streamed.
        Closes and renames the CSV into place."""
        self.rows.extend(requests.never_arrived())
        table = self.rows.finish()
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self.path)
        if table is None:
            return None
        order = np.argsort(table["id"], kind="stable")
        return {name: column[order] for name, column in table.items()}
