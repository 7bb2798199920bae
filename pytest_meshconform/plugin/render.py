"""The human-readable reports of a pytest run: ``--mesh-report=PATH.html`` / ``.md`` and the
brief Markdown appended to ``GITHUB_STEP_SUMMARY``.

The report plugin (`plugin.report`) builds the run's `ConformanceReport`; this one adds the
failure evidence the record does not keep (the logs of each failed test's window) and draws
it all with the pure renderer `report.render`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Generator
from pathlib import Path
from typing import Final

import pytest

from pytest_meshconform.report.model import ConformanceReport
from pytest_meshconform.report.render import (
    Block,
    Document,
    document_of,
    render_html,
    render_markdown,
)

__all__ = ["PLUGIN_NAME", "RenderPlugin", "configure"]

PLUGIN_NAME: Final = "meshconform-report-render"
_EVIDENCE_LINES: Final = 60


def _tail_lines(text: str, limit: int = _EVIDENCE_LINES) -> str:
    lines = text.rstrip("\n").splitlines()
    if len(lines) <= limit:
        return "\n".join(lines)
    return "\n".join([f"[{len(lines) - limit} earlier lines omitted]", *lines[-limit:]])


def _page_of(
    document: Document, report: ConformanceReport, page: Path, record: Path | None
) -> Document:
    """A page written elsewhere than the YAML/JSON record says where its evidence paths start:
    they are the record's, relative to the record's directory."""
    if record is None or os.path.abspath(page.parent) == os.path.abspath(record.parent):
        return document
    relative = any(
        not os.path.isabs(path)
        for test in report.tests
        if test.evidence is not None
        for path in (test.evidence.directory or "/", *(p for _, p in test.evidence.files))
    )
    if not relative:
        return document
    where = f"relative to {os.path.abspath(record.parent)} (the directory of {record.name})"
    return dataclasses.replace(document, header=(*document.header, ("Evidence paths", where)))


class RenderPlugin:
    """Writes the human-readable reports once the report plugin has built the run's report."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.evidence: dict[str, list[Block]] = {}
        self.written: list[str] = []
        self.errors: list[str] = []

    @pytest.hookimpl(wrapper=True, tryfirst=True)  # outer: the fixtures' evidence is complete
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if report.failed:
            from pytest_meshconform.report.exhibits import evidence_key

            evidence = item.stash.get(evidence_key, None)
            if evidence is not None:
                blocks = self.evidence.setdefault(item.nodeid, [])
                known = {block.label for block in blocks}
                blocks.extend(
                    Block(label, _tail_lines(text))
                    for label, text in evidence.texts.items()
                    if label != "summary" and label not in known
                )
        return report

    def _settings_lines(self) -> list[str]:
        from pytest_meshconform.plugin.options import backend_header_lines, mesh_settings_key

        settings = self.config.stash.get(mesh_settings_key, None)
        if settings is None:
            return []
        lines = [line.removeprefix("meshconform: ") for line in settings.header_lines()]
        # the backend's own ("meshconform kube: istio-namespace=..."): "kube: ..." in the row
        return [
            *lines,
            *(line.removeprefix("meshconform ") for line in backend_header_lines(self.config)),
        ]

    @pytest.hookimpl(trylast=True)  # after the report plugin built (and wrote) the report
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        from pytest_meshconform.outputs import append_file, write_file
        from pytest_meshconform.plugin.options import mesh_settings_key
        from pytest_meshconform.plugin.report import PLUGIN_NAME as REPORT_PLUGIN
        from pytest_meshconform.report import write_report
        from pytest_meshconform.settings import report_format_of

        built = getattr(self.config.pluginmanager.get_plugin(REPORT_PLUGIN), "report", None)
        settings = self.config.stash.get(mesh_settings_key, None)
        if built is None or settings is None:
            return
        document = document_of(built, settings=self._settings_lines(), evidence=self.evidence)
        for path in settings.extra_reports:
            page = _page_of(document, built, path, settings.report)
            try:
                if report_format_of(path) is not None:
                    write_report(built, path)
                else:
                    suffix = path.suffix.lower()
                    text = render_markdown(page) if suffix == ".md" else render_html(page)
                    write_file(path, text)
                self.written.append(str(path))
            except OSError as error:
                self.errors.append(f"cannot write {path}: {error}")
        summary_path = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary_path and built.mesh.used:
            try:
                append_file(Path(summary_path), render_markdown(document, brief=True) + "\n")
            except OSError as error:
                self.errors.append(f"cannot append to GITHUB_STEP_SUMMARY {summary_path}: {error}")
        if self.errors and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        for path in self.written:
            terminalreporter.write_line(f"meshconform report: {path}")
        for error in self.errors:
            terminalreporter.write_line(f"meshconform: report: {error}", red=True)


def configure(config: pytest.Config) -> None:
    """Register the renderer for this run (after `report.configure`)."""
    if not config.pluginmanager.has_plugin(PLUGIN_NAME):
        config.pluginmanager.register(RenderPlugin(config), PLUGIN_NAME)
