"""The local mesh's long-lived gRPC clients, for real: one process per client pod, started on
its first call in the pod's namespace as root (as a process per call ran), reused for the
next calls, replaced when it hung or died, gone with the mesh.

The built-in topology: httpbin.foo serves grpc-echo on 50051 (docs/topology.md); sleep.legacy
has no sidecar and sleep.foo has one, so the calls go plaintext and through a sidecar.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_helpers import alive, needs_local_mesh, traces_of, wait_for

from pytest_meshconform.backends.local.backend import LocalMesh
from pytest_meshconform.evidence.grpc_call import grpc_client_args, parse_grpc_output
from pytest_meshconform.mesh import MeshError, Workload

pytestmark = needs_local_mesh

ARGS = grpc_client_args("httpbin.foo", 50051, timeout=5)


@pytest.fixture
def mesh() -> Iterator[LocalMesh]:
    local = LocalMesh().start()
    run_id = local.run_id
    try:
        yield local
    finally:
        local.close()
    assert traces_of(run_id) == []


def _ok(mesh: LocalMesh, client: Workload, timeout: float = 15) -> None:
    result = mesh.grpc_exec(client, ARGS, timeout)
    grpc = parse_grpc_output(
        "httpbin.foo:50051", client.key, result.returncode, result.stdout, result.stderr
    )
    assert grpc.ok, grpc


def _netns_and_uid(pid: int) -> tuple[str, int]:
    netns = subprocess.run(
        ["ip", "netns", "identify", str(pid)], capture_output=True, text=True, check=True
    ).stdout.strip()
    status = Path(f"/proc/{pid}/status").read_text()
    uid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:"))
    return netns, uid


def test_each_client_pod_gets_one_process_reused_until_it_hangs_or_dies(mesh: LocalMesh) -> None:
    legacy, foo = mesh.workload("sleep", "legacy"), mesh.workload("sleep", "foo")
    before = set(mesh.pids())
    _ok(mesh, legacy)
    (first,) = set(mesh.pids()) - before
    assert _netns_and_uid(first) == (mesh.netns(legacy), 0)
    _ok(mesh, legacy)
    _ok(mesh, foo)  # through its sidecar: a process of its own, in its own pod
    (other,) = set(mesh.pids()) - before - {first}
    assert _netns_and_uid(other) == (mesh.netns(foo), 0)
    assert set(mesh.pids()) - before == {first, other}  # reused, not started again

    os.kill(first, signal.SIGSTOP)  # hung: the call's timeout still ends it
    with pytest.raises(MeshError, match=r"in sleep\.legacy did not finish within 1\.0s"):
        mesh.grpc_exec(legacy, ARGS, 1.0)
    assert not alive(first)
    _ok(mesh, legacy)
    (second,) = set(mesh.pids()) - before - {other}
    os.kill(second, signal.SIGKILL)  # died between calls: the next call starts another
    wait_for(lambda: not alive(second), 5, f"the killed gRPC client {second} to end")
    _ok(mesh, legacy)
    (third,) = set(mesh.pids()) - before - {other}
    assert len({first, second, third}) == 3
    assert mesh.health_problems() == ()  # a client is no process of the mesh's pods

    mesh.close()
    assert not alive(other) and not alive(third)
