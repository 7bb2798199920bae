"""The pytest side of the report: the hooks of ``MeshReportPlugin``, registered by ``configure``.

Folds each test's phase reports into a result, archives and attaches the evidence of failed
tests (and of passing ones under ``--mesh-artifacts``), writes the report, adds JUnit testsuite
properties, and compares with a baseline.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pytest

from pytest_meshconform.mesh import MeshInfo
from pytest_meshconform.plugin.health import infrastructure_problem_of
from pytest_meshconform.plugin.interrupts import interrupted
from pytest_meshconform.report.archive import (
    EvidenceArchive,
    archive_directory,
    archive_new_evidence,
    assign_test_ids,
    evidence_record,
    replace_paths,
    section_tail,
)
from pytest_meshconform.report.diff import ReportDiff, comparison_lines, comparison_of, diff_reports
from pytest_meshconform.report.formats import load_report, write_report
from pytest_meshconform.report.model import (
    FAILING,
    KEEP_EVIDENCE,
    CollectionError,
    ConformanceReport,
    MeshRecord,
    Outcome,
    Phase,
    ReportError,
    Statistics,
    SuiteResult,
    TestResult,
    summary_of,
)
from pytest_meshconform.report.observations import Observations

if TYPE_CHECKING:
    from pytest_meshconform.report.exhibits import Evidence
    from pytest_meshconform.settings import MeshSettings

PLUGIN_NAME: Final = "meshconform-report"
_MAX_MESSAGE_CHARS: Final = 4000

mesh_info_key: Final = pytest.StashKey[MeshInfo]()
"""``config.stash[mesh_info_key]``: set by the ``mesh`` fixture once the mesh is up."""

archive_key: Final = pytest.StashKey[EvidenceArchive]()
"""``item.stash[archive_key]``: what of a test's evidence is archived (``--mesh-artifacts``)."""


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
    archive: EvidenceArchive | None = None
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


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0].strip()[:_MAX_MESSAGE_CHARS] if lines else ""


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


_TEMPORARY: Final = "(files may be temporary: keep them with --mesh-artifacts=DIR)"


def _replace_section(report: pytest.TestReport, title: str, text: str, new_text: str) -> None:
    """Replace the content of a section `_attach` added (wherever it went)."""
    sections = getattr(report.longrepr, "sections", None)
    if isinstance(sections, list):
        sections[:] = [
            (name, new_text, *rest) if name == title and content == text else (name, content, *rest)
            for name, content, *rest in sections
        ]
    elif isinstance(report.longrepr, str):
        report.longrepr = report.longrepr.replace(text, new_text)
    report.sections = [
        (name, new_text if name == title and content == text else content)
        for name, content in report.sections
    ]


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
        self.stopped: str | None = None  # why the run stopped early, when it said so
        self._directories: dict[Path, str] = {}
        # failures' evidence listings without --mesh-artifacts: (report, text, label -> path)
        self._temporary: list[tuple[pytest.TestReport, str, dict[str, Path]]] = []

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
            from pytest_meshconform.report.exhibits import evidence_key

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
            directory = archive_directory(self.settings.artifacts, item.nodeid, self._directories)
            archive = item.stash[archive_key] = EvidenceArchive(directory)
            self._record(item.nodeid).archive = archive
            archive_new_evidence(evidence, archive)
        except OSError as error:  # a full disk must not turn a pass into INTERNALERROR
            self._record(item.nodeid).archive = None
            self.archive_errors.append(f"{item.nodeid}: could not archive the evidence: {error}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report.nodeid).fold(report)

    def _attach_evidence(self, item: pytest.Item, report: pytest.TestReport) -> None:
        from pytest_meshconform.report.exhibits import evidence_key

        evidence = item.stash.get(evidence_key, None)
        if evidence is None or not (evidence.files or evidence.texts or evidence.blobs):
            return
        archive = item.stash.get(archive_key, None)
        try:
            if archive is None:
                directory = None
                if self.settings.artifacts is not None:
                    directory = archive_directory(
                        self.settings.artifacts, item.nodeid, self._directories
                    )
                archive = item.stash[archive_key] = EvidenceArchive(directory)
                self._record(item.nodeid).archive = archive
            listing, new_texts = archive_new_evidence(evidence, archive)
        except OSError as error:  # a full disk must not turn a test failure into INTERNALERROR
            _attach(report, "meshconform evidence", f"could not archive the evidence: {error}")
            return
        if listing and archive.directory is None and evidence.files:
            listing.append(_TEMPORARY)
        summary = new_texts.pop("summary", None)
        if summary is not None:  # what the test did and saw comes first
            _attach(report, "meshconform evidence: summary", summary)
        if listing:
            _attach(report, "meshconform evidence", "\n".join(listing))
            if archive.directory is None:  # checked again once the mesh is gone
                self._temporary.append((report, "\n".join(listing), dict(archive.sources)))
        for label, text in new_texts.items():
            _attach(
                report,
                f"meshconform evidence: {label}",
                section_tail(text, archive.files.get(label)),
            )

    # -- the end -----------------------------------------------------------------------------

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        """Ctrl-C, a signal (`signals`: "SIGTERM: ending the run, ...") or `pytest.exit(msg)`:
        the report says why the run stopped, when the exception says it."""
        value = excinfo.value
        if isinstance(value, pytest.Session.Interrupted):
            return  # pytest's own stop ("1 error during collection"): the report says it
        said = getattr(value, "msg", None) if isinstance(value, pytest.exit.Exception) else value
        self.stopped = _first_line(str(said or "")) or None

    def pytest_internalerror(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        self.stopped = _first_line(f"{excinfo.typename}: {excinfo.value}")

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
            evidence, message = None, record.message
            if record.archive is not None and (
                record.outcome in FAILING or record.archive.directory is not None
            ):
                evidence, instead = evidence_record(record.archive, shown)
                message = replace_paths(message, instead)  # no path that is gone, copies' own
            test = TestResult(
                id=record.test_id,
                name=record.name,
                nodeid=record.nodeid,
                outcome=record.outcome or "notrun",
                duration=round(record.duration, 3),
                phase=record.phase,
                infrastructure=record.infrastructure,
                message=message,
                features=record.features,
                min_mesh_version=record.min_mesh_version,
                mesh_wide=record.mesh_wide,
                evidence=evidence,
                description=record.description,
                observations=record.observations,
            )
            suites.setdefault(record.suite, (record.file, []))[1].append(test)
        from pytest_meshconform.version import __version__

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
        from pytest_meshconform.version import __version__

        info = self.config.stash.get(mesh_info_key, None)
        xml.add_global_property("meshconform.version", __version__)
        xml.add_global_property("mesh.backend", info.backend if info else self.settings.cluster)
        if info is not None:
            xml.add_global_property("mesh.name", info.name)
            xml.add_global_property("mesh.version", info.version)
            xml.add_global_property("mesh.trust_domain", info.trust_domain)
            if info.revision:
                xml.add_global_property("mesh.revision", info.revision)

    def _say_what_is_gone(self) -> None:
        """The terminal prints failures after the session, once the mesh removed its files:
        a listed file that no longer exists says so instead of showing a dead path."""
        for report, text, sources in self._temporary:
            lines, gone = [], False
            for line in text.splitlines():
                label, _, path = line.partition(": ")
                source = sources.get(label)
                if source is not None and str(source) == path and not source.exists():
                    line, gone = f"{label}: not kept: removed at the end of the run", True
                lines.append(line)
            if gone:
                lines = [line for line in lines if line != _TEMPORARY] + [f"({KEEP_EVIDENCE})"]
                _replace_section(report, "meshconform evidence", text, "\n".join(lines))

    @pytest.hookimpl(tryfirst=True)  # before the JUnit writer's own sessionfinish writes the file
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self._say_what_is_gone()
        self._add_junit_properties()
        if self.config.option.collectonly:
            return
        if interrupted(self.config):  # a signal came before the report: it says so
            session.exitstatus = pytest.ExitCode.INTERRUPTED
        from pytest_meshconform.plugin.empties import fail_if_nothing_tested

        # The report says how the run ends: what fails it beyond its tests is decided first.
        nothing_tested = fail_if_nothing_tested(session)
        report = self.build_report(int(session.exitstatus))
        if self.baseline is not None and self.settings.baseline is not None:
            self.diff = diff_reports(self.baseline, report)
            if self.diff.failed and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            # Kept in the report, so its every format shows what changed, not only the terminal.
            report = dataclasses.replace(
                report, comparison=comparison_of(self.diff, str(self.settings.baseline))
            )
        unwritable = self._unwritable_pages()
        if unwritable and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        status = int(session.exitstatus)
        said = (self.stopped, nothing_tested, *unwritable)
        reasons = tuple(reason for reason in said if reason) if status else ()
        report = dataclasses.replace(report, exit_status=status, reasons=reasons)
        self.report = report
        if self.settings.report is not None:
            try:
                write_report(report, self.settings.report)
            except OSError as error:
                self.write_error = f"cannot write {self.settings.report}: {error}"
                if session.exitstatus == pytest.ExitCode.OK:
                    session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def end_as(self, exit_status: int) -> None:
        """A signal held while the run ended (`interrupts`): the report, already written,
        records the exit status the run ends with."""
        if self.report is None or self.report.exit_status == exit_status:
            return
        self.report = dataclasses.replace(self.report, exit_status=int(exit_status))
        if self.settings.report is not None and self.write_error is None:
            try:
                write_report(self.report, self.settings.report)
            except OSError as error:
                self.write_error = f"cannot write {self.settings.report}: {error}"

    def _unwritable_pages(self) -> list[str]:
        """The further reports (HTML, Markdown, copies of the record) `plugin.render` writes
        once the record is written: one that cannot be written fails the run, so the record
        and every page must say so. Checked again now (`check_outputs` did before the run: a
        test may have taken the path since), creating nothing."""
        from pytest_meshconform.outputs import OutputPathError, check_output_file

        problems = []
        for path in self.settings.extra_reports:
            try:
                check_output_file("cannot write", path)  # "cannot write PATH: why: the fix"
            except OutputPathError as error:
                problems.append(str(error))
        return problems

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        comparison = None if self.report is None else self.report.comparison
        if self.report is not None and comparison is not None:
            failed = comparison.failed
            terminalreporter.write_sep("=", "meshconform: comparison with baseline", red=failed)
            base = None if self.settings.report is None else self.settings.report.parent
            lines = comparison_lines(comparison, self.report, "this run", evidence_base=base)
            for line in lines[:-1]:
                terminalreporter.write_line(line)
            terminalreporter.write_line(lines[-1], red=failed, green=not failed)
            if failed:
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
            terminalreporter.write_sep("-", self._artifacts_line(self.settings.artifacts))

    def _artifacts_line(self, artifacts: Path) -> str:
        """Where the evidence is, and of which tests: ``(3 tests: 2 passed, 1 failed)``, the
        outcomes of the tests that kept evidence (not the run's: a failure may have kept none)."""
        kept = [r for r in self.records.values() if r.archive and r.archive.directory]
        tests = f"{len(kept)} test{'' if len(kept) == 1 else 's'}"
        outcomes = Statistics.of(
            TestResult(r.test_id, r.name, r.nodeid, r.outcome or "notrun", 0.0) for r in kept
        )
        return f"meshconform evidence: {artifacts} ({tests}: {summary_of(outcomes)})"


def configure(config: pytest.Config) -> None:
    """Register the report plugin for this run; read the baseline and check where the reports
    and the evidence go now, so a bad path stops the run before any mesh is brought up."""
    from pytest_meshconform.plugin.options import mesh_settings_key

    settings = config.stash[mesh_settings_key]
    baseline = None
    if settings.baseline is not None:
        try:
            baseline = load_report(settings.baseline)
        except ReportError as error:
            raise pytest.UsageError(f"--mesh-baseline: {error}") from None
    if not config.option.collectonly:  # --collect-only writes nothing
        check_outputs(config, settings)
    if not config.pluginmanager.has_plugin(PLUGIN_NAME):
        config.pluginmanager.register(MeshReportPlugin(config, settings, baseline), PLUGIN_NAME)


def check_outputs(config: pytest.Config, settings: MeshSettings) -> None:
    """Every ``--mesh-report`` and ``--mesh-artifacts`` path (and ``GITHUB_STEP_SUMMARY``) can
    be written (`outputs`), or a ``pytest.UsageError`` (exit 4): one line naming the path and
    the fix."""
    from pytest_meshconform.outputs import (
        OutputPathError,
        check_output_directory,
        check_output_file,
    )

    def spelled(name: str) -> str:
        given = config.getoption(f"mesh_{name}")
        return f"--mesh-{name}" if given else f"mesh_{name} (ini option)"

    try:
        for path in (settings.report, *settings.extra_reports):
            if path is not None:
                check_output_file(spelled("report"), path)
        if settings.artifacts is not None:
            check_output_directory(spelled("artifacts"), settings.artifacts)
        summary = os.environ.get("GITHUB_STEP_SUMMARY")  # appended to (plugin/render.py)
        if summary:
            check_output_file("GITHUB_STEP_SUMMARY", Path(summary))
    except OutputPathError as error:
        raise pytest.UsageError(str(error)) from None
