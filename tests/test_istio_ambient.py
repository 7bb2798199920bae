"""The ambient model (pytest_meshconform.istio.ambient) against Istio's and ztunnel's own cases."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
import yaml
from istio_ambient_cases import CASES

from pytest_meshconform.istio.ambient import (
    STATIC_STRICT_POLICY_NAME,
    ambient_enrolled,
    ambient_mtls_mode,
    convert_authorization_policy,
    convert_peer_authentication,
    static_strict_policy,
    ztunnel_peer_policies,
    ztunnel_policies,
    ztunnel_policy_keys,
)
from pytest_meshconform.istio.api import (
    MtlsMode,
    PeerAuthentication,
    parse_policies,
    parse_policy,
)
from pytest_meshconform.istio.api.authorization_policy import (
    AuthorizationPolicy,
    authorization_policy,
)
from pytest_meshconform.istio.api.peer_authentication import peer_authentication
from pytest_meshconform.istio.ztunnel import (
    PRESENCE,
    Action,
    Address,
    Connection,
    Match,
    Scope,
    ServiceAccountMatch,
    StringKind,
    StringMatch,
    ZtunnelAuthorization,
    authorization_matches,
    ztunnel_admits,
)

ROOT = "istio-system"  # ambientindex_test.go systemNS


def _peer_authentications(text: str) -> list[PeerAuthentication]:
    policies = [p for p in parse_policies(text) if isinstance(p, PeerAuthentication)]
    assert policies
    return policies


@pytest.mark.parametrize("name", sorted(CASES))
def test_istiods_golden_conversions(name: str) -> None:
    """``TestRBACConvert``: one policy converts alone; with several, the root namespace's
    (oldest), the namespace's (oldest, no selector) and the workload one's are told apart."""
    source, expected = CASES[name]
    policies = _peer_authentications(source)
    if len(policies) == 1:
        converted = convert_peer_authentication(ROOT, policies[0], None, None)
    else:
        root = [p for p in policies if p.namespace == ROOT]
        workload = [p for p in policies if p.namespace != ROOT and p.selector is not None]
        namespace = [p for p in policies if p.namespace != ROOT and p.selector is None]
        assert len(workload) == 1
        converted = convert_peer_authentication(
            ROOT, workload[0], namespace[0] if namespace else None, root[0] if root else None
        )
    want: Any = yaml.safe_load(expected) if expected.strip() else None
    assert (converted.to_dict() if converted is not None else None) == want


STRICT_KEY = f"{ROOT}/{STATIC_STRICT_POLICY_NAME}"
SELECTOR_KEY = "ns1/converted_peer_authentication_selector"
POD1 = {"app": "a"}


def _pa(
    name: str,
    namespace: str,
    mode: str,
    selector: dict[str, str] | None = None,
    port_level: dict[int, str] | None = None,
) -> PeerAuthentication:
    manifest = peer_authentication(
        name, namespace, mode=mode, selector=selector, port_level=port_level
    )
    policy = parse_policies([manifest])[0]
    assert isinstance(policy, PeerAuthentication)
    return policy


def test_istiods_policy_index_scenario() -> None:
    """``TestAmbientIndex_Policy`` (ambientindex_test.go), step by step: the policies a pod's
    Workload lists as PeerAuthentications come and change (testNS is ns1)."""
    state: dict[str, PeerAuthentication] = {}

    def keys(labels: dict[str, str] = POD1) -> tuple[str, ...]:
        return ztunnel_policy_keys(list(state.values()), "ns1", labels, ROOT)

    state["global"] = _pa("global", ROOT, "PERMISSIVE")
    state["namespace"] = _pa("namespace", "ns1", "STRICT")
    assert keys() == (STRICT_KEY,)  # "the effective mode is STRICT"
    state["selector"] = _pa("selector", "ns1", "STRICT", POD1)
    assert keys() == (STRICT_KEY,)
    state["selector"] = _pa("selector", "ns1", "PERMISSIVE", POD1)
    assert keys() == ()  # "Static policy should be removed since it isn't STRICT"
    state["selector"] = _pa("selector", "ns1", "PERMISSIVE", POD1, {9090: "STRICT"})
    assert keys() == (SELECTOR_KEY,)
    assert keys({"app": "not-a"}) == (STRICT_KEY,)  # pod2: the namespace policy
    state["global-selector"] = _pa("global-selector", ROOT, "STRICT", POD1)
    assert keys() == (SELECTOR_KEY,)  # no mesh-wide selector policies
    del state["global-selector"]
    state["selector"] = _pa("selector", "ns1", "PERMISSIVE", POD1, {9090: "PERMISSIVE"})
    assert keys() == ()
    state["namespace"] = _pa("namespace", "ns1", "PERMISSIVE")
    assert keys() == ()
    state["selector"] = _pa("selector", "ns1", "STRICT", POD1)
    assert keys() == (STRICT_KEY,)


def test_the_documented_example_on_connections() -> None:
    """architecture/ambient/peer-authentication.md: STRICT with port 9090 PERMISSIVE "reject[s]
    unauthenticated traffic at the ztunnel unless its destination is port 9090"."""
    policies = [_pa("strict-and-permissive-mtls", "ns1", "STRICT", POD1, {9090: "PERMISSIVE"})]
    enforced = ztunnel_peer_policies(policies, "ns1", POD1, ROOT)
    assert [p.key for p in enforced] == [
        "ns1/converted_peer_authentication_strict-and-permissive-mtls"
    ]
    peer = "spiffe://cluster.local/ns/ns2/sa/sleep"
    assert not ztunnel_admits(enforced, Connection(8080))
    assert ztunnel_admits(enforced, Connection(9090))
    assert ztunnel_admits(enforced, Connection(8080, peer))
    assert ambient_mtls_mode(policies, "ns1", POD1, 8080, ROOT) is MtlsMode.STRICT
    assert ambient_mtls_mode(policies, "ns1", POD1, 9090, ROOT) is MtlsMode.PERMISSIVE
    assert ambient_mtls_mode(policies, "ns1", {"app": "b"}, 8080, ROOT) is MtlsMode.PERMISSIVE


def test_disable_is_permissive_in_ambient() -> None:
    policies = [_pa("default", "ns1", "DISABLE")]
    assert ambient_mtls_mode(policies, "ns1", POD1, 8080, ROOT) is MtlsMode.PERMISSIVE
    assert ambient_mtls_mode([], "ns1", POD1, 8080, ROOT) is MtlsMode.PERMISSIVE


def test_ztunnels_matching_rules() -> None:
    """ztunnel src/rbac.rs ``Authorization::matches``: groups OR, clauses AND, matches OR; an
    empty policy matches nothing; ``assert_rbac``: DENY first, then ALLOW if any."""
    static = static_strict_policy(ROOT)
    assert static.to_dict() == {
        "action": "DENY",
        "groups": [{"rules": [{"matches": [{"notPrincipals": [{"presence": {}}]}]}]}],
        "name": STATIC_STRICT_POLICY_NAME,
        "namespace": ROOT,
        "scope": "WORKLOAD_SELECTOR",
    }
    plaintext, mtls = Connection(80), Connection(80, "spiffe://td/ns/a/sa/b")
    assert authorization_matches(static, plaintext)
    assert not authorization_matches(static, mtls)
    empty = ZtunnelAuthorization("e", "ns1", Scope.NAMESPACE, Action.ALLOW, ())
    assert not authorization_matches(empty, plaintext)
    assert not ztunnel_admits([empty], plaintext)  # an ALLOW policy exists and none matches
    assert ztunnel_admits([], plaintext)
    port_80 = ZtunnelAuthorization(
        "p", "ns1", Scope.NAMESPACE, Action.ALLOW, (((Match(destination_ports=(80,)),),),)
    )
    assert ztunnel_admits([port_80], plaintext)
    assert not ztunnel_admits([port_80, static], plaintext)
    either = Match(principals=(PRESENCE,)), Match(destination_ports=(81,))
    both = ZtunnelAuthorization("b", "ns1", Scope.NAMESPACE, Action.ALLOW, ((either,),))
    assert ztunnel_admits([both], mtls) and not ztunnel_admits([both], plaintext)


@pytest.mark.parametrize(
    ("pod", "namespace", "annotations", "host_network", "enrolled"),
    [
        ({"istio.io/dataplane-mode": "ambient"}, {}, {}, False, True),
        ({}, {"istio.io/dataplane-mode": "ambient"}, {}, False, True),
        (
            {"istio.io/dataplane-mode": "none"},
            {"istio.io/dataplane-mode": "ambient"},
            {},
            False,
            False,
        ),
        ({}, {}, {}, False, False),
        (
            {},
            {"istio.io/dataplane-mode": "ambient"},
            {"sidecar.istio.io/status": "{}"},
            False,
            False,
        ),
        ({"istio.io/dataplane-mode": "ambient"}, {}, {}, True, False),
    ],
)
def test_which_pods_istio_cni_enrols(
    pod: dict[str, str],
    namespace: dict[str, str],
    annotations: dict[str, str],
    host_network: bool,
    enrolled: bool,
) -> None:
    """The chart's default ``ambient.enablementSelectors`` (istio-cni values.yaml) through
    ``CompiledEnablementSelectors.Matches``."""
    assert ambient_enrolled(pod, namespace, annotations, host_network=host_network) is enrolled


# ztunnel src/rbac.rs tests: allow_policy, plaintext_conn, tls_conn, tls_conn_alt
PLAINTEXT = Connection(8080, None, "127.0.0.1", "127.0.0.2")
TLS = Connection(8080, "spiffe://td/ns/namespace/sa/account", "127.0.0.1", "127.0.0.2")
TLS_ALT = Connection(9090, "spiffe://td-alt/ns/ns-alt/sa/sa=alt", "127.0.0.3", "127.0.0.4")


def _allow(*groups: tuple[tuple[Match, ...], ...]) -> ZtunnelAuthorization:
    return ZtunnelAuthorization("p", "namespace", Scope.GLOBAL, Action.ALLOW, groups)


def _ns(name: str, port: int = 80) -> Connection:
    return Connection(port, f"spiffe://td/ns/{name}/sa/account", "127.0.0.1", "127.0.0.2")


def test_rbac_empty_policy() -> None:
    assert not authorization_matches(_allow(((Match(),),)), PLAINTEXT)
    assert authorization_matches(_allow(((),)), PLAINTEXT)
    assert authorization_matches(_allow(()), PLAINTEXT)
    assert not authorization_matches(_allow(), PLAINTEXT)


def test_rbac_nesting_and_multi_rule() -> None:
    a, b = (Match(namespaces=(StringMatch(StringKind.EXACT, n),)) for n in ("a", "b"))
    nested = _allow(((a, b), (Match(destination_ports=(80,)),)))
    assert authorization_matches(nested, _ns("a")) and authorization_matches(nested, _ns("b"))
    assert not authorization_matches(nested, _ns("bad"))
    assert not authorization_matches(nested, _ns("b", 12345))
    multi = _allow(((a,),), ((b,),))
    assert authorization_matches(multi, _ns("a")) and authorization_matches(multi, _ns("b"))
    assert not authorization_matches(multi, _ns("bad"))


_IP = ipaddress.ip_address


@pytest.mark.parametrize(
    ("match", "results"),
    [
        (Match(namespaces=(StringMatch(StringKind.EXACT, "namespace"),)), (False, True, False)),
        (Match(not_namespaces=(StringMatch(StringKind.EXACT, "namespace"),)), (True, False, True)),
        (
            Match(service_accounts=(ServiceAccountMatch("namespace", "account"),)),
            (False, True, False),
        ),
        (
            Match(not_service_accounts=(ServiceAccountMatch("namespace", "account"),)),
            (True, False, True),
        ),
        (
            Match(principals=(StringMatch(StringKind.EXACT, "td/ns/namespace/sa/account"),)),
            (False, True, False),
        ),
        (
            Match(not_principals=(StringMatch(StringKind.EXACT, "td/ns/namespace/sa/account"),)),
            (True, False, True),
        ),
        (Match(source_ips=(Address(_IP("127.0.0.1"), 32),)), (True, True, False)),
        (Match(not_source_ips=(Address(_IP("127.0.0.1"), 32),)), (False, False, True)),
        (Match(destination_ips=(Address(_IP("127.0.0.2"), 32),)), (True, True, False)),
        (Match(not_destination_ips=(Address(_IP("127.0.0.2"), 32),)), (False, False, True)),
        (Match(destination_ips=(Address(_IP("127.0.0.1"), 24),)), (True, True, True)),  # cidr_range
        (Match(destination_ports=(8080,)), (True, True, False)),
        (Match(not_destination_ports=(8080,)), (False, False, True)),
    ],
)
def test_rbac_match_kinds(match: Match, results: tuple[bool, bool, bool]) -> None:
    """ztunnel's ``rbac_test!`` cases: plaintext, tls and tls_alt connections."""
    policy = _allow(((match,),))
    assert tuple(authorization_matches(policy, c) for c in (PLAINTEXT, TLS, TLS_ALT)) == results


@pytest.mark.parametrize(
    ("matcher", "value", "expect"),
    [
        (StringMatch(StringKind.EXACT, "foo"), "foo", True),
        (StringMatch(StringKind.EXACT, "foo"), "not", False),
        (StringMatch(StringKind.EXACT, "foo"), "", False),
        (StringMatch(StringKind.PREFIX, "foo"), "foobar", True),
        (StringMatch(StringKind.PREFIX, "foo"), "notfoo", False),
        (StringMatch(StringKind.PREFIX, "foo"), "", False),
        (StringMatch(StringKind.SUFFIX, "foo"), "barfoo", True),
        (StringMatch(StringKind.SUFFIX, "foo"), "foonot", False),
        (StringMatch(StringKind.SUFFIX, "foo"), "", False),
        (StringMatch(StringKind.PRESENCE), "foo", True),
        (StringMatch(StringKind.PRESENCE), "", False),
    ],
)
def test_string_match(matcher: StringMatch, value: str, expect: bool) -> None:
    assert matcher.matches(value) is expect


# istiod's golden AuthorizationPolicy conversions (testdata/allow-groups, deny-groups), the rules
# meshconform's parser reads: rules using requestPrincipals (refused by the parser) left out;
# each kept rule's expected group is the golden file's, in order.
ALLOW_GROUPS_IN = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: groups
spec:
  rules:
  # Has mix of L4 and L7 in to
  - from:
    - source:
        principals: ["to-mix-principal"]
        namespaces: ["to-mix-ns"]
    to:
    - operation:
        ports: ["80"]
        methods: ["to-mix-method"]
  # Only L4
  - from:
    - source:
        principals: ["only-l4-principals"]
        namespaces: ["only-l4-ns"]
    to:
    - operation:
        ports: ["80"]
  # L4 and L7 when
  - when:
    - key: "source.namespace"
      values: ["when-l4-l7-ns"]
    - key: "connection.sni"
      values: [ "when-l4-l7-sni"]
  # L4 only when
  - when:
    - key: "source.namespace"
      values: ["when-l4-ns"]
    - key: "source.ip"
      values: ["10.10.10.10"]
  # L7 only when
  - when:
    - key: "connection.sni"
      values: [ "when-l7-sni"]
    - key: "request.headers[X-header]"
      values: ["when-l7-header"]
"""
ALLOW_GROUPS = """\
groups:
- rules:
  - matches:
    - destinationPorts:
      - 80
  - matches:
    - namespaces:
      - exact: only-l4-ns
      principals:
      - exact: only-l4-principals
- rules:
  - matches:
    - namespaces:
      - exact: when-l4-ns
  - matches:
    - sourceIps:
      - address: CgoKCg==
        length: 32
name: groups
scope: NAMESPACE
"""
DENY_GROUPS_IN = (
    ALLOW_GROUPS_IN.replace("name: groups", "name: groups-deny")
    .replace("spec:\n  rules:", "spec:\n  action: DENY\n  rules:")
    .replace(
        """      values: ["10.10.10.10"]
""",
        """      values: ["10.10.10.10"]
      notValues: ["20.20.20.20"]
""",
    )
)
DENY_GROUPS = """\
action: DENY
groups:
- rules:
  - matches:
    - destinationPorts:
      - 80
  - matches:
    - namespaces:
      - exact: to-mix-ns
      principals:
      - exact: to-mix-principal
- rules:
  - matches:
    - destinationPorts:
      - 80
  - matches:
    - namespaces:
      - exact: only-l4-ns
      principals:
      - exact: only-l4-principals
- rules:
  - matches:
    - namespaces:
      - exact: when-l4-l7-ns
  - matches:
    - {}
- rules:
  - matches:
    - namespaces:
      - exact: when-l4-ns
  - matches:
    - notSourceIps:
      - address: FBQUFA==
        length: 32
      sourceIps:
      - address: CgoKCg==
        length: 32
- rules:
  - matches:
    - {}
  - matches:
    - {}
name: groups-deny
scope: NAMESPACE
"""


@pytest.mark.parametrize(
    ("source", "expected", "boilerplate"),
    [
        (
            ALLOW_GROUPS_IN,
            ALLOW_GROUPS,
            "Within an ALLOW policy, rules matching HTTP attributes are omitted.",
        ),
        (
            DENY_GROUPS_IN,
            DENY_GROUPS,
            "DENY policy with HTTP attributes is enforced without the HTTP rules.",
        ),
    ],
)
def test_istiods_golden_authorization_conversions(
    source: str, expected: str, boilerplate: str
) -> None:
    policy = parse_policies(source)[0]
    assert isinstance(policy, AuthorizationPolicy)
    converted, message = convert_authorization_policy(ROOT, policy)
    assert converted is not None
    assert converted.to_dict() == yaml.safe_load(expected)
    assert message is not None
    assert message.startswith(
        "ztunnel does not support HTTP attributes (found: connection.sni, methods,"
        " request.headers[X-header]). In ambient mode you must use a waypoint proxy to enforce"
        " HTTP rules. "
    )
    assert boilerplate in message


def test_an_l7_only_deny_has_no_effect_at_ztunnel() -> None:
    """A DENY whose every rule is HTTP-only: "this DENY policy has no enforceable rules at
    ztunnel and will have no effect" (httpDenyNoEffectBoilerplate)."""
    policy = parse_policies(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: d, namespace: ns1}\n"
        "spec: {action: DENY, rules: [{to: [{operation: {methods: [POST]}}]}]}\n"
    )[0]
    assert isinstance(policy, AuthorizationPolicy)
    converted, message = convert_authorization_policy(ROOT, policy)
    assert converted is not None and message is not None
    assert "will have no effect" in message
    assert ztunnel_admits([converted], TLS)  # enforced without its HTTP rule: matches nothing


def test_an_l4_allow_by_principal() -> None:
    """istio.io "Use Layer 4 security policy": an ALLOW by principal admits only that caller
    at the server's ztunnel (and so no plaintext caller)."""
    policy = parse_policies(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: allow-sleep-to-httpbin, namespace: ambient-demo}\n"
        "spec:\n  selector: {matchLabels: {app: httpbin}}\n  action: ALLOW\n"
        "  rules: [{from: [{source: {principals: [cluster.local/ns/ambient-demo/sa/sleep]}}]}]\n"
    )[0]
    assert isinstance(policy, AuthorizationPolicy)
    converted, message = convert_authorization_policy(ROOT, policy)
    assert converted is not None and message is None
    assert converted.scope is Scope.WORKLOAD_SELECTOR
    sleep = Connection(8000, "spiffe://cluster.local/ns/ambient-demo/sa/sleep")
    other = Connection(8000, "spiffe://cluster.local/ns/ambient-demo/sa/notsleep")
    assert ztunnel_admits([converted], sleep)
    assert not ztunnel_admits([converted], other)
    assert not ztunnel_admits([converted], Connection(8000))


def test_ztunnel_policies_are_the_namespace_global_and_selecting_ones() -> None:
    """ztunnel's ``assert_rbac`` takes the workload namespace's policies (scope NAMESPACE), the
    global ones (the root namespace's without selector) and those its Workload lists
    (``buildWorkloadPolicies``: selector policies in its namespace or the root namespace that
    select it), with the PeerAuthentication-derived ones."""

    def ap(name: str, namespace: str, selector: dict[str, str] | None = None) -> Any:
        return parse_policy(authorization_policy(name, namespace, "ALLOW", [{}], selector=selector))

    policies = [
        ap("ns-wide", "shop"),
        ap("other-ns", "batch"),
        ap("mesh-wide", ROOT),
        ap("mine", "shop", {"app": "ledger"}),
        ap("not-mine", "shop", {"app": "cashier"}),
        ap("root-selects-me", ROOT, {"app": "ledger"}),
        ap("elsewhere-selects-app", "batch", {"app": "ledger"}),
        parse_policy(peer_authentication("default", "shop", "STRICT")),
    ]
    keys = [p.key for p in ztunnel_policies(policies, "shop", {"app": "ledger"}, ROOT)]
    assert keys == [
        f"{ROOT}/{STATIC_STRICT_POLICY_NAME}",
        "shop/ns-wide",
        f"{ROOT}/mesh-wide",
        "shop/mine",
        f"{ROOT}/root-selects-me",
    ]
