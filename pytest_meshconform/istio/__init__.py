"""Istio's policy semantics, one pure model that both backends use.

Workloads, Services and the PeerAuthentications / DestinationRules in force go in
(:func:`plan_mesh`, :func:`plan_sidecar`); for every sidecar comes out the inbound mTLS mode per
container port and, per (Service, port), the outbound cluster: TLS mode or auto mTLS, SNI, SANs,
ALPN, ``maxRequestsPerConnection``. The local mesh renders Envoy config from it
(``pytest_meshconform.backends.local``); the kube backend checks each sidecar's ``/config_dump``
against it (``pytest_meshconform.backends.kube.envoystate``). AuthorizationPolicies go through
:func:`authorization_for`: the policies that apply to a workload and the Envoy RBAC filters
istiod's authz builder makes for its sidecar (``kube.authzstate`` checks real sidecars against
them). Every rule names the istiod function it reproduces; docs/istio-model.md lists them."""

from __future__ import annotations

from pytest_meshconform.istio.authorization import (
    Authorization,
    RbacFilter,
    authorization_for,
    authorization_policies_for,
    rbac_policy_name,
)
from pytest_meshconform.istio.destination_rule import (
    PortPolicy,
    client_tls_mode,
    client_tls_settings,
    destination_rule_for,
    max_requests_per_connection,
    port_traffic_policy,
)
from pytest_meshconform.istio.envoy import outbound_cluster_name
from pytest_meshconform.istio.peer_authentication import effective_mtls_mode, service_mtls_mode
from pytest_meshconform.istio.plan import (
    Sidecar,
    endpoints_of,
    inbound_protocols,
    plan_mesh,
    plan_sidecar,
)
from pytest_meshconform.istio.protocol import (
    WELL_KNOWN_TCP_PORTS,
    PortProtocol,
    parse_protocol,
    protocol_of,
    service_port_protocol,
)
from pytest_meshconform.istio.upstream import (
    ALPN_IN_MESH_WITH_MXC,
    ISTIO_MTLS_HTTP2_ALPN,
    ISTIO_MTLS_HTTP10_ALPN,
    ISTIO_MTLS_HTTP11_ALPN,
    Upstream,
    istio_mutual_alpn,
    istio_sni,
)

__all__ = [
    "ALPN_IN_MESH_WITH_MXC",
    "ISTIO_MTLS_HTTP2_ALPN",
    "ISTIO_MTLS_HTTP10_ALPN",
    "ISTIO_MTLS_HTTP11_ALPN",
    "WELL_KNOWN_TCP_PORTS",
    "Authorization",
    "PortPolicy",
    "PortProtocol",
    "RbacFilter",
    "Sidecar",
    "Upstream",
    "authorization_for",
    "authorization_policies_for",
    "client_tls_mode",
    "client_tls_settings",
    "destination_rule_for",
    "effective_mtls_mode",
    "endpoints_of",
    "inbound_protocols",
    "istio_mutual_alpn",
    "istio_sni",
    "max_requests_per_connection",
    "outbound_cluster_name",
    "parse_protocol",
    "plan_mesh",
    "plan_sidecar",
    "port_traffic_policy",
    "protocol_of",
    "rbac_policy_name",
    "service_mtls_mode",
    "service_port_protocol",
]
