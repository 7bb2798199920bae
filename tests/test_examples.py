"""The typed example suites in examples/ pass on the local mesh, run by real pytest in a
subprocess (mypy --strict checks them too: pyproject's mypy files, test_install_typing)."""

from __future__ import annotations

import pytest
from local_helpers import REPO, assert_runs_left_nothing, needs_local_mesh

PAYMENTS = REPO / "examples" / "payments"


@needs_local_mesh
def test_example_suite_passes(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-rfEs", str(REPO / "examples" / "test_example_suite.py")
    )
    result.assert_outcomes(passed=6)
    assert_runs_left_nothing(result.stdout.str())


@needs_local_mesh
def test_the_payments_suite_passes_on_its_own_topology(pytester: pytest.Pytester) -> None:
    """The README's "your own services" example: HTTP and TCP on one workload, STRICT, a
    port-level exception and an AuthorizationPolicy, each test passing (none skipped: the
    topology has every workload it names)."""
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-rfEs",
        f"--mesh-topology={PAYMENTS / 'topology.yaml'}",
        str(PAYMENTS),
    )
    result.assert_outcomes(passed=7)
    result.stdout.fnmatch_lines(["*topology=*examples/payments/topology.yaml*"])
    assert_runs_left_nothing(result.stdout.str())


@needs_local_mesh
def test_the_payments_suite_without_its_topology_fails_and_says_why(
    pytester: pytest.Pytester,
) -> None:
    """Forgetting --mesh-topology is no green run: the tests that name a missing workload are
    skipped, the table that calls them errors naming the fix, and the run exits 1."""
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rfEs", str(PAYMENTS))
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=1, skipped=6)
    result.stdout.fnmatch_lines(
        [
            "*MeshError: no workload web.checkout in the local mesh (have: sleep.foo, *);"
            " a suite written for its own topology runs with --mesh-topology=PATH*",
            "*SKIPPED*the mesh's topology has no workload*which this test needs*",
        ],
        consecutive=False,
    )
    assert_runs_left_nothing(result.stdout.str())
