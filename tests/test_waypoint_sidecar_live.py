"""A sidecar client of a Service that has a waypoint, on the local mesh, proven from the wire
(issue 20): a user's suite run by pytester with real Envoys (the sidecar, each ambient pod's
ztunnel, the waypoint), real curl and tcpdump.

What istiod does (docs/istio-model.md, "Waypoints"): a sidecar's outbound cluster for a Service
keeps the Service's own endpoints even when the Service has a waypoint: only an ingress gateway
(with ``istio.io/ingress-use-waypoint``) or an east-west gateway is given the waypoint's
endpoints (``findServiceWaypoint``, pilot/pkg/xds/endpoints/endpoint_builder.go: "Currently
only ingress and e/w gateway will call waypoints"); Istio's ambient integration tests skip
sidecar clients of waypoints for that reason ("TODO: sidecars do not currently respect
waypoints", istio/istio#51445, tests/integration/ambient/baseline_test.go). So the sidecar sends
HBONE straight to the server's pod (``PILOT_ENABLE_SENDING_HBONE``), the L7 policy bound to the
waypoint does not judge it, and the server's ztunnel sees the sidecar's own identity: an L4
policy admitting only the waypoint refuses it (istio.io "Use Layer 4 security policy": allow
the waypoint's identity to stop traffic that bypasses it).

The layout is not sleep/httpbin: `harbor` is ambient with the waypoint `customs` in front of
the Service `ferry`, and an ambient client `skiff`; `fleet` has sidecars (`tug`).
"""

from __future__ import annotations

import pytest
from local_helpers import assert_fails_under_fault, assert_suite_passes, needs_local_mesh

HARBOR_TOPOLOGY = """\
namespaces:
  - name: harbor
    dataplane: ambient
    waypoint: customs
    workloads:
      - {name: skiff, kind: sleep}
      - {name: ferry, kind: httpbin}
    services:
      - {name: ferry, selector: {app: ferry}, ports: [{name: http, port: 80, targetPort: 8080}]}
  - name: fleet
    dataplane: sidecar
    workloads:
      - {name: tug, kind: sleep}
"""

SUITE = r"""
from pytest_meshconform import Capturer, PolicyApplier, WorkloadLookup, authorization_policy

FERRY = [{"kind": "Service", "group": "", "name": "ferry"}]
CUSTOMS = "cluster.local/ns/harbor/sa/customs"


def test_a_sidecar_client_goes_straight_to_the_pod(
    workload: WorkloadLookup, capture: Capturer, mesh
) -> None:
    tug, ferry = workload("tug", "fleet"), workload("ferry", "harbor")
    with capture(tug) as at_client, capture(ferry, port="http") as at_server:
        assert tug.curl(ferry, path="/anything/by-sidecar").status == 200
    tunnels = {f.server[0] for f in at_client.flows if f.server_port == 15008}
    assert tunnels == {mesh.pod_ip(ferry.workload)}, at_client
    assert not at_client.plaintext_flows, at_client
    into = [f for f in at_server.flows if f.server_port == 15008]
    assert into and {f.client[0] for f in into} == {mesh.pod_ip(tug.workload)}, at_server


def test_the_waypoints_l7_policy_judges_ambient_clients_only(
    apply_policy: PolicyApplier, workload: WorkloadLookup
) -> None:
    tug, skiff = workload("tug", "fleet"), workload("skiff", "harbor")
    ferry = workload("ferry", "harbor")
    apply_policy(authorization_policy(
        "no-deletes", "harbor", "DENY",
        [{"to": [{"operation": {"methods": ["DELETE"]}}]}],
        target_refs=FERRY,
    ))
    through_waypoint = skiff.curl(ferry, method="DELETE", path="/delete")
    assert through_waypoint.status == 403, through_waypoint
    assert through_waypoint.body == b"RBAC: access denied", through_waypoint
    by_sidecar = tug.curl(ferry, method="DELETE", path="/delete")
    assert by_sidecar.status == 200, by_sidecar  # istiod: the sidecar bypasses the waypoint


def test_admitting_only_the_waypoint_refuses_the_sidecar(
    apply_policy: PolicyApplier, workload: WorkloadLookup
) -> None:
    tug, skiff = workload("tug", "fleet"), workload("skiff", "harbor")
    ferry = workload("ferry", "harbor")
    apply_policy(authorization_policy(
        "only-customs", "harbor", "ALLOW",
        [{"from": [{"source": {"principals": [CUSTOMS]}}]}],
        selector={"app": "ferry"},
    ))
    assert skiff.curl(ferry).status == 200
    refused = tug.curl(ferry)
    assert refused.status == 503, refused  # the server's ztunnel refuses the sidecar's CONNECT
"""


@needs_local_mesh
def test_a_sidecar_client_of_a_waypoint_service_on_the_wire(pytester: pytest.Pytester) -> None:
    assert_suite_passes(pytester, "harbor", HARBOR_TOPOLOGY, SUITE, passed=3)


@needs_local_mesh
def test_the_bypass_test_fails_when_ztunnel_ignores_principals(
    pytester: pytest.Pytester,
) -> None:
    """No false green: with `authz-ignores-principals` the server's ztunnel admits any peer,
    and the sidecar's bypass is answered."""
    assert_fails_under_fault(
        pytester,
        "harbor",
        HARBOR_TOPOLOGY,
        SUITE,
        fault="authz-ignores-principals",
        keyword="refuses_the_sidecar",
        deselected=2,
        lines=["*AssertionError*HTTP 200*"],
    )
