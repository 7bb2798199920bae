"""The plugin skeleton: options (CLI, ini, precedence, validation), markers, header, cost."""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
from datetime import timedelta
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

import pytest_meshconform.plugin.hooks
from pytest_meshconform.plugin.options import cluster_argument, mesh_settings_key, resolve_settings
from pytest_meshconform.settings import (
    MeshSettings,
    OptionLayer,
    SettingsError,
    format_duration,
    parse_cert_ttl,
)

HEAVY_MODULES = ("kubernetes", "cryptography", "dpkt")


@pytest.fixture(autouse=True)
def _plugin_autoload(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inner runs rely on the installed entry point, as users do."""
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)


def settings_of(pytester: pytest.Pytester, *args: str) -> MeshSettings:
    """What the plugin resolves from these arguments and the ini file pytester wrote.

    Read from a parsed config, as ``pytest_configure`` does: a configured one would cost a
    garbage collection at teardown (test_defaults covers the configured path and the stash).
    """
    return resolve_settings(pytester.parseconfig(*args))


def ini(pytester: pytest.Pytester, *lines: str) -> None:
    pytester.makeini("[pytest]\n" + "\n".join(lines) + "\n")


# --- cert TTL: Istio-style durations ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("90m", 5_400),
        ("24h", 86_400),
        ("1h30m", 5_400),
        ("1d12h", 129_600),
        ("7d", 604_800),
        ("3600", 3_600),
        ("1", 1),
        ("90d", 7_776_000),  # MAX_WORKLOAD_CERT_TTL itself is accepted
        ("2160h", 7_776_000),
        (" 24h ", 86_400),  # ini values may carry spaces
    ],
)
def test_cert_ttl_parses(text: str, seconds: int) -> None:
    assert parse_cert_ttl(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text",
    [
        "0s",
        "0",
        "0h0m",
        "91d",
        "90d1s",
        "7776001",
        "abc",
        "",
        "h",
        "1.5h",
        "30m1h",
        "-5s",
        "24H",
        "1w",
        "10ms",
        "1_000",
        "٣s",  # a non-ASCII digit
        "9" * 5000,  # beyond int()'s digit limit
    ],
)
def test_cert_ttl_rejects(text: str) -> None:
    with pytest.raises(SettingsError, match="expected a duration like 30s, 90m, 24h, 1h30m"):
        parse_cert_ttl(text)


@pytest.mark.parametrize(
    ("seconds", "spelled"),
    [(86_400, "24h"), (5_400, "1h30m"), (30, "30s"), (3_601, "1h1s"), (7_776_000, "2160h")],
)
def test_format_duration(seconds: int, spelled: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == spelled


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789dhms .-abc", max_size=12) | st.text(max_size=12))
def test_cert_ttl_arbitrary_text_parses_or_raises_settings_error(text: str) -> None:
    try:
        ttl = parse_cert_ttl(text)
    except SettingsError:
        return
    assert timedelta(0) < ttl <= timedelta(days=90)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=7_776_000))
def test_formatted_ttl_parses_back(seconds: int) -> None:
    ttl = timedelta(seconds=seconds)
    assert parse_cert_ttl(format_duration(ttl)) == ttl


# --- resolution, without pytest ---------------------------------------------------------------


def test_resolve_takes_cli_over_ini_over_default() -> None:
    cli = OptionLayer(origin="cli", base_dir=Path("/run"), cert_ttl="30s", report="r.json")
    ini_layer = OptionLayer(
        origin="ini",
        base_dir=Path("/proj"),
        cluster="existing",
        kube_context="current",
        keep=True,
        cert_ttl="90m",
        report="r.yaml",
        artifacts="evidence",
    )
    assert MeshSettings.resolve(cli, ini_layer) == MeshSettings(
        cluster="existing",
        kube_context="current",
        keep=True,
        cert_ttl=timedelta(seconds=30),
        report=Path("/run/r.json"),
        artifacts=Path("/proj/evidence"),
    )
    empty = OptionLayer(origin="ini", base_dir=Path("/proj"))
    assert MeshSettings.resolve(OptionLayer(origin="cli", base_dir=Path("/run")), empty) == (
        MeshSettings(
            cluster="local",
            kube_context=None,
            keep=False,
            cert_ttl=timedelta(hours=24),
            report=None,
            artifacts=None,
        )
    )


def test_resolve_errors_name_the_option_as_spelled() -> None:
    cli = OptionLayer(origin="cli", base_dir=Path("/run"))
    bad_ini = OptionLayer(origin="ini", base_dir=Path("/proj"), cert_ttl="abc")
    with pytest.raises(SettingsError, match=r"^mesh_cert_ttl \(ini option\): invalid duration"):
        MeshSettings.resolve(cli, bad_ini)
    bad_cli = OptionLayer(origin="cli", base_dir=Path("/run"), cert_ttl="abc")
    with pytest.raises(SettingsError, match=r"^--mesh-cert-ttl: invalid duration 'abc'"):
        MeshSettings.resolve(bad_cli, bad_ini)


def test_report_format_follows_suffix() -> None:
    assert MeshSettings(report=Path("/r/out.YML")).report_format == "yaml"
    assert MeshSettings(report=Path("/r/out.json")).report_format == "json"
    assert MeshSettings().report_format is None


def test_cluster_argument_explains_a_swallowed_test_path() -> None:
    assert cluster_argument("existing") == "existing"
    with pytest.raises(argparse.ArgumentTypeError) as raised:
        cluster_argument("conformance/")
    assert str(raised.value) == (
        "invalid value 'conformance/'; accepted values: local, kind, existing. 'conformance/'"
        " looks like a test path: a bare --mesh-cluster takes the next argument as its value;"
        " write --mesh-cluster=kind conformance/ or put --mesh-cluster last"
    )


# --- options through pytest -------------------------------------------------------------------


def test_defaults(pytester: pytest.Pytester) -> None:
    assert pytester.parseconfigure().stash[mesh_settings_key] == MeshSettings(
        cluster="local",
        kube_context=None,
        keep=False,
        cert_ttl=timedelta(hours=24),
        report=None,
        artifacts=None,
    )


@pytest.mark.parametrize(
    ("args", "field", "expected"),
    [
        (["--mesh-cluster=kind"], "cluster", "kind"),
        (["--mesh-cluster", "local"], "cluster", "local"),
        (["--mesh-cluster=existing", "--mesh-kube-context=prod"], "cluster", "existing"),
        (["--mesh-kube-context", "current"], "kube_context", "current"),
        (["--mesh-keep"], "keep", True),
        (["--mesh-cert-ttl=30s"], "cert_ttl", timedelta(seconds=30)),
        (["--mesh-cert-ttl", "1h30m"], "cert_ttl", timedelta(seconds=5_400)),
        (["--mesh-cert-ttl=600"], "cert_ttl", timedelta(minutes=10)),
    ],
)
def test_cli_forms(
    pytester: pytest.Pytester, args: list[str], field: str, expected: object
) -> None:
    assert getattr(settings_of(pytester, *args), field) == expected


@pytest.mark.parametrize(
    ("lines", "field", "expected"),
    [
        (["mesh_cluster = kind"], "cluster", "kind"),
        (["mesh_cluster = existing", "mesh_kube_context = prod"], "cluster", "existing"),
        (["mesh_kube_context = current"], "kube_context", "current"),
        (["mesh_keep = true"], "keep", True),
        (["mesh_keep = false"], "keep", False),
        (["mesh_cert_ttl = 1h30m"], "cert_ttl", timedelta(seconds=5_400)),
        (["mesh_cert_ttl = 7d"], "cert_ttl", timedelta(days=7)),
        (["mesh_cert_ttl ="], "cert_ttl", timedelta(hours=24)),  # empty = not given
    ],
)
def test_ini_forms(
    pytester: pytest.Pytester, lines: list[str], field: str, expected: object
) -> None:
    ini(pytester, *lines)
    assert getattr(settings_of(pytester), field) == expected


def test_paths_resolve_against_invocation_dir_or_ini_dir(pytester: pytest.Pytester) -> None:
    pytester.mkdir("sub")
    (pytester.path / "sub" / "pytest.ini").write_text(
        "[pytest]\nmesh_report = out/report.yml\nmesh_artifacts = evidence\n"
    )
    from_ini = settings_of(pytester, "-c", "sub/pytest.ini")
    assert from_ini.report == pytester.path / "sub" / "out" / "report.yml"
    assert from_ini.report_format == "yaml"
    assert from_ini.artifacts == pytester.path / "sub" / "evidence"
    from_cli = settings_of(
        pytester, "-c", "sub/pytest.ini", "--mesh-report=r.json", "--mesh-artifacts", "ev"
    )
    assert from_cli.report == pytester.path / "r.json"
    assert from_cli.report_format == "json"
    assert from_cli.artifacts == pytester.path / "ev"


@pytest.mark.parametrize(
    ("lines", "args", "field", "expected"),
    [
        (
            ["mesh_cluster = existing", "mesh_kube_context = prod"],
            ["--mesh-cluster=local"],
            "cluster",
            "local",
        ),
        (["mesh_cluster = kind"], ["-o", "mesh_cluster=local"], "cluster", "local"),
        (["mesh_kube_context = a"], ["--mesh-kube-context=b"], "kube_context", "b"),
        (["mesh_keep = false"], ["--mesh-keep"], "keep", True),
        (["mesh_keep = true"], [], "keep", True),
        (["mesh_cert_ttl = 90m"], ["--mesh-cert-ttl=30s"], "cert_ttl", timedelta(seconds=30)),
        (["mesh_report = a.yaml"], ["--mesh-report=b.json"], "report", "b.json"),
        (["mesh_artifacts = a"], ["--mesh-artifacts=b"], "artifacts", "b"),
    ],
)
def test_cli_wins_over_ini(
    pytester: pytest.Pytester, lines: list[str], args: list[str], field: str, expected: object
) -> None:
    ini(pytester, *lines)
    value = getattr(settings_of(pytester, *args), field)
    if field in ("report", "artifacts"):
        assert value == pytester.path / str(expected)
    else:
        assert value == expected


@pytest.mark.parametrize("args", [["--mesh-cluster"], ["--mesh-cluster", "-v"]])
def test_bare_mesh_cluster_means_kind(pytester: pytest.Pytester, args: list[str]) -> None:
    assert settings_of(pytester, *args).cluster == "kind"


def test_bare_mesh_cluster_after_test_path_runs_the_tests(pytester: pytest.Pytester) -> None:
    pytester.mkpydir("conformance")
    pytester.makepyfile(**{"conformance/test_one": "def test_one(): pass"})
    result = pytester.runpytest("conformance/", "--mesh-cluster")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["meshconform: cluster=kind cert-ttl=24h keep=no"])


@pytest.mark.parametrize("path", ["conformance/", "conformance", "conformance/test_one.py"])
def test_mesh_cluster_swallowing_a_test_path_is_a_usage_error(
    pytester: pytest.Pytester, path: str
) -> None:
    pytester.mkpydir("conformance")
    pytester.makepyfile(**{"conformance/test_one": "def test_one(): pass"})
    result = pytester.runpytest("--mesh-cluster", path)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    stderr = result.stderr.str()
    assert "accepted values: local, kind, existing" in stderr
    assert f"write --mesh-cluster=kind {path} or put --mesh-cluster last" in stderr


@pytest.mark.parametrize(
    ("lines", "args", "expected_in_stderr"),
    [
        (
            [],
            ["--mesh-cluster=foo"],
            "argument --mesh-cluster: invalid value 'foo'; accepted values: local, kind, existing",
        ),
        (
            ["mesh_cluster = foo"],
            [],
            "mesh_cluster (ini option): invalid value 'foo'; accepted values: local, kind,"
            " existing",
        ),
        (
            [],
            ["--mesh-cert-ttl=abc"],
            "--mesh-cert-ttl: invalid duration 'abc': expected a duration like 30s, 90m, 24h,"
            " 1h30m, 7d",
        ),
        (
            [],
            ["--mesh-cert-ttl=0s"],
            "--mesh-cert-ttl: duration '0s' out of range: expected a duration like",
        ),
        (
            ["mesh_cert_ttl = 91d"],
            [],
            "mesh_cert_ttl (ini option): duration '91d' out of range: expected a duration like",
        ),
        (
            [],
            ["--mesh-report=out.txt"],
            "--mesh-report: invalid report path 'out.txt'; accepted suffixes: .yaml, .yml, .json,"
            " .html, .htm, .md",
        ),
        (
            ["mesh_report = report"],
            [],
            "mesh_report (ini option): invalid report path 'report'; accepted suffixes:",
        ),
        ([], ["--mesh-report="], "--mesh-report: expected a path, got an empty value"),
        ([], ["--mesh-artifacts="], "--mesh-artifacts: expected a path, got an empty value"),
        (
            [],
            ["--mesh-kube-context="],
            "--mesh-kube-context: expected a kube context name (or 'current')",
        ),
        (
            ["mesh_keep = maybe"],
            [],
            "mesh_keep (ini option): invalid truth value 'maybe'; accepted values: true, false",
        ),
    ],
)
def test_invalid_values_are_usage_errors(
    pytester: pytest.Pytester, lines: list[str], args: list[str], expected_in_stderr: str
) -> None:
    if lines:
        ini(pytester, *lines)
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert expected_in_stderr in result.stderr.str()


@pytest.mark.parametrize(
    ("lines", "args", "spelled"),
    [
        ([], ["--mesh-cluster=existing"], "--mesh-cluster=existing"),
        (["mesh_cluster = existing"], [], "mesh_cluster = existing (ini option)"),
    ],
)
def test_existing_cluster_needs_a_kube_context_before_collection(
    pytester: pytest.Pytester, lines: list[str], args: list[str], spelled: str
) -> None:
    if lines:
        ini(pytester, *lines)
    pytester.makepyfile(
        "from pathlib import Path\nPath('collected').touch()\ndef test_one(): pass\n"
    )
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        f"{spelled} needs the kube context to run against: pass --mesh-kube-context=NAME"
        " (or set mesh_kube_context in the ini file); use 'current' for the kubeconfig's"
        " current context"
    ) in result.stderr.str()
    assert not (pytester.path / "collected").exists()


# --- header, markers, help, entry point -------------------------------------------------------


def test_header_shows_defaults(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_one(): pass")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    assert "meshconform: cluster=local cert-ttl=24h keep=no" in result.outlines


def test_header_shows_every_setting(pytester: pytest.Pytester) -> None:
    ini(pytester, "mesh_keep = true", "mesh_artifacts = evidence")
    pytester.makepyfile("def test_one(): pass")
    result = pytester.runpytest(
        "--mesh-cluster=existing",
        "--mesh-kube-context=prod",
        "--mesh-cert-ttl=5400",
        "--mesh-report=out/report.json",
    )
    result.assert_outcomes(passed=1)
    assert "meshconform: cluster=existing kube-context=prod cert-ttl=1h30m keep=yes" in (
        result.outlines
    )
    assert (
        f"meshconform: report={pytester.path}/out/report.json artifacts={pytester.path}/evidence"
        in result.outlines
    )


def test_header_flags_an_unused_kube_context(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--mesh-kube-context=prod")
    assert (
        "meshconform: cluster=local kube-context=prod (unused with cluster=local)"
        " cert-ttl=24h keep=no"
    ) in result.outlines


def test_markers_are_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines_random(
        [
            "@pytest.mark.mesh_wide: the test applies mesh-wide policy in the root namespace*",
            "@pytest.mark.mesh_features(*names): mesh features the test needs*",
            "@pytest.mark.mesh_min_version(version): the minimum mesh version*",
            "@pytest.mark.mesh_fault(name): test-only fault switch for the local mesh*",
        ]
    )


def test_strict_markers_accepts_the_mesh_markers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.mesh_wide
        @pytest.mark.mesh_features("peer-authentication", "destination-rule")
        @pytest.mark.mesh_min_version("1.24")
        @pytest.mark.mesh_fault("no-mtls")
        def test_marked():
            pass

        @pytest.mark.mesh_typo
        def test_typo():
            pass
        """
    )
    result = pytester.runpytest("--strict-markers")
    result.assert_outcomes(errors=1)  # only the unknown marker is refused
    result.stdout.fnmatch_lines(["*'mesh_typo' not found in `markers` configuration option*"])


def test_help_shows_the_group_and_ini_names(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "service mesh mTLS conformance:",
            "  --mesh-cluster=[local|kind|existing]",
            "*A bare*",
            "  --mesh-kube-context=NAME",
            "  --mesh-keep *",
            "  --mesh-cert-ttl=DURATION",
            "  --mesh-report=PATH *",
            "  --mesh-artifacts=DIR *",
        ]
    )
    result.stdout.fnmatch_lines_random(
        [
            "  mesh_cluster (string):*",
            "  mesh_kube_context (string):*",
            "  mesh_keep (bool):*",
            "  mesh_cert_ttl (string):*",
            "  mesh_report (string):*",
            "  mesh_artifacts (string):*",
        ]
    )


def test_help_works_while_settings_are_wrong(pytester: pytest.Pytester) -> None:
    ini(pytester, "mesh_cluster = existing")
    result = pytester.runpytest("--help")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["service mesh mTLS conformance:"])


def test_loaded_through_the_entry_point(pytester: pytest.Pytester) -> None:
    (entry_point,) = entry_points(group="pytest11", name="meshconform")
    assert entry_point.value == "pytest_meshconform.plugin.hooks"
    result = pytester.runpytest("--trace-config", "--co")
    result.stdout.re_match_lines(
        [r"^\s+meshconform\s+: .*pytest_meshconform[/\\]plugin[/\\]hooks\.py$"]
    )
    config = pytester.parseconfig()
    assert config.pluginmanager.get_plugin("meshconform") is pytest_meshconform.plugin.hooks


def test_disabled_with_p_no(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("-p", "no:meshconform", "--help")
    assert result.ret == pytest.ExitCode.OK
    assert "service mesh mTLS conformance:" not in result.stdout.str()
    result = pytester.runpytest("-p", "no:meshconform", "--mesh-cluster=kind")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unrecognized arguments: --mesh-cluster=kind" in result.stderr.str()


# --- cost: nothing heavy imported, nothing started --------------------------------------------


def test_importing_the_plugin_imports_nothing_heavy() -> None:
    code = textwrap.dedent(
        f"""
        import sys, threading
        import pytest_meshconform.plugin.hooks
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY_MODULES!r})
        assert heavy == [], heavy
        assert threading.active_count() == 1, threading.enumerate()
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr


def test_a_run_without_mesh_tests_imports_nothing_heavy(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only this plugin: what other installed plugins import is not ours to judge.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(
        f"""
        import sys

        def test_nothing_heavy_loaded(pytestconfig):
            assert pytestconfig.pluginmanager.get_plugin("pytest_meshconform.plugin.hooks")
            heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY_MODULES!r})
            assert heavy == []
        """
    )
    result = pytester.runpytest_subprocess("-p", "pytest_meshconform.plugin.hooks")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["meshconform: cluster=local cert-ttl=24h keep=no"])


def test_header_shows_the_suites_ttl_under_pyargs(pytester: pytest.Pytester) -> None:
    """Under --pyargs pytest loads the built-in suites' conftest while collecting; the settings
    line comes after that, so it shows the 10 s TTL in force, not the 24 h default."""
    result = pytester.runpytest("--pyargs", "pytest_meshconform.conformance", "--co")
    assert result.ret == pytest.ExitCode.OK
    assert "meshconform: cluster=local cert-ttl=10s keep=no" in result.outlines
    chosen = pytester.runpytest(
        "--pyargs", "pytest_meshconform.conformance", "--co", "--mesh-cert-ttl=1h"
    )
    assert "meshconform: cluster=local cert-ttl=1h keep=no" in chosen.outlines
