"""``nfpsim-fidelity [table.json ...]``: held-out error of the calibration tables, per kernel and op."""

from __future__ import annotations

import sys

from nfpsim.calibration.fidelity import main as run
from nfpsim.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except ConfigError as error:  # an unreadable table: one line, exit 2
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
