"""Conformance reports: the document, its schema, the strict loader, the diff, and the plugin.

The reference document below is written by hand (its statistics, results and feature lists
counted by hand), so the loader and the schema are checked against a report that the code
under test did not produce. The plugin is run with pytester against small test files and a
stand-in ``mesh`` fixture (a session fixture of the same name in a conftest), so no real mesh
is started here; tests/test_cli.py diffs two reports of real local-mesh runs.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings, strategies as st

from pytest_meshconform.report import (
    ConformanceReport,
    ReportError,
    load_report,
    load_schema,
    parse_report,
    report_to_dict,
)

PLUGIN_VERSION = importlib.metadata.version("pytest-meshconform")

REFERENCE_YAML = """\
apiVersion: meshconform/v1alpha1
kind: ConformanceReport
date: '2025-06-01T10:00:00Z'
mesh:
  used: true
  backend: local
  name: istio
  version: 1.24.2
  trustDomain: cluster.local
meshconform:
  version: 0.1.0
  pytest: 8.3.4
  python: 3.11.9
run:
  duration: 17.5
  exitStatus: 1
result: failure
summary: 2 passed, 1 failed, 1 skipped
statistics: {total: 4, passed: 2, failed: 1, errors: 0, skipped: 1, xfailed: 0, xpassed: 0,
  notRun: 0}
features:
  tested: [capture, mtls]
  untested: [rotation]
failedTests: [strict::test_c]
skippedTests: [rotation::test_rotates]
collectionErrors: []
suites:
- name: strict
  path: conformance/test_strict.py
  result: failure
  statistics: {total: 3, passed: 2, failed: 1, errors: 0, skipped: 0, xfailed: 0, xpassed: 0,
    notRun: 0}
  features: [capture, mtls]
  tests:
  - id: strict::test_a
    name: test_a
    nodeid: conformance/test_strict.py::test_a
    outcome: passed
    duration: 1.25
    features: [mtls]
  - id: strict::test_b
    name: test_b
    nodeid: conformance/test_strict.py::test_b
    outcome: passed
    duration: 0.5
    features: [capture, mtls]
  - id: strict::test_c
    name: test_c
    nodeid: conformance/test_strict.py::test_c
    outcome: failed
    duration: 2.0
    message: 'AssertionError: plaintext was not refused'
    features: [mtls]
    evidence:
      directory: artifacts/conformance_test_strict.py__test_c
      files:
        pcap httpbin.foo: artifacts/conformance_test_strict.py__test_c/pcap_httpbin.foo.pcap
- name: rotation
  path: conformance/test_rotation.py
  result: partial
  statistics: {total: 1, passed: 0, failed: 0, errors: 0, skipped: 1, xfailed: 0, xpassed: 0,
    notRun: 0}
  features: [rotation]
  tests:
  - id: rotation::test_rotates
    name: test_rotates
    nodeid: conformance/test_rotation.py::test_rotates
    outcome: skipped
    duration: 0.001
    message: 'the mesh lacks feature(s): rotation'
    features: [rotation]
"""


_REFERENCE: dict[str, Any] = yaml.safe_load(REFERENCE_YAML)


def reference_document() -> dict[str, Any]:
    """A fresh copy of the reference document, for a test to change."""
    return copy.deepcopy(_REFERENCE)


# The reference run made against a baseline (--mesh-baseline) in which test_c passed and a
# test since removed errored in setup: the comparison as the report keeps it, by hand.
COMPARISON_YAML = """\
baseline:
  report: out/baseline.yaml
  date: '2025-05-01T08:00:00Z'
  mesh: istio 1.23.4 (local)
  summary: 3 passed, 1 skipped, 1 error
  faults: [strict-as-permissive]
result: fail
regressions:
- {id: strict::test_c, was: passed, now: failed}
infrastructure: []
fixes: []
newlySkipped: []
otherChanges: []
newTests: []
removedTests:
- {id: strict::test_gone, was: error, wasPhase: setup}
newCollectionErrors: []
fixedCollectionErrors:
- {nodeid: conformance/test_old.py, message: 'ImportError: no module named old'}
"""


def compared_document() -> dict[str, Any]:
    """The reference document with a comparison against its baseline, placed as the writer
    places it (before the suites)."""
    document = reference_document()
    suites = document.pop("suites")
    document["comparison"] = yaml.safe_load(COMPARISON_YAML)
    document["suites"] = suites
    document["summary"] += "; the run failed: regressions against the baseline"
    return document


_VALIDATOR = jsonschema.Draft202012Validator(load_schema())


def validate(document: object) -> None:
    _VALIDATOR.validate(document)


def with_outcomes(report: ConformanceReport, **outcomes: str) -> ConformanceReport:
    """The report with some tests' outcomes changed (key: test name, value: outcome)."""
    suites = tuple(
        dataclasses.replace(
            suite,
            tests=tuple(
                dataclasses.replace(t, outcome=outcomes[t.name], message=None, evidence=None)
                if t.name in outcomes
                else t
                for t in suite.tests
            ),
        )
        for suite in report.suites
    )
    return dataclasses.replace(report, suites=suites)


# --- The document and its schema ------------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["apiVersion"] == {"const": "meshconform/v1alpha1"}


def test_reference_document_is_schema_valid_and_loads() -> None:
    document = reference_document()
    validate(document)
    report = parse_report(document)
    assert report.mesh.describe() == "istio 1.24.2 (local)"
    assert report.date == "2025-06-01T10:00:00Z"
    assert [suite.name for suite in report.suites] == ["strict", "rotation"]
    assert [t.id for t in report.tests] == [
        "strict::test_a",
        "strict::test_b",
        "strict::test_c",
        "rotation::test_rotates",
    ]
    failed = report.tests[2]
    assert failed.outcome == "failed"
    assert failed.message == "AssertionError: plaintext was not refused"
    assert failed.evidence is not None
    assert failed.evidence.directory == "artifacts/conformance_test_strict.py__test_c"
    assert failed.evidence.files == (
        ("pcap httpbin.foo", "artifacts/conformance_test_strict.py__test_c/pcap_httpbin.foo.pcap"),
    )
    assert report.result == "failure"
    assert report.summary == "2 passed, 1 failed, 1 skipped"
    assert report.features_tested == ("capture", "mtls")
    assert report.features_untested == ("rotation",)


def test_reference_document_round_trips_exactly() -> None:
    document = reference_document()
    assert report_to_dict(parse_report(document)) == document


def set_field(document: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """A copy of document with the value at a dotted path (list indexes as numbers) replaced."""
    changed = copy.deepcopy(document)
    *parents, last = path.split(".")
    node: Any = changed
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is DELETE:
        del node[last]
    else:
        node[int(last) if isinstance(node, list) else last] = value
    return changed


DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "apiVersion",
            "meshconform/v1",
            "apiVersion: unsupported 'meshconform/v1'; expected 'meshconform/v1alpha1'",
        ),
        ("kind", "GatewayConformanceReport", "kind: expected 'ConformanceReport', got"),
        ("date", DELETE, "date: missing"),
        ("date", "2025-02-30T10:00:00Z", "date: not a real date: '2025-02-30T10:00:00Z'"),
        ("date", "2025-06-01 10:00:00", "date: expected UTC RFC 3339"),
        ("color", "blue", "color: unknown field"),
        ("mesh.used", "yes", "mesh.used: expected a boolean, got a string"),
        ("mesh.trustDomain", DELETE, "mesh.trustDomain: missing"),
        ("run.exitStatus", True, "run.exitStatus: expected an integer, got a boolean"),
        (
            "suites.0.tests.1.outcome",
            "pass",
            "suites[0].tests[1].outcome: invalid value 'pass'; accepted values: passed, failed,"
            " error, skipped, xfailed, xpassed, notrun",
        ),
        (
            "suites.0.tests.0.duration",
            -1,
            "suites[0].tests[0].duration: expected a finite number >= 0, got -1",
        ),
        (
            "suites.0.tests.0.phase",
            "call",
            "suites[0].tests[0].phase: only an 'error' outcome has a phase",
        ),
        (
            "suites.0.tests.1.id",
            "strict::test_a",
            "suites[0].tests[1].id: duplicate 'strict::test_a'",
        ),
        (
            "suites.0.tests.1.features",
            ["mtls", "capture"],
            "suites[0].tests[1].features: expected sorted, distinct feature names",
        ),
        (
            "statistics.passed",
            3,
            "statistics.passed: 3 does not agree with the tests (expected 2)",
        ),
        (
            "suites.1.result",
            "success",
            "suites[1].result: 'success' does not agree with the tests (expected 'partial')",
        ),
        (
            "failedTests",
            [],
            "failedTests: [] does not agree with the tests (expected ['strict::test_c'])",
        ),
        (
            "features.untested",
            [],
            "features.untested: [] does not agree with the tests (expected ['rotation'])",
        ),
        ("summary", 4, "summary: expected a string, got an integer"),
    ],
)
def test_loader_names_the_offending_field(path: str, value: object, message: str) -> None:
    with pytest.raises(ReportError) as raised:
        parse_report(set_field(reference_document(), path, value))
    assert str(raised.value).startswith(message)


def test_loader_rejects_evidence_of_a_passed_test() -> None:
    evidence = {"files": {"pcap": "x.pcap"}}
    document = set_field(reference_document(), "suites.0.tests.0.evidence", evidence)
    with pytest.raises(ReportError, match=r"^suites\[0\]\.tests\[0\]\.evidence: only a failed"):
        parse_report(document)
    with pytest.raises(jsonschema.ValidationError):
        validate(document)


def test_loader_rejects_details_of_an_unused_mesh() -> None:
    document = set_field(reference_document(), "mesh.used", False)
    with pytest.raises(ReportError, match=r"^mesh\.name: a mesh that was not used has no name"):
        parse_report(document)
    with pytest.raises(jsonschema.ValidationError):
        validate(document)


def test_the_result_agrees_with_the_exit_status() -> None:
    """A run that failed reads as failed, whatever its tests say: every test passed, yet the
    run exited 1 (every mesh test skipped, regressions against a baseline) or 2 (Ctrl-C)."""
    document = set_field(reference_document(), "suites.0.tests.2.outcome", "passed")
    del document["suites"][0]["tests"][2]["message"], document["suites"][0]["tests"][2]["evidence"]
    document.update(failedTests=[], summary="3 passed, 1 skipped")
    document["statistics"].update(passed=3, failed=0)
    document["suites"][0].update(result="success")
    document["suites"][0]["statistics"].update(passed=3, failed=0)
    document["run"]["exitStatus"] = 0
    document["result"] = "partial"
    assert parse_report(document).summary == "3 passed, 1 skipped"
    for status, ending in (
        (1, "the run failed (exit status 1) although no test failed"),
        (2, "the run was interrupted"),
        (3, "the run stopped on an internal"),
    ):
        document["run"]["exitStatus"] = status
        with pytest.raises(
            ReportError,
            match=r"^result: 'partial' does not agree with the tests and run.exitStatus"
            r" \(expected 'failure'\)$",
        ):
            parse_report(document)
        document["result"] = "failure"
        validate(document)
        report = parse_report(document)
        assert report.result == "failure"
        assert report.summary.startswith(f"3 passed, 1 skipped; {ending}")
        document["result"] = "partial"
    # why, when the plugin knows it: in the record (run.reasons) and the summary
    document["run"].update(exitStatus=1, reasons=["all 4 mesh test(s) were skipped"])
    document["result"] = "failure"
    validate(document)
    report = parse_report(document)
    assert report.reasons == ("all 4 mesh test(s) were skipped",)
    assert report.summary == (
        "3 passed, 1 skipped; the run failed: all 4 mesh test(s) were skipped"
    )
    assert report_to_dict(report)["run"]["reasons"] == ["all 4 mesh test(s) were skipped"]
    document["run"]["reasons"] = []
    with pytest.raises(ReportError, match=r"^run.reasons: omit the field instead of an empty"):
        parse_report(document)
    document["run"].update(exitStatus=0, reasons=["made up"])
    document["result"] = "partial"
    with pytest.raises(ReportError, match=r"^run.reasons: a run that exited 0 did not fail"):
        parse_report(document)


def test_a_run_that_tested_nothing_says_so() -> None:
    document = reference_document()
    document["suites"] = document["suites"][1:]
    document.update(failedTests=[], summary="1 skipped", result="partial")
    document["statistics"].update(total=1, passed=0, failed=0)
    document["features"] = {"tested": [], "untested": ["rotation"]}
    document["run"]["exitStatus"] = 0
    assert parse_report(document).summary == "1 skipped: nothing was tested"


def test_an_error_needs_its_phase() -> None:
    document = set_field(reference_document(), "suites.0.tests.2.outcome", "error")
    document["statistics"].update(failed=0, errors=1)
    document["suites"][0]["statistics"].update(failed=0, errors=1)
    document["summary"] = "2 passed, 1 error, 1 skipped"
    with pytest.raises(ReportError, match=r"^suites\[0\]\.tests\[2\]\.phase: missing$"):
        parse_report(document)
    with pytest.raises(jsonschema.ValidationError):
        validate(document)
    document["suites"][0]["tests"][2]["phase"] = "setup"
    validate(document)
    assert parse_report(document).tests[2].phase == "setup"


def _paths(node: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    found: list[tuple[str | int, ...]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((*prefix, key))
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.append((*prefix, index))
            found += _paths(value, (*prefix, index))
    return found


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 10**6)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _same_kind(value: object) -> st.SearchStrategy[object]:
    """Values of the JSON type already at a place: they get past type checks more often."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(-2, 5)
    if isinstance(value, float):
        return st.floats(allow_nan=True, allow_infinity=True)
    if isinstance(value, str):
        return st.sampled_from(["", "x", "passed", "error", "setup", "call", value]) | st.text(
            max_size=8
        )
    return _JSON_VALUES


@settings(max_examples=250, deadline=None)
@given(data=st.data())
def test_mutated_documents_load_or_raise_report_error_and_the_loader_is_stricter_than_the_schema(
    data: st.DataObject,
) -> None:
    document = data.draw(st.sampled_from([reference_document, compared_document]))()
    paths = _paths(document)
    for _ in range(data.draw(st.integers(1, 2))):
        path = data.draw(st.sampled_from(paths))
        node: Any = document
        try:
            for part in path[:-1]:
                node = node[part]
            action = data.draw(st.sampled_from(["delete", "same kind", "anything"]))
            if action == "delete" and isinstance(node, dict):
                del node[path[-1]]
            elif action == "same kind":
                node[path[-1]] = data.draw(_same_kind(node[path[-1]]))
            else:
                node[path[-1]] = data.draw(_JSON_VALUES)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    try:
        parse_report(document)
    except ReportError:
        return
    validate(document)  # whatever the loader accepts, the published schema accepts


@settings(max_examples=200, deadline=None)
@given(st.one_of(_JSON_VALUES, st.dictionaries(st.text(max_size=12), _JSON_VALUES, max_size=6)))
def test_arbitrary_data_is_not_a_report(data: object) -> None:
    with pytest.raises(ReportError):
        parse_report(data)


# --- Reading files ---------------------------------------------------------------------------


def test_load_report_reads_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "r.yml").write_text(REFERENCE_YAML)
    (tmp_path / "r.json").write_text(json.dumps(reference_document()))
    assert load_report(tmp_path / "r.yml") == load_report(tmp_path / "r.json")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("absent.yaml", None, "absent.yaml: no such file"),
        ("report.txt", "x", "report.txt: unknown report format '.txt'; accepted suffixes:"),
        ("bad.yaml", "a: [1,\n", "bad.yaml: not valid YAML:"),
        ("bad.json", "{'a': 1}", "bad.json: not valid JSON: Expecting property name"),
        ("list.yaml", "- 1\n", "list.yaml: document: expected a mapping, got a list"),
        ("empty.json", "null", "empty.json: document: expected a mapping, got null"),
    ],
)
def test_load_report_errors_name_the_file(
    tmp_path: Path, name: str, text: str | None, message: str
) -> None:
    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises(ReportError) as raised:
        load_report(tmp_path / name)
    assert str(raised.value).startswith(f"{tmp_path / name}: {message.split(': ', 1)[1]}")
