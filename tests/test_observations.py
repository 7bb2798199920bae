"""Per-test observations: the table recorder, the summary a failure shows first, and their
compact form in the report (schema and strict loader agree)."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest
from test_report import reference_document

from pytest_meshconform.report import ReportError, load_schema, parse_report, report_to_dict
from pytest_meshconform.report.observations import (
    Observations,
    RequestRecord,
    RotationRecord,
    TableRecorder,
    observations_from_dict,
)

VALIDATOR = jsonschema.Draft202012Validator(load_schema())


def sample() -> Observations:
    seen = Observations()
    seen.touch("sleep.legacy", "httpbin.foo", "sleep.legacy")
    seen.policies.append('PeerAuthentication foo/default {"mtls": {"mode": "STRICT"}}')
    seen.requests.append(
        RequestRecord(
            client="sleep.legacy",
            url="http://httpbin.foo:8000/headers",
            server="httpbin.foo",
            status=None,
            exit_code=56,
            outcome="no HTTP response, curl exit 56 (failure receiving data)",
        )
    )
    seen.flows.append("at httpbin.foo: sleep.legacy:40000 -> httpbin.foo:8080 plaintext 80 B RST")
    seen.identities.append(
        "XFCC at httpbin.foo from sleep.foo: URI=spiffe://cluster.local/ns/foo/sa/sleep"
    )
    seen.rotations.append(
        RotationRecord(
            workload="httpbin.foo",
            old_serial="0a" * 8,
            new_serial="0b" * 8,
            old_not_before="2026-12-03T06:00:00.000Z",
            old_not_after="2026-12-03T06:00:30.000Z",
            new_not_before="2026-12-03T06:00:15.000Z",
            new_not_after="2026-12-03T06:00:45.000Z",
            observed_at="2026-12-03T06:00:15.100Z",
            fraction=0.503,
            requests_before=40,
            requests_after=3,
            failed_requests=0,
        )
    )
    TableRecorder(seen)(
        "reachability under 'namespace foo STRICT'",
        rows=["sleep.foo", "sleep.legacy"],
        columns=["httpbin.foo", "httpbin.bar"],
        expected={
            ("sleep.foo", "httpbin.foo"): "mTLS",
            ("sleep.foo", "httpbin.bar"): "mTLS",
            ("sleep.legacy", "httpbin.foo"): "reset",
            ("sleep.legacy", "httpbin.bar"): "plaintext",
        },
        observed={
            ("sleep.foo", "httpbin.foo"): "mTLS",
            ("sleep.foo", "httpbin.bar"): "mTLS",
            ("sleep.legacy", "httpbin.foo"): "plaintext",
            ("sleep.legacy", "httpbin.bar"): "plaintext",
        },
        corner="client \\ server",
    )
    return seen


def test_a_table_knows_its_mismatches_and_prints_both_grids() -> None:
    (table,) = sample().tables
    assert not table.ok
    assert table.mismatches == (("sleep.legacy", "httpbin.foo", "reset", "plaintext"),)
    assert table.text().splitlines() == [
        "reachability under 'namespace foo STRICT'",
        "expected:",
        "client \\ server  httpbin.foo    httpbin.bar",
        "sleep.foo        mTLS           mTLS",
        "sleep.legacy     reset          plaintext",
        "observed:",
        "client \\ server  httpbin.foo    httpbin.bar",
        "sleep.foo        mTLS           mTLS",
        "sleep.legacy     plaintext (!)  plaintext",
    ]


def test_a_table_cell_is_words_not_a_python_value() -> None:
    """A suite may hand `record_table` what it computed (`result.reset`, `result.status`): its
    cells say yes, no and none, never True, False and None."""
    table = TableRecorder(Observations())(
        "probes",
        rows=["plaintext"],
        columns=["reset", "status", "port"],
        expected={
            ("plaintext", "reset"): True,
            ("plaintext", "status"): None,
            ("plaintext", "port"): 8080,
        },
        observed={
            ("plaintext", "reset"): False,
            ("plaintext", "status"): 200,
            ("plaintext", "port"): 8080,
        },
    )
    assert table.expected == (("yes", "none", "8080"),)
    assert table.observed == (("no", "200", "8080"),)
    assert table.mismatches == (
        ("plaintext", "reset", "yes", "no"),
        ("plaintext", "status", "none", "200"),
    )


def test_a_table_missing_a_cell_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"no value for observed\['b', 'y'\]"):
        TableRecorder(Observations())(
            "t",
            rows=["a", "b"],
            columns=["y"],
            expected={("a", "y"): 1, ("b", "y"): 2},
            observed={("a", "y"): 1},
        )


def test_the_summary_says_what_the_test_did_and_saw() -> None:
    summary = sample().summary()
    assert summary.splitlines() == [
        "workloads touched:",
        "  sleep.legacy, httpbin.foo",
        "policies applied:",
        '  PeerAuthentication foo/default {"mtls": {"mode": "STRICT"}}',
        "requests:",
        "  sleep.legacy -> httpbin.foo (http://httpbin.foo:8000/headers): no HTTP response,"
        " curl exit 56 (failure receiving data)",
        "captured flows:",
        "  at httpbin.foo: sleep.legacy:40000 -> httpbin.foo:8080 plaintext 80 B RST",
        "identities seen:",
        "  XFCC at httpbin.foo from sleep.foo: URI=spiffe://cluster.local/ns/foo/sa/sleep",
        "certificate rotations:",
        "  httpbin.foo: serial 0a0a0a0a0a0a0a0a -> 0b0b0b0b0b0b0b0b seen at"
        " 2026-12-03T06:00:15.100Z (0.503 of the old lifetime); requests 40 before, 3 after,"
        " 0 failed",
        "table reachability under 'namespace foo STRICT': 1 cells differ",
        "  sleep.legacy -> httpbin.foo: expected reset, observed plaintext",
    ]
    assert Observations().summary() == "(nothing observed)"
    assert not Observations()


def with_observations(data: dict[str, Any]) -> dict[str, Any]:
    document = reference_document()
    test = document["suites"][0]["tests"][0]
    test["description"] = "STRICT refuses plaintext."
    test["observations"] = data
    return document


def test_the_report_keeps_observations_and_descriptions() -> None:
    document = with_observations(sample().to_dict())
    VALIDATOR.validate(document)
    report = parse_report(copy.deepcopy(document))
    test = report.suites[0].tests[0]
    assert test.description == "STRICT refuses plaintext."
    assert test.observations == observations_from_dict(sample().to_dict())
    assert test.observations is not None and test.observations.summary() == sample().summary()
    assert report_to_dict(report) == document  # the loader loses nothing


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda o: o.update(unknown=[]), r"observations\.unknown: unknown field"),
        (lambda o: o["requests"][0].pop("curlExit"), r"requests\[0\]\.curlExit: missing"),
        (lambda o: o["requests"][0].update(status="200"), r"requests\[0\]\.status"),
        (lambda o: o["tables"][0]["rows"][0].pop("observed"), r"rows\[0\]\.observed: missing"),
        (lambda o: o["flows"].append(""), r"observations\.flows: expected a list"),
        (lambda o: o.clear(), "omit the field instead of empty"),
    ],
)
def test_the_loader_and_the_schema_refuse_broken_observations(change: Any, message: str) -> None:
    data = sample().to_dict()
    change(data)
    document = with_observations(data)
    with pytest.raises(ReportError, match=message):
        parse_report(copy.deepcopy(document))
    assert not VALIDATOR.is_valid(document)


def test_a_request_loop_stays_one_line_per_change_of_outcome() -> None:
    seen = Observations()
    url = "http://httpbin.foo:8000/get"
    ok = RequestRecord("sleep.foo", url, "httpbin.foo", 200, 0, "HTTP 200")
    failed = RequestRecord("sleep.foo", url, "httpbin.foo", 503, 0, "HTTP 503")
    assert [seen.add_request(r) for r in (ok, ok, ok, failed, ok)] == [
        True,
        False,
        False,
        True,
        True,
    ]
    assert [r.count for r in seen.requests] == [3, 1, 1]
    assert seen.requests[0].line().endswith("HTTP 200 (x3)")
    document = with_observations(seen.to_dict())
    VALIDATOR.validate(document)
    assert seen.to_dict()["requests"][0]["count"] == 3
    test = parse_report(document).suites[0].tests[0]
    assert test.observations is not None and test.observations.requests == seen.requests
