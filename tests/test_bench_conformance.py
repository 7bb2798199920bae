"""The built-in set's benchmark still runs (one run of a subset: its output, its exit status)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import load_benchmark
from local_helpers import needs_local_mesh


def test_runs_must_be_positive() -> None:
    with pytest.raises(SystemExit):
        load_benchmark("bench_conformance").main(["--runs", "0"])


@needs_local_mesh
def test_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_benchmark("bench_conformance")
    assert bench.main(["--runs", "1", "--", "-k", "test_workload_certificate"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  run 1: +\d+\.\d\d s  load \d+\.\d\d -> \d+\.\d\d  exit 0", out, re.M), out
    assert "2 passed" in out and "deselected" in out, out
    assert re.search(r"^  median: \d+\.\d\d s over 1 runs .* load average", out, re.M), out


def test_failure_messages_keep_every_line(tmp_path: Path) -> None:
    """A failed test's whole message reaches the benchmark's output, not only the first line
    of pytest's short summary (a rotation flake's evidence is on the lines after it)."""
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">'
        '<testcase classname="conformance.test_rotation" name="test_rotation_before_expiry'
        '[ambient]"><failure message="AssertionError: requests failed during rotation: 1 of'
        " 212 requests failed&#10;  request 57/212 sent 18:19:06.001 (-0.049 s from new serial"
        ' seen), took 0.031 s: curl exit 56">trace</failure></testcase>'
        '<testcase classname="conformance.test_strict" name="test_ok"/>'
        '<testcase classname="conformance.test_grpc" name="test_grpc_x"><failure message="cut'
        ' [+2 more lines]">def test_grpc_x():&#10;&gt;   assert seen.ok, seen&#10;E   Assertion'
        "Error: line one&#10;E     line two&#10;E   assert False&#10;&#10;conformance/x.py:1:"
        " AssertionError</failure></testcase>"
        "</testsuite></testsuites>"
    )
    bench = load_benchmark("bench_conformance")
    assert bench.failure_messages(junit) == (
        "conformance.test_rotation::test_rotation_before_expiry[ambient]: AssertionError:"
        " requests failed during rotation: 1 of 212 requests failed\n  request 57/212 sent"
        " 18:19:06.001 (-0.049 s from new serial seen), took 0.031 s: curl exit 56",
        "conformance.test_grpc::test_grpc_x: AssertionError: line one\n  line two\nassert False",
    )
    assert bench.failure_messages(tmp_path / "missing.xml") == ()
