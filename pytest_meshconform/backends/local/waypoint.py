"""A waypoint played by Envoy: one namespace waypoint's config, as istiod builds it (pure).

A waypoint is an Envoy proxy in its own pod (Istio's waypoint Deployment); the local mesh runs
one Envoy in the waypoint's pod namespace, with the waypoint's own certificate (its service
account is the Gateway's name). Its listeners follow istiod's (``buildWaypointInbound``,
pilot/pkg/networking/core/listener_waypoint.go), with upstream Envoy's filters where istiod uses
Istio's own:

- ``connect_terminate`` (15008): HBONE from the client's ztunnel: mutual TLS 1.3, ALPN ``h2``, a
  client certificate of the mesh's trust domain required; an HTTP/2 connection manager that
  accepts CONNECT, sets the filter state istiod's waypoint sets (``io.istio.peer_principal`` =
  the tunnel's client SPIFFE ID; the CONNECT authority as the inner connection's destination,
  where istiod uses its ``istio.set_internal_dst_address`` filter; the tunnel's source as its
  remote address), shared once with the upstream, and routes every CONNECT to ``main_internal``.
- ``main_internal`` (an internal listener): one filter chain per Service port the waypoint
  serves (its address and port): an HTTP connection manager with the RBAC filters istiod builds
  from the policies bound to the waypoint (`istio.waypoint.waypoint_authorization`: peer
  identities from the filter state), then the router to the Service's cluster
  (``inbound-vip|<port>|http|<fqdn>``); a TCP port gets the network RBAC filters and a TCP
  proxy. ``forward_client_cert_details`` is left unset (SANITIZE), as istiod leaves it: the app
  sees no ``x-forwarded-client-cert`` (the test-only `waypoint-forwards-xfcc` fault alone sets
  it, `WaypointPlan.forward_client_cert`). On an HTTP2, gRPC or gRPC-Web port the connection
  manager gets ``http2_protocol_options`` (``buildWaypointInboundHTTPFilters``: ``IsHTTP2``),
  a gRPC-Web port the gRPC-Web filter after RBAC (``buildHTTPConnectionManager``), and the
  Service's cluster speaks HTTP/2 to the endpoint (``buildWaypointInboundVIPCluster`` ->
  ``setUpstreamProtocol``; the client's version on a sniffed port), so gRPC passes through.
- ``connect_originate|<ip>:<port>`` (internal listeners): a new HBONE tunnel to the endpoint's
  ztunnel (CONNECT ``<pod ip>:<target port>`` over mutual TLS 1.3 with the waypoint's
  certificate, the endpoint's SPIFFE ID verified), where istiod's ``connect_originate`` does the
  same with an original-destination cluster.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Final

from pytest_meshconform.backends.local.topology import Pod
from pytest_meshconform.backends.local.xds import SidecarPaths, bootstrap
from pytest_meshconform.backends.local.ztunnel import (
    access_log,
    hbone_cluster,
    hbone_server_tls,
)
from pytest_meshconform.istio.envoy import (
    CLUSTER_TYPE,
    HCM_TYPE,
    LISTENER_TYPE,
    MESH_CONNECT_TIMEOUT,
    ROUTER_TYPE,
    TCP_PROXY_TYPE,
    cluster_http_protocol_options,
    grpc_web_filters,
    inbound_hcm_http2_options,
)
from pytest_meshconform.istio.protocol import PortProtocol
from pytest_meshconform.istio.ztunnel import HBONE_PORT, hbone_authority
from pytest_meshconform.mesh import Waypoint

__all__ = [
    "CONNECT_TERMINATE",
    "MAIN_INTERNAL",
    "WaypointPlan",
    "WaypointRoute",
    "waypoint_bootstrap",
    "waypoint_clusters",
    "waypoint_listeners",
]

# istiod's names (pilot/pkg/networking/core: ConnectTerminate, MainInternalName, ConnectOriginate)
CONNECT_TERMINATE: Final = "connect_terminate"
MAIN_INTERNAL: Final = "main_internal"
CONNECT_ORIGINATE: Final = "connect_originate"
PEER_PRINCIPAL_KEY: Final = "io.istio.peer_principal"
# upstream Envoy's original_dst listener filter restores an internal connection's addresses
# from these filter state objects (istiod sets the remote one under the same key)
ORIGINAL_DST_LOCAL: Final = "envoy.filters.listener.original_dst.local_ip"
ORIGINAL_DST_REMOTE: Final = "envoy.filters.listener.original_dst.remote_ip"
SET_FILTER_STATE_TYPE: Final = (
    "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config"
)
ORIGINAL_DST_TYPE: Final = (
    "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
)
INTERNAL_UPSTREAM_TYPE: Final = (
    "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3"
    ".InternalUpstreamTransport"
)
RAW_BUFFER_TYPE: Final = (
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
)
INTERNAL_LISTENER_TYPE: Final = (
    "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
)


@dataclass(frozen=True, slots=True)
class WaypointRoute:
    """One destination the waypoint serves: a Service port (its address and port), its
    endpoint, and the RBAC filters of its chain (HTTP or TCP, as the port's protocol)."""

    address: str  # the Service's address, or the pod's for workload-addressed traffic
    port: int
    fqdn: str  # the Service's; "" for a workload-addressed destination
    endpoint_ip: str
    target_port: int
    endpoint_identity: str  # verified in the endpoint's HBONE certificate
    # the port's protocol: a TCP proxy for the TCP family, else an HTTP connection manager
    # (HTTP/2 to the endpoint for HTTP2, gRPC and gRPC-Web)
    protocol: PortProtocol = PortProtocol.HTTP
    rbac: tuple[dict[str, Any], ...] = field(default=(), hash=False)

    @property
    def tcp(self) -> bool:
        return self.protocol.is_tcp

    @property
    def cluster(self) -> str:
        """istiod's waypoint cluster for a Service port (``inbound-vip|port|proto|fqdn``); a
        workload-addressed destination (no ``fqdn``) gets the local name
        ``inbound-pod|port|proto|ip``."""
        proto = "tcp" if self.tcp else "http"
        if not self.fqdn:
            return f"inbound-pod|{self.port}|{proto}|{self.address}"
        return f"inbound-vip|{self.port}|{proto}|{self.fqdn}"

    @property
    def authority(self) -> str:
        """The CONNECT authority towards the endpoint: its address and target port."""
        return hbone_authority(self.endpoint_ip, self.target_port)

    @property
    def originate(self) -> str:
        return f"{CONNECT_ORIGINATE}|{self.authority}"


@dataclass(frozen=True, slots=True)
class WaypointPlan:
    """Everything that decides one waypoint's Envoy config; equal plans render equal config."""

    pod: Pod
    waypoint: Waypoint
    routes: tuple[WaypointRoute, ...]
    # the HTTP chains' ``forward_client_cert_details``: None, as istiod leaves it (SANITIZE);
    # only the test-only `waypoint-forwards-xfcc` fault sets one (ALWAYS_FORWARD_ONLY: the
    # chains' downstream is the internal connection from connect_terminate, not mutual TLS, so
    # FORWARD_ONLY would still remove the header)
    forward_client_cert: str | None = None


def waypoint_bootstrap(pod: Pod, paths: SidecarPaths) -> dict[str, Any]:
    """The sidecar bootstrap with Envoy's internal listeners enabled (istiod's waypoint
    bootstrap carries ``envoy.bootstrap.internal_listener`` too)."""
    config = bootstrap(pod, paths)
    w = pod.workload
    config["node"]["id"] = (
        f"waypoint~{pod.ip}~{w.name}.{w.namespace}~{w.namespace}.svc.cluster.local"
    )
    config["bootstrap_extensions"] = [
        {
            "name": "envoy.bootstrap.internal_listener",
            "typed_config": {"@type": INTERNAL_LISTENER_TYPE},
        }
    ]
    return config


def _state(key: str, value: str, factory: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "object_key": key,
        "format_string": {"text_format_source": {"inline_string": value}},
        "shared_with_upstream": "ONCE",
    }
    if factory is not None:
        entry["factory_key"] = factory
    return entry


def _hcm(name: str, **rest: Any) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {"@type": HCM_TYPE, "stat_prefix": name, **rest},
    }


def _router() -> dict[str, Any]:
    return {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}


def _tcp_proxy(name: str, cluster: str, paths: SidecarPaths, **extra: Any) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": TCP_PROXY_TYPE,
            "stat_prefix": name,
            "cluster": cluster,
            "access_log": access_log(paths),
            **extra,
        },
    }


def _connect_terminate(paths: SidecarPaths) -> dict[str, Any]:
    route = {
        "match": {"connect_matcher": {}},
        "route": {
            "cluster": MAIN_INTERNAL,
            "timeout": "0s",
            "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}],
        },
    }
    hcm = _hcm(
        CONNECT_TERMINATE,
        codec_type="HTTP2",
        http2_protocol_options={"allow_connect": True},
        upgrade_configs=[{"upgrade_type": "CONNECT"}],
        stream_idle_timeout="0s",
        access_log=access_log(paths),
        route_config={
            "name": "default",
            "virtual_hosts": [{"name": "default", "domains": ["*"], "routes": [route]}],
        },
        http_filters=[
            {
                "name": "envoy.filters.http.set_filter_state",
                "typed_config": {
                    "@type": SET_FILTER_STATE_TYPE,
                    "on_request_headers": [
                        _state(ORIGINAL_DST_LOCAL, "%REQ(:AUTHORITY)%"),
                        _state(ORIGINAL_DST_REMOTE, "%DOWNSTREAM_REMOTE_ADDRESS%"),
                        _state(PEER_PRINCIPAL_KEY, "%DOWNSTREAM_PEER_URI_SAN%", "envoy.string"),
                    ],
                },
            },
            _router(),
        ],
    )
    return {
        "@type": LISTENER_TYPE,
        "name": CONNECT_TERMINATE,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": HBONE_PORT}},
        "filter_chains": [
            {"name": "default", "transport_socket": hbone_server_tls(paths), "filters": [hcm]}
        ],
    }


def _route_chain(
    route: WaypointRoute, paths: SidecarPaths, forward_client_cert: str | None
) -> dict[str, Any]:
    name = f"{route.address}_{route.port}"
    if route.tcp:
        filters = [*route.rbac, _tcp_proxy(name, route.cluster, paths)]
    else:
        options: dict[str, Any] = {"access_log": access_log(paths)}
        if forward_client_cert is not None:
            options["forward_client_cert_details"] = forward_client_cert
        http2 = inbound_hcm_http2_options(route.protocol)
        if http2 is not None:
            options["http2_protocol_options"] = http2
        filters = [
            _hcm(
                f"inbound_{name}",
                **options,
                route_config={
                    "name": route.cluster,
                    "virtual_hosts": [
                        {
                            "name": route.cluster,
                            "domains": ["*"],
                            "routes": [
                                {
                                    "match": {"prefix": "/"},
                                    "route": {"cluster": route.cluster, "timeout": "0s"},
                                }
                            ],
                        }
                    ],
                },
                http_filters=[*route.rbac, *grpc_web_filters(route.protocol), _router()],
            )
        ]
    return {
        "name": route.cluster,
        "filter_chain_match": {
            "destination_port": route.port,
            "prefix_ranges": [{"address_prefix": route.address, "prefix_len": 32}],
        },
        "filters": filters,
    }


def waypoint_listeners(plan: WaypointPlan, paths: SidecarPaths) -> list[dict[str, Any]]:
    result = [
        _connect_terminate(paths),
        {
            "@type": LISTENER_TYPE,
            "name": MAIN_INTERNAL,
            "internal_listener": {},
            "listener_filters": [
                {
                    "name": "envoy.filters.listener.original_dst",
                    "typed_config": {"@type": ORIGINAL_DST_TYPE},
                }
            ],
            # a CONNECT to a destination the waypoint does not serve matches no chain: closed
            "access_log": access_log(paths),
            "filter_chains": [
                _route_chain(route, paths, plan.forward_client_cert) for route in plan.routes
            ],
        },
    ]
    seen: set[str] = set()
    for route in plan.routes:
        if route.originate in seen:
            continue
        seen.add(route.originate)
        result.append(
            {
                "@type": LISTENER_TYPE,
                "name": route.originate,
                "internal_listener": {},
                "filter_chains": [
                    {
                        "filters": [
                            _tcp_proxy(
                                route.originate,
                                f"hbone|{route.endpoint_ip}",
                                paths,
                                tunneling_config={"hostname": route.authority},
                            )
                        ]
                    }
                ],
            }
        )
    return result


def internal_cluster(name: str, listener: str) -> dict[str, Any]:
    """A cluster whose one endpoint is the internal listener ``listener`` of the same Envoy
    (`envoy_internal_address`, raw bytes over the internal upstream socket): the waypoint's
    way into `main_internal` and its `connect_originate` listeners, and the sidecars' HBONE."""
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
                                "address": {
                                    "envoy_internal_address": {"server_listener_name": listener}
                                }
                            }
                        }
                    ]
                }
            ],
        },
        "transport_socket": {
            "name": "envoy.transport_sockets.internal_upstream",
            "typed_config": {
                "@type": INTERNAL_UPSTREAM_TYPE,
                "transport_socket": {
                    "name": "envoy.transport_sockets.raw_buffer",
                    "typed_config": {"@type": RAW_BUFFER_TYPE},
                },
            },
        },
    }


def waypoint_clusters(plan: WaypointPlan, paths: SidecarPaths) -> list[dict[str, Any]]:
    result = [internal_cluster(MAIN_INTERNAL, MAIN_INTERNAL)]
    endpoints: dict[str, str] = {}
    for route in plan.routes:
        cluster = internal_cluster(route.cluster, route.originate)
        options = None if route.tcp else cluster_http_protocol_options(route.protocol)
        if options is not None:
            cluster["typed_extension_protocol_options"] = options
        result.append(cluster)
        endpoints[route.endpoint_ip] = route.endpoint_identity
    for ip, identity in sorted(endpoints.items()):
        result.append(hbone_cluster(f"hbone|{ip}", ip, identity, paths))
    return copy.deepcopy(result)
