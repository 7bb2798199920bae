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

Ambient (``--mesh-dataplane=ambient``: foo and bar ambient, legacy without a data plane), each
case's `ambient` matrix, from istiod's conversion of PeerAuthentication for ztunnel
(pilot/pkg/serviceregistry/ambient/authorization.go, ``convertedPeerAuthentication`` and the
static ``istio_converted_static_strict``; istio.io "Ambient and Kubernetes NetworkPolicy" /
"Use Layer 4 security policy"):

- STRICT (mesh, namespace, workload) becomes a DENY for callers without a peer identity: the
  server's ztunnel closes a plaintext connection (`RESET`); ambient callers come over HBONE with
  their identity and pass;
- ztunnel cannot disable mTLS: DISABLE reads as PERMISSIVE (ambient pods still talk HBONE), and a
  port-level or workload DISABLE/PERMISSIVE exempts its port or workload from the DENY;
- ztunnel reads no DestinationRule: a DestinationRule's ``tls.mode`` changes nothing;
- the app behind ztunnel sees no X-Forwarded-Client-Cert (ztunnel writes none): a call that goes
  through is `AMBIENT_OK` (200, no XFCC) between ambient pods, `PLAINTEXT` to or from legacy.
  That those 200s came over HBONE is proven where it can be told apart: the STRICT rows (plaintext
  is closed there, the ambient callers pass) and the wire suites (test_strict, test_permissive).
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
    WorkloadLookup,
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
# Between ambient pods: 200, and the app saw no X-Forwarded-Client-Cert (ztunnel writes none).
AMBIENT_OK = Outcome("200 (HBONE, no XFCC)", status=200, mtls=False)


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
    # the matrix when foo and bar are ambient (--mesh-dataplane=ambient)
    ambient: dict[str, tuple[Outcome, Outcome, Outcome]] | None = None

    def calls(self, dataplane: str = "sidecar") -> list[Call]:
        """The matrix as rows of the table: sleep.<client> -> httpbin.<server>, for foo and bar
        on this data plane."""
        expect = self.expect
        if dataplane == "ambient":
            if self.ambient is None:
                raise ValueError(f"case {self.name!r} has no ambient matrix")
            expect = self.ambient
        return [
            Call(f"sleep.{client}", f"httpbin.{server}", want)
            for client in NAMESPACES
            for server, want in zip(NAMESPACES, expect[client], strict=True)
        ]


DEFAULT_MATRIX = {
    #            -> foo   bar    legacy
    "foo": (MTLS, MTLS, PLAINTEXT),
    "bar": (MTLS, MTLS, PLAINTEXT),
    "legacy": (PLAINTEXT, PLAINTEXT, PLAINTEXT),
}
MESH_WIDE = (pytest.mark.mesh_wide, pytest.mark.mesh_features("mesh-wide"))
AMBIENT_DEFAULT = {
    #            -> foo         bar         legacy
    "foo": (AMBIENT_OK, AMBIENT_OK, PLAINTEXT),
    "bar": (AMBIENT_OK, AMBIENT_OK, PLAINTEXT),
    "legacy": (PLAINTEXT, PLAINTEXT, PLAINTEXT),
}

CASES = [
    Case("no policy", (), DEFAULT_MATRIX, ambient=AMBIENT_DEFAULT),
    Case(
        "mesh-wide PERMISSIVE",
        (namespace_mode("istio-system", "PERMISSIVE"),),
        DEFAULT_MATRIX,
        MESH_WIDE,
        ambient=AMBIENT_DEFAULT,
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
        ambient={
            "foo": (AMBIENT_OK, AMBIENT_OK, PLAINTEXT),
            "bar": (AMBIENT_OK, AMBIENT_OK, PLAINTEXT),
            "legacy": (RESET, RESET, PLAINTEXT),
        },
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
        ambient=AMBIENT_DEFAULT,
    ),
    Case(
        "namespace foo STRICT",
        (namespace_mode("foo", "STRICT"),),
        {
            "foo": (MTLS, MTLS, PLAINTEXT),
            "bar": (MTLS, MTLS, PLAINTEXT),
            "legacy": (RESET, PLAINTEXT, PLAINTEXT),
        },
        ambient={
            "foo": (AMBIENT_OK, AMBIENT_OK, PLAINTEXT),
            "bar": (AMBIENT_OK, AMBIENT_OK, PLAINTEXT),
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
        ambient={
            "foo": (AMBIENT_OK, AMBIENT_OK, PLAINTEXT),
            "bar": (AMBIENT_OK, AMBIENT_OK, PLAINTEXT),
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
        ambient=AMBIENT_DEFAULT,
    ),
    Case(
        "workload DISABLE over namespace STRICT",
        (namespace_mode("foo", "STRICT"), httpbin_mode("foo", "DISABLE")),
        {
            "foo": (PLAINTEXT, MTLS, PLAINTEXT),
            "bar": (PLAINTEXT, MTLS, PLAINTEXT),
            "legacy": (PLAINTEXT, PLAINTEXT, PLAINTEXT),
        },
        ambient=AMBIENT_DEFAULT,
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
        ambient={
            "foo": (AMBIENT_OK, AMBIENT_OK, PLAINTEXT),
            "bar": (AMBIENT_OK, AMBIENT_OK, PLAINTEXT),
            "legacy": (RESET, PLAINTEXT, PLAINTEXT),
        },
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
        ambient=AMBIENT_DEFAULT,
    ),
]


@pytest.mark.mesh_features("mtls", "peer-authentication", "xfcc")
@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=c.marks) for c in CASES])
def test_reachability(case: Case, call_table: CallTable, workload: WorkloadLookup) -> None:
    """Each sleep (foo, bar, legacy) calls each httpbin under the case's policies: whether the
    call succeeds and whether it is mTLS (the server saw an X-Forwarded-Client-Cert) must match
    Istio's reachability table for those policies (ambient: its `ambient` matrix)."""
    dataplane = workload("httpbin", "foo", skip_if_missing=True).dataplane
    table = call_table(
        f"reachability under '{case.name}'",
        case.calls(dataplane),
        policies=case.policies,
        skip_if_missing=True,
    )
    assert table.rows == tuple(f"sleep.{ns}" for ns in NAMESPACES), table
    assert table.columns == tuple(f"httpbin.{ns}" for ns in NAMESPACES), table
