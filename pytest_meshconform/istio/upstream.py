"""Client side: the outbound cluster istiod builds for one Service port, TLS and connection
pool, with auto mTLS (pure).

Each function names the istiod function it reproduces; docs/istio-model.md lists them all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from pytest_meshconform.istio.api import (
    ClientTls,
    DestinationRule,
    MtlsMode,
    Policy,
    TlsMode,
)
from pytest_meshconform.istio.destination_rule import (
    client_tls_settings,
    max_requests_per_connection,
)
from pytest_meshconform.istio.envoy import outbound_cluster_name
from pytest_meshconform.istio.peer_authentication import effective_mtls_mode, service_mtls_mode
from pytest_meshconform.istio.protocol import PortProtocol, protocol_of
from pytest_meshconform.mesh import Service, Workload

__all__ = [
    "ALPN_IN_MESH_WITH_MXC",
    "ISTIO_MTLS_HTTP2_ALPN",
    "ISTIO_MTLS_HTTP10_ALPN",
    "ISTIO_MTLS_HTTP11_ALPN",
    "Upstream",
    "istio_mutual_alpn",
    "istio_sni",
    "upstream",
]

# The ALPN a client sidecar's ClientHello carries for ISTIO_MUTUAL, by the request's HTTP
# version: ``mtlsHTTP10ALPN`` / ``mtlsHTTP11ALPN`` / ``mtlsHTTP2ALPN`` of
# pilot/pkg/xds/filters/filters.go, which the ``istio.alpn`` filter of the outbound HTTP
# connection manager puts on each upstream connection (it overrides the cluster's list).
ISTIO_MTLS_HTTP10_ALPN: Final = ("istio-http/1.0", "istio", "http/1.0")
ISTIO_MTLS_HTTP11_ALPN: Final = ("istio-http/1.1", "istio", "http/1.1")
ISTIO_MTLS_HTTP2_ALPN: Final = ("istio-h2", "istio", "h2")
# What the cluster's own UpstreamTlsContext lists for a non-HTTP/2 ISTIO_MUTUAL cluster with
# metadata exchange on (the default): ``ALPNInMeshWithMxc``, pilot/pkg/networking/util/util.go,
# chosen in ``buildUpstreamClusterTLSContext`` (pilot/pkg/networking/core/cluster_tls.go). It
# is what a config dump shows; TCP traffic (no HTTP filter to override it) carries it.
ALPN_IN_MESH_WITH_MXC: Final = ("istio-peer-exchange", "istio")


def istio_sni(fqdn: str, port: int) -> str:
    """The SNI of ISTIO_MUTUAL without ``tls.sni``: ``BuildDNSSrvSubsetKey`` (pilot/pkg/model/
    service.go) for the outbound direction and no subset, ``outbound_.<port>_._.<fqdn>``."""
    return f"outbound_.{port}_._.{fqdn}"


@dataclass(frozen=True, slots=True)
class Upstream:
    """How a client sidecar talks to one Service port: the outbound cluster's settings.

    ``mode`` is the cluster's TLS (``buildUpstreamTLSSettings``): a DestinationRule's mode, or
    what auto mTLS chose (``auto``, no TLS in any rule for the port): ISTIO_MUTUAL, decided
    per endpoint by Envoy (``transport_socket_matches`` ``tlsMode-istio`` / ``tlsMode-disabled``;
    ``plaintext_endpoints`` are the endpoints, by workload key, it reaches in plaintext), or
    None, no TLS at all (the Service's namespace DISABLEs mTLS).
    ``alpn`` is what the ClientHello carries for an HTTP/1.1 request. ``destination_rule`` is
    ``namespace/name`` of the rule applied, or None.
    """

    cluster: str
    mode: TlsMode | None
    auto: bool = False
    sni: str | None = None
    subject_alt_names: tuple[str, ...] = ()
    alpn: tuple[str, ...] = ()
    client_certificate: str | None = None
    private_key: str | None = None
    ca_certificates: str | None = None
    max_requests_per_connection: int | None = None
    plaintext_endpoints: frozenset[str] = field(default_factory=frozenset)
    destination_rule: str | None = None

    @property
    def originates_tls(self) -> bool:
        return self.mode is not None and self.mode is not TlsMode.DISABLE

    def towards(self, endpoint: str) -> Upstream:
        """What the sidecar does towards one endpoint (workload key): with auto mTLS, plaintext
        for the ``plaintext_endpoints`` (the ``tlsMode-disabled`` match)."""
        if self.mode is not None and self.auto and endpoint in self.plaintext_endpoints:
            return replace(
                self,
                mode=None,
                sni=None,
                subject_alt_names=(),
                alpn=(),
                plaintext_endpoints=frozenset(),
            )
        return self


def istio_mutual_alpn(protocol: PortProtocol) -> tuple[str, ...]:
    """The ALPN an ISTIO_MUTUAL ClientHello carries on a port of ``protocol``: for HTTP ports
    the ``istio.alpn`` filter of the outbound HTTP connection manager overrides the cluster's
    list (:data:`ISTIO_MTLS_HTTP11_ALPN`; :data:`ISTIO_MTLS_HTTP2_ALPN` for HTTP/2 and gRPC
    ports, ``mtlsHTTP2ALPN``); a TCP proxy has no HTTP filter, so the cluster's own
    :data:`ALPN_IN_MESH_WITH_MXC` goes on the wire (``buildUpstreamClusterTLSContext``,
    pilot/pkg/networking/core/cluster_tls.go)."""
    if protocol in (PortProtocol.HTTP2, PortProtocol.GRPC, PortProtocol.GRPC_WEB):
        return ISTIO_MTLS_HTTP2_ALPN
    if protocol.is_http:
        return ISTIO_MTLS_HTTP11_ALPN
    return ALPN_IN_MESH_WITH_MXC


def _auto_plaintext(
    policies: Sequence[Policy], endpoint: Workload, target_port: int, root_namespace: str
) -> bool:
    """``mtlsChecker.computeForEndpoint`` (pilot/pkg/xds/endpoints/endpoint_builder.go): auto
    mTLS reaches an endpoint in plaintext when it has no sidecar (no ``tlsMode: istio``
    metadata) or when its own PeerAuthentication (workload and port level included,
    ``GetMutualTLSModeForPort`` of the endpoint's target port) is DISABLE."""
    if not endpoint.has_sidecar:
        return True
    mode = effective_mtls_mode(
        policies, endpoint.namespace, endpoint.labels, target_port, root_namespace
    )
    return mode is MtlsMode.DISABLE


def _headless_auto_mtls(
    common: Upstream,
    endpoints: tuple[Workload, ...],
    sni: str,
    sans: tuple[str, ...],
    alpn: tuple[str, ...],
) -> Upstream:
    """Auto mTLS towards a headless Service (``Resolution: Passthrough``): an ORIGINAL_DST
    cluster (``convertResolution``, pilot/pkg/networking/core/cluster.go) has no endpoint
    metadata to match, so ``applyUpstreamTLSSettings`` (cluster_tls.go) sets the mTLS
    transport socket on the whole cluster instead of the ``tlsMode-istio`` /
    ``tlsMode-disabled`` matches; ``BestEffortInferServiceMTLSMode`` (pilot/pkg/model/
    push_context.go) infers DISABLE, no TLS at all, when the Service has no endpoint or any
    endpoint without ``tlsMode: istio`` (no sidecar). Either way one choice for every endpoint:
    no endpoint's own PeerAuthentication (a port-level DISABLE) is looked at
    (istio/istio#39439)."""
    if not endpoints or any(not e.has_sidecar for e in endpoints):
        return replace(common, auto=True)
    return replace(
        common,
        mode=TlsMode.ISTIO_MUTUAL,
        auto=True,
        sni=sni,
        subject_alt_names=sans,
        alpn=alpn,
    )


def upstream(
    policies: Sequence[Policy],
    rule: DestinationRule | None,
    service: Service,
    endpoints: Iterable[Workload],
    *,
    root_namespace: str,
    trust_domain: str,
    auto_mtls: bool = True,
) -> Upstream:
    """The outbound cluster for ``service`` under ``rule`` (from
    :func:`..destination_rule.destination_rule_for`).

    ``buildUpstreamTLSSettings`` (pilot/pkg/networking/core/cluster_builder.go): DISABLE and
    SIMPLE are taken as written; MUTUAL as written (SNI and SANs only from the rule);
    ISTIO_MUTUAL with the rule's ``sni`` else :func:`istio_sni`, and its ``subjectAltNames``
    else the Service's SPIFFE identities. Without TLS in the rule (auto mTLS, on by default):
    nothing when ``BestEffortInferServiceMTLSMode`` (:func:`..peer_authentication.
    service_mtls_mode`) is DISABLE, else ISTIO_MUTUAL marked auto, with per-endpoint plaintext
    (:func:`_auto_plaintext`). ALPN: ``buildUpstreamClusterTLSContext`` (cluster_tls.go) and
    the ``istio.alpn`` override for ISTIO_MUTUAL on HTTP ports (:func:`istio_mutual_alpn`);
    SIMPLE and MUTUAL carry none for HTTP/1.1 (``AddALPNOverrideToMetadata`` turns the
    override off).
    ``auto_mtls`` False is MeshConfig ``enableAutoMtls: false``: no TLS without a rule's.
    A headless Service's auto mTLS is one choice for all its endpoints
    (:func:`_headless_auto_mtls`).
    """
    endpoints = tuple(endpoints)
    cluster = outbound_cluster_name(service.fqdn, service.port)
    sans = tuple(sorted({e.spiffe_id(trust_domain) for e in endpoints}))
    sni = istio_sni(service.fqdn, service.port)
    settings: ClientTls | None = client_tls_settings(rule, service.port)
    alpn = istio_mutual_alpn(protocol_of(service))
    common = Upstream(
        cluster=cluster,
        mode=None,
        max_requests_per_connection=max_requests_per_connection(rule, service.port),
        destination_rule=None if rule is None else f"{rule.namespace}/{rule.name}",
    )
    if settings is None and not auto_mtls:
        return common
    if settings is None:
        if service_mtls_mode(policies, service.namespace, root_namespace) is MtlsMode.DISABLE:
            return replace(common, auto=True)
        if service.headless:
            return _headless_auto_mtls(common, endpoints, sni, sans, alpn)
        plaintext = frozenset(
            e.key
            for e in endpoints
            if _auto_plaintext(policies, e, service.target_port, root_namespace)
        )
        return replace(
            common,
            mode=TlsMode.ISTIO_MUTUAL,
            auto=True,
            sni=sni,
            subject_alt_names=sans,
            alpn=alpn,
            plaintext_endpoints=plaintext,
        )
    if settings.mode is TlsMode.DISABLE:
        return replace(common, mode=TlsMode.DISABLE)
    if settings.mode is TlsMode.ISTIO_MUTUAL:
        return replace(
            common,
            mode=TlsMode.ISTIO_MUTUAL,
            sni=settings.sni or sni,
            subject_alt_names=tuple(settings.subject_alt_names) or sans,
            alpn=alpn,
        )
    return replace(
        common,
        mode=settings.mode,
        sni=settings.sni,
        subject_alt_names=tuple(settings.subject_alt_names),
        client_certificate=settings.client_certificate,
        private_key=settings.private_key,
        ca_certificates=settings.ca_certificates,
    )
