"""A gRPC service proven on the mesh: STRICT, PERMISSIVE, identity and authorization by
principal, each from what the gRPC server saw or what crossed the wire; the same for the HTTP
storefront beside it on a port Istio sniffs, and for gRPC-Web.

The layout (topology.yaml beside this file): shop/catalog serves a gRPC echo service (it
answers with the request metadata it saw, as httpbin's `/headers` does) on Service port 50051
named `grpc`, on 8081 whose `appProtocol: http2` makes it an HTTP/2 port and on 8083 named
`grpc-web`, and an HTTP storefront on port 80 named `storefront` (no protocol prefix: Istio
sniffs it); frontend/web and frontend/cart are sidecar clients with service accounts of their
own; jobs/reindex has no sidecar. Run it (as root, on the local mesh):

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
- The storefront: "Istio can automatically detect HTTP and HTTP/2 traffic" (istio.io,
  "Protocol Selection"), so a port with an unrecognised name is proxied as HTTP: XFCC, STRICT,
  and an authorization denial answered `403` with `RBAC: access denied`.
- gRPC-Web: "grpc, grpc-web: Same as http2" (istio.io, "Protocol Selection"), and istiod adds
  Envoy's grpc_web filter on such ports, which turns a gRPC-Web request into gRPC and its answer
  back (`application/grpc-web-text`: base64 frames, the last one the trailers, flag 0x80; the
  gRPC-Web protocol, grpc/grpc doc/PROTOCOL-WEB.md).

Only names `pytest_meshconform` exports are imported, and `mypy --strict` checks this file.
"""

from __future__ import annotations

import base64
import json
import re

import pytest

from pytest_meshconform import (
    Capturer,
    HttpResult,
    PolicyApplier,
    WorkloadHandle,
    WorkloadLookup,
    XfccReader,
    authorization_policy,
    peer_authentication,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
WEB = "spiffe://cluster.local/ns/frontend/sa/frontend-web"
ECHO = "/meshconform.echo.v1.Echo/Echo"
GRPC_WEB_TEXT = {
    "content-type": "application/grpc-web-text",
    "accept": "application/grpc-web-text",
    "x-grpc-web": "1",
}
EMPTY_MESSAGE = base64.b64encode(bytes(5)).decode()  # one frame: flag 0, length 0


def grpc_web(client: WorkloadHandle, server: WorkloadHandle, team: str = "") -> HttpResult:
    """One gRPC-Web call of the echo service (`application/grpc-web-text`) with curl."""
    headers = {**GRPC_WEB_TEXT, **({"x-team": team} if team else {})}
    return client.curl(
        server, port="grpc-web", method="POST", path=ECHO, headers=headers, data=EMPTY_MESSAGE
    )


def grpc_web_frames(result: HttpResult) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The echo's answer (the metadata the server saw) and the trailers of a grpc-web-text
    body: base64 chunks (each padded), frames of a flag byte and a 4-byte length."""
    raw = b"".join(base64.b64decode(c) for c in re.findall(rb"[A-Za-z0-9+/]+=*", result.body))
    seen: dict[str, list[str]] = {}
    trailers: dict[str, str] = {}
    while raw:
        flag, size = raw[0], int.from_bytes(raw[1:5], "big")
        payload, raw = raw[5 : 5 + size], raw[5 + size :]
        if flag & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    key, _, value = line.partition(":")
                    trailers[key.strip().lower()] = value.strip()
        else:
            for key, value in json.loads(payload)["metadata"]:
                seen.setdefault(key, []).append(value)
    return seen, trailers


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
    storefront = reindex.curl(catalog, port="storefront")  # a sniffed port, reset alike
    assert storefront.reset, storefront
    assert web.curl(catalog, port="storefront").status == 200


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
    storefront = reindex.curl(catalog, port="storefront")  # plaintext HTTP on a sniffed port
    assert storefront.status == 200, storefront
    assert "X-Forwarded-Client-Cert" not in storefront.json()["headers"], storefront
    web_plain = grpc_web(reindex, catalog)  # the server sidecar's grpc_web filter translates
    assert web_plain.status == 200 and grpc_web_frames(web_plain)[1]["grpc-status"] == "0"


def test_identity_from_the_metadata_the_server_saw(
    xfcc: XfccReader, catalog: WorkloadHandle, web: WorkloadHandle
) -> None:
    for port in ("grpc", "metrics"):
        seen = web.grpc(catalog, port=port, metadata={"x-team": "frontend"})
        assert seen.ok and seen.metadata("x-team") == ("frontend",), seen
        assert seen.xfcc is not None and seen.xfcc[0].spiffe_uri == WEB, seen.server_metadata
    storefront = xfcc(web, catalog, port="storefront")  # sniffed, proxied as HTTP
    assert storefront is not None and storefront[0].uri == (WEB,), storefront
    result = grpc_web(web, catalog, team="frontend")
    metadata, trailers = grpc_web_frames(result)
    assert result.status == 200 and trailers["grpc-status"] == "0", result
    assert metadata["x-team"] == ["frontend"], metadata
    assert f"URI={WEB}" in metadata["x-forwarded-client-cert"][0], metadata


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
    storefront = cart.curl(catalog, port="storefront")  # sniffed as HTTP: an HTTP 403
    assert storefront.status == 403 and storefront.body == b"RBAC: access denied", storefront
    assert web.curl(catalog, port="storefront").status == 200
    web_denied = grpc_web(cart, catalog)  # a trailers-only gRPC-Web answer: status in headers
    assert web_denied.headers.get("grpc-status") == "7", web_denied
    assert web_denied.headers.get("grpc-message") == "RBAC: access denied", web_denied


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
