"""Sidecar health as evidence: a test whose mesh broke under it ends as an error, not a failure.

A sidecar's Envoy or an app that died, was stopped (SIGSTOP) or stopped answering makes every
request fail (or hang) for reasons that have nothing to do with the policy under test: "plaintext
was not refused" after the server's Envoy was killed is no finding about STRICT. So, for tests
that use the mesh (registered by the plugin next to `fixtures`):

- before each test, a mesh that is already broken raises `SidecarDied` in setup (an error naming
  the process, its PID and exit status, and the end of its log);
- after each test's call, a process that broke meanwhile turns the call's result into an error:
  a failure keeps its traceback, a pass is no evidence either (a dead server also "refuses").
  Such reports carry `meshconform_infrastructure`, show as ERROR, and are marked
  `infrastructure: true` in conformance reports, which `meshconform diff` keeps apart from
  regressions.

Backends that cannot watch their processes (`mesh.HealthAware`) report nothing here.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Final

import pytest

from pytest_meshconform.mesh import Mesh, SidecarDied, health_problems

__all__ = ["INFRASTRUCTURE_ATTRIBUTE", "infrastructure_problem_of"]

INFRASTRUCTURE_ATTRIBUTE: Final = "meshconform_infrastructure"
"""The `TestReport` attribute (the problem's text) of a test ended by broken infrastructure."""


def infrastructure_problem_of(report: pytest.TestReport) -> str | None:
    """The infrastructure problem that ended this test phase, or None."""
    value = getattr(report, INFRASTRUCTURE_ATTRIBUTE, None)
    return value if isinstance(value, str) and report.failed else None


@pytest.fixture(autouse=True)
def _mesh_health(request: pytest.FixtureRequest) -> None:
    """A test that uses the mesh does not start on a broken one (SidecarDied in setup)."""
    __tracebackhide__ = True
    if "mesh" not in request.fixturenames:
        return
    mesh = request.getfixturevalue("mesh")
    problems = health_problems(mesh)
    if problems:
        raise problems[0].again()


def _problem(item: pytest.Item, call: pytest.CallInfo[None]) -> SidecarDied | None:
    if call.excinfo is not None and isinstance(call.excinfo.value, SidecarDied):
        return call.excinfo.value
    if call.when != "call" or "mesh" not in getattr(item, "fixturenames", ()):
        return None
    mesh: Mesh | None = getattr(item, "funcargs", {}).get("mesh")
    if mesh is None:
        return None
    problems = health_problems(mesh)
    return problems[0] if problems else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and not hasattr(report, "wasxfail"):
        return report  # skipped on purpose (pytest.skip, a missing feature)
    problem = _problem(item, call)
    if problem is None:
        return report
    text = f"{type(problem).__name__}: {problem}"
    setattr(report, INFRASTRUCTURE_ATTRIBUTE, str(problem))
    explanation = (
        f"{text}\nThe mesh's own process broke before this test ended, so its result is no"
        " evidence about the mesh's behaviour: an infrastructure error, not a conformance"
        " failure."
    )
    if hasattr(report, "wasxfail"):
        del report.wasxfail  # an expected failure says nothing either
    if not report.failed:
        report.outcome = "failed"
        report.longrepr = f"{explanation}\n(The test itself passed.)"
        return report
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        crash.message = text  # what the summary line and reports show: the broken process
    addsection = getattr(report.longrepr, "addsection", None)
    if callable(addsection):
        addsection("meshconform: infrastructure error", explanation)
    else:
        report.sections.append(("meshconform: infrastructure error", explanation))
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_report_teststatus(
    report: pytest.TestReport, config: pytest.Config
) -> tuple[str, str, tuple[str, dict[str, bool]]] | None:
    """A call ended by broken infrastructure is an ERROR, like a fixture's failure."""
    if report.when == "call" and infrastructure_problem_of(report) is not None:
        return "error", "E", ("ERROR", {"red": True})
    return None
