"""Workloads: arrivals and lengths from one seeded generator; traces validated row by row."""

import numpy as np
import pytest

from nfpsim.errors import ConfigError
from nfpsim.sim import LengthSpec, WorkloadSpec
from nfpsim.sim.workload import generate


def spec(**fields):
    base = {"arrival": "poisson", "rate_per_s": 10, "num_requests": 20_000,
            "prompt_tokens": {"dist": "fixed", "value": 100}, "output_tokens": 50}
    return WorkloadSpec.from_config({**base, **fields})


def test_poisson_gaps_have_the_rate_and_unit_cv():
    drawn = generate(spec(), np.random.default_rng(0))
    gaps = np.diff(drawn.arrival_s)
    assert gaps.mean() == pytest.approx(0.1, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)
    assert (drawn.prompt_tokens == 100).all() and (drawn.output_tokens == 50).all()


def test_gamma_gaps_have_the_rate_and_the_asked_burstiness():
    drawn = generate(spec(arrival="gamma", cv=3.0), np.random.default_rng(0))
    gaps = np.diff(drawn.arrival_s)
    assert gaps.mean() == pytest.approx(0.1, rel=0.1)
    assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.1)


def test_length_distributions_stay_in_their_bounds():
    rng = np.random.default_rng(0)
    uniform = LengthSpec.from_config({"dist": "uniform", "low": 10, "high": 20}, "x").sample(rng, 10_000)
    assert uniform.min() == 10 and uniform.max() == 20
    lognormal = LengthSpec.from_config({"dist": "lognormal", "median": 200, "sigma": 1.0, "low": 8, "high": 1000},
                                       "x").sample(rng, 10_000)
    assert lognormal.min() >= 8 and lognormal.max() <= 1000
    assert np.median(lognormal) == pytest.approx(200, rel=0.05)


def test_a_seed_fixes_the_workload():
    a, b = (generate(spec(arrival="gamma", cv=2.0, prompt_tokens={"dist": "uniform", "low": 1, "high": 99}),
                     np.random.default_rng(7)) for _ in range(2))
    assert np.array_equal(a.arrival_s, b.arrival_s) and np.array_equal(a.prompt_tokens, b.prompt_tokens)
    c = generate(spec(arrival="gamma", cv=2.0), np.random.default_rng(8))
    assert not np.array_equal(a.arrival_s, c.arrival_s)


def test_closed_loop_has_no_arrival_times():
    drawn = generate(spec(arrival="closed", num_clients=4), np.random.default_rng(0))
    assert drawn.arrival_s is None and drawn.num_requests == 20_000


def test_csv_and_jsonl_traces_read_the_same(tmp_path):
    (tmp_path / "t.csv").write_text("arrival_s,prompt_tokens,output_tokens\n0.0,10,5\n0.5,20,6\n0.5,30,7\n")
    (tmp_path / "t.jsonl").write_text("\n".join(
        '{"arrival_s": %s, "prompt_tokens": %d, "output_tokens": %d}' % row
        for row in ((0.0, 10, 5), (0.5, 20, 6), (0.5, 30, 7))) + "\n")
    for name in ("t.csv", "t.jsonl"):
        workload = WorkloadSpec.from_config({"arrival": "trace", "trace_file": str(tmp_path / name)})
        drawn = generate(workload, np.random.default_rng(0))
        assert drawn.arrival_s.tolist() == [0.0, 0.5, 0.5]
        assert drawn.prompt_tokens.tolist() == [10, 20, 30] and drawn.output_tokens.tolist() == [5, 6, 7]
        assert workload.max_request_tokens == 37
    first = WorkloadSpec.from_config({"arrival": "trace", "trace_file": str(tmp_path / "t.csv"), "num_requests": 2})
    assert first.num_requests == 2 and first.max_request_tokens == 26


def test_the_shipped_example_trace_is_found_under_conf():
    workload = WorkloadSpec.from_config({"arrival": "trace", "trace_file": "workload/example_trace.csv"})
    assert workload.num_requests == 200


@pytest.mark.parametrize("body, message", [
    ("arrival_s,prompt_tokens,output_tokens\n0,10,5\n1,-3,5\n", "line 3: prompt_tokens=-3 must be >= 1"),
    ("arrival_s,prompt_tokens,output_tokens\n2,10,5\n1,10,5\n", "line 3: arrival_s=1.0 is before the previous"),
    ("arrival_s,prompt_tokens,output_tokens\n0,10,0\n", "line 2: output_tokens=0 must be >= 1"),
    ("arrival_s,prompt_tokens,output_tokens\n0,10.5,3\n", "line 2: prompt_tokens='10.5' is not an integer"),
    ("arrival_s,prompt_tokens\n0,10\n", "line 2: missing output_tokens"),
    ("arrival_s,prompt_tokens,output_tokens\n", "the trace has no requests"),
    ("arrival_s,prompt_tokens,output_tokens\n-1,10,5\n", "arrival_s=-1.0 is negative"),
])
def test_bad_traces_name_the_line_and_the_problem(tmp_path, body, message):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(ConfigError) as error:
        WorkloadSpec.from_config({"arrival": "trace", "trace_file": str(path)})
    assert message in str(error.value) and "workload.trace_file=" in str(error.value)


@pytest.mark.parametrize("fields, message", [
    ({"rate_per_s": 0}, "workload.rate_per_s=0.0: must be > 0"),
    ({"num_requests": 0}, "workload.num_requests=0"),
    ({"arrival": "gamma", "cv": 0}, "workload.cv=0.0"),
    ({"prompt_tokens": {"dist": "uniform", "low": 10, "high": 5}}, "workload.prompt_tokens.high=5: must be >= 10"),
    ({"output_tokens": {"dist": "zipf"}}, "workload.output_tokens.dist='zipf': allowed: fixed, uniform, lognormal"),
    ({"output_tokens": 0}, "workload.output_tokens.value=0"),
    ({"arrival": "trace", "trace_file": "no/such/file.csv"}, "cannot read the trace"),
])
def test_bad_workloads_name_their_key(fields, message):
    with pytest.raises(ConfigError) as error:
        spec(**fields)
    assert message in str(error.value)
