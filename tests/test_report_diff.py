"""report.diff: two conformance reports compared test by test (regressions, fixes, newly
skipped, new and removed tests, collection errors), on the hand-written reference report of
test_report.py."""

from __future__ import annotations

import dataclasses

from test_report import reference_document, with_outcomes

from pytest_meshconform.report import (
    CollectionError,
    diff_reports,
    format_diff,
    parse_report,
)


def test_diff_classifies_every_change() -> None:
    old = parse_report(reference_document())
    new = with_outcomes(
        old, test_a="failed", test_b="xfailed", test_c="passed", test_rotates="notrun"
    )
    diff = diff_reports(old, new)
    assert [c.id for c in diff.regressions] == ["strict::test_a", "strict::test_b"]
    assert [c.id for c in diff.fixes] == ["strict::test_c"]
    assert [c.id for c in diff.other_changes] == ["rotation::test_rotates"]
    assert diff.newly_skipped == diff.new_tests == diff.removed_tests == ()
    assert diff.failed


def test_diff_without_regression_does_not_fail() -> None:
    old = parse_report(reference_document())
    new = with_outcomes(old, test_a="skipped", test_c="error", test_rotates="passed")
    diff = diff_reports(old, new)
    assert diff.regressions == ()
    assert [c.id for c in diff.newly_skipped] == ["strict::test_a"]
    # failed -> error is still failing, skipped -> passed is not a fix of a failure
    assert [c.id for c in diff.other_changes] == ["strict::test_c", "rotation::test_rotates"]
    assert not diff.failed


def test_diff_lists_new_and_removed_tests_and_collection_errors() -> None:
    old = parse_report(reference_document())
    strict = old.suites[0]
    renamed = dataclasses.replace(
        strict.tests[0], id="strict::test_a2", name="test_a2", nodeid="x.py::test_a2"
    )
    new = dataclasses.replace(
        old,
        suites=(dataclasses.replace(strict, tests=(renamed, *strict.tests[1:])),),
        collection_errors=(
            CollectionError("conformance/test_rotation.py", "ImportError: no module named x"),
        ),
    )
    diff = diff_reports(old, new)
    assert [c.id for c in diff.new_tests] == ["strict::test_a2"]
    assert [c.id for c in diff.removed_tests] == ["strict::test_a", "rotation::test_rotates"]
    assert [e.nodeid for e in diff.new_collection_errors] == ["conformance/test_rotation.py"]
    assert diff.regressions == ()
    assert diff.failed  # the rotation suite vanished: that is not a clean upgrade
    assert format_diff(diff, "a.yaml", "b.yaml")[2:] == [
        "New tests: 1",
        "  strict::test_a2: passed",
        "Removed tests: 2",
        "  strict::test_a: was passed",
        "  rotation::test_rotates: was skipped",
        "New collection errors (their tests are missing): 1",
        "  conformance/test_rotation.py: ImportError: no module named x",
        "FAIL: 0 regressions, 0 fixes, 0 newly skipped, 0 other changes, 1 new test,"
        " 2 removed tests, 1 new collection error",
    ]


def test_format_diff_names_both_runs_and_warns_about_faults() -> None:
    old = parse_report(reference_document())
    new = dataclasses.replace(
        with_outcomes(old, test_a="failed"),
        faults=("strict-as-permissive",),
        date="2025-06-02T09:30:00Z",
    )
    assert format_diff(diff_reports(old, new), "old.yaml", "new.json") == [
        "old: old.yaml: istio 1.24.2 (local), 2025-06-01T10:00:00Z, 2 passed, 1 failed, 1 skipped",
        "new: new.json: istio 1.24.2 (local), 2025-06-02T09:30:00Z, 1 passed, 2 failed, 1 skipped",
        "warning: the new run used test-only faults (strict-as-permissive)",
        "Regressions (passed before, failing now): 1",
        "  strict::test_a: passed -> failed",
        "FAIL: 1 regression, 0 fixes, 0 newly skipped, 0 other changes, 0 new tests,"
        " 0 removed tests",
    ]
