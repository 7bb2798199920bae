"""Comparing two reports (``meshconform diff OLD NEW``, ``--mesh-baseline``), matched by test id.

Pure: ``diff_reports`` sorts each change into regressions, fixes, newly skipped, infrastructure
errors and the rest; ``comparison_of`` is what a report keeps of it (``--mesh-baseline``), and
``format_diff`` / ``comparison_lines`` turn either into terminal lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_meshconform.report.model import (
    BROKEN,
    PASSING,
    BaselineComparison,
    ChangeRecord,
    CollectionError,
    ConformanceReport,
    TestResult,
)

# --- Comparing two reports ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TestChange:
    """One test id in two reports; ``old`` or ``new`` is None when the test is only in one."""

    __test__ = False

    id: str
    old: TestResult | None
    new: TestResult | None


@dataclass(frozen=True, slots=True)
class ReportDiff:
    """What changed from one run to the next, matched by test id."""

    old: ConformanceReport
    new: ConformanceReport
    regressions: tuple[TestChange, ...]  # passed (or xpassed) before; failed, error, xfailed now
    fixes: tuple[TestChange, ...]  # failed, error or xfailed before; passed (or xpassed) now
    newly_skipped: tuple[TestChange, ...]  # anything but skipped before, skipped now
    other_changes: tuple[TestChange, ...]  # any other change of outcome
    new_tests: tuple[TestChange, ...]
    removed_tests: tuple[TestChange, ...]
    new_collection_errors: tuple[CollectionError, ...]
    fixed_collection_errors: tuple[CollectionError, ...]
    # An infrastructure error (a sidecar died) in either run where the outcome changed: no
    # evidence either way about the mesh, so never a regression nor a fix.
    infrastructure: tuple[TestChange, ...] = ()

    @property
    def failed(self) -> bool:
        """A regression, or a file that no longer collects (its tests vanished)."""
        return bool(self.regressions or self.new_collection_errors)


def diff_reports(old: ConformanceReport, new: ConformanceReport) -> ReportDiff:
    """Compare two reports test by test (by id).

    A regression is a test that passed (or xpassed) before and now fails, errors or xfails (an
    expected failure still means the behaviour it checks no longer holds). A file that no longer
    collects also fails the comparison: its tests vanished.
    """
    old_tests = {test.id: test for test in old.tests}
    new_tests = {test.id: test for test in new.tests}
    regressions: list[TestChange] = []
    fixes: list[TestChange] = []
    newly_skipped: list[TestChange] = []
    other: list[TestChange] = []
    infrastructure: list[TestChange] = []
    for test_id, now in new_tests.items():
        before = old_tests.get(test_id)
        if before is None or (before.outcome, before.infrastructure) == (
            now.outcome,
            now.infrastructure,
        ):
            continue
        change = TestChange(test_id, before, now)
        if before.infrastructure or now.infrastructure:
            infrastructure.append(change)
        elif before.outcome in PASSING and now.outcome in BROKEN:
            regressions.append(change)
        elif before.outcome in BROKEN and now.outcome in PASSING:
            fixes.append(change)
        elif now.outcome == "skipped":
            newly_skipped.append(change)
        else:
            other.append(change)
    old_errors = {error.nodeid for error in old.collection_errors}
    new_errors = {error.nodeid for error in new.collection_errors}
    return ReportDiff(
        old=old,
        new=new,
        regressions=tuple(regressions),
        fixes=tuple(fixes),
        newly_skipped=tuple(newly_skipped),
        other_changes=tuple(other),
        new_tests=tuple(TestChange(i, None, t) for i, t in new_tests.items() if i not in old_tests),
        removed_tests=tuple(
            TestChange(i, t, None) for i, t in old_tests.items() if i not in new_tests
        ),
        new_collection_errors=tuple(e for e in new.collection_errors if e.nodeid not in old_errors),
        fixed_collection_errors=tuple(
            e for e in old.collection_errors if e.nodeid not in new_errors
        ),
        infrastructure=tuple(infrastructure),
    )


def _record(change: TestChange) -> ChangeRecord:
    before = change.old
    return ChangeRecord(
        id=change.id,
        was=None if before is None else before.outcome,
        now=None if change.new is None else change.new.outcome,
        was_phase=None if before is None else before.phase,
        was_infrastructure=before is not None and before.infrastructure,
    )


def comparison_of(diff: ReportDiff, baseline: str) -> BaselineComparison:
    """What a report keeps of a diff against its baseline (``baseline``: its path as given)."""
    old = diff.old

    def records(changes: Sequence[TestChange]) -> tuple[ChangeRecord, ...]:
        return tuple(_record(change) for change in changes)

    return BaselineComparison(
        baseline=baseline,
        date=old.date,
        mesh=old.mesh.describe(),
        summary=old.summary,
        faults=old.faults,
        regressions=records(diff.regressions),
        infrastructure=records(diff.infrastructure),
        fixes=records(diff.fixes),
        newly_skipped=records(diff.newly_skipped),
        other_changes=records(diff.other_changes),
        new_tests=records(diff.new_tests),
        removed_tests=records(diff.removed_tests),
        new_collection_errors=diff.new_collection_errors,
        fixed_collection_errors=diff.fixed_collection_errors,
    )


def _first_line(text: str | None) -> str:
    if not text:
        return ""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= 160 else line[:157] + "..."


def collection_error_line(error: CollectionError) -> str:
    """A file that did not collect, for a person: ``nodeid: first line of the error``."""
    return f"{error.nodeid}: {_first_line(error.message)}"


def _outcome_text(outcome: str, phase: str | None, infrastructure: bool) -> str:
    text = f"{outcome} in {phase}" if phase else outcome
    return f"infrastructure {text}" if infrastructure else text


def change_line(
    change: ChangeRecord, now: TestResult | None, evidence_base: Path | None = None
) -> str:
    """One change for a person: ``id: before -> now: reason (evidence: where)``.

    ``now`` is the test in this run (its message and evidence); evidence paths relative to the
    report are shown under ``evidence_base`` (the report's directory), so they can be opened.
    """
    was = None
    if change.was is not None:
        was = _outcome_text(change.was, change.was_phase, change.was_infrastructure)
    shown = None
    if now is not None:
        shown = _outcome_text(now.outcome, now.phase, now.infrastructure)
    elif change.now is not None:
        shown = change.now
    if was is not None and shown is not None:
        text = f"{change.id}: {was} -> {shown}"
    elif shown is not None:
        text = f"{change.id}: {shown}"
    else:
        text = f"{change.id}: was {was}"
    if now is not None and now.outcome != "passed" and (reason := _first_line(now.message)):
        text += f": {reason}"
    evidence = None if now is None else now.evidence
    if evidence is not None and evidence.directory is not None:
        directory = Path(evidence.directory)
        if evidence_base is not None and not directory.is_absolute():
            directory = evidence_base / directory
        text += f" (evidence: {directory})"
    elif evidence is not None and evidence.not_kept:  # never a path that no longer exists
        text += f" (evidence not kept: {evidence.not_kept_reason})"
    return text


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else (plural or word + 's')}"


def comparison_sections(
    comparison: BaselineComparison,
) -> list[tuple[str, tuple[ChangeRecord, ...]]]:
    """The categories of changes, titled, in the order a person reads them (empty ones too)."""
    return [
        ("Regressions (passed before, failing now)", comparison.regressions),
        (
            "Infrastructure errors (the mesh's own process broke: no evidence either way)",
            comparison.infrastructure,
        ),
        ("Fixes (failing before, passing now)", comparison.fixes),
        ("Newly skipped", comparison.newly_skipped),
        ("Other changes", comparison.other_changes),
        ("New tests", comparison.new_tests),
        ("Removed tests", comparison.removed_tests),
    ]


def comparison_verdict(comparison: BaselineComparison) -> str:
    """``FAIL: 1 regression, 1 fix, ...``: the comparison's last line."""
    counts = [
        _plural(len(comparison.regressions), "regression"),
        _plural(len(comparison.fixes), "fix", "fixes"),
        f"{len(comparison.newly_skipped)} newly skipped",
        _plural(len(comparison.other_changes), "other change"),
        _plural(len(comparison.new_tests), "new test"),
        _plural(len(comparison.removed_tests), "removed test"),
    ]
    if comparison.new_collection_errors:
        counts.append(_plural(len(comparison.new_collection_errors), "new collection error"))
    if comparison.infrastructure:
        counts.append(_plural(len(comparison.infrastructure), "infrastructure error"))
    return f"{comparison.result.upper()}: {', '.join(counts)}"


def comparison_lines(
    comparison: BaselineComparison,
    new: ConformanceReport,
    new_label: str = "NEW",
    evidence_base: Path | None = None,
) -> list[str]:
    """A comparison as terminal lines: what was compared, then each non-empty category."""
    lines = [
        f"old: {comparison.baseline}: {comparison.mesh}, {comparison.date}, {comparison.summary}",
        f"new: {new_label}: {new.mesh.describe()}, {new.date}, {new.summary}",
    ]
    for label, faults in (("old", comparison.faults), ("new", new.faults)):
        if faults:
            lines.append(f"warning: the {label} run used test-only faults ({', '.join(faults)})")
    tests = {test.id: test for test in new.tests}
    for title, changes in comparison_sections(comparison):
        if changes:
            lines.append(f"{title}: {len(changes)}")
            for change in changes:
                now = tests.get(change.id) if change.now is not None else None
                lines.append(f"  {change_line(change, now, evidence_base)}")
    for title, errors in (
        ("New collection errors (their tests are missing)", comparison.new_collection_errors),
        ("Fixed collection errors", comparison.fixed_collection_errors),
    ):
        if errors:
            lines.append(f"{title}: {len(errors)}")
            lines.extend(f"  {collection_error_line(error)}" for error in errors)
    lines.append(comparison_verdict(comparison))
    return lines


def format_diff(
    diff: ReportDiff,
    old_label: str = "OLD",
    new_label: str = "NEW",
    evidence_base: Path | None = None,
) -> list[str]:
    """The diff as terminal lines: what was compared, then each non-empty category.

    ``evidence_base``: the new report's directory, to which its evidence paths are relative.
    """
    return comparison_lines(comparison_of(diff, old_label), diff.new, new_label, evidence_base)
