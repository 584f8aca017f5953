"""Streamed summaries: the same figures as the exact tables (counts exactly, percentiles within the
sketch's accuracy), bounded samples, and an on-disk request log with every request."""

import csv
import dataclasses

import numpy as np
import pytest

from nfpsim.sim import Observe, simulate
from nfpsim.sim.stream import Quantiles
from nfpsim.sim.tables import RowLog

from .golden.scenarios import SCENARIOS

COUNTS = ("num_requests", "num_arrived", "num_finished", "num_unfinished", "output_tokens", "num_forwards",
          "num_decode_forwards", "preemptions", "tp", "kv_capacity_tokens")


def _streamed(name, tmp_path=None, exact_rows=64):
    args, kwargs = SCENARIOS[name]()
    path = str(tmp_path / "requests.csv") if tmp_path else None
    observe = dataclasses.replace(kwargs.get("observe", Observe()), exact_rows=exact_rows, requests_path=path)
    return simulate(*args, **kwargs), simulate(*args, **{**kwargs, "observe": observe})


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_streamed_run_gives_the_exact_runs_figures(name):
    exact, streamed = _streamed(name)
    assert exact.exact and not streamed.exact
    a, b = exact.summary, streamed.summary
    for key in COUNTS:
        assert a[key] == b[key], key
    for key, value in a.items():
        if isinstance(value, dict):  # a latency distribution
            assert b[key]["mean"] == pytest.approx(value["mean"], rel=1e-9), key
            assert b[key]["max"] == value["max"], key
            for q in ("p50", "p90", "p99"):
                assert b[key][q] == pytest.approx(value[q], rel=0.011), (key, q)
        elif isinstance(value, float) and key not in ("near_free_fraction", "near_free_width_mean"):
            assert b[key] == pytest.approx(value, rel=1e-9), key


def test_the_request_log_on_disk_holds_every_request_once(tmp_path):
    exact, streamed = _streamed("jacobi_horizon", tmp_path)
    rows = list(csv.DictReader((tmp_path / "requests.csv").open()))
    assert sorted(int(r["id"]) for r in rows) == list(range(exact.summary["num_requests"]))
    assert sum(r["finished"] == "True" for r in rows) == exact.summary["num_finished"]
    assert sum(int(r["generated_tokens"]) for r in rows) == exact.summary["output_tokens"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_quantiles_merge_like_one_sketch_and_stay_within_one_percent():
    rng = np.random.default_rng(0)
    values = rng.lognormal(0, 1.5, 50_000)
    one, left, right = Quantiles(), Quantiles(), Quantiles()
    one.add(values)
    left.add(values[:20_000])
    right.add(values[20_000:])
    left.merge(right)
    assert left.figures() == pytest.approx(one.figures(), rel=1e-12)
    for q in (50, 90, 99):
        assert one.figures()[f"p{q}"] == pytest.approx(np.percentile(values, q), rel=0.011)
    assert one.weight == 50_000 and one.max == values.max()


def test_weighted_quantiles_count_each_value_by_its_weight():
    q = Quantiles()
    q.add(np.array([1.0, 10.0]), np.array([1, 99]))  # 99% of the weight at 10
    f = q.figures()
    assert f["p50"] == pytest.approx(10.0, rel=0.011) and f["mean"] == pytest.approx((1 + 990) / 100)


def test_a_row_log_keeps_rows_exact_then_folds_every_row_once():
    folded = []
    log = RowLog(("x_s",), lambda table: folded.append(table["x_s"].copy()), exact_rows=10, chunk_rows=4)
    for i in range(9):
        log.append((float(i),))
    assert not folded and log.finish()["x_s"].tolist() == list(range(9))
    log = RowLog(("x_s",), lambda table: folded.append(table["x_s"].copy()), exact_rows=10, chunk_rows=4)
    for i in range(23):
        log.append((float(i),))
    assert log.finish() is None
    assert np.concatenate(folded).tolist() == list(range(23)) and log.num_rows == 23
