"""How long the whole built-in set takes: `pytest conformance/` on the local mesh, wall clock.

Each run is a fresh `python -m pytest conformance/` with the options `scripts/conformance.sh`
uses (interpreter start, plugins, collection, mesh bring-up, every suite, teardown), timed from
outside. Prints every run, the median and the
load average before and after: the machine is shared, and a loaded machine is slower, so a
figure means little without it. Exit status 1 when a run fails or the median misses the goal.

Goal (issue 10): <= 20 s on a 2-core machine. Needs root, like the mesh.

    .venv/bin/python benchmarks/bench_conformance.py [--runs N] [-- extra pytest args]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

REPO = Path(__file__).resolve().parents[1]
GOAL_S = 20.0


@dataclass(frozen=True, slots=True)
class Run:
    seconds: float
    returncode: int
    summary: str  # pytest's last line ("27 passed in 14.20s")
    failures: tuple[str, ...]  # pytest's short summary lines of failed tests
    load_before: float  # 1-minute load average
    load_after: float
    # each failed or errored test's whole message (its JUnit <failure>/<error> message), as
    # "node id: message": a flake's evidence, not only its first line
    messages: tuple[str, ...] = ()


_EXCEPTION_LINE = re.compile(r"^E {3}(.*)$", re.M)  # pytest's report: the exception's lines


def failure_messages(junit_xml: Path) -> tuple[str, ...]:
    """Every failed or errored test case of a JUnit file as "node id: message" (the whole
    message, every line); () when the file is missing or unreadable (the run died first)."""
    try:
        root = ElementTree.parse(junit_xml).getroot()
    except (OSError, ElementTree.ParseError):
        return ()
    found = []
    for case in root.iter("testcase"):
        for problem in (*case.findall("failure"), *case.findall("error")):
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            # pytest cuts the message attribute to a few lines; the report in the element's
            # text has the exception whole, on its "E   " lines
            lines = [m[1] for m in _EXCEPTION_LINE.finditer(problem.text or "")]
            message = textwrap.dedent("\n".join(lines)) if lines else problem.get("message", "")
            found.append(f"{name}: {message}")
    return tuple(found)


def run_once(extra: Sequence[str]) -> Run:
    argv = [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider"]
    argv += ["-p", "no:hypothesispytest", "-p", "no:benchmark"]  # as scripts/conformance.sh
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    env = {**os.environ, "COLUMNS": "400"}  # failure lines in full, not cut at 80 columns
    with tempfile.TemporaryDirectory(prefix="meshconform-bench-") as scratch:
        junit = Path(scratch) / "junit.xml"
        argv += [f"--junitxml={junit}", str(REPO / "conformance"), *extra]
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False, env=env)
        seconds = time.monotonic() - started
        messages = failure_messages(junit)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else done.stderr.strip()[-200:]
    failures = tuple(line for line in lines if line.startswith(("FAILED ", "ERROR ")))
    return Run(
        seconds=seconds,
        returncode=done.returncode,
        summary=summary,
        failures=failures,
        load_before=load_before,
        load_after=os.getloadavg()[0],
        messages=messages,
    )


def print_messages(run: Run) -> None:
    """Each failed test's whole message, indented under the run's line."""
    for message in run.messages:
        print("    --- " + message.replace("\n", "\n        "))


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="how many runs (default 3)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    options = parser.parse_args(args)
    if options.runs < 1:
        parser.error("--runs must be at least 1")
    print(f"bench_conformance: {os.cpu_count()} CPUs, goal <= {GOAL_S:.0f} s wall")
    runs: list[Run] = []
    for number in range(1, options.runs + 1):
        run = run_once(options.pytest_args)
        runs.append(run)
        print(
            f"  run {number}: {run.seconds:6.2f} s  load {run.load_before:.2f} -> "
            f"{run.load_after:.2f}  exit {run.returncode}  ({run.summary})",
            flush=True,
        )
        for line in run.failures:
            print(f"    {line[:300]}")
        print_messages(run)
    median = statistics.median(r.seconds for r in runs)
    loads = [r.load_before for r in runs] + [r.load_after for r in runs]
    print(
        f"  median: {median:.2f} s over {len(runs)} runs (min {min(r.seconds for r in runs):.2f}"
        f" s, max {max(r.seconds for r in runs):.2f} s); 1-min load average"
        f" {min(loads):.2f}..{max(loads):.2f} on {os.cpu_count()} CPUs"
    )
    failed = [r for r in runs if r.returncode != 0]
    if failed:
        print(f"  FAILED: {len(failed)} run(s) did not pass: {failed[0].summary}")
        return 1
    if median > GOAL_S:
        print(f"  over the goal: median {median:.2f} s > {GOAL_S:.0f} s")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
