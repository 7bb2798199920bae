"""The `local` backend: an Istio-compatible mesh on one Linux machine, from real parts.

`backend.LocalMesh` implements the Mesh protocol; `topology`, `control` and `xds` are pure (the
conformance topology, policies -> per-sidecar plans, plans -> Envoy config); `ca` issues the
certificates; `host` holds the machine plumbing (preflight, namespaces, processes, sweeping);
`apps` runs the httpbin apps. `meshconform sweep` removes what dead runs (or kept meshes whose
owner has exited) left behind. Importing this package is cheap: `BACKEND`'s functions import the
backend when called.
"""

from __future__ import annotations

import pytest

from ..backends import Backend, Progress
from ..mesh import Mesh
from ..settings import MeshSettings

__all__ = ["BACKEND"]


def _preflight(config: pytest.Config, settings: MeshSettings) -> None:
    from .host import preflight

    preflight()


def _open(config: pytest.Config, settings: MeshSettings, progress: Progress) -> Mesh:
    from ..istio.tls import parse_min_protocol_version
    from .backend import LocalMesh
    from .control import Faults

    return LocalMesh(
        settings.cert_ttl,
        faults=Faults.parse(settings.faults),
        keep=settings.keep,
        progress=progress,
        min_tls_version=parse_min_protocol_version(settings.min_tls_version),
    ).start()


BACKEND = Backend(preflight=_preflight, open=_open)
