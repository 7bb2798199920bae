"""The `local` backend: an Istio-compatible mesh on one Linux machine, from real parts.

`backend.LocalMesh` implements the Mesh protocol; `topology`, `control` and `xds` are pure (the
conformance topology, policies -> per-sidecar plans, plans -> Envoy config); `ca` issues the
certificates; `host` holds the machine plumbing (preflight, namespaces, processes, sweeping);
`apps` runs the httpbin apps. `meshconform sweep` removes what dead runs (or kept meshes whose
owner has exited) left behind. Importing this package is cheap: `BACKEND`'s functions import the
backend when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pytest_meshconform.backends.registry import Backend, Progress
from pytest_meshconform.mesh import Mesh
from pytest_meshconform.settings import MeshSettings

if TYPE_CHECKING:
    from pytest_meshconform.backends.local.topology import Topology

__all__ = ["BACKEND"]


def _topology(settings: MeshSettings) -> Topology:
    """The run's topology: `--mesh-topology`'s file, else the built-in one. A bad file is a
    usage error naming the line and field."""
    from pytest_meshconform.backends.local.topology_file import (
        BUILTIN_TOPOLOGY,
        TopologyError,
        load_topology,
    )

    try:
        return load_topology(settings.topology or BUILTIN_TOPOLOGY)
    except TopologyError as exc:
        raise pytest.UsageError(f"--mesh-topology: {exc}") from None


def _preflight(config: pytest.Config, settings: MeshSettings) -> None:
    from pytest_meshconform.backends.local.host import preflight

    _topology(settings)
    preflight()


def _open(config: pytest.Config, settings: MeshSettings, progress: Progress) -> Mesh:
    from pytest_meshconform.backends.local.backend import LocalMesh
    from pytest_meshconform.backends.local.control import Faults
    from pytest_meshconform.istio.tls import parse_min_protocol_version

    return LocalMesh(
        settings.cert_ttl,
        faults=Faults.parse(settings.faults),
        keep=settings.keep,
        progress=progress,
        min_tls_version=parse_min_protocol_version(settings.min_tls_version),
        topology=_topology(settings),
    ).start()


BACKEND = Backend(preflight=_preflight, open=_open)
