"""The local mesh's lifecycle: nothing left behind after close, SIGKILL, Ctrl-C, keep or a failed
start; two meshes at once; certificates rotated through SDS without a failed request.

Meshes owned by other processes are started with small scripts (`python -c`), so that the owner
can die the way the issue lists: SIGKILL, SIGINT to a pytest run, a normal exit with keep.
Requests into those meshes start inside their pod namespaces (`ip netns exec`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from local_helpers import (
    alive,
    default_signals,
    needs_local_mesh,
    subprocess_env,
    traces_of,
    wait_for,
)

from pytest_meshconform.backends.local import host, xds
from pytest_meshconform.backends.local.backend import LocalMesh
from pytest_meshconform.evidence.certs import load_pem_chain, parse_envoy_certs
from pytest_meshconform.istio.api.destination_rule import destination_rule
from pytest_meshconform.istio.api.peer_authentication import peer_authentication
from pytest_meshconform.istio.sidecar_dump import parse_envoy_secrets
from pytest_meshconform.mesh import MeshError, MeshUnavailable

pytestmark = needs_local_mesh

OWNER_SCRIPT = """
import json, sys, threading
from pytest_meshconform.backends.local.backend import LocalMesh
keep = sys.argv[1] == "keep"
mesh = LocalMesh(keep=keep, progress=lambda m: print("progress:", m, flush=True)).start()
netns = {w.key: mesh.netns(w) for w in mesh.workloads()}
info = {"run_id": mesh.run_id, "pids": mesh.pids(), "netns": netns}
print(json.dumps(info), flush=True)
if keep:
    mesh.close()  # leaves it running and says what
else:
    threading.Event().wait(120)  # until killed
"""


class Owner:
    """A process that owns a local mesh, and what it printed about it."""

    def __init__(self, mode: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", OWNER_SCRIPT, mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=subprocess_env(),
        )
        self.lines: list[str] = []
        self.info: dict[str, Any] = {}

    def wait_up(self, timeout: float = 30) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        buffer = b""
        while not self.info:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                pytest.fail(f"mesh owner not up after {timeout}s: {self.lines}")
            chunk = os.read(fd, 65536)
            if not chunk:
                _, err = self.proc.communicate()
                pytest.fail(f"mesh owner exited: {self.lines} {err.decode()}")
            buffer += chunk
            *done, buffer = buffer.split(b"\n")
            for line in done:
                self.lines.append(line.decode())
                if line.startswith(b"{"):
                    self.info = json.loads(line)
        return self.info

    def netns(self, key: str) -> str:
        return str(self.info["netns"][key])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        out, _ = self.proc.communicate()
        self.lines += out.decode().splitlines()


@pytest.fixture
def owners() -> Iterator[list[Owner]]:
    """Mesh owners started by a test; whatever they leave is swept at the end, whatever happens."""
    started: list[Owner] = []
    yield started
    for owner in started:
        owner.kill()
    host.sweep_stale_runs()
    for owner in started:
        if owner.info:
            assert traces_of(owner.info["run_id"]) == []


def curl_in(netns: str, url: str) -> tuple[int, str]:
    """One request from inside a pod namespace (never from the root namespace)."""
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url],
        capture_output=True,
        text=True,
        timeout=15,
    )
    return proc.returncode, proc.stdout


# ============================================================================ two meshes, SIGKILL


def test_two_meshes_at_once_and_a_sigkilled_owner(owners: list[Owner]) -> None:
    other = Owner("wait")
    owners.append(other)
    with LocalMesh() as mine:  # starts while the other is starting
        info = other.wait_up()
        theirs = info["run_id"]
        assert theirs != mine.run_id
        assert not {mine.netns(x) for x in mine.workloads()} & set(info["netns"].values())
        # Same addresses, separate worlds: a policy in one mesh does not reach the other.
        mine.apply(peer_authentication("default", "istio-system", "STRICT"))
        naked = mine.workload("sleep", "legacy")
        assert curl_in(mine.netns(naked), "http://httpbin.foo:8000/get") == (56, "000")
        assert curl_in(other.netns("sleep.legacy"), "http://httpbin.foo:8000/get") == (0, "200")

        other.proc.send_signal(signal.SIGKILL)
        other.proc.wait()
        pids = info["pids"]
        assert len(pids) == 8  # 4 Envoys, the app launcher, 3 apps
        # PR_SET_PDEATHSIG survived setpriv's uid change: the orphans die with their owner.
        wait_for(lambda: not any(alive(p) for p in pids), 10, f"the dead owner's {pids} to die")
        assert traces_of(theirs)  # namespaces and files wait for the next start's sweep
        assert host.sweep_stale_runs() == [f"run {theirs}"]
        assert traces_of(theirs) == []

        # The sweep touched nothing of the live mesh.
        assert all(alive(p) for p in mine.pids())
        sleep = mine.workload("sleep", "foo")
        assert curl_in(mine.netns(sleep), "http://httpbin.bar:8000/get") == (0, "200")
        my_id, my_pids = mine.run_id, mine.pids()
    assert traces_of(my_id) == []
    assert not any(alive(p) for p in my_pids)


# ============================================================================ keep


def test_kept_mesh_outlives_its_owner_until_the_next_start_sweeps_it(owners: list[Owner]) -> None:
    kept = Owner("keep")
    owners.append(kept)
    info = kept.wait_up()
    assert kept.proc.wait(timeout=30) == 0
    kept.kill()  # collects the rest of its output
    run_id = info["run_id"]
    (message,) = [line for line in kept.lines if "keep: left local mesh" in line]
    assert f"keep: left local mesh {run_id} running: 8 processes" in message
    assert f"mc-{run_id}-foo-httpbin" in message
    assert f"/run/meshconform/{run_id}" in message
    assert "`meshconform sweep`" in message
    # Its owner is gone, the mesh is not: it still answers.
    assert all(alive(p) for p in info["pids"])
    assert curl_in(kept.netns("sleep.legacy"), "http://httpbin.bar:8000/get") == (0, "200")

    notes: list[str] = []
    with LocalMesh(progress=notes.append) as mesh:
        assert f"swept leftovers of dead runs: run {run_id} (kept)" in notes
        assert traces_of(run_id) == []
        assert not any(alive(p) for p in info["pids"])
        assert mesh.running


# ============================================================================ Ctrl-C

INTERRUPTED_SUITE = """
import json, os, threading
import pytest
from pytest_meshconform.backends.local.backend import LocalMesh

@pytest.fixture(scope="module")
def local_mesh():
    mesh = LocalMesh().start()
    yield mesh
    mesh.close()

def test_waits_for_ctrl_c(local_mesh):
    info = {"run_id": local_mesh.run_id, "pids": local_mesh.pids()}
    with open(os.environ["MC_READY"], "w") as ready:
        json.dump(info, ready)
    threading.Event().wait(120)
"""


def test_ctrl_c_to_a_pytest_run_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "test_interrupted.py").write_text(INTERRUPTED_SUITE)
    ready = tmp_path / "ready.json"
    env = subprocess_env() | {"MC_READY": str(ready)}
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:meshconform", "-q"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, like a terminal's foreground job
        preexec_fn=default_signals,  # Ctrl-C reaches it even where SIGINT is ignored here
    )
    try:
        wait_for(
            lambda: (ready.exists() and ready.stat().st_size > 0) or run.poll() is not None,
            30,
            "the interrupted suite's mesh to come up",
        )
        assert run.poll() is None, run.communicate()[0].decode()
        info = json.loads(ready.read_text())
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        output, _ = run.communicate(timeout=120)  # a safety net: teardown under load
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    text = output.decode()
    assert run.returncode == pytest.ExitCode.INTERRUPTED, text
    assert "KeyboardInterrupt" in text
    assert traces_of(info["run_id"]) == []
    assert not any(alive(p) for p in info["pids"])


# ============================================================================ threads


def test_a_mesh_started_by_a_thread_outlives_the_thread() -> None:
    """PR_SET_PDEATHSIG fires when the forking *thread* ends (checked by hand with setpriv and
    a thread that lingers 0.3 s): the mesh forks from a thread of its own."""
    box: dict[str, LocalMesh] = {}
    starter = threading.Thread(target=lambda: box.setdefault("mesh", LocalMesh().start()))
    starter.start()
    starter.join()
    mesh = box["mesh"]
    try:
        pids = mesh.pids()
        sleep = mesh.workload("sleep", "foo")
        assert curl_in(mesh.netns(sleep), "http://httpbin.bar:8000/get") == (0, "200")
        assert all(alive(p) for p in pids)
        run_id = mesh.run_id
    finally:
        mesh.close()
    assert traces_of(run_id) == []


# ============================================================================ failures


def test_a_failed_start_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    real_bootstrap = xds.bootstrap

    def broken(*args: Any) -> dict[str, Any]:
        config = real_bootstrap(*args)
        config["admin"]["address"]["pipe"]["mode"] = "not a mode"
        return config

    monkeypatch.setattr(xds, "bootstrap", broken)
    notes: list[str] = []
    mesh = LocalMesh(progress=notes.append)
    with pytest.raises(MeshError, match=r"Envoy of \w+\.\w+ exited with 1: .*not a mode"):
        mesh.start()
    (creating,) = [n for n in notes if n.endswith(": creating 6 pods")]
    run_id = creating.split()[2].rstrip(":")
    assert traces_of(run_id) == []
    assert not mesh.running


def test_preflight_failure_creates_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    before = set(host.STATE_ROOT.iterdir()) if host.STATE_ROOT.exists() else set()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(MeshUnavailable, match="the local mesh needs root"):
        LocalMesh().start()
    after = set(host.STATE_ROOT.iterdir()) if host.STATE_ROOT.exists() else set()
    assert after == before


def test_a_closed_mesh_says_so_and_closes_twice() -> None:
    mesh = LocalMesh()
    with pytest.raises(MeshError, match=r"not running \(call start\(\) first\)"):
        mesh.exec(mesh.workload("sleep", "foo"), ["true"])
    mesh.start()
    with pytest.raises(MeshError, match="already running"):
        mesh.start()
    run_id = mesh.run_id
    mesh.close()
    mesh.close()
    assert traces_of(run_id) == []
    for call in (
        lambda: mesh.apply(peer_authentication("default", "foo", "STRICT")),
        lambda: mesh.envoy_admin(mesh.workload("sleep", "foo"), "/certs"),
        lambda: mesh.logs(mesh.workload("sleep", "foo")),
        lambda: mesh.root_cert,
    ):
        with pytest.raises(MeshError, match="not running"):
            call()


# ============================================================================ rotation

ROTATION_TTL = dt.timedelta(seconds=8)
# Each loop's pod calls the other namespace's httpbin: its sidecar and the server's take part.
CALLS = (("foo", "http://httpbin.bar:8000/get"), ("bar", "http://httpbin.foo:8000/get"))
CALLERS = {"sleep.foo": 0, "httpbin.bar": 0, "sleep.bar": 1, "httpbin.foo": 1}  # -> loop
# A request line: when it started, when it ended (bash's clock, no fork), the HTTP status.
LOOP = (
    "while :; do s=$EPOCHREALTIME;"
    " c=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 3 URL); echo \"$s $EPOCHREALTIME $c\";"
    " done"
)


def _requests(path: Path) -> list[tuple[float, float, str]]:
    """The loop's complete lines so far (the last one may be cut by kill)."""
    made = []
    for line in path.read_text().splitlines()[:-1]:
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            made.append((float(parts[0]), float(parts[1]), parts[2]))
        else:  # curl's own message on stderr: a failure too
            made.append((0.0, 0.0, line))
    return made


def test_every_sidecar_rotates_at_half_life_without_a_failed_request(tmp_path: Path) -> None:
    """Load-insensitive: not a number of requests, but for each sidecar a successful request
    that ended before its rotation and one that started once Envoy served the new certificate,
    and not a single failed request in between."""
    with LocalMesh(cert_ttl=ROTATION_TTL) as mesh:
        sidecars = [x for x in mesh.workloads() if x.has_sidecar]
        assert {x.key for x in sidecars} == set(CALLERS)
        (root,) = load_pem_chain(mesh.root_cert)

        def served(workload: Any) -> Any:
            certs = parse_envoy_certs(mesh.envoy_admin(workload, "/certs"))
            (serial,) = {c.serial for c in certs if c.kind == "cert_chain"}
            return next(c for c in certs if c.serial == serial)

        first = {x.key: served(x) for x in sidecars}
        # Requests over mTLS, both directions, all the while (a new curl, a pooled upstream).
        logs = [tmp_path / f"loop{n}.log" for n in range(len(CALLS))]
        clients = []
        for (src, url), log in zip(CALLS, logs, strict=True):
            with log.open("wb") as out:
                clients.append(
                    subprocess.Popen(
                        mesh.exec_argv(
                            mesh.workload("sleep", src), ["bash", "-c", LOOP.replace("URL", url)]
                        ),
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        rotated: dict[str, tuple[Any, float]] = {}  # key -> (new cert, epoch seen served)
        try:
            deadline = time.monotonic() + ROTATION_TTL.total_seconds()
            while len(rotated) < len(sidecars):
                assert time.monotonic() < deadline, f"rotated only {sorted(rotated)}"
                for x in sidecars:
                    if x.key not in rotated:
                        cert = served(x)
                        if cert.serial != first[x.key].serial:  # seen by now, at the latest
                            rotated[x.key] = (cert, time.time())
                time.sleep(0.05)
            # Each loop goes on until it has a request that started after its sidecars rotated.
            for n, log in enumerate(logs):
                since = max(seen for key, (_, seen) in rotated.items() if CALLERS[key] == n)
                wait_for(
                    lambda log=log, since=since: any(s > since for s, _, _ in _requests(log)),
                    20,
                    f"a request of loop {n} after its sidecars rotated",
                )
        finally:
            for client in clients:
                client.kill()
                client.wait()
        requests = [_requests(log) for log in logs]
        for n, made in enumerate(requests):
            assert {code for _, _, code in made} == {"200"}, (CALLS[n], made)
        by_key = {r.workload: r for r in reversed(mesh.rotations)}  # the first of each
        for key, (cert, seen) in rotated.items():
            old = first[key]
            made = requests[CALLERS[key]]
            rotation = by_key[key]
            # Envoy's /certs gives serials in hex, the agent's record as integers.
            assert (rotation.old_serial, rotation.new_serial) == (
                int(old.serial, 16),
                int(cert.serial, 16),
            )
            at = rotation.at.timestamp()
            assert any(end < at for _, end, _ in made), (key, "no request before the rotation")
            assert any(start > seen for start, _, _ in made), (key, "none after it")
            lifetime = old.expiration_time - old.valid_from
            assert lifetime == ROTATION_TTL
            # Istio: expire - 0.5 * lifetime, 1 % jitter: 0.49..0.51 of 8 s when the agent
            # rotates, plus up to 160 ms for its thread to wake on a loaded machine. The test's
            # own polls (four admin calls every 50 ms) lag more under load: the served
            # certificate is only required to be seen within 1.6 s (0.2 of the lifetime).
            fraction = (rotation.at - old.valid_from) / lifetime
            assert 0.49 <= fraction <= 0.53, (key, fraction)
            served_fraction = (seen - old.valid_from.timestamp()) / lifetime.total_seconds()
            assert fraction <= served_fraction <= fraction + 0.2, (key, served_fraction)
            assert cert.uris == old.uris
            assert cert.valid_from >= old.valid_from
        assert {r.workload for r in mesh.rotations} >= {x.key for x in sidecars}
        # A new handshake uses the new certificates: drop sleep.foo's pooled connections, ask
        # again, and the XFCC hash is the one of sleep.foo's new certificate (which chains to
        # the mesh root).
        rule = destination_rule("drop-pool", "foo", "httpbin.bar.svc.cluster.local", mode="DISABLE")
        mesh.apply(rule)
        mesh.delete(rule)
        sleep = mesh.workload("sleep", "foo")
        answer = mesh.exec(sleep, ["curl", "-sS", "--fail", "http://httpbin.bar:8000/headers"])
        header = json.loads(answer.stdout)["headers"]["X-Forwarded-Client-Cert"]
        secrets = parse_envoy_secrets(mesh.envoy_admin(sleep, "/config_dump"))
        assert secrets.workload is not None
        assert secrets.workload.serial == rotated["sleep.foo"][0].serial
        leaf = secrets.workload.leaf.public_bytes(Encoding.DER)
        assert f"Hash={hashlib.sha256(leaf).hexdigest()};" in header
        secrets.workload.verify([root], at=dt.datetime.now(dt.UTC))
