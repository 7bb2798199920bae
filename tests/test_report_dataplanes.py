"""Reports show each workload's data plane and ports (issue 20): the YAML/JSON document, its
schema and loader, the HTML/Markdown header, the diff's mesh line, and a real run with
``--mesh-dataplane=both`` whose report lists both meshes' workloads."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from local_helpers import assert_runs_left_nothing, needs_local_mesh
from test_report import reference_document, validate

from pytest_meshconform.report import (
    ReportError,
    WorkloadRecord,
    diff_reports,
    format_diff,
    load_report,
    parse_report,
    report_to_dict,
)
from pytest_meshconform.report.render import document_of, render_html, render_markdown

WORKLOADS = [
    {"name": "sleep", "namespace": "foo", "dataplane": "sidecar", "ports": []},
    {"name": "httpbin", "namespace": "foo", "dataplane": "sidecar", "ports": [8080]},
    {"name": "sleep", "namespace": "foo", "dataplane": "ambient", "ports": []},
    {"name": "httpbin", "namespace": "foo", "dataplane": "ambient", "ports": [8080]},
    {"name": "httpbin", "namespace": "legacy", "dataplane": "none", "ports": [8080]},
]


def _with_workloads(workloads: list[dict[str, Any]] = WORKLOADS) -> dict[str, Any]:
    document = reference_document()
    document["mesh"]["workloads"] = copy.deepcopy(workloads)
    return document


def test_workloads_are_schema_valid_and_round_trip() -> None:
    document = _with_workloads()
    validate(document)
    report = parse_report(document)
    assert report.mesh.workloads[1] == WorkloadRecord("httpbin", "foo", "sidecar", (8080,))
    assert report.mesh.dataplanes == ("sidecar", "ambient")
    assert report_to_dict(report) == document


def test_a_run_with_ambient_says_so_where_the_mesh_is_described() -> None:
    report = parse_report(_with_workloads())
    assert report.mesh.describe() == "istio 1.24.2 (local, data planes: sidecar + ambient)"
    sidecar_only = parse_report(_with_workloads(WORKLOADS[:2]))
    assert sidecar_only.mesh.describe() == "istio 1.24.2 (local)"  # as it always read
    lines = format_diff(diff_reports(sidecar_only, report))
    assert any("data planes: sidecar + ambient" in line for line in lines), lines


def test_the_page_and_markdown_list_each_workloads_dataplane() -> None:
    document = document_of(parse_report(_with_workloads()))
    row = (
        "sleep.foo: sidecar; httpbin.foo: sidecar (8080); sleep.foo: ambient;"
        " httpbin.foo: ambient (8080); httpbin.legacy: none (8080)"
    )
    assert ("Workloads", row) in document.header
    markdown = render_markdown(document)
    html = render_html(document)
    for text in ("httpbin.foo: ambient (8080)", "httpbin.legacy: none (8080)"):
        assert text in markdown and text in html


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"dataplane": "ztunnel"},
            "mesh.workloads[0].dataplane: unknown data plane 'ztunnel'; known: sidecar,"
            " ambient, none",
        ),
        ({"ports": [0]}, "mesh.workloads[0].ports: expected port numbers, got [0]"),
        ({"ports": ["8080"]}, "mesh.workloads[0].ports: expected port numbers"),
    ],
)
def test_the_loader_names_a_bad_workload(change: dict[str, Any], message: str) -> None:
    document = _with_workloads([{**WORKLOADS[1], **change}])
    with pytest.raises(ReportError) as caught:
        parse_report(document)
    assert message in str(caught.value)


def test_an_empty_list_or_an_unused_mesh_with_workloads_is_refused() -> None:
    with pytest.raises(ReportError, match="omit the field instead of an empty list"):
        parse_report(_with_workloads([]))
    document = _with_workloads()
    document["mesh"] = {"used": False, "backend": "local", "workloads": WORKLOADS}
    with pytest.raises(ReportError, match="a mesh that was not used has no workloads"):
        parse_report(document)


SUITE = """
def test_one(sleep, httpbin):
    assert sleep.curl(httpbin).ok
"""


@needs_local_mesh
def test_a_both_run_reports_each_meshs_workloads(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--mesh-dataplane=both", "--mesh-report=report.yaml"
    )
    assert_runs_left_nothing(result.stdout.str())
    result.assert_outcomes(passed=2)
    report = load_report(pytester.path / "report.yaml")
    seen = {(w.key, w.dataplane, w.ports) for w in report.mesh.workloads}
    assert {  # httpbin in foo and bar also serves grpc-echo on 50051
        ("httpbin.foo", "sidecar", (8080, 50051)),
        ("httpbin.foo", "ambient", (8080, 50051)),
        ("sleep.bar", "sidecar", ()),
        ("sleep.bar", "ambient", ()),
        ("httpbin.legacy", "none", (8080,)),
    } <= seen
    assert report.mesh.dataplanes == ("sidecar", "ambient")
    assert [t.name for t in report.tests] == ["test_one[sidecar]", "test_one[ambient]"]
