"""A Service's own waypoint on the local mesh, proven from the wire (issue 20): a user's suite
run by pytester with real Envoys playing each ambient pod's ztunnel and the waypoints, real
curl and tcpdump.

Where the expected values come from (docs/istio-model.md, "Waypoints"):

- a Service labelled ``istio.io/use-waypoint: <name>`` uses that waypoint, whatever its
  namespace says; ``istio.io/use-waypoint: none`` opts it out of its namespace's waypoint
  (``GetUseWaypoint``, ``fetchWaypointForTarget``, pilot/pkg/serviceregistry/ambient/
  waypoints.go; istio.io "Configure waypoint proxies": "Configure a service to use a specific
  waypoint");
- the client's ztunnel sends a Service's traffic to the Service's waypoint over HBONE, and a
  Service without one straight to its pod (``build_request``, istio/ztunnel
  src/proxy/outbound.rs);
- a ``targetRefs`` policy is enforced by the waypoint of the Service it names and answers
  ``403`` ``RBAC: access denied``; one naming a Service bound to no waypoint binds nothing
  ("Service <ns>/<name> is not bound to a waypoint", ``WaypointPolicyStatusCollection``,
  pilot/pkg/serviceregistry/ambient/policies.go).

The layout is not sleep/httpbin: `depot` has the waypoint `inspector`, which enrols no namespace
(`istioctl waypoint apply --name inspector` without `--enroll-namespace`); its Service `parcels`
is labelled to use it, `ledger` is not. `yard` is enrolled in its waypoint `gatekeeper`, and its
Service `crane` opts out.
"""

from __future__ import annotations

import pytest
from local_helpers import assert_fails_under_fault, assert_suite_passes, needs_local_mesh
from waypoint_topologies import DEPOT_TOPOLOGY

SUITE = r"""
import pytest

from pytest_meshconform import (
    Capturer,
    PolicyApplier,
    UnmatchedPolicyError,
    WorkloadLookup,
    authorization_policy,
)


def service_ref(name):
    return [{"kind": "Service", "group": "", "name": name}]


def gateway_ref(name):
    return [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": name}]


def tunnels_from(capture):
    return {f.server[0] for f in capture.flows if f.server_port == 15008}


def test_a_labelled_service_goes_through_its_waypoint(
    workload: WorkloadLookup, capture: Capturer, mesh
) -> None:
    courier, parcels = workload("courier", "depot"), workload("parcels", "depot")
    inspector = mesh.pod_ip(mesh.workload("inspector", "depot"))
    with capture(courier) as at_client, capture(parcels, port="http") as at_server:
        result = courier.curl(parcels, path="/anything/labelled")
    assert result.status == 200, result
    assert tunnels_from(at_client) == {inspector}, at_client
    assert not at_client.plaintext_flows, at_client
    into_server = [f for f in at_server.flows if f.server_port == 15008]
    assert into_server and {f.client[0] for f in into_server} == {inspector}, at_server


def test_a_service_without_the_label_skips_the_waypoint(
    workload: WorkloadLookup, capture: Capturer, mesh
) -> None:
    courier, ledger = workload("courier", "depot"), workload("ledger", "depot")
    with capture(courier) as at_client:
        assert courier.curl(ledger).status == 200
    assert tunnels_from(at_client) == {mesh.pod_ip(ledger.workload)}, at_client


def test_the_labelled_services_policy_is_enforced_at_its_waypoint(
    apply_policy: PolicyApplier, workload: WorkloadLookup
) -> None:
    courier, parcels = workload("courier", "depot"), workload("parcels", "depot")
    apply_policy(authorization_policy(
        "parcels-read-only", "depot", "ALLOW",
        [{"to": [{"operation": {"methods": ["GET"]}}]}],
        target_refs=service_ref("parcels"),
    ))
    assert courier.curl(parcels, path="/get").status == 200
    deleted = courier.curl(parcels, method="DELETE", path="/delete")
    assert deleted.status == 403 and deleted.body == b"RBAC: access denied", deleted


def test_a_policy_for_a_service_without_a_waypoint_binds_nothing(
    apply_policy: PolicyApplier,
) -> None:
    unbound = "Service {} is not bound to a waypoint"
    with pytest.raises(UnmatchedPolicyError, match=unbound.format("depot/ledger")):
        apply_policy(authorization_policy(
            "ledger-read-only", "depot", "ALLOW", [{}], target_refs=service_ref("ledger"),
        ))
    with pytest.raises(UnmatchedPolicyError, match=unbound.format("yard/crane")):
        apply_policy(authorization_policy(
            "crane-read-only", "yard", "ALLOW", [{}], target_refs=service_ref("crane"),
        ))


def test_none_opts_a_service_out_of_its_namespaces_waypoint(
    apply_policy: PolicyApplier, workload: WorkloadLookup, capture: Capturer, mesh
) -> None:
    courier = workload("courier", "depot")
    forklift, crane = workload("forklift", "yard"), workload("crane", "yard")
    apply_policy(authorization_policy(
        "no-deletes", "yard", "DENY",
        [{"to": [{"operation": {"methods": ["DELETE"]}}]}],
        target_refs=gateway_ref("gatekeeper"),
    ))
    denied = courier.curl(forklift, method="DELETE", path="/delete")
    assert denied.status == 403 and denied.body == b"RBAC: access denied", denied
    with capture(courier) as at_client:
        passed = courier.curl(crane, method="DELETE", path="/delete")
    assert passed.status == 200, passed  # no waypoint: nothing judges its L7
    assert tunnels_from(at_client) == {mesh.pod_ip(crane.workload)}, at_client
"""


@needs_local_mesh
def test_a_services_own_waypoint_label_on_the_wire(pytester: pytest.Pytester) -> None:
    assert_suite_passes(pytester, "depot", DEPOT_TOPOLOGY, SUITE, passed=5)


@needs_local_mesh
def test_the_labelled_services_policy_test_fails_when_the_waypoint_ignores_l7(
    pytester: pytest.Pytester,
) -> None:
    """No false green: with the test-only `waypoint-ignores-l7` fault the labelled Service's
    waypoint enforces nothing, and the DELETE is answered."""
    assert_fails_under_fault(
        pytester,
        "depot",
        DEPOT_TOPOLOGY,
        SUITE,
        fault="waypoint-ignores-l7",
        keyword="enforced_at_its_waypoint",
        deselected=4,
        lines=["*AssertionError*HTTP 200*"],
    )


@needs_local_mesh
def test_a_label_naming_no_waypoint_stops_the_run(pytester: pytest.Pytester) -> None:
    """A Service labelled with a waypoint that does not exist would have istiod report it not
    ready and send the traffic straight to the pod: the run stops before anything starts."""
    pytester.makefile(
        ".yaml", depot=DEPOT_TOPOLOGY.replace("use-waypoint: inspector", "use-waypoint: ghost")
    )
    pytester.makepyfile(test_depot=SUITE)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "--mesh-topology=depot.yaml")
    assert result.ret != 0
    assert (
        "depot.yaml:11: namespaces[0].services[0].labels.istio.io/use-waypoint:"
        ' waypoint "depot/ghost" is not ready' in result.stderr.str()
    ), result.stderr.str()
