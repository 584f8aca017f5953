"""A validation cut short or hit by a failing curve keeps every finished curve, its JSON and its overlay."""

import json

import torch

from nfpsim.calibration import measure
from nfpsim.cli.validate import curve_writer
from nfpsim.validation.run import validate
from tests.validation import TINY, TINY_MOE, ModelTimer
from tests.validation.test_pipeline import settings


def test_a_failing_curve_is_recorded_and_the_others_measured(monkeypatch):
    released = []
    monkeypatch.setattr(measure, "release_memory", lambda device: released.append(device))

    def time_of(forward):
        if forward.model.name == "tiny" and forward.implementation == "vendor":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")
        return 1e-3

    result = validate(settings(), torch.device("cpu"), torch.float32, ModelTimer(time_of), log=lambda line: None)
    assert result["failed"] == [{"model": "tiny", "implementation": "vendor", "batch": 2, "context": 8,
                                 "reason": "out of memory"}]
    assert [(c["model"], c["implementation"]) for c in result["curves"]] == [
        ("tiny", "triton"), ("tiny_moe", "triton"), ("tiny_moe", "vendor")]
    assert not result["complete"] and released == [torch.device("cpu")]


def test_failures_in_a_row_stop_starting_curves_once_the_device_no_longer_runs_a_kernel(monkeypatch):
    def broken(forward):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    healthy = validate(settings(), torch.device("cpu"), torch.float32, ModelTimer(broken), log=lambda line: None)
    assert len(healthy["failed"]) == 4 and healthy["not_run"] == []  # a working device: every curve is tried
    monkeypatch.setattr(measure, "device_ok", lambda device: False)
    dead = validate(settings(), torch.device("cpu"), torch.float32, ModelTimer(broken), log=lambda line: None)
    assert len(dead["failed"]) == 3 and dead["curves"] == []
    assert [c["reason"] for c in dead["not_run"]] == ["3 curves failed in a row and the device no longer runs a kernel"]


def test_each_finished_curve_is_written_with_its_overlay_before_the_run_ends(tmp_path):
    seen = []
    write = curve_writer(tmp_path / "run", tmp_path / "out", plot=True)

    def on_curve(result):
        write(result)
        stored = json.loads((tmp_path / "out" / "cpu.json").read_text())
        png = tmp_path / "out" / f"cpu-{result['curves'][-1]['model']}.png"
        seen.append((len(stored["curves"]), png.read_bytes()[:4]))

    validate(settings(models=(TINY, TINY_MOE)), torch.device("cpu"), torch.float32, ModelTimer(lambda f: 1e-3),
             log=lambda line: None, on_curve=on_curve)
    assert seen == [(n, b"\x89PNG") for n in (1, 2, 3, 4)]
    assert (tmp_path / "run" / "validate-tiny_moe.png").exists()
