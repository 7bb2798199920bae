"""The entry point: workloads, Services and the policies in force in, and for every sidecar
what its Envoy must do out (pure). Both backends take their expectations from here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from pytest_meshconform.istio.api import (
    AuthorizationPolicy,
    DestinationRule,
    MtlsMode,
    PeerAuthentication,
    Policy,
    PolicyError,
)
from pytest_meshconform.istio.destination_rule import destination_rule_for
from pytest_meshconform.istio.peer_authentication import effective_mtls_mode, port_level_ports
from pytest_meshconform.istio.protocol import PortProtocol, protocol_of
from pytest_meshconform.istio.upstream import Upstream, upstream
from pytest_meshconform.mesh import Service, Workload

__all__ = [
    "Sidecar",
    "endpoints_of",
    "inbound_protocols",
    "plan_mesh",
    "plan_sidecar",
    "pod_ip_upstream",
]


@dataclass(frozen=True, slots=True)
class Sidecar:
    """What one sidecar's Envoy must implement.

    ``inbound`` maps each container port to the mTLS mode its inbound chains enforce;
    ``default_inbound`` is the mode for any other port (the passthrough chains).
    ``outbound`` maps (Service FQDN, Service port) to the cluster towards it.
    ``inbound_protocols`` maps each container port a Service port targets to that port's
    protocol (the inbound listener's filters: HTTP connection manager or TCP proxy).
    ``passthrough`` maps each port the effective PeerAuthentication's ``portLevelMtls`` names
    but no Service port targets to its mode: istiod gives each a passthrough filter chain of
    its own (``Builder.ForPassthrough``; release note
    ``peer-authn-port-level-pass-through-filter``), every other unmatched port takes the
    ``default_inbound`` ones.
    """

    workload: Workload
    inbound: Mapping[int, MtlsMode] = field(hash=False)
    default_inbound: MtlsMode
    outbound: Mapping[tuple[str, int], Upstream] = field(hash=False)
    inbound_protocols: Mapping[int, PortProtocol] = field(default_factory=dict, hash=False)
    passthrough: Mapping[int, MtlsMode] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inbound", MappingProxyType(dict(self.inbound)))
        object.__setattr__(self, "outbound", MappingProxyType(dict(self.outbound)))
        object.__setattr__(
            self, "inbound_protocols", MappingProxyType(dict(self.inbound_protocols))
        )
        object.__setattr__(self, "passthrough", MappingProxyType(dict(self.passthrough)))


def endpoints_of(service: Service, workloads: Iterable[Workload]) -> tuple[Workload, ...]:
    """The Service's endpoints: the workloads of its namespace its selector selects (every
    label of ``selector`` when given, as Kubernetes matches it, else the ``app`` label)."""
    wanted = dict(service.selector) or {"app": service.selector_app}
    return tuple(
        w
        for w in workloads
        if w.namespace == service.namespace and all(w.labels.get(k) == v for k, v in wanted.items())
    )


def plan_sidecar(
    client: Workload,
    policies: Iterable[Policy],
    *,
    workloads: Sequence[Workload],
    services: Sequence[Service],
    root_namespace: str = "istio-system",
    trust_domain: str = "cluster.local",
    auto_mtls: bool = True,
) -> Sidecar:
    """What ``client``'s sidecar must do under ``policies``.

    Inbound: :func:`..peer_authentication.effective_mtls_mode` per container port (istiod's
    ``ComposePeerAuthentication`` and ``GetMutualTLSModeForPort``). Outbound, per Service:
    :func:`..destination_rule.destination_rule_for` with the client's namespace AND labels
    (``SidecarScope.DestinationRule`` matches ``workloadSelector`` against the proxy's
    labels), then :func:`..cluster.upstream` (``auto_mtls``: MeshConfig ``enableAutoMtls``,
    on by default). ``workloads`` gives the Services' endpoints (for
    SANs and auto mTLS); a policy without a namespace lives in ``default``, as everywhere in
    this model.
    """
    if not client.has_sidecar:
        raise PolicyError(f"{client.key} has no sidecar: nothing to plan")
    policies = tuple(policies)
    for policy in policies:
        if not isinstance(policy, PeerAuthentication | DestinationRule | AuthorizationPolicy):
            raise PolicyError(f"not a policy: {policy!r}")
    peer_auths = [p for p in policies if isinstance(p, PeerAuthentication)]
    rules = [p for p in policies if isinstance(p, DestinationRule)]

    def mode(port: int | None) -> MtlsMode:
        return effective_mtls_mode(
            peer_auths, client.namespace, client.labels, port, root_namespace
        )

    outbound: dict[tuple[str, int], Upstream] = {}
    for service in services:
        rule = destination_rule_for(
            rules,
            client.namespace,
            service.fqdn,
            root_namespace,
            service_namespace=service.namespace,
            client_labels=client.labels,
            domain_suffix=service.domain,
        )
        outbound[(service.fqdn, service.port)] = upstream(
            peer_auths,
            rule,
            service,
            endpoints_of(service, workloads),
            root_namespace=root_namespace,
            trust_domain=trust_domain,
            auto_mtls=auto_mtls,
        )
    protocols = inbound_protocols(client, services, workloads)
    keyed = port_level_ports(peer_auths, client.namespace, client.labels, root_namespace)
    return Sidecar(
        workload=client,
        inbound={port: mode(port) for port in client.container_ports},
        default_inbound=mode(None),
        outbound=outbound,
        inbound_protocols=protocols,
        # needPerPortPassthroughFilterChain: not a port a Service targets
        passthrough={port: mode(port) for port in keyed if port not in protocols},
    )


def inbound_protocols(
    server: Workload, services: Sequence[Service], workloads: Sequence[Workload]
) -> Mapping[int, PortProtocol]:
    """The protocol of each of ``server``'s container ports that a Service port targets: the
    inbound listener istiod builds per service instance takes the Service port's protocol
    (``buildInboundListeners`` / ``getFilterChainsByServiceInstance``,
    pilot/pkg/networking/core/listener_inbound.go). Two Service ports targeting one container
    port with different protocols: the first Service port, as the list is ordered."""
    result: dict[int, PortProtocol] = {}
    for service in services:
        if server in endpoints_of(service, workloads):
            result.setdefault(service.target_port, protocol_of(service))
    return result


def plan_mesh(
    workloads: Sequence[Workload],
    services: Sequence[Service],
    policies: Iterable[Policy],
    *,
    root_namespace: str = "istio-system",
    trust_domain: str = "cluster.local",
    auto_mtls: bool = True,
) -> Mapping[str, Sidecar]:
    """:func:`plan_sidecar` for every workload with a sidecar, by workload key."""
    policies = tuple(policies)
    return {
        w.key: plan_sidecar(
            w,
            policies,
            workloads=workloads,
            services=services,
            root_namespace=root_namespace,
            trust_domain=trust_domain,
            auto_mtls=auto_mtls,
        )
        for w in workloads
        if w.has_sidecar
    }


def pod_ip_upstream(
    sidecar: Sidecar,
    services: Sequence[Service],
    workloads: Sequence[Workload],
    server: Workload,
    port: int,
) -> Upstream | None:
    """What ``sidecar``'s Envoy does with a connection its app opens to ``server``'s pod IP at
    ``port`` (not through a Service name): the cluster of a headless Service whose TCP port
    that is (istiod's per-endpoint listener, ``buildSidecarOutboundListeners``), with its
    TLS towards ``server``; else None: no listener names the pod, and the connection leaves
    through the PassthroughCluster (``buildOutboundCatchAllNetworkFilterChains``, or an HTTP
    listener's ``allow_any`` route), an ORIGINAL_DST cluster with no transport socket
    (``buildDefaultPassthroughCluster``): plaintext, whatever the server's mode
    (pilot/pkg/networking/core)."""
    for service in services:
        if (
            service.headless
            and service.port == port
            and not protocol_of(service).is_http
            and server in endpoints_of(service, workloads)
            and server != sidecar.workload
        ):
            return sidecar.outbound[(service.fqdn, service.port)].towards(server.key)
    return None
