"""Sidecars and ambient pods in one mesh: the model (`istio.interop`) and the local rendering.

Expectations from istio/istio and istio/ztunnel (docs/istio-model.md, "Sidecars and ambient
pods"): an ambient pod's workload speaks HBONE (``setTunnelProtocol``: istio-cni's redirection
annotation), as does a pod labelled ``networking.istio.io/tunnel: http``; a sidecar sends HBONE
to such an endpoint when ambient is on (``EnableHBONESend``, ``supportTunnel``), over
``connect_originate`` (TLS 1.3 only, ALPN ``h2``, no SNI, no SAN matcher, port 15008:
``buildConnectOriginate``, ``buildCommonConnectTLSContext``); ztunnel sends plain TCP to any
other workload (``build_request``).
"""

from __future__ import annotations

from pathlib import Path

from pytest_meshconform.backends.local.control import plan_sidecars, plan_ztunnels
from pytest_meshconform.backends.local.sidecar_hbone import (
    hbone_clusters,
    hbone_listeners,
    with_internal_listeners,
)
from pytest_meshconform.backends.local.topology_file import parse_topology
from pytest_meshconform.backends.local.xds import SidecarPaths, clusters, listeners
from pytest_meshconform.istio.interop import (
    Transport,
    sidecar_sends_hbone,
    speaks_hbone,
    ztunnel_transport,
)
from pytest_meshconform.mesh import Workload

TOPOLOGY = parse_topology(
    """\
namespaces:
  - name: orders
    dataplane: sidecar
    workloads:
      - {name: checkout, kind: sleep}
      - {name: stock, kind: httpbin, ports: [8080]}
    services:
      - name: stock
        selector: {app: stock}
        ports: [{name: http, port: 80, targetPort: 8080}]
  - name: ledger
    dataplane: ambient
    workloads:
      - {name: books, kind: httpbin, ports: [8080]}
    services:
      - name: books
        selector: {app: books}
        ports: [{name: http, port: 80, targetPort: 8080}]
""",
    "mixed.yaml",
)
PODS = {p.workload.key: p for p in TOPOLOGY.pods}
BOOKS_FQDN = "books.ledger.svc.cluster.local"


def _workload(**kw: object) -> Workload:
    base: dict[str, object] = {
        "name": "w",
        "namespace": "ns",
        "app": "w",
        "service_account": "w",
        "has_sidecar": False,
    }
    return Workload(**{**base, **kw})  # type: ignore[arg-type]


def test_who_speaks_hbone() -> None:
    ambient = _workload(ambient=True)
    labelled = _workload(has_sidecar=True, labels={"networking.istio.io/tunnel": "http"})
    sidecar = _workload(has_sidecar=True)
    plain = _workload()
    assert [speaks_hbone(w) for w in (ambient, labelled, sidecar, plain)] == [
        True,
        True,
        False,
        False,
    ]
    assert sidecar_sends_hbone(ambient) and not sidecar_sends_hbone(sidecar)
    assert not sidecar_sends_hbone(ambient, hbone_send=False)
    assert ztunnel_transport(ambient) is Transport.HBONE
    assert ztunnel_transport(sidecar) is Transport.TCP  # a sidecar pod gets plaintext
    assert ztunnel_transport(plain) is Transport.TCP


def test_a_sidecar_tunnels_to_ambient_endpoints_only() -> None:
    plan = plan_sidecars(TOPOLOGY, [], "istio-system")["checkout.orders"]
    books = PODS["books.ledger"]
    assert dict(plan.hbone_tunnels) == {(BOOKS_FQDN, 80): (books.ip, 8080)}


def test_without_ambient_no_sidecar_tunnels() -> None:
    sidecar_only = parse_topology(
        """\
namespaces:
  - name: orders
    dataplane: sidecar
    workloads:
      - {name: checkout, kind: sleep}
      - {name: stock, kind: httpbin, ports: [8080]}
    services:
      - name: stock
        selector: {app: stock}
        ports: [{name: http, port: 80, targetPort: 8080}]
""",
        "sidecar.yaml",
    )
    plan = plan_sidecars(sidecar_only, [], "istio-system")["checkout.orders"]
    assert not plan.hbone_tunnels


def test_the_ambient_server_takes_the_sidecars_hbone() -> None:
    plan = plan_ztunnels(TOPOLOGY, [], "istio-system")["books.ledger"]
    assert plan.hbone_peers == {8080: None}  # no policy: anyone
    strict = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "ledger"},
        "spec": {"mtls": {"mode": "STRICT"}},
    }
    from pytest_meshconform.istio.api import parse_policy

    plan = plan_ztunnels(TOPOLOGY, [parse_policy(strict)], "istio-system")["books.ledger"]
    checkout = PODS["checkout.orders"]
    peers = plan.hbone_peers[8080]
    assert peers is not None
    assert (checkout.ip, "spiffe://cluster.local/ns/orders/sa/checkout") in peers
    assert plan.plaintext_peers[8080] == ()  # STRICT: no plaintext at all


def test_connect_originate_as_istiod_renders_it(tmp_path: Path) -> None:
    plan = plan_sidecars(TOPOLOGY, [], "istio-system")["checkout.orders"]
    paths = SidecarPaths(tmp_path)
    books = PODS["books.ledger"]
    cds = {c["name"]: c for c in hbone_clusters(clusters(plan, paths), plan.hbone_tunnels, paths)}
    outbound = cds[f"outbound|80||{BOOKS_FQDN}"]
    internal = outbound["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert internal["address"] == {
        "envoy_internal_address": {"server_listener_name": f"connect_originate|{books.ip}:8080"}
    }
    tunnel = cds[f"connect_originate|{books.ip}"]
    # MeshConfig connectTimeout, 10 s by DefaultMeshConfig, on the tunnel as on the Service's
    # cluster (buildConnectOriginate, cluster_waypoint.go): its TLS is HBONE's, to a ztunnel
    assert (outbound["connect_timeout"], tunnel["connect_timeout"]) == ("10s", "10s")
    addr = tunnel["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert addr["socket_address"] == {"address": books.ip, "port_value": 15008}
    tls = tunnel["transport_socket"]["typed_config"]
    common = tls["common_tls_context"]
    assert "sni" not in tls
    assert common["alpn_protocols"] == ["h2"]
    assert common["tls_params"] == {
        "tls_minimum_protocol_version": "TLSv1_3",
        "tls_maximum_protocol_version": "TLSv1_3",
    }
    assert common["combined_validation_context"]["default_validation_context"] == {}
    # the sidecar's own Service is not tunnelled (no HBONE to a sidecar pod)
    assert "transport_socket_matches" not in cds["outbound|80||stock.orders.svc.cluster.local"]
    lds = {x["name"]: x for x in hbone_listeners(listeners(plan, paths), plan.hbone_tunnels, paths)}
    proxy = lds[f"connect_originate|{books.ip}:8080"]["filter_chains"][0]["filters"][0]
    assert proxy["typed_config"]["tunneling_config"] == {"hostname": f"{books.ip}:8080"}
    assert with_internal_listeners({})["bootstrap_extensions"][0]["name"] == (
        "envoy.bootstrap.internal_listener"
    )
