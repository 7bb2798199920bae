"""What istiod emits (``istio/envoy.py``), held against config dumps real istiod wrote.

The names and ALPN lists are read off ``../shared/testdata/istio-dumps`` (provenance in its
README) with a plain JSON walk, never with the code under test; the chain shapes come from
pilot/pkg/networking/core/filterchain_options.go (``getFilterChainMatchOptions``), the
outbound TLS shapes from pilot/pkg/networking/core/cluster_tls.go
(``buildUpstreamClusterTLSContext``, ``applyUpstreamTLSSettings``) and the SAN types from
security/pkg/pki/util/san.go (``BuildSubjectAltNameExtension``).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import TESTDATA

from pytest_meshconform.istio.api import MtlsMode, TlsMode
from pytest_meshconform.istio.envoy import (
    DOWNSTREAM_TLS_TYPE,
    HCM_TYPE,
    INBOUND_SERVER_ALPNS,
    ISTIO_MTLS_ALPNS,
    ROOT_SECRET,
    UPSTREAM_TLS_TYPE,
    VIRTUAL_INBOUND,
    VIRTUAL_INBOUND_BLACKHOLE,
    WORKLOAD_SECRET,
    ChainShape,
    UpstreamTransport,
    auto_mtls_transport,
    inbound_chain_shapes,
    inbound_cluster_name,
    inbound_mode,
    outbound_cluster_name,
    upstream_tls_shape,
)

DUMPS = TESTDATA / "istio-dumps"


def load(name: str) -> dict[str, Any]:
    path = DUMPS / name
    if not path.is_file():
        pytest.skip(f"shared test data not available ({path})")
    document: dict[str, Any] = json.loads(path.read_bytes())
    return document


def listeners(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    [section] = [c for c in document["configs"] if c["@type"].endswith(".ListenersConfigDump")]
    return {
        e["name"]: e["active_state"]["listener"]
        for e in section["dynamic_listeners"]
        if "active_state" in e
    }


@pytest.mark.parametrize("mode", [MtlsMode.STRICT, MtlsMode.PERMISSIVE, MtlsMode.DISABLE])
def test_the_rendered_shapes_read_back_as_their_mode(mode: MtlsMode) -> None:
    assert inbound_mode(inbound_chain_shapes(mode)) is mode


def test_shapes_istio_does_not_generate_have_no_mode() -> None:
    one_way_tls = ChainShape("tls", terminates_tls=True, requires_client_cert=False)
    passthrough = ChainShape("tls", terminates_tls=False, requires_client_cert=False)
    mtls_any = ChainShape("", terminates_tls=True, requires_client_cert=True)
    for chains in ((one_way_tls,), (passthrough,), (mtls_any,), ()):
        assert inbound_mode(chains) is None


def test_istio_1_19_permissive_http_port_matches_all_istio_mtls_alpns() -> None:
    # Istio 1.18/1.19-dev sidecar, port 80 PERMISSIVE: its mTLS chain matches allIstioMtlsALPNs
    inbound = listeners(load("istio__authz-configdump.json"))[VIRTUAL_INBOUND]
    tls_chains = [
        c
        for c in inbound["filter_chains"]
        if c["filter_chain_match"].get("destination_port") == 80
        and c["filter_chain_match"].get("transport_protocol") == "tls"
    ]
    assert [tuple(c["filter_chain_match"]["application_protocols"]) for c in tls_chains] == [
        ISTIO_MTLS_ALPNS
    ]
    socket = tls_chains[0]["transport_socket"]["typed_config"]
    assert socket["@type"] == DOWNSTREAM_TLS_TYPE
    assert socket["require_client_certificate"] is True
    common = socket["common_tls_context"]
    assert [c["name"] for c in common["tls_certificate_sds_secret_configs"]] == [WORKLOAD_SECRET]
    validation = common["combined_validation_context"]["validation_context_sds_secret_config"]
    assert validation["name"] == ROOT_SECRET


def test_istio_1_22_http_chains_offer_the_inbound_server_alpns() -> None:
    # Istio 1.22.3 sidecar, port 3333: the mTLS chain for HTTP (it matches istio-http/*) offers
    # h2, http/1.1; its connection manager is Envoy's HCM; the blackhole chain holds 15006
    inbound = listeners(load("mplb__envoy_config_dump.json"))[VIRTUAL_INBOUND]
    chains = inbound["filter_chains"]
    [http_mtls] = [
        c
        for c in chains
        if c["filter_chain_match"].get("destination_port") == 3333
        and "istio-h2" in c["filter_chain_match"].get("application_protocols", ())
    ]
    alpns = http_mtls["transport_socket"]["typed_config"]["common_tls_context"]["alpn_protocols"]
    assert tuple(alpns) == INBOUND_SERVER_ALPNS
    assert http_mtls["filters"][-1]["typed_config"]["@type"] == HCM_TYPE
    [blackhole] = [c for c in chains if c.get("name") == VIRTUAL_INBOUND_BLACKHOLE]
    assert blackhole["filter_chain_match"] == {"destination_port": 15006}


def test_cluster_names_are_istios() -> None:
    document = load("mplb__envoy_config_dump.json")
    [section] = [c for c in document["configs"] if c["@type"].endswith(".ClustersConfigDump")]
    names = {e["cluster"]["name"] for e in section["dynamic_active_clusters"]}
    assert outbound_cluster_name("istiod.istio-system.svc.cluster.local", 15010) in names
    assert inbound_cluster_name(3333) in names


def clusters(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    [section] = [c for c in document["configs"] if c["@type"].endswith(".ClustersConfigDump")]
    return {e["cluster"]["name"]: e["cluster"] for e in section["dynamic_active_clusters"]}


def test_istio_1_22_istio_mutual_cluster_has_the_istio_mutual_shape() -> None:
    # Istio 1.22.3 sidecar, auto mTLS to istiod: the tlsMode-istio match carries the context
    # buildUpstreamClusterTLSContext builds for ISTIO_MUTUAL, the tlsMode-disabled one none
    cluster = clusters(load("mplb__envoy_config_dump.json"))[
        "outbound|15010||istiod.istio-system.svc.cluster.local"
    ]
    matches = {m["name"]: m["transport_socket"] for m in cluster["transport_socket_matches"]}
    assert set(matches) == {"tlsMode-istio", "tlsMode-disabled"}
    assert "transport_socket" not in cluster
    context = matches["tlsMode-istio"]["typed_config"]
    assert context["@type"] == UPSTREAM_TLS_TYPE
    common = context["common_tls_context"]
    certificates = [c["name"] for c in common["tls_certificate_sds_secret_configs"]]
    combined = common["combined_validation_context"]
    root = combined["validation_context_sds_secret_config"]["name"]
    sans = [m["exact"] for m in combined["default_validation_context"]["match_subject_alt_names"]]
    assert (certificates, root) == (["default"], "ROOTCA")
    assert sans == ["spiffe://cluster.local/ns/istio-system/sa/istiod"]

    shape = upstream_tls_shape(TlsMode.ISTIO_MUTUAL)
    assert (shape.transport, shape.certificate_secrets, shape.validation_secret) == (
        UpstreamTransport.TLS,
        tuple(certificates),
        root,
    )
    assert not shape.rule_files
    assert [shape.san_type(san) for san in sans] == ["URI"]
    assert shape.implemented_by(UpstreamTransport.TLS, certificates, root)
    assert auto_mtls_transport(TlsMode.ISTIO_MUTUAL) is UpstreamTransport.AUTO


def test_upstream_tls_shapes_per_destination_rule_mode() -> None:
    # cluster_tls.go: DISABLE builds no context; SIMPLE and MUTUAL (constructUpstreamTLS) use
    # the rule's files, not the workload's SDS secrets; auto mTLS that chose no TLS: no socket
    for mode in (TlsMode.DISABLE, None):
        plain = upstream_tls_shape(mode)
        assert (plain.transport, plain.certificate_secrets, plain.validation_secret) == (
            UpstreamTransport.PLAINTEXT,
            (),
            None,
        )
        assert plain.implemented_by(UpstreamTransport.PLAINTEXT)
        assert not plain.implemented_by(UpstreamTransport.TLS, [WORKLOAD_SECRET], ROOT_SECRET)
    for mode in (TlsMode.SIMPLE, TlsMode.MUTUAL):
        files = upstream_tls_shape(mode)
        assert (files.transport, files.certificate_secrets, files.validation_secret) == (
            UpstreamTransport.TLS,
            (),
            None,
        )
        assert files.rule_files
        assert files.implemented_by(UpstreamTransport.TLS, ["file-cert:/c.pem~/k.pem"], "x")
        assert not files.implemented_by(UpstreamTransport.AUTO)
        assert not files.implemented_by(UpstreamTransport.PLAINTEXT)
        # BuildSubjectAltNameExtension: a spiffe:// identity is a URI SAN, a host a DNS SAN
        assert files.san_type("spiffe://cluster.local/ns/bar/sa/httpbin") == "URI"
        assert files.san_type("bar.example") == "DNS"
    mutual = upstream_tls_shape(TlsMode.ISTIO_MUTUAL)
    assert not mutual.implemented_by(UpstreamTransport.AUTO, [WORKLOAD_SECRET], ROOT_SECRET)
    assert not mutual.implemented_by(UpstreamTransport.TLS, ["file-cert:/c.pem"], ROOT_SECRET)
    assert not mutual.implemented_by(UpstreamTransport.TLS, [WORKLOAD_SECRET], "file-root:/ca")
    assert auto_mtls_transport(None) is UpstreamTransport.PLAINTEXT
