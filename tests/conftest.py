"""What every test module shares: the pytester plugin and where the real test data lives.

Real captures, Envoy dumps and Istio's own testdata live outside the repository, at
`../shared/testdata/` from its root; tests read them in place and skip when they are absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

pytest_plugins = ["pytester"]

REPO: Final = Path(__file__).resolve().parents[1]
TESTDATA: Final = REPO.parent / "shared" / "testdata"
"""The shared test data (`secrets/`, `pcaps/`, ...); never copied into the repository. Tests
that read it skip, naming the path, when it is absent."""
