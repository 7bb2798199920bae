"""The ambient benchmark still runs (one run of each part on a subset: its output and status)."""

from __future__ import annotations

import re

import pytest
from conftest import load_benchmark
from local_helpers import needs_local_mesh


def test_runs_must_be_positive() -> None:
    with pytest.raises(SystemExit):
        load_benchmark("bench_ambient").main(["--runs", "0"])
    with pytest.raises(SystemExit):
        load_benchmark("bench_ambient").main(["--suite-runs", "0"])


@needs_local_mesh
def test_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_benchmark("bench_ambient")
    status = bench.main(
        ["--runs", "1", "--suite-runs", "1", "--", "-k", "test_workload_certificate"]
    )
    out = capsys.readouterr().out
    assert re.search(r"^  up \(ambient built-in topology\): median \d\.\d{3} s", out, re.M), out
    assert re.search(r"^  both run 1: +\d+\.\d\d s  load .* exit 0 .*4 passed", out, re.M), out
    assert re.search(r"^  both data planes: median \d+\.\d\d s over 1 runs", out, re.M), out
    # the exit status follows the goals (a loaded machine may miss the 1 s bring-up)
    assert status == (0 if "MISSED" not in out else 1), out
