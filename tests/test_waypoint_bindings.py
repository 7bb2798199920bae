"""Which waypoint a Service, a workload or a namespace uses (issue 20), without running the
mesh: a Service's own ``istio.io/use-waypoint`` label (``none`` opts it out of its namespace's
waypoint), ``istio.io/use-waypoint-namespace`` naming a waypoint in another namespace, the
waypoint's ``allowedRoutes``, and what the topology file refuses. The live tests are
tests/test_waypoint_bindings_live.py.

Expected values come from istio/istio at the commit docs/istio-model.md names:
``GetUseWaypoint``, ``fetchWaypointForTarget``, ``fetchWaypointForService``,
``fetchWaypointForWorkload`` and ``AllowsAttachmentFromNamespace``
(pilot/pkg/serviceregistry/ambient/waypoints.go), the status messages of
pilot/pkg/serviceregistry/ambient/status.go (``WaypointIsNotReady``, ``AttachmentDenied``,
``UnsupportedTrafficType``), the Gateway API default ``from: Same`` (``makeWaypointSelector``),
the ``kubernetes.io/metadata.name`` selector of istiod's own tests (services_test.go) and of
istio.io's "Configure waypoint proxies" (use a waypoint in another namespace); ztunnel's
``build_request`` (istio/ztunnel src/proxy/outbound.rs) for where a client's ztunnel tunnels.
"""

from __future__ import annotations

from typing import Any

import pytest
from waypoint_topologies import DEPOT_TOPOLOGY

from pytest_meshconform import authorization_policy
from pytest_meshconform.backends.local.control import plan_sidecars, plan_waypoints, plan_ztunnels
from pytest_meshconform.backends.local.topology_file import TopologyError, parse_topology
from pytest_meshconform.istio.api import AuthorizationPolicy, parse_policy
from pytest_meshconform.istio.waypoint import (
    allows_attachment,
    envoy_calls_waypoint,
    layered_waypoint_policies,
    selector_policy_waypoint_problem,
    waypoint_binding,
    waypoint_gateway,
    waypoint_policies,
)
from pytest_meshconform.mesh import Service, Waypoint

SHARED = """\
namespaces:
  - name: mesh-infra
    dataplane: none
    waypoints:
      - {name: shared, allowedRoutes: All}
      - {name: picky, allowedRoutes: {matchLabels: {team: fleet}}}
  - name: north
    dataplane: ambient
    labels: {istio.io/use-waypoint: shared, istio.io/use-waypoint-namespace: mesh-infra}
    workloads:
      - {name: truck, kind: sleep}
      - {name: dock, kind: httpbin}
    services:
      - {name: dock, selector: {app: dock}, ports: [{name: http, port: 80, targetPort: 8080}]}
  - name: south
    dataplane: ambient
    labels: {team: fleet}
    workloads:
      - {name: pier, kind: httpbin}
    services:
      - name: pier
        labels: {istio.io/use-waypoint: picky, istio.io/use-waypoint-namespace: mesh-infra}
        selector: {app: pier}
        ports: [{name: http, port: 80, targetPort: 8080}]
"""


def _services(topology: Any) -> dict[str, Service]:
    return {e.service.name: e.service for e in topology.services}


def _tunnels(topology: Any, client: str) -> dict[tuple[str, int], Any]:
    plans = plan_ztunnels(topology, [], "istio-system")
    return {(t.address, t.port): t for t in plans[client].tunnels}


def test_a_services_own_label_chooses_its_waypoint_and_none_opts_out() -> None:
    topology = parse_topology(DEPOT_TOPOLOGY)
    inspector, gatekeeper = topology.waypoints
    assert not inspector.enrolls_namespace and gatekeeper.enrolls_namespace
    # waypoints: does not label the namespace; waypoint: does
    assert topology.namespace_labels("depot") == {}
    assert topology.namespace_labels("yard") == {"istio.io/use-waypoint": "gatekeeper"}
    services = _services(topology)
    assert topology.service_waypoint(services["parcels"]) == inspector
    assert topology.service_waypoint(services["ledger"]) is None
    assert topology.service_waypoint(services["forklift"]) == gatekeeper
    assert topology.service_waypoint(services["crane"]) is None  # istio.io/use-waypoint: none


def test_the_clients_ztunnel_tunnels_to_the_services_waypoint_only() -> None:
    topology = parse_topology(DEPOT_TOPOLOGY)
    vips = {e.service.name: e.vip for e in topology.services}
    pods = {p.workload.name: p.ip for p in topology.all_pods}
    tunnels = _tunnels(topology, "courier.depot")
    via = tunnels[(vips["parcels"], 80)]
    assert (via.endpoint_ip, via.connect_authority, via.identity) == (
        pods["inspector"],
        f"{vips['parcels']}:80",
        "spiffe://cluster.local/ns/depot/sa/inspector",
    )
    direct = tunnels[(vips["ledger"], 80)]
    assert (direct.endpoint_ip, direct.connect_authority) == (
        pods["ledger"],
        f"{pods['ledger']}:8080",
    )
    assert tunnels[(vips["forklift"], 80)].endpoint_ip == pods["gatekeeper"]
    assert tunnels[(vips["crane"], 80)].endpoint_ip == pods["crane"]
    plans = plan_waypoints(topology, [], "istio-system")
    assert [r.fqdn for r in plans["inspector.depot"].routes] == ["parcels.depot.svc.cluster.local"]
    assert [r.fqdn for r in plans["gatekeeper.yard"].routes] == ["forklift.yard.svc.cluster.local"]


def test_a_waypoint_in_another_namespace_serves_the_namespaces_it_allows() -> None:
    topology = parse_topology(SHARED)
    shared, picky = topology.waypoints
    assert (shared.waypoint.allowed_routes, picky.waypoint.allowed_route_labels) == (
        "All",
        (("team", "fleet"),),
    )
    services = _services(topology)
    assert topology.service_waypoint(services["dock"]) == shared
    assert topology.service_waypoint(services["pier"]) == picky
    vips = {e.service.name: e.vip for e in topology.services}
    via = _tunnels(topology, "truck.north")[(vips["pier"], 80)]
    assert (via.endpoint_ip, via.identity) == (
        picky.pod.ip,
        "spiffe://cluster.local/ns/mesh-infra/sa/picky",
    )
    plans = plan_waypoints(topology, [], "istio-system")
    assert [r.fqdn for r in plans["shared.mesh-infra"].routes] == ["dock.north.svc.cluster.local"]


def test_policies_bind_to_a_shared_waypoint_from_the_services_namespace_or_the_waypoints() -> None:
    """``ListAuthorizationPolicies``: the root namespace, the waypoint's and the Service's;
    a Service reference binds from the Service's namespace, a Gateway one from the
    waypoint's."""
    topology = parse_topology(SHARED)
    shared = topology.waypoints[0].waypoint
    dock = _services(topology)["dock"]
    by_service = parse_policy(
        authorization_policy(
            "dock-readers",
            "north",
            "ALLOW",
            [{}],
            target_refs=[{"kind": "Service", "group": "", "name": "dock"}],
        )
    )
    by_gateway = parse_policy(
        authorization_policy(
            "no-deletes",
            "mesh-infra",
            "DENY",
            [{"to": [{"operation": {"methods": ["DELETE"]}}]}],
            target_refs=[
                {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "shared"}
            ],
        )
    )
    gateway_from_north = parse_policy(
        authorization_policy(
            "wrong-home",
            "north",
            "DENY",
            [{}],
            target_refs=[
                {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "shared"}
            ],
        )
    )
    bound = waypoint_policies(shared, dock, [by_service, by_gateway, gateway_from_north])
    assert {p.name for p in bound} == {"dock-readers", "no-deletes"}


def test_allowed_routes_as_istiod_reads_them() -> None:
    """``AllowsAttachmentFromNamespace``: ``Same`` (the default) only the waypoint's own
    namespace, ``All`` every one, ``Selector`` the namespaces whose labels (with
    ``kubernetes.io/metadata.name``) match."""
    same = Waypoint("wp", "infra")
    every = Waypoint("wp", "infra", allowed_routes="All")
    selected = Waypoint(
        "wp", "infra", allowed_routes="Selector",
        allowed_route_labels=(("kubernetes.io/metadata.name", "ns"),),
    )  # fmt: skip
    assert allows_attachment(same, "infra", {}) and not allows_attachment(same, "ns", {})
    assert allows_attachment(every, "ns", {})
    assert allows_attachment(selected, "ns", {}) and not allows_attachment(selected, "other", {})
    listener = waypoint_gateway(selected)["spec"]["listeners"][0]  # type: ignore[index]
    assert listener["allowedRoutes"] == {
        "namespaces": {
            "from": "Selector",
            "selector": {"matchLabels": {"kubernetes.io/metadata.name": "ns"}},
        }
    }
    assert "allowedRoutes" not in waypoint_gateway(same)["spec"]["listeners"][0]  # type: ignore[index]


def test_binding_statuses_are_istiods() -> None:
    waypoints = [
        Waypoint("svc-wp", "ns"),
        Waypoint("pods", "ns", traffic_type="workload"),
        Waypoint("far", "infra"),
    ]
    own = {"istio.io/use-waypoint": "ghost"}
    assert waypoint_binding(own, "ns", {}, waypoints, "service") == (
        None,
        'waypoint "ns/ghost" is not ready',
    )
    assert waypoint_binding({"istio.io/use-waypoint": "pods"}, "ns", {}, waypoints, "service") == (
        None,
        'attempting to bind to traffic type "service" which the waypoint "ns/pods" does not'
        " support",
    )
    far = {"istio.io/use-waypoint": "far", "istio.io/use-waypoint-namespace": "infra"}
    assert waypoint_binding(far, "ns", {}, waypoints, "service") == (
        None,
        'we are not permitted to attach to waypoint "infra/far" (missing allowedRoutes?)',
    )
    # a workload inheriting a Service waypoint from its namespace: no waypoint, no error
    inherited = {"istio.io/use-waypoint": "svc-wp"}
    assert waypoint_binding({}, "ns", inherited, waypoints, "workload") == (None, None)
    assert waypoint_binding(inherited, "ns", {}, waypoints, "workload")[1] == (
        'attempting to bind to traffic type "workload" which the waypoint "ns/svc-wp" does not'
        " support"
    )
    opted_out = {"istio.io/use-waypoint": "none"}
    assert waypoint_binding(opted_out, "ns", inherited, waypoints, "service") == (None, None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("istio.io/use-waypoint: inspector}", "istio.io/use-waypoint: ghost}"),
            "namespaces[0].services[0].labels.istio.io/use-waypoint: waypoint \"depot/ghost\" is"
            " not ready (istiod's status; the traffic would not go through a waypoint)",
        ),
        (
            ("waypoints: [inspector]", "waypoints: [{name: inspector, for: workload}]"),
            'attempting to bind to traffic type "service" which the waypoint "depot/inspector"'
            " does not support",
        ),
        (
            ("istio.io/use-waypoint: inspector}", "istio.io/use-waypoint: gatekeeper,"
             " istio.io/use-waypoint-namespace: yard}"),
            'we are not permitted to attach to waypoint "yard/gatekeeper" (missing'
            " allowedRoutes?)",
        ),
        (
            ("{istio.io/use-waypoint: inspector}", "{istio.io/use-waypoint-namespace: yard}"),
            "labels.istio.io/use-waypoint-namespace: istiod reads it only beside"
            " istio.io/use-waypoint (GetUseWaypoint)",
        ),
        (
            ("waypoint: gatekeeper", "waypoint: gatekeeper\n    labels: {istio.io/use-waypoint: x"
             "}"),
            "namespaces[1].labels.istio.io/use-waypoint: waypoint: already labels the namespace",
        ),
        (
            ("waypoints: [inspector]", "waypoints: [inspector, inspector]"),
            "namespaces[0].waypoints[1]: waypoint 'inspector' given twice",
        ),
        (
            ("waypoints: [inspector]", "waypoints: [{name: inspector, allowedRoutes: Any}]"),
            "namespaces[0].waypoints[0].allowedRoutes: 'Any': write Same (the default), All",
        ),
        (
            ("waypoints: [inspector]", "waypoints: [courier]"),
            "namespaces[0].waypoints[0]: workload 'courier' has the waypoint's name",
        ),
    ],
)  # fmt: skip
def test_a_label_that_binds_no_waypoint_is_refused_with_istiods_reason(
    change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in DEPOT_TOPOLOGY
    with pytest.raises(TopologyError) as caught:
        parse_topology(DEPOT_TOPOLOGY.replace(old, new, 1), "depot.yaml")
    assert message in str(caught.value)


def test_a_service_label_needs_an_ambient_endpoint() -> None:
    text = DEPOT_TOPOLOGY.replace(
        "  - name: yard\n    dataplane: ambient", "  - name: yard\n    dataplane: none"
    )
    text = text.replace("    waypoint: gatekeeper\n", "").replace(
        "istio.io/use-waypoint: none", "istio.io/use-waypoint: gatekeeper"
    )
    with pytest.raises(
        TopologyError, match="a waypoint serves Services whose endpoints are ambient"
    ):
        parse_topology(text)


def test_a_namespace_label_naming_an_unknown_waypoint_is_refused() -> None:
    text = SHARED.replace("use-waypoint: shared", "use-waypoint: gone")
    with pytest.raises(TopologyError) as caught:
        parse_topology(text, "shared.yaml")
    assert 'namespaces[1].labels.istio.io/use-waypoint: waypoint "mesh-infra/gone" is not' in str(
        caught.value
    )
    same = SHARED.replace("{name: shared, allowedRoutes: All}", "shared")
    with pytest.raises(TopologyError, match="not permitted to attach to waypoint"):
        parse_topology(same)
    unmatched = SHARED.replace("labels: {team: fleet}", "labels: {team: boats}")
    with pytest.raises(TopologyError, match='attach to waypoint "mesh-infra/picky"'):
        parse_topology(unmatched)


def test_only_a_gateway_is_sent_to_a_services_waypoint() -> None:
    """``findServiceWaypoint`` (pilot/pkg/xds/endpoints/endpoint_builder.go): "Currently only
    ingress and e/w gateway will call waypoints", and an ingress gateway only for a Service
    labelled ``istio.io/ingress-use-waypoint``; a sidecar keeps the Service's endpoints
    (istio/istio#51445)."""
    assert not envoy_calls_waypoint("sidecar")
    assert not envoy_calls_waypoint("sidecar", ingress_use_waypoint=True)
    assert not envoy_calls_waypoint("router")
    assert envoy_calls_waypoint("router", ingress_use_waypoint=True)


def test_a_sidecar_tunnels_to_the_pod_of_a_service_with_a_waypoint() -> None:
    topology = parse_topology(
        DEPOT_TOPOLOGY + "  - name: fleet\n    dataplane: sidecar\n"
        "    workloads: [{name: tug, kind: sleep}]\n"
    )
    pods = {p.workload.name: p.ip for p in topology.all_pods}
    plan = plan_sidecars(topology, [], "istio-system")["tug.fleet"]
    assert plan.hbone_tunnels[("parcels.depot.svc.cluster.local", 80)] == (pods["parcels"], 8080)


def test_layered_rules_and_selector_policies_on_a_waypoints_pod() -> None:
    """``buildHCMConnectTerminateChain``: the terminating chain's L4 rules exist only with
    ``ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES`` (default false); then the waypoint's
    pod takes selector policies as a sidecar would (``NewWaypointTerminationBuilder``)."""
    waypoint = Waypoint("foreman", "mill")
    on_pod = parse_policy(
        authorization_policy(
            "foreman-l4",
            "mill",
            "DENY",
            [{}],
            selector={"gateway.networking.k8s.io/gateway-name": "foreman"},
        )
    )
    elsewhere = parse_policy(
        authorization_policy("silo-l4", "mill", "DENY", [{}], selector={"app": "silo"})
    )
    assert layered_waypoint_policies(waypoint, [on_pod, elsewhere]) == ()
    assert layered_waypoint_policies(waypoint, [on_pod, elsewhere], layered=True) == (on_pod,)
    assert isinstance(on_pod, AuthorizationPolicy) and isinstance(elsewhere, AuthorizationPolicy)
    problem = selector_policy_waypoint_problem(on_pod, [waypoint], "istio-system")
    assert problem is not None and "ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES" in problem
    assert selector_policy_waypoint_problem(elsewhere, [waypoint], "istio-system") is None
