# Still one large module: split by concern planned (model, formats, diff, archive, hooks),
# see docs/architecture.md.
"""Conformance reports, failure evidence and upgrade regression checks.

A run leaves a publishable record (``--mesh-report``), in the spirit of the Gateway API
``ConformanceReport``: which mesh was tested, with which plugin, when, and per suite and per test
what happened, plus where the evidence of each failure is. Two records are comparable
(``meshconform diff OLD NEW``, ``--mesh-baseline=OLD``) so that an upgrade shows, in one glance,
what it broke.

The module has three layers:

- the report model (frozen dataclasses), its serialisation (``report_to_dict``) and a strict
  loader (``parse_report``, ``load_report``) that checks a document, derived fields included, and
  names the offending field;
- ``diff_reports`` / ``format_diff``: pure comparison of two reports, matched by test id;
- the pytest side (``configure`` registers ``MeshReportPlugin``): folds test reports into
  results, archives and attaches evidence of failed tests, writes the report, adds JUnit
  testsuite properties, and compares with a baseline.

It is imported when the plugin loads, so it imports only the standard library, pytest and the
(standard-library-only) ``mesh`` protocol; YAML and JSON are imported when a report is written
or read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, cast

import pytest

from .health import infrastructure_problem_of
from .mesh import MeshInfo
from .observations import Observations, observations_from_dict

if TYPE_CHECKING:
    from .evidence import Evidence
    from .settings import MeshSettings, ReportFormat

__all__ = [
    "API_VERSION",
    "KIND",
    "OUTCOMES",
    "CollectionError",
    "ConformanceReport",
    "EvidenceRecord",
    "MeshRecord",
    "MeshReportPlugin",
    "ReportDiff",
    "ReportError",
    "Statistics",
    "SuiteResult",
    "TestChange",
    "TestResult",
    "assign_test_ids",
    "configure",
    "description_of",
    "diff_reports",
    "dump_report",
    "format_diff",
    "load_report",
    "load_schema",
    "mesh_info_key",
    "parse_report",
    "report_to_dict",
    "safe_name",
    "write_report",
]

API_VERSION: Final = "meshconform/v1alpha1"
KIND: Final = "ConformanceReport"
PLUGIN_NAME: Final = "meshconform-report"

Outcome = Literal["passed", "failed", "error", "skipped", "xfailed", "xpassed", "notrun"]
OUTCOMES: Final[tuple[Outcome, ...]] = (
    "passed",
    "failed",
    "error",
    "skipped",
    "xfailed",
    "xpassed",
    "notrun",
)
Phase = Literal["setup", "call", "teardown"]
PHASES: Final[tuple[Phase, ...]] = ("setup", "call", "teardown")
Result = Literal["success", "partial", "failure"]

# "Failing" in pytest's own sense: these outcomes make the exit status 1.
FAILING: Final = frozenset({"failed", "error"})
# For comparing runs: did the behaviour a test checks hold? An expected failure (xfailed) is
# still a failure of that behaviour: a test that passed before and xfails now is a regression.
PASSING: Final = frozenset({"passed", "xpassed"})
BROKEN: Final = FAILING | {"xfailed"}

_MAX_MESSAGE_CHARS: Final = 4000
_MAX_SECTION_LINES: Final = 80
_DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_EVIDENCE_MARKER: Final = ".meshconform-evidence"

mesh_info_key: Final = pytest.StashKey[MeshInfo]()
"""``config.stash[mesh_info_key]``: set by the ``mesh`` fixture once the mesh is up."""


class ReportError(ValueError):
    """A conformance report cannot be read; the message names the file and the field."""


# --- The model ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EvidenceRecord:
    """Where the evidence of one test is: the archive directory and each file by label.

    Paths are relative to the report's directory when they lie under it, else absolute.
    ``directory`` is None when the run had no ``--mesh-artifacts`` (files stay where the
    fixtures left them); only a failed test has evidence then. Under ``--mesh-artifacts``
    every test with evidence (pcaps, texts) has a directory.
    """

    directory: str | None
    files: tuple[tuple[str, str], ...]  # (label, path), in the order the fixtures added them


@dataclass(frozen=True, slots=True)
class TestResult:
    """One collected test and what happened to it."""

    __test__ = False  # not a pytest test class, despite the name

    id: str  # "<suite>::<name>": stable across checkouts and install locations
    name: str  # the test's own name, parameters included
    nodeid: str  # pytest's node id in the run that wrote the report
    outcome: Outcome
    duration: float  # seconds, setup + call + teardown
    phase: Phase | None = None  # where an "error" happened (setup or teardown); else None
    # The mesh's own process broke (a sidecar died): an error about the run, not the mesh's
    # behaviour (its phase may then be "call"). `meshconform diff` keeps these apart.
    infrastructure: bool = False
    message: str | None = None  # failure message, skip or xfail reason
    features: tuple[str, ...] = ()  # from @pytest.mark.mesh_features, sorted
    min_mesh_version: str | None = None  # from @pytest.mark.mesh_min_version
    mesh_wide: bool = False  # @pytest.mark.mesh_wide
    evidence: EvidenceRecord | None = None
    description: str | None = None  # the test's docstring
    observations: Observations | None = None  # what it did and saw, pass or fail


@dataclass(frozen=True, slots=True)
class Statistics:
    """How many tests ended in each outcome."""

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    xfailed: int = 0
    xpassed: int = 0
    not_run: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, field.name) for field in dataclasses.fields(self))

    @classmethod
    def of(cls, tests: Iterable[TestResult]) -> Statistics:
        counts = dict.fromkeys(OUTCOMES, 0)
        for test in tests:
            counts[test.outcome] += 1
        return cls(
            passed=counts["passed"],
            failed=counts["failed"],
            errors=counts["error"],
            skipped=counts["skipped"],
            xfailed=counts["xfailed"],
            xpassed=counts["xpassed"],
            not_run=counts["notrun"],
        )


def _result_of(statistics: Statistics, collection_errors: int = 0) -> Result:
    """Gateway API's three results: failure if anything failed, partial if anything did not run."""
    if statistics.failed or statistics.errors or collection_errors:
        return "failure"
    if (
        statistics.skipped
        or statistics.xfailed
        or statistics.not_run
        or statistics.passed + statistics.xpassed == 0
    ):
        return "partial"
    return "success"


@dataclass(frozen=True, slots=True)
class SuiteResult:
    """The tests of one module (and class): a suite in the report."""

    name: str
    path: str  # the test file, relative to the rootdir of the run
    tests: tuple[TestResult, ...]

    @property
    def statistics(self) -> Statistics:
        return Statistics.of(self.tests)

    @property
    def result(self) -> Result:
        return _result_of(self.statistics)

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(sorted({f for test in self.tests for f in test.features}))


@dataclass(frozen=True, slots=True)
class MeshRecord:
    """The mesh under test; ``used`` is False when no test asked for a mesh."""

    used: bool
    backend: str
    name: str | None = None
    version: str | None = None
    trust_domain: str | None = None
    revision: str | None = None

    @classmethod
    def of(cls, info: MeshInfo | None, backend: str) -> MeshRecord:
        if info is None:
            return cls(used=False, backend=backend)
        return cls(True, info.backend, info.name, info.version, info.trust_domain, info.revision)

    def describe(self) -> str:
        if not self.used:
            return f"no mesh used ({self.backend})"
        revision = f", revision {self.revision}" if self.revision else ""
        return f"{self.name} {self.version} ({self.backend}{revision})"


@dataclass(frozen=True, slots=True)
class CollectionError:
    """A test file or class that could not be collected: its tests are missing from the run."""

    nodeid: str
    message: str


@dataclass(frozen=True, slots=True)
class ConformanceReport:
    """The record of one run. Statistics, results and feature lists are derived from the tests."""

    date: str  # RFC 3339, UTC, seconds: 2025-01-31T12:00:00Z
    plugin_version: str
    pytest_version: str
    python_version: str
    mesh: MeshRecord
    duration: float  # seconds, the whole session
    exit_status: int
    suites: tuple[SuiteResult, ...]
    collection_errors: tuple[CollectionError, ...] = ()
    faults: tuple[str, ...] = ()  # test-only local-mesh faults: such a report proves nothing

    @property
    def tests(self) -> tuple[TestResult, ...]:
        return tuple(test for suite in self.suites for test in suite.tests)

    @property
    def statistics(self) -> Statistics:
        return Statistics.of(self.tests)

    @property
    def result(self) -> Result:
        return _result_of(self.statistics, len(self.collection_errors))

    @property
    def summary(self) -> str:
        return _summary_of(self.statistics, len(self.collection_errors))

    @property
    def features_tested(self) -> tuple[str, ...]:
        """Features of the tests that ran (not skipped, not left unrun)."""
        ran = (t for t in self.tests if t.outcome not in ("skipped", "notrun"))
        return tuple(sorted({f for test in ran for f in test.features}))

    @property
    def features_untested(self) -> tuple[str, ...]:
        """Features that only skipped or unrun tests needed."""
        tested = set(self.features_tested)
        return tuple(sorted({f for t in self.tests for f in t.features} - tested))

    @property
    def failed_tests(self) -> tuple[str, ...]:
        return tuple(t.id for t in self.tests if t.outcome in FAILING)

    @property
    def skipped_tests(self) -> tuple[str, ...]:
        return tuple(t.id for t in self.tests if t.outcome == "skipped")


def _summary_of(statistics: Statistics, collection_errors: int) -> str:
    """A pytest-like one-liner: ``12 passed, 1 failed, 2 skipped``."""
    parts = [
        f"{count} {label}"
        for count, label in (
            (statistics.passed, "passed"),
            (statistics.failed, "failed"),
            (statistics.errors, "errors" if statistics.errors != 1 else "error"),
            (statistics.skipped, "skipped"),
            (statistics.xfailed, "xfailed"),
            (statistics.xpassed, "xpassed"),
            (statistics.not_run, "not run"),
            (
                collection_errors,
                "collection errors" if collection_errors != 1 else "collection error",
            ),
        )
        if count
    ]
    return ", ".join(parts) or "no tests"


# --- Serialisation --------------------------------------------------------------------------


def _statistics_dict(statistics: Statistics) -> dict[str, int]:
    return {
        "total": statistics.total,
        "passed": statistics.passed,
        "failed": statistics.failed,
        "errors": statistics.errors,
        "skipped": statistics.skipped,
        "xfailed": statistics.xfailed,
        "xpassed": statistics.xpassed,
        "notRun": statistics.not_run,
    }


def _test_dict(test: TestResult) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": test.id,
        "name": test.name,
        "nodeid": test.nodeid,
        "outcome": test.outcome,
        "duration": test.duration,
    }
    if test.phase is not None:
        data["phase"] = test.phase
    if test.infrastructure:
        data["infrastructure"] = True
    if test.message is not None:
        data["message"] = test.message
    if test.features:
        data["features"] = list(test.features)
    if test.min_mesh_version is not None:
        data["minMeshVersion"] = test.min_mesh_version
    if test.mesh_wide:
        data["meshWide"] = True
    if test.evidence is not None:
        evidence: dict[str, Any] = {}
        if test.evidence.directory is not None:
            evidence["directory"] = test.evidence.directory
        evidence["files"] = dict(test.evidence.files)
        data["evidence"] = evidence
    if test.description is not None:
        data["description"] = test.description
    if test.observations:
        data["observations"] = test.observations.to_dict()
    return data


def _mesh_dict(mesh: MeshRecord) -> dict[str, Any]:
    data: dict[str, Any] = {"used": mesh.used, "backend": mesh.backend}
    for key, value in (
        ("name", mesh.name),
        ("version", mesh.version),
        ("trustDomain", mesh.trust_domain),
        ("revision", mesh.revision),
    ):
        if value is not None:
            data[key] = value
    return data


def report_to_dict(report: ConformanceReport) -> dict[str, Any]:
    """The report as plain data (str, int, float, bool, list, dict), in document order."""
    run: dict[str, Any] = {"duration": report.duration, "exitStatus": report.exit_status}
    if report.faults:
        run["faults"] = list(report.faults)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "date": report.date,
        "mesh": _mesh_dict(report.mesh),
        "meshconform": {
            "version": report.plugin_version,
            "pytest": report.pytest_version,
            "python": report.python_version,
        },
        "run": run,
        "result": report.result,
        "summary": report.summary,
        "statistics": _statistics_dict(report.statistics),
        "features": {
            "tested": list(report.features_tested),
            "untested": list(report.features_untested),
        },
        "failedTests": list(report.failed_tests),
        "skippedTests": list(report.skipped_tests),
        "collectionErrors": [
            {"nodeid": error.nodeid, "message": error.message} for error in report.collection_errors
        ],
        "suites": [
            {
                "name": suite.name,
                "path": suite.path,
                "result": suite.result,
                "statistics": _statistics_dict(suite.statistics),
                "features": list(suite.features),
                "tests": [_test_dict(test) for test in suite.tests],
            }
            for suite in report.suites
        ],
    }


def dump_report(report: ConformanceReport, report_format: ReportFormat) -> str:
    """The report as YAML or JSON text."""
    data = report_to_dict(report)
    if report_format == "json":
        import json

        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    import yaml

    return yaml.safe_dump(
        data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100
    )


def _format_of(path: Path) -> ReportFormat:
    from .settings import REPORT_SUFFIXES, report_format_of

    report_format = report_format_of(path)
    if report_format is None:
        raise ReportError(
            f"{path}: unknown report format {path.suffix!r}; accepted suffixes:"
            f" {', '.join(REPORT_SUFFIXES)}"
        )
    return report_format


def write_report(report: ConformanceReport, path: Path) -> None:
    """Write the report to path (format from the suffix), creating parent directories.

    Written to a temporary file and renamed, so a reader never sees half a report.
    """
    text = dump_report(report, _format_of(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a report document, shipped with the package."""
    import json
    from importlib.resources import files

    text = files(__package__ or "pytest_meshconform").joinpath("report_schema.json").read_text()
    return cast(dict[str, Any], json.loads(text))


def load_report(path: Path) -> ConformanceReport:
    """Read and check a report file (.json, .yaml or .yml).

    Raises ReportError naming the file and, for a malformed document, the field.
    """
    report_format = _format_of(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ReportError(f"{path}: cannot read: {error}") from None
    data: object
    if report_format == "json":
        import json

        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ReportError(f"{path}: not valid JSON: {error}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ReportError(f"{path}: not valid YAML: {error}") from None
    try:
        return parse_report(data)
    except ReportError as error:
        raise ReportError(f"{path}: {error}") from None


# --- The strict loader ----------------------------------------------------------------------

_T = TypeVar("_T")


class _Fields:
    """Reads one mapping of a document, tracking which keys were used and where it is."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise ReportError(f"{where or 'document'}: expected a mapping, got {_kind(data)}")
        self.data: dict[object, object] = data
        self.where = where
        self.used: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, kind: type[_T], required: bool = True) -> _T | None:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise ReportError(f"{self.at(key)}: missing")
            return None
        value = self.data[key]
        # bool is an int in Python, never in a report.
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ReportError(f"{self.at(key)}: expected {_kind_name(kind)}, got {_kind(value)}")
        return value

    def need(self, key: str, kind: type[_T]) -> _T:
        value = self.get(key, kind)
        assert value is not None
        return value

    def text(self, key: str, required: bool = True) -> str | None:
        value = self.get(key, str, required)
        if value is not None and not value:
            raise ReportError(f"{self.at(key)}: expected a non-empty string")
        return value

    def need_text(self, key: str) -> str:
        value = self.text(key)
        assert value is not None
        return value

    def texts(self, key: str, required: bool = True) -> tuple[str, ...]:
        values = self.get(key, list, required) or []
        for index, value in enumerate(values):
            if not isinstance(value, str) or not value:
                raise ReportError(
                    f"{self.at(key)}[{index}]: expected a non-empty string, got {_kind(value)}"
                )
        return tuple(values)

    def number(self, key: str) -> float:
        self.used.add(key)
        if key not in self.data:
            raise ReportError(f"{self.at(key)}: missing")
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ReportError(f"{self.at(key)}: expected a number, got {_kind(value)}")
        if not math.isfinite(value) or value < 0:
            raise ReportError(f"{self.at(key)}: expected a finite number >= 0, got {value!r}")
        return float(value)

    def choice(self, key: str, accepted: Sequence[_T], required: bool = True) -> _T | None:
        value = self.get(key, str, required)
        if value is None:
            return None
        if value not in accepted:
            raise ReportError(
                f"{self.at(key)}: invalid value {value!r}; accepted values:"
                f" {', '.join(map(str, accepted))}"
            )
        return cast(_T, value)

    def done(self) -> None:
        unknown = [key for key in self.data if key not in self.used]
        if unknown:
            raise ReportError(f"{self.at(str(unknown[0]))}: unknown field")


_KIND_NAMES: Final[dict[type, str]] = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a mapping",
}


def _kind(value: object) -> str:
    """How a value found in a document is named in an error message."""
    return "null" if value is None else _kind_name(type(value))


def _kind_name(kind: type) -> str:
    return _KIND_NAMES.get(kind, kind.__name__)


def _parse_test(data: object, where: str) -> TestResult:
    fields = _Fields(data, where)
    outcome = cast(Outcome, fields.choice("outcome", OUTCOMES))
    phase = cast(Phase | None, fields.choice("phase", PHASES, required=outcome == "error"))
    if phase is not None and outcome != "error":
        raise ReportError(f"{fields.at('phase')}: only an 'error' outcome has a phase")
    infrastructure = fields.get("infrastructure", bool, required=False)
    if infrastructure is False:
        raise ReportError(f"{fields.at('infrastructure')}: omit the field instead of false")
    if infrastructure and outcome != "error":
        raise ReportError(f"{fields.at('infrastructure')}: only an 'error' outcome has it")
    if phase == "call" and not infrastructure:
        raise ReportError(
            f"{fields.at('phase')}: an error happens in setup or teardown, not call (unless"
            " it is an infrastructure error)"
        )
    features = fields.texts("features", required=False)
    if list(features) != sorted(set(features)):
        raise ReportError(f"{fields.at('features')}: expected sorted, distinct feature names")
    if "features" in fields.data and not features:
        raise ReportError(f"{fields.at('features')}: omit the field instead of an empty list")
    mesh_wide = fields.get("meshWide", bool, required=False)
    if mesh_wide is False:
        raise ReportError(f"{fields.at('meshWide')}: omit the field instead of false")
    evidence = None
    if "evidence" in fields.data:
        evidence = _parse_evidence(fields.data["evidence"], fields.at("evidence"))
        if outcome not in FAILING and evidence.directory is None:
            raise ReportError(
                f"{fields.at('evidence')}: only a failed or errored test has evidence without"
                " a directory (a test that did not fail keeps evidence under --mesh-artifacts)"
            )
    fields.used.add("evidence")
    observations = None
    if "observations" in fields.data:
        try:
            observations = observations_from_dict(
                fields.data["observations"], fields.at("observations")
            )
        except ValueError as error:
            raise ReportError(str(error)) from None
        if not observations:
            raise ReportError(f"{fields.at('observations')}: omit the field instead of empty")
    fields.used.add("observations")
    test = TestResult(
        id=fields.need_text("id"),
        name=fields.need_text("name"),
        nodeid=fields.need_text("nodeid"),
        outcome=outcome,
        duration=fields.number("duration"),
        phase=phase,
        infrastructure=bool(infrastructure),
        message=fields.text("message", required=False),
        features=features,
        min_mesh_version=fields.text("minMeshVersion", required=False),
        mesh_wide=bool(mesh_wide),
        evidence=evidence,
        description=fields.text("description", required=False),
        observations=observations,
    )
    fields.done()
    return test


def _parse_evidence(data: object, where: str) -> EvidenceRecord:
    fields = _Fields(data, where)
    directory = fields.text("directory", required=False)
    files = fields.need("files", dict)
    pairs: list[tuple[str, str]] = []
    for label, path in files.items():
        if not isinstance(label, str) or not label:
            raise ReportError(f"{fields.at('files')}: expected non-empty labels, got {label!r}")
        if not isinstance(path, str) or not path:
            raise ReportError(f"{fields.at('files')}.{label}: expected a path, got {_kind(path)}")
        pairs.append((label, path))
    fields.done()
    return EvidenceRecord(directory, tuple(pairs))


def _parse_mesh(data: object) -> MeshRecord:
    fields = _Fields(data, "mesh")
    used = fields.need("used", bool)
    mesh = MeshRecord(
        used=used,
        backend=fields.need_text("backend"),
        name=fields.text("name", required=used),
        version=fields.text("version", required=used),
        trust_domain=fields.text("trustDomain", required=used),
        revision=fields.text("revision", required=False),
    )
    if not used:
        for key in ("name", "version", "trustDomain", "revision"):
            if key in fields.data:
                raise ReportError(f"mesh.{key}: a mesh that was not used has no {key}")
    fields.done()
    return mesh


def parse_report(data: object) -> ConformanceReport:
    """Check a report document (already decoded from YAML/JSON) and build the report.

    Every field is checked, and the derived ones (statistics, results, feature lists, failed and
    skipped test lists) must agree with the tests. Raises ReportError naming the field.
    """
    fields = _Fields(data, "")
    api_version = fields.need("apiVersion", str)
    if api_version != API_VERSION:
        raise ReportError(f"apiVersion: unsupported {api_version!r}; expected {API_VERSION!r}")
    kind = fields.need("kind", str)
    if kind != KIND:
        raise ReportError(f"kind: expected {KIND!r}, got {kind!r}")
    date = fields.need("date", str)
    if not _DATE_RE.fullmatch(date):
        raise ReportError(f"date: expected UTC RFC 3339 like 2025-01-31T12:00:00Z, got {date!r}")
    try:
        datetime.strptime(date, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise ReportError(f"date: not a real date: {date!r}") from None

    mesh = _parse_mesh(fields.need("mesh", dict))
    plugin = _Fields(fields.need("meshconform", dict), "meshconform")
    plugin_version = plugin.need_text("version")
    pytest_version = plugin.need_text("pytest")
    python_version = plugin.need_text("python")
    plugin.done()
    run = _Fields(fields.need("run", dict), "run")
    duration = run.number("duration")
    exit_status = run.need("exitStatus", int)
    faults = run.texts("faults", required=False)
    if "faults" in run.data and not faults:
        raise ReportError("run.faults: omit the field instead of an empty list")
    run.done()

    collection_errors = []
    for index, item in enumerate(fields.need("collectionErrors", list)):
        error = _Fields(item, f"collectionErrors[{index}]")
        collection_errors.append(
            CollectionError(error.need_text("nodeid"), error.need("message", str))
        )
        error.done()

    suites: list[SuiteResult] = []
    seen_ids: set[str] = set()
    for index, item in enumerate(fields.need("suites", list)):
        suite_fields = _Fields(item, f"suites[{index}]")
        tests = []
        for test_index, test_data in enumerate(suite_fields.need("tests", list)):
            test = _parse_test(test_data, f"{suite_fields.at('tests')}[{test_index}]")
            if test.id in seen_ids:
                raise ReportError(
                    f"{suite_fields.at('tests')}[{test_index}].id: duplicate {test.id!r}"
                )
            seen_ids.add(test.id)
            tests.append(test)
        suite = SuiteResult(
            name=suite_fields.need_text("name"),
            path=suite_fields.need_text("path"),
            tests=tuple(tests),
        )
        suite_fields.get("result", str)
        suite_fields.get("statistics", dict)
        suite_fields.get("features", list)
        suite_fields.done()
        suites.append(suite)

    for key in ("result", "summary", "statistics", "features", "failedTests", "skippedTests"):
        fields.used.add(key)
    fields.done()
    report = ConformanceReport(
        date=date,
        plugin_version=plugin_version,
        pytest_version=pytest_version,
        python_version=python_version,
        mesh=mesh,
        duration=duration,
        exit_status=exit_status,
        suites=tuple(suites),
        collection_errors=tuple(collection_errors),
        faults=faults,
    )
    _check_derived(fields.data, report_to_dict(report))
    return report


def _check_derived(document: Mapping[object, object], rebuilt: Mapping[str, Any]) -> None:
    """The derived fields of a document must be what its tests say (``summary`` is free text)."""
    checks: list[tuple[str, object, object]] = [
        (key, document.get(key), rebuilt[key])
        for key in ("result", "statistics", "features", "failedTests", "skippedTests")
    ]
    documented_suites = cast(list[dict[str, object]], document["suites"])
    for index, (suite, rebuilt_suite) in enumerate(
        zip(documented_suites, rebuilt["suites"], strict=True)
    ):
        checks += [
            (f"suites[{index}].{key}", suite.get(key), rebuilt_suite[key])
            for key in ("result", "statistics", "features")
        ]
    if not isinstance(document.get("summary"), str):
        raise ReportError(f"summary: expected a string, got {_kind(document.get('summary'))}")
    for where, found, expected in checks:
        mismatch = _first_mismatch(found, expected, where)
        if mismatch is not None:
            raise ReportError(mismatch)


def _first_mismatch(found: object, expected: object, where: str) -> str | None:
    if isinstance(expected, dict):
        if not isinstance(found, dict):
            return f"{where}: expected a mapping, got {_kind(found)}"
        for key in found:
            if key not in expected:
                return f"{where}.{key}: unknown field"
        for key, value in expected.items():
            if key not in found:
                return f"{where}.{key}: missing"
            mismatch = _first_mismatch(found[key], value, f"{where}.{key}")
            if mismatch is not None:
                return mismatch
        return None
    if type(found) is not type(expected) or found != expected:
        return f"{where}: {found!r} does not agree with the tests (expected {expected!r})"
    return None


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


# --- Test ids and evidence archives ---------------------------------------------------------


def _split_nodeid(nodeid: str) -> tuple[str, tuple[str, ...], str]:
    """``file::Class::test[param]`` -> (file, classes, name)."""
    parts = nodeid.split("::")
    if len(parts) == 1:
        return nodeid, (), PurePosixPath(nodeid).name or nodeid
    return parts[0], tuple(parts[1:-1]), parts[-1]


def _module_suite_name(file: str) -> str:
    stem = PurePosixPath(file).stem
    if stem.startswith("test_") and len(stem) > len("test_"):
        return stem[len("test_") :]
    if stem.endswith("_test") and len(stem) > len("_test"):
        return stem[: -len("_test")]
    return stem or file


def assign_test_ids(nodeids: Sequence[str]) -> dict[str, tuple[str, str, str, str]]:
    """Map node ids to (suite, test id, test name, file) that survive a change of checkout.

    A suite is the module name without its ``test_`` prefix (``conformance/test_strict.py`` ->
    ``strict``), plus ``::Class`` for tests in a class; a test id is ``suite::name``. Node ids
    depend on the rootdir (an installed wheel puts the suites under site-packages), these do not.
    Modules that share a name in one run fall back to their path (without ``.py``).
    """
    files_by_name: dict[str, set[str]] = {}
    for nodeid in nodeids:
        file = _split_nodeid(nodeid)[0]
        files_by_name.setdefault(_module_suite_name(file), set()).add(file)
    assigned: dict[str, tuple[str, str, str, str]] = {}
    taken: set[str] = set()
    for nodeid in nodeids:
        file, classes, name = _split_nodeid(nodeid)
        module = _module_suite_name(file)
        if len(files_by_name[module]) > 1:
            module = file.removesuffix(PurePosixPath(file).suffix) or file
        suite = "::".join((module, *classes))
        test_id = f"{suite}::{name}"
        unique, n = test_id, 2
        while unique in taken:
            unique, n = f"{test_id} #{n}", n + 1
        taken.add(unique)
        assigned[nodeid] = (suite, unique, name, file)
    return assigned


_UNSAFE_NAME_RE: Final = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, max_length: int = 120) -> str:
    """A file name made from text (a node id, an evidence label): portable, never empty.

    Too-long names keep their start and end in a hash of the whole, so they stay distinct.
    """
    cleaned = _UNSAFE_NAME_RE.sub("_", text.replace("::", "__")).strip("._") or "_"
    if len(cleaned) > max_length:
        digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        cleaned = f"{cleaned[: max_length - len(digest) - 1]}-{digest}"
    return cleaned


def _file_name_for(label: str, source: Path | None, taken: set[str]) -> str:
    """A file name for one piece of evidence: the label, with the source's suffix (.pcap)."""
    suffix = ".txt" if source is None else source.suffix
    base = safe_name(label, max_length=100).removesuffix(suffix)
    name, n = f"{base}{suffix}", 2
    while name in taken or name == _EVIDENCE_MARKER:
        name, n = f"{base}-{n}{suffix}", n + 1
    taken.add(name)
    return name


@dataclass
class _Archive:
    """Evidence already handled for one test item: files by label, and what could not be kept."""

    directory: Path | None
    files: dict[str, Path] = dataclasses.field(default_factory=dict)
    texts: set[str] = dataclasses.field(default_factory=set)
    unavailable: set[str] = dataclasses.field(default_factory=set)
    names: set[str] = dataclasses.field(default_factory=set)


_archive_key: Final = pytest.StashKey[_Archive]()


def _archive_directory(root: Path, nodeid: str, used: dict[Path, str]) -> Path:
    """``<artifacts>/<safe nodeid>/``: fresh, never shared with another test of the run.

    A directory left by an earlier run (it holds our marker file) is cleared, since stale
    evidence misleads; one that is not ours is never touched: a hashed name is used instead.
    """
    base = safe_name(nodeid)
    digest = hashlib.sha256(nodeid.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    names = itertools.chain(
        (base, f"{base}-{digest}"), (f"{base}-{digest}-{n}" for n in itertools.count(2))
    )
    for name in names:
        candidate = root / name
        owner = used.get(candidate)
        if owner == nodeid:
            return candidate
        marker = candidate / _EVIDENCE_MARKER
        if owner is not None or (candidate.exists() and not marker.is_file()):
            continue
        if candidate.exists():
            shutil.rmtree(candidate)
        candidate.mkdir(parents=True)
        os.chmod(candidate, 0o700)  # evidence (plaintext payloads, keys' certs): the user's only
        marker.write_text(nodeid + "\n", encoding="utf-8")
        used[candidate] = nodeid
        return candidate
    raise AssertionError("unreachable: itertools.count never ends")  # pragma: no cover


def _tail(text: str, where: Path | None) -> str:
    lines = text.splitlines()
    if len(lines) <= _MAX_SECTION_LINES:
        return text.rstrip("\n")
    omitted = len(lines) - _MAX_SECTION_LINES
    note = f"[{omitted} earlier lines omitted; "
    note += f"full text in {where}]" if where is not None else "keep it with --mesh-artifacts=DIR]"
    return "\n".join([note, *lines[-_MAX_SECTION_LINES:]])


def _archive_new_evidence(
    evidence: Evidence, archive: _Archive
) -> tuple[list[str], dict[str, str]]:
    """Copy the files and write the texts not yet archived for this test.

    Returns a "label: path" line per new piece of evidence (or why it could not be kept) and the
    new texts, to be shown with the failure.
    """
    listing: list[str] = []
    for label, source in evidence.files.items():
        if label in archive.files or label in archive.unavailable:
            continue
        target = source
        try:
            if archive.directory is not None:
                target = archive.directory / _file_name_for(label, source, archive.names)
                if source.is_dir():
                    shutil.copytree(source, target)
                else:
                    shutil.copy2(source, target)
            elif not source.exists():
                raise FileNotFoundError(f"no such file: {source}")
        except OSError as error:
            archive.unavailable.add(label)
            listing.append(f"{label}: {source} (not kept: {error})")
            continue
        archive.files[label] = target
        listing.append(f"{label}: {target}")
    for label, (data, suffix) in evidence.blobs.items():
        # Data too large for the terminal (config dumps): files under --mesh-artifacts only.
        if archive.directory is None or label in archive.files:
            continue
        target = archive.directory / _file_name_for(label, Path(f"data{suffix}"), archive.names)
        target.write_bytes(data)
        archive.files[label] = target
        listing.append(f"{label}: {target}")
    new_texts: dict[str, str] = {}
    for text_label, text in evidence.texts.items():
        if text_label in archive.texts:
            continue
        archive.texts.add(text_label)
        # Files and texts are labelled independently: keep a text apart from a file's label.
        label = text_label if text_label not in evidence.files else f"{text_label} (text)"
        new_texts[label] = text
        if archive.directory is not None:
            target = archive.directory / _file_name_for(label, None, archive.names)
            target.write_text(text, encoding="utf-8")
            archive.files[label] = target
            listing.append(f"{label}: {target}")
    return listing, new_texts


# --- The pytest plugin ----------------------------------------------------------------------


@dataclass
class _Record:
    """What is known of one test item while the run goes on."""

    nodeid: str
    suite: str
    test_id: str
    name: str
    file: str
    features: tuple[str, ...] = ()
    min_mesh_version: str | None = None
    mesh_wide: bool = False
    outcome: Outcome | None = None
    phase: Phase | None = None
    message: str | None = None
    duration: float = 0.0
    archive: _Archive | None = None
    infrastructure: bool = False
    description: str | None = None
    observations: Observations | None = None

    def fold(self, report: pytest.TestReport) -> None:
        """Take one phase's report into account (pytest's own rules for xfail and errors)."""
        self.duration += report.duration
        xfail = hasattr(report, "wasxfail")
        if infrastructure_problem_of(report) is not None:  # health.py: a sidecar died
            if not self.infrastructure:
                self.outcome, self.phase, self.message = "error", report.when, _message_of(report)
                self.infrastructure = True
            return
        if report.when == "teardown":
            if report.failed and self.outcome not in FAILING:
                self.outcome, self.phase, self.message = "error", "teardown", _message_of(report)
            return
        if report.failed:
            if report.when == "setup":
                self.outcome, self.phase = "error", "setup"
            else:
                self.outcome = "failed"
            self.message = _message_of(report)
        elif report.skipped:
            self.outcome = "xfailed" if xfail else "skipped"
            self.message = _message_of(report)
        elif report.when == "call":
            self.outcome = "xpassed" if xfail else "passed"
            self.message = _message_of(report) if xfail else None


def description_of(item: pytest.Item) -> str | None:
    """A test's description in every report format: its docstring (cleaned), else None."""
    import inspect

    obj = getattr(item, "obj", None)
    doc = inspect.getdoc(obj) if obj is not None else None
    return doc.strip() or None if doc else None


def _message_of(report: pytest.TestReport) -> str | None:
    """The failure's crash line, the skip reason or the xfail reason, as pytest shows it."""
    wasxfail = getattr(report, "wasxfail", None)
    if isinstance(wasxfail, str):
        text: str | None = wasxfail or None
    elif report.skipped and isinstance(report.longrepr, tuple):
        text = str(report.longrepr[2]).removeprefix("Skipped: ")
    elif report.longrepr is None:
        text = None
    else:
        crash = getattr(report.longrepr, "reprcrash", None)
        text = str(getattr(crash, "message", "")) or str(report.longrepr)
    if text and len(text) > _MAX_MESSAGE_CHARS:
        text = text[: _MAX_MESSAGE_CHARS - 15] + " ...[truncated]"
    return text or None


def _attach(report: pytest.TestReport, title: str, content: str) -> None:
    """Show content with the failure, in the terminal and in JUnit's <failure>/<error> text.

    pytest's JUnit writer exports only "Captured ..." report sections (and only with
    junit_logging), but always the failure text: sections of the failure's representation
    reach both places. Representations without sections fall back to report sections.
    """
    longrepr = report.longrepr
    addsection = getattr(longrepr, "addsection", None)
    if callable(addsection):
        addsection(title, content)
    elif isinstance(longrepr, str):
        report.longrepr = f"{longrepr}\n{f' {title} '.center(80, '-')}\n{content}"
    else:
        report.sections.append((title, content))


class MeshReportPlugin:
    """Collects per-test results and evidence; writes the report and the baseline comparison."""

    def __init__(
        self,
        config: pytest.Config,
        settings: MeshSettings,
        baseline: ConformanceReport | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.baseline = baseline
        self.records: dict[str, _Record] = {}
        self.collection_errors: list[CollectionError] = []
        self.started = time.monotonic()
        self.report: ConformanceReport | None = None
        self.diff: ReportDiff | None = None
        self.write_error: str | None = None
        self.archive_errors: list[str] = []
        self._directories: dict[Path, str] = {}

    # -- collection ------------------------------------------------------------------------

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.started = time.monotonic()

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            text = str(report.longrepr) if report.longrepr is not None else "collection failed"
            self.collection_errors.append(CollectionError(report.nodeid or ".", text))

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        ids = assign_test_ids([item.nodeid for item in session.items])
        for item in session.items:
            suite, test_id, name, file = ids[item.nodeid]
            features = {str(f) for m in item.iter_markers("mesh_features") for f in m.args} - {""}
            min_version = item.get_closest_marker("mesh_min_version")
            self.records[item.nodeid] = _Record(
                nodeid=item.nodeid,
                suite=suite,
                test_id=test_id,
                name=name,
                file=file,
                features=tuple(sorted(features)),
                min_mesh_version=(
                    str(min_version.args[0]) or None if min_version and min_version.args else None
                ),
                mesh_wide=item.get_closest_marker("mesh_wide") is not None,
                description=description_of(item),
            )
            description = self.records[item.nodeid].description
            if description is not None and self._junit_testcase_properties:
                # JUnit too: a <property name="description"> per test case (xunit1 and legacy
                # only: the xunit2 schema, pytest's default, has no test case properties).
                item.user_properties.append(("description", description))

    @property
    def _junit_testcase_properties(self) -> bool:
        return bool(self.config.option.xmlpath) and self.config.getini("junit_family") != "xunit2"

    def _record(self, nodeid: str) -> _Record:
        record = self.records.get(nodeid)
        if record is None:  # an item pytest ran without collecting it here (e.g. a re-run)
            suite, test_id, name, file = assign_test_ids([*self.records, nodeid])[nodeid]
            record = self.records[nodeid] = _Record(nodeid, suite, test_id, name, file)
        return record

    # -- running ---------------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        # Outermost wrapper: every other plugin (xfail, evidence-adding fixtures' hooks) is done.
        report = yield
        if report.failed:
            self._attach_evidence(item, report)
        if report.when == "teardown":
            from .evidence import evidence_key

            evidence = item.stash.get(evidence_key, None)
            if evidence is not None and evidence.observed:
                self._record(item.nodeid).observations = evidence.observed
            if (
                evidence is not None
                and self.settings.artifacts is not None
                and not report.failed
                and self._record(item.nodeid).outcome not in FAILING
            ):
                self._archive_passing(item, evidence)
        return report

    def _archive_passing(self, item: pytest.Item, evidence: Evidence) -> None:
        """Under --mesh-artifacts a test that did not fail keeps its evidence too (pcaps,
        texts, a summary of what it saw): proof of a pass, not only of a failure."""
        if not (evidence.files or evidence.texts) or self.settings.artifacts is None:
            return
        if evidence.observed and "summary" not in evidence.texts:
            evidence.texts = {"summary": evidence.observed.summary(), **evidence.texts}
        try:
            directory = _archive_directory(self.settings.artifacts, item.nodeid, self._directories)
            archive = item.stash[_archive_key] = _Archive(directory)
            self._record(item.nodeid).archive = archive
            _archive_new_evidence(evidence, archive)
        except OSError as error:  # a full disk must not turn a pass into INTERNALERROR
            self._record(item.nodeid).archive = None
            self.archive_errors.append(f"{item.nodeid}: could not archive the evidence: {error}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report.nodeid).fold(report)

    def _attach_evidence(self, item: pytest.Item, report: pytest.TestReport) -> None:
        from .evidence import evidence_key

        evidence = item.stash.get(evidence_key, None)
        if evidence is None or not (evidence.files or evidence.texts or evidence.blobs):
            return
        archive = item.stash.get(_archive_key, None)
        try:
            if archive is None:
                directory = None
                if self.settings.artifacts is not None:
                    directory = _archive_directory(
                        self.settings.artifacts, item.nodeid, self._directories
                    )
                archive = item.stash[_archive_key] = _Archive(directory)
                self._record(item.nodeid).archive = archive
            listing, new_texts = _archive_new_evidence(evidence, archive)
        except OSError as error:  # a full disk must not turn a test failure into INTERNALERROR
            _attach(report, "meshconform evidence", f"could not archive the evidence: {error}")
            return
        if listing and archive.directory is None and evidence.files:
            listing.append("(files may be temporary: keep them with --mesh-artifacts=DIR)")
        summary = new_texts.pop("summary", None)
        if summary is not None:  # what the test did and saw comes first
            _attach(report, "meshconform evidence: summary", summary)
        if listing:
            _attach(report, "meshconform evidence", "\n".join(listing))
        for label, text in new_texts.items():
            _attach(report, f"meshconform evidence: {label}", _tail(text, archive.files.get(label)))

    # -- the end -----------------------------------------------------------------------------

    def build_report(self, exit_status: int) -> ConformanceReport:
        """The report of the run so far; collected tests without a result are ``notrun``."""
        report_dir = None if self.settings.report is None else self.settings.report.parent

        def shown(path: Path) -> str:
            absolute = Path(os.path.abspath(path))
            if report_dir is not None:
                try:
                    return absolute.relative_to(os.path.abspath(report_dir)).as_posix()
                except ValueError:
                    pass
            return str(absolute)

        suites: dict[str, tuple[str, list[TestResult]]] = {}
        for record in self.records.values():
            evidence = None
            if record.archive is not None and (
                record.outcome in FAILING or record.archive.directory is not None
            ):
                evidence = EvidenceRecord(
                    directory=(
                        None
                        if record.archive.directory is None
                        else shown(record.archive.directory)
                    ),
                    files=tuple((label, shown(p)) for label, p in record.archive.files.items()),
                )
            test = TestResult(
                id=record.test_id,
                name=record.name,
                nodeid=record.nodeid,
                outcome=record.outcome or "notrun",
                duration=round(record.duration, 3),
                phase=record.phase,
                infrastructure=record.infrastructure,
                message=record.message,
                features=record.features,
                min_mesh_version=record.min_mesh_version,
                mesh_wide=record.mesh_wide,
                evidence=evidence,
                description=record.description,
                observations=record.observations,
            )
            suites.setdefault(record.suite, (record.file, []))[1].append(test)
        from . import __version__

        return ConformanceReport(
            date=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            plugin_version=__version__,
            pytest_version=pytest.__version__,
            python_version=".".join(map(str, sys.version_info[:3])),
            mesh=MeshRecord.of(self.config.stash.get(mesh_info_key, None), self.settings.cluster),
            duration=round(time.monotonic() - self.started, 3),
            exit_status=exit_status,
            suites=tuple(
                SuiteResult(name, file, tuple(tests)) for name, (file, tests) in suites.items()
            ),
            collection_errors=tuple(self.collection_errors),
            faults=self.settings.faults,
        )

    def _add_junit_properties(self) -> None:
        from _pytest.junitxml import xml_key

        xml = self.config.stash.get(xml_key, None)
        if xml is None:
            return
        from . import __version__

        info = self.config.stash.get(mesh_info_key, None)
        xml.add_global_property("meshconform.version", __version__)
        xml.add_global_property("mesh.backend", info.backend if info else self.settings.cluster)
        if info is not None:
            xml.add_global_property("mesh.name", info.name)
            xml.add_global_property("mesh.version", info.version)
            xml.add_global_property("mesh.trust_domain", info.trust_domain)
            if info.revision:
                xml.add_global_property("mesh.revision", info.revision)

    @pytest.hookimpl(tryfirst=True)  # before the JUnit writer's own sessionfinish writes the file
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self._add_junit_properties()
        if self.config.option.collectonly:
            return
        report = self.build_report(int(session.exitstatus))
        if self.baseline is not None:
            self.diff = diff_reports(self.baseline, report)
            if self.diff.failed and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
                report = dataclasses.replace(report, exit_status=int(session.exitstatus))
        self.report = report
        if self.settings.report is not None:
            try:
                write_report(report, self.settings.report)
            except OSError as error:
                self.write_error = f"cannot write {self.settings.report}: {error}"
                if session.exitstatus == pytest.ExitCode.OK:
                    session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.diff is not None and self.settings.baseline is not None:
            terminalreporter.write_sep(
                "=", "meshconform: comparison with baseline", red=self.diff.failed
            )
            lines = format_diff(self.diff, str(self.settings.baseline), "this run")
            for line in lines[:-1]:
                terminalreporter.write_line(line)
            terminalreporter.write_line(lines[-1], red=self.diff.failed, green=not self.diff.failed)
            if self.diff.failed:
                terminalreporter.write_line(
                    "meshconform: the run fails: regressions against the baseline", red=True
                )
        for error in self.archive_errors:
            terminalreporter.write_line(f"meshconform: evidence: {error}", red=True)
        if self.write_error is not None:
            terminalreporter.write_line(f"meshconform: report: {self.write_error}", red=True)
        elif self.report is not None and self.settings.report is not None:
            terminalreporter.write_sep(
                "-",
                f"meshconform report: {self.settings.report}"
                f" ({self.report.result}: {self.report.summary})",
            )
        if self.settings.artifacts is not None and self._directories:
            terminalreporter.write_sep(
                "-", f"meshconform evidence of failed tests: {self.settings.artifacts}"
            )


def configure(config: pytest.Config) -> None:
    """Register the report plugin for this run; read the baseline now, so a bad one stops early."""
    from .plugin import mesh_settings_key

    settings = config.stash[mesh_settings_key]
    baseline = None
    if settings.baseline is not None:
        try:
            baseline = load_report(settings.baseline)
        except ReportError as error:
            raise pytest.UsageError(f"--mesh-baseline: {error}") from None
    if not config.pluginmanager.has_plugin(PLUGIN_NAME):
        config.pluginmanager.register(MeshReportPlugin(config, settings, baseline), PLUGIN_NAME)
