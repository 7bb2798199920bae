"""The README's install from a checkout lets `mypy --strict` check a suite outside the checkout:
the example suites themselves (examples/test_example_suite.py and examples/payments/).

A suite writer's mypy must find `pytest_meshconform` (its `__init__.pyi` face and `py.typed`).
setuptools' default editable mode serves this package through an import hook, because the
built-in suites' folder (`conformance/`) is mapped into it; mypy cannot follow import hooks.
The README's `editable_mode=strict` installs a tree of links mypy reads.
"""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from local_helpers import REPO

_NOT_SOURCE = shutil.ignore_patterns("__pycache__", ".mypy_cache")
SHIPPED = ("pyproject.toml", "README.md", "LICENSE", "pytest_meshconform", "conformance")


def _mode(mode: str) -> list[str]:
    return ["--config-settings", f"editable_mode={mode}"]


def _install(tmp_path: Path, mode: str) -> Path:
    """A fresh venv with this checkout (a copy) installed editable in `mode`; its dependencies
    and pip come from the running environment (a .pth naming its site-packages); only the build
    backend is fetched, as for any install (pyproject's build-system). Returns the venv's
    python."""
    src = tmp_path / "checkout"
    src.mkdir()
    for name in SHIPPED:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif path.exists():
            shutil.copy2(path, src / name)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)  # pip: from the .pth
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "running-env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "-e",
            str(src),
            "--config-settings",
            f"editable_mode={mode}",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return python


def _mypy_strict_on_a_suite_outside(
    tmp_path: Path, python: Path
) -> subprocess.CompletedProcess[str]:
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy2(REPO / "examples" / "test_example_suite.py", suite / "test_example_suite.py")
    shutil.copytree(REPO / "examples" / "payments", suite / "payments", ignore=_NOT_SOURCE)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--python-executable",
            str(python),
            "test_example_suite.py",
            "payments",
        ],
        cwd=suite,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_readme_install_is_found_by_mypy(tmp_path: Path) -> None:
    assert "--config-settings editable_mode=strict" in (REPO / "README.md").read_text()
    python = _install(tmp_path, "strict")
    result = _mypy_strict_on_a_suite_outside(tmp_path, python)
    assert result.returncode == 0, result.stdout + result.stderr
    # the example suite, and the payments suite's conftest.py and test_payments.py
    assert "Success: no issues found in 3 source files" in result.stdout


@pytest.mark.parametrize("mode", ["lenient"])
def test_the_default_editable_mode_is_not(tmp_path: Path, mode: str) -> None:
    """Why the README names strict mode: the default mode's import hook hides the package."""
    python = _install(tmp_path, mode)
    result = _mypy_strict_on_a_suite_outside(tmp_path, python)
    assert result.returncode == 1
    assert 'Cannot find implementation or library stub for module named "pytest_meshconform"' in (
        result.stdout
    )
