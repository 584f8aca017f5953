"""Pipeline parallelism: ``pp`` stages of consecutive layers, micro-batches in flight, bubbles measured.

A pipelined replica runs ``pp`` virtual engines (vLLM's scheme): each has its own scheduler, requests
and share of the KV cache, and its forwards are micro-batches that pass through the stages in order.
A stage is a simpy resource that serves one micro-batch at a time for ``forward_s / pp`` (layers split
evenly), then hands its activations to the next stage over the interconnect. So up to ``pp``
micro-batches are in flight, and a stage that waits for work is idle: the bubble, measured as the
stage's idle time over the run (not computed from a formula).

:func:`stage_send_s` prices the activation hand-off; it lives here, next to its one user, until the
latency layer prices point-to-point sends itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from nfpsim.config import HardwareSpec, ModelSpec

if TYPE_CHECKING:
    import simpy


def stage_send_s(model: ModelSpec, hardware: HardwareSpec, tokens: int) -> float:
    """One stage's activations (``tokens`` x hidden, in the model's precision) to the next stage's GPU."""
    return hardware.collective_latency_s + tokens * model.hidden_size * model.bytes_per_element / (
        hardware.interconnect_bytes_per_s)


class Pipeline:
    """The ``pp`` stages of one replica, shared by its virtual engines; records busy time per stage."""

    def __init__(self, env: simpy.Environment, pp: int, send_s: Callable[[int], float] = lambda tokens: 0.0):
        import simpy  # imported where a clock runs on it (a single replica's run does without)

        self.env = env
        self.stages = [simpy.Resource(env, capacity=1) for _ in range(pp)]
        self.busy_s = [0.0] * pp
        self.send_s = send_s  # activation hand-off after a stage, from the micro-batch's tokens
        self.micro_batches = 0

    def run(self, step, cost) -> Iterator[simpy.Event]:
        """Pass one micro-batch (``step``, a forward of ``cost``) through every stage in order."""
        pp = len(self.stages)
        stage_s = cost.total_s / pp
        send_s = self.send_s(step.num_decode * step.width + step.prefill_tokens) if pp > 1 else 0.0
        self.micro_batches += 1
        for i, stage in enumerate(self.stages):
            with stage.request() as turn:
                yield turn
                yield self.env.timeout(stage_s)
                self.busy_s[i] += stage_s
            if i + 1 < pp and send_s:
                yield self.env.timeout(send_s)

    def bubble_fractions(self, span_s: float) -> list[float]:
        """Idle share of each stage over ``span_s`` of simulated time."""
        return [1.0 - busy / span_s if span_s > 0 else 0.0 for busy in self.busy_s]
