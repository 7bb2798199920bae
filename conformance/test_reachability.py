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

from pytest_meshconform import (
    MTLS,
    PLAINTEXT,
    RESET,
    UNAVAILABLE,
    Call,
    CallTable,
    Outcome,
    destination_rule,
    peer_authentication,
)

NAMESPACES = ("foo", "bar", "legacy")

# Outcomes, as Istio's reachability test names them (public, so a user's table reads the same):
# MTLS: 200 and the server saw the client's certificate (X-Forwarded-Client-Cert naming its
# SPIFFE ID); PLAINTEXT: 200 without XFCC, the request reached the app in plaintext; RESET:
# plaintext into a STRICT sidecar matches no filter chain, the connection is reset (curl 56);
# UNAVAILABLE: the client's own sidecar could not reach the upstream (plaintext to STRICT, TLS
# to a server without a sidecar) and answered 503 itself.

HTTPBIN = {"app": "httpbin"}


def namespace_mode(namespace: str, mode: str) -> dict[str, Any]:
    return peer_authentication("default", namespace, mode=mode)


def httpbin_mode(
    namespace: str, mode: str, port_level: dict[int, str] | None = None
) -> dict[str, Any]:
    return peer_authentication(
        "httpbin", namespace, mode=mode, selector=HTTPBIN, port_level=port_level
    )


def tls_towards_httpbin(namespace: str, mode: str) -> dict[str, Any]:
    return destination_rule(
        "httpbin", namespace, f"httpbin.{namespace}.svc.cluster.local", mode=mode
    )


@dataclass(frozen=True)
class Case:
    name: str
    policies: tuple[dict[str, Any], ...]
    # expect[client namespace] = outcomes towards httpbin in (foo, bar, legacy)
    expect: dict[str, tuple[Outcome, Outcome, Outcome]]
    marks: tuple[pytest.MarkDecorator, ...] = ()

    def calls(self) -> list[Call]:
        """The matrix as rows of the table: sleep.<client> -> httpbin.<server>."""
        return [
            Call(f"sleep.{client}", f"httpbin.{server}", want)
            for client in NAMESPACES
            for server, want in zip(NAMESPACES, self.expect[client], strict=True)
        ]


DEFAULT_MATRIX = {
    #            -> foo   bar    legacy
    "foo": (MTLS, MTLS, PLAINTEXT),
    "bar": (MTLS, MTLS, PLAINTEXT),
    "legacy": (PLAINTEXT, PLAINTEXT, PLAINTEXT),
}
MESH_WIDE = (pytest.mark.mesh_wide, pytest.mark.mesh_features("mesh-wide"))

CASES = [
    Case("no policy", (), DEFAULT_MATRIX),
    Case(
        "mesh-wide PERMISSIVE",
        (namespace_mode("istio-system", "PERMISSIVE"),),
        DEFAULT_MATRIX,
        MESH_WIDE,
    ),
    Case(
        "mesh-wide STRICT",
        (namespace_mode("istio-system", "STRICT"),),
        {
            "foo": (MTLS, MTLS, PLAINTEXT),
            "bar": (MTLS, MTLS, PLAINTEXT),
            "legacy": (RESET, RESET, PLAINTEXT),
        },
        MESH_WIDE,
    ),
    Case(
        "mesh-wide DISABLE",
        (namespace_mode("istio-system", "DISABLE"),),
        {
            "foo": (PLAINTEXT, PLAINTEXT, PLAINTEXT),
            "bar": (PLAINTEXT, PLAINTEXT, PLAINTEXT),
            "legacy": (PLAINTEXT, PLAINTEXT, PLAINTEXT),
        },
        MESH_WIDE,
    ),
    Case(
        "namespace foo STRICT",
        (namespace_mode("foo", "STRICT"),),
        {
            "foo": (MTLS, MTLS, PLAINTEXT),
            "bar": (MTLS, MTLS, PLAINTEXT),
            "legacy": (RESET, PLAINTEXT, PLAINTEXT),
        },
    ),
    Case(
        "workload httpbin.bar STRICT",
        (httpbin_mode("bar", "STRICT"),),
        {
            "foo": (MTLS, MTLS, PLAINTEXT),
            "bar": (MTLS, MTLS, PLAINTEXT),
            "legacy": (PLAINTEXT, RESET, PLAINTEXT),
        },
    ),
    Case(
        # istio.io Authentication Policy task: namespace STRICT, port 8080 of httpbin DISABLE.
        "port-level DISABLE under namespace STRICT",
        (namespace_mode("foo", "STRICT"), httpbin_mode("foo", "STRICT", {8080: "DISABLE"})),
        {
            "foo": (PLAINTEXT, MTLS, PLAINTEXT),
            "bar": (PLAINTEXT, MTLS, PLAINTEXT),
            "legacy": (PLAINTEXT, PLAINTEXT, PLAINTEXT),
        },
        (pytest.mark.mesh_features("port-level-mtls"),),
    ),
    Case(
        "workload DISABLE over namespace STRICT",
        (namespace_mode("foo", "STRICT"), httpbin_mode("foo", "DISABLE")),
        {
            "foo": (PLAINTEXT, MTLS, PLAINTEXT),
            "bar": (PLAINTEXT, MTLS, PLAINTEXT),
            "legacy": (PLAINTEXT, PLAINTEXT, PLAINTEXT),
        },
    ),
    Case(
        "DestinationRule DISABLE towards STRICT",
        (namespace_mode("foo", "STRICT"), tls_towards_httpbin("foo", "DISABLE")),
        {
            "foo": (UNAVAILABLE, MTLS, PLAINTEXT),
            "bar": (UNAVAILABLE, MTLS, PLAINTEXT),
            "legacy": (RESET, PLAINTEXT, PLAINTEXT),
        },
        (pytest.mark.mesh_features("destination-rule"),),
    ),
    Case(
        "DestinationRule ISTIO_MUTUAL towards a server without sidecar",
        (tls_towards_httpbin("legacy", "ISTIO_MUTUAL"),),
        {
            "foo": (MTLS, MTLS, UNAVAILABLE),
            "bar": (MTLS, MTLS, UNAVAILABLE),
            "legacy": (PLAINTEXT, PLAINTEXT, PLAINTEXT),
        },
        (pytest.mark.mesh_features("destination-rule"),),
    ),
]


@pytest.mark.mesh_features("mtls", "peer-authentication", "xfcc")
@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=c.marks) for c in CASES])
def test_reachability(case: Case, call_table: CallTable) -> None:
    """Each sleep (foo, bar, legacy) calls each httpbin under the case's policies: whether the
    call succeeds and whether it is mTLS (the server saw an X-Forwarded-Client-Cert) must match
    Istio's reachability table for those policies."""
    table = call_table(
        f"reachability under '{case.name}'",
        case.calls(),
        policies=case.policies,
        skip_if_missing=True,
    )
    assert table.rows == tuple(f"sleep.{ns}" for ns in NAMESPACES), table
    assert table.columns == tuple(f"httpbin.{ns}" for ns in NAMESPACES), table
