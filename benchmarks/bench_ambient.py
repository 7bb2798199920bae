"""How fast is ambient on the local mesh: bring-up with ambient namespaces, and the whole
built-in set on both data planes.

- up / down: `LocalMesh(topology=<the built-in topology on ambient>).start()` (foo and bar
  ambient, each pod with its ztunnel Envoy; bar's namespace waypoint) and `close()`, median
  and max of `--runs` runs;
- both: `pytest conformance/ --mesh-dataplane=both` (a fresh interpreter, as
  `bench_conformance.py` runs it: every suite once on sidecars, once on ambient, two meshes one
  after the other), median of `--suite-runs` runs, with the load average around them (the
  machine is shared; a figure means little without it).

Goals (issue 20): up <= 1 s, both data planes <= 25 s, on 2 cores. Exit status 1 when a run
fails or a median misses its goal. Needs root, like the mesh.

    .venv/bin/python benchmarks/bench_ambient.py [--runs N] [--suite-runs N] [-- pytest args]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_conformance import print_messages, run_once

from pytest_meshconform.backends.local.backend import LocalMesh
from pytest_meshconform.backends.local.entry import builtin_topology
from pytest_meshconform.mesh import MeshUnavailable

UP_GOAL_S = 1.0
BOTH_GOAL_S = 25.0


def measure_up(runs: int) -> tuple[list[float], list[float]] | None:
    """Bring-up and teardown times of the ambient built-in mesh; None when it cannot run."""
    ups, downs = [], []
    topology = builtin_topology("ambient")
    for _ in range(runs):
        started = time.perf_counter()
        try:
            mesh = LocalMesh(topology=topology).start()
        except MeshUnavailable as exc:
            print(f"cannot benchmark: {exc}", file=sys.stderr)
            return None
        ups.append(time.perf_counter() - started)
        started = time.perf_counter()
        mesh.close()
        downs.append(time.perf_counter() - started)
    return ups, downs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="bring-up runs (default 5)")
    parser.add_argument(
        "--suite-runs", type=int, default=3, help="built-in set runs on both (default 3)"
    )
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    options = parser.parse_args(argv)
    if options.runs < 1 or options.suite_runs < 1:
        parser.error("--runs and --suite-runs must be at least 1")
    print(f"bench_ambient: {os.cpu_count()} CPUs")
    measured = measure_up(options.runs)
    if measured is None:
        return 2
    ups, downs = measured
    up = statistics.median(ups)
    print(
        f"  up (ambient built-in topology): median {up:.3f} s, max {max(ups):.3f} s"
        f"  (goal <= {UP_GOAL_S} s: {'ok' if up <= UP_GOAL_S else 'MISSED'});"
        f" down median {statistics.median(downs):.3f} s"
    )
    runs = []
    for number in range(1, options.suite_runs + 1):
        run = run_once(["--mesh-dataplane=both", *options.pytest_args])
        runs.append(run)
        print(
            f"  both run {number}: {run.seconds:6.2f} s  load {run.load_before:.2f} ->"
            f" {run.load_after:.2f}  exit {run.returncode}  ({run.summary})",
            flush=True,
        )
        for line in run.failures:
            print(f"    {line[:300]}")
        print_messages(run)  # the whole message: a flake's evidence (which request, when)
    both = statistics.median(r.seconds for r in runs)
    print(
        f"  both data planes: median {both:.2f} s over {len(runs)} runs"
        f"  (goal <= {BOTH_GOAL_S:.0f} s: {'ok' if both <= BOTH_GOAL_S else 'MISSED'})"
    )
    failed = [r for r in runs if r.returncode != 0]
    if failed:
        print(f"  FAILED: {len(failed)} run(s) did not pass: {failed[0].summary}")
        return 1
    return 0 if up <= UP_GOAL_S and both <= BOTH_GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
