"""What istiod emits into a sidecar's Envoy: names, type URLs, ALPNs, chain and TLS shapes (pure).

One definition for both directions: the local mesh renders its sidecars' config from these
(``backends/local/xds.py``) and the kube backend reads real sidecars' ``/config_dump`` back
against them (``backends/kube/envoystate.py``, ``backends/kube/authzstate.py``,
``istio/sidecar_dump.py``). Each name cites
where istio/istio writes it; docs/istio-model.md lists them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from pytest_meshconform.istio.api import MtlsMode, TlsMode
from pytest_meshconform.istio.protocol import ListenerProtocol, PortProtocol

__all__ = [
    "CLUSTER_TYPE",
    "CONNECT_TERMINATE",
    "DOWNSTREAM_TLS_TYPE",
    "FILE_ACCESS_LOG_TYPE",
    "GRPC_WEB_TYPE",
    "HBONE_MATCH",
    "HCM_TYPE",
    "HTTP_INSPECTOR_TYPE",
    "HTTP_PROTOCOL_OPTIONS",
    "HTTP_PROTOCOL_OPTIONS_TYPE",
    "HTTP_RBAC_TYPE",
    "INBOUND_CAPTURE_PORT",
    "INBOUND_PASSTHROUGH_BIND",
    "INBOUND_PASSTHROUGH_CLUSTER",
    "INBOUND_SERVER_ALPNS",
    "INTERNAL_UPSTREAM_TYPE",
    "ISTIO_MTLS_ALPNS",
    "LISTENER_TYPE",
    "MESH_CONNECT_TIMEOUT",
    "MTLS_HTTP_ALPNS",
    "MTLS_TCP_WITH_MXC_ALPNS",
    "NETWORK_RBAC_TYPE",
    "ORIGINAL_DST_TYPE",
    "OUTBOUND_CAPTURE_PORT",
    "PASSTHROUGH_CLUSTER",
    "PLAINTEXT_HTTP_ALPNS",
    "PROTOCOL_DETECTION_TIMEOUT",
    "RAW_BUFFER",
    "ROOT_SECRET",
    "ROUTER_TYPE",
    "TCP_PROXY_TYPE",
    "TLS",
    "TLS_INSPECTOR_TYPE",
    "UPSTREAM_TLS_TYPE",
    "VIRTUAL_INBOUND",
    "VIRTUAL_INBOUND_BLACKHOLE",
    "VIRTUAL_OUTBOUND",
    "WORKLOAD_SECRET",
    "ChainShape",
    "FilterChainOption",
    "UpstreamHttp",
    "UpstreamTlsShape",
    "UpstreamTransport",
    "auto_mtls_transport",
    "cluster_http_protocol_options",
    "filter_chain_match_options",
    "grpc_web_filters",
    "inbound_chain_shapes",
    "inbound_cluster_name",
    "inbound_hcm_http2_options",
    "inbound_mode",
    "needs_http_inspector",
    "outbound_chain_options",
    "outbound_cluster_name",
    "upstream_http",
    "upstream_tls_shape",
]

# --- type URLs of the resources and extensions istiod sends (Envoy's v3 API names) -------------

LISTENER_TYPE: Final = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER_TYPE: Final = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
HCM_TYPE: Final = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
TCP_PROXY_TYPE: Final = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER_TYPE: Final = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
DOWNSTREAM_TLS_TYPE: Final = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
UPSTREAM_TLS_TYPE: Final = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
)
# cluster_tls.go ``hboneTransportSocket``: the socket that carries a connection over HBONE
INTERNAL_UPSTREAM_TYPE: Final = (
    "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3"
    ".InternalUpstreamTransport"
)
# the key of a cluster's typed_extension_protocol_options, and the message's type URL
HTTP_PROTOCOL_OPTIONS: Final = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_PROTOCOL_OPTIONS_TYPE: Final = f"type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}"
FILE_ACCESS_LOG_TYPE: Final = (
    "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
)
ORIGINAL_DST_TYPE: Final = (
    "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
)
TLS_INSPECTOR_TYPE: Final = (
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
)
# xdsfilters.HTTPInspector (pilot/pkg/xds/filters/filters.go): sets the connection's
# application protocol to ``http/1.1`` or ``h2c`` when its first bytes are plaintext HTTP
HTTP_INSPECTOR_TYPE: Final = (
    "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
)
# the RBAC filters of istiod's authz builder (pilot/pkg/security/authz/builder/builder.go),
# which istio/authorization.py reproduces
HTTP_RBAC_TYPE: Final = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
# xdsfilters.GrpcWeb (pilot/pkg/xds/filters/filters.go): translates gRPC-Web requests to gRPC
GRPC_WEB_TYPE: Final = "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"
NETWORK_RBAC_TYPE: Final = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"


# --- HTTP/2: the codec istiod asks for on HTTP2, GRPC and GRPC-Web ports -----------------------


def inbound_hcm_http2_options(protocol: PortProtocol) -> dict[str, Any] | None:
    """The inbound HTTP connection manager's ``http2_protocol_options`` for a port of
    ``protocol``: ``buildSidecarInboundHTTPOpts`` (pilot/pkg/networking/core/
    listener_inbound.go) sets an empty ``Http2ProtocolOptions`` when ``Protocol.IsHTTP2()``;
    None (nothing set) otherwise. The codec stays ``AUTO`` (``buildHTTPConnectionManager``,
    listener_builder.go) either way; the outbound manager gets no such options."""
    return {} if protocol.is_http2 else None


def cluster_http_protocol_options(
    protocol: PortProtocol, max_requests_per_connection: int | None = None
) -> dict[str, Any] | None:
    """A cluster's ``typed_extension_protocol_options`` for a port of ``protocol`` (inbound
    and outbound alike): ``setUpstreamProtocol`` (pilot/pkg/networking/core/cluster_builder.go)
    calls ``setH2Options`` when ``Protocol.IsHTTP2()``, an ``HttpProtocolOptions`` whose
    ``explicit_http_config`` is the empty ``http2ProtocolOptions()``, so the cluster speaks
    HTTP/2 upstream; on a sniffed port (``IsUnsupported``) ``setUseDownstreamProtocol``, a
    ``use_downstream_protocol_config`` with empty HTTP/1.1 and HTTP/2 options (the upstream
    speaks what the client spoke); a DestinationRule's ``maxRequestsPerConnection`` goes in
    ``common_http_protocol_options`` (``applyConnectionPool``) on an HTTP or sniffed port.
    None: Envoy's default, HTTP/1.1 upstream."""
    if protocol.sniffed:
        # ``setUseDownstreamProtocol``: a sidecar's cluster of an auto-detected port speaks
        # upstream whatever HTTP version the sniffed downstream spoke (HTTP/1.1 or HTTP/2)
        options: dict[str, Any] = {"@type": HTTP_PROTOCOL_OPTIONS_TYPE}
        if max_requests_per_connection is not None:
            options["common_http_protocol_options"] = {
                "max_requests_per_connection": max_requests_per_connection
            }
        options["use_downstream_protocol_config"] = {
            "http_protocol_options": {},
            "http2_protocol_options": {},
        }
        return {HTTP_PROTOCOL_OPTIONS: options}
    if not protocol.is_http or (max_requests_per_connection is None and not protocol.is_http2):
        return None
    options = {"@type": HTTP_PROTOCOL_OPTIONS_TYPE}
    if max_requests_per_connection is not None:
        options["common_http_protocol_options"] = {
            "max_requests_per_connection": max_requests_per_connection
        }
    codec = "http2_protocol_options" if protocol.is_http2 else "http_protocol_options"
    options["explicit_http_config"] = {codec: {}}
    return {HTTP_PROTOCOL_OPTIONS: options}


def grpc_web_filters(protocol: PortProtocol) -> tuple[dict[str, Any], ...]:
    """The HTTP filters istiod adds for ``protocol`` after the RBAC filters, inbound and
    outbound alike: ``buildHTTPConnectionManager`` (listener_builder.go) appends
    ``xdsfilters.GrpcWeb`` when the listener's protocol is GRPC-Web, so a gRPC-Web request
    (HTTP/1.1 or 2, ``application/grpc-web*``) is turned into gRPC there and its answer back;
    nothing for other protocols."""
    if protocol is not PortProtocol.GRPC_WEB:
        return ()
    return ({"name": "envoy.filters.http.grpc_web", "typed_config": {"@type": GRPC_WEB_TYPE}},)


class UpstreamHttp(StrEnum):
    """The HTTP version a cluster speaks upstream, as its ``HttpProtocolOptions`` say."""

    HTTP2 = "HTTP/2"  # explicit_http_config.http2_protocol_options
    DOWNSTREAM = "the client's HTTP version"  # use_downstream_protocol_config
    HTTP1 = "HTTP/1.1"  # Envoy's default, or explicit http_protocol_options


def upstream_http(protocol: PortProtocol) -> UpstreamHttp | None:
    """What :func:`cluster_http_protocol_options` makes a cluster of a ``protocol`` port speak
    (``setUpstreamProtocol``): HTTP/2 for ``IsHTTP2``, the client's version on a sniffed port,
    HTTP/1.1 on other HTTP ports; None for the TCP family (no HTTP at all)."""
    if protocol.is_http2:
        return UpstreamHttp.HTTP2
    if protocol.sniffed:
        return UpstreamHttp.DOWNSTREAM
    return UpstreamHttp.HTTP1 if protocol.is_http else None


# --- ports and addresses ----------------------------------------------------------------------

# Where istio-iptables redirects a sidecar pod's TCP (tools/istio-iptables/pkg/capture/run.go:
# ``--envoy-port`` 15001 outbound, ``--inbound-capture-port`` 15006 inbound) and where istiod
# puts virtualOutbound and virtualInbound (pilot/pkg/networking/core/listener.go)
OUTBOUND_CAPTURE_PORT: Final = 15001
INBOUND_CAPTURE_PORT: Final = 15006
# ``InboundPassthroughBindIpv4`` (pilot/pkg/networking/util/util.go): the source address of the
# inbound clusters' connections to the app, which istio-iptables lets through unredirected
INBOUND_PASSTHROUGH_BIND: Final = "127.0.0.6"

# --- names --------------------------------------------------------------------------------------

# pilot/pkg/model: VirtualInboundListenerName, VirtualOutboundListenerName (listener_inbound.go,
# listener.go): the listeners on 15006 and 15001 that iptables sends connections to
VIRTUAL_INBOUND: Final = "virtualInbound"
VIRTUAL_OUTBOUND: Final = "virtualOutbound"
# pilot/pkg/model: VirtualInboundBlackholeFilterChainName; the chain for traffic sent to 15006
# itself (listener_inbound.go, ``buildInboundBlackhole``): no port of the workload
VIRTUAL_INBOUND_BLACKHOLE: Final = "virtualInbound-blackhole"
# pilot/pkg/networking/util/util.go: PassthroughCluster, InboundPassthroughCluster (the
# ORIGINAL_DST clusters of connections no Service or port claims)
PASSTHROUGH_CLUSTER: Final = "PassthroughCluster"
INBOUND_PASSTHROUGH_CLUSTER: Final = "InboundPassthroughCluster"
# cluster_tls.go ``hboneTransportSocket``: the transport socket match for tunnel: http endpoints
HBONE_MATCH: Final = "hbone"
# listener_inbound.go ``buildInboundHBONEListeners`` (only when model.Proxy
# ``EnableHBONEListen``: proxy metadata ENABLE_HBONE and PILOT_ENABLE_SIDECAR_LISTENING_HBONE):
# the HBONE terminating listener on port 15008
CONNECT_TERMINATE: Final = "connect_terminate"
# The SDS resource names of the workload certificate and the mesh roots
# (pilot/pkg/security/model: SDSDefaultResourceName, SDSRootResourceName).
WORKLOAD_SECRET: Final = "default"
ROOT_SECRET: Final = "ROOTCA"


def outbound_cluster_name(fqdn: str, port: int) -> str:
    """Istio's outbound cluster name: ``BuildSubsetKey`` (pilot/pkg/model/service.go), no
    subset."""
    return f"outbound|{port}||{fqdn}"


def inbound_cluster_name(port: int) -> str:
    """Istio's inbound cluster name for a container port: ``BuildInboundSubsetKey``
    (pilot/pkg/model/service.go), ``inbound|<port>||``."""
    return f"inbound|{port}||"


# --- ALPNs --------------------------------------------------------------------------------------

# `allIstioMtlsALPNs` (pilot/pkg/networking/core/filterchain_options.go; listener.go before
# 1.10): the ALPNs an inbound chain takes as Istio mTLS under PERMISSIVE. A ClientHello with
# none of them falls to the raw_buffer chain.
ISTIO_MTLS_ALPNS: Final = (
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
)
# What the server side of sidecar mTLS offers on an HTTP chain: ``BuildInboundTLS``
# (pilot/pkg/security/authn/utils/utils.go) sets the DownstreamTlsContext's ALPN to
# ``util.ALPNHttp`` (TCP chains: ``ALPNDownstreamWithMxc``, "istio-peer-exchange" first), as
# the 1.22.3 dump in docs/kube-reader.md shows.
INBOUND_SERVER_ALPNS: Final = ("h2", "http/1.1")


# --- inbound chain shapes per PeerAuthentication mode -------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainShape:
    """One inbound filter chain as far as its mTLS mode shows in it."""

    transport_protocol: str  # filter_chain_match.transport_protocol: "tls", "raw_buffer", ""
    terminates_tls: bool  # has a DownstreamTlsContext
    requires_client_cert: bool  # ... with require_client_certificate: true (mTLS)
    application_protocols: tuple[str, ...] = ()

    @property
    def is_plaintext(self) -> bool:
        return not self.terminates_tls and self.transport_protocol in ("raw_buffer", "")


def inbound_chain_shapes(mode: MtlsMode) -> tuple[ChainShape, ...]:
    """The chains of one inbound port under ``mode`` (never UNSET), in the smallest form
    istiod's ``getFilterChainMatchOptions`` (filterchain_options.go) takes: STRICT one ``tls``
    chain terminating mTLS; PERMISSIVE that chain matching :data:`ISTIO_MTLS_ALPNS` and a
    ``raw_buffer`` (plaintext) chain; DISABLE one plaintext chain. istiod splits them further
    by protocol (five chains for an auto-detected port); :func:`inbound_mode` reads all
    forms."""
    mtls = ChainShape("tls", terminates_tls=True, requires_client_cert=True)
    if mode is MtlsMode.STRICT:
        return (mtls,)
    if mode is MtlsMode.DISABLE:
        return (ChainShape("", terminates_tls=False, requires_client_cert=False),)
    return (
        ChainShape("tls", True, True, ISTIO_MTLS_ALPNS),
        ChainShape("raw_buffer", terminates_tls=False, requires_client_cert=False),
    )


def inbound_mode(chains: Sequence[ChainShape]) -> MtlsMode | None:
    """The mode a port's chains implement, as ``getFilterChainMatchOptions`` renders each:
    STRICT only ``tls`` chains, some terminating mTLS (a TLS passthrough chain without a TLS
    context may sit beside them); PERMISSIVE mTLS and plaintext chains; DISABLE plaintext
    chains only. None for any other shape."""
    mtls = [c for c in chains if c.requires_client_cert]
    plain = [c for c in chains if c.is_plaintext]
    if mtls and not plain and all(c.transport_protocol == "tls" for c in chains):
        return MtlsMode.STRICT
    if mtls and plain:
        return MtlsMode.PERMISSIVE
    if plain and not mtls:
        return MtlsMode.DISABLE
    return None


# --- protocol sniffing: the chains of every listener protocol, per mode ------------------------

# ``xdsfilters.TLSTransportProtocol`` / ``RawBufferTransportProtocol`` (pilot/pkg/xds/filters):
# the transport protocol a chain matches, as Envoy's tls_inspector sets it (``raw_buffer`` when
# no listener filter saw TLS)
TLS: Final = "tls"
RAW_BUFFER: Final = "raw_buffer"
# listener.go: ``plaintextHTTPALPNs`` (the application protocols the http_inspector sets for
# plaintext HTTP/1.1 and HTTP/2 prior knowledge; ``http/1.0`` only with PILOT_HTTP10),
# ``mtlsHTTPALPNs`` (what a client sidecar's ``istio.alpn`` filter offers once it detected HTTP)
# and ``mtlsTCPWithMxcALPNs`` (its TCP proxy's cluster ALPN)
PLAINTEXT_HTTP_ALPNS: Final = ("http/1.1", "h2c")
MTLS_HTTP_ALPNS: Final = ("istio-http/1.0", "istio-http/1.1", "istio-h2")
MTLS_TCP_WITH_MXC_ALPNS: Final = ("istio-peer-exchange", "istio")
# MeshConfig ``protocolDetectionTimeout``: ``DefaultMeshConfig`` (pkg/config/mesh/mesh.go) sets
# 0s, which the inbound listener (``buildInboundListener``) and every outbound listener with an
# http_inspector (``buildListenerFromEntry``) take as ``listener_filters_timeout``: Envoy waits
# for the client's first bytes with no time limit ("0 disables the timeout").
PROTOCOL_DETECTION_TIMEOUT: Final = "0s"
# MeshConfig ``connectTimeout``: ``DefaultMeshConfig`` (pkg/config/mesh/mesh.go) sets 10 s, which
# istiod gives every cluster it builds: a Service's (``applyDefaultConnectionPool``,
# cluster_traffic_policy.go; a DestinationRule's ``connectionPool.tcp.connectTimeout`` replaces
# it), the passthrough and blackhole clusters (cluster_builder.go) and the HBONE ones
# (``buildConnectOriginate``, cluster_waypoint.go).
MESH_CONNECT_TIMEOUT: Final = "10s"


@dataclass(frozen=True, slots=True)
class FilterChainOption:
    """``FilterChainMatchOptions`` (pilot/pkg/networking/core/filterchain_options.go): one
    inbound filter chain, its match, the filters it ends in (HTTP connection manager or TCP
    proxy) and whether it terminates mTLS."""

    protocol: ListenerProtocol  # HTTP or TCP: the chain's filters
    transport_protocol: str
    application_protocols: tuple[str, ...] = ()
    tls: bool = False

    @property
    def shape(self) -> ChainShape:
        return ChainShape(self.transport_protocol, self.tls, self.tls, self.application_protocols)

    def match(self, port: int | None) -> dict[str, Any]:
        """The chain's ``filter_chain_match`` (``inboundChainConfig.ToFilterChainMatch``)."""
        match: dict[str, Any] = {} if port is None else {"destination_port": port}
        if self.transport_protocol:
            match["transport_protocol"] = self.transport_protocol
        if self.application_protocols:
            match["application_protocols"] = list(self.application_protocols)
        return match


_H, _T = ListenerProtocol.HTTP, ListenerProtocol.TCP
_CHAIN_OPTIONS: Final[dict[tuple[ListenerProtocol, MtlsMode], tuple[FilterChainOption, ...]]] = {
    # inboundStrictHTTPFilterChainMatchOptions, ...Permissive...WithMxcOptions, ...PlainText...
    (_H, MtlsMode.STRICT): (FilterChainOption(_H, TLS, tls=True),),
    (_H, MtlsMode.PERMISSIVE): (
        FilterChainOption(_H, TLS, ISTIO_MTLS_ALPNS, tls=True),
        FilterChainOption(_H, RAW_BUFFER),
    ),
    (_H, MtlsMode.DISABLE): (FilterChainOption(_H, RAW_BUFFER),),
    (_T, MtlsMode.STRICT): (FilterChainOption(_T, TLS, tls=True),),
    (_T, MtlsMode.PERMISSIVE): (
        FilterChainOption(_T, TLS, ISTIO_MTLS_ALPNS, tls=True),
        FilterChainOption(_T, TLS),  # plain TLS from the app itself, passed through
        FilterChainOption(_T, RAW_BUFFER),
    ),
    (_T, MtlsMode.DISABLE): (FilterChainOption(_T, RAW_BUFFER),),
    # inboundStrictFilterChainMatchOptions: HTTP a client sidecar detected, or TCP, over mTLS
    (ListenerProtocol.AUTO, MtlsMode.STRICT): (
        FilterChainOption(_H, TLS, MTLS_HTTP_ALPNS, tls=True),
        FilterChainOption(_T, TLS, tls=True),
    ),
    # inboundPermissiveFilterChainMatchWithMxcOptions: the five chains of an auto port
    (ListenerProtocol.AUTO, MtlsMode.PERMISSIVE): (
        FilterChainOption(_H, TLS, MTLS_HTTP_ALPNS, tls=True),
        FilterChainOption(_H, RAW_BUFFER, PLAINTEXT_HTTP_ALPNS),
        FilterChainOption(_T, TLS, MTLS_TCP_WITH_MXC_ALPNS, tls=True),
        FilterChainOption(_T, RAW_BUFFER),
        FilterChainOption(_T, TLS),
    ),
    # inboundPlainTextFilterChainMatchOptions
    (ListenerProtocol.AUTO, MtlsMode.DISABLE): (
        FilterChainOption(_H, RAW_BUFFER, PLAINTEXT_HTTP_ALPNS),
        FilterChainOption(_T, RAW_BUFFER),
    ),
}


def filter_chain_match_options(
    mode: MtlsMode, protocol: ListenerProtocol
) -> tuple[FilterChainOption, ...]:
    """``getFilterChainMatchOptions`` (filterchain_options.go): the inbound chains istiod
    builds for one port of ``protocol`` under ``mode`` (never UNSET). An auto-detected port
    gets HTTP and TCP chains side by side, told apart by the ALPN a client sidecar offered
    (``istio-http/*``, ``istio-h2`` after it detected HTTP; ``istio-peer-exchange, istio``
    from its TCP proxy) or, in plaintext, by what the http_inspector saw
    (:data:`PLAINTEXT_HTTP_ALPNS`)."""
    if mode is MtlsMode.UNSET:
        raise ValueError("UNSET is resolved before chains are built")
    return _CHAIN_OPTIONS[(protocol, mode)]


def outbound_chain_options(protocol: ListenerProtocol) -> tuple[FilterChainOption, ...]:
    """The chains of a sidecar's outbound listener for a Service port of ``protocol``
    (``buildSidecarOutboundListener``, pilot/pkg/networking/core/listener.go): one HTTP or
    one TCP chain without a match; for an auto-detected port the TCP chain (moved to the
    listener's ``default_filter_chain`` by ``buildListenerFromEntry``) and an HTTP chain
    matching ``raw_buffer`` and :data:`PLAINTEXT_HTTP_ALPNS`, which the http_inspector sets."""
    if protocol is ListenerProtocol.AUTO:
        return (FilterChainOption(_T, ""), FilterChainOption(_H, RAW_BUFFER, PLAINTEXT_HTTP_ALPNS))
    return (FilterChainOption(protocol, ""),)


def needs_http_inspector(application_protocols: Sequence[str]) -> bool:
    """Whether a chain matching ``application_protocols`` needs Envoy's http_inspector
    (``populateListenerFilters``, listener_inbound.go: an ``http/1.1`` or ``h2c`` match; the
    outbound ``buildListenerFromEntry`` likewise for any chain with application protocols)."""
    return any(alpn in PLAINTEXT_HTTP_ALPNS for alpn in application_protocols)


# --- outbound TLS per DestinationRule mode ------------------------------------------------------


class UpstreamTransport(StrEnum):
    """How an outbound cluster talks to its endpoints."""

    PLAINTEXT = "plaintext"  # no transport socket, or raw_buffer only
    TLS = "TLS"  # an UpstreamTlsContext for every endpoint
    AUTO = "auto mTLS"  # per endpoint: TLS for tlsMode=istio, plaintext otherwise
    OTHER = "other"  # a transport socket no shape here describes


@dataclass(frozen=True, slots=True)
class UpstreamTlsShape:
    """One outbound cluster's transport as far as its DestinationRule TLS mode shows in it:
    the SDS secrets istiod names for the client certificate and the roots, or the rule's own
    files (``client_certificate``, ``private_key``, ``ca_certificates``)."""

    transport: UpstreamTransport
    certificate_secrets: tuple[str, ...] = ()  # tls_certificate_sds_secret_configs names
    validation_secret: str | None = None  # combined_validation_context's SDS secret
    rule_files: bool = False  # certificate, key and CA come from the DestinationRule
    identities_are_uris: bool = False  # the expected SANs are SPIFFE identities

    def san_type(self, san: str) -> str:
        """Envoy's ``SubjectAltNameMatcher.san_type`` for one expected SAN. istiod writes
        untyped exact matchers (``util.StringToExactMatch``); the type follows how Istio
        puts names in a certificate (security/pkg/pki/util/san.go,
        ``BuildSubjectAltNameExtension``): a URI for an identity, a DNS name otherwise."""
        return "URI" if self.identities_are_uris or "://" in san else "DNS"

    def implemented_by(
        self,
        transport: UpstreamTransport,
        certificate_secrets: Sequence[str] = (),
        validation_secret: str | None = None,
    ) -> bool:
        """Whether a cluster read from a config dump has this shape: the same transport and,
        where istiod names SDS secrets, those secrets."""
        return (
            transport is self.transport
            and set(self.certificate_secrets) <= set(certificate_secrets)
            and (self.validation_secret is None or validation_secret == self.validation_secret)
        )

    def describe(self) -> str:
        if self.validation_secret is not None:
            secrets = "/".join(self.certificate_secrets)
            return f"{self.transport.value} with SDS {secrets}, root {self.validation_secret}"
        return self.transport.value


def upstream_tls_shape(mode: TlsMode | None) -> UpstreamTlsShape:
    """The cluster transport for a DestinationRule TLS mode (None: no TLS chosen), as
    ``buildUpstreamClusterTLSContext`` (pilot/pkg/networking/core/cluster_tls.go) builds it:
    DISABLE no transport socket; ISTIO_MUTUAL an UpstreamTlsContext with the SDS secrets
    :data:`WORKLOAD_SECRET` and :data:`ROOT_SECRET` and the rule's SANs as identities;
    SIMPLE/MUTUAL (``constructUpstreamTLS``) the rule's CA (and, MUTUAL, client certificate
    and key) files with its SANs."""
    if mode is None or mode is TlsMode.DISABLE:
        return UpstreamTlsShape(UpstreamTransport.PLAINTEXT)
    if mode is TlsMode.ISTIO_MUTUAL:
        return UpstreamTlsShape(
            UpstreamTransport.TLS, (WORKLOAD_SECRET,), ROOT_SECRET, identities_are_uris=True
        )
    return UpstreamTlsShape(UpstreamTransport.TLS, rule_files=True)


def auto_mtls_transport(mode: TlsMode | None) -> UpstreamTransport:
    """The cluster auto mTLS gives (``applyUpstreamTLSSettings``, cluster_tls.go): per-endpoint
    ``transport_socket_matches`` (``tlsMode-istio``, ``tlsMode-disabled``) when it chose
    ISTIO_MUTUAL, no transport socket when it chose no TLS."""
    return UpstreamTransport.PLAINTEXT if mode is None else UpstreamTransport.AUTO
