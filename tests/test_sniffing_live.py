"""Protocol sniffing on the local mesh, on the wire (issue 25): Service ports whose names Istio
does not recognise (`web`, `db`, `rpc`: no `http-`/`tcp-`/`grpc-` prefix, no `appProtocol`)
are left to Envoy's http_inspector, as istiod configures it.

The layout (not sleep/httpbin): store/inventory serves HTTP (httpbin) behind Service port 80
named `web`, a server-first protocol (the `tcp-banner` app: it greets every connection with
`220 tcp-banner ready`, as an SMTP server does) on 9000 named `db` and on 9001 named `tcp-db`,
and gRPC (grpc-echo) on 7070 named `rpc`; ops/console and ops/auditor are sidecar clients with
service accounts of their own; legacy/cron has no sidecar.

Expected values and where they come from:

- "Istio can automatically detect HTTP and HTTP/2 traffic. If the protocol cannot
  automatically be determined, traffic will be treated as plain TCP traffic" (istio.io,
  "Protocol Selection"): plaintext HTTP on `web` reaches the server sidecar's HTTP connection
  manager (its XFCC is set for an mTLS peer; an AuthorizationPolicy answers HTTP 403
  `RBAC: access denied`, not a TCP close), and so does gRPC on `rpc` (detected as HTTP/2).
- The client sidecar's ClientHello for a connection it detected as HTTP/1.1 offers
  `istio-http/1.1, istio, http/1.1` (istiod's `mtlsHTTP11ALPN`), for HTTP/2 `istio-h2, istio,
  h2` (`mtlsHTTP2ALPN`), which the server's HTTP chains match (`mtlsHTTPALPNs`,
  filterchain_options.go).
- Server-first protocols: "Some protocols are "Server First" protocols, which means the server
  will send the first bytes. This may have an impact on PERMISSIVE mTLS and Automatic protocol
  selection. Both of these features work by inspecting the initial bytes of a connection to
  determine the protocol, which is incompatible with server first protocols. In order to
  support these cases, follow the Explicit protocol selection steps to declare the protocol of
  the application as `TCP`", and for plaintext clients: "Configure mTLS mode DISABLE for the
  server. This will disable the TLS sniffing, allowing server first protocols to be used"
  (istio.io, "Traffic Requirements", formerly "Application Requirements", "Server First
  Protocols"). With Istio's default `protocolDetectionTimeout` of 0s (`DefaultMeshConfig`, no
  time limit), a sidecar client on the sniffed port never sees the greeting: its sidecar waits
  for the client's first bytes, which wait for the greeting (`silent`); on the port named
  `tcp-db` the greeting arrives at once. A client without a sidecar on `tcp-db` waits as long
  under PERMISSIVE (the server sidecar's tls_inspector waits for its first bytes) and gets the
  greeting under DISABLE.

The same suite with the test-only faults fails on the rows each fault breaks.
"""

from __future__ import annotations

import pytest
from local_helpers import assert_runs_left_nothing, needs_local_mesh

TOPOLOGY = """\
namespaces:
  - name: store
    dataplane: sidecar
    workloads:
      - name: inventory
        ports:
          - {port: 8080, serves: httpbin}
          - {port: 9000, serves: tcp-banner}
          - {port: 9001, serves: tcp-banner}
          - {port: 7070, serves: grpc-echo}
    services:
      - name: inventory
        selector: {app: inventory}
        ports:
          - {name: web, port: 80, targetPort: 8080}
          - {name: db, port: 9000}
          - {name: tcp-db, port: 9001}
          - {name: rpc, port: 7070}
  - name: ops
    dataplane: sidecar
    workloads:
      - {name: console, kind: sleep}
      - {name: auditor, kind: sleep}
  - name: legacy
    dataplane: none
    workloads:
      - {name: cron, kind: sleep}
"""

SUITE = r"""
import pytest

from pytest_meshconform import (
    Capturer,
    PolicyApplier,
    WorkloadHandle,
    WorkloadLookup,
    XfccReader,
    authorization_policy,
    peer_authentication,
)

CONSOLE = "spiffe://cluster.local/ns/ops/sa/console"
BANNER = b"220 tcp-banner ready\r\n"


@pytest.fixture
def inventory(workload: WorkloadLookup) -> WorkloadHandle:
    return workload("inventory", "store")


@pytest.fixture
def console(workload: WorkloadLookup) -> WorkloadHandle:
    return workload("console", "ops")


@pytest.fixture
def auditor(workload: WorkloadLookup) -> WorkloadHandle:
    return workload("auditor", "ops")


@pytest.fixture
def cron(workload: WorkloadLookup) -> WorkloadHandle:
    return workload("cron", "legacy")


def test_sniffed_http_carries_the_client_identity(
    xfcc: XfccReader, inventory: WorkloadHandle, console: WorkloadHandle
) -> None:
    seen = xfcc(console, inventory, port="web")
    assert seen is not None and seen[0].uri == (CONSOLE,), seen


def test_sniffed_grpc_carries_the_client_identity(
    inventory: WorkloadHandle, console: WorkloadHandle
) -> None:
    seen = console.grpc(inventory, port="rpc", metadata={"x-team": "ops"})
    assert seen.ok and seen.metadata("x-team") == ("ops",), seen
    assert seen.xfcc is not None and seen.xfcc[0].spiffe_uri == CONSOLE, seen.server_metadata


def test_permissive_accepts_plaintext_http_as_http(
    apply_policy: PolicyApplier, inventory: WorkloadHandle, cron: WorkloadHandle
) -> None:
    apply_policy(peer_authentication("default", "store", mode="PERMISSIVE"))
    result = cron.curl(inventory, port="web", path="/headers")
    assert result.status == 200, result
    assert "X-Forwarded-Client-Cert" not in result.json()["headers"], result


def test_strict_resets_plaintext_on_a_sniffed_port(
    apply_policy: PolicyApplier,
    inventory: WorkloadHandle,
    console: WorkloadHandle,
    cron: WorkloadHandle,
) -> None:
    apply_policy(peer_authentication("default", "store", mode="STRICT"))
    plaintext = cron.curl(inventory, port="web")
    assert plaintext.reset, plaintext
    assert console.curl(inventory, port="web").status == 200


def test_authorization_by_principal_answers_403_on_a_sniffed_port(
    apply_policy: PolicyApplier,
    inventory: WorkloadHandle,
    console: WorkloadHandle,
    auditor: WorkloadHandle,
) -> None:
    apply_policy(
        authorization_policy(
            "console-only",
            "store",
            rules=[{"from": [{"source": {"principals": [CONSOLE.removeprefix("spiffe://")]}}]}],
        )
    )
    denied = auditor.curl(inventory, port="web")
    assert denied.status == 403 and denied.body == b"RBAC: access denied", denied
    assert console.curl(inventory, port="web").status == 200
    grpc = auditor.grpc(inventory, port="rpc")
    assert grpc.status == "PERMISSION_DENIED", grpc


def test_the_client_sidecar_offers_the_alpn_of_what_it_detected(
    capture: Capturer, inventory: WorkloadHandle, console: WorkloadHandle
) -> None:
    with capture(inventory, port="web") as http:
        assert console.curl(inventory, port="web").status == 200
    flows = http.flows_from(console)
    assert flows and not http.plaintext_flows, http
    hello = flows[0].tls.client_hello if flows[0].tls else None
    assert hello is not None and hello.alpn == ("istio-http/1.1", "istio", "http/1.1"), http
    with capture(inventory, port="rpc") as rpc:
        assert console.grpc(inventory, port="rpc").ok
    flows = rpc.flows_from(console)
    hello = flows[0].tls.client_hello if flows and flows[0].tls else None
    assert hello is not None and hello.alpn == ("istio-h2", "istio", "h2"), rpc


def test_a_server_first_protocol_on_a_sniffed_port_never_speaks(
    inventory: WorkloadHandle, console: WorkloadHandle
) -> None:
    sniffed = console.tcp(inventory, port="db", send=b"", timeout=2.0)
    assert sniffed.outcome == "silent" and sniffed.received == b"", sniffed
    declared = console.tcp(inventory, port="tcp-db", send=b"", timeout=2.0)
    assert declared.received.startswith(BANNER), declared


def test_a_server_first_protocol_from_plaintext_needs_disable(
    apply_policy: PolicyApplier, inventory: WorkloadHandle, cron: WorkloadHandle
) -> None:
    apply_policy(peer_authentication("default", "store", mode="PERMISSIVE"))
    sniffed_tls = cron.tcp(inventory, port="tcp-db", send=b"", timeout=2.0)
    assert sniffed_tls.outcome == "silent" and sniffed_tls.received == b"", sniffed_tls
    apply_policy(peer_authentication("default", "store", mode="DISABLE"))
    greeted = cron.tcp(inventory, port="tcp-db", send=b"", timeout=2.0)
    assert greeted.received.startswith(BANNER), greeted
"""


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makefile(".yaml", store=TOPOLOGY)
    pytester.makepyfile(test_store=SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:randomly", "-rfEs", "--mesh-topology=store.yaml", *args
    )
    assert_runs_left_nothing(result.stdout.str())
    return result


@needs_local_mesh
def test_sniffed_ports_on_the_local_mesh(pytester: pytest.Pytester) -> None:
    result = _run(pytester)
    result.assert_outcomes(passed=8)


@needs_local_mesh
def test_each_sniffed_row_fails_on_the_fault_that_breaks_it(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        "--mesh-fault=strict-as-permissive",
        "--mesh-fault=authz-ignores-principals",
        "--mesh-fault=no-xfcc",
    )
    result.assert_outcomes(passed=4, failed=4)
    result.stdout.fnmatch_lines_random(
        [
            "FAILED test_store.py::test_sniffed_http_carries_the_client_identity*",
            "FAILED test_store.py::test_sniffed_grpc_carries_the_client_identity*",
            "FAILED test_store.py::test_strict_resets_plaintext_on_a_sniffed_port*",
            "FAILED test_store.py::test_authorization_by_principal_answers_403_on_a_sniffed_port*",
        ]
    )
