"""Sidecars and ambient pods in one mesh, under STRICT, proven from the wire (issue 20).

What Istio does (`pytest_meshconform.istio.interop`, docs/istio-model.md "Sidecars and ambient
pods"): a sidecar reaches an ambient pod over HBONE (istiod's ``hbone`` transport socket match
and ``connect_originate``: TLS 1.3, ALPN ``h2``, no SNI, to port 15008, with the sidecar's own
certificate, which the server's ztunnel judges: refused, the CONNECT is answered 401 and the
sidecar's HTTP proxy answers its app 503, as for any upstream that fails before its response
headers); an ambient pod's ztunnel sends a sidecar pod
plain TCP (a sidecar pod speaks no HBONE by default: ztunnel's ``build_request``), which a
STRICT sidecar resets and a PERMISSIVE one serves without X-Forwarded-Client-Cert.

The layout is not sleep/httpbin: `orders` has sidecars (`checkout` calls `stock`), `ledger` is
ambient (`cashier` calls `books`), `batch` has no data plane (`nightly`).
"""

from __future__ import annotations

import pytest
from local_helpers import assert_runs_left_nothing, needs_local_mesh

TOPOLOGY = """\
namespaces:
  - name: orders
    dataplane: sidecar
    workloads:
      - {name: checkout, kind: sleep}
      - {name: stock, kind: httpbin, ports: [8080]}
    services:
      - name: stock
        selector: {app: stock}
        ports:
          - {name: http, port: 80, targetPort: 8080}
  - name: ledger
    dataplane: ambient
    workloads:
      - {name: cashier, kind: sleep}
      - {name: books, kind: httpbin, ports: [8080]}
    services:
      - name: books
        selector: {app: books}
        ports:
          - {name: http, port: 80, targetPort: 8080}
  - name: batch
    dataplane: none
    workloads:
      - {name: nightly, kind: sleep}
"""

SUITE = r"""
from pytest_meshconform import (
    Capturer,
    PolicyApplier,
    WorkloadLookup,
    XfccReader,
    authorization_policy,
    peer_authentication,
    tunnels_over_hbone,
)


def strict(apply_policy: PolicyApplier) -> None:
    apply_policy(peer_authentication("default", "orders", mode="STRICT"))
    apply_policy(peer_authentication("default", "ledger", mode="STRICT"))


def test_sidecar_to_ambient_is_hbone(
    apply_policy: PolicyApplier, workload: WorkloadLookup, capture: Capturer, xfcc: XfccReader, mesh
) -> None:
    strict(apply_policy)
    checkout, books = workload("checkout", "orders"), workload("books", "ledger")
    assert tunnels_over_hbone(mesh, checkout.workload, books.workload)
    with capture(books) as cap:
        seen = xfcc(checkout, books)
    assert seen is None, seen  # ztunnel writes no XFCC
    flows = cap.flows_from(checkout)
    assert flows, cap
    for flow in flows:
        assert flow.server_port == 15008, cap
        assert flow.client[0] == mesh.pod_ip(checkout.workload), flow
        hello = flow.tls.client_hello
        assert hello is not None, flow
        assert hello.alpn == ("h2",), hello
        assert hello.supported_versions == ("TLS1.3",), hello
        assert hello.sni is None, hello
    assert not [r for f in cap.flows for r in f.http_requests], cap
    assert not cap.plaintext_flows, cap


def test_ztunnel_judges_the_sidecars_identity(
    apply_policy: PolicyApplier, workload: WorkloadLookup
) -> None:
    strict(apply_policy)
    checkout, books = workload("checkout", "orders"), workload("books", "ledger")
    for principal, admitted in (
        ("cluster.local/ns/orders/sa/checkout", True),
        ("cluster.local/ns/orders/sa/someone-else", False),
    ):
        apply_policy(authorization_policy(
            "books-callers", "ledger", "ALLOW",
            [{"from": [{"source": {"principals": [principal]}}]}],
            selector={"app": "books"},
        ))
        result = checkout.curl(books)
        # refused: ztunnel answers the CONNECT 401, the sidecar's HTTP proxy the app 503
        assert result.ok if admitted else result.status == 503, (principal, result)


def test_ambient_to_strict_sidecar_is_plaintext_and_reset(
    apply_policy: PolicyApplier, workload: WorkloadLookup, capture: Capturer, mesh
) -> None:
    strict(apply_policy)
    cashier, stock = workload("cashier", "ledger"), workload("stock", "orders")
    assert not tunnels_over_hbone(mesh, cashier.workload, stock.workload)
    with capture(stock) as cap:
        result = cashier.curl(stock)
    assert result.reset, f"plaintext from ztunnel was not refused by STRICT: {result}"
    flows = cap.flows_from(cashier)
    assert flows, cap
    assert [(r.method, r.target) for f in flows for r in f.http_requests] == [("GET", "/headers")]
    assert [f.server_port for f in flows] == [8080], cap
    assert any(f.server_rst for f in flows), cap


def test_ambient_to_permissive_sidecar_is_plaintext(
    apply_policy: PolicyApplier, workload: WorkloadLookup, capture: Capturer, xfcc: XfccReader
) -> None:
    apply_policy(peer_authentication("default", "orders", mode="PERMISSIVE"))
    cashier, stock = workload("cashier", "ledger"), workload("stock", "orders")
    with capture(stock) as cap:
        seen = xfcc(cashier, stock)
    assert seen is None, seen
    flows = cap.flows_from(cashier)
    assert [r.target for f in flows for r in f.http_requests] == ["/headers"], cap


def test_a_pod_without_data_plane_is_still_reset(
    apply_policy: PolicyApplier, workload: WorkloadLookup
) -> None:
    strict(apply_policy)
    nightly = workload("nightly", "batch")
    assert nightly.curl(workload("books", "ledger")).reset
    assert nightly.curl(workload("stock", "orders")).reset
"""


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makefile(".yaml", mixed=TOPOLOGY)
    pytester.makepyfile(test_mixed=SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "-p", "no:cacheprovider", "--mesh-topology=mixed.yaml", *args
    )
    assert_runs_left_nothing(result.stdout.str())
    return result


@needs_local_mesh
def test_sidecar_and_ambient_pods_under_strict(pytester: pytest.Pytester) -> None:
    _run(pytester).assert_outcomes(passed=5)


@needs_local_mesh
@pytest.mark.parametrize(
    ("fault", "selected", "line"),
    [
        # the sidecar serves plaintext under STRICT: ztunnel's TCP gets through
        (
            "strict-as-permissive",
            "ambient_to_strict_sidecar",
            "*plaintext from ztunnel was not refused by STRICT*",
        ),
        # ztunnel's policy matches any peer: the sidecar's other principal gets in
        ("authz-ignores-principals", "sidecars_identity", "*someone-else*"),
    ],
)
def test_the_interop_tests_fail_on_a_broken_mesh(
    pytester: pytest.Pytester, fault: str, selected: str, line: str
) -> None:
    result = _run(pytester, f"--mesh-fault={fault}", "-k", selected)
    result.assert_outcomes(failed=1, deselected=4)
    result.stdout.fnmatch_lines([line])
