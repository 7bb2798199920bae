"""The report's YAML/JSON formats: serialisation and the strict loader.

``report_to_dict`` / ``dump_report`` / ``write_report`` write a report; ``parse_report`` /
``load_report`` read one back, checking every field, derived ones included, and naming the
offending field in a ``ReportError``. ``load_schema`` returns the shipped JSON Schema. YAML and
JSON are imported only when a report is written or read.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from pytest_meshconform.report.comparison import comparison_from_dict, comparison_to_dict
from pytest_meshconform.report.model import (
    API_VERSION,
    DATAPLANES,
    FAILING,
    KIND,
    OUTCOMES,
    PHASES,
    CollectionError,
    ConformanceReport,
    Dataplane,
    EvidenceRecord,
    MeshRecord,
    Outcome,
    Phase,
    ReportError,
    Statistics,
    SuiteResult,
    TestResult,
    WorkloadRecord,
)
from pytest_meshconform.report.observations import observations_from_dict

if TYPE_CHECKING:
    from pytest_meshconform.settings import ReportFormat

_DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


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
        if test.evidence.not_kept:
            evidence["notKept"] = list(test.evidence.not_kept)
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
    if mesh.workloads:
        data["workloads"] = [
            {
                "name": w.name,
                "namespace": w.namespace,
                "dataplane": w.dataplane,
                "ports": list(w.ports),
            }
            for w in mesh.workloads
        ]
    return data


def report_to_dict(report: ConformanceReport) -> dict[str, Any]:
    """The report as plain data (str, int, float, bool, list, dict), in document order."""
    run: dict[str, Any] = {"duration": report.duration, "exitStatus": report.exit_status}
    if report.faults:
        run["faults"] = list(report.faults)
    if report.reasons:
        run["reasons"] = list(report.reasons)
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
        **(
            {}
            if report.comparison is None
            else {"comparison": comparison_to_dict(report.comparison)}
        ),
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
    from pytest_meshconform.settings import REPORT_SUFFIXES, report_format_of

    report_format = report_format_of(path)
    if report_format is None:
        raise ReportError(
            f"{path}: unknown report format {path.suffix!r}; accepted suffixes:"
            f" {', '.join(REPORT_SUFFIXES)}"
        )
    return report_format


def write_report(report: ConformanceReport, path: Path) -> None:
    """Write the report to path (format from the suffix), creating parent directories.

    Written to a temporary file and renamed (`outputs.write_file`, mode 0600), so a reader
    never sees half a report and a failed write leaves nothing behind.
    """
    from pytest_meshconform.outputs import write_file

    write_file(path, dump_report(report, _format_of(path)))


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a report document, shipped with the package."""
    import json
    from importlib.resources import files

    text = files("pytest_meshconform.report").joinpath("schema.json").read_text()
    return cast(dict[str, Any], json.loads(text))


def load_report(path: Path) -> ConformanceReport:
    """Read and check a report file (.json, .yaml or .yml).

    Raises ReportError naming the file and, for a malformed document, the field.
    """
    from pytest_meshconform.userfiles import InputFileError, load_json, load_yaml, read_text

    report_format = _format_of(path)
    try:  # a regular file, UTF-8, capped; parsed linearly with bounded nesting (userfiles)
        text = read_text(path, "report")
        data = load_json(text, str(path)) if report_format == "json" else load_yaml(text, str(path))
    except InputFileError as error:
        raise ReportError(str(error)) from None
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
    not_kept = fields.texts("notKept", required=False)
    if "notKept" in fields.data and not not_kept:
        raise ReportError(f"{fields.at('notKept')}: omit the field instead of an empty list")
    fields.done()
    return EvidenceRecord(directory, tuple(pairs), not_kept)


def _parse_workloads(data: list[Any] | None) -> tuple[WorkloadRecord, ...]:
    if data is None:
        return ()
    if not data:
        raise ReportError("mesh.workloads: omit the field instead of an empty list")
    out = []
    for index, item in enumerate(data):
        fields = _Fields(item, f"mesh.workloads[{index}]")
        plane = fields.need_text("dataplane")
        if plane not in DATAPLANES:
            raise ReportError(
                f"{fields.at('dataplane')}: unknown data plane {plane!r};"
                f" known: {', '.join(DATAPLANES)}"
            )
        ports = fields.need("ports", list)
        if not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports):
            raise ReportError(f"{fields.at('ports')}: expected port numbers, got {ports!r}")
        out.append(
            WorkloadRecord(
                fields.need_text("name"),
                fields.need_text("namespace"),
                _known_plane(plane),
                tuple(ports),
            )
        )
        fields.done()
    return tuple(out)


def _known_plane(value: str) -> Dataplane:
    return next(p for p in DATAPLANES if p == value)


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
        workloads=_parse_workloads(fields.get("workloads", list, required=False)),
    )
    if not used:
        for key in ("name", "version", "trustDomain", "revision", "workloads"):
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
    reasons = run.texts("reasons", required=False)
    if "reasons" in run.data and not reasons:
        raise ReportError("run.reasons: omit the field instead of an empty list")
    if reasons and exit_status == 0:
        raise ReportError("run.reasons: a run that exited 0 did not fail (run.exitStatus 0)")
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
    fields.used.add("comparison")
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
        reasons=reasons,
    )
    _check_derived(fields.data, report_to_dict(report))
    if "comparison" in fields.data:  # checked against the report's own tests
        comparison = comparison_from_dict(fields.data["comparison"], report)
        report = dataclasses.replace(report, comparison=comparison)
    return report


def _check_derived(document: Mapping[object, object], rebuilt: Mapping[str, Any]) -> None:
    """The derived fields of a document must be what its tests (and for ``result`` its exit
    status) say; ``summary`` is free text."""
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
        with_status = " and run.exitStatus" if where == "result" else ""
        return (
            f"{where}: {found!r} does not agree with the tests{with_status} (expected {expected!r})"
        )
    return None
