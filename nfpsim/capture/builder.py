"""User forwards for ``nfpsim-nfp forward=package.module:builder``.

The builder contract: ``builder(batch, positions, context)`` returns ``(fn, args)`` or
``(fn, args, kwargs)``, where ``fn(*args, **kwargs)`` runs one forward of ``batch`` sequences, each with
``positions`` new tokens over ``context`` cached ones, on tensors created on ``meta`` (the modules'
parameters too: build them under ``with torch.device("meta"):``). It is called once per position count
of the sweep, so it should cache what does not depend on the shape (the model). ``package.module`` is
imported from the current directory or the installed packages; ``path/to/file.py:builder`` names a file.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path

from nfpsim.capture.graph import OpGraph
from nfpsim.capture.rules import CaptureError
from nfpsim.shapes import Op


def load_builder(spec: str) -> Callable:
    """The callable ``spec`` (``package.module:builder`` or ``file.py:builder``) names."""
    where, sep, attr = str(spec).rpartition(":")
    if not sep or not where or not attr:
        raise CaptureError(f"forward={spec}: must name a builder as package.module:builder")
    try:
        module = _import(where)
    except Exception as error:
        raise CaptureError(f"forward={spec}: cannot import {where}: {type(error).__name__}: "
                           f"{_first_line(error)}") from None
    builder = getattr(module, attr, None)
    if not callable(builder):
        raise CaptureError(f"forward={spec}: {where} has no callable {attr!r}")
    return builder


def _import(where: str):
    if where.endswith(".py"):
        path = Path(where).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"no file {where}")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module
    if os.getcwd() not in sys.path:  # as `python -m` would: the user's own packages are importable
        sys.path.insert(0, os.getcwd())
    return importlib.import_module(where)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def capture_builder(builder: Callable, spec: str, batch: int, positions: int, context: int) -> OpGraph:
    """The captured forward the builder builds for one shape; every failure is one CaptureError line."""
    from nfpsim.capture import capture

    call = f"forward={spec}: builder({batch}, {positions}, {context})"
    try:
        built = builder(batch, positions, context)
    except Exception as error:
        raise CaptureError(f"{call} raised {type(error).__name__}: {_first_line(error)}") from None
    if not (isinstance(built, tuple) and len(built) in (2, 3) and callable(built[0])
            and isinstance(built[1], (tuple, list)) and (len(built) == 2 or isinstance(built[2], dict))):
        raise CaptureError(f"{call} returned {type(built).__name__}; it must return (fn, args) or "
                           f"(fn, args, kwargs) with fn callable, args a tuple, kwargs a dict")
    fn, args, kwargs = built[0], tuple(built[1]), (built[2] if len(built) == 3 else {})
    try:
        return capture(fn, *args, **kwargs)
    except CaptureError as error:
        raise CaptureError(f"{call}: {error}") from None


def forward_ops(spec: str, batch: int, context: int) -> Callable[[int], tuple[Op, ...]]:
    """``M -> ops`` of the builder's forward at ``M`` positions (merged: what the NFP sweep prices).
    The builder is loaded and captured at ``M = 1`` now, so a bad one fails before anything runs."""
    builder = load_builder(spec)

    def ops(positions: int) -> tuple[Op, ...]:
        return capture_builder(builder, spec, batch, positions, context).merged().priced_ops()

    ops(1)
    return ops
