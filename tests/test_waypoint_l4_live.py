"""L4-only rules at a waypoint, on the local mesh, proven from the wire (issue 20): a user's
suite run by pytester with real Envoys (each ambient pod's ztunnel, the waypoint), real curl
and tcpdump.

Where istiod puts them (docs/istio-model.md, "Waypoints"): a ``targetRefs`` policy with only
L4 fields (``from.source.principals``, no HTTP field) lands in the per-Service chain of the
waypoint's ``main_internal`` listener like any other: the HTTP RBAC filter of an HTTP port's
connection manager (a denial is ``403`` ``RBAC: access denied``, answered after the CONNECT to
the waypoint was accepted), the network RBAC filter of a TCP port (the connection is closed)
(``buildWaypointInboundHTTPFilters``, ``buildWaypointNetworkFilters``,
pilot/pkg/networking/core/listener_waypoint.go). The HBONE terminating chain
(``connect_terminate``) carries no RBAC: the layered L4 rules there exist only with
``ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES`` (default false, pilot/pkg/features/
ambient.go; ``buildHCMConnectTerminateChain``). A denied request never leaves the waypoint: the
destination's ztunnel sees no connection for it. A selector policy naming the waypoint's pod
binds nothing by default (istiod's waypoint matching skips selector policies,
``ShouldAttachPolicy``; ztunnel does not capture the waypoint's pod), so ``apply_policy``
refuses it with that reason.

The layout is not sleep/httpbin: `mill` is ambient with the waypoint `foreman`; `grinder` and
`baker` call `silo` (HTTP on Service port 80, a TCP echo on 7000).
"""

from __future__ import annotations

import pytest
from local_helpers import assert_fails_under_fault, assert_suite_passes, needs_local_mesh

MILL_TOPOLOGY = """\
namespaces:
  - name: mill
    dataplane: ambient
    waypoint: foreman
    workloads:
      - {name: grinder, kind: sleep}
      - {name: baker, kind: sleep}
      - name: silo
        kind: httpbin
        ports: [8080, {port: 7000, serves: tcp-echo}]
    services:
      - name: silo
        selector: {app: silo}
        ports:
          - {name: http, port: 80, targetPort: 8080}
          - {name: tcp-grain, port: 7000}
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

SILO = [{"kind": "Service", "group": "", "name": "silo"}]
GRINDER = "cluster.local/ns/mill/sa/grinder"


@pytest.fixture
def no_grinders(apply_policy: PolicyApplier) -> None:
    apply_policy(authorization_policy(
        "no-grinders", "mill", "DENY",
        [{"from": [{"source": {"principals": [GRINDER]}}]}],
        target_refs=SILO,
    ))


def test_an_l4_rule_on_an_http_port_is_the_http_rbac_filters(
    no_grinders: None, workload: WorkloadLookup, capture: Capturer, mesh
) -> None:
    grinder, baker = workload("grinder", "mill"), workload("baker", "mill")
    silo = workload("silo", "mill")
    waypoint = mesh.pod_ip(mesh.workload("foreman", "mill"))
    with capture(grinder) as at_client, capture(silo, port="http") as at_server:
        denied = grinder.curl(silo, path="/get")
        allowed = baker.curl(silo, path="/get")
    assert denied.status == 403 and denied.body == b"RBAC: access denied", denied
    assert allowed.status == 200, allowed
    # the tunnel to the waypoint was accepted (an HTTP answer came back through it) ...
    to_waypoint = [f for f in at_client.flows if f.server_port == 15008]
    assert to_waypoint and {f.server[0] for f in to_waypoint} == {waypoint}, at_client
    # ... and the pod is reached by the waypoint only
    into = [f for f in at_server.flows if f.server_port == 15008]
    assert into and {f.client[0] for f in into} == {waypoint}, at_server


def test_the_destination_ztunnel_judges_the_waypoint_the_waypoint_judges_the_client(
    no_grinders: None, apply_policy: PolicyApplier, workload: WorkloadLookup
) -> None:
    grinder, baker = workload("grinder", "mill"), workload("baker", "mill")
    silo = workload("silo", "mill")
    apply_policy(authorization_policy(
        "only-foreman", "mill", "ALLOW",
        [{"from": [{"source": {"principals": ["cluster.local/ns/mill/sa/foreman"]}}]}],
        selector={"app": "silo"},
    ))
    assert baker.curl(silo, path="/get").status == 200  # ztunnel admits the waypoint
    # the client's L4 rule is the waypoint's HTTP RBAC (a 403), not ztunnel's (a reset)
    denied = grinder.curl(silo, path="/get")
    assert denied.status == 403 and denied.body == b"RBAC: access denied", denied


def test_an_l4_rule_on_a_tcp_port_closes_the_connection(
    no_grinders: None, workload: WorkloadLookup
) -> None:
    grinder, baker = workload("grinder", "mill"), workload("baker", "mill")
    silo = workload("silo", "mill")
    assert baker.tcp(silo, port="tcp-grain", send=b"wheat\n").received == b"hello wheat\n"
    refused = grinder.tcp(silo, port="tcp-grain", send=b"wheat\n")
    assert not refused.received, refused


def test_a_selector_policy_on_the_waypoints_pod_binds_nothing(
    apply_policy: PolicyApplier,
) -> None:
    with pytest.raises(UnmatchedPolicyError, match="ENABLE_LAYERED_WAYPOINT_AUTHORIZATION"):
        apply_policy(authorization_policy(
            "foreman-l4", "mill", "DENY",
            [{"from": [{"source": {"principals": [GRINDER]}}]}],
            selector={"gateway.networking.k8s.io/gateway-name": "foreman"},
        ))
"""


@needs_local_mesh
def test_l4_rules_at_the_waypoint_on_the_wire(pytester: pytest.Pytester) -> None:
    assert_suite_passes(pytester, "mill", MILL_TOPOLOGY, SUITE, passed=4)


@needs_local_mesh
def test_the_l4_rule_test_fails_when_the_waypoint_ignores_its_rules(
    pytester: pytest.Pytester,
) -> None:
    """No false green: with `waypoint-ignores-l7` (the waypoint enforces no policy) the
    denied principal's request is answered and reaches the pod."""
    assert_fails_under_fault(
        pytester,
        "mill",
        MILL_TOPOLOGY,
        SUITE,
        fault="waypoint-ignores-l7",
        keyword="http_rbac",
        deselected=3,
        lines=["*AssertionError*HTTP 200*"],
    )
