"""`meshconform audit`'s engine: each Service port probed, its mTLS proven from the wire, and
what authorization did to the probes judged apart.

For each Service port of the audited namespaces (`discovery.discover_service_ports`: the mode
the policies in force predict for its endpoint, and what its AuthorizationPolicies do to each
probe), two probes from the audit's own namespace (`probes`, read by `observe`): a plaintext
attempt from the probe without sidecar (an HTTP request, or a line of bytes on a TCP port) and
a mesh request from the probe with a sidecar whose wire is captured at the probe's side (a
ClientHello with Istio's ALPN and SNI, answered by the endpoint, no plaintext payload).

The mode observed (`STRICT`: mTLS only, `PERMISSIVE`: mTLS and plaintext, `PLAINTEXT`:
plaintext only, `CLOSED`: neither) counts what got through the endpoint's mode, whatever
authorization then did with it: a probe denied by an AuthorizationPolicy (403 ``RBAC: access
denied``, or the RBAC network filter's close) got through. Mode and authorization are each
compared with the prediction; the mode with `--require`. A waypoint in front of an ambient
endpoint answers the mesh probe before the endpoint's mode is met: its denial (or its failure
to reach the endpoint) proves no mode, so the port is not judged from it (`_waypoint_verdict`:
an error naming the waypoint, the policy and the fix; a failure when its policies predict
otherwise).

The engine only uses the `Mesh` protocol; the probes are workloads of the mesh. The command
line is `audit.cli`, the report `audit.report`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pytest_meshconform.audit.discovery import (
    Authz,
    Observed,
    ServicePort,
    WaypointProbe,
    discover_service_ports,
)
from pytest_meshconform.audit.exceptions import AcceptedException, AcceptedExceptions
from pytest_meshconform.audit.inapplicable import inapplicable_policies
from pytest_meshconform.audit.observe import (
    ProbeAttempt,
    WireEvidence,
    attempt,
    judge_mesh_attempt,
    read_wire,
    wire_problems,
)
from pytest_meshconform.audit.pod_ports import PodPortResult, discover_pod_ports, probe_pod_port
from pytest_meshconform.audit.probes import AMBIENT_PROBE, AUDIT_NAMESPACE, NAKED_PROBE, PROBE
from pytest_meshconform.evidence.pcap import CaptureError
from pytest_meshconform.evidence.tcp_connect import TcpError
from pytest_meshconform.istio.api import Policy, PolicyError, parse_policies
from pytest_meshconform.istio.api.authorization_policy import (
    AuthorizationPolicy,
    PolicyTargetRef,
)
from pytest_meshconform.istio.ztunnel import HBONE_PORT
from pytest_meshconform.mesh import (
    Mesh,
    MeshError,
    MeshInfo,
    WaypointAware,
    Workload,
    waypoints_of,
)
from pytest_meshconform.outputs import write_file

__all__ = [
    "AuditResult",
    "PortResult",
    "Requirement",
    "Verdict",
    "observe_mode",
    "probe_port",
    "run_audit",
]

Requirement = Literal["STRICT", "PERMISSIVE"]
Verdict = Literal["pass", "fail", "error"]


@dataclass(frozen=True, slots=True)
class PortResult:
    """A port's audit: prediction, both probes, the wire, what that adds up to, the verdict."""

    port: ServicePort
    observed: Observed
    verdict: Verdict
    reason: str
    conforms: bool  # the mode and authorization both as predicted, the wire without problems
    meets_requirement: bool | None
    authorization_conforms: bool = True
    plaintext: ProbeAttempt | None = None
    mesh_request: ProbeAttempt | None = None
    wire: WireEvidence | None = None
    problems: tuple[str, ...] = field(default=())

    @property
    def observed_authz(self) -> str:
        """Both probes' authorization as observed, in a table cell (`expected_authz`'s
        form); ``unknown`` for a probe that did not run."""
        mesh = "unknown" if self.mesh_request is None else self.mesh_request.authorization
        plain = "unknown" if self.plaintext is None else self.plaintext.authorization
        return f"mesh {mesh}, plaintext {plain}"

    def to_dict(self) -> dict[str, Any]:
        svc = self.port.service
        out: dict[str, Any] = {
            "service": svc.name,
            "namespace": self.port.namespace,
            "port": svc.port,
            "targetPort": svc.target_port,
            "portName": svc.port_name,
            **({"headless": True} if svc.headless else {}),
            "protocol": self.port.protocol.value,
            "endpoint": self.port.endpoint.name,
            "sidecar": self.port.endpoint.has_sidecar,
            "dataplane": self.port.endpoint.dataplane,
            "predicted": self.port.predicted,
            **({"bypass": self.port.bypass} if self.port.bypass is not None else {}),
            "expected": self.port.expected,
            "observed": self.observed,
            "conforms": self.conforms,
            "authorization": self._authorization(),
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
        if self.port.waypoint is not None:
            out["waypoint"] = {
                "name": self.port.waypoint,
                "policies": [_bound_policy(p) for p in self.port.waypoint_policies],
            }
            if self.port.waypoint_probe is not None:
                out["waypoint"]["meshProbe"] = self.port.waypoint_probe.verdict
        return out

    def _authorization(self) -> dict[str, Any]:
        port = self.port
        policies = () if port.authorization is None else port.authorization.policies
        observed: dict[str, Authz] = {}
        for probe, attempt_ in (("mesh", self.mesh_request), ("plaintext", self.plaintext)):
            if attempt_ is not None:
                observed[probe] = attempt_.authorization
        return {
            "policies": [f"{p.namespace or 'default'}/{p.name}" for p in policies],
            "expected": {"mesh": port.authz_mesh, "plaintext": port.authz_plaintext},
            "observed": observed,
            "conforms": self.authorization_conforms,
        }


def _target_ref_text(policy: AuthorizationPolicy, ref: PolicyTargetRef) -> str:
    """``Gateway vault/waypoint``: a ``targetRefs`` entry, namespaced as istiod resolves it
    (the policy's namespace; a GatewayClass has none)."""
    if ref.kind == "GatewayClass":
        return f"GatewayClass {ref.name}"
    return f"{ref.kind} {policy.namespace or 'default'}/{ref.name}"


def _bound_policy(policy: AuthorizationPolicy) -> dict[str, Any]:
    """An AuthorizationPolicy bound to a waypoint, as the report lists it."""
    return {
        "name": f"{policy.namespace or 'default'}/{policy.name}",
        "action": policy.action.value,
        "targetRefs": [_target_ref_text(policy, ref) for ref in policy.target_refs],
    }


def observe_mode(
    plaintext: ProbeAttempt, mesh_request: ProbeAttempt, wire: WireEvidence
) -> Observed:
    """The mode both probes observed: what got through the endpoint's mode, whatever
    authorization then did (a denied probe got through)."""
    if plaintext.admitted is None or mesh_request.admitted is None:
        return "INCONCLUSIVE"
    mtls = mesh_request.admitted and wire.tls and not wire.plaintext_payload
    mesh_plaintext = mesh_request.admitted and not wire.tls
    if mtls:
        return "PERMISSIVE" if plaintext.admitted else "STRICT"
    if plaintext.admitted or mesh_plaintext:
        return "PLAINTEXT"
    return "CLOSED"


_MODE_WORDS = {
    "STRICT": "mTLS only",
    "PERMISSIVE": "mTLS and plaintext",
    "PLAINTEXT": "plaintext only",
    "CLOSED": "refuses both probes",
}
_WHY_UNCLEAR = {
    "refused": ": nothing listens on the target port",
    "timeout": ": no connection within the time",
}
_HOW_DENIED = {True: "HTTP 403 RBAC: access denied", False: "closed without a byte"}


def _authz_mismatches(port: ServicePort, probes: dict[str, ProbeAttempt]) -> list[str]:
    """Each probe whose authorization differs from the prediction (both known)."""
    expected: dict[str, Authz] = {"mesh": port.authz_mesh, "plaintext": port.authz_plaintext}
    out = []
    for name, probe in probes.items():
        want, got = expected[name], probe.authorization
        if "unknown" in (want, got) or want == got or "not reached" in (want, got):
            continue  # the mode's own mismatch says why a probe was (not) reached
        waypoint = port.waypoint_probe if name == "mesh" else None
        if waypoint is not None and got == "allowed":
            out.append(
                f"the waypoint {waypoint.waypoint} allowed the mesh probe ({probe.outcome});"
                f" AuthorizationPolicy {', '.join(waypoint.policies)} predicts denied for its"
                f" identity {waypoint.principal}"
            )
        elif got == "denied":
            how = _HOW_DENIED[port.protocol.is_http]
            note = "" if port.protocol.is_http else ": the RBAC filter's close, or the app's own"
            out.append(
                f"authorization denied the {name} probe ({how}{note}); Istio's policies"
                " predict allowed"
            )
        else:
            out.append(
                f"authorization allowed the {name} probe ({probe.outcome}); Istio's policies"
                " predict denied"
            )
    return out


def _authz_note(port: ServicePort, probes: dict[str, ProbeAttempt]) -> str:
    """``; authorization denied the mesh probe (...), as the AuthorizationPolicies predict``
    for the probes denied as predicted (or where the prediction is unknown); a denial the
    policies do not predict is `_authz_mismatches`' business."""
    expected = {"mesh": port.authz_mesh, "plaintext": port.authz_plaintext}
    denied = [
        name
        for name, p in probes.items()
        if p.authorization == "denied" and expected[name] in ("denied", "unknown")
    ]
    if not denied or port.authorization is None:
        return ""
    how = _HOW_DENIED[port.protocol.is_http]
    who = "both probes" if len(denied) == 2 else f"the {denied[0]} probe"
    policies = ", ".join(
        f"{p.namespace or 'default'}/{p.name}" for p in port.authorization.policies
    )
    if all(expected[name] == "denied" for name in denied):
        why = ", as the AuthorizationPolicies predict"
    else:  # predicted `unknown`: a rule on the probe's address or a header it may send
        why = ", which the audit cannot predict (a rule on the probe's address or headers)"
    return f"; authorization denied {who} ({how}; AuthorizationPolicy {policies}){why}"


_NEVER_REACHED = ": the request never reached the endpoint, so its mode cannot be judged"


def _waypoint_fix(probe: WaypointProbe) -> str:
    """Let the audit's probe through the waypoint: its principal, or every run's (a cluster's
    audit namespace is new each run: ``meshconform-audit-<run>``)."""
    principal = probe.principal.removeprefix("spiffe://")
    return (
        f"; fix: allow the audit's probe (source principal {principal}, or every run's: source"
        f' namespace "{AUDIT_NAMESPACE}*") in an ALLOW AuthorizationPolicy bound to the waypoint'
        " (targetRefs), or exempt it from the DENY ones"
    )


def _waypoint_verdict(
    port: ServicePort, plaintext: ProbeAttempt, mesh_request: ProbeAttempt
) -> tuple[Verdict, str] | None:
    """The verdict and reason when the mesh probe's answer came from the waypoint in front of
    the endpoint, not through it (`observe.judge_through_waypoint`: ``admitted`` None): its
    denial, a close its policies may explain, or its upstream failure. No mode is claimed:
    an error (with the fix), a failure when the waypoint did what its policies do not predict
    or the plaintext probe got through a mode that refuses it; None otherwise."""
    probe = port.waypoint_probe
    if probe is None or mesh_request.admitted is not None or plaintext.admitted is None:
        return None
    verdict: Verdict = "error"
    policies = ", ".join(probe.policies)
    if mesh_request.status == 503:
        refused = port.ztunnel_admits is not None and not port.ztunnel_admits[1]
        why = (
            f"the endpoint's ztunnel refuses the waypoint's identity {probe.identity}, as its"
            " L4 AuthorizationPolicies predict"
            if refused
            else "nothing listens on the target port, or the endpoint's ztunnel refused the"
            f" waypoint's identity {probe.identity}"
        )
        fix = (
            f"; fix: allow the waypoint's identity ({probe.identity.removeprefix('spiffe://')})"
            " in the endpoint's L4 AuthorizationPolicies"
            if refused
            else f"; fix: check that the endpoint listens on port {port.service.target_port}"
            f" and that its ztunnel admits {probe.identity}"
        )
        reason = (
            f"the waypoint {probe.waypoint} answered the mesh probe HTTP 503 (its upstream"
            f" connect error): it could not reach the endpoint ({why}), so the endpoint's mode"
            f" cannot be judged from the mesh probe{fix}"
        )
    elif mesh_request.authorization == "denied":
        how = (
            "denied the mesh probe (HTTP 403 RBAC: access denied)"
            if port.protocol.is_http
            else "closed the mesh probe's connection without a byte (its RBAC network filter's"
            " denial)"
        )
        if probe.verdict == "denied":
            why = f", as AuthorizationPolicy {policies} predicts for its identity {probe.principal}"
        elif probe.verdict == "unknown":
            why = (
                f" under AuthorizationPolicy {policies}, which the audit cannot predict (a rule"
                " on the probe's address or headers)"
            )
        else:
            verdict = "fail"
            bound = ", ".join(
                f"{p.namespace or 'default'}/{p.name}" for p in port.waypoint_policies
            )
            why = (
                f", although the AuthorizationPolicies bound to it ({bound or 'none'}) predict"
                f" allowed for its identity {probe.principal}"
            )
        reason = f"the waypoint {probe.waypoint} {how}{why}{_NEVER_REACHED}{_waypoint_fix(probe)}"
    else:  # a TCP close the waypoint's policies may explain, or the endpoint's refusal
        reason = (
            "the mesh probe's connection was closed without a byte: the waypoint"
            f" {probe.waypoint} may have denied it under AuthorizationPolicy {policies} (a rule"
            " the audit cannot predict), or the endpoint refused it behind the waypoint, so its"
            f" mode cannot be judged{_waypoint_fix(probe)}"
        )
    if plaintext.admitted and not port.accepts_plaintext:
        verdict = "fail"  # a mode failure whatever the waypoint did
        reason += (
            f"; the plaintext probe got through ({plaintext.outcome}), Istio's policies predict"
            f" {port.predicted}"
        )
    return verdict, reason


def _judge(
    port: ServicePort,
    plaintext: ProbeAttempt,
    mesh_request: ProbeAttempt,
    wire: WireEvidence,
    problems: list[str],
    require: Requirement | None,
) -> tuple[Observed, Verdict, str, bool, bool, bool | None]:
    """(observed mode, verdict, reason, conforms, authorization conforms, meets)."""
    observed = observe_mode(plaintext, mesh_request, wire)
    probes = {"mesh": mesh_request, "plaintext": plaintext}
    authz_problems = _authz_mismatches(port, probes)
    mode_conforms = observed == port.expected and not problems
    conforms = mode_conforms and not authz_problems
    meets = _requirement(port, observed, require)
    note = _authz_note(port, probes)
    through_waypoint = _waypoint_verdict(port, plaintext, mesh_request)
    if through_waypoint is not None:
        verdict, reason = through_waypoint
        return observed, verdict, reason, conforms, verdict != "fail", meets
    if observed == "INCONCLUSIVE" or (wire.flows == 0 and observed != "CLOSED"):
        unclear = [
            f"the {name} probe's outcome ({p.outcome}{_WHY_UNCLEAR.get(p.outcome, '')}) cannot"
            " tell whether the endpoint's mode let it through"
            for name, p in (("plaintext", plaintext), ("mesh", mesh_request))
            if p.admitted is None and not (name == "mesh" and wire.flows == 0)
        ]
        return observed, "error", "; ".join(problems + unclear), conforms, not authz_problems, meets
    if not mode_conforms:
        reason = "; ".join(
            problems
            or [
                f"observed {observed}, Istio's policies predict {port.predicted}"
                f" (which means {port.expected} from the probes)"
            ]
        )
        mismatches = "".join(f"; {m}" for m in authz_problems)
        return observed, "fail", reason + mismatches + note, conforms, not authz_problems, meets
    if authz_problems:
        reason = f"{_MODE_WORDS[observed]}, as predicted; " + "; ".join(authz_problems)
        return observed, "fail", reason + note, conforms, False, meets
    if meets is False:
        if not port.in_mesh:
            reason = f"outside the mesh (no sidecar): accepts plaintext; required {require}"
        elif observed in ("PERMISSIVE", "PLAINTEXT"):
            reason = f"accepts plaintext; required {require}"
        else:
            reason = f"observed {observed}; required {require}"
        return observed, "fail", reason + note, conforms, True, meets
    reason = f"{_MODE_WORDS[observed]}, as predicted{note}"
    if port.headless_break is not None:  # as Istio does it, and its mesh clients fail
        reason = f"{_MODE_WORDS[observed]}, as predicted, but {port.headless_break}"
        return observed, "fail", reason, conforms, True, meets
    if port.bypass is not None:
        reason = (
            f"excluded from interception ({port.bypass}): {_MODE_WORDS[observed]}, as"
            " predicted (a client sidecar's auto mTLS reaches an app that cannot read it)"
        )
    return observed, "pass", reason, conforms, True, meets


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
    ambient_probe: Workload | None = None,
) -> PortResult:
    """Audit one Service port: both probes, the capture, the verdict. Never raises for the
    port's own failures (a probe that cannot run is an ``error`` verdict naming why). The
    capture is kept under ``evidence_dir`` (and named in the report) when given."""
    svc = port.service
    # an ambient endpoint: the ambient probe's request, its HBONE tunnel captured on 15008
    client, wire_port = probe, svc.target_port
    if port.hbone:
        if ambient_probe is None:
            return PortResult(
                port=port,
                observed="INCONCLUSIVE",
                verdict="error",
                reason="an ambient endpoint, and this mesh has no ambient probe to tunnel to it",
                conforms=False,
                meets_requirement=None,
            )
        client, wire_port = ambient_probe, HBONE_PORT
    try:
        plaintext = attempt(mesh, naked_probe, port)
        with mesh.capture(client, wire_port) as recording:
            mesh_request = attempt(mesh, client, port)
        kept = None
        if evidence_dir is not None:  # the mesh's own copy goes with the mesh
            kept = evidence_dir / f"{port.key.replace(':', '-')}.pcap"
            write_file(kept, recording.pcap)  # 0600 in a 0700 directory, whatever the umask
        wire = read_wire(recording.pcap, kept, wire_port)
    except (MeshError, CaptureError, TcpError, OSError) as exc:
        return PortResult(
            port=port,
            observed="INCONCLUSIVE",
            verdict="error",
            reason=f"could not probe: {exc}",
            conforms=False,
            meets_requirement=None,
        )
    mesh_request = judge_mesh_attempt(mesh_request, wire, port)
    problems = wire_problems(port, wire, client)
    observed, verdict, reason, conforms, authz_ok, meets = _judge(
        port, plaintext, mesh_request, wire, problems, require
    )
    return PortResult(
        port=port,
        observed=observed,
        verdict=verdict,
        reason=reason,
        conforms=conforms,
        meets_requirement=meets,
        authorization_conforms=authz_ok,
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
    pod_ports: tuple[PodPortResult, ...] = ()  # every listening port of the audited pods
    inapplicable: tuple[str, ...] = ()  # policies in force that cannot apply, and why
    exceptions: str | None = None  # the accepted-exceptions file (--accept)
    stale: tuple[AcceptedException, ...] = ()  # its entries that match no bypass

    @property
    def accepted(self) -> tuple[PodPortResult, ...]:
        """The bypasses the exceptions file accepts (listed apart in every report)."""
        return tuple(r for r in self.pod_ports if r.accepted)

    @property
    def passed(self) -> bool:
        return (
            bool(self.ports)
            and all(r.verdict == "pass" for r in self.ports)
            and all(r.verdict == "pass" for r in self.pod_ports)
            and not self.inapplicable
        )

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
            "podPorts": [r.to_dict() for r in self.pod_ports],
            "podPortSummary": {
                "ports": len(self.pod_ports),
                "bypasses": sum(r.is_bypass for r in self.pod_ports),
                "accepted": len(self.accepted),
                "failed": sum(r.verdict != "pass" for r in self.pod_ports),
            },
            "inapplicablePolicies": list(self.inapplicable),
            "acceptedExceptions": [
                {
                    "namespace": r.port.namespace,
                    "workload": r.port.workload.name,
                    "port": r.port.port,
                    "class": r.port_class,
                    "reason": r.accepted_by.reason if r.accepted_by else "",
                    **(
                        {"expires": r.accepted_by.expires.isoformat()}
                        if r.accepted_by and r.accepted_by.expires
                        else {}
                    ),
                }
                for r in self.accepted
            ],
            "staleExceptions": [
                {"namespace": e.namespace, "workload": e.workload, "port": e.port, "line": e.line}
                for e in self.stale
            ],
            **({"exceptionsFile": self.exceptions} if self.exceptions is not None else {}),
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
    read_sockets: bool = False,
    exceptions: AcceptedExceptions | None = None,
    today: dt.date | None = None,
    mesh_by_pod_ip: bool = False,
) -> AuditResult:
    """Audit every Service port of ``mesh`` (the probes must be workloads of the mesh, in
    AUDIT_NAMESPACE), then every port its audited pods listen on (`audit.pod_ports`: from
    their sockets when ``read_sockets``, else their spec), bypasses judged against
    ``exceptions``; with ``mesh_by_pod_ip`` each pod port gets the sidecar probe's request by
    pod IP too, captured. One port's failure never stops the others."""
    say = progress or (lambda line: None)
    started = dt.datetime.now(dt.UTC).replace(microsecond=0)
    clock = time.monotonic()
    probe = mesh.workload(PROBE, AUDIT_NAMESPACE)
    naked = mesh.workload(NAKED_PROBE, AUDIT_NAMESPACE)
    ambient = next(
        (
            w
            for w in mesh.workloads()
            if w.name == AMBIENT_PROBE and mesh.logical_namespace(w.namespace) == AUDIT_NAMESPACE
        ),
        None,
    )
    try:
        ports = discover_service_ports(
            mesh,
            namespaces=namespaces,
            exclude_namespaces=exclude_namespaces,
            client=probe,
            ambient_client=ambient,
            naked_client=naked,
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
                ambient_probe=ambient,
            )
        )
        say(f"[{index}/{len(ports)}] {port.key}: {results[-1].observed} -> {results[-1].verdict}")
    policies: list[Policy] = [p for m in mesh.policies() for p in parse_policies(m)]
    pod_ports, notes = discover_pod_ports(
        mesh,
        policies,
        namespaces=namespaces,
        exclude_namespaces=exclude_namespaces,
        read_sockets=read_sockets,
        client=probe,
    )
    pod_results: list[PodPortResult] = []
    for index, pod_port in enumerate(pod_ports, 1):
        pod_results.append(
            probe_pod_port(
                mesh,
                naked,
                pod_port,
                exceptions=exceptions,
                today=today,
                probe=probe if mesh_by_pod_ip else None,
                evidence_dir=evidence_dir,
            )
        )
        say(
            f"[pod {index}/{len(pod_ports)}] {pod_port.key}: {pod_results[-1].port_class}"
            f" -> {pod_results[-1].verdict}"
        )
    bypasses = [
        (r.port.namespace, r.port.workload.name, r.port.port) for r in pod_results if r.is_bypass
    ]
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
        not_audited=(*getattr(mesh, "not_audited", ()), *notes),
        pod_ports=tuple(pod_results),
        inapplicable=inapplicable_policies(
            policies,
            mesh.workloads(),
            mesh.services(),
            mesh.root_namespace,
            mesh.logical_namespace,
            waypoints=waypoints_of(mesh),
            service_waypoint=mesh.service_waypoint if isinstance(mesh, WaypointAware) else None,
        ),
        exceptions=None if exceptions is None else exceptions.source,
        stale=() if exceptions is None else exceptions.stale(bypasses),
    )
