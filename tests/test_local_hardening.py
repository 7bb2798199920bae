"""The local mesh under faults (issue 14): evidence files private to root, signals in every
window of a run's life, a dead or stopped sidecar reported as such.

Every mesh here is this test's own, found by its run id; other meshes on the machine (other
test runs, benchmarks) are neither counted nor touched.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import NamedTuple

from local_helpers import needs_local_mesh

from pytest_meshconform.local.backend import LocalMesh

pytestmark = needs_local_mesh


# ============================================================================ file modes (#7)


class Entry(NamedTuple):
    mode: int
    uid: int
    gid: int
    kind: str  # "dir", "file", "socket"


def _entries(run_dir: Path) -> dict[str, Entry]:
    """Every entry of a run directory, by path relative to it."""
    found = {}
    for path in [run_dir, *run_dir.rglob("*")]:
        info = path.lstat()
        kind = (
            "dir"
            if stat.S_ISDIR(info.st_mode)
            else "socket"
            if stat.S_ISSOCK(info.st_mode)
            else "file"
        )
        entry = Entry(stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, kind)
        found[path.relative_to(run_dir).as_posix()] = entry
    return found


def _check_private(entries: dict[str, Entry]) -> None:
    for path, entry in entries.items():
        if path == "envoy" and entry.kind == "file":
            continue  # Envoy's binary, linked in when the venv is not traversable by uid 1337
        if entry.kind != "dir":
            assert entry.mode & 0o077 == 0, (path, oct(entry.mode))
        elif path in {".", "pods"} or (path.startswith("pods/") and path.count("/") == 1):
            assert (entry.mode, entry.uid, entry.gid) == (0o710, 0, 1337), (path, entry)
        else:
            assert entry.mode == 0o700, (path, entry)


def test_evidence_is_readable_by_root_only() -> None:
    """Captures, access logs, logs, keys and config: 0600; directories 0700, or 0710 (group
    1337) where Envoy must reach its own files. Checked while a capture is live and after."""
    with LocalMesh() as mesh:
        sleep, httpbin = mesh.workload("sleep", "foo"), mesh.workload("httpbin", "foo")
        with mesh.capture(httpbin):
            answer = mesh.exec(sleep, ["curl", "-sS", "-o", "/dev/null", httpbin_url()])
            assert answer.returncode == 0, answer
            live = _entries(mesh.run_dir)
        after = _entries(mesh.run_dir)
    for entries in (live, after):
        _check_private(entries)
        pcaps = [p for p in entries if p.startswith("captures/") and p.endswith(".pcap")]
        assert len(pcaps) == 1, sorted(entries)
        assert entries[pcaps[0]] == Entry(0o600, 0, 0, "file")
    access_logs = {p: e for p, e in after.items() if p.endswith("/envoy/access.log")}
    assert len(access_logs) == 4, sorted(after)  # one per sidecar
    assert set(access_logs.values()) == {Entry(0o600, 1337, 1337, "file")}
    for name in (
        "state.json",
        "apps.log",
        "pods/httpbin.foo/envoy.log",
        "pods/httpbin.foo/app.log",
    ):
        assert after[name] == Entry(0o600, 0, 0, "file"), name
    key = after["pods/httpbin.foo/envoy/sds/default.json"]
    assert key == Entry(0o600, 1337, 1337, "file")


def httpbin_url() -> str:
    return "http://httpbin.foo:8000/get"
