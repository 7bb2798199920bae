"""The kube reader of a sidecar's RBAC filters (kube/authzstate.py), held against a real dump.

``istio__authz-configdump.json`` (shared test data; istioctl's authz test dump, a sidecar that
a real istiod configured with AuthorizationPolicy ``httpbin`` in ``default``) is the evidence:
its ``virtualInbound`` listener has a blackhole chain, two catch-all HTTP chains, three TCP
passthrough chains and two chains for port 80, and every one but the blackhole carries istiod's
RBAC filter; the facts below are read off the file.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import TESTDATA

from pytest_meshconform.backends.kube.authzstate import (
    ChainAuthz,
    SeenRbac,
    authz_mismatches,
    parse_inbound_authz,
)
from pytest_meshconform.backends.kube.topology import RunNamespaces, localize_manifest
from pytest_meshconform.istio import authorization_for
from pytest_meshconform.istio.api import parse_policy
from pytest_meshconform.mesh import Workload

AUTHZ_DUMP = TESTDATA / "istio-dumps" / "istio__authz-configdump.json"
POLICY = "ns[default]-policy[httpbin]-rule[0]"
HTTPBIN = Workload(
    name="httpbin",
    namespace="default",
    app="httpbin",
    service_account="httpbin",
    has_sidecar=True,
    labels={"app": "httpbin"},
    container_ports=(80,),
)
# The policy behind the dump, without its JWT issuer condition (not modelled): the names of
# the RBAC policies and their TCP treatment depend only on what is left.
HTTPBIN_POLICY = {
    "apiVersion": "security.istio.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "httpbin", "namespace": "default"},
    "spec": {
        "selector": {"matchLabels": {"app": "httpbin"}},
        "rules": [
            {
                "from": [
                    {"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}},
                    {"source": {"namespaces": ["test"]}},
                ],
                "to": [
                    {"operation": {"methods": ["GET"], "paths": ["/info*"]}},
                    {"operation": {"methods": ["POST"], "paths": ["/data"]}},
                ],
            }
        ],
    },
}


@pytest.fixture(scope="module")
def chains() -> tuple[ChainAuthz, ...]:
    if not AUTHZ_DUMP.is_file():
        pytest.skip(f"shared test data absent: {AUTHZ_DUMP}")
    return parse_inbound_authz(AUTHZ_DUMP.read_bytes())


def test_every_inbound_chain_of_a_real_dump_is_read(chains: tuple[ChainAuthz, ...]) -> None:
    http_allow = (SeenRbac("ALLOW", frozenset({POLICY}), frozenset(), enforcing=True),)
    tcp_allow = (SeenRbac("ALLOW", frozenset(), frozenset(), enforcing=True),)
    assert [(c.name, c.port, c.http, c.filters) for c in chains] == [
        ("virtualInbound-catchall-http", None, True, http_allow),
        ("virtualInbound-catchall-http", None, True, http_allow),
        ("virtualInbound", None, False, tcp_allow),
        ("virtualInbound", None, False, tcp_allow),
        ("virtualInbound", None, False, tcp_allow),
        ("0.0.0.0_80", 80, True, http_allow),
        ("0.0.0.0_80", 80, True, http_allow),
    ]


def test_the_model_of_the_policy_is_what_the_real_sidecar_has(
    chains: tuple[ChainAuthz, ...],
) -> None:
    expected = authorization_for(
        HTTPBIN, [parse_policy(HTTPBIN_POLICY)], root_namespace="istio-system"
    )
    assert authz_mismatches(chains, expected) == ()


def test_a_sidecar_without_the_policy_is_named_chain_by_chain(
    chains: tuple[ChainAuthz, ...],
) -> None:
    nothing = authorization_for(HTTPBIN, [])
    found = authz_mismatches(chains, nothing)
    assert len(found) == 7
    assert found[-1] == (
        f"virtualInbound chain 0.0.0.0_80 (port 80, HTTP): RBAC ALLOW['{POLICY}'] (want no RBAC"
        " filter)"
    )
    assert found[2] == (
        "virtualInbound chain virtualInbound (passthrough, TCP): RBAC ALLOW[] (want no RBAC filter)"
    )


def test_another_rule_name_is_a_mismatch(chains: tuple[ChainAuthz, ...]) -> None:
    renamed: dict[str, Any] = json.loads(json.dumps(HTTPBIN_POLICY))
    renamed["metadata"]["name"] = "httpbin-v2"
    expected = authorization_for(HTTPBIN, [parse_policy(renamed)])
    found = authz_mismatches(chains, expected)
    assert len(found) == 4  # the HTTP chains; the TCP ones have an ALLOW without policies
    assert "want ALLOW['ns[default]-policy[httpbin-v2]-rule[0]']" in found[0]


def test_without_the_root_namespace_extra_policies_are_tolerated(
    chains: tuple[ChainAuthz, ...],
) -> None:
    """A user who cannot read the root namespace cannot know mesh-wide policies: the chains
    must carry at least the expected rules."""
    nothing = authorization_for(HTTPBIN, [])
    assert authz_mismatches(chains, nothing, root_known=False) == ()
    expected = authorization_for(HTTPBIN, [parse_policy(HTTPBIN_POLICY)])
    assert authz_mismatches(chains, expected, root_known=False) == ()


def test_a_dump_without_virtual_inbound_has_nothing_to_wait_for() -> None:
    assert parse_inbound_authz({"configs": [{"dynamic_listeners": []}]}) == ()
    expected = authorization_for(HTTPBIN, [parse_policy(HTTPBIN_POLICY)])
    assert authz_mismatches((), expected) == ()


def test_when_conditions_on_the_source_follow_the_run_namespaces() -> None:
    names = RunNamespaces("1a2b3c")
    policy = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "foo"},
        "spec": {
            "rules": [
                {
                    "when": [
                        {"key": "source.namespace", "values": ["foo"], "notValues": ["bar"]},
                        {"key": "source.principal", "values": ["cluster.local/ns/foo/sa/sleep"]},
                        {"key": "request.headers[x-ns]", "values": ["foo"]},
                    ]
                }
            ]
        },
    }
    localized = localize_manifest(policy, names, "istio-system")
    assert localized.manifest["spec"]["rules"][0]["when"] == [
        {"key": "source.namespace", "values": ["mc-1a2b3c-foo"], "notValues": ["mc-1a2b3c-bar"]},
        {"key": "source.principal", "values": ["cluster.local/ns/mc-1a2b3c-foo/sa/sleep"]},
        {"key": "request.headers[x-ns]", "values": ["foo"]},
    ]
