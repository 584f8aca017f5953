"""Decoding methods from a ``conf/decoding/*.yaml`` mapping: the config boundary of :mod:`nfpsim.sim.decoding`.

The policies themselves read no file; this module validates the mapping (one line naming the key and
its allowed range on a bad value) and resolves a draft model's name through the config layer.
"""

from __future__ import annotations

from typing import Any

from nfpsim.config import ConfigReader, ModelSpec, load_model
from nfpsim.errors import ConfigError
from nfpsim.sim.decoding import (DIFFUSION_COMMITS, FREE_PROPOSAL_HOST_US, PROPOSERS, Acceptance, Autoregressive,
                                 Decoding, Diffusion, Jacobi, Speculative, Utilization, mtp_model)

METHODS = ("ar", "speculative", "diffusion", "jacobi")
WIDTH_POLICIES = ("fixed", "near_free")




def decoding_from_config(data: Any, target: ModelSpec, eps: float, prefix: str = "decoding") -> Decoding:
    """The policy a ``conf/decoding/*.yaml`` describes, for ``target``; ``eps`` is the near-free budget."""
    r = ConfigReader(data, prefix)
    method = r.str("method", choices=METHODS)
    name = r.str("name", default=method)
    if method == "ar":
        return Autoregressive(name=name, eps=eps)
    near_free = False
    if method in ("speculative", "jacobi"):
        near_free = r.str("width_policy", choices=WIDTH_POLICIES, default="fixed") == "near_free"
    common = dict(name=name, near_free=near_free, eps=eps)
    if method == "speculative":
        k = r.int("k", low=1, high=63)
        proposer = r.str("proposer", choices=PROPOSERS)
        host = dict(proposal_host_s=_host_s(r)) if proposer == "free" else {}
        return Speculative(width=k + 1, acceptance=_acceptance(r.section("acceptance"), k),
                           proposer=proposer, proposer_model=_proposer_model(r, proposer, target), **host, **common)
    if method == "diffusion":
        block = r.int("block_size", low=1, high=1024)
        if r.str("commit", choices=DIFFUSION_COMMITS) == "threshold":
            return Diffusion(width=block, commit_model="threshold",
                             unmask_prob=r.float("unmask_prob", low=0, high=1, low_open=True), **common)
        return Diffusion(width=block, commit_model="schedule",
                         steps_per_block=r.int("steps_per_block", low=1, high=block), **common)
    return Jacobi(width=r.int("width", low=1, high=1024), utilization=_utilization(r, "utilization"),
                  proposal_host_s=_host_s(r), **common)


def _host_s(r: ConfigReader) -> float:
    """``proposal_host_us``: host time of proposals made without a model, per sequence per step
    (default :data:`~nfpsim.sim.decoding.FREE_PROPOSAL_HOST_US`, an estimate)."""
    return r.float("proposal_host_us", low=0, high=1e6, default=FREE_PROPOSAL_HOST_US) / 1e6


def _acceptance(r: ConfigReader, k: int) -> Acceptance:
    rates = r.raw("rates", None)
    if rates is None:
        return Acceptance((r.float("rate", low=0, high=1),))
    values = _float_list(rates, r.key("rates"))
    if len(values) < k:
        raise ConfigError(f"{r.key('rates')}: {len(values)} rates for k={k} proposals; give at least k")
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise ConfigError(f"{r.key('rates')}={values}: every rate must be in [0, 1]")
    return Acceptance(tuple(values))


def _utilization(r: ConfigReader, key: str) -> Utilization:
    points = r.raw(key)
    try:
        pairs = [(int(w), float(t)) for w, t in points]
    except (TypeError, ValueError):
        raise ConfigError(f"{r.key(key)}: must be a list of [width, tokens] pairs") from None
    widths = [w for w, _ in pairs]
    tokens = [t for _, t in pairs]
    if not pairs or widths[0] != 1 or tokens[0] != 1.0:
        raise ConfigError(f"{r.key(key)}: must start at [1, 1.0] (one position commits one token)")
    if any(b <= a for a, b in zip(widths, widths[1:])):
        raise ConfigError(f"{r.key(key)}: widths must increase")
    if any(b < a for a, b in zip(tokens, tokens[1:])) or any(t > w for w, t in pairs):
        raise ConfigError(f"{r.key(key)}: tokens must not decrease and must be <= their width")
    return Utilization(tuple(widths), tuple(tokens))


def _float_list(raw: Any, key: str) -> list[float]:
    if isinstance(raw, (str, bytes)) or not hasattr(raw, "__iter__"):
        raise ConfigError(f"{key}={raw!r}: must be a list of numbers")
    try:
        return [float(v) for v in raw]
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={list(raw)}: must be a list of numbers") from None


def _proposer_model(r: ConfigReader, proposer: str, target: ModelSpec) -> ModelSpec | None:
    if proposer == "free":
        return None
    if proposer == "mtp":
        return mtp_model(target, r.int("mtp_layers", low=1, high=target.num_layers))
    draft = r.raw("draft_model")
    if isinstance(draft, str):
        try:
            return load_model(draft)
        except ConfigError as error:
            raise ConfigError(f"{r.key('draft_model')}={draft}: {str(error).split(': ', 1)[1]}") from None
    return ModelSpec.from_config(draft, r.key("draft_model"))
