"""The local mesh's pure parts: topology, control-plane decisions, Envoy config, iptables, CA.

Where the expected values come from:

- Envoy config shapes: what istiod generates for a sidecar (pilot/pkg/networking/core in
  istio/istio): inbound STRICT = TLS chains only; PERMISSIVE = a TLS chain matching
  ``allIstioMtlsALPNs`` (``istio``, ``istio-peer-exchange``, ``istio-http/1.0``,
  ``istio-http/1.1``, ``istio-h2``, listener.go) plus a ``raw_buffer`` chain; DISABLE =
  plaintext only; the client ALPN list for HTTP/1.1 (``mtlsHTTP11ALPN``,
  pilot/pkg/xds/filters/filters.go) and the SNI ``outbound_.<port>_._.<fqdn>``
  (``BuildDNSSrvSubsetKey``); XFCC as the sidecar inbound sets it (APPEND_FORWARD, Subject/URI/DNS).
- Auto mTLS and DestinationRule decisions: Istio's reachability matrix and
  ``buildAutoMtlsSettings`` (cluster_builder.go), transcribed as literal rows.
- iptables: the nat rules ``istio-iptables`` installs, as Istio's docs print them from
  ``iptables-save``; the Service DNAT rules are ours (kube-proxy's job, written out by hand).
- Certificates: RFC 5280 and what istiod's CA issues (empty subject, critical URI SAN, key
  usages digitalSignature + keyEncipherment, EKU serverAuth + clientAuth).
- ``envoy --mode validate`` of a real Envoy 1.40 judges every rendered mode combination.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
from local_helpers import envoy_path

from pytest_meshconform.backends.local import xds
from pytest_meshconform.backends.local.ca import MeshCA
from pytest_meshconform.backends.local.control import Faults, plan_sidecars
from pytest_meshconform.backends.local.iptables import istio_iptables_rules
from pytest_meshconform.backends.local.topology_file import default_topology
from pytest_meshconform.evidence.certs import WorkloadCert, load_pem_chain
from pytest_meshconform.istio import Upstream
from pytest_meshconform.istio.api import MtlsMode, TlsMode, parse_policy
from pytest_meshconform.istio.api.destination_rule import destination_rule
from pytest_meshconform.istio.api.peer_authentication import peer_authentication
from pytest_meshconform.istio.envoy import ROOT_SECRET, WORKLOAD_SECRET

TOPOLOGY = default_topology()
PATHS = xds.SidecarPaths(Path("/run/meshconform/abc123/pods/x/envoy"))
ISTIO_ALL_MTLS_ALPNS = [
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
]
CLIENT_ALPN = ["istio-http/1.1", "istio", "http/1.1"]
TLS_PARAMS = {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"}
# istiod's BuildInboundTLS (pilot/pkg/security/authn/utils/utils.go): SupportedCiphers, TLS
# 1.2..1.3; as in the inbound chains of the real Istio dumps (shared test data).
INBOUND_TLS_PARAMS = {
    **TLS_PARAMS,
    "cipher_suites": [
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
        "AES128-GCM-SHA256",
    ],
}


def plans(*manifests: dict[str, Any], faults: Faults | None = None) -> dict[str, xds.SidecarPlan]:
    policies = [parse_policy(m) for m in manifests]
    return dict(plan_sidecars(TOPOLOGY, policies, "istio-system", faults))


def inbound_chains(plan: xds.SidecarPlan) -> list[dict[str, Any]]:
    (inbound,) = [x for x in xds.listeners(plan, PATHS) if x["name"] == "virtualInbound"]
    chains: list[dict[str, Any]] = inbound["filter_chains"]
    return chains


def chain_summary(plan: xds.SidecarPlan) -> list[tuple[str, dict[str, Any], bool]]:
    """(name, filter_chain_match, terminates TLS) per inbound chain."""
    return [
        (c["name"], c.get("filter_chain_match", {}), "transport_socket" in c)
        for c in inbound_chains(plan)
    ]


def cluster(plan: xds.SidecarPlan, name: str) -> dict[str, Any]:
    (found,) = [c for c in xds.clusters(plan, PATHS) if c["name"] == name]
    return found


# ============================================================================ topology


def test_topology_is_istios_authn_task_layout() -> None:
    assert [(p.workload.key, p.ip, p.workload.has_sidecar) for p in TOPOLOGY.pods] == [
        ("sleep.foo", "10.244.0.10", True),
        ("httpbin.foo", "10.244.0.11", True),
        ("sleep.bar", "10.244.0.12", True),
        ("httpbin.bar", "10.244.0.13", True),
        ("sleep.legacy", "10.244.0.14", False),
        ("httpbin.legacy", "10.244.0.15", False),
    ]
    assert [
        (e.service.fqdn, e.vip, e.service.port, e.service.target_port) for e in TOPOLOGY.services
    ] == [
        ("httpbin.foo.svc.cluster.local", "10.96.0.10", 8000, 8080),
        ("httpbin.foo.svc.cluster.local", "10.96.0.10", 50051, 50051),
        ("httpbin.bar.svc.cluster.local", "10.96.0.11", 8000, 8080),
        ("httpbin.bar.svc.cluster.local", "10.96.0.11", 50051, 50051),
        ("httpbin.legacy.svc.cluster.local", "10.96.0.12", 8000, 8080),
    ]
    httpbin = TOPOLOGY.pod("httpbin", "bar").workload
    assert (httpbin.service_account, dict(httpbin.labels), httpbin.container_ports) == (
        "httpbin",
        {"app": "httpbin"},
        (8080, 50051),
    )


def test_hosts_file_resolves_like_cluster_dns_from_the_pods_namespace() -> None:
    assert TOPOLOGY.hosts_file(TOPOLOGY.pod("sleep", "foo")) == (
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "10.244.0.10\tsleep\n"
        "10.96.0.10\thttpbin.foo.svc.cluster.local httpbin.foo.svc httpbin.foo httpbin\n"
        "10.96.0.11\thttpbin.bar.svc.cluster.local httpbin.bar.svc httpbin.bar\n"
        "10.96.0.12\thttpbin.legacy.svc.cluster.local httpbin.legacy.svc httpbin.legacy\n"
    )
    # The short name `httpbin` is the pod's own namespace's Service.
    assert "httpbin.legacy httpbin\n" in TOPOLOGY.hosts_file(TOPOLOGY.pod("sleep", "legacy"))
    assert TOPOLOGY.resolv_conf(TOPOLOGY.pod("sleep", "bar")) == (
        "nameserver 127.0.0.1\nsearch bar.svc.cluster.local svc.cluster.local cluster.local\n"
    )


def test_unknown_workload_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match=r"no workload nope\.foo .*have: sleep\.foo, httpbin\.foo"):
        TOPOLOGY.pod("nope", "foo")


# ============================================================================ iptables

# Istio's documented `iptables-save -t nat` of an injected pod (ISTIO_* chains), in rule order.
ISTIO_NAT_RULES = [
    "-A PREROUTING -p tcp -j ISTIO_INBOUND",
    "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN",
    # the -d ports in the order the injector passes them (-d 15090,15021,15020)
    "-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN",
    "-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN",
    "-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN",
    "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
    "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
    "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
    "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
    "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
    "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
    "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
    "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT",
    "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN",
    "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
    "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
    "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
    "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
]
SERVICE_DNAT_RULES = [
    "-A OUTPUT -p tcp -j MC_SERVICES",
    "-A MC_SERVICES -d 10.96.0.10/32 -p tcp --dport 8000 -j DNAT --to-destination 10.244.0.11:8080",
    "-A MC_SERVICES -d 10.96.0.10/32 -p tcp --dport 50051 -j DNAT --to-destination"
    " 10.244.0.11:50051",
    "-A MC_SERVICES -d 10.96.0.11/32 -p tcp --dport 8000 -j DNAT --to-destination 10.244.0.13:8080",
    "-A MC_SERVICES -d 10.96.0.11/32 -p tcp --dport 50051 -j DNAT --to-destination"
    " 10.244.0.13:50051",
    "-A MC_SERVICES -d 10.96.0.12/32 -p tcp --dport 8000 -j DNAT --to-destination 10.244.0.15:8080",
]


def test_sidecar_pod_gets_istio_iptables_interception_then_service_dnat() -> None:
    text = istio_iptables_rules(TOPOLOGY.pod("sleep", "foo"), TOPOLOGY)
    lines = text.splitlines()
    assert lines[0] == "*nat"
    assert lines[-1] == "COMMIT"
    assert text.endswith("COMMIT\n")  # iptables-restore wants the final newline
    assert sorted(line for line in lines if line.startswith(":")) == [
        ":ISTIO_INBOUND - [0:0]",
        ":ISTIO_IN_REDIRECT - [0:0]",
        ":ISTIO_OUTPUT - [0:0]",
        ":ISTIO_REDIRECT - [0:0]",
        ":MC_SERVICES - [0:0]",
    ]
    assert [line for line in lines if line.startswith("-A")] == ISTIO_NAT_RULES + SERVICE_DNAT_RULES


def test_sidecar_rules_exclude_the_proxy_id_they_are_given() -> None:
    """The local mesh gives each sidecar its own uid and gid: its pod's rules exclude that one
    where Istio's exclude 1337, and nothing else changes."""
    text = istio_iptables_rules(TOPOLOGY.pod("sleep", "foo"), TOPOLOGY, proxy_id=1337000004)
    rules = [line for line in text.splitlines() if line.startswith("-A")]
    expected = [line.replace("1337", "1337000004") for line in ISTIO_NAT_RULES]
    assert rules == expected + SERVICE_DNAT_RULES


def test_naked_pod_gets_only_service_dnat() -> None:
    text = istio_iptables_rules(TOPOLOGY.pod("sleep", "legacy"), TOPOLOGY)
    assert text == "\n".join(["*nat", ":MC_SERVICES - [0:0]", *SERVICE_DNAT_RULES, "COMMIT", ""])


# ============================================================================ control: inbound


def test_no_policy_is_permissive_everywhere() -> None:
    plan = plans()["httpbin.foo"]
    assert dict(plan.inbound_modes) == {8080: MtlsMode.PERMISSIVE, 50051: MtlsMode.PERMISSIVE}
    assert plan.default_inbound_mode is MtlsMode.PERMISSIVE
    assert sorted(plans()) == ["httpbin.bar", "httpbin.foo", "sleep.bar", "sleep.foo"]


def test_workload_disable_overrides_namespace_strict() -> None:
    found = plans(
        peer_authentication("default", "foo", "STRICT"),
        peer_authentication("httpbin", "foo", "DISABLE", selector={"app": "httpbin"}),
    )
    assert dict(found["httpbin.foo"].inbound_modes) == {
        8080: MtlsMode.DISABLE,
        50051: MtlsMode.DISABLE,
    }
    assert dict(found["sleep.foo"].inbound_modes) == {}
    assert found["sleep.foo"].default_inbound_mode is MtlsMode.STRICT
    assert dict(found["httpbin.bar"].inbound_modes) == {
        8080: MtlsMode.PERMISSIVE,
        50051: MtlsMode.PERMISSIVE,
    }


def test_port_level_mtls_is_keyed_by_container_port() -> None:
    found = plans(
        peer_authentication("default", "istio-system", "STRICT"),
        peer_authentication(
            "httpbin", "bar", None, selector={"app": "httpbin"}, port_level={8080: "DISABLE"}
        ),
    )
    # the port-level DISABLE is 8080's only; the grpc port keeps the mesh-wide STRICT
    assert dict(found["httpbin.bar"].inbound_modes) == {
        8080: MtlsMode.DISABLE,
        50051: MtlsMode.STRICT,
    }
    assert found["httpbin.bar"].default_inbound_mode is MtlsMode.STRICT
    assert dict(found["httpbin.foo"].inbound_modes) == {
        8080: MtlsMode.STRICT,
        50051: MtlsMode.STRICT,
    }


def test_fault_strict_as_permissive_only_touches_strict() -> None:
    found = plans(
        peer_authentication("default", "foo", "STRICT"),
        peer_authentication("default", "bar", "DISABLE"),
        faults=Faults(strict_as_permissive=True),
    )
    assert dict(found["httpbin.foo"].inbound_modes) == {
        8080: MtlsMode.PERMISSIVE,
        50051: MtlsMode.PERMISSIVE,
    }
    assert dict(found["httpbin.bar"].inbound_modes) == {
        8080: MtlsMode.DISABLE,
        50051: MtlsMode.DISABLE,
    }


def test_faults_parse_names_the_known_ones() -> None:
    assert Faults.parse(["no-xfcc", "no-rotation"]) == Faults(no_xfcc=True, no_rotation=True)
    with pytest.raises(ValueError, match="unknown mesh fault 'typo'; known faults: "):
        Faults.parse(["typo"])


# ============================================================================ control: outbound

FOO = "httpbin.foo.svc.cluster.local"
BAR = "httpbin.bar.svc.cluster.local"
LEGACY = "httpbin.legacy.svc.cluster.local"


def outbound(found: dict[str, xds.SidecarPlan], client: str) -> dict[str, Any]:
    return {
        fqdn: (tls.mode, tls.sni, tls.subject_alt_names)
        for (fqdn, port), tls in found[client].outbound.items()
        if port == 8000
    }


def test_auto_mtls_sidecar_endpoints_get_istio_mutual_legacy_gets_plaintext() -> None:
    assert outbound(plans(), "sleep.foo") == {
        FOO: (
            TlsMode.ISTIO_MUTUAL,
            "outbound_.8000_._.httpbin.foo.svc.cluster.local",
            ("spiffe://cluster.local/ns/foo/sa/httpbin",),
        ),
        BAR: (
            TlsMode.ISTIO_MUTUAL,
            "outbound_.8000_._.httpbin.bar.svc.cluster.local",
            ("spiffe://cluster.local/ns/bar/sa/httpbin",),
        ),
        LEGACY: (None, None, ()),
    }


def test_auto_mtls_sends_plaintext_where_the_server_disables_mtls() -> None:
    found = plans(
        peer_authentication("default", "istio-system", "STRICT"),
        peer_authentication("default", "bar", "DISABLE"),
    )
    result = outbound(found, "sleep.foo")
    assert result[FOO][0] is TlsMode.ISTIO_MUTUAL  # STRICT server: still mTLS
    assert result[BAR] == (None, None, ())


def test_auto_mtls_uses_the_mode_of_the_target_port() -> None:
    found = plans(
        peer_authentication(
            "httpbin", "bar", "STRICT", selector={"app": "httpbin"}, port_level={8080: "DISABLE"}
        )
    )
    assert outbound(found, "sleep.foo")[BAR] == (None, None, ())


def test_destination_rule_modes_override_auto_mtls() -> None:
    found = plans(
        destination_rule("to-foo", "bar", FOO, mode="DISABLE"),
        destination_rule("to-legacy", "bar", LEGACY, mode="ISTIO_MUTUAL"),
        destination_rule(
            "to-bar", "bar", BAR, mode="SIMPLE", sni="bar.example", ca_certificates="/certs/ca.pem"
        ),
    )
    bar = found["sleep.bar"].outbound
    assert bar[(FOO, 8000)] == Upstream(
        f"outbound|8000||{FOO}", TlsMode.DISABLE, destination_rule="bar/to-foo"
    )
    assert bar[(LEGACY, 8000)] == Upstream(
        f"outbound|8000||{LEGACY}",
        TlsMode.ISTIO_MUTUAL,
        sni="outbound_.8000_._.httpbin.legacy.svc.cluster.local",
        subject_alt_names=("spiffe://cluster.local/ns/legacy/sa/httpbin",),
        alpn=("istio-http/1.1", "istio", "http/1.1"),
        destination_rule="bar/to-legacy",
    )
    assert bar[(BAR, 8000)] == Upstream(
        f"outbound|8000||{BAR}",
        TlsMode.SIMPLE,
        sni="bar.example",
        ca_certificates="/certs/ca.pem",
        destination_rule="bar/to-bar",
    )
    # Rules in namespace bar do not apply to clients in foo.
    assert outbound(found, "sleep.foo")[FOO][0] is TlsMode.ISTIO_MUTUAL


def test_port_level_settings_replace_the_rule_level_tls() -> None:
    found = plans(
        destination_rule("to-bar", "foo", BAR, mode="ISTIO_MUTUAL", port_level={8000: "DISABLE"}),
        destination_rule("to-foo", "foo", FOO, mode="DISABLE", port_level={9000: "ISTIO_MUTUAL"}),
    )
    assert found["sleep.foo"].outbound[(BAR, 8000)] == Upstream(
        f"outbound|8000||{BAR}", TlsMode.DISABLE, destination_rule="foo/to-bar"
    )
    assert found["sleep.foo"].outbound[(FOO, 8000)] == Upstream(
        f"outbound|8000||{FOO}", TlsMode.DISABLE, destination_rule="foo/to-foo"
    )


def test_mesh_wide_destination_rule_applies_to_every_client() -> None:
    found = plans(destination_rule("all-foo", "istio-system", FOO, mode="DISABLE"))
    assert found["sleep.foo"].outbound[(FOO, 8000)].mode is TlsMode.DISABLE
    assert found["sleep.bar"].outbound[(FOO, 8000)].mode is TlsMode.DISABLE


# ============================================================================ xds: inbound

MTLS_MATCH = {"destination_port": 8080, "transport_protocol": "tls"}


def test_strict_port_has_only_a_tls_chain() -> None:
    plan = plans(peer_authentication("default", "istio-system", "STRICT"))["httpbin.foo"]
    assert chain_summary(plan) == [
        ("0.0.0.0_8080-mtls", {"destination_port": 8080, "transport_protocol": "tls"}, True),
        ("0.0.0.0_50051-mtls", {"destination_port": 50051, "transport_protocol": "tls"}, True),
        ("virtualInbound-mtls", {"transport_protocol": "tls"}, True),
    ]


def test_permissive_port_takes_istio_alpn_tls_and_raw_buffer() -> None:
    plan = plans()["httpbin.foo"]
    assert chain_summary(plan) == [
        (
            "0.0.0.0_8080-mtls",
            {
                "destination_port": 8080,
                "transport_protocol": "tls",
                "application_protocols": ISTIO_ALL_MTLS_ALPNS,
            },
            True,
        ),
        (
            "0.0.0.0_8080-plaintext",
            {"destination_port": 8080, "transport_protocol": "raw_buffer"},
            False,
        ),
        (
            "0.0.0.0_50051-mtls",
            {
                "destination_port": 50051,
                "transport_protocol": "tls",
                "application_protocols": ISTIO_ALL_MTLS_ALPNS,
            },
            True,
        ),
        (
            "0.0.0.0_50051-plaintext",
            {"destination_port": 50051, "transport_protocol": "raw_buffer"},
            False,
        ),
        (
            "virtualInbound-mtls",
            {"transport_protocol": "tls", "application_protocols": ISTIO_ALL_MTLS_ALPNS},
            True,
        ),
        ("virtualInbound-plaintext", {"transport_protocol": "raw_buffer"}, False),
    ]


def test_disable_port_is_plaintext_only() -> None:
    plan = plans(peer_authentication("default", "foo", "DISABLE"))["httpbin.foo"]
    assert chain_summary(plan) == [
        ("0.0.0.0_8080-plaintext", {"destination_port": 8080}, False),
        ("0.0.0.0_50051-plaintext", {"destination_port": 50051}, False),
        ("virtualInbound-plaintext", {}, False),
    ]


def test_inbound_tls_requires_a_client_cert_from_sds() -> None:
    plan = plans(peer_authentication("default", "istio-system", "STRICT"))["httpbin.foo"]
    socket = inbound_chains(plan)[0]["transport_socket"]
    root = "/run/meshconform/abc123/pods/x/envoy/sds"
    assert socket == {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
            ".DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_params": INBOUND_TLS_PARAMS,
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificate_sds_secret_configs": [
                    {
                        "name": "default",
                        "sds_config": {
                            "path_config_source": {
                                "path": f"{root}/default.json",
                                "watched_directory": {"path": root},
                            },
                            "resource_api_version": "V3",
                        },
                    }
                ],
                "validation_context_sds_secret_config": {
                    "name": "ROOTCA",
                    "sds_config": {
                        "path_config_source": {
                            "path": f"{root}/ROOTCA.json",
                            "watched_directory": {"path": root},
                        },
                        "resource_api_version": "V3",
                    },
                },
            },
        },
    }


def test_inbound_http_sets_xfcc_like_istio() -> None:
    plan = plans()["httpbin.foo"]
    for chain in inbound_chains(plan)[:2]:
        hcm = chain["filters"][0]["typed_config"]
        assert hcm["forward_client_cert_details"] == "APPEND_FORWARD"
        assert hcm["set_current_client_cert_details"] == {"subject": True, "dns": True, "uri": True}
        assert hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] == (
            "inbound|8080||"
        )


def test_fault_no_xfcc_leaves_envoys_default_sanitize() -> None:
    plan = plans(faults=Faults(no_xfcc=True))["httpbin.foo"]
    hcm = inbound_chains(plan)[0]["filters"][0]["typed_config"]
    assert "forward_client_cert_details" not in hcm
    assert "set_current_client_cert_details" not in hcm


def test_inbound_cluster_reaches_the_app_from_127_0_0_6() -> None:
    found = cluster(plans()["httpbin.foo"], "inbound|8080||")
    assert found["upstream_bind_config"] == {
        "source_address": {"address": "127.0.0.6", "port_value": 0}
    }
    endpoint = found["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint == {
        "address": {"socket_address": {"address": "10.244.0.11", "port_value": 8080}}
    }


def test_clusters_wait_meshconfigs_connect_timeout_but_tls_to_a_pod() -> None:
    """MeshConfig ``connectTimeout``: 10 s by ``DefaultMeshConfig`` (pkg/config/mesh/mesh.go),
    which istiod puts on the passthrough, inbound and outbound clusters alike
    (``applyDefaultConnectionPool``, cluster_traffic_policy.go; cluster_builder.go). The local
    deviation (docs/istio-model.md): an outbound cluster speaking TLS to a pod keeps 1 s, the
    time its handshake may take before a ClientHello a plaintext app leaves unanswered is a 503."""
    tls_to_a_pod = set()
    rule = destination_rule("to-legacy", "legacy", LEGACY, mode="ISTIO_MUTUAL")
    for name, plan in plans(rule).items():
        for found in xds.clusters(plan, PATHS):
            tls = found["name"].startswith("outbound|") and "transport_socket" in found
            if tls:
                tls_to_a_pod.add(found["name"])
            assert found["connect_timeout"] == ("1s" if tls else "10s"), (name, found["name"])
    assert {FOO, LEGACY} <= {n.split("||")[1] for n in tls_to_a_pod}  # ISTIO_MUTUAL to legacy


# ============================================================================ xds: outbound


def test_outbound_listeners_per_service_vip_are_not_bound() -> None:
    found = {x["name"]: x for x in xds.listeners(plans()["sleep.foo"], PATHS)}
    assert list(found) == [
        "virtualInbound",
        "virtualOutbound",
        "10.96.0.10_8000",
        "10.96.0.10_50051",
        "10.96.0.11_8000",
        "10.96.0.11_50051",
        "10.96.0.12_8000",
    ]
    assert found["virtualOutbound"]["address"]["socket_address"]["port_value"] == 15001
    assert found["virtualInbound"]["address"]["socket_address"]["port_value"] == 15006
    vip = found["10.96.0.11_8000"]
    assert vip["bind_to_port"] is False
    assert vip["address"] == {"socket_address": {"address": "10.96.0.11", "port_value": 8000}}
    hcm = vip["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] == (
        "outbound|8000||httpbin.bar.svc.cluster.local"
    )
    assert "forward_client_cert_details" not in hcm  # SANITIZE: an app's XFCC never leaves


def test_istio_mutual_cluster_speaks_istio_tls() -> None:
    found = cluster(plans()["sleep.foo"], "outbound|8000||httpbin.bar.svc.cluster.local")
    endpoint = found["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint == {
        "address": {"socket_address": {"address": "10.244.0.13", "port_value": 8080}}
    }
    tls = found["transport_socket"]["typed_config"]
    assert tls["sni"] == "outbound_.8000_._.httpbin.bar.svc.cluster.local"
    common = tls["common_tls_context"]
    assert common["alpn_protocols"] == CLIENT_ALPN
    assert common["tls_params"] == TLS_PARAMS
    assert [s["name"] for s in common["tls_certificate_sds_secret_configs"]] == ["default"]
    validation = common["combined_validation_context"]
    assert validation["default_validation_context"] == {
        "match_typed_subject_alt_names": [
            {"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/bar/sa/httpbin"}}
        ]
    }
    assert validation["validation_context_sds_secret_config"]["name"] == "ROOTCA"


def test_plaintext_clusters_have_no_transport_socket() -> None:
    found = plans(destination_rule("to-foo", "foo", FOO, mode="DISABLE"))["sleep.foo"]
    assert "transport_socket" not in cluster(found, f"outbound|8000||{LEGACY}")  # auto: plaintext
    assert "transport_socket" not in cluster(found, f"outbound|8000||{FOO}")  # DR DISABLE


def test_simple_and_mutual_use_the_rules_files() -> None:
    found = plans(
        destination_rule(
            "to-bar",
            "foo",
            BAR,
            mode="SIMPLE",
            sni="bar.example",
            subject_alt_names=["bar.example"],
            ca_certificates="/certs/ca.pem",
        ),
        destination_rule(
            "to-legacy",
            "foo",
            LEGACY,
            mode="MUTUAL",
            client_certificate="/certs/c.pem",
            private_key="/certs/k.pem",
            ca_certificates="/certs/ca.pem",
        ),
    )["sleep.foo"]
    simple = cluster(found, f"outbound|8000||{BAR}")["transport_socket"]["typed_config"]
    assert simple == {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": "bar.example",
        "common_tls_context": {
            "tls_params": TLS_PARAMS,
            "validation_context": {
                "trusted_ca": {"filename": "/certs/ca.pem"},
                "match_typed_subject_alt_names": [
                    {"san_type": "DNS", "matcher": {"exact": "bar.example"}}
                ],
            },
        },
    }
    mutual = cluster(found, f"outbound|8000||{LEGACY}")["transport_socket"]["typed_config"]
    assert mutual["common_tls_context"]["tls_certificates"] == [
        {
            "certificate_chain": {"filename": "/certs/c.pem"},
            "private_key": {"filename": "/certs/k.pem"},
        }
    ]
    assert "sni" not in mutual


def pool_rule(namespace: str, host: str, rule_level: int | None, port_level: int | None) -> Any:
    """A DestinationRule with connectionPool.http.maxRequestsPerConnection (no builder has it)."""
    policy: dict[str, Any] = {}
    if rule_level is not None:
        policy["connectionPool"] = {"http": {"maxRequestsPerConnection": rule_level}}
    if port_level is not None:
        policy["portLevelSettings"] = [
            {
                "port": {"number": 8000},
                "connectionPool": {"http": {"maxRequestsPerConnection": port_level}},
            }
        ]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": f"pool-{namespace}", "namespace": namespace},
        "spec": {"host": host, "trafficPolicy": policy},
    }


def test_max_requests_per_connection_limits_the_upstream_pool() -> None:
    found = plans(pool_rule("foo", BAR, 1, None), pool_rule("bar", FOO, 1, 3))
    assert found["sleep.foo"].outbound[(BAR, 8000)].max_requests_per_connection == 1
    assert found["sleep.bar"].outbound[(FOO, 8000)].max_requests_per_connection == 3  # port wins
    assert found["sleep.foo"].outbound[(FOO, 8000)].max_requests_per_connection is None
    # The TLS decision is untouched: still auto mTLS.
    assert found["sleep.foo"].outbound[(BAR, 8000)].mode is TlsMode.ISTIO_MUTUAL
    rendered = cluster(found["sleep.foo"], f"outbound|8000||{BAR}")
    assert rendered["typed_extension_protocol_options"] == {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": {"max_requests_per_connection": 1},
            "explicit_http_config": {"http_protocol_options": {}},
        }
    }
    assert "typed_extension_protocol_options" not in cluster(
        found["sleep.foo"], f"outbound|8000||{FOO}"
    )


def test_port_level_connection_pool_replaces_the_rules_pool() -> None:
    """Istio's MergeTrafficPolicy: a port's connectionPool replaces the rule's, it does not
    inherit the rule's maxRequestsPerConnection."""
    rule = pool_rule("bar", FOO, 1, None)
    rule["spec"]["trafficPolicy"]["portLevelSettings"] = [
        {"port": {"number": 8000}, "connectionPool": {"tcp": {"maxConnections": 10}}}
    ]
    found = plans(rule)
    assert found["sleep.bar"].outbound[(FOO, 8000)].max_requests_per_connection is None


def test_bootstrap_points_envoy_at_its_files_and_admin_socket() -> None:
    boot = xds.bootstrap(TOPOLOGY.pod("httpbin", "bar"), PATHS)
    root = "/run/meshconform/abc123/pods/x/envoy"
    assert boot == {
        "node": {
            "id": "sidecar~10.244.0.13~httpbin.bar~bar.svc.cluster.local",
            "cluster": "httpbin.bar",
            "metadata": {"NAMESPACE": "bar", "SERVICE_ACCOUNT": "httpbin"},
        },
        "admin": {"address": {"pipe": {"path": f"{root}/admin.sock", "mode": 0o600}}},
        # Istio's envoy_bootstrap.json: no default tags, only these stats.
        "stats_config": {
            "use_all_default_tags": False,
            "stats_matcher": {
                "inclusion_list": {
                    "patterns": [
                        {"prefix": "reporter="},
                        {"prefix": "cluster_manager"},
                        {"prefix": "listener_manager"},
                        {"prefix": "server"},
                        {"prefix": "cluster.xds-grpc"},
                        {"prefix": "wasm"},
                        {"suffix": "rbac.allowed"},
                        {"suffix": "rbac.denied"},
                        {"suffix": "shadow_allowed"},
                        {"suffix": "shadow_denied"},
                        {"prefix": "component"},
                    ]
                }
            },
        },
        # Istio's limit (pkg/bootstrap/config.go: overload.global_downstream_max_connections
        # "2147483647"), as the overload manager monitor of its connectionSettings golden file.
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors"
                        ".downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": 2147483647,
                    },
                }
            ]
        },
        "dynamic_resources": {
            "lds_config": {
                "path_config_source": {
                    "path": f"{root}/lds/lds.json",
                    "watched_directory": {"path": f"{root}/lds"},
                },
                "resource_api_version": "V3",
            },
            "cds_config": {
                "path_config_source": {
                    "path": f"{root}/cds/cds.json",
                    "watched_directory": {"path": f"{root}/cds"},
                },
                "resource_api_version": "V3",
            },
        },
    }


def test_secret_and_discovery_documents() -> None:
    assert xds.secret_resources("ROOTCA", root_pem="PEM") == {
        "resources": [
            {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                "name": "ROOTCA",
                "validation_context": {"trusted_ca": {"inline_string": "PEM"}},
            }
        ]
    }
    assert xds.secret_resources("default", cert_pem="C", key_pem="K")["resources"][0][
        "tls_certificate"
    ] == {"certificate_chain": {"inline_string": "C"}, "private_key": {"inline_string": "K"}}
    assert xds.discovery_file("7", []) == {"version_info": "7", "resources": []}


# ============================================================================ CA


@pytest.fixture(scope="module")
def ca() -> MeshCA:
    return MeshCA("cluster.local")


def test_root_is_an_ecdsa_p256_ca_named_after_the_trust_domain(ca: MeshCA) -> None:
    (root,) = load_pem_chain(ca.root_pem)
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "cluster.local"
    )
    assert root.subject == root.issuer
    key = root.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    constraints = root.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS)
    assert constraints.critical and constraints.value.ca
    usage = root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign


def test_workload_cert_is_istio_shaped(ca: MeshCA) -> None:
    now = dt.datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    issued = ca.issue_workload("bar", "sleep", dt.timedelta(hours=24), now=now)
    cert = WorkloadCert.from_pem(issued.cert_pem + ca.root_pem)
    assert str(cert.spiffe_id) == "spiffe://cluster.local/ns/bar/sa/sleep"
    assert cert.not_before == dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert cert.not_after == dt.datetime(2030, 1, 3, 3, 4, 5, tzinfo=dt.UTC)
    assert int(cert.serial.replace(":", ""), 16) == issued.serial
    leaf = cert.leaf
    assert leaf.subject == x509.Name([])
    san = leaf.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    assert san.critical  # RFC 5280 4.2.1.6: an empty subject makes the SAN critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/bar/sa/sleep"
    ]
    assert san.value.get_values_for_type(x509.DNSName) == []
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert (usage.value.digital_signature, usage.value.key_encipherment) == (True, True)
    assert (usage.value.key_cert_sign, usage.value.crl_sign) == (False, False)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify([ca.root_cert], at=now + dt.timedelta(hours=1))
    # What Istio's agent generates for its CSR: RSA, WORKLOAD_RSA_KEY_SIZE=2048
    # (pilot/cmd/pilot-agent/options/options.go; GenCSR, security/pkg/pki/util/generate_csr.go).
    key = leaf.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    private = serialization.load_pem_private_key(issued.key_pem.encode(), password=None)
    assert private.public_key().public_numbers() == key.public_numbers()


def test_key_pool_hands_out_fresh_keys_and_stops() -> None:
    from pytest_meshconform.backends.local.ca import KeyPool
    from pytest_meshconform.istio.tls import WorkloadKey

    pool = KeyPool(WorkloadKey("EC", 256), size=2)
    try:
        keys = [pool.take() for _ in range(5)]  # more than the pool holds: made on the spot
    finally:
        pool.close()
    assert all(isinstance(k, ec.EllipticCurvePrivateKey) for k in keys)
    assert len({k.private_numbers().private_value for k in keys}) == 5  # type: ignore[union-attr]
    assert not pool._thread.is_alive()


def test_certs_of_another_mesh_do_not_verify(ca: MeshCA) -> None:
    from pytest_meshconform.evidence.certs import CertError

    other = MeshCA("cluster.local")
    issued = other.issue_workload("foo", "httpbin", dt.timedelta(hours=1))
    cert = WorkloadCert.from_pem(issued.cert_pem)
    with pytest.raises(CertError, match="wrong signature"):
        cert.verify([ca.root_cert], at=issued.not_before + dt.timedelta(minutes=1))


def test_serials_are_random_and_ttl_must_be_positive(ca: MeshCA) -> None:
    serials = {ca.issue_workload("foo", "sleep", dt.timedelta(seconds=8)).serial for _ in range(5)}
    assert len(serials) == 5
    with pytest.raises(ValueError, match="certificate TTL must be positive"):
        ca.issue_workload("foo", "sleep", dt.timedelta(0))


# ============================================================================ real Envoy validates


def _static_bootstrap(plan: xds.SidecarPlan, paths: xds.SidecarPaths) -> dict[str, Any]:
    """The rendered listeners and clusters as static resources (static ones carry no @type)."""
    boot = xds.bootstrap(plan.pod, paths)
    del boot["dynamic_resources"]

    def untyped(resources: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "@type"} for r in resources]

    boot["static_resources"] = {
        "listeners": untyped(xds.listeners(plan, paths)),
        "clusters": untyped(xds.clusters(plan, paths)),
    }
    return boot


VALIDATE_CASES = {
    "permissive, auto mTLS": [],
    "strict, DR DISABLE + SIMPLE + MUTUAL": [
        peer_authentication("default", "istio-system", "STRICT"),
        destination_rule("to-foo", "foo", FOO, mode="DISABLE"),
        destination_rule(
            "to-bar",
            "foo",
            BAR,
            mode="SIMPLE",
            sni="bar.example",
            subject_alt_names=["spiffe://x/y"],
            ca_certificates="{dir}/ca.pem",
        ),
        destination_rule(
            "to-legacy",
            "foo",
            LEGACY,
            mode="MUTUAL",
            client_certificate="{dir}/c.pem",
            private_key="{dir}/k.pem",
            ca_certificates="{dir}/ca.pem",
        ),
    ],
    "disable, DR ISTIO_MUTUAL to legacy": [
        peer_authentication("default", "istio-system", "DISABLE"),
        destination_rule("to-legacy", "foo", LEGACY, mode="ISTIO_MUTUAL"),
    ],
    "port-level mix": [
        peer_authentication("default", "foo", "STRICT"),
        peer_authentication(
            "httpbin",
            "foo",
            "PERMISSIVE",
            selector={"app": "httpbin"},
            port_level={8080: "DISABLE"},
        ),
        destination_rule("to-bar", "foo", BAR, mode="DISABLE", port_level={8000: "ISTIO_MUTUAL"}),
        pool_rule("foo", FOO, 1, None),
    ],
}


def test_envoy_accepts_every_rendered_mode_combination(tmp_path: Path, ca: MeshCA) -> None:
    envoy = envoy_path()
    issued = ca.issue_workload("foo", "sleep", dt.timedelta(hours=1))
    (tmp_path / "ca.pem").write_text(ca.root_pem)
    (tmp_path / "c.pem").write_text(issued.cert_pem)
    (tmp_path / "k.pem").write_text(issued.key_pem)
    jobs = []
    for index, (label, manifests) in enumerate(VALIDATE_CASES.items()):
        text = json.dumps(manifests).replace("{dir}", str(tmp_path))
        for key, plan in plans(*json.loads(text)).items():
            if key not in ("sleep.foo", "httpbin.foo"):
                continue
            paths = xds.SidecarPaths(tmp_path / f"case{index}" / key)
            paths.sds_dir.mkdir(parents=True)
            paths.sds(ROOT_SECRET).write_text(
                json.dumps(xds.secret_resources(ROOT_SECRET, root_pem=ca.root_pem))
            )
            paths.sds(WORKLOAD_SECRET).write_text(
                json.dumps(
                    xds.secret_resources(
                        WORKLOAD_SECRET, cert_pem=issued.cert_pem, key_pem=issued.key_pem
                    )
                )
            )
            paths.bootstrap.write_text(json.dumps(_static_bootstrap(plan, paths)))
            jobs.append((f"{label} / {key}", paths.bootstrap))

    def validate(job: tuple[str, Path]) -> tuple[str, int, str]:
        label, bootstrap = job
        proc = subprocess.run(
            [str(envoy), "--mode", "validate", "-c", str(bootstrap), "--log-level", "warning"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return label, proc.returncode, (proc.stdout + proc.stderr)[-1500:]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(validate, jobs))
    assert len(results) == 8
    failed = [f"{label}: {output}" for label, code, output in results if code != 0]
    assert not failed, "\n".join(failed)
    assert all("OK" in output for _, _, output in results)


def test_envoy_validation_catches_a_broken_config(tmp_path: Path) -> None:
    """The trick above proves something: a wrong field fails validation, naming it."""
    envoy = envoy_path()
    plan = plans()["sleep.foo"]
    paths = xds.SidecarPaths(tmp_path)
    paths.sds_dir.mkdir()
    for name in (ROOT_SECRET, WORKLOAD_SECRET):
        paths.sds(name).write_text("{}")
    boot = _static_bootstrap(plan, paths)
    boot["static_resources"]["clusters"][0]["lb_policy"] = "NOT_A_POLICY"
    paths.bootstrap.write_text(json.dumps(boot))
    proc = subprocess.run(
        [str(envoy), "--mode", "validate", "-c", str(paths.bootstrap)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "NOT_A_POLICY" in proc.stdout + proc.stderr


def _envoy_start_log(envoy: Path, bootstrap: dict[str, Any], directory: Path) -> str:
    """Run a real Envoy (admin on a Unix socket, no listener: no network) until its main loop
    starts, then stop it by its PID; its info-level log."""
    config = directory / "bootstrap.json"
    config.write_text(json.dumps(bootstrap))
    proc = subprocess.Popen(
        [
            *(str(envoy), "-c", str(config), "--disable-hot-restart", "--concurrency", "1"),
            *("--log-level", "info", "--base-id-path", str(directory / "base-id")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "starting main dispatch loop" in line:
                break
    finally:
        proc.kill()
        proc.wait(timeout=30)
    log = "".join(lines)
    assert "starting main dispatch loop" in log, log[-2000:]
    return log


def test_istios_connection_limit_silences_envoys_start_up_warning(tmp_path: Path) -> None:
    """Envoy warns at start-up when no global downstream connection limit is configured; the
    rendered bootstrap carries Istio's limit, and the warning is gone. Both runs are real."""
    envoy = envoy_path()
    boot = xds.bootstrap(TOPOLOGY.pod("httpbin", "bar"), PATHS)
    boot["admin"] = {"address": {"pipe": {"path": str(tmp_path / "admin.sock")}}}
    del boot["dynamic_resources"]  # no files to watch: only the server's own start-up
    (tmp_path / "with").mkdir()
    (tmp_path / "without").mkdir()
    with_limit = _envoy_start_log(envoy, boot, tmp_path / "with")
    del boot["overload_manager"]
    without = _envoy_start_log(envoy, boot, tmp_path / "without")
    warning = "no configured limit to the number of allowed active downstream connections"
    assert warning in without
    assert warning not in with_limit


def test_a_log_window_drops_lines_stamped_before_it() -> None:
    """Envoy flushes logs late: the lines of a request that started before a test's window may
    land after its file offsets were taken; their time stamps keep them out."""
    from pytest_meshconform.backends.local.logs import lines_since

    at = dt.datetime(2026, 12, 3, 6, 29, 51, 250000, tzinfo=dt.UTC).timestamp()
    access = (
        '[2026-12-03T06:29:51.240Z] "GET /status/201 HTTP/1.1" 201 - 0 0 1 1\n'
        '[2026-12-03T06:29:51.275Z] "GET /status/202 HTTP/1.1" 202 - 0 0 1 0\n'
    )
    assert (
        lines_since(access, at)
        == '[2026-12-03T06:29:51.275Z] "GET /status/202 HTTP/1.1" 202 - 0 0 1 0\n'
    )
    local = dt.datetime(2026, 12, 3, 6, 29, 51, 300000).timestamp()  # Envoy's own log: local time
    envoy = (
        "[2026-12-03 06:29:51.100][7][warning][config] before\n"
        "  a continuation of it\n"
        "[2026-12-03 06:29:51.300][7][warning][config] in the window\n"
        "  and its continuation\n"
    )
    assert lines_since(envoy, local) == (
        "[2026-12-03 06:29:51.300][7][warning][config] in the window\n  and its continuation\n"
    )
    assert lines_since("an unstamped app line\n", at) == "an unstamped app line\n"
