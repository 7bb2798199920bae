"""The conformance report's model: frozen dataclasses and what is derived from them.

A ``ConformanceReport`` holds the mesh under test, the plugin and its versions, and per suite
and per test what happened; statistics, results (Gateway API's success/partial/failure),
summary and feature lists are derived from the tests. No I/O here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from pytest_meshconform.mesh import MeshInfo
from pytest_meshconform.report.observations import Observations

API_VERSION: Final = "meshconform/v1alpha1"
KIND: Final = "ConformanceReport"

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
# Exit statuses under which a run's result is its tests' (pytest's OK and NO_TESTS_COLLECTED);
# any other fails the run, whatever its tests say.
RESULT_FROM_TESTS: Final = frozenset({0, 5})
# For comparing runs: did the behaviour a test checks hold? An expected failure (xfailed) is
# still a failure of that behaviour: a test that passed before and xfails now is a regression.
PASSING: Final = frozenset({"passed", "xpassed"})
BROKEN: Final = FAILING | {"xfailed"}


class ReportError(ValueError):
    """A conformance report cannot be read; the message names the file and the field."""


# --- The model ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EvidenceRecord:
    """Where the evidence of one test is: the archive directory and each file by label.

    Paths are relative to the report's directory when they lie under it, else absolute.
    ``directory`` is None when the run had no ``--mesh-artifacts`` (files stay where the
    fixtures left them, and are listed only if they still exist when the report is written);
    only a failed test has evidence then. Under ``--mesh-artifacts`` every test with evidence
    (pcaps, texts) has a directory.
    """

    directory: str | None
    files: tuple[tuple[str, str], ...]  # (label, path), in the order the fixtures added them
    # Labels of evidence files the report cannot point at: without --mesh-artifacts, files the
    # mesh removed at the end of the run; with it, files that could not be copied.
    not_kept: tuple[str, ...] = ()

    @property
    def not_kept_reason(self) -> str:
        """Why the files of ``not_kept`` are not listed, for a person."""
        if self.directory is None:
            return f"removed at the end of the run; {KEEP_EVIDENCE}"
        return "could not be copied into the evidence directory (the run's output says why)"


KEEP_EVIDENCE: Final = "keep evidence with --mesh-artifacts=DIR"


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


def _result_of(statistics: Statistics, collection_errors: int = 0, exit_status: int = 0) -> Result:
    """Gateway API's three results: failure if anything failed, partial if anything did not run.

    A run's result agrees with its exit status too: a run that failed, was interrupted or
    stopped (any status but 0 and pytest's 5, "no tests collected") is a failure whatever its
    tests say (regressions against a baseline, every mesh test skipped, Ctrl-C).
    """
    if statistics.failed or statistics.errors or collection_errors:
        return "failure"
    if exit_status not in RESULT_FROM_TESTS:
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


Dataplane = Literal["sidecar", "ambient", "none"]
DATAPLANES: Final[tuple[Dataplane, ...]] = ("sidecar", "ambient", "none")


@dataclass(frozen=True, slots=True)
class WorkloadRecord:
    """One workload of the mesh under test: its data plane and its container ports (each port
    is served on that data plane: behind a sidecar, behind ztunnel, or bare)."""

    name: str
    namespace: str  # as the suites spell it (foo), not a backend's run namespace
    dataplane: Dataplane
    ports: tuple[int, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.name}.{self.namespace}"

    def describe(self) -> str:
        """``httpbin.foo: ambient (8080)``."""
        ports = f" ({', '.join(map(str, self.ports))})" if self.ports else ""
        return f"{self.key}: {self.dataplane}{ports}"


@dataclass(frozen=True, slots=True)
class MeshRecord:
    """The mesh under test; ``used`` is False when no test asked for a mesh."""

    used: bool
    backend: str
    name: str | None = None
    version: str | None = None
    trust_domain: str | None = None
    revision: str | None = None
    # each workload's data plane and ports (both meshes' with --mesh-dataplane=both)
    workloads: tuple[WorkloadRecord, ...] = ()

    @classmethod
    def of(cls, info: MeshInfo | None, backend: str) -> MeshRecord:
        if info is None:
            return cls(used=False, backend=backend)
        workloads = tuple(
            WorkloadRecord(name, namespace, _dataplane(plane), ports)
            for name, namespace, plane, ports in info.workloads
        )
        return cls(
            True,
            info.backend,
            info.name,
            info.version,
            info.trust_domain,
            info.revision,
            workloads,
        )

    @property
    def dataplanes(self) -> tuple[Dataplane, ...]:
        """The mesh data planes its workloads ran on (sidecar, ambient), in that order."""
        planes = {w.dataplane for w in self.workloads}
        return tuple(p for p in DATAPLANES if p in planes and p != "none")

    def describe(self) -> str:
        if not self.used:
            return f"no mesh used ({self.backend})"
        revision = f", revision {self.revision}" if self.revision else ""
        # a run with ambient workloads says so (sidecar-only runs read as they always did)
        planes = (
            f", data planes: {' + '.join(self.dataplanes)}" if "ambient" in self.dataplanes else ""
        )
        return f"{self.name} {self.version} ({self.backend}{revision}{planes})"


def _dataplane(value: str) -> Dataplane:
    for plane in DATAPLANES:
        if plane == value:
            return plane
    raise ReportError(f"unknown data plane {value!r}; known: {', '.join(DATAPLANES)}")


@dataclass(frozen=True, slots=True)
class CollectionError:
    """A test file or class that could not be collected: its tests are missing from the run."""

    nodeid: str
    message: str


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """One test whose outcome differs from the baseline's, matched by test id.

    ``was`` is None for a test new in this run, ``now`` None for one the baseline had and this
    run has not. The baseline's phase and infrastructure flag are kept (this run's are in its
    test); this run's message and evidence are its test's.
    """

    id: str
    was: Outcome | None
    now: Outcome | None
    was_phase: Phase | None = None
    was_infrastructure: bool = False


ComparisonResult = Literal["fail", "infrastructure", "ok"]


@dataclass(frozen=True, slots=True)
class BaselineComparison:
    """A run against ``--mesh-baseline``: what changed, kept in the report for every reader.

    The categories are ``diff_reports``'s (``report.diff``): regressions fail the run, a
    change in which either run had an infrastructure error is no evidence either way.
    """

    baseline: str  # the baseline report, as --mesh-baseline named it
    date: str  # the baseline's date
    mesh: str  # the baseline's mesh, described ("istio 1.24.2 (local)")
    summary: str  # the baseline's summary
    faults: tuple[str, ...] = ()  # test-only faults of the baseline run
    regressions: tuple[ChangeRecord, ...] = ()
    infrastructure: tuple[ChangeRecord, ...] = ()
    fixes: tuple[ChangeRecord, ...] = ()
    newly_skipped: tuple[ChangeRecord, ...] = ()
    other_changes: tuple[ChangeRecord, ...] = ()
    new_tests: tuple[ChangeRecord, ...] = ()
    removed_tests: tuple[ChangeRecord, ...] = ()
    new_collection_errors: tuple[CollectionError, ...] = ()
    fixed_collection_errors: tuple[CollectionError, ...] = ()

    @property
    def failed(self) -> bool:
        """A regression, or a file that no longer collects (its tests vanished)."""
        return bool(self.regressions or self.new_collection_errors)

    @property
    def result(self) -> ComparisonResult:
        return "fail" if self.failed else "infrastructure" if self.infrastructure else "ok"


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
    comparison: BaselineComparison | None = None  # against --mesh-baseline, when given
    # Why the run failed beyond what its tests say ("all 2 mesh test(s) were skipped because
    # ..."): only with a non-zero exit status.
    reasons: tuple[str, ...] = ()

    @property
    def tests(self) -> tuple[TestResult, ...]:
        return tuple(test for suite in self.suites for test in suite.tests)

    @property
    def statistics(self) -> Statistics:
        return Statistics.of(self.tests)

    @property
    def result(self) -> Result:
        """The tests' result, a failure whenever the run's exit status says it failed."""
        return _result_of(self.statistics, len(self.collection_errors), self.exit_status)

    @property
    def summary(self) -> str:
        """The tests' counts, then how the run ended when they do not say it all:
        ``3 passed, 1 xfailed; the run failed: regressions against the baseline``."""
        counts = summary_of(self.statistics, len(self.collection_errors))
        statistics = self.statistics
        ran = (
            statistics.passed
            + statistics.failed
            + statistics.errors
            + statistics.xfailed
            + statistics.xpassed
        )
        if statistics.total and not ran:
            counts += ": nothing was tested"
        verdict = self.verdict
        return f"{counts}; {verdict}" if verdict else counts

    @property
    def verdict(self) -> str | None:
        """How the run ended, in words, when its tests' counts do not say it: None for a run
        whose exit status is its tests' own."""
        status = self.exit_status
        reasons = list(self.reasons)
        if self.comparison is not None and self.comparison.failed:
            reasons.insert(0, "regressions against the baseline")
        if status == 1:
            if reasons:
                return f"the run failed: {'; '.join(reasons)}"
            if self.statistics.failed or self.statistics.errors or self.collection_errors:
                return None
            return "the run failed (exit status 1) although no test failed: see its output"
        if status in RESULT_FROM_TESTS:
            return None
        said = "; ".join(reasons)
        ended = _ENDINGS.get(status, f"the run ended with exit status {status}")
        if status == 2 and self.collection_errors:  # pytest stops before a test runs
            ended = "the run stopped at its collection errors"
        return f"{ended}: {said}" if said else ended

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


# How a run that did not end on its own ended, by pytest's exit status.
_ENDINGS: Final = {
    2: "the run was interrupted",
    3: "the run stopped on an internal error",
    4: "the run stopped on a usage error",
}


def summary_of(statistics: Statistics, collection_errors: int = 0) -> str:
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
