"""The clock: simpy processes for arrivals, closed-loop clients and the engine loop.

One event per forward: the engine process asks the scheduler for a step, prices it, holds the clock for
its duration, then completes it. While there is nothing to run it waits on a doorbell that arrivals ring.
Every parameter is passed in; nothing here reads module state.

One engine under open-loop arrivals (the single-replica simulator's common case) runs without simpy:
:func:`serve_open_loop` is the same two processes as a plain loop, its events taken in simpy's order
(time, then the order they were scheduled in), so every time it produces is the same float.
"""

from __future__ import annotations

import gc
import itertools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from nfpsim.sim.cost import ForwardPricer
from nfpsim.sim.scheduler import Scheduler, Step
from nfpsim.sim.state import Request

if TYPE_CHECKING:  # simpy is imported where a clock runs on it: a single replica's run does without
    import simpy

ARRIVAL_BLOCK = 65_536
# Allocations between two young-generation garbage collections while the clock runs (Python's default
# is 700). A forward allocates a few dozen short-lived objects that reference counting frees; collecting
# every 700 of them took a fifth of the loop's time. The few cycles a run makes are still collected.
RUN_GC_THRESHOLD = 100_000


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Run the cyclic garbage collector less often inside (the previous thresholds are restored after)."""
    saved = gc.get_threshold()
    gc.set_threshold(RUN_GC_THRESHOLD, *saved[1:])
    try:
        yield
    finally:
        gc.set_threshold(*saved)


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
           record: Callable[[float, Step, object, object], None],
           run: Callable[[Step, object], Iterator[simpy.Event]] | None = None) -> Iterator[simpy.Event]:
    """Continuous batching: schedule, price, run, complete; idle until an arrival when empty.

    One event per forward, unless ``run(step, cost)`` runs it (a pipeline: one event per stage)."""
    while True:
        step = scheduler.schedule(env.now)
        if step is None:
            yield bell.wait()
            continue
        cost = pricer.step(step.num_decode, step.width, step.context_sum, step.prefill)
        start = env.now
        if run is None:
            yield env.timeout(cost.total_s)
        else:
            yield from run(step, cost)
        record(start, step, cost, scheduler.complete(step, env.now))


class Bell:
    """The doorbell of :func:`serve_open_loop`'s engine: a ring while it idles wakes it."""

    __slots__ = ("idle", "rung")

    def __init__(self):
        self.idle = False
        self.rung = False

    def ring(self) -> None:
        if self.idle:
            self.rung = True


def serve_open_loop(scheduler: Scheduler, pricer: ForwardPricer, bell: Bell,
                    record: Callable[[float, Step, object, object], None], arrival_s: np.ndarray,
                    next_request: Callable[[], Request | None], submit: Callable[[Request, float], None],
                    until: float | None = None) -> float:
    """:func:`engine` and :func:`open_loop` run to the end (or to ``until``) without simpy; the time the
    clock stopped at. ``submit`` must ring ``bell``.

    The same events in the same order as under simpy: a pending forward end and a pending arrival are
    taken by time, and at equal times by which was scheduled first (simpy's event ids); an arrival
    that rings the idle engine wakes it at once (simpy's doorbell event is due at that instant, ahead of
    the next arrival); ``until`` stops the clock before any event due at that time, which the clock then
    reads. Times are computed as simpy computes them: a forward ends at ``now + duration``, an arrival
    waits ``at - now`` from ``now``."""
    stop = math.inf if until is None else float(until)
    order = itertools.count()
    times = arrival_times(arrival_s)
    now = 0  # simpy's clock starts at the integer 0 (a forward started then records it so)
    step = cost = None
    start = end = arrive = math.inf
    end_order = arrive_order = 0

    def next_forward() -> None:
        nonlocal step, cost, start, end, end_order
        step = scheduler.schedule(now)
        if step is None:
            bell.idle, end = True, math.inf
            return
        cost = pricer.step(step.num_decode, step.width, step.context_sum, step.prefill)
        start, end, end_order = now, now + cost.total_s, next(order)

    next_forward()  # the engine process starts first, at time 0
    pending = next(times, None)
    while True:
        if pending is not None:  # the arrival process: submit what is due, then wait for the next
            if pending > now:
                arrive, arrive_order = now + (pending - now), next(order)
                pending = None
            else:
                submit(next_request(), now)
                pending = next(times, None)
                continue
        if bell.rung:
            bell.idle = bell.rung = False
            next_forward()
        if end < arrive or (end == arrive != math.inf and end_order < arrive_order):
            if end >= stop:
                return stop
            now = end
            record(start, step, cost, scheduler.complete(step, now))
            next_forward()
        elif arrive < math.inf:
            if arrive >= stop:
                return stop
            now, arrive = arrive, math.inf
            submit(next_request(), now)
            pending = next(times, None)
        else:
            return now if stop == math.inf else stop


def arrivals(env: simpy.Environment, workload, drawn, requests, submit: Callable[[Request, float], None]
             ) -> Callable[[Request], None] | None:
    """Start the processes that bring ``requests`` (:class:`~nfpsim.sim.requests.Requests`) to ``submit``:
    at their drawn times, or from ``workload.num_clients`` closed-loop clients. Returns what must run
    when a request finishes (a closed loop wakes its client), or None."""
    if drawn.arrival_s is not None:
        env.process(open_loop(env, drawn.arrival_s, requests.next, submit))
        return None
    done: dict[int, simpy.Event] = {}
    for _ in range(min(workload.num_clients, len(requests))):
        env.process(closed_loop_client(env, requests.next, done, workload.think_time_s, submit))

    def wake(req: Request) -> None:
        event = done.pop(req.id, None)
        if event is not None:
            event.succeed()

    return wake


def arrival_times(arrival_s: np.ndarray) -> Iterator[float]:
    """The drawn arrival times as Python floats, read in blocks (no Python float per request up front)."""
    for start in range(0, len(arrival_s), ARRIVAL_BLOCK):
        yield from arrival_s[start:start + ARRIVAL_BLOCK].tolist()


def open_loop(env: simpy.Environment, arrival_s: np.ndarray, next_request: Callable[[], Request | None],
              submit: Callable[[Request, float], None]) -> Iterator[simpy.Event]:
    """Requests arrive at their drawn times."""
    for at in arrival_times(arrival_s):
        if at > env.now:
            yield env.timeout(at - env.now)
        submit(next_request(), env.now)


def closed_loop_client(env: simpy.Environment, next_request: Callable[[], Request | None],
                       done: dict[int, simpy.Event], think_time_s: float,
                       submit: Callable[[Request, float], None]) -> Iterator[simpy.Event]:
    """Send a request, wait for its last token, think, repeat until the workload is used up."""
    while (req := next_request()) is not None:
        done[req.id] = env.event()
        submit(req, env.now)
        yield done[req.id]
        if think_time_s:
            yield env.timeout(think_time_s)
