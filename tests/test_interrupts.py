"""Issue 23, #1 and #6: a signal ends a mesh run with exit status 2 whatever the window.

Real signals to a real pytest subprocess running a real local mesh. Each window is hit
deterministically: the suite's conftest says when the run is in it (a line in an events file)
and then waits until this very process has the signal (raised as a KeyboardInterrupt, or held:
`signals.pending()`), so no sleep decides where the signal lands. The meshes are the runs'
own, found by their run ids; nothing else on the machine is counted, swept or touched.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from local_helpers import (
    alive,
    default_signals,
    needs_local_mesh,
    subprocess_env,
    traces_of,
    wait_for,
)

from pytest_meshconform.report import load_report

pytestmark = needs_local_mesh

CONFTEST = """
import json, os, time
import pytest
from pytest_meshconform import signals
from pytest_meshconform.backends.local import host
from pytest_meshconform.plugin.report import MeshReportPlugin

WINDOW = os.environ["MC_WINDOW"]

def say(event, **info):
    with open(os.environ["MC_EVENTS"], "a") as events:
        events.write(json.dumps({"event": event, **info}) + "\\n")

def in_window(name):
    \"\"\"Say the run is in this window, then wait until this process has the signal: raised
    here as a KeyboardInterrupt, or held by the code under test.\"\"\"
    if WINDOW != name:
        return
    say("window")
    deadline = time.monotonic() + 120
    while signals.pending() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    say("signal held")

real_make, real_teardown = host.make_run_directory, host.teardown_state

def make_run_directory(run_id):
    directory = real_make(run_id)
    say("run-id", run_id=run_id)
    in_window("bring-up")  # the run directory is there, no namespace yet
    return directory

def teardown_state(state):
    in_window("teardown")  # processes, namespaces and files all still there
    real_teardown(state)

host.make_run_directory, host.teardown_state = make_run_directory, teardown_state

from pytest_meshconform.backends.local import grpc_client

real_ask = grpc_client._ask

def ask(client, args, deadline):
    say("grpc-client", pid=client.proc.pid)
    in_window("grpc-call")  # its long-lived client runs, the call is being made
    return real_ask(client, args, deadline)

grpc_client._ask = ask

real_build = MeshReportPlugin.build_report

def build_report(self, exit_status):
    in_window("report")
    return real_build(self, exit_status)

MeshReportPlugin.build_report = build_report

@pytest.hookimpl(trylast=True)
def pytest_runtest_logfinish(nodeid, location):
    if nodeid.endswith("test_last"):
        in_window("after-tests")  # "[100%]" is on the terminal, the mesh is gone
"""

SUITE = """
from conftest import WINDOW, in_window

def test_first(mesh):
    assert mesh.workloads()

def test_last(mesh):
    in_window("test")
    if WINDOW == "grpc-call":
        mesh.grpc_exec(mesh.workload("sleep", "legacy"), ["httpbin.foo:50051", "/x/Y", "5"])
    assert mesh.workloads()
"""


class SignalledRun:
    """A pytest run of the suite above, in its own process, told which window to wait in."""

    def __init__(self, tmp_path: Path, window: str) -> None:
        (tmp_path / "conftest.py").write_text(CONFTEST)
        (tmp_path / "test_suite.py").write_text(SUITE)
        self.events_path = tmp_path / "events"
        self.events_path.touch()
        self.report_path = tmp_path / "report.yaml"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                f"--mesh-report={self.report_path}",
            ],
            cwd=tmp_path,
            env=subprocess_env() | {"MC_WINDOW": window, "MC_EVENTS": str(self.events_path)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # the signals reach it even where this run was started with them ignored
            preexec_fn=default_signals,
        )

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.events_path.read_text().splitlines()]

    def wait_event(self, name: str) -> dict[str, Any]:
        def seen() -> bool:
            return any(e["event"] == name for e in self.events()) or self.proc.poll() is not None

        wait_for(seen, 120, f"the run to say {name!r}")
        found = [e for e in self.events() if e["event"] == name]
        assert found, f"the run ended before {name!r}: {self.finish()}"
        return found[0]

    def finish(self) -> str:
        try:
            output, _ = self.proc.communicate(timeout=120)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.communicate()
        return output.decode(errors="replace")


# window -> the signal sent in it (the issue's: Ctrl-C after "[100%]", any of the three while
# the mesh is torn down)
WINDOWS = {
    "bring-up": signal.SIGHUP,
    "test": signal.SIGTERM,
    "grpc-call": signal.SIGINT,
    "teardown-SIGTERM": signal.SIGTERM,
    "teardown-SIGINT": signal.SIGINT,
    "teardown-SIGHUP": signal.SIGHUP,
    "after-tests": signal.SIGTERM,
    "report": signal.SIGINT,
}


@pytest.mark.parametrize("case", WINDOWS)
def test_a_signal_in_any_window_ends_the_run_as_interrupted(tmp_path: Path, case: str) -> None:
    """Exit status 2, no traceback, the report says 2, and the run's mesh is gone; a signal
    the run held (teardown, report) is named and said to end the run as interrupted."""
    window, signum = case.split("-SIG")[0], WINDOWS[case]
    run = SignalledRun(tmp_path, window)
    try:
        run_id = run.wait_event("run-id")["run_id"]
        run.wait_event("window")
        run.proc.send_signal(signum)
    finally:
        output = run.finish()
    assert run.proc.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "Traceback" not in output and "INTERNALERROR" not in output, output
    assert traces_of(run_id) == [], output
    report = load_report(run.report_path)
    assert report.exit_status == pytest.ExitCode.INTERRUPTED, output
    outcomes = {t.name: t.outcome for t in report.tests}
    if window == "bring-up":
        assert f"local mesh {run_id} up in" not in output, output
        assert set(outcomes.values()) <= {"error", "notrun"}, outcomes
    elif window in ("test", "grpc-call"):
        assert outcomes["test_first"] == "passed", outcomes
    else:  # every test had passed when the signal came
        assert outcomes == {"test_first": "passed", "test_last": "passed"}, output
    if window == "grpc-call":  # the call's gRPC client is gone with the mesh
        (client,) = [e["pid"] for e in run.events() if e["event"] == "grpc-client"]
        assert not alive(client), output
    if window == "teardown":
        assert f"{signum.name} during the mesh's teardown: held until it was done" in output
        assert f"KeyboardInterrupt: {signum.name} during the mesh's teardown" in output, output
    if window == "report":
        assert "signal held" in [e["event"] for e in run.events()], output
        assert f"meshconform: {signum.name} during the end of the run" in output, output
        assert "(exit status 2)" in output, output
