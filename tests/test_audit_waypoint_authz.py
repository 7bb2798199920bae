"""`meshconform audit` predicts what a waypoint's AuthorizationPolicies do to its own mesh probe
(the ambient probe's requests to a Service behind a waypoint go through it), on a local mesh
with a waypoint: a probe the waypoint denies never reached the endpoint, so its mode is not
judged from it (no verdict claims a mode), and the reason names the waypoint and the policy.

The topology is the mint's: an ambient namespace ``mint`` with the namespace waypoint
``teller``; ``coins`` (httpbin, Service port 80 -> 8080), ``tally`` (tcp-echo, port 9000), and
``sealed`` (httpbin, port 80 -> 8080), whose L4 AuthorizationPolicy admits the audit's ambient
probe only: the waypoint's own identity is refused there, so no request through the waypoint
reaches it (a port as dead to the mesh as one where nothing listens).

Where the expected values come from:
- istio.io "Use Layer 7 security policy" / "Configure waypoint proxies": an AuthorizationPolicy
  bound to the waypoint (``targetRefs`` to its Gateway) is enforced by the waypoint on the
  Service's traffic; a request it does not allow is answered ``403`` with body ``RBAC: access
  denied`` on an HTTP port (Envoy's HTTP RBAC filter: ``sendLocalReply(Http::Code::Forbidden,
  "RBAC: access denied", ...)``, source/extensions/filters/http/rbac/rbac_filter.cc); on a TCP
  port the network RBAC filter closes the connection
  (source/extensions/filters/network/rbac/rbac_filter.cc, ``closeConnection``).
- ztunnel sends a client's Service traffic to the Service's waypoint (``build_request``,
  src/proxy/outbound.rs): the waypoint, not the endpoint's ztunnel, answers the ambient probe;
  its policies see the probe's identity ``spiffe://cluster.local/ns/meshconform-audit/sa/
  probe-ambient`` (the HBONE tunnel's client certificate, in the ``io.istio.peer_principal``
  filter state).
- Under STRICT ztunnel refuses the plaintext probe (istio.io "Use Layer 4 security policy").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from local_helpers import needs_local_mesh, run_local_audit

from pytest_meshconform.audit.discovery import Authz, WaypointProbe
from pytest_meshconform.audit.observe import (
    UPSTREAM_FAILURE_BODY,
    ProbeAttempt,
    judge_through_waypoint,
)
from pytest_meshconform.istio.authorization import RBAC_DENIED_BODY

MINT_TOPOLOGY = """\
namespaces:
  - name: mint
    dataplane: ambient
    waypoint: teller
    workloads:
      - name: coins
        kind: httpbin
      - name: tally
        kind: tcp-echo
        ports: [9000]
      - name: sealed
        kind: httpbin
    services:
      - name: coins
        selector: {app: coins}
        ports: [{name: http, port: 80, targetPort: 8080}]
      - name: sealed
        selector: {app: sealed}
        ports: [{name: http, port: 80, targetPort: 8080}]
      - name: tally
        selector: {app: tally}
        ports: [{name: tcp-main, port: 9000}]
"""
MINT_STRICT = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: mint}
spec:
  mtls: {mode: STRICT}
"""
PROBE = "cluster.local/ns/meshconform-audit/sa/probe-ambient"
# ztunnel's (L4) at sealed: the audit's ambient probe only, so the waypoint's identity
# (cluster.local/ns/mint/sa/teller), which ztunnel sees behind a waypoint, is refused
SEALED_PROBE_ONLY = f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: sealed-probe-only, namespace: mint}}
spec:
  selector: {{matchLabels: {{app: sealed}}}}
  action: ALLOW
  rules:
    - from: [{{source: {{principals: ["{PROBE}"]}}}}]
"""
# bound to the waypoint: only the mint's own accounts may call its Services
TELLER_MINT_ONLY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mint-only, namespace: mint}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: teller}]
  action: ALLOW
  rules:
    - from: [{source: {namespaces: [mint]}}]
"""
# bound to the waypoint: the audit's probe may call too, by the fix the audit suggests for
# every run's probe (a namespace prefix: the AuthorizationPolicy reference's prefix match)
TELLER_AND_AUDIT = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mint-and-audit, namespace: mint}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: teller}]
  action: ALLOW
  rules:
    - from: [{source: {namespaces: [mint, "meshconform-audit*"]}}]
"""
# a rule on a header the audit's probe may or may not send: the audit cannot predict it
TELLER_BY_HEADER = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-header, namespace: mint}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: teller}]
  action: ALLOW
  rules:
    - when: [{key: "request.headers[x-mint-pass]", values: ["1"]}]
"""


def _audit(tmp_path: Path, name: str, *policies: str) -> tuple[int, dict[str, Any], str]:
    return run_local_audit(tmp_path, MINT_TOPOLOGY, name, policies, stem="mint")


def _ports(data: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    return {f"{p['service']}:{p['port']}": (p["observed"], p["verdict"]) for p in data["ports"]}


def _reasons(data: dict[str, Any]) -> dict[str, str]:
    return {f"{p['service']}:{p['port']}": p["reason"] for p in data["ports"]}


@needs_local_mesh
def test_a_waypoint_that_denies_the_mesh_probe_never_proves_a_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The waypoint allows the mint's own accounts only: it answers the ambient probe's HTTP
    requests ``403 RBAC: access denied`` and closes its TCP connection. No port is judged from
    it: sealed above all (closed to every request through the waypoint) must not pass as
    STRICT on the waypoint's 403."""
    code, data, _ = _audit(tmp_path, "denied", MINT_STRICT, SEALED_PROBE_ONLY, TELLER_MINT_ONLY)
    out = capsys.readouterr().out
    assert code == 1
    assert (
        "waypoint: coins.mint:80 through mint/teller: AuthorizationPolicy mint/mint-only: ALLOW,"
        " targetRefs Gateway mint/teller; the audit's mesh probe: denied"
    ) in out
    assert _ports(data) == {
        "coins:80": ("INCONCLUSIVE", "error"),
        "sealed:80": ("INCONCLUSIVE", "error"),
        "tally:9000": ("INCONCLUSIVE", "error"),
    }
    reasons = _reasons(data)
    for key in ("coins:80", "sealed:80"):
        assert reasons[key].startswith(
            "the waypoint mint/teller denied the mesh probe (HTTP 403 RBAC: access denied), as"
            " AuthorizationPolicy mint/mint-only predicts for its identity"
            f" spiffe://{PROBE}: the request never reached the endpoint, so its mode cannot"
            " be judged"
        ), reasons[key]
    assert reasons["tally:9000"].startswith(
        "the waypoint mint/teller closed the mesh probe's connection without a byte (its RBAC"
        " network filter's denial), as AuthorizationPolicy mint/mint-only predicts for its"
        f" identity spiffe://{PROBE}: the request never reached the endpoint, so its mode"
        " cannot be judged"
    ), reasons["tally:9000"]
    for reason in reasons.values():  # the fix: let the audit's probe through the waypoint
        assert reason.endswith(
            f"; fix: allow the audit's probe (source principal {PROBE}, or every run's:"
            ' source namespace "meshconform-audit*") in an ALLOW AuthorizationPolicy bound to'
            " the waypoint (targetRefs), or exempt it from the DENY ones"
        ), reason
    for port in data["ports"]:
        mesh = port["evidence"]["mesh"]
        assert (mesh["authorization"], "admitted" in mesh) == ("denied", False), mesh
        assert mesh["deniedBy"] == "waypoint mint/teller", mesh
        assert port["authorization"]["expected"]["mesh"] == "denied"
        assert port["evidence"]["plaintext"]["admitted"] is False  # STRICT's refusal
        assert port["waypoint"]["meshProbe"] == "denied"


@needs_local_mesh
def test_a_waypoint_that_admits_the_mesh_probe_lets_the_mode_be_judged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the audit's probe allowed by the waypoint, coins and tally are STRICT as predicted;
    sealed's request crosses the waypoint, whose own request is refused behind it: the
    waypoint's ``503`` proves nothing of the endpoint's mode."""
    code, data, _ = _audit(tmp_path, "allowed", MINT_STRICT, SEALED_PROBE_ONLY, TELLER_AND_AUDIT)
    capsys.readouterr()
    ports = _ports(data)
    assert ports["coins:80"] == ("STRICT", "pass")
    assert ports["tally:9000"] == ("STRICT", "pass")
    assert ports["sealed:80"] == ("INCONCLUSIVE", "error"), _reasons(data)["sealed:80"]
    assert _reasons(data)["sealed:80"].startswith(
        "the waypoint mint/teller answered the mesh probe HTTP 503 (its upstream connect"
        " error): it could not reach the endpoint"
    ), _reasons(data)["sealed:80"]
    assert code == 1
    for port in data["ports"]:
        assert port["waypoint"]["meshProbe"] == "allowed"


@needs_local_mesh
def test_a_waypoint_rule_the_audit_cannot_predict_is_named_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rule on a request header the audit cannot know: the waypoint denies the probe (it
    sends no such header), and the audit says it cannot judge, naming the policy."""
    code, data, _ = _audit(tmp_path, "header", MINT_STRICT, TELLER_BY_HEADER)
    capsys.readouterr()
    assert code == 1
    reasons = _reasons(data)
    assert _ports(data)["coins:80"] == ("INCONCLUSIVE", "error")
    assert reasons["coins:80"].startswith(
        "the waypoint mint/teller denied the mesh probe (HTTP 403 RBAC: access denied)"
        " under AuthorizationPolicy mint/by-header, which the audit cannot predict (a rule on"
        " the probe's address or headers): the request never reached the endpoint, so its"
        " mode cannot be judged"
    ), reasons["coins:80"]
    assert data["ports"][0]["waypoint"]["meshProbe"] == "unknown"


def _answer(outcome: str, status: int | None = None, envoy_reply: str = "") -> ProbeAttempt:
    return ProbeAttempt(
        client="probe-ambient.meshconform-audit",
        target="http://coins.mint:80/",
        exit_code=0 if status is not None else 52,
        outcome=outcome,
        admitted=True,
        authorization="allowed",
        status=status,
        answered=status is not None,
        envoy_reply=envoy_reply,
    )


@pytest.mark.parametrize(
    ("answer", "http", "predicted", "judged"),
    [
        # Envoy's RBAC local reply: the waypoint's denial, whatever its policies predict
        (
            _answer("HTTP 403 RBAC: access denied", 403, RBAC_DENIED_BODY),
            True,
            "allowed",
            (None, "denied", "waypoint mint/teller"),
        ),
        # the app's own 403 came through the waypoint: the endpoint was reached
        (_answer("HTTP 403", 403), True, "denied", (True, "allowed", "")),
        # Envoy's router: the waypoint could not reach the endpoint
        (
            _answer("HTTP 503", 503, UPSTREAM_FAILURE_BODY + ". reset reason: connection failure"),
            True,
            "allowed",
            (None, "unknown", ""),
        ),
        (_answer("HTTP 503", 503), True, "allowed", (True, "allowed", "")),  # the app's 503
        # TCP: a close is the waypoint's denial when its policies deny the probe...
        (_answer("closed"), False, "denied", (None, "denied", "waypoint mint/teller")),
        (_answer("closed"), False, "unknown", (None, "unknown", "")),  # ... may be
        (_answer("closed"), False, "allowed", (False, "not reached", "")),  # the endpoint's
        (_answer("answered"), False, "denied", (True, "allowed", "")),
    ],
)
def test_what_the_waypoint_answers_itself_proves_no_mode(
    answer: ProbeAttempt, http: bool, predicted: Authz, judged: tuple[Any, ...]
) -> None:
    """The answers of Envoy's RBAC filter (source/extensions/filters/http/rbac/rbac_filter.cc:
    403 ``RBAC: access denied``; the network filter's ``closeConnection``) and of its router
    when the upstream fails (source/common/router/router.cc ``onUpstreamReset``: 503 ``upstream
    connect error or disconnect/reset before headers. reset reason: ...``) at the waypoint say
    nothing of the endpoint's mode; any other answer came from the app through it."""
    probe = WaypointProbe(
        waypoint="mint/teller",
        identity="spiffe://cluster.local/ns/mint/sa/teller",
        principal=f"spiffe://{PROBE}",
        verdict=predicted,
    )
    got = judge_through_waypoint(answer, probe, http)
    assert (got.admitted, got.authorization, got.denied_by) == judged
