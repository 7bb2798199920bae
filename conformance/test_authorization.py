"""AuthorizationPolicy: who may call httpbin.foo, under each policy, in one table.

Each case is a row of policies and the literal outcome of every call in the table (sleep in
foo, bar and legacy calling httpbin.foo; foo and bar have sidecars, legacy does not, so its
requests arrive in plaintext under the default PERMISSIVE mode). Expectations are transcribed
from istio.io:

- Authorization Policy reference (docs/reference/config/security/authorization-policy): the
  evaluation order (CUSTOM, DENY, ALLOW; "If there are no ALLOW policies for the workload,
  allow the request"; otherwise "Deny the request" unless an ALLOW policy matches), the
  ``allow-nothing`` policy (``spec: {}``: "allow nothing"), ``rules: [{}]`` (allow all); a
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

TCP denial (the network RBAC filter closes the connection; "Authorization on TCP traffic"
task, docs/tasks/security/authorization/authz-tcp) needs a TCP server port, which this
topology does not have (httpbin serves HTTP only): it is covered with a real Envoy and a
TCP listener in the project's tests (tests/test_local_rbac.py), not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from pytest_meshconform import HttpResult, PolicyApplier, TableRecorder, WorkloadLookup

pytestmark = pytest.mark.mesh_features("mtls", "authorization")

CLIENTS = ("foo", "bar", "legacy")  # sleep.<namespace> -> httpbin.foo
RBAC_DENIED_BODY = "RBAC: access denied"


def authz(
    name: str, spec: dict[str, Any], *, dry_run: bool = False, namespace: str = "foo"
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if dry_run:
        metadata["annotations"] = {"istio.io/dry-run": "true"}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": metadata,
        "spec": spec,
    }


def from_source(**source: list[str]) -> dict[str, Any]:
    return {"from": [{"source": source}]}


HTTPBIN = {"matchLabels": {"app": "httpbin"}}
PERMISSIVE_FOO = {
    "apiVersion": "security.istio.io/v1",
    "kind": "PeerAuthentication",
    "metadata": {"name": "default", "namespace": "foo"},
    "spec": {"mtls": {"mode": "PERMISSIVE"}},
}

# Outcomes, as curl sees them from the client's pod.
OK = "200"
DENIED = "403 RBAC"  # 403 with the body "RBAC: access denied"


@dataclass(frozen=True)
class Call:
    client: str  # namespace of the sleep pod
    method: str = "GET"
    path: str = "/headers"

    def __str__(self) -> str:
        return f"sleep.{self.client} {self.method} {self.path}"


@dataclass(frozen=True)
class Case:
    name: str
    policies: tuple[dict[str, Any], ...]
    expect: dict[Call, str]
    marks: tuple[pytest.MarkDecorator, ...] = ()


def by_client(foo: str, bar: str, legacy: str) -> dict[Call, str]:
    return {Call("foo"): foo, Call("bar"): bar, Call("legacy"): legacy}


CASES = [
    Case("no policy: everything allowed", (), by_client(OK, OK, OK)),
    Case(
        "allow-nothing (spec: {})",
        (authz("allow-nothing", {}),),
        by_client(DENIED, DENIED, DENIED),
    ),
    Case(
        "allow all (rules: [{}])",
        (authz("allow-all", {"selector": HTTPBIN, "action": "ALLOW", "rules": [{}]}),),
        by_client(OK, OK, OK),
    ),
    Case(
        "namespace isolation: only foo",
        (authz("same-namespace", {"action": "ALLOW", "rules": [from_source(namespaces=["foo"])]}),),
        by_client(OK, DENIED, DENIED),
    ),
    Case(
        "allow only sleep.foo's principal",
        (
            authz(
                "sleep-foo",
                {
                    "selector": HTTPBIN,
                    "action": "ALLOW",
                    "rules": [from_source(principals=["cluster.local/ns/foo/sa/sleep"])],
                },
            ),
        ),
        by_client(OK, DENIED, DENIED),
    ),
    Case(
        # ALLOW-with-positive-matching: any principal means "any mTLS peer"; PERMISSIVE still
        # lets the plaintext connection in, the policy refuses the request.
        "principal ALLOW under PERMISSIVE refuses plaintext",
        (
            PERMISSIVE_FOO,
            authz("mtls-only", {"action": "ALLOW", "rules": [from_source(principals=["*"])]}),
        ),
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
                {
                    "action": "DENY",
                    "rules": [from_source(principals=["cluster.local/ns/legacy/sa/sleep"])],
                },
            ),
        ),
        by_client(OK, OK, OK),
    ),
    Case(
        "DENY with notPrincipals ['*'] refuses plaintext",
        (
            PERMISSIVE_FOO,
            authz(
                "deny-plaintext", {"action": "DENY", "rules": [from_source(notPrincipals=["*"])]}
            ),
        ),
        by_client(OK, OK, DENIED),
    ),
    Case(
        "DENY beats ALLOW",
        (
            authz("allow-all", {"action": "ALLOW", "rules": [{}]}),
            authz("deny-bar", {"action": "DENY", "rules": [from_source(namespaces=["bar"])]}),
        ),
        by_client(OK, DENIED, OK),
    ),
    Case(
        # A policy in the root namespace applies to the workloads of every namespace.
        "root namespace DENY applies mesh-wide",
        (
            authz(
                "deny-bar",
                {
                    "selector": HTTPBIN,
                    "action": "DENY",
                    "rules": [from_source(namespaces=["bar"])],
                },
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
                {
                    "selector": HTTPBIN,
                    "action": "ALLOW",
                    "rules": [{"to": [{"operation": {"methods": ["GET"], "paths": ["/ip"]}}]}],
                },
            ),
        ),
        {
            Call("foo", "GET", "/ip"): OK,
            Call("foo", "GET", "/headers"): DENIED,
            Call("foo", "POST", "/ip"): DENIED,
            Call("legacy", "GET", "/ip"): OK,
        },
    ),
    Case(
        "dry-run allow-nothing does not enforce",
        (authz("allow-nothing", {}, dry_run=True),),
        by_client(OK, OK, OK),
    ),
    Case(
        "dry-run DENY does not enforce",
        (authz("deny-all", {"action": "DENY", "rules": [{}]}, dry_run=True),),
        by_client(OK, OK, OK),
    ),
]


def outcome(result: HttpResult) -> str:
    if result.status == 403 and result.body.decode(errors="replace").strip() == RBAC_DENIED_BODY:
        return DENIED
    if result.status is not None:
        return str(result.status)
    return f"no response (curl exit {result.exit_code})"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=c.marks) for c in CASES])
def test_authorization(
    case: Case,
    apply_policy: PolicyApplier,
    workload: WorkloadLookup,
    record_table: TableRecorder,
) -> None:
    """Each call of the case's table (a sleep pod calling httpbin.foo with a method and path)
    under the case's AuthorizationPolicies must be answered as Istio documents: 200, or 403
    with the body ``RBAC: access denied``."""
    for manifest in case.policies:
        apply_policy(manifest)
    server = workload("httpbin", "foo")
    column = "httpbin.foo"
    expected: dict[tuple[str, str], str] = {}
    observed: dict[tuple[str, str], str] = {}
    evidence: list[str] = []
    for call, want in case.expect.items():
        result = workload("sleep", call.client).curl(server, method=call.method, path=call.path)
        got = outcome(result)
        expected[(str(call), column)], observed[(str(call), column)] = want, got
        if got != want:
            evidence.append(f"  {call}: expected {want}: {result}")
    table = record_table(
        f"authorization of httpbin.foo under '{case.name}'",
        rows=[str(call) for call in case.expect],
        columns=[column],
        expected=expected,
        observed=observed,
        corner="call",
    )
    assert table.ok, f"{table.text()}\ndiffers from Istio's:\n" + "\n".join(evidence)
