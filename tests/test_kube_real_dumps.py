"""The kube reader (``kube/envoystate.py``) against config dumps real istiod-programmed proxies
wrote (``../shared/testdata/istio-dumps``, provenance in its README; read in place, skipped
when absent).

Expected facts come from the dumps' text (read with a plain JSON walk in this file, never with
the code under test) and from Istio's generator, cited per fact:

- inbound chains per port: pilot/pkg/networking/core/filterchain_options.go,
  ``getFilterChainMatchOptions`` (auto-detected ports under PERMISSIVE:
  ``inboundPermissiveFilterChainMatchWithMxcOptions``, five chains; Istio 1.9's HTTP port:
  two); the 15006 chain is listener_inbound.go ``buildInboundBlackhole``;
- clusters: cluster_tls.go ``applyUpstreamTLSSettings`` (auto mTLS: ``tlsMode-istio`` then
  ``defaultTransportSocketMatch`` ``tlsMode-disabled``), with SNI
  ``outbound_.<port>_.<subset>_.<host>`` (model ``BuildDNSSrvSubsetKey``) and SDS ``default`` /
  ``ROOTCA`` (``buildUpstreamClusterTLSContext``, ISTIO_MUTUAL).

No real dump has a STRICT or DISABLE port, a DestinationRule ISTIO_MUTUAL cluster,
``maxRequestsPerConnection`` (from Istio >= 1.5) or HBONE socket matches: those are DERIVED
here from a real dump by the transformation Istio's source implies (each says which).
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import TESTDATA

from pytest_meshconform.backends.kube.envoystate import (
    EnvoyState,
    EnvoyStateError,
    ExpectedInbound,
    ExpectedOutbound,
    SidecarExpectation,
    max_requests_per_connection,
    mismatches,
    parse_config_dump,
    parse_listeners,
)
from pytest_meshconform.istio.api import MtlsMode, TlsMode
from pytest_meshconform.istio.envoy import UpstreamTransport

DUMPS = TESTDATA / "istio-dumps"

AUTO, TLS, PLAIN = UpstreamTransport.AUTO, UpstreamTransport.TLS, UpstreamTransport.PLAINTEXT
MTLS_HTTP = ("istio-http/1.0", "istio-http/1.1", "istio-h2")  # filterchain_options mtlsHTTPALPNs
MTLS_TCP = ("istio-peer-exchange", "istio")  # mtlsTCPWithMxcALPNs
PLAIN_HTTP = ("http/1.1", "h2c")  # plaintextHTTPALPNs
ALL_ISTIO_MTLS = ("istio", "istio-peer-exchange", *MTLS_HTTP)  # allIstioMtlsALPNs
# inboundPermissiveFilterChainMatchWithMxcOptions, in order: (transport, kind, ALPNs)
PERMISSIVE_AUTO = (
    ("tls", "mTLS", MTLS_HTTP),
    ("raw_buffer", "plain", PLAIN_HTTP),
    ("tls", "mTLS", MTLS_TCP),
    ("raw_buffer", "plain", ()),
    ("tls", "plain", ()),
)


def path_of(name: str) -> Path:
    path = TESTDATA / name
    if not path.is_file():
        pytest.skip(f"shared test data not available ({path})")
    return path


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path_of(name).read_bytes())
    return document


def section(document: dict[str, Any], kind: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        c for c in document["configs"] if c["@type"].endswith(f".{kind}")
    ]
    [one] = found
    return one


def raw_clusters(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        e["cluster"]["name"]: e["cluster"]
        for e in section(document, "ClustersConfigDump")["dynamic_active_clusters"]
    }


def virtual_inbound(document: dict[str, Any]) -> dict[str, Any]:
    [entry] = [
        e
        for e in section(document, "ListenersConfigDump")["dynamic_listeners"]
        if e["name"] == "virtualInbound"
    ]
    listener: dict[str, Any] = entry["active_state"]["listener"]
    return listener


def chain_shape(state: EnvoyState, port: int) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    return tuple(
        (
            c.transport_protocol,
            "mTLS" if c.requires_client_cert else "TLS" if c.terminates_tls else "plain",
            c.application_protocols,
        )
        for c in state.inbound[port].chains
    )


def auto_mtls_names(document: dict[str, Any]) -> set[str]:
    """Clusters whose socket matches are, by name, exactly auto mTLS's pair."""
    return {
        name
        for name, cluster in raw_clusters(document).items()
        if [m["name"] for m in cluster.get("transport_socket_matches", [])]
        == ["tlsMode-istio", "tlsMode-disabled"]
    }


def sni_of(cluster_name: str) -> str:
    """model.BuildDNSSrvSubsetKey: outbound|15010||h -> outbound_.15010_._.h"""
    return "_.".join(cluster_name.split("|"))


# --- every real v3 dump parses, with its facts --------------------------------------------------

# file, listeners version, clusters version, {port: chain shapes}, {transport: count},
# non-auto-mTLS clusters (name: transport)
REAL = [
    pytest.param(
        "istio-dumps/scout__config_dump.json",  # Istio 1.9.1 (bootstrap ISTIO_VERSION)
        "2021-03-25T08:05:35Z/13",
        "2021-03-25T08:16:06Z/16",
        {9080: (("tls", "mTLS", ("istio", *MTLS_HTTP)), ("raw_buffer", "plain", ()))},
        {AUTO: 28, PLAIN: 4},
        id="istio-1.9.1",
    ),
    pytest.param(
        "istio-dumps/istio__authz-configdump.json",  # 1.18/1.19-dev, listeners only
        "2023-06-20T09:08:58Z/4",
        None,
        {80: (("tls", "mTLS", ALL_ISTIO_MTLS), ("raw_buffer", "plain", ()))},
        {},
        id="istio-1.19-dev",
    ),
    pytest.param(
        "istio-dumps/ossm__hello-openshift-config-dump.json",  # OSSM 2.6.7 = Istio 1.20.8
        "2025-06-04T14:49:56Z/41",
        "2025-06-04T14:49:56Z/41",
        {8080: PERMISSIVE_AUTO},
        {AUTO: 15, PLAIN: 4, TLS: 1},
        id="ossm-2.6.7-hello",
    ),
    pytest.param(
        "istio-dumps/ossm__pod_config_dump.json",
        "2025-06-02T13:56:24Z/15",
        "2025-06-02T13:56:24Z/15",
        {8080: PERMISSIVE_AUTO},
        {AUTO: 14, PLAIN: 4, TLS: 1},
        id="ossm-2.6.7-pod",
    ),
    pytest.param(
        "istio-dumps/ossm__ingresspod-config-dump.json",  # a gateway: no virtualInbound
        "2025-06-04T12:49:45Z/19",
        "2025-06-04T14:24:41Z/32",
        None,
        {AUTO: 15, PLAIN: 1, TLS: 1},
        id="ossm-2.6.7-ingress",
    ),
    pytest.param(
        "istio-dumps/mplb__envoy_config_dump.json",  # Istio 1.22.3
        "2024-09-13T01:16:09Z/17",
        "2024-09-13T01:16:10Z/19",
        {3333: PERMISSIVE_AUTO},
        {AUTO: 45, PLAIN: 5},
        id="istio-1.22.3",
    ),
    pytest.param(
        "istio-dumps/istio__describe-http_config.json",  # istioctl describe testdata (1.13)
        None,
        None,
        None,
        {AUTO: 1},
        id="istioctl-describe",
    ),
    pytest.param(
        "secrets/proxyconfig_full_config_dump.json",  # 1.21-dev waypoint
        "2023-12-26T05:57:39Z/1",
        "2023-12-26T05:56:10Z/3",
        None,
        {PLAIN: 1},
        id="waypoint-1.21-dev",
    ),
]


@pytest.mark.parametrize(("name", "lversion", "cversion", "ports", "counts"), REAL)
def test_real_dump_parses_with_its_facts(
    name: str,
    lversion: str | None,
    cversion: str | None,
    ports: dict[int, tuple[tuple[str, str, tuple[str, ...]], ...]] | None,
    counts: dict[UpstreamTransport, int],
) -> None:
    document = load(name)
    state = parse_config_dump(path_of(name).read_bytes())
    assert (state.listeners_version, state.clusters_version) == (lversion, cversion)
    assert state.listener_problems == () and state.cluster_problems == ()
    # only the 1.19-dev sidecar listens for HBONE: it has the connect_terminate listener
    # (listener_inbound.go buildInboundHBONEListeners, for ISTIO_META_ENABLE_HBONE proxies)
    assert state.hbone_inbound is (name == "istio-dumps/istio__authz-configdump.json")
    if ports is None:
        assert state.has_virtual_inbound is False and dict(state.inbound) == {}
    else:
        # the only destination ports are the app's and the blackhole chain's 15006
        raw_ports = Counter(
            c["filter_chain_match"]["destination_port"]
            for c in virtual_inbound(document)["filter_chains"]
            if "destination_port" in c.get("filter_chain_match", {})
        )
        assert set(raw_ports) == {*ports, 15006}
        assert state.blackhole_ports == (15006,)
        for port, shape in ports.items():
            assert chain_shape(state, port) == shape
            assert state.inbound[port].mode is MtlsMode.PERMISSIVE  # every dump here
        assert sorted(state.inbound) == sorted(ports)
    assert Counter(c.transport for c in state.clusters.values()) == counts
    autos = auto_mtls_names(document) if counts.get(AUTO) else set()
    assert len(autos) == counts.get(AUTO, 0)
    for cluster_name in autos:
        found = state.clusters[cluster_name]
        assert (found.transport, found.certificate_secrets, found.validation_secret) == (
            AUTO,
            ("default",),
            "ROOTCA",
        ), cluster_name
        assert found.sni == sni_of(cluster_name)
        assert found.hbone is False and found.max_requests_per_connection is None


def test_istio_1_9_writes_tls_mode_disabled_by_name() -> None:
    # Istio <= 1.13: {"name": "envoy.transport_sockets.raw_buffer"} without typed_config
    document = load("istio-dumps/scout__config_dump.json")
    name = "outbound|15010||istiod.istio-system.svc.cluster.local"
    assert raw_clusters(document)[name]["transport_socket_matches"][1] == {
        "name": "tlsMode-disabled",
        "match": {},
        "transport_socket": {"name": "envoy.transport_sockets.raw_buffer"},
    }
    state = parse_config_dump(document)
    assert state.clusters[name].transport is AUTO
    expected = SidecarExpectation(
        (ExpectedInbound(9080, MtlsMode.PERMISSIVE),), (ExpectedOutbound(name, None, None),)
    )
    assert mismatches(state, expected) == ()


def test_ossm_user_tls_cluster() -> None:
    # OSSM's outbound|8188||istiod-basic: a cluster-level UpstreamTlsContext, no Istio SDS
    state = parse_config_dump(path_of("istio-dumps/ossm__pod_config_dump.json").read_bytes())
    found = state.clusters["outbound|8188||istiod-basic.istio-system.svc.cluster.local"]
    assert (found.transport, found.certificate_secrets, found.validation_secret) == (TLS, (), None)


# --- not Envoy v3 config dumps: refused by name -------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "istio__auth-productpage_config_dump-1.1.1.json",
        "istio__describe-productpage-1.3.0-rc.2.json",
        "istio__describe-productpage-strict-1.4alpha.json",
    ],
)
def test_envoy_v2_dumps_are_refused_by_name(name: str) -> None:
    data = path_of(f"istio-dumps/envoy-v2/{name}").read_bytes()
    with pytest.raises(EnvoyStateError, match=r"Envoy v2 config \(Istio < 1\.5\) is not supported"):
        parse_config_dump(data)


@pytest.mark.parametrize(
    "name", ["istio__ztunnel-istioct_all_output.json", "kiali__ztunnel-config.json"]
)
def test_ztunnel_dumps_are_refused_by_name(name: str) -> None:
    data = path_of(f"istio-dumps/ztunnel/{name}").read_bytes()
    with pytest.raises(
        EnvoyStateError, match=r"a ztunnel config_dump \(ambient mode\), not an Envoy"
    ):
        parse_config_dump(data)


def test_istioctl_listener_list() -> None:
    data = path_of("istio-dumps/istioctl-output/istio__listeners-2022-sleep.json").read_bytes()
    with pytest.raises(EnvoyStateError, match="istioctl proxy-config listeners"):
        parse_config_dump(data)
    # camelCase (protojson, as istioctl prints it); port 80's chains: mTLS with Istio's ALPNs
    # and plaintext (listener_inbound.go, PERMISSIVE for an HTTP port:
    # inboundPermissiveHTTPFilterChainMatchWithMxcOptions, allIstioMtlsALPNs)
    listeners = json.loads(data)
    [inbound] = [entry for entry in listeners if entry.get("name") == "virtualInbound"]
    ports = {
        c["filterChainMatch"]["destinationPort"]
        for c in inbound["filterChains"]
        if "destinationPort" in c.get("filterChainMatch", {})
    }
    assert ports == {80, 15006}
    state = parse_listeners(data)
    assert state.has_virtual_inbound is True and state.hbone_inbound is False
    assert state.blackhole_ports == (15006,)
    assert sorted(state.inbound) == [80]
    assert chain_shape(state, 80) == (
        ("tls", "mTLS", ALL_ISTIO_MTLS),
        ("raw_buffer", "plain", ()),
    )
    assert state.inbound[80].mode is MtlsMode.PERMISSIVE


# --- derived from real dumps: the shapes no real dump here has -----------------------------------

POD = "istio-dumps/ossm__pod_config_dump.json"  # OSSM 2.6.7 = Istio 1.20.8, httpbin-like :8080
ISTIOD = "outbound|15010||istiod-basic.istio-system.svc.cluster.local"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def port_chains(document: dict[str, Any], port: int) -> list[dict[str, Any]]:
    return [
        c
        for c in virtual_inbound(document)["filter_chains"]
        if c.get("filter_chain_match", {}).get("destination_port") == port
    ]


def keep_chains(document: dict[str, Any], port: int, keep: list[dict[str, Any]]) -> None:
    listener = virtual_inbound(document)
    others = [c for c in listener["filter_chains"] if c not in port_chains(document, port)]
    listener["filter_chains"] = others + keep


def test_derived_strict_port() -> None:
    # DERIVED: the PERMISSIVE chains of port 8080 (inboundPermissiveFilterChainMatchWithMxcOptions)
    # reduced to inboundStrictFilterChainMatchOptions: the mTLS HTTP chain as it is, and the
    # mTLS TCP chain without its ALPN match ("could not detect traffic on the client side")
    document = load(POD)
    mtls_http, _, mtls_tcp, _, _ = port_chains(document, 8080)
    tcp = copy.deepcopy(mtls_tcp)
    del tcp["filter_chain_match"]["application_protocols"]
    keep_chains(document, 8080, [mtls_http, tcp])
    state = parse_config_dump(document)
    assert chain_shape(state, 8080) == (("tls", "mTLS", MTLS_HTTP), ("tls", "mTLS", ()))
    assert state.inbound[8080].mode is MtlsMode.STRICT
    strict = SidecarExpectation((ExpectedInbound(8080, MtlsMode.STRICT),), ())
    assert mismatches(state, strict) == ()
    assert mismatches(parse_config_dump(load(POD)), strict) != ()


def test_derived_disable_port() -> None:
    # DERIVED: inboundPlainTextFilterChainMatchOptions = the two raw_buffer chains of PERMISSIVE
    document = load(POD)
    _, plain_http, _, plain_tcp, _ = port_chains(document, 8080)
    keep_chains(document, 8080, [plain_http, plain_tcp])
    state = parse_config_dump(document)
    assert chain_shape(state, 8080) == (
        ("raw_buffer", "plain", PLAIN_HTTP),
        ("raw_buffer", "plain", ()),
    )
    assert state.inbound[8080].mode is MtlsMode.DISABLE


def istio_mutual(cluster: dict[str, Any]) -> None:
    """applyUpstreamTLSSettings, DestinationRule ISTIO_MUTUAL (userSupplied, not auto): the
    tlsMode-istio socket becomes the cluster's transport_socket, no socket matches."""
    cluster["transport_socket"] = cluster.pop("transport_socket_matches")[0]["transport_socket"]


def test_derived_destination_rule_istio_mutual_and_max_requests() -> None:
    # DERIVED: ISTIO_MUTUAL as above; connectionPool.http.maxRequestsPerConnection: 1 goes to
    # common_http_protocol_options of the HttpProtocolOptions the cluster already has
    # (cluster_traffic_policy.go applyConnectionPool)
    document = load(POD)
    cluster = raw_clusters(document)[ISTIOD]
    istio_mutual(cluster)
    options = cluster["typed_extension_protocol_options"][HTTP_OPTIONS]
    options["common_http_protocol_options"] = {"max_requests_per_connection": 1}
    found = parse_config_dump(document).clusters[ISTIOD]
    assert (found.transport, found.certificate_secrets, found.validation_secret, found.sni) == (
        TLS,
        ("default",),
        "ROOTCA",
        sni_of(ISTIOD),
    )
    assert found.max_requests_per_connection == 1
    assert (
        mismatches(
            parse_config_dump(document),
            SidecarExpectation((), (ExpectedOutbound(ISTIOD, TlsMode.ISTIO_MUTUAL, 1),)),
        )
        == ()
    )


def hbone_match() -> dict[str, Any]:
    """cluster_tls.go hboneTransportSocket: name hbone, match tunnel: http, and the internal
    upstream socket (FullMetadataPassthroughInternalUpstreamTransportSocket around raw_buffer)
    taken as written from the real 1.21-dev waypoint dump's cluster."""
    waypoint = load("secrets/proxyconfig_full_config_dump.json")
    [cluster] = raw_clusters(waypoint).values()
    return {
        "name": "hbone",
        "match": {"tunnel": "http"},
        "transport_socket": cluster["transport_socket"],
    }


def test_derived_hbone_auto_mtls() -> None:
    # DERIVED: applyHBONETransportSocketMatches, auto mTLS: hbone first, then the same pair
    document = load(POD)
    cluster = raw_clusters(document)[ISTIOD]
    cluster["transport_socket_matches"].insert(0, hbone_match())
    found = parse_config_dump(document).clusters[ISTIOD]
    assert (found.transport, found.hbone, found.certificate_secrets) == (AUTO, True, ("default",))
    assert found.describe() == "auto mTLS, HBONE to tunnel-capable endpoints"


def test_derived_hbone_destination_rule_istio_mutual() -> None:
    # DERIVED: applyHBONETransportSocketMatches, ISTIO_MUTUAL: [hbone, tlsMode-istio (no match)].
    # Read as auto mTLS before, so the wait for an ISTIO_MUTUAL policy never ended.
    document = load(POD)
    cluster = raw_clusters(document)[ISTIOD]
    tls_match = cluster["transport_socket_matches"][0]
    cluster["transport_socket_matches"] = [
        hbone_match(),
        {"name": "tlsMode-istio", "transport_socket": tls_match["transport_socket"]},
    ]
    state = parse_config_dump(document)
    found = state.clusters[ISTIOD]
    assert (found.transport, found.hbone, found.validation_secret) == (TLS, True, "ROOTCA")
    expected = SidecarExpectation((), (ExpectedOutbound(ISTIOD, TlsMode.ISTIO_MUTUAL, None),))
    assert mismatches(state, expected) == ()


def test_derived_hbone_without_tls() -> None:
    # DERIVED: applyHBONETransportSocketMatches, DestinationRule DISABLE (no transport socket):
    # hboneOrPlaintextSocket = [hbone, tlsMode-disabled]
    document = load(POD)
    cluster = raw_clusters(document)[ISTIOD]
    cluster["transport_socket_matches"] = [hbone_match(), cluster["transport_socket_matches"][1]]
    state = parse_config_dump(document)
    assert (state.clusters[ISTIOD].transport, state.clusters[ISTIOD].hbone) == (PLAIN, True)
    expected = SidecarExpectation((), (ExpectedOutbound(ISTIOD, TlsMode.DISABLE, None),))
    assert mismatches(state, expected) == ()


# --- what cannot be read blocks only what it concerns -------------------------------------------


def test_an_unreadable_cluster_blocks_only_itself() -> None:
    document = load("istio-dumps/mplb__envoy_config_dump.json")
    clusters = raw_clusters(document)
    jaeger = "outbound|14250||jaeger-collector.istio-system.svc.cluster.local"
    istiod = "outbound|15010||istiod.istio-system.svc.cluster.local"
    clusters[jaeger]["transport_socket_matches"][0]["transport_socket"] = {"name": "x.alts"}
    state = parse_config_dump(document)
    assert state.clusters[jaeger].transport is UpstreamTransport.OTHER
    assert "x.alts" in state.clusters[jaeger].describe()
    inbound = (ExpectedInbound(3333, MtlsMode.PERMISSIVE),)
    ok = SidecarExpectation(inbound, (ExpectedOutbound(istiod, None, None),))
    assert mismatches(state, ok) == ()
    concerned = SidecarExpectation(inbound, (ExpectedOutbound(jaeger, TlsMode.ISTIO_MUTUAL, None),))
    [problem] = mismatches(state, concerned)
    assert problem.startswith(f"cluster {jaeger}: other (") and "x.alts" in problem, problem


def test_an_unreadable_chain_blocks_only_its_port() -> None:
    document = load("istio-dumps/mplb__envoy_config_dump.json")
    port_chains(document, 3333)[0]["transport_socket"] = {"typed_config": {"@type": "x.Alts"}}
    state = parse_config_dump(document)
    assert state.inbound[3333].mode is None
    problem = state.inbound[3333].describe()
    assert "unknown downstream socket 'x.Alts'" in problem, problem
    outbound = (
        ExpectedOutbound("outbound|15010||istiod.istio-system.svc.cluster.local", None, None),
    )
    assert mismatches(state, SidecarExpectation((), outbound)) == ()
    [found] = mismatches(
        state, SidecarExpectation((ExpectedInbound(3333, MtlsMode.PERMISSIVE),), ())
    )
    assert "inbound port 3333: unrecognised" in found and "x.Alts" in found, found


# --- the Envoy v2 dumps as evidence of the shapes derived above ----------------------------------


def v2_section(name: str, kind: str) -> dict[str, Any]:
    return section(load(f"istio-dumps/envoy-v2/{name}"), kind)


def test_v2_strict_port_has_only_client_certificate_chains() -> None:
    # Istio 1.4-alpha, STRICT (istioctl describe testdata): every chain of port 9080 requires a
    # client certificate, no plaintext chain: the STRICT shape test_derived_strict_port builds
    listeners = v2_section(
        "istio__describe-productpage-strict-1.4alpha.json", "ListenersConfigDump"
    )
    [inbound] = [
        e["listener"]
        for e in listeners["dynamic_active_listeners"]
        if e["listener"]["name"] == "virtualInbound"
    ]
    chains = [
        c
        for c in inbound["filter_chains"]
        if c.get("filter_chain_match", {}).get("destination_port") == 9080
    ]
    assert len(chains) == 2  # one per pod address (IPv4, IPv6)
    assert all(c["tls_context"]["require_client_certificate"] is True for c in chains)


def test_v2_istio_mutual_and_max_requests_are_cluster_level() -> None:
    # Istio 1.1.1: ISTIO_MUTUAL clusters carry their TLS at cluster level (no socket matches:
    # auto mTLS came in 1.5) with Istio's SNI; max_requests_per_connection is the cluster
    # field the reader still accepts
    clusters = {
        e["cluster"]["name"]: e["cluster"]
        for e in v2_section("istio__auth-productpage_config_dump-1.1.1.json", "ClustersConfigDump")[
            "dynamic_active_clusters"
        ]
    }
    httpbin = clusters["outbound|8000||httpbin.default.svc.cluster.local"]
    assert "transport_socket_matches" not in httpbin
    assert httpbin["tls_context"]["sni"] == "outbound_.8000_._.httpbin.default.svc.cluster.local"
    telemetry = clusters["outbound|9091||istio-telemetry.istio-system.svc.cluster.local"]
    assert max_requests_per_connection(telemetry) == 10000
