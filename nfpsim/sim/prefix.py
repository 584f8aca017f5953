"""Prefix caching: KV blocks that outlive the request that computed them, shared by later requests.

An entry holds whole blocks under a key: a shared prefix (a system prompt, or a session's history so
far) or a preempted request's own tokens. Requests using an entry hold a reference; an entry nobody
references stays resident, counted as used, until blocks run short and it is evicted, least recently
released first (vLLM's free-block queue). Sharing starts from the first block and stops at the first
block not cached, so a request reuses ``min(entry, its prefix)`` whole blocks and computes the rest.

- Admission: a request looks up its prefix and, after a preemption, its own entry; the hit blocks
  are its first blocks and its prefill starts after them.
- Leaving: a finished request donates its whole blocks up to ``cache_tokens`` (the system prompt, or
  prompt + output of a session turn, which is the next turn's history) to its prefix's entry; a
  preempted request keeps its own computed blocks cached under its id, so its recompute reuses them.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from nfpsim.sim.kvcache import KvCache


@dataclass
class Entry:
    blocks: int
    refs: int = 0
    start: int = 0  # the block of the request it begins at (a preempted request's own entry)
    uses: Counter = field(default_factory=Counter)  # blocks each referencing request shares: count

    def trim(self) -> int:
        """Drop the tail no referencing request uses; the blocks dropped."""
        used = max(self.uses) if self.uses else 0
        tail = self.blocks - used
        self.blocks = used
        return tail


class PrefixCache:
    def __init__(self, kv: KvCache):
        self.kv = kv
        self.entries: dict[object, Entry] = {}
        self._idle: OrderedDict[object, None] = OrderedDict()  # entries without references, oldest first
        self._used: set = set()  # entries with references
        self.idle_blocks = 0
        self.lookups = self.hits = 0
        self.lookup_tokens = self.hit_tokens = 0
        self.reused_after_preemption_tokens = 0

    # -- blocks -------------------------------------------------------------------------------------
    def reclaim(self, need: int) -> bool:
        """Evict idle entries, least recently used first, until ``need`` blocks are free; then the tails of
        entries in use that no request of theirs reaches."""
        while self.kv.free < need and self._idle:
            key, _ = self._idle.popitem(last=False)
            entry = self.entries.pop(key)
            self.idle_blocks -= entry.blocks
            self.kv.free += entry.blocks
        if self.kv.free < need:
            for key in self._used:
                self.kv.free += self.entries[key].trim()
        return self.kv.free >= need

    def available(self) -> int:
        """Blocks an allocation can get: free ones, those of idle entries, unused tails of the others."""
        tails = sum(self.entries[k].blocks - max(self.entries[k].uses) for k in self._used)
        return self.kv.free + self.idle_blocks + tails

    # -- references ---------------------------------------------------------------------------------
    def acquire(self, key, max_blocks: int) -> int:
        """Reference ``key``'s entry; the blocks of it a request can reuse (0 on a miss)."""
        entry = self.entries.get(key)
        if entry is None or max_blocks <= 0:
            return 0
        if entry.refs == 0:
            del self._idle[key]
            self.idle_blocks -= entry.blocks
            if entry.blocks > max_blocks:  # nobody uses the tail: evict it rather than pin it
                self.kv.free += entry.blocks - max_blocks
                entry.blocks = max_blocks
        entry.refs += 1
        self._used.add(key)
        shared = min(entry.blocks, max_blocks)
        entry.uses[shared] += 1
        return shared

    def release(self, key, shared: int) -> None:
        entry = self.entries[key]
        entry.refs -= 1
        entry.uses[shared] -= 1
        if not entry.uses[shared]:
            del entry.uses[shared]
        if entry.refs == 0:
            self._used.discard(key)
            self._idle[key] = None
            self.idle_blocks += entry.blocks

    def claim(self, key) -> tuple[int, int]:
        """Take a request's own entry back as its private blocks: ``(first block, blocks)``."""
        entry = self.entries.get(key)
        if entry is None or entry.refs:
            return 0, 0
        del self.entries[key], self._idle[key]
        self.idle_blocks -= entry.blocks
        return entry.start, entry.blocks

    def keep(self, key, start: int, blocks: int) -> None:
        """Cache a preempted request's own ``blocks`` (from its block ``start`` on), idle at once."""
        if blocks > 0:
            self.entries[key] = Entry(blocks, 0, start)
            self._idle[key] = None
            self.idle_blocks += blocks

    def donate(self, key, shared: int, private: int, blocks: int) -> int:
        """A request leaving with ``shared`` blocks of ``key``'s entry and ``private`` blocks of its own
        offers its first ``blocks`` to the entry; the private blocks the entry took (extending it)."""
        entry = self.entries.get(key)
        if entry is None:
            if blocks <= 0 or shared:
                return 0
            taken = min(blocks, private)
            self.entries[key] = Entry(taken)
            self._idle[key] = None
            self.idle_blocks += taken
            return taken
        if shared != entry.blocks or blocks <= entry.blocks:
            return 0  # it did not build on the whole entry: nothing contiguous to add
        taken = min(blocks - entry.blocks, private)
        entry.blocks += taken
        if entry.refs == 0:
            self.idle_blocks += taken
        return taken

    def figures(self) -> dict:
        return cache_figures([self])


def cache_figures(caches: list[PrefixCache]) -> dict:
    """Hit rates over ``caches`` (one engine's, or a pool's): requests whose prefix was found, and the
    share of prefix tokens served from the cache; prompt tokens a recompute did not compute again."""
    lookups, hits = sum(c.lookups for c in caches), sum(c.hits for c in caches)
    lookup_tokens, hit_tokens = sum(c.lookup_tokens for c in caches), sum(c.hit_tokens for c in caches)
    return {"prefix_lookups": lookups, "prefix_hits": hits,
            "prefix_hit_rate": hits / lookups if lookups else None,
            "prefix_token_hit_rate": hit_tokens / lookup_tokens if lookup_tokens else None,
            "prefix_hit_tokens": hit_tokens,
            "recompute_reused_tokens": sum(c.reused_after_preemption_tokens for c in caches)}
