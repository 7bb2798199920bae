"""Ports by the Service, never by guess: which Service port a handle's `url`/`curl`, `xfcc`,
`capture` and `call_table` address, and the `ServicePortError` raised before anything is sent
(pure: the topologies of both backends, no mesh).

The layout is the one of issue 19: Service `ledger` in `payments` with port 80 named `http` ->
8080 and `tcp-postgres` 5432, `checkout` with a sidecar, `batch/nightly` without one. The old
handle guessed `http://ledger.payments:8000`, a port nothing listens on (curl exit 7), and a
test that asserted "no HTTP response" passed without testing anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from pytest_meshconform import (
    MTLS,
    RESET,
    Call,
    ServicePortError,
    Workload,
    WorkloadHandle,
)
from pytest_meshconform.backends.kube.topology import (
    RunNamespaces,
    topology_services,
    topology_workloads,
)
from pytest_meshconform.backends.local.topology_file import default_topology, parse_topology
from pytest_meshconform.evidence.curl import HttpResult
from pytest_meshconform.mesh import ExecResult, Mesh, Service
from pytest_meshconform.plugin.capture import pod_port
from pytest_meshconform.plugin.workloads import service_port
from pytest_meshconform.report.exhibits import Evidence

LEDGER_TOPOLOGY = """\
namespaces:
  - name: payments
    injected: true
    workloads:
      - {name: ledger, kind: httpbin, ports: [8080, 5432]}
      - {name: admin, kind: httpbin, ports: [8080, 9090]}
    services:
      - name: ledger
        selector: {app: ledger}
        ports:
          - {name: http, port: 80, targetPort: 8080}
          - {name: tcp-postgres, port: 5432}
      - name: admin
        selector: {app: admin}
        ports:
          - {name: http, port: 80, targetPort: 8080}
          - {name: http-metrics, port: 9090}
  - name: checkout
    injected: true
    workloads:
      - {name: checkout, kind: sleep}
  - name: batch
    injected: false
    workloads:
      - {name: nightly, kind: sleep}
"""


@dataclass
class TopologyMesh:
    """The Mesh members the handles read, from a backend's real topology; `exec` records what
    would have been sent (and sends nothing)."""

    pods: Sequence[Workload]
    svcs: Sequence[Service]
    names: RunNamespaces | None = None
    trust_domain: str = "cluster.local"
    sent: list[Sequence[str]] = field(default_factory=list)

    def workloads(self) -> Sequence[Workload]:
        return self.pods

    def services(self) -> Sequence[Service]:
        return self.svcs

    def workload(self, name: str, namespace: str) -> Workload:
        real = self.names.real(namespace) if self.names else namespace
        (found,) = [w for w in self.pods if (w.name, w.namespace) == (name, real)]
        return found

    def logical_namespace(self, namespace: str) -> str:
        if self.names is None:
            return namespace
        return self.names.logical_of(namespace) or namespace

    def exec(self, workload: Workload, argv: Sequence[str], timeout: float = 30.0) -> ExecResult:
        self.sent.append(argv)
        return ExecResult(7, b"", b"curl: (7) Failed to connect\n")

    def handle(self, name: str, namespace: str) -> WorkloadHandle:
        return WorkloadHandle(cast(Mesh, self), self.workload(name, namespace), Evidence())


def ledger_mesh() -> TopologyMesh:
    topology = parse_topology(LEDGER_TOPOLOGY, "ledger.yaml")
    return TopologyMesh([p.workload for p in topology.pods], [e.service for e in topology.services])


def builtin_mesh() -> TopologyMesh:
    topology = default_topology()
    return TopologyMesh([p.workload for p in topology.pods], [e.service for e in topology.services])


def kube_mesh() -> TopologyMesh:
    names = RunNamespaces("a1b2c3")
    return TopologyMesh(topology_workloads(names), topology_services(names), names)


def test_the_handle_addresses_the_service_that_selects_it_at_its_http_port() -> None:
    mesh = ledger_mesh()
    ledger = mesh.handle("ledger", "payments")
    assert ledger.url() == "http://ledger.payments:80/headers"
    assert ledger.url("/status/200", port="http") == "http://ledger.payments:80/status/200"
    assert ledger.url("/", port=5432) == "http://ledger.payments:5432/"
    assert ledger.url("/", port="tcp-postgres") == "http://ledger.payments:5432/"


def test_the_built_in_topologies_keep_their_urls() -> None:
    """httpbin's only HTTP port is 8000 on both backends: the built-in suites' URLs stay."""
    assert builtin_mesh().handle("httpbin", "foo").url() == "http://httpbin.foo:8000/headers"
    kube = kube_mesh()
    assert kube.handle("httpbin", "bar").url() == "http://httpbin.mc-a1b2c3-bar:8000/headers"


def test_a_port_the_service_does_not_expose_is_an_error_before_anything_is_sent() -> None:
    """The false pass of issue 19: `nightly.curl(ledger)` went to port 8000 and got curl
    exit 7. Port 8000 now is an error naming the Service's ports, and no curl runs."""
    mesh = ledger_mesh()
    nightly, ledger = mesh.handle("nightly", "batch"), mesh.handle("ledger", "payments")
    with pytest.raises(ServicePortError) as raised:
        nightly.curl(ledger, port=8000)
    assert str(raised.value) == (
        "ledger.payments exposes 80 (http), 5432 (tcp-postgres), not 8000; pass port=<one of them>"
    )
    assert isinstance(raised.value, ValueError)
    with pytest.raises(ServicePortError, match="not 'grpc'"):
        nightly.curl(ledger, port="grpc")
    with pytest.raises(
        ServicePortError, match=r"8080 is the pod's port behind Service port 80: pass port=80"
    ):
        ledger.url(port=8080)
    assert mesh.sent == []
    assert nightly.evidence.observed.requests == []


def test_without_a_port_the_only_http_port_else_an_error_naming_the_ports() -> None:
    mesh = ledger_mesh()
    admin = mesh.handle("admin", "payments")
    with pytest.raises(ServicePortError) as raised:
        mesh.handle("checkout", "checkout").curl(admin)
    assert str(raised.value) == (
        "admin.payments exposes 80 (http), 9090 (http-metrics): 2 of them HTTP (the protocol"
        " as Istio selects it, from appProtocol or the port name's prefix); pass port=<number"
        " or name>"
    )
    assert admin.url(port="http-metrics") == "http://admin.payments:9090/headers"
    assert mesh.sent == []


def test_a_grpc_port_beside_an_http_port_is_not_curls_default() -> None:
    """The built-in httpbin's Service has `http` (8000) and `grpc` (50051): curl, xfcc and a
    capture default to the HTTP one, `grpc()` to the gRPC one."""
    mesh = builtin_mesh()
    httpbin = mesh.workload("httpbin", "foo")
    assert [(s.port, s.port_name) for s in mesh.svcs if s.namespace == "foo"] == [
        (8000, "http"),
        (50051, "grpc"),
    ]
    assert mesh.handle("httpbin", "foo").url() == "http://httpbin.foo:8000/headers"
    assert service_port(cast(Mesh, mesh), httpbin, None).port == 8000
    assert service_port(cast(Mesh, mesh), httpbin, None, default="grpc").port == 50051
    assert pod_port(cast(Mesh, mesh), httpbin, None) == 8080


def test_a_service_without_an_http_port_needs_a_port() -> None:
    services = [s for s in ledger_mesh().svcs if s.port_name == "tcp-postgres"]
    mesh = TopologyMesh(ledger_mesh().pods, services)
    with pytest.raises(ServicePortError, match=r"exposes 5432 \(tcp-postgres\): none of them HTTP"):
        mesh.handle("ledger", "payments").url()
    assert service_port(cast(Mesh, mesh), mesh.workload("ledger", "payments"), None, default="tcp")


def test_a_workload_no_service_selects_is_the_same_error() -> None:
    mesh = ledger_mesh()
    with pytest.raises(ServicePortError) as raised:
        mesh.handle("checkout", "checkout").curl(mesh.handle("nightly", "batch"))
    assert str(raised.value) == (
        "no Service selects nightly.batch (its labels: app=nightly), so it has no Service port"
        " to call; add a Service for it to the topology, or call a URL"
    )
    assert mesh.sent == []


def test_a_port_with_a_url_is_a_usage_error() -> None:
    mesh = ledger_mesh()
    with pytest.raises(ValueError, match=r"the URL 'http://ledger\.payments:80/' carries its own"):
        mesh.handle("nightly", "batch").curl("http://ledger.payments:80/", port=80)
    with pytest.raises(TypeError, match="port= is a Service port number or name"):
        mesh.handle("ledger", "payments").url(port=cast(Any, 80.0))
    assert mesh.sent == []


def test_curl_sends_to_the_service_port_and_names_the_server() -> None:
    mesh = ledger_mesh()
    nightly, ledger = mesh.handle("nightly", "batch"), mesh.handle("ledger", "payments")
    result = nightly.curl(ledger, port="http")
    (argv,) = mesh.sent
    assert argv[-1] == "http://ledger.payments:80/headers"
    assert "-v" in argv  # only curl's verbose trace says why a connection failed
    assert result.exit_code == 7 and not result.refused  # curl did not say why: not `refused`
    (request,) = nightly.evidence.observed.requests
    assert request.server == "ledger.payments"


@pytest.mark.parametrize(
    ("url", "server"),
    [
        ("http://ledger.payments:80/headers", "ledger.payments"),
        ("http://ledger.payments.svc.cluster.local/", "ledger.payments"),
        ("http://ledger.payments.svc/", "ledger.payments"),
        ("http://LEDGER.payments.svc.cluster.local./", "ledger.payments"),
        ("http://ledger.payments.svc.corp.example/", None),  # not this cluster's domain
        ("http://nightly.batch/", None),  # a workload, no Service
        ("http://example.com/", None),
    ],
)
def test_the_server_of_a_url_comes_from_the_services(url: str, server: str | None) -> None:
    assert ledger_mesh().handle("checkout", "checkout")._workload_of(url) == server


def test_the_server_of_a_url_honours_the_cluster_dns_domain() -> None:
    mesh = ledger_mesh()
    mesh.svcs = [
        Service(
            s.name,
            s.namespace,
            s.port,
            s.target_port,
            s.selector_app,
            s.port_name,
            domain="corp.example",
        )
        for s in mesh.svcs
    ]
    checkout = mesh.handle("checkout", "checkout")
    assert checkout._workload_of("http://ledger.payments.svc.corp.example/") == "ledger.payments"
    assert checkout._workload_of("http://ledger.payments.svc.cluster.local/") is None
    kube = kube_mesh()  # a kube run's namespaces, as the backend and as the suites spell them
    sleep = kube.handle("sleep", "foo")
    assert (
        sleep._workload_of("http://httpbin.bar.svc.cluster.local:8000/") == "httpbin.mc-a1b2c3-bar"
    )
    assert sleep._workload_of("http://httpbin:8000/") == "httpbin.mc-a1b2c3-foo"  # same namespace


def test_a_capture_records_the_pod_port_a_service_port_targets() -> None:
    mesh = ledger_mesh()
    the_mesh = cast(Mesh, mesh)
    ledger = mesh.workload("ledger", "payments")
    assert pod_port(the_mesh, ledger, 80) == 8080  # Service port -> targetPort
    assert pod_port(the_mesh, ledger, "http") == 8080
    assert pod_port(the_mesh, ledger, "tcp-postgres") == 5432
    assert pod_port(the_mesh, ledger, 8080) == 8080  # a container port as it is
    assert pod_port(the_mesh, ledger, None) == 8080  # two pod ports: the HTTP Service port's
    with pytest.raises(ServicePortError) as raised:
        pod_port(the_mesh, ledger, 8000)
    assert str(raised.value) == (
        "capture(ledger.payments, port=8000): the pod listens on 8080, 5432; ledger.payments"
        " exposes 80 (http), 5432 (tcp-postgres); pass port=<one of them>"
    )
    with pytest.raises(ServicePortError, match=r"the pod listens on 8080, 9090: which one\?"):
        pod_port(the_mesh, mesh.workload("admin", "payments"), None)
    nightly = mesh.workload("nightly", "batch")
    assert pod_port(the_mesh, nightly, None) is None  # serves nothing: every port
    with pytest.raises(ServicePortError, match="listens on no port; no Service selects"):
        pod_port(the_mesh, nightly, 80)


@pytest.mark.parametrize("mesh", [builtin_mesh, kube_mesh])
def test_a_capture_of_httpbin_keeps_its_meaning(mesh: Any) -> None:
    """The built-in topologies: the default and the container port as before; the Service
    port 8000, which used to capture nothing, now records the pod port it targets."""
    the_mesh = mesh()
    httpbin = the_mesh.workload("httpbin", "bar")
    assert pod_port(the_mesh, httpbin, None) == 8080
    assert pod_port(the_mesh, httpbin, 8080) == 8080
    assert pod_port(the_mesh, httpbin, 8000) == 8080
    assert pod_port(the_mesh, httpbin, "http") == 8080


def test_a_capture_port_that_is_two_things_is_refused() -> None:
    """Service port 8080 -> 9090 on a pod that also listens on 8080: which one is meant?"""
    topology = parse_topology(
        "namespaces:\n"
        "  - name: shop\n"
        "    injected: true\n"
        "    workloads: [{name: web, kind: httpbin, ports: [8080, 9090]}]\n"
        "    services:\n"
        "      - name: web\n"
        "        selector: {app: web}\n"
        "        ports: [{name: http, port: 8080, targetPort: 9090}]\n",
        "web.yaml",
    )
    mesh = TopologyMesh([p.workload for p in topology.pods], [e.service for e in topology.services])
    web = mesh.workload("web", "shop")
    with pytest.raises(ServicePortError, match="ambiguous: Service port 8080 targets the pod's"):
        pod_port(cast(Mesh, mesh), web, 8080)
    assert pod_port(cast(Mesh, mesh), web, "http") == 9090
    assert pod_port(cast(Mesh, mesh), web, 9090) == 9090


def _result(status: int | None, exit_code: int) -> HttpResult:
    return HttpResult("http://ledger.payments:80/headers", "nightly.batch", exit_code, status)


def test_reset_matches_what_strict_does_refused_does_not() -> None:
    client = ledger_mesh().handle("nightly", "batch")
    assert RESET.matches(_result(None, 56), client)
    assert RESET.matches(_result(None, 52), client)
    assert not RESET.matches(_result(None, 7), client)
    assert not RESET.matches(_result(200, 0), client)
    assert not MTLS.matches(_result(None, 56), client)


def test_a_call_with_a_port_names_its_column() -> None:
    assert Call("sleep.foo", "ledger.payments", MTLS).column == "ledger.payments"
    call = Call("sleep.foo", "ledger.payments", RESET, port="http")
    assert call.column == "ledger.payments:http"
    assert str(call) == "sleep.foo GET /headers -> ledger.payments:http"
