"""What a run hands to people: the failure output in the terminal (summary first, only the
workloads the test touched, only its own log lines) and the reports (YAML with observations,
HTML opened in a real headless Chromium, Markdown read as text).

One real run on the local mesh serves every test here: a passing test, a test that leaves
access-log lines before the failing one starts, and a test that fails because the mesh is
broken on purpose (`--mesh-fault=strict-as-permissive`: STRICT lets plaintext through).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from local_helpers import REPO, assert_runs_left_nothing, needs_local_mesh

pytestmark = needs_local_mesh

SUITE = '''
import pytest
from pytest_meshconform import peer_authentication


def test_before(sleep, httpbin):
    """Leaves a line in httpbin.foo's access log before the failing test starts."""
    assert sleep.curl(httpbin, path="/status/299").status == 299


@pytest.mark.mesh_features("mtls", "capture")
def test_strict_refuses_plaintext(apply_policy, naked_sleep, httpbin, capture):
    """Under STRICT, plaintext from a pod without a sidecar is refused."""
    apply_policy(peer_authentication("default", "foo", mode="STRICT"))
    with capture(httpbin) as cap:
        refused = naked_sleep.curl(httpbin, path="/status/418")
    assert refused.status is None, cap
'''


@dataclass(frozen=True)
class Run:
    directory: Path
    output: str
    returncode: int

    def report(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load((self.directory / "r.yaml").read_text())
        return loaded

    def test(self, name: str) -> dict[str, Any]:
        tests = [t for suite in self.report()["suites"] for t in suite["tests"]]
        (found,) = [t for t in tests if t["name"] == name]
        return found


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    directory = tmp_path_factory.mktemp("evidence")
    (directory / "test_demo.py").write_text(SUITE)
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "--mesh-fault=strict-as-permissive",
            "--mesh-report=r.yaml",
            "test_demo.py",
        ],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "PYTHONPATH": str(REPO)},
    )
    output = proc.stdout + proc.stderr
    assert_runs_left_nothing(output)
    return Run(directory, output, proc.returncode)


def sections(output: str) -> list[str]:
    """The titles of the report sections pytest printed (`---- title ----` lines)."""
    titles = []
    for line in output.splitlines():
        stripped = line.strip("- ")
        if line.startswith("-") and line.endswith("-") and stripped:
            titles.append(stripped)
    return titles


def test_a_failure_shows_its_summary_first(run: Run) -> None:
    assert run.returncode == 1, run.output[-3000:]
    failure = run.output[run.output.index("test_strict_refuses_plaintext ___") :]
    titles = [t for t in sections(failure) if t.startswith("meshconform")]
    assert titles[0] == "meshconform evidence: summary", titles
    summary = failure[failure.index("meshconform evidence: summary") :].splitlines()[1:8]
    assert summary == [
        "workloads touched:",
        "  httpbin.foo, sleep.legacy",
        "policies applied:",
        '  PeerAuthentication foo/default {"mtls": {"mode": "STRICT"}}',
        "requests:",
        "  sleep.legacy -> httpbin.foo (http://httpbin.foo:8000/status/418): HTTP 418",
        "captured flows:",
    ], failure[:4000]
    # `assert ..., cap` prints the capture as its flows, not as a dataclass dump
    assert "E       AssertionError: capture at httpbin.foo port 8080: 1 flow" in failure
    assert "sleep.legacy:" in failure and "-> httpbin.foo:8080 plaintext" in failure


def test_a_failure_shows_only_its_workloads_and_its_own_log_lines(run: Run) -> None:
    failure = run.output[run.output.index("test_strict_refuses_plaintext ___") :]
    logs = [t for t in sections(failure) if t.startswith("meshconform evidence: log ")]
    assert logs, failure[-3000:]
    for title in logs:
        assert title.split()[3] in ("httpbin.foo", "sleep.legacy"), title
        assert title.endswith("(this test)"), title
    assert "/status/418" in failure  # httpbin.foo's access log line of this test
    assert "/status/299" not in failure  # written by the test before: not this test's window
    assert "no configured limit" not in run.output  # Envoy's start-up warning is gone


def test_the_report_keeps_every_tests_observations_and_description(run: Run) -> None:
    before = run.test("test_before")
    assert before["outcome"] == "passed"
    assert before["description"] == (
        "Leaves a line in httpbin.foo's access log before the failing test starts."
    )
    assert before["observations"]["requests"] == [
        {
            "client": "sleep.foo",
            "url": "http://httpbin.foo:8000/status/299",
            "server": "httpbin.foo",
            "status": 299,
            "curlExit": 0,
            "outcome": "HTTP 299",
        }
    ]
    failed = run.test("test_strict_refuses_plaintext")
    assert failed["observations"]["policies"] == [
        'PeerAuthentication foo/default {"mtls": {"mode": "STRICT"}}'
    ]
    (flow,) = failed["observations"]["flows"]
    assert flow.startswith("at httpbin.foo: sleep.legacy:")
    assert " -> httpbin.foo:8080 plaintext " in flow and "GET /status/418 -> 418" in flow
