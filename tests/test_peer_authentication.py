"""Which mTLS mode a server sidecar enforces (``istio.peer_authentication``), checked against
Istio's documentation and unit tests.

Manifests are transcribed from Istio's documentation and from Istio's own unit tests, cited
next to each table. Expected modes are read off those sources: the curl results the docs print
(000 / exit 56 means the server sidecar refused plaintext, i.e. STRICT; 200 from a client
without a sidecar means it accepted plaintext), the ``want`` values of Istio's tables, or, for
``TestGetPoliciesForWorkload``, ``ComposePeerAuthentication`` applied by hand to the policy list
that table says is selected. None of them was produced by the code under test.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings, strategies as st
from istio_samples import (
    AUTHN_BAR_HTTPBIN_PORT_8080_DISABLE,
    AUTHN_BAR_HTTPBIN_STRICT,
    AUTHN_FOO_OVERWRITE_EXAMPLE,
    AUTHN_FOO_STRICT,
    AUTHN_MESH_STRICT,
    DISABLE,
    HTTPBIN,
    HTTPBIN_PORT,
    PERMISSIVE,
    STRICT,
    UNSET,
    pas,
)

from pytest_meshconform.istio import (
    effective_mtls_mode,
)
from pytest_meshconform.istio.api import MtlsMode, PeerAuthentication, PolicyError, parse_policies
from pytest_meshconform.istio.api.destination_rule import destination_rule

# --- istio.io "Authentication Policy" task ---------------------------------------------------
# The manifests are in istio_samples.py.


def test_authn_task_globally_strict() -> None:
    # "sleep.legacy to httpbin.foo: 000 ... exit code 56", same for httpbin.bar.
    policies = pas(AUTHN_MESH_STRICT)
    assert effective_mtls_mode(policies, "foo", HTTPBIN, HTTPBIN_PORT) is STRICT
    assert effective_mtls_mode(policies, "bar", HTTPBIN, HTTPBIN_PORT) is STRICT


def test_authn_task_namespace_wide_policy() -> None:
    # After cleanup part 1: only "sleep.legacy to httpbin.foo" fails; httpbin.bar answers 200.
    policies = pas(AUTHN_FOO_STRICT)
    assert effective_mtls_mode(policies, "foo", HTTPBIN, HTTPBIN_PORT) is STRICT
    assert effective_mtls_mode(policies, "bar", HTTPBIN, HTTPBIN_PORT) is PERMISSIVE


def test_authn_task_workload_policy() -> None:
    # "sleep.legacy to httpbin.bar: 000 ... exit code 56" once the workload policy is applied.
    policies = pas(AUTHN_FOO_STRICT + "---" + AUTHN_BAR_HTTPBIN_STRICT)
    assert effective_mtls_mode(policies, "bar", HTTPBIN, HTTPBIN_PORT) is STRICT
    assert effective_mtls_mode(policies, "foo", HTTPBIN, HTTPBIN_PORT) is STRICT
    # the selector names httpbin only: sleep in bar stays at the (absent) namespace level
    assert effective_mtls_mode(policies, "bar", {"app": "sleep"}, 80) is PERMISSIVE


def test_authn_task_port_level_mtls_on_container_port() -> None:
    # "sleep.legacy to httpbin.bar: 200": port 8080 (the container port) is DISABLE; the
    # rest of the workload stays STRICT; httpbin.foo still refuses plaintext (000).
    policies = pas(AUTHN_FOO_STRICT + "---" + AUTHN_BAR_HTTPBIN_PORT_8080_DISABLE)
    assert effective_mtls_mode(policies, "bar", HTTPBIN, 8080) is DISABLE
    assert effective_mtls_mode(policies, "bar", HTTPBIN, 8000) is STRICT
    assert effective_mtls_mode(policies, "bar", HTTPBIN, None) is STRICT
    assert effective_mtls_mode(policies, "foo", HTTPBIN, 8080) is STRICT


def test_authn_task_policy_precedence() -> None:
    # "Re-running the request from sleep.legacy, you should see a success return code again
    # (200), confirming service-specific policy overrides the namespace-wide policy."
    policies = pas(AUTHN_FOO_STRICT + "---" + AUTHN_FOO_OVERWRITE_EXAMPLE)
    assert effective_mtls_mode(policies, "foo", HTTPBIN, HTTPBIN_PORT) is DISABLE
    assert effective_mtls_mode(policies, "foo", {"app": "sleep"}, 80) is STRICT


# --- istio.io "Mutual TLS Migration" task ----------------------------------------------------
# istio/istio.io content/en/docs/tasks/security/authentication/mtls-migration: the manifests
# have no namespace; the commands apply them with `kubectl apply -n foo` / `-n istio-system`.

MIGRATION_STRICT_NO_NAMESPACE = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
spec:
  mtls:
    mode: STRICT
"""


def test_migration_task_lock_down_by_namespace_then_mesh() -> None:
    (unplaced,) = pas(MIGRATION_STRICT_NO_NAMESPACE)
    assert unplaced.namespace is None
    (foo,) = pas(MIGRATION_STRICT_NO_NAMESPACE, namespace="foo")
    assert foo.namespace == "foo"
    # "you should see the request from sleep.legacy to httpbin.foo failing" (bar still 200)
    assert effective_mtls_mode([foo], "foo", HTTPBIN, HTTPBIN_PORT) is STRICT
    assert effective_mtls_mode([foo], "bar", HTTPBIN, HTTPBIN_PORT) is PERMISSIVE
    # "both the foo and bar namespaces enforce mutual TLS only traffic"
    (mesh,) = pas(MIGRATION_STRICT_NO_NAMESPACE, namespace="istio-system")
    assert effective_mtls_mode([foo, mesh], "bar", HTTPBIN, HTTPBIN_PORT) is STRICT
    # a policy without a namespace is placed in default_namespace, like kubectl without -n
    assert effective_mtls_mode([unplaced], "default", {}, 80) is STRICT
    assert effective_mtls_mode([unplaced], "bar", {}, 80) is PERMISSIVE
    assert (
        effective_mtls_mode([unplaced], "bar", {}, 80, default_namespace="istio-system") is STRICT
    )


# --- istio/api security/v1beta1/peer_authentication.proto examples --------------------------

PROTO_DOC_INHERIT_AND_OVERRIDE_8080 = """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: foo
spec:
  mtls:
    mode: STRICT
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  mtls:
    mode: UNSET
  portLevelMtls:
    8080:
      mode: DISABLE
"""


def test_namespace_strict_with_workload_port_8080_disabled() -> None:
    # "Policy to inherit mTLS mode from namespace (or mesh) settings, and overwrite settings
    # for port 8080", with the namespace policy of the first example.
    policies = pas(PROTO_DOC_INHERIT_AND_OVERRIDE_8080)
    assert effective_mtls_mode(policies, "foo", HTTPBIN, 8080) is DISABLE
    assert effective_mtls_mode(policies, "foo", HTTPBIN, 9080) is STRICT
    assert effective_mtls_mode(policies, "foo", {"app": "sleep"}, 8080) is STRICT


# --- istio/istio pilot/pkg/security/authn/policy_applier_test.go -----------------------------
# TestComposePeerAuthentication: each case's configs and wanted mode, root "root-namespace".
# ComposePeerAuthentication gets the configs already selected for the workload, so the workload
# here carries every label the cases select on. Names are Istio's, not Kubernetes names, so the
# objects are built directly (the constructor does not validate).

ROOT = "root-namespace"
NOW = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
SECOND_AGO = NOW - timedelta(seconds=1)
COMPOSE_LABELS = {"app": "foo", "stage": "prod"}


def _pa(
    name: str,
    namespace: str,
    mode: MtlsMode | None = None,
    selector: Mapping[str, str] | None = None,
    port_level: Mapping[int, MtlsMode] | None = None,
    created: datetime | None = None,
) -> PeerAuthentication:
    return PeerAuthentication(
        name=name,
        namespace=namespace,
        mode=mode,
        selector=selector,
        port_level=port_level or {},
        creation_timestamp=created,
    )


COMPOSE_CASES: list[tuple[str, list[PeerAuthentication], MtlsMode]] = [
    ("no config", [], PERMISSIVE),
    ("mesh only", [_pa("default", ROOT, STRICT)], STRICT),
    (
        "mesh vs namespace",
        [_pa("default", ROOT, STRICT, selector={}), _pa("default", "my-ns", PERMISSIVE)],
        PERMISSIVE,
    ),
    (
        "ignore non-emptypb selector in root namespace",
        [_pa("default", ROOT, STRICT, selector={"app": "foo"})],
        PERMISSIVE,
    ),
    (
        "workload vs namespace config",
        [_pa("default", "my-ns"), _pa("foo", "my-ns", selector={"app": "foo"})],
        PERMISSIVE,
    ),
    (
        "workload vs mesh config",
        [_pa("default", "my-ns", PERMISSIVE), _pa("default", ROOT, DISABLE)],
        PERMISSIVE,
    ),
    (
        "multiple mesh policy",
        [
            _pa("now", ROOT, DISABLE, created=NOW),
            _pa("second ago", ROOT, PERMISSIVE, created=SECOND_AGO),
            _pa("second later", ROOT, STRICT, created=SECOND_AGO),
        ],
        PERMISSIVE,
    ),
    (
        "multiple namespace policy",
        [
            _pa("now", "my-ns", DISABLE, created=NOW),
            _pa("second ago", "my-ns", PERMISSIVE, created=SECOND_AGO),
            _pa("second later", "my-ns", STRICT, created=SECOND_AGO),
        ],
        PERMISSIVE,
    ),
    (
        "multiple workload policy",
        [
            _pa("now", "my-ns", DISABLE, selector={"app": "foo"}, created=NOW),
            _pa("second ago", "my-ns", PERMISSIVE, selector={"app": "foo"}, created=SECOND_AGO),
            _pa("second later", "my-ns", STRICT, selector={"stage": "prod"}, created=SECOND_AGO),
        ],
        PERMISSIVE,
    ),
    ("inheritance: default mesh", [_pa("default", ROOT, UNSET)], PERMISSIVE),
    (
        "inheritance: mesh to workload",
        [_pa("default", ROOT, STRICT), _pa("foo", "my-ns", selector={"app": "foo"})],
        STRICT,
    ),
    (
        "inheritance: namespace to workload",
        [_pa("default", "my-ns", STRICT), _pa("foo", "my-ns", selector={"app": "foo"})],
        STRICT,
    ),
    (
        "inheritance: mesh to namespace to workload",
        [
            _pa("default", ROOT, STRICT),
            _pa("default", "my-ns", UNSET),
            _pa("foo", "my-ns", selector={"app": "foo"}),
        ],
        STRICT,
    ),
]


@pytest.mark.parametrize(
    ("policies", "want"),
    [pytest.param(policies, want, id=name) for name, policies, want in COMPOSE_CASES],
)
def test_istio_compose_peer_authentication_cases(
    policies: list[PeerAuthentication], want: MtlsMode
) -> None:
    assert effective_mtls_mode(policies, "my-ns", COMPOSE_LABELS, 8080, ROOT) is want
    assert effective_mtls_mode(list(reversed(policies)), "my-ns", COMPOSE_LABELS, 8080, ROOT) is (
        want
    )


def test_istio_compose_port_level_case() -> None:
    # "port level": mesh STRICT; workload 80 DISABLE, 90 UNSET, 100 {} ->
    # Mode STRICT, PerPort {80: DISABLE, 90: STRICT, 100: STRICT}.
    policies = [
        _pa("default", ROOT, STRICT),
        _pa(
            "foo",
            "my-ns",
            selector={"app": "foo"},
            port_level={80: DISABLE, 90: UNSET, 100: UNSET},
        ),
    ]
    modes = {
        port: effective_mtls_mode(policies, "my-ns", COMPOSE_LABELS, port, ROOT)
        for port in (80, 90, 100, 8080)
    }
    assert modes == {80: DISABLE, 90: STRICT, 100: STRICT, 8080: STRICT}


def test_port_level_empty_object_reads_as_unset() -> None:
    # the "100: {}" of the case above, written as YAML
    (policy,) = pas(
        """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: foo, namespace: my-ns}
spec:
  selector: {matchLabels: {app: foo}}
  portLevelMtls:
    80: {mode: DISABLE}
    90: {mode: UNSET}
    100: {}
"""
    )
    assert policy.mode is None
    assert dict(policy.port_level) == {80: DISABLE, 90: UNSET, 100: UNSET}


# --- istio/istio pilot/pkg/model/authentication_test.go --------------------------------------
# TestGetPoliciesForWorkload / ...WithoutMeshPeerAuthn, createTestConfigs(withMeshPeerAuthn):
# root namespace "istio-config", baseTimestamp 2020-02-02T02:02:02Z.

AUTHN_TEST_CONFIGS = """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: global-peer-with-selector, namespace: istio-config,
           creationTimestamp: "2020-02-02T02:02:02Z"}
spec:
  selector: {matchLabels: {app: httpbin, version: v2}}
  mtls: {mode: UNSET}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: foo, creationTimestamp: "2020-02-02T02:02:02Z"}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: ignored-newer-default, namespace: foo, creationTimestamp: "2020-02-02T02:02:03Z"}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: peer-with-selector, namespace: foo, creationTimestamp: "2020-02-02T02:02:02Z"}
spec:
  selector: {matchLabels: {version: v1}}
  mtls: {mode: DISABLE}
"""
AUTHN_TEST_MESH_CONFIGS = """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: ignored-newer, namespace: istio-config, creationTimestamp: "2020-02-02T02:02:04Z"}
spec: {mtls: {mode: UNSET}}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-config, creationTimestamp: "2020-02-02T02:02:02Z"}
spec: {mtls: {mode: UNSET}}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: ignored-another-newer, namespace: istio-config,
           creationTimestamp: "2020-02-02T02:02:03Z"}
spec: {mtls: {mode: UNSET}}
"""
AUTHN_TEST_CASES = [
    # (case name, namespace, labels, mode composed from the table's wantPeerAuthn list)
    ("Empty workload labels in foo", "foo", {}, STRICT),
    ("Empty workload labels in bar", "bar", {}, PERMISSIVE),
    ("Empty workload labels in baz", "baz", {}, PERMISSIVE),
    (
        "Match workload labels in foo",
        "foo",
        {"app": "httpbin", "version": "v1", "other": "labels"},
        DISABLE,
    ),
    ("Match workload labels in bar", "bar", {"app": "httpbin", "version": "v1"}, PERMISSIVE),
    ("Paritial match workload labels in foo", "foo", {"app": "httpbin"}, STRICT),
]


@pytest.mark.parametrize("with_mesh", [True, False], ids=["with-mesh", "without-mesh"])
@pytest.mark.parametrize(
    ("namespace", "labels", "want"),
    [pytest.param(ns, labels, want, id=name) for name, ns, labels, want in AUTHN_TEST_CASES],
)
def test_istio_get_policies_for_workload_cases(
    with_mesh: bool, namespace: str, labels: dict[str, str], want: MtlsMode
) -> None:
    text = AUTHN_TEST_CONFIGS + ("---" + AUTHN_TEST_MESH_CONFIGS if with_mesh else "")
    policies = pas(text)
    assert effective_mtls_mode(policies, namespace, labels, 8080, "istio-config") is want


def test_selector_policy_in_root_namespace_is_ignored() -> None:
    # global-peer-with-selector (istio-config, app=httpbin,version=v2) selects this workload in
    # getConfigsForWorkload, but ComposePeerAuthentication drops selector policies of the
    # root namespace: the namespace policy of foo decides.
    policies = pas(AUTHN_TEST_CONFIGS)
    v2 = {"app": "httpbin", "version": "v2"}
    assert effective_mtls_mode(policies, "foo", v2, 8080, "istio-config") is STRICT
    strict_root_selector = _pa("strict", "istio-config", STRICT, selector={"app": "httpbin"})
    assert effective_mtls_mode([strict_root_selector], "bar", v2, 8080, "istio-config") is (
        PERMISSIVE
    )
    # ... also for a workload that lives in the root namespace itself
    assert (
        effective_mtls_mode([strict_root_selector], "istio-config", v2, 8080, "istio-config")
        is PERMISSIVE
    )


# --- oldest wins, timestamps, and the edge cases the brief names ----------------------------


def test_oldest_policy_wins_by_creation_timestamp_not_by_name() -> None:
    older = _pa("zzz", "foo", DISABLE, created=NOW - timedelta(days=1))
    newer = _pa("aaa", "foo", STRICT, created=NOW)
    assert effective_mtls_mode([newer, older], "foo", {}, 80) is DISABLE
    older_workload = _pa("zzz", "foo", STRICT, {"app": "a"}, created=NOW - timedelta(days=1))
    newer_workload = _pa("aaa", "foo", DISABLE, {"app": "a"}, created=NOW)
    assert effective_mtls_mode([newer_workload, older_workload], "foo", {"app": "a"}, 80) is (
        STRICT
    )


def test_without_timestamps_the_name_decides_and_no_timestamp_is_oldest() -> None:
    # Go's zero time sorts first; equal times fall back to the name (sortConfigByCreationTime).
    b_strict = _pa("b", "foo", STRICT)
    a_disable = _pa("a", "foo", DISABLE)
    assert effective_mtls_mode([b_strict, a_disable], "foo", {}, 80) is DISABLE
    stamped = _pa("a", "foo", DISABLE, created=NOW)
    assert effective_mtls_mode([stamped, b_strict], "foo", {}, 80) is STRICT


def test_oldest_workload_policy_is_chosen_even_when_its_mode_is_unset() -> None:
    # The oldest matching workload policy is chosen first; its UNSET then inherits, the
    # newer STRICT one is not consulted.
    ns = _pa("default", "foo", PERMISSIVE)
    old_unset = _pa("old", "foo", UNSET, {"app": "a"}, created=NOW - timedelta(hours=1))
    new_strict = _pa("new", "foo", STRICT, {"app": "a"}, created=NOW)
    assert effective_mtls_mode([ns, old_unset, new_strict], "foo", {"app": "a"}, 80) is (PERMISSIVE)


def test_workload_policy_with_unset_mode_and_port_level() -> None:
    mesh = _pa("default", "istio-system", STRICT)
    workload = _pa("w", "foo", None, {"app": "a"}, {9000: PERMISSIVE, 9001: UNSET})
    policies = [mesh, workload]
    assert effective_mtls_mode(policies, "foo", {"app": "a"}, 9000) is PERMISSIVE
    assert effective_mtls_mode(policies, "foo", {"app": "a"}, 9001) is STRICT
    assert effective_mtls_mode(policies, "foo", {"app": "a"}, 80) is STRICT
    # another workload in foo is not touched by the port-level override
    assert effective_mtls_mode(policies, "foo", {"app": "b"}, 9000) is STRICT


def test_port_level_of_a_newer_workload_policy_does_not_apply() -> None:
    # only the chosen (oldest) workload policy contributes portLevelMtls
    old = _pa("old", "foo", STRICT, {"app": "a"}, created=NOW - timedelta(hours=1))
    new = _pa("new", "foo", STRICT, {"app": "a"}, {80: DISABLE}, created=NOW)
    assert effective_mtls_mode([old, new], "foo", {"app": "a"}, 80) is STRICT


def test_workload_in_root_namespace_uses_the_mesh_policy() -> None:
    mesh = _pa("default", "istio-system", STRICT)
    assert effective_mtls_mode([mesh], "istio-system", {"app": "x"}, 15012) is STRICT


def test_policies_of_other_namespaces_do_not_apply() -> None:
    other = _pa("default", "bar", DISABLE)
    assert effective_mtls_mode([other], "foo", {}, 80) is PERMISSIVE


def test_destination_rules_in_the_policy_list_are_ignored_server_side() -> None:
    policies = parse_policies(
        destination_rule("all", "istio-system", "*.local", mode="DISABLE"),
    )
    assert effective_mtls_mode(policies, "foo", {}, 80) is PERMISSIVE


def test_effective_mode_rejects_bad_arguments() -> None:
    with pytest.raises(PolicyError, match="port must be in range"):
        effective_mtls_mode([], "foo", {}, 0)
    with pytest.raises(PolicyError, match="port must be in range"):
        effective_mtls_mode([], "foo", {}, True)
    with pytest.raises(PolicyError, match="namespace"):
        effective_mtls_mode([], "Foo", {}, 80)
    with pytest.raises(PolicyError, match="labels"):
        effective_mtls_mode([], "foo", {"a": 1}, 80)  # type: ignore[dict-item]
    with pytest.raises(PolicyError, match="given twice"):
        effective_mtls_mode([_pa("a", "foo", STRICT), _pa("a", "foo", DISABLE)], "foo", {}, 80)
    with pytest.raises(PolicyError, match="not a policy"):
        effective_mtls_mode([{"kind": "PeerAuthentication"}], "foo", {}, 80)  # type: ignore[list-item]


# --- property tests ------------------------------------------------------------------------

NAMESPACES = ["foo", "bar", "istio-system"]
NAMESPACE = st.sampled_from(NAMESPACES)
SELECTOR = st.sampled_from([None, {}, {"app": "a"}, {"app": "b"}, {"app": "a", "v": "1"}])
ANY_MODE = st.sampled_from([None, *MtlsMode])
PORT_MODES = st.dictionaries(st.sampled_from([80, 8080, 9090]), st.sampled_from(list(MtlsMode)))
# distinct creation times, so that "the oldest" is always one policy
SECONDS = st.lists(st.integers(0, 10_000), max_size=8, unique=True)


@st.composite
def policy_sets(draw: st.DrawFn) -> list[PeerAuthentication]:
    seconds = draw(SECONDS)
    parts = draw(
        st.lists(
            st.tuples(NAMESPACE, SELECTOR, ANY_MODE, PORT_MODES),
            min_size=len(seconds),
            max_size=len(seconds),
        )
    )
    return [
        PeerAuthentication(
            name=f"p{index}",
            namespace=namespace,
            mode=mode,
            selector=selector,
            port_level=port_level if selector else {},
            creation_timestamp=NOW + timedelta(seconds=second),
        )
        for index, (second, (namespace, selector, mode, port_level)) in enumerate(
            zip(seconds, parts, strict=True)
        )
    ]


@settings(max_examples=200, deadline=None)
@given(
    policy_sets().flatmap(lambda ps: st.tuples(st.just(ps), st.permutations(ps))),
    NAMESPACE,
    st.sampled_from([{}, {"app": "a"}, {"app": "b"}, {"app": "a", "v": "1"}]),
    st.sampled_from([80, 8080, 9090, None]),
)
def test_effective_mode_is_decided_and_order_free(
    policies_and_shuffled: tuple[list[PeerAuthentication], list[PeerAuthentication]],
    namespace: str,
    labels: dict[str, str],
    port: int | None,
) -> None:
    policies, shuffled = policies_and_shuffled
    mode = effective_mtls_mode(policies, namespace, labels, port)
    assert mode in (MtlsMode.STRICT, MtlsMode.PERMISSIVE, MtlsMode.DISABLE)
    assert effective_mtls_mode(shuffled, namespace, labels, port) is mode
    # the same policies as manifests decide the same
    manifests = [p.to_manifest() for p in policies]
    assert effective_mtls_mode(parse_policies(manifests), namespace, labels, port) is mode
