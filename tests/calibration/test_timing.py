"""The GraphTimer's schedule on a simulated device with a virtual clock: ``inner`` comes from a graph
replay, the flush is subtracted, and the plan's estimate bounds the wall time the schedule takes."""

import math

import pytest

from nfpsim.calibration import plan as P
from nfpsim.calibration.measure import GraphTimer
from nfpsim.config import load_hardware, load_kernels, load_model
from nfpsim.latency.analytic import AnalyticLatencyModel

TIMING = P.TimingSettings(warmup=2, repeats=7, min_replay_s=2e-4)


class SimDevice:
    """Calls are ``(device_s, host_s)`` pairs; the clock advances by host time for every call Python
    makes (eager, warm pass, capture) and by device time for every run of it (eager, warm, replay)."""

    def __init__(self, graph_launch_s=5e-6, flush_s=0.0):
        self.clock, self.graph_launch_s, self.flush_s = 0.0, graph_launch_s, flush_s
        self.captures = []

    def _cost(self, call):
        return call if isinstance(call, tuple) else (self.flush_s, 0.0)

    def eager(self, calls):
        self.clock += sum(d + h for d, h in map(self._cost, calls))

    def capture(self, body, repeats):
        self.captures.append(repeats)
        costs = list(map(self._cost, body))
        self.clock += sum(d + h for d, h in costs) + repeats * sum(h for _, h in costs) + P.CAPTURE_S
        return repeats * sum(d for d, _ in costs)

    def replay_s(self, graph):
        self.clock += graph + self.graph_launch_s
        return graph + self.graph_launch_s

    def flush_buffer(self, num_bytes):
        return _Flush()


class _Flush:
    def numel(self):
        return 2**40

    def __getitem__(self, key):
        return self

    def fill_(self, value):
        return self


def test_inner_is_sized_from_a_graph_replay_not_from_a_slow_eager_pass():
    device = SimDevice()
    calls = [(3e-6, 200e-6)] * 4  # 3 us kernels behind 200 us of Python each: eager says 0.8 ms per pass
    median, _ = GraphTimer(TIMING, device)(calls)
    assert device.captures == [1, math.ceil(2e-4 / (4 * 3e-6 + 5e-6))]  # sized from the 17 us replay
    assert median == pytest.approx(3e-6 + 5e-6 / (device.captures[1] * 4))  # the launch spread over >= 0.2 ms


def test_the_flush_is_timed_alone_and_subtracted():
    device = SimDevice(graph_launch_s=0.0, flush_s=40e-6)
    median, _ = GraphTimer(TIMING, device)([(2e-6, 50e-6)] * 8, flush_bytes=180 * 2**20)
    assert median == pytest.approx(2e-6)


@pytest.mark.parametrize("speed", ["modelled", "fastest"])
def test_the_estimate_bounds_the_schedule_of_every_default_point(speed):
    """Every point of a default-sized plan on the simulated device, its calls as slow as the plan
    assumes (``KERNEL_MARGIN`` x analytic) or as fast as physics allows: the per-point estimate is never
    exceeded, so neither is the plan's sum."""
    hw = load_hardware("h200")
    presets = {k: load_kernels(k) for k in ("triton", "vendor")}
    models = {n: AnalyticLatencyModel(hw, k) for n, k in presets.items()}
    plan = P.build_plan(P.PlanSettings(models=(load_model("llama3_8b"), load_model("qwen3_30b_a3b")),
                                       implementations=tuple(presets.values()), contexts=(4096, 32768)))
    total_s = 0.0
    for point in plan.points[::7]:
        kernels = presets[point.implementation]
        kernel_s = models[point.implementation].op_cost(point.op).time_s
        one = P.set_bytes(point)
        sets = P.num_sets(one, hw.l2_bytes)
        flush = P.flush_bytes(one, sets, hw.l2_bytes)
        floor_s = max(P.MIN_KERNEL_S, point.op.shape.bytes / hw.hbm_bytes_per_s)
        call_s = max(P.KERNEL_MARGIN * kernel_s, floor_s) if speed == "modelled" else floor_s
        device = SimDevice(graph_launch_s=P.GRAPH_LAUNCH_S, flush_s=flush / (0.5 * hw.hbm_bytes_per_s))
        timer = GraphTimer(TIMING, device)
        for _ in range(P.num_variants(point, kernels, hw.num_sms)):
            timer([(call_s, P.host_call_s(point))] * sets, flush_bytes=flush)
        bound = P.point_seconds(point, kernel_s, kernels, hw, TIMING)
        assert device.clock <= bound, (point, device.clock, bound)
        total_s += device.clock
    assert total_s > 0
