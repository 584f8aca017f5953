"""Decoding methods: how many positions a sequence runs per forward, and how many tokens that commits.

Each method is a small frozen policy with its token-acceptance model. The engine keeps the decode-phase
sequences as rows of arrays (:class:`~nfpsim.sim.state.DecodeRows`); :meth:`Decoding.commit` draws the
tokens each row commits in one forward of ``width`` positions, capped at what the row still has to
generate, and advances the row's cached ``context`` (and its ``progress`` within a diffusion block).

| method | positions per forward ``M`` | committed per forward | proposal cost |
|---|---|---|---|
| autoregressive | 1 | 1 | none |
| speculative / MTP | ``k + 1`` | ``1 +`` accepted prefix of ``k`` proposals | draft or MTP forwards, or host lookup |
| diffusion | ``block_size`` masked positions | threshold model or steps-per-block schedule | none |
| Jacobi / lookahead | ``width`` | utilization curve ``tau(M)`` | host upkeep of the guesses |

Speculative and Jacobi widths may be ``near_free``: each forward runs the largest width within
``(1+eps)`` of the one-position latency of its batch (capped at ``k+1`` or ``width``).

What a proposal costs (:mod:`nfpsim.sim.cost` prices it):

- a proposer model's first forward of a step is a *catch-up* over what the last verification committed:
  ``accepted + 1`` positions per sequence, not one (:meth:`Decoding.catch_up`);
- proposals made without a model forward (n-gram / prompt lookup, lookahead guesses) cost host (CPU) time
  per sequence per step (:meth:`Decoding.host_s_per_seq`), ``FREE_PROPOSAL_HOST_S`` unless configured.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from nfpsim.config import ModelSpec

PROPOSERS = ("draft", "mtp", "free")
_ONES = np.ones(4096, dtype=np.int64)  # what autoregressive rows commit; read-only, shared
_ONES.flags.writeable = False
DIFFUSION_COMMITS = ("threshold", "schedule")

# Host (CPU) time of a proposal made without a model forward, per sequence per step. vLLM's n-gram
# proposer matches the sequence's last tokens against its earlier ones on the CPU (Numba-compiled since
# vllm-project/vllm#13365); the match needs the tokens the verification just accepted and the next forward
# needs its result, so it sits on the step's critical path and cannot overlap the GPU (#24986 measures it
# growing with batch size and sequence length). Lookahead decoding's n-gram-pool upkeep is host work of the
# same kind. 20 us per sequence is an ESTIMATE of that order (tens of microseconds per sequence), not a
# measurement; configure it with ``proposal_host_us`` in conf/decoding (0 prices the proposals as free).
FREE_PROPOSAL_HOST_US = 20.0
FREE_PROPOSAL_HOST_S = FREE_PROPOSAL_HOST_US / 1e6

# ----------------------------------------------------------------------------------------------------
# Acceptance models
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Acceptance:
    """Speculative acceptance: proposal ``i`` is accepted with probability ``rates[i]`` given that all
    before it were (one rate for all positions: the i.i.d. model). Verification keeps the accepted
    prefix plus one token of its own, so ``E[tokens] = 1 + sum_i prod_{j<=i} rates[j]``, which is
    ``(1 - a**(k+1)) / (1 - a)`` for an i.i.d. rate ``a``."""

    rates: tuple[float, ...]

    @property
    def iid(self) -> bool:
        return len(self.rates) == 1

    def rates_for(self, k: int) -> np.ndarray:
        return np.full(k, self.rates[0]) if self.iid else np.asarray(self.rates[:k])

    def expected_tokens(self, k: int) -> float:
        return 1.0 + float(np.cumprod(self.rates_for(k)).sum())

    def tokens_pmf(self, k: int) -> np.ndarray:
        """``P(tokens = j)`` for ``j = 1 .. k+1``: the accepted prefix plus the verification's own token."""
        survive = np.concatenate(([1.0], np.cumprod(self.rates_for(k))))  # P(accepted >= i), i = 0..k
        pmf = survive.copy()
        pmf[:-1] -= survive[1:]
        return pmf

    def sample_tokens(self, rng: np.random.Generator, n: int, k: int) -> np.ndarray:
        """Tokens each of ``n`` sequences commits in one verification of ``k`` proposals."""
        if k == 0:
            return np.ones(n, dtype=np.int64)
        if self.iid:
            a = self.rates[0]
            if a >= 1.0:
                return np.full(n, k + 1, dtype=np.int64)
            # accepted prefix length = failures before the first rejection, a geometric count
            accepted = rng.geometric(1.0 - a, size=n) - 1
            return np.minimum(accepted, k) + 1
        accepted = rng.random((n, k)) < self.rates_for(k)
        return np.logical_and.accumulate(accepted, axis=1).sum(axis=1) + 1


@dataclass(frozen=True)
class Utilization:
    """Jacobi / lookahead: committed tokens per forward at a width, piecewise linear in ``log2(width)``
    between the given points (flat past the last). A row commits ``floor(tau)`` tokens plus one more
    with probability ``frac(tau)``, so its mean is exactly ``tau(width)``."""

    widths: tuple[int, ...]
    tokens: tuple[float, ...]

    def tau(self, width: int) -> float:
        return _tau(self.widths, self.tokens, width)

    def sample_tokens(self, rng: np.random.Generator, n: int, width: int) -> np.ndarray:
        tau = self.tau(width)
        whole = math.floor(tau)
        return whole + (rng.random(n) < tau - whole)


@lru_cache(maxsize=4096)
def _tau(widths: tuple[int, ...], tokens: tuple[float, ...], width: int) -> float:
    """:meth:`Utilization.tau`, memoized: a Jacobi run asks it at every forward, for a handful of widths."""
    return float(np.interp(math.log2(width), np.log2(widths), tokens))


# ----------------------------------------------------------------------------------------------------
# Policies
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decoding(ABC):
    """What every decoding method is: a policy for how many positions a forward runs and what it commits.

    ``width`` is the positions per sequence of a forward (the ceiling when ``near_free``).
    ``prefill_emits_token``: the forward that ends a prompt samples the first output token (causal
    models); a diffusion LLM only caches its prompt and commits tokens in its block forwards.
    ``one_token_per_row``: every row commits exactly one token per forward (the engine skips counting).
    """

    name: str = "decoding"
    width: int = 1
    near_free: bool = False
    eps: float = 0.1

    method = "abstract"
    prefill_emits_token = True
    one_token_per_row = False

    @abstractmethod
    def commit(self, rng: np.random.Generator, rows, n: int, width: int) -> np.ndarray:
        """Tokens each of the first ``n`` rows commits in a forward of ``width`` positions (at most what
        it still owes); advances the rows' cached ``context`` and diffusion ``progress``."""

    @abstractmethod
    def expected_tokens(self, width: int) -> float:
        """Mean tokens one sequence commits in a forward of ``width`` positions (before capping)."""

    def proposals(self, width: int) -> int:
        """Proposer forwards run before a verification forward of ``width`` positions."""
        return 0

    @property
    def proposer_model(self) -> ModelSpec | None:
        """The model each proposal forward runs (draft, or the target's MTP layers); None if free."""
        return None

    def catch_up(self, n: int, width: int) -> tuple[tuple[int, int], ...]:
        """``(rows, positions)`` of the decode rows in the first proposer forward before a verification of
        ``width`` positions over ``n`` rows (only asked where :attr:`proposer_model` is set)."""
        return ((n, 1),) if n else ()

    def host_s_per_seq(self) -> float:
        """Host (CPU) time per decode row per step that proposals without a model forward take."""
        return 0.0

    @abstractmethod
    def describe(self) -> str:
        """One line naming the method and its settings."""


@dataclass(frozen=True)
class Autoregressive(Decoding):
    """One position, one token per forward."""

    name: str = "ar"

    method = "ar"
    one_token_per_row = True

    def commit(self, rng, rows, n, width):
        rows.context[:n] += 1
        return _ONES[:n] if n <= len(_ONES) else np.ones(n, dtype=np.int64)

    def expected_tokens(self, width: int) -> float:
        return 1.0

    def describe(self) -> str:
        return "autoregressive"


def _advance(rows, n: int, tokens: np.ndarray) -> np.ndarray:
    """Cap ``tokens`` at what each row still owes, and grow its cached context by them."""
    np.minimum(tokens, rows.remaining[:n], out=tokens)
    rows.context[:n] += tokens
    return tokens


@dataclass(frozen=True)
class Speculative(Decoding):
    """``k`` proposals verified in one forward of ``k + 1`` positions."""

    name: str = "speculative"
    acceptance: Acceptance = Acceptance((0.7,))
    proposer: str = "free"
    proposer_model: ModelSpec | None = None  # what a proposal forward runs: a draft model or the MTP layers
    proposal_host_s: float = FREE_PROPOSAL_HOST_S  # proposer="free": host lookup time per sequence per step

    method = "speculative"

    @property
    def k(self) -> int:
        return self.width - 1

    def commit(self, rng, rows, n, width):
        return _advance(rows, n, self.acceptance.sample_tokens(rng, n, width - 1))

    def expected_tokens(self, width: int) -> float:
        return self.acceptance.expected_tokens(width - 1)

    def proposals(self, width: int) -> int:
        return width - 1 if self.proposer_model is not None else 0

    def catch_up(self, n: int, width: int) -> tuple[tuple[int, int], ...]:
        """The proposer's first forward of a step runs over what the last verification committed: the
        ``a`` accepted proposals plus the target's own token, ``a + 1`` positions per row (scoring the last),
        and its last position yields the first new proposal.

        MTP heads need this pass too: a DeepSeek-V3 MTP module is one more transformer block fed by the
        target's last hidden state at position ``i`` and the embedding of token ``i + 1``, with its own
        attention and KV cache. The target's hidden states of the accepted positions exist only once the
        verification has run, and the entries the head wrote while proposing came from its own hidden
        states (k > 1 reuses the head on its output), so every committed position is run through it again
        (vLLM's EAGLE/MTP proposer and SGLang's draft-extend run accepted + 1 positions per sequence).
        A separate draft model is priced the same way, as engines that recompute the committed tokens do;
        one that kept the KV its draft wrote for accepted proposals would run fewer positions (the
        target's token, and the last proposal where all ``k`` were accepted).

        The acceptance of the previous step is not at hand when a step is priced (it is drawn when the
        step completes, and rows join and leave between steps), so the rows are split by its expectation:
        ``n * P(a + 1 = j)`` rows of ``j`` positions, rounded by largest remainder, for the current ``k``
        (a near-free width changes ``k`` between steps). Rows fresh from prefill, which catch up on one
        token, are counted alike."""
        return apportion(n, self.acceptance.tokens_pmf(width - 1))

    def host_s_per_seq(self) -> float:
        return self.proposal_host_s if self.proposer_model is None else 0.0

    def describe(self) -> str:
        rates = self.acceptance.rates
        acc = f"acceptance {rates[0]:g}" if len(rates) == 1 else f"acceptance {list(rates)}"
        model = self.proposer_model
        by = {"draft": f"draft {model.name if model else ''}",
              "free": f"free proposals, {self.proposal_host_s * 1e6:g} us/seq host",
              "mtp": f"MTP {model.num_layers if model else 0} layer(s)"}[self.proposer]
        return f"speculative k={self.k} ({by}, {acc}{', near-free width' if self.near_free else ''})"


def apportion(n: int, pmf: np.ndarray) -> tuple[tuple[int, int], ...]:
    """``n`` rows split over widths ``1 .. len(pmf)`` in proportion to ``pmf`` (largest remainder, ties
    to the narrower width): ``(rows, width)`` pairs with rows > 0, narrowest first."""
    exact = n * pmf
    counts = np.floor(exact).astype(np.int64)
    left = n - int(counts.sum())
    if left > 0:
        counts[np.argsort(counts - exact, kind="stable")[:left]] += 1
    return tuple((int(c), j + 1) for j, c in enumerate(counts) if c > 0)


@dataclass(frozen=True)
class Diffusion(Decoding):
    """A block of ``width`` masked positions per forward over a cached prefix (block-wise KV cache).

    ``threshold``: each still-masked position clears the confidence threshold in a forward with
    probability ``unmask_prob``, independently; at least one (the most confident) is committed, so a
    forward with ``m`` masked positions commits ``max(1, Binomial(m, p))``, mean ``m*p + (1-p)**m``.
    ``schedule``: the block is committed over ``steps_per_block`` forwards, ``block // steps`` tokens
    each and one more in the first ``block % steps`` (LLaDA's schedule).
    The block's cache entries are written once it is fully committed, then the next block starts.
    """

    name: str = "diffusion"
    commit_model: str = "threshold"
    unmask_prob: float = 0.2
    steps_per_block: int = 8

    method = "diffusion"
    prefill_emits_token = False

    def commit(self, rng, rows, n, width):
        progress = rows.progress[:n]
        masked = width - progress
        if self.commit_model == "threshold":
            tokens = np.maximum(rng.binomial(masked, self.unmask_prob), 1)
        else:
            base, extra = divmod(width, self.steps_per_block)
            tokens = np.where(progress < extra * (base + 1), base + 1, base)
        np.minimum(tokens, rows.remaining[:n], out=tokens)
        progress += tokens
        done = progress >= width
        rows.context[:n][done] += width
        progress[done] = 0
        return tokens

    def expected_tokens(self, width: int) -> float:
        """Mean tokens per forward over a block: the block over the expected forwards it takes."""
        if self.commit_model == "threshold":
            return width / forwards_per_block(width, self.unmask_prob)
        return width / self.steps_per_block

    def expected_first_commit(self, masked: int) -> float:
        """Mean tokens the threshold model commits in one forward with ``masked`` masked positions."""
        p = self.unmask_prob
        return masked * p + (1 - p) ** masked

    def describe(self) -> str:
        how = (f"threshold, unmask prob {self.unmask_prob:g}" if self.commit_model == "threshold"
               else f"{self.steps_per_block} steps per block")
        return f"diffusion block {self.width} ({how})"


@lru_cache(maxsize=256)
def forwards_per_block(block: int, p: float) -> float:
    """Expected forwards to commit a block under the threshold model: with ``m`` masked positions a
    forward commits ``J = max(1, Binomial(m, p))``, so ``F(m) = 1 + sum_j P(J = j) F(m - j)``, ``F(0) = 0``."""
    if p >= 1.0:
        return 1.0
    forwards = np.zeros(block + 1)
    for m in range(1, block + 1):
        j = np.arange(m + 1)
        log_choose = np.concatenate(([0.0], np.cumsum(np.log(m - j[:-1]) - np.log(j[1:]))))  # log C(m, j)
        pmf = np.exp(log_choose + j * math.log(p) + (m - j) * math.log1p(-p))
        pmf[1] += pmf[0]  # nothing clears the threshold: the most confident position is committed anyway
        forwards[m] = 1.0 + float(np.dot(pmf[1:], forwards[m - 1::-1]))
    return float(forwards[block])


@dataclass(frozen=True)
class Jacobi(Decoding):
    """Jacobi / lookahead decoding as a generic width with a token-utilization curve."""

    name: str = "jacobi"
    utilization: Utilization = Utilization((1, 2, 4, 8, 16, 32, 64), (1.0, 1.3, 1.6, 1.9, 2.1, 2.3, 2.4))
    proposal_host_s: float = FREE_PROPOSAL_HOST_S  # host upkeep of the guesses per sequence per step

    method = "jacobi"

    def commit(self, rng, rows, n, width):
        return _advance(rows, n, self.utilization.sample_tokens(rng, n, width))

    def expected_tokens(self, width: int) -> float:
        return self.utilization.tau(width)

    def host_s_per_seq(self) -> float:
        return self.proposal_host_s

    def describe(self) -> str:
        return (f"jacobi width {self.width} ({self.proposal_host_s * 1e6:g} us/seq host"
                f"{', near-free width' if self.near_free else ''})")


def mtp_model(target: ModelSpec, layers: int) -> ModelSpec:
    """``layers`` extra decoder layers of ``target`` with its embedding and LM head (DeepSeek-V3 MTP):
    what one proposal step runs."""
    dense = layers if not target.is_moe else 0
    return replace(target, name=f"{target.name}_mtp{layers}", num_layers=layers, num_dense_layers=dense)


def proposer_weight_bytes(decoding: Decoding, target: ModelSpec) -> int:
    """Weights the proposer adds: a whole draft model; MTP layers share the target's embedding/head."""
    model = decoding.proposer_model
    if model is None:
        return 0
    if getattr(decoding, "proposer", None) == "mtp":
        shared = target.vocab_size * target.hidden_size * (1 if target.tie_embeddings else 2)
        return model.weight_bytes() - shared * target.bytes_per_element
    return model.weight_bytes()
