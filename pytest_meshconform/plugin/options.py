"""The plugin's options: registered with pytest, read back, handed on as pure settings.

One option group, "meshconform"; every flag is ``--mesh-*`` and has a ``mesh_*`` ini fallback
(other kube plugins already own ``--kubeconfig``, ``--keep-cluster``). ``settings.py`` resolves
and validates the plugin's own (``MeshSettings``), each backend its own (the kube backend's
``KUBE_OPTIONS``); this module is the only one that reads them from pytest, and it turns their
``SettingsError`` into ``pytest.UsageError`` (exit code 4) naming the option as the user wrote it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import pytest

from pytest_meshconform.backends.kube.options import KUBE_OPTIONS
from pytest_meshconform.backends.registry import BackendRun, GivenOption, OptionLookup, backend_for
from pytest_meshconform.settings import (
    CLUSTER_KINDS,
    DATAPLANE_CHOICES,
    Dataplane,
    MeshSettings,
    OptionLayer,
    SettingsError,
)

__all__ = [
    "add_options",
    "backend_header_lines",
    "backend_run",
    "cluster_argument",
    "mesh_settings_key",
    "option_lookup",
    "resolve_settings",
    "usage_errors",
]

mesh_settings_key: Final = pytest.StashKey[MeshSettings]()
"""Where ``pytest_configure`` leaves the run's MeshSettings: ``config.stash[mesh_settings_key]``."""


def _looks_like_test_path(value: str) -> bool:
    return any(mark in value for mark in ("/", os.sep, "::")) or value.endswith(".py")


def cluster_argument(value: str) -> str:
    """argparse ``type=`` for ``--mesh-cluster``, whose value is optional (bare means kind).

    With ``nargs="?"`` argparse hands the next word to the option, so ``--mesh-cluster tests/``
    would silently eat the test path; reject it and say how to write it instead.
    """
    if value in CLUSTER_KINDS:
        return value
    accepted = ", ".join(CLUSTER_KINDS)
    message = f"invalid value {value!r}; accepted values: {accepted}"
    if _looks_like_test_path(value) or os.path.exists(value):
        message += (
            f". {value!r} looks like a test path: a bare --mesh-cluster takes the next argument"
            f" as its value; write --mesh-cluster=kind {value} or put --mesh-cluster last"
        )
    raise argparse.ArgumentTypeError(message)


def add_options(parser: pytest.Parser) -> None:
    """The ``--mesh-*`` flags and ``mesh_*`` ini values: the plugin's own, then the backends'."""
    group = parser.getgroup("meshconform", "service mesh mTLS conformance")
    clusters = "|".join(CLUSTER_KINDS)
    group.addoption(
        "--mesh-cluster",
        nargs="?",
        const="kind",
        default=None,
        type=cluster_argument,
        metavar=clusters,
        help="Mesh to test: local (embedded, the default), kind, or existing. A bare"
        " --mesh-cluster means kind; before a test path write --mesh-cluster=kind."
        " ini: mesh_cluster.",
    )
    group.addoption(
        "--mesh-kube-context",
        default=None,
        metavar="NAME",
        help="Kube context to use with --mesh-cluster=existing (required there); 'current'"
        " means the kubeconfig's current context. ini: mesh_kube_context.",
    )
    group.addoption(
        "--mesh-keep",
        action="store_true",
        default=None,
        help="Keep the mesh (cluster, workloads, local processes) after the run, for"
        " debugging. ini: mesh_keep.",
    )
    group.addoption(
        "--mesh-cert-ttl",
        default=None,
        metavar="DURATION",
        help="Workload certificate TTL, like Istio's SECRET_TTL: 30s, 90m, 24h, 1h30m, 7d or"
        " plain seconds; > 0 and <= 90d (MAX_WORKLOAD_CERT_TTL). Default 24h."
        " ini: mesh_cert_ttl.",
    )
    group.addoption(
        "--mesh-report",
        action="append",
        default=None,
        metavar="PATH",
        help="Write a conformance report to PATH: .yaml, .yml or .json (the record), .html (a"
        " self-contained page) or .md (Markdown); repeat for several. ini: mesh_report.",
    )
    group.addoption(
        "--mesh-artifacts",
        default=None,
        metavar="DIR",
        help="Keep evidence (pcaps, Envoy config, certs) of failed tests under DIR."
        " ini: mesh_artifacts.",
    )
    group.addoption(
        "--mesh-baseline",
        default=None,
        metavar="PATH",
        help="A previous conformance report to compare this run against: regressions are"
        " listed at the end and fail the run. ini: mesh_baseline.",
    )
    group.addoption(
        "--mesh-min-tls-version",
        default=None,
        metavar="VERSION",
        help="The local mesh's meshConfig.meshMTLS.minProtocolVersion: TLS_AUTO (the default:"
        " TLS 1.2), TLSV1_2 or TLSV1_3. Kube backends read it from istiod's mesh config."
        " ini: mesh_min_tls_version.",
    )
    group.addoption(
        "--mesh-topology",
        default=None,
        metavar="PATH",
        help="The local mesh's topology: a YAML file of namespaces, workloads and Services"
        " (docs/topology.md); default the built-in foo/bar/legacy one. ini: mesh_topology.",
    )
    group.addoption(
        "--mesh-dataplane",
        default=None,
        metavar="|".join(DATAPLANE_CHOICES),
        help="The data plane of the local mesh's built-in topology (foo and bar; legacy keeps"
        " none): sidecar (Envoy sidecars, the default), ambient (ztunnel, HBONE) or both (every"
        " test that uses the mesh runs once per data plane, its id naming it)."
        " ini: mesh_dataplane.",
    )
    group.addoption(
        "--mesh-fault",
        action="append",
        default=None,
        help=argparse.SUPPRESS,  # test-only: break the local mesh to prove suites can fail
    )
    for option in KUBE_OPTIONS:
        help_text = f"{option.help} ini: mesh_{option.name}."
        if option.metavar is None:
            group.addoption(
                option.flag,
                dest=f"mesh_{option.name}",
                action="store_true",
                default=None,
                help=help_text,
            )
            parser.addini(
                f"mesh_{option.name}", option.ini_help or option.help, type="bool", default=False
            )
        else:
            group.addoption(
                option.flag,
                dest=f"mesh_{option.name}",
                default=None,
                metavar=option.metavar,
                help=help_text,
            )
            parser.addini(f"mesh_{option.name}", option.ini_help or option.help)
    parser.addini("mesh_cluster", f"mesh to test: {', '.join(CLUSTER_KINDS)} (default local)")
    parser.addini("mesh_kube_context", "kube context for mesh_cluster = existing, or 'current'")
    parser.addini("mesh_keep", "keep the mesh after the run (default false)", type="bool")
    parser.addini("mesh_cert_ttl", "workload certificate TTL, e.g. 24h (the default), 1h30m")
    parser.addini("mesh_report", "report path (.yaml/.yml/.json, .html, .md), ini-relative")
    parser.addini("mesh_artifacts", "directory for failed tests' evidence, ini-relative")
    parser.addini("mesh_baseline", "previous conformance report to compare against")
    parser.addini("mesh_min_tls_version", "local mesh meshMTLS.minProtocolVersion: TLSV1_3, ...")
    parser.addini("mesh_topology", "the local mesh's topology file (YAML), ini-relative")
    parser.addini("mesh_dataplane", "built-in topology's data plane: sidecar, ambient, both")


@contextmanager
def usage_errors() -> Iterator[None]:
    """Turn a ``SettingsError`` (a bad option, its message naming it) into ``pytest.UsageError``."""
    try:
        yield
    except SettingsError as error:
        raise pytest.UsageError(str(error)) from error


def _ini_bool(config: pytest.Config, name: str) -> bool:
    try:
        return bool(config.getini(name))
    except (ValueError, pytest.UsageError) as error:  # pytest < 9 raises ValueError
        raise SettingsError(
            f"{name} (ini option): {error}; accepted values: true, false"
        ) from error


def _ini_text(config: pytest.Config, name: str) -> str | None:
    value = config.getini(name)
    return str(value) if value else None  # an empty ini value counts as not given


def resolve_settings(config: pytest.Config) -> MeshSettings:
    """Resolve the --mesh-* options and mesh_* ini values of a pytest config.

    Raises pytest.UsageError naming the offending option and the accepted values.
    """
    with usage_errors():
        ini_keep = _ini_bool(config, "mesh_keep")
    inipath = config.inipath
    reports = tuple(config.getoption("mesh_report") or ())
    cli = OptionLayer(
        origin="cli",
        base_dir=config.invocation_params.dir,
        cluster=config.getoption("mesh_cluster"),
        kube_context=config.getoption("mesh_kube_context"),
        keep=config.getoption("mesh_keep"),
        cert_ttl=config.getoption("mesh_cert_ttl"),
        report=reports[0] if reports else None,
        artifacts=config.getoption("mesh_artifacts"),
        baseline=config.getoption("mesh_baseline"),
        faults=tuple(config.getoption("mesh_fault") or ()),
        topology=config.getoption("mesh_topology"),
        more_reports=reports[1:],
        min_tls_version=config.getoption("mesh_min_tls_version"),
        dataplane=config.getoption("mesh_dataplane"),
    )
    ini = OptionLayer(
        origin="ini",
        base_dir=inipath.parent if inipath is not None else config.invocation_params.dir,
        cluster=_ini_text(config, "mesh_cluster"),
        kube_context=_ini_text(config, "mesh_kube_context"),
        keep=ini_keep,
        cert_ttl=_ini_text(config, "mesh_cert_ttl"),
        report=_ini_text(config, "mesh_report"),
        artifacts=_ini_text(config, "mesh_artifacts"),
        baseline=_ini_text(config, "mesh_baseline"),
        min_tls_version=_ini_text(config, "mesh_min_tls_version"),
        topology=_ini_text(config, "mesh_topology"),
        dataplane=_ini_text(config, "mesh_dataplane"),
    )
    with usage_errors():
        return MeshSettings.resolve(cli, ini)


def option_lookup(config: pytest.Config) -> OptionLookup:
    """The backends' own options as the user gave them: the command line first, else the ini
    file (relative paths resolve against the invocation dir or the ini file's dir)."""
    invocation_dir = config.invocation_params.dir
    inipath = config.inipath
    ini_dir = inipath.parent if inipath is not None else invocation_dir
    flags = {option.name: option for option in KUBE_OPTIONS}

    def given(name: str) -> GivenOption | None:
        option = flags[name]
        cli_value = config.getoption(f"mesh_{name}", default=None)
        if cli_value is not None:
            value = bool(cli_value) if option.metavar is None else str(cli_value)
            return GivenOption(value, option.flag, invocation_dir)
        spelled = f"mesh_{name} (ini option)"
        if option.metavar is None:
            return (
                GivenOption(True, spelled, ini_dir) if _ini_bool(config, f"mesh_{name}") else None
            )
        ini_value = _ini_text(config, f"mesh_{name}")
        return None if ini_value is None else GivenOption(ini_value, spelled, ini_dir)

    return given


def backend_run(config: pytest.Config, dataplane: Dataplane | None = None) -> BackendRun:
    """What the run's backend gets: the resolved settings, the rootdir, its own options.

    ``dataplane``: the one data plane this mesh runs, when the run tests several
    (``--mesh-dataplane=both``: the `mesh` fixture opens one mesh per data plane).
    """
    settings = config.stash[mesh_settings_key]
    if dataplane is not None:
        settings = dataclasses.replace(settings, dataplane=dataplane)
    return BackendRun(settings, config.rootpath, option_lookup(config))


def backend_header_lines(config: pytest.Config) -> list[str]:
    """The backend's own settings in force (the kube options), for the header and the reports."""
    run = backend_run(config)
    with usage_errors():
        return backend_for(run.settings.cluster).header_lines(run)
