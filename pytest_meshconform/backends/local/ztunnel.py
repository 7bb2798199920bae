"""ztunnel played by Envoy: one ambient pod's in-pod ztunnel rendered as Envoy config (pure).

Real ztunnel is one process per node that, in its in-pod mode, opens its listeners inside each
enrolled pod's network namespace (istio.io, "Ztunnel traffic redirection"). The local mesh runs
one Envoy per enrolled pod inside that pod's namespace instead: the same sockets where ztunnel
has them, and its outbound HBONE connections leave from the pod's own address, as ztunnel's
do (one Envoy listening in many namespaces could not connect from them: Envoy refuses a network
namespace on a cluster's endpoint). What each listener does:

- ``ztunnel_outbound`` (15001, the pod's outbound TCP): a connection to an ambient workload (its
  Service address and port, or its pod address and a container port) goes through an HBONE
  tunnel: HTTP/2 CONNECT with the destination pod's address and target port as authority, over
  mutual TLS 1.3 with ALPN ``h2`` to that pod's 15008, the server's SPIFFE ID verified (ztunnel
  sends no SNI: it dials with the server name 0.0.0.0, which rustls does not send). Anything
  else leaves as it came (passthrough).
- ``ztunnel_inbound`` (15008, HBONE): mutual TLS 1.3, ALPN ``h2``, a client certificate of the
  mesh's trust domain required; each CONNECT authority ``<pod ip>:<port>`` is one virtual host
  whose RBAC is ztunnel's verdict for that port (a denied CONNECT is answered 401, as ztunnel
  answers); the stream is joined to the app on that port.
- ``ztunnel_inbound_plaintext`` (15006, the pod's other inbound TCP): per container port, the
  verdict for a peer without identity, then the app.

The verdict is the model's (``istio.ztunnel.ztunnel_admits`` over ``istio.ambient
.ztunnel_policies``), evaluated in `control.plan_ztunnels` for every peer the local mesh has and
rendered as Envoy RBAC allow-lists: peers are known by address (and, over HBONE, identity),
and a peer the mesh does not have is refused whenever a policy applies.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pytest_meshconform.backends.local.topology import TRUST_DOMAIN, Pod
from pytest_meshconform.backends.local.xds import SidecarPaths, bootstrap, static_cluster
from pytest_meshconform.istio.envoy import (
    CLUSTER_TYPE,
    DOWNSTREAM_TLS_TYPE,
    FILE_ACCESS_LOG_TYPE,
    HCM_TYPE,
    HTTP_PROTOCOL_OPTIONS,
    HTTP_PROTOCOL_OPTIONS_TYPE,
    HTTP_RBAC_TYPE,
    LISTENER_TYPE,
    ORIGINAL_DST_TYPE,
    ROOT_SECRET,
    ROUTER_TYPE,
    TCP_PROXY_TYPE,
    UPSTREAM_TLS_TYPE,
    WORKLOAD_SECRET,
)
from pytest_meshconform.istio.ztunnel import (
    HBONE_ALPN,
    HBONE_PORT,
    HBONE_TLS_VERSION,
    ZTUNNEL_CONNECT_TIMEOUT_S,
    ZTUNNEL_DENIED_STATUS,
    ZTUNNEL_INBOUND_PLAINTEXT_PORT,
    ZTUNNEL_OUTBOUND_PORT,
    hbone_authority,
)

__all__ = [
    "HBONE_LISTENER",
    "Tunnel",
    "ZtunnelPlan",
    "access_log",
    "hbone_client_tls",
    "hbone_cluster",
    "hbone_server_tls",
    "ztunnel_bootstrap",
    "ztunnel_clusters",
    "ztunnel_listeners",
]

HBONE_LISTENER: Final = "ztunnel_inbound"
PLAINTEXT_LISTENER: Final = "ztunnel_inbound_plaintext"
OUTBOUND_LISTENER: Final = "ztunnel_outbound"
PASSTHROUGH: Final = "passthrough"
BLACKHOLE: Final = "blackhole"
RBAC_PER_ROUTE_TYPE: Final = (
    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
)
# ztunnel's connect timeout (`istio.ztunnel.ZTUNNEL_CONNECT_TIMEOUT_S`), as Envoy spells it
CONNECT_TIMEOUT: Final = f"{ZTUNNEL_CONNECT_TIMEOUT_S}s"
# A peer ztunnel may be asked about: (source address, SPIFFE ID) over HBONE
Peer = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Tunnel:
    """One destination the pod's ztunnel tunnels to: what the app dialled (a Service address
    and port, or an ambient pod's address and port) and the workload behind it."""

    address: str
    port: int
    endpoint_ip: str
    target_port: int
    identity: str  # the server's SPIFFE ID, verified in its certificate
    # the CONNECT authority when it is not the endpoint's address and target port: through a
    # waypoint, the original destination (``hbone_target_destination``: what the app dialled)
    authority: str | None = None

    @property
    def connect_authority(self) -> str:
        return self.authority or hbone_authority(self.endpoint_ip, self.target_port)


@dataclass(frozen=True, slots=True)
class ZtunnelPlan:
    """Everything that decides one ambient pod's ztunnel config; equal plans render equal
    config. Verdicts per container port: None when no policy applies (ztunnel admits anyone),
    else the peers it admits (HBONE: address and identity; plaintext: address)."""

    pod: Pod
    tunnels: tuple[Tunnel, ...]
    hbone_peers: Mapping[int, tuple[Peer, ...] | None] = field(default_factory=dict, hash=False)
    plaintext_peers: Mapping[int, tuple[str, ...] | None] = field(default_factory=dict, hash=False)
    # HBONE's server side; other values only under the test-only faults `client-cert-optional`
    # and `tls10-allowed`
    require_client_certificate: bool = True
    hbone_min_tls: str = HBONE_TLS_VERSION


def ztunnel_bootstrap(pod: Pod, paths: SidecarPaths) -> dict[str, Any]:
    """The sidecar bootstrap (file-based LDS/CDS, admin socket, Istio's stats), as ztunnel's."""
    config = bootstrap(pod, paths)
    w = pod.workload
    config["node"]["id"] = (
        f"ztunnel~{pod.ip}~{w.name}.{w.namespace}~{w.namespace}.svc.cluster.local"
    )
    return config


def _access_log(paths: SidecarPaths) -> list[dict[str, Any]]:
    return [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {"@type": FILE_ACCESS_LOG_TYPE, "path": str(paths.access_log)},
        }
    ]


def _sds(paths: SidecarPaths, name: str) -> dict[str, Any]:
    source = paths.sds(name)
    return {
        "name": name,
        "sds_config": {
            "path_config_source": {
                "path": str(source),
                "watched_directory": {"path": str(source.parent)},
            },
            "resource_api_version": "V3",
        },
    }


def _tls_params(minimum: str = HBONE_TLS_VERSION) -> dict[str, Any]:
    return {
        "tls_minimum_protocol_version": minimum,
        "tls_maximum_protocol_version": HBONE_TLS_VERSION,
    }


def _original_dst() -> list[dict[str, Any]]:
    return [
        {
            "name": "envoy.filters.listener.original_dst",
            "typed_config": {"@type": ORIGINAL_DST_TYPE},
        }
    ]


def _tcp_proxy(stat_prefix: str, cluster: str, paths: SidecarPaths, **extra: Any) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": TCP_PROXY_TYPE,
            "stat_prefix": stat_prefix,
            "cluster": cluster,
            "access_log": _access_log(paths),
            **extra,
        },
    }


def _allow_only(principals: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Envoy RBAC rules admitting exactly these principals (none: nobody)."""
    policies: dict[str, Any] = {}
    if principals:
        policies["ztunnel-verdict"] = {
            "permissions": [{"any": True}],
            "principals": list(principals),
        }
    return {"action": "ALLOW", "policies": policies}


def _ip(address: str) -> dict[str, Any]:
    return {"direct_remote_ip": {"address_prefix": address, "prefix_len": 32}}


def _hbone_rules(peers: Sequence[Peer]) -> dict[str, Any]:
    return _allow_only(
        [
            {
                "and_ids": {
                    "ids": [_ip(ip), {"authenticated": {"principal_name": {"exact": identity}}}]
                }
            }
            for ip, identity in peers
        ]
    )


def _inbound_cluster(port: int) -> str:
    return f"inbound|{port}"


def _hbone_cluster(ip: str) -> str:
    return f"hbone|{ip}"


def ztunnel_listeners(plan: ZtunnelPlan, paths: SidecarPaths) -> list[dict[str, Any]]:
    pod = plan.pod
    ports = pod.workload.container_ports
    virtual_hosts = []
    for port in ports:
        vhost: dict[str, Any] = {
            "name": _inbound_cluster(port),
            "domains": [hbone_authority(pod.ip, port)],
            "routes": [
                {
                    "match": {"connect_matcher": {}},
                    "route": {
                        "cluster": _inbound_cluster(port),
                        "timeout": "0s",
                        "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}],
                    },
                }
            ],
        }
        peers = plan.hbone_peers.get(port)
        if peers is not None:
            vhost["typed_per_filter_config"] = {
                "envoy.filters.http.rbac": {
                    "@type": RBAC_PER_ROUTE_TYPE,
                    "rbac": {"rules": _hbone_rules(peers)},
                }
            }
        virtual_hosts.append(vhost)
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": HBONE_LISTENER,
        "codec_type": "HTTP2",
        "http2_protocol_options": {"allow_connect": True},
        "upgrade_configs": [{"upgrade_type": "CONNECT"}],
        "access_log": _access_log(paths),
        # Envoy's RBAC answers 403; ztunnel answers a denied CONNECT 401
        "local_reply_config": {
            "mappers": [
                {
                    "filter": {
                        "status_code_filter": {
                            "comparison": {
                                "op": "EQ",
                                "value": {"default_value": 403, "runtime_key": "ztunnel.denied"},
                            }
                        }
                    },
                    "status_code": ZTUNNEL_DENIED_STATUS,
                }
            ]
        },
        "route_config": {"name": HBONE_LISTENER, "virtual_hosts": virtual_hosts},
        "http_filters": [
            # no rules here: each virtual host (one container port) carries its verdict
            {"name": "envoy.filters.http.rbac", "typed_config": {"@type": HTTP_RBAC_TYPE}},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}},
        ],
    }
    hbone_tls = hbone_server_tls(paths, plan.require_client_certificate, plan.hbone_min_tls)
    # A peer ztunnel refuses in plaintext matches no chain: Envoy closes the connection with
    # the request unread, which the kernel turns into a reset (what ztunnel's refusal looks
    # like: istio.io's "Use Layer 4 security policy" shows curl's "Connection reset by peer").
    plaintext_chains: list[dict[str, Any]] = [
        {
            "name": f"{PLAINTEXT_LISTENER}_blackhole",  # sent to 15006 itself: nothing served
            "filter_chain_match": {"destination_port": ZTUNNEL_INBOUND_PLAINTEXT_PORT},
            "filters": [_tcp_proxy(f"{PLAINTEXT_LISTENER}_blackhole", BLACKHOLE, paths)],
        }
    ]
    for port in ports:
        allowed = plan.plaintext_peers.get(port)
        if allowed is not None and not allowed:
            continue
        match: dict[str, Any] = {"destination_port": port}
        if allowed is not None:
            match["source_prefix_ranges"] = [
                {"address_prefix": ip, "prefix_len": 32} for ip in allowed
            ]
        plaintext_chains.append(
            {
                "name": f"{PLAINTEXT_LISTENER}_{port}",
                "filter_chain_match": match,
                "filters": [
                    _tcp_proxy(f"{PLAINTEXT_LISTENER}_{port}", _inbound_cluster(port), paths)
                ],
            }
        )
    outbound_chains = []
    for tunnel in plan.tunnels:
        outbound_chains.append(
            {
                "name": f"hbone_{tunnel.address}_{tunnel.port}",
                "filter_chain_match": {
                    "destination_port": tunnel.port,
                    "prefix_ranges": [{"address_prefix": tunnel.address, "prefix_len": 32}],
                },
                "filters": [
                    _tcp_proxy(
                        f"hbone_{tunnel.address}_{tunnel.port}",
                        _hbone_cluster(tunnel.endpoint_ip),
                        paths,
                        tunneling_config={"hostname": tunnel.connect_authority},
                    )
                ],
            }
        )

    def listener(name: str, port: int, **rest: Any) -> dict[str, Any]:
        return {
            "@type": LISTENER_TYPE,
            "name": name,
            "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
            **rest,
        }

    result = [
        listener(
            HBONE_LISTENER,
            HBONE_PORT,
            filter_chains=[
                {
                    "name": HBONE_LISTENER,
                    "transport_socket": hbone_tls,
                    "filters": [
                        {
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": hcm,
                        }
                    ],
                }
            ],
        ),
        listener(
            OUTBOUND_LISTENER,
            ZTUNNEL_OUTBOUND_PORT,
            listener_filters=_original_dst(),
            filter_chains=outbound_chains,
            default_filter_chain={
                "name": PASSTHROUGH,
                "filters": [_tcp_proxy(PASSTHROUGH, PASSTHROUGH, paths)],
            },
        ),
    ]
    result.append(
        listener(
            PLAINTEXT_LISTENER,
            ZTUNNEL_INBOUND_PLAINTEXT_PORT,
            listener_filters=_original_dst(),
            # a connection no chain takes (a refused peer, a port the pod does not serve) is
            # logged here, flag NR
            access_log=_access_log(paths),
            filter_chains=plaintext_chains,
        )
    )
    return result


def ztunnel_clusters(plan: ZtunnelPlan, paths: SidecarPaths) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = [
        {
            "@type": CLUSTER_TYPE,
            "name": PASSTHROUGH,
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "connect_timeout": CONNECT_TIMEOUT,
        },
        # no endpoint: a connection sent to it is closed
        {"@type": CLUSTER_TYPE, "name": BLACKHOLE, "type": "STATIC", "connect_timeout": "1s"},
    ]
    for port in plan.pod.workload.container_ports:
        result.append(
            static_cluster(
                _inbound_cluster(port), plan.pod.ip, port, connect_timeout=CONNECT_TIMEOUT
            )
        )
    identities = {t.endpoint_ip: t.identity for t in plan.tunnels}
    for ip, identity in sorted(identities.items()):
        result.append(hbone_cluster(_hbone_cluster(ip), ip, identity, paths))
    return copy.deepcopy(result)


def hbone_server_tls(
    paths: SidecarPaths,
    require_client_certificate: bool = True,
    min_tls: str = HBONE_TLS_VERSION,
) -> dict[str, Any]:
    """HBONE's server side (15008): the workload certificate, TLS 1.3, ALPN ``h2``, a client
    certificate of the mesh's trust domain (ztunnel's ``TrustDomainVerifier``, src/tls/
    workload.rs; a waypoint's ``connect_terminate`` listener the same, ``RequireClientCertificate``,
    pilot/pkg/networking/core/listener_waypoint.go)."""
    validation: dict[str, Any] = {
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"prefix": f"spiffe://{TRUST_DOMAIN}/"}}
                ]
            },
            "validation_context_sds_secret_config": _sds(paths, ROOT_SECRET),
        }
    }
    if not require_client_certificate:
        # the `client-cert-optional` fault: Envoy asks for a client certificate whenever a SAN
        # matcher is set, so the fault drops it too (a certificate sent is still verified)
        validation = {"validation_context_sds_secret_config": _sds(paths, ROOT_SECRET)}
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": DOWNSTREAM_TLS_TYPE,
            "require_client_certificate": require_client_certificate,
            "common_tls_context": {
                "tls_params": _tls_params(min_tls),
                "alpn_protocols": [HBONE_ALPN],
                "tls_certificate_sds_secret_configs": [_sds(paths, WORKLOAD_SECRET)],
                **validation,
            },
        },
    }


def hbone_client_tls(paths: SidecarPaths, identity: str) -> dict[str, Any]:
    """HBONE's client side: TLS 1.3, ALPN ``h2``, no SNI, the workload certificate, the
    server's SPIFFE ID verified exactly (ztunnel's ``IdentityVerifier``, src/tls/workload.rs)."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": UPSTREAM_TLS_TYPE,
            "common_tls_context": {
                "tls_params": _tls_params(),
                "alpn_protocols": [HBONE_ALPN],
                "tls_certificate_sds_secret_configs": [_sds(paths, WORKLOAD_SECRET)],
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [
                            {"san_type": "URI", "matcher": {"exact": identity}}
                        ]
                    },
                    "validation_context_sds_secret_config": _sds(paths, ROOT_SECRET),
                },
            },
        },
    }


def hbone_cluster(name: str, ip: str, identity: str, paths: SidecarPaths) -> dict[str, Any]:
    """An HTTP/2 cluster to ``ip``:15008 over HBONE's client TLS, for CONNECT tunnels."""
    return static_cluster(
        name,
        ip,
        HBONE_PORT,
        # Envoy's connect timeout runs until the TLS handshake is done (`SslSocket::onSuccess`
        # raises `Connected`), ztunnel's bounds the TCP connect only: 10 s for both here, so
        # a handshake slowed by a loaded machine is not a failure ztunnel would not have
        connect_timeout=CONNECT_TIMEOUT,
        transport_socket=hbone_client_tls(paths, identity),
        typed_extension_protocol_options={
            HTTP_PROTOCOL_OPTIONS: {
                "@type": HTTP_PROTOCOL_OPTIONS_TYPE,
                # one CONNECT per TLS connection, where ztunnel pools them for 5 min
                # (POOL_UNUSED_RELEASE_TIMEOUT): each connection's handshake is then on the
                # wire of the capture that sees its request (docs/istio-model.md)
                "common_http_protocol_options": {"max_requests_per_connection": 1},
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    )


def access_log(paths: SidecarPaths) -> list[dict[str, Any]]:
    """The pod's access log, as every listener and TCP proxy of the local mesh writes it."""
    return _access_log(paths)
