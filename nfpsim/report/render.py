"""Reports of run directories: one block model, rendered as markdown or as a self-contained HTML page.

A run directory is recognised by the JSON its app writes last (``nfp.json``, ``simulate.json``, ...).
Each run kind is a :class:`RunKind`: that marker, its key figures (for listings and sweep tables) and
the blocks of its report section. ``nfp`` is built in here; any module of the ``nfpsim.report`` package
that defines ``KIND = RunKind(...)`` is picked up (``nfpsim/report/simulate.py`` does; a search app adds
``nfpsim/report/search.py``). A run of a kind nobody registered still gets a generic section: its
top-level figures and its plots.

Three views: a run directory; a multirun directory (numbered job directories: one table across the
sweep with the settings that vary); any other directory (``outputs/``): a listing of the runs below it.
Rendering only builds strings; the CLI writes them through :mod:`nfpsim.io`.
"""

from __future__ import annotations

import base64
import html
import importlib
import json
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

# ----------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True)
class Image:
    path: Path
    caption: str


Block = Heading | Text | Table | Image


def fmt(value: Any) -> str:
    """A figure for a table: 4 significant digits, integers whole, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.3e}"
    return str(value)


def to_markdown(title: str, blocks: Sequence[Block], base: Path) -> str:
    """Markdown with images linked relative to ``base`` (where the file will live)."""
    lines = [f"# {title}", ""]
    for block in blocks:
        if isinstance(block, Heading):
            lines += [f"{'#' * block.level} {block.text}", ""]
        elif isinstance(block, Text):
            lines += [block.text, ""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(block.columns) + " |")
            lines.append("|" + "---|" * len(block.columns))
            lines += ["| " + " | ".join(fmt(v).replace("|", "\\|") for v in row) + " |" for row in block.rows]
            lines.append("")
        else:
            lines += [f"![{block.caption}]({_relative(block.path, base)})", ""]
    return "\n".join(lines)


def _relative(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:.5em 0}
figure{margin:1em 0}figcaption{color:#555;font-size:.9em}p{white-space:pre-wrap}"""


def to_html(title: str, blocks: Sequence[Block]) -> str:
    """One self-contained page: the plots are inlined as base64 PNGs."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            out.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{html.escape(c)}</th>" for c in block.columns)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>"
                           for row in block.rows)
            out.append(f"<table><tr>{head}</tr>{body}</table>")
        elif block.path.is_file():
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            out.append(f"<figure><img alt='{html.escape(block.caption)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------
# Run kinds
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunKind:
    name: str
    marker: str  # the JSON an app writes last into a complete run directory
    figures: Callable[[dict], dict[str, Any]]  # a few key figures of a run, in display order
    section: Callable[[Path, dict], list[Block]]  # the body of its report


@dataclass(frozen=True)
class Run:
    path: Path
    kind: RunKind
    data: dict = field(repr=False)

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp((self.path / self.kind.marker).stat().st_mtime)


def _nfp_figures(data: dict) -> dict[str, Any]:
    return {"model": data.get("model"), "hardware": data.get("hardware"), "kernels": data.get("kernels"),
            "batch": data.get("batch"), "context": data.get("context"), "eps": data.get("eps"),
            "NFP": data.get("nfp"), "idle NFP": data.get("idle_nfp"), "factor": data.get("overprediction")}


def _nfp_section(path: Path, data: dict) -> list[Block]:
    rows = [("forward", data["forward"]["nfp"], data["forward"].get("idle_nfp"), data["forward"].get("factor"))]
    for name, curve in data.get("modules", {}).items():
        indent = "  " if curve.get("parent") else ""
        rows.append((f"{indent}{name}", curve["nfp"], curve.get("idle_nfp"), curve.get("factor")))
    blocks: list[Block] = [
        Text(f"NFP of {data['model']} on {data['hardware']} with {data['kernels']} kernels, batch {data['batch']}, "
             f"context {data['context']}, eps {data['eps']}, tp {data.get('tp', 1)}: NFP {data['nfp']} "
             f"positions per sequence; the FLOP/byte balance ({data['balance_flop_per_byte']:.0f}) predicts "
             f"{data['idle_nfp']}."),
        Table(("module", "NFP", "idle NFP", "factor"), tuple(rows)),
    ]
    return blocks + images(path, {"nfp.png": "latency(M) / latency(1) per module, NFP and idle-compute NFP"})


NFP_KIND = RunKind("nfp", "nfp.json", _nfp_figures, _nfp_section)


def images(path: Path, captions: Mapping[str, str]) -> list[Block]:
    """Image blocks for the plots of ``captions`` that exist in ``path``."""
    return [Image(path / name, caption) for name, caption in captions.items() if (path / name).is_file()]


def kinds() -> dict[str, RunKind]:
    """Every registered run kind: nfp, and ``KIND`` of each module in the ``nfpsim.report`` package."""
    import nfpsim.report as package

    found = {NFP_KIND.name: NFP_KIND}
    for info in pkgutil.iter_modules(package.__path__):
        kind = getattr(importlib.import_module(f"{package.__name__}.{info.name}"), "KIND", None)
        if isinstance(kind, RunKind):
            found[kind.name] = kind
    return found


def _generic_kind(marker: Path) -> RunKind:
    """A run nobody registered: its scalar figures and whatever plots it left."""
    def figures(data: dict) -> dict[str, Any]:
        return {k: v for k, v in list(data.items())[:12] if isinstance(v, (int, float, str, bool))}

    def section(path: Path, data: dict) -> list[Block]:
        rows = tuple((k, v) for k, v in data.items() if isinstance(v, (int, float, str, bool)))
        return [Table(("figure", "value"), rows)] + [Image(p, p.stem) for p in sorted(path.glob("*.png"))]

    return RunKind(marker.stem, marker.name, figures, section)


def load_run(path: Path, known: Mapping[str, RunKind] | None = None) -> Run | None:
    """The run in ``path``, or None: a registered marker first, else any ``<app>.json`` whose app name
    is the run directory's app (``outputs/<app>/...``)."""
    known = kinds() if known is None else known
    for kind in known.values():
        if (path / kind.marker).is_file():
            return Run(path, kind, _read_json(path / kind.marker))
    for marker in sorted(path.glob("*.json")):
        if marker.stem in path.parts:
            return Run(path, _generic_kind(marker), _read_json(marker))
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def find_runs(root: Path, max_depth: int = 6) -> list[Run]:
    """Run directories at or below ``root``, newest first."""
    known = kinds()
    runs: list[Run] = []

    def walk(path: Path, depth: int) -> None:
        run = load_run(path, known)
        if run is not None:
            runs.append(run)
            return
        if depth < max_depth:
            for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
                walk(child, depth + 1)

    walk(root, 0)
    return sorted(runs, key=lambda r: r.time, reverse=True)


def is_multirun(path: Path) -> bool:
    jobs = [p for p in path.iterdir() if p.is_dir() and p.name.isdigit()]
    return bool(jobs) and ((path / "multirun.yaml").is_file() or all(load_run(p) for p in jobs))


def multirun_jobs(path: Path) -> list[Run]:
    known = kinds()
    jobs = sorted((p for p in path.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    return [run for run in (load_run(p, known) for p in jobs) if run is not None]


# ----------------------------------------------------------------------------------------------------
# Sweeps: which settings vary between jobs
# ----------------------------------------------------------------------------------------------------


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: json.dumps(data) if isinstance(data, list) else data}


def varying_settings(configs: Sequence[Mapping]) -> list[dict[str, Any]]:
    """Per job, the config values that differ between the jobs (a group's name stands for its fields)."""
    flat = [_flatten(c) for c in configs]
    keys = sorted(set().union(*flat)) if flat else []
    varying = [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1]
    groups = {k.rsplit(".", 1)[0] for k in varying if k.endswith(".name")}
    shown = [k for k in varying if k.endswith(".name") or not any(k.startswith(g + ".") for g in groups)]
    return [{(k[:-5] if k.endswith(".name") else k): f.get(k) for k in shown} for f in flat]


def job_labels(runs: Sequence[Run]) -> list[str]:
    settings = varying_settings([run.data.get("config", {}) for run in runs])
    return [", ".join(f"{k}={fmt(v)}" for k, v in s.items()) or run.path.name for s, run in zip(settings, runs)]


def sweep_table(runs: Sequence[Run]) -> Table:
    """One row per job: its directory, the settings that vary, its key figures."""
    labels = job_labels(runs)
    figures = [run.kind.figures(run.data) for run in runs]
    columns = list(dict.fromkeys(k for f in figures for k in f))
    rows = tuple((run.path.name, label, *(f.get(c) for c in columns)) for run, label, f in zip(runs, labels, figures))
    return Table(("job", "settings", *columns), rows)


# ----------------------------------------------------------------------------------------------------
# The three views
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    title: str
    blocks: tuple[Block, ...]
    view: str  # "run", "multirun" or "listing"

    def markdown(self, base: Path) -> str:
        return to_markdown(self.title, self.blocks, base)

    def html(self) -> str:
        return to_html(self.title, self.blocks)


def run_report(run: Run) -> Report:
    return Report(f"{run.kind.name}: {run.path.name}", tuple(run.kind.section(run.path, run.data)), "run")


def multirun_report(path: Path) -> Report:
    runs = multirun_jobs(path)
    blocks: list[Block] = []
    for name in dict.fromkeys(run.kind.name for run in runs):
        same = [run for run in runs if run.kind.name == name]
        blocks += [Heading(f"{name}: {len(same)} jobs"), sweep_table(same)]
    blocks += [Image(p, p.stem) for p in sorted(path.glob("*.png"))]
    blocks += [Text("Each job's own report is report.md in its directory.")]
    return Report(f"sweep {path.name}", tuple(blocks), "multirun")


def listing_report(path: Path) -> Report:
    runs = find_runs(path)
    blocks: list[Block] = [Text(f"{len(runs)} runs below {path}, newest first.")]
    for name in dict.fromkeys(run.kind.name for run in runs):
        same = [run for run in runs if run.kind.name == name]
        figures = [run.kind.figures(run.data) for run in same]
        columns = list(dict.fromkeys(k for f in figures for k in f))
        rows = tuple((_relative(run.path, path), run.time.strftime("%Y-%m-%d %H:%M"), *(f.get(c) for c in columns))
                     for run, f in zip(same, figures))
        blocks += [Heading(f"{name} ({len(same)})"), Table(("run", "written", *columns), rows)]
    return Report(f"runs in {path.name or path}", tuple(blocks), "listing")


def build_report(path: Path) -> Report:
    """The report a directory calls for: its run, its sweep, or a listing of the runs below it."""
    run = load_run(path)
    if run is not None:
        return run_report(run)
    if is_multirun(path):
        return multirun_report(path)
    return listing_report(path)
