"""`meshconform audit`'s engine: each Service port probed, its mTLS proven from the wire.

For each Service port of the audited namespaces (`discovery.discover_service_ports`: the mode
the policies in force predict for its endpoint), two probes from the audit's own namespace
(`probes`): a plaintext attempt from the probe without sidecar (an HTTP request, or a line of
bytes on a TCP port) and a mesh request from the probe with a sidecar whose wire is captured
at the probe's side (a ClientHello with Istio's ALPN and SNI, no plaintext payload). What was
observed (`STRICT`: mTLS only, `PERMISSIVE`: mTLS and plaintext, `PLAINTEXT`: plaintext only,
`CLOSED`: neither) is compared with what the prediction implies, and with `--require`.

The engine only uses the `Mesh` protocol; the probes are workloads of the mesh. The command
line is `audit.cli`, the report `audit.report`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from pytest_meshconform.audit.discovery import Observed, ServicePort, discover_service_ports
from pytest_meshconform.audit.probes import AUDIT_NAMESPACE, NAKED_PROBE, PROBE
from pytest_meshconform.evidence.curl import curl_argv, parse_curl_output
from pytest_meshconform.evidence.pcap import CaptureError
from pytest_meshconform.evidence.wire import analyze_pcap
from pytest_meshconform.istio.api import PolicyError
from pytest_meshconform.istio.envoy import ISTIO_MTLS_ALPNS
from pytest_meshconform.mesh import Mesh, MeshError, MeshInfo, Workload
from pytest_meshconform.outputs import write_file

__all__ = [
    "AuditResult",
    "PortResult",
    "ProbeAttempt",
    "Requirement",
    "Verdict",
    "WireEvidence",
    "probe_port",
    "run_audit",
    "wire_problems",
]

Requirement = Literal["STRICT", "PERMISSIVE"]
Verdict = Literal["pass", "fail", "error"]

PROBE_TIMEOUT_S: Final = 5.0
TCP_PROBE_LINE: Final = "meshconform-audit"
TCP_PROBE_WAIT_S: Final = 2.0  # how long a TCP probe waits for an answer
CURL_TIMED_OUT: Final = 28  # curl's exit code for --max-time


@dataclass(frozen=True, slots=True)
class ProbeAttempt:
    """One request of a probe: what ran and what came back."""

    client: str
    target: str
    exit_code: int
    status: int | None = None  # HTTP status, when an HTTP answer came back
    answered: bool = False  # the server answered (an HTTP status, or bytes on a TCP port)
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "client": self.client,
            "target": self.target,
            "exitCode": self.exit_code,
            "answered": self.answered,
        }
        if self.status is not None:
            out["status"] = self.status
        if self.detail:
            out["detail"] = self.detail
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

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "flows": self.flows,
            "tls": self.tls,
            "plaintextPayload": self.plaintext_payload,
            "alpn": list(self.alpn),
        }
        if self.pcap is not None:
            out["pcap"] = self.pcap
        if self.sni is not None:
            out["sni"] = self.sni
        return out


@dataclass(frozen=True, slots=True)
class PortResult:
    """A port's audit: prediction, both probes, the wire, what that adds up to, the verdict."""

    port: ServicePort
    observed: Observed
    verdict: Verdict
    reason: str
    conforms: bool
    meets_requirement: bool | None
    plaintext: ProbeAttempt | None = None
    mesh_request: ProbeAttempt | None = None
    wire: WireEvidence | None = None
    problems: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        svc = self.port.service
        out: dict[str, Any] = {
            "service": svc.name,
            "namespace": self.port.namespace,
            "port": svc.port,
            "targetPort": svc.target_port,
            "portName": svc.port_name,
            "protocol": self.port.protocol.value,
            "endpoint": self.port.endpoint.name,
            "sidecar": self.port.endpoint.has_sidecar,
            "predicted": self.port.predicted,
            "expected": self.port.expected,
            "observed": self.observed,
            "conforms": self.conforms,
            "verdict": self.verdict,
            "reason": self.reason,
            "evidence": {},
        }
        if self.meets_requirement is not None:
            out["meetsRequirement"] = self.meets_requirement
        if svc.app_protocol is not None:
            out["appProtocol"] = svc.app_protocol
        if self.plaintext is not None:
            out["evidence"]["plaintext"] = self.plaintext.to_dict()
        if self.mesh_request is not None:
            out["evidence"]["mesh"] = self.mesh_request.to_dict()
        if self.wire is not None:
            out["evidence"]["wire"] = self.wire.to_dict()
        if self.problems:
            out["problems"] = list(self.problems)
        return out


def _attempt(
    mesh: Mesh, client: Workload, port: ServicePort, host: str
) -> tuple[ProbeAttempt, bool | None]:
    """One request from ``client`` to the Service port: (the attempt, answered or not; None
    when the outcome cannot be told: a TCP server that kept the connection open in silence)."""
    svc = port.service
    target = f"{host}:{svc.port}"
    if port.protocol.is_http:
        url = f"http://{target}/"
        argv = curl_argv(url, timeout=PROBE_TIMEOUT_S)
        result = mesh.exec(client, argv, PROBE_TIMEOUT_S + 10)
        http = parse_curl_output(url, client.key, result.returncode, result.stdout, result.stderr)
        answered = http.status is not None
        return (
            ProbeAttempt(
                client=client.key,
                target=url,
                exit_code=http.exit_code,
                status=http.status,
                answered=answered,
                detail=http.stderr.strip()[:300],
            ),
            answered,
        )
    # TCP: curl's telnet:// sends the line and prints what comes back, with nothing but curl
    # and sh in the probe (as in the kube probes' curl image). Bytes back: answered. Time-out
    # (28) without bytes: the connection stayed open in silence (inconclusive). Anything else
    # (reset 56, closed 0, refused 7): not accepted.
    script = (
        f"printf '%s\\n' {TCP_PROBE_LINE} | curl -sS --max-time {TCP_PROBE_WAIT_S:g}"
        f" telnet://{host}:{svc.port}"
    )
    result = mesh.exec(client, ["sh", "-c", script], TCP_PROBE_WAIT_S + 10)
    reply = result.stdout
    answered_tcp: bool | None
    if reply:
        answered_tcp = True
    elif result.returncode == CURL_TIMED_OUT:
        answered_tcp = None
    else:
        answered_tcp = False
    return (
        ProbeAttempt(
            client=client.key,
            target=f"tcp://{target}",
            exit_code=result.returncode,
            answered=bool(reply),
            detail=(
                reply.decode(errors="replace").strip()
                or result.stderr.decode(errors="replace").strip()
            )[:300],
        ),
        answered_tcp,
    )


def _wire(pcap: bytes, path: Path | None, target_port: int) -> WireEvidence:
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
    )


def wire_problems(port: ServicePort, wire: WireEvidence, probe: Workload) -> list[str]:
    """What is wrong with the mesh request's wire: no connection to the endpoint seen; a
    ClientHello an inbound sidecar would not take as Istio mTLS (none of
    `ISTIO_MTLS_ALPNS`), or with another SNI than the probe's cluster sets; plaintext
    payload beside the TLS."""
    problems: list[str] = []
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


def _observe(plaintext: bool | None, mesh_ok: bool | None, wire: WireEvidence) -> Observed:
    if plaintext is None or mesh_ok is None:
        return "INCONCLUSIVE"
    mtls = mesh_ok and wire.tls and not wire.plaintext_payload
    mesh_plaintext = mesh_ok and not wire.tls
    if mtls:
        return "PERMISSIVE" if plaintext else "STRICT"
    if plaintext or mesh_plaintext:
        return "PLAINTEXT"
    return "CLOSED"


def _requirement(port: ServicePort, observed: Observed, require: Requirement | None) -> bool | None:
    if require is None:
        return None
    if not port.in_mesh:
        return False
    if require == "STRICT":
        return observed == "STRICT"
    return observed in ("STRICT", "PERMISSIVE")


def probe_port(
    mesh: Mesh,
    port: ServicePort,
    *,
    probe: Workload,
    naked_probe: Workload,
    require: Requirement | None = None,
    evidence_dir: Path | None = None,
) -> PortResult:
    """Audit one Service port: both probes, the capture, the verdict. Never raises for the
    port's own failures (a probe that cannot run is an ``error`` verdict naming why). The
    capture is kept under ``evidence_dir`` (and named in the report) when given."""
    svc = port.service
    host = port.host
    try:
        plaintext, plaintext_answered = _attempt(mesh, naked_probe, port, host)
        with mesh.capture(probe, svc.target_port) as recording:
            mesh_request, mesh_answered = _attempt(mesh, probe, port, host)
        kept = None
        if evidence_dir is not None:  # the mesh's own copy goes with the mesh
            kept = evidence_dir / f"{port.key.replace(':', '-')}.pcap"
            write_file(kept, recording.pcap)  # 0600 in a 0700 directory, whatever the umask
        wire = _wire(recording.pcap, kept, svc.target_port)
    except (MeshError, CaptureError, OSError) as exc:
        return PortResult(
            port=port,
            observed="INCONCLUSIVE",
            verdict="error",
            reason=f"could not probe: {exc}",
            conforms=False,
            meets_requirement=None,
        )
    problems = wire_problems(port, wire, probe)
    observed = _observe(plaintext_answered, mesh_answered, wire)
    conforms = observed == port.expected and not problems
    meets = _requirement(port, observed, require)
    if observed == "INCONCLUSIVE" or (wire.flows == 0 and observed != "CLOSED"):
        verdict: Verdict = "error"
        reason = "; ".join(problems) or (
            "a TCP probe's connection stayed open without an answer: cannot tell whether"
            " the server accepted it"
        )
    elif not conforms:
        verdict = "fail"
        reason = "; ".join(
            problems
            or [
                f"observed {observed}, Istio's policies predict {port.predicted}"
                f" (which means {port.expected} from the probes)"
            ]
        )
    elif meets is False:
        verdict = "fail"
        if not port.in_mesh:
            reason = f"outside the mesh (no sidecar): accepts plaintext; required {require}"
        elif observed in ("PERMISSIVE", "PLAINTEXT"):
            reason = f"accepts plaintext; required {require}"
        else:
            reason = f"observed {observed}; required {require}"
    else:
        verdict = "pass"
        reason = {
            "STRICT": "mTLS only, as predicted",
            "PERMISSIVE": "mTLS and plaintext, as predicted",
            "PLAINTEXT": "plaintext only, as predicted",
            "CLOSED": "refuses both probes, as predicted",
        }.get(observed, "as predicted")
    return PortResult(
        port=port,
        observed=observed,
        verdict=verdict,
        reason=reason,
        conforms=conforms,
        meets_requirement=meets,
        plaintext=plaintext,
        mesh_request=mesh_request,
        wire=wire,
        problems=tuple(problems),
    )


@dataclass(frozen=True, slots=True)
class AuditResult:
    """The whole audit: every port's result, and what it was run with."""

    mesh: MeshInfo
    ports: tuple[PortResult, ...]
    require: Requirement | None
    namespaces: tuple[str, ...]
    excluded: tuple[str, ...]
    policies: tuple[str, ...]
    started: dt.datetime
    duration: float
    not_audited: tuple[str, ...] = ()  # Service ports the audit cannot probe, and why

    @property
    def passed(self) -> bool:
        return bool(self.ports) and all(r.verdict == "pass" for r in self.ports)

    def to_dict(self) -> dict[str, Any]:
        counts = {v: sum(r.verdict == v for r in self.ports) for v in ("pass", "fail", "error")}
        mesh: dict[str, Any] = {
            "used": True,
            "backend": self.mesh.backend,
            "name": self.mesh.name,
            "version": self.mesh.version,
            "trustDomain": self.mesh.trust_domain,
        }
        if self.mesh.revision is not None:
            mesh["revision"] = self.mesh.revision
        return {
            "apiVersion": "meshconform/v1alpha1",
            "kind": "AuditReport",
            "date": self.started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "mesh": mesh,
            "require": self.require,
            "namespaces": list(self.namespaces),
            "excludedNamespaces": list(self.excluded),
            "policies": list(self.policies),
            "duration": round(self.duration, 3),
            "result": "success" if self.passed else "failure",
            "summary": {
                "ports": len(self.ports),
                "passed": counts["pass"],
                "failed": counts["fail"],
                "errors": counts["error"],
            },
            "ports": [r.to_dict() for r in self.ports],
            "notAudited": list(self.not_audited),
        }


def run_audit(
    mesh: Mesh,
    *,
    require: Requirement | None = None,
    namespaces: Sequence[str] = (),
    exclude_namespaces: Sequence[str] = (),
    policy_files: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
    evidence_dir: Path | None = None,
) -> AuditResult:
    """Audit every Service port of ``mesh`` (the probes must be workloads of the mesh, in
    AUDIT_NAMESPACE). One port's failure never stops the others."""
    say = progress or (lambda line: None)
    started = dt.datetime.now(dt.UTC).replace(microsecond=0)
    clock = time.monotonic()
    probe = mesh.workload(PROBE, AUDIT_NAMESPACE)
    naked = mesh.workload(NAKED_PROBE, AUDIT_NAMESPACE)
    try:
        ports = discover_service_ports(
            mesh, namespaces=namespaces, exclude_namespaces=exclude_namespaces, client=probe
        )
    except PolicyError as exc:  # a policy in force the model cannot read: nothing to predict
        raise MeshError(f"cannot predict the modes from the policies in force: {exc}") from None
    results: list[PortResult] = []
    for index, port in enumerate(ports, 1):
        say(f"[{index}/{len(ports)}] {port.key} ({port.protocol.value}, {port.endpoint.key})")
        results.append(
            probe_port(
                mesh,
                port,
                probe=probe,
                naked_probe=naked,
                require=require,
                evidence_dir=evidence_dir,
            )
        )
        say(f"[{index}/{len(ports)}] {port.key}: {results[-1].observed} -> {results[-1].verdict}")
    present = sorted(
        {
            mesh.logical_namespace(w.namespace)
            for w in mesh.workloads()
            if mesh.logical_namespace(w.namespace) != AUDIT_NAMESPACE
        }
    )
    return AuditResult(
        mesh=MeshInfo.of(mesh),
        ports=tuple(results),
        require=require,
        namespaces=tuple(
            n
            for n in present
            if (not namespaces or n in namespaces) and n not in exclude_namespaces
        ),
        excluded=tuple(exclude_namespaces),
        policies=tuple(policy_files),
        started=started,
        duration=time.monotonic() - clock,
        not_audited=tuple(getattr(mesh, "not_audited", ())),
    )
