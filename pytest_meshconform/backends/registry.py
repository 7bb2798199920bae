"""Which backend runs each `--mesh-cluster` value, and what a backend gets of the run.

One table, cluster name -> the module that declares `BACKEND = Backend(preflight=..., open=...)`;
`backend_for` imports that module only when the run asks for that cluster, so auto-loading the
plugin never imports a backend. Adding a cluster kind is one row here plus one `BACKEND`.

Backends know nothing of pytest: they get a `BackendRun` (the settings, the rootdir, their own
options as the user gave them) and raise `SettingsError` for a bad option and `MeshUnavailable`
when they cannot run here; the plugin turns both into `pytest.UsageError`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pytest_meshconform.mesh import Mesh
from pytest_meshconform.settings import CLUSTER_KINDS, ClusterKind, MeshSettings

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendOption",
    "BackendRun",
    "GivenOption",
    "OptionLookup",
    "Progress",
    "backend_for",
]

Progress = Callable[[str], None]
"""Where a backend writes progress lines (the terminal, even while output is captured)."""


@dataclass(frozen=True, slots=True)
class BackendOption:
    """A backend's own option: ``--mesh-<name>`` (dashes) with the ini fallback ``mesh_<name>``.

    ``metavar`` None makes it an on/off flag (a bool ini value); ``ini_help`` defaults to
    ``help``.
    """

    name: str
    help: str
    metavar: str | None = None
    ini_help: str | None = None

    @property
    def flag(self) -> str:
        return "--mesh-" + self.name.replace("_", "-")


@dataclass(frozen=True, slots=True)
class GivenOption:
    """A backend option as the user gave it: on the command line, else in the ini file."""

    value: str | bool  # bool for an on/off flag
    spelled: str  # for messages: "--mesh-revision" or "mesh_revision (ini option)"
    base_dir: Path  # relative paths resolve here: invocation dir (cli) or ini file's dir (ini)


OptionLookup = Callable[[str], GivenOption | None]
"""A backend option by name (``revision`` for ``--mesh-revision``); None when not given.

Raises `SettingsError` when the given value cannot be read (a bool ini value that is no bool).
"""


@dataclass(frozen=True, slots=True)
class BackendRun:
    """What a backend gets of the run: the settings, the project's rootdir, its own options."""

    settings: MeshSettings
    rootdir: Path
    option: OptionLookup


def _no_header_lines(run: BackendRun) -> list[str]:
    return []


@dataclass(frozen=True, slots=True)
class Backend:
    """What the `mesh` fixture needs of a backend.

    `preflight` runs at collection and raises `MeshUnavailable` (naming the fix) within
    seconds when the backend cannot run here; `open` brings the mesh up, started;
    `header_lines` adds the backend's own settings to the run header and the reports (the kube
    options in force), nothing by default. Each raises `SettingsError` for a bad option.
    """

    preflight: Callable[[BackendRun], None]
    open: Callable[[BackendRun, Progress], Mesh]
    header_lines: Callable[[BackendRun], list[str]] = _no_header_lines


BACKENDS: Final[Mapping[ClusterKind, str]] = {
    "local": "pytest_meshconform.backends.local.entry",
    "kind": "pytest_meshconform.backends.kube.entry",
    "existing": "pytest_meshconform.backends.kube.entry",
}


def backend_for(cluster: ClusterKind) -> Backend:
    """The `Backend` a module declares for `cluster` (imports the module)."""
    if cluster not in BACKENDS:  # settings validate the name; this guards the table
        raise KeyError(f"no backend for {cluster!r}; known: {', '.join(CLUSTER_KINDS)}")
    declared = getattr(importlib.import_module(BACKENDS[cluster]), "BACKEND", None)
    if not isinstance(declared, Backend):
        raise TypeError(f"{BACKENDS[cluster]} declares no BACKEND = Backend(...)")
    return declared
