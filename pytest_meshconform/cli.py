"""The ``meshconform`` console script.

``meshconform diff OLD NEW`` prints what changed between two runs (regressions, fixes, newly
skipped, infrastructure errors, new and removed tests) and exits 1 on any regression, so that
an upgrade check is one command in CI. Exit status: 0 no regression, 1 regression (or a test
file that no longer collects), 2 bad input (usage, unreadable or malformed report: the message
names the file and the field), 3 no regression but infrastructure errors changed (a sidecar
died in one run: those tests are no evidence either way; run again).

``meshconform audit`` proves every Service port's mTLS from the wire (`audit.cli`): exit 0
every port conforms, 1 one does not, 2 bad usage.

``meshconform doctor`` checks that a cluster can run meshconform (`doctor.cli`): exit 0 a
run can go, 1 a finding would break it, 2 bad usage or no cluster to check.

``meshconform sweep`` removes what killed or kept local meshes left behind (network
namespaces, processes, files), as the next run would; exit 0, or 2 when not run as root (it
could remove nothing).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from pytest_meshconform import __version__

__all__ = ["EXIT_BAD_INPUT", "EXIT_INFRASTRUCTURE", "EXIT_OK", "EXIT_REGRESSION", "main"]

EXIT_OK: Final = 0
EXIT_REGRESSION: Final = 1
EXIT_BAD_INPUT: Final = 2  # argparse uses 2 for usage errors too
EXIT_INFRASTRUCTURE: Final = 3  # only infrastructure errors differ: no verdict, run again


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshconform",
        description="Work with meshconform conformance reports (pytest --mesh-report=PATH),"
        " audit a mesh's Service ports, check a cluster before a run, and clean up after local"
        " meshes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    diff = commands.add_parser(
        "diff",
        help="compare two reports; exit 1 on any regression",
        description="Compare two conformance reports test by test. Prints regressions (passed"
        " before, failing now), fixes, newly skipped, other changes, new and removed tests."
        " Exit status: 0 no regression, 1 regression (or a test file that no longer collects),"
        " 2 bad input, 3 no regression but infrastructure errors (a sidecar died) changed.",
    )
    diff.add_argument("old", metavar="OLD", type=Path, help="the earlier report (.yaml/.yml/.json)")
    diff.add_argument("new", metavar="NEW", type=Path, help="the later report (.yaml/.yml/.json)")
    from pytest_meshconform.audit.cli import add_parser as add_audit_parser

    add_audit_parser(commands)
    from pytest_meshconform.doctor.cli import add_parser as add_doctor_parser

    add_doctor_parser(commands)
    commands.add_parser(
        "sweep",
        help="remove what killed or kept local meshes left behind",
        description="Remove the network namespaces, processes and files of local meshes whose"
        " run has ended (killed, or kept with --mesh-keep and its owner gone). Needs root:"
        " exit 2 without it.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console script; returns the exit status (argparse exits 2 on a usage error)."""
    args = _parser().parse_args(argv)
    if args.command == "sweep":
        return _sweep()
    if args.command == "audit":
        from pytest_meshconform.audit.cli import run as run_audit

        return run_audit(args)
    if args.command == "doctor":
        from pytest_meshconform.doctor.cli import run as run_doctor

        return run_doctor(args)
    from pytest_meshconform.report import ReportError, diff_reports, format_diff, load_report

    try:
        old = load_report(args.old)
        new = load_report(args.new)
    except ReportError as error:
        print(f"meshconform {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    diff = diff_reports(old, new)
    for line in format_diff(diff, str(args.old), str(args.new), evidence_base=args.new.parent):
        print(line)
    if diff.failed:
        return EXIT_REGRESSION
    return EXIT_INFRASTRUCTURE if diff.infrastructure else EXIT_OK


def _sweep() -> int:
    import os

    from pytest_meshconform.backends.local.host import NETNS_RUN, STATE_ROOT, sweep_stale_runs

    if os.geteuid() != 0:  # it could remove nothing, and would say there was nothing
        print(
            f"meshconform sweep: error: sweeping needs root: local meshes' network namespaces"
            f" ({NETNS_RUN}/mc-*), processes and files ({STATE_ROOT}) are root's; run it as"
            " root, e.g. `sudo meshconform sweep`",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    swept = sweep_stale_runs()
    print("swept: " + "; ".join(swept) if swept else "nothing to sweep")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
