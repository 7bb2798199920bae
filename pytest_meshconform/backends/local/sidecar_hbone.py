"""A sidecar's HBONE to ambient pods, rendered as Envoy config (pure).

Where istiod gives a sidecar's outbound cluster the ``hbone`` transport socket match and the
endpoint ``tunnel: http`` (`istio.interop.sidecar_sends_hbone`), the sidecar tunnels its
connection through its ``connect_originate`` cluster: HTTP/2 CONNECT to the endpoint's port
15008, the endpoint's address and target port as authority, TLS 1.3 only, ALPN ``h2``, no SNI,
its own certificate, the server's checked against the mesh root only (istiod's
``buildConnectOriginate(..., nil)`` adds no SAN matcher for a sidecar, nor
``buildCommonConnectTLSContext`` without trust-domain aliases).

Rendered as the local waypoint does it: the outbound cluster's endpoint becomes an internal
listener ``connect_originate|<ip>:<port>`` (istiod: one ``connect_originate`` listener whose
original-destination cluster reads the endpoint from metadata) whose TCP proxy tunnels to the
cluster ``connect_originate|<ip>`` (``<ip>``:15008 over HBONE's client TLS). The sidecar's
bootstrap enables Envoy's internal listeners (`with_internal_listeners`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Final

from pytest_meshconform.backends.local.waypoint import (
    INTERNAL_LISTENER_TYPE,
    internal_cluster,
)
from pytest_meshconform.backends.local.xds import SidecarPaths
from pytest_meshconform.backends.local.ztunnel import access_log, hbone_client_tls
from pytest_meshconform.istio.envoy import (
    CLUSTER_TYPE,
    HTTP_PROTOCOL_OPTIONS,
    HTTP_PROTOCOL_OPTIONS_TYPE,
    LISTENER_TYPE,
    MESH_CONNECT_TIMEOUT,
    TCP_PROXY_TYPE,
    outbound_cluster_name,
)
from pytest_meshconform.istio.ztunnel import HBONE_PORT, hbone_authority

__all__ = ["CONNECT_ORIGINATE", "hbone_clusters", "hbone_listeners", "with_internal_listeners"]

CONNECT_ORIGINATE: Final = "connect_originate"

# (fqdn, Service port) -> (endpoint address, target port): the outbound clusters that tunnel
SidecarTunnels = Mapping[tuple[str, int], tuple[str, int]]


def with_internal_listeners(config: dict[str, Any]) -> dict[str, Any]:
    """A sidecar bootstrap with Envoy's internal listeners enabled (for ``connect_originate``)."""
    config["bootstrap_extensions"] = [
        {
            "name": "envoy.bootstrap.internal_listener",
            "typed_config": {"@type": INTERNAL_LISTENER_TYPE},
        }
    ]
    return config


def _originate(ip: str, port: int) -> str:
    return f"{CONNECT_ORIGINATE}|{hbone_authority(ip, port)}"


def _connect_tls(paths: SidecarPaths) -> dict[str, Any]:
    """HBONE's client TLS as istiod's sidecar ``connect_originate`` has it: no SAN matcher."""
    socket = hbone_client_tls(paths, "")
    validation = socket["typed_config"]["common_tls_context"]["combined_validation_context"]
    validation["default_validation_context"] = {}
    return socket


def hbone_clusters(
    clusters: list[dict[str, Any]], tunnels: SidecarTunnels, paths: SidecarPaths
) -> list[dict[str, Any]]:
    """The sidecar's clusters with each tunnelled outbound cluster's endpoint replaced by its
    internal ``connect_originate`` listener, plus one HBONE cluster per endpoint address."""
    by_name = {outbound_cluster_name(fqdn, port): end for (fqdn, port), end in tunnels.items()}
    result = []
    for cluster in copy.deepcopy(clusters):
        end = by_name.get(cluster["name"])
        if end is not None:
            internal = internal_cluster(cluster["name"], _originate(*end))
            cluster.pop("lb_policy", None)
            for key in ("type", "connect_timeout", "load_assignment", "transport_socket"):
                cluster[key] = internal[key]
        result.append(cluster)
    for ip in sorted({ip for ip, _ in tunnels.values()}):
        result.append(
            {
                "@type": CLUSTER_TYPE,
                "name": f"{CONNECT_ORIGINATE}|{ip}",
                "type": "STATIC",
                "connect_timeout": MESH_CONNECT_TIMEOUT,
                "load_assignment": {
                    "cluster_name": f"{CONNECT_ORIGINATE}|{ip}",
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {
                                                "address": ip,
                                                "port_value": HBONE_PORT,
                                            }
                                        }
                                    }
                                }
                            ]
                        }
                    ],
                },
                "transport_socket": _connect_tls(paths),
                "typed_extension_protocol_options": {
                    HTTP_PROTOCOL_OPTIONS: {
                        "@type": HTTP_PROTOCOL_OPTIONS_TYPE,
                        # one CONNECT per TLS connection, as the local ztunnel (docs)
                        "common_http_protocol_options": {"max_requests_per_connection": 1},
                        "explicit_http_config": {"http2_protocol_options": {}},
                    }
                },
            }
        )
    return result


def hbone_listeners(
    listeners: list[dict[str, Any]], tunnels: SidecarTunnels, paths: SidecarPaths
) -> list[dict[str, Any]]:
    """The sidecar's listeners plus one internal ``connect_originate`` listener per tunnelled
    endpoint: a TCP proxy tunnelling to it (CONNECT authority ``<ip>:<target port>``)."""
    result = copy.deepcopy(listeners)
    for ip, port in sorted(set(tunnels.values())):
        name = _originate(ip, port)
        result.append(
            {
                "@type": LISTENER_TYPE,
                "name": name,
                "internal_listener": {},
                "filter_chains": [
                    {
                        "filters": [
                            {
                                "name": "envoy.filters.network.tcp_proxy",
                                "typed_config": {
                                    "@type": TCP_PROXY_TYPE,
                                    "stat_prefix": name,
                                    "cluster": f"{CONNECT_ORIGINATE}|{ip}",
                                    "access_log": access_log(paths),
                                    "tunneling_config": {"hostname": hbone_authority(ip, port)},
                                },
                            }
                        ]
                    }
                ],
            }
        )
    return result
