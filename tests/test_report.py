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
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings, strategies as st

from pytest_meshconform.report import (
    CollectionError,
    ConformanceReport,
    ReportError,
    assign_test_ids,
    diff_reports,
    format_diff,
    load_report,
    load_schema,
    parse_report,
    report_to_dict,
    safe_name,
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


_VALIDATOR = jsonschema.Draft202012Validator(load_schema())


def validate(document: object) -> None:
    _VALIDATOR.validate(document)


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


def _set(document: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """A copy of document with the value at a dotted path (list indexes as numbers) replaced."""
    changed = copy.deepcopy(document)
    *parents, last = path.split(".")
    node: Any = changed
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is _DELETE:
        del node[last]
    else:
        node[int(last) if isinstance(node, list) else last] = value
    return changed


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "apiVersion",
            "meshconform/v1",
            "apiVersion: unsupported 'meshconform/v1'; expected 'meshconform/v1alpha1'",
        ),
        ("kind", "GatewayConformanceReport", "kind: expected 'ConformanceReport', got"),
        ("date", _DELETE, "date: missing"),
        ("date", "2025-02-30T10:00:00Z", "date: not a real date: '2025-02-30T10:00:00Z'"),
        ("date", "2025-06-01 10:00:00", "date: expected UTC RFC 3339"),
        ("color", "blue", "color: unknown field"),
        ("mesh.used", "yes", "mesh.used: expected a boolean, got a string"),
        ("mesh.trustDomain", _DELETE, "mesh.trustDomain: missing"),
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
        parse_report(_set(reference_document(), path, value))
    assert str(raised.value).startswith(message)


def test_loader_rejects_evidence_of_a_passed_test() -> None:
    evidence = {"files": {"pcap": "x.pcap"}}
    document = _set(reference_document(), "suites.0.tests.0.evidence", evidence)
    with pytest.raises(ReportError, match=r"^suites\[0\]\.tests\[0\]\.evidence: only a failed"):
        parse_report(document)
    with pytest.raises(jsonschema.ValidationError):
        validate(document)


def test_loader_rejects_details_of_an_unused_mesh() -> None:
    document = _set(reference_document(), "mesh.used", False)
    with pytest.raises(ReportError, match=r"^mesh\.name: a mesh that was not used has no name"):
        parse_report(document)
    with pytest.raises(jsonschema.ValidationError):
        validate(document)


def test_an_error_needs_its_phase() -> None:
    document = _set(reference_document(), "suites.0.tests.2.outcome", "error")
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
    document = reference_document()
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


# --- Test ids and file names -----------------------------------------------------------------


def test_test_ids_name_suites_after_modules_and_classes() -> None:
    assert assign_test_ids(
        [
            "conformance/test_strict.py::test_naked_refused",
            "conformance/test_identity.py::TestCert::test_uri[foo-foo]",
            "suites/checks_test.py::test_x",
            "docs/guide.md",
        ]
    ) == {
        "conformance/test_strict.py::test_naked_refused": (
            "strict",
            "strict::test_naked_refused",
            "test_naked_refused",
            "conformance/test_strict.py",
        ),
        "conformance/test_identity.py::TestCert::test_uri[foo-foo]": (
            "identity::TestCert",
            "identity::TestCert::test_uri[foo-foo]",
            "test_uri[foo-foo]",
            "conformance/test_identity.py",
        ),
        "suites/checks_test.py::test_x": (
            "checks",
            "checks::test_x",
            "test_x",
            "suites/checks_test.py",
        ),
        "docs/guide.md": ("guide", "guide::guide.md", "guide.md", "docs/guide.md"),
    }


def test_test_ids_do_not_depend_on_where_the_suites_are_installed() -> None:
    checkout = assign_test_ids(["conformance/test_strict.py::test_x"])
    wheel = assign_test_ids(
        [".venv/lib/python3.12/site-packages/pytest_meshconform/conformance/test_strict.py::test_x"]
    )
    assert checkout["conformance/test_strict.py::test_x"][1] == "strict::test_x"
    assert next(iter(wheel.values()))[1] == "strict::test_x"


def test_modules_sharing_a_name_fall_back_to_their_paths() -> None:
    ids = assign_test_ids(["a/test_x.py::test_t", "b/test_x.py::test_t", "c/test_y.py::test_t"])
    assert [value[1] for value in ids.values()] == [
        "a/test_x::test_t",
        "b/test_x::test_t",
        "y::test_t",
    ]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(st.sampled_from("ab/_.:[]t"), min_size=1, max_size=16), unique=True))
def test_distinct_node_ids_get_distinct_test_ids(nodeids: list[str]) -> None:
    ids = [value[1] for value in assign_test_ids(nodeids).values()]
    assert len(set(ids)) == len(nodeids)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        (
            "conformance/test_strict.py::test_naked[foo-bar]",
            "conformance_test_strict.py__test_naked_foo-bar",
        ),
        (
            "curl sleep.legacy -> http://httpbin.foo:8000/headers",
            "curl_sleep.legacy_-_http_httpbin.foo_8000_headers",
        ),
        ("../..", "_"),
        ("", "_"),
        (".hidden", "hidden"),
    ],
)
def test_safe_name(text: str, name: str) -> None:
    assert safe_name(text) == name


def test_long_safe_names_stay_distinct() -> None:
    first, second = safe_name("x" * 300 + "a"), safe_name("x" * 300 + "b")
    assert len(first) == len(second) == 120
    assert first != second


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_safe_names_are_portable_file_names(text: str) -> None:
    name = safe_name(text)
    assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,119}", name), name


# --- Diff ------------------------------------------------------------------------------------


def _with(report: ConformanceReport, **outcomes: str) -> ConformanceReport:
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


def test_diff_classifies_every_change() -> None:
    old = parse_report(reference_document())
    new = _with(old, test_a="failed", test_b="xfailed", test_c="passed", test_rotates="notrun")
    diff = diff_reports(old, new)
    assert [c.id for c in diff.regressions] == ["strict::test_a", "strict::test_b"]
    assert [c.id for c in diff.fixes] == ["strict::test_c"]
    assert [c.id for c in diff.other_changes] == ["rotation::test_rotates"]
    assert diff.newly_skipped == diff.new_tests == diff.removed_tests == ()
    assert diff.failed


def test_diff_without_regression_does_not_fail() -> None:
    old = parse_report(reference_document())
    new = _with(old, test_a="skipped", test_c="error", test_rotates="passed")
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
        _with(old, test_a="failed"),
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


# --- The plugin, run by pytester ------------------------------------------------------------

STAND_IN_MESH = """
import pytest
from types import SimpleNamespace
from pytest_meshconform.mesh import LogPositions, MeshInfo
from pytest_meshconform.plugin.report import mesh_info_key


@pytest.fixture(scope="session")
def mesh(request):
    # Stands in for the real fixture: what the report needs is the MeshInfo it records.
    request.config.stash[mesh_info_key] = MeshInfo(
        backend="local", name="istio", version="1.24.2", trust_domain="cluster.local",
        revision="canary",
    )
    return SimpleNamespace(
        backend="local", version="1.24.2", istio_version="1.24.2", trust_domain="cluster.local",
        features=frozenset({"mtls", "xfcc", "capture", "rotation"}),
        # a test's log window (plugin/session.py): no workload, no log line
        log_positions=lambda: LogPositions(at=0.0), workloads=lambda: [],
    )


@pytest.fixture(autouse=True)
def _uses_mesh(request):
    request.getfixturevalue("mesh")
"""

OUTCOMES_MODULE = """
import pytest
from pytest_meshconform.report.exhibits import evidence_of

pytestmark = pytest.mark.mesh_features("mtls")


def test_passes():
    pass


def test_fails(request, tmp_path):
    pcap = tmp_path / "capture.pcap"
    pcap.write_bytes(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"))
    evidence = evidence_of(request.node)
    evidence.add_file("pcap httpbin.foo", pcap)
    evidence.add_text("curl sleep.legacy", "curl: (56) Recv failure: Connection reset by peer")
    raise AssertionError("plaintext was not refused")


@pytest.mark.mesh_features("rotation")
def test_skipped():
    pytest.skip("needs a kind cluster")


@pytest.fixture
def broken_setup(request):
    log = "\\n".join(f"log line {i}" for i in range(200))
    evidence_of(request.node).add_text("sidecar log httpbin.foo", log)
    raise RuntimeError("no httpbin")


def test_setup_error(broken_setup):
    pass


@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("cleanup failed")


def test_teardown_error(broken_teardown):
    pass


@pytest.mark.xfail(reason="known gap", strict=False)
def test_xfailed():
    raise AssertionError("still broken")


@pytest.mark.xfail(reason="fixed upstream", strict=False)
def test_xpassed():
    pass


@pytest.mark.xfail(reason="must fail", strict=True)
def test_xpass_strict():
    pass
"""

IDENTITY_MODULE = """
import pytest


@pytest.mark.mesh_wide
@pytest.mark.mesh_min_version("1.22")
class TestIdentity:
    @pytest.mark.parametrize("namespace", ["foo", "bar"])
    @pytest.mark.mesh_features("xfcc")
    def test_spiffe(self, namespace):
        pass
"""


@pytest.fixture
def suite_dir(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(STAND_IN_MESH)
    pytester.makepyfile(test_strict=OUTCOMES_MODULE, test_identity=IDENTITY_MODULE)
    return pytester


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly", *args)


def test_yaml_report_of_every_outcome(suite_dir: pytest.Pytester) -> None:
    result = _run(suite_dir, "--mesh-report=out/report.yaml")
    result.assert_outcomes(passed=4, failed=2, errors=2, skipped=1, xfailed=1, xpassed=1)
    document = yaml.safe_load((suite_dir.path / "out" / "report.yaml").read_text())
    validate(document)
    report = load_report(suite_dir.path / "out" / "report.yaml")

    assert document["apiVersion"] == "meshconform/v1alpha1"
    assert document["kind"] == "ConformanceReport"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", document["date"])
    assert document["mesh"] == {
        "used": True,
        "backend": "local",
        "name": "istio",
        "version": "1.24.2",
        "trustDomain": "cluster.local",
        "revision": "canary",
    }
    assert document["meshconform"]["version"] == PLUGIN_VERSION
    assert document["meshconform"]["pytest"] == pytest.__version__
    assert document["run"]["exitStatus"] == 1
    assert document["result"] == "failure"
    assert document["summary"] == "3 passed, 2 failed, 2 errors, 1 skipped, 1 xfailed, 1 xpassed"
    # test_teardown_error passed its call, so pytest counts it as passed *and* error: the
    # report counts each test once, by what finally happened to it.
    assert document["statistics"] == {
        "total": 10,
        "passed": 3,
        "failed": 2,
        "errors": 2,
        "skipped": 1,
        "xfailed": 1,
        "xpassed": 1,
        "notRun": 0,
    }
    assert document["features"] == {"tested": ["mtls", "xfcc"], "untested": ["rotation"]}
    assert document["failedTests"] == [
        "strict::test_fails",
        "strict::test_setup_error",
        "strict::test_teardown_error",
        "strict::test_xpass_strict",
    ]
    assert document["skippedTests"] == ["strict::test_skipped"]
    assert [s["name"] for s in document["suites"]] == ["identity::TestIdentity", "strict"]

    outcomes = {t.id: (t.outcome, t.phase, t.message) for t in report.tests}
    assert outcomes == {
        "identity::TestIdentity::test_spiffe[foo]": ("passed", None, None),
        "identity::TestIdentity::test_spiffe[bar]": ("passed", None, None),
        "strict::test_passes": ("passed", None, None),
        "strict::test_fails": ("failed", None, "AssertionError: plaintext was not refused"),
        "strict::test_skipped": ("skipped", None, "needs a kind cluster"),
        "strict::test_setup_error": ("error", "setup", "RuntimeError: no httpbin"),
        "strict::test_teardown_error": ("error", "teardown", "RuntimeError: cleanup failed"),
        "strict::test_xfailed": ("xfailed", None, "known gap"),
        "strict::test_xpassed": ("xpassed", None, "fixed upstream"),
        "strict::test_xpass_strict": ("failed", None, "[XPASS(strict)] must fail"),
    }
    identity = document["suites"][0]["tests"][0]
    assert identity == {
        "id": "identity::TestIdentity::test_spiffe[foo]",
        "name": "test_spiffe[foo]",
        "nodeid": "test_identity.py::TestIdentity::test_spiffe[foo]",
        "outcome": "passed",
        "duration": identity["duration"],
        "features": ["xfcc"],
        "minMeshVersion": "1.22",
        "meshWide": True,
    }
    assert document["suites"][1]["features"] == ["mtls", "rotation"]
    assert document["suites"][1]["path"] == "test_strict.py"
    # Without --mesh-artifacts the pcap stays where the fixture put it; texts are not kept.
    fails = next(t for t in report.tests if t.id == "strict::test_fails")
    assert fails.evidence is not None and fails.evidence.directory is None
    [(label, path)] = fails.evidence.files
    assert label == "pcap httpbin.foo" and path.endswith("/test_fails0/capture.pcap")
    result.stdout.fnmatch_lines(
        ["*- meshconform report: */out/report.yaml (failure: 3 passed, 2 failed, 2 errors*"]
    )


def test_json_report_when_no_test_used_a_mesh(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_one():\n    pass\n")
    _run(pytester, "--mesh-report=report.json").assert_outcomes(passed=1)
    document = json.loads((pytester.path / "report.json").read_text())
    validate(document)
    assert document["mesh"] == {"used": False, "backend": "local"}
    assert document["result"] == "success"
    assert document["summary"] == "1 passed"
    assert document["features"] == {"tested": [], "untested": []}
    assert document["suites"][0]["name"] == "plain"
    assert document["suites"][0]["tests"][0]["id"] == "plain::test_one"


def test_tests_left_unrun_are_reported_as_notrun(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_stop="def test_a():\n    pass\n\n"
        "def test_b():\n    assert 0\n\n"
        "def test_c():\n    pass\n"
    )
    _run(pytester, "-x", "--mesh-report=r.yaml").assert_outcomes(passed=1, failed=1)
    report = load_report(pytester.path / "r.yaml")
    assert [(t.id, t.outcome) for t in report.tests] == [
        ("stop::test_a", "passed"),
        ("stop::test_b", "failed"),
        ("stop::test_c", "notrun"),
    ]
    assert report.statistics.not_run == 1


def test_collection_errors_are_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_ok="def test_ok():\n    pass\n",
        test_broken="import no_such_module_for_meshconform\n",
    )
    result = _run(pytester, "--mesh-report=r.yaml")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    document = yaml.safe_load((pytester.path / "r.yaml").read_text())
    validate(document)
    [error] = document["collectionErrors"]
    assert error["nodeid"] == "test_broken.py"
    assert (
        "ModuleNotFoundError: No module named 'no_such_module_for_meshconform'" in error["message"]
    )
    assert document["result"] == "failure"
    assert document["summary"] == "1 not run, 1 collection error"
    assert document["run"]["exitStatus"] == 2


def test_failed_tests_evidence_is_archived_and_shown(suite_dir: pytest.Pytester) -> None:
    result = _run(
        suite_dir,
        "--mesh-report=report.yaml",
        "--mesh-artifacts=artifacts",
        "--junitxml=junit.xml",
        "-k",
        "test_fails or test_setup_error or test_passes",
    )
    result.assert_outcomes(passed=1, failed=1, errors=1)
    artifacts = suite_dir.path / "artifacts"
    fails_dir = artifacts / "test_strict.py__test_fails"
    assert sorted(p.name for p in fails_dir.iterdir()) == [
        ".meshconform-evidence",
        "curl_sleep.legacy.txt",
        "pcap_httpbin.foo.pcap",
    ]
    assert (fails_dir / "pcap_httpbin.foo.pcap").read_bytes() == bytes.fromhex(
        "d4c3b2a1020004000000000000000000ffff000001000000"
    )
    assert (fails_dir / "curl_sleep.legacy.txt").read_text() == (
        "curl: (56) Recv failure: Connection reset by peer"
    )
    setup_dir = artifacts / "test_strict.py__test_setup_error"
    log = (setup_dir / "sidecar_log_httpbin.foo.txt").read_text().splitlines()
    assert log[0] == "log line 0" and log[-1] == "log line 199" and len(log) == 200
    assert sorted(p.name for p in artifacts.iterdir()) == [
        "test_strict.py__test_fails",
        "test_strict.py__test_setup_error",
    ]

    report = load_report(suite_dir.path / "report.yaml")
    fails = next(t for t in report.tests if t.id == "strict::test_fails")
    assert fails.evidence is not None
    assert fails.evidence.directory == "artifacts/test_strict.py__test_fails"
    assert fails.evidence.files == (
        ("pcap httpbin.foo", "artifacts/test_strict.py__test_fails/pcap_httpbin.foo.pcap"),
        ("curl sleep.legacy", "artifacts/test_strict.py__test_fails/curl_sleep.legacy.txt"),
    )

    # In the terminal, with the failure.
    output = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: plaintext was not refused",
            "*- meshconform evidence -*",
            f"pcap httpbin.foo: {fails_dir}/pcap_httpbin.foo.pcap",
            f"curl sleep.legacy: {fails_dir}/curl_sleep.legacy.txt",
            "*- meshconform evidence: curl sleep.legacy -*",
            "curl: (56) Recv failure: Connection reset by peer",
        ]
    )
    # Long texts are cut to their last 80 lines in the terminal, never in the archive.
    assert (
        f"[120 earlier lines omitted; full text in {setup_dir}/sidecar_log_httpbin.foo.txt]\n"
        "log line 120\n" in output
    )
    assert "log line 119\n" not in output
    result.stdout.fnmatch_lines([f"*meshconform evidence of failed tests: {artifacts}*"])

    # In JUnit: the evidence with the failure, the mesh as testsuite properties.
    suite = ET.parse(suite_dir.path / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    properties = {p.get("name"): p.get("value") for p in suite.iterfind("properties/property")}
    assert properties == {
        "meshconform.version": PLUGIN_VERSION,
        "mesh.backend": "local",
        "mesh.name": "istio",
        "mesh.version": "1.24.2",
        "mesh.trust_domain": "cluster.local",
        "mesh.revision": "canary",
    }
    failure = suite.find("testcase[@name='test_fails']/failure")
    assert failure is not None and failure.text is not None
    assert "curl: (56) Recv failure: Connection reset by peer" in failure.text
    assert f"pcap httpbin.foo: {fails_dir}/pcap_httpbin.foo.pcap" in failure.text
    error = suite.find("testcase[@name='test_setup_error']/error")
    assert error is not None and error.text is not None
    assert "log line 199" in error.text


def test_junit_properties_without_a_mesh(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_one():\n    pass\n")
    _run(pytester, "--junitxml=junit.xml").assert_outcomes(passed=1)
    suite = ET.parse(pytester.path / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    properties = {p.get("name"): p.get("value") for p in suite.iterfind("properties/property")}
    assert properties == {"meshconform.version": PLUGIN_VERSION, "mesh.backend": "local"}


def test_stale_evidence_is_replaced_and_foreign_directories_are_left_alone(
    suite_dir: pytest.Pytester,
) -> None:
    artifacts = suite_dir.path / "artifacts"
    ours = artifacts / "test_strict.py__test_fails"
    ours.mkdir(parents=True)
    (ours / ".meshconform-evidence").write_text("test_strict.py::test_fails\n")
    (ours / "old.pcap").write_bytes(b"stale")
    foreign = artifacts / "test_strict.py__test_setup_error"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not meshconform's")
    _run(suite_dir, "--mesh-artifacts=artifacts", "-k", "test_fails or test_setup_error")
    assert not (ours / "old.pcap").exists()
    assert (ours / "pcap_httpbin.foo.pcap").is_file()
    assert (foreign / "keep.txt").read_text() == "not meshconform's"
    [hashed] = [p for p in artifacts.iterdir() if p.name.startswith(foreign.name + "-")]
    assert re.fullmatch(r"test_strict\.py__test_setup_error-[0-9a-f]{8}", hashed.name)
    assert (hashed / "sidecar_log_httpbin.foo.txt").is_file()


def test_evidence_without_artifacts_dir_points_at_the_files(suite_dir: pytest.Pytester) -> None:
    result = _run(suite_dir, "-k", "test_fails")
    result.stdout.fnmatch_lines(
        [
            "*- meshconform evidence -*",
            "pcap httpbin.foo: */test_fails0/capture.pcap",
            "(files may be temporary: keep them with --mesh-artifacts=DIR)",
        ]
    )


def test_unwritable_report_fails_the_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_one():\n    pass\n")
    (pytester.path / "blocker").write_text("a file, not a directory")
    result = _run(pytester, "--mesh-report=blocker/report.yaml")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["meshconform: report: cannot write */blocker/report.yaml: *"])


# --- --mesh-baseline --------------------------------------------------------------------------

UPGRADED_MODULE = """
import pytest


def test_a():
    pass


@pytest.mark.xfail(reason="broken since 1.25", strict=False)
def test_b():
    raise AssertionError("XFCC missing")


def test_c():
    pass


def test_d():
    pass
"""


def test_baseline_regression_fails_an_otherwise_green_run(pytester: pytest.Pytester) -> None:
    (pytester.path / "baseline.yaml").write_text(REFERENCE_YAML)
    pytester.makepyfile(test_strict=UPGRADED_MODULE)
    result = _run(pytester, "--mesh-baseline=baseline.yaml", "--mesh-report=now.json")
    result.assert_outcomes(passed=3, xfailed=1)  # pytest alone would exit 0
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*= meshconform: comparison with baseline =*",
            "old: */baseline.yaml: istio 1.24.2 (local), 2025-06-01T10:00:00Z, 2 passed,"
            " 1 failed, 1 skipped",
            "new: this run: no mesh used (local), *, 3 passed, 1 xfailed",
            "Regressions (passed before, failing now): 1",
            "  strict::test_b: passed -> xfailed: broken since 1.25",
            "Fixes (failing before, passing now): 1",
            "  strict::test_c: failed -> passed",
            "New tests: 1",
            "  strict::test_d: passed",
            "Removed tests: 1",
            "  rotation::test_rotates: was skipped",
            "FAIL: 1 regression, 1 fix, 0 newly skipped, 0 other changes, 1 new test,"
            " 1 removed test",
            "meshconform: the run fails: regressions against the baseline",
        ]
    )
    assert json.loads((pytester.path / "now.json").read_text())["run"]["exitStatus"] == 1


def test_baseline_without_regression_keeps_the_run_green(pytester: pytest.Pytester) -> None:
    (pytester.path / "baseline.yaml").write_text(REFERENCE_YAML)
    pytester.makepyfile(test_strict="def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    result = _run(pytester, "--mesh-baseline=baseline.yaml")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "Removed tests: 2",
            "OK: 0 regressions, 0 fixes, 0 newly skipped, 0 other changes, 0 new tests,"
            " 2 removed tests",
        ]
    )
    result.stdout.no_fnmatch_line("*the run fails*")


def test_malformed_baseline_is_a_usage_error_before_any_test_runs(
    pytester: pytest.Pytester,
) -> None:
    broken = _set(reference_document(), "statistics.failed", 0)
    (pytester.path / "baseline.yaml").write_text(yaml.safe_dump(broken))
    pytester.makepyfile(test_strict="def test_a():\n    pass\n")
    result = _run(pytester, "--mesh-baseline=baseline.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --mesh-baseline: */baseline.yaml: statistics.failed: 0 does not agree with"
            " the tests (expected 1)"
        ]
    )


def test_report_classes_named_test_are_not_collected(pytester: pytest.Pytester) -> None:
    # TestResult and TestChange are data, not test classes: a test module that imports them
    # (as users' comparison scripts do) must not get a "cannot collect" warning for each.
    pytester.makepyfile(
        test_uses_report="from pytest_meshconform.report import TestChange, TestResult\n\n"
        "def test_one():\n    assert TestChange and TestResult\n"
    )
    _run(pytester, "-W", "error::pytest.PytestCollectionWarning").assert_outcomes(passed=1)
