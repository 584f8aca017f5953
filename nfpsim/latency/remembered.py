"""Forward times remembered across runs: a simulation prices each distinct forward shape once per run,
and a what-if study reruns the same model on the same GPU again and again.

:func:`remember_forward_times` wraps a latency model so that ``forward_time`` first looks a shape up in
a file of times this same pricing computed before, and :meth:`RememberedForwardTimes.save` adds the
new ones. The file is named by everything a price depends on:

- the latency model's whole state (kind, GPU and kernel specs, constants), read field by field into a
  canonical form (sets sorted, floats by their exact repr), its op cache left out; an object with a
  ``__fingerprint__`` method names itself (a calibrated model: its specs and its table, a table: the
  sha256 of its file);
- the code that prices: every ``.py`` file of the installed nfpsim (paths and bytes) and the Python
  version;

and each entry by the model's spec (canonical form, as above) and the forward shape (its repr). Any change
to a spec, a constant, a measurement or the code is another file or another key: a time is only ever
reused for the same computation, so a run from remembered times gives the same figures, bit for bit.

Files live in ``prices/`` of the cache directory (:mod:`nfpsim.cache`: ``$NFPSIM_CACHE_DIR``, ``off``
turns it off); the newest :data:`MAX_FILES` are kept, each up to :data:`MAX_ENTRIES` times. An
unreadable or unwritable cache is ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from nfpsim import io
from nfpsim.cache import cache_dir, keep_newest, source_digest

MAX_FILES = 64
MAX_ENTRIES = 100_000
MAX_MODELS = 10_000  # model specs whose digests are kept (a search meets a new one per trial)
_NOT_STATE = ("_costs",)  # the latency model's op cache: what it holds does not change a price


def canonical(value: Any) -> Any:
    """A form of ``value`` whose ``repr`` is the same in every process for equal contents: dataclasses
    and objects by type and fields, mappings by sorted items, sets sorted, floats exact."""
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, type) or callable(value) and hasattr(value, "__qualname__"):  # classes, functions
        return ("code", getattr(value, "__module__", None), value.__qualname__)
    if isinstance(value, float):
        return ("float", repr(value))
    if hasattr(value, "__fingerprint__") and not isinstance(value, type):  # what the object says names it
        return (type(value).__qualname__, canonical(value.__fingerprint__()))
    if isinstance(value, (list, tuple)):
        return tuple(canonical(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return ("set", tuple(sorted((canonical(v) for v in value), key=repr)))
    if isinstance(value, dict):
        return ("dict", tuple(sorted(((canonical(k), canonical(v)) for k, v in value.items()), key=repr)))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = tuple((f.name, canonical(getattr(value, f.name))) for f in dataclasses.fields(value))
        return (type(value).__qualname__, fields)
    if hasattr(value, "__dict__"):
        state = {k: v for k, v in vars(value).items() if k not in _NOT_STATE}
        return (type(value).__qualname__, canonical(state))
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return (type(value).__name__, canonical(value.tolist()))
    raise TypeError(f"cannot fingerprint a {type(value).__name__}")


def digest(value: Any) -> str:
    return hashlib.sha256(repr(canonical(value)).encode()).hexdigest()


class RememberedForwardTimes:
    """``latency`` with ``forward_time`` served from and added to ``path`` (None: remembered in this
    process only); every other attribute is the latency model's own."""

    def __init__(self, latency, path: Path | None):
        self._latency = latency
        self._path = path
        self._times: dict[str, float] = _read(path) if path is not None else {}
        self._new = 0
        self._models: dict[int, tuple[Any, str]] = {}

    def __getattr__(self, name: str):
        if name == "_latency":  # not yet set (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self._latency, name)

    def _model_digest(self, model) -> str:
        """The model's spec less its name and description, which never enter a time (a search names each
        trial's model ``trial<N>_...``; trials of one shape share their forwards)."""
        known = self._models.get(id(model))
        if known is None or known[0] is not model:
            if len(self._models) >= MAX_MODELS:
                self._models.clear()
            unnamed = dataclasses.replace(model, name="", description="") if _named(model) else model
            known = self._models[id(model)] = (model, digest(unnamed))
        return known[1]

    def forward_time(self, model, shape) -> float:
        key = f"{self._model_digest(model)} {shape!r}"
        time_s = self._times.get(key)
        if time_s is None:
            time_s = self._latency.forward_time(model, shape)
            if len(self._times) < MAX_ENTRIES:
                self._times[key] = time_s
                self._new += 1
        return time_s

    @property
    def new_entries(self) -> int:
        return self._new

    def save(self) -> None:
        """Add the times priced in this run to the file (with what other runs added meanwhile)."""
        if not self._new or self._path is None:
            return
        try:
            io.write_text(self._path, json.dumps({**_read(self._path), **self._times}))
            keep_newest(self._path.parent, MAX_FILES)
        except OSError:
            return
        self._new = 0


def _named(model) -> bool:
    return dataclasses.is_dataclass(model) and {"name", "description"} <= {f.name for f in dataclasses.fields(model)}


def _read(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, float)}


def remember_forward_times(latency) -> RememberedForwardTimes:
    """``latency`` wrapped in :class:`RememberedForwardTimes`: with its file in the cache, or without one
    when the cache is off or the model's state cannot be fingerprinted."""
    root = cache_dir()
    if root is None:
        return RememberedForwardTimes(latency, None)
    try:
        name = digest([sys.version, source_digest(), type(latency).__module__, latency])
    except (TypeError, OSError, RecursionError):
        return RememberedForwardTimes(latency, None)
    return RememberedForwardTimes(latency, root / "prices" / f"{name}.json")
