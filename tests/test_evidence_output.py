"""What a run hands to people: the failure output in the terminal (summary first, only the
workloads the test touched, only its own log lines) and the reports (YAML with observations,
HTML opened in a real headless Chromium, Markdown read as text).

One real run on the local mesh serves every test here: a passing test that leaves access-log
lines before the failing one starts, a test that fails because the mesh is broken on purpose
(`--mesh-fault=strict-as-permissive`: STRICT lets plaintext through), and the built-in
reachability suite's 'namespace foo STRICT' case, whose matrix that fault breaks in one cell,
and the rotation suite (the suites' short certificate TTL), whose rotation the HTML draws.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml
from browser import Styled, chromium, computed_styles
from local_helpers import CONFORMANCE, REPO, assert_runs_left_nothing, needs_local_mesh
from pytest_meshconform.conformance.conftest import SUITE_CERT_TTL

from pytest_meshconform.settings import format_duration

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


def test_mesh_directly(mesh):
    """Uses the mesh without the fixtures' helpers, then fails."""
    sleep = mesh.workload("sleep", "bar")
    done = mesh.exec(sleep, ["curl", "-sS", "-o", "/dev/null", "http://httpbin.bar:8000/status/417"])
    assert done.returncode == 1, done
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
    shutil.copytree(CONFORMANCE, directory / "conformance")  # as a user copies the suites
    (directory / "summary.md").write_text("# an earlier step\n")
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(directory / "summary.md")}
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
            "--mesh-report=r.html",
            "--mesh-report=r.md",
            "--mesh-artifacts=evidence",
            "test_demo.py",
            "conformance/test_reachability.py::test_reachability[namespace foo STRICT]",
            "conformance/test_rotation.py",
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


def failure_of(output: str, name: str) -> str:
    """The terminal text of one test's failure: from its `___ name ___` line to the next."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("_") and f" {name} " in line)
    end = next(
        (
            i
            for i in range(start + 1, len(lines))
            if lines[i].startswith(("___", "===")) or "meshconform report:" in lines[i]
        ),
        len(lines),
    )
    return "\n".join(lines[start:end])


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
    failure = failure_of(run.output, "test_strict_refuses_plaintext")
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
    assert (
        "apply_policy = <PolicyApplier on the local mesh: applied PeerAuthentication/foo/default>"
        in failure
    )
    # `assert ..., cap` prints the capture as its flows, not as a dataclass dump
    assert "E       AssertionError: capture at httpbin.foo port 8080: 1 flow" in failure
    assert "sleep.legacy:" in failure and "-> httpbin.foo:8080 plaintext" in failure


def test_a_failure_shows_only_its_workloads_and_its_own_log_lines(run: Run) -> None:
    failure = failure_of(run.output, "test_strict_refuses_plaintext")
    logs = [t for t in sections(failure) if t.startswith("meshconform evidence: log ")]
    assert logs, failure[-3000:]
    for title in logs:
        assert title.split()[3] in ("httpbin.foo", "sleep.legacy"), title
        assert title.endswith("(this test)"), title
    assert "/status/418" in failure  # httpbin.foo's access log line of this test
    assert "/status/299" not in failure  # written by the test before: not this test's window
    assert "no configured limit" not in run.output  # Envoy's start-up warning is gone


def test_artifacts_keep_the_touched_sidecars_config_dumps(run: Run) -> None:
    failed = run.test("test_strict_refuses_plaintext")
    files = failed["evidence"]["files"]
    assert sorted(label for label in files if label.startswith("config_dump")) == [
        "config_dump httpbin.foo"  # the touched workload with a sidecar; sleep.legacy has none
    ]
    dump = json.loads((run.directory / files["config_dump httpbin.foo"]).read_text())
    kinds = {config["@type"].rsplit(".", 1)[-1] for config in dump["configs"]}
    assert {"ListenersConfigDump", "ClustersConfigDump"} <= kinds
    assert files["pcap httpbin.foo port 8080"].startswith("evidence/")
    # `assert ..., cap` quoted the capture's pcap under the mesh's run directory, which the
    # mesh removed when it stopped: the report's message names the copy instead
    assert "/run/meshconform/" not in failed["message"]
    assert f"({files['pcap httpbin.foo port 8080']})" in failed["message"]
    assert (run.directory / files["pcap httpbin.foo port 8080"]).is_file()


def test_a_test_that_touched_nothing_through_the_fixtures_gets_every_log_of_its_window(
    run: Run,
) -> None:
    failure = failure_of(run.output, "test_mesh_directly")
    logs = [t for t in sections(failure) if t.startswith("meshconform evidence: log ")]
    assert "meshconform evidence: log httpbin.bar envoy-access.log (this test)" in logs
    assert "/status/417" in failure
    assert "/status/299" not in failure and "/status/418" not in failure  # other tests' lines


def test_artifacts_keep_a_passing_tests_evidence_too(run: Run) -> None:
    passed = run.test("test_before")
    kept = run.directory / passed["evidence"]["directory"]
    summary = (kept / "summary.txt").read_text()
    assert "sleep.foo -> httpbin.foo (http://httpbin.foo:8000/status/299): HTTP 299" in summary


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


# --- the human-readable reports ----------------------------------------------------------------


class Dom(HTMLParser):
    """Chromium's --dump-dom output, as (tag, attributes, text) of the elements we look at."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.cells: list[tuple[str, str]] = []  # (class of a matrix <td>, its text)
        self.captions: list[str] = []
        self.titles: list[str] = []  # <title> texts: the page's and each SVG chart's
        self.entries: dict[str, str] = {}  # data-status of each entry section -> its text
        self.resources: list[str] = []  # any src/href: a self-contained page has none
        self._text: list[tuple[int, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        self.resources += [found[k] for k in ("src", "href") if k in found]
        self.stack.append((tag, found))
        self._text.append((len(self.stack), []))

    def handle_endtag(self, tag: str) -> None:
        name, attrs = self.stack.pop()
        _, parts = self._text.pop()
        text = " ".join(" ".join(parts).split())
        if self._text:
            self._text[-1][1].append(text)
        if name == "td" and "class" in attrs:
            self.cells.append((attrs["class"], text))
        if name == "caption":
            self.captions.append(text)
        if name == "title":
            self.titles.append(text)
        if name == "section" and "data-status" in attrs:
            self.entries[text.split(" ", 2)[1] if text.count(" ") >= 2 else text] = text

    def handle_data(self, data: str) -> None:
        if self._text:
            self._text[-1][1].append(data)


def png_colours(png: bytes) -> set[tuple[int, int, int]]:
    """The distinct RGB colours of an 8-bit RGB/RGBA, non-interlaced PNG (Chromium's)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, header = 8, [], b""
    while pos < len(png):
        length = int.from_bytes(png[pos : pos + 4], "big")
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    width, height = int.from_bytes(header[:4], "big"), int.from_bytes(header[4:8], "big")
    depth, colour_type, interlace = header[8], header[9], header[12]
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, header
    step = 3 if colour_type == 2 else 4
    raw, stride = zlib.decompress(b"".join(chunks)), width * step
    previous, colours = bytearray(stride), set()
    for row in range(height):
        kind, line = (
            raw[row * (stride + 1)],
            bytearray(raw[row * (stride + 1) + 1 : (row + 1) * (stride + 1)]),
        )
        for i in range(stride):
            left = line[i - step] if i >= step else 0
            up, corner = previous[i], previous[i - step] if i >= step else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + pred) & 0xFF
        colours.update((line[i], line[i + 1], line[i + 2]) for i in range(0, stride, step))
        previous = line
    return colours


GREEN, RED = "rgb(26, 127, 55)", "rgb(207, 34, 46)"


def badge_colours(badges: list[Styled]) -> dict[str, set[str]]:
    """Each badge's text (a status) -> the background colours the browser drew it in."""
    colours: dict[str, set[str]] = {}
    for badge in badges:
        colours.setdefault(badge.text, set()).add(badge.style["background-color"])
    return colours


def test_the_html_report_opens_in_a_real_browser_with_the_matrix_and_the_evidence(
    run: Run,
) -> None:
    page = run.directory / "r.html"
    assert f"meshconform report: {page}" in run.output
    dumped = chromium(run.directory, "--dump-dom", page.as_uri()).stdout
    dom = Dom()
    dom.feed(dumped)
    assert dom.resources == []  # nothing to fetch: the page opens with no network
    assert "reachability under 'namespace foo STRICT': 1 cells differ" in dom.captions
    # The 3x3 matrix, row by row (foo, bar, legacy clients; foo, bar, legacy servers): the
    # broken cell shows what was observed and what Istio expects.
    matrix = dom.cells[-9:]
    assert matrix == [
        ("ok", "mTLS"),
        ("ok", "mTLS"),
        ("ok", "plaintext"),
        ("ok", "mTLS"),
        ("ok", "mTLS"),
        ("ok", "plaintext"),
        ("mismatch", "plaintext expected reset"),
        ("ok", "plaintext"),
        ("ok", "plaintext"),
    ]
    failure = dom.entries["test_strict_refuses_plaintext"]
    assert failure.startswith("failed test_strict_refuses_plaintext")
    assert "Under STRICT, plaintext from a pod without a sidecar is refused." in failure
    assert 'PeerAuthentication foo/default {"mtls": {"mode": "STRICT"}}' in failure
    assert "log httpbin.foo envoy-access.log (this test)" in failure
    assert "GET /status/418" in failure and "/status/299" not in failure
    # The rotation the suite watched, as a chart: old and new certificate, when it was seen.
    (chart,) = [t for t in dom.titles if t.startswith("httpbin.foo: serial ")]
    assert " of the old lifetime); requests " in chart and " 0 failed" in chart
    assert (
        'class="timeline"' in dumped
        and "old certificate" in dom.entries["test_rotation_before_expiry"]
    )
    passed = dom.entries["test_before"]
    assert "sleep.foo -> httpbin.foo (http://httpbin.foo:8000/status/299): HTTP 299" in passed
    # Each badge in its own test's colour, as the browser computed it: in this failed report
    # the passed tests' badges are green, the failed ones red.
    badges = computed_styles(run.directory, page, ".entry .badge", ["background-color"])
    assert badge_colours(badges) == {"passed": {GREEN}, "failed": {RED}}
    # And drawn: the green and the red of the matrix are on the screen.
    shot = run.directory / "r.png"
    chromium(run.directory, "--window-size=1200,6000", f"--screenshot={shot}", page.as_uri())
    colours = png_colours(shot.read_bytes())
    assert (0xDA, 0xFB, 0xE1) in colours  # td.ok
    assert (0xFF, 0xCE, 0xCB) in colours  # td.mismatch


def test_the_markdown_report_reads_the_same(run: Run) -> None:
    text = (run.directory / "r.md").read_text()
    assert text.startswith("# meshconform conformance report: ❌ failure\n")
    ttl = format_duration(SUITE_CERT_TTL)  # the built-in suites' default (their conftest)
    (settings,) = [line for line in text.splitlines() if line.startswith("| Settings |")]
    assert settings.startswith(f"| Settings | cluster=local cert-ttl={ttl} keep=no; report=")
    # Words, not Python values, in what the report says (failure messages and evidence, in
    # fenced blocks, are quoted as the test and the mesh wrote them)
    said = re.sub(r"^(`{3,})\n.*?^\1$", "", text, flags=re.MULTILINE | re.DOTALL)
    python_values = [
        line for line in said.splitlines() if re.search(r"\b(None|True|False)\b", line)
    ]
    assert python_values == []
    assert "| Backend | local |" in text and "| Trust domain | cluster.local |" in text
    assert "> **Warning:** test-only faults were injected (strict-as-permissive)" in text
    assert (
        "| sleep.legacy | ❌ **plaintext** (expected reset) | ✅ plaintext | ✅ plaintext |" in text
    )
    assert "| sleep.foo | ✅ mTLS | ✅ mTLS | ✅ plaintext |" in text
    failure = text[text.index("**test_strict_refuses_plaintext**") :]
    assert "> Under STRICT, plaintext from a pod without a sidecar is refused." in failure
    assert "*log httpbin.foo envoy-access.log (this test)*" in failure
    assert "GET /status/418" in failure


def test_the_step_summary_is_appended_in_brief(run: Run) -> None:
    text = (run.directory / "summary.md").read_text()
    assert text.startswith("# an earlier step\n# meshconform conformance report: ❌ failure")
    # passing tests are one line; failures and matrices in full
    assert "- ✅ **test_before**: passed (" in text
    assert (
        "| sleep.legacy | ❌ **plaintext** (expected reset) | ✅ plaintext | ✅ plaintext |" in text
    )
    assert "GET /status/418" in text


FOO_STRICT = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {mtls: {mode: STRICT}}
"""


def test_the_audit_report_uses_the_same_renderer(tmp_path: Path) -> None:
    """`meshconform audit --report=audit.html` on a real local mesh: the page holds every
    Service port's expected vs observed mode and authorization, the requirement and the
    verdict (a port that fails the requirement is red in the table, issue 19), with its
    reason; opened in the same browser, with no network."""
    from pytest_meshconform.cli import main

    policy = tmp_path / "foo-strict.yaml"
    policy.write_text(FOO_STRICT)
    page = tmp_path / "audit.html"
    code = main(
        [
            *("audit", "--mesh-cluster=local", "--policy", str(policy), "--require=STRICT"),
            *("--exclude-namespace", "legacy", "--report", str(page)),
        ]
    )
    assert code == 1
    dom = Dom()
    dom.feed(chromium(tmp_path, "--dump-dom", page.as_uri()).stdout)
    assert dom.resources == []
    # the table agrees with the verdict: bar's mode is as predicted, its requirement is not met
    assert dom.captions == [
        "every Service port: what the probes must observe vs what they observed: 4 cells differ"
    ]
    foo_port = [
        ("ok", "STRICT"),
        ("ok", "mesh allowed, plaintext not reached"),
        ("ok", "met"),
        ("ok", "pass"),
    ]
    bar_port = [
        ("ok", "PERMISSIVE"),
        ("ok", "mesh allowed, plaintext allowed"),
        ("mismatch", "not met: PERMISSIVE expected met"),
        ("mismatch", "fail expected pass"),
    ]
    # httpbin.foo's ports (8000 http, 50051 grpc), then httpbin.bar's
    assert dom.cells == foo_port + foo_port + bar_port + bar_port
    failed = dom.entries["httpbin.bar:8000"]
    assert failed.startswith("failed httpbin.bar:8000 HTTP port of httpbin.bar (sidecar)")
    assert "accepts plaintext; required STRICT" in failed
    passed = dom.entries["httpbin.foo:8000"]
    assert "SNI outbound_.8000_._.httpbin.foo.svc.cluster.local" in passed
    # the shared renderer's badges: the passing port green in this failed audit
    badges = computed_styles(tmp_path, page, ".entry .badge", ["background-color"])
    assert badge_colours(badges)["passed"] == {GREEN}
