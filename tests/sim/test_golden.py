"""One replica, no new feature: every figure equal, bit for bit, to the code before the streaming metrics.

``golden/single_replica.json`` was written by ``golden/generate.py`` on commit e9632dd (the last commit
that kept every request and forward in memory), for the scenarios of ``golden/scenarios.py``.
"""

import json
import math
from pathlib import Path

import pytest

from nfpsim.sim import simulate

from .golden.generate import table_digest
from .golden.scenarios import SCENARIOS

GOLDEN = json.loads((Path(__file__).parent / "golden" / "single_replica.json").read_text())


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_one_replica_reproduces_the_pre_streaming_results(name):
    args, kwargs = SCENARIOS[name]()
    result = simulate(*args, **kwargs)
    assert result.exact
    assert_same(json.loads(json.dumps(result.summary)), GOLDEN[name]["summary"])
    assert table_digest(result.requests) == GOLDEN[name]["requests_sha256"]
    assert table_digest(result.forwards) == GOLDEN[name]["forwards_sha256"]


def assert_same(got, want, path="summary"):
    """Equal, except that a float may differ in its last digits (12 significant digits agree): numpy's
    pairwise sums (the means) take SIMD paths that depend on the CPU, so no mean over thousands of values
    is bit-reproducible across machines, then or now. The request and forward tables above are compared
    bit for bit."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), path
        for key in want:
            assert_same(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, float) and isinstance(got, float):
        assert math.isclose(got, want, rel_tol=1e-12, abs_tol=0.0), (path, got, want)
    else:
        assert got == want, (path, got, want)
