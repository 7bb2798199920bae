"""Render each sidecar's Envoy configuration the way istiod would, as plain dicts (pure).

The shapes follow what istiod generates (pilot/pkg/networking/core): a `virtualOutbound`
listener on 15001 that hands connections to per-Service listeners (`<vip>_<port>`, not bound),
a `virtualInbound` listener on 15006 with one filter chain per (port, transport) chosen by the
effective PeerAuthentication mode, `outbound|<port>||<fqdn>` clusters whose transport socket is
chosen by auto mTLS or a DestinationRule, and `inbound|<port>||` clusters to the app, bound to
127.0.0.6 so the interception rules let them through. Secrets (`default`, `ROOTCA`) come from SDS
files, so a rotation reaches Envoy without touching listeners or clusters.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pytest_meshconform.backends.local.topology import Pod, ServiceEntry
from pytest_meshconform.evidence.config_dump import SECRET_TYPE
from pytest_meshconform.istio import Upstream, protocol_of
from pytest_meshconform.istio.api import MtlsMode, TlsMode
from pytest_meshconform.istio.envoy import (
    CLUSTER_TYPE,
    DOWNSTREAM_TLS_TYPE,
    FILE_ACCESS_LOG_TYPE,
    HCM_TYPE,
    HTTP_INSPECTOR_TYPE,
    INBOUND_CAPTURE_PORT,
    INBOUND_PASSTHROUGH_BIND,
    INBOUND_PASSTHROUGH_CLUSTER,
    INBOUND_SERVER_ALPNS,
    LISTENER_TYPE,
    MESH_CONNECT_TIMEOUT,
    ORIGINAL_DST_TYPE,
    OUTBOUND_CAPTURE_PORT,
    PASSTHROUGH_CLUSTER,
    PROTOCOL_DETECTION_TIMEOUT,
    ROOT_SECRET,
    ROUTER_TYPE,
    TCP_PROXY_TYPE,
    TLS_INSPECTOR_TYPE,
    UPSTREAM_TLS_TYPE,
    VIRTUAL_INBOUND,
    VIRTUAL_OUTBOUND,
    WORKLOAD_SECRET,
    FilterChainOption,
    UpstreamTransport,
    cluster_http_protocol_options,
    filter_chain_match_options,
    grpc_web_filters,
    inbound_chain_shapes,
    inbound_cluster_name,
    inbound_hcm_http2_options,
    needs_http_inspector,
    outbound_chain_options,
    outbound_cluster_name,
    upstream_tls_shape,
)
from pytest_meshconform.istio.protocol import ListenerProtocol, PortProtocol
from pytest_meshconform.istio.tls import TlsParams, inbound_tls_params, upstream_tls_params
from pytest_meshconform.istio.upstream import ISTIO_MTLS_HTTP2_ALPN, ISTIO_MTLS_HTTP11_ALPN


@dataclass(frozen=True, slots=True)
class SidecarPlan:
    """Everything that decides one sidecar's config; equal plans render equal config."""

    pod: Pod
    inbound_modes: Mapping[int, MtlsMode]  # container port -> effective mode
    default_inbound_mode: MtlsMode  # for ports the pod has no explicit chain for
    # (fqdn, service port) -> the Istio model's cluster, towards the Service's endpoint
    outbound: Mapping[tuple[str, int], Upstream]
    services: tuple[ServiceEntry, ...] = field(default=())
    # ports no Service targets that portLevelMtls names: a passthrough chain each, in its mode
    passthrough_modes: Mapping[int, MtlsMode] = field(default_factory=dict, hash=False)
    set_xfcc: bool = True  # False only under the test-only `no-xfcc` fault
    # the server side of sidecar mTLS (the model's `inbound_tls_params`, or a fault's)
    inbound_tls: TlsParams = field(default_factory=inbound_tls_params)
    require_client_certificate: bool = True  # False only under `client-cert-optional`
    # The Istio model's RBAC filters (AuthorizationPolicy): HTTP filters for the inbound HTTP
    # connection managers, network filters for the inbound TCP (passthrough) chains.
    http_rbac: tuple[Mapping[str, Any], ...] = field(default=(), hash=False)
    tcp_rbac: tuple[Mapping[str, Any], ...] = field(default=(), hash=False)
    # container ports whose Service port is TCP (the model's inbound_protocols): a TCP proxy
    # instead of the HTTP connection manager on their inbound chains
    tcp_ports: frozenset[int] = frozenset()
    # each container port's protocol, as the model's inbound_protocols (HTTP when absent):
    # HTTP/2 and gRPC ports get the HTTP/2 codec options on their inbound HCM and cluster
    inbound_protocols: Mapping[int, PortProtocol] = field(default_factory=dict, hash=False)
    # (fqdn, service port) -> (endpoint address, target port) of the outbound clusters whose
    # endpoint speaks HBONE (an ambient pod: `istio.interop.sidecar_sends_hbone`), rendered by
    # `sidecar_hbone` as a CONNECT tunnel to the endpoint's port 15008
    hbone_tunnels: Mapping[tuple[str, int], tuple[str, int]] = field(
        default_factory=dict, hash=False
    )


@dataclass(frozen=True, slots=True)
class SidecarPaths:
    root: Path

    @property
    def admin_socket(self) -> Path:
        return self.root / "admin.sock"

    @property
    def lds(self) -> Path:
        return self.root / "lds" / "lds.json"

    @property
    def cds(self) -> Path:
        return self.root / "cds" / "cds.json"

    @property
    def sds_dir(self) -> Path:
        return self.root / "sds"

    def sds(self, name: str) -> Path:
        return self.sds_dir / f"{name}.json"

    @property
    def bootstrap(self) -> Path:
        return self.root / "bootstrap.json"

    @property
    def access_log(self) -> Path:
        return self.root / "access.log"


def _file_source(path: Path) -> dict[str, Any]:
    return {
        "path_config_source": {"path": str(path), "watched_directory": {"path": str(path.parent)}},
        "resource_api_version": "V3",
    }


def _sds(paths: SidecarPaths, name: str) -> dict[str, Any]:
    return {"name": name, "sds_config": _file_source(paths.sds(name))}


# Istio's sidecar bootstrap keeps only these stats and skips Envoy's default tag extraction
# (tools/packaging/common/envoy_bootstrap.json, `stats_config`). Besides fidelity it matters for
# speed: every listener rebuilt on a policy change creates its stats anew, and a mode switch
# costs each Envoy ~40% less CPU without them (measured: 10.5 -> 6 ms for an httpbin sidecar).
ISTIO_STATS_CONFIG: dict[str, Any] = {
    "use_all_default_tags": False,
    "stats_matcher": {
        "inclusion_list": {
            "patterns": [
                {"prefix": "reporter="},
                {"prefix": "cluster_manager"},
                {"prefix": "listener_manager"},
                {"prefix": "server"},
                {"prefix": "cluster.xds-grpc"},
                {"prefix": "wasm"},
                {"suffix": "rbac.allowed"},
                {"suffix": "rbac.denied"},
                {"suffix": "shadow_allowed"},
                {"suffix": "shadow_denied"},
                {"prefix": "component"},
            ]
        }
    },
}


# Istio lifts Envoy's unset global downstream connection limit to the int32 maximum for every
# proxy (pkg/bootstrap/config.go, extractRuntimeFlags: runtime key
# `overload.global_downstream_max_connections` = "2147483647"; with ProxyConfig
# connectionSettings it renders the overload manager's
# `envoy.resource_monitors.global_downstream_max_connections` monitor instead, as in
# pkg/bootstrap/testdata/global_downstream_connection_settings_golden.json). The monitor is the
# form Istio renders when it sets a limit itself; with a limit configured, Envoy no longer warns
# at start-up that "there is no configured limit to the number of allowed active downstream
# connections" (docs/istio-facts.md, "Sidecar bootstrap").
ISTIO_MAX_DOWNSTREAM_CONNECTIONS: Final = 2147483647
DOWNSTREAM_CONNECTIONS_TYPE: Final = (
    "type.googleapis.com/"
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)


def overload_manager() -> dict[str, Any]:
    """Istio's global downstream connection limit, as Envoy's overload manager spells it."""
    return {
        "resource_monitors": [
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": DOWNSTREAM_CONNECTIONS_TYPE,
                    "max_active_downstream_connections": ISTIO_MAX_DOWNSTREAM_CONNECTIONS,
                },
            }
        ]
    }


def bootstrap(pod: Pod, paths: SidecarPaths) -> dict[str, Any]:
    w = pod.workload
    return {
        "node": {
            "id": f"sidecar~{pod.ip}~{w.name}.{w.namespace}~{w.namespace}.svc.cluster.local",
            "cluster": f"{w.app}.{w.namespace}",
            "metadata": {"NAMESPACE": w.namespace, "SERVICE_ACCOUNT": w.service_account},
        },
        "admin": {"address": {"pipe": {"path": str(paths.admin_socket), "mode": 0o600}}},
        "stats_config": copy.deepcopy(ISTIO_STATS_CONFIG),
        "overload_manager": overload_manager(),
        "dynamic_resources": {
            "lds_config": _file_source(paths.lds),
            "cds_config": _file_source(paths.cds),
        },
    }


def _access_log(paths: SidecarPaths) -> list[dict[str, Any]]:
    """Envoy's default-format access log, kept for failure reports (response flags say why)."""
    return [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {"@type": FILE_ACCESS_LOG_TYPE, "path": str(paths.access_log)},
        }
    ]


def _hcm(
    stat_prefix: str,
    route_cluster: str,
    paths: SidecarPaths,
    *,
    set_xfcc: bool,
    http_filters: tuple[Mapping[str, Any], ...] = (),
    http2_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "@type": HCM_TYPE,
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "access_log": _access_log(paths),
        "route_config": {
            "name": stat_prefix,
            "virtual_hosts": [
                {
                    "name": route_cluster,
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": route_cluster, "timeout": "0s"},
                        }
                    ],
                }
            ],
        },
        "http_filters": [
            *(copy.deepcopy(dict(f)) for f in http_filters),  # RBAC before the router, as istiod
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}},
        ],
    }
    if http2_options is not None:
        config["http2_protocol_options"] = dict(http2_options)
    if set_xfcc:
        # What Istio's sidecar inbound sets (pilot/pkg/networking/core/listener_builder.go).
        config["forward_client_cert_details"] = "APPEND_FORWARD"
        config["set_current_client_cert_details"] = {"subject": True, "dns": True, "uri": True}
    return config


def _downstream_mtls(plan: SidecarPlan, paths: SidecarPaths) -> dict[str, Any]:
    """istiod's `BuildInboundTLS`: the model's tls_params, a client certificate required."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": DOWNSTREAM_TLS_TYPE,
            "require_client_certificate": plan.require_client_certificate,
            "common_tls_context": {
                "tls_params": plan.inbound_tls.envoy(),
                "alpn_protocols": list(INBOUND_SERVER_ALPNS),
                "tls_certificate_sds_secret_configs": [_sds(paths, WORKLOAD_SECRET)],
                "validation_context_sds_secret_config": _sds(paths, ROOT_SECRET),
            },
        },
    }


def _inbound_chains(
    name: str,
    port: int | None,
    mode: MtlsMode,
    plan: SidecarPlan,
    paths: SidecarPaths,
    filters: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Istio's chains for ``mode`` (:func:`..istio.envoy.inbound_chain_shapes`), all ending in
    ``filters``; mTLS ones with the plan's DownstreamTlsContext."""
    base: dict[str, Any] = {} if port is None else {"destination_port": port}
    chains = []
    for shape in inbound_chain_shapes(mode):
        match = dict(base)
        if shape.transport_protocol:
            match["transport_protocol"] = shape.transport_protocol
        if shape.application_protocols:
            match["application_protocols"] = list(shape.application_protocols)
        chain: dict[str, Any] = {
            "name": f"{name}-mtls" if shape.terminates_tls else f"{name}-plaintext",
            "filter_chain_match": match,
            "filters": filters,
        }
        if shape.terminates_tls:
            chain["transport_socket"] = _downstream_mtls(plan, paths)
        chains.append(chain)
    return chains


def _tcp_proxy(stat_prefix: str, cluster: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {"@type": TCP_PROXY_TYPE, "stat_prefix": stat_prefix, "cluster": cluster},
    }


def _sniffed_chains(
    port: int,
    mode: MtlsMode,
    plan: SidecarPlan,
    paths: SidecarPaths,
    http: list[dict[str, Any]],
    tcp: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """An auto-detected port's chains, as istiod builds them (the model's
    ``filter_chain_match_options`` for ``AUTO``): HTTP chains ending in the connection
    manager, TCP chains in the TCP proxy, each matched on the transport and ALPN."""
    chains = []
    for option in filter_chain_match_options(mode, ListenerProtocol.AUTO):
        how = "mtls" if option.tls else option.transport_protocol.replace("_", "-")
        chain: dict[str, Any] = {
            "name": f"0.0.0.0_{port}-{how}-{option.protocol.value.lower()}",
            "filter_chain_match": option.match(port),
            "filters": http if option.protocol is ListenerProtocol.HTTP else tcp,
        }
        if option.tls:
            chain["transport_socket"] = _downstream_mtls(plan, paths)
        chains.append(chain)
    return chains


def _port_range_rule(ports: list[int], *, only: bool) -> dict[str, Any]:
    """``listenerPredicateExcludePorts`` (``only=False``: the listener filter is disabled on
    ``ports``) and ``listenerPredicateIncludePorts`` (``only=True``: disabled on every port
    but ``ports``), listener_inbound.go."""
    rules = [{"destination_port_range": {"start": p, "end": p + 1}} for p in ports]
    rule = rules[0] if len(rules) == 1 else {"or_match": {"rules": rules}}
    return {"not_match": rule} if only else rule


def _inbound_listener_filters(chains: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``populateListenerFilters`` (listener_inbound.go): original_dst, then the tls_inspector
    on the ports with a chain matching ``tls`` (``buildTLSInspector``: on by default when the
    passthrough chains need it, off for the other ports), then the http_inspector on the
    ports with a chain matching ``http/1.1`` or ``h2c`` (``buildHTTPInspector``)."""
    tls: dict[int, bool] = {}
    http: dict[int, bool] = {}
    for chain in chains:
        match = chain["filter_chain_match"]
        port = match.get("destination_port", 0)
        tls[port] = tls.get(port, False) or match.get("transport_protocol") == "tls"
        alpns = match.get("application_protocols", ())
        http[port] = http.get(port, False) or needs_http_inspector(alpns)
    filters: list[dict[str, Any]] = [
        {
            "name": "envoy.filters.listener.original_dst",
            "typed_config": {"@type": ORIGINAL_DST_TYPE},
        }
    ]
    if any(tls.values()):
        inspector: dict[str, Any] = {
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {"@type": TLS_INSPECTOR_TYPE},
        }
        default = tls.get(0, False)
        ports = sorted(p for p, on in tls.items() if p and on != default)
        if ports:
            inspector["filter_disabled"] = _port_range_rule(ports, only=not default)
        filters.append(inspector)
    if any(http.values()):  # after the tls_inspector: it only looks at what is not TLS
        inspector = {
            "name": "envoy.filters.listener.http_inspector",
            "typed_config": {"@type": HTTP_INSPECTOR_TYPE},
        }
        off = sorted(p for p, on in http.items() if p and not on)
        if off:
            inspector["filter_disabled"] = _port_range_rule(off, only=False)
        filters.append(inspector)
    return filters


def listeners(plan: SidecarPlan, paths: SidecarPaths) -> list[dict[str, Any]]:
    chains: list[dict[str, Any]] = []
    for port in sorted(plan.inbound_modes):
        protocol = plan.inbound_protocols.get(port, PortProtocol.HTTP)
        tcp = [
            *(copy.deepcopy(dict(f)) for f in plan.tcp_rbac),  # network RBAC first
            _tcp_proxy(f"inbound_0.0.0.0_{port}", inbound_cluster_name(port)),
        ]
        http = [
            {
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": _hcm(
                    f"inbound_0.0.0.0_{port}",
                    inbound_cluster_name(port),
                    paths,
                    set_xfcc=plan.set_xfcc,
                    http_filters=(*plan.http_rbac, *grpc_web_filters(protocol)),
                    http2_options=inbound_hcm_http2_options(protocol),
                ),
            }
        ]
        mode = plan.inbound_modes[port]
        if protocol.sniffed:
            chains += _sniffed_chains(port, mode, plan, paths, http, tcp)
            continue
        app = tcp if port in plan.tcp_ports else http
        chains += _inbound_chains(f"0.0.0.0_{port}", port, mode, plan, paths, app)
    passthrough = [
        *(copy.deepcopy(dict(f)) for f in plan.tcp_rbac),  # network RBAC before tcp_proxy
        _tcp_proxy(INBOUND_PASSTHROUGH_CLUSTER, INBOUND_PASSTHROUGH_CLUSTER),
    ]
    for port in sorted(plan.passthrough_modes):  # istiod's ForPassthrough, per port
        chains += _inbound_chains(
            f"{VIRTUAL_INBOUND}_{port}",
            port,
            plan.passthrough_modes[port],
            plan,
            paths,
            passthrough,
        )
    chains += _inbound_chains(
        VIRTUAL_INBOUND, None, plan.default_inbound_mode, plan, paths, passthrough
    )
    result: list[dict[str, Any]] = [
        {
            "@type": LISTENER_TYPE,
            "name": VIRTUAL_INBOUND,
            "address": {
                "socket_address": {"address": "0.0.0.0", "port_value": INBOUND_CAPTURE_PORT}
            },
            # no use_original_dst, as istiod's (and real dumps'): the original_dst filter
            # restores the address for the chains, but the connection is never handed to
            # another listener (a headless Service's wildcard outbound one would take it)
            "listener_filters": _inbound_listener_filters(chains),
            # buildInboundListener: the mesh's protocolDetectionTimeout (0s: no time limit)
            "listener_filters_timeout": PROTOCOL_DETECTION_TIMEOUT,
            "continue_on_listener_filters_timeout": True,
            # Connections no chain accepts (plaintext to STRICT) are logged here, flag NR.
            "access_log": _access_log(paths),
            "filter_chains": chains,
        },
        {
            "@type": LISTENER_TYPE,
            "name": VIRTUAL_OUTBOUND,
            "address": {
                "socket_address": {"address": "0.0.0.0", "port_value": OUTBOUND_CAPTURE_PORT}
            },
            "use_original_dst": True,
            "filter_chains": [
                {
                    "name": "PassthroughFilterChain",
                    "filters": [_tcp_proxy(PASSTHROUGH_CLUSTER, PASSTHROUGH_CLUSTER)],
                }
            ],
        },
    ]
    for entry in plan.services:
        for address in _outbound_addresses(entry, plan.pod):
            result.append(_outbound_listener(plan, paths, entry, address))
    return result


def _headless_virtual_hosts(entry: ServiceEntry, pod: Pod, cluster: str) -> list[dict[str, Any]]:
    """The routes of a headless Service's wildcard HTTP listener, as istiod's: the Service's
    names (``generateVirtualHostDomains``: the FQDN and the short names a client in ``pod``'s
    namespace may use, each with and without the port, and each with a ``*.`` prefix for a
    headless Kubernetes Service's per-pod names) to its ORIGINAL_DST cluster, and every other
    Host, a pod IP's among them, to the PassthroughCluster (``buildCatchAllVirtualHost``,
    ALLOW_ANY): plaintext (pilot/pkg/networking/core/httproute.go)."""
    svc = entry.service
    names = [svc.fqdn, f"{svc.name}.{svc.namespace}.svc", f"{svc.name}.{svc.namespace}"]
    if svc.namespace == pod.workload.namespace:
        names.append(svc.name)
    domains = [d for n in names for d in (n, f"{n}:{svc.port}")]
    domains += [f"*.{d}" for d in domains]
    return [
        {
            "name": f"{svc.fqdn}:{svc.port}",
            "domains": domains,
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}],
        },
        {
            "name": "allow_any",
            "domains": ["*"],
            "routes": [
                {
                    "match": {"prefix": "/"},
                    "route": {"cluster": PASSTHROUGH_CLUSTER, "timeout": "0s"},
                }
            ],
        },
    ]


def _outbound_addresses(entry: ServiceEntry, pod: Pod) -> tuple[str, ...]:
    """Where the sidecar's outbound listeners for one Service port sit: its VIP; for a headless
    Service (``buildSidecarOutboundListeners``, pilot/pkg/networking/core/listener.go) a
    wildcard ``0.0.0.0_<port>`` listener on an HTTP port (the route reaches the pod the client
    dialled through the ORIGINAL_DST cluster), and on a TCP port one listener per endpoint pod
    IP, but the sidecar's own pod ("traffic to self does not flow through an outbound
    listener")."""
    if not entry.service.headless:
        return (entry.vip,)
    if protocol_of(entry.service).is_http:
        return ("0.0.0.0",)
    return tuple(p.ip for p in entry.endpoints if p.ip != pod.ip)


# The ALPN Istio's ``istio.alpn`` filter (an Istio extension, not in stock Envoy) puts on the
# upstream ClientHello once the outbound connection manager knows the upstream protocol; on a
# sniffed port the upstream speaks what the client spoke (``use_downstream_protocol_config``),
# so the local mesh sets the same list per sniffed protocol through Envoy's filter state.
_SNIFFED_ALPN: Final = {"http/1.1": ISTIO_MTLS_HTTP11_ALPN, "h2c": ISTIO_MTLS_HTTP2_ALPN}
SET_FILTER_STATE_TYPE: Final = (
    "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config"
)


def _alpn_override(alpn: tuple[str, ...]) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.set_filter_state",
        "typed_config": {
            "@type": SET_FILTER_STATE_TYPE,
            "on_request_headers": [
                {
                    "object_key": "envoy.network.application_protocols",
                    "format_string": {"text_format_source": {"inline_string": ",".join(alpn)}},
                    "shared_with_upstream": "ONCE",
                }
            ],
        },
    }


def _outbound_listener(
    plan: SidecarPlan, paths: SidecarPaths, entry: ServiceEntry, address: str
) -> dict[str, Any]:
    """The Service port's outbound listener (reached from virtualOutbound by its original
    destination): the model's ``outbound_chain_options`` for the port's listener protocol; an
    auto-detected port's HTTP chain behind the http_inspector, its TCP chain the default."""
    svc = entry.service
    name = f"{address}_{svc.port}"
    cluster = outbound_cluster_name(svc.fqdn, svc.port)
    protocol = protocol_of(svc)
    listener: dict[str, Any] = {
        "@type": LISTENER_TYPE,
        "name": name,
        "address": {"socket_address": {"address": address, "port_value": svc.port}},
        "bind_to_port": False,
    }
    tls = bool(plan.outbound[(svc.fqdn, svc.port)].alpn)

    def filters(option: FilterChainOption, alpn: str | None = None) -> list[dict[str, Any]]:
        if option.protocol is ListenerProtocol.TCP:  # istiod's outbound TCP proxy
            return [_tcp_proxy(f"outbound|{svc.port}||{svc.fqdn}", cluster)]
        override = (_alpn_override(_SNIFFED_ALPN[alpn]),) if alpn and tls else ()
        extra = (*override, *grpc_web_filters(protocol))
        hcm = _hcm(f"outbound_{name}", cluster, paths, set_xfcc=False, http_filters=extra)
        if svc.headless:
            hcm["route_config"]["virtual_hosts"] = _headless_virtual_hosts(entry, plan.pod, cluster)
        return [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]

    listener_protocol = protocol.listener_protocol or ListenerProtocol.TCP
    chains: list[dict[str, Any]] = []
    for option in outbound_chain_options(listener_protocol):
        if not option.application_protocols:
            chains.append({"name": name, "filters": filters(option)})
            continue
        for alpn in option.application_protocols:  # one chain per sniffed protocol (ALPN)
            match = {
                "transport_protocol": option.transport_protocol,
                "application_protocols": [alpn],
            }
            chains.append(
                {
                    "name": f"{name}-{alpn}",
                    "filter_chain_match": match,
                    "filters": filters(option, alpn),
                }
            )
    if listener_protocol is ListenerProtocol.AUTO:
        default, *matched = chains
        listener["listener_filters"] = [
            {
                "name": "envoy.filters.listener.http_inspector",
                "typed_config": {"@type": HTTP_INSPECTOR_TYPE},
            }
        ]
        listener["listener_filters_timeout"] = PROTOCOL_DETECTION_TIMEOUT
        listener["continue_on_listener_filters_timeout"] = True
        listener["filter_chains"] = matched
        listener["default_filter_chain"] = default
    else:
        listener["filter_chains"] = chains
    return listener


def _upstream_tls(tls: Upstream, paths: SidecarPaths) -> dict[str, Any] | None:
    shape = upstream_tls_shape(tls.mode)
    if shape.transport is not UpstreamTransport.TLS:
        return None
    common: dict[str, Any] = {"tls_params": upstream_tls_params().envoy()}
    if tls.alpn:
        common["alpn_protocols"] = list(tls.alpn)
    matchers = [
        {"san_type": shape.san_type(san), "matcher": {"exact": san}}
        for san in tls.subject_alt_names
    ]
    if shape.validation_secret is not None:
        common["tls_certificate_sds_secret_configs"] = [
            _sds(paths, name) for name in shape.certificate_secrets
        ]
        common["combined_validation_context"] = {
            "default_validation_context": {"match_typed_subject_alt_names": matchers},
            "validation_context_sds_secret_config": _sds(paths, shape.validation_secret),
        }
    else:  # the DestinationRule's own files
        if tls.mode is TlsMode.MUTUAL and tls.client_certificate and tls.private_key:
            common["tls_certificates"] = [
                {
                    "certificate_chain": {"filename": tls.client_certificate},
                    "private_key": {"filename": tls.private_key},
                }
            ]
        validation: dict[str, Any] = {}
        if tls.ca_certificates:
            validation["trusted_ca"] = {"filename": tls.ca_certificates}
        if matchers:
            validation["match_typed_subject_alt_names"] = matchers
        if validation:
            common["validation_context"] = validation
    context: dict[str, Any] = {"@type": UPSTREAM_TLS_TYPE, "common_tls_context": common}
    if tls.sni:
        context["sni"] = tls.sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def static_cluster(name: str, ip: str, port: int, **extra: Any) -> dict[str, Any]:
    """A STATIC cluster of one endpoint ``ip:port`` (``extra``: more cluster fields); the
    sidecars' and the ztunnels' clusters alike."""
    return {
        "@type": CLUSTER_TYPE,
        "name": name,
        "type": "STATIC",
        "connect_timeout": MESH_CONNECT_TIMEOUT,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": ip, "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
        **extra,
    }


# A deviation from Istio's `MESH_CONNECT_TIMEOUT` (10 s) on the outbound clusters that speak
# TLS to a pod: Envoy's connect timeout runs until the TLS handshake is done
# (`SslSocket::onSuccess` raises `Connected`), and a ClientHello sent to a plaintext app (a
# DestinationRule's ISTIO_MUTUAL towards a pod without sidecar) gets no answer from the local
# httpbin (waitress waits for the end of a request's head), so the handshake waits out the
# timeout: with 10 s the suites' curl (10 s) gives up first and the reachability table's 503
# becomes a timeout (docs/istio-model.md).
LOCAL_TLS_CONNECT_TIMEOUT: Final = "1s"

_BIND_127_0_0_6 = {"source_address": {"address": INBOUND_PASSTHROUGH_BIND, "port_value": 0}}


def clusters(plan: SidecarPlan, paths: SidecarPaths) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = [
        {
            "@type": CLUSTER_TYPE,
            "name": PASSTHROUGH_CLUSTER,
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "connect_timeout": MESH_CONNECT_TIMEOUT,
        },
        {
            "@type": CLUSTER_TYPE,
            "name": INBOUND_PASSTHROUGH_CLUSTER,
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "connect_timeout": MESH_CONNECT_TIMEOUT,
            "upstream_bind_config": _BIND_127_0_0_6,
        },
    ]
    for port in sorted(plan.inbound_modes):
        inbound = static_cluster(
            inbound_cluster_name(port), plan.pod.ip, port, upstream_bind_config=_BIND_127_0_0_6
        )
        options = cluster_http_protocol_options(plan.inbound_protocols.get(port, PortProtocol.HTTP))
        if options is not None:
            inbound["typed_extension_protocol_options"] = options
        result.append(inbound)
    for entry in plan.services:
        svc = entry.service
        endpoint = entry.endpoints[0]
        cluster: dict[str, Any]
        if svc.headless:  # istiod's convertResolution: Passthrough -> ORIGINAL_DST
            cluster = {
                "@type": CLUSTER_TYPE,
                "name": outbound_cluster_name(svc.fqdn, svc.port),
                "type": "ORIGINAL_DST",
                "lb_policy": "CLUSTER_PROVIDED",
                "connect_timeout": MESH_CONNECT_TIMEOUT,
            }
        else:
            cluster = static_cluster(
                outbound_cluster_name(svc.fqdn, svc.port), endpoint.ip, svc.target_port
            )
        upstream = plan.outbound[(svc.fqdn, svc.port)]
        socket = _upstream_tls(upstream, paths)
        if socket is not None:
            cluster["transport_socket"] = socket
            cluster["connect_timeout"] = LOCAL_TLS_CONNECT_TIMEOUT
        options = cluster_http_protocol_options(
            protocol_of(svc), upstream.max_requests_per_connection
        )
        if options is not None:
            cluster["typed_extension_protocol_options"] = options
        result.append(cluster)
    return result


def secret_resources(
    name: str,
    *,
    cert_pem: str | None = None,
    key_pem: str | None = None,
    root_pem: str | None = None,
) -> dict[str, Any]:
    secret: dict[str, Any] = {"@type": SECRET_TYPE, "name": name}
    if root_pem is not None:
        secret["validation_context"] = {"trusted_ca": {"inline_string": root_pem}}
    else:
        secret["tls_certificate"] = {
            "certificate_chain": {"inline_string": cert_pem},
            "private_key": {"inline_string": key_pem},
        }
    return {"resources": [secret]}


def discovery_file(version: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"version_info": version, "resources": resources}
