"""A waypoint shared by two ambient namespaces, on the local mesh, proven from the wire
(issue 20): a user's suite run by pytester with real Envoys playing each ambient pod's ztunnel
and the waypoint, real curl and tcpdump.

Where the expected values come from (docs/istio-model.md, "Waypoints"):

- a namespace labelled ``istio.io/use-waypoint: <name>`` and
  ``istio.io/use-waypoint-namespace: <ns>`` uses that namespace's waypoint when the
  waypoint's listener allows it (``allowedRoutes.namespaces.from: All``, or a ``Selector``
  its labels match: ``fetchWaypointForTarget``, ``AllowsAttachmentFromNamespace``,
  pilot/pkg/serviceregistry/ambient/waypoints.go; istio.io "Configure waypoint proxies", use a
  waypoint in another namespace);
- the policies a waypoint enforces for a Service are looked up in the root namespace, the
  waypoint's and the Service's (``ListAuthorizationPolicies``,
  pilot/pkg/model/authorization.go): a ``targetRefs`` Service policy in the Service's
  namespace, a ``targetRefs`` Gateway policy in the waypoint's (``ShouldAttachPolicy``,
  pilot/pkg/model/policyattachment.go); a Gateway reference from another namespace binds
  nothing ("Gateway <ns>/<name> is not a waypoint": istiod's status for it);
- the destination's ztunnel sees the waypoint's identity,
  ``spiffe://cluster.local/ns/<waypoint's namespace>/sa/<waypoint>`` (the waypoint opens its
  own HBONE tunnel with its own certificate).

The layout is not sleep/httpbin: `mesh-infra` (no data plane) holds the waypoint `shared`
(`allowedRoutes: All`); the ambient namespaces `north` and `south` use it by their labels; a
`truck` in `north` calls `dock` in `north` and `pier` in `south`.
"""

from __future__ import annotations

import pytest
from local_helpers import assert_fails_under_fault, assert_suite_passes, needs_local_mesh

SHARED_TOPOLOGY = """\
namespaces:
  - name: mesh-infra
    dataplane: none
    waypoints:
      - {name: shared, allowedRoutes: All}
  - name: north
    dataplane: ambient
    labels: {istio.io/use-waypoint: shared, istio.io/use-waypoint-namespace: mesh-infra}
    workloads:
      - {name: truck, kind: sleep}
      - {name: van, kind: sleep}
      - {name: dock, kind: httpbin}
    services:
      - {name: dock, selector: {app: dock}, ports: [{name: http, port: 80, targetPort: 8080}]}
  - name: south
    dataplane: ambient
    labels: {istio.io/use-waypoint: shared, istio.io/use-waypoint-namespace: mesh-infra}
    workloads:
      - {name: pier, kind: httpbin}
    services:
      - {name: pier, selector: {app: pier}, ports: [{name: http, port: 80, targetPort: 8080}]}
"""

SUITE = r"""
import pytest

from pytest_meshconform import (
    Capturer,
    PolicyApplier,
    UnmatchedPolicyError,
    WorkloadLookup,
    authorization_policy,
)

SHARED = [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "shared"}]
TRUCK = "cluster.local/ns/north/sa/truck"
WAYPOINT = "cluster.local/ns/mesh-infra/sa/shared"


def service_ref(name):
    return [{"kind": "Service", "group": "", "name": name}]


def test_both_namespaces_go_through_the_shared_waypoint(
    workload: WorkloadLookup, capture: Capturer, mesh
) -> None:
    truck = workload("truck", "north")
    dock, pier = workload("dock", "north"), workload("pier", "south")
    waypoint = mesh.pod_ip(mesh.workload("shared", "mesh-infra"))
    for server in (dock, pier):
        with capture(truck) as at_client, capture(server, port="http") as at_server:
            assert truck.curl(server, path="/anything/shared").status == 200
        assert {f.server[0] for f in at_client.flows if f.server_port == 15008} == {waypoint}
        into = [f for f in at_server.flows if f.server_port == 15008]
        assert into and {f.client[0] for f in into} == {waypoint}, at_server


def test_service_policies_bind_from_the_services_own_namespace(
    apply_policy: PolicyApplier, workload: WorkloadLookup
) -> None:
    truck, van = workload("truck", "north"), workload("van", "north")
    dock, pier = workload("dock", "north"), workload("pier", "south")
    apply_policy(authorization_policy(
        "pier-for-trucks", "south", "ALLOW",
        [{"from": [{"source": {"principals": [TRUCK]}}]}],
        target_refs=service_ref("pier"),
    ))
    assert truck.curl(pier).status == 200
    refused = van.curl(pier)
    assert refused.status == 403 and refused.body == b"RBAC: access denied", refused
    assert van.curl(dock).status == 200  # the policy is pier's only


def test_a_gateway_policy_binds_from_the_waypoints_namespace_only(
    apply_policy: PolicyApplier, workload: WorkloadLookup
) -> None:
    truck = workload("truck", "north")
    dock, pier = workload("dock", "north"), workload("pier", "south")
    with pytest.raises(UnmatchedPolicyError, match="Gateway north/shared is not a waypoint"):
        apply_policy(authorization_policy(
            "no-deletes", "north", "DENY",
            [{"to": [{"operation": {"methods": ["DELETE"]}}]}],
            target_refs=SHARED,
        ))
    apply_policy(authorization_policy(
        "no-deletes", "mesh-infra", "DENY",
        [{"to": [{"operation": {"methods": ["DELETE"]}}]}],
        target_refs=SHARED,
    ))
    for server in (dock, pier):
        denied = truck.curl(server, method="DELETE", path="/delete")
        assert denied.status == 403 and denied.body == b"RBAC: access denied", denied
        assert truck.curl(server, path="/get").status == 200


def test_the_servers_ztunnel_sees_the_shared_waypoints_identity(
    apply_policy: PolicyApplier, workload: WorkloadLookup
) -> None:
    truck, pier = workload("truck", "north"), workload("pier", "south")
    apply_policy(authorization_policy(
        "pier-l4", "south", "ALLOW",
        [{"from": [{"source": {"principals": [TRUCK]}}]}],
        selector={"app": "pier"},
    ))
    assert truck.curl(pier).status != 200  # the waypoint's identity arrives, not the truck's
    apply_policy(authorization_policy(
        "pier-l4", "south", "ALLOW",
        [{"from": [{"source": {"principals": [WAYPOINT]}}]}],
        selector={"app": "pier"},
    ))
    assert truck.curl(pier).status == 200
"""


@needs_local_mesh
def test_a_shared_waypoint_on_the_wire(pytester: pytest.Pytester) -> None:
    assert_suite_passes(pytester, "shared", SHARED_TOPOLOGY, SUITE, passed=4)


@needs_local_mesh
def test_the_shared_waypoints_policy_test_fails_when_it_ignores_l7(
    pytester: pytest.Pytester,
) -> None:
    """No false green: with the test-only `waypoint-ignores-l7` fault the shared waypoint
    enforces nothing, and the refused caller is answered."""
    assert_fails_under_fault(
        pytester,
        "shared",
        SHARED_TOPOLOGY,
        SUITE,
        fault="waypoint-ignores-l7",
        keyword="own_namespace",
        deselected=3,
        lines=["*AssertionError*HTTP 200*"],
    )
