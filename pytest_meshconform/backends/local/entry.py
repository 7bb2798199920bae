"""The local backend's entry points (``BACKEND``): preflight and open.

Importing this module is cheap: its functions import the backend when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_meshconform.backends.registry import Backend, BackendRun, Progress
from pytest_meshconform.mesh import Mesh
from pytest_meshconform.settings import MeshSettings, SettingsError

if TYPE_CHECKING:
    from pytest_meshconform.backends.local.topology import Topology

__all__ = ["BACKEND"]


def _topology(settings: MeshSettings) -> Topology:
    """The run's topology: `--mesh-topology`'s file, else the built-in one. A bad file is a
    settings error naming the line and field."""
    from pytest_meshconform.backends.local.topology_file import (
        BUILTIN_TOPOLOGY,
        TopologyError,
        load_topology,
    )

    try:
        return load_topology(settings.topology or BUILTIN_TOPOLOGY)
    except TopologyError as exc:
        raise SettingsError(f"--mesh-topology: {exc}") from None


def _preflight(run: BackendRun) -> None:
    from pytest_meshconform.backends.local.host import preflight

    _topology(run.settings)
    preflight()


def _open(run: BackendRun, progress: Progress) -> Mesh:
    from pytest_meshconform.backends.local.backend import LocalMesh
    from pytest_meshconform.backends.local.control import Faults
    from pytest_meshconform.istio.tls import parse_min_protocol_version

    settings = run.settings
    return LocalMesh(
        settings.cert_ttl,
        faults=Faults.parse(settings.faults),
        keep=settings.keep,
        progress=progress,
        min_tls_version=parse_min_protocol_version(settings.min_tls_version),
        topology=_topology(settings),
    ).start()


BACKEND = Backend(preflight=_preflight, open=_open)
