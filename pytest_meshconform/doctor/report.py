"""``meshconform doctor``'s result: the terminal lines, the record (YAML/JSON) and the page or
Markdown for people (drawn by the reports' renderer, ``report.render``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from pytest_meshconform.backends.kube.checkup import Finding, RunRequest, blocking
from pytest_meshconform.outputs import write_file
from pytest_meshconform.report.render import Document, Entry, Section, render_html, render_markdown
from pytest_meshconform.settings import format_duration

__all__ = ["DoctorResult", "doctor_document", "format_findings", "write_report"]

# a finding's status as the renderer colours it (report.render: GOOD, BAD, else neutral)
_RENDERED: Final = {"ok": "ok", "fail": "failed", "warn": "warning", "info": "info"}
_LABEL: Final = {"ok": "OK", "fail": "FAIL", "warn": "WARN", "info": "INFO"}


@dataclass(frozen=True, slots=True)
class DoctorResult:
    """What ``meshconform doctor`` found on one cluster, for one run's options."""

    context: str
    server: str
    request: RunRequest
    findings: tuple[Finding, ...]
    date: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    @property
    def ready(self) -> bool:
        """No finding would break the run."""
        return not blocking(self.findings)

    def counts(self) -> dict[str, int]:
        counts = {status: 0 for status in _LABEL}
        for finding in self.findings:
            counts[finding.status] += 1
        return counts

    def summary(self) -> str:
        counts = self.counts()
        verdict = "ready for a run" if self.ready else "a run would fail"
        return (
            f"{len(self.findings)} checks: {counts['ok']} ok, {counts['fail']} failed,"
            f" {counts['warn']} warnings, {counts['info']} notes; {verdict}"
        )

    def asked(self) -> list[tuple[str, str]]:
        """The run's options the checks answered for."""
        request = self.request
        return [
            ("Istio namespace", request.istio_namespace),
            ("Revision", request.revision or "the default one (or the only one)"),
            ("Certificate TTL", format_duration(request.cert_ttl)),
            ("Capture image", request.capture_image or "the proxy image"),
            ("Mesh-wide policies", "allowed" if request.allow_mesh_wide else "not allowed"),
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "apiVersion": "meshconform.dev/v1alpha1",
            "kind": "DoctorReport",
            "date": self.date,
            "context": self.context,
            "server": self.server,
            "asked": dict(self.asked()),
            "result": "ready" if self.ready else "not-ready",
            "summary": self.counts(),
            "findings": [
                {
                    "check": f.check,
                    "status": f.status,
                    "found": f.found,
                    **({"breaks": f.breaks} if f.breaks else {}),
                    **({"fix": f.fix} if f.fix else {}),
                }
                for f in self.findings
            ],
        }


def format_findings(result: DoctorResult) -> list[str]:
    """The terminal lines: one per finding (what breaks and the fix indented under it)."""
    width = max(len(f.check) for f in result.findings) if result.findings else 0
    lines = [f"meshconform doctor: context {result.context} ({result.server})"]
    lines.append("asked: " + ", ".join(f"{k.lower()} {v}" for k, v in result.asked()))
    for finding in result.findings:
        lines.append(f"{_LABEL[finding.status]:<4}  {finding.check:<{width}}  {finding.found}")
        indent = " " * (8 + width)
        if finding.breaks:
            lines.append(f"{indent}breaks: {finding.breaks}")
        if finding.fix:
            lines.append(f"{indent}fix: {finding.fix}")
    lines.append(result.summary())
    return lines


def _entry(finding: Finding, title: str) -> Entry:
    facts: list[tuple[str, tuple[str, ...]]] = []
    if finding.breaks:
        facts.append(("What it breaks", (finding.breaks,)))
    if finding.fix:
        facts.append(("Fix", (finding.fix,)))
    return Entry(
        title=title,
        status=_RENDERED[finding.status],
        description=finding.found,
        message=f"fix: {finding.fix}" if finding.status == "fail" and finding.fix else None,
        facts=tuple(facts),
    )


def _section(title: str, findings: Sequence[Finding], titles: Sequence[str]) -> Section:
    failed = any(f.status == "fail" for f in findings)
    return Section(
        title,
        "failed" if failed else "ok",
        tuple(_entry(f, t) for f, t in zip(findings, titles, strict=True)),
    )


def doctor_document(result: DoctorResult) -> Document:
    """The result as a Document: the cluster's checks, then one entry per permission."""
    checks = [f for f in result.findings if f.check != "permission"]
    permissions = [f for f in result.findings if f.check == "permission"]
    return Document(
        title="meshconform doctor",
        status="ok" if result.ready else "failed",
        summary=result.summary(),
        header=(
            ("Context", result.context),
            ("API server", result.server),
            *result.asked(),
            ("Date", result.date),
        ),
        sections=(
            _section("Cluster and Istio", checks, [f.check for f in checks]),
            _section(
                "Permissions (SelfSubjectAccessReview)",
                permissions,
                [f.found.split(":", 1)[0] for f in permissions],
            ),
        ),
        generated=result.date,
    )


def write_report(result: DoctorResult, path: Path) -> None:
    """``.html``/``.htm`` (a page), ``.md`` (Markdown), ``.yaml``/``.yml`` or ``.json``."""
    suffix = path.suffix.lower()
    if suffix in (".html", ".htm", ".md"):
        document = doctor_document(result)
        write_file(path, render_markdown(document) if suffix == ".md" else render_html(document))
    elif suffix == ".json":
        write_file(path, json.dumps(result.to_dict(), indent=2) + "\n")
    else:
        import yaml

        write_file(path, yaml.safe_dump(result.to_dict(), sort_keys=False))
