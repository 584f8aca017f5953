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
import warnings
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


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1500px;margin:2em auto;padding:0 1em;color:#222}
.table{overflow-x:auto;max-width:100%;margin:.5em 0 1.5em}table{border-collapse:collapse}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;white-space:nowrap}
td.text{white-space:normal;min-width:14em;max-width:28em;text-align:left}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:.5em 0}
figure{margin:1em 0}figcaption{color:#555;font-size:.9em}p{white-space:pre-wrap}"""


def _cell(value: Any) -> str:
    """A table cell: figures and names on one line (a wide table scrolls), long prose wraps at words."""
    text = fmt(value)
    wraps = isinstance(value, str) and len(text) > 24 and " " in text
    return f"<td class='text'>{html.escape(text)}</td>" if wraps else f"<td>{html.escape(text)}</td>"


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
            body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in block.rows)
            out.append(f"<div class='table'><table><tr>{head}</tr>{body}</table></div>")  # wide: scrolls
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


def nfp_label(curve: Mapping) -> str | None:
    """A curve's NFP as the console prints it: ``16``, or ``512+`` when near-free over the whole grid."""
    if curve.get("nfp") is None:
        return None
    return f"{curve['nfp']}{'+' if curve.get('saturated') else ''}"


def _nfp_figures(data: dict) -> dict[str, Any]:
    return {"model": data.get("model"), "hardware": data.get("hardware"), "kernels": data.get("kernels"),
            "latency": data.get("latency"), "batch": data.get("batch"), "context": data.get("context"),
            "tp": data.get("tp"), "eps": data.get("eps"), "NFP": nfp_label(data.get("forward", {})),
            "idle NFP": data.get("idle_nfp"), "factor": data.get("overprediction")}


def _nfp_section(path: Path, data: dict) -> list[Block]:
    rows = [("forward", nfp_label(data["forward"]), data["forward"].get("idle_nfp"), data["forward"].get("factor"))]
    for name, curve in data.get("modules", {}).items():
        indent = "  " if curve.get("parent") else ""
        rows.append((f"{indent}{name}", nfp_label(curve), curve.get("idle_nfp"), curve.get("factor")))
    blocks: list[Block] = [
        Text(f"NFP of {data['model']} on {data['hardware']} with {data['kernels']} kernels, batch {data['batch']}, "
             f"context {data['context']}, eps {data['eps']}, tp {data.get('tp', 1)}: NFP {nfp_label(data['forward'])} "
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
    """A run's JSON; an unreadable one warns (its figures then show as dashes) instead of passing silently."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        warnings.warn(f"{path}: unreadable ({error.__class__.__name__}); its figures show as '-'", stacklevel=2)
        return {}
    if not isinstance(data, dict):
        warnings.warn(f"{path}: not a JSON object; its figures show as '-'", stacklevel=2)
        return {}
    return data


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


@dataclass(frozen=True)
class SweepAxes:
    """How a sweep plot places its jobs: ``x`` per job, and the groups of jobs a line may join.

    One numeric setting varying: x is its value and one line joins every job. Two settings with one
    numeric: x is that one and one line per value of the other. Anything else: one point per job at
    its index, labelled, and no line, since neighbouring jobs need not be related.
    """

    x: tuple[Any, ...]
    xlabel: str
    lines: tuple[tuple[str, tuple[int, ...]], ...]  # (label, job indices in x order)
    ticks: tuple[str, ...] | None = None  # labels at x when x is only an index

    @classmethod
    def of(cls, settings: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> SweepAxes:
        keys = list(settings[0]) if settings else []
        numeric = [k for k in keys if all(_is_number(s.get(k)) for s in settings)]
        if numeric and len(keys) <= 2:
            xkey = numeric[0]
            other = next((k for k in keys if k != xkey), None)
            groups: dict[str, list[int]] = {}
            for i, s in enumerate(settings):
                groups.setdefault(f"{other}={fmt(s[other])}" if other else "", []).append(i)
            ordered = tuple((label, tuple(sorted(idx, key=lambda i: settings[i][xkey]))) for label, idx in groups.items())
            return cls(tuple(s[xkey] for s in settings), xkey, ordered)
        return cls(tuple(range(len(labels))), "job", tuple(("", (i,)) for i in range(len(labels))), tuple(labels))


def plot_sweep_series(ax, axes: SweepAxes, rows: list[dict[str, Any]], series) -> None:
    """``series`` ((row key, label, marker), ...) against ``axes``; y from zero."""
    for m, ((key, label, marker), linestyle) in enumerate(zip(series, ("-", "--", ":"))):
        values = [float("nan") if r.get(key) is None else r[key] for r in rows]
        for n, (group, jobs) in enumerate(axes.lines):
            name = ", ".join(p for p in (label, group) if p) if n == 0 or group else None
            ax.plot([axes.x[i] for i in jobs], [values[i] for i in jobs], marker=marker,
                    linestyle=linestyle if len(jobs) > 1 else "none",
                    color=f"C{n % 10}" if group else f"C{m}", label=name)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(axes.xlabel)
    if axes.ticks is not None:
        ax.set_xticks(axes.x, axes.ticks, rotation=30, ha="right", fontsize=7)
    elif all(isinstance(x, int) for x in axes.x):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2))  # below: never over a point


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
        others = _other_settings(same, set(columns))
        rows = tuple((_relative(run.path, path), run.time.strftime("%Y-%m-%d %H:%M"), *(f.get(c) for c in columns),
                      other) for run, f, other in zip(same, figures, others))
        blocks += [Heading(f"{name} ({len(same)})"), Table(("run", "written", *columns, "other settings"), rows)]
    return Report(f"runs in {path.name or path}", tuple(blocks), "listing")


# Settings that change how a run is shown, not what it computed: never what tells two runs apart.
PRESENTATION_KEYS = ("plot", "output.")


def _other_settings(runs: Sequence[Run], shown: set[str]) -> list[str]:
    """Per run, the config values that differ between the runs and no column shows (seed, engine.*, ...),
    so that two rows never look alike while their runs differ. A run without a readable config says so."""
    readable = [run for run in runs if run.data.get("config")]
    settings = iter(varying_settings([run.data["config"] for run in readable]))
    others = []
    for run in runs:
        if not run.data.get("config"):
            others.append("(no readable config)")
            continue
        items = [(k, v) for k, v in next(settings).items()
                 if k.split(".")[0] not in shown and not k.startswith(PRESENTATION_KEYS)]
        others.append(", ".join(f"{k}={fmt(v)}" for k, v in items))
    return others


def build_report(path: Path) -> Report:
    """The report a directory calls for: its run, its sweep, or a listing of the runs below it."""
    run = load_run(path)
    if run is not None:
        return run_report(run)
    if is_multirun(path):
        return multirun_report(path)
    return listing_report(path)
