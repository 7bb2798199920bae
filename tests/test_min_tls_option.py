"""--mesh-min-tls-version / mesh_min_tls_version: validated, local only, honoured by the mesh."""

from __future__ import annotations

from pathlib import Path

import pytest
from local_helpers import CONFORMANCE, assert_runs_left_nothing, needs_local_mesh

from pytest_meshconform.mesh import mesh_min_tls_version
from pytest_meshconform.plugin.options import resolve_settings
from pytest_meshconform.settings import MeshSettings, OptionLayer, SettingsError


def _resolve(cli: dict[str, str], ini: dict[str, str] | None = None) -> MeshSettings:
    return MeshSettings.resolve(
        OptionLayer(origin="cli", base_dir=Path("/run"), **cli),  # type: ignore[arg-type]
        OptionLayer(origin="ini", base_dir=Path("/proj"), **(ini or {})),  # type: ignore[arg-type]
    )


def test_cli_over_ini_and_default() -> None:
    assert _resolve({}).min_tls_version is None
    assert _resolve({}, {"min_tls_version": "TLSV1_2"}).min_tls_version == "TLSV1_2"
    both = _resolve({"min_tls_version": "TLSV1_3"}, {"min_tls_version": "TLSV1_2"})
    assert both.min_tls_version == "TLSV1_3"
    assert "min-tls-version=TLSV1_3" in both.header_lines()[0]


@pytest.mark.parametrize(
    ("cli", "ini", "message"),
    [
        (
            {"min_tls_version": "TLSV1_0"},
            {},
            "--mesh-min-tls-version: invalid value 'TLSV1_0'; accepted values: TLS_AUTO,"
            " TLSV1_2, TLSV1_3",
        ),
        (
            {},
            {"min_tls_version": "1.3"},
            "mesh_min_tls_version (ini option): invalid value '1.3'",
        ),
        (
            {"min_tls_version": "TLSV1_3", "cluster": "kind"},
            {},
            "--mesh-min-tls-version applies to the local mesh only; on --mesh-cluster=kind"
            " meshconform reads meshMTLS.minProtocolVersion from istiod's mesh config",
        ),
    ],
)
def test_refused_values(cli: dict[str, str], ini: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as error:
        _resolve(cli, ini)
    assert message in str(error.value)


def test_pytest_option_and_ini_twin(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmesh_min_tls_version = TLSV1_2\n")
    config = pytester.parseconfig("--mesh-min-tls-version=TLSV1_3")
    assert resolve_settings(config).min_tls_version == "TLSV1_3"
    assert resolve_settings(pytester.parseconfig()).min_tls_version == "TLSV1_2"


def test_a_mesh_that_does_not_say_is_tls_auto() -> None:
    class Plain:
        pass

    class Aware:
        min_tls_version = "TLSV1_3"

    assert mesh_min_tls_version(Plain()) == "TLS_AUTO"  # type: ignore[arg-type]
    assert mesh_min_tls_version(Aware()) == "TLSV1_3"  # type: ignore[arg-type]


@needs_local_mesh
def test_posture_suite_passes_with_tls13_minimum(pytester: pytest.Pytester) -> None:
    """The local mesh honours the option: the posture suite's version test then expects TLS 1.3
    only (and passes), the sidecar config shows TLSv1_3, the TLS 1.2 cipher test skips."""
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-rs",
        "--mesh-min-tls-version=TLSV1_3",
        str(CONFORMANCE / "test_posture.py"),
    )
    assert_runs_left_nothing(result.stdout.str())
    result.assert_outcomes(passed=5, skipped=1)
    result.stdout.fnmatch_lines(["*minProtocolVersion is TLSV1_3*"])
