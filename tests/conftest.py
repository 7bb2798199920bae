"""What every test module shares: the pytester plugin, where the real test data lives, and
hypothesis' profiles.

Real captures, Envoy dumps and Istio's own testdata live outside the repository, at
`../shared/testdata/` from its root; tests read them in place and skip when they are absent.

Hypothesis profiles, chosen with the environment variable HYPOTHESIS_PROFILE:

- `ci` (the default): hypothesis' usual 100 examples per test without a deadline, so that the
  parser fuzz tests (tests/test_fuzz_parsers.py) fit the CI budget;
- `fuzz`: 100,000 examples per test (or MESHCONFORM_FUZZ_EXAMPLES), for a long run of the
  fuzz tests (`HYPOTHESIS_PROFILE=fuzz .venv/bin/pytest tests/test_fuzz_parsers.py`).

Tests that set their own `max_examples` keep it under either profile.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Final

from hypothesis import HealthCheck, settings

pytest_plugins = ["pytester"]

REPO: Final = Path(__file__).resolve().parents[1]
TESTDATA: Final = REPO.parent / "shared" / "testdata"
"""The shared test data (`secrets/`, `pcaps/`, ...); never copied into the repository. Tests
that read it skip, naming the path, when it is absent."""


def load_benchmark(name: str) -> ModuleType:
    """A script of `benchmarks/` (not a package) as a module, for its smoke tests."""
    path = REPO / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=100, deadline=None, suppress_health_check=_SLOW_OK)
_FUZZ_EXAMPLES = int(os.environ.get("MESHCONFORM_FUZZ_EXAMPLES", "100000"))
settings.register_profile(
    "fuzz", max_examples=_FUZZ_EXAMPLES, deadline=None, suppress_health_check=_SLOW_OK
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# meshconform's own tests run meshconform in subprocesses (many with test-only faults): their
# reports must not land in a CI job's step summary. A test that checks that summary sets it.
os.environ.pop("GITHUB_STEP_SUMMARY", None)


def _import_every_module() -> None:
    """Import every meshconform module once, before any test runs.

    pytester's in-process runs restore `sys.modules` afterwards: a module first imported inside
    one is dropped, and the next import makes a second copy of it. A monkeypatch on one copy and
    a call through the other (or an identity check across them) then fail or pass depending on
    the order the tests ran in. Imported here, every module is in the snapshot pytester keeps.
    """
    import pytest_meshconform

    for info in pkgutil.walk_packages(pytest_meshconform.__path__, "pytest_meshconform."):
        if not info.name.startswith("pytest_meshconform.conformance"):
            importlib.import_module(info.name)


_import_every_module()
