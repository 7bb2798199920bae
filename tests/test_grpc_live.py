"""gRPC on the local mesh, on the wire (issue 25): a user's suite on the catalog layout
(`examples/catalog/topology.yaml`: `shop/catalog` serves the grpc-echo app on Service port
50051 named `grpc` and on 8081 with `appProtocol: http2`; `frontend/web` and `frontend/cart`
have sidecars and service accounts of their own; `jobs/reindex` has none), run by pytester
against real Envoy sidecars, real grpcio on both ends and real tcpdump.

What is expected, and from where:

- STRICT: the server sidecar's inbound listener has no plaintext chain (istiod's
  ``buildInboundFilterChains``), so a plaintext gRPC connection from a pod without a sidecar
  is reset (grpc core: UNAVAILABLE, ``Connection reset by peer``); PERMISSIVE answers both.
- Identity: the inbound HTTP connection manager sets XFCC with the client's URI SAN
  (``buildSidecarInboundHTTPOpts``), so the server sees it in the request metadata.
- Authorization: Envoy's RBAC filter denies with 403 and Envoy answers a gRPC request's local
  reply as a gRPC status (``Grpc::Utility::httpToGrpcStatus``: 403 -> PERMISSION_DENIED, 7),
  details ``RBAC: access denied`` (Envoy's RBAC filter text).
- The wire: the client sidecar's ClientHello offers ``istio-h2, istio, h2``
  (``mtlsHTTP2ALPN``, pilot/pkg/xds/filters/filters.go); plaintext gRPC starts with the
  HTTP/2 client preface (RFC 9113, section 3.4).

The same suite run with a test-only fault (STRICT rendered as PERMISSIVE, RBAC ignoring
principals, no XFCC) fails on the row each fault breaks, so its passes prove something.
"""

from __future__ import annotations

import pytest
from local_helpers import REPO, assert_runs_left_nothing, needs_local_mesh

CATALOG = REPO / "examples" / "catalog" / "topology.yaml"

SUITE = r"""
from pytest_meshconform import (
    Capturer,
    PolicyApplier,
    WorkloadLookup,
    authorization_policy,
    peer_authentication,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
WEB = "spiffe://cluster.local/ns/frontend/sa/frontend-web"


def test_strict_resets_plaintext_grpc(
    apply_policy: PolicyApplier, workload: WorkloadLookup
) -> None:
    reindex, web = workload("reindex", "jobs"), workload("web", "frontend")
    catalog = workload("catalog", "shop")
    apply_policy(peer_authentication("default", "shop", mode="STRICT"))
    plaintext = reindex.grpc(catalog)
    assert plaintext.reset and plaintext.status == "UNAVAILABLE", plaintext
    assert web.grpc(catalog).ok  # the sidecar client still gets through, over mTLS


def test_permissive_accepts_both(apply_policy: PolicyApplier, workload: WorkloadLookup) -> None:
    reindex, web = workload("reindex", "jobs"), workload("web", "frontend")
    catalog = workload("catalog", "shop")
    apply_policy(peer_authentication("default", "shop", mode="PERMISSIVE"))
    plaintext, mtls = reindex.grpc(catalog), web.grpc(catalog, port="metrics")
    assert plaintext.ok and plaintext.xfcc is None, plaintext
    assert mtls.ok, mtls


def test_identity_from_the_metadata_the_server_saw(workload: WorkloadLookup) -> None:
    web, catalog = workload("web", "frontend"), workload("catalog", "shop")
    for port in ("grpc", "metrics"):
        seen = web.grpc(catalog, port=port, metadata={"x-team": "frontend"})
        assert seen.ok and seen.metadata("x-team") == ("frontend",), seen
        assert seen.xfcc is not None and seen.xfcc[0].spiffe_uri == WEB, seen.server_metadata


def test_authorization_by_principal_denies_another_caller(
    apply_policy: PolicyApplier, workload: WorkloadLookup
) -> None:
    web, cart = workload("web", "frontend"), workload("cart", "frontend")
    catalog = workload("catalog", "shop")
    apply_policy(
        authorization_policy(
            "web-only",
            "shop",
            rules=[{"from": [{"source": {"principals": [WEB.removeprefix("spiffe://")]}}]}],
        )
    )
    denied = cart.grpc(catalog)
    assert denied.status == "PERMISSION_DENIED" and denied.code == 7, denied
    assert denied.details == "RBAC: access denied", denied
    assert web.grpc(catalog).ok


def test_grpc_mtls_on_the_wire(capture: Capturer, workload: WorkloadLookup) -> None:
    web, reindex = workload("web", "frontend"), workload("reindex", "jobs")
    catalog = workload("catalog", "shop")
    with capture(catalog, port="grpc") as cap:
        assert web.grpc(catalog).ok
    flows = cap.flows_from(web)
    assert flows and not cap.plaintext_flows, cap
    hello = flows[0].tls.client_hello if flows[0].tls else None
    assert hello is not None and hello.alpn[:1] == ("istio-h2",), cap
    with capture(catalog, port="grpc") as sanity:  # the same capture sees plaintext gRPC
        assert reindex.grpc(catalog).ok
    (plain,) = sanity.flows_from(reindex)
    assert plain.tls is None and plain.client_stream.startswith(PREFACE), sanity
    assert plain.http2 and plain.http2_streams == (1,) and not plain.http_requests, sanity
    assert "HTTP/2 (1 stream)" in str(sanity)
"""


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_catalog=SUITE)
    return pytester.runpytest_subprocess("-p", "no:randomly", f"--mesh-topology={CATALOG}", *args)


@needs_local_mesh
def test_grpc_rows_pass_on_the_local_mesh(pytester: pytest.Pytester) -> None:
    result = _run(pytester)
    result.assert_outcomes(passed=5)
    assert_runs_left_nothing(result.stdout.str())


@needs_local_mesh
def test_each_grpc_row_fails_on_the_fault_that_breaks_it(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        "--mesh-fault=strict-as-permissive",
        "--mesh-fault=authz-ignores-principals",
        "--mesh-fault=no-xfcc",
    )
    result.assert_outcomes(passed=2, failed=3)
    result.stdout.fnmatch_lines_random(
        [
            "FAILED test_catalog.py::test_strict_resets_plaintext_grpc*",
            "FAILED test_catalog.py::test_identity_from_the_metadata_the_server_saw*",
            "FAILED test_catalog.py::test_authorization_by_principal_denies_another_caller*",
            "*reindex.jobs -> grpc://catalog.shop:50051 (grpc): gRPC OK*",
            "*cart.frontend -> grpc://catalog.shop:50051 (grpc): gRPC OK*",
        ]
    )
    assert_runs_left_nothing(result.stdout.str())
