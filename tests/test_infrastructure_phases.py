"""Issue 23, #2: a sidecar that dies in any phase of a test makes it an infrastructure error.

A real local mesh in a pytest subprocess; httpbin.foo's Envoy is killed with SIGKILL (by the PID
the mesh knows) during a test's setup (a suite's fixture that wraps the error it sees) or its
teardown (after its call passed: the policy it applied cannot be restored). Before, either was
an ERROR without `infrastructure: true`, and `meshconform diff` against a green baseline called
it a regression (exit 1); the call phase is test_local_hardening's.
"""

from __future__ import annotations

import pytest
from local_helpers import all_passed, assert_runs_left_nothing, needs_local_mesh

from pytest_meshconform.cli import EXIT_INFRASTRUCTURE, main as cli_main
from pytest_meshconform.report import load_report, write_report

pytestmark = needs_local_mesh

KILLER = """
import os, signal, time
import pytest
from pytest_meshconform.mesh import MeshError

STRICT_FOO = {
    "apiVersion": "security.istio.io/v1",
    "kind": "PeerAuthentication",
    "metadata": {"name": "default", "namespace": "foo"},
    "spec": {"mtls": {"mode": "STRICT"}},
}

def kill_httpbin_envoy(mesh):
    os.kill(mesh.envoy_pid(mesh.workload("httpbin", "foo")), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not mesh.health_problems() and time.monotonic() < deadline:
        time.sleep(0.05)  # until the mesh has seen it: what follows meets a dead sidecar
"""

SUITES = {
    "setup": KILLER
    + """
@pytest.fixture
def httpbin_ready(mesh, sleep, httpbin):
    kill_httpbin_envoy(mesh)  # the sidecar dies while the suite prepares its test
    try:
        assert sleep.curl(httpbin).ok
    except MeshError as error:
        pytest.fail(f"httpbin is not ready: {error}", pytrace=False)

def test_dies(httpbin_ready):
    pass

def test_after(sleep, httpbin):
    assert sleep.curl(httpbin).ok
""",
    "teardown": KILLER
    + """
@pytest.fixture
def dies_at_teardown(mesh):
    yield
    kill_httpbin_envoy(mesh)  # torn down before apply_policy: its restore meets a dead sidecar

def test_before(sleep, httpbin):
    assert sleep.curl(httpbin).ok

def test_dies(apply_policy, dies_at_teardown, naked_sleep, httpbin):
    apply_policy(STRICT_FOO)
    assert not naked_sleep.curl(httpbin).ok  # the call passes; the last test, too
""",
}


@pytest.mark.parametrize("phase", SUITES)
def test_a_sidecar_that_dies_in_setup_or_teardown_is_an_infrastructure_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    pytester.makepyfile(test_dies=SUITES[phase])
    monkeypatch.setenv("COLUMNS", "1000")  # short summary lines carry the whole message
    report_path = pytester.path / "report.yaml"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-ra", f"--mesh-report={report_path}"
    )
    output = result.stdout.str()
    assert_runs_left_nothing(output)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output
    killed = "Envoy of httpbin.foo was killed by SIGKILL (exit status -9)"
    (line,) = [x for x in output.splitlines() if x.startswith("ERROR ") and "::test_dies " in x]
    assert f"SidecarDied: {killed}" in line, output

    report = load_report(report_path)
    tests = {t.name: t for t in report.tests}
    dies = tests["test_dies"]
    assert (dies.outcome, dies.phase, dies.infrastructure) == ("error", phase, True), dies
    assert dies.message is not None and dies.message.startswith(f"SidecarDied: {killed}")
    if phase == "setup":
        after = tests["test_after"]
        assert (after.outcome, after.phase, after.infrastructure) == ("error", "setup", True)
    else:
        assert tests["test_before"].outcome == "passed"
        assert "could not restore the policies" in output, output  # the error, kept

    baseline = pytester.path / "baseline.yaml"
    write_report(all_passed(report), baseline)
    assert cli_main(["diff", str(baseline), str(report_path)]) == EXIT_INFRASTRUCTURE
