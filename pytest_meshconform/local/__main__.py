"""`python -m pytest_meshconform.local sweep`: remove what dead or kept local meshes left."""

from __future__ import annotations

import sys

from .host import sweep_stale_runs


def main(argv: list[str]) -> int:
    if argv != ["sweep"]:
        print("usage: python -m pytest_meshconform.local sweep", file=sys.stderr)
        return 2
    swept = sweep_stale_runs()
    print("swept: " + "; ".join(swept) if swept else "nothing to sweep")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
