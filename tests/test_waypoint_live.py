"""Waypoints on the local mesh, proven from the wire (issue 20): a user's suite run by
pytester on a topology whose ambient namespace has a waypoint, with real Envoys playing each
ambient pod's ztunnel and the waypoint, real curl and tcpdump.

Where the expected values come from (docs/istio-model.md, "Waypoints"):

- ztunnel sends a connection to a Service address through the Service's waypoint: HBONE to
  the waypoint's pod on 15008, the Service address and port as CONNECT authority; with the
  default traffic type ``service`` a connection to the pod address goes straight to the pod
  (``build_request``, istio/ztunnel src/proxy/outbound.rs);
- the waypoint enforces the AuthorizationPolicies bound by ``targetRefs`` with the client's
  identity and answers a denied request ``403`` ``RBAC: access denied`` (istio.io, ambient
  getting started, "Enforce Layer 7 authorization policy");
- selector and namespace policies stay on the destination's ztunnel, which sees the
  waypoint's identity for traffic through it (istio.io, "Use Layer 4 security policy",
  "Authorization policy attachment": Source Identity "waypoint" for Selector and Namespace
  scope with a waypoint, "client pod" for ``targetRefs``);
- the app sees no ``x-forwarded-client-cert`` (istiod leaves the waypoint's
  ``forward_client_cert_details`` unset, pilot/pkg/networking/core/listener_waypoint.go).

The layout is not sleep/httpbin: `clinic` is ambient with the waypoint `checkpoint`
(`reception` and `billing` call `records`, which serves HTTP on 8080 behind Service port 80
and a TCP echo on 7000); `lab` has no data plane (`scanner`).
"""

from __future__ import annotations

import pytest
from local_helpers import assert_fails_under_fault, assert_suite_passes, needs_local_mesh

CLINIC_TOPOLOGY = """\
namespaces:
  - name: clinic
    dataplane: ambient
    waypoint: checkpoint
    workloads:
      - {name: reception, kind: sleep}
      - {name: billing, kind: sleep, serviceAccount: billing-sa}
      - name: records
        kind: httpbin
        ports: [8080, {port: 7000, serves: tcp-echo}]
    services:
      - name: records
        selector: {app: records}
        ports:
          - {name: http, port: 80, targetPort: 8080}
          - {name: tcp-audit, port: 7000}
  - name: lab
    dataplane: none
    workloads:
      - {name: scanner, kind: sleep}
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

RECORDS_SERVICE = [{"kind": "Service", "group": "", "name": "records"}]
CHECKPOINT = [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "checkpoint"}]
RECEPTION = "cluster.local/ns/clinic/sa/reception"
WAYPOINT = "cluster.local/ns/clinic/sa/checkpoint"


def test_service_traffic_goes_through_the_waypoint_over_hbone(
    workload: WorkloadLookup, capture: Capturer, mesh
) -> None:
    reception, records = workload("reception", "clinic"), workload("records", "clinic")
    waypoint_ip = mesh.pod_ip(mesh.workload("checkpoint", "clinic"))
    with capture(reception) as at_client, capture(records, port="http") as at_server:
        result = reception.curl(records, path="/anything/via-waypoint")
    assert result.status == 200, result
    to_waypoint = [f for f in at_client.flows if f.server_port == 15008]
    assert to_waypoint and {f.server[0] for f in to_waypoint} == {waypoint_ip}, at_client
    for flow in to_waypoint:
        hello = flow.tls.client_hello
        assert hello is not None and hello.alpn == ("h2",) and hello.sni is None, flow
        assert hello.supported_versions == ("TLS1.3",), hello
        assert b"via-waypoint" not in flow.client_stream, flow
    assert not at_client.plaintext_flows, at_client
    # the records pod is reached by the waypoint, never by the client
    into_server = [f for f in at_server.flows if f.server_port == 15008]
    assert into_server and {f.client[0] for f in into_server} == {waypoint_ip}, at_server
    assert not at_server.plaintext_flows, at_server


def test_pod_addressed_traffic_skips_a_service_waypoint(
    workload: WorkloadLookup, capture: Capturer, mesh
) -> None:
    reception, records = workload("reception", "clinic"), workload("records", "clinic")
    url = f"http://{mesh.pod_ip(records.workload)}:8080/headers"
    with capture(records, port="http") as at_server:
        assert reception.curl(url).status == 200
    direct = [f for f in at_server.flows if f.server_port == 15008]
    assert direct and {f.client[0] for f in direct} == {mesh.pod_ip(reception.workload)}


def test_the_app_behind_a_waypoint_sees_no_xfcc(workload: WorkloadLookup) -> None:
    reception, records = workload("reception", "clinic"), workload("records", "clinic")
    result = reception.curl(records, path="/headers")
    assert result.status == 200, result
    assert b"X-Forwarded-Client-Cert" not in result.body, result.body


def test_l7_authorization_through_the_waypoint(
    apply_policy: PolicyApplier, workload: WorkloadLookup
) -> None:
    reception, billing = workload("reception", "clinic"), workload("billing", "clinic")
    records = workload("records", "clinic")
    apply_policy(authorization_policy(
        "records-viewer", "clinic", "ALLOW",
        [{"from": [{"source": {"principals": [RECEPTION]}}],
          "to": [{"operation": {"methods": ["GET"]}}]}],
        target_refs=RECORDS_SERVICE,
    ))
    assert reception.curl(records, path="/get").status == 200
    deleted = reception.curl(records, method="DELETE", path="/delete")
    assert deleted.status == 403 and deleted.body == b"RBAC: access denied", deleted
    other = billing.curl(records, path="/get")
    assert other.status == 403 and other.body == b"RBAC: access denied", other


def test_a_gateway_bound_deny_applies_to_all_traffic_of_the_waypoint(
    apply_policy: PolicyApplier, workload: WorkloadLookup
) -> None:
    reception, records = workload("reception", "clinic"), workload("records", "clinic")
    apply_policy(authorization_policy(
        "no-posts", "clinic", "DENY",
        [{"to": [{"operation": {"methods": ["POST"], "paths": ["/post"]}}]}],
        target_refs=CHECKPOINT,
    ))
    posted = reception.curl(records, method="POST", path="/post", data="x")
    assert posted.status == 403 and posted.body == b"RBAC: access denied", posted
    assert reception.curl(records, path="/get").status == 200


def test_ztunnel_sees_the_waypoints_identity(
    apply_policy: PolicyApplier, workload: WorkloadLookup, mesh
) -> None:
    reception, records = workload("reception", "clinic"), workload("records", "clinic")
    client_only = authorization_policy(
        "records-l4", "clinic", "ALLOW",
        [{"from": [{"source": {"principals": [RECEPTION]}}]}],
        selector={"app": "records"},
    )
    apply_policy(client_only)
    through_waypoint = reception.curl(records)
    assert through_waypoint.status != 200, through_waypoint
    direct = reception.curl(f"http://{mesh.pod_ip(records.workload)}:8080/headers")
    assert direct.status == 200, direct  # no waypoint on pod-addressed traffic
    apply_policy(authorization_policy(
        "records-l4", "clinic", "ALLOW",
        [{"from": [{"source": {"principals": [WAYPOINT]}}]}],
        selector={"app": "records"},
    ))
    assert reception.curl(records).status == 200
    bypass = reception.curl(f"http://{mesh.pod_ip(records.workload)}:8080/headers")
    assert bypass.status is None and bypass.exit_code in (56, 52), bypass


def test_tcp_through_the_waypoint(
    apply_policy: PolicyApplier, workload: WorkloadLookup
) -> None:
    reception, billing = workload("reception", "clinic"), workload("billing", "clinic")
    records = workload("records", "clinic")
    assert reception.tcp(records, port="tcp-audit", send=b"ping\n").received == b"hello ping\n"
    apply_policy(authorization_policy(
        "audit-writers", "clinic", "ALLOW",
        [{"from": [{"source": {"principals": ["cluster.local/ns/clinic/sa/billing-sa"]}}]}],
        target_refs=RECORDS_SERVICE,
    ))
    assert billing.tcp(records, port="tcp-audit", send=b"ping\n").received == b"hello ping\n"
    refused = reception.tcp(records, port="tcp-audit", send=b"ping\n")
    assert not refused.received, refused


def test_ip_blocks_at_the_waypoint_are_the_client_pods(
    apply_policy: PolicyApplier, workload: WorkloadLookup, mesh
) -> None:
    reception, billing = workload("reception", "clinic"), workload("billing", "clinic")
    records = workload("records", "clinic")
    apply_policy(authorization_policy(
        "by-address", "clinic", "ALLOW",
        [{"from": [{"source": {"ipBlocks": [mesh.pod_ip(reception.workload)]}}]}],
        target_refs=RECORDS_SERVICE,
    ))
    assert reception.curl(records).status == 200
    other = billing.curl(records)
    assert other.status == 403 and other.body == b"RBAC: access denied", other


def test_a_target_ref_naming_nothing_is_an_error(apply_policy: PolicyApplier) -> None:
    with pytest.raises(UnmatchedPolicyError, match="Service clinic/archive was not found"):
        apply_policy(authorization_policy(
            "archive", "clinic", "ALLOW", [{}],
            target_refs=[{"kind": "Service", "group": "", "name": "archive"}],
        ))
    with pytest.raises(UnmatchedPolicyError, match="Gateway clinic/waypoint is not a waypoint"):
        apply_policy(authorization_policy(
            "wrong-gateway", "clinic", "ALLOW", [{}],
            target_refs=[{**CHECKPOINT[0], "name": "waypoint"}],
        ))
"""


@needs_local_mesh
def test_waypoints_route_and_authorize_on_the_wire(pytester: pytest.Pytester) -> None:
    assert_suite_passes(pytester, "clinic", CLINIC_TOPOLOGY, SUITE, passed=9)


@needs_local_mesh
def test_the_l7_test_fails_when_the_waypoint_ignores_l7_rules(
    pytester: pytest.Pytester,
) -> None:
    """No false green: with the test-only `waypoint-ignores-l7` fault the waypoint enforces no
    policy, and the L7 test sees the DELETE answered."""
    assert_fails_under_fault(
        pytester,
        "clinic",
        CLINIC_TOPOLOGY,
        SUITE,
        fault="waypoint-ignores-l7",
        keyword="l7_authorization",
        deselected=8,
        lines=[
            "*AssertionError*HTTP 200*",
            # the evidence includes the access log of the waypoint in front of the server
            "*log records.clinic waypoint-access.log (this test)*",
            '*"DELETE /delete HTTP/1.1" 200*',
        ],
    )
