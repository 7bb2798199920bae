"""pytest plugin entry point (``pytest11`` entry point ``meshconform``): thin glue only.

Hook layout, in the order pytest calls them:

- ``pytest_addoption``: one option group, "meshconform"; every flag is ``--mesh-*`` and has a
  ``mesh_*`` ini fallback (other kube plugins already own ``--kubeconfig``, ``--keep-cluster``).
- ``pytest_configure``: declares the ``mesh_*`` markers, then resolves the options once
  (CLI, then ini, then default; see ``settings.MeshSettings``) and stores the result on
  ``config.stash[mesh_settings_key]``, so a bad value is a UsageError before collection.
- ``pytest_report_collectionfinish``: the settings in force, so a CI log says what was tested.
  Printed once collection is done, not in the session header: a suite's conftest may change a
  default (the built-in suites' 10 s TTL) and, under ``--pyargs``, pytest loads that conftest
  only while collecting.
- Fixtures (``mesh``, workloads, ``apply_policy``, ``capture``, ...) live in ``fixtures.py``,
  registered by ``pytest_configure``.

Auto-loading this module must cost nothing for runs that never ask for a mesh: it imports only
pytest and ``settings``. Backends, the kubernetes client, cryptography and dpkt are imported
inside the fixtures that need them, never at module level.
"""

from __future__ import annotations

import argparse
from typing import Final

import pytest

from pytest_meshconform.backends.kube import options as kube_options
from pytest_meshconform.plugin import report
from pytest_meshconform.settings import CLUSTER_KINDS, MeshSettings, cluster_argument

__all__ = ["mesh_settings_key"]

mesh_settings_key: Final = pytest.StashKey[MeshSettings]()
"""Where ``pytest_configure`` leaves the run's MeshSettings: ``config.stash[mesh_settings_key]``."""

_MARKERS: Final = (
    "mesh_wide: the test applies mesh-wide policy in the root namespace (istio-system); on a"
    " shared cluster deselect it with -m 'not mesh_wide'.",
    "mesh_features(*names): mesh features the test needs (pytest_meshconform.Feature values:"
    " mtls, peer-authentication, port-level-mtls, destination-rule, xfcc, capture,"
    " certificates, rotation, mesh-wide); skipped, naming the missing ones, when the mesh lacks"
    " them. An unknown name is a usage error.",
    "mesh_min_version(version): the minimum mesh version the test applies to; skipped on older"
    " meshes.",
    "mesh_fault(name): test-only fault switch for the local mesh, used by meshconform's own tests"
    " to prove that a suite can fail.",
)


def pytest_addoption(parser: pytest.Parser) -> None:
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
        "--mesh-fault",
        action="append",
        default=None,
        help=argparse.SUPPRESS,  # test-only: break the local mesh to prove suites can fail
    )
    kube_options.add_options(group, parser)
    parser.addini("mesh_cluster", f"mesh to test: {', '.join(CLUSTER_KINDS)} (default local)")
    parser.addini("mesh_kube_context", "kube context for mesh_cluster = existing, or 'current'")
    parser.addini("mesh_keep", "keep the mesh after the run (default false)", type="bool")
    parser.addini("mesh_cert_ttl", "workload certificate TTL, e.g. 24h (the default), 1h30m")
    parser.addini("mesh_report", "report path (.yaml/.yml/.json, .html, .md), ini-relative")
    parser.addini("mesh_artifacts", "directory for failed tests' evidence, ini-relative")
    parser.addini("mesh_baseline", "previous conformance report to compare against")
    parser.addini("mesh_min_tls_version", "local mesh meshMTLS.minProtocolVersion: TLSV1_3, ...")
    parser.addini("mesh_topology", "the local mesh's topology file (YAML), ini-relative")


def pytest_configure(config: pytest.Config) -> None:
    for marker in _MARKERS:
        config.addinivalue_line("markers", marker)
    if getattr(config.option, "help", False):
        return  # --help must work even while the mesh settings are wrong
    config.stash[mesh_settings_key] = MeshSettings.from_config(config)
    from pytest_meshconform.plugin import (
        fixtures,  # cheap: fixture bodies import the backends they need
    )

    config.pluginmanager.register(fixtures, "meshconform-fixtures")
    from pytest_meshconform.plugin import (
        health,  # a broken mesh's tests end as infrastructure errors
    )

    config.pluginmanager.register(health, "meshconform-health")
    from pytest_meshconform.plugin import service_ports

    config.pluginmanager.register(service_ports, "meshconform-service-ports")
    from pytest_meshconform.plugin import tables

    config.pluginmanager.register(tables, "meshconform-tables")
    report.configure(config)
    from pytest_meshconform.report import render

    render.configure(config)


def pytest_report_collectionfinish(config: pytest.Config) -> list[str]:
    """The settings in force for the tests about to run (after every conftest has spoken)."""
    settings = config.stash.get(mesh_settings_key, None)
    if settings is None or config.option.no_header or config.get_verbosity() < 0:
        return []
    from pytest_meshconform.backends.registry import backend_for

    backend_lines = backend_for(settings.cluster).header_lines(config)
    return [*settings.header_lines(), *(f"meshconform: {line}" for line in backend_lines)]
