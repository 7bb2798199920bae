"""The workloads a suite calls: `sleep`, `httpbin`, `naked_sleep` -> `WorkloadHandle`, and
`workload("sleep", "bar")` (`WorkloadLookup`) for any workload of the topology.

A handle's `.curl(target)` requests a URL or a workload's Service from inside the pod and
returns an `HttpResult`; each request goes into the test's observations and, with a failure,
its evidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import final

import pytest

from pytest_meshconform.evidence.curl import HttpResult, curl_argv, parse_curl_output
from pytest_meshconform.evidence.tcp_connect import TcpResult, parse_tcp_output, tcp_argv
from pytest_meshconform.mesh import ExecResult, Mesh, Service, Workload
from pytest_meshconform.plugin.empties import skip_missing_workload
from pytest_meshconform.plugin.session import evidence_window
from pytest_meshconform.report.exhibits import Evidence
from pytest_meshconform.report.observations import RequestRecord

__all__ = ["WorkloadHandle", "WorkloadLookup", "httpbin", "naked_sleep", "sleep", "workload"]


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
    def spiffe_id(self) -> str:
        return self.workload.spiffe_id(self.mesh.trust_domain)

    def url(self, path: str = "/headers", port: int = 8000) -> str:
        """The Service URL of this workload (`http://<name>.<namespace>:<port><path>`)."""
        return f"http://{self.name}.{self.namespace}:{port}{path}"

    def exec(self, argv: Sequence[str], timeout: float = 30.0) -> ExecResult:
        """Run argv in the workload's pod as the app's user (in the app container on kube)."""
        __tracebackhide__ = True
        self.evidence.observed.touch(self.key)
        return self.mesh.exec(self.workload, argv, timeout)

    def curl(
        self,
        target: str | WorkloadHandle,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        data: str | None = None,
        timeout: float = 10.0,
        path: str = "/headers",
    ) -> HttpResult:
        """Request `target` (a URL, or a workload's Service) from inside this workload's pod."""
        __tracebackhide__ = True
        url = target.url(path) if isinstance(target, WorkloadHandle) else target
        server = target.key if isinstance(target, WorkloadHandle) else self._workload_of(url)
        self.evidence.observed.touch(self.key, server)
        argv = curl_argv(url, method=method, headers=headers, data=data, timeout=timeout)
        result = self.mesh.exec(self.workload, argv, timeout + 5)
        http = parse_curl_output(url, self.key, result.returncode, result.stdout, result.stderr)
        new = self.evidence.observed.add_request(
            RequestRecord(
                client=self.key,
                url=url,
                server=server,
                status=http.status,
                exit_code=http.exit_code,
                outcome=_outcome_of(http),
            )
        )
        if new:  # a request loop (rotation) keeps one text per change of outcome
            self.evidence.add_text(f"curl {self.key} -> {url}", _describe_http(http))
        return http

    def _workload_of(self, url: str) -> str | None:
        """The workload behind a Service URL (`http://httpbin.foo:8000/...`), if it is one."""
        from urllib.parse import urlsplit

        host = (urlsplit(url).hostname or "").removesuffix(".svc.cluster.local")
        name, _, namespace = host.partition(".")
        for w in self.mesh.workloads():
            if w.name == name and namespace in (
                w.namespace,
                self.mesh.logical_namespace(w.namespace),
            ):
                return w.key
        return None

    def __str__(self) -> str:
        return self.key

    def __repr__(self) -> str:  # pytest prints fixtures' reprs with a failure: keep it short
        sidecar = "sidecar" if self.has_sidecar else "no sidecar"
        return f"<WorkloadHandle {self.key} ({sidecar}) on the {self.mesh.backend} mesh>"

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
        keep what comes back until the server closes the connection or `timeout` seconds pass
        (a connection the server keeps open, as an echo server does, takes the whole timeout).

        Returns a `TcpResult`: `reset` (a STRICT server sidecar refusing plaintext), `refused`
        (nothing listening), `connected` with the bytes `received`, `outcome` in a word. A port
        the Service does not expose raises `ServicePortError` before anything is sent. Each
        connection goes into the test's observations and evidence, like `curl`'s requests."""
        __tracebackhide__ = True
        if not isinstance(server, WorkloadHandle):
            raise TypeError(f"tcp() connects to a WorkloadHandle's Service, got {server!r}")
        if not isinstance(send, bytes):
            raise TypeError(f"send= takes bytes (b'...'), got {type(send).__name__}")
        service = _tcp_service_port(self.mesh, server.workload, port)
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


def _outcome_of(http: HttpResult) -> str:
    from pytest_meshconform.evidence.curl import CURL_EXIT_REASONS

    if http.status is not None:
        return f"HTTP {http.status}" + (f", curl exit {http.exit_code}" if http.exit_code else "")
    reason = CURL_EXIT_REASONS.get(http.exit_code, "see curl's manual")
    return f"no HTTP response, curl exit {http.exit_code} ({reason})"


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


def _tcp_service_port(mesh: Mesh, workload: Workload, port: int | str | None) -> Service:
    """The Service port of `workload` that `port` names (number or name), by default its only
    TCP port; ValueError naming the Service's ports otherwise."""
    __tracebackhide__ = True
    from pytest_meshconform.istio.plan import endpoints_of
    from pytest_meshconform.istio.protocol import protocol_of

    ports = [s for s in mesh.services() if endpoints_of(s, (workload,))]
    exposes = ", ".join(f"{s.name}.{s.namespace}:{s.port} ({s.port_name})" for s in ports)
    if port is None:
        found = [s for s in ports if protocol_of(s).is_tcp]
    else:
        found = [s for s in ports if (s.port_name if isinstance(port, str) else s.port) == port]
    if len(found) != 1:
        raise ValueError(
            f"{workload.key}: no single Service port {port if port is not None else 'of TCP'}"
            f" (its Service ports: {exposes or 'none'}); pass port=<one of them>"
        )
    return found[0]
