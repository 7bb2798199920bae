"""Tests of the Kubernetes API fake itself (kube_fakes.py): the WebSocket framing with literal
vectors from RFC 6455, and the fake istiod's passthrough chains against real sidecars' dumps
(../shared/testdata/istio-dumps, skipped when absent) and Istio's source."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from conftest import TESTDATA
from kube_fakes import (
    MTLS_HTTP_ALPNS,
    PLAINTEXT_HTTP_ALPNS,
    FakeCluster,
    FakeIstio,
    encode_frame,
    read_frame,
    websocket_accept,
)


def test_accept_key_is_rfc6455_example() -> None:
    # RFC 6455 section 1.3: key "dGhlIHNhbXBsZSBub25jZQ==" -> "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert websocket_accept("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_frames_are_rfc6455_examples() -> None:
    # RFC 6455 section 5.7: "Hello", unmasked and masked with 37 fa 21 3d.
    assert encode_frame(0x1, b"Hello") == bytes.fromhex("810548656c6c6f")
    masked = encode_frame(0x1, b"Hello", mask=bytes.fromhex("37fa213d"))
    assert masked == bytes.fromhex("818537fa213d7f9f4d5158")
    # 256 bytes binary message, unmasked: 0x82 0x7E 0x0100 [256 bytes]
    assert encode_frame(0x2, bytes(256))[:4] == bytes.fromhex("827e0100")


def test_read_frame_unmasks() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(bytes.fromhex("818537fa213d7f9f4d5158"))
        assert read_frame(right) == (0x1, b"Hello")
        left.close()
        assert read_frame(right) is None


# --- the fake istiod renders what real istiod renders --------------------------------------------

REAL_DUMPS = TESTDATA / "istio-dumps"


def _passthrough(listeners: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Per passthrough chain of virtualInbound: name, transport, ALPNs, TLS, RBAC filters."""
    [inbound] = [entry for entry in listeners if entry["name"] == "virtualInbound"]
    found = []
    for chain in inbound["active_state"]["listener"]["filter_chains"]:
        match = chain.get("filter_chain_match") or {}
        if "destination_port" in match:
            continue
        names = [f["name"] for f in chain["filters"]]
        for f in chain["filters"]:
            names += [h["name"] for h in f.get("typed_config", {}).get("http_filters", [])]
        found.append(
            (
                chain["name"],
                match.get("transport_protocol"),
                tuple(match.get("application_protocols") or ()),
                "transport_socket" in chain,
                tuple(n for n in names if n.endswith(".rbac")),
            )
        )
    return found


def _real_listeners(name: str) -> list[dict[str, Any]]:
    if not (REAL_DUMPS / name).is_file():
        pytest.skip(f"real config dumps not available at {REAL_DUMPS}")
    dump = json.loads((REAL_DUMPS / name).read_text())
    [section] = [c for c in dump["configs"] if c["@type"].endswith("ListenersConfigDump")]
    return list(section["dynamic_listeners"])


@pytest.mark.parametrize("real", ["mplb__envoy_config_dump.json", "ossm__pod_config_dump.json"])
def test_a_sleep_pod_has_the_passthrough_chains_of_real_sidecars(real: str) -> None:
    """Istio 1.22.3 and 1.20.8 sidecars (PERMISSIVE, no AuthorizationPolicy): five passthrough
    chains, HTTP first; the fake gives a sleep pod the same."""
    istio = FakeIstio(FakeCluster())
    dump = json.loads(istio.render_config_dump("mc-x-foo", "sleep-6c8f9d7b5-0q2w"))
    assert _passthrough(dump["configs"][2]["dynamic_listeners"]) == _passthrough(
        _real_listeners(real)
    )


def test_the_passthrough_chains_carry_rbac_filters_as_real_ones_do() -> None:
    """istioctl's authz test dump (a 1.19-dev sidecar under an ALLOW policy): every
    passthrough chain carries the RBAC filter, network on TCP chains, HTTP on the others."""
    cluster = FakeCluster()
    cluster.objects[("security.istio.io", "AuthorizationPolicy", "mc-x-foo", "allow")] = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "allow", "namespace": "mc-x-foo"},
        "spec": {"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]},
    }
    dump = json.loads(FakeIstio(cluster).render_config_dump("mc-x-foo", "sleep-6c8f9d7b5-0q2w"))
    assert _passthrough(dump["configs"][2]["dynamic_listeners"]) == _passthrough(
        _real_listeners("istio__authz-configdump.json")
    )


@pytest.mark.parametrize(
    ("mode", "chains"),
    [
        # getFilterChainMatchOptions(mtls, ListenerProtocolAuto): inboundStrictFilterChainMatch-
        # Options and inboundPlainTextFilterChainMatchOptions (filterchain_options.go)
        (
            "STRICT",
            [
                ("virtualInbound-catchall-http", "tls", tuple(MTLS_HTTP_ALPNS), True, ()),
                ("virtualInbound", "tls", (), True, ()),
            ],
        ),
        (
            "DISABLE",
            [
                (
                    "virtualInbound-catchall-http",
                    "raw_buffer",
                    tuple(PLAINTEXT_HTTP_ALPNS),
                    False,
                    (),
                ),
                ("virtualInbound", "raw_buffer", (), False, ()),
            ],
        ),
    ],
)
def test_the_passthrough_chains_follow_the_workloads_mode(
    mode: str, chains: list[tuple[Any, ...]]
) -> None:
    cluster = FakeCluster()
    cluster.objects[("security.istio.io", "PeerAuthentication", "mc-x-foo", "default")] = {
        "metadata": {"name": "default", "namespace": "mc-x-foo"},
        "spec": {"mtls": {"mode": mode}},
    }
    dump = json.loads(FakeIstio(cluster).render_config_dump("mc-x-foo", "sleep-6c8f9d7b5-0q2w"))
    assert _passthrough(dump["configs"][2]["dynamic_listeners"]) == chains
