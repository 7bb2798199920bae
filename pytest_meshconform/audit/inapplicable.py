"""Policies in force that cannot apply, each with Istio's rule (pure).

- A policy whose selector (or namespace) matches no workload (`istio.selection.unmatched_reason`,
  which names istiod's rule).
- A PeerAuthentication ``portLevelMtls`` key that is no port of a workload it selects: Istio
  keys it by the workload's (container) port, not the Service's (the PeerAuthentication
  reference: "The port refers to the port of the workload, NOT the port of the Kubernetes
  service"; istiod's ``GetMutualTLSModeForPort`` looks the container port up). A key that is a
  Service port with another targetPort is the common mistake (istio/istio#49098): the user
  believes the port is STRICT and it is not.
- An AuthorizationPolicy whose ``targetRefs`` bind to no waypoint
  (`istio.waypoint.target_ref_problem`: istiod's waypoint policy status, its reason): sidecars
  and ztunnel ignore such a policy, so it enforces nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pytest_meshconform.istio.api import AuthorizationPolicy, PeerAuthentication, Policy
from pytest_meshconform.istio.plan import endpoints_of
from pytest_meshconform.istio.selection import is_subset, unmatched_reason
from pytest_meshconform.istio.waypoint import target_ref_problem
from pytest_meshconform.mesh import Service, Waypoint, Workload

__all__ = ["inapplicable_policies"]

_PORT_RULE = (
    "Istio keys portLevelMtls by the workload's port, not the Service's (PeerAuthentication"
    " reference; istio/istio#49098)"
)


def _port_level(
    policy: PeerAuthentication,
    namespace: str,
    workloads: Sequence[Workload],
    services: Sequence[Service],
    logical_namespace: Callable[[str], str],
) -> list[str]:
    if not policy.port_level or not policy.selector:
        return []
    selected = [
        w
        for w in workloads
        if logical_namespace(w.namespace) == namespace and is_subset(policy.selector, w.labels)
    ]
    if not selected:
        return []  # unmatched_reason says why
    targets = {s.target_port for s in services for w in selected if w in endpoints_of(s, workloads)}
    ports = {p for w in selected for p in w.container_ports} | targets
    name = f"PeerAuthentication {namespace}/{policy.name}"
    out = []
    for key, mode in sorted(policy.port_level.items()):
        if key in ports:
            continue
        by_service = sorted(
            {
                f"{s.name}.{logical_namespace(s.namespace)} port {s.port} -> targetPort"
                f" {s.target_port}"
                for s in services
                if s.port == key and any(w in endpoints_of(s, workloads) for w in selected)
            }
        )
        if by_service:
            out.append(
                f"{name}: portLevelMtls {key} ({mode.value}) names a Service port"
                f" ({'; '.join(by_service)}), no port of the workloads it selects: it applies"
                f" to nothing; key it by the targetPort. {_PORT_RULE}"
            )
        else:
            listed = ", ".join(map(str, sorted(ports))) or "none"
            out.append(
                f"{name}: portLevelMtls {key} ({mode.value}) is no port of the workloads it"
                f" selects (their ports: {listed}): it applies to nothing. {_PORT_RULE}"
            )
    return out


def _no_waypoint(service: Service) -> Waypoint | None:
    return None


def inapplicable_policies(
    policies: Sequence[Policy],
    workloads: Sequence[Workload],
    services: Sequence[Service],
    root_namespace: str,
    logical_namespace: Callable[[str], str],
    *,
    waypoints: Sequence[Waypoint] = (),
    service_waypoint: Callable[[Service], Waypoint | None] | None = None,
) -> tuple[str, ...]:
    """One line per policy (or portLevelMtls key) in force that cannot apply, with why: a
    ``targetRefs`` AuthorizationPolicy among them when it binds to none of ``waypoints``
    (``service_waypoint``: the waypoint a Service uses; None: a mesh without waypoints)."""
    out: list[str] = []
    for policy in policies:
        namespace = logical_namespace(policy.namespace or "default")
        if isinstance(policy, AuthorizationPolicy) and policy.target_refs:
            problem = target_ref_problem(
                policy, waypoints, services, service_waypoint or _no_waypoint, root_namespace
            )
            if problem is not None:
                out.append(
                    f"AuthorizationPolicy {namespace}/{policy.name} binds to no waypoint:"
                    f" {problem} (sidecars and ztunnel ignore targetRefs policies)"
                )
            continue
        reason = unmatched_reason(policy, workloads, root_namespace, logical_namespace)
        if reason is not None:
            out.append(f"{policy.kind} {namespace}/{policy.name} applies to no workload: {reason}")
            continue
        if isinstance(policy, PeerAuthentication):
            out.extend(_port_level(policy, namespace, workloads, services, logical_namespace))
    return tuple(out)
