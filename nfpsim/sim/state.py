"""Request state: one object per request while it waits or prefills, one array row while it decodes.

Decode-phase sequences live as rows of column arrays so a step advances all of them with a handful of
numpy operations (no per-token Python work); a request moves to a row when its prompt is cached and
back to its object when it leaves (finished, preempted, or the run ended).
"""

from __future__ import annotations

import math

import numpy as np


class Request:
    """One request. Token counts: ``generated`` output tokens so far, ``progress`` of them committed
    inside an unfinished diffusion block (not yet cached), ``target`` tokens to prefill before decoding
    (the prompt, or prompt plus output after a preemption), ``computed`` of them cached so far,
    ``held`` KV blocks while prefilling (shared prefix blocks included)."""

    __slots__ = ("id", "prompt_tokens", "output_tokens", "arrival_s", "first_token_s", "finish_s",
                 "last_token_s", "generated", "progress", "target", "computed", "held", "preemptions",
                 "admitted", "prefix_id", "prefix_tokens", "cache_tokens", "shared_blocks")

    def __init__(self, rid: int, prompt_tokens: int, output_tokens: int):
        self.id = rid
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.arrival_s = math.nan
        self.first_token_s = math.nan
        self.finish_s = math.nan
        self.last_token_s = math.nan
        self.generated = 0
        self.progress = 0
        self.target = prompt_tokens
        self.computed = 0
        self.held = 0
        self.preemptions = 0
        self.admitted = -1  # admission stamp: the latest admitted is preempted first
        self.prefix_id = -1  # shared prefix (system prompt or session); -1: none
        self.prefix_tokens = 0  # leading prompt tokens that prefix covers
        self.cache_tokens = 0  # tokens left cached under prefix_id when the request finishes
        self.shared_blocks = 0  # leading blocks of ``held`` that belong to a prefix-cache entry

    @property
    def cached_tokens(self) -> int:
        """Tokens whose KV is cached once its prefill is done: prompt and committed output, less the
        tokens of an unfinished diffusion block."""
        return self.prompt_tokens + self.generated - self.progress


NO_ROWS = 1 << 62  # the least remaining tokens of no rows


class DecodeRows:
    """Decode-phase sequences as columns; rows ``0..n-1`` are live, removal swaps in the last row.

    ``context`` cached tokens, ``remaining`` output tokens still to commit, ``progress`` within a
    diffusion block, ``held`` KV blocks, ``admitted`` admission stamp, ``req`` request id.
    """

    def __init__(self, capacity: int):
        self.n = 0
        self.least_remaining = NO_ROWS  # at most the smallest ``remaining`` of the live rows
        self.req = np.zeros(capacity, dtype=np.int64)
        self.context = np.zeros(capacity, dtype=np.int64)
        self.remaining = np.zeros(capacity, dtype=np.int64)
        self.progress = np.zeros(capacity, dtype=np.int64)
        self.held = np.zeros(capacity, dtype=np.int64)
        self.admitted = np.zeros(capacity, dtype=np.int64)

    def add(self, req: Request) -> None:
        i = self.n
        self.req[i] = req.id
        self.context[i] = req.cached_tokens
        self.remaining[i] = req.output_tokens - req.generated
        self.progress[i] = req.progress
        self.held[i] = req.held
        self.admitted[i] = req.admitted
        req.held = 0  # the row holds them now
        self.n += 1
        self.least_remaining = min(self.least_remaining, req.output_tokens - req.generated)

    def bound_remaining(self) -> None:
        """Make :attr:`least_remaining` exact again (a row leaving keeps it a lower bound; a forward that
        commits up to ``m`` tokens per row lowers it by ``m``)."""
        self.least_remaining = int(np.minimum.reduce(self.remaining[: self.n])) if self.n else NO_ROWS

    def remove(self, i: int, req: Request) -> int:
        """Write row ``i`` back into ``req`` (its id), drop the row, and return the blocks it held."""
        req.generated = req.output_tokens - int(self.remaining[i])
        req.progress = int(self.progress[i])
        held = int(self.held[i])
        last = self.n - 1
        for column in (self.req, self.context, self.remaining, self.progress, self.held, self.admitted):
            column[i] = column[last]
        self.n = last
        return held

    def context_sum(self) -> int:
        return int(np.add.reduce(self.context[: self.n]))
