"""Accepted exceptions as data (``audit/exceptions.py``): the file format, its errors (one line,
file and line), expiry by day, and what a file says of each bypass. Real files for the reader."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pytest

from pytest_meshconform.audit.exceptions import (
    AcceptedException,
    ExceptionsFileError,
    ExceptionStatus,
    load_exceptions,
    parse_exceptions,
)

FILE = """\
# the platform team's accepted bypasses
exceptions:
  - namespace: payments
    workload: ledger
    port: 5432
    reason: replication from the old data centre, OPS-1234
    expires: 2027-03-31
  - namespace: monitoring
    workload: node-exporter
    port: 9100
    reason: "scraped by Prometheus outside the mesh"
"""


def test_a_file_lists_each_accepted_bypass(tmp_path: Path) -> None:
    path = tmp_path / "accepted.yaml"
    path.write_text(FILE)
    accepted = load_exceptions(path)
    assert accepted.entries == (
        AcceptedException(
            "payments",
            "ledger",
            5432,
            "replication from the old data centre, OPS-1234",
            date(2027, 3, 31),
            3,
        ),
        AcceptedException(
            "monitoring", "node-exporter", 9100, "scraped by Prometheus outside the mesh", None, 8
        ),
    )
    assert accepted.source == str(path)


def test_expiry_counts_through_the_last_day() -> None:
    accepted = parse_exceptions(FILE)
    on = accepted.judge
    assert on("payments", "ledger", 5432, date(2027, 3, 31))[0] is ExceptionStatus.ACCEPTED
    status, entry = on("payments", "ledger", 5432, date(2027, 4, 1))
    assert status is ExceptionStatus.EXPIRED and entry is not None and entry.line == 3
    assert on("payments", "ledger", 8080, date(2026, 1, 1)) == (ExceptionStatus.NOT_ACCEPTED, None)
    assert on("monitoring", "node-exporter", 9100, date(2099, 1, 1))[0] is ExceptionStatus.ACCEPTED


def test_entries_that_matched_no_bypass_are_stale() -> None:
    accepted = parse_exceptions(FILE)
    (stale,) = accepted.stale([("payments", "ledger", 5432)])
    assert (
        stale.describe()
        == "monitoring/node-exporter port 9100: scraped by Prometheus outside the mesh"
    )


@pytest.mark.parametrize("text", ["", "exceptions: []\n", "exceptions:\n", "# nothing\n"])
def test_an_empty_file_accepts_nothing(text: str) -> None:
    assert parse_exceptions(text).entries == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n", "x.yaml:1: top level: expected a mapping with 'exceptions'"),
        ("accepted: []\n", "x.yaml:1: accepted: unknown field; the file holds 'exceptions'"),
        ("exceptions: {}\n", "x.yaml:1: exceptions: expected a list"),
        (
            "exceptions:\n  - {namespace: a, workload: b, port: 1}\n",
            "x.yaml:2: exceptions[0].reason: required field missing",
        ),
        (
            "exceptions:\n  - {namespace: a, workload: b, port: 1, reason: '  '}\n",
            "x.yaml:2: exceptions[0].reason: say why the exception is accepted",
        ),
        (
            "exceptions:\n  - {namespace: a, workload: b, port: '80', reason: r}\n",
            "x.yaml:2: exceptions[0].port: expected a port (1-65535), got '80'",
        ),
        (
            "exceptions:\n  - {namespace: a, workload: b, port: 0, reason: r}\n",
            "exceptions[0].port: expected a port (1-65535), got '0'",
        ),
        (
            "exceptions:\n  - {namespace: A_b, workload: b, port: 1, reason: r}\n",
            "exceptions[0].namespace: 'A_b' is not a Kubernetes name",
        ),
        (
            "exceptions:\n  - {namespace: a, workload: b, port: 1, reason: r,\n"
            "     expires: 31/03/2027}\n",
            "exceptions[0].expires: expected a day as YYYY-MM-DD, got '31/03/2027'",
        ),
        (
            "exceptions:\n  - {namespace: a, workload: b, port: 1, reason: r,\n"
            "     expires: 2027-02-30}\n",
            "got '2027-02-30'",
        ),
        (
            "exceptions:\n  - {namespace: a, workload: b, port: 1, reason: r, owner: me}\n",
            "exceptions[0].owner: unknown field; known: namespace, workload, port, reason, expires",
        ),
        (
            "exceptions:\n  - {namespace: a, workload: b, port: 1, reason: r}\n"
            "  - {namespace: a, workload: b, port: 1, reason: again}\n",
            "x.yaml:3: exceptions[1]: a/b port 1 is already accepted at line 2",
        ),
        ("exceptions: [\n", "x.yaml:2: not valid YAML"),
    ],
)
def test_each_mistake_is_one_line_naming_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ExceptionsFileError) as info:
        parse_exceptions(text, "x.yaml")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_the_reader_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "accepted.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ExceptionsFileError, match="a FIFO"):
        load_exceptions(fifo)
    with pytest.raises(ExceptionsFileError, match="a directory"):
        load_exceptions(tmp_path)
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ExceptionsFileError, match="exceptions file"):
        load_exceptions(big)
