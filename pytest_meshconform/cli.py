"""The ``meshconform`` console script.

Exit statuses mean one thing for every command (`exit_status.ExitStatus`; the table: README,
"Exit statuses"): 0 OK, 1 a negative verdict, 2 interrupted (Ctrl-C, SIGTERM, SIGHUP), 3 no
verdict (a command's own crash, its traceback printed), 4 a usage or input error (argparse's
own errors included: they are not 2, which means interrupted).

``meshconform diff OLD NEW`` prints what changed between two runs (regressions, fixes, newly
skipped, infrastructure errors, new and removed tests) and exits 1 on any regression, so that
an upgrade check is one command in CI: 0 no regression, 1 regression (or a test file that no
longer collects), 3 no regression but infrastructure errors changed (a sidecar died in one
run: those tests are no evidence either way; run again), 4 bad input (usage, unreadable or
malformed report: the message names the file and the field).

``meshconform audit`` proves every Service port's mTLS from the wire (`audit.cli`): exit 0
every port conforms, 1 one does not, 4 bad usage.

``meshconform doctor`` checks that a cluster can run meshconform (`doctor.cli`): exit 0 a
run can go, 1 a finding would break it, 4 bad usage or no cluster to check.

``meshconform sweep`` removes what killed or kept local meshes left behind (network
namespaces, processes, files), as the next run would; exit 0, or 4 (usage) when not run as root (it
could remove nothing).
"""

from __future__ import annotations

import argparse
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Final, NoReturn, cast

from pytest_meshconform import __version__, signals
from pytest_meshconform.exit_status import ExitStatus

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_INFRASTRUCTURE",
    "EXIT_INTERNAL_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REGRESSION",
    "main",
]

EXIT_OK: Final = ExitStatus.OK
EXIT_REGRESSION: Final = ExitStatus.FAILED
EXIT_INTERRUPTED: Final = ExitStatus.INTERRUPTED
EXIT_INFRASTRUCTURE: Final = ExitStatus.NO_VERDICT  # only infrastructure errors differ: run again
EXIT_INTERNAL_ERROR: Final = ExitStatus.NO_VERDICT  # a bug of ours: no verdict either
EXIT_BAD_INPUT: Final = ExitStatus.USAGE


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; 2 means interrupted here: a usage error is 4."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitStatus.USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="meshconform",
        description="Work with meshconform conformance reports (pytest --mesh-report=PATH),"
        " audit a mesh's Service ports, check a cluster before a run, and clean up after local"
        " meshes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # every sub-command's parser is a _Parser too (argparse makes them of the parent's class)
    commands = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", required=True, metavar="COMMAND"),
    )
    diff = commands.add_parser(
        "diff",
        help="compare two reports; exit 1 on any regression",
        description="Compare two conformance reports test by test. Prints regressions (passed"
        " before, failing now), fixes, newly skipped, other changes, new and removed tests."
        " Exit status: 0 no regression, 1 regression (or a test file that no longer collects),"
        " 2 interrupted, 3 no regression but infrastructure errors (a sidecar died) changed,"
        " 4 bad input.",
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
        " exit 4 without it.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console script; returns the exit status (`ExitStatus`; a usage error argparse
    finds exits 4, ``--help`` and ``--version`` 0).

    SIGTERM and SIGHUP interrupt like Ctrl-C for the whole command (`signals`): what it made
    is removed, then it exits 2. An unexpected exception (a bug) prints its traceback and
    exits 3, never 1 ("regression", "not conforming").
    """
    args = _parser().parse_args(argv)
    owner = signals.acquire()
    try:
        return _run(args)
    except KeyboardInterrupt as interruption:
        # `signals` names SIGTERM and SIGHUP; Python's own Ctrl-C handler names nothing
        named = re.match(r"SIG[A-Z]+", str(interruption))
        why = named[0] if named else "SIGINT"
        print(f"meshconform {args.command}: interrupted ({why})", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:
        traceback.print_exc()
        print(
            f"meshconform {args.command}: internal error (a bug: please report it with the"
            " traceback above); no verdict",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR
    finally:
        signals.release(owner)


def _run(args: argparse.Namespace) -> int:
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
