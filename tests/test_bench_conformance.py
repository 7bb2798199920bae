"""The built-in set's benchmark still runs (one run of a subset: its output, its exit status)."""

from __future__ import annotations

import re

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
