"""What a step costs: the latency model's ``forward_time`` for the step's actual batch, memoized.

A step is one forward of the target model over

- the decode rows: ``n`` sequences x ``width`` positions (all scored) over their cached contexts, priced
  as one group at the rows' mean context, rounded to the nearest multiple of ``context_bucket_tokens``
  (one varlen attention launch over the batch; its KV bytes are linear in the total context, so the
  mean carries them exactly);
- each prefill chunk: ``tokens`` positions over the chunk's already-cached prefix (rounded the same
  way), scored only where the chunk ends a prompt and the method samples there; equal chunks merge;

plus, for a proposer (draft model or MTP layers), ``k`` proposal forwards before it: the first is the
proposer's catch-up over the tokens the last verification committed (``accepted + 1`` positions per row,
:meth:`~nfpsim.sim.decoding.Decoding.catch_up`) and also carries the prefill chunks (the proposer caches
the prompt too), the others one position per row; and, for proposals made without a model (n-gram lookup,
lookahead guesses), their host time per decode row, on the critical path between two forwards.
Times are cached per rounded step, so a long simulation prices each distinct shape once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nfpsim.config import HardwareSpec, ModelSpec
from nfpsim.nfp import first_crossing, position_grid
from nfpsim.shapes import ForwardShape, SeqGroup
from nfpsim.sim.decoding import Decoding
from nfpsim.sim.experts import expert_parallel_extra_s

# ``(tokens, cached prefix, scored)`` of one prefill chunk
Chunk = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class StepCost:
    forward_s: float  # the target model's forward
    proposal_s: float  # proposer forwards before it, catch-up included, or free proposals' host time
    one_position_s: float  # the same forward with one position per decode row
    overhead_s: float = 0.0  # CPU time of the step the GPU waits for (scheduling, input preparation)

    @property
    def total_s(self) -> float:
        return self.forward_s + self.proposal_s + self.overhead_s


class ForwardPricer:
    """Prices steps through ``latency.forward_time(model, shape)``: any object with that method
    (the analytic or calibrated :class:`~nfpsim.latency.LatencyModel`, or a test stub). ``decoding``
    says what proposals cost (its proposer model, catch-up and host time); None: no proposals."""

    def __init__(self, latency, model: ModelSpec, *, tp: int = 1, context_bucket_tokens: int = 64,
                 decoding: Decoding | None = None, cpu_overhead: tuple[float, float] = (0.0, 0.0),
                 expert_parallel: tuple[HardwareSpec, int, float] | None = None):
        self.latency = latency
        self.expert_parallel = expert_parallel  # (hardware, ep ranks, routing skew) of an MoE model
        self.cpu_step_s, self.cpu_per_seq_s = cpu_overhead  # per step, and per sequence in it
        self.model = model
        self.decoding = decoding
        self.proposer = decoding.proposer_model if decoding is not None else None
        self.host_proposal_s = decoding.host_s_per_seq() if decoding is not None else 0.0  # per decode row
        self.tp = tp
        self.bucket_tokens = context_bucket_tokens
        self._steps: dict[tuple, StepCost] = {}
        self._times: dict[tuple[str, ForwardShape], float] = {}
        self._near_free: dict[tuple[int, int, int], int] = {}

    def bucket(self, tokens: float) -> int:
        """Round a context to the nearest multiple of the bucket, halves up (``1``: whole tokens)."""
        b = self.bucket_tokens
        return int((tokens + b / 2) // b) * b

    def time(self, model: ModelSpec, shape: ForwardShape) -> float:
        key = (model.name, shape)
        t = self._times.get(key)
        if t is None:
            t = self._times[key] = self._forward_time(model, shape)
        return t

    def _forward_time(self, model: ModelSpec, shape: ForwardShape) -> float:
        if self.expert_parallel is None or not model.is_moe:
            return self.latency.forward_time(model, shape)
        hardware, ep, skew = self.expert_parallel
        if hasattr(self.latency, "forward"):
            breakdown = self.latency.forward(model, shape)
            base, experts_s = breakdown.total_s, breakdown.by_module().get("experts", 0.0)
        else:  # a latency without a breakdown (a test stub): the all-to-alls alone
            base, experts_s = self.latency.forward_time(model, shape), 0.0
        return base + expert_parallel_extra_s(experts_s, model, hardware, shape.num_tokens, ep, skew)

    def shape(self, num_decode: int, width: int, context: int, chunks: Sequence[Chunk] = ()) -> ForwardShape:
        """The forward shape of a step (contexts already rounded)."""
        groups = [SeqGroup(num_decode, width, context)] if num_decode else []
        for (tokens, prefix, scored), count in sorted(Counter(chunks).items()):
            groups.append(SeqGroup(count, tokens, prefix, scored))
        return ForwardShape(tuple(groups), self.tp)

    def step(self, num_decode: int, width: int, context_sum: int, chunks: Sequence[Chunk] = ()) -> StepCost:
        """Cost of one step; ``context_sum`` is the decode rows' total cached context."""
        context = self.bucket(context_sum / num_decode) if num_decode else 0
        if chunks:
            chunks = tuple((tokens, self.bucket(prefix), scored) for tokens, prefix, scored in chunks)
        key = (num_decode, width, context, chunks)
        cost = self._steps.get(key)
        if cost is None:
            cost = self._steps[key] = self._price(num_decode, width, context, chunks)
        return cost

    def _price(self, n: int, width: int, context: int, chunks: Sequence[Chunk]) -> StepCost:
        forward = self.time(self.model, self.shape(n, width, context, chunks))
        one = forward if width == 1 or not n else self.time(self.model, self.shape(n, 1, context, chunks))
        proposal = 0.0
        shapes = self.proposal_shapes(n, width, context, chunks)
        if shapes:
            proposal = self.time(self.proposer, shapes[0])
            if len(shapes) > 1:  # the same one-position forward each time
                proposal += (len(shapes) - 1) * self.time(self.proposer, shapes[1])
        if n and self.host_proposal_s:
            proposal += self.host_proposal_s * n
        return StepCost(forward, proposal, one, self.cpu_step_s + self.cpu_per_seq_s * (n + len(chunks)))

    def proposal_shapes(self, n: int, width: int, context: int, chunks: Sequence[Chunk] = ()
                        ) -> tuple[ForwardShape, ...]:
        """The proposer forwards of a step (contexts already rounded): the catch-up, which also caches the
        prefill chunks, then ``proposals - 1`` forwards of one position per row. Empty without a proposer
        model, or with neither proposals nor chunks. The catch-up rows attend over the step's context."""
        proposals = self.decoding.proposals(width) if n and self.proposer is not None else 0
        if self.proposer is None or not (chunks or proposals):
            return ()
        rows = self.decoding.catch_up(n, width) if proposals else ()
        groups = [SeqGroup(count, positions, context, 1 if positions > 1 else None) for count, positions in rows]
        first = self.shape(0, 1, context, chunks)
        first = ForwardShape(tuple(groups) + first.groups, self.tp)
        if not n or proposals < 2:
            return (first,)
        return (first,) + (self.shape(n, 1, context),) * (proposals - 1)

    def near_free_width(self, num_decode: int, context: int, eps: float, cap: int) -> int:
        """Largest width ``M <= cap`` whose decode forward stays within ``(1+eps)`` of ``M = 1`` at this
        batch and (rounded) context: the first crossing, scanning up (:func:`nfpsim.nfp.first_crossing`)."""
        key = (num_decode, context, cap)
        width = self._near_free.get(key)
        if width is None:
            def time_at(m: int) -> float:
                return self.time(self.model, self.shape(num_decode, m, context))

            width = self._near_free[key] = near_free_positions(time_at, eps, self._grid(num_decode, cap))
        return width

    def _grid(self, num_decode: int, cap: int) -> Sequence[int]:
        """:func:`nfpsim.nfp.position_grid` of the latency model's kernels; a latency without kernels (a
        test stub) is scanned at every width."""
        kernels = getattr(self.latency, "kernels", None)
        if kernels is not None:
            return position_grid(kernels, self.model, num_decode, cap)
        return range(1, cap + 1)


def near_free_positions(time_at: Callable[[int], float], eps: float, grid: Sequence[int]) -> int:
    """NFP of a latency function over ``grid`` (from 1 up to the cap), evaluated lazily up to its first
    crossing and bisected there."""
    times = [time_at(1)]
    for i, m in enumerate(grid[1:], start=1):
        times.append(time_at(m))
        if times[-1] > (1.0 + eps) * times[0]:
            return first_crossing(grid[: i + 1], times, eps, refine=time_at).nfp
    return grid[-1]
