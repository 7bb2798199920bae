"""The local control plane (pure): policies in force -> a plan for every sidecar.

Every Istio decision comes from :mod:`pytest_meshconform.istio` (the model the kube backend
checks real sidecars against too); this module only adds the local mesh's pods and the
test-only :class:`Faults`, applied after the model.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from pytest_meshconform.backends.local.topology import TRUST_DOMAIN, Topology
from pytest_meshconform.backends.local.waypoint import (
    PEER_PRINCIPAL_KEY,
    WaypointPlan,
    WaypointRoute,
)
from pytest_meshconform.backends.local.xds import SidecarPlan
from pytest_meshconform.backends.local.ztunnel import Tunnel, ZtunnelPlan
from pytest_meshconform.istio import authorization_for, plan_mesh
from pytest_meshconform.istio.ambient import ztunnel_peer_policies, ztunnel_policies
from pytest_meshconform.istio.api import MtlsMode, PeerAuthentication, Policy
from pytest_meshconform.istio.interop import sidecar_sends_hbone
from pytest_meshconform.istio.protocol import PortProtocol, protocol_of
from pytest_meshconform.istio.tls import MinProtocolVersion, TlsParams, inbound_tls_params
from pytest_meshconform.istio.waypoint import waypoint_authorization
from pytest_meshconform.istio.ztunnel import (
    HBONE_TLS_VERSION,
    Address,
    Connection,
    Match,
    ZtunnelAuthorization,
    hbone_authority,
    ztunnel_admits,
)
from pytest_meshconform.mesh import Workload
from pytest_meshconform.settings import FAULT_NAMES

__all__ = ["Faults", "issued_identity", "plan_sidecars", "plan_waypoints", "plan_ztunnels"]


@dataclass(frozen=True, slots=True)
class Faults:
    """Test-only ways to break the local mesh, to prove the suites can fail (never for users)."""

    # render STRICT inbound chains as PERMISSIVE; ztunnel: ignore the STRICT-derived policies
    strict_as_permissive: bool = False
    no_xfcc: bool = False  # inbound HCM does not set X-Forwarded-Client-Cert
    no_rotation: bool = False  # the agent never rotates certificates
    wrong_spiffe_id: bool = False  # workload certs name another service account
    # inbound mTLS (and HBONE's) accepts TLS 1.0 (and a CBC suite it needs, sidecars)
    tls10_allowed: bool = False
    client_cert_optional: bool = False  # inbound mTLS and HBONE require no client certificate
    # RBAC principal/namespace matchers match anyone (sidecars' and waypoints' RBAC filters,
    # ztunnel's policies)
    authz_ignores_principals: bool = False
    waypoint_ignores_l7: bool = False  # waypoints enforce no AuthorizationPolicy at all
    # waypoints pass the client's own X-Forwarded-Client-Cert on (ALWAYS_FORWARD_ONLY), where
    # istiod leaves Envoy's SANITIZE
    waypoint_forwards_xfcc: bool = False

    NAMES = FAULT_NAMES

    @classmethod
    def parse(cls, names: Iterable[str]) -> Faults:
        flags = {}
        for name in names:
            if name not in cls.NAMES:
                raise ValueError(
                    f"unknown mesh fault {name!r}; known faults: {', '.join(cls.NAMES)}"
                )
            flags[name.replace("-", "_")] = True
        return cls(**flags)


def plan_sidecars(
    topology: Topology,
    policies: Iterable[Policy],
    root_namespace: str,
    faults: Faults | None = None,
    min_tls_version: MinProtocolVersion = "TLS_AUTO",
) -> Mapping[str, SidecarPlan]:
    """Each sidecar's plan: the Istio model's expectations for the topology, towards each
    Service port's (single) endpoint, with the test-only faults applied on top.

    ``min_tls_version`` is the mesh's ``meshConfig.meshMTLS.minProtocolVersion``."""
    faults = faults or Faults()
    policies = tuple(policies)
    inbound_tls = inbound_tls_params(min_tls_version)
    if faults.tls10_allowed:  # a TLS 1.0 handshake also needs a suite TLS 1.0 has (CBC)
        inbound_tls = TlsParams(
            "TLSv1_0", inbound_tls.maximum, (*inbound_tls.cipher_suites, "ECDHE-RSA-AES128-SHA")
        )
    models = plan_mesh(
        [pod.workload for pod in topology.pods],
        [entry.service for entry in topology.services],
        policies,
        root_namespace=root_namespace,
        trust_domain=TRUST_DOMAIN,
    )

    def broken(mode: MtlsMode) -> MtlsMode:
        if faults.strict_as_permissive and mode is MtlsMode.STRICT:
            return MtlsMode.PERMISSIVE
        return mode

    # istiod's PILOT_ENABLE_SENDING_HBONE: on wherever ambient is (pilot/pkg/features/ambient.go)
    hbone_send = any(pod.workload.ambient for pod in topology.pods)
    plans: dict[str, SidecarPlan] = {}
    for pod in topology.pods:
        model = models.get(pod.workload.key)
        if model is None:
            continue
        authz = authorization_for(
            pod.workload, policies, root_namespace=root_namespace, trust_domain=TRUST_DOMAIN
        )
        http_rbac, tcp_rbac = authz.http_filters(), authz.network_filters()
        if faults.authz_ignores_principals:
            http_rbac, tcp_rbac = _any_peer(http_rbac), _any_peer(tcp_rbac)
        plans[pod.workload.key] = SidecarPlan(
            pod=pod,
            # istiod's per-port chains: the ports a Service targets (buildInboundChainConfigs);
            # the others take the passthrough chains, per port where portLevelMtls names them
            inbound_modes={
                port: broken(mode)
                for port, mode in model.inbound.items()
                if port in model.inbound_protocols
            },
            passthrough_modes={port: broken(mode) for port, mode in model.passthrough.items()},
            default_inbound_mode=broken(model.default_inbound),
            outbound={
                (e.service.fqdn, e.service.port): model.outbound[
                    (e.service.fqdn, e.service.port)
                ].towards(e.endpoints[0].workload.key)
                for e in topology.services
            },
            services=topology.services,
            set_xfcc=not faults.no_xfcc,
            inbound_tls=inbound_tls,
            require_client_certificate=not faults.client_cert_optional,
            http_rbac=tuple(http_rbac),
            tcp_rbac=tuple(tcp_rbac),
            tcp_ports=frozenset(
                port for port, protocol in model.inbound_protocols.items() if protocol.is_tcp
            ),
            inbound_protocols=model.inbound_protocols,
            # to the Service's own endpoint, waypoint or not: istiod gives a sidecar no
            # waypoint (`istio.waypoint.envoy_calls_waypoint("sidecar")` is False), so its
            # tunnel goes to the pod and the waypoint's policies never see it
            hbone_tunnels={
                (e.service.fqdn, e.service.port): (e.endpoints[0].ip, e.service.target_port)
                for e in topology.services
                if sidecar_sends_hbone(e.endpoints[0].workload, hbone_send=hbone_send)
            },
        )
    return plans


def _any_peer(config: Any) -> Any:
    """The `authz-ignores-principals` fault: every peer-identity matcher matches anyone (a
    sidecar's ``authenticated`` matchers, a waypoint's on the filter state the tunnel's client
    identity is kept in)."""
    if isinstance(config, dict):
        if "authenticated" in config:
            return {"any": True}
        if config.get("filter_state", {}).get("key") == PEER_PRINCIPAL_KEY:
            return {"any": True}
        return {key: _any_peer(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_any_peer(item) for item in config]
    return config


def _remote_ip(config: Any) -> Any:
    """istiod matches ``ipBlocks`` on the direct remote address; on the waypoint's internal
    listener upstream Envoy restores the tunnel's source (the client pod's address) as the
    remote address only (``original_dst.remote_ip``), so the local waypoint matches that."""
    if isinstance(config, dict):
        return {
            ("remote_ip" if key == "direct_remote_ip" else key): _remote_ip(value)
            for key, value in config.items()
        }
    if isinstance(config, list):
        return [_remote_ip(item) for item in config]
    return config


# Any IPv4 source: what the `authz-ignores-principals` fault puts where a ztunnel policy names
# peers by identity (principals, namespaces, service accounts), so that it matches anyone.
_ANYONE: Final = Match(source_ips=(Address(ipaddress.ip_address("0.0.0.0"), 0),))


def _any_identity(policy: ZtunnelAuthorization) -> ZtunnelAuthorization:
    """The `authz-ignores-principals` fault in ztunnel: a match that names peers by identity
    matches anyone (the negative ones, which istiod derives from STRICT, are kept)."""

    def loosen(match: Match) -> Match:
        if match.principals or match.namespaces or match.service_accounts:
            return _ANYONE
        return match

    groups = tuple(
        tuple(tuple(loosen(m) for m in clause) for clause in group) for group in policy.groups
    )
    return dataclasses.replace(policy, groups=groups)


def issued_identity(workload: Workload, faults: Faults) -> tuple[str, str]:
    """(namespace, service account) the run's CA names in the workload's certificate."""
    account = workload.service_account
    if faults.wrong_spiffe_id:
        account = f"{account}-impostor"
    return workload.namespace, account


def _spiffe_id(workload: Workload, faults: Faults) -> str:
    namespace, account = issued_identity(workload, faults)
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{account}"


def plan_ztunnels(
    topology: Topology,
    policies: Iterable[Policy],
    root_namespace: str,
    faults: Faults | None = None,
) -> Mapping[str, ZtunnelPlan]:
    """Each ambient pod's ztunnel plan: where its outbound connections tunnel (every Service
    port and pod port whose endpoint is ambient) and ztunnel's verdict on each of its ports
    (the model's `ztunnel_admits` over `ztunnel_policies`) for every peer the local mesh has:
    each ambient pod over HBONE with the identity its certificate names, each pod in
    plaintext."""
    faults = faults or Faults()
    policies = tuple(policies)
    ambient = [pod for pod in topology.pods if pod.workload.ambient]
    tunnels: list[Tunnel] = []
    for entry in topology.services:
        endpoint = entry.endpoints[0]
        if not endpoint.workload.ambient or entry.service.headless:  # headless: the pod's own
            continue
        waypoint = topology.service_waypoint(entry.service)
        if waypoint is not None:  # build_request: to the Service's waypoint, authority = VIP
            tunnels.append(
                Tunnel(
                    entry.vip,
                    entry.service.port,
                    waypoint.pod.ip,
                    entry.service.port,
                    _spiffe_id(waypoint.pod.workload, faults),
                    authority=hbone_authority(entry.vip, entry.service.port),
                )
            )
            continue
        tunnels.append(
            Tunnel(
                entry.vip,
                entry.service.port,
                endpoint.ip,
                entry.service.target_port,
                _spiffe_id(endpoint.workload, faults),
            )
        )
    for pod in ambient:
        through = topology.workload_waypoint(pod)
        for port in pod.workload.container_ports:
            if through is not None:  # build_request: the workload's waypoint, authority kept
                tunnels.append(
                    Tunnel(
                        pod.ip,
                        port,
                        through.pod.ip,
                        port,
                        _spiffe_id(through.pod.workload, faults),
                        authority=hbone_authority(pod.ip, port),
                    )
                )
                continue
            identity = _spiffe_id(pod.workload, faults)
            tunnels.append(Tunnel(pod.ip, port, pod.ip, port, identity))
    # every peer that opens HBONE to a ztunnel: ambient pods' ztunnels, waypoints and sidecars
    # (each sends HBONE to ambient pods: `istio.interop.sidecar_sends_hbone`)
    sidecars = [pod for pod in topology.pods if pod.workload.has_sidecar]
    hbone_sources = [
        (pod.ip, _spiffe_id(pod.workload, faults))
        for pod in (*ambient, *(w.pod for w in topology.waypoints), *sidecars)
    ]
    plans: dict[str, ZtunnelPlan] = {}
    for pod in ambient:
        w = pod.workload
        enforced = ztunnel_policies(policies, w.namespace, w.labels, root_namespace)
        if faults.strict_as_permissive:  # ztunnel ignores what istiod derived from STRICT
            derived = {
                p.key
                for p in ztunnel_peer_policies(
                    [p for p in policies if isinstance(p, PeerAuthentication)],
                    w.namespace,
                    w.labels,
                    root_namespace,
                )
            }
            enforced = tuple(p for p in enforced if p.key not in derived)
        if faults.authz_ignores_principals:
            enforced = tuple(_any_identity(p) for p in enforced)
        hbone: dict[int, tuple[tuple[str, str], ...] | None] = {}
        plaintext: dict[int, tuple[str, ...] | None] = {}
        for port in w.container_ports:
            if not enforced:
                hbone[port] = plaintext[port] = None
                continue
            hbone[port] = tuple(
                (ip, peer)
                for ip, peer in hbone_sources
                if ztunnel_admits(enforced, Connection(port, peer, ip, pod.ip))
            )
            plaintext[port] = tuple(
                other.ip
                for other in topology.all_pods
                if ztunnel_admits(enforced, Connection(port, None, other.ip, pod.ip))
            )
        plans[w.key] = ZtunnelPlan(
            pod,
            tuple(tunnels),
            hbone,
            plaintext,
            require_client_certificate=not faults.client_cert_optional,
            hbone_min_tls="TLSv1_0" if faults.tls10_allowed else HBONE_TLS_VERSION,
        )
    return plans


def plan_waypoints(
    topology: Topology,
    policies: Iterable[Policy],
    root_namespace: str,
    faults: Faults | None = None,
) -> Mapping[str, WaypointPlan]:
    """Each waypoint's plan: every Service port whose traffic goes through it (the model's
    `service_waypoint`), with the RBAC filters of the policies bound to it for that Service
    (`waypoint_authorization`); the test-only `waypoint-ignores-l7` fault drops them all, and
    `waypoint-forwards-xfcc` makes its HTTP connection managers pass a client's XFCC on."""
    faults = faults or Faults()
    policies = tuple(policies)
    plans: dict[str, WaypointPlan] = {}
    for entry in topology.waypoints:
        routes = []
        for service_entry in topology.services:
            service = service_entry.service
            if service.headless or topology.service_waypoint(service) != entry:
                continue  # headless: clients dial the pod's address, no waypoint (type service)
            endpoint = service_entry.endpoints[0]
            protocol = protocol_of(service)
            tcp = protocol.is_tcp
            authz = waypoint_authorization(
                entry.waypoint,
                service,
                policies,
                root_namespace=root_namespace,
                trust_domain=TRUST_DOMAIN,
            )
            rbac = _remote_ip(authz.network_filters() if tcp else authz.http_filters())
            if faults.authz_ignores_principals:
                rbac = _any_peer(rbac)
            routes.append(
                WaypointRoute(
                    address=service_entry.vip,
                    port=service.port,
                    fqdn=service.fqdn,
                    endpoint_ip=endpoint.ip,
                    target_port=service.target_port,
                    endpoint_identity=_spiffe_id(endpoint.workload, faults),
                    protocol=protocol,
                    rbac=() if faults.waypoint_ignores_l7 else tuple(rbac),
                )
            )
        # workload-addressed traffic (waypoints for `workload` or `all`): one chain per pod port,
        # with the policies bound to the waypoint itself (istiod's workload chains build their
        # filters without a Service); HTTP (of that port's protocol) when a Service's HTTP port
        # targets it, else TCP
        for pod in topology.pods:
            if not pod.workload.ambient or topology.workload_waypoint(pod) != entry:
                continue
            authz = waypoint_authorization(
                entry.waypoint,
                None,
                policies,
                root_namespace=root_namespace,
                trust_domain=TRUST_DOMAIN,
            )
            for port in pod.workload.container_ports:
                protocol = next(
                    (
                        protocol_of(e.service)
                        for e in topology.services
                        if e.endpoints[0] == pod
                        and e.service.target_port == port
                        and not protocol_of(e.service).is_tcp
                    ),
                    PortProtocol.TCP,
                )
                tcp = protocol.is_tcp
                rbac = _remote_ip(authz.network_filters() if tcp else authz.http_filters())
                if faults.authz_ignores_principals:
                    rbac = _any_peer(rbac)
                routes.append(
                    WaypointRoute(
                        address=pod.ip,
                        port=port,
                        fqdn="",
                        endpoint_ip=pod.ip,
                        target_port=port,
                        endpoint_identity=_spiffe_id(pod.workload, faults),
                        protocol=protocol,
                        rbac=() if faults.waypoint_ignores_l7 else tuple(rbac),
                    )
                )
        plans[entry.pod.workload.key] = WaypointPlan(
            entry.pod,
            entry.waypoint,
            tuple(routes),
            forward_client_cert="ALWAYS_FORWARD_ONLY" if faults.waypoint_forwards_xfcc else None,
        )
    return plans
