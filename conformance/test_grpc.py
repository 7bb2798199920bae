"""gRPC: STRICT, PERMISSIVE, identity and authorization by principal, from what a gRPC server
saw (issue 25).

Runs where the mesh serves gRPC (feature `grpc`: a Service port Istio selects as GRPC whose pod
serves the grpc-echo app, which answers with the request metadata it saw; the local mesh with
such a port in its topology, as examples/catalog/topology.yaml). The roles come from the mesh
itself: the server is the endpoint (with a sidecar) of the first gRPC Service port, the clients
two sidecar workloads of other service accounts and one workload without a data plane.
Expectations, each from Istio's docs or Envoy:

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
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pytest_meshconform import (
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
    caller: WorkloadHandle  # a sidecar client
    other: WorkloadHandle  # a sidecar client of another identity
    naked: WorkloadHandle  # a client without a data plane: plaintext


@pytest.fixture
def roles(mesh: Mesh, mesh_service_ports: ServicePortLister, workload: WorkloadLookup) -> Roles:
    grpc = [p for p in mesh_service_ports() if p.protocol == "GRPC" and p.endpoint.has_sidecar]
    if not grpc:
        pytest.skip("no gRPC Service port with a sidecar endpoint in this mesh")
    port = grpc[0]
    server = workload(port.endpoint.name, port.namespace)
    handles = [workload(w.name, mesh.logical_namespace(w.namespace)) for w in mesh.workloads()]
    sidecars = [h for h in handles if h.dataplane == "sidecar" and h.key != server.key]
    identities = {h.spiffe_id: h for h in sidecars if h.spiffe_id != server.spiffe_id}
    naked = [h for h in handles if h.dataplane == "none"]
    if len(identities) < 2 or not naked:
        pytest.skip(
            "the gRPC rows need two sidecar clients of different service accounts and one"
            f" client without a data plane; this mesh has {sorted(identities)} and"
            f" {[h.key for h in naked]}"
        )
    caller, other = list(identities.values())[:2]
    return Roles(server, port.service.port, caller, other, naked[0])


def test_strict_resets_plaintext_grpc(apply_policy: PolicyApplier, roles: Roles) -> None:
    """STRICT: a plaintext gRPC call is reset (UNAVAILABLE); a sidecar client's call is OK."""
    apply_policy(peer_authentication("default", roles.server.namespace, mode="STRICT"))
    plaintext = roles.naked.grpc(roles.server, port=roles.port)
    assert plaintext.reset and plaintext.status == "UNAVAILABLE", (
        f"plaintext gRPC was not refused by STRICT: {plaintext}"
    )
    mtls = roles.caller.grpc(roles.server, port=roles.port)
    assert mtls.ok, f"the sidecar client's gRPC call failed under STRICT: {mtls}"


def test_permissive_accepts_plaintext_and_mtls_grpc(
    apply_policy: PolicyApplier, roles: Roles
) -> None:
    """PERMISSIVE: both calls are answered; only the mTLS one carries the caller's identity."""
    apply_policy(peer_authentication("default", roles.server.namespace, mode="PERMISSIVE"))
    plaintext = roles.naked.grpc(roles.server, port=roles.port)
    assert plaintext.ok and plaintext.xfcc is None, f"plaintext gRPC under PERMISSIVE: {plaintext}"
    mtls = roles.caller.grpc(roles.server, port=roles.port)
    assert mtls.ok, f"mTLS gRPC under PERMISSIVE: {mtls}"
    assert mtls.xfcc is not None, f"mTLS gRPC arrived without X-Forwarded-Client-Cert: {mtls}"


def test_grpc_server_sees_the_callers_identity(roles: Roles) -> None:
    """The metadata the gRPC server saw: the caller's SPIFFE ID in x-forwarded-client-cert,
    and the caller's own metadata beside it."""
    seen = roles.caller.grpc(roles.server, port=roles.port, metadata={"x-suite": "grpc"})
    assert seen.ok and seen.metadata("x-suite") == ("grpc",), seen
    assert seen.xfcc is not None, f"expected one XFCC element, got None: {seen.server_metadata}"
    assert [e.spiffe_uri for e in seen.xfcc] == [roles.caller.spiffe_id], seen.server_metadata


def test_grpc_authorization_by_principal(apply_policy: PolicyApplier, roles: Roles) -> None:
    """An ALLOW policy naming one caller's principal: the other caller gets PERMISSION_DENIED."""
    principal = roles.caller.spiffe_id.removeprefix("spiffe://")
    apply_policy(
        authorization_policy(
            "grpc-caller-only",
            roles.server.namespace,
            rules=[{"from": [{"source": {"principals": [principal]}}]}],
        )
    )
    denied = roles.other.grpc(roles.server, port=roles.port)
    assert denied.status == "PERMISSION_DENIED" and denied.code == 7, (
        f"{roles.other} was not denied: {denied}"
    )
    assert denied.details == "RBAC: access denied", denied
    allowed = roles.caller.grpc(roles.server, port=roles.port)
    assert allowed.ok, f"the allowed caller was refused: {allowed}"
