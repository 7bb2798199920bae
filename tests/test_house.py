"""The floor plan holds (docs/architecture.md): rooms of one concept, small enough to read, and
suites that stand where a user stands. The layers themselves are import-linter contracts
(`[tool.importlinter]` in pyproject.toml), checked by `scripts/test.sh`."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from local_helpers import CONFORMANCE, REPO

PACKAGE = REPO / "pytest_meshconform"
MAX_LINES = 800


def _modules(root: Path) -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(root.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_is_over_800_lines() -> None:
    """A file holds one concept a newcomer can read in one sitting."""
    long = {
        str(path.relative_to(REPO)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if (lines := path.read_text().count("\n")) > MAX_LINES
    }
    assert long == {}


def test_no_module_imports_another_modules_private_names() -> None:
    """A name another module needs is public in the room it belongs to: `from x import _y`
    across modules is how a concept ends up spread over several files."""
    private = []
    for path, tree in _modules(PACKAGE):
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                continue
            if not node.module.startswith("pytest_meshconform"):
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    private.append(f"{_module_name(path)}: from {node.module} import {alias.name}")
    assert private == []


def test_the_built_in_suites_import_only_the_public_face() -> None:
    """Our suites are written with what a platform team can import, nothing more."""
    internal = []
    for path, tree in _modules(CONFORMANCE):
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level:
                module = node.module or ""
                if module.startswith("pytest_meshconform") and module != "pytest_meshconform":
                    internal.append(f"{path.name}: from {module} import ...")
            elif isinstance(node, ast.Import):
                internal.extend(
                    f"{path.name}: import {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("pytest_meshconform.")
                )
    assert internal == []


def test_package_inits_only_hand_names_on() -> None:
    """A package's `__init__.py` re-exports its modules' names (or is empty); the code lives
    in the modules, where a newcomer looks for it by name."""
    holding = []
    for path, tree in _modules(PACKAGE):
        if path.name != "__init__.py" or path.parent == PACKAGE:
            continue  # the package face is checked by test_public_api.py
        for node in tree.body:
            allowed = (ast.Import, ast.ImportFrom, ast.Expr)  # Expr: the docstring
            is_all = isinstance(node, ast.Assign | ast.AnnAssign) and "__all__" in ast.unparse(
                node.targets[0] if isinstance(node, ast.Assign) else node.target
            )
            if not isinstance(node, allowed) and not is_all:
                holding.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert holding == []


def test_no_package_name_shadows_one_of_its_modules() -> None:
    """`pkg.name` is the module `pkg/name.py`: a package re-exporting a function of the same
    name as a module makes `monkeypatch.setattr("pkg.name.x", ...)` and `import pkg.name as m`
    reach the function instead (the policy builders and their kinds' modules share names)."""
    import importlib
    import pkgutil
    import types

    shadowed = []
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="pytest_meshconform."):
        module = importlib.import_module(info.name)
        package = importlib.import_module(info.name.rpartition(".")[0])
        attribute = getattr(package, info.name.rpartition(".")[2])
        if not isinstance(attribute, types.ModuleType) or attribute is not module:
            shadowed.append(info.name)
    assert shadowed == []
