"""How fast is the local mesh: bring-up and teardown, policy apply-to-effect, memory.

- up / down: `LocalMesh().start()` and `close()`, median (and max) of `--runs` runs;
- switches: `--switches` alternating mesh-wide STRICT / PERMISSIVE applies. For each, apply()
  alone, and apply-to-effect: from calling apply() until a request from the naked `sleep` pod
  shows the new behaviour (a reset under STRICT, 200 under PERMISSIVE). The requests come from
  one long-lived prober in that pod (bash: a fresh TCP connection per probe), so the figure is
  the mesh's, not the cost of starting curl. `stale` counts probes answered the old way after
  apply() had returned: it must be 0, since apply() waits until the Envoys run the change;
- authz switches: the same, alternating an allow-nothing AuthorizationPolicy in foo and its
  deletion, probed from sleep.foo, whose sidecar keeps its upstream connection to httpbin.foo
  alive across probes: `stale` counts requests the previous authorization still answered (a
  kept-alive connection served by a replaced filter chain), and must be 0 too;
- memory: RSS of the mesh's processes (Envoys, app launcher, apps), summed, and PSS (which
  shares the pages the forked apps have in common fairly).

Goals (issue 3): up <= 1.5 s, effect p95 <= 50 ms. Needs root, like the mesh.

    .venv/bin/python benchmarks/bench_local_mesh.py [--runs N] [--switches N]
"""

from __future__ import annotations

import argparse
import math
import os
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_meshconform.backends.local.backend import LocalMesh
from pytest_meshconform.istio.api.authorization_policy import authorization_policy
from pytest_meshconform.istio.api.peer_authentication import peer_authentication
from pytest_meshconform.mesh import MeshUnavailable

UP_GOAL_S = 1.5
EFFECT_P95_GOAL_S = 0.050
PROBE_TIMEOUT_S = 5.0

# One probe per input line: a fresh connection to httpbin.foo, one request, the status code
# (or RESET when the sidecar refuses the plaintext connection).
PROBER = r"""
trap '' PIPE  # a write to a connection the sidecar already reset must not end the prober
while read -r _; do
  if exec 3<>/dev/tcp/httpbin.foo/8000; then
    printf 'GET /status/200 HTTP/1.1\r\nHost: httpbin.foo:8000\r\nConnection: close\r\n\r\n' >&3
    if IFS= read -r line <&3 && [ -n "$line" ]; then echo "${line:9:3}"; else echo RESET; fi
    exec 3<&- 3>&-
  else
    echo CONNFAIL
  fi
done
"""


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p95 of 50 values is the 48th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class Prober:
    """A bash in a sleep pod (the naked one by default) that answers each newline with one
    fresh request's result."""

    def __init__(self, mesh: LocalMesh, namespace: str = "legacy") -> None:
        self.proc = subprocess.Popen(
            mesh.exec_argv(mesh.workload("sleep", namespace), ["bash", "-c", PROBER]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._buffer = b""

    def probe(self) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"\n")
        self.proc.stdin.flush()
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise RuntimeError(f"the prober did not answer within {PROBE_TIMEOUT_S}s")
            chunk = os.read(fd, 4096)
            if not chunk:
                self.proc.kill()
                _, err = self.proc.communicate()
                raise RuntimeError(f"the prober exited: {err.decode(errors='replace')}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode().strip()

    def close(self) -> None:
        self.proc.kill()
        self.proc.communicate()


@dataclass(frozen=True, slots=True)
class SwitchFigures:
    apply_s: tuple[float, ...]
    effect_s: tuple[float, ...]
    stale_probes: int


def measure_switches(mesh: LocalMesh, switches: int) -> SwitchFigures:
    """Alternate mesh-wide STRICT and PERMISSIVE `switches` times; time apply and its effect."""
    prober = Prober(mesh)
    applied, effects, stale = [], [], 0
    try:
        if prober.probe() != "200":
            raise RuntimeError("the naked client cannot reach httpbin.foo before any policy")
        for index in range(switches):
            mode, expected = ("STRICT", "RESET") if index % 2 == 0 else ("PERMISSIVE", "200")
            policy = peer_authentication("default", "istio-system", mode)
            started = time.perf_counter()
            mesh.apply(policy)
            applied.append(time.perf_counter() - started)
            while (answer := prober.probe()) != expected:
                if answer not in ("200", "RESET"):
                    raise RuntimeError(f"unexpected probe answer {answer!r}")
                stale += 1
                if time.perf_counter() - started > 10:
                    raise RuntimeError(f"{mode} not in effect after 10s")
            effects.append(time.perf_counter() - started)
        mesh.delete(peer_authentication("default", "istio-system", "STRICT"))
    finally:
        prober.close()
    return SwitchFigures(tuple(applied), tuple(effects), stale)


def measure_authz_switches(mesh: LocalMesh, switches: int) -> SwitchFigures:
    """Alternate an allow-nothing AuthorizationPolicy on foo and its deletion, probing from
    sleep.foo (its sidecar pools the upstream connection): time apply and its effect."""
    prober = Prober(mesh, "foo")
    nothing = authorization_policy("allow-nothing", "foo")
    applied, effects, stale = [], [], 0
    try:
        if prober.probe() != "200":
            raise RuntimeError("sleep.foo cannot reach httpbin.foo before any policy")
        for index in range(switches):
            deny = index % 2 == 0
            started = time.perf_counter()
            if deny:
                mesh.apply(nothing)
            else:
                mesh.delete(nothing)
            applied.append(time.perf_counter() - started)
            expected = "403" if deny else "200"
            while (answer := prober.probe()) != expected:
                if answer not in ("200", "403"):
                    raise RuntimeError(f"unexpected probe answer {answer!r}")
                stale += 1
                if time.perf_counter() - started > 10:
                    raise RuntimeError(f"authorization switch {index} not in effect after 10s")
            effects.append(time.perf_counter() - started)
        mesh.delete(nothing)
    finally:
        prober.close()
    return SwitchFigures(tuple(applied), tuple(effects), stale)


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def measure_memory(mesh: LocalMesh) -> dict[str, tuple[int, int, int]]:
    """Per process kind: (count, RSS KiB, PSS KiB), summed over the mesh's processes."""
    found: dict[str, tuple[int, int, int]] = {}
    for pid in mesh.pids():
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        kind = "envoy" if name == "envoy" else "python (app launcher + apps)"
        count, rss, pss = found.get(kind, (0, 0, 0))
        found[kind] = (count + 1, rss + _status_kib(pid, "VmRSS"), pss + _pss_kib(pid))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="bring-up/teardown runs (default 5)")
    parser.add_argument("--switches", type=int, default=50, help="policy switches (default 50)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.switches < 1:
        parser.error("--runs and --switches must be at least 1")

    ups, downs = [], []
    switches: SwitchFigures | None = None
    authz: SwitchFigures | None = None
    memory: dict[str, tuple[int, int, int]] = {}
    for run in range(args.runs):
        started = time.perf_counter()
        try:
            mesh = LocalMesh().start()
        except MeshUnavailable as exc:
            print(f"cannot benchmark: {exc}", file=sys.stderr)
            return 2
        ups.append(time.perf_counter() - started)
        try:
            if run == args.runs - 1:
                switches = measure_switches(mesh, args.switches)
                authz = measure_authz_switches(mesh, args.switches)
                memory = measure_memory(mesh)
        finally:
            started = time.perf_counter()
            mesh.close()
            downs.append(time.perf_counter() - started)
    assert switches is not None and authz is not None

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.1f} ms"

    up_median = statistics.median(ups)
    effect_p95 = percentile(switches.effect_s, 0.95)
    print(
        f"local mesh benchmark ({os.cpu_count()} CPUs, {args.runs} runs, {args.switches} switches)"
    )
    print(
        f"  up:        median {up_median:.3f} s, max {max(ups):.3f} s"
        f"  (goal <= {UP_GOAL_S} s: {'ok' if up_median <= UP_GOAL_S else 'MISSED'})"
    )
    print(f"  down:      median {statistics.median(downs):.3f} s, max {max(downs):.3f} s")
    print(
        f"  apply():   median {ms(statistics.median(switches.apply_s))},"
        f" p95 {ms(percentile(switches.apply_s, 0.95))}, max {ms(max(switches.apply_s))}"
    )
    print(
        f"  effect:    median {ms(statistics.median(switches.effect_s))}, p95 {ms(effect_p95)},"
        f" max {ms(max(switches.effect_s))}"
        f"  (goal p95 <= {ms(EFFECT_P95_GOAL_S)}:"
        f" {'ok' if effect_p95 <= EFFECT_P95_GOAL_S else 'MISSED'})"
    )
    print(f"  stale:     {switches.stale_probes} probes saw the old mode after apply() returned")
    print(
        f"  authz:     apply() median {ms(statistics.median(authz.apply_s))},"
        f" effect median {ms(statistics.median(authz.effect_s))},"
        f" p95 {ms(percentile(authz.effect_s, 0.95))}, max {ms(max(authz.effect_s))};"
        f" {authz.stale_probes} stale answers from sleep.foo"
    )
    total_rss = sum(rss for _, rss, _ in memory.values())
    total_pss = sum(pss for _, _, pss in memory.values())
    print(f"  memory:    RSS {total_rss / 1024:.0f} MiB, PSS {total_pss / 1024:.0f} MiB in total")
    for kind, (count, rss, pss) in sorted(memory.items()):
        print(f"             {count} x {kind}: RSS {rss / 1024:.0f} MiB, PSS {pss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
