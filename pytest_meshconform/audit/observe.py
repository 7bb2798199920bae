"""What the audit's probes saw of one Service port, in facts the engine judges (no verdicts).

Each probe's attempt says two things apart (`ProbeAttempt`): whether the endpoint's mode let
the connection through (``admitted``) and what authorization did to it (``authorization``):

- Plaintext probe (no sidecar), HTTP port: an HTTP status means the connection got through (a
  STRICT sidecar resets plaintext before any response: curl exit 56); ``403`` with body
  ``RBAC: access denied`` is the RBAC filter's denial, any other status the app's answer.
- Plaintext probe, TCP port (`tcp_argv`: a line sent, what comes back kept): ``reset`` is a
  STRICT sidecar refusing plaintext (no filter chain matches; Envoy closes the connection with
  the probe's bytes unread, and the kernel answers with a RST); ``answered`` (the app's bytes)
  and ``silent`` (still open when the time was up: a STRICT sidecar would have reset it) got
  through and were allowed; ``closed`` (connected, closed without a byte) is what the RBAC
  network filter does to a denied connection: on an endpoint with a sidecar it reads as
  denied (an app that closes at once looks the same, and the reason says so when the
  policies predict allowed).
- Mesh probe (sidecar), from the wire captured at the probe: its connection to the endpoint
  got through as mTLS when the endpoint answered the ClientHello with a ServerHello, as
  plaintext when the endpoint sent bytes back on a connection without TLS; anything else (a
  reset, a close) did not get through, whatever the probe's own sidecar then answers (a 503).
  On HTTP the 403 ``RBAC: access denied`` is a denial; on TCP a connection that got through
  and then closed without a byte is.
- Mesh probe to an ambient endpoint behind a waypoint: the ambient probe's tunnel ends at the
  waypoint, which answers for the endpoint (`judge_through_waypoint`). Its denial (Envoy's
  RBAC local reply: ``403``, body ``RBAC: access denied``; on TCP the RBAC network filter's
  close) and its ``503`` when it cannot reach the endpoint (Envoy's router: body ``upstream
  connect error or disconnect/reset before headers. ...``) come from the waypoint: they prove
  nothing of the endpoint's mode (``admitted`` None, ``denied_by`` the waypoint). Any other
  answer came through it from the endpoint's app (an app's own 403 included).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from pytest_meshconform.audit.discovery import Authz, ServicePort, WaypointProbe
from pytest_meshconform.evidence.curl import curl_argv, parse_curl_output
from pytest_meshconform.evidence.tcp_connect import TcpResult, parse_tcp_output, tcp_argv
from pytest_meshconform.evidence.wire import analyze_pcap
from pytest_meshconform.istio.authorization import RBAC_DENIED_BODY
from pytest_meshconform.istio.envoy import ISTIO_MTLS_ALPNS
from pytest_meshconform.istio.ztunnel import HBONE_ALPN, HBONE_PORT
from pytest_meshconform.mesh import Mesh, Workload

__all__ = [
    "PROBE_TIMEOUT_S",
    "TCP_PROBE_LINE",
    "TCP_PROBE_WAIT_S",
    "UPSTREAM_FAILURE_BODY",
    "ProbeAttempt",
    "WireEvidence",
    "attempt",
    "judge_mesh_attempt",
    "judge_through_waypoint",
    "read_wire",
    "wire_problems",
]

PROBE_TIMEOUT_S: Final = 5.0
TCP_PROBE_LINE: Final = "meshconform-audit"
TCP_PROBE_WAIT_S: Final = 2.0  # how long a TCP probe waits for an answer
# `istio.ztunnel.HBONE_TLS_VERSION` (TLS 1.3 only) as `evidence.tls` names the wire's version
_HBONE_WIRE_VERSION: Final = "TLS1.3"
# the start of the body of Envoy's router's local reply when the upstream failed before any
# response headers (503; source/common/router/router.cc, ``Filter::onUpstreamReset``)
UPSTREAM_FAILURE_BODY: Final = "upstream connect error or disconnect/reset before headers"


@dataclass(frozen=True, slots=True)
class ProbeAttempt:
    """One request of a probe: what ran, what came back, and what that says.

    ``outcome`` in a word (``HTTP 200``, ``HTTP 403 RBAC: access denied``, ``reset``,
    ``answered``, ``silent``, ``closed``, ``refused``, ``timeout``); ``admitted``: the
    endpoint's mode let the connection through (None: cannot tell); ``authorization``: what
    authorization did to it (`Authz`)."""

    client: str
    target: str
    exit_code: int
    outcome: str
    admitted: bool | None
    authorization: Authz
    status: int | None = None  # HTTP status, when an HTTP answer came back
    answered: bool = False  # the server answered (an HTTP status, or bytes on a TCP port)
    detail: str = ""
    # the answer's body when it is one of Envoy's local replies the audit reads (the RBAC
    # filter's denial, the router's upstream failure), else ""
    envoy_reply: str = ""
    denied_by: str = ""  # who denied it when not the endpoint's data plane (``waypoint ns/name``)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "client": self.client,
            "target": self.target,
            "exitCode": self.exit_code,
            "outcome": self.outcome,
            "answered": self.answered,
            "authorization": self.authorization,
        }
        if self.admitted is not None:
            out["admitted"] = self.admitted
        if self.status is not None:
            out["status"] = self.status
        if self.detail:
            out["detail"] = self.detail
        if self.denied_by:
            out["deniedBy"] = self.denied_by
        return out


@dataclass(frozen=True, slots=True)
class WireEvidence:
    """What the capture at the sidecar probe showed of its connection to the endpoint."""

    pcap: str | None
    flows: int
    tls: bool
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    plaintext_payload: bool = False
    server_hello: bool = False  # the endpoint answered the ClientHello
    server_bytes: int = 0  # bytes the endpoint sent (handshake included)
    server_reset: bool = False  # the endpoint reset the connection
    tls_version: str | None = None  # the version the ServerHello chose (``TLS1.3``)

    @property
    def admitted(self) -> bool:
        """The endpoint took the connection: a ServerHello to the ClientHello, or bytes back
        on a connection without TLS."""
        if self.tls:
            return self.server_hello
        return self.server_bytes > 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "flows": self.flows,
            "tls": self.tls,
            "serverHello": self.server_hello,
            "serverBytes": self.server_bytes,
            "serverReset": self.server_reset,
            "plaintextPayload": self.plaintext_payload,
            "alpn": list(self.alpn),
        }
        if self.pcap is not None:
            out["pcap"] = self.pcap
        if self.sni is not None:
            out["sni"] = self.sni
        if self.tls_version is not None:
            out["tlsVersion"] = self.tls_version
        return out


def _tcp_attempt(result: TcpResult, port: ServicePort) -> tuple[bool | None, Authz]:
    """(admitted, authorization) of a plaintext TCP attempt, as the module's doc says; on an
    ambient endpoint a close is ztunnel refusing the connection (its verdict covers STRICT and
    the L4 AuthorizationPolicies alike, docs/istio-model.md "Ambient on the wire")."""
    if result.reset:
        return False, "not reached"
    if result.outcome in ("answered", "silent"):
        return True, "allowed"
    if result.outcome == "closed":
        if port.hbone:
            return False, "not reached"
        return True, "denied" if port.endpoint.has_sidecar else "allowed"
    return None, "unknown"  # refused, timeout, unresolved: nothing was tried


def attempt(mesh: Mesh, client: Workload, port: ServicePort) -> ProbeAttempt:
    """One request from ``client`` to the Service port: an HTTP ``GET /`` on an HTTP port,
    a line of bytes on a TCP port (`tcp_argv`). ``admitted`` and ``authorization`` are read
    as for a plaintext probe; the mesh probe's are the wire's (`judge_mesh_attempt`)."""
    svc = port.service
    if port.protocol.is_http:
        url = port.url()
        argv = curl_argv(url, timeout=PROBE_TIMEOUT_S)
        result = mesh.exec(client, argv, PROBE_TIMEOUT_S + 10)
        http = parse_curl_output(url, client.key, result.returncode, result.stdout, result.stderr)
        denied = http.status == 403 and http.body.strip().startswith(RBAC_DENIED_BODY.encode())
        body = http.body.strip().decode(errors="replace")
        envoy_reply = ""
        if (http.status, body) == (403, RBAC_DENIED_BODY) or (
            http.status == 503 and body.startswith(UPSTREAM_FAILURE_BODY)
        ):
            envoy_reply = body.splitlines()[0][:200]
        admitted: bool | None = None
        authz: Authz = "unknown"
        if http.status is not None:
            admitted, authz = True, "denied" if denied else "allowed"
        elif http.reset or (port.hbone and http.exit_code == 52):  # ztunnel's close: no reply
            admitted, authz = False, "not reached"
        outcome = f"{http.outcome} {RBAC_DENIED_BODY}" if denied else http.outcome
        # curl's error, or the body of a denial or Envoy's reply (an app's page: noise here)
        detail = http.stderr.strip() or (RBAC_DENIED_BODY if denied else envoy_reply)
        return ProbeAttempt(
            client=client.key,
            target=url,
            exit_code=http.exit_code,
            outcome=outcome,
            admitted=admitted,
            authorization=authz,
            status=http.status,
            answered=http.status is not None,
            detail=detail[:300],
            envoy_reply=envoy_reply,
        )
    send = f"{TCP_PROBE_LINE}\n".encode()
    argv = tcp_argv(port.host, svc.port, send=send, timeout=TCP_PROBE_WAIT_S)
    result = mesh.exec(client, argv, TCP_PROBE_WAIT_S + 10)
    tcp = parse_tcp_output(
        f"{port.host}:{svc.port}",
        client.key,
        result.returncode,
        result.stdout,
        result.stderr,
        sent=send,
        port_name=svc.port_name,
    )
    admitted, authz = _tcp_attempt(tcp, port)
    return ProbeAttempt(
        client=client.key,
        target=f"tcp://{port.host}:{svc.port}",
        exit_code=tcp.exit_code,
        outcome=tcp.outcome,
        admitted=admitted,
        authorization=authz,
        answered=bool(tcp.received),
        detail=(tcp.received.decode(errors="replace").strip() or tcp.stderr.strip())[:300]
        + ("; the probe closed the connection once the echo came back" if tcp.echoed else ""),
    )


def judge_mesh_attempt(
    request: ProbeAttempt, wire: WireEvidence, port: ServicePort
) -> ProbeAttempt:
    """The mesh probe's attempt with ``admitted`` from the wire (its own sidecar accepts every
    connection and answers for the endpoint) and ``authorization`` from what came back."""
    if wire.flows == 0:
        return replace(request, admitted=None, authorization="unknown")
    if port.hbone and port.waypoint_probe is not None:
        return judge_through_waypoint(request, port.waypoint_probe, port.protocol.is_http)
    if port.hbone:  # ztunnel finishes the handshake, then judges the CONNECT: the answer tells
        through = request.status is not None or request.outcome in ("answered", "silent")
        return replace(
            request, admitted=through, authorization="allowed" if through else "not reached"
        )
    if not wire.admitted:
        return replace(request, admitted=False, authorization="not reached")
    authz: Authz = "allowed"
    if request.status is not None:
        authz = "denied" if request.outcome.endswith(RBAC_DENIED_BODY) else "allowed"
    elif port.protocol.is_http or request.outcome not in ("answered", "silent"):
        # the endpoint took the connection, then closed it without an answer: the RBAC
        # network filter's denial on TCP; a reset (or no HTTP response) cannot be told
        closed = request.outcome == "closed" and port.endpoint.has_sidecar
        authz = "denied" if closed else "unknown"
    return replace(request, admitted=True, authorization=authz)


def judge_through_waypoint(request: ProbeAttempt, probe: WaypointProbe, http: bool) -> ProbeAttempt:
    """The ambient probe's attempt when its tunnel ends at the waypoint in front of the
    endpoint (the module's doc): the waypoint's RBAC denial and its upstream failure say
    nothing of the endpoint's mode; a TCP close is the waypoint's denial when its policies
    deny the probe (or cannot tell), else the endpoint's refusal behind it."""
    waypoint = f"waypoint {probe.waypoint}"
    if request.status == 403 and request.envoy_reply == RBAC_DENIED_BODY:
        return replace(request, admitted=None, authorization="denied", denied_by=waypoint)
    if request.status == 503 and request.envoy_reply.startswith(UPSTREAM_FAILURE_BODY):
        return replace(request, admitted=None, authorization="unknown")
    if request.status is not None or request.outcome in ("answered", "silent"):
        return replace(request, admitted=True, authorization="allowed")
    predicted = probe.verdict
    if request.outcome == "closed" and not http and predicted != "allowed":
        if predicted == "denied":
            return replace(request, admitted=None, authorization="denied", denied_by=waypoint)
        return replace(request, admitted=None, authorization="unknown")
    return replace(request, admitted=False, authorization="not reached")


def read_wire(pcap: bytes, path: Path | None, target_port: int) -> WireEvidence:
    """The capture's connections to the endpoint's ``target_port`` in facts."""
    capture = analyze_pcap(pcap)
    flows = [f for f in capture.flows_to(target_port) if f.has_payload]
    hello = next(
        (f.tls.client_hello for f in flows if f.tls is not None and f.tls.client_hello), None
    )
    return WireEvidence(
        pcap=None if path is None else str(path),
        flows=len(flows),
        tls=any(f.tls is not None for f in flows),
        sni=None if hello is None else hello.sni,
        alpn=() if hello is None else tuple(hello.alpn),
        plaintext_payload=any(f.tls is None for f in flows),
        server_hello=any(f.tls is not None and f.tls.server_hello is not None for f in flows),
        server_bytes=sum(f.server_bytes for f in flows),
        server_reset=any(f.server_rst for f in flows),
        tls_version=next(
            (f.tls.version for f in flows if f.tls is not None and f.tls.version), None
        ),
    )


def wire_problems(port: ServicePort, wire: WireEvidence, probe: Workload) -> list[str]:
    """What is wrong with the mesh request's wire: no connection to the endpoint seen; a
    ClientHello an inbound sidecar would not take as Istio mTLS (none of
    `ISTIO_MTLS_ALPNS`), or with another SNI than the probe's cluster sets; plaintext
    payload beside the TLS."""
    problems: list[str] = []
    if port.hbone:
        return _hbone_problems(wire, probe)
    target_port = port.service.target_port
    if wire.flows == 0:
        problems.append(
            f"the capture at {probe.key} saw no connection to port {target_port}: the mesh"
            " request never reached the endpoint"
        )
    if wire.tls:
        want_sni = None if port.upstream is None else port.upstream.towards(port.endpoint.key).sni
        if not set(wire.alpn) & set(ISTIO_MTLS_ALPNS):
            problems.append(
                f"the ClientHello's ALPN {list(wire.alpn)} has none of Istio's mTLS ALPNs"
                f" {list(ISTIO_MTLS_ALPNS)}"
            )
        if want_sni is not None and wire.sni != want_sni:
            problems.append(f"the ClientHello's SNI is {wire.sni!r}, Istio's is {want_sni!r}")
        if wire.plaintext_payload:
            problems.append("a plaintext payload went on the wire next to the mTLS connection")
    return problems


def _hbone_problems(wire: WireEvidence, probe: Workload) -> list[str]:
    """What is wrong with the ambient probe's HBONE on the wire: no connection to port 15008,
    no TLS, a ClientHello without ztunnel's ALPN ``h2`` or with an SNI (ztunnel sends none), a
    handshake that chose another version than TLS 1.3 (ztunnel speaks nothing else), or
    plaintext payload beside it (docs/istio-model.md, "Ambient on the wire")."""
    if wire.flows == 0:
        return [
            f"the capture at {probe.key} saw no connection to port {HBONE_PORT}: the request"
            " was not tunnelled over HBONE"
        ]
    problems = []
    if not wire.tls:
        problems.append(f"the connection to port {HBONE_PORT} is not TLS")
    else:
        if wire.alpn != (HBONE_ALPN,):
            problems.append(f"the ClientHello's ALPN {list(wire.alpn)} is not ztunnel's ['h2']")
        if wire.sni is not None:
            problems.append(f"the ClientHello carries SNI {wire.sni!r}; ztunnel sends none")
        if wire.tls_version not in (None, _HBONE_WIRE_VERSION):
            problems.append(
                f"the handshake on port {HBONE_PORT} chose {wire.tls_version}; ztunnel's HBONE"
                f" is {_HBONE_WIRE_VERSION} only"
            )
    if wire.plaintext_payload:
        problems.append(f"a plaintext payload went to port {HBONE_PORT} next to the tunnel")
    return problems
