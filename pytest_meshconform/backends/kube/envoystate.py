"""What a sidecar's own Envoy config implements, and whether that is what the policies say. Pure.

The kube backend waits for a policy change by reading each sidecar's ``/config_dump`` (through
``pilot-agent request``) until it implements the state the Istio model
(:mod:`pytest_meshconform.istio`, which the local mesh renders from too) predicts: that works
on every Istio version, unlike istiod's config distribution tracking (removed in Istio 1.23,
istio/istio#51866), and it checks the proxy itself rather than istiod's bookkeeping.

Shapes, from istio/istio (the generated config) and Envoy's admin API (the JSON, snake_case):

- Inbound: the ``virtualInbound`` listener holds, per container port, filter chains whose
  ``filter_chain_match`` has ``destination_port`` (pilot/pkg/networking/core/listener_inbound.go,
  ``inboundChainConfig.ToFilterChainMatch``). Which chains exist follows the port's mTLS mode
  (pilot/pkg/networking/core/filterchain_options.go, ``getFilterChainMatchOptions``): STRICT
  gives only ``transport_protocol: tls`` chains that terminate mTLS; PERMISSIVE adds a
  ``raw_buffer`` (plaintext) chain next to the mTLS one; DISABLE gives only ``raw_buffer``
  chains. A chain terminates mTLS with a ``DownstreamTlsContext`` whose
  ``require_client_certificate`` is true (pilot/pkg/security/authn/utils/utils.go,
  ``BuildInboundTLS``; none for DISABLE).
- Outbound: the cluster ``outbound|<port>||<fqdn>`` carries the transport
  :func:`pytest_meshconform.istio.envoy.upstream_tls_shape` gives its DestinationRule's TLS
  mode, or with auto mTLS (no TLS in any rule) ``transport_socket_matches`` ``tlsMode-istio``
  (TLS) then ``tlsMode-disabled`` (raw buffer).
  ``connectionPool.http.maxRequestsPerConnection`` becomes
  ``common_http_protocol_options.max_requests_per_connection`` of the cluster's
  ``envoy.extensions.upstreams.http.v3.HttpProtocolOptions``
  (pilot/pkg/networking/core/cluster_traffic_policy.go).
- Real Envoys print more than that: sockets by name only (Istio <= 1.13), HBONE socket matches
  (ambient-profile istiod), the ``virtualInbound-blackhole`` chain. docs/kube-reader.md lists
  every shape read and the real dumps (tests/test_kube_real_dumps.py) that prove it; a part
  that cannot be read is kept, named, where it is, and blocks only what concerns it.

The JSON is read by :mod:`pytest_meshconform.evidence.config_dump` (generic Envoy); the names
istiod gives things come from :mod:`pytest_meshconform.istio.envoy`, which the local mesh
renders with, so this module only classifies and compares.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from pytest_meshconform.evidence.config_dump import (
    RAW_BUFFER_TYPE,
    ConfigDumpError,
    Listener,
    Section,
    TransportSocket,
    active_cluster,
    active_listener,
    as_object,
    as_string,
    as_uint32,
    cluster_socket,
    load_json,
    message_name,
    read_chain_port,
    read_filter_chain,
    read_socket_match,
    sections,
    show,
    socket_matches,
)
from pytest_meshconform.istio import Sidecar, plan_sidecar
from pytest_meshconform.istio.api import (
    MtlsMode,
    PeerAuthentication,
    Policy,
    PolicyError,
    TlsMode,
)
from pytest_meshconform.istio.envoy import (
    CONNECT_TERMINATE,
    DOWNSTREAM_TLS_TYPE,
    HBONE_MATCH,
    HTTP_PROTOCOL_OPTIONS,
    INTERNAL_UPSTREAM_TYPE,
    UPSTREAM_TLS_TYPE,
    VIRTUAL_INBOUND,
    VIRTUAL_INBOUND_BLACKHOLE,
    ChainShape,
    UpstreamHttp,
    UpstreamTransport,
    auto_mtls_transport,
    inbound_mode,
    outbound_cluster_name,
    upstream_http,
    upstream_tls_shape,
)
from pytest_meshconform.istio.protocol import protocol_of
from pytest_meshconform.mesh import Service, Workload

__all__ = [
    "EnvoyState",
    "EnvoyStateError",
    "ExpectedInbound",
    "ExpectedOutbound",
    "InboundChain",
    "InboundPort",
    "OutboundCluster",
    "SidecarExpectation",
    "cluster_upstream_http",
    "expected_sidecar",
    "max_requests_per_connection",
    "mismatches",
    "parse_config_dump",
    "parse_listeners",
]

# top-level keys of ztunnel's /config_dump (ztunnel src/admin.rs ``ConfigDump``)
ZTUNNEL_KEYS: Final = frozenset({"workloadState", "workloads", "certificates", "staticConfig"})
_CAMEL: Final = re.compile(r"[a-z][a-z0-9]*(?:[A-Z][a-z0-9]*)+")


class EnvoyStateError(ValueError):
    """A config dump without the shape Envoy gives it; the message names the field."""


@dataclass(frozen=True, slots=True)
class InboundChain:
    """One ``virtualInbound`` filter chain for a destination port."""

    name: str
    transport_protocol: str  # "tls", "raw_buffer" or "" (any)
    application_protocols: tuple[str, ...]
    terminates_tls: bool  # has a DownstreamTlsContext
    requires_client_cert: bool  # ... with require_client_certificate: true (mTLS)
    problem: str = ""  # why this chain could not be read (then it is unclassified)

    @property
    def shape(self) -> ChainShape:
        return ChainShape(
            self.transport_protocol,
            self.terminates_tls,
            self.requires_client_cert,
            self.application_protocols,
        )

    def describe(self) -> str:
        if self.problem:
            return f"unreadable {self.name or 'chain'} ({self.problem})"
        kind = "mTLS" if self.requires_client_cert else "TLS" if self.terminates_tls else "plain"
        match = self.transport_protocol or "any"
        alpn = f" alpn={','.join(self.application_protocols)}" if self.application_protocols else ""
        return f"{match}/{kind}{alpn}"


@dataclass(frozen=True, slots=True)
class InboundPort:
    """The ``virtualInbound`` chains for one destination port and the mode they implement."""

    port: int
    chains: tuple[InboundChain, ...]

    @property
    def mode(self) -> MtlsMode | None:
        """STRICT, PERMISSIVE or DISABLE as Istio renders them (:func:`..istio.envoy.
        inbound_mode`); None for any other shape, and when a chain of the port could not be
        read."""
        if any(c.problem for c in self.chains):
            return None
        return inbound_mode([c.shape for c in self.chains])

    def describe(self) -> str:
        shape = ", ".join(c.describe() for c in self.chains)
        mode = self.mode
        return f"{mode.value if mode else 'unrecognised'} (chains: {shape})"


@dataclass(frozen=True, slots=True)
class OutboundCluster:
    """One dynamic cluster: its transport and the connection settings meshconform relies on."""

    name: str
    transport: UpstreamTransport
    certificate_secrets: tuple[str, ...] = ()
    validation_secret: str | None = None
    sni: str | None = None
    max_requests_per_connection: int | None = None
    detail: str = ""  # the unclassified transport socket, or why it could not be read, for OTHER
    hbone: bool = False  # endpoints labelled tunnel: http are reached over HBONE instead
    upstream_http: UpstreamHttp = UpstreamHttp.HTTP1  # the HTTP version it speaks upstream

    def describe(self) -> str:
        text = self.transport.value
        if self.transport is UpstreamTransport.TLS:
            secrets = "/".join(self.certificate_secrets) or "none"
            text += f" (SDS {secrets}, root {self.validation_secret or 'none'})"
        elif self.detail:
            text += f" ({self.detail})"
        if self.hbone:
            text += ", HBONE to tunnel-capable endpoints"
        return text


@dataclass(frozen=True, slots=True)
class EnvoyState:
    """What one Envoy's config dump implements for mTLS."""

    listeners_version: str | None
    clusters_version: str | None
    has_virtual_inbound: bool
    inbound: Mapping[int, InboundPort]
    clusters: Mapping[str, OutboundCluster]
    blackhole_ports: tuple[int, ...] = ()  # virtualInbound-blackhole chains (15006): no mode
    listener_problems: tuple[str, ...] = ()  # virtualInbound chains whose port is unreadable
    cluster_problems: tuple[str, ...] = ()  # clusters whose name is unreadable
    hbone_inbound: bool = False  # an active connect_terminate listener: accepts HBONE on 15008

    def __post_init__(self) -> None:
        object.__setattr__(self, "inbound", MappingProxyType(dict(self.inbound)))
        object.__setattr__(self, "clusters", MappingProxyType(dict(self.clusters)))

    @property
    def version(self) -> str:
        return f"listeners {self.listeners_version or '-'}, clusters {self.clusters_version or '-'}"


# --- reading ----------------------------------------------------------------------------------

_DOWNSTREAM_TLS: Final = message_name(DOWNSTREAM_TLS_TYPE)
_UPSTREAM_TLS: Final = message_name(UPSTREAM_TLS_TYPE)
_RAW_BUFFER: Final = message_name(RAW_BUFFER_TYPE)
_INTERNAL_UPSTREAM: Final = message_name(INTERNAL_UPSTREAM_TYPE)


def _inbound_chain(raw: object, where: str) -> InboundChain:
    chain = read_filter_chain(raw, where)
    terminates = requires = False
    socket = chain.transport_socket
    if socket is not None:
        if socket.message == _DOWNSTREAM_TLS:
            terminates = True
            requires = socket.require_client_certificate()
        elif socket.message != _RAW_BUFFER:
            raise ConfigDumpError(f"{socket.where}: unknown downstream socket {socket.type_url!r}")
    return InboundChain(
        name=chain.name,
        transport_protocol=chain.transport_protocol,
        application_protocols=chain.application_protocols,
        terminates_tls=terminates,
        requires_client_cert=requires,
    )


def _inbound_ports(
    listener: Listener,
) -> tuple[dict[int, InboundPort], tuple[int, ...], tuple[str, ...]]:
    """Per destination port, its chains; the blackhole chain's port; what could not be read.

    A chain that cannot be read is kept, unclassified, in its port (so only that port's
    expectation is blocked); one whose port cannot be read is reported for the listener."""
    by_port: dict[int, list[InboundChain]] = {}
    blackhole: list[int] = []
    problems: list[str] = []
    for where, raw in listener.chains():
        try:
            port = read_chain_port(raw, where)
        except ConfigDumpError as error:
            problems.append(str(error))
            continue
        if port is None:
            continue  # passthrough / catch-all chains: no port of the workload
        try:
            chain = _inbound_chain(raw, where)
        except ConfigDumpError as error:
            name = raw.get("name") if isinstance(raw, Mapping) else None
            chain = InboundChain(
                name if isinstance(name, str) else "", "", (), False, False, problem=str(error)
            )
        if chain.name == VIRTUAL_INBOUND_BLACKHOLE:
            blackhole.append(port)
            continue
        by_port.setdefault(port, []).append(chain)
    ports = {port: InboundPort(port, tuple(found)) for port, found in by_port.items()}
    return ports, tuple(blackhole), tuple(problems)


def _upstream_socket(socket: TransportSocket) -> OutboundCluster:
    """The transport of one (cluster-level or matched) socket; ``name`` is filled in later."""
    if socket.message == _RAW_BUFFER:
        return OutboundCluster("", UpstreamTransport.PLAINTEXT)
    if socket.message == _INTERNAL_UPSTREAM:  # HBONE / waypoint wrapping
        inner = socket.inner()
        if inner is None:
            return OutboundCluster("", UpstreamTransport.PLAINTEXT)
        return _upstream_socket(inner)
    if socket.message == _UPSTREAM_TLS:
        secrets = socket.tls_secrets()
        return OutboundCluster(
            "", UpstreamTransport.TLS, secrets.certificates, secrets.validation, secrets.sni
        )
    return OutboundCluster("", UpstreamTransport.OTHER, detail=socket.type_url)


def _cluster_transport(cluster: Mapping[str, Any], where: str) -> OutboundCluster:
    """The cluster's transport for endpoints reached directly; ``hbone`` when endpoints that
    can tunnel (``tunnel: http``) are reached over HBONE instead.

    pilot/pkg/networking/core/cluster_tls.go, ``applyHBONETransportSocketMatches``: with HBONE
    sending on, istiod puts ``hboneTransportSocket`` (name ``hbone``, an internal upstream
    socket to the ``connect_originate`` listener) first and then what it would have used
    without HBONE: ``tlsMode-istio`` + ``tlsMode-disabled`` (auto mTLS), ``tlsMode-istio``
    alone (DestinationRule ISTIO_MUTUAL), ``tlsMode-disabled`` (no TLS), ``user`` (SIMPLE,
    MUTUAL)."""
    matches = socket_matches(cluster, where)
    if not matches:
        socket = cluster_socket(cluster, where)
        if socket is None:
            return OutboundCluster("", UpstreamTransport.PLAINTEXT)
        return _upstream_socket(socket)
    found = []
    hbone = False
    for match_where, raw in matches:
        match = read_socket_match(raw, match_where)
        if match.name == HBONE_MATCH:
            hbone = True
            continue
        socket = match.socket()
        found.append(
            OutboundCluster("", UpstreamTransport.PLAINTEXT)
            if socket is None
            else _upstream_socket(socket)
        )
    fallback = cluster_socket(cluster, where)  # when no match applies
    if fallback is not None:
        found.append(_upstream_socket(fallback))
    if not found:  # only the hbone match: every other endpoint gets no socket at all
        found.append(OutboundCluster("", UpstreamTransport.PLAINTEXT))
    kinds = {f.transport for f in found}
    if UpstreamTransport.OTHER in kinds:
        other = next(f for f in found if f.transport is UpstreamTransport.OTHER)
        return OutboundCluster("", UpstreamTransport.OTHER, detail=other.detail, hbone=hbone)
    if kinds == {UpstreamTransport.PLAINTEXT}:
        return OutboundCluster("", UpstreamTransport.PLAINTEXT, hbone=hbone)
    tls = next(f for f in found if f.transport is UpstreamTransport.TLS)
    kind = UpstreamTransport.TLS if kinds == {UpstreamTransport.TLS} else UpstreamTransport.AUTO
    return OutboundCluster(
        "", kind, tls.certificate_secrets, tls.validation_secret, tls.sni, hbone=hbone
    )


def max_requests_per_connection(cluster: Mapping[str, Any], where: str = "cluster") -> int | None:
    """``max_requests_per_connection`` from the HttpProtocolOptions extension, where istiod
    puts ``connectionPool.http.maxRequestsPerConnection`` (cluster_traffic_policy.go), or the
    deprecated cluster field older Envoys print; None when unset."""
    try:
        options = as_object(
            cluster.get("typed_extension_protocol_options") or {},
            f"{where}.typed_extension_protocol_options",
        )
        http = options.get(HTTP_PROTOCOL_OPTIONS)
        if http is not None:
            common = as_object(
                as_object(http, f"{where}.{HTTP_PROTOCOL_OPTIONS}").get(
                    "common_http_protocol_options"
                )
                or {},
                f"{where}.common_http_protocol_options",
            )
            value = common.get("max_requests_per_connection")
            if value is not None:
                return as_uint32(value, f"{where}.max_requests_per_connection")
        legacy = cluster.get("max_requests_per_connection")
        return None if legacy is None else as_uint32(legacy, f"{where}.max_requests_per_connection")
    except ConfigDumpError as error:
        raise EnvoyStateError(str(error)) from None


def cluster_upstream_http(cluster: Mapping[str, Any], where: str = "cluster") -> UpstreamHttp:
    """The HTTP version a cluster speaks upstream, from its HttpProtocolOptions extension
    (``setUpstreamProtocol``, cluster_builder.go): ``explicit_http_config`` with
    ``http2_protocol_options`` (``setH2Options``: HTTP2, gRPC, gRPC-Web ports), a
    ``use_downstream_protocol_config`` (``setUseDownstreamProtocol``: sniffed ports), else
    Envoy's default HTTP/1.1; the deprecated cluster field ``http2_protocol_options`` older
    Envoys print counts as HTTP/2."""
    try:
        options = as_object(
            cluster.get("typed_extension_protocol_options") or {},
            f"{where}.typed_extension_protocol_options",
        )
        http = as_object(
            options.get(HTTP_PROTOCOL_OPTIONS) or {}, f"{where}.{HTTP_PROTOCOL_OPTIONS}"
        )
        if "use_downstream_protocol_config" in http:
            return UpstreamHttp.DOWNSTREAM
        explicit = as_object(
            http.get("explicit_http_config") or {}, f"{where}.explicit_http_config"
        )
    except ConfigDumpError as error:
        raise EnvoyStateError(str(error)) from None
    if "http2_protocol_options" in explicit or "http2_protocol_options" in cluster:
        return UpstreamHttp.HTTP2
    return UpstreamHttp.HTTP1


def _cluster(cluster: Mapping[str, Any], name: str) -> OutboundCluster:
    where = f"cluster {name}"
    transport = _cluster_transport(cluster, where)
    return OutboundCluster(
        name,
        transport.transport,
        transport.certificate_secrets,
        transport.validation_secret,
        transport.sni,
        max_requests_per_connection(cluster, where),
        transport.detail,
        transport.hbone,
        cluster_upstream_http(cluster, where),
    )


def _clusters(section: Section) -> tuple[dict[str, OutboundCluster], tuple[str, ...]]:
    """Every active cluster; one that cannot be read is kept as ``OTHER`` with the reason (it
    blocks only an expectation about that cluster); one without a readable name is reported."""
    found: dict[str, OutboundCluster] = {}
    problems: list[str] = []
    for where, raw in section.entries("dynamic_active_clusters"):
        try:
            name, cluster = active_cluster(raw, where)
        except ConfigDumpError as error:
            problems.append(str(error))
            continue
        try:
            found[name] = _cluster(cluster, name)
        except (ConfigDumpError, EnvoyStateError) as error:
            found[name] = OutboundCluster(name, UpstreamTransport.OTHER, detail=str(error))
    return found, tuple(problems)


def _not_envoy(document: object) -> str | None:
    """Why a document is not an Envoy v3 config dump, for the documents people confuse with
    one; None when it may be one."""
    if isinstance(document, list):
        return (
            f"config_dump: expected an object, got {show(document)}: a list is what `istioctl"
            " proxy-config listeners -o json` prints (read it with parse_listeners);"
            " meshconform reads Envoy's /config_dump (`pilot-agent request GET config_dump`)"
        )
    if isinstance(document, Mapping) and "configs" not in document and ZTUNNEL_KEYS & set(document):
        return (
            "a ztunnel config_dump (ambient mode), not an Envoy one: ztunnel has no"
            " listeners or clusters to read"
        )
    return None


def parse_config_dump(data: bytes | str | Mapping[str, Any]) -> EnvoyState:
    """Envoy's ``/config_dump`` (JSON text or the loaded object) -> what it implements.

    Only the active listeners and clusters count: a warming resource is not serving yet. A
    chain or cluster that cannot be read is kept, named, where it is (see ``mismatches``);
    only a document that is not an Envoy v3 config dump at all raises ``EnvoyStateError``.
    """
    try:
        document = load_json(data)
        reason = _not_envoy(document)
        if reason is not None:
            raise EnvoyStateError(reason)
        found = sections(document)
    except ConfigDumpError as error:
        raise EnvoyStateError(str(error)) from None
    listeners_version = clusters_version = None
    inbound: dict[int, InboundPort] = {}
    blackhole: tuple[int, ...] = ()
    listener_problems: tuple[str, ...] = ()
    has_virtual_inbound = hbone_inbound = False
    clusters: dict[str, OutboundCluster] = {}
    cluster_problems: tuple[str, ...] = ()
    for section in found:
        if section.is_v2:
            raise EnvoyStateError(
                "Envoy v2 config (Istio < 1.5) is not supported:"
                f" configs[].@type {section.type_url!r}"
            )
        try:
            if section.admin_type == "ListenersConfigDump":
                listeners_version = section.version_info("listeners")
                entries = section.entries("dynamic_listeners")
            elif section.admin_type == "ClustersConfigDump":
                clusters_version = section.version_info("clusters")
                clusters, cluster_problems = _clusters(section)
                continue
            else:
                continue
        except ConfigDumpError as error:
            raise EnvoyStateError(str(error)) from None
        problems: list[str] = []
        for where, raw in entries:
            try:
                name, listener = active_listener(raw, where)
                if name == CONNECT_TERMINATE and listener is not None:
                    hbone_inbound = True
                if name != VIRTUAL_INBOUND or listener is None:
                    continue
                has_virtual_inbound = True
                inbound, blackhole, chain_problems = _inbound_ports(listener)
                problems.extend(chain_problems)
            except ConfigDumpError as error:  # maybe virtualInbound: blocks inbound checks
                problems.append(str(error))
        listener_problems = tuple(problems)
    return EnvoyState(
        listeners_version or None,
        clusters_version or None,
        has_virtual_inbound,
        inbound,
        clusters,
        blackhole_ports=blackhole,
        listener_problems=listener_problems,
        cluster_problems=cluster_problems,
        hbone_inbound=hbone_inbound,
    )


def _snake(key: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), key)


def _snake_keys(value: object) -> object:
    """protojson's camelCase field names (what istioctl prints) -> Envoy admin's snake_case.
    Only identifier-like keys change: type URLs and metadata keys (with dots or dashes, or
    already lower case) are left alone."""
    if isinstance(value, Mapping):
        return {
            (_snake(k) if isinstance(k, str) and _CAMEL.fullmatch(k) else k): _snake_keys(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_snake_keys(v) for v in value]
    return value


def parse_listeners(data: bytes | str | Sequence[Any]) -> EnvoyState:
    """``istioctl proxy-config listeners <pod> -o json`` (a list of Listener objects, camelCase
    or snake_case) -> the inbound part of what the proxy implements (no clusters, no versions:
    that output has neither)."""
    try:
        document = load_json(data)
        if not isinstance(document, list):
            raise EnvoyStateError(f"listeners: expected a list, got {show(document)}")
        listeners = _snake_keys(document)
        assert isinstance(listeners, list)
        inbound: dict[int, InboundPort] = {}
        blackhole: tuple[int, ...] = ()
        problems: tuple[str, ...] = ()
        has_virtual_inbound = hbone_inbound = False
        for index, raw in enumerate(listeners):
            listener = as_object(raw, f"listeners[{index}]")
            name = as_string(listener.get("name"), f"listeners[{index}].name")
            hbone_inbound = hbone_inbound or name == CONNECT_TERMINATE
            if name == VIRTUAL_INBOUND:
                has_virtual_inbound = True
                inbound, blackhole, problems = _inbound_ports(Listener(name, listener))
    except ConfigDumpError as error:
        raise EnvoyStateError(str(error)) from None
    return EnvoyState(
        None,
        None,
        has_virtual_inbound,
        inbound,
        {},
        blackhole_ports=blackhole,
        listener_problems=problems,
        hbone_inbound=hbone_inbound,
    )


# --- expectations -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExpectedInbound:
    port: int
    mode: MtlsMode  # never UNSET


@dataclass(frozen=True, slots=True)
class ExpectedOutbound:
    """``tls_mode``: the DestinationRule's mode; None: auto mTLS (or not knowable here).
    ``auto_transport``: with auto mTLS, the cluster's shape, AUTO (``tlsMode-istio`` TLS, else
    plaintext) or PLAINTEXT (no TLS: the Service's namespace disables mTLS); None: not checked.
    ``connection_pool_known`` False: the connection settings are not checked either."""

    cluster: str
    tls_mode: TlsMode | None
    max_requests_per_connection: int | None
    connection_pool_known: bool = True
    auto_transport: UpstreamTransport | None = None
    upstream_http: UpstreamHttp | None = None  # the port's HTTP upstream; None: not HTTP


@dataclass(frozen=True, slots=True)
class SidecarExpectation:
    inbound: tuple[ExpectedInbound, ...]
    outbound: tuple[ExpectedOutbound, ...]


def _mesh_level(mode: MtlsMode, root_namespace: str) -> PeerAuthentication:
    return PeerAuthentication(name="meshconform-hypothetical", namespace=root_namespace, mode=mode)


def expected_sidecar(
    policies: Sequence[Policy],
    *,
    namespace: str,
    labels: Mapping[str, str],
    container_ports: Sequence[int],
    services: Sequence[Service],
    root_namespace: str,
    root_known: bool = True,
    workloads: Sequence[Workload] = (),
    name: str = "sidecar",
    auto_mtls: bool = True,
) -> SidecarExpectation:
    """What a sidecar's Envoy must implement under ``policies``: the Istio model's
    :func:`pytest_meshconform.istio.plan_sidecar`, as far as a config dump shows it.

    ``root_known`` False: the root namespace could not be read, so a mode that a mesh-wide
    PeerAuthentication could decide is not expected (it is when the workload's own namespace
    decides it whatever the mesh says), and a service without a DestinationRule in the client's
    or the service's namespace gets no TLS expectation. ``workloads`` are the Services'
    endpoints (only the model's SANs and per-endpoint auto mTLS use them; neither is checked
    here). ``auto_mtls`` is MeshConfig ``enableAutoMtls``.
    """
    if not root_known and any(
        isinstance(p, PeerAuthentication) and p.namespace == root_namespace for p in policies
    ):
        raise EnvoyStateError("root_known=False with root namespace policies given")
    client = Workload(
        name=name,
        namespace=namespace,
        app=labels.get("app", name),
        service_account=name,
        has_sidecar=True,
        labels=dict(labels),
        container_ports=tuple(container_ports),
    )

    def model(extra: Sequence[Policy] = ()) -> Sidecar:
        try:
            return plan_sidecar(
                client,
                [*policies, *extra],
                workloads=workloads,
                services=services,
                root_namespace=root_namespace,
                auto_mtls=auto_mtls,
            )
        except PolicyError as error:
            raise EnvoyStateError(str(error)) from None

    sidecar = model()
    # Without the root namespace, only what no mesh-wide PeerAuthentication could change.
    hypotheses = (
        ()
        if root_known
        else tuple(
            model([_mesh_level(m, root_namespace)]) for m in (MtlsMode.STRICT, MtlsMode.DISABLE)
        )
    )
    inbound = tuple(
        ExpectedInbound(port, mode)
        for port, mode in sidecar.inbound.items()
        if all(h.inbound[port] is mode for h in hypotheses)
    )
    outbound = []
    for service in services:
        key = (service.fqdn, service.port)
        upstream = sidecar.outbound[key]
        # A rule in the root namespace could apply where none was found elsewhere.
        rule_known = root_known or upstream.destination_rule is not None
        auto_transport = None
        if rule_known and upstream.auto:
            shapes = {auto_mtls_transport(s.outbound[key].mode) for s in (sidecar, *hypotheses)}
            auto_transport = shapes.pop() if len(shapes) == 1 else None
        outbound.append(
            ExpectedOutbound(
                outbound_cluster_name(service.fqdn, service.port),
                None if upstream.auto else upstream.mode,
                upstream.max_requests_per_connection,
                connection_pool_known=rule_known,
                auto_transport=auto_transport,
                upstream_http=_checked_upstream_http(
                    service, rule_known, upstream.destination_rule
                ),
            )
        )
    return SidecarExpectation(inbound, tuple(outbound))


def _checked_upstream_http(
    service: Service, rule_known: bool, rule: str | None
) -> UpstreamHttp | None:
    """The HTTP version the wait checks on the port's cluster, where nothing but the protocol
    decides it: HTTP/2 on an ``IsHTTP2`` port (``setH2Options``, which nothing undoes); the
    client's version on a sniffed port without any DestinationRule (a rule's
    ``h2UpgradePolicy: UPGRADE`` upgrades it, ``shouldH2Upgrade``); not an HTTP/1.1 port's,
    which MeshConfig ``h2UpgradePolicy`` may upgrade (cluster_traffic_policy.go)."""
    want = upstream_http(protocol_of(service))
    if want is UpstreamHttp.HTTP2:
        return want
    if want is UpstreamHttp.DOWNSTREAM and rule_known and rule is None:
        return want
    return None


def _expected_auto_text(transport: UpstreamTransport) -> str:
    if transport is UpstreamTransport.AUTO:
        return "auto mTLS (TLS to tlsMode-istio endpoints, else plaintext)"
    return "plaintext (auto mTLS: the Service's namespace disables mTLS)"


def mismatches(state: EnvoyState, expected: SidecarExpectation) -> tuple[str, ...]:
    """Each way ``state`` differs from ``expected``, as 'what it has, expected what'; empty
    when the Envoy implements the expectation.

    Only what the expectation concerns can block: a chain or cluster that could not be read
    shows up (named, with the reason) when it is the port or cluster expected, and not
    otherwise; virtualInbound chains whose port could not be read block every inbound
    expectation, clusters without a readable name every outbound one."""
    found: list[str] = []
    if expected.inbound:
        found.extend(f"{VIRTUAL_INBOUND} not understood: {p}" for p in state.listener_problems)
    if expected.outbound:
        found.extend(f"cluster not understood: {p}" for p in state.cluster_problems)
    for want in expected.inbound:
        if not state.has_virtual_inbound:
            found.append(
                f"no active {VIRTUAL_INBOUND} listener, expected port {want.port} {want.mode}"
            )
            continue
        port = state.inbound.get(want.port)
        if port is None:
            found.append(
                f"inbound port {want.port}: no {VIRTUAL_INBOUND} filter chain, expected {want.mode}"
            )
        elif port.mode is not want.mode:
            found.append(f"inbound port {want.port}: {port.describe()}, expected {want.mode}")
    for out in expected.outbound:
        cluster = state.clusters.get(out.cluster)
        if cluster is None:
            found.append(f"cluster {out.cluster}: missing")
            continue
        if out.tls_mode is not None:
            shape = upstream_tls_shape(out.tls_mode)
            if not shape.implemented_by(
                cluster.transport, cluster.certificate_secrets, cluster.validation_secret
            ):
                found.append(
                    f"cluster {out.cluster}: {cluster.describe()},"
                    f" expected {shape.describe()} (DestinationRule {out.tls_mode.value})"
                )
        if out.auto_transport is not None and cluster.transport is not out.auto_transport:
            found.append(
                f"cluster {out.cluster}: {cluster.describe()},"
                f" expected {_expected_auto_text(out.auto_transport)}"
            )
        if out.upstream_http is not None and cluster.upstream_http is not out.upstream_http:
            found.append(
                f"cluster {out.cluster}: upstream {cluster.upstream_http.value},"
                f" expected {out.upstream_http.value} (the port's protocol, setUpstreamProtocol)"
            )
        if (
            out.connection_pool_known
            and cluster.max_requests_per_connection != out.max_requests_per_connection
        ):
            have = cluster.max_requests_per_connection
            want_text = out.max_requests_per_connection
            found.append(
                f"cluster {out.cluster}: max_requests_per_connection"
                f" {'unset' if have is None else have},"
                f" expected {'unset' if want_text is None else want_text}"
            )
    return tuple(found)
