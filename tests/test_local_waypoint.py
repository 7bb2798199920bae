"""The local mesh's waypoints without running them (issue 20): the topology's `waypoint:` key
and its errors, where each ambient pod's ztunnel sends Service traffic, and the plan and
config of the waypoint's Envoy. The live tests are tests/test_waypoint_live.py.

Expected values: ztunnel's ``build_request`` (src/proxy/outbound.rs: to the Service's
waypoint, the original destination as CONNECT authority, the waypoint's identity verified),
istioctl's reserved name ``none`` (istioctl/pkg/waypoint/waypoint.go), istiod's waypoint
listener names (``connect_terminate``, ``main_internal``, pilot/pkg/networking/core) and its
filter state key ``io.istio.peer_principal`` (pilot/pkg/xds/filters/filters.go).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_meshconform import authorization_policy
from pytest_meshconform.backends.local.control import Faults, plan_waypoints, plan_ztunnels
from pytest_meshconform.backends.local.topology_file import TopologyError, parse_topology
from pytest_meshconform.backends.local.waypoint import waypoint_clusters, waypoint_listeners
from pytest_meshconform.backends.local.xds import SidecarPaths
from pytest_meshconform.istio.api import parse_policy

TOPOLOGY = """\
namespaces:
  - name: clinic
    dataplane: ambient
    waypoint: checkpoint
    workloads:
      - {name: reception, kind: sleep}
      - {name: records, kind: httpbin, ports: [8080]}
    services:
      - {name: records, selector: {app: records}, ports: [{name: http, port: 80, targetPort: 8080}]}
  - name: plain
    dataplane: ambient
    workloads:
      - {name: api, kind: httpbin}
    services:
      - {name: api, selector: {app: api}, ports: [{name: http, port: 8000, targetPort: 8080}]}
"""
WAYPOINT_ID = "spiffe://cluster.local/ns/clinic/sa/checkpoint"


def _topology() -> Any:
    return parse_topology(TOPOLOGY)


def test_a_namespace_waypoint_is_a_pod_after_the_workloads() -> None:
    topology = _topology()
    (entry,) = topology.waypoints
    assert (entry.waypoint.name, entry.waypoint.namespace) == ("checkpoint", "clinic")
    assert entry.pod.ip == "10.244.0.13"  # after the three workloads' pods
    assert entry.pod.workload.service_account == "checkpoint"
    assert not entry.pod.workload.ambient and not entry.pod.workload.has_sidecar
    assert [p.workload.key for p in topology.pods] == [
        "reception.clinic",
        "records.clinic",
        "api.plain",
    ]
    records, api = (e.service for e in topology.services)
    assert topology.service_waypoint(records) == entry
    assert topology.service_waypoint(api) is None
    assert topology.namespace_labels("clinic") == {"istio.io/use-waypoint": "checkpoint"}


@pytest.mark.parametrize(
    ("namespace", "message"),
    [
        (
            "{name: a, dataplane: sidecar, waypoint: wp}",
            "t.yaml:2: namespaces[0].waypoint: namespace a has dataplane: sidecar; a waypoint"
            " serves ambient workloads only",
        ),
        (
            "{name: a, dataplane: ambient, waypoint: none}",
            "namespaces[0].waypoint: invalid name provided for waypoint, 'none' is a reserved"
            " value",
        ),
        (
            "{name: a, dataplane: ambient, waypoint: wp, workloads: [{name: wp, kind: sleep}]}",
            "namespaces[0].waypoint: workload 'wp' has the waypoint's name",
        ),
        ("{name: a, dataplane: ambient, waypoint: Bad_Name}", "is not a DNS label"),
    ],
)
def test_waypoint_errors_name_the_field_and_the_fix(namespace: str, message: str) -> None:
    with pytest.raises(TopologyError) as caught:
        parse_topology(f"namespaces:\n  - {namespace}\n", "t.yaml")
    assert message in str(caught.value)


def test_service_traffic_tunnels_to_the_waypoint_with_the_service_address_as_authority() -> None:
    plans = plan_ztunnels(_topology(), [], "istio-system")
    tunnels = {(t.address, t.port): t for t in plans["reception.clinic"].tunnels}
    via = tunnels[("10.96.0.10", 80)]
    assert (via.endpoint_ip, via.connect_authority, via.identity) == (
        "10.244.0.13",
        "10.96.0.10:80",
        WAYPOINT_ID,
    )
    # pod-addressed traffic and Services without a waypoint go to the pod
    direct = tunnels[("10.244.0.11", 8080)]
    assert (direct.endpoint_ip, direct.connect_authority) == ("10.244.0.11", "10.244.0.11:8080")
    api = tunnels[("10.96.0.11", 8000)]
    assert (api.endpoint_ip, api.connect_authority) == ("10.244.0.12", "10.244.0.12:8080")


def test_the_destination_ztunnel_judges_the_waypoints_identity() -> None:
    only_waypoint = parse_policy(
        authorization_policy(
            "records-l4",
            "clinic",
            "ALLOW",
            [{"from": [{"source": {"principals": ["cluster.local/ns/clinic/sa/checkpoint"]}}]}],
            selector={"app": "records"},
        )
    )
    plans = plan_ztunnels(_topology(), [only_waypoint], "istio-system")
    assert plans["records.clinic"].hbone_peers[8080] == (("10.244.0.13", WAYPOINT_ID),)


def test_the_waypoint_serves_its_services_with_the_bound_policies(tmp_path: Path) -> None:
    viewer = parse_policy(
        authorization_policy(
            "viewer",
            "clinic",
            "ALLOW",
            [{"from": [{"source": {"principals": ["cluster.local/ns/clinic/sa/reception"]}}]}],
            target_refs=[{"kind": "Service", "group": "", "name": "records"}],
        )
    )
    plan = plan_waypoints(_topology(), [viewer], "istio-system")["checkpoint.clinic"]
    (route,) = plan.routes
    assert (route.address, route.port, route.endpoint_ip, route.target_port) == (
        "10.96.0.10",
        80,
        "10.244.0.11",
        8080,
    )
    assert route.cluster == "inbound-vip|80|http|records.clinic.svc.cluster.local"
    (rbac,) = route.rbac
    rules = rbac["typed_config"]["rules"]["policies"]["ns[clinic]-policy[viewer]-rule[0]"]
    assert rules["principals"][0]["and_ids"]["ids"][0]["or_ids"]["ids"] == [
        {
            "filter_state": {
                "key": "io.istio.peer_principal",
                "string_match": {"exact": "spiffe://cluster.local/ns/clinic/sa/reception"},
            }
        }
    ]
    paths = SidecarPaths(tmp_path)
    listeners = {item["name"]: item for item in waypoint_listeners(plan, paths)}
    assert set(listeners) == {
        "connect_terminate",
        "main_internal",
        "connect_originate|10.244.0.11:8080",
    }
    terminate = listeners["connect_terminate"]
    assert terminate["address"]["socket_address"]["port_value"] == 15008
    states = terminate["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0][
        "typed_config"
    ]["on_request_headers"]
    assert {
        s["object_key"]: s["format_string"]["text_format_source"]["inline_string"] for s in states
    }["io.istio.peer_principal"] == "%DOWNSTREAM_PEER_URI_SAN%"
    originate = listeners["connect_originate|10.244.0.11:8080"]["filter_chains"][0]["filters"][0]
    assert originate["typed_config"]["tunneling_config"] == {"hostname": "10.244.0.11:8080"}
    clusters = {c["name"]: c for c in waypoint_clusters(plan, paths)}
    # MeshConfig connectTimeout, 10 s by DefaultMeshConfig, on the Service's inbound-vip cluster
    # (buildWaypointInboundVIPCluster) and the HBONE one (buildConnectOriginate)
    assert {c["connect_timeout"] for c in clusters.values()} == {"10s"}
    san = clusters["hbone|10.244.0.11"]["transport_socket"]["typed_config"]["common_tls_context"][
        "combined_validation_context"
    ]["default_validation_context"]["match_typed_subject_alt_names"]
    assert san == [
        {"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/clinic/sa/records"}}
    ]
    broken = plan_waypoints(
        _topology(), [viewer], "istio-system", Faults(waypoint_ignores_l7=True)
    )["checkpoint.clinic"]
    assert broken.routes[0].rbac == ()
    # authz-ignores-principals: the filter-state principal matches anyone
    loose = plan_waypoints(
        _topology(), [viewer], "istio-system", Faults(authz_ignores_principals=True)
    )["checkpoint.clinic"]
    loose_rules = loose.routes[0].rbac[0]["typed_config"]["rules"]["policies"]
    assert loose_rules["ns[clinic]-policy[viewer]-rule[0]"]["principals"][0]["and_ids"]["ids"][0][
        "or_ids"
    ]["ids"] == [{"any": True}]


def test_the_waypoint_sanitizes_xfcc_unless_the_fault_forwards_it(tmp_path: Path) -> None:
    """istiod leaves ``forward_client_cert_details`` unset on the waypoint's per-Service HTTP
    connection manager (``buildWaypointInboundHTTPFilters``), Envoy's SANITIZE; the test-only
    `waypoint-forwards-xfcc` fault passes a client's own header on, on every HTTP chain."""
    paths = SidecarPaths(tmp_path)

    def managers(faults: Faults) -> list[dict[str, Any]]:
        plan = plan_waypoints(_topology(), [], "istio-system", faults)["checkpoint.clinic"]
        (internal,) = [
            item for item in waypoint_listeners(plan, paths) if item["name"] == "main_internal"
        ]
        return [chain["filters"][-1]["typed_config"] for chain in internal["filter_chains"]]

    (sanitizing,) = managers(Faults())
    assert "forward_client_cert_details" not in sanitizing
    (forwarding,) = managers(Faults(waypoint_forwards_xfcc=True))
    assert forwarding["forward_client_cert_details"] == "ALWAYS_FORWARD_ONLY"
    assert Faults.parse(["waypoint-forwards-xfcc"]) == Faults(waypoint_forwards_xfcc=True)


def test_a_waypoint_for_all_traffic_takes_pod_addressed_traffic_too() -> None:
    """ztunnel's ``build_request``: a connection to a pod address goes through the workload's
    waypoint (traffic type ``workload`` or ``all``) with the pod's address as authority; the
    waypoint's chain for it carries only the policies bound to the waypoint itself."""
    topology = parse_topology(
        TOPOLOGY.replace("waypoint: checkpoint", "waypoint: {name: checkpoint, for: all}")
    )
    tunnels = {
        (t.address, t.port): t
        for t in plan_ztunnels(topology, [], "istio-system")["reception.clinic"].tunnels
    }
    pod = tunnels[("10.244.0.11", 8080)]
    assert (pod.endpoint_ip, pod.connect_authority, pod.identity) == (
        "10.244.0.13",
        "10.244.0.11:8080",
        WAYPOINT_ID,
    )
    service_bound = parse_policy(
        authorization_policy(
            "svc",
            "clinic",
            "ALLOW",
            [{}],
            target_refs=[{"kind": "Service", "group": "", "name": "records"}],
        )
    )
    gateway_bound = parse_policy(
        authorization_policy(
            "gw",
            "clinic",
            "DENY",
            [{"to": [{"operation": {"methods": ["POST"]}}]}],
            target_refs=[
                {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "checkpoint"}
            ],
        )
    )
    plan = plan_waypoints(topology, [service_bound, gateway_bound], "istio-system")[
        "checkpoint.clinic"
    ]
    routes = {(r.address, r.port): r for r in plan.routes}
    by_pod = routes[("10.244.0.11", 8080)]
    assert (by_pod.cluster, by_pod.tcp) == ("inbound-pod|8080|http|10.244.0.11", False)
    policies = [set(f["typed_config"]["rules"]["policies"]) for f in by_pod.rbac]
    assert policies == [{"ns[clinic]-policy[gw]-rule[0]"}]
    by_service = routes[("10.96.0.10", 80)]
    assert [set(f["typed_config"]["rules"]["policies"]) for f in by_service.rbac] == [
        {"ns[clinic]-policy[gw]-rule[0]"},
        {"ns[clinic]-policy[svc]-rule[0]"},
    ]


GRPC_TOPOLOGY = """\
namespaces:
  - name: clinic
    dataplane: ambient
    waypoint: checkpoint
    workloads:
      - {name: reception, kind: sleep}
      - name: records
        ports:
          - {port: 50051, serves: grpc-echo}
          - {port: 8083, serves: grpc-echo}
          - {port: 8080, serves: httpbin}
    services:
      - name: records
        selector: {app: records}
        ports:
          - {name: grpc, port: 50051}
          - {name: grpc-web, port: 8083}
          - {name: http, port: 80, targetPort: 8080}
          - {name: web, port: 81, targetPort: 8080}
"""


def test_the_waypoint_speaks_http2_to_grpc_endpoints(tmp_path: Path) -> None:
    """istiod's waypoint on an ``IsHTTP2`` port (HTTP2, gRPC, gRPC-Web): the Service chain's
    connection manager gets ``http2_protocol_options`` (``buildWaypointInboundHTTPFilters``),
    a gRPC-Web one the gRPC-Web filter after RBAC (``buildHTTPConnectionManager``), and the
    ``inbound-vip`` cluster speaks HTTP/2 upstream (``setUpstreamProtocol`` -> ``setH2Options``);
    an HTTP port keeps HTTP/1.1, a sniffed one speaks what the client spoke
    (``setUseDownstreamProtocol``, for waypoints too)."""
    deny = parse_policy(
        authorization_policy(
            "no-posts",
            "clinic",
            "DENY",
            [{"to": [{"operation": {"methods": ["POST"]}}]}],
            target_refs=[{"kind": "Service", "group": "", "name": "records"}],
        )
    )
    plan = plan_waypoints(parse_topology(GRPC_TOPOLOGY), [deny], "istio-system")[
        "checkpoint.clinic"
    ]
    paths = SidecarPaths(tmp_path)
    (main,) = [item for item in waypoint_listeners(plan, paths) if item["name"] == "main_internal"]
    managers = {
        chain["filter_chain_match"]["destination_port"]: chain["filters"][0]["typed_config"]
        for chain in main["filter_chains"]
    }
    assert {port: m.get("http2_protocol_options") for port, m in managers.items()} == {
        50051: {},
        8083: {},
        80: None,
        81: None,
    }
    assert [f["name"] for f in managers[8083]["http_filters"]] == [
        "envoy.filters.http.rbac",
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.router",
    ]
    assert [f["name"] for f in managers[50051]["http_filters"]] == [
        "envoy.filters.http.rbac",
        "envoy.filters.http.router",
    ]
    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    upstream = {
        c["name"]: c.get("typed_extension_protocol_options", {}).get(options, {})
        for c in waypoint_clusters(plan, paths)
        if c["name"].startswith("inbound-vip")
    }
    fqdn = "records.clinic.svc.cluster.local"
    assert {name: u.get("explicit_http_config") for name, u in upstream.items()} == {
        f"inbound-vip|50051|http|{fqdn}": {"http2_protocol_options": {}},
        f"inbound-vip|8083|http|{fqdn}": {"http2_protocol_options": {}},
        f"inbound-vip|80|http|{fqdn}": None,
        f"inbound-vip|81|http|{fqdn}": None,
    }
    assert upstream[f"inbound-vip|81|http|{fqdn}"]["use_downstream_protocol_config"] == {
        "http_protocol_options": {},
        "http2_protocol_options": {},
    }
