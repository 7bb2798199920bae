"""Headless Services (``clusterIP: None``): the Istio model, the local mesh's rendering, and
`meshconform audit`'s verdicts on a real local mesh.

Where the expected values come from:
- istiod gives a headless Service ``Resolution: Passthrough``; a sidecar reaches it through an
  ORIGINAL_DST cluster (``convertResolution``, pilot/pkg/networking/core/cluster.go), an HTTP
  port through a wildcard ``0.0.0.0_<port>`` listener and a TCP port through one listener per
  endpoint pod IP (``buildSidecarOutboundListeners``, pilot/pkg/networking/core/listener.go).
- Auto mTLS towards it is one choice for the whole cluster: ``applyUpstreamTLSSettings``
  (pilot/pkg/networking/core/cluster_tls.go) sets the mTLS transport socket directly on an
  ORIGINAL_DST cluster ("Apply auto mtls to clusters excluding these kind of headless
  services"), and ``BestEffortInferServiceMTLSMode`` (pilot/pkg/model/push_context.go) infers
  DISABLE "if any of the endpoint is with tls disabled" (no sidecar).
- Istio's reachability test (tests/integration/security/reachability_test.go): headless
  Services behave as the others under global STRICT, PERMISSIVE and DISABLE; the "mtls port
  override" case (workload STRICT, ``portLevelMtls`` DISABLE: every call succeeds in
  plaintext) leaves headless Services out, ``match.NotHeadless``, citing istio/istio#39439
  ("When sent to a headless service, the client gets 503s"). The fix istio/istio#29873's
  maintainer gives: a DestinationRule with ``tls.mode: DISABLE`` for the host.
- A connection to a pod IP matches no listener but a headless Service's per-pod TCP one, and
  leaves through the PassthroughCluster, ORIGINAL_DST without a transport socket
  (``buildOutboundCatchAllNetworkFilterChains``, ``buildCatchAllVirtualHost``,
  ``buildDefaultPassthroughCluster``): plaintext.
- istiod's ``virtualInbound`` listener has no ``use_original_dst`` (``buildInboundListener``,
  pilot/pkg/networking/core/listener_inbound.go; the recorded dumps in tests/data/kube agree):
  an inbound connection is never handed to an outbound listener.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from local_helpers import needs_local_mesh, run_local_audit

from pytest_meshconform.audit.discovery import discover_service_ports
from pytest_meshconform.audit.local import with_audit_probes
from pytest_meshconform.backends.local.backend import LocalMesh
from pytest_meshconform.backends.local.control import plan_sidecars
from pytest_meshconform.backends.local.topology import Pod, Topology
from pytest_meshconform.backends.local.topology_file import TopologyError, parse_topology
from pytest_meshconform.backends.local.xds import SidecarPaths, clusters, listeners
from pytest_meshconform.istio.api import TlsMode, parse_policies
from pytest_meshconform.istio.plan import plan_sidecar, pod_ip_upstream
from pytest_meshconform.istio.upstream import upstream
from pytest_meshconform.mesh import Service, Workload

# kv is a StatefulSet-like store: peers reach each other through the headless kv-peers
# (HTTP 8080, TCP gossip 7000); kv-api is an ordinary Service in front of the same pod
TOPOLOGY = """\
namespaces:
  - name: stock
    dataplane: sidecar
    workloads:
      - name: kv
        kind: httpbin
        ports: [8080, {port: 7000, serves: tcp-echo}]
    services:
      - name: kv-peers
        clusterIP: None
        selector: {app: kv}
        ports: [{name: http, port: 8080}, {name: tcp-gossip, port: 7000}]
      - name: kv-api
        selector: {app: kv}
        ports: [{name: http, port: 80, targetPort: 8080}]
  - name: shelf
    dataplane: sidecar
    workloads:
      - {name: picker, kind: sleep}
"""

STOCK_STRICT = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: stock}
spec:
  mtls: {mode: STRICT}
"""

# Istio's reachability "mtls port override" (workload-peer-authn-port-override.yaml.tmpl)
PORT_OVERRIDE = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: kv, namespace: stock}
spec:
  selector: {matchLabels: {app: kv}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: DISABLE}
"""

PEERS_PLAINTEXT = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: kv-peers, namespace: stock}
spec:
  host: kv-peers.stock.svc.cluster.local
  trafficPolicy: {tls: {mode: DISABLE}}
"""


def _workload(name: str, sidecar: bool = True) -> Workload:
    return Workload(
        name=name,
        namespace="stock",
        app="kv",
        service_account=name,
        has_sidecar=sidecar,
        labels={"app": "kv", "replica": name},
        container_ports=(8080,),
    )


PEERS = Service("kv-peers", "stock", 8080, 8080, "kv", headless=True)


def test_auto_mtls_to_a_headless_service_ignores_each_endpoints_port_level_mode() -> None:
    policies = parse_policies(yaml.safe_load(PORT_OVERRIDE))
    kv = (_workload("kv-0"), _workload("kv-1"))
    headless = upstream(
        policies, None, PEERS, kv, root_namespace="istio-system", trust_domain="cluster.local"
    )
    assert (headless.mode, headless.auto, headless.plaintext_endpoints) == (
        TlsMode.ISTIO_MUTUAL,
        True,
        frozenset(),
    )
    assert headless.sni == "outbound_.8080_._.kv-peers.stock.svc.cluster.local"
    # the same pods behind a VIP: auto mTLS looks at each endpoint's mode (its port 8080 is
    # DISABLE), and reaches them in plaintext
    vip = Service("kv-api", "stock", 8080, 8080, "kv")
    ordinary = upstream(
        policies, None, vip, kv, root_namespace="istio-system", trust_domain="cluster.local"
    )
    assert ordinary.plaintext_endpoints == frozenset({"kv-0.stock", "kv-1.stock"})


def test_one_endpoint_without_sidecar_turns_a_headless_services_auto_mtls_off() -> None:
    policies = parse_policies(yaml.safe_load(STOCK_STRICT))
    mixed = (_workload("kv-0"), _workload("kv-1", sidecar=False))
    up = upstream(
        policies, None, PEERS, mixed, root_namespace="istio-system", trust_domain="cluster.local"
    )
    assert (up.mode, up.auto, up.originates_tls) == (None, True, False)
    assert not upstream(
        policies, None, PEERS, (), root_namespace="istio-system", trust_domain="cluster.local"
    ).originates_tls
    # every endpoint injected: mTLS
    both = (_workload("kv-0"), _workload("kv-1"))
    assert upstream(
        policies, None, PEERS, both, root_namespace="istio-system", trust_domain="cluster.local"
    ).originates_tls


def test_a_mesh_client_reaches_a_pod_ip_in_plaintext_but_a_headless_tcp_port() -> None:
    topology = parse_topology(TOPOLOGY)
    workloads = [pod.workload for pod in topology.pods]
    services = [entry.service for entry in topology.services]
    policies = parse_policies(yaml.safe_load(STOCK_STRICT))
    picker, kv = topology.pod("picker", "shelf").workload, topology.pod("kv", "stock").workload
    plan = plan_sidecar(picker, policies, workloads=workloads, services=services)
    gossip = pod_ip_upstream(plan, services, workloads, kv, 7000)
    assert gossip is not None and gossip.originates_tls
    assert gossip.cluster == "outbound|7000||kv-peers.stock.svc.cluster.local"
    # an HTTP port (the allow_any route) and a port no Service has: the PassthroughCluster
    assert pod_ip_upstream(plan, services, workloads, kv, 8080) is None
    assert pod_ip_upstream(plan, services, workloads, kv, 9999) is None
    # the endpoint itself has no outbound listener to its own pod IP
    own = plan_sidecar(kv, policies, workloads=workloads, services=services)
    assert pod_ip_upstream(own, services, workloads, kv, 7000) is None


def _rendered(topology_text: str, owner: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    topology = parse_topology(topology_text)
    plans = plan_sidecars(topology, (), "istio-system")
    paths = SidecarPaths(Path("/run/x"))
    return listeners(plans[owner], paths), clusters(plans[owner], paths)


def test_a_headless_service_renders_as_istiod_builds_it() -> None:
    kv_ip = parse_topology(TOPOLOGY).pod("kv", "stock").ip
    found_listeners, found_clusters = _rendered(TOPOLOGY, "picker.shelf")
    by_name = {item["name"]: item for item in found_listeners}
    # HTTP: a wildcard listener; TCP: one per endpoint pod IP; the VIP Service as before
    assert by_name["0.0.0.0_8080"]["address"]["socket_address"]["address"] == "0.0.0.0"
    assert by_name[f"{kv_ip}_7000"]["bind_to_port"] is False
    assert not any(name.startswith("10.96.") and name.endswith("_8080") for name in by_name)
    assert "virtualInbound" in by_name and "use_original_dst" not in by_name["virtualInbound"]
    assert by_name["virtualOutbound"]["use_original_dst"] is True
    peers = {c["name"]: c for c in found_clusters}[
        "outbound|8080||kv-peers.stock.svc.cluster.local"
    ]
    assert (peers["type"], peers["lb_policy"]) == ("ORIGINAL_DST", "CLUSTER_PROVIDED")
    assert "load_assignment" not in peers and "transport_socket_matches" not in peers
    sni = peers["transport_socket"]["typed_config"]["sni"]
    assert sni == "outbound_.8080_._.kv-peers.stock.svc.cluster.local"
    # the HTTP listener's routes: the Service's names to its cluster, anything else (a pod IP
    # as Host) to the PassthroughCluster, in plaintext
    manager = by_name["0.0.0.0_8080"]["filter_chains"][0]["filters"][0]["typed_config"]
    hosts = manager["route_config"]["virtual_hosts"]
    assert [(h["domains"][:2], h["routes"][0]["route"]["cluster"]) for h in hosts] == [
        (
            ["kv-peers.stock.svc.cluster.local", "kv-peers.stock.svc.cluster.local:8080"],
            "outbound|8080||kv-peers.stock.svc.cluster.local",
        ),
        (["*"], "PassthroughCluster"),
    ]
    assert "kv-peers.stock:8080" in hosts[0]["domains"]
    assert "*.kv-peers.stock.svc.cluster.local" in hosts[0]["domains"]  # the per-pod names
    # the endpoint's own sidecar has no outbound listener to itself on the TCP port
    own, _ = _rendered(TOPOLOGY, "kv.stock")
    assert f"{kv_ip}_7000" not in {item["name"] for item in own}


def test_a_headless_name_resolves_to_the_pod() -> None:
    topology = parse_topology(TOPOLOGY)
    kv = topology.pod("kv", "stock")
    hosts = topology.hosts_file(topology.pod("picker", "shelf"))
    assert f"{kv.ip}\tkv-peers.stock.svc.cluster.local kv-peers.stock.svc kv-peers.stock" in hosts
    peers = [line for line in hosts.splitlines() if "kv-peers" in line]
    assert len(peers) == 1  # no VIP line: only the pod's address
    assert any(line.startswith("10.96.") and "kv-api.stock" in line for line in hosts.splitlines())


@pytest.mark.parametrize(
    ("services", "message"),
    [
        (
            "      - {name: kv-peers, clusterIP: 10.96.0.99, selector: {app: kv},"
            " ports: [{name: http, port: 8080}]}\n",
            "<topology>:9: namespaces[0].services[0].clusterIP: only None (a headless Service)"
            " is taken; leave it out for a VIP",
        ),
        (
            "      - {name: kv-peers, clusterIP: None, selector: {app: kv},"
            " ports: [{name: http, port: 80, targetPort: 8080}]}\n",
            "<topology>:9: namespaces[0].services[0].ports[0].targetPort: targetPort 8080"
            " differs from port 80: a headless Service's name resolves to the pod, so clients"
            " connect to the port itself; give the container port as port",
        ),
        (
            "      - {name: kv-peers, clusterIP: None, selector: {app: kv},"
            " ports: [{name: http, port: 8080}]}\n"
            "      - {name: kv-admin, clusterIP: None, selector: {app: kv},"
            " ports: [{name: http-admin, port: 8080}]}\n",
            "<topology>:10: namespaces[0].services[1].ports[0].port: headless Service"
            " kv-peers.stock has port 8080 too: a sidecar has one outbound listener for both (a"
            " wildcard one on an HTTP port, one per pod on a TCP port), which the local mesh"
            " does not merge",
        ),
    ],
)
def test_a_headless_service_the_local_mesh_cannot_run_is_refused(
    services: str, message: str
) -> None:
    text = (
        "namespaces:\n"
        "  - name: stock\n"
        "    dataplane: sidecar\n"
        "    workloads:\n"
        "      - name: kv\n"
        "        kind: httpbin\n"
        "        ports: [8080]\n"
        "    services:\n"
        f"{services}"
    )
    with pytest.raises(TopologyError) as caught:
        parse_topology(text)
    assert str(caught.value) == message


def _audit(tmp_path: Path, name: str, *policies: str) -> tuple[int, dict[str, Any]]:
    code, data, _ = run_local_audit(tmp_path, TOPOLOGY, name, policies, stem="stock")
    return code, data


def _ports(data: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    return {
        f"{p['service']}:{p['port']}": (
            p.get("headless", False),
            p["predicted"],
            p["observed"],
            p["verdict"],
        )
        for p in data["ports"]
    }


@needs_local_mesh
def test_the_audit_probes_a_headless_service_by_its_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # STRICT: the probe's sidecar sends mTLS through the ORIGINAL_DST cluster, plaintext is
    # reset, as for the Service with a VIP
    code, data = _audit(tmp_path, "strict", STOCK_STRICT)
    assert code == 0, capsys.readouterr().out
    assert _ports(data) == {
        "kv-peers:8080": (True, "STRICT", "STRICT", "pass"),
        "kv-peers:7000": (True, "STRICT", "STRICT", "pass"),
        "kv-api:80": (False, "STRICT", "STRICT", "pass"),
    }
    peers = next(p for p in data["ports"] if p["service"] == "kv-peers" and p["port"] == 7000)
    wire = peers["evidence"]["wire"]
    assert wire["sni"] == "outbound_.7000_._.kv-peers.stock.svc.cluster.local"
    assert wire["alpn"] == ["istio-peer-exchange", "istio"] and wire["serverHello"]
    # the name resolved to the pod: the plaintext probe connected to it, not to a VIP
    assert peers["evidence"]["plaintext"]["outcome"] == "reset"
    # the mesh probe by pod IP: plaintext through the PassthroughCluster (reset by STRICT),
    # but mTLS on the headless Service's TCP port (its per-pod listener)
    mesh_probes = {
        p["port"]: p["meshProbe"]
        for p in data["podPorts"]
        if p["workload"] == "kv" and "meshProbe" in p
    }
    assert {n: (m["cluster"], m["tls"], m["admitted"]) for n, m in mesh_probes.items()} == {
        7000: ("outbound|7000||kv-peers.stock.svc.cluster.local", True, True),
        8080: ("PassthroughCluster", False, False),
    }
    assert mesh_probes[7000]["sni"] == "outbound_.7000_._.kv-peers.stock.svc.cluster.local"
    assert mesh_probes[8080]["outcome"] == "HTTP 503"  # the probe's sidecar: upstream reset
    assert all(p["verdict"] == "pass" for p in data["podPorts"])

    # workload STRICT, port 8080 DISABLE: the VIP Service reaches it in plaintext (auto mTLS
    # per endpoint), the headless one sends mTLS the app cannot read: a failure naming #39439
    code, data = _audit(tmp_path, "override", PORT_OVERRIDE)
    out = capsys.readouterr().out
    assert code == 1, out
    assert _ports(data) == {
        "kv-peers:8080": (True, "DISABLE", "PLAINTEXT", "fail"),
        "kv-peers:7000": (True, "STRICT", "STRICT", "pass"),
        "kv-api:80": (False, "DISABLE", "PLAINTEXT", "pass"),
    }
    broken = next(p for p in data["ports"] if p["service"] == "kv-peers" and p["port"] == 8080)
    assert broken["reason"] == (
        "plaintext only, as predicted, but a client sidecar sends mTLS to every endpoint of a"
        " headless Service (its ORIGINAL_DST cluster has no per-endpoint auto mTLS), and this"
        " endpoint's port 8080 is DISABLE: mesh clients cannot reach it (istio/istio#39439);"
        " fix: a DestinationRule with tls.mode DISABLE for kv-peers.stock.svc.cluster.local,"
        " or no DISABLE on the port"
    )
    wire = broken["evidence"]["wire"]
    assert wire["tls"] and not wire["serverHello"]  # a ClientHello the app never answered
    assert broken["evidence"]["mesh"]["admitted"] is False
    assert "kv-peers.stock:8080" in out and "istio/istio#39439" in out

    # the fix: a DestinationRule DISABLE for the headless host; its TCP port is then reset
    # by the STRICT endpoint, as the rule (written by the user) says
    code, data = _audit(tmp_path, "fixed", PORT_OVERRIDE, PEERS_PLAINTEXT)
    assert _ports(data)["kv-peers:8080"] == (True, "DISABLE", "PLAINTEXT", "pass")
    assert _ports(data)["kv-peers:7000"] == (True, "STRICT", "CLOSED", "pass")
    assert code == 0, capsys.readouterr().out


def test_a_headless_service_with_an_endpoint_outside_the_mesh_fails_its_strict_endpoints() -> None:
    """istio/istio#29873's trap (a StatefulSet behind a headless Service, STRICT, one replica
    without sidecar): auto mTLS towards the Service infers DISABLE, so every mesh client sends
    plaintext, and the STRICT replica resets it. The local mesh gives a Service one endpoint,
    so this is the prediction alone (the verdict's reason, from the same discovery)."""
    stock = parse_topology(TOPOLOGY)
    kv = stock.pod("kv", "stock")
    naked_kv = Pod(
        workload=replace(kv.workload, name="kv-legacy", has_sidecar=False),
        ip="10.244.0.99",
        kind="httpbin",
    )
    peers = tuple(
        replace(e, endpoints=(kv, naked_kv)) for e in stock.services if e.service.name == "kv-peers"
    )
    topology = Topology(pods=(*stock.pods, naked_kv), services=peers)
    mesh = LocalMesh(topology=with_audit_probes(topology))
    probe = mesh.workload("probe", "meshconform-audit")
    ports = discover_service_ports(mesh, [yaml.safe_load(STOCK_STRICT)], client=probe)
    by_endpoint = {(p.key, p.endpoint.name): p for p in ports}
    strict = by_endpoint[("kv-peers.stock:7000", "kv")]
    assert (strict.predicted, strict.client_sends_mtls, strict.expected) == (
        "STRICT",
        False,
        "CLOSED",
    )
    assert strict.headless_break == (
        "the headless Service has endpoints without sidecar (kv-legacy.stock), so a client"
        " sidecar sends plaintext to all of them (BestEffortInferServiceMTLSMode), and this"
        " endpoint is STRICT: mesh clients are reset (istio/istio#29873); fix: inject every"
        " endpoint, or a PERMISSIVE PeerAuthentication for the port"
    )
    legacy = by_endpoint[("kv-peers.stock:7000", "kv-legacy")]
    assert (legacy.predicted, legacy.expected, legacy.headless_break) == (
        "NO_SIDECAR",
        "PLAINTEXT",
        None,
    )
