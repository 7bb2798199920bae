"""The ambient model (pytest_meshconform.istio.ambient) against Istio's and ztunnel's own cases."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from istio_ambient_cases import CASES

from pytest_meshconform.istio.ambient import (
    STATIC_STRICT_POLICY_NAME,
    Action,
    Connection,
    Match,
    Presence,
    Scope,
    ZtunnelAuthorization,
    ambient_enrolled,
    ambient_mtls_mode,
    authorization_matches,
    convert_peer_authentication,
    static_strict_policy,
    ztunnel_admits,
    ztunnel_peer_policies,
    ztunnel_policy_keys,
)
from pytest_meshconform.istio.api import MtlsMode, PeerAuthentication, parse_policies
from pytest_meshconform.istio.api.peer_authentication import peer_authentication

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
    either = Match(principals=(Presence(),)), Match(destination_ports=(81,))
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
