"""The audit's report: the terminal table, the record (YAML/JSON, per `AUDIT_SCHEMA`) and the
page or Markdown for people (`audit_document`, drawn by the shared renderer `report.render`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

from pytest_meshconform.audit.engine import AuditResult
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

_COLUMNS: Final = ("SERVICE PORT", "PROTOCOL", "SIDECAR", "PREDICTED", "OBSERVED", "VERDICT")


def format_table(result: AuditResult) -> list[str]:
    """The terminal table: one row per port, then a summary line."""
    rows = [
        (
            r.port.key,
            r.port.protocol.value,
            "yes" if r.port.in_mesh else "no",
            r.port.predicted,
            r.observed,
            r.verdict.upper(),
        )
        for r in result.ports
    ]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(_COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(_COLUMNS, widths, strict=True)).rstrip()]
    for row, r in zip(rows, result.ports, strict=True):
        line = "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True))
        lines.append(f"{line}  {r.reason}")
    summary = result.to_dict()["summary"]
    require = f", required {result.require}" if result.require else ""
    lines += [f"not audited: {note}" for note in result.not_audited]
    lines.append(
        f"{summary['ports']} ports: {summary['passed']} passed, {summary['failed']} failed,"
        f" {summary['errors']} errors{require}"
    )
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
    Service port (the mode Istio's policies predict against the one the probes observed,
    colour-coded), then an entry per port with its verdict, reason and wire evidence."""
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
    matrix = ObservedTable(
        title="every Service port: the mode the probes must observe vs what they observed",
        rows=tuple(ports),
        columns=("mode",),
        expected=tuple((r.port.expected,) for r in result.ports),
        observed=tuple((r.observed,) for r in result.ports),
        corner="Service port",
    )
    overview = Entry(
        title="Service ports",
        status=data["result"],
        tables=(matrix,) if ports else (),
    )
    entries = [overview]
    for r in result.ports:
        evidence = data["ports"][result.ports.index(r)]["evidence"]
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
        for label, key in (("Plaintext probe", "plaintext"), ("Mesh probe", "mesh")):
            if key in evidence:
                attempt = evidence[key]
                facts.append(
                    (
                        label,
                        (
                            f"{attempt['client']} -> {attempt['target']}: exit"
                            f" {attempt['exitCode']}, status {attempt.get('status', '-')},"
                            f" answered {attempt['answered']} {attempt.get('detail', '')}".rstrip(),
                        ),
                    )
                )
        if "wire" in evidence:
            wire = evidence["wire"]
            facts.append(
                (
                    "Wire",
                    (
                        f"{wire['flows']} flow(s), TLS {wire['tls']}, SNI {wire.get('sni', '-')},"
                        f" ALPN {','.join(wire['alpn']) or '-'}, plaintext payload"
                        f" {wire['plaintextPayload']}",
                        *((f"pcap: {wire['pcap']}",) if "pcap" in wire else ()),
                    ),
                )
            )
        entries.append(
            Entry(
                title=r.port.key,
                status=_AUDIT_STATUS[r.verdict],
                description=(
                    f"{r.port.protocol.value} port of {r.port.endpoint.key}"
                    f" ({'sidecar' if r.port.in_mesh else 'no sidecar'})"
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
            f" {summary['errors']} errors"
        ),
        header=tuple(header),
        sections=(Section("Service ports", data["result"], tuple(entries)),),
        notes=tuple(f"not audited: {note}" for note in result.not_audited),
        generated=data["date"],
    )
