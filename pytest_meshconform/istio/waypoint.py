"""Waypoints, as istiod and ztunnel decide them (pure): which Services and workloads use one,
which AuthorizationPolicies bind to it, and the RBAC filters istiod builds for it.

Each function names the istiod or ztunnel function it reproduces (istio/istio and
istio/ztunnel at the commits docs/istio-model.md names):

- A waypoint is a Gateway of class ``istio-waypoint``; its traffic type is its
  ``istio.io/waypoint-for`` label, else ``service`` (``gatewayToWaypointTransform``,
  pilot/pkg/serviceregistry/ambient/waypoints.go).
- An object uses the waypoint its own ``istio.io/use-waypoint`` label names (``none`` opts
  out), else its namespace's; ``istio.io/use-waypoint-namespace`` names another namespace
  (``GetUseWaypoint``, ``fetchWaypointForTarget``), when the waypoint's listener allows
  attachment from the object's namespace (``allowedRoutes``, ``Same`` by default:
  ``AllowsAttachmentFromNamespace``). A Service uses it when the waypoint takes
  ``service`` or ``all`` traffic (``fetchWaypointForService``), a workload when it takes
  ``workload`` or ``all`` (``fetchWaypointForWorkload``).
- An Envoy client is sent to a Service's waypoint only when it is a gateway (an ingress
  gateway with ``istio.io/ingress-use-waypoint``, or an east-west gateway): a sidecar's
  cluster keeps the Service's own endpoints (``findServiceWaypoint``,
  pilot/pkg/xds/endpoints/endpoint_builder.go; istio/istio#51445).
- ztunnel sends a connection to a Service address through the Service's waypoint, and one to
  a pod address through the workload's waypoint only (``build_request``,
  src/proxy/outbound.rs): with the default ``service`` type, traffic to a pod address goes
  straight to the pod. The HBONE CONNECT to the waypoint carries the original destination as
  authority and verifies the waypoint's identity.
- Which AuthorizationPolicies bind to a waypoint: never a selector policy; a ``targetRefs``
  entry to the waypoint's Gateway (same namespace), to the Service being served (the policy in
  the Service's namespace), or to the GatewayClass ``istio-waypoint`` from the root namespace
  (``WorkloadPolicyMatcher.ShouldAttachPolicy`` with ``IsWaypoint``,
  pilot/pkg/model/policyattachment.go), looked up in the root namespace, the waypoint's and the
  Service's (``ListAuthorizationPolicies``, pilot/pkg/model/authorization.go). Sidecars and
  ztunnel ignore ``targetRefs`` policies.
- Where its rules sit: every bound policy, L4-only ones included, in the per-Service chain
  (the HTTP RBAC filter of an HTTP port, the network RBAC filter of a TCP one); the HBONE
  terminating chain carries RBAC only with ``ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES``
  (default false): then the selector policies of the waypoint's pod, as a sidecar's
  (``buildHCMConnectTerminateChain``, ``NewWaypointTerminationBuilder``).
- Envoy's verdict there on one request (`waypoint_verdict`): the RBAC filters of the Service's
  chain, the peer from the ``io.istio.peer_principal`` filter state (`istio.rbac`), the
  destination port the Service port (the CONNECT authority ztunnel sends to the waypoint).
- What the destination's ztunnel sees: the waypoint's identity (the waypoint originates a new
  HBONE connection with its own certificate), judged by the destination's ordinary L4 policies;
  istiod adds no "allow the waypoint" policy unless ``PILOT_AUTO_ALLOW_WAYPOINT_POLICY``
  (default false: ``implicitWaypointPolicy``, pilot/pkg/serviceregistry/ambient/policies.go).
- What the app sees: no ``x-forwarded-client-cert``: the waypoint's per-Service HTTP connection
  manager leaves ``forward_client_cert_details`` unset (Envoy's SANITIZE) unless the Gateway
  carries ``ambient.istio.io/xfcc-include-client-identity: "true"``
  (``buildWaypointInboundHTTPFilters``, pilot/pkg/networking/core/listener_waypoint.go).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

from pytest_meshconform.istio.api import AuthzAction
from pytest_meshconform.istio.api.authorization_policy import (
    AuthorizationPolicy,
    PolicyTargetRef,
)
from pytest_meshconform.istio.authorization import (
    DEFAULT_TRUST_DOMAIN,
    Authorization,
    authorization_policies_for,
    build_authorization,
)
from pytest_meshconform.istio.rbac import RbacRequest, RbacVerdict, rbac_verdict
from pytest_meshconform.istio.selection import age_key
from pytest_meshconform.mesh import Service, Waypoint, Workload

__all__ = [
    "GATEWAY_NAME_LABEL",
    "INGRESS_USE_WAYPOINT_LABEL",
    "LAYERED_POLICIES_FLAG",
    "NAMESPACE_NAME_LABEL",
    "TRAFFIC_TYPES",
    "USE_WAYPOINT_LABEL",
    "USE_WAYPOINT_NAMESPACE_LABEL",
    "WAYPOINT_FOR_LABEL",
    "WAYPOINT_GATEWAY_CLASS",
    "allows_attachment",
    "envoy_calls_waypoint",
    "layered_waypoint_policies",
    "selector_policy_waypoint_problem",
    "service_waypoint",
    "target_ref_problem",
    "use_waypoint",
    "waypoint_authorization",
    "waypoint_binding",
    "waypoint_for_target",
    "waypoint_gateway",
    "waypoint_policies",
    "waypoint_verdict",
    "waypoint_workload",
    "workload_waypoint",
]

# constants.WaypointGatewayClassName; label.IoIstioUseWaypoint, IoIstioUseWaypointNamespace,
# IoIstioWaypointFor, IoK8sNetworkingGatewayGatewayName (istio.io/api)
WAYPOINT_GATEWAY_CLASS: Final = "istio-waypoint"
USE_WAYPOINT_LABEL: Final = "istio.io/use-waypoint"
USE_WAYPOINT_NAMESPACE_LABEL: Final = "istio.io/use-waypoint-namespace"
WAYPOINT_FOR_LABEL: Final = "istio.io/waypoint-for"
GATEWAY_NAME_LABEL: Final = "gateway.networking.k8s.io/gateway-name"
# istiod's flag for L4 rules on the waypoint's HBONE terminating chain (pilot/pkg/features)
LAYERED_POLICIES_FLAG: Final = "ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES"
# a Service's (or its namespace's) opt-in to ingress gateways calling its waypoint
INGRESS_USE_WAYPOINT_LABEL: Final = "istio.io/ingress-use-waypoint"
# every namespace carries its own name under this label (Kubernetes' NamespaceDefaultLabelName)
NAMESPACE_NAME_LABEL: Final = "kubernetes.io/metadata.name"
# constants.ServiceTraffic, WorkloadTraffic, AllTraffic, NoTraffic
TRAFFIC_TYPES: Final = ("service", "workload", "all", "none")
_GATEWAY_GROUP: Final = "gateway.networking.k8s.io"
# the Gateway's HBONE listener as istioctl waypoint apply writes it (istioctl/pkg/waypoint)
WAYPOINT_LISTENER: Final = {"name": "mesh", "port": 15008, "protocol": "HBONE"}


def waypoint_gateway(waypoint: Waypoint) -> dict[str, object]:
    """The Gateway ``istioctl waypoint apply`` writes (``makeGateway``, istioctl/pkg/waypoint/
    waypoint.go): class ``istio-waypoint``, listener ``mesh`` on 15008 speaking HBONE, and the
    ``istio.io/waypoint-for`` label only when a traffic type was asked for."""
    metadata: dict[str, object] = {"name": waypoint.name, "namespace": waypoint.namespace}
    if waypoint.traffic_type != "service":
        metadata["labels"] = {WAYPOINT_FOR_LABEL: waypoint.traffic_type}
    listener: dict[str, object] = dict(WAYPOINT_LISTENER)
    if waypoint.allowed_routes != "Same":  # a waypoint shared with other namespaces
        namespaces: dict[str, object] = {"from": waypoint.allowed_routes}
        if waypoint.allowed_routes == "Selector":
            namespaces["selector"] = {"matchLabels": dict(waypoint.allowed_route_labels)}
        listener["allowedRoutes"] = {"namespaces": namespaces}
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": metadata,
        "spec": {"gatewayClassName": WAYPOINT_GATEWAY_CLASS, "listeners": [listener]},
    }


def allows_attachment(
    waypoint: Waypoint, namespace: str, namespace_labels: Mapping[str, str]
) -> bool:
    """``AllowsAttachmentFromNamespace`` (pilot/pkg/serviceregistry/ambient/waypoints.go): may
    objects of ``namespace`` use the waypoint? ``All``: yes; ``Selector``: when the namespace's
    labels (with its ``kubernetes.io/metadata.name``) match; ``Same`` (the default, and any
    other value): only its own namespace."""
    if waypoint.allowed_routes == "All":
        return True
    if waypoint.allowed_routes == "Selector":
        labels = {**namespace_labels, NAMESPACE_NAME_LABEL: namespace}
        return all(labels.get(key) == value for key, value in waypoint.allowed_route_labels)
    return waypoint.namespace == namespace


def envoy_calls_waypoint(proxy_type: str, ingress_use_waypoint: bool = False) -> bool:
    """Does istiod give an Envoy client's cluster for a Service that has a waypoint the
    waypoint's endpoints (``findServiceWaypoint``, pilot/pkg/xds/endpoints/endpoint_builder.go)?
    Only a gateway (``proxy_type`` ``router``) whose Service or namespace says
    ``istio.io/ingress-use-waypoint: "true"`` (``ENABLE_INGRESS_WAYPOINT_ROUTING``, on with
    ambient); a ``sidecar`` never ("Currently only ingress and e/w gateway will call
    waypoints"): it sends to the Service's own endpoints, HBONE to an ambient one, and the
    waypoint's policies do not judge it (istio/istio#51445; the ambient integration tests skip
    sidecar clients of waypoints: "sidecars do not currently respect waypoints")."""
    return proxy_type == "router" and ingress_use_waypoint


def waypoint_binding(
    labels: Mapping[str, str],
    namespace: str,
    namespace_labels: Mapping[str, str],
    waypoints: Iterable[Waypoint],
    traffic: str,
) -> tuple[Waypoint | None, str | None]:
    """The waypoint an object uses for ``traffic`` (``service`` for a Service, ``workload`` for
    a pod) and, when it uses none although a label names one, istiod's status message for it
    (``fetchWaypointForTarget``, ``fetchWaypointForService``, ``fetchWaypointForWorkload``;
    messages of pilot/pkg/serviceregistry/ambient/status.go): ``waypoint "ns/name" is not
    ready`` (no such waypoint), ``we are not permitted to attach to waypoint "ns/name" (missing
    allowedRoutes?)``, ``attempting to bind to traffic type "service" which the waypoint
    "ns/name" does not support`` (for a workload: only when its own label names the waypoint)."""
    known = {(w.namespace, w.name): w for w in waypoints}
    named, opted_out = use_waypoint(labels, namespace)
    own = named is not None
    if opted_out:
        return None, None
    if named is None:
        named, _ = use_waypoint(namespace_labels, namespace)
        if named is None:
            return None, None
    key = f"{named[0]}/{named[1]}"
    found = known.get(named)
    if found is None:
        return None, f'waypoint "{key}" is not ready'
    if not allows_attachment(found, namespace, namespace_labels):
        return None, f'we are not permitted to attach to waypoint "{key}" (missing allowedRoutes?)'
    if found.traffic_type not in (traffic, "all"):
        if traffic == "workload" and not own:
            return None, None  # inherited from the namespace: the waypoint is for Services
        return None, (
            f'attempting to bind to traffic type "{traffic}" which the waypoint "{key}"'
            " does not support"
        )
    return found, None


def use_waypoint(
    labels: Mapping[str, str], default_namespace: str
) -> tuple[tuple[str, str] | None, bool]:
    """``GetUseWaypoint``: the (namespace, name) an object's ``istio.io/use-waypoint`` label
    names, and whether it opts out (``none``)."""
    name = labels.get(USE_WAYPOINT_LABEL)
    if name is None:
        return None, False
    if name == "none":
        return None, True
    return (labels.get(USE_WAYPOINT_NAMESPACE_LABEL, default_namespace), name), False


def waypoint_for_target(
    labels: Mapping[str, str],
    namespace: str,
    namespace_labels: Mapping[str, str],
    waypoints: Iterable[Waypoint],
) -> Waypoint | None:
    """``fetchWaypointForTarget``: the waypoint an object's own label names, else its
    namespace's; None when neither names one, the object opts out, the named waypoint does
    not exist (istiod reports it "not ready") or does not allow attachment from the object's
    namespace."""
    known = {(w.namespace, w.name): w for w in waypoints}
    named, opted_out = use_waypoint(labels, namespace)
    if opted_out:
        return None
    if named is None:
        named, _ = use_waypoint(namespace_labels, namespace)
    found = known.get(named) if named is not None else None
    if found is None or not allows_attachment(found, namespace, namespace_labels):
        return None
    return found


def service_waypoint(
    service_labels: Mapping[str, str],
    namespace: str,
    namespace_labels: Mapping[str, str],
    waypoints: Iterable[Waypoint],
) -> Waypoint | None:
    """``fetchWaypointForService``: the target's waypoint when it takes Service traffic
    (``service`` or ``all``); a waypoint's own Service never has one."""
    if service_labels.get("gateway.istio.io/managed") == "istio.io-mesh-controller":
        return None
    found = waypoint_for_target(service_labels, namespace, namespace_labels, waypoints)
    if found is None or found.traffic_type not in ("service", "all"):
        return None
    return found


def workload_waypoint(
    pod_labels: Mapping[str, str],
    namespace: str,
    namespace_labels: Mapping[str, str],
    waypoints: Iterable[Waypoint],
) -> Waypoint | None:
    """``fetchWaypointForWorkload``: the target's waypoint when it takes workload traffic
    (``workload`` or ``all``)."""
    found = waypoint_for_target(pod_labels, namespace, namespace_labels, waypoints)
    if found is None or found.traffic_type not in ("workload", "all"):
        return None
    return found


def waypoint_workload(waypoint: Waypoint) -> Workload:
    """The waypoint's pod as a workload: labelled with its Gateway's name (the label
    ``ShouldAttachPolicy`` reads), under the Gateway's service account."""
    return Workload(
        name=waypoint.name,
        namespace=waypoint.namespace,
        app=waypoint.name,
        service_account=waypoint.service_account,
        has_sidecar=False,
        labels={GATEWAY_NAME_LABEL: waypoint.name},
    )


def _matches(ref: PolicyTargetRef, group: str, kind: str) -> bool:
    """``matchesGroupKind``: canonical group and kind."""
    return ref.canonical_group == (group or "core") and ref.kind == kind


def _attaches(
    policy: AuthorizationPolicy,
    waypoint: Waypoint,
    service: Service | None,
    root_namespace: str,
) -> bool:
    """``ShouldAttachPolicy`` for a waypoint (``IsWaypoint``; its pods carry the
    ``gateway-name`` label), serving ``service`` (None: the waypoint as a whole)."""
    if not policy.target_refs:
        return False  # waypoints never use selector
    namespace = policy.namespace or "default"
    for ref in policy.target_refs:
        if (
            _matches(ref, "", "Service")
            and service is not None
            and ref.name == service.name
            and namespace == service.namespace
        ):
            return True
        if (
            namespace == root_namespace
            and _matches(ref, _GATEWAY_GROUP, "GatewayClass")
            and ref.name == WAYPOINT_GATEWAY_CLASS
        ):
            return True
        if namespace != waypoint.namespace:
            continue
        if _matches(ref, _GATEWAY_GROUP, "Gateway") and ref.name == waypoint.name:
            return True
    return False


def waypoint_policies(
    waypoint: Waypoint,
    service: Service | None,
    policies: Iterable[object],
    root_namespace: str = "istio-system",
) -> tuple[AuthorizationPolicy, ...]:
    """The AuthorizationPolicies a waypoint enforces on ``service``'s traffic, in istiod's
    order (``ListAuthorizationPolicies`` over the root namespace, the waypoint's and the
    Service's, ``sortConfigByCreationTime``)."""
    namespaces = {root_namespace, waypoint.namespace}
    if service is not None:
        namespaces.add(service.namespace)
    chosen = [
        p
        for p in policies
        if isinstance(p, AuthorizationPolicy)
        and (p.namespace or "default") in namespaces
        and _attaches(p, waypoint, service, root_namespace)
    ]
    chosen.sort(key=lambda p: age_key(p, p.namespace or "default"))
    return tuple(chosen)


def waypoint_authorization(
    waypoint: Waypoint,
    service: Service | None,
    policies: Iterable[object],
    *,
    root_namespace: str = "istio-system",
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
) -> Authorization:
    """The RBAC filters of the waypoint's chain for ``service`` (``buildWaypointHTTPFilters``:
    ``NewBuilderForService(authz.Local, ..., true, svc)``, peer identities from the filter
    state); ``service`` None: a workload-addressed chain (``buildWaypointInternal`` builds its
    filters without a Service: only the policies bound to the waypoint itself)."""
    applying = waypoint_policies(waypoint, service, policies, root_namespace)
    return build_authorization(
        waypoint_workload(waypoint), applying, trust_domain=trust_domain, use_filter_state=True
    )


def waypoint_verdict(
    waypoint: Waypoint,
    service: Service,
    policies: Iterable[object],
    request: RbacRequest,
    *,
    root_namespace: str = "istio-system",
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
) -> tuple[RbacVerdict, tuple[AuthorizationPolicy, ...]]:
    """Envoy's verdict at the waypoint on a request to ``service`` (`rbac_verdict` over
    `waypoint_authorization`: the peer is the HBONE tunnel's client identity, from the filter
    state; ``request.port`` the Service port, the CONNECT authority the waypoint's inner
    connection is addressed to), and the bound policies that decide it when it is not
    ``allowed``: each DENY policy that denies it (or cannot tell), and the ALLOW policies when
    none of them allows it (or cannot tell)."""
    bound = waypoint_policies(waypoint, service, policies, root_namespace)

    def verdict(chosen: Iterable[AuthorizationPolicy]) -> RbacVerdict:
        authz = waypoint_authorization(
            waypoint, service, chosen, root_namespace=root_namespace, trust_domain=trust_domain
        )
        return rbac_verdict(authz, request)

    overall = verdict(bound)
    if overall == "allowed":
        return overall, ()
    deciding = [p for p in bound if p.action is AuthzAction.DENY and verdict([p]) != "allowed"]
    allows = [p for p in bound if p.action is AuthzAction.ALLOW]
    if allows and verdict(allows) != "allowed":
        deciding += allows
    return overall, tuple(deciding)


def layered_waypoint_policies(
    waypoint: Waypoint,
    policies: Iterable[object],
    root_namespace: str = "istio-system",
    *,
    layered: bool = False,
) -> tuple[AuthorizationPolicy, ...]:
    """The policies istiod enforces as L4 rules on the waypoint's HBONE terminating chain, in
    front of its per-Service chains (``buildHCMConnectTerminateChain``,
    pilot/pkg/networking/core/listener_waypoint.go): none unless ``layered``
    (``ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES``, default false); then the selector
    and namespace policies that select the waypoint's pod as they would a sidecar's
    (``NewWaypointTerminationBuilder``: ``IsWaypoint`` false, pilot/pkg/networking/plugin/authz/
    authorization.go)."""
    if not layered:
        return ()
    return authorization_policies_for(waypoint_workload(waypoint), policies, root_namespace)


def selector_policy_waypoint_problem(
    policy: AuthorizationPolicy, waypoints: Iterable[Waypoint], root_namespace: str
) -> str | None:
    """Why a selector AuthorizationPolicy that selects a waypoint's pod binds nothing there by
    default, or None when it selects none: istiod's waypoint matching skips selector policies
    (``ShouldAttachPolicy``), its layered L4 rules are off (`layered_waypoint_policies`), and
    ztunnel does not capture a waypoint's pod (labelled ``istio.io/dataplane-mode: none``)."""
    if policy.target_refs or not policy.selector:
        return None
    for waypoint in waypoints:
        if authorization_policies_for(waypoint_workload(waypoint), [policy], root_namespace):
            return (
                f"its selector selects the pod of waypoint {waypoint.key}, where istiod"
                f" enforces a selector policy only with {LAYERED_POLICIES_FLAG}=true (default"
                " false) and ztunnel does not capture the waypoint's pod: bind it with"
                " targetRefs (the Gateway or the Service)"
            )
    return None


def target_ref_problem(
    policy: AuthorizationPolicy,
    waypoints: Sequence[Waypoint],
    services: Sequence[Service],
    service_waypoint_of: Callable[[Service], Waypoint | None],
    root_namespace: str,
) -> str | None:
    """Why a ``targetRefs`` policy binds to no waypoint, or None when some entry is bound:
    istiod's ``WaypointPolicyStatus`` reasons (``WaypointPolicyStatusCollection``,
    pilot/pkg/serviceregistry/ambient/policies.go): a Gateway that is no waypoint, a Service
    that does not exist ("Service <ns>/<name> was not found") or is not bound to a waypoint
    ("Service <ns>/<name> is not bound to a waypoint"), a GatewayClass reference outside the
    root namespace."""
    namespace = policy.namespace or "default"
    problems = []
    for ref in policy.target_refs:
        key = f"{namespace}/{ref.name}"
        if _matches(ref, _GATEWAY_GROUP, "Gateway"):
            if any(w.key == key for w in waypoints):
                return None
            known = ", ".join(w.key for w in waypoints) or "none"
            problems.append(f"Gateway {key} is not a waypoint (waypoints: {known})")
        elif _matches(ref, "", "Service"):
            found = [s for s in services if s.namespace == namespace and s.name == ref.name]
            if not found:
                problems.append(f"Service {key} was not found")
            elif any(service_waypoint_of(s) is not None for s in found):
                return None
            else:
                problems.append(f"Service {key} is not bound to a waypoint")
        elif _matches(ref, _GATEWAY_GROUP, "GatewayClass"):
            if namespace != root_namespace:
                problems.append(
                    "AuthorizationPolicy must be in the root namespace"
                    f" `{root_namespace}` when referencing a GatewayClass"
                )
            elif ref.name != WAYPOINT_GATEWAY_CLASS:
                problems.append(f"GatewayClass {ref.name} is not {WAYPOINT_GATEWAY_CLASS}")
            elif waypoints:
                return None
            else:
                problems.append("the mesh has no waypoint")
        else:
            problems.append(f"{ref.kind} {key}: no such object in this mesh")
    return "; ".join(problems) if problems else None
