"""A gRPC service proven on the mesh: STRICT, PERMISSIVE, identity and authorization by
principal, each from what the gRPC server saw or what crossed the wire.

The layout (topology.yaml beside this file): shop/catalog serves a gRPC echo service (it
answers with the request metadata it saw, as httpbin's `/headers` does) on Service port 50051
named `grpc`, and on 8081 whose `appProtocol: http2` makes it an HTTP/2 port; frontend/web and
frontend/cart are sidecar clients with service accounts of their own; jobs/reindex has no
sidecar. Run it (as root, on the local mesh):

    pytest --mesh-topology=examples/catalog/topology.yaml examples/catalog/

Expected values and where they come from:

- STRICT: "Connection is an mTLS tunnel (TLS with client cert must be presented)" (istio.io,
  PeerAuthentication reference, `MutualTLS.Mode`); a plaintext gRPC connection is reset, which
  grpc core reports as status UNAVAILABLE naming the socket error.
- Identity: the server sidecar forwards the client certificate's URI SAN in
  `x-forwarded-client-cert` (`URI=spiffe://.../sa/<client>`, docs/istio-facts.md "Identity and
  XFCC"), which a gRPC server reads as request metadata.
- Authorization: "If there are any ALLOW policies for the workload, allow the request if the
  request matches any of the ALLOW policies", else deny (istio.io, AuthorizationPolicy
  reference); Envoy answers a
  denied gRPC request with status PERMISSION_DENIED (7), as it maps HTTP 403 for gRPC callers
  (the gRPC project's doc/http-grpc-status-mapping.md).
- The wire: a sidecar's ClientHello for an HTTP/2 or gRPC port offers ALPN `istio-h2` first,
  and plaintext gRPC starts with the HTTP/2 client preface (RFC 9113, section 3.4).

Only names `pytest_meshconform` exports are imported, and `mypy --strict` checks this file.
"""

from __future__ import annotations

import pytest

from pytest_meshconform import (
    Capturer,
    PolicyApplier,
    WorkloadHandle,
    WorkloadLookup,
    authorization_policy,
    peer_authentication,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
WEB = "spiffe://cluster.local/ns/frontend/sa/frontend-web"


@pytest.fixture
def catalog(workload: WorkloadLookup) -> WorkloadHandle:
    """shop/catalog: gRPC on Service port 50051 (`grpc`), HTTP/2 on 8081 (`metrics`)."""
    return workload("catalog", "shop", skip_if_missing=True)


@pytest.fixture
def web(workload: WorkloadLookup) -> WorkloadHandle:
    """frontend/web: a sidecar client, service account `frontend-web`."""
    return workload("web", "frontend", skip_if_missing=True)


@pytest.fixture
def cart(workload: WorkloadLookup) -> WorkloadHandle:
    """frontend/cart: a sidecar client, service account `frontend-cart`."""
    return workload("cart", "frontend", skip_if_missing=True)


@pytest.fixture
def reindex(workload: WorkloadLookup) -> WorkloadHandle:
    """jobs/reindex: a client without a sidecar (plaintext)."""
    return workload("reindex", "jobs", skip_if_missing=True)


def test_strict_resets_plaintext_grpc(
    apply_policy: PolicyApplier,
    catalog: WorkloadHandle,
    web: WorkloadHandle,
    reindex: WorkloadHandle,
) -> None:
    apply_policy(peer_authentication("default", "shop", mode="STRICT"))
    plaintext = reindex.grpc(catalog)
    assert plaintext.reset and plaintext.status == "UNAVAILABLE", plaintext
    assert web.grpc(catalog).ok  # the sidecar client still gets through, over mTLS


def test_permissive_accepts_both(
    apply_policy: PolicyApplier,
    catalog: WorkloadHandle,
    web: WorkloadHandle,
    reindex: WorkloadHandle,
) -> None:
    apply_policy(peer_authentication("default", "shop", mode="PERMISSIVE"))
    plaintext, mtls = reindex.grpc(catalog), web.grpc(catalog, port="metrics")
    assert plaintext.ok and plaintext.xfcc is None, plaintext
    assert mtls.ok, mtls


def test_identity_from_the_metadata_the_server_saw(
    catalog: WorkloadHandle, web: WorkloadHandle
) -> None:
    for port in ("grpc", "metrics"):
        seen = web.grpc(catalog, port=port, metadata={"x-team": "frontend"})
        assert seen.ok and seen.metadata("x-team") == ("frontend",), seen
        assert seen.xfcc is not None and seen.xfcc[0].spiffe_uri == WEB, seen.server_metadata


def test_authorization_by_principal_denies_another_caller(
    apply_policy: PolicyApplier,
    catalog: WorkloadHandle,
    web: WorkloadHandle,
    cart: WorkloadHandle,
) -> None:
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


def test_grpc_mtls_on_the_wire(
    capture: Capturer, catalog: WorkloadHandle, web: WorkloadHandle, reindex: WorkloadHandle
) -> None:
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
