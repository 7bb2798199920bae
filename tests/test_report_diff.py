"""report.diff: two conformance reports compared test by test (regressions, fixes, newly
skipped, new and removed tests, collection errors), on the hand-written reference report of
test_report.py; and the comparison a run with --mesh-baseline keeps in its report (written by
hand too: its schema, the strict loader's checks, `meshconform diff` reading it)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml
from test_report import (
    compared_document,
    reference_document,
    set_field,
    validate,
    with_outcomes,
)

from pytest_meshconform.report import (
    CollectionError,
    ReportError,
    diff_reports,
    format_diff,
    parse_report,
    report_to_dict,
)
from pytest_meshconform.report.diff import comparison_lines, comparison_of
from pytest_meshconform.report.model import ChangeRecord


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


# --- The comparison kept in the report (--mesh-baseline) ----------------------------------------


def test_a_comparison_is_schema_valid_round_trips_and_reads_back() -> None:
    document = compared_document()
    validate(document)
    report = parse_report(document)
    assert report_to_dict(report) == document  # the writer's own order and form
    comparison = report.comparison
    assert comparison is not None and comparison.failed and comparison.result == "fail"
    assert comparison.regressions == (ChangeRecord("strict::test_c", "passed", "failed"),)
    assert comparison.removed_tests == (
        ChangeRecord("strict::test_gone", "error", None, was_phase="setup"),
    )
    # The same lines as the terminal's, this run's message and evidence with them.
    assert comparison_lines(comparison, report, "this run", evidence_base=Path("out"))[3:] == [
        "Regressions (passed before, failing now): 1",
        "  strict::test_c: passed -> failed: AssertionError: plaintext was not refused"
        " (evidence: out/artifacts/conformance_test_strict.py__test_c)",
        "Removed tests: 1",
        "  strict::test_gone: was error in setup",
        "Fixed collection errors: 1",
        "  conformance/test_old.py: ImportError: no module named old",
        "FAIL: 1 regression, 0 fixes, 0 newly skipped, 0 other changes, 0 new tests,"
        " 1 removed test",
    ]


def test_the_comparison_is_what_diff_reports_found() -> None:
    old = parse_report(reference_document())
    new = with_outcomes(old, test_a="failed", test_c="passed")
    comparison = comparison_of(diff_reports(old, new), "old.yaml")
    assert comparison.baseline == "old.yaml" and comparison.date == old.date
    assert comparison.mesh == "istio 1.24.2 (local)"
    assert comparison.summary == "2 passed, 1 failed, 1 skipped"
    assert comparison.regressions == (ChangeRecord("strict::test_a", "passed", "failed"),)
    assert comparison.fixes == (ChangeRecord("strict::test_c", "failed", "passed"),)
    report = dataclasses.replace(new, comparison=comparison)
    assert parse_report(report_to_dict(report)) == report


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "comparison.regressions.0.now",
            "xpassed",
            "comparison.regressions[0]: a change in regressions has passed or xpassed before,"
            " broken now",
        ),
        (
            "comparison.regressions.0.id",
            "strict::test_a",
            "comparison.regressions[0].now: 'failed' does not agree with the tests"
            " ('strict::test_a' is passed here)",
        ),
        (
            "comparison.removedTests.0.id",
            "strict::test_b",
            "comparison.removedTests[0].id: 'strict::test_b' is a test of this report",
        ),
        (
            "comparison.result",
            "ok",
            "comparison.result: 'ok' does not agree with the changes (expected 'fail')",
        ),
        ("comparison.fixes", None, "comparison.fixes: expected a list"),
        ("comparison.baseline.mesh", "", "comparison.baseline.mesh: expected a non-empty string"),
        ("comparison.verdict", "ok", "comparison.verdict: unknown field"),
        ("run.exitStatus", 0, "comparison.result: a failed comparison fails the run"),
    ],
)
def test_the_loader_checks_a_comparison_against_the_tests(
    path: str, value: object, message: str
) -> None:
    with pytest.raises(ReportError, match=f"^{re.escape(message)}"):
        parse_report(set_field(compared_document(), path, value))


def test_meshconform_diff_reads_reports_with_and_without_a_comparison(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_meshconform.cli import main

    compared, plain = tmp_path / "compared.yaml", tmp_path / "plain.json"
    compared.write_text(yaml.safe_dump(compared_document(), sort_keys=False))
    plain.write_text(json.dumps(reference_document()))
    for old, new in ((plain, compared), (compared, plain), (compared, compared)):
        assert main(["diff", str(old), str(new)]) == 0
        assert capsys.readouterr().out.splitlines()[-1].startswith("OK: 0 regressions")
