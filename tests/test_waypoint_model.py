"""Waypoints in the model (issue 20): ``targetRefs`` parsed as istiod validates them, which
policies bind to a waypoint, which Services use one, and the RBAC filters istiod builds for it.

Expectations are transcribed from istio/istio at the commit docs/istio-model.md names:

- ``TestPolicyMatcher`` (pilot/pkg/model/policyattachment_test.go): its waypoint and
  non-gateway rows, literally (the row with both a targetRef and a selector is left out: the
  validation below refuses that policy);
- ``validatePolicyTargetReference`` / ``validateOneOfSelectorType`` messages
  (pkg/config/validation/validation.go);
- ``TestGenerator`` (pilot/pkg/security/authz/model/generator_test.go): the
  ``srcPrincipalGenerator`` and ``srcNamespaceGenerator`` principals on the
  ``io.istio.peer_principal`` filter state, as waypoints match them;
- ``convertAuthorizationPolicy`` ("TargetRef is not intended for ztunnel"),
  ``GetUseWaypoint``, ``fetchWaypointForService`` / ``fetchWaypointForWorkload`` traffic types
  (pilot/pkg/serviceregistry/ambient/);
- ``WaypointPolicyStatusCollection`` messages (pilot/pkg/serviceregistry/ambient/policies.go).
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_meshconform import authorization_policy
from pytest_meshconform.istio import authorization_for
from pytest_meshconform.istio.ambient import convert_authorization_policy, ztunnel_policies
from pytest_meshconform.istio.api import AuthorizationPolicy, PolicyError, parse_policy
from pytest_meshconform.istio.rbac import RbacRequest, rbac_verdict
from pytest_meshconform.istio.waypoint import (
    service_waypoint,
    target_ref_problem,
    use_waypoint,
    waypoint_authorization,
    waypoint_gateway,
    waypoint_policies,
    workload_waypoint,
)
from pytest_meshconform.mesh import Service, Waypoint, Workload

ROOT = "istio-system"
GATEWAY = {"group": "gateway.networking.k8s.io", "kind": "Gateway"}
WAYPOINT_REF = {**GATEWAY, "name": "sample-waypoint"}
SAMPLE_REF = {**GATEWAY, "name": "sample-gateway"}
CLASS_REF = {"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": "istio-waypoint"}
SERVICE_REF = {"group": "", "kind": "Service", "name": "sample-svc"}
SAMPLE_WAYPOINT = Waypoint("sample-waypoint", "default")
SAMPLE_SVC = Service("sample-svc", "default", 80, 8080, "my-app")


def _policy(
    target_refs: list[dict[str, str]] | None = None,
    *,
    namespace: str = "default",
    name: str = "policy1",
    selector: dict[str, str] | None = None,
) -> AuthorizationPolicy:
    manifest = authorization_policy(
        name, namespace, "ALLOW", [{}], selector=selector, target_refs=target_refs
    )
    policy = parse_policy(manifest)
    assert isinstance(policy, AuthorizationPolicy)
    return policy


# TestPolicyMatcher's waypoint rows: (name, policy, waypoint, service, expected)
POLICY_MATCHER = [
    ("waypoint and a targetRef", _policy([WAYPOINT_REF]), SAMPLE_WAYPOINT, None, True),
    (
        "waypoint and a selector",
        _policy(selector={"gateway.networking.k8s.io/gateway-name": "sample-waypoint"}),
        SAMPLE_WAYPOINT,
        None,
        False,
    ),
    ("waypoint and no targetRef or selector", _policy(), SAMPLE_WAYPOINT, None, False),
    ("waypoint and non-matching targetRef", _policy([SAMPLE_REF]), SAMPLE_WAYPOINT, None, False),
    (
        "waypoint and partial matching targetRefs",
        _policy([WAYPOINT_REF, SAMPLE_REF]),
        SAMPLE_WAYPOINT,
        None,
        True,
    ),
    ("service attached policy", _policy([SERVICE_REF]), SAMPLE_WAYPOINT, SAMPLE_SVC, True),
    (
        "gateway attached policy with service",
        _policy([WAYPOINT_REF]),
        SAMPLE_WAYPOINT,
        SAMPLE_SVC,
        True,
    ),
    (
        "gateway attached policy with cross-namespace service",
        _policy([WAYPOINT_REF]),
        Waypoint("sample-waypoint", "waypoint"),
        SAMPLE_SVC,
        False,
    ),
    (
        "gateway class attached policy in root namespace",
        _policy([CLASS_REF], namespace=ROOT, name="global-default"),
        SAMPLE_WAYPOINT,
        None,
        True,
    ),
    (
        "gateway class attached policy in non-root namespace",
        _policy([CLASS_REF]),
        SAMPLE_WAYPOINT,
        None,
        False,
    ),
]


@pytest.mark.parametrize(
    ("policy", "waypoint", "service", "expected"),
    [row[1:] for row in POLICY_MATCHER],
    ids=[row[0] for row in POLICY_MATCHER],
)
def test_which_policies_bind_to_a_waypoint(
    policy: AuthorizationPolicy, waypoint: Waypoint, service: Service | None, expected: bool
) -> None:
    bound = waypoint_policies(waypoint, service, [policy], ROOT)
    assert bound == ((policy,) if expected else ())


def test_a_sidecar_ignores_a_target_ref_policy_and_keeps_selector_ones() -> None:
    """TestPolicyMatcher: "non-gateway API workload and a targetRef" (false), "... and a
    selector" (true), "... and no targetRef or selector" (true)."""
    app = Workload("my-app", "default", "my-app", "my-app", True, {"app": "my-app"})
    targeted = _policy([WAYPOINT_REF], name="targeted")
    selected = _policy(selector={"app": "my-app"}, name="selected")
    everyone = _policy(name="everyone")
    applying = authorization_for(app, [targeted, selected, everyone]).policies
    assert [p.name for p in applying] == ["everyone", "selected"]


def test_ztunnel_gets_no_target_ref_policy() -> None:
    """convertAuthorizationPolicy: "TargetRef is not intended for ztunnel"."""
    policy = _policy([SERVICE_REF])
    assert convert_authorization_policy(ROOT, policy) == (None, None)
    assert ztunnel_policies([policy], "default", {"app": "my-app"}, ROOT) == ()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"selector": {"matchLabels": {"app": "a"}}, "targetRefs": [WAYPOINT_REF]},
            "spec: only one of targetRefs or workloadSelector can be set",
        ),
        (
            {"targetRef": WAYPOINT_REF, "targetRefs": [WAYPOINT_REF]},
            "spec: only one of targetRefs or workloadSelector can be set",
        ),
        (
            {"targetRefs": [{**WAYPOINT_REF, "namespace": "other"}]},
            "spec.targetRefs[0].namespace: targetRef namespace must not be set; cross namespace"
            " referencing is not supported",
        ),
        ({"targetRefs": [{**GATEWAY}]}, "spec.targetRefs[0]: targetRef name must be set"),
        (
            {"targetRefs": [{"group": "apps", "kind": "Deployment", "name": "x"}]},
            "spec.targetRefs[0]: targetRef must be to one of [core/v1/Service"
            " networking.istio.io/v1/ServiceEntry gateway.networking.k8s.io/v1/Gateway"
            " gateway.networking.k8s.io/v1/GatewayClass] but was apps/Deployment",
        ),
    ],
)
def test_target_refs_are_validated_as_istiod_validates_them(
    spec: dict[str, Any], message: str
) -> None:
    manifest = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": spec,
    }
    with pytest.raises(PolicyError) as caught:
        parse_policy(manifest)
    assert message in str(caught.value)


def test_target_refs_round_trip_and_the_older_target_ref_is_kept_as_given() -> None:
    plural = _policy([SERVICE_REF])
    assert plural.to_manifest()["spec"]["targetRefs"] == [SERVICE_REF]
    single = parse_policy(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"targetRef": WAYPOINT_REF},
        }
    )
    assert isinstance(single, AuthorizationPolicy)
    assert single.to_manifest()["spec"]["targetRef"] == WAYPOINT_REF
    assert waypoint_policies(SAMPLE_WAYPOINT, None, [single], ROOT) == (single,)


def test_waypoint_rbac_matches_peers_on_the_filter_state() -> None:
    """generator_test.go: srcPrincipalGenerator ``exact: spiffe://foo`` and
    srcNamespaceGenerator ``safeRegex: .*/ns/foo/.*``, both on ``io.istio.peer_principal``."""
    policy = parse_policy(
        authorization_policy(
            "viewer",
            "default",
            "ALLOW",
            [{"from": [{"source": {"principals": ["foo"], "namespaces": ["foo"]}}]}],
            target_refs=[SERVICE_REF],
        )
    )
    authz = waypoint_authorization(SAMPLE_WAYPOINT, SAMPLE_SVC, [policy], root_namespace=ROOT)
    (rbac,) = authz.http_filters()
    principal = rbac["typed_config"]["rules"]["policies"]["ns[default]-policy[viewer]-rule[0]"][
        "principals"
    ][0]["and_ids"]["ids"]
    assert principal == [
        {
            "or_ids": {
                "ids": [
                    {
                        "filter_state": {
                            "key": "io.istio.peer_principal",
                            "string_match": {"exact": "spiffe://foo"},
                        }
                    }
                ]
            }
        },
        {
            "or_ids": {
                "ids": [
                    {
                        "filter_state": {
                            "key": "io.istio.peer_principal",
                            "string_match": {"safe_regex": {"regex": ".*/ns/foo/.*"}},
                        }
                    }
                ]
            }
        },
    ]


@pytest.mark.parametrize(
    ("principal", "verdict"),
    [
        ("spiffe://cluster.local/ns/foo/sa/viewer", "allowed"),
        ("spiffe://cluster.local/ns/bar/sa/viewer", "denied"),  # another namespace
        (None, "denied"),  # no peer certificate: nothing in the filter state
    ],
)
def test_envoys_verdict_at_a_waypoint_reads_the_peer_from_the_filter_state(
    principal: str | None, verdict: str
) -> None:
    """Envoy's ``FilterStateMatcher`` (source/extensions/filters/common/rbac/matchers.cc)
    matches the string the waypoint's HBONE termination put under ``io.istio.peer_principal``
    (the tunnel's client URI SAN); a connection without one never matches. The audit predicts
    a waypoint's verdict on its probe with it (`rbac_verdict`)."""
    policy = parse_policy(
        authorization_policy(
            "viewer",
            "default",
            "ALLOW",
            [{"from": [{"source": {"namespaces": ["foo"]}}]}],
            target_refs=[SERVICE_REF],
        )
    )
    authz = waypoint_authorization(SAMPLE_WAYPOINT, SAMPLE_SVC, [policy], root_namespace=ROOT)
    get = {":authority": "httpbin:8000", ":method": "GET", ":path": "/"}
    request = RbacRequest(port=8000, principal=principal, headers=get)
    assert rbac_verdict(authz, request) == verdict
    assert rbac_verdict(authz, RbacRequest(port=8000, principal=principal)) == verdict  # TCP


def test_use_waypoint_labels_and_traffic_types() -> None:
    """GetUseWaypoint (``none`` opts out, ``istio.io/use-waypoint-namespace`` names another
    namespace), fetchWaypointForTarget (the object's label before its namespace's),
    fetchWaypointForService (``service`` or ``all``) and fetchWaypointForWorkload (``workload``
    or ``all``)."""
    assert use_waypoint({"istio.io/use-waypoint": "none"}, "ns") == (None, True)
    assert use_waypoint(
        {"istio.io/use-waypoint": "wp", "istio.io/use-waypoint-namespace": "infra"}, "ns"
    ) == (("infra", "wp"), False)
    namespace_wp = Waypoint("waypoint", "ns")
    own = Waypoint("own", "ns", "all")
    for_workloads = Waypoint("pods", "ns", "workload")
    waypoints = [namespace_wp, own, for_workloads]
    ns_labels = {"istio.io/use-waypoint": "waypoint"}
    assert service_waypoint({}, "ns", ns_labels, waypoints) == namespace_wp
    assert service_waypoint({"istio.io/use-waypoint": "own"}, "ns", ns_labels, waypoints) == own
    assert service_waypoint({"istio.io/use-waypoint": "none"}, "ns", ns_labels, waypoints) is None
    assert service_waypoint({"istio.io/use-waypoint": "pods"}, "ns", {}, waypoints) is None
    assert service_waypoint({"istio.io/use-waypoint": "missing"}, "ns", {}, waypoints) is None
    # the default traffic type is service: pod-addressed traffic does not use it
    assert workload_waypoint({}, "ns", ns_labels, waypoints) is None
    assert workload_waypoint({"istio.io/use-waypoint": "pods"}, "ns", {}, waypoints) == (
        for_workloads
    )
    assert workload_waypoint({"istio.io/use-waypoint": "own"}, "ns", {}, waypoints) == own


def test_the_gateway_istioctl_writes() -> None:
    """makeGateway (istioctl/pkg/waypoint/waypoint.go)."""
    assert waypoint_gateway(Waypoint("waypoint", "default")) == {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "waypoint", "namespace": "default"},
        "spec": {
            "gatewayClassName": "istio-waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    }
    assert Waypoint("waypoint", "default").spiffe_id("cluster.local") == (
        "spiffe://cluster.local/ns/default/sa/waypoint"
    )


def test_a_target_ref_that_binds_nothing_says_why() -> None:
    """WaypointPolicyStatusCollection's messages: a Service that is missing or uses no
    waypoint, a Gateway that is no waypoint, a GatewayClass outside the root namespace."""
    bound = Service("api", "default", 80, 8080, "api")
    unbound = Service("db", "default", 5432, 5432, "db")
    services = [bound, unbound]

    def waypoint_of(service: Service) -> Waypoint | None:
        return SAMPLE_WAYPOINT if service == bound else None

    def problem(ref: dict[str, str], namespace: str = "default") -> str | None:
        policy = _policy([ref], namespace=namespace)
        return target_ref_problem(policy, [SAMPLE_WAYPOINT], services, waypoint_of, ROOT)

    assert problem({"group": "", "kind": "Service", "name": "api"}) is None
    assert problem({"group": "", "kind": "Service", "name": "db"}) == (
        "Service default/db is not bound to a waypoint"
    )
    assert problem({"group": "", "kind": "Service", "name": "nope"}) == (
        "Service default/nope was not found"
    )
    assert problem(WAYPOINT_REF) is None
    assert problem(SAMPLE_REF) == (
        "Gateway default/sample-gateway is not a waypoint (waypoints: default/sample-waypoint)"
    )
    assert problem(CLASS_REF, ROOT) is None
    assert problem(CLASS_REF) == (
        "AuthorizationPolicy must be in the root namespace `istio-system` when referencing a"
        " GatewayClass"
    )
