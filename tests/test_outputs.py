"""Where meshconform writes (issue 23, findings 4 and 8a): every output path is checked before
the run starts, writes are atomic and leave nothing behind, files are 0600 and the directories
meshconform makes 0700 whatever the umask.

pytest and the ``meshconform`` command run in subprocesses on real files: FIFOs, links into
``/proc`` and ``/dev``, read-only and full filesystems (a tmpfs mounted in a mount namespace of
the subprocess's own, so no other process on the machine sees it).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import yaml

from pytest_meshconform.exit_status import ExitStatus

PLAIN_SUITE = """
import pathlib


def test_one():
    pathlib.Path("ran").write_text("the test ran")
"""

PYTEST = (sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly")
MESHCONFORM = (sys.executable, "-m", "pytest_meshconform.cli")


def run(
    argv: Sequence[str], cwd: Path, *, umask: int = -1, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout, umask=umask
    )


def in_own_tmpfs(directory: Path, options: str, argv: Sequence[str]) -> list[str]:
    """``argv`` in a mount namespace of its own, with a tmpfs (``options``) on ``directory``."""
    script = 'mount -t tmpfs -o "$1" tmpfs "$2" && shift 2 && exec "$@"'
    unshare = ["unshare", "--mount", "--propagation=private"]
    return [*unshare, "sh", "-c", script, "sh", options, str(directory), *argv]


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def identity(path: Path) -> tuple[int, int, int, float, str | None] | None:
    """What a replacement would change (not the access time: reading the link changes it)."""
    if not os.path.lexists(path):
        return None
    found = os.lstat(path)
    link = os.readlink(path) if stat.S_ISLNK(found.st_mode) else None
    return found.st_mode, found.st_ino, found.st_size, found.st_mtime, link


# --- Checked before the run -----------------------------------------------------------------


def _directory(tmp_path: Path) -> Path:
    (tmp_path / "r.yaml").mkdir()
    return tmp_path / "r.yaml"


def _under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "blocker").write_text("a file, not a directory")
    return tmp_path / "blocker" / "sub" / "r.yaml"


def _fifo(tmp_path: Path) -> Path:
    os.mkfifo(tmp_path / "r.yaml")
    return tmp_path / "r.yaml"


def _link_to(target: str) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        (tmp_path / "r.yaml").symlink_to(target)
        return tmp_path / "r.yaml"

    return make


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (_directory, ": is a directory: name a file, e.g. {path}/report.yaml"),
        (_under_a_file, ": {tmp}/blocker is a file, not a directory: name a path under a"),
        (_fifo, ": is a FIFO (named pipe), not a regular file: meshconform writes only regular"),
        (_link_to("/dev/zero"), " (a link to /dev/zero): is a character device, not a regular"),
        (_link_to("/proc/self/mem"), " (a link to /proc/"),
    ],
    ids=["directory", "under-a-file", "fifo", "link-to-dev-zero", "link-to-proc-self-mem"],
)
def test_a_report_path_that_cannot_be_written_stops_the_run_before_it_starts(
    tmp_path: Path, make: Callable[[Path], Path], problem: str
) -> None:
    (tmp_path / "test_plain.py").write_text(PLAIN_SUITE)
    path = make(tmp_path)
    before = (listing(tmp_path), identity(path))
    result = run([*PYTEST, f"--mesh-report={path}"], tmp_path, timeout=60)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    lines = error_lines(result)
    assert len(lines) == 1, lines
    expected = f"ERROR: --mesh-report {path}" + problem.format(path=path, tmp=tmp_path)
    assert lines[0].startswith(expected), lines
    assert not (tmp_path / "ran").exists()  # no test ran, so no mesh came up
    # Nothing was replaced or left behind: the link is still the link, the FIFO still a FIFO.
    after = (listing(tmp_path), identity(path))
    assert after == before


def test_a_read_only_place_stops_the_run_before_it_starts(tmp_path: Path) -> None:
    (tmp_path / "test_plain.py").write_text(PLAIN_SUITE)
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    report = readonly / "reports" / "r.yaml"
    result = run(in_own_tmpfs(readonly, "ro", [*PYTEST, f"--mesh-report={report}"]), tmp_path)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert error_lines(result) == [
        f"ERROR: --mesh-report {report}: cannot create a file in {readonly}: read-only file"
        " system: name a path on a writable filesystem"
    ]
    assert not (tmp_path / "ran").exists()


def test_an_artifacts_path_that_is_a_file_stops_the_run(tmp_path: Path) -> None:
    (tmp_path / "test_plain.py").write_text(PLAIN_SUITE)
    (tmp_path / "evidence").write_text("a file")
    result = run([*PYTEST, "--mesh-artifacts=evidence"], tmp_path, timeout=60)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert error_lines(result) == [
        f"ERROR: --mesh-artifacts {tmp_path}/evidence: is a file, not a directory: name a"
        " directory (it is made when missing)"
    ]
    assert not (tmp_path / "ran").exists()


def test_a_step_summary_that_is_a_fifo_stops_the_run_instead_of_blocking_its_end(
    tmp_path: Path,
) -> None:
    (tmp_path / "test_plain.py").write_text(PLAIN_SUITE)
    os.mkfifo(tmp_path / "summary.md")
    result = subprocess.run(
        PYTEST,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")},
    )
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert error_lines(result) == [
        f"ERROR: GITHUB_STEP_SUMMARY {tmp_path}/summary.md: is a FIFO (named pipe), not a"
        " regular file: meshconform writes only regular files; name a new path"
    ]
    assert not (tmp_path / "ran").exists()


def test_an_ini_report_path_is_named_as_the_ini_option(tmp_path: Path) -> None:
    (tmp_path / "test_plain.py").write_text(PLAIN_SUITE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmesh_report = out.yaml\n")
    (tmp_path / "out.yaml").mkdir()
    result = run(PYTEST, tmp_path, timeout=60)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert error_lines(result)[0].startswith(
        f"ERROR: mesh_report (ini option) {tmp_path}/out.yaml: is a directory"
    )


def test_the_audit_checks_its_report_and_evidence_paths_before_the_mesh(tmp_path: Path) -> None:
    (tmp_path / "audit.yaml").mkdir()
    result = run([*MESHCONFORM, "audit", "--report", "audit.yaml"], tmp_path, timeout=60)
    assert (result.returncode, result.stdout) == (ExitStatus.USAGE, "")
    assert result.stderr.splitlines() == [
        "meshconform audit: error: --report audit.yaml: is a directory: name a file, e.g."
        " audit.yaml/report.yaml"
    ]
    (tmp_path / "run-evidence").write_text("a file where the captures go")
    result = run([*MESHCONFORM, "audit", "--report", "run.html"], tmp_path, timeout=60)
    assert (result.returncode, result.stdout) == (ExitStatus.USAGE, "")
    assert result.stderr.splitlines() == [
        "meshconform audit: error: --report's evidence run-evidence: is a file, not a"
        " directory: name a directory (it is made when missing)"
    ]
    assert listing(tmp_path) == ["audit.yaml", "run-evidence"]


# --- Written atomically, nothing left behind --------------------------------------------------

MANY_TESTS_SUITE = """
import pytest


@pytest.mark.parametrize("n", range(300))
def test_many(n):
    pass
"""


def test_a_full_filesystem_fails_the_write_and_leaves_no_partial_file(tmp_path: Path) -> None:
    (tmp_path / "test_many.py").write_text(MANY_TESTS_SUITE)
    small = tmp_path / "small"
    small.mkdir()
    script = (
        f'{" ".join(PYTEST)} --mesh-report="$1"/reports/r.yaml; status=$?;'
        ' echo "left: $(ls -A "$1"/reports)"; exit $status'
    )
    argv = ["sh", "-c", script, "sh", str(small)]
    result = run(in_own_tmpfs(small, "size=16k", argv), tmp_path)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout + result.stderr
    assert "300 passed" in result.stdout
    assert (
        f"meshconform: report: cannot write {small}/reports/r.yaml: [Errno 28] No space left on"
        " device"
    ) in result.stdout
    assert result.stdout.splitlines()[-1] == "left: "  # no .r.yaml.*.partial


SWAPPING_SUITE = """
import pathlib


def test_one():
    pathlib.Path("out/r.yaml").mkdir(parents=True)  # where the report goes, during the run
"""


def test_a_report_path_taken_during_the_run_fails_without_leftovers(tmp_path: Path) -> None:
    (tmp_path / "test_swap.py").write_text(SWAPPING_SUITE)
    result = run([*PYTEST, "--mesh-report=out/r.yaml", "--mesh-report=out/r.html"], tmp_path)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout + result.stderr
    assert f"meshconform: report: cannot write {tmp_path}/out/r.yaml: " in result.stdout
    assert listing(tmp_path / "out") == ["r.html", "r.yaml"]
    assert listing(tmp_path / "out" / "r.yaml") == []


def test_a_link_to_a_regular_file_is_written_through(tmp_path: Path) -> None:
    (tmp_path / "test_plain.py").write_text(PLAIN_SUITE)
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "latest.yaml").write_text("an older report\n")
    (tmp_path / "r.yaml").symlink_to("kept/latest.yaml")
    result = run([*PYTEST, "--mesh-report=r.yaml"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert os.readlink(tmp_path / "r.yaml") == "kept/latest.yaml"
    written = yaml.safe_load((tmp_path / "kept" / "latest.yaml").read_text())
    assert (written["result"], written["statistics"]["passed"]) == ("success", 1)
    assert stat.S_IMODE((tmp_path / "kept" / "latest.yaml").stat().st_mode) == 0o600
    assert listing(tmp_path / "kept") == ["latest.yaml"]


# --- 0600 and 0700, whatever the umask --------------------------------------------------------

EVIDENCE_SUITE = """
import pathlib

from pytest_meshconform.report.exhibits import evidence_of
from pytest_meshconform.exit_status import ExitStatus


def _evidence(request, tmp_path):
    evidence = evidence_of(request.node)
    capture = tmp_path / "capture.pcap"
    capture.write_bytes(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"))
    evidence.add_file("pcap httpbin.foo", capture)
    logs = tmp_path / "logs"
    (logs / "envoy").mkdir(parents=True)
    (logs / "envoy" / "access.log").write_text("[access] 200")
    evidence.add_file("logs httpbin.foo", logs)
    evidence.add_text("curl sleep.legacy", "curl: (56) Recv failure")
    evidence.add_blob("config_dump httpbin.foo", b"{}", ".json")


def test_passes(request, tmp_path):
    _evidence(request, tmp_path)


def test_fails(request, tmp_path):
    _evidence(request, tmp_path)
    raise AssertionError("plaintext was not refused")
"""


def test_reports_and_evidence_are_private_whatever_the_umask(tmp_path: Path) -> None:
    (tmp_path / "test_evidence.py").write_text(EVIDENCE_SUITE)
    reports = [f"--mesh-report=out/reports/r.{suffix}" for suffix in ("yaml", "json", "html", "md")]
    result = run(
        [*PYTEST, f"--basetemp={tmp_path / 'base'}", *reports, "--mesh-artifacts=keep/evidence"],
        tmp_path,
        umask=0,
    )
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout + result.stderr
    # What the tests wrote themselves took the umask: the copies did not.
    source = tmp_path / "base" / "test_fails0" / "capture.pcap"
    assert stat.S_IMODE(source.stat().st_mode) == 0o666
    modes: dict[str, int] = {}
    for top in ("out", "keep"):
        for path in [tmp_path / top, *(tmp_path / top).rglob("*")]:
            modes[str(path.relative_to(tmp_path))] = stat.S_IMODE(path.lstat().st_mode)
    expected_files = {
        *(f"out/reports/r.{suffix}" for suffix in ("yaml", "json", "html", "md")),
        *(
            f"keep/evidence/test_evidence.py__{test}/{name}"
            for test in ("test_passes", "test_fails")
            for name in (
                ".meshconform-evidence",
                "pcap_httpbin.foo.pcap",
                "logs_httpbin.foo/envoy/access.log",
                "curl_sleep.legacy.txt",
                "config_dump_httpbin.foo.json",
            )
        ),
    }
    assert {name for name, mode in modes.items() if mode == 0o600} == expected_files
    assert all(mode == 0o700 for name, mode in modes.items() if name not in expected_files), modes
    assert len(modes) - len(expected_files) == 10  # out, reports, keep, evidence, 2 x 3


def test_the_local_audit_keeps_no_readable_file_or_directory_whatever_the_umask(
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0 or shutil.which("tcpdump") is None:
        pytest.skip("the local mesh needs root and tcpdump")
    result = run(
        [*MESHCONFORM, "audit", "--namespace=foo", "--report", "out/audit.yaml"],
        tmp_path,
        umask=0,
        timeout=300,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr
    written = [tmp_path / "out", *(tmp_path / "out").rglob("*")]
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.lstat().st_mode) for p in written}
    assert modes == {
        "out": 0o700,
        "out/audit.yaml": 0o600,
        "out/audit-evidence": 0o700,
        "out/audit-evidence/httpbin.foo-8000.pcap": 0o600,
        "out/audit-evidence/httpbin.foo-50051.pcap": 0o600,
        "out/audit-evidence/pod-httpbin.foo-8080.pcap": 0o600,
        "out/audit-evidence/pod-httpbin.foo-50051.pcap": 0o600,
    }
