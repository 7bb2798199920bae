"""The one reader of Envoy's ``/config_dump`` (``evidence/config_dump.py``), on real dumps.

The dumps are what real istiod-programmed Envoys wrote (``../shared/testdata/istio-dumps``,
provenance in its README). Every expected value is read here with a plain JSON walk, never with
the code under test; the reader must give the same facts, generic Envoy, without any mesh's
names.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import TESTDATA

from pytest_meshconform.evidence.certs import CertError
from pytest_meshconform.evidence.config_dump import (
    RAW_BUFFER_TYPE,
    ConfigDumpError,
    active_cluster,
    active_listener,
    cluster_socket,
    read_chain_port,
    read_filter_chain,
    read_network_filters,
    read_secrets,
    read_socket_match,
    sections,
    socket_matches,
)

DUMPS = TESTDATA / "istio-dumps"


def load(name: str) -> dict[str, Any]:
    path = TESTDATA / name
    if not path.is_file():
        pytest.skip(f"shared test data not available ({path})")
    document: dict[str, Any] = json.loads(path.read_bytes())
    return document


def plain_section(document: dict[str, Any], kind: str) -> dict[str, Any]:
    [one] = [c for c in document["configs"] if c["@type"].endswith(f".{kind}")]
    return one


@pytest.mark.parametrize(
    "name", ["istio-dumps/scout__config_dump.json", "istio-dumps/mplb__envoy_config_dump.json"]
)
def test_sections_and_listeners_are_the_documents(name: str) -> None:
    document = load(name)
    found = sections(document)
    assert [s.type_url for s in found] == [c["@type"] for c in document["configs"]]
    [listeners] = [s for s in found if s.admin_type == "ListenersConfigDump"]
    raw = plain_section(document, "ListenersConfigDump")
    assert listeners.version_info("listeners") == raw["version_info"]
    read = [
        active_listener(entry, where) for where, entry in listeners.entries("dynamic_listeners")
    ]
    assert [n for n, _ in read] == [e["name"] for e in raw["dynamic_listeners"]]
    assert [n for n, listener in read if listener is not None] == [
        e["name"] for e in raw["dynamic_listeners"] if "active_state" in e
    ]


def test_chains_of_a_real_inbound_listener() -> None:
    document = load("istio-dumps/mplb__envoy_config_dump.json")
    raw_entry = next(
        e
        for e in plain_section(document, "ListenersConfigDump")["dynamic_listeners"]
        if e["name"] == "virtualInbound"
    )
    raw_chains = raw_entry["active_state"]["listener"]["filter_chains"]
    name, listener = active_listener(raw_entry, "dynamic_listeners[0]")
    assert listener is not None and name == "virtualInbound"
    chains = listener.chains()
    assert [w for w, _ in chains] == [
        f"virtualInbound.filter_chains[{i}]" for i in range(len(raw_chains))
    ]
    for (where, chain), raw in zip(chains, raw_chains, strict=True):
        match = raw.get("filter_chain_match", {})
        read = read_filter_chain(chain, where)
        assert read_chain_port(chain, where) == match.get("destination_port")
        assert (read.name, read.destination_port) == (raw["name"], match.get("destination_port"))
        assert read.transport_protocol == match.get("transport_protocol", "")
        assert read.application_protocols == tuple(match.get("application_protocols", ()))
        socket = raw.get("transport_socket")
        if socket is None:
            assert read.transport_socket is None
        else:
            assert read.transport_socket is not None
            assert read.transport_socket.type_url == socket["typed_config"]["@type"]
            assert read.transport_socket.config == socket["typed_config"]
            assert read.transport_socket.require_client_certificate() is socket["typed_config"].get(
                "require_client_certificate", False
            )
        filters = read_network_filters(chain, where)
        assert [(f.name, f.type_url) for f in filters] == [
            (f["name"], f["typed_config"]["@type"]) for f in raw["filters"]
        ]
        for read_filter, raw_filter in zip(filters, raw["filters"], strict=True):
            http = raw_filter["typed_config"].get("http_filters", [])
            assert [(h.name, h.type_url) for h in read_filter.http_filters()] == [
                (h["name"], h.get("typed_config", {}).get("@type", "")) for h in http
            ]


def test_clusters_and_their_sockets() -> None:
    document = load("istio-dumps/scout__config_dump.json")
    [clusters] = [s for s in sections(document) if s.admin_type == "ClustersConfigDump"]
    raw = plain_section(document, "ClustersConfigDump")["dynamic_active_clusters"]
    entries = clusters.entries("dynamic_active_clusters")
    assert len(entries) == len(raw)
    checked = 0
    for (where, entry), plain in zip(entries, raw, strict=True):
        name, cluster = active_cluster(entry, where)
        assert name == plain["cluster"]["name"]
        matches = [read_socket_match(m, w) for w, m in socket_matches(cluster, f"cluster {name}")]
        plain_matches = plain["cluster"].get("transport_socket_matches", [])
        assert [m.name for m in matches] == [m["name"] for m in plain_matches]
        if [m.name for m in matches] == ["tlsMode-istio", "tlsMode-disabled"]:
            tls, disabled = (m.socket() for m in matches)
            assert tls is not None and disabled is not None
            common = plain_matches[0]["transport_socket"]["typed_config"]["common_tls_context"]
            secrets = tls.tls_secrets()
            assert secrets.certificates == tuple(
                c["name"] for c in common["tls_certificate_sds_secret_configs"]
            )
            assert (
                secrets.validation
                == (
                    common["combined_validation_context"]["validation_context_sds_secret_config"][
                        "name"
                    ]
                )
            )
            assert secrets.sni == plain_matches[0]["transport_socket"]["typed_config"]["sni"]
            # Istio 1.9 writes the plaintext socket by Envoy's well-known name only
            assert plain_matches[1]["transport_socket"] == {
                "name": "envoy.transport_sockets.raw_buffer"
            }
            assert disabled.type_url == RAW_BUFFER_TYPE and disabled.config == {}
            checked += 1
        if "transport_socket" not in plain["cluster"]:
            assert cluster_socket(cluster, f"cluster {name}") is None
    assert checked == 28  # the auto-mTLS clusters of this Istio 1.9.1 sidecar (kube-reader.md)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], r"config_dump: expected an object, got \[\]"),
        ({"configs": {}}, r"config_dump.configs: expected a list, got \{\}"),
        ({"configs": [{"@type": 5}]}, r"configs\[0\]\.@type: expected a string, got 5"),
    ],
)
def test_what_is_not_a_config_dump_is_named(document: object, message: str) -> None:
    with pytest.raises(ConfigDumpError, match=message):
        sections(document)


def test_a_chain_with_an_unknown_named_socket_is_named() -> None:
    chain = {"name": "c", "transport_socket": {"name": "x.alts"}}
    with pytest.raises(
        ConfigDumpError,
        match=r"c0.transport_socket.typed_config: expected an object, got null \(socket 'x.alts'",
    ):
        read_filter_chain(chain, "c0")
    with pytest.raises(ConfigDumpError, match=r"c0.destination_port: expected an unsigned 32"):
        read_chain_port({"filter_chain_match": {"destination_port": "80"}}, "c0")


def test_secrets_are_named_by_the_caller() -> None:
    """The reader knows no mesh's names: the same dump read with other names has no workload
    certificate and no roots, though every secret is there."""
    document = load("secrets/istio_config_dump.json")
    plain = plain_section(document, "SecretsConfigDump")
    names = [s["name"] for s in plain.get("dynamic_active_secrets", [])]
    assert "default" in names and "ROOTCA" in names
    istio = read_secrets(document, workload_secret="default", root_secret="ROOTCA")
    other = read_secrets(document, workload_secret="workload", root_secret="roots")
    assert [s.name for s in istio.secrets if s.state == "active"] == names
    assert istio.secrets == other.secrets
    assert istio.workload is not None and istio.roots
    assert other.workload is None and other.roots == ()
    with pytest.raises(
        CertError, match="secret 'default' is a tls_certificate, expected a validation_context"
    ):
        read_secrets(document, workload_secret="default", root_secret="default")
