"""Comparing two reports (``meshconform diff OLD NEW``, ``--mesh-baseline``), matched by test id.

Pure: ``diff_reports`` sorts each change into regressions, fixes, newly skipped, infrastructure
errors and the rest; ``format_diff`` turns the result into terminal lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from pytest_meshconform.report.model import (
    BROKEN,
    PASSING,
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


def _first_line(text: str | None) -> str:
    if not text:
        return ""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= 160 else line[:157] + "..."


def _outcome_text(test: TestResult) -> str:
    text = f"{test.outcome} in {test.phase}" if test.phase else test.outcome
    return f"infrastructure {text}" if test.infrastructure else text


def _change_line(change: TestChange) -> str:
    before, now = change.old, change.new
    if before is not None and now is not None:
        text = f"{change.id}: {_outcome_text(before)} -> {_outcome_text(now)}"
    elif now is not None:
        text = f"{change.id}: {_outcome_text(now)}"
    else:
        text = f"{change.id}: was {_outcome_text(cast(TestResult, before))}"
    if now is not None and now.outcome != "passed" and (reason := _first_line(now.message)):
        text += f": {reason}"
    if now is not None and now.evidence is not None and now.evidence.directory is not None:
        text += f" (evidence: {now.evidence.directory})"
    return f"  {text}"


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else (plural or word + 's')}"


def format_diff(diff: ReportDiff, old_label: str = "OLD", new_label: str = "NEW") -> list[str]:
    """The diff as terminal lines: what was compared, then each non-empty category."""
    lines = [
        f"old: {old_label}: {diff.old.mesh.describe()}, {diff.old.date}, {diff.old.summary}",
        f"new: {new_label}: {diff.new.mesh.describe()}, {diff.new.date}, {diff.new.summary}",
    ]
    for label, report in (("old", diff.old), ("new", diff.new)):
        if report.faults:
            lines.append(
                f"warning: the {label} run used test-only faults ({', '.join(report.faults)})"
            )
    sections: list[tuple[str, Sequence[TestChange]]] = [
        ("Regressions (passed before, failing now)", diff.regressions),
        (
            "Infrastructure errors (the mesh's own process broke: no evidence either way)",
            diff.infrastructure,
        ),
        ("Fixes (failing before, passing now)", diff.fixes),
        ("Newly skipped", diff.newly_skipped),
        ("Other changes", diff.other_changes),
        ("New tests", diff.new_tests),
        ("Removed tests", diff.removed_tests),
    ]
    for title, changes in sections:
        if changes:
            lines.append(f"{title}: {len(changes)}")
            lines.extend(_change_line(change) for change in changes)
    for title, errors in (
        ("New collection errors (their tests are missing)", diff.new_collection_errors),
        ("Fixed collection errors", diff.fixed_collection_errors),
    ):
        if errors:
            lines.append(f"{title}: {len(errors)}")
            lines.extend(f"  {e.nodeid}: {_first_line(e.message)}" for e in errors)
    counts = [
        _plural(len(diff.regressions), "regression"),
        _plural(len(diff.fixes), "fix", "fixes"),
        f"{len(diff.newly_skipped)} newly skipped",
        _plural(len(diff.other_changes), "other change"),
        _plural(len(diff.new_tests), "new test"),
        _plural(len(diff.removed_tests), "removed test"),
    ]
    if diff.new_collection_errors:
        counts.append(_plural(len(diff.new_collection_errors), "new collection error"))
    if diff.infrastructure:
        counts.append(_plural(len(diff.infrastructure), "infrastructure error"))
    verdict = "FAIL" if diff.failed else "INFRASTRUCTURE" if diff.infrastructure else "OK"
    lines.append(f"{verdict}: {', '.join(counts)}")
    return lines
