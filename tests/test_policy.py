"""Tests for pytest_meshconform.istio.api.policy.

Manifests are transcribed from Istio's documentation and from Istio's own unit tests, cited
next to each table. Expected modes are read off those sources: the curl results the docs print
(000 / exit 56 means the server sidecar refused plaintext, i.e. STRICT; 200 from a client
without a sidecar means it accepted plaintext), the ``want`` values of Istio's tables, or, for
``TestGetPoliciesForWorkload``, ``ComposePeerAuthentication`` applied by hand to the policy list
that table says is selected. None of them was produced by the code under test.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from hypothesis import given, settings, strategies as st

import pytest_meshconform
import pytest_meshconform.istio.api.policy
from pytest_meshconform.istio import (
    client_tls_mode,
    client_tls_settings,
    destination_rule_for,
    effective_mtls_mode,
)
from pytest_meshconform.istio.api.policy import (
    ClientTls,
    DestinationRule,
    MtlsMode,
    PeerAuthentication,
    PolicyError,
    PortTrafficPolicy,
    Subset,
    TlsMode,
    TrafficPolicy,
    destination_rule,
    parse_policies,
    parse_policy,
    peer_authentication,
)

STRICT, PERMISSIVE, DISABLE, UNSET = (
    MtlsMode.STRICT,
    MtlsMode.PERMISSIVE,
    MtlsMode.DISABLE,
    MtlsMode.UNSET,
)
# The sample workloads of the tasks (samples/httpbin/httpbin.yaml, samples/sleep/sleep.yaml).
HTTPBIN = {"app": "httpbin", "version": "v1"}
HTTPBIN_PORT = 8080  # httpbin's container port; its Service listens on 8000


def pas(text: str, namespace: str | None = None) -> tuple[PeerAuthentication, ...]:
    parsed = parse_policies(text, namespace=namespace)
    assert all(isinstance(p, PeerAuthentication) for p in parsed)
    return tuple(p for p in parsed if isinstance(p, PeerAuthentication))


def drs(text: str, namespace: str | None = None) -> tuple[DestinationRule, ...]:
    parsed = parse_policies(text, namespace=namespace)
    assert all(isinstance(p, DestinationRule) for p in parsed)
    return tuple(p for p in parsed if isinstance(p, DestinationRule))


# --- the package exports -------------------------------------------------------------------


def test_the_builders_are_on_the_package_face_and_the_parsers_are_not() -> None:
    """A suite writer builds manifests (validated); parsing and the model stay in their rooms."""
    assert pytest_meshconform.peer_authentication is peer_authentication
    assert pytest_meshconform.destination_rule is destination_rule
    assert issubclass(pytest_meshconform.PolicyError, ValueError)
    face = set(pytest_meshconform.__all__)
    assert parse_policy.__name__ not in face
    assert parse_policies.__name__ not in face
    assert effective_mtls_mode.__name__ not in face
    assert PeerAuthentication.__name__ not in face
    assert DestinationRule.__name__ not in face


def test_resolution_moved_to_the_istio_model_stays_importable_from_policy() -> None:
    module: Any = pytest_meshconform.istio.api.policy
    assert module.effective_mtls_mode is effective_mtls_mode
    assert module.destination_rule_for is destination_rule_for
    assert module.client_tls_settings is client_tls_settings
    assert module.client_tls_mode is client_tls_mode
    with pytest.raises(AttributeError, match="no attribute 'plan_mesh'"):
        _ = module.plan_mesh


# --- istio.io "Authentication Policy" task ---------------------------------------------------
# istio/istio.io content/en/docs/tasks/security/authentication/authn-policy/index.md, manifests
# copied verbatim (the commands pipe them to `kubectl apply -n <ns>`).

AUTHN_MESH_STRICT = """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: "default"
  namespace: "istio-system"
spec:
  mtls:
    mode: STRICT
"""
AUTHN_FOO_STRICT = """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: "default"
  namespace: "foo"
spec:
  mtls:
    mode: STRICT
"""
AUTHN_BAR_HTTPBIN_STRICT = """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: "httpbin"
  namespace: "bar"
spec:
  selector:
    matchLabels:
      app: httpbin
  mtls:
    mode: STRICT
"""
AUTHN_BAR_HTTPBIN_PORT_8080_DISABLE = """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: "httpbin"
  namespace: "bar"
spec:
  selector:
    matchLabels:
      app: httpbin
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: DISABLE
"""
AUTHN_FOO_OVERWRITE_EXAMPLE = """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: "overwrite-example"
  namespace: "foo"
spec:
  selector:
    matchLabels:
      app: httpbin
  mtls:
    mode: DISABLE
"""


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


# --- validation errors: the field path is in the message ------------------------------------

PA_HEAD = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
DR_HEAD = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
META = "metadata: {name: p, namespace: foo}\n"
SEL = "  selector: {matchLabels: {app: httpbin}}\n"

INVALID = [
    # (id, manifest, field path, fragment of the message)
    (
        "portLevelMtls without selector",
        PA_HEAD + META + "spec:\n  portLevelMtls:\n    8080: {mode: DISABLE}\n",
        "spec.portLevelMtls",
        "portLevelMtls requires selector",
    ),
    (
        "portLevelMtls with an empty selector",
        PA_HEAD + META + "spec:\n  selector: {matchLabels: {}}\n  portLevelMtls: {80: {}}\n",
        "spec.portLevelMtls",
        "portLevelMtls requires selector",
    ),
    (
        "empty portLevelMtls",
        PA_HEAD + META + "spec:\n" + SEL + "  portLevelMtls: {}\n",
        "spec.portLevelMtls",
        "port level mTLS, if defined, must have at least one element",
    ),
    (
        "port 0",
        PA_HEAD + META + "spec:\n" + SEL + "  portLevelMtls: {0: {mode: STRICT}}\n",
        "spec.portLevelMtls[0]",
        "port must be in range 1..65535",
    ),
    (
        "port 65536 as a JSON string key",
        PA_HEAD + META + "spec:\n" + SEL + '  portLevelMtls: {"65536": {mode: STRICT}}\n',
        "spec.portLevelMtls[65536]",
        "port must be in range 1..65535",
    ),
    (
        "port name instead of number",
        PA_HEAD + META + "spec:\n" + SEL + "  portLevelMtls: {http: {mode: STRICT}}\n",
        "spec.portLevelMtls['http']",
        "key is not a port number",
    ),
    (
        "bad port-level mode",
        PA_HEAD + META + "spec:\n" + SEL + "  portLevelMtls: {8080: {mode: PLAINTEXT}}\n",
        "spec.portLevelMtls[8080].mode",
        "'PLAINTEXT' is not one of UNSET, DISABLE, PERMISSIVE, STRICT",
    ),
    (
        "YAML boolean as mode",
        PA_HEAD + META + "spec:\n" + SEL + "  portLevelMtls: {8080: {mode: OFF}}\n",
        "spec.portLevelMtls[8080].mode",
        "False is not one of UNSET, DISABLE, PERMISSIVE, STRICT (YAML reads yes/no/on/off as "
        "booleans: quote the value)",
    ),
    (
        "lower case mode",
        PA_HEAD + META + "spec: {mtls: {mode: strict}}\n",
        "spec.mtls.mode",
        "'strict' is not one of UNSET, DISABLE, PERMISSIVE, STRICT",
    ),
    (
        "numeric mode",
        PA_HEAD + META + "spec: {mtls: {mode: 3}}\n",
        "spec.mtls.mode",
        "3 is not one of",
    ),
    (
        "mode directly under spec",
        PA_HEAD + META + "spec: {mode: STRICT}\n",
        "spec.mode",
        "unknown field; accepted here: mtls, portLevelMtls, selector",
    ),
    (
        "wildcard in selector",
        PA_HEAD + META + "spec: {selector: {matchLabels: {app: 'http*'}}}\n",
        "spec.selector.matchLabels['app']",
        "wildcard is not supported in selector",
    ),
    (
        "empty selector key",
        PA_HEAD + META + "spec: {selector: {matchLabels: {'': x}}}\n",
        "spec.selector.matchLabels['']",
        "empty key is not supported in selector",
    ),
    (
        "non-string label value",
        PA_HEAD + META + "spec: {selector: {matchLabels: {version: 1}}}\n",
        "spec.selector.matchLabels['version']",
        "expected a string, got a number",
    ),
    (
        "selector without matchLabels wrapper",
        PA_HEAD + META + "spec: {selector: {app: httpbin}}\n",
        "spec.selector.app",
        "unknown field",
    ),
    ("no metadata", PA_HEAD + "spec: {}\n", "metadata", "is required"),
    ("no name", PA_HEAD + "metadata: {namespace: foo}\n", "metadata.name", "is required"),
    (
        "bad name",
        PA_HEAD + "metadata: {name: My_Policy}\n",
        "metadata.name",
        "'My_Policy' is not a DNS-1123 subdomain",
    ),
    (
        "bad namespace",
        PA_HEAD + "metadata: {name: p, namespace: Foo}\n",
        "metadata.namespace",
        "'Foo' is not a DNS-1123 label",
    ),
    (
        "bad creationTimestamp",
        PA_HEAD + "metadata: {name: p, creationTimestamp: yesterday}\n",
        "metadata.creationTimestamp",
        "'yesterday' is not an RFC 3339 time",
    ),
    (
        "creationTimestamp without a zone",
        PA_HEAD + "metadata: {name: p, creationTimestamp: 2020-02-02 02:02:02}\n",
        "metadata.creationTimestamp",
        "has no time zone",
    ),
    (
        "old authentication API",
        "apiVersion: security.istio.io/v1alpha1\nkind: PeerAuthentication\n" + META,
        "apiVersion",
        "accepted: security.istio.io/v1, security.istio.io/v1beta1",
    ),
    (
        "DestinationRule in the security group",
        "apiVersion: security.istio.io/v1\nkind: DestinationRule\n" + META,
        "apiVersion",
        "accepted: networking.istio.io/v1, networking.istio.io/v1beta1, "
        "networking.istio.io/v1alpha3",
    ),
    (
        "another Istio kind",
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n" + META,
        "kind",
        "'RequestAuthentication' is not an accepted kind; accepted: security.istio.io/v1 "
        "PeerAuthentication",
    ),
    (
        "unknown top-level field",
        PA_HEAD + META + "specs: {}\n",
        "specs",
        "unknown field",
    ),
    (
        "MUTUAL without certificates",
        DR_HEAD + META + "spec: {host: db, trafficPolicy: {tls: {mode: MUTUAL}}}\n",
        "spec.trafficPolicy.tls.clientCertificate",
        "client certificate required for mutual tls",
    ),
    (
        "MUTUAL without key",
        DR_HEAD
        + META
        + "spec: {host: db, trafficPolicy: {tls: {mode: MUTUAL, clientCertificate: /c.pem}}}\n",
        "spec.trafficPolicy.tls.privateKey",
        "private key required for mutual tls",
    ),
    (
        "credentialName with a CA file",
        DR_HEAD + META + "spec: {host: db, trafficPolicy: {tls: {mode: SIMPLE, credentialName: c, "
        "caCertificates: /ca.pem}}}\n",
        "spec.trafficPolicy.tls",
        "cannot specify client certificates or CA certificate or CA CRL If credentialName is set",
    ),
    (
        "ISTIO_MUTUAL with a client certificate",
        DR_HEAD
        + META
        + "spec: {host: db, trafficPolicy: {tls: {mode: ISTIO_MUTUAL, clientCertificate: /c}}}\n",
        "spec.trafficPolicy.tls.clientCertificate",
        "must not be set with mode ISTIO_MUTUAL",
    ),
    (
        "ISTIO_MUTUAL with a credential",
        DR_HEAD
        + META
        + "spec: {host: db, trafficPolicy: {tls: {mode: ISTIO_MUTUAL, credentialName: c}}}\n",
        "spec.trafficPolicy.tls.credentialName",
        "must not be set with mode ISTIO_MUTUAL",
    ),
    (
        "insecureSkipVerify with a CA",
        DR_HEAD
        + META
        + "spec: {host: db, trafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: true, "
        "caCertificates: /ca}}}\n",
        "spec.trafficPolicy.tls",
        "cannot specify CaCertificates or CredentialName or SubjectAltNames when "
        "InsecureSkipVerify is set true",
    ),
    (
        "insecureSkipVerify as a string",
        DR_HEAD
        + META
        + "spec: {host: db, trafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: 'yes'}}}\n",
        "spec.trafficPolicy.tls.insecureSkipVerify",
        "'yes' is not a boolean",
    ),
    (
        "unknown TLS mode",
        DR_HEAD + META + "spec: {host: db, trafficPolicy: {tls: {mode: STRICT}}}\n",
        "spec.trafficPolicy.tls.mode",
        "'STRICT' is not one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL",
    ),
    (
        "port number 0",
        DR_HEAD + META + "spec:\n  host: db\n  trafficPolicy:\n    portLevelSettings:\n"
        "    - port: {number: 0}\n      tls: {mode: DISABLE}\n",
        "spec.trafficPolicy.portLevelSettings[0].port.number",
        "port number 0 must be in range 1..65535",
    ),
    (
        "port number 65536",
        DR_HEAD + META + "spec:\n  host: db\n  trafficPolicy:\n    portLevelSettings:\n"
        "    - port: {number: 9080}\n      tls: {mode: DISABLE}\n"
        "    - port: {number: 65536}\n      tls: {mode: DISABLE}\n",
        "spec.trafficPolicy.portLevelSettings[1].port.number",
        "port number 65536 must be in range 1..65535",
    ),
    (
        "port-level entry without port",
        DR_HEAD + META + "spec:\n  host: db\n  trafficPolicy:\n    portLevelSettings:\n"
        "    - tls: {mode: DISABLE}\n",
        "spec.trafficPolicy.portLevelSettings[0].port",
        "portTrafficPolicy must have valid port",
    ),
    (
        "port-level entry with only a port",
        DR_HEAD + META + "spec:\n  host: db\n  trafficPolicy:\n    portLevelSettings:\n"
        "    - port: {number: 80}\n",
        "spec.trafficPolicy.portLevelSettings[0]",
        "port traffic policy must have at least one field",
    ),
    (
        "port-level port as a string",
        DR_HEAD + META + "spec:\n  host: db\n  trafficPolicy:\n    portLevelSettings:\n"
        "    - port: {number: '80'}\n      tls: {mode: DISABLE}\n",
        "spec.trafficPolicy.portLevelSettings[0].port.number",
        "'80' is not an integer",
    ),
    (
        "empty traffic policy",
        DR_HEAD + META + "spec: {host: db, trafficPolicy: {}}\n",
        "spec.trafficPolicy",
        "traffic policy must have at least one field",
    ),
    (
        "tunnel and proxyProtocol",
        DR_HEAD + META + "spec: {host: db, trafficPolicy: {tunnel: {targetHost: a, targetPort: 1}, "
        "proxyProtocol: {}}}\n",
        "spec.trafficPolicy",
        "tunnel and proxyProtocol must not be set together",
    ),
    (
        "loadBalancer that is not an object",
        DR_HEAD + META + "spec: {host: db, trafficPolicy: {loadBalancer: ROUND_ROBIN}}\n",
        "spec.trafficPolicy.loadBalancer",
        "expected an object, got a string",
    ),
    ("no spec", DR_HEAD + META, "spec", "is required"),
    ("no host", DR_HEAD + META + "spec: {exportTo: ['*']}\n", "spec.host", "is required"),
    (
        "wildcard not in the first label",
        DR_HEAD + META + "spec: {host: 'foo.*.com'}\n",
        "spec.host",
        "domain name 'foo.*.com' invalid (label '*' invalid)",
    ),
    (
        "IP address as host",
        DR_HEAD + META + "spec: {host: 10.0.0.1}\n",
        "spec.host",
        "top level domain '1' cannot be all-numeric",
    ),
    (
        "duplicate subsets",
        DR_HEAD
        + META
        + "spec: {host: db, subsets: [{name: v1, labels: {version: v1}}, {name: v1}]}\n",
        "spec.subsets[1].name",
        "duplicate subset names: v1",
    ),
    (
        "bad subset name",
        DR_HEAD + META + "spec: {host: db, subsets: [{name: v1.0}]}\n",
        "spec.subsets[0].name",
        "subset name is invalid: v1.0",
    ),
    (
        "bad subset label",
        DR_HEAD + META + "spec: {host: db, subsets: [{name: v1, labels: {version: 'v 1'}}]}\n",
        "spec.subsets[0].labels['version']",
        "invalid tag value: 'v 1'",
    ),
    (
        "bad TLS mode in a subset",
        DR_HEAD
        + META
        + "spec: {host: db, subsets: [{name: v1, trafficPolicy: {tls: {mode: mTLS}}}]}\n",
        "spec.subsets[0].trafficPolicy.tls.mode",
        "'mTLS' is not one of",
    ),
    (
        "exportTo duplicates",
        DR_HEAD + META + "spec: {host: db, exportTo: [bar, bar]}\n",
        "spec.exportTo[1]",
        "duplicate entries in exportTo for entry 'bar'",
    ),
    (
        "exportTo . and own namespace",
        DR_HEAD + META + "spec: {host: db, exportTo: [foo, .]}\n",
        "spec.exportTo[1]",
        "duplicate entries in exportTo: . and current namespace foo",
    ),
    (
        "exportTo * with others",
        DR_HEAD + META + "spec: {host: db, exportTo: ['*', bar]}\n",
        "spec.exportTo",
        "cannot have both public (*) and non-public exportTo values",
    ),
    (
        "exportTo none",
        DR_HEAD + META + "spec: {host: db, exportTo: ['~']}\n",
        "spec.exportTo[0]",
        "exportTo ~ (none) is not allowed",
    ),
    (
        "workloadSelector exported elsewhere",
        DR_HEAD
        + META
        + "spec: {host: db, workloadSelector: {matchLabels: {app: a}}, exportTo: [bar]}\n",
        "spec.exportTo",
        "destination rule with workload selector cannot have exportTo beyond current namespace",
    ),
    (
        "unknown TLS field",
        DR_HEAD + META + "spec: {host: db, trafficPolicy: {tls: {mode: SIMPLE, sniHost: x}}}\n",
        "spec.trafficPolicy.tls.sniHost",
        "unknown field",
    ),
    (
        "null subset",
        DR_HEAD + META + "spec: {host: db, subsets: [null]}\n",
        "spec.subsets[0]",
        "subset may not be null",
    ),
]


@pytest.mark.parametrize(
    ("manifest", "path", "fragment"),
    [pytest.param(manifest, path, fragment, id=name) for name, manifest, path, fragment in INVALID],
)
def test_invalid_policies_name_the_field(manifest: str, path: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policy(manifest)
    assert raised.value.path == path
    assert fragment in raised.value.problem
    assert f": {path}: " in str(raised.value)
    assert str(raised.value).startswith("document 1")


def test_error_names_the_document_and_object() -> None:
    text = AUTHN_FOO_STRICT + "---\n" + PA_HEAD + "metadata: {name: broken}\nspec: {mtls: {}}\n"
    text += "---\n" + PA_HEAD + "metadata: {name: third}\nspec: {mtls: {mode: 'no'}}\n"
    with pytest.raises(PolicyError) as raised:
        parse_policies(text)
    assert str(raised.value) == (
        "document 3 (PeerAuthentication 'third'): spec.mtls.mode: "
        "'no' is not one of UNSET, DISABLE, PERMISSIVE, STRICT"
    )


def test_yaml_problems_are_policy_errors() -> None:
    with pytest.raises(PolicyError, match="found duplicate key 'mtls'"):
        parse_policy(PA_HEAD + META + "spec:\n  mtls: {mode: STRICT}\n  mtls: {mode: DISABLE}\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        parse_policy("spec: [unclosed")
    with pytest.raises(PolicyError, match="not UTF-8"):
        parse_policy(b"\xff\xfe")
    with pytest.raises(PolicyError, match="expected a mapping"):
        parse_policy("- a\n- b\n")
    with pytest.raises(PolicyError, match="expected exactly one policy, found 2"):
        parse_policy(AUTHN_FOO_STRICT + "---" + AUTHN_MESH_STRICT)
    with pytest.raises(PolicyError, match="expected exactly one policy, found 0"):
        parse_policy("---\n---\n")


def test_namespace_argument_must_agree_like_kubectl_apply_n() -> None:
    (policy,) = pas(AUTHN_FOO_STRICT, namespace="foo")
    assert policy.namespace == "foo"
    with pytest.raises(PolicyError) as raised:
        parse_policy(AUTHN_FOO_STRICT, namespace="bar")
    assert raised.value.path == "metadata.namespace"
    assert "'foo' does not match the namespace it is applied to ('bar')" in str(raised.value)


def test_valid_tls_settings_that_istio_accepts() -> None:
    (rule,) = drs(
        DR_HEAD
        + META
        + """spec:
  host: mydbserver.prod.svc.cluster.local
  trafficPolicy:
    tls:
      mode: MUTUAL
      credentialName: client-credential
  subsets:
  - name: plain
    trafficPolicy:
      tls: {mode: SIMPLE, insecureSkipVerify: true, sni: db.example.com}
"""
    )
    assert rule.traffic_policy is not None
    assert rule.traffic_policy.tls == ClientTls(TlsMode.MUTUAL, credential_name="client-credential")
    assert rule.subsets[0].traffic_policy == TrafficPolicy(
        tls=ClientTls(TlsMode.SIMPLE, sni="db.example.com", insecure_skip_verify=True)
    )


# --- parsing what kubectl prints --------------------------------------------------------------

KUBECTL_GET_LIST = """
apiVersion: v1
items:
- apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {"apiVersion":"security.istio.io/v1","kind":"PeerAuthentication"}
    creationTimestamp: "2024-03-01T12:00:00Z"
    generation: 1
    name: default
    namespace: foo
    resourceVersion: "1234"
    uid: 0f9d0f0e-8e2a-4c4b-9d6f-1b2c3d4e5f60
  spec:
    mtls:
      mode: STRICT
- apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata:
    creationTimestamp: "2024-03-01T12:00:05Z"
    name: reviews
    namespace: foo
  spec:
    host: reviews
    trafficPolicy:
      loadBalancer:
        simple: LEAST_REQUEST
      portLevelSettings:
      - port:
          number: 9080
        loadBalancer:
          simple: ROUND_ROBIN
        tls:
          mode: ISTIO_MUTUAL
    subsets:
    - name: v1
      labels:
        version: v1
  status: {}
kind: List
metadata:
  resourceVersion: ""
"""


def test_parses_kubectl_get_list_output() -> None:
    peer, rule = parse_policies(KUBECTL_GET_LIST)
    assert isinstance(peer, PeerAuthentication)
    assert isinstance(rule, DestinationRule)
    assert peer.creation_timestamp == datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert peer.mode is STRICT
    assert rule.host == "reviews"
    assert rule.traffic_policy == TrafficPolicy(
        tls=None,
        port_level_settings=(
            PortTrafficPolicy(
                9080,
                ClientTls(TlsMode.ISTIO_MUTUAL),
                {"loadBalancer": {"simple": "ROUND_ROBIN"}},
            ),
        ),
        other={"loadBalancer": {"simple": "LEAST_REQUEST"}},
    )
    assert rule.subsets == (Subset("v1", {"version": "v1"}),)
    # what is carried through comes back unchanged
    assert rule.to_manifest()["spec"]["trafficPolicy"]["loadBalancer"] == {
        "simple": "LEAST_REQUEST"
    }


def test_parse_accepts_mappings_and_iterables() -> None:
    manifest = peer_authentication("default", "foo", "STRICT")
    assert parse_policy(manifest) == parse_policies([manifest, None])[0]  # type: ignore[list-item]


# --- builders and the round trip ------------------------------------------------------------


def test_peer_authentication_builder_writes_the_documented_manifest() -> None:
    built = peer_authentication(
        "httpbin", "bar", MtlsMode.STRICT, {"app": "httpbin"}, {8080: "DISABLE"}
    )
    assert built == {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "httpbin", "namespace": "bar"},
        "spec": {
            "selector": {"matchLabels": {"app": "httpbin"}},
            "mtls": {"mode": "STRICT"},
            "portLevelMtls": {"8080": {"mode": "DISABLE"}},
        },
    }
    # the same object as the one the task applies
    assert parse_policy(built) == replace_api(
        parse_policy(AUTHN_BAR_HTTPBIN_PORT_8080_DISABLE), "security.istio.io/v1"
    )
    assert peer_authentication("default", None, api_version="security.istio.io/v1beta1") == {
        "apiVersion": "security.istio.io/v1beta1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default"},
        "spec": {},
    }


def replace_api(policy: Any, api_version: str) -> Any:
    return replace(policy, api_version=api_version)


def test_destination_rule_builder_writes_the_documented_manifest() -> None:
    built = destination_rule(
        "httpbin",
        "bar",
        "httpbin.bar.svc.cluster.local",
        TlsMode.DISABLE,
        port_level={1234: "ISTIO_MUTUAL"},
    )
    assert built == {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "httpbin", "namespace": "bar"},
        "spec": {
            "host": "httpbin.bar.svc.cluster.local",
            "trafficPolicy": {
                "tls": {"mode": "DISABLE"},
                "portLevelSettings": [
                    {"port": {"number": 1234}, "tls": {"mode": "ISTIO_MUTUAL"}},
                ],
            },
        },
    }
    assert destination_rule(
        "x", "foo", "x.example.com", "SIMPLE", sni="x.example.com", subject_alt_names=["x"]
    )["spec"]["trafficPolicy"] == {
        "tls": {"mode": "SIMPLE", "sni": "x.example.com", "subjectAltNames": ["x"]}
    }
    assert destination_rule("bare", None, "bare") == {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "bare"},
        "spec": {"host": "bare"},
    }


def test_builders_refuse_what_istio_refuses() -> None:
    with pytest.raises(PolicyError, match="portLevelMtls requires selector"):
        peer_authentication("p", "foo", "STRICT", port_level={8080: "DISABLE"})
    with pytest.raises(PolicyError, match=r"spec\.mtls\.mode: 'strict' is not one of"):
        peer_authentication("p", "foo", "strict")
    with pytest.raises(PolicyError, match="client certificate required for mutual tls"):
        destination_rule("d", "foo", "db", TlsMode.MUTUAL)
    with pytest.raises(PolicyError, match="sni given without a TLS mode"):
        destination_rule("d", "foo", "db", sni="db")
    with pytest.raises(PolicyError, match=r"metadata\.name"):
        destination_rule("D", "foo", "db")


def test_round_trip_through_yaml_text() -> None:
    manifests = [
        peer_authentication("httpbin", "bar", "STRICT", {"app": "httpbin"}, {8080: "DISABLE"}),
        peer_authentication("default", "istio-system", "UNSET"),
        destination_rule(
            "api",
            "istio-system",
            "kubernetes.default.svc.cluster.local",
            "ISTIO_MUTUAL",
            {443: TlsMode.DISABLE, 80: TlsMode.SIMPLE},
            sni="outbound_.443_._.kubernetes.default.svc.cluster.local",
            subject_alt_names=["spiffe://cluster.local/ns/default/sa/kubernetes"],
        ),
        destination_rule(
            "creds",
            "foo",
            "*.example.com",
            "MUTUAL",
            credential_name="client-credential",
            workload_selector={"app": "sleep"},
            export_to=["."],
        ),
    ]
    for manifest in manifests:
        text = yaml.safe_dump_all([manifest, manifest])
        first, second = parse_policies(text)
        assert first == second == parse_policy(manifest)
        assert first.to_manifest() == manifest


def test_round_trip_keeps_everything_parsed() -> None:
    peer, rule = parse_policies(KUBECTL_GET_LIST)
    for policy in (peer, rule):
        again = parse_policy(yaml.safe_dump(policy.to_manifest()))
        assert again == policy
        assert again.to_manifest() == policy.to_manifest()
    assert peer.to_manifest()["metadata"]["creationTimestamp"] == "2024-03-01T12:00:00Z"


def test_models_are_immutable_and_hashable() -> None:
    policy = parse_policy(AUTHN_BAR_HTTPBIN_PORT_8080_DISABLE)
    assert isinstance(policy, PeerAuthentication)
    with pytest.raises(AttributeError):
        policy.mode = DISABLE  # type: ignore[misc]
    assert policy.selector is not None
    with pytest.raises(TypeError):
        policy.selector["app"] = "other"  # type: ignore[index]
    assert len({policy, parse_policy(AUTHN_BAR_HTTPBIN_PORT_8080_DISABLE)}) == 1


# --- client side: which DestinationRule, which TLS mode -------------------------------------
# istio/istio pilot/pkg/model/push_context_test.go TestSetDestinationRuleWithExportTo: the
# rules (identified by their subsets) and, per proxy/service namespace, the wanted subsets.


def _export_rule(
    name: str, namespace: str, host: str, export_to: tuple[str, ...], subsets: tuple[str, ...]
) -> DestinationRule:
    # built directly, as the Istio test calls setDestinationRules without validation (its
    # rule3 mixes "*" with namespaces, which the webhook would reject)
    return DestinationRule(
        name=name,
        namespace=namespace,
        host=host,
        export_to=export_to,
        subsets=tuple(Subset(subset) for subset in subsets),
    )


EXPORT_TO_TEST_RULES = [
    _export_rule("rule1", "test1", "httpbin.org", (".", "ns1"), ("subset1", "subset2")),
    _export_rule(
        "rule2", "test2", "httpbin.org", ("test2", "ns1", "test1", "newNS"), ("subset3", "subset4")
    ),
    _export_rule("rule3", "test3", "httpbin.org", ("test1", "test2", "*"), ("subset5", "subset6")),
    _export_rule("rule4-local", "test4", "httpbin.org", ("test4",), ("subset15", "subset16")),
    _export_rule("rule4", "istio-system", "httpbin.org", (), ("subset7", "subset8")),
    _export_rule("rule1", "istio-system", "httpbin.org", (".",), ("subset9", "subset10")),
    _export_rule("rule2", "istio-system", "*.org", (".",), ("subset11", "subset12")),
    _export_rule("rule3", "istio-system", "*.app.org", (".",), ("subset13", "subset14")),
    _export_rule("rule5", "test5", "api.test.com", ("istio-system",), ("subset5-0", "subset5-1")),
    _export_rule("rule6", "test6", "api.test.com", ("istio-system",), ("subset6-0", "subset6-1")),
]
EXPORT_TO_TEST_CASES = [
    # (proxyNs, serviceNs, host, wantSubsets)
    ("test1", "test1", "httpbin.org", ["subset1", "subset2"]),
    ("test1", "test2", "httpbin.org", ["subset1", "subset2"]),
    ("test2", "test1", "httpbin.org", ["subset3", "subset4"]),
    ("newNS", "test2", "httpbin.org", ["subset3", "subset4"]),
    ("test3", "test1", "httpbin.org", ["subset5", "subset6"]),
    ("test5", "test4", "httpbin.org", ["subset7", "subset8"]),
    ("ns1", "test1", "httpbin.org", ["subset1", "subset2"]),
    ("ns1", "random", "httpbin.org", ["subset7", "subset8"]),
    ("random", "random", "httpbin.org", ["subset7", "subset8"]),
    ("test3", "random", "httpbin.org", ["subset5", "subset6"]),
    ("istio-system", "random", "httpbin.org", ["subset9", "subset10"]),
    ("istio-system", "istio-system", "httpbin.org", ["subset9", "subset10"]),
    ("istio-system", "istio-system", "foo.app.org", ["subset13", "subset14"]),
    # dr in the svc ns takes effect on proxy in root ns
    ("istio-system", "test5", "api.test.com", ["subset5-0", "subset5-1"]),
    ("istio-system", "test6", "api.test.com", ["subset6-0", "subset6-1"]),
    # both svc and dr namespace is not equal to proxy ns, the dr will not take effect
    ("istio-system", "test7", "api.test.com", None),
]


@pytest.mark.parametrize(
    ("proxy_ns", "service_ns", "host", "want"),
    [pytest.param(*case, id=f"{case[0]}-{case[1]}-{case[2]}") for case in EXPORT_TO_TEST_CASES],
)
def test_istio_destination_rule_with_export_to_cases(
    proxy_ns: str, service_ns: str, host: str, want: list[str] | None
) -> None:
    rules: list[DestinationRule] = list(EXPORT_TO_TEST_RULES)
    if proxy_ns == "newNS":
        # newNS is no Kubernetes namespace name, but Istio's exportTo check accepts it; the
        # client namespace argument is validated, so the case runs with the name lower-cased
        # in both places.
        rules = [
            r if r.name != "rule2" or r.namespace != "test2" else replace_export(r, "newns")
            for r in rules
        ]
        proxy_ns = "newns"
    found = destination_rule_for(rules, proxy_ns, host, service_namespace=service_ns)
    if want is None:
        assert found is None
    else:
        assert found is not None
        assert [subset.name for subset in found.subsets] == want


def replace_export(rule: DestinationRule, namespace: str) -> DestinationRule:
    return replace(rule, export_to=tuple(namespace if e == "newNS" else e for e in rule.export_to))


# The older istio.io "Authentication Policy" task (istio/istio.io authn-policy/index.md before
# PeerAuthentication) configured the client side with these rules and printed the results.
AUTHN_TASK_RULES = """
apiVersion: "networking.istio.io/v1alpha3"
kind: "DestinationRule"
metadata:
  name: "default"
  namespace: "istio-system"
spec:
  host: "*.local"
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
 name: "httpbin-legacy"
 namespace: "legacy"
spec:
 host: "httpbin.legacy.svc.cluster.local"
 trafficPolicy:
   tls:
     mode: DISABLE
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
 name: "api-server"
 namespace: istio-system
spec:
 host: "kubernetes.default.svc.cluster.local"
 trafficPolicy:
   tls:
     mode: DISABLE
"""


def test_authn_task_rules_server_namespace_beats_global() -> None:
    rules = drs(AUTHN_TASK_RULES)

    def mode(client: str, host: str, port: int) -> TlsMode | None:
        return client_tls_mode(destination_rule_for(rules, client, host), port)

    # "sleep.foo to httpbin.bar: 200" through the "*.local" ISTIO_MUTUAL rule
    assert mode("foo", "httpbin.bar.svc.cluster.local", 8000) is TlsMode.ISTIO_MUTUAL
    # "This destination rule is in the namespace of the server (httpbin.legacy), so it will be
    # preferred over the global destination rule defined in istio-system"
    assert mode("foo", "httpbin.legacy.svc.cluster.local", 8000) is TlsMode.DISABLE
    # the exact host in istio-system beats the "*.local" wildcard there
    assert mode("foo", "kubernetes.default.svc.cluster.local", 443) is TlsMode.DISABLE
    rule = destination_rule_for(rules, "foo", "httpbin.legacy.svc.cluster.local")
    assert rule is not None
    assert (rule.namespace, rule.name) == ("legacy", "httpbin-legacy")


# same task, "Policy precedence" and the port-level rule, applied with `kubectl apply -n ...`
OVERWRITE_EXAMPLE_RULES = """
apiVersion: "networking.istio.io/v1alpha3"
kind: "DestinationRule"
metadata:
  name: "default"
  namespace: "foo"
spec:
  host: "*.foo.svc.cluster.local"
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
---
apiVersion: "networking.istio.io/v1alpha3"
kind: "DestinationRule"
metadata:
  name: "overwrite-example"
spec:
  host: httpbin.foo.svc.cluster.local
  trafficPolicy:
    tls:
      mode: DISABLE
"""
PORT_LEVEL_RULE = """
apiVersion: "networking.istio.io/v1alpha3"
kind: "DestinationRule"
metadata:
  name: "httpbin"
spec:
  host: httpbin.bar.svc.cluster.local
  trafficPolicy:
    tls:
      mode: DISABLE
    portLevelSettings:
    - port:
        number: 1234
      tls:
        mode: ISTIO_MUTUAL
"""


def test_authn_task_exact_host_beats_namespace_wildcard() -> None:
    rules = drs(OVERWRITE_EXAMPLE_RULES, namespace="foo")
    for client in ("foo", "bar"):
        rule = destination_rule_for(rules, client, "httpbin.foo.svc.cluster.local")
        assert rule is not None and rule.name == "overwrite-example"
        assert client_tls_mode(rule, 8000) is TlsMode.DISABLE
    other = destination_rule_for(rules, "bar", "sleep.foo.svc.cluster.local")
    assert client_tls_mode(other, 80) is TlsMode.ISTIO_MUTUAL


def test_port_level_settings_override_the_rule_tls() -> None:
    # "The new policy will apply only to the httpbin service on port 1234. As a result, mutual
    # TLS is disabled (again) on port 8000"
    (rule,) = drs(PORT_LEVEL_RULE, namespace="bar")
    assert client_tls_mode(rule, 8000) is TlsMode.DISABLE
    assert client_tls_mode(rule, 1234) is TlsMode.ISTIO_MUTUAL


def test_port_level_entry_without_tls_falls_back_to_auto_mtls() -> None:
    # GetPortLevelTrafficPolicy (formerly in MergeTrafficPolicy): "per the docs, port level
    # policies do not inherit and instead to defaults if not provided"
    (rule,) = drs(
        DR_HEAD
        + META
        + """spec:
  host: db
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 5432}
      connectionPool: {tcp: {maxConnections: 10}}
"""
    )
    assert client_tls_mode(rule, 5432) is None
    assert client_tls_mode(rule, 80) is TlsMode.ISTIO_MUTUAL
    assert client_tls_mode(None, 80) is None
    settings = client_tls_settings(rule, 80)
    assert settings == ClientTls(TlsMode.ISTIO_MUTUAL)


def test_traffic_policy_without_tls_leaves_tls_to_auto_mtls() -> None:
    rule = parse_policy(
        DR_HEAD + META + "spec: {host: db, trafficPolicy: {loadBalancer: {simple: RANDOM}}}\n"
    )
    assert isinstance(rule, DestinationRule)
    assert client_tls_mode(rule, 80) is None
    (tls_empty,) = drs(DR_HEAD + META + "spec: {host: db, trafficPolicy: {tls: {}}}\n")
    assert client_tls_mode(tls_empty, 80) is TlsMode.DISABLE  # proto default, explicit


def test_client_namespace_rule_comes_first() -> None:
    rules = [
        parse_policy(
            destination_rule("mine", "sleep-ns", "httpbin.foo.svc.cluster.local", "DISABLE")
        ),
        parse_policy(destination_rule("server", "foo", "httpbin.foo.svc.cluster.local", "SIMPLE")),
        parse_policy(destination_rule("mesh", "istio-system", "*", "ISTIO_MUTUAL")),
    ]
    found = destination_rule_for(rules, "sleep-ns", "httpbin.foo.svc.cluster.local")
    assert found is not None and found.name == "mine"
    found = destination_rule_for(rules, "other", "httpbin.foo.svc.cluster.local")
    assert found is not None and found.name == "server"
    found = destination_rule_for(rules, "other", "reviews.bar.svc.cluster.local")
    assert found is not None and found.name == "mesh"


def test_short_host_is_resolved_in_the_rule_namespace() -> None:
    # destination_rule.proto: "A rule in the default namespace containing a host reviews will be
    # interpreted as reviews.default.svc.cluster.local"
    in_default = parse_policy(destination_rule("reviews", "default", "reviews", "DISABLE"))
    assert destination_rule_for([in_default], "prod", "reviews.prod.svc.cluster.local") is None
    found = destination_rule_for([in_default], "prod", "reviews.default.svc.cluster.local")
    assert found is not None and found.host == "reviews.default.svc.cluster.local"


def test_workload_selector_rule_applies_to_matching_clients_only() -> None:
    host = "httpbin.foo.svc.cluster.local"
    rules = [
        parse_policy(
            destination_rule(
                "sleep-only", "foo", host, "DISABLE", workload_selector={"app": "sleep"}
            )
        ),
        parse_policy(destination_rule("all", "foo", host, "SIMPLE")),
    ]
    chosen = destination_rule_for(rules, "foo", host, client_labels={"app": "sleep", "v": "1"})
    assert chosen is not None and chosen.name == "sleep-only"
    chosen = destination_rule_for(rules, "foo", host, client_labels={"app": "curl"})
    assert chosen is not None and chosen.name == "all"
    assert destination_rule_for(rules, "foo", host) == chosen
    # a selector rule is private to its namespace: a client elsewhere gets the exported one
    chosen = destination_rule_for(rules, "baz", host, client_labels={"app": "sleep"})
    assert chosen is not None and chosen.name == "all"


def test_non_matching_selector_rule_hides_the_root_rule() -> None:
    # PushContext.destinationRule stops at the client's namespace as soon as a host matches;
    # SidecarScope.DestinationRule then finds no catch-all rule there.
    rules = [
        parse_policy(
            destination_rule(
                "sel",
                "foo",
                "httpbin.bar.svc.cluster.local",
                "DISABLE",
                workload_selector={"a": "b"},
            )
        ),
        parse_policy(destination_rule("mesh", "istio-system", "*.local", "ISTIO_MUTUAL")),
    ]
    assert destination_rule_for(rules, "foo", "httpbin.bar.svc.cluster.local") is None
    assert destination_rule_for(rules, "qux", "httpbin.bar.svc.cluster.local") is not None


def test_rules_for_one_host_in_one_namespace_merge_oldest_first() -> None:
    # mergeDestinationRule: the oldest rule's metadata, subsets added, and the first top-level
    # traffic policy found (here the newer rule's, as the older one has none)
    older = parse_policy(
        DR_HEAD
        + "metadata: {name: subsets, namespace: foo, creationTimestamp: '2024-01-01T00:00:00Z'}\n"
        + "spec: {host: db.foo.svc.cluster.local, subsets: [{name: v1}]}\n"
    )
    newer = parse_policy(
        DR_HEAD
        + "metadata: {name: tls, namespace: foo, creationTimestamp: '2024-01-02T00:00:00Z'}\n"
        + "spec: {host: db.foo.svc.cluster.local, trafficPolicy: {tls: {mode: DISABLE}},"
        + " subsets: [{name: v1}, {name: v2}]}\n"
    )
    for order in ([older, newer], [newer, older]):
        merged = destination_rule_for(order, "foo", "db.foo.svc.cluster.local")
        assert merged is not None
        assert merged.name == "subsets"
        assert [s.name for s in merged.subsets] == ["v1", "v2"]
        assert client_tls_mode(merged, 5432) is TlsMode.DISABLE


def test_not_exported_most_specific_rule_blocks_wildcard_of_same_namespace() -> None:
    # getExportedDestinationRuleFromNamespace filters exportTo after picking the most specific
    # host, so an exact rule exported only to another namespace hides the public wildcard of
    # its own namespace from this client.
    rules = [
        parse_policy(
            destination_rule(
                "exact", "bar", "httpbin.bar.svc.cluster.local", "DISABLE", export_to=["baz"]
            )
        ),
        parse_policy(destination_rule("wild", "bar", "*.bar.svc.cluster.local", "SIMPLE")),
        parse_policy(destination_rule("mesh", "istio-system", "*.local", "ISTIO_MUTUAL")),
    ]
    found = destination_rule_for(rules, "foo", "httpbin.bar.svc.cluster.local")
    assert found is not None and found.name == "mesh"
    found = destination_rule_for(rules, "foo", "sleep.bar.svc.cluster.local")
    assert found is not None and found.name == "wild"
    found = destination_rule_for(rules, "baz", "httpbin.bar.svc.cluster.local")
    assert found is not None and found.name == "exact"


def test_destination_rule_for_rejects_bad_arguments() -> None:
    with pytest.raises(PolicyError, match="without wildcards"):
        destination_rule_for([], "foo", "*.bar.svc.cluster.local")
    with pytest.raises(PolicyError, match="client_namespace"):
        destination_rule_for([], "Foo", "a.b")
    with pytest.raises(PolicyError, match="given twice"):
        rule = parse_policy(destination_rule("a", "foo", "a"))
        destination_rule_for([rule, rule], "foo", "a.foo.svc.cluster.local")
    with pytest.raises(PolicyError, match="port must be in range"):
        client_tls_mode(None, 70000)


# --- property tests ------------------------------------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=12)
FIELD_NAMES = st.sampled_from(
    [
        "apiVersion",
        "kind",
        "metadata",
        "spec",
        "name",
        "namespace",
        "selector",
        "matchLabels",
        "mtls",
        "mode",
        "portLevelMtls",
        "host",
        "trafficPolicy",
        "tls",
        "portLevelSettings",
        "port",
        "number",
        "subsets",
        "exportTo",
        "workloadSelector",
        "loadBalancer",
        "creationTimestamp",
        "8080",
    ]
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(FIELD_NAMES | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
KIND_AND_VERSION = st.sampled_from(
    [
        ("PeerAuthentication", "security.istio.io/v1"),
        ("PeerAuthentication", "security.istio.io/v1beta1"),
        ("DestinationRule", "networking.istio.io/v1"),
        ("DestinationRule", "networking.istio.io/v1alpha3"),
        ("DestinationRule", "security.istio.io/v1"),
        ("Sidecar", "networking.istio.io/v1"),
    ]
)
MODES = st.sampled_from(["UNSET", "DISABLE", "PERMISSIVE", "STRICT", "strict", "", 3, None])
TLS_MODES = st.sampled_from(["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL", "mtls", None])
PORTS = st.sampled_from([0, 1, 80, 8080, 65535, 65536, -1, "8080", "http", True])


METADATA = st.fixed_dictionaries(
    {"name": st.sampled_from(["p", "Bad", "", "a.b"])},
    optional={
        "namespace": st.sampled_from(["foo", "Foo", "istio-system"]),
        "creationTimestamp": st.sampled_from(["2020-02-02T02:02:02Z", "2020-02-02", "x"]),
    },
)
PA_SPECS = st.fixed_dictionaries(
    {},
    optional={
        "selector": st.fixed_dictionaries(
            {"matchLabels": st.dictionaries(st.text(max_size=3), JSON_SCALARS, max_size=2)}
        ),
        "mtls": st.fixed_dictionaries({"mode": MODES}),
        "portLevelMtls": st.dictionaries(
            PORTS, st.fixed_dictionaries({"mode": MODES}) | JSON_SCALARS, max_size=3
        ),
    },
)
TLS_SETTINGS = st.fixed_dictionaries(
    {"mode": TLS_MODES},
    optional={
        **{
            key: st.sampled_from(["/x.pem", "", 1])
            for key in ("clientCertificate", "privateKey", "credentialName", "caCertificates")
        },
        "sni": st.sampled_from(["db", ""]),
        "insecureSkipVerify": st.sampled_from([True, False, "yes"]),
    },
)
TRAFFIC_POLICIES = st.fixed_dictionaries(
    {},
    optional={
        "tls": TLS_SETTINGS,
        "loadBalancer": st.sampled_from([{"simple": "RANDOM"}, "RANDOM"]),
        "portLevelSettings": st.lists(
            st.fixed_dictionaries(
                {"port": st.fixed_dictionaries({"number": PORTS})},
                optional={"tls": st.fixed_dictionaries({"mode": TLS_MODES})},
            ),
            max_size=2,
        ),
    },
)
DR_SPECS = st.fixed_dictionaries(
    {"host": st.sampled_from(["db", "*.local", "a.*.b", "", "10.0.0.1", 7])},
    optional={
        "trafficPolicy": TRAFFIC_POLICIES,
        "exportTo": st.lists(st.sampled_from([".", "*", "~", "foo", "Bar"]), max_size=3),
        "subsets": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["v1", "v1.0", ""])},
                optional={"trafficPolicy": TRAFFIC_POLICIES},
            ),
            max_size=2,
        ),
        "workloadSelector": st.fixed_dictionaries({"matchLabels": st.just({"app": "a"})}),
    },
)


def _document(api_version: str, kind: str) -> Any:
    return lambda metadata, spec: {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": metadata,
        "spec": spec,
    }


# documents close enough to valid that the deep checks run (mostly well-formed metadata)
GOOD_METADATA = st.fixed_dictionaries(
    {"name": st.just("p")}, optional={"namespace": st.just("foo")}
)
NEAR_VALID_DOCUMENTS = st.one_of(
    st.builds(_document("security.istio.io/v1", "PeerAuthentication"), GOOD_METADATA, PA_SPECS),
    st.builds(_document("networking.istio.io/v1", "DestinationRule"), GOOD_METADATA, DR_SPECS),
    st.builds(_document("networking.istio.io/v1", "DestinationRule"), GOOD_METADATA, DR_SPECS),
    st.builds(
        lambda kind_version, metadata, spec: _document(kind_version[1], kind_version[0])(
            metadata, spec
        ),
        KIND_AND_VERSION,
        METADATA,
        PA_SPECS | DR_SPECS,
    ),
)


YAML_TOKENS = st.sampled_from(
    [
        "apiVersion: security.istio.io/v1\n",
        "kind: PeerAuthentication\n",
        "kind: DestinationRule\n",
        "metadata: {name: p}\n",
        "spec:\n",
        "  mtls: {mode: STRICT}\n",
        "  portLevelMtls: {8080: {mode: DISABLE}}\n",
        "  selector: {matchLabels: {app: a}}\n",
        "  host: db\n",
        "---\n",
        "&a [*a]\n",
        "x: !!binary aGk=\n",
        "- 1\n",
        ": :\n",
        "{",
        "'",
        "\t",
        "\x00",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.lists(YAML_TOKENS, max_size=12).map("".join))
def test_any_text_gives_policies_or_policy_error(text: str) -> None:
    try:
        result = parse_policies(text)
    except PolicyError:
        return
    assert all(isinstance(p, PeerAuthentication | DestinationRule) for p in result)


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {"apiVersion": st.sampled_from(["security.istio.io/v1", "networking.istio.io/v1"])},
        optional={
            "kind": st.sampled_from(["PeerAuthentication", "DestinationRule", "List"]),
            "metadata": JSON_VALUES,
            "spec": JSON_VALUES,
            "items": JSON_VALUES,
        },
    )
    | JSON_VALUES
)
def test_any_mapping_gives_a_policy_or_policy_error(document: Any) -> None:
    try:
        parse_policies([document])
    except PolicyError:
        return


@settings(max_examples=250, deadline=None)
@given(NEAR_VALID_DOCUMENTS)
def test_near_valid_documents_give_a_policy_or_policy_error(document: dict[str, Any]) -> None:
    try:
        policy = parse_policy(document)
    except PolicyError as error:
        assert error.path or error.problem
        return
    # whatever parses survives the round trip through YAML unchanged
    assert parse_policy(yaml.safe_dump(policy.to_manifest())) == policy


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


RULE_SELECTOR = st.sampled_from([None, {"app": "sleep"}])
EXPORT_TO = st.sampled_from([(), (".",), ("*",), ("foo", "bar")])
RULE_PORT_LEVEL = st.sampled_from([(), (PortTrafficPolicy(8000, ClientTls(TlsMode.DISABLE)),)])
RULE_TLS = st.sampled_from([None, ClientTls(TlsMode.ISTIO_MUTUAL), ClientTls(TlsMode.SIMPLE)])
RULE_HOST = st.sampled_from(["httpbin", "httpbin.bar.svc.cluster.local", "*.local", "*"])


@st.composite
def rule_sets(draw: st.DrawFn) -> list[DestinationRule]:
    seconds = draw(SECONDS)
    parts = draw(
        st.lists(
            st.tuples(NAMESPACE, RULE_HOST, RULE_SELECTOR, EXPORT_TO, RULE_TLS, RULE_PORT_LEVEL),
            min_size=len(seconds),
            max_size=len(seconds),
        )
    )
    rules = []
    for index, (second, part) in enumerate(zip(seconds, parts, strict=True)):
        namespace, host, selector, export_to, tls, port_level = part
        rules.append(
            DestinationRule(
                name=f"r{index}",
                namespace=namespace,
                host=host,
                traffic_policy=TrafficPolicy(tls, port_level) if tls or port_level else None,
                subsets=(Subset(f"s{index}"),),
                export_to=() if selector else export_to,
                workload_selector=selector,
                creation_timestamp=NOW + timedelta(seconds=second),
            )
        )
    return rules


@settings(max_examples=200, deadline=None)
@given(
    rule_sets().flatmap(lambda rs: st.tuples(st.just(rs), st.permutations(rs))),
    NAMESPACE,
    st.sampled_from([{}, {"app": "sleep"}]),
)
def test_destination_rule_lookup_is_order_free(
    rules_and_shuffled: tuple[list[DestinationRule], list[DestinationRule]],
    client: str,
    labels: dict[str, str],
) -> None:
    rules, shuffled = rules_and_shuffled
    host = "httpbin.bar.svc.cluster.local"
    found = destination_rule_for(rules, client, host, client_labels=labels)
    assert destination_rule_for(shuffled, client, host, client_labels=labels) == found
    mode = client_tls_mode(found, 8000)
    assert mode is None or isinstance(mode, TlsMode)


LABEL_TEXT = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(
    name=LABEL_TEXT,
    namespace=st.none() | LABEL_TEXT,
    mode=st.none() | st.sampled_from(list(MtlsMode)),
    selector=st.none() | st.dictionaries(LABEL_TEXT, LABEL_TEXT, max_size=3),
    ports=st.dictionaries(st.integers(1, 65535), st.sampled_from(list(MtlsMode)), max_size=3),
)
def test_peer_authentication_builder_round_trips(
    name: str,
    namespace: str | None,
    mode: MtlsMode | None,
    selector: dict[str, str] | None,
    ports: dict[int, MtlsMode],
) -> None:
    try:
        manifest = peer_authentication(name, namespace, mode, selector, ports or None)
    except PolicyError as error:
        assert ports and not selector and "portLevelMtls requires selector" in str(error)
        return
    parsed = parse_policy(yaml.safe_dump(manifest))
    assert parsed == PeerAuthentication(name, namespace, mode, selector, ports)
    assert parsed.to_manifest() == manifest


@settings(max_examples=200, deadline=None)
@given(
    name=LABEL_TEXT,
    namespace=st.none() | LABEL_TEXT,
    host=st.sampled_from(
        ["httpbin", "httpbin.foo.svc.cluster.local", "*.local", "*", "a-b.example.com"]
    ),
    mode=st.none() | st.sampled_from([TlsMode.DISABLE, TlsMode.SIMPLE, TlsMode.ISTIO_MUTUAL]),
    ports=st.dictionaries(st.integers(1, 65535), st.sampled_from(list(TlsMode)), max_size=3),
    sni=st.none() | st.sampled_from(["outbound_.8000_._.httpbin.foo.svc.cluster.local"]),
)
def test_destination_rule_builder_round_trips(
    name: str,
    namespace: str | None,
    host: str,
    mode: TlsMode | None,
    ports: dict[int, TlsMode],
    sni: str | None,
) -> None:
    try:
        manifest = destination_rule(name, namespace, host, mode, ports, sni=sni)
    except PolicyError as error:
        assert (sni and mode is None) or TlsMode.MUTUAL in ports.values(), str(error)
        return
    parsed = parse_policy(yaml.safe_dump(manifest))
    assert isinstance(parsed, DestinationRule)
    assert parsed.to_manifest() == manifest
    for port, port_mode in ports.items():
        assert client_tls_mode(parsed, port) is port_mode
    other_port = next(port for port in range(1, 10) if port not in ports)
    assert client_tls_mode(parsed, other_port) is mode
