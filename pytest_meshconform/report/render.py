"""Human-readable reports: one self-contained HTML page and Markdown, from a table + evidence
model that any report can fill (a conformance run here; `meshconform audit` in `audit.report`).

- The model: a `Document` (title, result, header facts, notes) of `Section`s of `Entry`s; an
  entry has a status, a description, a message, facts (lists of lines), `ObservedTable`s
  (expected vs observed, cell by cell), a rotation `Timeline` and evidence `Block`s.
- `render_html(document)`: one page, no network: inline CSS, inline SVG charts, no script.
  Tables are colour-coded (green: as expected, red: differs, with both values in the cell).
- `render_markdown(document)`: the same content as GitHub-flavoured Markdown;
  `render_markdown(document, brief=True)` is the summary CI appends to `GITHUB_STEP_SUMMARY`
  (tables and failures in full, passing tests as one line each).
- `document_of(report, ...)`: a `ConformanceReport` as a Document.

The model and both renderers are pure (text in, text out); `plugin.render` writes them for a
pytest run (`--mesh-report=r.html`, `--mesh-report=r.md`, `GITHUB_STEP_SUMMARY`).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from pytest_meshconform.report.diff import (
    change_line,
    collection_error_line,
    comparison_sections,
    comparison_verdict,
)
from pytest_meshconform.report.observations import ObservedTable, RotationRecord

if TYPE_CHECKING:
    from pytest_meshconform.report import ConformanceReport, TestResult
    from pytest_meshconform.report.model import BaselineComparison

__all__ = [
    "Block",
    "Document",
    "Entry",
    "Section",
    "Timeline",
    "document_of",
    "render_html",
    "render_markdown",
]

# Statuses: a test outcome, or "ok" / "bad" for other kinds of entries (an audit's findings).
GOOD: Final = frozenset({"passed", "xpassed", "ok", "success", "fixed"})
BAD: Final = frozenset({"failed", "error", "bad", "failure", "fail", "regression"})
_ICONS: Final = {"good": "✅", "bad": "❌", "other": "⚪"}


def _tone(status: str) -> str:
    return "good" if status in GOOD else "bad" if status in BAD else "other"


@dataclass(frozen=True, slots=True)
class Block:
    """A piece of evidence: a label and its text (shown preformatted)."""

    label: str
    text: str


@dataclass(frozen=True, slots=True)
class Timeline:
    """A certificate's life and its rotation: drawn as a small inline SVG chart."""

    label: str
    old_start: datetime
    old_end: datetime
    new_start: datetime
    new_end: datetime
    observed_at: datetime
    caption: str

    @classmethod
    def of(cls, rotation: RotationRecord) -> Timeline:
        def at(text: str) -> datetime:
            return datetime.fromisoformat(text.replace("Z", "+00:00"))

        return cls(
            label=rotation.workload,
            old_start=at(rotation.old_not_before),
            old_end=at(rotation.old_not_after),
            new_start=at(rotation.new_not_before),
            new_end=at(rotation.new_not_after),
            observed_at=at(rotation.observed_at),
            caption=rotation.line(),
        )


@dataclass(frozen=True, slots=True)
class Entry:
    """One checked thing (a test, an audit finding) with what proves its status."""

    title: str
    status: str
    description: str | None = None
    message: str | None = None
    duration: float | None = None
    facts: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (heading, lines)
    tables: tuple[ObservedTable, ...] = ()
    timelines: tuple[Timeline, ...] = ()
    evidence: tuple[Block, ...] = ()


@dataclass(frozen=True, slots=True)
class Section:
    title: str
    status: str
    entries: tuple[Entry, ...]
    subtitle: str | None = None


@dataclass(frozen=True, slots=True)
class Document:
    title: str
    status: str
    summary: str
    header: tuple[tuple[str, str], ...]  # (name, value): what was tested, with what
    sections: tuple[Section, ...]
    notes: tuple[str, ...] = ()  # warnings shown under the header
    generated: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


# --- HTML -------------------------------------------------------------------------------------

_CSS: Final = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;
 color:#1f2328;background:#f6f8fa}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 8px}
h3{font-size:15px;margin:0}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;
 color:#fff;vertical-align:middle}
/* A badge carries its own status's tone: never its section's or its page's. */
.badge.good{background:#1a7f37}.badge.bad{background:#cf222e}.badge.other{background:#6e7781}
table.header{border-collapse:collapse;margin:12px 0}
table.header th{text-align:left;padding:2px 16px 2px 0;color:#57606a;font-weight:500}
.note{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px;border-radius:6px;
 margin:6px 0}
.entry{background:#fff;border:1px solid #d0d7de;border-left:5px solid #6e7781;
 border-radius:6px;margin:10px 0;padding:10px 14px}
.entry.good{border-left-color:#1a7f37}.entry.bad{border-left-color:#cf222e}
.desc{color:#57606a;margin:4px 0}
.message{background:#ffebe9;border:1px solid #ff8182;border-radius:6px;padding:8px;
 white-space:pre-wrap;font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace;
 overflow-x:auto}
/* A skip or xfail reason is no failure: red only for an entry that failed. */
.entry.good .message,.entry.other .message{background:#f6f8fa;border-color:#d0d7de}
.facts h4{margin:8px 0 2px;font-size:13px}
.facts ul{margin:0;padding-left:20px;font:12px/1.5 ui-monospace,SFMono-Regular,Menlo,monospace}
table.matrix{border-collapse:collapse;margin:8px 0}
table.matrix caption{text-align:left;font-weight:600;padding:4px 0}
table.matrix th,table.matrix td{border:1px solid #d0d7de;padding:4px 10px;text-align:center}
table.matrix th{background:#f6f8fa}
td.ok{background:#dafbe1;color:#116329}
td.mismatch{background:#ffcecb;color:#82071e;font-weight:600}
td.mismatch .want{display:block;font-weight:400;font-size:11px}
.legend{font-size:12px;color:#57606a}
pre{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:8px;margin:4px 0;
 white-space:pre-wrap;font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace;
 overflow-x:auto}
.evidence h4{margin:10px 0 2px;font-size:13px}
svg text{font:11px system-ui,sans-serif}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


_WORDS: Final = {"notrun": "not run"}


def _word(status: str) -> str:
    """A status as a person reads it (the report's `notrun` is "not run")."""
    return _WORDS.get(status, status)


def _badge(status: str) -> str:
    return f'<span class="badge {_tone(status)}">{_e(_word(status))}</span>'


def _html_table(table: ObservedTable) -> str:
    head = "".join(f"<th scope='col'>{_e(c)}</th>" for c in table.columns)
    rows = []
    for name, wants, gots in zip(table.rows, table.expected, table.observed, strict=True):
        cells = []
        for want, got in zip(wants, gots, strict=True):
            if want == got:
                cells.append(f'<td class="ok" title="as expected">{_e(got)}</td>')
            else:
                cells.append(
                    f'<td class="mismatch" title="expected {_e(want)}, observed {_e(got)}">'
                    f'{_e(got)}<span class="want">expected {_e(want)}</span></td>'
                )
        rows.append(f"<tr><th scope='row'>{_e(name)}</th>{''.join(cells)}</tr>")
    verdict = "as expected" if table.ok else f"{len(table.mismatches)} cells differ"
    return (
        f'<table class="matrix {"good" if table.ok else "bad"}">'
        f"<caption>{_e(table.title)}: {_e(verdict)}</caption>"
        f"<thead><tr><th>{_e(table.corner)}</th>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _timeline_svg(timeline: Timeline) -> str:
    """Old and new certificate lifetimes as bars, Istio's half-life and the rotation seen."""
    width, left, right = 640, 10, 10
    start = timeline.old_start
    end = max(timeline.new_end, timeline.old_end)
    total = max((end - start).total_seconds(), 1e-6)

    def x(moment: datetime) -> float:
        return left + (width - left - right) * (moment - start).total_seconds() / total

    half = timeline.old_start + (timeline.old_end - timeline.old_start) / 2
    old_w = x(timeline.old_end) - x(timeline.old_start)
    new_w = x(timeline.new_end) - x(timeline.new_start)
    seen = x(timeline.observed_at)
    return (
        f'<svg class="timeline" role="img" width="{width}" height="96" '
        f'viewBox="0 0 {width} 96" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{_e(timeline.caption)}</title>"
        f'<rect x="{x(timeline.old_start):.1f}" y="8" width="{old_w:.1f}" height="18" '
        f'fill="#54aeff"/><text x="{x(timeline.old_start) + 4:.1f}" y="21" fill="#fff">'
        f"old certificate</text>"
        f'<rect x="{x(timeline.new_start):.1f}" y="34" width="{new_w:.1f}" height="18" '
        f'fill="#4ac26b"/><text x="{x(timeline.new_start) + 4:.1f}" y="47" fill="#fff">'
        f"new certificate</text>"
        f'<line x1="{x(half):.1f}" y1="4" x2="{x(half):.1f}" y2="58" stroke="#6e7781" '
        f'stroke-dasharray="3,3"/>'
        f'<line x1="{seen:.1f}" y1="4" x2="{seen:.1f}" y2="58" stroke="#cf222e" '
        f'stroke-width="2"/>'
        f'<text x="{left}" y="74">{_e(_clock(timeline.old_start))}</text>'
        f'<text x="{width - right}" y="74" text-anchor="end">{_e(_clock(end))}</text>'
        f'<text x="{min(seen + 4, width - 200):.1f}" y="90" fill="#cf222e">'
        f"rotation seen {_e(_clock(timeline.observed_at))}</text>"
        f'<text x="{x(half) + 4:.1f}" y="74" fill="#57606a">half-life</text>'
        f"</svg>"
    )


def _clock(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%H:%M:%S")


def _html_entry(entry: Entry) -> str:
    tone = _tone(entry.status)
    parts = [
        f'<section class="entry {tone}" data-status="{_e(entry.status)}">',
        f"<h3>{_badge(entry.status)} {_e(entry.title)}"
        + (f" <small>({entry.duration:.2f}s)</small>" if entry.duration is not None else "")
        + "</h3>",
    ]
    if entry.description:
        parts.append(f'<p class="desc">{_e(entry.description)}</p>')
    if entry.message:
        parts.append(f'<div class="message">{_e(entry.message)}</div>')
    parts.extend(_html_table(table) for table in entry.tables)
    for timeline in entry.timelines:
        parts.append(f"<figure>{_timeline_svg(timeline)}<figcaption class='legend'>")
        parts.append(f"{_e(timeline.caption)}</figcaption></figure>")
    if entry.facts:
        parts.append('<div class="facts">')
        for heading, lines in entry.facts:
            items = "".join(f"<li>{_e(line)}</li>" for line in lines)
            parts.append(f"<h4>{_e(heading)}</h4><ul>{items}</ul>")
        parts.append("</div>")
    if entry.evidence:
        parts.append('<div class="evidence">')
        for block in entry.evidence:
            parts.append(f"<h4>{_e(block.label)}</h4><pre>{_e(block.text)}</pre>")
        parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)


def render_html(document: Document) -> str:
    """The document as one self-contained page: no script, no external resource."""
    header = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in document.header)
    notes = "".join(f'<p class="note">{_e(note)}</p>' for note in document.notes)
    sections = []
    for section in document.sections:
        subtitle = f" <small>{_e(section.subtitle)}</small>" if section.subtitle else ""
        sections.append(
            f'<h2 class="{_tone(section.status)}">{_badge(section.status)} {_e(section.title)}'
            f"{subtitle}</h2>"
        )
        sections.extend(_html_entry(entry) for entry in section.entries)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{_e(document.title)}</title><style>{_CSS}</style></head>\n"
        f'<body><main class="{_tone(document.status)}">'
        f"<h1>{_e(document.title)} {_badge(document.status)}</h1>"
        f'<p class="summary">{_e(document.summary)}</p>'
        f'<table class="header">{header}</table>{notes}\n'
        + "\n".join(sections)
        + f'\n<p class="legend">Generated {_e(document.generated)}.</p></main></body></html>\n'
    )


# --- Markdown ---------------------------------------------------------------------------------


def _md(text: object) -> str:
    """Text for a Markdown table cell or inline position."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(table: ObservedTable) -> list[str]:
    verdict = "as expected" if table.ok else f"{len(table.mismatches)} cells differ"
    lines = [
        f"**{_md(table.title)}**: {verdict}",
        "",
        "| " + " | ".join([_md(table.corner) or " ", *map(_md, table.columns)]) + " |",
        "|" + "---|" * (len(table.columns) + 1),
    ]
    for name, wants, gots in zip(table.rows, table.expected, table.observed, strict=True):
        cells = [
            f"{_ICONS['good']} {_md(got)}"
            if want == got
            else f"{_ICONS['bad']} **{_md(got)}** (expected {_md(want)})"
            for want, got in zip(wants, gots, strict=True)
        ]
        lines.append("| " + " | ".join([_md(name), *cells]) + " |")
    return [*lines, ""]


def _fence(text: str) -> list[str]:
    fence = "```"
    while fence in text:
        fence += "`"
    return [fence, text.rstrip("\n"), fence, ""]


def _md_entry(entry: Entry, brief: bool) -> list[str]:
    """An entry in Markdown. `brief` (the CI step summary): a passing entry is one line, or its
    heading and tables when it asserted tables; a failing one is shown in full."""
    icon = _ICONS[_tone(entry.status)]
    duration = f" ({entry.duration:.2f}s)" if entry.duration is not None else ""
    head = f"{icon} **{_md(entry.title)}**: {_word(entry.status)}{duration}"
    full = not brief or _tone(entry.status) == "bad" or any(not t.ok for t in entry.tables)
    if not full and not entry.tables:
        return [f"- {head}" + (f": {_md(entry.description)}" if entry.description else "")]
    lines = [f"#### {head}", ""]
    if not full:
        for table in entry.tables:
            lines += _md_table(table)
        return lines
    if entry.description:
        lines += [f"> {line}".rstrip() for line in entry.description.splitlines()] + [""]
    if entry.message:
        lines += _fence(entry.message)
    for table in entry.tables:
        lines += _md_table(table)
    for timeline in entry.timelines:
        lines += [f"Rotation: {_md(timeline.caption)}", ""]
    for heading, items in entry.facts:
        lines += [f"*{_md(heading)}*", ""] + [f"- `{_md(item)}`" for item in items] + [""]
    for block in entry.evidence:
        lines += [f"*{_md(block.label)}*", "", *_fence(block.text)]
    return lines


def render_markdown(document: Document, *, brief: bool = False) -> str:
    """The document as Markdown; `brief` keeps passing entries to one line each."""
    lines = [
        f"# {_md(document.title)}: {_ICONS[_tone(document.status)]} {_word(document.status)}",
        "",
        document.summary,
        "",
        "| | |",
        "|---|---|",
        *(f"| {_md(k)} | {_md(v)} |" for k, v in document.header),
        "",
    ]
    for note in document.notes:  # a blank line apart: one quote each, not one paragraph
        lines += [f"> **Warning:** {_md(note)}", ""]
    for section in document.sections:
        subtitle = f" ({_md(section.subtitle)})" if section.subtitle else ""
        lines += [f"## {_ICONS[_tone(section.status)]} {_md(section.title)}{subtitle}", ""]
        brief_lines: list[str] = []
        for entry in section.entries:
            rendered = _md_entry(entry, brief)
            if len(rendered) == 1:
                brief_lines += rendered
                continue
            if brief_lines:
                lines += [*brief_lines, ""]
                brief_lines = []
            lines += rendered
        if brief_lines:
            lines += [*brief_lines, ""]
    return "\n".join(lines).rstrip("\n") + "\n"


# --- A conformance report as a document -----------------------------------------------------


def _facts_of(test: TestResult) -> tuple[tuple[str, tuple[str, ...]], ...]:
    seen = test.observations
    if seen is None:
        return ()
    facts = [
        ("Workloads touched", (", ".join(seen.workloads),) if seen.workloads else ()),
        ("Policies applied", tuple(seen.policies)),
        ("Requests", tuple(r.line() for r in seen.requests)),
        ("Captured flows", tuple(seen.flows)),
        ("Identities seen", tuple(seen.identities)),
    ]
    return tuple((heading, lines) for heading, lines in facts if lines)


def document_of(
    report: ConformanceReport,
    *,
    settings: Sequence[str] = (),
    evidence: Mapping[str, Sequence[Block]] | None = None,
) -> Document:
    """A conformance report as a Document: the run header (mesh, version, settings), a section
    per suite, an entry per test with its observations; `evidence` (by node id) adds the
    failure evidence the YAML does not keep (the logs of the test's window, ...)."""
    evidence = evidence or {}
    mesh = report.mesh
    header: list[tuple[str, str]] = []
    if mesh.used:
        revision = f", revision {mesh.revision}" if mesh.revision else ""
        header += [
            ("Mesh", mesh.name or "unknown"),
            ("Version", mesh.version or "unknown"),
            ("Backend", f"{mesh.backend}{revision}"),
            ("Trust domain", mesh.trust_domain or "unknown"),
        ]
        if mesh.workloads:  # each workload's data plane and the ports it serves on it
            header.append(("Workloads", "; ".join(w.describe() for w in mesh.workloads)))
    else:
        header.append(("Mesh", mesh.describe()))
    header += [
        ("Result", f"{report.result}: {report.summary}"),
        ("Date", report.date),
        ("Duration", f"{report.duration:.1f}s"),
    ]
    if settings:  # one row: the lines the run printed at start, in that order
        header.append(("Settings", "; ".join(settings)))
    header.append(
        (
            "Tool",
            f"meshconform {report.plugin_version}, pytest {report.pytest_version},"
            f" Python {report.python_version}",
        )
    )
    if report.features_tested:
        header.append(("Features tested", ", ".join(report.features_tested)))
    if report.features_untested:
        header.append(("Features not tested", ", ".join(report.features_untested)))
    notes = []
    if report.faults:
        notes.append(
            f"test-only faults were injected ({', '.join(report.faults)}): this run proves"
            " nothing about a mesh"
        )
    notes += [
        f"{error.nodeid} did not collect: its tests are missing"
        for error in report.collection_errors
    ]
    sections = []
    if report.comparison is not None:
        comparison = report.comparison
        header.append(
            (
                "Baseline",
                f"{comparison.baseline}: {comparison.mesh}, {comparison.date},"
                f" {comparison.summary}",
            )
        )
        header.append(("Comparison", comparison_verdict(comparison)))
        if comparison.failed:
            notes.append("regressions against the baseline: the run fails")
        if comparison.faults:
            notes.append(f"the baseline run used test-only faults ({', '.join(comparison.faults)})")
        sections.append(_comparison_section(report, comparison))
    for suite in report.suites:
        entries = []
        for test in suite.tests:
            seen = test.observations
            blocks = list(evidence.get(test.nodeid, ()))
            if test.evidence is not None:
                reason = test.evidence.not_kept_reason
                listing = "\n".join(
                    [f"{label}: {path}" for label, path in test.evidence.files]
                    + [f"{label}: not kept: {reason}" for label in test.evidence.not_kept]
                )
                if listing:
                    blocks.append(Block("Evidence files", listing))
            facts = _facts_of(test)
            if test.infrastructure:
                facts = (
                    (
                        "Infrastructure error",
                        ("the mesh's own process broke (a sidecar died): no evidence either way",),
                    ),
                    *facts,
                )
            entries.append(
                Entry(
                    title=test.name,
                    status=test.outcome,
                    description=test.description,
                    message=test.message if test.outcome != "passed" else None,
                    duration=test.duration,
                    facts=facts,
                    tables=tuple(seen.tables) if seen else (),
                    timelines=tuple(Timeline.of(r) for r in seen.rotations) if seen else (),
                    evidence=tuple(blocks),
                )
            )
        sections.append(
            Section(
                title=suite.name,
                status=suite.result,
                entries=tuple(entries),
                subtitle=f"{suite.path}: {suite.statistics.passed}/{suite.statistics.total} passed",
            )
        )
    return Document(
        title="meshconform conformance report",
        status=report.result,
        summary=report.summary,
        header=tuple(header),
        sections=tuple(sections),
        notes=tuple(notes),
        generated=report.date,
    )


# (category title's status) for each category of a comparison, in `comparison_sections` order
_CHANGE_STATUS: Final = (
    "regression",
    "infrastructure",
    "fixed",
    "skipped",
    "changed",
    "new",
    "removed",
)


def _comparison_section(report: ConformanceReport, comparison: BaselineComparison) -> Section:
    """The comparison with --mesh-baseline: one entry per category of changes, each change
    as the terminal prints it (this run's message and evidence directory)."""
    tests = {test.id: test for test in report.tests}
    entries = []
    for (title, changes), status in zip(
        comparison_sections(comparison), _CHANGE_STATUS, strict=True
    ):
        if changes:
            lines = tuple(
                change_line(change, tests.get(change.id) if change.now else None)
                for change in changes
            )
            entries.append(Entry(title=title, status=status, facts=((_tests(changes), lines),)))
    for title, status, errors in (
        (
            "New collection errors (their tests are missing)",
            "regression",
            comparison.new_collection_errors,
        ),
        ("Fixed collection errors", "fixed", comparison.fixed_collection_errors),
    ):
        if errors:
            lines = tuple(collection_error_line(error) for error in errors)
            files = f"{len(errors)} file{'' if len(errors) == 1 else 's'}"
            entries.append(Entry(title=title, status=status, facts=((files, lines),)))
    if not entries:
        entries.append(Entry(title="No test changed its outcome", status="ok"))
    return Section(
        title="Comparison with the baseline",
        status=comparison.result,
        entries=tuple(entries),
        subtitle=comparison_verdict(comparison),
    )


def _tests(changes: Sequence[object]) -> str:
    return f"{len(changes)} test{'' if len(changes) == 1 else 's'}"
