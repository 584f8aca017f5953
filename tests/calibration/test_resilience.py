"""Fault injection on the CPU path: an out-of-memory error at point k, an op error, the time budget. Each
leaves a valid table of the points measured so far; the CLI exits 0 with a warning, or 2 if nothing ran."""

import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from nfpsim.calibration import measure
from nfpsim.calibration.measure import WallTimer
from nfpsim.calibration.plan import TimingSettings, build_plan
from nfpsim.calibration.run import calibrate
from nfpsim.latency.table import load_table
from nfpsim.calibration.writer import TableWriter
from tests.calibration.test_pipeline import settings as pipeline_settings

TIMING = TimingSettings(warmup=0, repeats=1)


class FaultyTimer(WallTimer):
    """Raises ``error`` on the timings whose index is in ``at`` (the ceilings take the first three)."""

    def __init__(self, at, error):
        super().__init__(TIMING)
        self.at, self.error, self.calls = set(at), error, 0

    def __call__(self, calls, flush_bytes=0):
        self.calls += 1
        if self.calls - 1 in self.at:
            raise self.error
        return super().__call__(calls, flush_bytes)


def run(tmp_path, timer, **changes):
    s = dataclasses.replace(pipeline_settings(["vendor"]), **changes)
    writer = TableWriter(tmp_path / "cpu.json", interval_s=0.0)
    table = calibrate(s, torch.device("cpu"), torch.float32, timer, progress=False, log=lambda line: None,
                      writer=writer)
    return s, table, writer


@pytest.mark.parametrize("error, reason", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB"), "out of memory"),
    (RuntimeError("triton: invalid argument\nmore"), "RuntimeError: triton: invalid argument"),
])
def test_a_failing_point_is_left_out_with_its_reason_and_the_rest_is_measured(tmp_path, monkeypatch, error, reason):
    released = []
    monkeypatch.setattr(measure, "release_memory", lambda device: released.append(device))
    k = 5
    s, table, writer = run(tmp_path, FaultyTimer({3 + k}, error))  # the timing of point k fails
    planned = len(build_plan(s.plan).points)
    assert len(table.measurements) == planned - 1 and released
    [failed] = table.provenance["failed"]
    assert failed["reason"] == reason and not table.provenance["complete"]
    assert writer.writes == planned - 1  # a checkpoint after every measured point (interval 0)
    stored = load_table(tmp_path / "cpu.json")  # the last checkpoint is a valid table, unfitted
    assert len(stored.measurements) == planned - 1 and stored.fitted == {}
    assert set(table.fitted) == {"vendor"}


def test_failures_in_a_row_stop_the_run_once_the_device_no_longer_runs_a_kernel(tmp_path, monkeypatch):
    monkeypatch.setattr(measure, "device_ok", lambda device: False)
    timer = FaultyTimer(range(3 + 4, 10_000), RuntimeError("CUDA error: an illegal memory access"))
    s, table, _ = run(tmp_path, timer)
    prov = table.provenance
    planned = len(build_plan(s.plan).points)
    assert len(table.measurements) == 4 and len(prov["failed"]) == 5
    assert prov["not_run"] == planned - 4 - 5 - len(prov["skipped"])
    assert prov["stop_reason"] == "5 points failed in a row and the device no longer runs a kernel"
    assert len(load_table(tmp_path / "cpu.json").measurements) == 4


def test_an_op_that_keeps_failing_is_not_tried_again_and_the_others_are_measured(tmp_path, monkeypatch):
    real = measure.measure_point

    def no_o_proj(point, *args, **kwargs):
        if point.op.name == "o_proj":
            raise ValueError("o_proj: unsupported shape")
        return real(point, *args, **kwargs)

    monkeypatch.setattr(measure, "measure_point", no_o_proj)
    s, table, _ = run(tmp_path, WallTimer(TIMING))
    points = build_plan(s.plan).points
    heads = sum(p.op.name == "o_proj" for p in points)
    prov = table.provenance
    assert heads > 3 and len(table.measurements) == len(points) - heads and prov["not_run"] == 0
    assert [f["op"] for f in prov["failed"]] == ["o_proj"] * 3
    assert len(prov["skipped"]) == heads - 3
    assert prov["skipped"][0]["reason"] == "not tried: o_proj failed 3 times (ValueError: o_proj: unsupported shape)"


def test_the_time_budget_stops_starting_points(tmp_path):
    s, table, writer = run(tmp_path, WallTimer(TIMING), time_budget_s=1e-9)
    assert table.measurements == () and writer.writes == 0 and not (tmp_path / "cpu.json").exists()
    assert table.provenance["not_run"] == len(build_plan(s.plan).points)
    assert table.provenance["stop_reason"].startswith("time budget")


CALIBRATE = [sys.executable, "-m", "nfpsim.cli.calibrate", "device=cpu", "implementations=[vendor]",
             "models=[llama3_1b]", "max_tokens=4", "pointwise_tokens=[1]", "attention.batches=[1]",
             "attention.contexts=[16]", "attention.max_positions=2", "copy_mib=1", "matmul_size=32", "warmup=0",
             "repeats=1"]


def cli(tmp_path, *args):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    return subprocess.run(CALIBRATE + [f"output_dir={tmp_path / 'tables'}", f"hydra.run.dir={tmp_path / 'run'}",
                                       *args], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)


@pytest.mark.slow
def test_cli_exits_0_with_a_warning_when_cut_short_and_2_when_nothing_ran(tmp_path):
    full = cli(tmp_path)
    assert full.returncode == 0, full.stderr
    assert "warning" not in full.stderr and load_table(tmp_path / "tables" / "cpu.json").provenance["complete"]
    (tmp_path / "tables" / "cpu.json").unlink()
    nothing = cli(tmp_path, "time_budget_s=0.000001")
    assert nothing.returncode == 2
    assert nothing.stderr.strip().splitlines()[-1].startswith("error: nothing was measured (stopped: time budget")
    assert not (tmp_path / "tables").exists() or not any((tmp_path / "tables").iterdir())


def test_writer_waits_its_interval_and_never_writes_an_empty_table(tmp_path):
    now = [0.0]
    writer = TableWriter(tmp_path / "t.json", interval_s=10.0, clock=lambda: now[0])
    _, table, _ = run(tmp_path / "first", WallTimer(TIMING))
    assert not writer.checkpoint(dataclasses.replace(table, measurements=()))
    assert writer.checkpoint(table) and not writer.checkpoint(table)
    now[0] = 10.0
    assert writer.checkpoint(table) and writer.writes == 2
    stored = load_table(tmp_path / "t.json").measurements
    assert [m.time_s for m in stored] == [m.time_s for m in table.measurements]


def test_a_table_measured_without_the_fit_is_fitted_later_on_any_machine(tmp_path):
    _, table, writer = run(tmp_path, WallTimer(TIMING), fit=False)
    writer.write(table)
    assert table.fitted == {} and table.measurements
    out = tmp_path / "fitted"
    done = subprocess.run([sys.executable, "-m", "nfpsim.cli.calibrate", f"refit={writer.path}",
                           f"output_dir={out}", f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    fitted = load_table(out / "cpu.json")
    assert set(fitted.fitted) == {"vendor"} and fitted.fit_quality["vendor"]
    assert [m.time_s for m in fitted.measurements] == [m.time_s for m in table.measurements]
    assert fitted.provenance["refitted"] and fitted.provenance["fitted"]
    empty = subprocess.run([sys.executable, "-m", "nfpsim.cli.calibrate", f"refit={tmp_path / 'missing.json'}",
                            f"hydra.run.dir={tmp_path / 'run2'}"], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)
    assert empty.returncode == 2 and "does not exist" in empty.stderr


@pytest.mark.slow
def test_the_app_warns_when_points_are_missing_and_fails_when_none_were_measured(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from nfpsim.calibration.plan import build_plan as plan_of
    from nfpsim.calibration.run import CalibrationSettings
    from nfpsim.cli import calibrate as app
    from nfpsim.config import CONF_DIR
    from nfpsim.errors import ConfigError

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="calibrate", overrides=CALIBRATE[3:] + [f"output_dir={tmp_path / 'tables'}"])
    planned = len(plan_of(CalibrationSettings.from_config(cfg).plan).points)
    real, seen = measure.measure_point, []

    def out_of_memory_at_the_second(point, *args, **kwargs):
        seen.append(point)
        if len(seen) == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(point, *args, **kwargs)

    monkeypatch.setattr(measure, "measure_point", out_of_memory_at_the_second)
    with pytest.warns(UserWarning, match=rf"calibration incomplete: {planned - 1} of {planned} points measured "
                                         r"\(1 failed\)"):
        app.task(cfg, tmp_path / "run")
    assert len(load_table(tmp_path / "tables" / "cpu.json").measurements) == planned - 1

    def broken(point, *args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(measure, "measure_point", broken)
    monkeypatch.setattr(measure, "device_ok", lambda device: False)
    with pytest.raises(ConfigError, match=r"nothing was measured \(5 failed, stopped: 5 points failed in a row and "
                                          r"the device no longer runs a kernel\)"):
        app.task(cfg, tmp_path / "run2")
    assert not (tmp_path / "run2").exists()


@pytest.mark.parametrize("swallowed", [False, True])
def test_sigterm_stops_at_the_next_point_even_where_its_interrupt_was_swallowed(tmp_path, monkeypatch, swallowed):
    from nfpsim.calibration.run import STOP, request_stop

    real, seen = measure.measure_point, []

    def term_at_the_third(point, *args, **kwargs):
        seen.append(point)
        if len(seen) == 3:
            try:
                request_stop()  # what the SIGTERM handler runs
            except KeyboardInterrupt:
                if not swallowed:
                    raise
                raise RuntimeError("operation failed due to a previous error during capture") from None
        return real(point, *args, **kwargs)

    monkeypatch.setattr(measure, "measure_point", term_at_the_third)
    try:
        s, table, _ = run(tmp_path, WallTimer(TIMING))
    finally:
        STOP.clear()
    planned = len(build_plan(s.plan).points)
    assert len(table.measurements) == 2 and table.provenance["stop_reason"] == "interrupted"
    assert table.provenance["not_run"] == planned - (3 if swallowed else 2)
    assert len(table.provenance["failed"]) == (1 if swallowed else 0)
    assert len(load_table(tmp_path / "cpu.json").measurements) == 2
