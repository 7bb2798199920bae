"""Which backend runs each `--mesh-cluster` value: one table, cluster name -> backend package.

Each backend package declares a module-level `BACKEND = Backend(preflight=..., open=...)`;
`backend_for` imports the package only when the run asks for that cluster, so auto-loading the
plugin never imports a backend. Adding a cluster kind is one row here plus one `BACKEND`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import pytest

from pytest_meshconform.mesh import Mesh
from pytest_meshconform.settings import CLUSTER_KINDS, ClusterKind, MeshSettings

__all__ = ["BACKENDS", "Backend", "Progress", "backend_for"]

Progress = Callable[[str], None]
"""Where a backend writes progress lines (the terminal, even while output is captured)."""


@dataclass(frozen=True, slots=True)
class Backend:
    """What the `mesh` fixture needs of a backend package.

    `preflight` runs at collection and raises `MeshUnavailable` (naming the fix) within
    seconds when the backend cannot run here; `open` brings the mesh up, started;
    `header_lines` adds the backend's own settings to the run header and the reports (the kube
    options in force), nothing by default.
    """

    preflight: Callable[[pytest.Config, MeshSettings], None]
    open: Callable[[pytest.Config, MeshSettings, Progress], Mesh]
    header_lines: Callable[[pytest.Config], list[str]] = lambda config: []


BACKENDS: Final[Mapping[ClusterKind, str]] = {
    "local": "pytest_meshconform.backends.local",
    "kind": "pytest_meshconform.backends.kube",
    "existing": "pytest_meshconform.backends.kube",
}


def backend_for(cluster: ClusterKind) -> Backend:
    """The `Backend` a package declares for `cluster` (imports the package)."""
    if cluster not in BACKENDS:  # settings validate the name; this guards the table
        raise KeyError(f"no backend for {cluster!r}; known: {', '.join(CLUSTER_KINDS)}")
    declared = getattr(importlib.import_module(BACKENDS[cluster]), "BACKEND", None)
    if not isinstance(declared, Backend):
        raise TypeError(f"{BACKENDS[cluster]} declares no BACKEND = Backend(...)")
    return declared
