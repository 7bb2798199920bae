"""Which policies apply to which workloads (``istio.selection``), shared by the three kinds.

Expectations are istiod's: ``labels.Instance.SubsetOf`` (an empty selector selects every
workload), ``sortConfigByCreationTime`` (creation time, then name, then namespace; a config
without ``creationTimestamp`` has Go's zero time, so it is older than any with one). The
refusal messages of ``unmatched_reason`` are tested on real topologies in
``test_policy_targets.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pytest_meshconform.istio.api import (
    AuthorizationPolicy,
    DestinationRule,
    MtlsMode,
    PeerAuthentication,
    PolicyError,
)
from pytest_meshconform.istio.authorization import authorization_policies_for
from pytest_meshconform.istio.selection import (
    age_key,
    check_labels_argument,
    ignored_in_root_namespace,
    in_scope,
    is_subset,
    unmatched_reason,
)
from pytest_meshconform.mesh import Workload

SLEEP_FOO = Workload("sleep", "foo", "sleep", "sleep", True, {"app": "sleep"})
HTTPBIN_BAR = Workload("httpbin", "bar", "httpbin", "httpbin", True, {"app": "httpbin", "v": "1"})
WORKLOADS = (SLEEP_FOO, HTTPBIN_BAR)
BEFORE_1970 = datetime(1960, 1, 1, tzinfo=UTC)
IN_2024 = datetime(2024, 5, 1, tzinfo=UTC)


def test_a_selector_selects_the_workloads_that_carry_all_its_labels() -> None:
    assert is_subset({}, {})
    assert is_subset({}, {"app": "a"})
    assert is_subset({"app": "httpbin"}, {"app": "httpbin", "v": "1"})
    assert is_subset({"app": "httpbin", "v": "1"}, {"app": "httpbin", "v": "1"})
    assert not is_subset({"app": "httpbin", "v": "2"}, {"app": "httpbin", "v": "1"})
    assert not is_subset({"app": "httpbin"}, {})
    assert not is_subset({"app": ""}, {})  # an empty value must be present too


def test_a_workload_sees_its_own_namespace_and_the_root_namespace() -> None:
    assert in_scope("foo", "foo", "istio-system")
    assert in_scope("istio-system", "foo", "istio-system")
    assert in_scope("istio-system", "istio-system", "istio-system")
    assert not in_scope("bar", "foo", "istio-system")
    assert not in_scope("istio-system", "foo", "istio-config")  # another root


def test_a_selector_peer_authentication_in_the_root_namespace_is_ignored() -> None:
    # ComposePeerAuthentication takes workload-level policies outside the root namespace only.
    selector = PeerAuthentication("p", "istio-system", MtlsMode.STRICT, {"app": "httpbin"})
    assert ignored_in_root_namespace(selector, "istio-system", "istio-system")
    assert not ignored_in_root_namespace(selector, "istio-system", "istio-config")
    mesh_wide = PeerAuthentication("p", "istio-system", MtlsMode.STRICT, {})
    assert not ignored_in_root_namespace(mesh_wide, "istio-system", "istio-system")
    rule = AuthorizationPolicy("a", "istio-system", selector={"app": "httpbin"})
    assert not ignored_in_root_namespace(rule, "istio-system", "istio-system")


def test_istiod_age_order_without_timestamps_first_then_name_then_namespace() -> None:
    policies = [
        (PeerAuthentication("b", "foo", creation_timestamp=IN_2024), "foo"),
        (PeerAuthentication("z", "foo", creation_timestamp=BEFORE_1970), "foo"),
        (PeerAuthentication("b", "bar"), "bar"),
        (PeerAuthentication("a", "foo"), "foo"),
        (PeerAuthentication("b", "abc"), "abc"),
    ]
    ordered = sorted(policies, key=lambda item: age_key(*item))
    assert [(p.name, ns) for p, ns in ordered] == [
        ("a", "foo"),
        ("b", "abc"),
        ("b", "bar"),
        ("z", "foo"),
        ("b", "foo"),
    ]


def test_authorization_policies_sort_like_every_other_kind() -> None:
    # ListAuthorizationPolicies sorts with sortConfigByCreationTime too: a policy without a
    # timestamp (Go's zero time) comes before one created in 1960.
    workload = Workload("httpbin", "foo", "httpbin", "httpbin", True, {"app": "httpbin"})
    old = AuthorizationPolicy("a-old", "foo", creation_timestamp=BEFORE_1970)
    unstamped = AuthorizationPolicy("z-unstamped", "foo")
    new = AuthorizationPolicy("b-new", "foo", creation_timestamp=IN_2024)
    names = [p.name for p in authorization_policies_for(workload, [new, old, unstamped])]
    assert names == ["z-unstamped", "a-old", "b-new"]


def test_labels_given_to_a_resolution_function_map_strings_to_strings() -> None:
    check_labels_argument({"app": "a"}, "labels")
    check_labels_argument({}, "labels")
    with pytest.raises(PolicyError, match=r"^labels must map strings to strings, got \{'app': 1\}"):
        check_labels_argument({"app": 1}, "labels")
    with pytest.raises(PolicyError, match="client_labels must map strings to strings"):
        check_labels_argument(["app=a"], "client_labels")


def test_policies_without_a_selector_apply_to_their_namespace_or_the_mesh() -> None:
    assert (
        unmatched_reason(PeerAuthentication("p", "foo", MtlsMode.STRICT), WORKLOADS, "istio-system")
        is None
    )
    assert (
        unmatched_reason(PeerAuthentication("p", "istio-system"), WORKLOADS, "istio-system") is None
    )
    assert (
        unmatched_reason(DestinationRule("r", "bar", "httpbin"), WORKLOADS, "istio-system") is None
    )


def test_a_policy_without_namespace_lives_in_default() -> None:
    assert unmatched_reason(PeerAuthentication("p", None), WORKLOADS, "istio-system") == (
        "namespace 'default' does not exist in the mesh (namespaces: bar, foo;"
        " root namespace istio-system)"
    )


def test_a_workload_selector_looks_in_the_policy_namespace_only() -> None:
    rule = DestinationRule("r", "foo", "httpbin", workload_selector={"app": "httpbin"})
    assert unmatched_reason(rule, WORKLOADS, "istio-system") == (
        "selector {'app': 'httpbin'} matches no workload in foo"
        " (workloads: sleep: {'app': 'sleep'})"
    )
    mine = DestinationRule("r", "bar", "httpbin", workload_selector={"app": "httpbin"})
    assert unmatched_reason(mine, WORKLOADS, "istio-system") is None


def test_namespaces_are_compared_in_the_suite_spelling() -> None:
    # a kube run names namespaces mc-<run>-<name>; the suite writes <name>
    run = tuple(
        Workload(w.name, f"mc-r1-{w.namespace}", w.app, w.service_account, True, w.labels)
        for w in WORKLOADS
    )

    def logical(namespace: str) -> str:
        return namespace.removeprefix("mc-r1-")

    policy = PeerAuthentication("p", "bar", selector={"app": "httpbin"})
    assert unmatched_reason(policy, run, "istio-system", logical) is None
    assert unmatched_reason(policy, run, "istio-system") == (
        "namespace 'bar' does not exist in the mesh (namespaces: mc-r1-bar, mc-r1-foo;"
        " root namespace istio-system)"
    )
