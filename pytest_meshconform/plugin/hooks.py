"""pytest plugin entry point (``pytest11`` entry point ``meshconform``): thin glue only.

Hook layout, in the order pytest calls them:

- ``pytest_addoption``: the ``--mesh-*`` options and their ``mesh_*`` ini fallbacks
  (``options.py``).
- ``pytest_configure``: declares the ``mesh_*`` markers, then resolves the options once
  (CLI, then ini, then default; see ``settings.MeshSettings``) and stores the result on
  ``config.stash[options.mesh_settings_key]``, so a bad value is a UsageError before collection.
- ``pytest_report_collectionfinish``: the settings in force, so a CI log says what was tested.
  Printed once collection is done, not in the session header: a suite's conftest may change a
  default (the built-in suites' 10 s TTL) and, under ``--pyargs``, pytest loads that conftest
  only while collecting.
- Fixtures live in one module per family (``session``, ``workloads``, ``policies``,
  ``identity``, ``capture``, ``rotation``, ``probes``, ``tables``),
  registered by ``pytest_configure``.

Auto-loading this module must cost nothing for runs that never ask for a mesh: it imports only
pytest, ``settings`` and the backends' option tables. Backends, the kubernetes client,
cryptography and dpkt are imported inside the fixtures that need them, never at module level.
"""

from __future__ import annotations

from typing import Final

import pytest

from pytest_meshconform.plugin import report
from pytest_meshconform.plugin.options import (
    add_options,
    backend_header_lines,
    mesh_settings_key,
    resolve_settings,
)

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
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    for marker in _MARKERS:
        config.addinivalue_line("markers", marker)
    if getattr(config.option, "help", False):
        return  # --help must work even while the mesh settings are wrong
    config.stash[mesh_settings_key] = resolve_settings(config)
    from pytest_meshconform.plugin import (  # cheap: fixture bodies import what they need
        capture,
        empties,
        health,
        identity,
        interrupts,
        policies,
        probes,
        rotation,
        service_ports,
        session,
        tables,
        workloads,
    )

    for family in (session, workloads, policies, identity, capture, rotation, probes, tables):
        config.pluginmanager.register(family, f"meshconform-{family.__name__.rsplit('.', 1)[1]}")
    # a signal ends a mesh run as interrupted (exit status 2), whatever the window
    config.pluginmanager.register(interrupts, "meshconform-interrupts")
    # a broken mesh's tests end as infrastructure errors
    config.pluginmanager.register(health, "meshconform-health")
    config.pluginmanager.register(service_ports, "meshconform-service-ports")
    # a run whose every mesh test skipped for a missing workload tested nothing: it fails
    config.pluginmanager.register(empties, "meshconform-empties")
    report.configure(config)
    from pytest_meshconform.plugin import render

    render.configure(config)


def pytest_report_collectionfinish(config: pytest.Config) -> list[str]:
    """The settings in force for the tests about to run (after every conftest has spoken)."""
    settings = config.stash.get(mesh_settings_key, None)
    if settings is None or config.option.no_header or config.get_verbosity() < 0:
        return []
    backend_lines = backend_header_lines(config)
    return [*settings.header_lines(), *(f"meshconform: {line}" for line in backend_lines)]
