"""The local mesh benchmark still runs (small N: one bring-up, a few switches)."""

from __future__ import annotations

import re

import pytest
from conftest import load_benchmark
from local_helpers import needs_local_mesh, runs_made, traces_of


def test_percentile_is_nearest_rank() -> None:
    bench = load_benchmark("bench_local_mesh")
    assert bench.percentile([float(n) for n in range(1, 51)], 0.95) == 48.0
    assert bench.percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert bench.percentile([7.0], 0.95) == 7.0


@needs_local_mesh
def test_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    with runs_made() as run_ids:
        assert load_benchmark("bench_local_mesh").main(["--runs", "1", "--switches", "4"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  up: +median \d+\.\d{3} s", out, re.M), out
    assert re.search(r"^  down: +median \d+\.\d{3} s", out, re.M), out
    assert re.search(r"^  apply\(\): +median \d+\.\d ms, p95 \d+\.\d ms", out, re.M), out
    assert re.search(r"^  effect: +median \d+\.\d ms, p95 \d+\.\d ms", out, re.M), out
    assert "stale:     0 probes" in out
    assert re.search(r"^  authz: +apply\(\) median \d+\.\d ms, effect median", out, re.M), out
    assert "; 0 stale answers from sleep.foo" in out
    assert re.search(r"4 x envoy: RSS \d+ MiB", out), out
    assert run_ids, "the benchmark brought no local mesh up"
    left = {run_id: traces_of(run_id) for run_id in run_ids}
    assert not any(left.values()), left  # it cleaned up after itself
