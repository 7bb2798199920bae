"""gRPC behind a waypoint: STRICT, PERMISSIVE, identity and authorization by principal, for a
gRPC Service whose ambient endpoint is served through a waypoint (issues 20 and 25).

Runs where the mesh serves gRPC behind a waypoint (features `grpc` and `waypoint`: the local
mesh's built-in topology under ``--mesh-dataplane=ambient``, whose namespace `bar` has the
namespace waypoint `waypoint`, or a topology of your own with one); elsewhere it is skipped,
naming the feature. conformance/test_grpc.py holds the same rows for sidecar endpoints and
ambient ones without a waypoint. The roles come from the mesh itself: the server is the endpoint
of the first gRPC Service port with an ambient endpoint whose Service has a waypoint; the
clients are two ambient workloads with other service accounts (their ztunnels send the
Service's traffic to the waypoint: ztunnel ``build_request``, src/proxy/outbound.rs; a sidecar
client would not go through it: istiod's ``findServiceWaypoint``) and one workload without a
data plane. The path of a mesh client's call: its ztunnel -> HBONE (mutual TLS, the client's
certificate) -> the waypoint, which terminates the tunnel, keeps the client's identity and
runs its HTTP filters (the RBAC of the AuthorizationPolicies bound to it by ``targetRefs``, to
the Service or to the waypoint's Gateway) -> a new HBONE tunnel with the waypoint's own
certificate -> the server's ztunnel -> the app (docs/istio-model.md, "Waypoints").
Expectations, each from Istio's docs and istiod's, ztunnel's or Envoy's source:

- STRICT: the plaintext client dials the Service and reaches the server's pod directly: the
  waypoint is not on its path (ztunnel's inbound passthrough, src/proxy/inbound_passthrough.rs,
  has no waypoint step; istio.io "Use Layer 4 security policy": a workload that admits only
  the waypoint keeps such traffic out), and the server's ztunnel drops it under istiod's DENY
  of connections without a peer identity (``istio_converted_static_strict``,
  ``convertPeerAuthentication``): reset, which grpc core reports as UNAVAILABLE. The mesh
  client's call arrives over the waypoint's mutual TLS tunnel: OK.
- XFCC: the waypoint's per-Service HTTP connection manager leaves
  ``forward_client_cert_details`` unset (``buildWaypointInboundHTTPFilters``,
  pilot/pkg/networking/core/listener_waypoint.go; the opt-in is the Gateway annotation
  ``ambient.istio.io/xfcc-include-client-identity``), Envoy's SANITIZE: "Do not send the XFCC
  header to the next hop" (envoyproxy.io, HttpConnectionManager ``ForwardClientCertDetails``),
  so the server sees no ``x-forwarded-client-cert``, not even one the caller wrote itself.
- PERMISSIVE: both calls OK, neither with XFCC. What the server's ztunnel sees of the mesh
  call is the waypoint's identity ("Use Layer 4 security policy": a policy on the workload is
  enforced by its ztunnel with the waypoint's identity; istiod adds no implicit "allow the
  waypoint" policy by default, ``PILOT_AUTO_ALLOW_WAYPOINT_POLICY``): under an L4 ALLOW of the
  waypoint's principal (its service account is the Gateway's name: the waypoint class's
  ``DisableNameSuffix``) the mesh call still gets in, and the plaintext one is reset:
  "principals" require mutual TLS (AuthorizationPolicy reference, ``Source.principals``).
- Identity: the waypoint judges the caller's own identity, kept from its tunnel's client
  certificate (``io.istio.peer_principal``, ``principalAuthenticated`` on the filter state): a
  ``targetRefs`` ALLOW of exactly the caller's principal lets it in, one naming another
  principal keeps it out. The server's ztunnel does not see the caller: an L4 ALLOW of the
  caller's principal on the server keeps the call out (the server's ztunnel refuses the
  waypoint's tunnel, and the waypoint answers its caller as Envoy does when its upstream
  refuses: 503, a gRPC UNAVAILABLE; istio's ambient tests' ``CheckDeny`` takes that 503).
- Authorization: "If there are any ALLOW policies for the workload, allow the request if the
  request matches any of the ALLOW policies" (AuthorizationPolicy reference); with
  ``targetRefs`` the waypoint enforces it (istio.io "Enforce Layer 7 authorization policy";
  a Gateway-bound policy covers all the waypoint's traffic: "Use Layer 7 features"). The
  waypoint is an Envoy: a denied gRPC request gets Envoy's local reply as a gRPC status,
  PERMISSION_DENIED (7) with ``RBAC: access denied`` (``Grpc::Utility::httpToGrpcStatus``: HTTP
  403 -> 7), not a closed connection as from ztunnel. The plaintext client is not judged by
  it: its call bypasses the waypoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    "grpc", "waypoint", "mtls", "peer-authentication", "xfcc", "authorization"
)

GATEWAY_GROUP = "gateway.networking.k8s.io"
# an XFCC element the caller writes itself: the waypoint must not pass it on
FORGED_XFCC = (
    "By=spiffe://cluster.local/ns/forged/sa/server;URI=spiffe://cluster.local/ns/forged/sa/caller"
)


@dataclass(frozen=True)
class Roles:
    server: WorkloadHandle
    port: int  # the gRPC Service port
    service: str  # the Service's name (targetRefs kind Service)
    namespace: str  # the Service's namespace
    waypoint: str  # the waypoint's name (targetRefs kind Gateway)
    waypoint_namespace: str
    waypoint_principal: str  # the identity the server's ztunnel sees for mesh calls
    caller: WorkloadHandle  # an ambient client: its Service traffic goes through the waypoint
    other: WorkloadHandle  # an ambient client of another identity
    naked: WorkloadHandle  # a client without a data plane: plaintext, past the waypoint

    def principal(self, client: WorkloadHandle) -> str:
        return client.spiffe_id.removeprefix("spiffe://")

    def call(self, client: WorkloadHandle, **options: Any) -> GrpcResult:
        return client.grpc(self.server, port=self.port, **options)


@pytest.fixture
def roles(mesh: Mesh, mesh_service_ports: ServicePortLister, workload: WorkloadLookup) -> Roles:
    grpc = [p for p in mesh_service_ports() if p.protocol == "GRPC"]
    chosen = [p for p in grpc if p.endpoint.dataplane == "ambient" and p.waypoint is not None]
    if not chosen:
        seen = [f"{p.key} ({p.endpoint.dataplane}, waypoint {p.waypoint})" for p in grpc]
        pytest.skip(
            "no gRPC Service port with an ambient endpoint whose Service has a waypoint in this"
            f" mesh (gRPC ports: {seen or 'none'}); conformance/test_grpc.py covers the others"
        )
    port = chosen[0]
    assert port.waypoint is not None
    waypoint_namespace, waypoint = port.waypoint.split("/", 1)
    server = workload(port.endpoint.name, port.namespace)
    handles = [workload(w.name, mesh.logical_namespace(w.namespace)) for w in mesh.workloads()]
    ambient = [h for h in handles if h.dataplane == "ambient" and h.key != server.key]
    identities = {h.spiffe_id: h for h in ambient if h.spiffe_id != server.spiffe_id}
    naked = [h for h in handles if h.dataplane == "none"]
    if len(identities) < 2 or not naked:
        pytest.skip(
            "the gRPC rows behind a waypoint need two ambient clients of different service"
            " accounts (a sidecar client does not go through a waypoint) and one client"
            f" without a data plane; this mesh has {sorted(identities)} and"
            f" {[h.key for h in naked]}"
        )
    caller, other = list(identities.values())[:2]
    return Roles(
        server=server,
        port=port.service.port,
        service=port.service.name,
        namespace=port.namespace,
        waypoint=waypoint,
        waypoint_namespace=mesh.logical_namespace(waypoint_namespace),
        # the waypoint runs under the service account of its Gateway's name
        waypoint_principal=f"{mesh.trust_domain}/ns/{waypoint_namespace}/sa/{waypoint}",
        caller=caller,
        other=other,
        naked=naked[0],
    )


def allow_at_waypoint(apply_policy: PolicyApplier, roles: Roles, *principals: str) -> None:
    """An ALLOW bound to the Service by ``targetRefs``: the waypoint enforces it."""
    apply_policy(
        authorization_policy(
            "grpc-callers-only",
            roles.namespace,
            rules=[{"from": [{"source": {"principals": list(principals)}}]}],
            target_refs=[{"kind": "Service", "group": "", "name": roles.service}],
        )
    )


def allow_at_server(apply_policy: PolicyApplier, roles: Roles, principal: str) -> None:
    """An ALLOW selecting the server's pod: its ztunnel enforces it, at L4."""
    apply_policy(
        authorization_policy(
            "grpc-server-admits",
            roles.server.namespace,
            rules=[{"from": [{"source": {"principals": [principal]}}]}],
            selector={"app": roles.server.workload.app},
        )
    )


def denied_by_waypoint(result: GrpcResult) -> bool:
    """The waypoint's RBAC denial as a gRPC client sees it: Envoy's local reply."""
    return (
        result.status == "PERMISSION_DENIED"
        and result.code == 7
        and result.details == "RBAC: access denied"
    )


def closed_by_ztunnel(result: GrpcResult) -> bool:
    """The server ztunnel's refusal of a plaintext connection: closed under the call."""
    return result.status == "UNAVAILABLE" and result.reset


def test_strict_resets_plaintext_grpc_behind_a_waypoint(
    apply_policy: PolicyApplier, roles: Roles
) -> None:
    """STRICT: the plaintext call (past the waypoint) is reset by the server's ztunnel; the
    mesh client's call, through the waypoint's mutual TLS tunnel, is OK."""
    apply_policy(peer_authentication("default", roles.server.namespace, mode="STRICT"))
    plaintext = roles.call(roles.naked)
    assert closed_by_ztunnel(plaintext), f"plaintext gRPC was not refused by STRICT: {plaintext}"
    mtls = roles.call(roles.caller)
    assert mtls.ok, f"the ambient client's gRPC call through the waypoint failed: {mtls}"


def test_permissive_accepts_plaintext_and_mtls_grpc_behind_a_waypoint(
    apply_policy: PolicyApplier, roles: Roles
) -> None:
    """PERMISSIVE: both calls answered, neither with XFCC; the server's ztunnel admits the
    mesh call under an L4 ALLOW of the waypoint's principal and resets the plaintext one."""
    apply_policy(peer_authentication("default", roles.server.namespace, mode="PERMISSIVE"))
    plaintext = roles.call(roles.naked)
    assert plaintext.ok and plaintext.xfcc is None, f"plaintext gRPC under PERMISSIVE: {plaintext}"
    mtls = roles.call(roles.caller)
    assert mtls.ok, f"mTLS gRPC through the waypoint under PERMISSIVE: {mtls}"
    assert mtls.xfcc is None, (
        f"the waypoint writes no X-Forwarded-Client-Cert, the server saw {mtls}"
    )
    allow_at_server(apply_policy, roles, roles.waypoint_principal)
    mtls = roles.call(roles.caller)
    assert mtls.ok, (
        f"mTLS gRPC under PERMISSIVE did not arrive with the waypoint's identity: the server's"
        f" ztunnel refused it under ALLOW {roles.waypoint_principal}: {mtls}"
    )
    plaintext = roles.call(roles.naked)
    assert closed_by_ztunnel(plaintext), (
        f"plaintext gRPC under PERMISSIVE got past an ALLOW of principal"
        f" {roles.waypoint_principal}, which needs mTLS: {plaintext}"
    )


def test_grpc_waypoint_judges_the_callers_identity(
    apply_policy: PolicyApplier, roles: Roles
) -> None:
    """The waypoint judges the caller's own identity (a targetRefs ALLOW of exactly its
    principal admits it, one naming another principal denies it); the server sees no XFCC, not
    even one the caller wrote, and its ztunnel sees the waypoint, not the caller."""
    seen = roles.call(
        roles.caller, metadata={"x-suite": "grpc", "x-forwarded-client-cert": FORGED_XFCC}
    )
    assert seen.ok and seen.metadata("x-suite") == ("grpc",), seen
    assert seen.xfcc is None, (
        f"the waypoint passed an X-Forwarded-Client-Cert on (it sanitizes XFCC): {seen}"
    )
    principal = roles.principal(roles.caller)
    for allowed, admitted in ((principal, True), (f"{principal}-someone-else", False)):
        allow_at_waypoint(apply_policy, roles, allowed)
        result = roles.call(roles.caller)
        if admitted:
            assert result.ok, f"the waypoint refused {roles.caller} under ALLOW {allowed}: {result}"
        else:
            assert denied_by_waypoint(result), (
                f"the waypoint let {roles.caller} in under ALLOW {allowed}, so it did not judge"
                f" the caller's own identity {roles.caller.spiffe_id}: {result}"
            )
    allow_at_waypoint(apply_policy, roles, principal)
    allow_at_server(apply_policy, roles, principal)
    result = roles.call(roles.caller)
    assert result.status == "UNAVAILABLE", (
        f"the server's ztunnel admitted the call under an L4 ALLOW of the caller's principal"
        f" {principal}: it should see the waypoint's identity {roles.waypoint_principal}, not"
        f" the caller's: {result}"
    )


def test_grpc_authorization_by_principal_at_the_waypoint(
    apply_policy: PolicyApplier, roles: Roles
) -> None:
    """A targetRefs ALLOW (bound to the Service) of one caller's principal, then a DENY of the
    other's bound to the waypoint's Gateway: the other caller gets PERMISSION_DENIED from the
    waypoint, the allowed one OK; the plaintext client bypasses the waypoint and is not judged."""
    allow_at_waypoint(apply_policy, roles, roles.principal(roles.caller))
    denied = roles.call(roles.other)
    assert denied_by_waypoint(denied), f"{roles.other} was not denied: {denied}"
    allowed = roles.call(roles.caller)
    assert allowed.ok, f"the allowed caller was refused: {allowed}"
    bypass = roles.call(roles.naked)
    assert bypass.ok, (
        f"a plaintext client's call passes by the waypoint, whose policy cannot judge it: {bypass}"
    )
    apply_policy(
        authorization_policy(
            "grpc-deny-other",
            roles.waypoint_namespace,
            "DENY",
            [{"from": [{"source": {"principals": [roles.principal(roles.other)]}}]}],
            target_refs=[{"kind": "Gateway", "group": GATEWAY_GROUP, "name": roles.waypoint}],
        )
    )
    # the Service-bound ALLOW now admits both callers: only the DENY keeps the other one out
    allow_at_waypoint(
        apply_policy, roles, roles.principal(roles.caller), roles.principal(roles.other)
    )
    denied = roles.call(roles.other)
    assert denied_by_waypoint(denied), (
        f"{roles.other} was not denied by the DENY bound to the waypoint's Gateway: {denied}"
    )
    allowed = roles.call(roles.caller)
    assert allowed.ok, f"the caller the Gateway DENY does not name was refused: {allowed}"
