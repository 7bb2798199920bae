"""The ``meshconform`` console script: ``meshconform diff OLD NEW``.

Synthetic reports check every category and exit status; the last test diffs two reports of two
real runs of the built-in STRICT suite on the local mesh, one of them with the test-only fault
that renders STRICT as PERMISSIVE.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from local_helpers import CONFORMANCE, assert_runs_left_nothing, needs_local_mesh
from test_report import REFERENCE_YAML

from pytest_meshconform.cli import EXIT_BAD_INPUT, main
from pytest_meshconform.report import (
    EvidenceRecord,
    SuiteResult,
    TestResult,
    load_report,
    load_schema,
    parse_report,
    write_report,
)


@pytest.fixture
def old_report(tmp_path: Path) -> Path:
    path = tmp_path / "old.yaml"
    path.write_text(REFERENCE_YAML)
    return path


@pytest.fixture
def upgraded_report(tmp_path: Path, old_report: Path) -> Path:
    """The reference run after an "upgrade": one of each kind of change."""
    old = load_report(old_report)
    strict, rotation = old.suites
    test_a, test_b, test_c = strict.tests
    new = dataclasses.replace(
        old,
        date="2025-06-02T10:00:00Z",
        mesh=dataclasses.replace(old.mesh, version="1.25.0"),
        suites=(
            SuiteResult(
                "strict",
                strict.path,
                (
                    dataclasses.replace(
                        test_a,
                        outcome="failed",
                        message="AssertionError: naked client got HTTP 200\nassert 200 is None",
                        evidence=EvidenceRecord("artifacts/strict_test_a", ()),
                    ),
                    dataclasses.replace(
                        test_b, outcome="skipped", message="the mesh lacks feature(s): capture"
                    ),
                    dataclasses.replace(test_c, outcome="passed", message=None, evidence=None),
                    TestResult(
                        "strict::test_e", "test_e", "x/test_strict.py::test_e", "passed", 0.1
                    ),
                ),
            ),
            SuiteResult(
                "rotation",
                rotation.path,
                (dataclasses.replace(rotation.tests[0], outcome="passed", message=None),),
            ),
        ),
    )
    path = tmp_path / "new.json"
    write_report(new, path)
    return path


def test_diff_prints_every_change_and_exits_1_on_regression(
    old_report: Path, upgraded_report: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["diff", str(old_report), str(upgraded_report)]) == 1
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines() == [
        f"old: {old_report}: istio 1.24.2 (local), 2025-06-01T10:00:00Z, 2 passed, 1 failed,"
        " 1 skipped",
        f"new: {upgraded_report}: istio 1.25.0 (local), 2025-06-02T10:00:00Z, 3 passed,"
        " 1 failed, 1 skipped",
        "Regressions (passed before, failing now): 1",
        "  strict::test_a: passed -> failed: AssertionError: naked client got HTTP 200"
        f" (evidence: {upgraded_report.parent / 'artifacts/strict_test_a'})",  # opens from here
        "Fixes (failing before, passing now): 1",
        "  strict::test_c: failed -> passed",
        "Newly skipped: 1",
        "  strict::test_b: passed -> skipped: the mesh lacks feature(s): capture",
        "Other changes: 1",
        "  rotation::test_rotates: skipped -> passed",
        "New tests: 1",
        "  strict::test_e: passed",
        "FAIL: 1 regression, 1 fix, 1 newly skipped, 1 other change, 1 new test, 0 removed tests",
    ]


def test_diff_of_a_report_with_itself_exits_0(
    old_report: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["diff", str(old_report), str(old_report)]) == 0
    assert capsys.readouterr().out.splitlines()[2:] == [
        "OK: 0 regressions, 0 fixes, 0 newly skipped, 0 other changes, 0 new tests, 0 removed tests"
    ]


def test_the_written_report_is_schema_valid(upgraded_report: Path) -> None:
    document = json.loads(upgraded_report.read_text())
    jsonschema.Draft202012Validator(load_schema()).validate(document)
    assert document["mesh"]["version"] == "1.25.0"
    assert document["summary"] == "3 passed, 1 failed, 1 skipped"


@pytest.mark.parametrize(
    ("name", "text", "error"),
    [
        ("missing.yaml", None, "missing.yaml: no such file"),
        ("report.xml", "<x/>", "report.xml: unknown report format '.xml'"),
        ("broken.yaml", "suites: [\n", "broken.yaml: not valid YAML"),
        ("other.yaml", "apiVersion: v1\nkind: Pod\n", "other.yaml: apiVersion: unsupported 'v1'"),
    ],
)
def test_bad_input_exits_2_with_a_message_naming_file_and_field(
    tmp_path: Path,
    old_report: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    text: str | None,
    error: str,
) -> None:
    bad = tmp_path / name
    if text is not None:
        bad.write_text(text)
    assert main(["diff", str(old_report), str(bad)]) == EXIT_BAD_INPUT
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"meshconform diff: error: {tmp_path}/{error}")


def test_a_report_whose_statistics_disagree_with_its_tests_is_bad_input(
    tmp_path: Path, old_report: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = yaml.safe_load(REFERENCE_YAML)
    document["suites"][0]["tests"][0]["outcome"] = "failed"  # statistics left as they were
    bad = tmp_path / "edited.yaml"
    bad.write_text(yaml.safe_dump(document))
    assert main(["diff", str(bad), str(old_report)]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err == (
        f"meshconform diff: error: {bad}: statistics.passed: 2 does not agree with the tests"
        " (expected 1)\n"
    )


@pytest.mark.parametrize("argv", [[], ["diff"], ["diff", "a.yaml"], ["merge", "a", "b"]])
def test_usage_errors_exit_4(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """4, never 2 (argparse's own), which means interrupted (README, "Exit statuses")."""
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == EXIT_BAD_INPUT == 4
    assert capsys.readouterr().err.startswith("usage: meshconform")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["--version"])
    assert raised.value.code == 0
    assert capsys.readouterr().out == (
        f"meshconform {importlib.metadata.version('pytest-meshconform')}\n"
    )


def _console_script() -> str:
    script = shutil.which("meshconform", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the meshconform console script is not installed next to this Python")
    return script


def _run_script(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_console_script(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_console_script(old_report: Path, upgraded_report: Path) -> None:
    # The exit statuses and messages are main()'s, tested above; this proves the entry point
    # hands them through (exit 0 is what any script exits with, so it is not run again here).
    regression = _run_script("diff", str(old_report), str(upgraded_report))
    assert regression.returncode == 1, regression.stderr
    assert "  strict::test_c: failed -> passed\n" in regression.stdout
    missing = _run_script("diff", str(old_report), str(old_report.with_name("nope.yaml")))
    assert missing.returncode == EXIT_BAD_INPUT
    assert missing.stderr == (
        f"meshconform diff: error: {old_report.with_name('nope.yaml')}: no such file\n"
    )


# --- Two real runs of the local mesh ---------------------------------------------------------

STRICT_SUITE = str(CONFORMANCE / "test_strict.py")
REGRESSED = "strict::test_strict_resets_plaintext"


@needs_local_mesh
def test_diff_of_two_real_runs_shows_the_regression_of_a_broken_mesh(
    pytester: pytest.Pytester,
) -> None:
    good = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", STRICT_SUITE, "--mesh-report=good.yaml"
    )
    assert_runs_left_nothing(good.stdout.str())
    assert good.ret == pytest.ExitCode.OK, good.stdout.str()
    broken = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        STRICT_SUITE,
        "--mesh-fault=strict-as-permissive",
        "--mesh-report=broken.json",
        "--mesh-artifacts=artifacts",
        "--mesh-baseline=good.yaml",
    )
    assert_runs_left_nothing(broken.stdout.str())
    assert broken.ret == pytest.ExitCode.TESTS_FAILED
    # The run itself compared with the baseline and named the regression.
    broken.stdout.fnmatch_lines(
        [
            "*= meshconform: comparison with baseline =*",
            "Regressions (passed before, failing now): 1",
            f"  {REGRESSED}: passed -> failed: AssertionError: plaintext was not refused by"
            " STRICT*",
            "FAIL: 1 regression, *",
        ]
    )

    validator = jsonschema.Draft202012Validator(load_schema())
    good_doc = yaml.safe_load((pytester.path / "good.yaml").read_text())
    broken_doc = json.loads((pytester.path / "broken.json").read_text())
    validator.validate(good_doc)
    validator.validate(broken_doc)
    for document in (good_doc, broken_doc):
        assert document["mesh"]["used"] is True
        assert document["mesh"]["backend"] == "local"
    assert good_doc["result"] == "success"
    assert "faults" not in good_doc["run"]
    assert broken_doc["run"]["faults"] == ["strict-as-permissive"]
    assert broken_doc["failedTests"] == [REGRESSED]
    assert broken_doc["run"]["exitStatus"] == 1

    # The evidence of the failure: the capture at the server opens in tshark.
    broken_report = parse_report(broken_doc)
    [failed] = [t for t in broken_report.tests if t.outcome == "failed"]
    assert failed.evidence is not None and failed.evidence.directory is not None
    pcaps = [p for label, p in failed.evidence.files if p.endswith(".pcap")]
    assert pcaps, failed.evidence
    if shutil.which("tshark"):
        read = subprocess.run(
            ["tshark", "-r", str(pytester.path / pcaps[0]), "-c", "1"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert read.returncode == 0, read.stderr

    # And the console script, on the two files.
    diff = _run_script("diff", "good.yaml", "broken.json", cwd=pytester.path)
    assert diff.returncode == 1, diff.stderr
    lines = diff.stdout.splitlines()
    assert lines[2] == "warning: the new run used test-only faults (strict-as-permissive)"
    assert lines[3] == "Regressions (passed before, failing now): 1"
    assert lines[4].startswith(
        f"  {REGRESSED}: passed -> failed: AssertionError: plaintext was not refused by STRICT"
    )
    assert lines[4].endswith(f"(evidence: {failed.evidence.directory})")
    assert lines[-1] == (
        "FAIL: 1 regression, 0 fixes, 0 newly skipped, 0 other changes, 0 new tests,"
        " 0 removed tests"
    )
