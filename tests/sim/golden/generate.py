"""Writes ``single_replica.json``: what one replica produced BEFORE the streaming metrics and the cluster
simulator (commit e9632dd, ``simulate(specs, latency, workload, decoding, engine_spec, seed)``), for a few
scenarios priced by the test stubs (so the latency model's own changes do not move them).

``test_golden.py`` recomputes them with the current code and requires every figure equal, bit for bit.
It ran on that commit as ``python -m tests.sim.golden.generate`` (the scenarios then built the policy
with ``Decoding()``, since renamed ``Autoregressive()``); never regenerate it to make a change pass.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from nfpsim.sim import simulate

from .scenarios import SCENARIOS


def table_digest(table: dict[str, np.ndarray]) -> str:
    """sha256 over the columns, in name order, as float64 bytes."""
    digest = hashlib.sha256()
    for name in sorted(table):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(table[name], dtype=np.float64).tobytes())
    return digest.hexdigest()


def main() -> None:
    out = {}
    for name, make in SCENARIOS.items():
        args, kwargs = make()
        result = simulate(*args, **kwargs)
        out[name] = {"summary": result.summary, "requests_sha256": table_digest(result.requests),
                     "forwards_sha256": table_digest(result.forwards)}
    path = Path(__file__).with_name("single_replica.json")
    path.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
