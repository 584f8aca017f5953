"""The scheduling policy of one replica: continuous batching with chunked prefill mixed into decode.

Each step (vLLM V1 order):

1. every decode row runs ``width`` positions; their KV growth is allocated first, and when the cache
   is full the most recently admitted request is preempted (recompute: its blocks are freed and it
   returns to the front of the queue, to prefill prompt and output again);
2. the rest of ``max_num_batched_tokens`` goes to prefill chunks: unfinished prefills first, then new
   requests first-come first-served while fewer than ``max_num_seqs`` are running and their chunk's
   blocks are free (without chunked prefill a prompt must fit the budget whole); no new request is
   admitted in a step that had to preempt (the cache is full: admitting would only thrash).

After the forward, :meth:`Scheduler.complete` commits the rows' tokens (drawn by the decoding policy),
finishes requests, and moves requests whose prompt is now cached into the decode rows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from nfpsim.sim.cost import ForwardPricer
from nfpsim.sim.decoding import Decoding
from nfpsim.sim.kvcache import KvCache
from nfpsim.sim.prefix import PrefixCache
from nfpsim.sim.state import DecodeRows, Request


@dataclass(frozen=True)
class Limits:
    max_num_seqs: int
    max_num_batched_tokens: int
    chunked_prefill: bool = True


@dataclass(slots=True)
class Step:
    """What one forward runs: ``num_decode`` rows of ``width`` positions, then prefill ``chunks``."""

    num_decode: int
    width: int
    context_sum: int  # cached tokens of the decode rows
    chunks: list[tuple[Request, int]]
    prefill: Sequence[tuple[int, int, int]]  # (tokens, cached prefix, scored) per chunk, for pricing
    prefill_tokens: int
    itl_rows: int  # decode rows whose token of this step follows one they already have
    kv_used_blocks: int  # in use while the forward runs


@dataclass(slots=True)
class Outcome:
    committed: int  # tokens committed by the decode rows
    emitted: int  # first tokens sampled by prefills that ended a prompt
    finished: int


class Scheduler:
    """``on_finish(req)`` runs when a request's last token is committed; ``on_resume_gap(gap_s)`` for each
    token gap across a preemption. ``live`` holds the requests in the engine by id (and nothing else, so
    memory follows the requests in flight, not the length of the run)."""

    def __init__(self, limits: Limits, decoding: Decoding, kv: KvCache, pricer: ForwardPricer,
                 rng: np.random.Generator, on_finish: Callable[[Request], None],
                 on_resume_gap: Callable[[float], None]):
        self.limits = limits
        self.decoding = decoding
        self.kv = kv
        self.pricer = pricer
        self.live: dict[int, Request] = {}
        self.rng = rng
        self.on_finish = on_finish
        self.on_resume_gap = on_resume_gap
        self.waiting: deque[Request] = deque()
        self.prefilling: list[Request] = []
        self.rows = DecodeRows(limits.max_num_seqs)
        self.num_preemptions = 0
        self.cache: PrefixCache | None = None  # prefix caching (off: every block is freed when it is left)
        self.handoff: Callable[[Request], None] | None = None  # a prefill-only engine passes requests on
        self.transferred: deque[Request] = deque()  # requests whose prompt KV arrived from a prefill engine
        self._admissions = 0
        self._joined: list[Request] = []  # rows awaiting their first token since joining (diffusion)

    # -- arrivals -----------------------------------------------------------------------------------
    def submit(self, req: Request, now: float) -> None:
        req.arrival_s = now
        self.live[req.id] = req
        self.waiting.append(req)

    def submit_cached(self, req: Request) -> None:
        """A request whose prompt (and first token) were computed elsewhere and whose KV arrived here."""
        self.live[req.id] = req
        self.transferred.append(req)

    def _admit_transferred(self) -> None:
        """Transferred requests join the decode rows while seats and blocks allow, in arrival order."""
        while self.transferred and self.rows.n + len(self.prefilling) < self.limits.max_num_seqs:
            req = self.transferred[0]
            need = self.kv.blocks(req.cached_tokens)
            if need > self.kv.free and not (self.cache and self.cache.reclaim(need)):
                return
            self.transferred.popleft()
            self.kv.free -= need
            req.held = need
            req.computed = req.target = req.cached_tokens
            req.admitted = self._admissions
            self._admissions += 1
            if req.first_token_s != req.first_token_s:  # NaN: a diffusion prompt; its first token comes here
                self._joined.append(req)
            self.rows.add(req)

    # -- policy ---------------------------------------------------------------------------------------
    def schedule(self, now: float) -> Step | None:
        """The next step, or None when there is nothing to run."""
        if self.transferred:
            self._admit_transferred()
        preemptions = self.num_preemptions
        width = self._fit_decode_rows(now)
        n = self.rows.n
        admit = self.num_preemptions == preemptions
        budget = self.limits.max_num_batched_tokens - n * width
        chunks: list[tuple[Request, int]] = []
        for req in self.prefilling:
            tokens = self._chunk(req, budget)
            if not tokens:
                break
            chunks.append((req, tokens))
            budget -= tokens
        while admit and self.waiting and budget > 0 and n + len(self.prefilling) < self.limits.max_num_seqs:
            req = self.waiting[0]
            if self.cache is not None:
                self._reuse_cached(req)
            tokens = self._chunk(req, budget)
            if not tokens:
                if self.cache is not None:  # a waiting request holds no blocks: cached ones go back
                    self._leave(req, req.held, finished=False, cached_tokens=req.computed)
                    req.held = req.computed = 0
                break
            self.waiting.popleft()
            if self.cache is not None:
                self._count_reuse(req)
            req.admitted = self._admissions
            self._admissions += 1
            self.prefilling.append(req)
            chunks.append((req, tokens))
            budget -= tokens
        if not chunks:
            if not n:
                if self.waiting and admit and not self.prefilling:
                    raise RuntimeError(f"scheduler stalled: request {self.waiting[0].id} cannot start on an idle "
                                       f"engine ({self.kv.free} free blocks, budget {budget} tokens)")
                return None
            prefill = ()
        else:
            emits = self.decoding.prefill_emits_token
            prefill = [(tokens, req.computed, int(emits and req.computed + tokens == req.target))
                       for req, tokens in chunks]
        context_sum = self.rows.context_sum() if n else 0
        prefill_tokens = self.limits.max_num_batched_tokens - n * width - budget
        return Step(n, width, context_sum, chunks, prefill, prefill_tokens, n - len(self._joined), self.kv.used)

    def _width(self, n: int) -> int:
        decoding = self.decoding
        if not decoding.near_free:
            return decoding.width
        cap = min(decoding.width, self.limits.max_num_batched_tokens // n)
        context = self.pricer.bucket(self.rows.context_sum() / n)
        return self.pricer.near_free_width(n, context, decoding.eps, cap)

    def _fit_decode_rows(self, now: float) -> int:
        """Allocate the rows' blocks for ``width`` more positions, preempting until they fit."""
        rows, kv, bs = self.rows, self.kv, self.kv.block_size
        while rows.n:
            n = rows.n
            width = self._width(n)
            grow = rows.context[:n] + (width + bs - 1)  # in place from here: one temporary per step
            grow //= bs
            grow -= rows.held[:n]
            np.maximum(grow, 0, out=grow)
            need = int(np.add.reduce(grow))
            if need <= kv.free or (self.cache is not None and self.cache.reclaim(need)):
                rows.held[:n] += grow
                kv.free -= need
                return width
            self._preempt_latest(now)
        return self.decoding.width

    def _chunk(self, req: Request, budget: int) -> int:
        """Prefill tokens ``req`` gets this step within ``budget`` and the free blocks; allocates them.

        Without chunked prefill a prompt runs whole, but a request resumed after preemption recomputes
        prompt and generated tokens, which may exceed the token budget: it recomputes in chunks, or it
        could never run again."""
        left = req.target - req.computed
        free = self.kv.free if self.cache is None else self.cache.available()
        room = (req.held + free) * self.kv.block_size - req.computed
        tokens = min(left, budget, room)
        whole_only = not self.limits.chunked_prefill and not req.preemptions
        if tokens <= 0 or (tokens < left and whole_only):
            return 0
        need = self.kv.blocks(req.computed + tokens) - req.held
        if self.cache is not None:
            self.cache.reclaim(need)
        req.held += need
        self.kv.free -= need
        return tokens

    def _preempt_latest(self, now: float) -> None:
        rows = self.rows
        row = int(np.argmax(rows.admitted[: rows.n])) if rows.n else -1
        prefill_stamp = self.prefilling[-1].admitted if self.prefilling else -1
        if row >= 0 and rows.admitted[row] > prefill_stamp:
            req = self.live[int(rows.req[row])]
            held = rows.remove(row, req)
            self._leave(req, held, finished=False, cached_tokens=req.cached_tokens)
            req.last_token_s = now  # rows get a token every step: the last one came as this step began
            if req in self._joined:
                self._joined.remove(req)
        else:
            req = self.prefilling.pop()
            self._leave(req, req.held, finished=False, cached_tokens=req.computed)
            req.held = 0
        req.target = req.cached_tokens
        req.computed = 0
        req.preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    # -- after the forward ---------------------------------------------------------------------------
    def complete(self, step: Step, now: float) -> Outcome:
        outcome = Outcome(0, 0, 0)
        rows = self.rows
        n = step.num_decode
        if n:
            committed = self.decoding.commit(self.rng, rows, n, step.width)
            if self.decoding.one_token_per_row:
                outcome.committed, most = n, 1
            else:
                outcome.committed, most = int(np.add.reduce(committed)), int(np.maximum.reduce(committed))
            remaining = rows.remaining[:n]
            remaining -= committed
            for req in self._joined:
                self._first_or_resumed_token(req, now)
            self._joined.clear()
            rows.least_remaining -= most
            if rows.least_remaining <= 0:  # a row may have finished (most steps skip the search)
                for i in (remaining == 0).nonzero()[0][::-1]:
                    req = self.live[int(rows.req[i])]
                    self._leave(req, rows.remove(int(i), req), finished=True)
                    self._finish(req, now)
                    outcome.finished += 1
                rows.bound_remaining()
        for req, tokens in step.chunks:
            req.computed += tokens
            if req.computed < req.target:
                continue
            self.prefilling.remove(req)
            if self.decoding.prefill_emits_token:
                self._first_or_resumed_token(req, now)
                req.generated += 1
                outcome.emitted += 1
                if req.generated == req.output_tokens:
                    self._leave(req, req.held, finished=True)
                    req.held = 0
                    self._finish(req, now)
                    outcome.finished += 1
                    continue
            if self.handoff is not None:
                self._hand_off(req)
                continue
            if not self.decoding.prefill_emits_token:
                self._joined.append(req)
            rows.add(req)
        return outcome

    def _hand_off(self, req: Request) -> None:
        """The prompt is cached (and its first token out): the request leaves for a decode engine. Its
        blocks are freed now; the transfer reads them while they are being reused (a simplification)."""
        self._leave(req, req.held, finished=True)
        req.held = 0
        del self.live[req.id]
        self.handoff(req)

    def _leave(self, req: Request, held: int, finished: bool, cached_tokens: int = 0) -> None:
        """Give back the ``held`` blocks of a request leaving the engine (finished, handed off or
        preempted, with ``cached_tokens`` in its blocks); with prefix caching its whole blocks stay cached
        (:mod:`nfpsim.sim.prefix`)."""
        cache = self.cache
        if cache is None:
            self.kv.free += held
            return
        shared, private = req.shared_blocks, held - req.shared_blocks
        bs = self.kv.block_size
        if finished and req.prefix_id >= 0:
            private -= cache.donate(req.prefix_id, shared, private, req.cache_tokens // bs)
        elif not finished:
            own = max(0, min(private, cached_tokens // bs - shared))
            cache.keep(("own", req.id), shared, own)
            private -= own
        if shared:
            cache.release(req.prefix_id, shared)
        req.shared_blocks = 0
        self.kv.free += private

    def _count_reuse(self, req: Request) -> None:
        """Hit figures of an admitted request (its lookup may have run in earlier steps)."""
        cache, bs = self.cache, self.kv.block_size
        if req.prefix_id >= 0:
            cache.lookups += 1
            cache.lookup_tokens += req.prefix_tokens
            cache.hits += req.shared_blocks > 0
            cache.hit_tokens += req.shared_blocks * bs
        cache.reused_after_preemption_tokens += req.computed - req.shared_blocks * bs  # its own cached blocks

    def _reuse_cached(self, req: Request) -> None:
        """Start a waiting request's prefill after its cached blocks: its prefix's, then (after a
        preemption) its own; at least its last prompt token is computed again, to sample from."""
        cache, bs = self.cache, self.kv.block_size
        limit = (req.target - 1) // bs
        shared = 0
        if req.prefix_id >= 0:
            shared = cache.acquire(req.prefix_id, min(limit, req.prefix_tokens // bs))
        start, claimed = cache.claim(("own", req.id)) if req.preemptions else (0, 0)
        own = min(claimed, limit - shared) if start == shared else 0  # contiguous with what is shared
        self.kv.free += claimed - own
        req.shared_blocks = shared
        req.held = shared + own
        req.computed = (shared + own) * bs

    def _first_or_resumed_token(self, req: Request, now: float) -> None:
        if req.first_token_s != req.first_token_s:  # NaN: the request's first token
            req.first_token_s = now
        elif req.preemptions:
            self.on_resume_gap(now - req.last_token_s)

    def _finish(self, req: Request, now: float) -> None:
        req.generated = req.output_tokens
        req.progress = 0
        req.finish_s = now
        del self.live[req.id]
        self.on_finish(req)

    def flush(self) -> list[Request]:
        """Write the live rows back into their requests (the run ended with them unfinished); the
        unfinished requests."""
        rows = self.rows
        while rows.n:
            i = rows.n - 1
            req = self.live[int(rows.req[i])]
            req.held = rows.remove(i, req)
        return list(self.live.values())
