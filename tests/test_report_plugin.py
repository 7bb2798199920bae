"""plugin.report: the pytest side of conformance reports, run with pytester against small
test files and a stand-in ``mesh`` fixture (a session fixture of the same name in a conftest),
so no real mesh is started here; tests/test_cli.py diffs two reports of real local-mesh runs.
The expected documents are checked against the schema and the hand-written reference report of
test_report.py.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from test_report import (
    DELETE,
    PLUGIN_VERSION,
    REFERENCE_YAML,
    reference_document,
    set_field,
    validate,
)

from pytest_meshconform.report import load_report

# --- The plugin, run by pytester ------------------------------------------------------------

STAND_IN_MESH = """
import pytest
from types import SimpleNamespace
from pytest_meshconform.mesh import LogPositions, MeshInfo
from pytest_meshconform.plugin.report import mesh_info_key


@pytest.fixture(scope="session")
def mesh(request):
    # Stands in for the real fixture: what the report needs is the MeshInfo it records.
    request.config.stash[mesh_info_key] = MeshInfo(
        backend="local", name="istio", version="1.24.2", trust_domain="cluster.local",
        revision="canary",
    )
    return SimpleNamespace(
        backend="local", version="1.24.2", istio_version="1.24.2", trust_domain="cluster.local",
        features=frozenset({"mtls", "xfcc", "capture", "rotation"}),
        # a test's log window (plugin/session.py): no workload, no log line
        log_positions=lambda: LogPositions(at=0.0), workloads=lambda: [],
    )


@pytest.fixture(autouse=True)
def _uses_mesh(request):
    request.getfixturevalue("mesh")
"""

OUTCOMES_MODULE = """
import pytest
from pytest_meshconform.report.exhibits import evidence_of

pytestmark = pytest.mark.mesh_features("mtls")


def test_passes():
    pass


def test_fails(request, tmp_path):
    pcap = tmp_path / "capture.pcap"
    pcap.write_bytes(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"))
    evidence = evidence_of(request.node)
    evidence.add_file("pcap httpbin.foo", pcap)
    evidence.add_text("curl sleep.legacy", "curl: (56) Recv failure: Connection reset by peer")
    raise AssertionError("plaintext was not refused")


@pytest.mark.mesh_features("rotation")
def test_skipped():
    pytest.skip("needs a kind cluster")


@pytest.fixture
def broken_setup(request):
    log = "\\n".join(f"log line {i}" for i in range(200))
    evidence_of(request.node).add_text("sidecar log httpbin.foo", log)
    raise RuntimeError("no httpbin")


def test_setup_error(broken_setup):
    pass


@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("cleanup failed")


def test_teardown_error(broken_teardown):
    pass


@pytest.mark.xfail(reason="known gap", strict=False)
def test_xfailed():
    raise AssertionError("still broken")


@pytest.mark.xfail(reason="fixed upstream", strict=False)
def test_xpassed():
    pass


@pytest.mark.xfail(reason="must fail", strict=True)
def test_xpass_strict():
    pass
"""

IDENTITY_MODULE = """
import pytest


@pytest.mark.mesh_wide
@pytest.mark.mesh_min_version("1.22")
class TestIdentity:
    @pytest.mark.parametrize("namespace", ["foo", "bar"])
    @pytest.mark.mesh_features("xfcc")
    def test_spiffe(self, namespace):
        pass
"""


@pytest.fixture
def suite_dir(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(STAND_IN_MESH)
    pytester.makepyfile(test_strict=OUTCOMES_MODULE, test_identity=IDENTITY_MODULE)
    return pytester


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly", *args)


def test_yaml_report_of_every_outcome(suite_dir: pytest.Pytester) -> None:
    result = _run(suite_dir, "--mesh-report=out/report.yaml")
    result.assert_outcomes(passed=4, failed=2, errors=2, skipped=1, xfailed=1, xpassed=1)
    document = yaml.safe_load((suite_dir.path / "out" / "report.yaml").read_text())
    validate(document)
    report = load_report(suite_dir.path / "out" / "report.yaml")

    assert document["apiVersion"] == "meshconform/v1alpha1"
    assert document["kind"] == "ConformanceReport"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", document["date"])
    assert document["mesh"] == {
        "used": True,
        "backend": "local",
        "name": "istio",
        "version": "1.24.2",
        "trustDomain": "cluster.local",
        "revision": "canary",
    }
    assert document["meshconform"]["version"] == PLUGIN_VERSION
    assert document["meshconform"]["pytest"] == pytest.__version__
    assert document["run"]["exitStatus"] == 1
    assert document["result"] == "failure"
    assert document["summary"] == "3 passed, 2 failed, 2 errors, 1 skipped, 1 xfailed, 1 xpassed"
    # test_teardown_error passed its call, so pytest counts it as passed *and* error: the
    # report counts each test once, by what finally happened to it.
    assert document["statistics"] == {
        "total": 10,
        "passed": 3,
        "failed": 2,
        "errors": 2,
        "skipped": 1,
        "xfailed": 1,
        "xpassed": 1,
        "notRun": 0,
    }
    assert document["features"] == {"tested": ["mtls", "xfcc"], "untested": ["rotation"]}
    assert document["failedTests"] == [
        "strict::test_fails",
        "strict::test_setup_error",
        "strict::test_teardown_error",
        "strict::test_xpass_strict",
    ]
    assert document["skippedTests"] == ["strict::test_skipped"]
    assert [s["name"] for s in document["suites"]] == ["identity::TestIdentity", "strict"]

    outcomes = {t.id: (t.outcome, t.phase, t.message) for t in report.tests}
    assert outcomes == {
        "identity::TestIdentity::test_spiffe[foo]": ("passed", None, None),
        "identity::TestIdentity::test_spiffe[bar]": ("passed", None, None),
        "strict::test_passes": ("passed", None, None),
        "strict::test_fails": ("failed", None, "AssertionError: plaintext was not refused"),
        "strict::test_skipped": ("skipped", None, "needs a kind cluster"),
        "strict::test_setup_error": ("error", "setup", "RuntimeError: no httpbin"),
        "strict::test_teardown_error": ("error", "teardown", "RuntimeError: cleanup failed"),
        "strict::test_xfailed": ("xfailed", None, "known gap"),
        "strict::test_xpassed": ("xpassed", None, "fixed upstream"),
        "strict::test_xpass_strict": ("failed", None, "[XPASS(strict)] must fail"),
    }
    identity = document["suites"][0]["tests"][0]
    assert identity == {
        "id": "identity::TestIdentity::test_spiffe[foo]",
        "name": "test_spiffe[foo]",
        "nodeid": "test_identity.py::TestIdentity::test_spiffe[foo]",
        "outcome": "passed",
        "duration": identity["duration"],
        "features": ["xfcc"],
        "minMeshVersion": "1.22",
        "meshWide": True,
    }
    assert document["suites"][1]["features"] == ["mtls", "rotation"]
    assert document["suites"][1]["path"] == "test_strict.py"
    # Without --mesh-artifacts the pcap stays where the fixture put it; texts are not kept.
    fails = next(t for t in report.tests if t.id == "strict::test_fails")
    assert fails.evidence is not None and fails.evidence.directory is None
    [(label, path)] = fails.evidence.files
    assert label == "pcap httpbin.foo" and path.endswith("/test_fails0/capture.pcap")
    result.stdout.fnmatch_lines(
        ["*- meshconform report: */out/report.yaml (failure: 3 passed, 2 failed, 2 errors*"]
    )


def test_json_report_when_no_test_used_a_mesh(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_one():\n    pass\n")
    _run(pytester, "--mesh-report=report.json").assert_outcomes(passed=1)
    document = json.loads((pytester.path / "report.json").read_text())
    validate(document)
    assert document["mesh"] == {"used": False, "backend": "local"}
    assert document["result"] == "success"
    assert document["summary"] == "1 passed"
    assert document["features"] == {"tested": [], "untested": []}
    assert document["suites"][0]["name"] == "plain"
    assert document["suites"][0]["tests"][0]["id"] == "plain::test_one"


def test_tests_left_unrun_are_reported_as_notrun(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_stop="def test_a():\n    pass\n\n"
        "def test_b():\n    assert 0\n\n"
        "def test_c():\n    pass\n"
    )
    _run(pytester, "-x", "--mesh-report=r.yaml").assert_outcomes(passed=1, failed=1)
    report = load_report(pytester.path / "r.yaml")
    assert [(t.id, t.outcome) for t in report.tests] == [
        ("stop::test_a", "passed"),
        ("stop::test_b", "failed"),
        ("stop::test_c", "notrun"),
    ]
    assert report.statistics.not_run == 1


def test_collection_errors_are_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_ok="def test_ok():\n    pass\n",
        test_broken="import no_such_module_for_meshconform\n",
    )
    result = _run(pytester, "--mesh-report=r.yaml")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    document = yaml.safe_load((pytester.path / "r.yaml").read_text())
    validate(document)
    [error] = document["collectionErrors"]
    assert error["nodeid"] == "test_broken.py"
    assert (
        "ModuleNotFoundError: No module named 'no_such_module_for_meshconform'" in error["message"]
    )
    assert document["result"] == "failure"
    assert document["summary"] == (
        "1 not run, 1 collection error: nothing was tested; the run stopped at its collection"
        " errors"
    )
    assert document["run"]["exitStatus"] == 2


def test_failed_tests_evidence_is_archived_and_shown(suite_dir: pytest.Pytester) -> None:
    result = _run(
        suite_dir,
        "--mesh-report=report.yaml",
        "--mesh-artifacts=artifacts",
        "--junitxml=junit.xml",
        "-k",
        "test_fails or test_setup_error or test_passes",
    )
    result.assert_outcomes(passed=1, failed=1, errors=1)
    artifacts = suite_dir.path / "artifacts"
    fails_dir = artifacts / "test_strict.py__test_fails"
    assert sorted(p.name for p in fails_dir.iterdir()) == [
        ".meshconform-evidence",
        "curl_sleep.legacy.txt",
        "pcap_httpbin.foo.pcap",
    ]
    assert (fails_dir / "pcap_httpbin.foo.pcap").read_bytes() == bytes.fromhex(
        "d4c3b2a1020004000000000000000000ffff000001000000"
    )
    assert (fails_dir / "curl_sleep.legacy.txt").read_text() == (
        "curl: (56) Recv failure: Connection reset by peer"
    )
    setup_dir = artifacts / "test_strict.py__test_setup_error"
    log = (setup_dir / "sidecar_log_httpbin.foo.txt").read_text().splitlines()
    assert log[0] == "log line 0" and log[-1] == "log line 199" and len(log) == 200
    assert sorted(p.name for p in artifacts.iterdir()) == [
        "test_strict.py__test_fails",
        "test_strict.py__test_setup_error",
    ]

    report = load_report(suite_dir.path / "report.yaml")
    fails = next(t for t in report.tests if t.id == "strict::test_fails")
    assert fails.evidence is not None
    assert fails.evidence.directory == "artifacts/test_strict.py__test_fails"
    assert fails.evidence.files == (
        ("pcap httpbin.foo", "artifacts/test_strict.py__test_fails/pcap_httpbin.foo.pcap"),
        ("curl sleep.legacy", "artifacts/test_strict.py__test_fails/curl_sleep.legacy.txt"),
    )

    # In the terminal, with the failure.
    output = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: plaintext was not refused",
            "*- meshconform evidence -*",
            f"pcap httpbin.foo: {fails_dir}/pcap_httpbin.foo.pcap",
            f"curl sleep.legacy: {fails_dir}/curl_sleep.legacy.txt",
            "*- meshconform evidence: curl sleep.legacy -*",
            "curl: (56) Recv failure: Connection reset by peer",
        ]
    )
    # Long texts are cut to their last 80 lines in the terminal, never in the archive.
    assert (
        f"[120 earlier lines omitted; full text in {setup_dir}/sidecar_log_httpbin.foo.txt]\n"
        "log line 120\n" in output
    )
    assert "log line 119\n" not in output
    result.stdout.fnmatch_lines(
        [f"*- meshconform evidence: {artifacts} (2 tests: 1 failed, 1 error) -*"]
    )

    # In JUnit: the evidence with the failure, the mesh as testsuite properties.
    suite = ET.parse(suite_dir.path / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    properties = {p.get("name"): p.get("value") for p in suite.iterfind("properties/property")}
    assert properties == {
        "meshconform.version": PLUGIN_VERSION,
        "mesh.backend": "local",
        "mesh.name": "istio",
        "mesh.version": "1.24.2",
        "mesh.trust_domain": "cluster.local",
        "mesh.revision": "canary",
    }
    failure = suite.find("testcase[@name='test_fails']/failure")
    assert failure is not None and failure.text is not None
    assert "curl: (56) Recv failure: Connection reset by peer" in failure.text
    assert f"pcap httpbin.foo: {fails_dir}/pcap_httpbin.foo.pcap" in failure.text
    error = suite.find("testcase[@name='test_setup_error']/error")
    assert error is not None and error.text is not None
    assert "log line 199" in error.text


def test_junit_properties_without_a_mesh(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_one():\n    pass\n")
    _run(pytester, "--junitxml=junit.xml").assert_outcomes(passed=1)
    suite = ET.parse(pytester.path / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    properties = {p.get("name"): p.get("value") for p in suite.iterfind("properties/property")}
    assert properties == {"meshconform.version": PLUGIN_VERSION, "mesh.backend": "local"}


def test_stale_evidence_is_replaced_and_foreign_directories_are_left_alone(
    suite_dir: pytest.Pytester,
) -> None:
    artifacts = suite_dir.path / "artifacts"
    ours = artifacts / "test_strict.py__test_fails"
    ours.mkdir(parents=True)
    (ours / ".meshconform-evidence").write_text("test_strict.py::test_fails\n")
    (ours / "old.pcap").write_bytes(b"stale")
    foreign = artifacts / "test_strict.py__test_setup_error"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not meshconform's")
    _run(suite_dir, "--mesh-artifacts=artifacts", "-k", "test_fails or test_setup_error")
    assert not (ours / "old.pcap").exists()
    assert (ours / "pcap_httpbin.foo.pcap").is_file()
    assert (foreign / "keep.txt").read_text() == "not meshconform's"
    [hashed] = [p for p in artifacts.iterdir() if p.name.startswith(foreign.name + "-")]
    assert re.fullmatch(r"test_strict\.py__test_setup_error-[0-9a-f]{8}", hashed.name)
    assert (hashed / "sidecar_log_httpbin.foo.txt").is_file()


def test_evidence_without_artifacts_dir_points_at_the_files(suite_dir: pytest.Pytester) -> None:
    result = _run(suite_dir, "-k", "test_fails")
    result.stdout.fnmatch_lines(
        [
            "*- meshconform evidence -*",
            "pcap httpbin.foo: */test_fails0/capture.pcap",
            "(files may be temporary: keep them with --mesh-artifacts=DIR)",
        ]
    )


def test_unwritable_report_stops_the_run_before_it_starts(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_one():\n    pass\n")
    (pytester.path / "blocker").write_text("a file, not a directory")
    result = _run(pytester, "--mesh-report=blocker/report.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # tests/test_outputs.py: every case
    result.stderr.fnmatch_lines(
        ["ERROR: --mesh-report */blocker/report.yaml: */blocker is a file, not a directory: *"]
    )


def test_a_page_that_cannot_be_written_is_in_the_record(pytester: pytest.Pytester) -> None:
    """The HTML page is written after the record: the record must not say the run passed
    when the page's failure fails it. (A page path that cannot be written when the run
    starts stops it at once: tests/test_outputs.py; here a test takes the path meanwhile.)"""
    pytester.makepyfile(
        test_plain="import pathlib\n\n\ndef test_one():\n"
        "    pathlib.Path('pages/r.html').mkdir(parents=True)\n"
    )
    result = _run(pytester, "--mesh-report=r.yaml", "--mesh-report=pages/r.html")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["meshconform: report: cannot write */pages/r.html: *"])
    report = load_report(pytester.path / "r.yaml")
    (reason,) = report.reasons
    assert reason.startswith(f"cannot write {pytester.path / 'pages' / 'r.html'}: is a directory")
    assert (report.exit_status, report.result) == (1, "failure")
    assert report.summary == f"1 passed; the run failed: {reason}"
    assert [p.name for p in pytester.path.iterdir() if p.name.endswith(".partial")] == []


# --- --mesh-baseline --------------------------------------------------------------------------

UPGRADED_MODULE = """
import pytest


def test_a():
    pass


@pytest.mark.xfail(reason="broken since 1.25", strict=False)
def test_b():
    raise AssertionError("XFCC missing")


def test_c():
    pass


def test_d():
    pass
"""


def test_baseline_regression_fails_an_otherwise_green_run(pytester: pytest.Pytester) -> None:
    (pytester.path / "baseline.yaml").write_text(REFERENCE_YAML)
    pytester.makepyfile(test_strict=UPGRADED_MODULE)
    result = _run(
        pytester,
        "--mesh-baseline=baseline.yaml",
        *("--mesh-report=now.json", "--mesh-report=now.html", "--mesh-report=now.md"),
    )
    result.assert_outcomes(passed=3, xfailed=1)  # pytest alone would exit 0
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*= meshconform: comparison with baseline =*",
            "old: */baseline.yaml: istio 1.24.2 (local), 2025-06-01T10:00:00Z, 2 passed,"
            " 1 failed, 1 skipped",
            "new: this run: no mesh used (local), *, 3 passed, 1 xfailed; the run failed:"
            " regressions against the baseline",
            "Regressions (passed before, failing now): 1",
            "  strict::test_b: passed -> xfailed: broken since 1.25",
            "Fixes (failing before, passing now): 1",
            "  strict::test_c: failed -> passed",
            "New tests: 1",
            "  strict::test_d: passed",
            "Removed tests: 1",
            "  rotation::test_rotates: was skipped",
            "FAIL: 1 regression, 1 fix, 0 newly skipped, 0 other changes, 1 new test,"
            " 1 removed test",
            "meshconform: the run fails: regressions against the baseline",
        ]
    )
    document = json.loads((pytester.path / "now.json").read_text())
    assert document["run"]["exitStatus"] == 1
    # The run failed, and its report says so in every format: not "partial" for 3 passed.
    verdict = "3 passed, 1 xfailed; the run failed: regressions against the baseline"
    assert (document["result"], document["summary"]) == ("failure", verdict)
    result.stdout.fnmatch_lines([f"*- meshconform report: */now.json (failure: {verdict}) -*"])
    # The comparison is in the report, not only on the terminal: the record...
    validate(document)
    baseline = str(pytester.path / "baseline.yaml")
    assert document["comparison"] == {
        "baseline": {
            "report": baseline,
            "date": "2025-06-01T10:00:00Z",
            "mesh": "istio 1.24.2 (local)",
            "summary": "2 passed, 1 failed, 1 skipped",
        },
        "result": "fail",
        "regressions": [{"id": "strict::test_b", "was": "passed", "now": "xfailed"}],
        "infrastructure": [],
        "fixes": [{"id": "strict::test_c", "was": "failed", "now": "passed"}],
        "newlySkipped": [],
        "otherChanges": [],
        "newTests": [{"id": "strict::test_d", "now": "passed"}],
        "removedTests": [{"id": "rotation::test_rotates", "was": "skipped"}],
        "newCollectionErrors": [],
        "fixedCollectionErrors": [],
    }
    comparison = load_report(pytester.path / "now.json").comparison
    assert comparison is not None and comparison.failed
    # ... and the pages for people, with the terminal's lines
    markdown = (pytester.path / "now.md").read_text()
    assert f"| Baseline | {baseline}: istio 1.24.2 (local), 2025-06-01T10:00:00Z, 2 passed," in (
        markdown
    )
    assert markdown.startswith(f"# meshconform conformance report: ❌ failure\n\n{verdict}\n")
    assert "> **Warning:** regressions against the baseline: the run fails" in markdown
    assert "## ❌ Comparison with the baseline (FAIL: 1 regression, 1 fix," in markdown
    assert "#### ❌ **Regressions (passed before, failing now)**: regression" in markdown
    assert "- `strict::test_b: passed -> xfailed: broken since 1.25`" in markdown
    assert "- `strict::test_c: failed -> passed`" in markdown
    page = (pytester.path / "now.html").read_text()
    assert f'<span class="badge bad">failure</span></h1><p class="summary">{verdict}</p>' in page
    assert '<section class="entry bad" data-status="regression">' in page
    assert "<li>strict::test_b: passed -&gt; xfailed: broken since 1.25</li>" in page


def test_an_interrupted_run_reads_as_interrupted(pytester: pytest.Pytester) -> None:
    """A SIGTERM (a CI job's timeout) while the run owns the handlers, as the mesh fixture
    does: the report says the run was interrupted, and by what."""
    pytester.makepyfile(
        test_plain="""
import os
import signal

from pytest_meshconform import signals


def test_one():
    pass


def test_two():
    signals.acquire()
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100_000):  # the handler runs between bytecodes
        pass


def test_three():
    pass
"""
    )
    result = pytester.runpytest_subprocess(  # Ctrl-C in-process would stop this run too
        "-p", "no:cacheprovider", "-p", "no:randomly", "--mesh-report=r.yaml", "--mesh-report=r.md"
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED
    document = yaml.safe_load((pytester.path / "r.yaml").read_text())
    why = "SIGTERM: ending the run, removing what it made"
    verdict = f"1 passed, 2 not run; the run was interrupted: {why}"
    assert (document["result"], document["summary"]) == ("failure", verdict)
    assert (document["run"]["exitStatus"], document["run"]["reasons"]) == (2, [why])
    validate(document)
    assert load_report(pytester.path / "r.yaml").summary == verdict
    markdown = (pytester.path / "r.md").read_text()
    assert markdown.startswith(f"# meshconform conformance report: ❌ failure\n\n{verdict}\n")


def test_a_run_that_broke_reads_as_broken(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        "def pytest_runtest_logfinish(nodeid):\n    raise RuntimeError('a plugin broke')\n"
    )
    pytester.makepyfile(test_plain="def test_one():\n    pass\n")
    result = _run(pytester, "--mesh-report=r.yaml")
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    report = load_report(pytester.path / "r.yaml")
    assert (report.result, report.summary) == (
        "failure",
        "1 passed; the run stopped on an internal error: RuntimeError: a plugin broke",
    )


def test_an_all_skipped_run_says_nothing_was_tested(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="""
import pytest


def test_one():
    pytest.skip("needs ambient")


@pytest.mark.skip(reason="needs a kind cluster")
def test_two():
    pass
"""
    )
    result = _run(pytester, "--mesh-report=r.yaml")
    assert result.ret == pytest.ExitCode.OK  # pytest's own verdict: skips are no failure
    document = yaml.safe_load((pytester.path / "r.yaml").read_text())
    summary = "2 skipped: nothing was tested"
    assert (document["result"], document["summary"]) == ("partial", summary)
    result.stdout.fnmatch_lines([f"*- meshconform report: */r.yaml (partial: {summary}) -*"])


MISSING_WORKLOADS_MODULE = """
from pytest_meshconform.plugin.empties import skip_missing_workload


def test_ledger_refuses_plaintext(mesh):
    skip_missing_workload("the mesh's topology has no workload ledger.payments")


def test_checkout_reaches_ledger(mesh):
    skip_missing_workload("the mesh's topology has no workload checkout.payments")
"""


def test_a_run_whose_every_mesh_test_lacked_its_workloads_reads_as_failed(
    pytester: pytest.Pytester,
) -> None:
    """The run fails (plugin/empties.py) and its report, written before, says so and why: it
    said exit status 0, "partial: 2 skipped" while the run exited 1."""
    pytester.makeconftest(STAND_IN_MESH)
    pytester.makepyfile(test_ledger=MISSING_WORKLOADS_MODULE)
    result = _run(pytester, "--mesh-report=r.yaml", "--mesh-report=r.html")
    result.assert_outcomes(skipped=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    document = yaml.safe_load((pytester.path / "r.yaml").read_text())
    validate(document)
    reason = (
        "all 2 mesh test(s) were skipped because the built-in topology (sleep and httpbin in"
        " foo and bar, sleep in legacy) lacks the workloads they need"
    )
    assert document["run"] == {
        "duration": document["run"]["duration"],
        "exitStatus": 1,
        "reasons": [reason],
    }
    summary = f"2 skipped: nothing was tested; the run failed: {reason}"
    assert (document["result"], document["summary"]) == ("failure", summary)
    assert load_report(pytester.path / "r.yaml").reasons == (reason,)
    assert f'<p class="summary">{summary}</p>' in (pytester.path / "r.html").read_text()
    result.stdout.fnmatch_lines(
        [
            f"*- meshconform report: */r.yaml (failure: {summary}) -*",
            f"ERROR: meshconform: {reason}*",
        ]
    )


def test_baseline_without_regression_keeps_the_run_green(pytester: pytest.Pytester) -> None:
    (pytester.path / "baseline.yaml").write_text(REFERENCE_YAML)
    pytester.makepyfile(test_strict="def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    result = _run(pytester, "--mesh-baseline=baseline.yaml")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "Removed tests: 2",
            "OK: 0 regressions, 0 fixes, 0 newly skipped, 0 other changes, 0 new tests,"
            " 2 removed tests",
        ]
    )
    result.stdout.no_fnmatch_line("*the run fails*")


def test_malformed_baseline_is_a_usage_error_before_any_test_runs(
    pytester: pytest.Pytester,
) -> None:
    broken = set_field(reference_document(), "statistics.failed", 0)
    (pytester.path / "baseline.yaml").write_text(yaml.safe_dump(broken))
    pytester.makepyfile(test_strict="def test_a():\n    pass\n")
    result = _run(pytester, "--mesh-baseline=baseline.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --mesh-baseline: */baseline.yaml: statistics.failed: 0 does not agree with"
            " the tests (expected 1)"
        ]
    )


def test_report_classes_named_test_are_not_collected(pytester: pytest.Pytester) -> None:
    # TestResult and TestChange are data, not test classes: a test module that imports them
    # (as users' comparison scripts do) must not get a "cannot collect" warning for each.
    pytester.makepyfile(
        test_uses_report="from pytest_meshconform.report import TestChange, TestResult\n\n"
        "def test_one():\n    assert TestChange and TestResult\n"
    )
    _run(pytester, "-W", "error::pytest.PytestCollectionWarning").assert_outcomes(passed=1)


# --- Evidence paths that exist after the run --------------------------------------------------

# A stand-in for the mesh's own run directory: created for the session, removed at its end,
# as the local mesh removes /run/meshconform/<run>/ (captures included) when it stops.
RUN_DIR_CONFTEST = """
import shutil
import pytest


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("run")
    yield directory
    shutil.rmtree(directory)
"""

CAPTURE_MODULE = """
from pytest_meshconform.report.exhibits import evidence_of


def test_strict(request, run_dir):
    pcap = run_dir / "captures" / "httpbin.foo-8080.pcap"
    pcap.parent.mkdir()
    pcap.write_bytes(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"))
    evidence_of(request.node).add_file("pcap httpbin.foo port 8080", pcap)
    raise AssertionError(f"capture at httpbin.foo port 8080: 1 flow ({pcap})")
"""


def _capture_run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, str]:
    pytester.makeconftest(RUN_DIR_CONFTEST)
    pytester.makepyfile(test_strict=CAPTURE_MODULE)
    result = _run(
        pytester,
        *("--mesh-report=r.yaml", "--mesh-report=r.html", "--mesh-report=r.md"),
        f"--basetemp={pytester.path / 'tmp'}",
        *args,
    )
    result.assert_outcomes(failed=1)
    return result, str(pytester.path / "tmp" / "run0" / "captures" / "httpbin.foo-8080.pcap")


def test_without_artifacts_the_reports_say_a_removed_file_is_gone(
    pytester: pytest.Pytester,
) -> None:
    result, pcap = _capture_run(pytester)
    assert not Path(pcap).exists()  # the session's end removed it, as the mesh does
    test = yaml.safe_load((pytester.path / "r.yaml").read_text())["suites"][0]["tests"][0]
    reason = "removed at the end of the run; keep evidence with --mesh-artifacts=DIR"
    assert test["evidence"] == {"files": {}, "notKept": ["pcap httpbin.foo port 8080"]}
    assert test["message"] == (
        "AssertionError: capture at httpbin.foo port 8080: 1 flow"
        f" (<pcap httpbin.foo port 8080: not kept: {reason}>)"
    )
    page, markdown = ((pytester.path / name).read_text() for name in ("r.html", "r.md"))
    assert f"pcap httpbin.foo port 8080: not kept: {reason}" in page
    assert f"pcap httpbin.foo port 8080: not kept: {reason}" in markdown
    for text in (page, markdown, (pytester.path / "r.yaml").read_text()):
        assert pcap not in text  # no dead path in any report
    # The terminal prints the failure once the session is over: it says so too.
    result.stdout.fnmatch_lines(
        [
            "*- meshconform evidence -*",
            "pcap httpbin.foo port 8080: not kept: removed at the end of the run",
            "(keep evidence with --mesh-artifacts=DIR)",
        ]
    )
    assert f"pcap httpbin.foo port 8080: {pcap}" not in result.stdout.str()
    assert load_report(pytester.path / "r.yaml").tests[0].evidence is not None  # loads back


def test_with_artifacts_reports_and_regression_lines_point_at_the_copies(
    pytester: pytest.Pytester,
) -> None:
    baseline = set_field(reference_document(), "suites.0.tests.2.id", "strict::test_strict")
    baseline = set_field(baseline, "suites.0.tests.2.outcome", "passed")
    baseline = set_field(baseline, "suites.0.tests.2.message", DELETE)
    baseline = set_field(baseline, "suites.0.tests.2.evidence", DELETE)
    baseline = set_field(baseline, "failedTests", [])
    baseline = set_field(baseline, "result", "partial")
    baseline = set_field(baseline, "run.exitStatus", 0)  # nothing failed that run
    baseline = set_field(baseline, "statistics.passed", 3)
    baseline = set_field(baseline, "statistics.failed", 0)
    baseline = set_field(baseline, "suites.0.result", "success")
    baseline = set_field(baseline, "suites.0.statistics.passed", 3)
    baseline = set_field(baseline, "suites.0.statistics.failed", 0)
    (pytester.path / "baseline.yaml").write_text(yaml.safe_dump(baseline))
    result, pcap = _capture_run(
        pytester, "--mesh-artifacts=out/evidence", "--mesh-baseline=baseline.yaml"
    )
    copy = "out/evidence/test_strict.py__test_strict/pcap_httpbin.foo_port_8080.pcap"
    assert (pytester.path / copy).is_file()  # the copy outlives the run
    report = yaml.safe_load((pytester.path / "r.yaml").read_text())
    test = report["suites"][0]["tests"][0]
    assert test["evidence"]["files"] == {"pcap httpbin.foo port 8080": copy}
    assert test["message"] == f"AssertionError: capture at httpbin.foo port 8080: 1 flow ({copy})"
    assert report["comparison"]["regressions"] == [
        {"id": "strict::test_strict", "was": "passed", "now": "failed"}
    ]
    line = (
        f"strict::test_strict: passed -> failed: AssertionError: capture at httpbin.foo port"
        f" 8080: 1 flow ({copy}) (evidence: out/evidence/test_strict.py__test_strict)"
    )
    assert f"<li>{line.replace('>', '&gt;')}</li>" in (pytester.path / "r.html").read_text()
    # the terminal's regression line opens from where the run started (the report's directory)
    result.stdout.fnmatch_lines(
        [
            "Regressions (passed before, failing now): 1",
            f"  strict::test_strict: passed -> failed: *(evidence: {pytester.path}/out/evidence/"
            "test_strict.py__test_strict)",
        ]
    )
    for name in ("r.yaml", "r.html", "r.md"):
        assert pcap not in (pytester.path / name).read_text()


def test_a_page_elsewhere_says_where_its_evidence_paths_start(suite_dir: pytest.Pytester) -> None:
    result = _run(
        suite_dir,
        *("--mesh-report=out/r.yaml", "--mesh-report=out/r.html", "--mesh-report=pages/r.md"),
        *("--mesh-artifacts=out/evidence", "-k", "test_fails"),
    )
    result.assert_outcomes(failed=1)
    evidence = "evidence/test_strict.py__test_fails"
    assert (suite_dir.path / "out" / evidence / "pcap_httpbin.foo.pcap").is_file()
    markdown = (suite_dir.path / "pages" / "r.md").read_text()
    assert f"pcap httpbin.foo: {evidence}/pcap_httpbin.foo.pcap" in markdown  # the record's path
    assert (
        f"| Evidence paths | relative to {suite_dir.path / 'out'} (the directory of r.yaml) |"
    ) in markdown.splitlines()
    # beside the record, the paths open as they are: no such row
    assert "Evidence paths" not in (suite_dir.path / "out" / "r.html").read_text()
