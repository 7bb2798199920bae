"""The local backend's entry points (``BACKEND``): preflight and open.

Importing this module is cheap: its functions import the backend when called.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from pytest_meshconform.backends.registry import Backend, BackendRun, Progress
from pytest_meshconform.mesh import Mesh
from pytest_meshconform.settings import Dataplane, MeshSettings, SettingsError

if TYPE_CHECKING:
    from pytest_meshconform.backends.local.topology import Topology

__all__ = ["AMBIENT_WAYPOINT", "AMBIENT_WAYPOINT_NAMESPACE", "BACKEND", "builtin_topology"]

# The ambient built-in topology's namespace waypoint (the name istioctl waypoint apply gives)
AMBIENT_WAYPOINT_NAMESPACE = "bar"
AMBIENT_WAYPOINT = "waypoint"


def builtin_topology(dataplane: Dataplane) -> Topology:
    """The built-in topology with its sidecar namespaces (foo, bar) on `dataplane`: as written
    (sidecar), or labelled ``istio.io/dataplane-mode=ambient`` (``dataplane: ambient``, and
    `bar` gets the namespace waypoint `waypoint`); legacy keeps no data plane either way
    (`--mesh-dataplane`)."""
    import yaml

    from pytest_meshconform.backends.local.topology_file import (
        BUILTIN_TOPOLOGY,
        load_topology,
        parse_topology,
    )

    if dataplane == "sidecar":
        return load_topology(BUILTIN_TOPOLOGY)
    document = yaml.safe_load(BUILTIN_TOPOLOGY.read_text(encoding="utf-8"))
    for namespace in document["namespaces"]:
        if namespace["dataplane"] == "sidecar":
            namespace["dataplane"] = dataplane
        if dataplane == "ambient" and namespace["name"] == AMBIENT_WAYPOINT_NAMESPACE:
            # istio.io's ambient getting started: `istioctl waypoint apply --enroll-namespace`
            namespace["waypoint"] = AMBIENT_WAYPOINT
    text = yaml.safe_dump(document, sort_keys=False)
    return parse_topology(text, f"{BUILTIN_TOPOLOGY} (--mesh-dataplane={dataplane})")


def _topology(settings: MeshSettings) -> Topology:
    """The run's topology: `--mesh-topology`'s file, else the built-in one on the run's data
    plane. A bad file is a settings error naming the line and field."""
    from pytest_meshconform.backends.local.topology_file import TopologyError, load_topology

    try:
        if settings.topology is not None:
            return load_topology(settings.topology)
        # The plugin opens one mesh per data plane (settings of "both" never reach `_open`).
        return builtin_topology("ambient" if settings.dataplane == "ambient" else "sidecar")
    except TopologyError as exc:
        raise SettingsError(f"--mesh-topology: {exc}") from None


def _preflight(run: BackendRun) -> None:
    from pytest_meshconform.backends.local.host import preflight

    for plane in run.settings.dataplanes:
        _topology(dataclasses.replace(run.settings, dataplane=plane))
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
