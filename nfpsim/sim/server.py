"""The clock: simpy processes for arrivals, closed-loop clients and the engine loop.

One event per forward: the engine process asks the scheduler for a step, prices it, holds the clock for
its duration, then completes it. While there is nothing to run it waits on a doorbell that arrivals ring.
Every parameter is passed in; nothing here reads module state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import simpy

from nfpsim.sim.cost import ForwardPricer
from nfpsim.sim.scheduler import Scheduler, Step
from nfpsim.sim.state import Request


class Doorbell:
    """Wakes a waiting process; ringing with nobody waiting does nothing."""

    def __init__(self, env: simpy.Environment):
        self.env = env
        self._event: simpy.Event | None = None

    def wait(self) -> simpy.Event:
        self._event = self.env.event()
        return self._event

    def ring(self) -> None:
        if self._event is not None and not self._event.triggered:
            self._event.succeed()
        self._event = None


def engine(env: simpy.Environment, scheduler: Scheduler, pricer: ForwardPricer, bell: Doorbell,
           record: Callable[[float, Step, object, object], None]) -> Iterator[simpy.Event]:
    """Continuous batching: schedule, price, run, complete; idle until an arrival when empty."""
    proposals = scheduler.decoding.proposals
    while True:
        step = scheduler.schedule(env.now)
        if step is None:
            yield bell.wait()
            continue
        cost = pricer.step(step.num_decode, step.width, step.context_sum, step.prefill,
                           proposals(step.width) if step.num_decode else 0)
        start = env.now
        yield env.timeout(cost.total_s)
        record(start, step, cost, scheduler.complete(step, env.now))


def open_loop(env: simpy.Environment, arrival_s: Sequence[float], requests: Sequence[Request],
              submit: Callable[[Request, float], None], bell: Doorbell) -> Iterator[simpy.Event]:
    """Requests arrive at their drawn times."""
    for req, at in zip(requests, arrival_s):
        if at > env.now:
            yield env.timeout(at - env.now)
        submit(req, env.now)
        bell.ring()


def closed_loop_client(env: simpy.Environment, next_request: Callable[[], Request | None],
                       done: dict[int, simpy.Event], think_time_s: float,
                       submit: Callable[[Request, float], None], bell: Doorbell) -> Iterator[simpy.Event]:
    """Send a request, wait for its last token, think, repeat until the workload is used up."""
    while (req := next_request()) is not None:
        done[req.id] = env.event()
        submit(req, env.now)
        bell.ring()
        yield done[req.id]
        if think_time_s:
            yield env.timeout(think_time_s)
