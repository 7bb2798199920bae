"""Issue 23: exit statuses that always mean one thing (README, "Exit statuses"), row by row.

Here: the table against `ExitStatus` and pytest's own codes; every `meshconform` command
interrupted by a real signal in a real subprocess (2), crashing (3), misused (4); pytest with
the plugin for 0, 1, 3, 4 and 5; `meshconform sweep` with nothing to sweep (0). Elsewhere:
pytest interrupted in every window (2, test_interrupts), infrastructure errors in every phase
(1, and `diff` 3: test_infrastructure_phases), `diff` 0, 1, 3 and bad reports
(test_cli, test_report_infrastructure), `audit` 0 and 1 (test_audit), `doctor` 0 and 1
(test_doctor_cli).

A command's window is hit deterministically: the child replaces one function the command
calls with one that says "window" and then waits for the signal; nothing is swept, no cluster
is reached, and the one local mesh (the audit's) is this test's own, found by its run id.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from local_helpers import REPO, default_signals, needs_local_mesh, subprocess_env, traces_of

from pytest_meshconform.backends.local import host
from pytest_meshconform.cli import main
from pytest_meshconform.exit_status import ExitStatus

# --- The table ------------------------------------------------------------------------------


def _readme_rows() -> dict[int, list[str]]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Exit statuses\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| (\d) \|(.*)\|$", line)
        if match:
            rows[int(match[1])] = [cell.strip() for cell in match[2].split("|")]
    return rows


def test_the_readme_table_has_a_row_per_status_and_they_are_pytests_own() -> None:
    rows = _readme_rows()
    assert sorted(rows) == [int(s) for s in ExitStatus]
    assert [
        ExitStatus.OK,
        ExitStatus.FAILED,
        ExitStatus.INTERRUPTED,
        ExitStatus.NO_VERDICT,
        ExitStatus.USAGE,
        ExitStatus.NO_TESTS,
    ] == [
        pytest.ExitCode.OK,
        pytest.ExitCode.TESTS_FAILED,
        pytest.ExitCode.INTERRUPTED,
        pytest.ExitCode.INTERNAL_ERROR,
        pytest.ExitCode.USAGE_ERROR,
        pytest.ExitCode.NO_TESTS_COLLECTED,
    ]
    # interrupted in every column; only pytest collects (5)
    assert all(cell for cell in rows[2]), rows[2]
    assert [bool(cell) for cell in rows[5]] == [True, True, False, False, False, False]


# --- Every command interrupted, crashing, misused -----------------------------------------

CHILD = """
import importlib, json, sys, time
from pytest_meshconform import signals

target, action, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
module_name, _, name = target.rpartition(".")
module = importlib.import_module(module_name)
real = getattr(module, name)

def stand_in(*args, **kwargs):
    if action == "crash":
        raise RuntimeError("a bug in meshconform")
    result = real(*args, **kwargs) if action == "after" else None  # the audit's run dir
    print("window " + json.dumps([str(a) for a in args]), flush=True)
    deadline = time.monotonic() + 120
    while signals.pending() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # the signal lands here: raised, or held by the code under test
    if action != "after":
        sys.exit(99)
    return result

setattr(module, name, stand_in)
from pytest_meshconform.cli import main
sys.exit(main(argv))
"""

# command -> (a function it calls, called at call time, and the arguments)
COMMANDS = {
    "diff": ("pytest_meshconform.report.load_report", ["diff", "old.yaml", "new.yaml"]),
    "sweep": ("pytest_meshconform.backends.local.host.sweep_stale_runs", ["sweep"]),
    "doctor": (
        "pytest_meshconform.backends.kube.kind.resolve_context",
        ["doctor", "--mesh-kube-context=prod"],
    ),
    "audit": ("pytest_meshconform.audit.local.with_audit_probes", ["audit"]),
}


class Child:
    """`meshconform ARGS` with one function replaced, in its own process."""

    def __init__(self, target: str, action: str, argv: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, target, action, *argv],
            cwd=cwd,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # the signals reach it even where this run was started with them ignored
            # (SIGINT in a background job, SIGHUP under nohup)
            preexec_fn=default_signals,
        )

    def window(self) -> list[str]:
        """Wait until the child says it is in its window; the arguments of the call."""
        assert self.proc.stdout is not None
        fd, line = self.proc.stdout.fileno(), b""
        deadline = time.monotonic() + 120
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                pytest.fail(f"no window after 120s: {self.finish()}")
            chunk = os.read(fd, 1)
            if not chunk:
                pytest.fail(f"the command ended before its window: {self.finish()}")
            line += chunk
        assert line.startswith(b"window "), line
        args: list[str] = json.loads(line[len(b"window ") :])
        return args

    def finish(self) -> str:
        try:
            out, err = self.proc.communicate(timeout=120)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.communicate()
        return (out + err).decode(errors="replace")


SIGNALS = {"diff": signal.SIGINT, "sweep": signal.SIGTERM, "doctor": signal.SIGHUP}


@pytest.mark.parametrize("command", SIGNALS)
def test_a_command_interrupted_by_a_signal_exits_2(tmp_path: Path, command: str) -> None:
    """Ctrl-C, SIGTERM or SIGHUP: "interrupted", exit 2, no traceback (before: a traceback
    and -2 for Ctrl-C, killed by the signal for SIGTERM and SIGHUP)."""
    target, argv = COMMANDS[command]
    child = Child(target, "wait", argv, tmp_path)
    child.window()
    child.proc.send_signal(SIGNALS[command])
    output = child.finish()
    assert child.proc.returncode == ExitStatus.INTERRUPTED, output
    assert f"meshconform {command}: interrupted ({SIGNALS[command].name})" in output, output
    assert "Traceback" not in output, output


@needs_local_mesh
def test_an_audit_interrupted_while_its_mesh_comes_up_exits_2_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """SIGTERM once the audit's local mesh has its run directory: torn down, then exit 2."""
    child = Child(
        "pytest_meshconform.backends.local.host.make_run_directory", "after", ["audit"], tmp_path
    )
    (run_id,) = child.window()
    child.proc.send_signal(signal.SIGTERM)
    output = child.finish()
    assert child.proc.returncode == ExitStatus.INTERRUPTED, output
    assert "meshconform audit: interrupted (SIGTERM)" in output, output
    assert "Traceback" not in output, output
    assert traces_of(run_id) == [], output


@pytest.mark.parametrize("command", COMMANDS)
def test_a_command_that_crashes_exits_3_with_its_traceback(tmp_path: Path, command: str) -> None:
    """A bug is no verdict: 3 with the traceback, never 1 ("regression", "not conforming")."""
    target, argv = COMMANDS[command]
    child = Child(target, "crash", argv, tmp_path)
    output = child.finish()
    assert child.proc.returncode == ExitStatus.NO_VERDICT, output
    assert "RuntimeError: a bug in meshconform" in output, output
    assert f"meshconform {command}: internal error" in output, output


USAGE = {
    "no command": [],
    "diff": ["diff", "only-one.yaml"],
    "diff, unknown option": ["diff", "--bogus", "a.yaml", "b.yaml"],
    "audit": ["audit", "--namespace=foo", "--exclude-namespace=foo"],
    "audit, bad choice": ["audit", "--require=MAYBE"],
    "doctor": ["doctor", "--mesh-cluster=local"],
    "sweep": ["sweep", "everything"],
}


@pytest.mark.parametrize("case", USAGE)
def test_a_usage_error_exits_4_never_2(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    """argparse's own errors included (argparse exits 2, which means interrupted here)."""
    try:
        status = main(USAGE[case])
    except SystemExit as exit:
        status = exit.code  # type: ignore[assignment]
    assert status == ExitStatus.USAGE, capsys.readouterr()
    assert "error" in capsys.readouterr().err


def test_sweep_with_nothing_to_sweep_exits_0(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On empty roots of its own (the machine's runs are other tests' and helpers')."""
    for name in ("STATE_ROOT", "NETNS_RUN", "NETNS_ETC"):
        (tmp_path / name).mkdir()
        monkeypatch.setattr(host, name, tmp_path / name)
    assert main(["sweep"]) == ExitStatus.OK
    assert capsys.readouterr().out == "nothing to sweep\n"


# --- pytest with the plugin -------------------------------------------------------------------

PYTEST_CASES: dict[str, tuple[dict[str, str], list[str], ExitStatus]] = {
    "passed": ({"test_ok.py": "def test_ok():\n    pass\n"}, [], ExitStatus.OK),
    "failed": ({"test_no.py": "def test_no():\n    assert False\n"}, [], ExitStatus.FAILED),
    "internal error": (
        {"conftest.py": "def pytest_collection_finish(session):\n    raise RuntimeError('bug')\n"},
        [],
        ExitStatus.NO_VERDICT,
    ),
    "usage": (
        {"test_ok.py": "def test_ok():\n    pass\n"},
        ["--mesh-cluster=nowhere"],
        ExitStatus.USAGE,
    ),
    "nothing collected": ({}, [], ExitStatus.NO_TESTS),
}


@pytest.mark.parametrize("case", PYTEST_CASES)
def test_pytest_with_the_plugin(pytester: pytest.Pytester, case: str) -> None:
    files, args, expected = PYTEST_CASES[case]
    for name, text in files.items():
        pytester.path.joinpath(name).write_text(text)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    assert result.ret == expected, result.stdout.str() + result.stderr.str()
