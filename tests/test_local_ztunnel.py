"""The local mesh's ztunnel (pure): istio-cni's in-pod rules, the plan the model gives each
ambient pod's ztunnel, and the Envoy config that plays it.

Expected values come from Istio and ztunnel, not from the code under test: the in-pod rules'
ports and exclusions from istio-cni's golden file (cni/pkg/iptables/testdata/default.golden),
the listeners' ports from ztunnel's src/config.rs, HBONE's TLS from src/tls/lib.rs and
src/tls/certificate.rs, the CONNECT authority from src/proxy/outbound.rs
(``create_hbone_request``), the 401 from src/proxy/inbound.rs (``serve_connect``), and the
verdicts from istio.io's ambient policy pages (STRICT: no plaintext; an L4 ALLOW policy by
principal admits only that principal).
"""

from __future__ import annotations

from typing import Any

from pytest_meshconform import authorization_policy, peer_authentication
from pytest_meshconform.backends.local.control import Faults, plan_ztunnels
from pytest_meshconform.backends.local.iptables import istio_iptables_rules
from pytest_meshconform.backends.local.topology_file import parse_topology
from pytest_meshconform.backends.local.xds import SidecarPaths
from pytest_meshconform.backends.local.ztunnel import ztunnel_clusters, ztunnel_listeners
from pytest_meshconform.istio.api import parse_policy

TOPOLOGY = parse_topology(
    """\
namespaces:
  - name: shop
    dataplane: ambient
    workloads:
      - {name: cashier, kind: sleep, serviceAccount: shop-cashier}
      - {name: ledger, kind: httpbin, ports: [8080, {port: 5432, serves: tcp-echo}]}
    services:
      - name: ledger
        selector: {app: ledger}
        ports: [{name: http, port: 80, targetPort: 8080}, {name: tcp-pg, port: 5432}]
  - name: batch
    dataplane: none
    workloads:
      - {name: nightly, kind: httpbin}
    services:
      - name: nightly
        selector: {app: nightly}
        ports: [{name: http, port: 8000, targetPort: 8080}]
  - name: web
    dataplane: sidecar
    workloads:
      - {name: front, kind: sleep}
""",
    "shop.yaml",
)
CASHIER, LEDGER, NIGHTLY, FRONT = (p.ip for p in TOPOLOGY.pods)
CASHIER_ID = "spiffe://cluster.local/ns/shop/sa/shop-cashier"
LEDGER_ID = "spiffe://cluster.local/ns/shop/sa/ledger"


def _plans(*manifests: dict[str, Any], faults: Faults | None = None) -> Any:
    return plan_ztunnels(TOPOLOGY, [parse_policy(m) for m in manifests], "istio-system", faults)


def test_only_ambient_pods_get_a_ztunnel() -> None:
    assert sorted(_plans()) == ["cashier.shop", "ledger.shop"]


def test_in_pod_rules_send_inbound_to_15006_and_15008_outbound_to_15001() -> None:
    """default.golden: HBONE (15008) to ztunnel's HBONE listener, other inbound TCP not to
    127.0.0.1 to 15006, outbound TCP not to 127.0.0.1 to 15001 unless it is ztunnel's own."""
    pod = TOPOLOGY.pod("ledger", "shop")
    rules = istio_iptables_rules(pod, TOPOLOGY, proxy_id=1337000001).splitlines()
    assert rules[rules.index("-A PREROUTING -j ISTIO_PRERT") :][:2] == [
        "-A PREROUTING -j ISTIO_PRERT",
        "-A ISTIO_PRERT -p tcp --dport 15008 -j RETURN",
    ]
    assert "-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -j REDIRECT --to-ports 15006" in rules
    output = [r for r in rules if r.startswith("-A ISTIO_OUTPUT")]
    assert output == [
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337000001 -j RETURN",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j RETURN",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -j REDIRECT --to-ports 15001",
    ]
    # Service DNAT after the capture, as for sidecar pods; no sidecar chains
    assert rules.index("-A OUTPUT -j ISTIO_OUTPUT") < rules.index("-A OUTPUT -p tcp -j MC_SERVICES")
    assert not [r for r in rules if "ISTIO_INBOUND" in r or ("15006 " in r and "ISTIO_IN_" in r)]
    naked = istio_iptables_rules(TOPOLOGY.pod("nightly", "batch"), TOPOLOGY)
    assert "ISTIO" not in naked


def test_tunnels_go_to_ambient_endpoints_only() -> None:
    tunnels = _plans()["cashier.shop"].tunnels
    by_target = {(t.address, t.port): (t.endpoint_ip, t.target_port, t.identity) for t in tunnels}
    vips = {e.service.port: e.vip for e in TOPOLOGY.services if e.service.name == "ledger"}
    assert by_target[(vips[80], 80)] == (LEDGER, 8080, LEDGER_ID)
    assert by_target[(vips[5432], 5432)] == (LEDGER, 5432, LEDGER_ID)
    assert by_target[(LEDGER, 8080)] == (LEDGER, 8080, LEDGER_ID)
    # nightly has no data plane: its Service is reached as it came (passthrough)
    assert not [t for t in tunnels if t.endpoint_ip in (NIGHTLY, FRONT)]


def test_no_policy_admits_everyone_and_renders_no_rbac() -> None:
    plan = _plans()["ledger.shop"]
    assert plan.hbone_peers == {8080: None, 5432: None}
    assert plan.plaintext_peers == {8080: None, 5432: None}


def test_strict_admits_no_plaintext_and_every_identity() -> None:
    plan = _plans(peer_authentication("default", "shop", "STRICT"))["ledger.shop"]
    assert plan.plaintext_peers == {8080: (), 5432: ()}
    # every mesh identity: the ambient pods' and the sidecar's (a sidecar sends ambient pods
    # HBONE with its own certificate: istio.interop)
    assert plan.hbone_peers[8080] == (
        (CASHIER, CASHIER_ID),
        (LEDGER, LEDGER_ID),
        (FRONT, "spiffe://cluster.local/ns/web/sa/front"),
    )


def test_permissive_admits_plaintext_from_anyone() -> None:
    """istiod sends the static STRICT policy once any PeerAuthentication exists, but a
    PERMISSIVE workload does not list it: ztunnel enforces nothing there."""
    plan = _plans(peer_authentication("default", "shop", "PERMISSIVE"))["ledger.shop"]
    assert plan.plaintext_peers == {8080: None, 5432: None}
    mixed = _plans(
        peer_authentication("default", "shop", "STRICT"),
        peer_authentication("ledger", "shop", "PERMISSIVE", selector={"app": "ledger"}),
    )
    assert mixed["ledger.shop"].plaintext_peers == {8080: None, 5432: None}


def test_l4_allow_by_principal_admits_that_principal_only() -> None:
    """istio.io "Use Layer 4 security policy": an ALLOW policy naming a principal."""
    policy = authorization_policy(
        "ledger",
        "shop",
        "ALLOW",
        [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/shop-cashier"]}}]}],
        selector={"app": "ledger"},
    )
    plans = _plans(policy)
    assert plans["ledger.shop"].hbone_peers[8080] == ((CASHIER, CASHIER_ID),)
    assert plans["ledger.shop"].plaintext_peers[8080] == ()
    assert plans["cashier.shop"].hbone_peers == {}  # serves nothing
    # a port-scoped rule: only the ports it names
    by_port = authorization_policy(
        "pg", "shop", "DENY", [{"to": [{"operation": {"ports": ["5432"]}}]}]
    )
    plan = _plans(by_port)["ledger.shop"]
    assert plan.hbone_peers[5432] == () and plan.plaintext_peers[5432] == ()
    assert len(plan.hbone_peers[8080] or ()) == 3  # cashier, ledger and the sidecar front


def test_the_wrong_spiffe_id_fault_changes_the_identities_peers_present() -> None:
    plan = _plans(
        peer_authentication("default", "shop", "STRICT"), faults=Faults(wrong_spiffe_id=True)
    )
    assert plan["ledger.shop"].hbone_peers[8080] == (
        (CASHIER, CASHIER_ID + "-impostor"),
        (LEDGER, LEDGER_ID + "-impostor"),
        (FRONT, "spiffe://cluster.local/ns/web/sa/front-impostor"),
    )


def _listener(listeners: list[dict[str, Any]], port: int) -> dict[str, Any]:
    (found,) = [x for x in listeners if x["address"]["socket_address"]["port_value"] == port]
    return found


def test_hbone_is_h2_connect_over_tls13_with_the_pod_address_as_authority(tmp_path: Any) -> None:
    paths = SidecarPaths(tmp_path)
    plans = _plans(peer_authentication("default", "shop", "STRICT"))
    server = ztunnel_listeners(plans["ledger.shop"], paths)
    (chain,) = _listener(server, 15008)["filter_chains"]
    tls = chain["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    context = tls["common_tls_context"]
    assert context["alpn_protocols"] == ["h2"]
    assert context["tls_params"] == {
        "tls_minimum_protocol_version": "TLSv1_3",
        "tls_maximum_protocol_version": "TLSv1_3",
    }
    hcm = chain["filters"][0]["typed_config"]
    assert hcm["codec_type"] == "HTTP2" and hcm["http2_protocol_options"]["allow_connect"]
    hosts = {v["domains"][0]: v for v in hcm["route_config"]["virtual_hosts"]}
    assert sorted(hosts) == [f"{LEDGER}:5432", f"{LEDGER}:8080"]
    assert hcm["local_reply_config"]["mappers"][0]["status_code"] == 401
    client = ztunnel_listeners(plans["cashier.shop"], paths)
    chains = _listener(client, 15001)["filter_chains"]
    proxies = {c["name"]: c["filters"][0]["typed_config"] for c in chains}
    assert proxies[f"hbone_{LEDGER}_8080"]["tunneling_config"] == {"hostname": f"{LEDGER}:8080"}
    (hbone,) = [
        c for c in ztunnel_clusters(plans["cashier.shop"], paths) if c["name"].startswith("hbone|")
    ]
    endpoint = hbone["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {"address": LEDGER, "port_value": 15008}
    # ztunnel waits 10 s for a connection (src/proxy.rs, CONNECTION_TIMEOUT of
    # freebind_connect), to a peer's 15008, to the app, and to a destination outside the mesh
    ledger = ztunnel_clusters(plans["ledger.shop"], paths)
    inbound = [c for c in ledger if "inbound|" in c["name"]]
    (passthrough,) = [c for c in ledger if c["name"] == "passthrough"]
    assert [c["connect_timeout"] for c in (hbone, *inbound, passthrough)] == ["10s"] * 4
    upstream = hbone["transport_socket"]["typed_config"]
    assert "sni" not in upstream  # ztunnel sends no SNI
    validation = upstream["common_tls_context"]["combined_validation_context"]
    assert validation["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": LEDGER_ID}}
    ]
    # plaintext under STRICT: no chain takes the app's ports (the blackhole chain is 15006's)
    plaintext = _listener(server, 15006)["filter_chains"]
    assert [c["filter_chain_match"]["destination_port"] for c in plaintext] == [15006]


def test_faults_break_hbone_where_the_suites_look(tmp_path: Any) -> None:
    """The test-only faults: STRICT ignored by ztunnel, HBONE without a client certificate or
    with TLS 1.0 (never for users: `--mesh-fault`)."""
    strict = peer_authentication("default", "shop", "STRICT")
    ignored = _plans(strict, faults=Faults(strict_as_permissive=True))["ledger.shop"]
    assert ignored.plaintext_peers == {8080: None, 5432: None}
    broken = _plans(faults=Faults(client_cert_optional=True, tls10_allowed=True))["ledger.shop"]
    (chain,) = _listener(ztunnel_listeners(broken, SidecarPaths(tmp_path)), 15008)["filter_chains"]
    tls = chain["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is False
    assert tls["common_tls_context"]["tls_params"]["tls_minimum_protocol_version"] == "TLSv1_0"
