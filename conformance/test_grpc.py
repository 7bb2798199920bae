"""gRPC: STRICT, PERMISSIVE, identity and authorization by principal, from what a gRPC server
saw (issue 25), on sidecars and on ambient (issue 20).

Runs where the mesh serves gRPC (feature `grpc`: a Service port Istio selects as GRPC whose pod
serves the grpc-echo app, which answers with the request metadata it saw; the local mesh with
such a port in its topology, as the built-in one or examples/catalog/topology.yaml). The roles
come from the mesh itself: the server is the endpoint of the first gRPC Service port with a
sidecar, else of the first one with an ambient endpoint whose Service has no waypoint; the
clients are two workloads of the server's data plane with other service accounts, and one
workload without a data plane. A gRPC Service behind a waypoint has rows of its own,
conformance/test_grpc_waypoint.py: there the waypoint, an Envoy, judges the caller and the
server's ztunnel sees the waypoint's identity, not the caller's (istio.io "Use Layer 4
security policy"), so the expectations differ. Expectations, each from Istio's docs,
ztunnel's or Envoy's source:

- STRICT: "Connection is an mTLS tunnel (TLS with client cert must be presented)" (istio.io,
  PeerAuthentication reference, `MutualTLS.Mode`): the server sidecar resets a plaintext
  connection, which grpc core reports as status UNAVAILABLE; a sidecar client gets through.
- PERMISSIVE: "Connection can be either plaintext or mTLS tunnel" (same reference): both
  answered `OK`, the mTLS call with the client's identity in `x-forwarded-client-cert`, the
  plaintext one without.
- Identity: the server sidecar forwards the client certificate's URI SAN in
  `x-forwarded-client-cert` (docs/istio-facts.md, "Identity and XFCC"), which a gRPC server
  reads as request metadata.
- Authorization: "If there are any ALLOW policies for the workload, allow the request if the
  request matches any of the ALLOW policies" (istio.io, AuthorizationPolicy reference); Envoy
  answers a denied gRPC request with status PERMISSION_DENIED (7) and `RBAC: access denied`
  (`Grpc::Utility::httpToGrpcStatus`: HTTP 403 -> 7).

Ambient (`--mesh-dataplane=ambient`): ztunnel is an L4 proxy that joins the HBONE stream to the
app's port byte for byte (ztunnel src/proxy/inbound.rs, ``handle_inbound``), so the server's
gRPC metadata never carries `x-forwarded-client-cert` (istio.io "Ztunnel", L4 only; XFCC
exists only where an Envoy, a sidecar or a waypoint, adds it). What the server's ztunnel saw of
the caller is the identity of the client certificate on the HBONE connection
(``identity_from_connection``, src/tls/certificate.rs), which its L4 authorization judges
(``ProxyState::assert_rbac``, src/state.rs): the caller's identity is proven, as the ambient
HTTP identity suite proves it (conformance/test_identity.py), by an ALLOW of exactly the
caller's principal letting it in while one naming another principal keeps it out. Every
refusal is ztunnel's, at L4, so a gRPC client sees its connection closed, never a gRPC status
from the mesh: grpc core reports a connection that breaks under a call as UNAVAILABLE (grpc/grpc
doc/statuscodes.md, "Some data transmitted ... before connection breaks": UNAVAILABLE), not
PERMISSION_DENIED:

- STRICT: istiod sends ztunnel a DENY of connections without a peer identity
  (``istio_converted_static_strict``, pilot/pkg/serviceregistry/ambient/authorization.go,
  ``convertPeerAuthentication``); ztunnel drops such a plaintext connection on its inbound
  passthrough (src/proxy/inbound_passthrough.rs, ``assert_rbac`` before forwarding): the
  plaintext call is reset (UNAVAILABLE), the ambient caller's call (HBONE) is OK.
- PERMISSIVE: both calls OK, neither with XFCC; under an ALLOW of the caller's principal the
  caller's (mTLS) call still gets in, it arrived with its identity, and the plaintext one is
  reset: "principals" require mutual TLS (AuthorizationPolicy reference, `Source.principals`).
- Authorization: under an ALLOW of one caller's principal, ztunnel closes the other caller's
  connection (istio.io "Use Layer 4 security policy": "Connection reset by peer"; over HBONE
  ztunnel answers the CONNECT 401 and the caller's ztunnel closes the app's connection): status
  UNAVAILABLE.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pytest_meshconform import (
    GrpcResult,
    Mesh,
    PolicyApplier,
    ServicePortLister,
    WorkloadHandle,
    WorkloadLookup,
    authorization_policy,
    peer_authentication,
)

pytestmark = pytest.mark.mesh_features(
    "grpc", "mtls", "peer-authentication", "xfcc", "authorization"
)


@dataclass(frozen=True)
class Roles:
    server: WorkloadHandle
    port: int  # the gRPC Service port
    caller: WorkloadHandle  # a client of the server's data plane
    other: WorkloadHandle  # a client of the server's data plane, of another identity
    naked: WorkloadHandle  # a client without a data plane: plaintext

    @property
    def ambient(self) -> bool:
        """The server is an ambient pod: its ztunnel, not a sidecar, is the mesh in front."""
        return self.server.dataplane == "ambient"

    def principal(self, client: WorkloadHandle) -> str:
        return client.spiffe_id.removeprefix("spiffe://")


@pytest.fixture
def roles(mesh: Mesh, mesh_service_ports: ServicePortLister, workload: WorkloadLookup) -> Roles:
    grpc = [p for p in mesh_service_ports() if p.protocol == "GRPC"]
    chosen = [p for p in grpc if p.endpoint.has_sidecar]
    chosen += [p for p in grpc if p.endpoint.dataplane == "ambient" and p.waypoint is None]
    if not chosen:
        seen = [f"{p.key} ({p.endpoint.dataplane}, waypoint {p.waypoint})" for p in grpc]
        pytest.skip(
            "no gRPC Service port with a sidecar endpoint, or an ambient one whose Service has"
            f" no waypoint, in this mesh (gRPC ports: {seen or 'none'}); a gRPC Service behind"
            " a waypoint is covered by conformance/test_grpc_waypoint.py"
        )
    port = chosen[0]
    server = workload(port.endpoint.name, port.namespace)
    handles = [workload(w.name, mesh.logical_namespace(w.namespace)) for w in mesh.workloads()]
    peers = [h for h in handles if h.dataplane == server.dataplane and h.key != server.key]
    identities = {h.spiffe_id: h for h in peers if h.spiffe_id != server.spiffe_id}
    naked = [h for h in handles if h.dataplane == "none"]
    if len(identities) < 2 or not naked:
        pytest.skip(
            f"the gRPC rows need two {server.dataplane} clients of different service accounts"
            f" and one client without a data plane; this mesh has {sorted(identities)} and"
            f" {[h.key for h in naked]}"
        )
    caller, other = list(identities.values())[:2]
    return Roles(server, port.service.port, caller, other, naked[0])


def allow_only(apply_policy: PolicyApplier, roles: Roles, principal: str) -> None:
    """An ALLOW policy in the server's namespace naming exactly one principal."""
    apply_policy(
        authorization_policy(
            "grpc-caller-only",
            roles.server.namespace,
            rules=[{"from": [{"source": {"principals": [principal]}}]}],
        )
    )


def closed_by_ztunnel(result: GrpcResult) -> bool:
    """ztunnel's refusal as a gRPC client sees it: the connection closed under the call."""
    return result.status == "UNAVAILABLE" and result.reset


def test_strict_resets_plaintext_grpc(apply_policy: PolicyApplier, roles: Roles) -> None:
    """STRICT: a plaintext gRPC call is reset (UNAVAILABLE); a mesh client's call is OK (a
    sidecar's mTLS, or an ambient client's HBONE through ztunnel)."""
    apply_policy(peer_authentication("default", roles.server.namespace, mode="STRICT"))
    plaintext = roles.naked.grpc(roles.server, port=roles.port)
    assert plaintext.reset and plaintext.status == "UNAVAILABLE", (
        f"plaintext gRPC was not refused by STRICT: {plaintext}"
    )
    mtls = roles.caller.grpc(roles.server, port=roles.port)
    assert mtls.ok, f"the {roles.caller.dataplane} client's gRPC call failed under STRICT: {mtls}"


def test_permissive_accepts_plaintext_and_mtls_grpc(
    apply_policy: PolicyApplier, roles: Roles
) -> None:
    """PERMISSIVE: both calls are answered; only the mTLS one carries the caller's identity
    (sidecars: in XFCC; ambient: ztunnel admits it under an ALLOW of exactly its principal and
    resets the plaintext call)."""
    apply_policy(peer_authentication("default", roles.server.namespace, mode="PERMISSIVE"))
    plaintext = roles.naked.grpc(roles.server, port=roles.port)
    assert plaintext.ok and plaintext.xfcc is None, f"plaintext gRPC under PERMISSIVE: {plaintext}"
    mtls = roles.caller.grpc(roles.server, port=roles.port)
    assert mtls.ok, f"mTLS gRPC under PERMISSIVE: {mtls}"
    if not roles.ambient:
        assert mtls.xfcc is not None, f"mTLS gRPC arrived without X-Forwarded-Client-Cert: {mtls}"
        return
    assert mtls.xfcc is None, f"ztunnel writes no X-Forwarded-Client-Cert, the server saw {mtls}"
    principal = roles.principal(roles.caller)
    allow_only(apply_policy, roles, principal)
    mtls = roles.caller.grpc(roles.server, port=roles.port)
    assert mtls.ok, (
        f"mTLS gRPC under PERMISSIVE did not arrive with the caller's identity: ztunnel refused"
        f" {roles.caller} under ALLOW {principal}: {mtls}"
    )
    plaintext = roles.naked.grpc(roles.server, port=roles.port)
    assert closed_by_ztunnel(plaintext), (
        f"plaintext gRPC under PERMISSIVE got past an ALLOW of principal {principal}, which"
        f" needs mTLS: {plaintext}"
    )


def test_grpc_server_sees_the_callers_identity(apply_policy: PolicyApplier, roles: Roles) -> None:
    """The identity the server side saw of the caller, and the caller's own metadata beside
    it: the caller's SPIFFE ID in x-forwarded-client-cert (sidecars); on ambient no XFCC, and
    the server's ztunnel admits the caller under an ALLOW of exactly its principal, not under
    one naming another principal."""
    seen = roles.caller.grpc(roles.server, port=roles.port, metadata={"x-suite": "grpc"})
    assert seen.ok and seen.metadata("x-suite") == ("grpc",), seen
    if not roles.ambient:
        assert seen.xfcc is not None, f"expected one XFCC element, got None: {seen.server_metadata}"
        assert [e.spiffe_uri for e in seen.xfcc] == [roles.caller.spiffe_id], seen.server_metadata
        return
    assert seen.xfcc is None, f"ztunnel writes no X-Forwarded-Client-Cert, the server saw {seen}"
    principal = roles.principal(roles.caller)
    for allowed, admitted in ((principal, True), (f"{principal}-someone-else", False)):
        allow_only(apply_policy, roles, allowed)
        result = roles.caller.grpc(roles.server, port=roles.port)
        if admitted:
            assert result.ok, f"ztunnel refused {roles.caller} under ALLOW {allowed}: {result}"
        else:
            assert closed_by_ztunnel(result), (
                f"ztunnel let {roles.caller} in under ALLOW {allowed}, so it did not judge the"
                f" caller's own identity {roles.caller.spiffe_id}: {result}"
            )


def test_grpc_authorization_by_principal(apply_policy: PolicyApplier, roles: Roles) -> None:
    """An ALLOW policy naming one caller's principal: the other caller gets PERMISSION_DENIED
    from the server's sidecar, or on ambient its connection closed by ztunnel (UNAVAILABLE)."""
    allow_only(apply_policy, roles, roles.principal(roles.caller))
    denied = roles.other.grpc(roles.server, port=roles.port)
    if roles.ambient:
        assert closed_by_ztunnel(denied), f"{roles.other} was not denied: {denied}"
    else:
        assert denied.status == "PERMISSION_DENIED" and denied.code == 7, (
            f"{roles.other} was not denied: {denied}"
        )
        assert denied.details == "RBAC: access denied", denied
    allowed = roles.caller.grpc(roles.server, port=roles.port)
    assert allowed.ok, f"the allowed caller was refused: {allowed}"
