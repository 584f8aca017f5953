"""Routers: which replica of a pool a request goes to.

- ``round_robin``: in turn;
- ``least_tokens``: the replica with the fewest outstanding tokens (prompt + output of the requests it
  holds and has not finished), ties to the lowest index;
- ``power_of_two``: two replicas drawn at random, the one with fewer outstanding tokens;
- ``prefix``: the replica that last served the request's shared prefix (a system prompt or a session),
  while its load stays within ``prefix_slack`` times the least loaded one's plus a request; otherwise
  the least loaded (and the prefix moves there).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ROUTERS = ("round_robin", "least_tokens", "power_of_two", "prefix")


class Router:
    def __init__(self, policy: str, rng: np.random.Generator, prefix_slack: float = 1.5):
        if policy not in ROUTERS:
            raise ValueError(f"router {policy!r}: allowed {', '.join(ROUTERS)}")
        self.policy = policy
        self.rng = rng
        self.prefix_slack = prefix_slack
        self._turn = 0
        self._home: dict[int, int] = {}  # prefix id -> replica index

    def pick(self, replicas: Sequence, req) -> int:
        """Index into ``replicas`` (objects with ``in_flight_tokens``) for ``req``."""
        if len(replicas) == 1:
            return 0
        if self.policy == "round_robin":
            self._turn = (self._turn + 1) % len(replicas)
            return (self._turn - 1) % len(replicas)
        if self.policy == "power_of_two":
            a, b = self.rng.choice(len(replicas), size=2, replace=False).tolist()
            return a if replicas[a].in_flight_tokens <= replicas[b].in_flight_tokens else b
        least = min(range(len(replicas)), key=lambda i: replicas[i].in_flight_tokens)
        prefix = getattr(req, "prefix_id", -1)
        if self.policy == "least_tokens" or prefix < 0:
            return least
        home = self._home.get(prefix)
        request_tokens = req.prompt_tokens + req.output_tokens
        if home is not None and replicas[home].in_flight_tokens <= (
                self.prefix_slack * replicas[least].in_flight_tokens + request_tokens):
            return home
        self._home[prefix] = least
        return least
