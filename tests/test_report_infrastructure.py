"""Infrastructure errors (issue 14, #3): a test whose mesh broke under it is an error marked
`infrastructure`, and `meshconform diff` keeps it apart from conformance regressions.

The pytester runs use a stand-in mesh that reports a dead sidecar the way the local mesh does
(`health_problems()`); the real one, with a killed Envoy, is tested in test_local_hardening.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from test_report import reference_document, validate, with_outcomes

from pytest_meshconform.cli import EXIT_INFRASTRUCTURE, EXIT_OK, EXIT_REGRESSION, main as cli_main
from pytest_meshconform.report import (
    ConformanceReport,
    ReportError,
    diff_reports,
    format_diff,
    load_report,
    parse_report,
    write_report,
)

BROKEN_MESH = """
import pytest
from pytest_meshconform.mesh import SidecarDied


class StandIn:
    backend = "local"
    istio_version = version = "1.24.2"
    trust_domain = "cluster.local"
    features = frozenset({"mtls"})

    def __init__(self):
        self.problems = ()

    def health_problems(self):
        return self.problems

    def log_positions(self):  # a test's log window (plugin/session.py): no workload, no log line
        from pytest_meshconform.mesh import LogPositions

        return LogPositions(at=0.0)

    def workloads(self):
        return []

    def kill(self):
        self.problems = (
            SidecarDied("httpbin.foo", "Envoy", 4242, "was killed by SIGKILL (exit status -9)",
                        exit_status=-9, detail="log: bye"),
        )


@pytest.fixture(scope="session")
def mesh():
    return StandIn()
"""

BROKEN_SUITE = """
import pytest


def test_a_passes(mesh):
    pass


def test_b_sidecar_dies_then_the_assertion_fails(mesh):
    mesh.kill()
    assert False, "plaintext was not refused by STRICT"


def test_c_runs_on_a_broken_mesh(mesh):
    pass


def test_d_needs_no_mesh():
    pass
"""

PASSES_ANYWAY = """
def test_the_sidecar_dies_but_the_test_passes(mesh):
    mesh.kill()  # a dead server "refuses" too: such a pass is no evidence
"""


def test_a_dead_sidecar_makes_errors_not_failures(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # whole short summary lines
    pytester.makeconftest(BROKEN_MESH)
    pytester.makepyfile(test_suite=BROKEN_SUITE)
    result = pytester.runpytest("-p", "no:randomly", "-rE", "--mesh-report=report.yaml")
    result.assert_outcomes(passed=2, errors=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    killed = (
        "SidecarDied: Envoy of httpbin.foo was killed by SIGKILL (exit status -9): pid 4242, at"
    )
    result.stdout.fnmatch_lines(
        [
            f"ERROR test_suite.py::test_b_sidecar_dies_then_the_assertion_fails - {killed}*",
            f"ERROR test_suite.py::test_c_runs_on_a_broken_mesh - {killed}*",
        ]
    )
    assert "ERROR at call of test_b_sidecar_dies_then_the_assertion_fails" in result.stdout.str()
    document = yaml.safe_load((pytester.path / "report.yaml").read_text())
    validate(document)
    tests = {t["name"]: t for t in document["suites"][0]["tests"]}
    assert tests["test_a_passes"]["outcome"] == "passed"
    assert "infrastructure" not in tests["test_a_passes"]
    b, c = (
        tests["test_b_sidecar_dies_then_the_assertion_fails"],
        tests["test_c_runs_on_a_broken_mesh"],
    )
    assert (b["outcome"], b["phase"], b["infrastructure"]) == ("error", "call", True)
    assert (c["outcome"], c["phase"], c["infrastructure"]) == ("error", "setup", True)
    assert b["message"].startswith(killed) and c["message"].startswith(killed)
    assert document["statistics"]["errors"] == 2 and document["statistics"]["failed"] == 0


def test_a_pass_on_a_mesh_that_broke_meanwhile_is_an_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(BROKEN_MESH)
    pytester.makepyfile(test_suite=PASSES_ANYWAY)
    result = pytester.runpytest("-p", "no:randomly", "-rE", "--mesh-report=report.yaml")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*The test itself passed.*"])
    (test,) = load_report(pytester.path / "report.yaml").tests
    assert (test.outcome, test.phase, test.infrastructure) == ("error", "call", True)


# --- the report format -----------------------------------------------------------------------


def _infrastructure_error(report: ConformanceReport, name: str) -> ConformanceReport:
    suites = tuple(
        dataclasses.replace(
            suite,
            tests=tuple(
                dataclasses.replace(
                    t,
                    outcome="error",
                    phase="call",
                    infrastructure=True,
                    message="SidecarDied: Envoy of httpbin.foo was killed by SIGKILL",
                    evidence=None,
                )
                if t.name == name
                else t
                for t in suite.tests
            ),
        )
        for suite in report.suites
    )
    return dataclasses.replace(report, suites=suites)


def test_diff_keeps_infrastructure_errors_apart(tmp_path: Path) -> None:
    old = parse_report(reference_document())
    new = _infrastructure_error(old, "test_a")
    diff = diff_reports(old, new)
    assert diff.regressions == () and not diff.failed
    assert [c.id for c in diff.infrastructure] == ["strict::test_a"]
    assert format_diff(diff, "old.yaml", "new.yaml")[2:] == [
        "Infrastructure errors (the mesh's own process broke: no evidence either way): 1",
        "  strict::test_a: passed -> infrastructure error in call:"
        " SidecarDied: Envoy of httpbin.foo was killed by SIGKILL",
        "INFRASTRUCTURE: 0 regressions, 0 fixes, 0 newly skipped, 0 other changes, 0 new tests,"
        " 0 removed tests, 1 infrastructure error",
    ]
    # And the other way round: an infrastructure error before is no baseline for a fix.
    assert [c.id for c in diff_reports(new, old).infrastructure] == ["strict::test_a"]
    assert diff_reports(new, old).fixes == ()

    paths = {name: tmp_path / f"{name}.yaml" for name in ("old", "infra", "regressed")}
    write_report(old, paths["old"])
    write_report(new, paths["infra"])
    write_report(with_outcomes(new, test_b="failed"), paths["regressed"])
    assert cli_main(["diff", str(paths["old"]), str(paths["old"])]) == EXIT_OK
    assert cli_main(["diff", str(paths["old"]), str(paths["infra"])]) == EXIT_INFRASTRUCTURE == 3
    assert cli_main(["diff", str(paths["old"]), str(paths["regressed"])]) == EXIT_REGRESSION


def test_infrastructure_round_trips_and_is_checked() -> None:
    document = reference_document()
    test = document["suites"][0]["tests"][0]
    test.update(outcome="error", phase="call", infrastructure=True, message="SidecarDied: x")
    document["suites"][0]["statistics"].update(passed=1, errors=1)
    document["statistics"].update(passed=1, errors=1)
    document["summary"] = "1 passed, 1 failed, 1 error, 1 skipped"
    document["failedTests"] = ["strict::test_a", "strict::test_c"]
    validate(document)
    assert parse_report(document).tests[0].infrastructure
    for change, message in (
        ({"infrastructure": False}, "omit the field instead of false"),
        ({"outcome": "failed", "phase": None}, "only an 'error' outcome has it"),
        ({"infrastructure": None}, "not call"),
    ):
        broken = reference_document()
        case = {**test, **change}
        broken["suites"][0]["tests"][0] = {k: v for k, v in case.items() if v is not None}
        with pytest.raises(ReportError, match=message):
            parse_report(broken)


EVIDENCE_SUITE = """
from pytest_meshconform.report.exhibits import evidence_of


def test_fails(request, tmp_path):
    pcap = tmp_path / "capture.pcap"
    pcap.write_bytes(b"payload")
    pcap.chmod(0o600)  # as the local mesh makes its captures
    evidence_of(request.node).add_file("pcap httpbin.foo", pcap)
    evidence_of(request.node).add_text("curl sleep.legacy", "HTTP 200")
    raise AssertionError("plaintext was not refused")
"""


def test_archived_evidence_is_private(pytester: pytest.Pytester) -> None:
    """Issue 14, #7: each failed test's evidence directory is 0700 (its pcap stays 0600)."""
    pytester.makepyfile(test_evidence=EVIDENCE_SUITE)
    pytester.runpytest("-p", "no:randomly", "--mesh-artifacts=evidence").assert_outcomes(failed=1)
    (directory,) = (pytester.path / "evidence").iterdir()
    assert directory.stat().st_mode & 0o777 == 0o700
    (pcap,) = directory.glob("*.pcap")
    assert pcap.stat().st_mode & 0o777 == 0o600
