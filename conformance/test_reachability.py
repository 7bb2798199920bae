"""Reachability matrix: sleep in foo/bar/legacy -> httpbin in foo/bar/legacy, under each policy.

Modelled on Istio's tests/integration/security/reachability_test.go: each case is a row of
policies and a literal 3x3 table of outcomes (does the call succeed, and is it mTLS). foo and
bar have sidecars, legacy does not. Expectations are transcribed from Istio's docs (the
"Mutual TLS Migration" and "Authentication Policy" tasks) and its reachability test:

- no policy / PERMISSIVE: auto mTLS between sidecars, plaintext to and from legacy;
- STRICT: the naked client is reset, sidecars still talk mTLS;
- DISABLE on a server: sidecar clients switch to plaintext (auto mTLS honours the server mode);
- a DestinationRule with tls.mode DISABLE towards a STRICT server: the client's sidecar sends
  plaintext, is refused, and answers 503;
- a DestinationRule with ISTIO_MUTUAL towards a server without a sidecar: TLS into a plaintext
  app fails, 503 from the client's sidecar; the naked client does not use DestinationRules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from pytest_meshconform import PolicyApplier, TableRecorder, WorkloadLookup

from .expect import E503, MTLS, PLAIN, RESET, Outcome, observe

NAMESPACES = ("foo", "bar", "legacy")


def peer_auth(namespace: str, mode: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {
            "name": "default" if "selector" not in spec else "httpbin",
            "namespace": namespace,
        },
        "spec": {**spec, "mtls": {"mode": mode}},
    }


def dest_rule(namespace: str, mode: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "httpbin", "namespace": namespace},
        "spec": {
            "host": f"httpbin.{namespace}.svc.cluster.local",
            "trafficPolicy": {"tls": {"mode": mode}},
        },
    }


HTTPBIN = {"matchLabels": {"app": "httpbin"}}


@dataclass(frozen=True)
class Case:
    name: str
    policies: tuple[dict[str, Any], ...]
    # expect[client namespace] = outcomes towards httpbin in (foo, bar, legacy)
    expect: dict[str, tuple[Outcome, Outcome, Outcome]]
    marks: tuple[pytest.MarkDecorator, ...] = ()


DEFAULT_MATRIX = {
    #            -> foo   bar    legacy
    "foo": (MTLS, MTLS, PLAIN),
    "bar": (MTLS, MTLS, PLAIN),
    "legacy": (PLAIN, PLAIN, PLAIN),
}
MESH_WIDE = (pytest.mark.mesh_wide, pytest.mark.mesh_features("mesh-wide"))

CASES = [
    Case("no policy", (), DEFAULT_MATRIX),
    Case(
        "mesh-wide PERMISSIVE",
        (peer_auth("istio-system", "PERMISSIVE"),),
        DEFAULT_MATRIX,
        MESH_WIDE,
    ),
    Case(
        "mesh-wide STRICT",
        (peer_auth("istio-system", "STRICT"),),
        {
            "foo": (MTLS, MTLS, PLAIN),
            "bar": (MTLS, MTLS, PLAIN),
            "legacy": (RESET, RESET, PLAIN),
        },
        MESH_WIDE,
    ),
    Case(
        "mesh-wide DISABLE",
        (peer_auth("istio-system", "DISABLE"),),
        {
            "foo": (PLAIN, PLAIN, PLAIN),
            "bar": (PLAIN, PLAIN, PLAIN),
            "legacy": (PLAIN, PLAIN, PLAIN),
        },
        MESH_WIDE,
    ),
    Case(
        "namespace foo STRICT",
        (peer_auth("foo", "STRICT"),),
        {
            "foo": (MTLS, MTLS, PLAIN),
            "bar": (MTLS, MTLS, PLAIN),
            "legacy": (RESET, PLAIN, PLAIN),
        },
    ),
    Case(
        "workload httpbin.bar STRICT",
        (peer_auth("bar", "STRICT", selector=HTTPBIN),),
        {
            "foo": (MTLS, MTLS, PLAIN),
            "bar": (MTLS, MTLS, PLAIN),
            "legacy": (PLAIN, RESET, PLAIN),
        },
    ),
    Case(
        # istio.io Authentication Policy task: namespace STRICT, port 8080 of httpbin DISABLE.
        "port-level DISABLE under namespace STRICT",
        (
            peer_auth("foo", "STRICT"),
            peer_auth("foo", "STRICT", selector=HTTPBIN, portLevelMtls={8080: {"mode": "DISABLE"}}),
        ),
        {
            "foo": (PLAIN, MTLS, PLAIN),
            "bar": (PLAIN, MTLS, PLAIN),
            "legacy": (PLAIN, PLAIN, PLAIN),
        },
        (pytest.mark.mesh_features("port-level-mtls"),),
    ),
    Case(
        "workload DISABLE over namespace STRICT",
        (peer_auth("foo", "STRICT"), peer_auth("foo", "DISABLE", selector=HTTPBIN)),
        {
            "foo": (PLAIN, MTLS, PLAIN),
            "bar": (PLAIN, MTLS, PLAIN),
            "legacy": (PLAIN, PLAIN, PLAIN),
        },
    ),
    Case(
        "DestinationRule DISABLE towards STRICT",
        (peer_auth("foo", "STRICT"), dest_rule("foo", "DISABLE")),
        {
            "foo": (E503, MTLS, PLAIN),
            "bar": (E503, MTLS, PLAIN),
            "legacy": (RESET, PLAIN, PLAIN),
        },
        (pytest.mark.mesh_features("destination-rule"),),
    ),
    Case(
        "DestinationRule ISTIO_MUTUAL towards a server without sidecar",
        (dest_rule("legacy", "ISTIO_MUTUAL"),),
        {
            "foo": (MTLS, MTLS, E503),
            "bar": (MTLS, MTLS, E503),
            "legacy": (PLAIN, PLAIN, PLAIN),
        },
        (pytest.mark.mesh_features("destination-rule"),),
    ),
]


@pytest.mark.mesh_features("mtls", "peer-authentication", "xfcc")
@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=c.marks) for c in CASES])
def test_reachability(
    case: Case,
    apply_policy: PolicyApplier,
    workload: WorkloadLookup,
    record_table: TableRecorder,
) -> None:
    """Each sleep (foo, bar, legacy) calls each httpbin under the case's policies: whether the
    call succeeds and whether it is mTLS (the server saw an X-Forwarded-Client-Cert) must match
    Istio's reachability table for those policies."""
    clients = {ns: workload("sleep", ns, skip_if_missing=True) for ns in NAMESPACES}
    servers = {ns: workload("httpbin", ns, skip_if_missing=True) for ns in NAMESPACES}
    for manifest in case.policies:
        apply_policy(manifest)
    expected: dict[tuple[str, str], str] = {}
    observed: dict[tuple[str, str], str] = {}
    evidence: list[str] = []
    for client_ns in NAMESPACES:
        client = clients[client_ns]
        for server_ns, want in zip(NAMESPACES, case.expect[client_ns], strict=True):
            got, result = observe(client, servers[server_ns])
            cell = (f"sleep.{client_ns}", f"httpbin.{server_ns}")
            expected[cell], observed[cell] = str(want), str(got)
            if got != want:
                evidence.append(f"  expected {want}: {result}")
    table = record_table(
        f"reachability under '{case.name}'",
        rows=[f"sleep.{ns}" for ns in NAMESPACES],
        columns=[f"httpbin.{ns}" for ns in NAMESPACES],
        expected=expected,
        observed=observed,
        corner="client \\ server",
    )
    assert table.ok, f"{table.text()}\ndiffers from Istio's:\n" + "\n".join(evidence)
