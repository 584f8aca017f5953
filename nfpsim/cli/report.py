"""``nfpsim-report <dir>``: a readable report of a run, a sweep, or every run below a directory.

    nfpsim-report outputs/simulate/2026-11-27_10-00-00      # one run: report.md + report.html in it
    nfpsim-report outputs/simulate/multirun/2026-11-27_...  # a sweep: one table across the jobs
    nfpsim-report outputs/                                  # every run below, newest first, key figures

Prints the markdown and writes ``report.md`` and a self-contained ``report.html`` (plots inlined) into
the directory. A missing, unwritable or run-less directory is an ``error: ...`` line and exit status 2,
with nothing written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nfpsim.cli.common import (EXIT_CONFIG_ERROR, EXIT_INTERRUPTED, check_writable, one_line_warnings, quiet_stdout,
                               write_report)
from nfpsim.errors import ConfigError
from nfpsim.report.render import build_report


def _report(path: Path) -> None:
    if not path.is_dir():
        raise ConfigError(f"{path}: no such directory")
    report = build_report(path)
    if report.view == "listing" and len(report.blocks) == 1:
        raise ConfigError(f"{path}: no runs found (a run directory holds nfp.json, simulate.json, ...)")
    check_writable(path, str(path), "the report is written there")
    write_report(path, report)
    print(report.markdown(path))
    print(f"wrote {path}/report.md and {path}/report.html")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nfpsim-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", default="outputs", help="a run, sweep or outputs directory")
    args = parser.parse_args(argv)
    quiet_stdout()
    one_line_warnings()
    try:
        _report(Path(args.path))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    except KeyboardInterrupt:  # report.md and report.html are written atomically: each is whole or absent
        print("interrupted: the report was not finished", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
