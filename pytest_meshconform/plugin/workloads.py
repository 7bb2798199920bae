"""The workloads a suite calls: `sleep`, `httpbin`, `naked_sleep` -> `WorkloadHandle`, and
`workload("sleep", "bar")` (`WorkloadLookup`) for any workload of the topology.

A handle's `.curl(target, port=...)` requests a URL or a workload's Service from inside the pod
and returns an `HttpResult`; each request goes into the test's observations and, with a failure,
its evidence.

Ports by the Service, never by guess: the Service a handle addresses is the one of the topology
whose selector selects the workload (`mesh.services()`), not one named after the workload; a
port is one that Service exposes, by number or name, and without one its only HTTP port, gRPC
ports aside (the protocol as Istio selects it, `pytest_meshconform.istio.protocol_of`).
Anything else is a `ServicePortError` naming the Service's ports, raised before anything is
sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, final
from urllib.parse import urlsplit

import pytest

from pytest_meshconform.evidence.curl import HttpResult, curl_argv, parse_curl_output
from pytest_meshconform.evidence.grpc_call import (
    GrpcResult,
    grpc_client_args,
    parse_grpc_output,
)
from pytest_meshconform.evidence.tcp_connect import TcpResult, parse_tcp_output, tcp_argv
from pytest_meshconform.istio.plan import endpoints_of
from pytest_meshconform.istio.protocol import PortProtocol, protocol_of
from pytest_meshconform.mesh import (
    ExecResult,
    GrpcCapable,
    GrpcClientUnavailable,
    Mesh,
    Service,
    Workload,
)
from pytest_meshconform.plugin.empties import skip_missing_workload
from pytest_meshconform.plugin.session import evidence_window
from pytest_meshconform.report.exhibits import Evidence
from pytest_meshconform.report.observations import RequestRecord

__all__ = [
    "ServicePortError",
    "WorkloadHandle",
    "WorkloadLookup",
    "httpbin",
    "naked_sleep",
    "service_port",
    "service_ports_text",
    "services_of",
    "sleep",
    "workload",
]


class ServicePortError(ValueError):
    """A workload's Service port that cannot be told: one the Service does not expose, none
    given when the Service has no single HTTP port, or a workload no Service selects. Raised
    before anything is sent; the message names the Service and its ports, e.g. `ledger.payments
    exposes 80 (http), 5432 (tcp-postgres); pass port=...`."""


def services_of(mesh: Mesh, workload: Workload) -> tuple[Service, ...]:
    """The Service ports (one `Service` per port) of the Services whose selector selects
    `workload`, in the mesh's order."""
    return tuple(s for s in mesh.services() if endpoints_of(s, (workload,)))


def _port_text(service: Service) -> str:
    return f"{service.port} ({service.port_name})" if service.port_name else str(service.port)


def _exposes(ports: Sequence[Service]) -> str:
    """`ledger.payments exposes 80 (http), 5432 (tcp-postgres)` (one clause per Service)."""
    by_service: dict[str, list[str]] = {}
    for s in ports:
        by_service.setdefault(f"{s.name}.{s.namespace}", []).append(_port_text(s))
    return "; ".join(f"{name} exposes {', '.join(texts)}" for name, texts in by_service.items())


def service_ports_text(mesh: Mesh, workload: Workload) -> str:
    """`ledger.payments exposes 80 (http), 5432 (tcp-postgres)`: the ports of the Services
    selecting `workload`, or that none does."""
    ports = services_of(mesh, workload)
    return _exposes(ports) if ports else f"no Service selects {workload.key}"


def service_port(
    mesh: Mesh,
    workload: Workload,
    port: int | str | None = None,
    *,
    default: Literal["http", "tcp", "grpc"] = "http",
) -> Service:
    """The Service port of `workload` that `port` names: a port number or a port name of a
    Service selecting the workload; None: its only HTTP port, gRPC ports aside
    (`default="tcp"`: its only TCP-family port; `"grpc"`: its only gRPC port), the protocol as
    Istio selects it. Raises
    `ServicePortError`, naming the Service's ports, when there is no such port, no single
    default, or no Service at all."""
    __tracebackhide__ = True
    ports = services_of(mesh, workload)
    if not ports:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(workload.labels.items())) or "none"
        raise ServicePortError(
            f"no Service selects {workload.key} (its labels: {labels}), so it has no Service"
            " port to call; add a Service for it to the topology, or call a URL"
        )
    if port is None:
        kind = {"http": "HTTP", "tcp": "TCP", "grpc": "gRPC"}[default]
        found = [s for s in ports if _is_default(protocol_of(s), default)]
        if len(found) == 1:
            return found[0]
        which = "none of them" if not found else f"{len(found)} of them"
        raise ServicePortError(
            f"{_exposes(ports)}: {which} {kind} (the protocol as Istio selects it, from"
            " appProtocol or the port name's prefix); pass port=<number or name>"
        )
    if isinstance(port, bool) or not isinstance(port, int | str):
        raise TypeError(f"port= is a Service port number or name, got {port!r}")
    key = "port_name" if isinstance(port, str) else "port"
    found = [s for s in ports if getattr(s, key) == port]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise ServicePortError(
            f"{_exposes(found)}: port {port!r} of {workload.key} is ambiguous; call a URL"
        )
    hint = ""
    behind = [s for s in ports if isinstance(port, int) and s.target_port == port]
    if behind:
        hint = (
            f" ({port} is the pod's port behind Service port {behind[0].port}:"
            f" pass port={behind[0].port})"
        )
    raise ServicePortError(f"{_exposes(ports)}, not {port!r}{hint}; pass port=<one of them>")


def _is_default(protocol: PortProtocol, default: str) -> bool:
    if default == "grpc":
        return protocol is PortProtocol.GRPC
    if default == "http":  # curl's: a gRPC port is `grpc()`'s, never curl's default
        return protocol.is_http and protocol is not PortProtocol.GRPC
    return protocol.is_tcp


@final
@dataclass
class WorkloadHandle:
    """A workload of the mesh, with the actions a suite needs (curl, exec) and its identity.

    What `sleep`, `httpbin`, `naked_sleep` and `workload(name, namespace)` return.
    """

    mesh: Mesh
    workload: Workload
    evidence: Evidence

    @property
    def name(self) -> str:
        return self.workload.name

    @property
    def namespace(self) -> str:
        return self.workload.namespace

    @property
    def key(self) -> str:
        return self.workload.key

    @property
    def has_sidecar(self) -> bool:
        return self.workload.has_sidecar

    @property
    def dataplane(self) -> Literal["sidecar", "ambient", "none"]:
        """The pod's data plane: `sidecar` (an Envoy sidecar), `ambient` (ztunnel captures its
        traffic, HBONE between ambient pods) or `none`."""
        return self.workload.dataplane

    @property
    def spiffe_id(self) -> str:
        return self.workload.spiffe_id(self.mesh.trust_domain)

    def url(self, path: str = "/headers", *, port: int | str | None = None) -> str:
        """The URL of this workload's Service (`http://<service>.<namespace>:<port><path>`): the
        Service of the topology that selects it, at `port` (a Service port number or name),
        by default its only HTTP port; `ServicePortError` names the Service's ports when
        there is no such port, no single HTTP port, or no Service."""
        __tracebackhide__ = True
        service = service_port(self.mesh, self.workload, port)
        return f"http://{service.name}.{service.namespace}:{service.port}{path}"

    def exec(self, argv: Sequence[str], timeout: float = 30.0) -> ExecResult:
        """Run argv in the workload's pod as the app's user (in the app container on kube)."""
        __tracebackhide__ = True
        self.evidence.observed.touch(self.key)
        return self.mesh.exec(self.workload, argv, timeout)

    def curl(
        self,
        target: str | WorkloadHandle,
        *,
        port: int | str | None = None,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        data: str | None = None,
        timeout: float = 10.0,
        path: str = "/headers",
    ) -> HttpResult:
        """Request `target` from inside this workload's pod: a URL, or a workload's Service at
        `port` (a Service port number or name; by default the Service's only HTTP port, see
        `url`). A port the Service does not expose raises `ServicePortError` before anything
        is sent; `port=` with a URL is a usage error (the URL carries its port)."""
        __tracebackhide__ = True
        request = self._curl_request(target, port, method, headers, data, timeout, path)
        return self._curl_result(request, self.mesh.exec(self.workload, request.argv, timeout + 5))

    def _curl_request(
        self,
        target: str | WorkloadHandle,
        port: int | str | None,
        method: str,
        headers: Mapping[str, str] | None,
        data: str | None,
        timeout: float,
        path: str,
    ) -> _CurlRequest:
        """What `curl` runs: the URL, the server behind it, curl's argv (touching both in the
        test's observations); a port the Service lacks raises here, before anything is sent."""
        __tracebackhide__ = True
        if isinstance(target, WorkloadHandle):
            url = target.url(path, port=port)
            server: str | None = target.key
        else:
            if port is not None:
                raise ValueError(
                    f"port={port!r} is for a workload target; the URL {target!r} carries its"
                    " own port"
                )
            url = target
            server = self._workload_of(url)
        self.evidence.observed.touch(self.key, server)
        argv = curl_argv(url, method=method, headers=headers, data=data, timeout=timeout)
        return _CurlRequest(self, url, server, argv, timeout + 5)

    def _curl_result(self, request: _CurlRequest, result: ExecResult) -> HttpResult:
        """curl's answer read, and recorded in the test's observations (and evidence)."""
        url = request.url
        http = parse_curl_output(url, self.key, result.returncode, result.stdout, result.stderr)
        new = self.evidence.observed.add_request(
            RequestRecord(
                client=self.key,
                url=url,
                server=request.server,
                status=http.status,
                exit_code=http.exit_code,
                outcome=_outcome_of(http),
            )
        )
        if new:  # a request loop (rotation) keeps one text per change of outcome
            self.evidence.add_text(f"curl {self.key} -> {url}", _describe_http(http))
        return http

    def _workload_of(self, url: str) -> str | None:
        """The workload behind a Service URL (`http://httpbin.foo:8000/...`, the FQDN in the
        cluster's DNS domain, or the bare name from the same namespace), if it is one; the
        namespace as the backend or as the suites spell it."""
        host = (urlsplit(url).hostname or "").lower().rstrip(".")
        workloads = self.mesh.workloads()
        for s in self.mesh.services():
            names = set()
            for namespace in {s.namespace, self.mesh.logical_namespace(s.namespace)}:
                short = f"{s.name}.{namespace}"
                names |= {short, f"{short}.svc", f"{short}.svc.{s.domain}"}
            if s.namespace == self.namespace:
                names.add(s.name)
            if host in names:
                endpoints = endpoints_of(s, workloads)
                if endpoints:
                    return endpoints[0].key
        return None

    def __str__(self) -> str:
        return self.key

    def __repr__(self) -> str:  # pytest prints fixtures' reprs with a failure: keep it short
        plane = {"sidecar": "sidecar", "ambient": "ambient", "none": "no sidecar"}[self.dataplane]
        return f"<WorkloadHandle {self.key} ({plane}) on the {self.mesh.backend} mesh>"

    def tcp(
        self,
        server: WorkloadHandle,
        port: int | str | None = None,
        *,
        send: bytes = b"meshconform\n",
        timeout: float = 2.0,
    ) -> TcpResult:
        """Open a TCP connection from this workload's pod to `server`'s Service at `port` (a
        Service port number or name; by default the Service's only TCP port), send `send` and
        keep what comes back until the server closes the connection, the bytes received end
        with `send` (an echo came back: the probe closes the connection, `TcpResult.echoed`) or
        `timeout` seconds pass.

        Returns a `TcpResult`: `reset` (a STRICT server sidecar refusing plaintext), `refused`
        (nothing listening), `connected` with the bytes `received`, `outcome` in a word. A port
        the Service does not expose raises `ServicePortError` before anything is sent. Each
        connection goes into the test's observations and evidence, like `curl`'s requests."""
        __tracebackhide__ = True
        if not isinstance(server, WorkloadHandle):
            raise TypeError(f"tcp() connects to a WorkloadHandle's Service, got {server!r}")
        if not isinstance(send, bytes):
            raise TypeError(f"send= takes bytes (b'...'), got {type(send).__name__}")
        service = service_port(self.mesh, server.workload, port, default="tcp")
        host = f"{service.name}.{service.namespace}"
        self.evidence.observed.touch(self.key, server.key)
        argv = tcp_argv(host, service.port, send=send, timeout=timeout)
        result = self.mesh.exec(self.workload, argv, timeout + 5)
        tcp = parse_tcp_output(
            f"{host}:{service.port}",
            self.key,
            result.returncode,
            result.stdout,
            result.stderr,
            sent=send,
            port_name=service.port_name,
        )
        new = self.evidence.observed.add_request(
            RequestRecord(
                client=self.key,
                url=f"tcp://{host}:{service.port}",
                server=server.key,
                status=None,
                exit_code=tcp.exit_code,
                outcome=_tcp_outcome(tcp),
                received=len(tcp.received) if tcp.connected else None,
            )
        )
        if new:
            self.evidence.add_text(f"tcp {self.key} -> tcp://{tcp.target}", tcp.describe())
        return tcp

    def grpc(
        self,
        server: WorkloadHandle,
        port: int | str | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> GrpcResult:
        """Call `server`'s gRPC echo service (a workload that serves ``grpc-echo``) at its
        Service's `port` (a Service port number or name; by default the Service's only gRPC
        port) from inside this workload's pod, sending `metadata`, with grpcio.

        Returns a `GrpcResult`: the gRPC `status` name (``OK``, ``UNAVAILABLE``,
        ``PERMISSION_DENIED``...), with ``OK`` the request metadata the server saw
        (``x-forwarded-client-cert`` when a sidecar added it), `reset` (a STRICT server
        sidecar refusing plaintext). A port the Service does not expose raises
        `ServicePortError` before anything is sent; a backend that cannot run a gRPC client
        in the pod (the kube backends) raises `GrpcClientUnavailable`. Each call goes into
        the test's observations and evidence, like `curl`'s requests."""
        __tracebackhide__ = True
        if not isinstance(server, WorkloadHandle):
            raise TypeError(f"grpc() calls a WorkloadHandle's Service, got {server!r}")
        service = service_port(self.mesh, server.workload, port, default="grpc")
        host = f"{service.name}.{service.namespace}"
        args = grpc_client_args(host, service.port, metadata=metadata, timeout=timeout)
        if not isinstance(self.mesh, GrpcCapable):
            raise GrpcClientUnavailable(
                f"the {self.mesh.backend} backend cannot run a gRPC client in {self.key}'s pod"
                " (its client container is curlimages/curl, which has none), so"
                f" grpc() cannot call {host}:{service.port}; gRPC calls run on the local mesh"
                " (README, gRPC calls)"
            )
        self.evidence.observed.touch(self.key, server.key)
        result = self.mesh.grpc_exec(self.workload, args, timeout + 10)
        grpc = parse_grpc_output(
            f"{host}:{service.port}",
            self.key,
            result.returncode,
            result.stdout,
            result.stderr,
            port_name=service.port_name,
        )
        new = self.evidence.observed.add_request(
            RequestRecord(
                client=self.key,
                url=f"grpc://{host}:{service.port}",
                server=server.key,
                status=None,
                exit_code=grpc.exit_code,
                outcome=grpc.outcome,
            )
        )
        if new:
            lines = [grpc.describe(), *(f"{k}: {v}" for k, v in grpc.server_metadata)]
            self.evidence.add_text(f"grpc {self.key} -> grpc://{grpc.target}", "\n".join(lines))
        return grpc


@dataclass(frozen=True, slots=True)
class _CurlRequest:
    client: WorkloadHandle
    url: str
    server: str | None  # the workload behind the URL, when one is
    argv: list[str]
    exec_timeout: float


def _outcome_of(http: HttpResult) -> str:
    """How the observations name a request's outcome: `HTTP 200`, `no HTTP response: reset
    (curl exit 56)`."""
    if http.status is not None:
        return http.outcome
    if "curl exit" in http.outcome:
        return f"no HTTP response: {http.outcome}"
    return f"no HTTP response: {http.outcome} (curl exit {http.exit_code})"


def _describe_http(http: HttpResult) -> str:
    lines = [http.describe()]
    lines += [f"{k}: {v}" for k, v in http.headers.items()]
    if http.body:
        lines += ["", http.body[:4000].decode(errors="replace")]
    return "\n".join(lines)


@final
class WorkloadLookup:
    """What the `workload` fixture returns: `workload("sleep", "bar")` -> `WorkloadHandle`."""

    def __init__(self, mesh: Mesh, evidence: Evidence) -> None:
        self._mesh = mesh
        self._evidence = evidence

    def __call__(
        self, name: str, namespace: str, *, skip_if_missing: bool = False
    ) -> WorkloadHandle:
        """Any workload of the topology; the namespace as the suites spell it (`foo`).

        With ``skip_if_missing=True`` a workload the mesh's topology lacks (a
        ``--mesh-topology`` without it) skips the test, naming it, instead of failing.
        """
        __tracebackhide__ = True
        if skip_if_missing and not any(
            w.name == name and self._mesh.logical_namespace(w.namespace) == namespace
            for w in self._mesh.workloads()
        ):
            skip_missing_workload(
                f"the mesh's topology has no workload {name}.{namespace}, which this test needs"
            )
        return WorkloadHandle(self._mesh, self._mesh.workload(name, namespace), self._evidence)


@pytest.fixture
def workload(mesh: Mesh, request: pytest.FixtureRequest) -> WorkloadLookup:
    """`workload("sleep", "bar")`: any workload of the topology."""
    return WorkloadLookup(mesh, evidence_window(mesh, request))


@pytest.fixture
def sleep(workload: WorkloadLookup) -> WorkloadHandle:
    """The curl client with a sidecar (namespace foo); skips when the topology lacks it."""
    return workload("sleep", "foo", skip_if_missing=True)


@pytest.fixture
def httpbin(workload: WorkloadLookup) -> WorkloadHandle:
    """The httpbin server with a sidecar (namespace foo); skips when the topology lacks it."""
    return workload("httpbin", "foo", skip_if_missing=True)


@pytest.fixture
def naked_sleep(workload: WorkloadLookup) -> WorkloadHandle:
    """The curl client without a sidecar (namespace legacy); skips when the topology lacks
    it."""
    return workload("sleep", "legacy", skip_if_missing=True)


def _tcp_outcome(tcp: TcpResult) -> str:
    """How the observations name a TCP connection's outcome: `answered, 18 bytes received`,
    `reset (curl exit 56)`."""
    if tcp.connected and not tcp.reset:
        return f"{tcp.outcome}, {len(tcp.received)} bytes received"
    return f"{tcp.outcome} (curl exit {tcp.exit_code})"
