"""Protocol sniffing as istiod configures it (``istio/envoy.py``, ``istio/protocol.py``), held
against istiod's source and against config dumps real istiod wrote.

The chain tables are transcribed from pilot/pkg/networking/core/filterchain_options.go
(``getFilterChainMatchOptions``) and listener.go (``plaintextHTTPALPNs``, ``mtlsHTTPALPNs``,
``mtlsTCPWithMxcALPNs``); the default ``protocolDetectionTimeout`` from pkg/config/mesh/mesh.go
(``DefaultMeshConfig``: 0s). The dumps (``../shared/testdata/istio-dumps``, provenance in its
README) are read with a plain JSON walk, never with the code under test: OpenShift Service Mesh
2.6.7 (Istio 1.20.8, `ossm__pod_config_dump.json`, port 8080 of `hello-openshift` is unnamed)
and the multiparty-lb dump (`mplb__envoy_config_dump.json`, port 3333).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import TESTDATA

from pytest_meshconform.istio.api import MtlsMode
from pytest_meshconform.istio.envoy import (
    PROTOCOL_DETECTION_TIMEOUT,
    cluster_http_protocol_options,
    filter_chain_match_options,
    inbound_mode,
    needs_http_inspector,
    outbound_chain_options,
)
from pytest_meshconform.istio.protocol import (
    ListenerProtocol,
    PortProtocol,
    service_port_protocol,
)

DUMPS = TESTDATA / "istio-dumps"
HTTP, TCP, AUTO = ListenerProtocol.HTTP, ListenerProtocol.TCP, ListenerProtocol.AUTO
MTLS_HTTP = ("istio-http/1.0", "istio-http/1.1", "istio-h2")
PLAIN_HTTP = ("http/1.1", "h2c")
ALL_ISTIO = ("istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2")

# (protocol, mode) -> the chains as (filters, transport, ALPN match, terminates mTLS), in
# istiod's order, transcribed from filterchain_options.go
CHAINS = {
    (AUTO, MtlsMode.PERMISSIVE): [  # inboundPermissiveFilterChainMatchWithMxcOptions
        ("HTTP", "tls", MTLS_HTTP, True),
        ("HTTP", "raw_buffer", PLAIN_HTTP, False),
        ("TCP", "tls", ("istio-peer-exchange", "istio"), True),
        ("TCP", "raw_buffer", (), False),
        ("TCP", "tls", (), False),
    ],
    (AUTO, MtlsMode.STRICT): [  # inboundStrictFilterChainMatchOptions
        ("HTTP", "tls", MTLS_HTTP, True),
        ("TCP", "tls", (), True),
    ],
    (AUTO, MtlsMode.DISABLE): [  # inboundPlainTextFilterChainMatchOptions
        ("HTTP", "raw_buffer", PLAIN_HTTP, False),
        ("TCP", "raw_buffer", (), False),
    ],
    (HTTP, MtlsMode.PERMISSIVE): [  # inboundPermissiveHTTPFilterChainMatchWithMxcOptions
        ("HTTP", "tls", ALL_ISTIO, True),
        ("HTTP", "raw_buffer", (), False),
    ],
    (HTTP, MtlsMode.STRICT): [("HTTP", "tls", (), True)],
    (HTTP, MtlsMode.DISABLE): [("HTTP", "raw_buffer", (), False)],
    (TCP, MtlsMode.PERMISSIVE): [  # inboundPermissiveTCPFilterChainMatchWithMxcOptions
        ("TCP", "tls", ALL_ISTIO, True),
        ("TCP", "tls", (), False),
        ("TCP", "raw_buffer", (), False),
    ],
    (TCP, MtlsMode.STRICT): [("TCP", "tls", (), True)],
    (TCP, MtlsMode.DISABLE): [("TCP", "raw_buffer", (), False)],
}


@pytest.mark.parametrize(("protocol", "mode"), list(CHAINS))
def test_filter_chain_match_options_are_istiods(protocol: ListenerProtocol, mode: MtlsMode) -> None:
    options = filter_chain_match_options(mode, protocol)
    got = [
        (o.protocol.value, o.transport_protocol, o.application_protocols, o.tls) for o in options
    ]
    assert got == CHAINS[(protocol, mode)]
    assert inbound_mode([o.shape for o in options]) is mode  # the kube reader reads them back


def test_which_ports_istio_sniffs() -> None:
    """``ConvertProtocol``: an unrecognised name without appProtocol is sniffed;
    ``ModelProtocolToListenerProtocol``: how each protocol's listener is built."""
    assert service_port_protocol(80, "web") is PortProtocol.UNSUPPORTED
    assert service_port_protocol(80, "") is PortProtocol.UNSUPPORTED
    assert service_port_protocol(3306, "db") is PortProtocol.TCP  # a well-known port
    assert service_port_protocol(80, "web", "http") is PortProtocol.HTTP
    assert PortProtocol.UNSUPPORTED.listener_protocol is AUTO
    assert PortProtocol.GRPC_WEB.listener_protocol is HTTP
    assert PortProtocol.MONGO.listener_protocol is TCP
    assert PortProtocol.UDP.listener_protocol is None


def test_outbound_chains_of_a_sniffed_port() -> None:
    """``buildSidecarOutboundListener``, protocol auto: the TCP chain (the default chain) and
    an HTTP chain matching raw_buffer and ``plaintextHTTPALPNs``."""
    tcp, http = outbound_chain_options(AUTO)
    assert (tcp.protocol, tcp.transport_protocol, tcp.application_protocols) == (TCP, "", ())
    assert (http.protocol, http.transport_protocol, http.application_protocols) == (
        HTTP,
        "raw_buffer",
        PLAIN_HTTP,
    )
    assert [o.protocol for o in outbound_chain_options(HTTP)] == [HTTP]
    assert needs_http_inspector(PLAIN_HTTP) and not needs_http_inspector(MTLS_HTTP)
    assert PROTOCOL_DETECTION_TIMEOUT == "0s"


def load(name: str) -> dict[str, Any]:
    path = DUMPS / name
    if not path.is_file():
        pytest.skip(f"shared test data not available ({path})")
    document: dict[str, Any] = json.loads(path.read_bytes())
    return document


def section(document: dict[str, Any], kind: str) -> dict[str, Any]:
    [found] = [c for c in document["configs"] if c["@type"].endswith(kind)]
    result: dict[str, Any] = found
    return result


def listener(document: dict[str, Any], name: str) -> dict[str, Any]:
    for entry in section(document, ".ListenersConfigDump")["dynamic_listeners"]:
        if entry["name"] == name:
            found: dict[str, Any] = entry["active_state"]["listener"]
            return found
    raise AssertionError(f"no listener {name}")


def cluster(document: dict[str, Any], name: str) -> dict[str, Any]:
    for entry in section(document, ".ClustersConfigDump")["dynamic_active_clusters"]:
        if entry["cluster"]["name"] == name:
            found: dict[str, Any] = entry["cluster"]
            return found
    raise AssertionError(f"no cluster {name}")


def filters_of(chain: dict[str, Any]) -> str:
    names = [f["name"] for f in chain["filters"]]
    return "HTTP" if "envoy.filters.network.http_connection_manager" in names else "TCP"


@pytest.mark.parametrize(
    ("dump", "port"), [("ossm__pod_config_dump.json", 8080), ("mplb__envoy_config_dump.json", 3333)]
)
def test_a_real_sniffed_inbound_port_has_the_five_permissive_chains(dump: str, port: int) -> None:
    document = load(dump)
    inbound = listener(document, "virtualInbound")
    chains = [
        c
        for c in inbound["filter_chains"]
        if c["filter_chain_match"].get("destination_port") == port
    ]
    got = [
        (
            filters_of(c),
            c["filter_chain_match"]["transport_protocol"],
            tuple(c["filter_chain_match"].get("application_protocols", ())),
            "transport_socket" in c,
        )
        for c in chains
    ]
    assert got == CHAINS[(AUTO, MtlsMode.PERMISSIVE)]
    inspectors = [f["name"] for f in inbound["listener_filters"]]
    assert inspectors[-2:] == [
        "envoy.filters.listener.tls_inspector",
        "envoy.filters.listener.http_inspector",
    ]
    assert inbound["listener_filters_timeout"] == "0s"
    options = cluster(document, f"inbound|{port}||")["typed_extension_protocol_options"]
    assert options == cluster_http_protocol_options(PortProtocol.UNSUPPORTED)


def test_a_real_sniffed_outbound_listener() -> None:
    """Istio 1.20.8: Service hello-openshift's unnamed port 8080 (VIP 172.30.116.75)."""
    document = load("ossm__pod_config_dump.json")
    outbound = listener(document, "172.30.116.75_8080")
    assert "envoy.filters.listener.http_inspector" in [
        f["name"] for f in outbound["listener_filters"]
    ]
    assert outbound["listener_filters_timeout"] == "0s"
    [http] = outbound["filter_chains"]
    assert http["filter_chain_match"] == {
        "transport_protocol": "raw_buffer",
        "application_protocols": ["http/1.1", "h2c"],
    }
    assert filters_of(http) == "HTTP" and filters_of(outbound["default_filter_chain"]) == "TCP"
    name = "outbound|8080||hello-openshift.vanilla-playground.svc.cluster.local"
    options = cluster(document, name)["typed_extension_protocol_options"]
    assert options == cluster_http_protocol_options(PortProtocol.UNSUPPORTED)


def test_grpc_web_ports_get_envoys_grpc_web_filter_after_rbac() -> None:
    """``buildHTTPConnectionManager`` (listener_builder.go): ``xdsfilters.GrpcWeb`` after the
    authz filters when the listener's protocol is GRPC-Web, inbound and outbound; the port is
    HTTP/2 otherwise (``IsHTTP2``). Rendered by the local mesh in that order."""
    from pytest_meshconform.backends.local.control import plan_sidecars
    from pytest_meshconform.backends.local.topology_file import parse_topology
    from pytest_meshconform.backends.local.xds import SidecarPaths, listeners
    from pytest_meshconform.istio.api import parse_policy
    from pytest_meshconform.istio.api.authorization_policy import authorization_policy
    from pytest_meshconform.istio.envoy import GRPC_WEB_TYPE, grpc_web_filters

    assert grpc_web_filters(PortProtocol.GRPC) == ()
    [web] = grpc_web_filters(PortProtocol.GRPC_WEB)
    assert web == {"name": "envoy.filters.http.grpc_web", "typed_config": {"@type": GRPC_WEB_TYPE}}
    topology = parse_topology(
        "namespaces:\n  - name: shop\n    dataplane: sidecar\n    workloads:\n"
        "      - {name: catalog, kind: grpc-echo, ports: [8083]}\n"
        "      - {name: web, kind: sleep}\n    services:\n      - name: catalog\n"
        "        selector: {app: catalog}\n        ports: [{name: grpc-web, port: 8083}]\n",
        "t.yaml",
    )
    policy = parse_policy(authorization_policy("allow-none", "shop", selector={"app": "catalog"}))
    plans = plan_sidecars(topology, [policy], "istio-system")

    def http_filters(listener: dict[str, Any]) -> list[list[str]]:
        return [
            [f["name"] for f in f0["typed_config"]["http_filters"]]
            for chain in listener["filter_chains"]
            for f0 in chain["filters"]
            if f0["name"] == "envoy.filters.network.http_connection_manager"
        ]

    paths = SidecarPaths(TESTDATA)  # never read: rendering only
    inbound = listeners(plans["catalog.shop"], paths)[0]
    assert http_filters(inbound)[0] == [
        "envoy.filters.http.rbac",
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.router",
    ]
    [outbound] = [
        item for item in listeners(plans["web.shop"], paths) if item["name"].endswith("_8083")
    ]
    assert http_filters(outbound) == [["envoy.filters.http.grpc_web", "envoy.filters.http.router"]]
