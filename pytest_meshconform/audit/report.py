"""The audit's report: the terminal table, the record (YAML/JSON, per `AUDIT_SCHEMA`) and the
page or Markdown for people (`audit_document`, drawn by the shared renderer `report.render`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pytest_meshconform.audit.engine import AuditResult
from pytest_meshconform.audit.pod_ports import PodPortResult
from pytest_meshconform.outputs import write_file
from pytest_meshconform.report.observations import ObservedTable
from pytest_meshconform.report.render import (
    Block,
    Document,
    Entry,
    Section,
    render_html,
    render_markdown,
)

__all__ = ["AUDIT_SCHEMA", "audit_document", "format_table", "write_report"]

AUDIT_SCHEMA: Final = Path(__file__).with_name("schema.json")

_SIDECAR_CELL: Final = {"sidecar": "yes", "ambient": "ambient", "none": "no"}
_DATAPLANE_WORDS: Final = {
    "sidecar": "sidecar",
    "ambient": "ambient (ztunnel)",
    "none": "no sidecar",
}

_COLUMNS: Final = (
    "SERVICE PORT",
    "PROTOCOL",
    "SIDECAR",
    "PREDICTED",
    "OBSERVED",
    "AUTHZ (MESH/PLAINTEXT)",
    "VERDICT",
)


def _authz_cell(mesh: str, plaintext: str) -> str:
    """Both probes' authorization in a short cell: ``allowed/denied``, ``-`` for a probe the
    mode refused before authorization."""
    short = {"not reached": "-"}
    return f"{short.get(mesh, mesh)}/{short.get(plaintext, plaintext)}"


def format_table(result: AuditResult) -> list[str]:
    """The terminal table: one row per port (the mode predicted and observed, what
    authorization did to the mesh and plaintext probes), then a summary line."""
    rows = []
    for r in result.ports:
        mesh = "unknown" if r.mesh_request is None else r.mesh_request.authorization
        plain = "unknown" if r.plaintext is None else r.plaintext.authorization
        rows.append(
            (
                r.port.key,
                r.port.protocol.value,
                _SIDECAR_CELL[r.port.endpoint.dataplane],
                r.port.predicted,
                r.observed,
                _authz_cell(mesh, plain),
                r.verdict.upper(),
            )
        )
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(_COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(_COLUMNS, widths, strict=True)).rstrip()]
    for row, r in zip(rows, result.ports, strict=True):
        line = "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True))
        lines.append(f"{line}  {r.reason}")
    summary = result.to_dict()["summary"]
    require = f", required {result.require}" if result.require else ""
    lines += _waypoint_lines(result)
    lines += _pod_port_lines(result)
    lines += [f"not audited: {note}" for note in result.not_audited]
    lines.append(
        f"{summary['ports']} ports: {summary['passed']} passed, {summary['failed']} failed,"
        f" {summary['errors']} errors{_pod_port_summary(result)}{require}"
    )
    return lines


def _waypoint_policy_lines(waypoint: Mapping[str, Any]) -> tuple[str, ...]:
    """The AuthorizationPolicies a Service's waypoint enforces, one line each (``ns/name:
    ALLOW, targetRefs Gateway ns/waypoint``), or that none is bound."""
    return tuple(
        f"{p['name']}: {p['action']}, targetRefs {', '.join(p['targetRefs'])}"
        for p in waypoint["policies"]
    ) or ("no AuthorizationPolicy bound to it for this Service",)


def _mesh_probe_note(waypoint: Mapping[str, Any]) -> str:
    """``; the audit's mesh probe: denied``: what the waypoint's policies predict for the
    audit's own probe, which crosses it (nothing when it does not)."""
    if "meshProbe" not in waypoint:
        return ""
    return f"; the audit's mesh probe: {waypoint['meshProbe']}"


def _waypoint_lines(result: AuditResult) -> list[str]:
    """Each Service port whose traffic goes through a waypoint, once: the waypoint and the
    AuthorizationPolicies bound to it for that Service."""
    lines: list[str] = []
    seen: set[str] = set()
    for r, port in zip(result.ports, result.to_dict()["ports"], strict=True):
        if "waypoint" not in port or r.port.key in seen:
            continue
        seen.add(r.port.key)
        waypoint = port["waypoint"]
        policies = "; ".join(
            f"AuthorizationPolicy {line}" if waypoint["policies"] else line
            for line in _waypoint_policy_lines(waypoint)
        )
        lines.append(
            f"waypoint: {r.port.key} through {waypoint['name']}: {policies}"
            f"{_mesh_probe_note(waypoint)}"
        )
    return lines


def _pod_port_summary(result: AuditResult) -> str:
    """The pod ports' part of the summary line (empty when none was audited): a pod port that
    fails or errs fails the audit, so the line that ends the table counts it too."""
    pods = result.to_dict()["podPortSummary"]
    if not pods["ports"]:
        return ""
    accepted = f", {pods['accepted']} accepted" if pods["accepted"] else ""
    return (
        f"; {pods['ports']} pod ports: {pods['ports'] - pods['failed']} passed,"
        f" {pods['failed']} failed or in error{accepted}"
    )


_POD_COLUMNS: Final = (
    "POD PORT",
    "SIDECAR",
    "SOURCE",
    "CLASS",
    "PLAINTEXT BY POD IP",
    "MESH BY POD IP",
    "VERDICT",
)


def _mesh_by_pod_ip(r: PodPortResult) -> str:
    """The MESH BY POD IP cell: what the capture at the probe saw (``none seen``: no
    connection, so neither mTLS nor plaintext)."""
    if r.mesh is None:
        return "-"
    if r.mesh.flows == 0:
        return "none seen"
    return "mTLS" if r.mesh.tls else "plaintext"


def _pod_port_lines(result: AuditResult) -> list[str]:
    """Every listening port of the audited pods (class, the plaintext probe by pod IP,
    verdict, reason); then the accepted exceptions apart, stale entries, and the policies
    that cannot apply."""
    lines: list[str] = []
    if result.pod_ports:
        rows = [
            (
                r.port.key,
                _SIDECAR_CELL[r.port.workload.dataplane],
                r.port.source,
                r.port_class,
                r.outcome or "-",
                _mesh_by_pod_ip(r),
                "ACCEPTED" if r.accepted else r.verdict.upper(),
            )
            for r in result.pod_ports
        ]
        widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(_POD_COLUMNS)]
        lines.append("")
        lines.append("  ".join(c.ljust(w) for c, w in zip(_POD_COLUMNS, widths, strict=True)))
        for row, r in zip(rows, result.pod_ports, strict=True):
            cells = "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True))
            lines.append(f"{cells}  {r.reason}")
    for r in result.accepted:
        entry = r.accepted_by
        until = f", until {entry.expires.isoformat()}" if entry and entry.expires else ""
        why = entry.reason if entry else ""
        lines.append(f"accepted exception: {r.port.key} ({r.port_class}): {why}{until}")
    for e in result.stale:
        lines.append(
            f"stale exception: {e.namespace}/{e.workload} port {e.port} ({result.exceptions}:"
            f"{e.line}) matches no bypass: the entry can go"
        )
    lines += [f"policy that cannot apply: {line}" for line in result.inapplicable]
    return lines


def write_report(result: AuditResult, path: Path) -> None:
    """The report as YAML (.yaml/.yml) or JSON (.json), per AUDIT_SCHEMA; or, for a person,
    as a self-contained HTML page (.html/.htm) or Markdown (.md) (`audit_document`)."""
    data = result.to_dict()
    if path.suffix.lower() in (".html", ".htm", ".md"):
        document = audit_document(result)
        markdown = path.suffix.lower() == ".md"
        write_file(path, render_markdown(document) if markdown else render_html(document))
        return
    if path.suffix == ".json":
        write_file(path, json.dumps(data, indent=2) + "\n")
    else:
        import yaml

        write_file(path, yaml.safe_dump(data, sort_keys=False))


_AUDIT_STATUS: Final = {"pass": "passed", "fail": "failed", "error": "error"}


def audit_document(result: AuditResult) -> Document:
    """`meshconform audit`'s result as a Document: the audit's header, one table of every
    Service port (the mode and authorization Istio's policies predict against what the probes
    observed, the requirement and the verdict, colour-coded: a failed port is never all
    green), then an entry per port with its verdict, reason, probes and wire evidence."""
    data = result.to_dict()
    mesh = result.mesh
    revision = f", revision {mesh.revision}" if mesh.revision else ""
    header: list[tuple[str, str]] = [
        ("Mesh", mesh.name),
        ("Version", mesh.version),
        ("Backend", f"{mesh.backend}{revision}"),
        ("Trust domain", mesh.trust_domain),
        ("Requirement", result.require or "none (the policies' own prediction)"),
        ("Namespaces", ", ".join(result.namespaces) or "none"),
        ("Date", data["date"]),
        ("Duration", f"{result.duration:.1f}s"),
    ]
    if result.excluded:
        header.append(("Excluded", ", ".join(result.excluded)))
    if result.policies:
        header.append(("Policies applied", ", ".join(result.policies)))
    summary = data["summary"]
    ports = [r.port.key for r in result.ports]
    columns = ["mode", "authorization"]
    expected: list[list[str]] = [[r.port.expected, r.port.expected_authz] for r in result.ports]
    observed: list[list[str]] = [[r.observed, r.observed_authz] for r in result.ports]
    if result.require is not None:  # the requirement, met or not, next to the prediction
        columns.append(f"required {result.require}")
        for want, got, r in zip(expected, observed, result.ports, strict=True):
            want.append("met")
            got.append("met" if r.meets_requirement else f"not met: {r.observed}")
    columns.append("verdict")  # so the table never reads "as expected" for a failed port
    for want, got, r in zip(expected, observed, result.ports, strict=True):
        want.append("pass")
        got.append(r.verdict)
    matrix = ObservedTable(
        title="every Service port: what the probes must observe vs what they observed",
        rows=tuple(ports),
        columns=tuple(columns),
        expected=tuple(tuple(row) for row in expected),
        observed=tuple(tuple(row) for row in observed),
        corner="Service port",
    )
    # the Service ports' own status: a failed pod port or policy is its own section's
    service_status = (
        "success" if result.ports and all(r.verdict == "pass" for r in result.ports) else "failure"
    )
    overview = Entry(  # the section is "Service ports": the entry must not repeat it
        title="Expected vs observed",
        status=service_status,
        tables=(matrix,) if ports else (),
    )
    entries = [overview]
    for r in result.ports:
        data_port = data["ports"][result.ports.index(r)]
        evidence = data_port["evidence"]
        facts: list[tuple[str, tuple[str, ...]]] = [
            (
                "Mode",
                (
                    f"predicted {r.port.predicted}, expected {r.port.expected},"
                    f" observed {r.observed}",
                ),
            )
        ]
        if r.meets_requirement is not None:
            facts.append(
                (
                    "Requirement",
                    (f"{result.require}: {'met' if r.meets_requirement else 'not met'}",),
                )
            )
        policies = ", ".join(data_port["authorization"]["policies"])
        facts.append(
            (
                "Authorization",
                (
                    f"expected {r.port.expected_authz}, observed {r.observed_authz}",
                    f"AuthorizationPolicy: {policies}" if policies else "no AuthorizationPolicy",
                ),
            )
        )
        if "waypoint" in data_port:
            waypoint = data_port["waypoint"]
            bound = _waypoint_policy_lines(waypoint)
            if waypoint["policies"]:
                bound = tuple(f"AuthorizationPolicy {line}" for line in bound)
            probe = _mesh_probe_note(waypoint).removeprefix("; ")
            facts.append(("Waypoint", (waypoint["name"], *bound, *((probe,) if probe else ()))))
        for label, key in (("Plaintext probe", "plaintext"), ("Mesh probe", "mesh")):
            if key in evidence:
                facts.append((label, (_attempt_line(evidence[key]),)))
        if "wire" in evidence:
            wire = evidence["wire"]
            facts.append(
                (
                    "Wire",
                    (_wire_line(wire), *((f"pcap: {wire['pcap']}",) if "pcap" in wire else ())),
                )
            )
        entries.append(
            Entry(
                title=r.port.key,
                status=_AUDIT_STATUS[r.verdict],
                description=(
                    f"{r.port.protocol.value} port of {r.port.endpoint.key}"
                    f" ({_DATAPLANE_WORDS[r.port.endpoint.dataplane]})"
                ),
                message=r.reason if r.verdict != "pass" else None,
                facts=tuple(facts),
                evidence=tuple(Block("problem", p) for p in r.problems),
            )
        )
    return Document(
        title="meshconform audit",
        status=data["result"],
        summary=(
            f"{summary['ports']} ports: {summary['passed']} passed, {summary['failed']} failed,"
            f" {summary['errors']} errors{_pod_port_summary(result)}"
        ),
        header=tuple(header),
        sections=(
            Section("Service ports", service_status, tuple(entries)),
            *_pod_port_sections(result),
            *_inapplicable_sections(result),
        ),
        notes=(
            *(
                f"stale exception: {e.namespace}/{e.workload} port {e.port}"
                f" ({result.exceptions}:{e.line}) matches no bypass: the entry can go"
                for e in result.stale
            ),
            *(f"not audited: {note}" for note in result.not_audited),
        ),
        generated=data["date"],
    )


_GOT_THROUGH: Final = {True: "got through", False: "refused by the mode"}


def _attempt_line(attempt: Mapping[str, Any]) -> str:
    """One probe in words: ``probe-naked.x -> http://...: HTTP 403 RBAC: access denied (curl
    exit 0); got through; authorization denied``."""
    admitted = attempt.get("admitted")
    through = "cannot tell whether it got through" if admitted is None else _GOT_THROUGH[admitted]
    detail = f": {attempt['detail']}" if attempt.get("detail") else ""
    by = f" by the {attempt['deniedBy']}" if attempt.get("deniedBy") else ""
    return (
        f"{attempt['client']} -> {attempt['target']}: {attempt['outcome']} (curl exit"
        f" {attempt['exitCode']}); {through}; authorization {attempt['authorization']}{by}"
        f"{detail}"
    )


def _wire_line(wire: Mapping[str, Any]) -> str:
    """The mesh probe's wire in words."""
    flows = f"{wire['flows']} connection{'s' if wire['flows'] != 1 else ''} to the endpoint"
    if not wire["tls"]:
        shape = "plaintext"
    else:
        alpn = ", ".join(wire["alpn"]) or "none"
        answered = "answered by a ServerHello" if wire["serverHello"] else "no ServerHello"
        shape = f"TLS (SNI {wire.get('sni', 'none')}, ALPN {alpn}), {answered}"
    extra = "; plaintext payload beside it" if wire["tls"] and wire["plaintextPayload"] else ""
    reset = "; the endpoint reset it" if wire["serverReset"] else ""
    return f"{flows}: {shape}, {wire['serverBytes']} bytes from the endpoint{extra}{reset}"


def _pod_port_entry(r: PodPortResult) -> Entry:
    facts: list[tuple[str, tuple[str, ...]]] = [
        ("Class", (r.port_class,)),
        ("Listening, read from", (r.port.source,)),
        ("Services", (", ".join(r.port.services) or "none",)),
        ("Predicted mode", (r.port.predicted,)),
    ]
    if r.port.bypass is not None:
        facts.append(("Interception", (f"not captured: {r.port.bypass}",)))
    if r.target:
        facts.append(("Plaintext probe", (f"{r.target}: {r.outcome}",)))
    if r.mesh is not None:
        m = r.mesh
        sent = f"mTLS (SNI {m.sni or 'none'})" if m.tls else "plaintext"
        if m.flows == 0:  # nothing on the wire: neither mTLS nor plaintext was seen
            sent = "no connection"
        want = "mTLS" if m.expected_tls else "plaintext"
        line = f"{m.target} through {m.cluster}: {sent} on the wire, {want} predicted; {m.outcome}"
        facts.append(("Mesh probe by pod IP", (line,)))
        if m.pcap is not None:
            facts.append(("Capture", (m.pcap,)))
    if r.accepted_by is not None:
        entry = r.accepted_by
        until = f", until {entry.expires.isoformat()}" if entry.expires else ""
        facts.append(("Accepted exception", (f"{entry.reason}{until} (line {entry.line})",)))
    status = "passed" if r.verdict == "pass" else _AUDIT_STATUS[r.verdict]
    return Entry(
        title=r.port.key,
        status=status,
        description=f"{r.port_class}, {_DATAPLANE_WORDS[r.port.workload.dataplane]}",
        message=r.reason if r.verdict != "pass" else None,
        facts=tuple(facts),
    )


def _inapplicable_sections(result: AuditResult) -> tuple[Section, ...]:
    """The policies in force that cannot apply, one failed entry each: the policy, then
    Istio's rule."""
    if not result.inapplicable:
        return ()
    entries = []
    for line in result.inapplicable:
        policy, _, why = line.partition(": ")
        entries.append(Entry(title=policy, status="failed", message=why or line))
    return (
        Section(
            "Policies that cannot apply",
            "failure",
            tuple(entries),
            subtitle="in force, but Istio applies them to nothing: the audit fails",
        ),
    )


def _pod_port_sections(result: AuditResult) -> tuple[Section, ...]:
    """The pods' ports (every one but the accepted bypasses), then the accepted exceptions
    apart."""
    if not result.pod_ports:
        return ()
    others = [r for r in result.pod_ports if not r.accepted]
    status = "success" if all(r.verdict == "pass" for r in others) else "failure"
    sections = [
        Section(
            "Pod ports",
            status,
            tuple(_pod_port_entry(r) for r in others),
            subtitle="every port the audited pods listen on, probed by pod IP",
        )
    ]
    if result.accepted:
        sections.append(
            Section(
                "Accepted exceptions",
                "success",
                tuple(_pod_port_entry(r) for r in result.accepted),
                subtitle=f"bypasses accepted by {result.exceptions}",
            )
        )
    return tuple(sections)
