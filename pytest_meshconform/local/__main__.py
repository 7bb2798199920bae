"""`python -m pytest_meshconform.local sweep`: the same as `meshconform sweep` (kept for old
scripts)."""

from __future__ import annotations

import sys

from ..cli import main as cli_main


def main(argv: list[str]) -> int:
    if argv != ["sweep"]:
        print("usage: meshconform sweep", file=sys.stderr)
        return 2
    return cli_main(["sweep"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
