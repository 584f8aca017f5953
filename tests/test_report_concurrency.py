"""The concurrency-sweep view: the 1 -> 8 client gain and the knee of a throughput/TPOT curve."""

from nfpsim.report.concurrency import Point, curves, gain, knee


def linear_tpot_curve(t0=0.01, slope=0.001, clients=(1, 2, 4, 8, 16, 32, 64)):
    """Pure decode: TPOT = t0 + slope * c, every client streaming one token per TPOT."""
    return [Point(c, c / (t0 + slope * c), 0.05, t0 + slope * c) for c in clients]


def test_the_knee_is_where_tpot_has_doubled():
    # TPOT doubles at c = t0 / slope = 10 clients: of the swept values, 8 and 16 straddle it
    assert knee(linear_tpot_curve()).clients in (8, 16)
    assert knee(linear_tpot_curve(slope=0.0001)).clients == 64  # TPOT never doubles within the sweep


def test_gain_is_the_throughput_ratio():
    points = linear_tpot_curve()
    assert abs(gain(points) - 8 * 0.011 / 0.018) < 1e-9  # 8 / TPOT(8) over 1 / TPOT(1)
    assert gain(points[:2]) is None


def run(hardware, clients, tok_s, tpot):
    return {"model": "m", "hardware": hardware, "kernels": "serving", "throughput_tokens_per_s": tok_s,
            "ttft_s": {"p50": 0.1}, "tpot_s": {"p50": tpot}, "config": {"workload": {"num_clients": clients}}}


def test_runs_are_grouped_per_hardware_and_sorted_by_clients():
    found = curves([run("b", 4, 300.0, 0.012), run("a", 2, 190.0, 0.011), run("b", 1, 100.0, 0.01),
                    {"model": "m", "hardware": "a", "kernels": "serving", "tpot_s": {}}])
    assert list(found) == [("m", "a", "serving"), ("m", "b", "serving")]
    assert [p.clients for p in found[("m", "b", "serving")]] == [1, 4]
