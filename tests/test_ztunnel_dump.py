"""The ztunnel config_dump reader (``istio/ztunnel_dump.py``) against the two real ztunnel dumps
in ``../shared/testdata/istio-dumps/ztunnel/`` (provenance in its README: istio/istio's ambient
integration test output, ztunnel 1.23.0-alpha, and kiali's test data, ztunnel 1.24.0; read in
place, skipped when absent) and against ztunnel's own policy example.

Every expected fact below was read off the dumps with ``jq`` / ``openssl x509`` (the commands
are in the comments), never with the code under test. Neither dump holds a policy: the policy
shape comes from ztunnel's ``examples/localhost.yaml`` (istio/ztunnel 62d826530e5c), transcribed
as JSON, and from serde's derives in ``src/rbac.rs`` (``StringMatch`` externally tagged,
``IpNet`` as text).
"""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import TESTDATA

from pytest_meshconform.istio.ztunnel import (
    Action,
    Address,
    Connection,
    Match,
    Scope,
    ServiceAccountMatch,
    StringKind,
    StringMatch,
    ZtunnelAuthorization,
    ztunnel_admits,
)
from pytest_meshconform.istio.ztunnel_dump import (
    ZtunnelDumpError,
    parse_ztunnel_dump,
    policy_differences,
    read_ztunnel_policy,
)

DUMPS = TESTDATA / "istio-dumps" / "ztunnel"
ISTIO_DUMP = DUMPS / "istio__ztunnel-istioct_all_output.json"
KIALI_DUMP = DUMPS / "kiali__ztunnel-config.json"

needs_dumps = pytest.mark.skipif(not DUMPS.is_dir(), reason=f"{DUMPS} is absent")


def _read(path: Path) -> bytes:
    return path.read_bytes()


@needs_dumps
def test_the_istio_integration_dump_reads_whole() -> None:
    dump = parse_ztunnel_dump(_read(ISTIO_DUMP))
    # jq -r '.version.gitTag, (.workloads|length), (.services|length), (.policies|length),
    #        (.certificates|length)'
    assert dump.version == "1.23.0-alpha.0-31-g16885a2"
    assert (len(dump.workloads), len(dump.services), len(dump.policies)) == (97, 56, 0)
    assert len(dump.certificates) == 24
    # jq '.workloads|map(select(.protocol=="HBONE"))|length' -> 48 of 97
    assert sum(w.protocol == "HBONE" for w in dump.workloads) == 48
    # jq '.certificates|map(.state)|unique' -> ["Available"]
    assert {c.state for c in dump.certificates} == {"Available"}
    assert all(c.available for c in dump.certificates)
    # jq -c '.config|{clusterDomain,inboundAddr,inboundPlaintextAddr,outboundAddr,proxyMode,
    #        secretTtl}'
    config = dump.config
    assert config.cluster_domain == "cluster.local"
    assert (config.inbound_addr, config.inbound_plaintext_addr, config.outbound_addr) == (
        "[::]:15008",
        "[::]:15006",
        "[::]:15001",
    )
    assert (config.proxy_mode, config.secret_ttl_seconds) == ("Shared", 300)


@needs_dumps
def test_a_workload_its_identity_and_the_certificate_ztunnel_holds_for_it() -> None:
    dump = parse_ztunnel_dump(_read(ISTIO_DUMP))
    # jq -c '.workloads[0]'
    workload = dump.workload_at("10.244.0.81")
    assert workload is not None
    assert workload.name == "captured-v1-9f9c4dccf-dnffv"
    assert workload.uid == "Kubernetes//Pod/echo-1-43780/captured-v1-9f9c4dccf-dnffv"
    assert (workload.namespace, workload.service_account) == ("echo-1-43780", "captured")
    assert (workload.protocol, workload.node, workload.status) == (
        "HBONE",
        "istio-testing-control-plane",
        "Healthy",
    )
    assert workload.waypoint is None
    assert workload.identity == "spiffe://cluster.local/ns/echo-1-43780/sa/captured"

    certificate = dump.certificate_for(workload.identity)
    assert certificate is not None
    # jq '.certificates[]|select(.identity|endswith("echo-1-43780/sa/captured"))|.certChain|
    #     length' -> 3 (leaf, intermediate, root: ztunnel 1.23 dumps no separate rootCerts)
    assert len(certificate.chain) == 3 and certificate.roots == ()
    leaf = certificate.chain[0]
    assert leaf.serial == 333143474366827524676565371049179000800
    assert leaf.valid_from == datetime(2024, 9, 9, 22, 39, 46, tzinfo=UTC)
    assert leaf.expiration == datetime(2024, 9, 9, 22, 46, 46, tzinfo=UTC)
    # ... | .certChain[0].pem | base64 -d | openssl x509 -noout -serial -ext subjectAltName
    #   serial=FAA1196C1EAC43F079125E3E472AAFE0, URI:spiffe://cluster.local/ns/echo-1-43780/sa/captured
    svid = certificate.workload_cert()
    assert str(svid.spiffe_id) == "spiffe://cluster.local/ns/echo-1-43780/sa/captured"
    assert svid.serial == "faa1196c1eac43f079125e3e472aafe0"
    assert svid.not_after == datetime(2024, 9, 9, 22, 46, 46, tzinfo=UTC)


@needs_dumps
def test_waypoints_of_workloads_and_services() -> None:
    dump = parse_ztunnel_dump(_read(ISTIO_DUMP))
    # jq '.workloads|map(select(.waypoint))|length' -> 12; one of them:
    with_waypoint = [w for w in dump.workloads if w.waypoint is not None]
    assert len(with_waypoint) == 12
    workload = next(w for w in dump.workloads if "10.244.0.78" in w.ips)
    assert workload.waypoint == "echo-1-43780/waypoint.echo-1-43780.svc.cluster.local"
    # jq -c '.services[]|select(.name=="service-addressed-waypoint")' (the first of them)
    service = next(
        s
        for s in dump.services
        if s.hostname == "service-addressed-waypoint.echo-1-43780.svc.cluster.local"
    )
    assert service.vips == ("10.96.11.160",)
    assert service.ports[80] == 18080 and service.ports[9091] == 16060
    assert service.waypoint == "echo-1-43780/waypoint.echo-1-43780.svc.cluster.local"
    # jq -c '.services[]|select(.name=="captured" and .namespace=="echo-1-43780")|.endpoints|
    #        map(.workloadUid)'
    captured = next(
        s for s in dump.services if (s.name, s.namespace) == ("captured", "echo-1-43780")
    )
    assert sorted(captured.endpoints) == [
        "Kubernetes//Pod/echo-1-43780/captured-v1-9f9c4dccf-dnffv",
        "Kubernetes//Pod/echo-1-43780/captured-v2-74f79b7dc9-rrdh4",
    ]


@needs_dumps
def test_the_kiali_bookinfo_dump_reads_whole() -> None:
    dump = parse_ztunnel_dump(_read(KIALI_DUMP))
    # jq -r '.version.gitTag, (.workloads|length), (.workloads|map(select(.protocol=="HBONE"))|
    #        length), (.services|length), (.policies|length), (.certificates|length)'
    assert dump.version == "1.24.0-2-g4c7cdf1"
    assert len(dump.workloads) == 48
    assert sum(w.protocol == "HBONE" for w in dump.workloads) == 18
    assert (len(dump.services), len(dump.policies), len(dump.certificates)) == (39, 0, 0)
    assert dump.config.secret_ttl_seconds == 86400  # .config.secretTtl.secs
    # jq -c '.workloads[]|select(.name|startswith("productpage"))'
    productpage = dump.workload_at("10.244.1.20")
    assert productpage is not None
    assert productpage.name == "productpage-v1-f47f868c8-vlj4p"
    assert productpage.identity == "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage"
    assert productpage.protocol == "HBONE" and productpage.node == "ci-worker"
    # the waypoint itself and the gateway are not enrolled: protocol TCP
    assert dump.workload_at("10.244.1.23") is not None
    assert dump.workload_at("10.244.1.23").protocol == "TCP"  # type: ignore[union-attr]
    # jq -c '.services[]|select(.name=="productpage")|{vips,ports,waypoint:.waypoint.destination}'
    service = next(s for s in dump.services if s.hostname.startswith("productpage.bookinfo."))
    assert service.vips == ("10.96.209.124",)
    assert dict(service.ports) == {9080: 9080}
    assert service.waypoint == "bookinfo/waypoint.bookinfo.svc.cluster.local"
    assert service.endpoints == ("cluster-default//Pod/bookinfo/productpage-v1-f47f868c8-vlj4p",)
    # a headless Service: no VIP, target ports 0 (jq: keycloak-headless)
    headless = next(s for s in dump.services if s.name == "keycloak-headless")
    assert headless.vips == () and dict(headless.ports) == {8080: 0, 8443: 0}


# ztunnel examples/localhost.yaml (62d826530e5c), its `policies:` entry as JSON
ZTUNNEL_EXAMPLE_POLICY: dict[str, Any] = {
    "action": "Allow",
    "rules": [[[{"notDestinationPorts": [9999]}]]],
    "name": "deny-9999",
    "namespace": "default",
    "scope": "Namespace",
    "dryRun": False,
}


def test_ztunnels_example_policy_reads_as_the_model_resource() -> None:
    policy = read_ztunnel_policy(ZTUNNEL_EXAMPLE_POLICY)
    assert policy == ZtunnelAuthorization(
        name="deny-9999",
        namespace="default",
        scope=Scope.NAMESPACE,
        action=Action.ALLOW,
        groups=(((Match(not_destination_ports=(9999,)),),),),
    )
    assert policy.key == "default/deny-9999"
    # ztunnel's verdict on it: every port but 9999 is allowed
    allowed = Connection(port=80, source_ip="10.0.0.1", destination_ip="10.0.0.2")
    denied = Connection(port=9999, source_ip="10.0.0.1", destination_ip="10.0.0.2")
    assert ztunnel_admits([policy], allowed) and not ztunnel_admits([policy], denied)


def test_every_match_kind_as_serde_writes_it() -> None:
    raw = {
        "name": "all",
        "namespace": "payments",
        "scope": "WorkloadSelector",
        "action": "Deny",
        "rules": [
            [
                [
                    {
                        "namespaces": [{"Exact": "checkout"}],
                        "notNamespaces": [{"Prefix": "kube-"}],
                        "principals": [{"Suffix": "/sa/nightly"}, {"Presence": []}],
                        "serviceAccounts": [{"namespace": "batch", "serviceAccount": "jobs"}],
                        "sourceIps": ["10.0.0.0/8"],
                        "notDestinationIps": ["10.1.2.3"],
                        "destinationPorts": [5432],
                    }
                ]
            ]
        ],
        "dryRun": True,
    }
    policy = read_ztunnel_policy(raw)
    (((match,),),) = policy.groups
    assert policy.scope is Scope.WORKLOAD_SELECTOR and policy.action is Action.DENY
    assert policy.dry_run
    assert match.namespaces == (StringMatch(StringKind.EXACT, "checkout"),)
    assert match.not_namespaces == (StringMatch(StringKind.PREFIX, "kube-"),)
    assert match.principals == (
        StringMatch(StringKind.SUFFIX, "/sa/nightly"),
        StringMatch(StringKind.PRESENCE),
    )
    assert match.service_accounts == (ServiceAccountMatch("batch", "jobs"),)
    assert match.source_ips == (Address(ipaddress.ip_address("10.0.0.0"), 8),)
    assert match.not_destination_ips == (Address(ipaddress.ip_address("10.1.2.3"), 32),)
    assert match.destination_ports == (5432,)


def test_policies_ztunnel_checks_for_a_workload_follow_assert_rbac() -> None:
    """``ProxyState::assert_rbac``: the destination's namespace's policies, every GLOBAL one,
    and the workload's own list (WORKLOAD_SELECTOR policies are reached only through it)."""
    document = {
        "workloads": [
            {
                "uid": "u1",
                "name": "ledger-0",
                "namespace": "payments",
                "serviceAccount": "ledger",
                "workloadIps": ["10.0.0.9"],
                "protocol": "HBONE",
                "authorizationPolicies": ["payments/only-checkout"],
            }
        ],
        "policies": [
            {**ZTUNNEL_EXAMPLE_POLICY, "name": "ns", "namespace": "payments"},
            {**ZTUNNEL_EXAMPLE_POLICY, "name": "other-ns", "namespace": "shop"},
            {
                **ZTUNNEL_EXAMPLE_POLICY,
                "name": "mesh",
                "namespace": "istio-system",
                "scope": "Global",
            },
            {
                **ZTUNNEL_EXAMPLE_POLICY,
                "name": "only-checkout",
                "namespace": "payments",
                "scope": "WorkloadSelector",
            },
            {
                **ZTUNNEL_EXAMPLE_POLICY,
                "name": "unlisted",
                "namespace": "payments",
                "scope": "WorkloadSelector",
            },
        ],
    }
    dump = parse_ztunnel_dump(json.dumps(document))
    (workload,) = dump.workloads
    assert dump.policies_for(workload) == (
        "payments/ns",
        "istio-system/mesh",
        "payments/only-checkout",
    )
    assert workload.trust_domain == "cluster.local"  # absent: ztunnel's default


def test_policy_differences_name_each_policy() -> None:
    held = parse_ztunnel_dump({"workloads": [], "policies": [ZTUNNEL_EXAMPLE_POLICY]})
    same = read_ztunnel_policy(ZTUNNEL_EXAMPLE_POLICY)
    assert policy_differences(held, [same]) == ()
    other = read_ztunnel_policy({**ZTUNNEL_EXAMPLE_POLICY, "action": "Deny"})
    (line,) = policy_differences(held, [other])
    assert line.startswith("default/deny-9999: ztunnel holds {") and "'action': 'DENY'" in line
    missing = read_ztunnel_policy({**ZTUNNEL_EXAMPLE_POLICY, "name": "strict"})
    assert policy_differences(held, [missing]) == (
        "default/strict: expected, ztunnel does not hold it",
        "default/deny-9999: ztunnel holds it, not expected",
    )


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ({"configs": []}, "not a ztunnel config_dump"),
        ({"workloads": {}}, "workloads: expected a list"),
        ({"workloads": [{"workloadIps": ["nope"]}]}, "workloads[0].workloadIps[0]"),
        (
            {
                "services": [],
                "workloads": [],
                "policies": [
                    {"name": "x", "scope": "Global", "action": "Allow", "rules": [], "bogus": 1}
                ],
            },
            "unknown fields ['bogus']",
        ),
        (
            {"workloads": [], "policies": [{**ZTUNNEL_EXAMPLE_POLICY, "scope": "Cluster"}]},
            "policies[0].scope",
        ),
        (
            {
                "workloads": [],
                "policies": [{**ZTUNNEL_EXAMPLE_POLICY, "rules": [[[{"ports": [1]}]]]}],
            },
            "policies[0].rules[0][0][0].ports",
        ),
        (
            {
                "workloads": [],
                "policies": [
                    {**ZTUNNEL_EXAMPLE_POLICY, "rules": [[[{"principals": [{"Regex": "x"}]}]]]}
                ],
            },
            "unknown string match",
        ),
        (
            {
                "certificates": [
                    {
                        "identity": "i",
                        "state": "Available",
                        "certChain": [
                            {
                                "pem": "%%",
                                "serialNumber": "1",
                                "validFrom": "2024-01-01T00:00:00Z",
                                "expirationTime": "2024-01-01T00:00:00Z",
                            }
                        ],
                    }
                ]
            },
            "certChain[0].pem",
        ),
        ({"services": [{"ports": {"80": 70000}}], "workloads": []}, "services[0].ports"),
    ],
)
def test_a_malformed_dump_names_the_field(document: object, message: str) -> None:
    with pytest.raises(ZtunnelDumpError, match=None) as info:
        parse_ztunnel_dump(document)  # type: ignore[arg-type]
    assert message in str(info.value)
