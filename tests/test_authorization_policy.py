"""AuthorizationPolicy: parsing and validation (istio/api/authorization_policy.py) and the Istio
model's RBAC filters (istio/authorization.py), checked against istiod's own builder test data
and a real config dump.

Expected Envoy shapes are transcribed from istio/istio
``pilot/pkg/security/authz/builder/testdata`` (``allow-none-out.yaml``,
``action-allow-HTTP-for-TCP-filter-out.yaml``, ``action-deny-HTTP-for-TCP-filter-out.yaml``,
``http/dry-run-mix-out.yaml``) and from ``istio__authz-configdump.json`` (shared test data: a
real sidecar config dump from istioctl's authz tests), never from the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import TESTDATA

from pytest_meshconform import PolicyError, authorization_policy
from pytest_meshconform.istio import authorization_for
from pytest_meshconform.istio.api import AuthorizationPolicy, AuthzAction, parse_policy
from pytest_meshconform.istio.authorization import authorization_policies_for
from pytest_meshconform.mesh import Workload

HTTPBIN_FOO = Workload(
    name="httpbin",
    namespace="foo",
    app="httpbin",
    service_account="httpbin",
    has_sidecar=True,
    labels={"app": "httpbin", "version": "v1"},
    container_ports=(8080,),
)
AUTHZ_DUMP = TESTDATA / "istio-dumps" / "istio__authz-configdump.json"


def policy(spec: dict[str, Any], name: str = "p", namespace: str = "foo", **meta: Any) -> Any:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": namespace, **meta},
        "spec": spec,
    }


# ------------------------------------------------------------------------------- parsing


def test_a_full_policy_parses_and_round_trips() -> None:
    manifest = policy(
        {
            "selector": {"matchLabels": {"app": "httpbin"}},
            "action": "DENY",
            "rules": [
                {
                    "from": [
                        {
                            "source": {
                                "principals": ["cluster.local/ns/foo/sa/sleep"],
                                "notPrincipals": ["*"],
                                "namespaces": ["foo"],
                                "notNamespaces": ["bar"],
                                "ipBlocks": ["10.0.0.0/8"],
                                "notIpBlocks": ["10.1.2.3"],
                            }
                        }
                    ],
                    "to": [
                        {
                            "operation": {
                                "hosts": ["httpbin.foo*"],
                                "notHosts": ["evil"],
                                "ports": ["8080"],
                                "notPorts": ["9090"],
                                "methods": ["GET"],
                                "notMethods": ["POST"],
                                "paths": ["/ip"],
                                "notPaths": ["/admin*"],
                            }
                        }
                    ],
                    "when": [
                        {"key": "request.headers[x-token]", "values": ["admin"]},
                        {"key": "source.ip", "notValues": ["10.9.9.9"]},
                        {"key": "source.namespace", "values": ["foo"]},
                        {"key": "source.principal", "values": ["*"]},
                        {"key": "destination.port", "values": ["8080"]},
                        {"key": "connection.sni", "values": ["outbound_.8000_._.*"]},
                    ],
                }
            ],
        },
        annotations={"istio.io/dry-run": "true"},
    )
    parsed = parse_policy(manifest)
    assert isinstance(parsed, AuthorizationPolicy)
    assert parsed.action is AuthzAction.DENY and parsed.dry_run
    assert parsed.selector == {"app": "httpbin"}
    assert parsed.rules[0].sources[0].not_ip_blocks == ("10.1.2.3",)
    assert parsed.to_manifest() == manifest
    assert parse_policy(parsed.to_manifest()) == parsed


def test_v1beta1_empty_spec_and_match_all() -> None:
    nothing = parse_policy(
        "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\n"
        "metadata: {name: allow-nothing, namespace: foo}\nspec: {}\n"
    )
    assert isinstance(nothing, AuthorizationPolicy)
    assert nothing.api_version == "security.istio.io/v1beta1"
    assert nothing.action is AuthzAction.ALLOW and nothing.rules == ()
    everything = parse_policy(policy({"rules": [{}]}))
    assert isinstance(everything, AuthorizationPolicy) and len(everything.rules) == 1


def test_the_builder_writes_what_the_parser_reads() -> None:
    manifest = authorization_policy(
        "sleep-only",
        "foo",
        rules=[{"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/sleep"]}}]}],
        selector={"app": "httpbin"},
        dry_run=True,
    )
    assert manifest == policy(
        {
            "selector": {"matchLabels": {"app": "httpbin"}},
            "action": "ALLOW",
            "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/sleep"]}}]}],
        },
        name="sleep-only",
        annotations={"istio.io/dry-run": "true"},
    )
    with pytest.raises(PolicyError, match=r"spec\.action: 'ALOW' is not one of ALLOW, DENY"):
        authorization_policy("x", "foo", action="ALOW")


INVALID = [
    ("AUDIT", {"action": "AUDIT", "rules": [{}]}, "spec.action: AUDIT is not supported"),
    ("CUSTOM", {"action": "CUSTOM", "rules": [{}]}, "spec.action: CUSTOM is not supported"),
    ("provider", {"provider": {"name": "x"}}, "spec.provider: is not supported"),
    ("typo in spec", {"rule": []}, "spec.rule: unknown field; accepted here: action, rules"),
    (
        "DENY without rules",
        {"action": "DENY"},
        "spec.rules: DENY action without `rules` is meaningless",
    ),
    ("null rule", {"rules": [None]}, "spec.rules[0]: `rule` must not be nil"),
    ("empty from", {"rules": [{"from": []}]}, "spec.rules[0].from: `from` must not be empty"),
    (
        "empty source",
        {"rules": [{"from": [{"source": {}}]}]},
        "spec.rules[0].from[0].source: `from.source` must not be empty",
    ),
    (
        "typo in source",
        {"rules": [{"from": [{"source": {"principal": ["x"]}}]}]},
        "spec.rules[0].from[0].source.principal: unknown field; accepted here: ipBlocks,",
    ),
    (
        "JWT source",
        {"rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]},
        "spec.rules[0].from[0].source.requestPrincipals: is not supported by meshconform",
    ),
    (
        "bad IP block",
        {"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.300"]}}]}]},
        "spec.rules[0].from[0].source.ipBlocks[0]: '10.0.0.300' is not a valid IP address",
    ),
    (
        "empty value",
        {"rules": [{"from": [{"source": {"principals": [""]}}]}]},
        "principals[0]: empty value not allowed, found in principals",
    ),
    (
        "empty operation",
        {"rules": [{"to": [{"operation": {}}]}]},
        "spec.rules[0].to[0].operation: `to.operation` must not be empty",
    ),
    (
        "port as a number",
        {"rules": [{"to": [{"operation": {"ports": [8080]}}]}]},
        "spec.rules[0].to[0].operation.ports[0]: expected a string, got a number (8080)",
    ),
    (
        "port out of range",
        {"rules": [{"to": [{"operation": {"ports": ["70000"]}}]}]},
        "ports[0]: '70000' is not a port number",
    ),
    (
        "path template",
        {"rules": [{"to": [{"operation": {"paths": ["/{*}/x"]}}]}]},
        "path templates ({*}, {**}) are not supported",
    ),
    (
        "unknown when key",
        {"rules": [{"when": [{"key": "source.ips", "values": ["1.2.3.4"]}]}]},
        "spec.rules[0].when[0].key: unknown attribute 'source.ips'; known: request.headers",
    ),
    (
        "header key without brackets",
        {"rules": [{"when": [{"key": "request.headers", "values": ["x"]}]}]},
        "unknown attribute 'request.headers' (write request.headers[<name>])",
    ),
    (
        "JWT when key",
        {"rules": [{"when": [{"key": "request.auth.claims[iss]", "values": ["x"]}]}]},
        "'request.auth.claims[iss]' is not supported by meshconform",
    ),
    (
        "when without values",
        {"rules": [{"when": [{"key": "source.ip"}]}]},
        "at least one of `values` or `notValues` must be set for key source.ip",
    ),
    (
        "when port",
        {"rules": [{"when": [{"key": "destination.port", "values": ["http"]}]}]},
        "when[0].values[0]: 'http' is not a port number",
    ),
    (
        "wildcard selector",
        {"selector": {"matchLabels": {"app": "*"}}},
        "wildcard is not supported in selector",
    ),
]


@pytest.mark.parametrize(("spec", "message"), [pytest.param(s, m, id=i) for i, s, m in INVALID])
def test_invalid_policies_name_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policy(policy(spec))
    assert message in str(raised.value)


def test_a_dry_run_annotation_must_be_a_boolean() -> None:
    with pytest.raises(PolicyError, match=r"istio.io/dry-run.*'yes' is not a boolean"):
        parse_policy(policy({}, annotations={"istio.io/dry-run": "yes"}))
    for text in ("1", "t", "TRUE", "True"):  # Go's strconv.ParseBool, as istiod's isDryRun
        parsed = parse_policy(policy({}, annotations={"istio.io/dry-run": text}))
        assert isinstance(parsed, AuthorizationPolicy) and parsed.dry_run


# --------------------------------------------------------------------- which policies apply


def test_policies_apply_by_namespace_selector_and_root_namespace() -> None:
    policies = [
        parse_policy(policy({}, name="ns-wide")),
        parse_policy(policy({"selector": {"matchLabels": {"app": "httpbin"}}}, name="mine")),
        parse_policy(policy({"selector": {"matchLabels": {"app": "sleep"}}}, name="other")),
        parse_policy(policy({}, name="bar-wide", namespace="bar")),
        parse_policy(policy({}, name="mesh-wide", namespace="istio-system")),
        parse_policy(
            policy(
                {"selector": {"matchLabels": {"app": "httpbin", "version": "v2"}}}, name="v2-only"
            )
        ),
    ]
    names = [p.name for p in authorization_policies_for(HTTPBIN_FOO, policies)]
    assert names == ["mesh-wide", "mine", "ns-wide"]


# ------------------------------------------------------------------ istiod's builder output


def rbac(filters: list[dict[str, Any]], index: int = 0) -> dict[str, Any]:
    return dict(filters[index]["typed_config"])


def test_allow_nothing_is_a_policy_that_never_matches() -> None:
    # builder testdata allow-none-out.yaml
    auth = authorization_for(HTTPBIN_FOO, [parse_policy(policy({}, name="allow-none"))])
    http = rbac(auth.http_filters())
    assert auth.http_filters()[0]["name"] == "envoy.filters.http.rbac"
    assert http["rules"] == {
        "policies": {
            "ns[foo]-policy[allow-none]-rule[0]": {
                "permissions": [{"not_rule": {"any": True}}],
                "principals": [{"not_id": {"any": True}}],
            }
        }
    }
    assert "shadow_rules" not in http


def test_allow_rules_with_http_fields_are_dropped_on_tcp_chains() -> None:
    # builder testdata action-allow-HTTP-for-TCP-filter-{in,out}.yaml (rule[0]'s source is
    # namespaces here: requestPrincipals is JWT, not accepted by meshconform)
    spec = {
        "action": "ALLOW",
        "rules": [
            {
                "from": [{"source": {"namespaces": ["ns-1"]}}],
                "to": [{"operation": {"methods": ["GET"]}}],
            },
            {
                "from": [{"source": {"namespaces": ["ns-1"]}}],
                "to": [{"operation": {"ports": ["80"]}}],
            },
        ],
    }
    auth = authorization_for(HTTPBIN_FOO, [parse_policy(policy(spec, name="httpbin-deny"))])
    tcp = auth.network_filters()[0]
    assert tcp["name"] == "envoy.filters.network.rbac"
    assert tcp["typed_config"]["stat_prefix"] == "tcp."
    assert tcp["typed_config"]["rules"] == {
        "policies": {
            "ns[foo]-policy[httpbin-deny]-rule[1]": {
                "permissions": [
                    {"and_rules": {"rules": [{"or_rules": {"rules": [{"destination_port": 80}]}}]}}
                ],
                "principals": [
                    {
                        "and_ids": {
                            "ids": [
                                {
                                    "or_ids": {
                                        "ids": [
                                            {
                                                "authenticated": {
                                                    "principal_name": {
                                                        "safe_regex": {"regex": ".*/ns/ns-1/.*"}
                                                    }
                                                }
                                            }
                                        ]
                                    }
                                }
                            ]
                        }
                    }
                ],
            }
        }
    }
    http_names = auth.http[0].policy_names
    assert http_names == {
        "ns[foo]-policy[httpbin-deny]-rule[0]",
        "ns[foo]-policy[httpbin-deny]-rule[1]",
    }


ANY_RULE = {
    "permissions": [{"and_rules": {"rules": [{"any": True}]}}],
    "principals": [{"and_ids": {"ids": [{"any": True}]}}],
}


def test_deny_rules_keep_their_tcp_fields_on_tcp_chains() -> None:
    # builder testdata action-deny-HTTP-for-TCP-filter-{in,out}.yaml, rules 1, 3, 6 and 7
    spec = {
        "action": "DENY",
        "rules": [
            {"to": [{"operation": {"methods": ["GET"]}}]},
            {
                "from": [{"source": {"namespaces": ["ns-1"]}}],
                "to": [{"operation": {"methods": ["GET"]}}],
            },
            {"when": [{"key": "request.headers[:method]", "values": ["GET"]}]},
            {"when": [{"key": "destination.port", "values": ["80"]}]},
        ],
    }
    auth = authorization_for(HTTPBIN_FOO, [parse_policy(policy(spec, name="httpbin-deny"))])
    rules = auth.network_filters()[0]["typed_config"]["rules"]
    assert rules["action"] == "DENY"
    policies = rules["policies"]
    assert policies["ns[foo]-policy[httpbin-deny]-rule[0]"] == ANY_RULE
    assert policies["ns[foo]-policy[httpbin-deny]-rule[1]"] == {
        "permissions": [{"and_rules": {"rules": [{"any": True}]}}],
        "principals": [
            {
                "and_ids": {
                    "ids": [
                        {
                            "or_ids": {
                                "ids": [
                                    {
                                        "authenticated": {
                                            "principal_name": {
                                                "safe_regex": {"regex": ".*/ns/ns-1/.*"}
                                            }
                                        }
                                    }
                                ]
                            }
                        }
                    ]
                }
            }
        ],
    }
    assert policies["ns[foo]-policy[httpbin-deny]-rule[2]"] == ANY_RULE
    assert policies["ns[foo]-policy[httpbin-deny]-rule[3]"] == {
        "permissions": [
            {"and_rules": {"rules": [{"or_rules": {"rules": [{"destination_port": 80}]}}]}}
        ],
        "principals": [{"and_ids": {"ids": [{"any": True}]}}],
    }


def test_principals_get_spiffe_and_wildcards_become_prefix_suffix_regex() -> None:
    # builder testdata action-deny-HTTP-for-TCP-filter-out.yaml rule[8]: principal ->
    # exact spiffe://principal; StringMatcherWithPrefix (pilot/pkg/security/authz/matcher/
    # string.go): "*" -> regex ".+", "x*" -> prefix, "*x" -> regex "spiffe://.*x"
    spec = {
        "action": "DENY",
        "rules": [
            {
                "from": [
                    {
                        "source": {
                            "principals": [
                                "principal",
                                "*principal-suffix",
                                "principal-prefix*",
                                "*",
                            ],
                            "notPrincipals": ["not-principal"],
                        }
                    }
                ]
            }
        ],
    }
    auth = authorization_for(HTTPBIN_FOO, [parse_policy(policy(spec))])
    ids = auth.http[0].rules["ns[foo]-policy[p]-rule[0]"]["principals"][0]["and_ids"]["ids"]  # type: ignore[index]
    names = [m["authenticated"]["principal_name"] for m in ids[0]["or_ids"]["ids"]]
    assert names == [
        {"exact": "spiffe://principal"},
        {"safe_regex": {"regex": "spiffe://.*principal-suffix"}},
        {"prefix": "spiffe://principal-prefix"},
        {"safe_regex": {"regex": ".+"}},
    ]
    assert ids[1] == {
        "not_id": {
            "or_ids": {
                "ids": [{"authenticated": {"principal_name": {"exact": "spiffe://not-principal"}}}]
            }
        }
    }


def test_dry_run_policies_are_shadow_rules_only() -> None:
    # builder testdata http/dry-run-mix-{in,out}.yaml
    selector = {"matchLabels": {"app": "httpbin", "version": "v1"}}
    shadow = policy(
        {
            "selector": selector,
            "action": "ALLOW",
            "rules": [{"to": [{"operation": {"paths": ["/allow"]}}]}],
        },
        name="httpbin-1",
        annotations={"istio.io/dry-run": "true"},
    )
    enforced = policy(
        {
            "selector": selector,
            "action": "ALLOW",
            "rules": [{"to": [{"operation": {"paths": ["/another"]}}]}],
        },
        name="httpbin-2",
        annotations={"istio.io/dry-run": "false"},
    )
    auth = authorization_for(HTTPBIN_FOO, [parse_policy(shadow), parse_policy(enforced)])
    config = rbac(auth.http_filters())
    path = {"url_path": {"path": {"exact": "/another"}}}
    assert config["rules"] == {
        "policies": {
            "ns[foo]-policy[httpbin-2]-rule[0]": {
                "permissions": [{"and_rules": {"rules": [{"or_rules": {"rules": [path]}}]}}],
                "principals": [{"and_ids": {"ids": [{"any": True}]}}],
            }
        }
    }
    assert set(config["shadow_rules"]["policies"]) == {"ns[foo]-policy[httpbin-1]-rule[0]"}
    # A filter whose policies are all dry-run has no rules: it enforces nothing.
    only = authorization_for(HTTPBIN_FOO, [parse_policy(shadow)])
    assert "rules" not in rbac(only.http_filters())


def test_deny_comes_before_allow_and_no_policy_means_no_filter() -> None:
    allow = parse_policy(policy({"rules": [{}]}, name="allow-all"))
    deny = parse_policy(policy({"action": "DENY", "rules": [{}]}, name="deny-all"))
    auth = authorization_for(HTTPBIN_FOO, [allow, deny])
    assert [f.action for f in auth.http] == [AuthzAction.DENY, AuthzAction.ALLOW]
    assert [f.action for f in auth.tcp] == [AuthzAction.DENY, AuthzAction.ALLOW]
    assert authorization_for(HTTPBIN_FOO, []).http_filters() == []


def test_a_cluster_local_principal_names_the_mesh_trust_domain() -> None:
    spec = {"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/sleep"]}}]}]}
    auth = authorization_for(HTTPBIN_FOO, [parse_policy(policy(spec))], trust_domain="td1")
    text = json.dumps(auth.http_filters())
    assert '"exact": "spiffe://td1/ns/foo/sa/sleep"' in text


# ------------------------------------------------------------------- a real sidecar's dump


def _dump() -> dict[str, Any]:
    if not AUTHZ_DUMP.is_file():
        pytest.skip(f"shared test data absent: {AUTHZ_DUMP}")
    return dict(json.loads(Path(AUTHZ_DUMP).read_text()))


def _inbound_filters(dump: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(chain name, its RBAC filters) for every virtualInbound chain of the dump."""
    listeners = next(c for c in dump["configs"] if "dynamic_listeners" in c)["dynamic_listeners"]
    inbound = next(entry for entry in listeners if entry["name"] == "virtualInbound")
    found = []
    for chain in inbound["active_state"]["listener"]["filter_chains"]:
        filters = []
        for network in chain["filters"]:
            if network["name"] == "envoy.filters.network.rbac":
                filters.append(network)
            for http in network.get("typed_config", {}).get("http_filters", []):
                if http["name"] == "envoy.filters.http.rbac":
                    filters.append(http)
        found.append((chain.get("name", ""), filters))
    return found


def _normalize(value: Any) -> Any:
    """Older istiod writes a header's exact value as Envoy's deprecated ``exact_match``."""
    if isinstance(value, dict):
        if "exact_match" in value:
            value = {**value, "string_match": {"exact": value["exact_match"]}}
            del value["exact_match"]
        return {key: _normalize(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalize(item) for item in value]
    return value


def test_the_model_matches_a_real_sidecar_dump() -> None:
    """istioctl's authz test dump: policy ``httpbin`` in ``default`` (ALLOW: GET /info* and
    POST /data, from sleep's principal or namespace ``test``, with a JWT issuer condition that
    meshconform does not model). The model must name the same RBAC policy on the HTTP chains,
    with the same permissions, and leave the TCP chains an ALLOW filter without policies (the
    rule has HTTP-only fields), exactly as the dump has them."""
    dump = _dump()
    chains = _inbound_filters(dump)
    http = [f for _, fs in chains for f in fs if f["name"] == "envoy.filters.http.rbac"]
    tcp = [f for _, fs in chains for f in fs if f["name"] == "envoy.filters.network.rbac"]
    assert len(http) == 4 and len(tcp) == 3
    real = http[0]["typed_config"]["rules"]["policies"]
    assert set(real) == {"ns[default]-policy[httpbin]-rule[0]"}
    assert all(f["typed_config"]["rules"] == {} for f in tcp)

    spec = {
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
    }
    httpbin = Workload(
        name="httpbin",
        namespace="default",
        app="httpbin",
        service_account="httpbin",
        has_sidecar=True,
        labels={"app": "httpbin"},
        container_ports=(80,),
    )
    auth = authorization_for(
        httpbin, [parse_policy(policy(spec, name="httpbin", namespace="default"))]
    )
    model = rbac(auth.http_filters())["rules"]["policies"]
    assert set(model) == set(real)
    name = "ns[default]-policy[httpbin]-rule[0]"
    assert model[name]["permissions"] == _normalize(real[name]["permissions"])
    assert (
        rbac(auth.http_filters())["shadow_rules_stat_prefix"]
        == http[0]["typed_config"]["shadow_rules_stat_prefix"]
    )
    model_tcp = auth.network_filters()[0]["typed_config"]
    for key in ("rules", "stat_prefix", "shadow_rules_stat_prefix"):
        assert model_tcp[key] == tcp[0]["typed_config"][key], key
    # The principals: the dump ANDs each source with the JWT issuer condition, and a 1.19+
    # proxy reads the peer principal from Istio's filter state; the matchers are the same.
    for real_id, model_id in zip(real[name]["principals"], model[name]["principals"], strict=True):
        peer = real_id["and_ids"]["ids"][0]["or_ids"]["ids"][0]["filter_state"]
        assert peer["key"] == "io.istio.peer_principal"
        ours = model_id["and_ids"]["ids"][0]["or_ids"]["ids"][0]["authenticated"]
        assert ours["principal_name"] == peer["string_match"]
