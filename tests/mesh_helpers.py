"""Shared helpers for tests: a skip for tests that need the real local mesh."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFORMANCE = REPO / "conformance"


def _local_mesh_problem() -> str | None:
    from pytest_meshconform.local.host import LocalMeshUnavailable, preflight

    try:
        preflight()
    except LocalMeshUnavailable as exc:
        return str(exc)
    return None


_problem = _local_mesh_problem()
needs_local_mesh = pytest.mark.skipif(
    _problem is not None, reason=f"needs the local mesh: {_problem}"
)
