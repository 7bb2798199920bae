"""meshconform: prove what a service mesh promises about mutual TLS, from evidence.

The public face is listed once, in ``__init__.pyi``: type checkers and editors read it, and
each name is imported from there on first use (PEP 562; the stub pattern of Scientific Python's
SPEC 1). So pytest auto-loading the plugin imports no cryptography for runs that never ask for
a certificate.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any

from pytest_meshconform.version import __version__

_FACE: dict[str, str] = {
    alias.asname or alias.name: node.module
    for node in ast.parse(Path(__file__).with_suffix(".pyi").read_text()).body
    if isinstance(node, ast.ImportFrom) and node.module is not None
    for alias in node.names
}

__all__ = ["__version__", *_FACE]


def __getattr__(name: str) -> Any:
    module = _FACE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
