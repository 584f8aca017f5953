"""``nfpsim-report <dir>``: a readable report of a run, a sweep, or every run below a directory.

    nfpsim-report outputs/simulate/2026-11-27_10-00-00      # one run: report.md + report.html in it
    nfpsim-report outputs/simulate/multirun/2026-11-27_...  # a sweep: one table across the jobs
    nfpsim-report outputs/                                  # every run below, newest first, key figures

Prints the markdown and writes ``report.md`` and a self-contained ``report.html`` (plots inlined) into
the directory. A missing directory or one without runs is an ``error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nfpsim import io
from nfpsim.cli.common import EXIT_CONFIG_ERROR
from nfpsim.report.render import Report, build_report


def write_report(path: Path, report: Report | None = None) -> Report:
    report = report or build_report(path)
    io.write_text(path / "report.md", report.markdown(path))
    io.write_text(path / "report.html", report.html())
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nfpsim-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", default="outputs", help="a run, sweep or outputs directory")
    args = parser.parse_args(argv)
    path = Path(args.path)
    if not path.is_dir():
        print(f"error: {path}: no such directory", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    report = build_report(path)
    if report.view == "listing" and len(report.blocks) == 1:
        print(f"error: {path}: no runs found (a run directory holds nfp.json, simulate.json, ...)", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    write_report(path, report)
    print(report.markdown(path))
    print(f"wrote {path}/report.md and {path}/report.html")


if __name__ == "__main__":
    main()
