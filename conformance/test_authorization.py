"""AuthorizationPolicy: who may call httpbin.foo, under each policy, in one table.

Each case is a row of policies and the literal outcome of every call in the table (sleep in
foo, bar and legacy calling httpbin.foo; foo and bar have sidecars, legacy does not, so its
requests arrive in plaintext under the default PERMISSIVE mode). Expectations are transcribed
from istio.io:

- Authorization Policy reference (docs/reference/config/security/authorization-policy): the
  evaluation order (CUSTOM, DENY, ALLOW; "If there are no ALLOW policies for the workload,
  allow the request"; otherwise "Deny the request" unless an ALLOW policy matches), the
  ``allow-nothing`` policy (``spec: {}``, an ALLOW policy without rules: "allow nothing"),
  ``rules: [{}]`` (allow all); a
  policy in the root namespace applies mesh-wide;
  ``source.principals`` and ``namespaces`` "require mutual TLS";
- the "HTTP Traffic" task (docs/tasks/security/authorization/authz-http): a denied request is
  answered ``403`` with the body ``RBAC: access denied``;
- the "Dry Run" task (docs/tasks/security/authorization/authz-dry-run): a policy annotated
  ``istio.io/dry-run: "true"`` is evaluated but not enforced, the request still succeeds;
- security best practices (docs/ops/best-practices/security, "Use ALLOW-with-positive-matching
  and DENY-with-negative-match patterns", the misuse named by ISTIO-SECURITY-2021-004): a
  plaintext request has no principal, so an ALLOW on principals refuses it even under
  PERMISSIVE, a DENY on positive principals does not catch it, and a DENY with
  ``notPrincipals: ["*"]`` does.

Ambient (``--mesh-dataplane=ambient``): the policies bind to the server's ztunnel, which
judges connections, not requests (L4). istio.io "Use Layer 4 security policy": a denied
connection is closed, curl sees "Connection reset by peer" (`ZTUNNEL_DENIED`: no HTTP response,
curl exit 56, or 52 when the close comes first). istiod's ``convertAuthorizationPolicy``
(pilot/pkg/serviceregistry/ambient/authorization.go) drops an ALLOW rule with HTTP attributes
("Within an ALLOW policy, rules matching HTTP attributes are omitted. This will be more
restrictive than requested"), so "ALLOW GET on /ip only" allows nothing at ztunnel; dry-run
policies are not sent to ztunnel ("support for ambient dry-run authorizationPolicies isn't
enabled", AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY off by default), so they enforce nothing
there either. Every other row reads as for sidecars, with the denial as ztunnel's.

TCP denial (the network RBAC filter closes the connection; "Authorization on TCP traffic"
task, docs/tasks/security/authorization/authz-tcp) needs a TCP server port, which this
topology does not have (httpbin serves HTTP only): it is covered with a real Envoy and a
TCP listener in the project's tests (tests/test_local_rbac.py), not here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_meshconform import (
    DENIED,
    Call,
    CallTable,
    Outcome,
    WorkloadLookup,
    authorization_policy,
    peer_authentication,
)

pytestmark = pytest.mark.mesh_features("mtls", "authorization")

CLIENTS = ("foo", "bar", "legacy")  # sleep.<namespace> -> httpbin.foo
SERVER = "httpbin.foo"
HTTPBIN = {"app": "httpbin"}
PERMISSIVE_FOO = peer_authentication("default", "foo", mode="PERMISSIVE")

# Outcomes, as curl sees them from the client's pod: allowed (200, mTLS or not), and DENIED
# (pytest_meshconform's: 403 with Envoy RBAC's body "RBAC: access denied"); in ambient a denial
# is ztunnel closing the connection: no HTTP response, curl exit 56 (reset) or 52 (closed).
OK = Outcome("200", status=200)
ZTUNNEL_DENIED = Outcome("closed by ztunnel", status=None, curl_exit=(56, 52))


def authz(
    name: str,
    action: str = "ALLOW",
    rules: list[dict[str, Any]] | None = None,
    *,
    selector: dict[str, str] | None = None,
    dry_run: bool = False,
    namespace: str = "foo",
) -> dict[str, Any]:
    return authorization_policy(
        name, namespace, action=action, rules=rules, selector=selector, dry_run=dry_run
    )


def from_source(**source: list[str]) -> dict[str, Any]:
    return {"from": [{"source": source}]}


@dataclass(frozen=True)
class Case:
    name: str
    policies: tuple[dict[str, Any], ...]
    calls: tuple[Call, ...]
    marks: tuple[pytest.MarkDecorator, ...] = ()
    # the calls when httpbin.foo is ambient, where they differ from `calls` beyond the form of
    # a denial (DENIED becomes ZTUNNEL_DENIED)
    ambient_calls: tuple[Call, ...] | None = None

    def calls_on(self, dataplane: str) -> tuple[Call, ...]:
        """The table for a server on this data plane."""
        if dataplane != "ambient":
            return self.calls
        if self.ambient_calls is not None:
            return self.ambient_calls
        return tuple(
            dataclasses.replace(c, expect=ZTUNNEL_DENIED) if c.expect == DENIED else c
            for c in self.calls
        )


def by_client(foo: Outcome, bar: Outcome, legacy: Outcome) -> tuple[Call, ...]:
    """GET /headers from sleep.foo, sleep.bar and sleep.legacy."""
    return tuple(
        Call(f"sleep.{client}", SERVER, want)
        for client, want in zip(CLIENTS, (foo, bar, legacy), strict=True)
    )


CASES = [
    Case("no policy: everything allowed", (), by_client(OK, OK, OK)),
    Case(
        "allow-nothing (ALLOW without rules)",
        (authz("allow-nothing"),),
        by_client(DENIED, DENIED, DENIED),
    ),
    Case(
        "allow all (rules: [{}])",
        (authz("allow-all", rules=[{}], selector=HTTPBIN),),
        by_client(OK, OK, OK),
    ),
    Case(
        "namespace isolation: only foo",
        (authz("same-namespace", rules=[from_source(namespaces=["foo"])]),),
        by_client(OK, DENIED, DENIED),
    ),
    Case(
        "allow only sleep.foo's principal",
        (
            authz(
                "sleep-foo",
                rules=[from_source(principals=["cluster.local/ns/foo/sa/sleep"])],
                selector=HTTPBIN,
            ),
        ),
        by_client(OK, DENIED, DENIED),
    ),
    Case(
        # ALLOW-with-positive-matching: any principal means "any mTLS peer"; PERMISSIVE still
        # lets the plaintext connection in, the policy refuses the request.
        "principal ALLOW under PERMISSIVE refuses plaintext",
        (PERMISSIVE_FOO, authz("mtls-only", rules=[from_source(principals=["*"])])),
        by_client(OK, OK, DENIED),
    ),
    Case(
        # The misuse ISTIO-SECURITY-2021-004 warns about: plaintext has no principal, so a DENY
        # on positive principals never matches it.
        "DENY on principals does not catch plaintext",
        (
            PERMISSIVE_FOO,
            authz(
                "deny-legacy",
                "DENY",
                [from_source(principals=["cluster.local/ns/legacy/sa/sleep"])],
            ),
        ),
        by_client(OK, OK, OK),
    ),
    Case(
        "DENY with notPrincipals ['*'] refuses plaintext",
        (PERMISSIVE_FOO, authz("deny-plaintext", "DENY", [from_source(notPrincipals=["*"])])),
        by_client(OK, OK, DENIED),
    ),
    Case(
        "DENY beats ALLOW",
        (
            authz("allow-all", rules=[{}]),
            authz("deny-bar", "DENY", [from_source(namespaces=["bar"])]),
        ),
        by_client(OK, DENIED, OK),
    ),
    Case(
        # A policy in the root namespace applies to the workloads of every namespace.
        "root namespace DENY applies mesh-wide",
        (
            authz(
                "deny-bar",
                "DENY",
                [from_source(namespaces=["bar"])],
                selector=HTTPBIN,
                namespace="istio-system",
            ),
        ),
        by_client(OK, DENIED, OK),
        (pytest.mark.mesh_wide, pytest.mark.mesh_features("mesh-wide")),
    ),
    Case(
        "ALLOW GET on /ip only",
        (
            authz(
                "get-ip",
                rules=[{"to": [{"operation": {"methods": ["GET"], "paths": ["/ip"]}}]}],
                selector=HTTPBIN,
            ),
        ),
        (
            Call("sleep.foo", SERVER, OK, "GET", "/ip"),
            Call("sleep.foo", SERVER, DENIED, "GET", "/headers"),
            Call("sleep.foo", SERVER, DENIED, "POST", "/ip"),
            Call("sleep.legacy", SERVER, OK, "GET", "/ip"),
        ),
        # ztunnel: the only rule names HTTP attributes, so istiod drops it: an ALLOW policy
        # without rules, which allows nothing
        ambient_calls=(
            Call("sleep.foo", SERVER, ZTUNNEL_DENIED, "GET", "/ip"),
            Call("sleep.foo", SERVER, ZTUNNEL_DENIED, "GET", "/headers"),
            Call("sleep.foo", SERVER, ZTUNNEL_DENIED, "POST", "/ip"),
            Call("sleep.legacy", SERVER, ZTUNNEL_DENIED, "GET", "/ip"),
        ),
    ),
    Case(
        "dry-run allow-nothing does not enforce",
        (authz("allow-nothing", dry_run=True),),
        by_client(OK, OK, OK),
    ),
    Case(
        "dry-run DENY does not enforce",
        (authz("deny-all", "DENY", [{}], dry_run=True),),
        by_client(OK, OK, OK),
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=c.marks) for c in CASES])
def test_authorization(case: Case, call_table: CallTable, workload: WorkloadLookup) -> None:
    """Each call of the case's table (a sleep pod calling httpbin.foo with a method and path)
    under the case's AuthorizationPolicies must be answered as Istio documents: 200, or 403
    with the body ``RBAC: access denied`` (ambient: the connection closed by ztunnel)."""
    calls = case.calls_on(workload("httpbin", "foo", skip_if_missing=True).dataplane)
    table = call_table(
        f"authorization of httpbin.foo under '{case.name}'", calls, policies=case.policies
    )
    assert table.columns == (SERVER,), table
    assert len(table.rows) == len(calls), table
