"""Hostile and fuzzed files at every entry point that reads a user's file, run as a user runs them.

Entry points (each a fresh process, as a user starts it):

- ``meshconform diff OLD NEW`` (a report, YAML or JSON);
- ``meshconform audit --mesh-topology=FILE --namespace=absent`` (the namespace check comes
  after the file is read, so a topology that reads fine still ends before any mesh starts);
- ``meshconform audit --policy=FILE`` with every namespace excluded (the same: the check that
  leaves nothing to audit comes after the policy files are read);
- ``pytest --mesh-topology=FILE --setup-plan`` on a test using ``mesh`` (the plugin's preflight
  reads the topology; ``--setup-plan`` runs no fixture, so no mesh starts);
- ``pytest --mesh-baseline=FILE --collect-only``.

Hostile files: 100,000 nested ``[`` (YAML and JSON), 100,000 nested block lists, non-UTF-8, a
FIFO, a symlink to /dev/zero, a directory, one byte over the size cap, a YAML alias bomb, NUL
bytes, an empty file, the issue's 50 MB file; then ``--fuzz N`` files per entry point made from a
valid one (the built-in topology, a policy, a report this script has pytest write) by flipping,
cutting, repeating and inserting bytes. Every run must end with the entry point's usage
status (2 for ``meshconform``, 4 for pytest) and an error naming the file, or (fuzzed files
that are still valid) its normal status; never a traceback, and within ``--timeout`` seconds.
``--mb`` adds the topology loader's rate: a topology of that many MB (many namespaces, every
one read) with the cap raised by ``MESHCONFORM_MAX_INPUT_BYTES``.

Prints every run (wall time, peak RSS of the process, exit status, the error's first line) and
the load average; exit status 1 when a run misbehaves. Figures: docs/hostile-input.md.

    .venv/bin/python benchmarks/bench_hostile_inputs.py [--fuzz N] [--seed S] [--mb MB]
        [--only SUBSTRING] [--timeout S]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILTIN_TOPOLOGY = REPO / "pytest_meshconform" / "backends" / "local" / "builtin_topology.yaml"
POLICY = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec:
  mtls: {mode: STRICT}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: bar}
spec:
  host: httpbin.bar.svc.cluster.local
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
"""
MESH_TEST = "def test_uses_the_mesh(mesh):\n    pass\n"
PLAIN_TEST = "def test_plain():\n    pass\n"
USAGE_MESHCONFORM = 4  # exit_status.ExitStatus.USAGE: cli.EXIT_BAD_INPUT, audit.cli.EXIT_USAGE
USAGE_PYTEST = 4  # pytest.ExitCode.USAGE_ERROR
BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
)
BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + BOMB


@dataclass(frozen=True, slots=True)
class EntryPoint:
    name: str
    kind: str  # the kind of file (userfiles.SIZE_LIMITS)
    suffix: str  # of the file handed to it
    usage: int  # its exit status for a bad input
    ok: int  # its exit status for a file that reads fine
    seed: str  # a valid file to fuzz from
    ok_text: str  # in its output when a file read fine (and the run then stopped as planned)
    argv: Callable[[Path, Path], list[str]]  # (file, work dir) -> command line


@dataclass(frozen=True, slots=True)
class Run:
    entry: str
    case: str
    seconds: float
    max_rss_mib: float
    status: int
    first_line: str
    problem: str  # empty when the run behaved


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest_meshconform.cli", *args]


def _pytest(work: Path, test: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:randomly",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:hypothesispytest",
        "-p",
        "no:benchmark",
        f"--rootdir={work}",
        *args,
        str(work / test),
    ]


def entry_points(report_seed: str) -> list[EntryPoint]:
    topology = BUILTIN_TOPOLOGY.read_text()
    return [
        EntryPoint(
            "meshconform diff",
            "report",
            ".yaml",
            USAGE_MESHCONFORM,
            0,
            report_seed,
            "no regression",
            lambda path, work: _cli("diff", str(path), str(path)),
        ),
        EntryPoint(
            "meshconform audit --mesh-topology",
            "topology file",
            ".yaml",
            USAGE_MESHCONFORM,
            USAGE_MESHCONFORM,  # then: the namespace is not in the mesh
            topology,
            "mc-bench-absent",
            lambda path, work: _cli(
                "audit", f"--mesh-topology={path}", "--namespace=mc-bench-absent"
            ),
        ),
        EntryPoint(
            "meshconform audit --policy",
            "policy file",
            ".yaml",
            USAGE_MESHCONFORM,
            USAGE_MESHCONFORM,  # then: every namespace is excluded
            POLICY,
            "no Service port to audit",
            lambda path, work: _cli(
                "audit",
                f"--policy={path}",
                *(f"--exclude-namespace={ns}" for ns in ("foo", "bar", "legacy")),
            ),
        ),
        EntryPoint(
            "pytest --mesh-topology",
            "topology file",
            ".yaml",
            USAGE_PYTEST,
            0,
            topology,
            "no tests ran",
            lambda path, work: _pytest(
                work, "test_mesh.py", "--setup-plan", f"--mesh-topology={path}"
            ),
        ),
        EntryPoint(
            "pytest --mesh-baseline",
            "report",
            ".yaml",
            USAGE_PYTEST,
            0,
            report_seed,
            "test_plain",
            lambda path, work: _pytest(
                work, "test_plain.py", "--collect-only", f"--mesh-baseline={path}"
            ),
        ),
    ]


def _write(path: Path, data: bytes | str, repeat: int = 1) -> Path:
    """``data`` written ``repeat`` times, in pieces (this process stays small: a child's peak
    RSS, from wait4, starts from its parent's at the fork)."""
    piece = data.encode() if isinstance(data, str) else data
    batch = max(1, (1 << 20) // max(1, len(piece)))
    with path.open("wb") as out:
        for done in range(0, repeat, batch):
            out.write(piece * min(batch, repeat - done))
    return path


def hostile_files(directory: Path, suffix: str, cap: int) -> dict[str, Path]:
    """Every hostile shape, made once per suffix."""
    d = directory
    fifo = d / f"fifo{suffix}"
    os.mkfifo(fifo)
    zero = d / f"zero{suffix}"
    zero.symlink_to("/dev/zero")
    folder = d / f"folder{suffix}"
    folder.mkdir()
    line = "# " + "x" * 77 + "\n"
    return {
        "100k nested [": _write(d / f"nested{suffix}", "[" * 100_000),
        "100k nested [ (JSON)": _write(d / "nested.json", "[" * 100_000),
        "100k nested block lists": _write(d / f"block{suffix}", "- " * 100_000 + "x\n"),
        "not UTF-8": _write(d / f"latin1{suffix}", b"namespaces:\n  - name: f\xe9o\n"),
        "FIFO": fifo,
        "symlink to /dev/zero": zero,
        "directory": folder,
        "cap + 1 byte": _over_cap(d / f"over{suffix}", line, cap),
        "alias bomb": _write(d / f"bomb{suffix}", BOMB),
        "NUL bytes": _write(d / f"nul{suffix}", "a: b\x00\x00\n"),
        "empty": _write(d / f"empty{suffix}", ""),
        "50 MB": _write(d / f"big{suffix}", line, 50_000_000 // len(line)),
    }


def _over_cap(path: Path, line: str, cap: int) -> Path:
    """Comment lines, one byte more than the cap in all."""
    _write(path, line, cap // len(line))
    with path.open("ab") as out:
        out.write(b"#" * (cap - path.stat().st_size) + b"\n")
    return path


def mutate(seed: bytes, rng: random.Random) -> bytes:
    """A few random edits: flip, cut, repeat or insert bytes (hostile ones among them)."""
    data = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(data) + 1)
        choice = rng.randrange(5)
        if choice == 0 and data:
            data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif choice == 1:
            del data[at : at + rng.randint(1, 64)]
        elif choice == 2:
            piece = data[at : at + rng.randint(1, 32)]
            data[at:at] = piece * rng.randint(2, 2000)
        elif choice == 3:
            data[at:at] = rng.choice(
                [b"[" * 5000, b"{", b"&a ", b"*a", b"\xff", b"\x00", b"!!int ", b"- " * 3000, b":"]
            )
        else:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(data)


def run_one(
    entry: EntryPoint,
    case: str,
    path: Path,
    work: Path,
    timeout: float,
    *,
    expect: tuple[int, ...],
    env: dict[str, str] | None = None,
) -> Run:
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            entry.argv(path, work),
            cwd=work,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "400", **(env or {})},
        )
        # wait4, not Popen.wait: it also gives this process's own peak RSS.
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - started > timeout:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - started
        max_rss = usage.ru_maxrss / 1024
        out.seek(0)
        output = out.read()
    text = output.decode(errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    first = (errors or lines or [""])[0].strip().replace(str(work), "$TMP")
    problem = ""
    if seconds >= timeout:
        problem = f"did not end within {timeout:.0f} s"
    elif "Traceback" in text or "INTERNALERROR" in text:
        problem = "a traceback"
    elif proc.returncode not in expect:
        problem = f"exit {proc.returncode}, expected {' or '.join(map(str, expect))}"
    elif proc.returncode == entry.usage and path.name not in text and entry.ok_text not in text:
        problem = "the error does not name the file"
    return Run(entry.name, case, seconds, max_rss, proc.returncode, first[:160], problem)


def report_seed(work: Path) -> str:
    """A real report: pytest with the plugin writes one for a trivial test."""
    path = work / "seed-report.yaml"
    subprocess.run(
        _pytest(work, "test_plain.py", f"--mesh-report={path}"),
        cwd=work,
        capture_output=True,
        check=True,
    )
    return path.read_text()


def topology_of(megabytes: float) -> str:
    """A topology of about that size whose every line the loader must read: namespaces
    without workloads (the workload count is capped, the namespace count is not)."""
    lines = ["namespaces:\n"]
    size, index = 12, 0
    while size < megabytes * 1_000_000:
        line = f"  - {{name: ns-{index}, injected: {'true' if index % 2 else 'false'}}}\n"
        lines.append(line)
        size += len(line)
        index += 1
    return "".join(lines)


def _print(run: Run) -> None:
    verdict = f"  PROBLEM: {run.problem}" if run.problem else ""
    print(
        f"  {run.entry:36} {run.case:26} {run.seconds:6.2f} s {run.max_rss_mib:7.0f} MiB"
        f"  exit {run.status}  {run.first_line}{verdict}",
        flush=True,
    )


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fuzz", type=int, default=3, help="fuzzed files per entry point")
    parser.add_argument("--seed", type=int, default=1, help="the fuzzer's random seed")
    parser.add_argument("--mb", type=float, default=0, help="also time a topology of MB")
    parser.add_argument("--only", default="", help="entry points whose name contains this")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per run")
    options = parser.parse_args(args)
    if options.fuzz < 0 or options.mb < 0 or options.timeout <= 0:
        parser.error("--fuzz and --mb must be at least 0, --timeout positive")
    from pytest_meshconform.userfiles import SIZE_LIMITS

    load = os.getloadavg()[0]
    print(f"bench_hostile_inputs: {os.cpu_count()} CPUs, load average {load:.2f}")
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="mc-bench-hostile-") as tmp:
        work = Path(tmp)
        (work / "test_mesh.py").write_text(MESH_TEST)
        (work / "test_plain.py").write_text(PLAIN_TEST)
        (work / "conftest.py").write_text("")
        entries = [e for e in entry_points(report_seed(work)) if options.only in e.name]
        rng = random.Random(options.seed)
        for number, entry in enumerate(entries):
            directory = work / f"entry{number}"
            directory.mkdir()
            for case, path in hostile_files(
                directory, entry.suffix, SIZE_LIMITS[entry.kind]
            ).items():
                runs.append(
                    run_one(entry, case, path, work, options.timeout, expect=(entry.usage,))
                )
                _print(runs[-1])
            for index in range(options.fuzz):
                path = _write(
                    directory / f"fuzz{index}{entry.suffix}", mutate(entry.seed.encode(), rng)
                )
                runs.append(
                    run_one(
                        entry,
                        f"fuzz {index}",
                        path,
                        work,
                        options.timeout,
                        expect=(entry.usage, entry.ok),
                    )
                )
                _print(runs[-1])
        if options.mb:
            for entry in entries:
                if "topology" not in entry.name:
                    continue
                path = _write(work / "scaled.yaml", topology_of(options.mb))
                megabytes = path.stat().st_size / 1_000_000
                run = run_one(
                    entry,
                    f"{megabytes:.1f} MB topology",
                    path,
                    work,
                    options.timeout * 10,
                    expect=(entry.usage, entry.ok),
                    env={"MESHCONFORM_MAX_INPUT_BYTES": str(path.stat().st_size)},
                )
                runs.append(run)
                _print(run)
    failed = [r for r in runs if r.problem]
    print(
        f"  {len(runs)} runs, {len(failed)} misbehaved; 1-min load average"
        f" {load:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    for run in failed:
        print(f"  FAILED: {run.entry} / {run.case}: {run.problem} ({run.first_line})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
