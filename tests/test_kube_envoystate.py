"""What a sidecar's Envoy config implements (``kube/envoystate.py``), read from config dumps:
Istio's own (istioctl testdata, in ../shared/testdata) and the hand-made sidecar dumps in
tests/data/kube (README there). Expected values come from the files' text, read by eye."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import TESTDATA
from hypothesis import given, settings, strategies as st

from pytest_meshconform.backends.kube.envoystate import (
    EnvoyStateError,
    ExpectedInbound,
    ExpectedOutbound,
    InboundChain,
    OutboundCluster,
    SidecarExpectation,
    expected_sidecar,
    mismatches,
    parse_config_dump,
)
from pytest_meshconform.istio.api import MtlsMode, TlsMode, parse_policies
from pytest_meshconform.istio.envoy import UpstreamTransport, outbound_cluster_name
from pytest_meshconform.mesh import Service

DATA = Path(__file__).resolve().parent / "data" / "kube"
SHARED_SECRETS = TESTDATA / "secrets"
VERSION = "2025-03-14T09:26:41Z/12"
MTLS_ALPNS = "istio,istio-peer-exchange,istio-http/1.0,istio-http/1.1,istio-h2"
SERVICES = tuple(Service("httpbin", ns, 8000, 8080, "httpbin") for ns in ("foo", "bar", "legacy"))


def dump(name: str) -> bytes:
    return (DATA / f"config_dump-{name}.json").read_bytes()


def shared(name: str) -> bytes:
    path = SHARED_SECRETS / name
    if not path.is_file():
        pytest.skip("shared test data not available")
    return path.read_bytes()


# --- inbound ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "mode", "chains"),
    [
        ("httpbin-strict", MtlsMode.STRICT, "tls/mTLS"),
        (
            "httpbin-permissive",
            MtlsMode.PERMISSIVE,
            f"tls/mTLS alpn={MTLS_ALPNS}, raw_buffer/plain",
        ),
        ("httpbin-disable", MtlsMode.DISABLE, "raw_buffer/plain"),
    ],
)
def test_inbound_mode_of_port_8080(name: str, mode: MtlsMode, chains: str) -> None:
    state = parse_config_dump(dump(name))
    assert state.has_virtual_inbound
    assert state.listeners_version == VERSION
    port = state.inbound[8080]
    assert port.mode is mode
    assert port.describe() == f"{mode.value} (chains: {chains})"
    # the passthrough chains (no destination_port) never count; the blackhole one is 15006's
    # and has no mode (listener_inbound.go buildInboundBlackhole: traffic sent to 15006 itself)
    assert sorted(state.inbound) == [8080]
    assert state.blackhole_ports == (15006,)


def test_strict_chain_fields() -> None:
    [chain] = parse_config_dump(dump("httpbin-strict")).inbound[8080].chains
    assert chain == InboundChain(
        name="0.0.0.0_8080",
        transport_protocol="tls",
        application_protocols=(),
        terminates_tls=True,
        requires_client_cert=True,
    )


def chains_listener(*chains: dict[str, Any]) -> dict[str, Any]:
    return {
        "configs": [
            {
                "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                "dynamic_listeners": [
                    {
                        "name": "virtualInbound",
                        "active_state": {"listener": {"filter_chains": list(chains)}},
                    }
                ],
            }
        ]
    }


DOWNSTREAM_TLS = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
MTLS_SOCKET = {
    "name": "envoy.transport_sockets.tls",
    "typed_config": {
        "@type": DOWNSTREAM_TLS,
        "require_client_certificate": True,
    },
}
ONE_WAY_TLS = {
    "name": "envoy.transport_sockets.tls",
    "typed_config": {"@type": DOWNSTREAM_TLS},
}


def chain(transport: str | None, socket: dict[str, Any] | None = None) -> dict[str, Any]:
    match: dict[str, Any] = {"destination_port": 9000}
    if transport is not None:
        match["transport_protocol"] = transport
    found: dict[str, Any] = {"name": "0.0.0.0_9000", "filter_chain_match": match}
    if socket is not None:
        found["transport_socket"] = socket
    return found


@pytest.mark.parametrize(
    ("chains", "mode"),
    [
        # TCP port, PERMISSIVE (inboundPermissiveTCPFilterChainMatchWithMxcOptionsAndPlainTLS):
        # mTLS, plaintext, and a TLS passthrough chain without a TLS context
        ((chain("tls", MTLS_SOCKET), chain("raw_buffer"), chain("tls")), MtlsMode.PERMISSIVE),
        # Auto protocol, STRICT (inboundStrictFilterChainMatchOptions): two tls chains
        ((chain("tls", MTLS_SOCKET), chain("tls", MTLS_SOCKET)), MtlsMode.STRICT),
        # a TLS passthrough chain next to the STRICT one is not plaintext
        ((chain("tls", MTLS_SOCKET), chain("tls")), MtlsMode.STRICT),
        ((chain("raw_buffer"), chain(None)), MtlsMode.DISABLE),
        # shapes Istio does not generate for a PeerAuthentication mode
        ((chain("tls", ONE_WAY_TLS),), None),
        ((chain(None, MTLS_SOCKET),), None),
        ((chain("tls"),), None),
    ],
)
def test_mode_of_chain_shapes(chains: tuple[dict[str, Any], ...], mode: MtlsMode | None) -> None:
    assert parse_config_dump(chains_listener(*chains)).inbound[9000].mode is mode


def test_a_warming_listener_is_not_serving() -> None:
    document = chains_listener(chain("raw_buffer"))
    entry = document["configs"][0]["dynamic_listeners"][0]
    entry["warming_state"] = entry.pop("active_state")
    state = parse_config_dump(document)
    assert state.has_virtual_inbound is False
    assert dict(state.inbound) == {}


# --- outbound ---------------------------------------------------------------------------------


def test_outbound_clusters() -> None:
    state = parse_config_dump(dump("sleep-clusters"))
    assert state.has_virtual_inbound is False
    assert state.clusters_version == VERSION
    assert dict(state.clusters) == {
        "outbound|8000||httpbin.foo.svc.cluster.local": OutboundCluster(
            "outbound|8000||httpbin.foo.svc.cluster.local",
            UpstreamTransport.TLS,
            ("default",),
            "ROOTCA",
            "outbound_.8000_._.httpbin.foo.svc.cluster.local",
            1,
        ),
        "outbound|8000||httpbin.bar.svc.cluster.local": OutboundCluster(
            "outbound|8000||httpbin.bar.svc.cluster.local", UpstreamTransport.PLAINTEXT
        ),
        "outbound|8000||httpbin.legacy.svc.cluster.local": OutboundCluster(
            "outbound|8000||httpbin.legacy.svc.cluster.local",
            UpstreamTransport.AUTO,
            ("default",),
            "ROOTCA",
            "outbound_.8000_._.httpbin.legacy.svc.cluster.local",
            1,
        ),
    }


def test_istios_waypoint_dump() -> None:
    # istioctl's proxy-config testdata: a waypoint (no virtualInbound), one cluster whose socket
    # is internal_upstream wrapping raw_buffer
    state = parse_config_dump(shared("proxyconfig_full_config_dump.json"))
    assert state.listeners_version == "2023-12-26T05:57:39Z/1"
    assert state.clusters_version == "2023-12-26T05:56:10Z/3"
    assert state.has_virtual_inbound is False
    assert dict(state.inbound) == {}
    name = "inbound-vip|8000|http|httpbin.default.svc.cluster.local"
    assert dict(state.clusters) == {name: OutboundCluster(name, UpstreamTransport.PLAINTEXT)}


@pytest.mark.parametrize("name", ["istio_config_dump.json", "spire_config_dump.json"])
def test_secret_only_dumps_have_no_listeners_or_clusters(name: str) -> None:
    state = parse_config_dump(shared(name))
    assert (state.has_virtual_inbound, dict(state.inbound), dict(state.clusters)) == (
        False,
        {},
        {},
    )


def test_outbound_cluster_name() -> None:
    assert outbound_cluster_name("httpbin.foo.svc.cluster.local", 8000) == (
        "outbound|8000||httpbin.foo.svc.cluster.local"
    )


# --- expectations -----------------------------------------------------------------------------


def policies(text: str) -> list[Any]:
    return list(parse_policies(text))


PA_FOO_STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {mtls: {mode: STRICT}}
"""
PA_HTTPBIN_PORT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: STRICT}
  portLevelMtls: {"8080": {mode: DISABLE}}
"""
DR_FOO = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: foo}
spec:
  host: httpbin.foo.svc.cluster.local
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    connectionPool: {http: {maxRequestsPerConnection: 1}}
    portLevelSettings:
    - port: {number: 9000}
      connectionPool: {tcp: {maxConnections: 5}}
"""
DR_BAR = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: bar}
spec:
  host: httpbin.bar.svc.cluster.local
  trafficPolicy:
    portLevelSettings:
    - port: {number: 8000}
      tls: {mode: DISABLE}
"""
PA_MESH_STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"""


def expect(text: str, namespace: str = "foo", **options: Any) -> SidecarExpectation:
    return expected_sidecar(
        policies(text),
        namespace=namespace,
        labels={"app": "httpbin"},
        container_ports=(8080,),
        services=SERVICES,
        root_namespace="istio-system",
        **options,
    )


def auto(namespace: str) -> ExpectedOutbound:
    return ExpectedOutbound(
        f"outbound|8000||httpbin.{namespace}.svc.cluster.local",
        None,
        None,
        auto_transport=UpstreamTransport.AUTO,
    )


def test_no_policy_is_permissive_with_auto_mtls() -> None:
    assert expect("") == SidecarExpectation(
        (ExpectedInbound(8080, MtlsMode.PERMISSIVE),),
        tuple(auto(ns) for ns in ("foo", "bar", "legacy")),
    )


def test_expected_state_follows_istios_precedence() -> None:
    assert expect(PA_FOO_STRICT).inbound == (ExpectedInbound(8080, MtlsMode.STRICT),)
    assert expect(PA_FOO_STRICT + "---" + PA_HTTPBIN_PORT).inbound == (
        ExpectedInbound(8080, MtlsMode.DISABLE),
    )
    assert expect(PA_FOO_STRICT, namespace="bar").inbound == (
        ExpectedInbound(8080, MtlsMode.PERMISSIVE),
    )


def test_expected_clusters_follow_destination_rules() -> None:
    outbound = expect(DR_FOO + "---" + DR_BAR).outbound
    assert outbound == (
        ExpectedOutbound("outbound|8000||httpbin.foo.svc.cluster.local", TlsMode.ISTIO_MUTUAL, 1),
        # a port-level entry replaces the rule's settings (and sets no connection pool)
        ExpectedOutbound("outbound|8000||httpbin.bar.svc.cluster.local", TlsMode.DISABLE, None),
        auto("legacy"),
    )


def test_an_unreadable_root_namespace_leaves_what_it_could_decide_unchecked() -> None:
    assert expect("", root_known=False).inbound == ()
    assert expect(PA_FOO_STRICT, root_known=False).inbound == (
        ExpectedInbound(8080, MtlsMode.STRICT),
    )
    outbound = expect(DR_FOO, root_known=False).outbound
    assert outbound[0].connection_pool_known is True
    assert outbound[1] == ExpectedOutbound(
        "outbound|8000||httpbin.bar.svc.cluster.local", None, None, connection_pool_known=False
    )
    with pytest.raises(EnvoyStateError, match="root_known=False with root namespace policies"):
        expect(PA_MESH_STRICT, root_known=False)


# --- comparison -------------------------------------------------------------------------------


def test_a_dump_that_implements_the_expectation_has_no_mismatch() -> None:
    strict = expect(PA_FOO_STRICT)
    foo_only = SidecarExpectation(strict.inbound, strict.outbound[:1])
    assert mismatches(parse_config_dump(dump("httpbin-strict")), foo_only) == ()
    assert mismatches(parse_config_dump(dump("httpbin-permissive")), expect("")) == (
        "cluster outbound|8000||httpbin.bar.svc.cluster.local: missing",
        "cluster outbound|8000||httpbin.legacy.svc.cluster.local: missing",
    )


def test_inbound_mismatches_say_what_envoy_has() -> None:
    state = parse_config_dump(dump("httpbin-permissive"))
    expected = SidecarExpectation((ExpectedInbound(8080, MtlsMode.STRICT),), ())
    assert mismatches(state, expected) == (
        f"inbound port 8080: PERMISSIVE (chains: tls/mTLS alpn={MTLS_ALPNS}, raw_buffer/plain),"
        " expected STRICT",
    )
    missing = SidecarExpectation((ExpectedInbound(9090, MtlsMode.DISABLE),), ())
    assert mismatches(state, missing) == (
        "inbound port 9090: no virtualInbound filter chain, expected DISABLE",
    )
    no_listener = parse_config_dump(dump("sleep-clusters"))
    assert mismatches(no_listener, expected) == (
        "no active virtualInbound listener, expected port 8080 STRICT",
    )


def test_outbound_mismatches_say_what_envoy_has() -> None:
    state = parse_config_dump(dump("sleep-clusters"))
    foo, bar, legacy = (f"outbound|8000||httpbin.{ns}.svc.cluster.local" for ns in SERVICES_NS)
    assert (
        mismatches(
            state,
            SidecarExpectation(
                (),
                (
                    ExpectedOutbound(foo, TlsMode.ISTIO_MUTUAL, 1),
                    ExpectedOutbound(bar, TlsMode.DISABLE, None),
                    ExpectedOutbound(legacy, None, 1),
                ),
            ),
        )
        == ()
    )
    assert mismatches(
        state,
        SidecarExpectation(
            (),
            (
                ExpectedOutbound(foo, TlsMode.DISABLE, None),
                ExpectedOutbound(bar, TlsMode.ISTIO_MUTUAL, None),
                ExpectedOutbound(legacy, TlsMode.SIMPLE, None),
                ExpectedOutbound("outbound|8000||nope.svc.cluster.local", None, None),
            ),
        ),
    ) == (
        f"cluster {foo}: TLS (SDS default, root ROOTCA), expected plaintext (DestinationRule"
        " DISABLE)",
        f"cluster {foo}: max_requests_per_connection 1, expected unset",
        f"cluster {bar}: plaintext, expected TLS with SDS default, root ROOTCA (DestinationRule"
        " ISTIO_MUTUAL)",
        f"cluster {legacy}: auto mTLS, expected TLS (DestinationRule SIMPLE)",
        f"cluster {legacy}: max_requests_per_connection 1, expected unset",
        "cluster outbound|8000||nope.svc.cluster.local: missing",
    )


SERVICES_NS = ("foo", "bar", "legacy")


PA_BAR_DISABLE = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: bar}
spec: {mtls: {mode: DISABLE}}
"""
DR_FOO_POOL_ONLY = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pool, namespace: foo}
spec:
  host: httpbin.foo.svc.cluster.local
  trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 2}}}
"""


def test_auto_mtls_expects_no_tls_towards_a_namespace_that_disables_it() -> None:
    """buildUpstreamTLSSettings (cluster_builder.go): without TLS in any rule, a Service whose
    namespace-level mode (BestEffortInferServiceMTLSMode) is DISABLE gets a cluster without
    TLS; any other gets auto mTLS's transport_socket_matches."""
    outbound = expect(PA_BAR_DISABLE).outbound
    assert outbound == (
        auto("foo"),
        ExpectedOutbound(
            "outbound|8000||httpbin.bar.svc.cluster.local",
            None,
            None,
            auto_transport=UpstreamTransport.PLAINTEXT,
        ),
        auto("legacy"),
    )
    # Without the root namespace only what the namespace decides whatever the mesh says.
    unknown = expect(DR_FOO_POOL_ONLY + "---" + PA_BAR_DISABLE, root_known=False).outbound
    assert unknown[0] == ExpectedOutbound(
        "outbound|8000||httpbin.foo.svc.cluster.local", None, 2, auto_transport=None
    )
    assert unknown[1] == ExpectedOutbound(
        "outbound|8000||httpbin.bar.svc.cluster.local", None, None, connection_pool_known=False
    )
    strict_foo = expect(DR_FOO_POOL_ONLY + "---" + PA_FOO_STRICT, root_known=False).outbound
    assert strict_foo[0].auto_transport is UpstreamTransport.AUTO


def test_auto_mtls_mismatches_say_what_envoy_has() -> None:
    state = parse_config_dump(dump("sleep-clusters"))
    bar, legacy = (f"outbound|8000||httpbin.{ns}.svc.cluster.local" for ns in ("bar", "legacy"))
    expected = SidecarExpectation(
        (),
        (
            ExpectedOutbound(bar, None, None, auto_transport=UpstreamTransport.AUTO),
            ExpectedOutbound(legacy, None, 1, auto_transport=UpstreamTransport.PLAINTEXT),
        ),
    )
    assert mismatches(state, expected) == (
        f"cluster {bar}: plaintext, expected auto mTLS (TLS to tlsMode-istio endpoints,"
        " else plaintext)",
        f"cluster {legacy}: auto mTLS, expected plaintext (auto mTLS: the Service's namespace"
        " disables mTLS)",
    )
    matching = SidecarExpectation(
        (),
        (
            ExpectedOutbound(bar, None, None, auto_transport=UpstreamTransport.PLAINTEXT),
            ExpectedOutbound(legacy, None, 1, auto_transport=UpstreamTransport.AUTO),
        ),
    )
    assert mismatches(state, matching) == ()


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        (b"{", "config_dump is not JSON"),
        (b"[]", "config_dump: expected an object, got \\[\\]"),
        (b'{"configs": {}}', "config_dump.configs: expected a list"),
        (b'{"configs": [{"@type": 5}]}', r"configs\[0\]\.@type: expected a string, got 5"),
    ],
)
def test_bad_dumps_name_the_field(document: bytes | str, fragment: str) -> None:
    with pytest.raises(EnvoyStateError, match=fragment):
        parse_config_dump(document)


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        (
            json.dumps(chains_listener({"filter_chain_match": {"destination_port": "80"}})),
            r"virtualInbound.filter_chains\[0\].destination_port: expected an unsigned 32-bit"
            r' integer, got "80"',
        ),
        (
            json.dumps(
                chains_listener(
                    chain(
                        "tls",
                        {
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.transport_sockets"
                                ".tls.v3.DownstreamTlsContext",
                                "require_client_certificate": "yes",
                            }
                        },
                    )
                )
            ),
            "require_client_certificate: expected a boolean",
        ),
        (
            json.dumps(chains_listener(chain("tls", {"typed_config": {"@type": "x.Alts"}}))),
            "unknown downstream socket 'x.Alts'",
        ),
        (
            json.dumps(chains_listener(chain("tls", {"name": "envoy.transport_sockets.tls"}))),
            r"filter_chains\[0\].transport_socket.typed_config: expected an object, got null",
        ),
    ],
)
def test_unreadable_chains_are_named_where_they_block(document: bytes | str, fragment: str) -> None:
    # a chain the reader cannot read no longer makes the whole dump unreadable: it is kept,
    # with the field named, in its port (or, without a readable port, for the listener), and
    # shows up in the mismatches of an inbound expectation
    state = parse_config_dump(document)
    expected = SidecarExpectation((ExpectedInbound(9000, MtlsMode.STRICT),), ())
    found = mismatches(state, expected)
    assert [p for p in found if re.search(fragment, p)], found
    if 9000 in state.inbound:
        assert state.inbound[9000].mode is None
    assert mismatches(state, SidecarExpectation((), ())) == ()


def test_an_unknown_upstream_socket_is_reported_not_guessed() -> None:
    document = json.loads(dump("sleep-clusters"))
    cluster = document["configs"][1]["dynamic_active_clusters"][1]["cluster"]
    cluster["transport_socket"] = {"typed_config": {"@type": "example.Alts"}}
    found = parse_config_dump(document).clusters[cluster["name"]]
    assert (found.transport, found.describe()) == (UpstreamTransport.OTHER, "other (example.Alts)")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
CHAIN_KEYS = st.sampled_from(
    [
        "filter_chain_match",
        "transport_socket",
        "name",
        "destination_port",
        "transport_protocol",
        "typed_config",
        "@type",
        "require_client_certificate",
        "application_protocols",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    listener=st.dictionaries(
        st.just("filter_chains"),
        st.lists(JSON | st.dictionaries(CHAIN_KEYS, JSON, max_size=3), max_size=3),
    ),
    cluster=st.dictionaries(
        st.sampled_from(
            [
                "name",
                "transport_socket",
                "transport_socket_matches",
                "typed_extension_protocol_options",
                "max_requests_per_connection",
            ]
        ),
        JSON,
        max_size=4,
    ),
)
def test_arbitrary_dumps_parse_or_raise_the_typed_error(
    listener: dict[str, Any], cluster: dict[str, Any]
) -> None:
    document = {
        "configs": [
            {
                "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                "dynamic_listeners": [
                    {"name": "virtualInbound", "active_state": {"listener": listener}}
                ],
            },
            {
                "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                "dynamic_active_clusters": [{"cluster": cluster}],
            },
        ]
    }
    try:
        state = parse_config_dump(document)
    except EnvoyStateError:
        return
    for port in state.inbound.values():
        port.describe()
    for found in state.clusters.values():
        found.describe()


def test_an_unreadable_listener_blocks_inbound_expectations_only() -> None:
    document = json.loads(dump("httpbin-permissive"))
    listeners = document["configs"][2]["dynamic_listeners"]
    listeners.append({"name": 5, "active_state": {"listener": {}}})
    state = parse_config_dump(document)
    assert state.inbound[8080].mode is MtlsMode.PERMISSIVE  # the rest is still read
    inbound = SidecarExpectation((ExpectedInbound(8080, MtlsMode.PERMISSIVE),), ())
    assert mismatches(state, inbound) == (
        f"virtualInbound not understood: dynamic_listeners[{len(listeners) - 1}].name:"
        " expected a string, got 5",
    )
    assert mismatches(state, SidecarExpectation((), ())) == ()
    clusters_only = SidecarExpectation((), expect("").outbound[:1])
    assert mismatches(state, clusters_only) == ()
