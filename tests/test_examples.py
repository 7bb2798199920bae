"""The typed example suite in examples/ passes on the local mesh (mypy --strict checks it too)."""

from __future__ import annotations

import pytest
from local_helpers import REPO, assert_runs_left_nothing, needs_local_mesh


@needs_local_mesh
def test_example_suite_passes(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-rfEs", str(REPO / "examples")
    )
    result.assert_outcomes(passed=6)
    assert_runs_left_nothing(result.stdout.str())
