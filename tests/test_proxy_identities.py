"""Per-pod proxy identities on the local mesh (issue 23, finding 8): each sidecar's Envoy runs
as a uid and gid of its own, so one pod's Envoy can neither read another pod's key nor reach
its admin socket; its pod's interception rules exclude exactly that uid, as istio-iptables
excludes 1337 (traffic from the proxy bypasses interception), and no other.

Real Envoys, real files, real iptables: each check runs a process as a proxy's uid inside a
pod's network namespace, the way that Envoy runs.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_helpers import needs_local_mesh, traces_of

from pytest_meshconform.backends.local import host
from pytest_meshconform.backends.local.backend import LocalMesh
from pytest_meshconform.backends.local.topology import PROXY_GID, PROXY_ID_BASE
from pytest_meshconform.mesh import MeshError, Workload

pytestmark = needs_local_mesh

SIDECARS = ("sleep.foo", "httpbin.foo", "sleep.bar", "httpbin.bar")


@pytest.fixture(scope="module")
def mesh() -> Iterator[LocalMesh]:
    local = LocalMesh().start()
    run_id = local.run_id
    try:
        yield local
    finally:
        local.close()
    assert traces_of(run_id) == []


def _w(mesh: LocalMesh, key: str) -> Workload:
    name, namespace = key.split(".")
    return mesh.workload(name, namespace)


def as_proxy(
    mesh: LocalMesh, uid: int, argv: list[str], *, netns: str | None = None
) -> subprocess.CompletedProcess[str]:
    """argv run as an Envoy runs (that uid and gid, group PROXY_GID), in a pod's namespace."""
    command = [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={uid}",
        f"--groups={PROXY_GID}",
        "--pdeathsig=KILL",
        *argv,
    ]
    if netns is not None:
        command = host.in_netns(netns, command)
    return subprocess.run(
        command, capture_output=True, text=True, timeout=30, env=host.pod_environment()
    )


def test_every_sidecar_runs_as_its_own_uid(mesh: LocalMesh) -> None:
    uids = {key: mesh.proxy_uid(_w(mesh, key)) for key in SIDECARS}
    assert len(set(uids.values())) == len(SIDECARS), uids
    assert all(uid >= PROXY_ID_BASE for uid in uids.values()), uids
    for key, uid in uids.items():
        (pid,) = [
            p
            for p in mesh.pids()
            if subprocess.run(
                ["ip", "netns", "identify", str(p)], capture_output=True, text=True
            ).stdout.strip()
            == mesh.netns(_w(mesh, key))
            and "envoy" in Path(f"/proc/{p}/comm").read_text()
        ]
        status = Path(f"/proc/{pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{uid}\s+{uid}\s+{uid}\s+{uid}$", status, re.M), status
        assert re.search(rf"^Gid:\s+{uid}\s+{uid}\s+{uid}\s+{uid}$", status, re.M), status
        assert re.search(rf"^Groups:\s+{PROXY_GID}\s*$", status, re.M), status
    with pytest.raises(MeshError, match="no sidecar"):
        mesh.proxy_uid(mesh.workload("sleep", "legacy"))


def test_one_proxy_cannot_read_another_pods_key_or_reach_its_admin_socket(
    mesh: LocalMesh,
) -> None:
    sleep_uid = mesh.proxy_uid(_w(mesh, "sleep.foo"))
    own = mesh.run_dir / "pods" / "sleep.foo" / "envoy"
    theirs = mesh.run_dir / "pods" / "httpbin.foo" / "envoy"
    # Positive control: the sleep pod's Envoy reads its own key and asks its own admin.
    read_own = as_proxy(mesh, sleep_uid, ["cat", str(own / "sds" / "default.json")])
    assert read_own.returncode == 0 and "PRIVATE KEY" in read_own.stdout, read_own.stderr
    admin = ["curl", "-sS", "--max-time", "5", "--unix-socket"]
    own_admin = as_proxy(mesh, sleep_uid, [*admin, str(own / "admin.sock"), "http://x/ready"])
    assert own_admin.returncode == 0 and "LIVE" in own_admin.stdout, own_admin
    # Another pod's key and admin socket: refused by the kernel.
    read_theirs = as_proxy(mesh, sleep_uid, ["cat", str(theirs / "sds" / "default.json")])
    assert read_theirs.returncode != 0, read_theirs.stdout[:80]
    assert "Permission denied" in read_theirs.stderr, read_theirs.stderr
    their_admin = as_proxy(mesh, sleep_uid, [*admin, str(theirs / "admin.sock"), "http://x/ready"])
    assert their_admin.returncode == 7, their_admin  # curl: could not connect
    assert "Permission denied" in their_admin.stderr or "Couldn't connect" in their_admin.stderr
    # Each key is 0600 and its own Envoy's.
    for key in SIDECARS:
        path = mesh.run_dir / "pods" / key / "envoy" / "sds" / "default.json"
        info = path.stat()
        uid = mesh.proxy_uid(_w(mesh, key))
        assert (info.st_mode & 0o777, info.st_uid, info.st_gid) == (0o600, uid, uid), key


def test_only_the_pods_own_proxy_uid_bypasses_interception(mesh: LocalMesh) -> None:
    """As istio-iptables: traffic of the proxy's uid is not redirected to the proxy again. A
    request from the sleep pod's namespace reaches httpbin.foo's sidecar in mTLS (XFCC set)
    when intercepted, in plaintext (no XFCC) when it bypasses the sleep sidecar."""
    sleep = _w(mesh, "sleep.foo")
    netns = mesh.netns(sleep)
    url = "http://httpbin.foo:8000/headers"

    def seen(uid: int) -> dict[str, str]:
        answer = as_proxy(
            mesh, uid, ["curl", "-sS", "--fail", "--max-time", "10", url], netns=netns
        )
        assert answer.returncode == 0, answer
        headers: dict[str, str] = json.loads(answer.stdout)["headers"]
        return headers

    own = mesh.proxy_uid(sleep)
    other = mesh.proxy_uid(_w(mesh, "sleep.bar"))
    assert "X-Forwarded-Client-Cert" not in seen(own)  # bypassed: plaintext, as Istio's 1337
    assert "X-Forwarded-Client-Cert" in seen(other)  # another pod's proxy uid: intercepted
    assert "X-Forwarded-Client-Cert" in seen(1337)  # Istio's fixed uid means nothing here


def test_two_runs_at_once_get_disjoint_uids() -> None:
    with LocalMesh() as first, LocalMesh() as second:
        a = {first.proxy_uid(_w(first, key)) for key in SIDECARS}
        b = {second.proxy_uid(_w(second, key)) for key in SIDECARS}
        assert not a & b, (a, b)
