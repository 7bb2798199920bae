"""The local control plane's brain (pure): policies in force -> a plan for every sidecar.

What it decides, and the Istio behaviour it reproduces:
- inbound, per container port: the effective PeerAuthentication mode (`policy.effective_mtls_mode`:
  workload > namespace > root namespace, UNSET inherits, nothing = PERMISSIVE, portLevelMtls);
- outbound, per Service: a DestinationRule's `tls.mode` (with `portLevelSettings`) when one applies,
  else auto mTLS: ISTIO_MUTUAL to endpoints that have a sidecar, unless the endpoint's effective
  mode for the target port is DISABLE; plaintext to endpoints without one
  (pilot/pkg/networking/core/cluster_builder.go, buildAutoMtlsSettings).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from ..mesh import Workload
from ..policy import (
    DestinationRule,
    MtlsMode,
    PeerAuthentication,
    TlsMode,
    client_tls_settings,
    destination_rule_for,
    effective_mtls_mode,
)
from ..settings import FAULT_NAMES
from .topology import TRUST_DOMAIN, Pod, ServiceEntry, Topology
from .xds import SidecarPlan, UpstreamTls

Policy = PeerAuthentication | DestinationRule


@dataclass(frozen=True, slots=True)
class Faults:
    """Test-only ways to break the local mesh, to prove the suites can fail (never for users)."""

    strict_as_permissive: bool = False  # render STRICT inbound chains as PERMISSIVE
    no_xfcc: bool = False  # inbound HCM does not set X-Forwarded-Client-Cert
    no_rotation: bool = False  # the agent never rotates certificates
    wrong_spiffe_id: bool = False  # workload certs name another service account

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


def istio_sni(fqdn: str, port: int) -> str:
    """The SNI an Istio sidecar sends for ISTIO_MUTUAL: outbound_.<port>_._.<fqdn>."""
    return f"outbound_.{port}_._.{fqdn}"


def _upstream(
    client: Pod,
    entry: ServiceEntry,
    peer_auths: list[PeerAuthentication],
    rules: list[DestinationRule],
    root_namespace: str,
) -> UpstreamTls:
    rule = destination_rule_for(
        rules, client.workload.namespace, entry.service.fqdn, root_namespace
    )
    tls = _upstream_tls(entry, rule, peer_auths, root_namespace)
    max_requests = _max_requests_per_connection(rule, entry.service.port)
    return tls if max_requests is None else replace(tls, max_requests_per_connection=max_requests)


def _max_requests_per_connection(rule: DestinationRule | None, port: int) -> int | None:
    """connectionPool.http.maxRequestsPerConnection. A portLevelSettings entry that has a
    connectionPool replaces the rule's whole pool (Istio's MergeTrafficPolicy)."""
    if rule is None or rule.traffic_policy is None:
        return None
    pool = rule.traffic_policy.other.get("connectionPool")
    for entry in rule.traffic_policy.port_level_settings:
        if entry.port == port and "connectionPool" in entry.other:
            pool = entry.other["connectionPool"]
    value = ((pool or {}).get("http") or {}).get("maxRequestsPerConnection")
    return None if value is None else int(value)


def _upstream_tls(
    entry: ServiceEntry,
    rule: DestinationRule | None,
    peer_auths: list[PeerAuthentication],
    root_namespace: str,
) -> UpstreamTls:
    svc = entry.service
    endpoint = entry.endpoints[0].workload
    sans = tuple(sorted({e.workload.spiffe_id(TRUST_DOMAIN) for e in entry.endpoints}))
    settings = client_tls_settings(rule, svc.port) if rule is not None else None
    if settings is None:  # auto mTLS
        server_mode = effective_mtls_mode(
            peer_auths, endpoint.namespace, endpoint.labels, svc.target_port, root_namespace
        )
        if endpoint.has_sidecar and server_mode is not MtlsMode.DISABLE:
            return UpstreamTls(TlsMode.ISTIO_MUTUAL, istio_sni(svc.fqdn, svc.port), sans)
        return UpstreamTls(None)
    if settings.mode is TlsMode.DISABLE:
        return UpstreamTls(TlsMode.DISABLE)
    if settings.mode is TlsMode.ISTIO_MUTUAL:
        return UpstreamTls(
            TlsMode.ISTIO_MUTUAL,
            settings.sni or istio_sni(svc.fqdn, svc.port),
            tuple(settings.subject_alt_names) or sans,
        )
    return UpstreamTls(
        settings.mode,
        sni=settings.sni,
        subject_alt_names=tuple(settings.subject_alt_names),
        client_certificate=settings.client_certificate,
        private_key=settings.private_key,
        ca_certificates=settings.ca_certificates,
    )


def plan_sidecars(
    topology: Topology,
    policies: Iterable[Policy],
    root_namespace: str,
    faults: Faults | None = None,
) -> Mapping[str, SidecarPlan]:
    faults = faults or Faults()
    peer_auths = [p for p in policies if isinstance(p, PeerAuthentication)]
    rules = [p for p in policies if isinstance(p, DestinationRule)]
    plans: dict[str, SidecarPlan] = {}
    for pod in topology.pods:
        w = pod.workload
        if not w.has_sidecar:
            continue

        def mode(port: int | None, w: Workload = w) -> MtlsMode:
            found = effective_mtls_mode(peer_auths, w.namespace, w.labels, port, root_namespace)
            if faults.strict_as_permissive and found is MtlsMode.STRICT:
                return MtlsMode.PERMISSIVE
            return found

        plans[w.key] = SidecarPlan(
            pod=pod,
            inbound_modes={port: mode(port) for port in w.container_ports},
            default_inbound_mode=mode(None),
            outbound={
                (e.service.fqdn, e.service.port): _upstream(
                    pod, e, peer_auths, rules, root_namespace
                )
                for e in topology.services
            },
            services=topology.services,
            set_xfcc=not faults.no_xfcc,
        )
    return plans
