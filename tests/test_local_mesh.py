"""The local mesh brought up for real: exec, propagation, XFCC, the wire, certificates, drain.

One mesh for the whole module (it comes up in well under a second); every test that applies a
policy deletes it again. Expected values are Istio's (see test_local_config.py for sources) or
read off tools run by hand (iptables-save, curl), never computed by the backend under test.
Every request starts inside a pod namespace (`mesh.exec` / `mesh.exec_argv`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from local_helpers import needs_local_mesh, traces_of

from pytest_meshconform.backends.local.backend import LocalMesh
from pytest_meshconform.backends.local.lifecycle import ENVOY_DRAIN_TIME_S
from pytest_meshconform.evidence.certs import load_pem_chain, parse_envoy_certs
from pytest_meshconform.evidence.wire import analyze_pcap
from pytest_meshconform.evidence.xfcc import parse_xfcc
from pytest_meshconform.istio.api.destination_rule import destination_rule
from pytest_meshconform.istio.api.peer_authentication import peer_authentication
from pytest_meshconform.istio.sidecar_dump import parse_envoy_secrets
from pytest_meshconform.mesh import LogPositions, MeshError, Workload
from pytest_meshconform.plugin.capture import is_block_traffic

pytestmark = needs_local_mesh

MESH_STRICT = peer_authentication("default", "istio-system", "STRICT")
FOO_STRICT = peer_authentication("default", "foo", "STRICT")


@pytest.fixture(scope="module")
def mesh() -> Iterator[LocalMesh]:
    local = LocalMesh().start()
    run_id = local.run_id
    try:
        yield local
    finally:
        local.close()
    assert traces_of(run_id) == []


@pytest.fixture
def policy(mesh: LocalMesh) -> Iterator[Any]:
    """apply(manifest) for this test; every manifest applied is deleted afterwards."""
    applied: list[dict[str, Any]] = []

    def apply(manifest: dict[str, Any]) -> None:
        mesh.apply(manifest)
        applied.append(manifest)

    yield apply
    for manifest in reversed(applied):
        mesh.delete(manifest)
    assert mesh.policies() == []


def w(mesh: LocalMesh, name: str, namespace: str) -> Workload:
    return mesh.workload(name, namespace)


def curl(mesh: LocalMesh, client: Workload, url: str, *extra: str) -> tuple[int, str]:
    """(curl exit code, HTTP status or '000') of one request from the client's pod."""
    result = mesh.exec(
        client, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", *extra, url], timeout=15
    )
    return result.returncode, result.stdout.decode()


def headers_seen(mesh: LocalMesh, client: Workload, url: str, *extra: str) -> dict[str, str]:
    result = mesh.exec(client, ["curl", "-sS", "--fail", *extra, url], timeout=15)
    assert result.returncode == 0, result
    headers: dict[str, str] = json.loads(result.stdout)["headers"]
    return headers


def stat(mesh: LocalMesh, workload: Workload, name: str) -> str:
    body = mesh.envoy_admin(workload, f"/stats?filter=^{re.escape(name)}$").decode()
    (line,) = body.splitlines()
    return line.partition(":")[2].strip().strip('"')


# ============================================================================ pods and exec


def test_exec_runs_in_the_pod_as_the_apps_uid(mesh: LocalMesh) -> None:
    sleep, httpbin = w(mesh, "sleep", "bar"), w(mesh, "httpbin", "bar")
    assert mesh.exec(sleep, ["id", "-u"]).stdout == b"1000\n"
    assert mesh.exec(httpbin, ["id", "-u"]).stdout == b"0\n"
    address = mesh.exec(sleep, ["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).stdout.decode()
    assert " 10.244.0.12/24 " in address
    hosts = mesh.exec(sleep, ["cat", "/etc/hosts"]).stdout.decode()
    assert (
        "10.96.0.11\thttpbin.bar.svc.cluster.local httpbin.bar.svc httpbin.bar httpbin\n" in hosts
    )


def test_names_resolve_as_in_kubernetes(mesh: LocalMesh) -> None:
    sleep = w(mesh, "sleep", "foo")
    for url in (
        "http://httpbin:8000/get",
        "http://httpbin.bar:8000/get",
        "http://httpbin.legacy.svc.cluster.local:8000/get",
    ):
        assert curl(mesh, sleep, url) == (0, "200"), url


def test_exec_errors_say_what_happened(mesh: LocalMesh) -> None:
    sleep = w(mesh, "sleep", "legacy")
    with pytest.raises(MeshError, match=r"`sleep 5` in sleep\.legacy did not finish within 0\.3s"):
        mesh.exec(sleep, ["sleep", "5"], timeout=0.3)
    missing = mesh.exec(sleep, ["no-such-command"])
    assert missing.returncode == 127
    assert b"no-such-command" in missing.stderr
    with pytest.raises(MeshError, match=r"no workload nope\.foo in the local mesh \(have: "):
        mesh.workload("nope", "foo")
    with pytest.raises(MeshError, match=r"sleep\.legacy has no sidecar"):
        mesh.envoy_admin(sleep, "/certs")
    with pytest.raises(MeshError, match=r"Envoy admin /no-such-page on sleep\.foo answered 404"):
        mesh.envoy_admin(w(mesh, "sleep", "foo"), "/no-such-page")
    with pytest.raises(MeshError, match="empty command"):
        mesh.exec(sleep, [])


# Istio's documented `iptables-save -t nat` of an injected pod, as iptables-save prints it.
ISTIO_IPTABLES_SAVE = [
    "-A PREROUTING -p tcp -j ISTIO_INBOUND",
    "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
    "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
    "-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
    "-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN",
    "-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN",
    "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
    "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
    "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
    "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
    "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
    "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
    "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT",
    "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN",
    "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
    "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
    "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
    "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
]


def test_sidecar_pod_has_istios_nat_rules(mesh: LocalMesh) -> None:
    saved = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            mesh.netns(w(mesh, "httpbin", "foo")),
            "iptables-save",
            "-t",
            "nat",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    istio = [line for line in saved if "ISTIO" in line and line.startswith("-A")]
    # Istio's rules, with the pod's own proxy uid and gid where Istio has its fixed 1337.
    own = str(mesh.proxy_uid(w(mesh, "httpbin", "foo")))
    assert sorted(istio) == sorted(line.replace("1337", own) for line in ISTIO_IPTABLES_SAVE)
    assert (
        "-A MC_SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 8000 -j DNAT"
        " --to-destination 10.244.0.11:8080"
    ) in saved


def test_processes_run_in_their_pods_as_their_uids(mesh: LocalMesh) -> None:
    by_netns: dict[str, list[tuple[str, int]]] = {}
    for pid in mesh.pids():
        netns = subprocess.run(
            ["ip", "netns", "identify", str(pid)], capture_output=True, text=True
        ).stdout.strip()
        status = Path(f"/proc/{pid}/status").read_text()
        uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M)[1])  # type: ignore[index]
        name = re.search(r"^Name:\s+(\S+)", status, re.M)[1]  # type: ignore[index]
        name = "python" if name.startswith("python") else name
        by_netns.setdefault(netns.removeprefix(f"mc-{mesh.run_id}-"), []).append((name, uid))
    uid = {key: mesh.proxy_uid(w(mesh, *key.split("."))) for key in ("sleep.foo", "httpbin.foo")}
    uid |= {key: mesh.proxy_uid(w(mesh, *key.split("."))) for key in ("sleep.bar", "httpbin.bar")}
    assert len(set(uid.values())) == 4, uid  # each sidecar's Envoy its own uid
    assert {k: sorted(v) for k, v in by_netns.items()} == {
        "": [("python", 0)],  # the app launcher stays in the root namespace
        "foo-sleep": [("envoy", uid["sleep.foo"])],
        "foo-httpbin": [("envoy", uid["httpbin.foo"]), ("python", 0)],
        "bar-sleep": [("envoy", uid["sleep.bar"])],
        "bar-httpbin": [("envoy", uid["httpbin.bar"]), ("python", 0)],
        "legacy-httpbin": [("python", 0)],
    }


# ============================================================================ apply / delete


def test_apply_returns_once_every_affected_envoy_has_it(mesh: LocalMesh, policy: Any) -> None:
    watched = {key: w(mesh, *key.split(".")) for key in ("httpbin.foo", "sleep.foo", "httpbin.bar")}
    before = {
        k: int(stat(mesh, x, "listener_manager.lds.version_text")) for k, x in watched.items()
    }
    policy(FOO_STRICT)
    after = {k: int(stat(mesh, x, "listener_manager.lds.version_text")) for k, x in watched.items()}
    # foo's pods changed (their inbound mode), bar's did not.
    assert {k: after[k] - before[k] for k in watched} == {
        "httpbin.foo": 1,
        "sleep.foo": 1,
        "httpbin.bar": 0,
    }
    # No retry, no sleep: the very first request after apply() sees STRICT.
    assert curl(mesh, w(mesh, "sleep", "legacy"), "http://httpbin.foo:8000/get") == (56, "000")
    assert curl(mesh, w(mesh, "sleep", "legacy"), "http://httpbin.bar:8000/get") == (0, "200")


def test_delete_restores_the_previous_config(mesh: LocalMesh) -> None:
    httpbin = w(mesh, "httpbin", "foo")

    def listeners() -> Any:
        dump = json.loads(mesh.envoy_admin(httpbin, "/config_dump?resource=dynamic_listeners"))
        return sorted(
            (c["active_state"]["listener"] for c in dump["configs"]), key=lambda x: x["name"]
        )

    original = listeners()
    mesh.apply(MESH_STRICT)
    assert listeners() != original
    mesh.delete(MESH_STRICT)
    assert listeners() == original
    assert mesh.policies() == []
    assert curl(mesh, w(mesh, "sleep", "legacy"), "http://httpbin.foo:8000/get") == (0, "200")
    mesh.delete(MESH_STRICT)  # deleting what is not there is not an error (nothing to wait for)


def test_apply_of_an_invalid_manifest_names_the_field(mesh: LocalMesh) -> None:
    manifest = json.loads(json.dumps(FOO_STRICT))
    manifest["spec"]["mtls"]["mode"] = "STRICTT"
    with pytest.raises(
        MeshError, match=r"cannot apply an invalid policy: .*spec\.mtls\.mode.*STRICTT"
    ):
        mesh.apply(manifest)
    with pytest.raises(MeshError, match="cannot apply an invalid policy"):
        mesh.apply({"kind": "AuthorizationPolicy", "metadata": {"name": "x"}})
    assert mesh.policies() == []


def test_config_envoy_rejects_is_rolled_back(mesh: LocalMesh) -> None:
    broken = destination_rule(
        "to-bar",
        "foo",
        "httpbin.bar.svc.cluster.local",
        mode="SIMPLE",
        ca_certificates="/nonexistent/ca.pem",
    )
    with pytest.raises(MeshError, match=r"Envoy of sleep\.foo rejected its new config: .*ca\.pem"):
        mesh.apply(broken)
    assert mesh.policies() == []
    assert curl(mesh, w(mesh, "sleep", "foo"), "http://httpbin.bar:8000/get") == (0, "200")
    mesh.apply(FOO_STRICT)  # the next change goes through
    mesh.delete(FOO_STRICT)


def test_policies_lists_what_is_in_force(mesh: LocalMesh, policy: Any) -> None:
    rule = destination_rule("to-foo", "bar", "httpbin.foo.svc.cluster.local", mode="DISABLE")
    policy(FOO_STRICT)
    policy(rule)
    assert [m["kind"] for m in mesh.policies()] == ["PeerAuthentication", "DestinationRule"]
    # DR DISABLE towards a STRICT server: the client's own sidecar answers 503 (as in Istio).
    assert curl(mesh, w(mesh, "sleep", "bar"), "http://httpbin.foo:8000/get") == (0, "503")


# ============================================================================ XFCC

XFCC_SHAPE = re.compile(
    r'By=spiffe://cluster\.local/ns/foo/sa/httpbin;Hash=(?P<hash>[0-9a-f]{64});Subject="";'
    r"URI=spiffe://cluster\.local/ns/bar/sa/sleep"
)


def test_xfcc_has_istios_exact_shape(mesh: LocalMesh) -> None:
    sleep = w(mesh, "sleep", "bar")
    header = headers_seen(mesh, sleep, "http://httpbin.foo:8000/headers")["X-Forwarded-Client-Cert"]
    match = XFCC_SHAPE.fullmatch(header)
    assert match, header
    # Hash is the SHA-256 of the client's leaf certificate (DER), the one its sidecar serves.
    secrets = parse_envoy_secrets(mesh.envoy_admin(sleep, "/config_dump"))
    assert secrets.workload is not None
    leaf_der = secrets.workload.leaf.public_bytes(serialization_der())
    assert match["hash"] == hashlib.sha256(leaf_der).hexdigest()
    (element,) = parse_xfcc(header)
    assert (element.by_spiffe_uri, element.spiffe_uri, element.subject, element.dns) == (
        "spiffe://cluster.local/ns/foo/sa/httpbin",
        "spiffe://cluster.local/ns/bar/sa/sleep",
        None,  # parse_xfcc: an empty value (Subject="", checked raw above) means absent
        (),
    )


def serialization_der() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


FORGED = "X-Forwarded-Client-Cert: By=spiffe://evil/x;URI=spiffe://cluster.local/ns/foo/sa/admin"


def test_a_naked_clients_forged_xfcc_is_stripped(mesh: LocalMesh) -> None:
    seen = headers_seen(
        mesh, w(mesh, "sleep", "legacy"), "http://httpbin.foo:8000/headers", "-H", FORGED
    )
    assert "X-Forwarded-Client-Cert" not in seen
    assert seen["Host"] == "httpbin.foo:8000"  # the request did arrive, headers and all


def test_a_sidecar_apps_forged_xfcc_never_reaches_the_server(mesh: LocalMesh) -> None:
    seen = headers_seen(
        mesh, w(mesh, "sleep", "bar"), "http://httpbin.foo:8000/headers", "-H", FORGED
    )
    assert XFCC_SHAPE.fullmatch(seen["X-Forwarded-Client-Cert"]), seen


def test_no_xfcc_on_a_plaintext_hop_even_between_sidecars(mesh: LocalMesh, policy: Any) -> None:
    policy(destination_rule("to-foo", "bar", "httpbin.foo.svc.cluster.local", mode="DISABLE"))
    seen = headers_seen(
        mesh, w(mesh, "sleep", "bar"), "http://httpbin.foo:8000/headers", "-H", FORGED
    )
    assert "X-Forwarded-Client-Cert" not in seen


# ============================================================================ the wire


def test_capture_sees_plaintext_from_a_naked_client(mesh: LocalMesh) -> None:
    httpbin = w(mesh, "httpbin", "foo")
    with mesh.capture(httpbin, 8080) as recording:
        assert curl(mesh, w(mesh, "sleep", "legacy"), "http://httpbin.foo:8000/headers") == (
            0,
            "200",
        )
    assert recording.path is not None and recording.path.read_bytes() == recording.pcap
    capture = analyze_pcap(recording.pcap)
    # (an earlier test's pooled connection may close while the capture runs: not this block's)
    (flow,) = [f for f in capture.flows_to(8080) if is_block_traffic(f)]
    assert flow.client[0] == "10.244.0.14"
    assert flow.tls is None
    (request,) = flow.http_requests
    assert (request.method, request.target, request.version, request.host) == (
        "GET",
        "/headers",
        "HTTP/1.1",
        "httpbin.foo:8000",
    )


def drop_pooled_connections(mesh: LocalMesh, client_namespace: str, host: str) -> None:
    """Make the client sidecars of a namespace open new connections to host.

    Envoy pools upstream connections (as in Istio): a request may ride an mTLS connection
    opened before a capture started, which the capture then shows without a ClientHello.
    Rebuilding the cluster (a DestinationRule there and back) drops the pool.
    """
    rule = destination_rule("drop-pool", client_namespace, host, mode="DISABLE")
    mesh.apply(rule)
    mesh.delete(rule)


def test_a_pooled_connection_shows_tls_records_without_a_hello(mesh: LocalMesh) -> None:
    """Why the next test drops the pool first: what a capture of a pooled connection looks like."""
    httpbin, sleep = w(mesh, "httpbin", "foo"), w(mesh, "sleep", "bar")
    assert curl(mesh, sleep, "http://httpbin.foo:8000/get") == (0, "200")  # opens the pool
    with mesh.capture(httpbin, 8080) as recording:
        assert curl(mesh, sleep, "http://httpbin.foo:8000/get") == (0, "200")
    (flow,) = analyze_pcap(recording.pcap).flows_to(8080)
    assert flow.direction_from != "syn"  # the connection predates the capture
    assert flow.client_stream[:3] == b"\x17\x03\x03"  # TLS application data, no handshake
    assert flow.http_requests == ()


def test_capture_sees_istio_tls_from_a_sidecar_and_not_the_hop_to_the_app(mesh: LocalMesh) -> None:
    httpbin = w(mesh, "httpbin", "foo")
    drop_pooled_connections(mesh, "bar", "httpbin.foo.svc.cluster.local")
    with mesh.capture(httpbin, 8080) as recording:
        assert curl(mesh, w(mesh, "sleep", "bar"), "http://httpbin.foo:8000/headers") == (0, "200")
    capture = analyze_pcap(recording.pcap)
    # Only the new mTLS connection: the sidecar -> app plaintext hop is on lo, not on eth0.
    (flow,) = [f for f in capture.flows_to(8080) if f.has_payload]
    assert flow.client[0] == "10.244.0.12"
    assert flow.direction_from == "syn"
    assert flow.http_requests == ()
    assert capture.plaintext_flows == ()
    assert flow.tls is not None and flow.tls.client_hello is not None
    hello = flow.tls.client_hello
    assert hello.sni == "outbound_.8000_._.httpbin.foo.svc.cluster.local"
    assert hello.alpn == ("istio-http/1.1", "istio", "http/1.1")
    assert hello.supported_versions == ("TLS1.3", "TLS1.2")
    assert flow.tls.server_hello is not None and flow.tls.server_hello.version == "TLS1.3"


def test_capture_of_a_strict_rejection_shows_the_reset(mesh: LocalMesh, policy: Any) -> None:
    policy(MESH_STRICT)
    with mesh.capture(w(mesh, "httpbin", "bar"), 8080) as recording:
        assert curl(mesh, w(mesh, "sleep", "legacy"), "http://httpbin.bar:8000/get") == (56, "000")
    (flow,) = analyze_pcap(recording.pcap).flows_to(8080)
    assert flow.server_rst
    assert [r.target for r in flow.http_requests] == ["/get"]  # sent in the clear, then reset
    # The listener's access log says why: NR, no filter chain took the plaintext connection.
    access_log_line(mesh, w(mesh, "httpbin", "bar"), re.compile(r'"- - -" 0 NR 0 0 '))


def test_capture_rejects_a_bad_port(mesh: LocalMesh) -> None:
    with (
        pytest.raises(MeshError, match=r"capture port must be in 1\.\.65535"),
        mesh.capture(w(mesh, "httpbin", "foo"), 70000),
    ):
        pass


# ============================================================================ certificates


def test_certs_and_config_dump_show_the_spiffe_identity(mesh: LocalMesh) -> None:
    httpbin = w(mesh, "httpbin", "bar")
    certs = parse_envoy_certs(mesh.envoy_admin(httpbin, "/certs"))
    chains = {c.serial for c in certs if c.kind == "cert_chain"}
    uris = {u for c in certs if c.kind == "cert_chain" for u in c.uris}
    assert uris == {"spiffe://cluster.local/ns/bar/sa/httpbin"}
    assert len(chains) == 1  # one workload certificate, in every TLS context
    (root,) = load_pem_chain(mesh.root_cert)
    secrets = parse_envoy_secrets(mesh.envoy_admin(httpbin, "/config_dump"))
    assert secrets.workload is not None
    assert str(secrets.workload.spiffe_id) == "spiffe://cluster.local/ns/bar/sa/httpbin"
    assert secrets.workload.serial.replace(":", "").lower() in {
        s.replace(":", "").lower() for s in chains
    }
    assert secrets.roots == (root,)
    secrets.workload.verify([root], at=secrets.workload.not_before.replace(microsecond=1))
    lifetime = secrets.workload.not_after - secrets.workload.not_before
    assert lifetime.total_seconds() == 24 * 3600


def access_log_line(mesh: LocalMesh, workload: Workload, pattern: re.Pattern[str]) -> str:
    """The first access log line of the workload's sidecar matching pattern (Envoy flushes its
    access log every 200 ms here, so wait for it)."""
    deadline = time.monotonic() + 5
    while True:
        text = mesh.logs(workload).get("envoy-access.log", "")
        found = next((line for line in text.splitlines() if pattern.search(line)), None)
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"no {pattern.pattern!r} in {text!r}"
        time.sleep(0.02)


def test_logs_keep_every_envoy_and_app(mesh: LocalMesh) -> None:
    assert curl(mesh, w(mesh, "sleep", "foo"), "http://httpbin.bar:8000/status/418") == (0, "418")
    logs = mesh.logs(w(mesh, "httpbin", "bar"))
    assert sorted(logs) == ["app.log", "envoy-access.log", "envoy.log"]
    assert "Serving on http://0.0.0.0:8080" in logs["app.log"]
    access_log_line(mesh, w(mesh, "httpbin", "bar"), re.compile(r'"GET /status/418 HTTP/1.1" 418'))
    access_log_line(mesh, w(mesh, "sleep", "foo"), re.compile(r'"GET /status/418 HTTP/1.1" 418'))
    assert mesh.logs(w(mesh, "sleep", "legacy")) == {}


# ============================================================================ draining


@contextlib.contextmanager
def raw_connection(
    mesh: LocalMesh, client: Workload, host: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A TCP connection from the client's pod, relayed to our stdin/stdout (bash /dev/tcp)."""
    script = f"exec 3<>/dev/tcp/{host}/8000 || exit 9; cat <&3 & exec cat >&3"
    proc = subprocess.Popen(
        mesh.exec_argv(client, ["bash", "-c", script]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.communicate()


def read_until(proc: subprocess.Popen[bytes], needle: bytes, timeout: float) -> bytes:
    """What the connection delivered until `needle` (or EOF: b'' ends it) or the deadline."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise AssertionError(f"no {needle!r} within {timeout}s; got {seen!r}")
        chunk = os.read(fd, 65536)
        if not chunk:
            if needle == b"":
                return seen
            raise AssertionError(f"connection closed before {needle!r}; got {seen!r}")
        seen += chunk
    return seen


def read_to_eof(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise AssertionError(f"connection still open after {timeout}s; got {seen!r}")
        chunk = os.read(fd, 65536)
        if not chunk:
            return seen
        seen += chunk


def test_kept_alive_plaintext_is_cut_after_a_switch_to_strict(mesh: LocalMesh, policy: Any) -> None:
    """What Envoy really does: the old chain drains at once (drain time 0, strategy
    immediate) and `apply` returns only when no replaced chain is draining, so no request on
    the kept-alive connection is served by the old chain after `apply`: it gets no response
    (a stale allow under AuthorizationPolicy was observable with a 1 s drain). A new plaintext
    connection is reset at once.
    """
    request = b"GET /get HTTP/1.1\r\nHost: httpbin.foo:8000\r\n\r\n"
    with raw_connection(mesh, w(mesh, "sleep", "legacy"), "httpbin.foo") as conn:
        assert conn.stdin is not None
        conn.stdin.write(request)
        conn.stdin.flush()
        first = read_until(conn, b'"url": "http://httpbin.foo:8000/get"', 10)
        assert first.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"connection: close" not in first.lower()
        policy(FOO_STRICT)
        assert curl(mesh, w(mesh, "sleep", "legacy"), "http://httpbin.foo:8000/get") == (56, "000")
        with contextlib.suppress(BrokenPipeError):
            conn.stdin.write(request)
            conn.stdin.flush()
        rest = read_to_eof(conn, ENVOY_DRAIN_TIME_S + 2.0)
    assert rest == b"", rest[:300]


def test_idle_kept_alive_plaintext_is_closed_within_the_drain_time(
    mesh: LocalMesh, policy: Any
) -> None:
    request = b"GET /get HTTP/1.1\r\nHost: httpbin.bar:8000\r\n\r\n"
    with raw_connection(mesh, w(mesh, "sleep", "legacy"), "httpbin.bar") as conn:
        assert conn.stdin is not None
        conn.stdin.write(request)
        conn.stdin.flush()
        read_until(conn, b'"url": "http://httpbin.bar:8000/get"', 10)
        policy(MESH_STRICT)
        switched = time.monotonic()
        assert read_to_eof(conn, ENVOY_DRAIN_TIME_S + 2.0) == b""
        assert time.monotonic() - switched < ENVOY_DRAIN_TIME_S + 1.0


# ======================================================================= logs of a test's window


def test_envoy_starts_without_the_connection_limit_warning(mesh: LocalMesh) -> None:
    """Istio sets a global downstream connection limit, so its sidecars do not warn at start-up
    (Envoy's server.cc warns "there is no configured limit to the number of allowed active
    downstream connections" otherwise); the local sidecars carry the same limit."""
    for workload in mesh.workloads():
        if not workload.has_sidecar:
            continue
        log = mesh.logs(workload)["envoy.log"]  # warning level: this warning would be in it
        assert "no configured limit" not in log, log[-2000:]


def test_logs_since_hold_only_the_window(mesh: LocalMesh) -> None:
    """log_positions / logs_since: the access log lines of a request made after the positions
    were taken, and none of the lines before."""
    sleep, httpbin = w(mesh, "sleep", "foo"), w(mesh, "httpbin", "foo")
    assert curl(mesh, sleep, "http://httpbin.foo:8000/status/201") == (0, "201")
    # The 201 line must be in the file before the positions are taken (Envoy flushes its access
    # log asynchronously; under load the line can land after the request returned).
    poll_access_log(mesh, httpbin, LogPositions(at=0.0), "/status/201")  # whole file
    positions = mesh.log_positions()
    assert curl(mesh, sleep, "http://httpbin.foo:8000/status/202") == (0, "202")
    window = poll_access_log(mesh, httpbin, positions, "/status/202")
    assert "/status/201" not in window
    assert "/status/201" in mesh.logs(httpbin)["envoy-access.log"]
    untouched = mesh.logs_since(w(mesh, "httpbin", "bar"), positions)
    assert untouched["envoy-access.log"] == ""


def poll_access_log(mesh: LocalMesh, workload: Workload, positions: Any, needle: str) -> str:
    """Envoy flushes its access log asynchronously: wait (bounded) for the line."""
    deadline = time.monotonic() + 10
    while True:
        text = mesh.logs_since(workload, positions)["envoy-access.log"]
        if needle in text or time.monotonic() > deadline:
            assert needle in text, text
            return text
        time.sleep(0.05)
