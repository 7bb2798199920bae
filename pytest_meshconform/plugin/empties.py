"""No silent empties: a run in which every mesh test was skipped because the topology in force
lacks its workloads is a failed run, not a green one.

The usual cause is a suite written for its own topology run without ``--mesh-topology``: the
``sleep``/``httpbin`` fixtures and ``workload(..., skip_if_missing=True)`` skip each test, pytest
would exit 0 with "12 skipped", and CI would show green for a suite that tested nothing. Such
skips raise `MissingWorkload`; when every test that used the mesh ended that way, the session's
exit status becomes 1 and one line names the topology in force and the fix.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import NoReturn

import pytest
from _pytest.outcomes import Skipped

from pytest_meshconform.plugin.options import mesh_settings_key

__all__ = ["MissingWorkload", "fail_if_nothing_tested", "skip_missing_workload"]


class MissingWorkload(Skipped):
    """A test skipped because the mesh's topology lacks a workload it needs."""


def skip_missing_workload(reason: str) -> NoReturn:
    """Skip the running test: the topology in force lacks a workload it needs (`reason`)."""
    __tracebackhide__ = True
    raise MissingWorkload(msg=reason)


_mesh_tests_key = pytest.StashKey[dict[str, bool]]()  # nodeid -> skipped for a missing workload


def _seen(config: pytest.Config) -> dict[str, bool]:
    seen = config.stash.get(_mesh_tests_key, None)
    if seen is None:
        seen = config.stash[_mesh_tests_key] = {}
    return seen


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if "mesh" not in getattr(item, "fixturenames", ()):
        return report
    seen = _seen(item.config)
    missing = call.excinfo is not None and call.excinfo.errisinstance(MissingWorkload)
    if report.when == "setup" or missing:
        seen[item.nodeid] = missing
    return report


def _topology_in_force(config: pytest.Config) -> str:
    settings = config.stash.get(mesh_settings_key, None)
    topology: Path | None = getattr(settings, "topology", None)
    if topology is not None:
        return f"--mesh-topology={topology}"
    return "the built-in topology (sleep and httpbin in foo and bar, sleep in legacy)"


def _all_missing(config: pytest.Config) -> int:
    """How many mesh tests ran, when every one was skipped for a missing workload (else 0)."""
    seen = config.stash.get(_mesh_tests_key, None)
    if not seen or not all(seen.values()):
        return 0
    return len(seen)


def _nothing_tested(config: pytest.Config) -> str | None:
    """Why the run tested nothing, when every mesh test skipped for a missing workload."""
    count = _all_missing(config)
    if not count:
        return None
    return (
        f"all {count} mesh test(s) were skipped because {_topology_in_force(config)} lacks the"
        " workloads they need"
    )


def fail_if_nothing_tested(session: pytest.Session) -> str | None:
    """Fail a run that would exit 0 although every mesh test skipped for a missing workload;
    the reason when the run fails so (the report plugin writes it into the report, which it
    writes before this module's own `pytest_sessionfinish` runs)."""
    reason = _nothing_tested(session.config)
    if reason is None or session.exitstatus not in (pytest.ExitCode.OK, 1):
        return None
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
    return reason


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus == pytest.ExitCode.OK and _all_missing(session.config):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    reason = _nothing_tested(config)
    if reason and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        terminalreporter.write_line(
            f"ERROR: meshconform: {reason} (see the skip reasons"
            " with -rs): nothing was tested. Pass the topology your suite is written for with"
            " --mesh-topology=PATH (the local mesh), or run the tests on a topology that has"
            " their workloads.",
            red=True,
            bold=True,
        )
