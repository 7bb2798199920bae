"""Conformance reports, failure evidence and upgrade regression checks.

A run leaves a publishable record (``--mesh-report``), in the spirit of the Gateway API
``ConformanceReport``: which mesh was tested, with which plugin, when, and per suite and per test
what happened, plus where the evidence of each failure is. Two records are comparable
(``meshconform diff OLD NEW``, ``--mesh-baseline=OLD``) so that an upgrade shows, in one glance,
what it broke.

One module per concern; this package re-exports their public names:

- ``model``: the report model (frozen dataclasses) and what is derived from the tests;
- ``formats``: its serialisation (``report_to_dict``, YAML/JSON) and a strict loader
  (``parse_report``, ``load_report``) that checks a document, derived fields included, and
  names the offending field;
- ``diff``: ``diff_reports`` / ``format_diff``, pure comparison of two reports by test id, and
  ``comparison_of``, what a run with ``--mesh-baseline`` keeps of it in its report;
- ``comparison``: that comparison's part of the YAML/JSON document, checked against the report;
- ``archive``: stable test ids and each test's evidence archive (``--mesh-artifacts``);

The pytest side (folding test reports into results, writing the report, the baseline) is
``pytest_meshconform.plugin.report``.

It is imported when the plugin loads, so it imports only the standard library, pytest and the
(standard-library-only) ``mesh`` protocol; YAML and JSON are imported when a report is written
or read.
"""

from __future__ import annotations

from pytest_meshconform.report.archive import assign_test_ids, safe_name
from pytest_meshconform.report.diff import (
    ReportDiff,
    TestChange,
    comparison_of,
    diff_reports,
    format_diff,
)
from pytest_meshconform.report.formats import (
    dump_report,
    load_report,
    load_schema,
    parse_report,
    report_to_dict,
    write_report,
)
from pytest_meshconform.report.model import (
    API_VERSION,
    KIND,
    OUTCOMES,
    BaselineComparison,
    ChangeRecord,
    CollectionError,
    ConformanceReport,
    EvidenceRecord,
    MeshRecord,
    ReportError,
    Statistics,
    SuiteResult,
    TestResult,
    WorkloadRecord,
)

__all__ = [
    "API_VERSION",
    "KIND",
    "OUTCOMES",
    "BaselineComparison",
    "ChangeRecord",
    "CollectionError",
    "ConformanceReport",
    "EvidenceRecord",
    "MeshRecord",
    "ReportDiff",
    "ReportError",
    "Statistics",
    "SuiteResult",
    "TestChange",
    "TestResult",
    "WorkloadRecord",
    "assign_test_ids",
    "comparison_of",
    "diff_reports",
    "dump_report",
    "format_diff",
    "load_report",
    "load_schema",
    "parse_report",
    "report_to_dict",
    "safe_name",
    "write_report",
]
