"""--mesh-dataplane=sidecar|ambient|both (ini mesh_dataplane): the built-in topology's data plane.

`ambient` labels the built-in mesh namespaces (foo, bar) `istio.io/dataplane-mode=ambient`;
`both` runs every test that uses the mesh once per data plane, its id naming it. Bad values,
a topology file next to it, and ambient on the kube backends (not there yet) are usage errors.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from local_helpers import assert_runs_left_nothing, needs_local_mesh

from pytest_meshconform.backends.local.entry import builtin_topology
from pytest_meshconform.settings import MeshSettings, OptionLayer, SettingsError


def _resolve(cli: dict[str, str] | None = None, ini: dict[str, str] | None = None) -> MeshSettings:
    here = Path.cwd()
    return MeshSettings.resolve(
        OptionLayer(origin="cli", base_dir=here, **(cli or {})),  # type: ignore[arg-type]
        OptionLayer(origin="ini", base_dir=here, **(ini or {})),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("cli", "ini", "choice", "planes"),
    [
        ({}, {}, "sidecar", ("sidecar",)),
        ({"dataplane": "ambient"}, {}, "ambient", ("ambient",)),
        ({}, {"dataplane": "both"}, "both", ("sidecar", "ambient")),
        ({"dataplane": "sidecar"}, {"dataplane": "both"}, "sidecar", ("sidecar",)),
    ],
)
def test_dataplane_resolves_cli_over_ini_over_default(
    cli: dict[str, str], ini: dict[str, str], choice: str, planes: tuple[str, ...]
) -> None:
    settings = _resolve(cli, ini)
    assert settings.dataplane == choice
    assert settings.dataplanes == planes


@pytest.mark.parametrize(
    ("cli", "ini", "message"),
    [
        (
            {"dataplane": "ztunnel"},
            {},
            "--mesh-dataplane: invalid value 'ztunnel'; accepted values: sidecar, ambient, both"
            " (e.g. --mesh-dataplane=both tests sidecars and ambient, one after the other)",
        ),
        (
            {},
            {"dataplane": "Ambient"},
            "mesh_dataplane (ini option): invalid value 'Ambient'; accepted values: sidecar,"
            " ambient, both (e.g. mesh_dataplane (ini option) = both",
        ),
    ],
)
def test_dataplane_errors_name_the_option_and_the_fix(
    cli: dict[str, str], ini: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        _resolve(cli, ini)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)  # one line


@pytest.mark.parametrize(
    ("cli", "ini", "planes"),
    [
        ({"dataplane": "sidecar", "cluster": "kind"}, {}, ("sidecar",)),
        ({"dataplane": "ambient", "cluster": "kind"}, {}, ("ambient",)),
        (
            {"cluster": "existing", "kube_context": "prod"},
            {"dataplane": "both"},
            ("sidecar", "ambient"),
        ),
    ],
)
def test_every_dataplane_is_accepted_on_the_kube_backends(
    cli: dict[str, str], ini: dict[str, str], planes: tuple[str, ...]
) -> None:
    """The kube backends run ambient namespaces too (issue 21)."""
    assert _resolve(cli, ini).dataplanes == planes


def test_dataplane_and_a_topology_file_are_exclusive(tmp_path: Path) -> None:
    topology = tmp_path / "topology.yaml"
    topology.write_text("namespaces: []\n")
    with pytest.raises(SettingsError) as caught:
        _resolve({"dataplane": "ambient", "topology": str(topology)})
    assert str(caught.value) == (
        f"--mesh-dataplane chooses the data plane of the built-in topology; the topology file"
        f" {topology} sets each namespace's own (dataplane: sidecar | ambient | none,"
        " docs/topology.md): drop one of them"
    )


@pytest.mark.parametrize("plane", ["sidecar", "ambient"])
def test_builtin_topology_on_each_dataplane(plane: str) -> None:
    topology = builtin_topology(plane)  # type: ignore[arg-type]
    planes = {p.workload.key: p.workload.dataplane for p in topology.pods}
    assert planes == {
        "sleep.foo": plane,
        "httpbin.foo": plane,
        "sleep.bar": plane,
        "httpbin.bar": plane,
        "sleep.legacy": "none",
        "httpbin.legacy": "none",
    }
    # Same pods, same addresses and Services whatever the data plane.
    sidecar = builtin_topology("sidecar")
    assert [(p.workload.key, p.ip) for p in topology.pods] == [
        (p.workload.key, p.ip) for p in sidecar.pods
    ]
    assert [(e.service, e.vip) for e in topology.services] == [
        (e.service, e.vip) for e in sidecar.services
    ]


@pytest.mark.parametrize(
    ("args", "lines", "message"),
    [
        (
            ["--mesh-dataplane=sidecars"],
            [],
            "ERROR: --mesh-dataplane: invalid value 'sidecars'; accepted values: sidecar,"
            " ambient, both",
        ),
    ],
)
def test_dataplane_usage_errors_exit_4(
    pytester: pytest.Pytester, args: list[str], lines: list[str], message: str
) -> None:
    if lines:
        pytester.makeini("[pytest]\n" + "\n".join(lines) + "\n")
    pytester.makepyfile("def test_one(mesh): pass")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_header_names_the_dataplane(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_one(): pass")
    result = pytester.runpytest("--mesh-dataplane=both")
    result.assert_outcomes(passed=1)
    assert "meshconform: cluster=local cert-ttl=24h keep=no dataplane=both" in result.outlines


def test_help_lists_the_option(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["  --mesh-dataplane=sidecar|ambient|both"])
    result.stdout.fnmatch_lines(["  mesh_dataplane (string):*"])


def test_tests_without_the_mesh_are_not_parametrized(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_one(): pass")
    result = pytester.runpytest("--mesh-dataplane=both", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["test_tests_without_the_mesh_are_not_parametrized.py::test_one"])


# A suite written against the fixtures: each data plane's mesh, its workloads' data planes,
# and a request that goes through on each (HBONE between ambient pods).
SUITE = """
from pytest_meshconform import WorkloadHandle, tunnels_over_hbone


def test_planes(sleep: WorkloadHandle, httpbin: WorkloadHandle, naked_sleep: WorkloadHandle):
    print("PLANES", sleep.dataplane, httpbin.dataplane, naked_sleep.dataplane)
    assert sleep.curl(httpbin).ok


def test_legacy(naked_sleep: WorkloadHandle, httpbin: WorkloadHandle):
    assert naked_sleep.curl(httpbin).ok
"""


@needs_local_mesh
def test_both_runs_each_test_once_per_dataplane(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-v", "-s", "--mesh-dataplane=both"
    )
    assert_runs_left_nothing(result.stdout.str())
    result.assert_outcomes(passed=4)
    # One mesh per data plane, the sidecar one first and closed before the ambient one opens.
    _in_order(
        result.outlines,
        "test_suite.py::test_planes[sidecar]",
        "PLANES sidecar sidecar none",
        "test_suite.py::test_legacy[sidecar] PASSED",
        "test_suite.py::test_planes[ambient]",
        "PLANES ambient ambient none",
        "test_suite.py::test_legacy[ambient] PASSED",
    )
    assert result.stdout.str().count("mesh ready (local)") == 2


@needs_local_mesh
def test_ambient_alone_names_it_in_the_ids(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmesh_dataplane = ambient\n")
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", "-s")
    assert_runs_left_nothing(result.stdout.str())
    result.assert_outcomes(passed=2)
    _in_order(result.outlines, "test_suite.py::test_planes[ambient]", "PLANES ambient ambient none")


def _in_order(lines: list[str], *wanted: str) -> None:
    """Each wanted text starts a line, in this order (fnmatch would read `[ambient]` as a set)."""
    at = 0
    for text in wanted:
        found = next((i for i in range(at, len(lines)) if lines[i].startswith(text)), None)
        assert found is not None, f"{text!r} not found after line {at}:\n" + "\n".join(lines)
        at = found + 1
