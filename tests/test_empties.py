"""No silent empties: a run whose every mesh test skipped for a missing workload fails."""

from __future__ import annotations

import pytest
from local_helpers import needs_local_mesh

SUITE = """
from pytest_meshconform import WorkloadLookup


def test_ledger_refuses_plaintext(workload: WorkloadLookup) -> None:
    ledger = workload("ledger", "payments", skip_if_missing=True)
    raise AssertionError(f"{ledger} is not in the built-in topology: this must not run")


def test_checkout_reaches_ledger(sleep, workload: WorkloadLookup) -> None:
    workload("checkout", "payments", skip_if_missing=True)
    raise AssertionError("checkout.payments is not in the built-in topology")


def test_no_mesh_here() -> None:
    pass
"""

TOPOLOGY = """
namespaces:
  - name: shop
    injected: true
    workloads:
      - {name: client, kind: sleep}
"""


@needs_local_mesh
def test_a_suite_run_without_its_topology_fails(pytester: pytest.Pytester) -> None:
    """The issue's case: a custom suite run without --mesh-topology skipped every test and
    exited 0 ("2 skipped"); it now fails with one line naming the topology in force."""
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "-p", "no:cacheprovider", "--mesh-report=r.yaml"
    )
    result.assert_outcomes(passed=1, skipped=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "ERROR: meshconform: all 2 mesh test(s) were skipped because the built-in topology"
            " (*) lacks the workloads they need*--mesh-topology=PATH*"
        ]
    )
    # The report, written before the run's end, says how it ended and why.
    from pytest_meshconform.report import load_report

    report = load_report(pytester.path / "r.yaml")
    assert (report.exit_status, report.result) == (1, "failure")
    assert report.summary == (
        "1 passed, 2 skipped; the run failed: all 2 mesh test(s) were skipped because the"
        " built-in topology (sleep and httpbin in foo and bar, sleep in legacy) lacks the"
        " workloads they need"
    )


@needs_local_mesh
def test_a_named_topology_is_named(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", topology=TOPOLOGY)
    pytester.makepyfile(
        test_suite="def test_uses_httpbin(httpbin):\n    raise AssertionError('must not run')\n"
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "-p", "no:cacheprovider", "--mesh-topology=topology.yaml"
    )
    result.assert_outcomes(skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "ERROR: meshconform: all 1 mesh test(s) were skipped because"
            + " --mesh-topology=*topology.yaml*"
        ]
    )


@needs_local_mesh
def test_one_mesh_test_that_ran_keeps_the_run_green(pytester: pytest.Pytester) -> None:
    """Skips beside a test that really ran are ordinary skips (a custom topology running the
    built-in suites skips what it lacks)."""
    pytester.makefile(".yaml", topology=TOPOLOGY)
    pytester.makepyfile(
        test_suite="""
from pytest_meshconform import WorkloadLookup


def test_client_is_there(workload: WorkloadLookup) -> None:
    assert workload("client", "shop").has_sidecar


def test_uses_httpbin(httpbin) -> None:
    raise AssertionError("must not run")
"""
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "-p", "no:cacheprovider", "--mesh-topology=topology.yaml"
    )
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.OK
    assert "were skipped because" not in result.stdout.str()


@needs_local_mesh
def test_skips_for_other_reasons_are_not_empties(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_suite="""
import pytest


@pytest.mark.mesh_min_version("99.0")
def test_too_new(mesh) -> None:
    raise AssertionError("must not run")
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=1)
    assert result.ret == pytest.ExitCode.OK
