"""What arrives at the server: when requests come and how many prompt and output tokens each carries.

Open loop: Poisson arrivals at ``rate_per_s``, or bursty ones whose gaps are Gamma distributed with
mean ``1/rate_per_s`` and coefficient of variation ``cv`` (``cv = 1`` is Poisson, larger is burstier).
Closed loop: ``num_clients`` clients each send a request, wait for its last token, think for
``think_time_s`` and send the next. Trace: arrival times and lengths read from a CSV or JSONL file with
the fields ``arrival_s``, ``prompt_tokens``, ``output_tokens``.

Every random draw comes from the one ``numpy.random.Generator`` passed in, in a fixed order (arrival
gaps, prompt lengths, output lengths), so a seed fixes the workload.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from nfpsim.config import CONF_DIR, ConfigReader
from nfpsim.errors import ConfigError

ARRIVALS = ("poisson", "gamma", "closed", "trace")
SHARING = ("none", "system_prompt", "session")
LENGTH_KINDS = ("fixed", "uniform", "lognormal")
TRACE_FIELDS = ("arrival_s", "prompt_tokens", "output_tokens")


@dataclass(frozen=True)
class LengthSpec:
    """A token-length distribution: ``fixed`` at ``value``; ``uniform`` integers in ``[low, high]``;
    ``lognormal`` with ``median`` and log-space ``sigma``, rounded and clipped to ``[low, high]``."""

    kind: str
    low: int
    high: int
    median: float = 0.0
    sigma: float = 0.0

    @classmethod
    def from_config(cls, data: Any, prefix: str) -> LengthSpec:
        if isinstance(data, int) and not isinstance(data, bool):  # a bare number is a fixed length
            data = {"dist": "fixed", "value": data}
        r = ConfigReader(data, prefix)
        kind = r.str("dist", choices=LENGTH_KINDS)
        if kind == "fixed":
            value = r.int("value", low=1)
            return cls(kind, value, value)
        low = r.int("low", low=1, default=1)
        if kind == "uniform":
            high = r.int("high", low=low)
            return cls(kind, low, high)
        median = r.float("median", low=1)
        high = r.int("high", low=max(low, math.ceil(median)))
        return cls(kind, low, high, median, r.float("sigma", low=0, high=4))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` lengths (read-only: a fixed length is one value seen ``n`` times, no memory per request)."""
        if self.kind == "fixed":
            return np.broadcast_to(np.int64(self.low), (n,))
        if self.kind == "uniform":
            return rng.integers(self.low, self.high, size=n, endpoint=True)
        draws = np.rint(rng.lognormal(math.log(self.median), self.sigma, size=n)).astype(np.int64)
        return np.clip(draws, self.low, self.high)


@dataclass(frozen=True)
class Trace:
    """Requests read from a file, validated row by row; arrival times sorted, lengths positive."""

    path: Path
    arrival_s: tuple[float, ...]
    prompt_tokens: tuple[int, ...]
    output_tokens: tuple[int, ...]

    @classmethod
    def read(cls, path: Path, key: str) -> Trace:
        rows = _read_rows(path, key)
        if not rows:
            raise ConfigError(f"{key}={path}: the trace has no requests")
        arrivals, prompts, outputs = [], [], []
        previous = 0.0
        for line, row in rows:
            where = f"{key}={path} line {line}"
            missing = [f for f in TRACE_FIELDS if f not in row or row[f] in (None, "")]
            if missing:
                raise ConfigError(f"{where}: missing {', '.join(missing)} (fields: {', '.join(TRACE_FIELDS)})")
            arrival = _number(row["arrival_s"], where, "arrival_s", float)
            prompt = _number(row["prompt_tokens"], where, "prompt_tokens", int)
            output = _number(row["output_tokens"], where, "output_tokens", int)
            if arrival < 0:
                raise ConfigError(f"{where}: arrival_s={arrival} is negative")
            if arrival < previous:
                raise ConfigError(f"{where}: arrival_s={arrival} is before the previous arrival {previous} "
                                  f"(times must be sorted)")
            for name, value in (("prompt_tokens", prompt), ("output_tokens", output)):
                if value < 1:
                    raise ConfigError(f"{where}: {name}={value} must be >= 1")
            previous = arrival
            arrivals.append(arrival)
            prompts.append(prompt)
            outputs.append(output)
        return cls(path, tuple(arrivals), tuple(prompts), tuple(outputs))


def _read_rows(path: Path, key: str) -> list[tuple[int, dict]]:
    """``(line number, row)`` pairs of a CSV (header line first) or JSONL file."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{key}={path}: cannot read the trace ({error.strerror})") from None
    if path.suffix == ".jsonl":
        rows = []
        for line, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError:
                raise ConfigError(f"{key}={path} line {line}: not a JSON object") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{key}={path} line {line}: not a JSON object")
            rows.append((line, row))
        return rows
    if path.suffix != ".csv":
        raise ConfigError(f"{key}={path}: a trace must be a .csv or .jsonl file")
    reader = csv.DictReader(text.splitlines())
    return [(i + 2, row) for i, row in enumerate(reader)]


def _number(raw: Any, where: str, name: str, kind: type) -> float | int:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or (kind is int and not value.is_integer()):
        raise ConfigError(f"{where}: {name}={raw!r} is not {'an integer' if kind is int else 'a number'}")
    return kind(value)


def resolve_path(raw: str) -> Path:
    """A relative trace path is looked up in the current directory, then under ``conf/``."""
    path = Path(raw).expanduser()
    if path.is_absolute() or path.exists():
        return path
    in_conf = CONF_DIR / path
    return in_conf if in_conf.exists() else path


@dataclass(frozen=True)
class SharingSpec:
    """Shared prompt prefixes. ``system_prompt``: each request starts with one of ``count`` system prompts
    of ``prefix_tokens`` tokens (popularity ~ 1/rank**zipf; 0: uniform) before its own prompt.
    ``session``: requests are turns of ``count`` interleaved chat sessions (request i is a turn of
    session i mod count); a turn's prompt is the session's history (earlier prompts and outputs) plus
    its own, and a session starts over when a turn would exceed ``max_tokens``."""

    kind: str = "none"
    count: int = 1
    prefix_tokens: int = 0
    zipf: float = 0.0
    max_tokens: int = 4096

    @classmethod
    def from_config(cls, data: Any, prefix: str) -> SharingSpec:
        r = ConfigReader(data, prefix)
        kind = r.str("kind", choices=SHARING, default="none")
        if kind == "none":
            return cls()
        count = r.int("count", low=1, high=1_000_000)
        if kind == "system_prompt":
            return cls(kind, count, prefix_tokens=r.int("prefix_tokens", low=1, high=1 << 20),
                       zipf=r.float("zipf", low=0, high=10, default=0.0))
        return cls(kind, count, max_tokens=r.int("max_tokens", low=2, high=1 << 20))


@dataclass(frozen=True)
class WorkloadSpec:
    arrival: str
    num_requests: int
    rate_per_s: float = 1.0
    cv: float = 1.0  # coefficient of variation of the gaps (gamma arrivals)
    num_clients: int = 1
    think_time_s: float = 0.0
    prompt: LengthSpec = LengthSpec("fixed", 512, 512)
    output: LengthSpec = LengthSpec("fixed", 256, 256)
    trace: Trace | None = None
    sharing: SharingSpec = SharingSpec()

    @classmethod
    def from_config(cls, data: Any, prefix: str = "workload") -> WorkloadSpec:
        r = ConfigReader(data, prefix)
        arrival = r.str("arrival", choices=ARRIVALS)
        if arrival == "trace":
            trace = Trace.read(resolve_path(r.str("trace_file")), r.key("trace_file"))
            wanted = r.int("num_requests", low=1, default=len(trace.arrival_s))
            return cls(arrival, min(wanted, len(trace.arrival_s)), trace=trace)
        spec = cls(
            arrival=arrival,
            num_requests=r.int("num_requests", low=1, high=10_000_000),
            prompt=LengthSpec.from_config(r.raw("prompt_tokens"), r.key("prompt_tokens")),
            output=LengthSpec.from_config(r.raw("output_tokens"), r.key("output_tokens")),
            sharing=SharingSpec.from_config(r.raw("sharing", {}), r.key("sharing")),
        )
        if spec.sharing.kind == "session" and spec.prompt.high + spec.output.high > spec.sharing.max_tokens:
            raise ConfigError(f"{r.key('sharing.max_tokens')}={spec.sharing.max_tokens}: below one turn of up to "
                              f"{spec.prompt.high + spec.output.high} tokens (prompt + output)")
        if arrival == "closed":
            return replace(spec, num_clients=r.int("num_clients", low=1, high=100_000),
                            think_time_s=r.float("think_time_s", low=0, default=0.0))
        spec = replace(spec, rate_per_s=r.float("rate_per_s", low=0, low_open=True))
        if arrival == "gamma":
            spec = replace(spec, cv=r.float("cv", low=0, high=100, low_open=True))
        return spec

    @property
    def max_prompt_tokens(self) -> int:
        if self.trace:
            return max(self.trace.prompt_tokens[: self.num_requests])
        if self.sharing.kind == "session":
            return self.sharing.max_tokens - self.output.low
        return self.prompt.high + self.sharing.prefix_tokens

    @property
    def max_output_tokens(self) -> int:
        return max(self.trace.output_tokens[: self.num_requests]) if self.trace else self.output.high

    @property
    def max_request_tokens(self) -> int:
        """Largest prompt + output any request of this workload can have."""
        if self.trace:
            n = self.num_requests
            return max(p + o for p, o in zip(self.trace.prompt_tokens[:n], self.trace.output_tokens[:n]))
        if self.sharing.kind == "session":
            return self.sharing.max_tokens
        return self.prompt.high + self.output.high + self.sharing.prefix_tokens

    def describe(self) -> str:
        if self.trace:
            return f"trace {self.trace.path.name}, {self.num_requests} requests"
        load = {"poisson": f"Poisson {self.rate_per_s:g} req/s",
                "gamma": f"Gamma {self.rate_per_s:g} req/s (cv {self.cv:g})",
                "closed": f"closed loop, {self.num_clients} clients"}[self.arrival]
        shared = {"none": "", "system_prompt": f", {self.sharing.count} system prompts of "
                  f"{self.sharing.prefix_tokens} tokens", "session": f", {self.sharing.count} chat sessions"}
        return (f"{load}, {self.num_requests} requests, prompt {_describe(self.prompt)}, "
                f"output {_describe(self.output)} tokens{shared[self.sharing.kind]}")


def _describe(length: LengthSpec) -> str:
    if length.kind == "fixed":
        return str(length.low)
    if length.kind == "uniform":
        return f"U[{length.low}, {length.high}]"
    return f"lognormal(median {length.median:g}, sigma {length.sigma:g}) in [{length.low}, {length.high}]"


@dataclass(frozen=True)
class Workload:
    """Drawn requests, by id. ``arrival_s`` is None in a closed loop (clients decide when)."""

    arrival_s: np.ndarray | None
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    prefix_id: np.ndarray | None = None  # shared prefix per request (-1: none); None: no sharing
    prefix_tokens: np.ndarray | None = None  # leading prompt tokens that prefix covers
    cache_tokens: np.ndarray | None = None  # tokens left cached under the prefix when the request ends

    @property
    def num_requests(self) -> int:
        return len(self.prompt_tokens)


def generate(spec: WorkloadSpec, rng: np.random.Generator) -> Workload:
    """Draw the workload: arrival gaps first, then prompt lengths, then output lengths."""
    n = spec.num_requests
    if spec.trace is not None:
        t = spec.trace
        return Workload(np.array(t.arrival_s[:n]), np.array(t.prompt_tokens[:n], dtype=np.int64),
                        np.array(t.output_tokens[:n], dtype=np.int64))
    arrival_s = None
    if spec.arrival == "poisson":
        arrival_s = np.cumsum(rng.exponential(1.0 / spec.rate_per_s, size=n))
    elif spec.arrival == "gamma":
        shape = 1.0 / spec.cv**2  # CV of a Gamma(k, theta) is 1/sqrt(k); mean k*theta = 1/rate
        arrival_s = np.cumsum(rng.gamma(shape, 1.0 / (spec.rate_per_s * shape), size=n))
    drawn = Workload(arrival_s, spec.prompt.sample(rng, n), spec.output.sample(rng, n))
    if spec.sharing.kind == "system_prompt":
        return _system_prompts(drawn, spec.sharing, rng)
    if spec.sharing.kind == "session":
        return _sessions(drawn, spec.sharing)
    return drawn


def _system_prompts(drawn: Workload, sharing: SharingSpec, rng: np.random.Generator) -> Workload:
    """Each request gets one of the system prompts (drawn after the lengths) ahead of its own prompt."""
    weights = 1.0 / np.arange(1, sharing.count + 1) ** sharing.zipf
    ids = rng.choice(sharing.count, size=drawn.num_requests, p=weights / weights.sum())
    length = np.full(drawn.num_requests, sharing.prefix_tokens, dtype=np.int64)
    return replace(drawn, prompt_tokens=drawn.prompt_tokens + sharing.prefix_tokens, prefix_id=ids,
                   prefix_tokens=length, cache_tokens=length)


def _sessions(drawn: Workload, sharing: SharingSpec) -> Workload:
    """Request i is the next turn of session i mod count: its history, then its own drawn prompt."""
    n = drawn.num_requests
    own, out = drawn.prompt_tokens.tolist(), drawn.output_tokens.tolist()
    history = [0] * sharing.count
    started = list(range(sharing.count))  # a session's current id: it changes when the session starts over
    ids, prefix, prompt = (np.zeros(n, dtype=np.int64) for _ in range(3))
    for i in range(n):
        s = i % sharing.count
        if history[s] + own[i] + out[i] > sharing.max_tokens:
            history[s], started[s] = 0, started[s] + sharing.count
        ids[i], prefix[i], prompt[i] = started[s], history[s], history[s] + own[i]
        history[s] += own[i] + out[i]
    return replace(drawn, prompt_tokens=prompt, prefix_id=ids, prefix_tokens=prefix,
                   cache_tokens=prompt + drawn.output_tokens)
