"""L7 authorization through a waypoint: who may call httpbin.bar, in one table per policy.

Runs where a waypoint serves httpbin.bar (the `waypoint` feature: the local mesh's built-in
topology under ``--mesh-dataplane=ambient``, whose namespace `bar` has the namespace waypoint
`waypoint`); elsewhere it is skipped, naming the feature. Clients: sleep in foo and bar
(ambient: their ztunnels send Service traffic to the waypoint) and sleep.legacy (no data plane:
its plaintext goes straight to the pod, past the waypoint). Expectations are transcribed from
istio.io:

- ambient getting started, "Enforce Layer 7 authorization policy"
  (docs/ambient/getting-started/enforce-auth-policies): a policy with ``targetRefs`` to the
  Service is enforced by the waypoint; a method or a caller the policy does not allow is
  answered ``RBAC: access denied`` (``403``);
- "Use Layer 7 features" (docs/ambient/usage/l7-features): ``targetRefs`` to the Gateway
  applies the policy to all the waypoint's traffic;
- "Use Layer 4 security policy" (docs/ambient/usage/l4-policy, "Authorization policy
  attachment"): a ``targetRefs`` policy is enforced by the waypoint with the client pod's
  identity, a selector policy by the destination ztunnel with the waypoint's identity; a
  policy on the workload that admits only the waypoint keeps traffic from bypassing it (the
  plaintext of a pod without ztunnel never reaches the waypoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from pytest_meshconform import (
    DENIED,
    RESET,
    Call,
    CallTable,
    Outcome,
    authorization_policy,
)

pytestmark = pytest.mark.mesh_features("authorization", "waypoint")

SERVER = "httpbin.bar"
OK = Outcome("200", status=200)
HTTPBIN_SERVICE = [{"kind": "Service", "group": "", "name": "httpbin"}]
WAYPOINT_GATEWAY = [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}]
SLEEP_FOO = "cluster.local/ns/foo/sa/sleep"
WAYPOINT = "cluster.local/ns/bar/sa/waypoint"


def allow(name: str, rules: list[dict[str, Any]], **bind: Any) -> dict[str, Any]:
    return authorization_policy(name, "bar", "ALLOW", rules, **bind)


@dataclass(frozen=True)
class Case:
    name: str
    policies: tuple[dict[str, Any], ...]
    calls: tuple[Call, ...]


def get(client: str, want: Outcome) -> Call:
    return Call(f"sleep.{client}", SERVER, want, "GET", "/get")


CASES = [
    Case(
        "no policy: everything allowed",
        (),
        (get("foo", OK), get("bar", OK), get("legacy", OK)),
    ),
    Case(
        # getting started: GET only, from one principal, bound to the Service
        "targetRefs Service: GET from sleep.foo only",
        (
            allow(
                "httpbin-viewer",
                [
                    {
                        "from": [{"source": {"principals": [SLEEP_FOO]}}],
                        "to": [{"operation": {"methods": ["GET"]}}],
                    }
                ],
                target_refs=HTTPBIN_SERVICE,
            ),
        ),
        (
            get("foo", OK),
            Call("sleep.foo", SERVER, DENIED, "DELETE", "/delete"),
            get("bar", DENIED),
            # the waypoint never sees a plaintext client's request: the policy does not either
            get("legacy", OK),
        ),
    ),
    Case(
        "targetRefs Gateway: DENY POST for all the waypoint's traffic",
        (
            authorization_policy(
                "no-posts",
                "bar",
                "DENY",
                [{"to": [{"operation": {"methods": ["POST"]}}]}],
                target_refs=WAYPOINT_GATEWAY,
            ),
        ),
        (
            get("foo", OK),
            Call("sleep.foo", SERVER, DENIED, "POST", "/post"),
            Call("sleep.bar", SERVER, DENIED, "POST", "/post"),
        ),
    ),
    Case(
        # L4 policy attachment: the workload admits only the waypoint, so the L7 policy cannot
        # be bypassed; the waypoint still judges each client by its own identity
        "L7 on the waypoint, only the waypoint admitted by the workload",
        (
            allow(
                "httpbin-viewer",
                [
                    {
                        "from": [{"source": {"principals": [SLEEP_FOO]}}],
                        "to": [{"operation": {"methods": ["GET"]}}],
                    }
                ],
                target_refs=HTTPBIN_SERVICE,
            ),
            allow(
                "only-the-waypoint",
                [{"from": [{"source": {"principals": [WAYPOINT]}}]}],
                selector={"app": "httpbin"},
            ),
        ),
        (get("foo", OK), get("bar", DENIED), get("legacy", RESET)),
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_l7_authorization_through_a_waypoint(case: Case, call_table: CallTable) -> None:
    """Each call of the case's table under its policies is answered as istio.io documents
    for a namespace waypoint: 200, 403 ``RBAC: access denied`` from the waypoint, or a reset
    from the destination's ztunnel."""
    table = call_table(
        f"httpbin.bar through its waypoint under '{case.name}'",
        case.calls,
        policies=case.policies,
    )
    assert len(table.rows) == len(case.calls), table
