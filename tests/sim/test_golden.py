"""One replica, no new feature: every figure equal, bit for bit, to the code before the streaming metrics.

``golden/single_replica.json`` was written by ``golden/generate.py`` on commit e9632dd (the last commit
that kept every request and forward in memory), for the scenarios of ``golden/scenarios.py``.
"""

import json
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
    assert json.loads(json.dumps(result.summary)) == GOLDEN[name]["summary"]
    assert table_digest(result.requests) == GOLDEN[name]["requests_sha256"]
    assert table_digest(result.forwards) == GOLDEN[name]["forwards_sha256"]
