"""Sidecar health as evidence: a test whose mesh broke under it ends as an error, not a failure.

A sidecar's Envoy or an app that died, was stopped (SIGSTOP) or stopped answering makes every
request fail (or hang) for reasons that have nothing to do with the policy under test: "plaintext
was not refused" after the server's Envoy was killed is no finding about STRICT. So, for tests
that use the mesh (registered by the plugin next to `fixtures`):

- before each test, a mesh that is already broken raises `SidecarDied` in setup (an error naming
  the process, its PID and exit status, and the end of its log);
- after each test's call, a process that broke meanwhile turns the call's result into an error:
  a failure keeps its traceback, a pass is no evidence either (a dead server also "refuses");
- a setup or teardown that failed while a process was broken (a fixture's wait that saw a dead
  server, the policies not restored because the sidecar died) is an infrastructure error too,
  as is any phase whose exception was caused by a `SidecarDied` (wrapped or re-raised).

Such reports carry `meshconform_infrastructure`, show as ERROR, and are marked
`infrastructure: true` in conformance reports, which `meshconform diff` keeps apart from
regressions.

Backends that cannot watch their processes (`mesh.HealthAware`) report nothing here.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Final

import pytest

from pytest_meshconform.mesh import Mesh, SidecarDied, health_problems

__all__ = [
    "INFRASTRUCTURE_ATTRIBUTE",
    "infrastructure_problem_of",
    "mesh_closing",
    "mesh_health_problems",
    "mesh_opened",
]

INFRASTRUCTURE_ATTRIBUTE: Final = "meshconform_infrastructure"
"""The `TestReport` attribute (the problem's text) of a test ended by broken infrastructure."""


_mesh_key: Final = pytest.StashKey[Mesh]()
_problems_at_close_key: Final = pytest.StashKey[tuple[SidecarDied, ...]]()


def mesh_opened(config: pytest.Config, mesh: Mesh) -> None:
    """The session's mesh is up (the `mesh` fixture): its health judges every test phase."""
    config.stash[_mesh_key] = mesh


def mesh_closing(config: pytest.Config) -> None:
    """The session's mesh is about to be torn down: what had broken by then still counts for
    the last test's teardown, reported once the mesh is gone."""
    mesh = config.stash.get(_mesh_key, None)
    if mesh is not None:
        config.stash[_problems_at_close_key] = tuple(health_problems(mesh))


def mesh_health_problems(config: pytest.Config) -> Sequence[SidecarDied]:
    """What broke in the session's mesh so far (first seen first); once it is torn down, what
    had broken before its teardown. Empty before the mesh is up."""
    closed = config.stash.get(_problems_at_close_key, None)
    if closed is not None:
        return closed
    mesh = config.stash.get(_mesh_key, None)
    return () if mesh is None else health_problems(mesh)


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


def _sidecar_died_in(error: BaseException) -> SidecarDied | None:
    """The `SidecarDied` behind an exception: itself, its cause or context, a group's member."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, SidecarDied):
            return current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return None


def _problem(item: pytest.Item, call: pytest.CallInfo[None]) -> SidecarDied | None:
    if call.excinfo is not None:
        died = _sidecar_died_in(call.excinfo.value)
        if died is not None:
            return died
    if "mesh" not in getattr(item, "fixturenames", ()):
        return None
    if call.when != "call" and call.excinfo is None:
        return None  # a setup or teardown that went well: the test's result stands
    # The test's own mesh (a suite may stand one in), else the session's, which also knows
    # what had broken before it was torn down in this very teardown.
    mesh: Mesh | None = (getattr(item, "funcargs", None) or {}).get("mesh")
    problems = health_problems(mesh) if mesh is not None else ()
    problems = problems or mesh_health_problems(item.config)
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
