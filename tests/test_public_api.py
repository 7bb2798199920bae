"""The public API is declared once, typed, documented, and used through the Mesh protocol."""

from __future__ import annotations

import ast
import importlib
import inspect
import re

import pytest
from local_helpers import REPO

import pytest_meshconform
from pytest_meshconform import Feature
from pytest_meshconform.backends.registry import BACKENDS, Backend, backend_for
from pytest_meshconform.mesh import Mesh
from pytest_meshconform.plugin import identity, policies, probes, rotation, tables, workloads
from pytest_meshconform.settings import CLUSTER_KINDS

PACKAGE = REPO / "pytest_meshconform"
FIXTURE_MODULES = sorted(
    path for path in (PACKAGE / "plugin").glob("*.py") if "@pytest.fixture" in path.read_text()
)


def _face() -> dict[str, str]:
    """The face as its stub lists it: name -> module."""
    tree = ast.parse((PACKAGE / "__init__.pyi").read_text())
    return {
        alias.asname or alias.name: str(node.module)
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def test_the_face_is_one_short_list() -> None:
    """`__init__.pyi` is the one list: `__all__` is made from it, and it stays short."""
    face = _face()
    assert pytest_meshconform.__all__ == ["__version__", *face]
    # the outcome vocabulary (MTLS, RESET...) is words, not API surface: counted apart
    words = [n for n in face if isinstance(getattr(pytest_meshconform, n), tables.Outcome)]
    # 45: GrpcResult and GrpcClientUnavailable (issue 25, gRPC calls) raised it from 43
    assert len(face) - len(words) <= 45, sorted(face)
    for name, module in face.items():
        assert alias_target(name, module) is getattr(pytest_meshconform, name), name
    assert pytest_meshconform.__version__ == "0.1.0"
    with pytest.raises(AttributeError, match="no attribute 'parse_policy'"):
        _ = pytest_meshconform.parse_policy


def alias_target(name: str, module: str) -> object:
    return getattr(importlib.import_module(module), name)


def test_the_stub_imports_each_name_as_itself() -> None:
    """`from m import X as X` only: the stub re-exports, it renames nothing."""
    tree = ast.parse((PACKAGE / "__init__.pyi").read_text())
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            assert [a.asname for a in node.names] == [a.name for a in node.names], node.module


def test_fixture_classes_are_final() -> None:
    """What the fixtures return is used, not subclassed: every fixture class is `@final`."""
    classes = [
        value
        for name in pytest_meshconform.__all__
        if isinstance(value := getattr(pytest_meshconform, name), type)
        and value.__module__.startswith("pytest_meshconform.plugin.")
        and not issubclass(value, BaseException)
    ]
    assert len(classes) >= 15, classes
    assert [c for c in classes if not getattr(c, "__final__", False)] == []


def test_readme_documents_every_public_name() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [n for n in pytest_meshconform.__all__ if f"`{n}" not in readme]
    assert missing == [], f"README.md does not mention: {missing}"


def test_readme_names_every_feature() -> None:
    readme = (REPO / "README.md").read_text()
    assert [f for f in Feature if f"`{f.value}`" not in readme] == []


def test_fixtures_return_the_exported_types() -> None:
    hints = {
        "workload": "WorkloadLookup",
        "sleep": "WorkloadHandle",
        "httpbin": "WorkloadHandle",
        "naked_sleep": "WorkloadHandle",
        "apply_policy": "Iterator[PolicyApplier]",
        "xfcc": "XfccReader",
        "cert_of": "CertReader",
        "capture": "Capturer",
        "rotation": "RotationWatcher",
        "mesh": "Iterator[Mesh]",
        "call_table": "CallTable",
        "record_table": "TableRecorder",
        "tls_probe": "TlsProber",
        "mesh_service_ports": "ServicePortLister",
    }
    returns = {
        node.name: ast.unparse(node.returns)
        for path in FIXTURE_MODULES
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.FunctionDef)
        and node.returns is not None
        and any(ast.unparse(d).startswith("pytest.fixture") for d in node.decorator_list)
    }
    assert {name: returns[name] for name in hints} == hints
    for name in hints.values():
        bare = name.removeprefix("Iterator[").removesuffix("]")
        assert bare in pytest_meshconform.__all__, bare


def test_fixtures_use_only_the_mesh_protocol() -> None:
    """No `getattr(mesh, ...)` and no backend names in the fixtures: the protocol declares all."""
    source = "".join(path.read_text() for path in FIXTURE_MODULES)
    assert (
        re.findall(r"getattr\((?:the_)?mesh\b|getattr\(opened|getattr\(handle\.mesh", source) == []
    )
    assert 'cluster == "local"' not in source


def test_every_protocol_member_is_implemented_by_both_backends() -> None:
    from pytest_meshconform.backends.kube.backend import KubeMesh
    from pytest_meshconform.backends.local.backend import LocalMesh

    members = [n for n in vars(Mesh) if not n.startswith("_")]
    for backend in (LocalMesh, KubeMesh):
        init = inspect.getsource(backend.__init__)  # type: ignore[misc]
        missing = [m for m in members if not hasattr(backend, m) and f"self.{m} =" not in init]
        assert missing == [], backend


@pytest.mark.parametrize("cluster", CLUSTER_KINDS)
def test_every_cluster_kind_has_a_backend(cluster: str) -> None:
    assert cluster in BACKENDS
    assert isinstance(backend_for(cluster), Backend)  # type: ignore[arg-type]


def test_large_modules_say_why() -> None:
    """A module over ~800 lines says at its top why it is still that large."""
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 800 and "docs/architecture.md" not in text[:1500]:
            unexplained.append(str(path.relative_to(REPO)))
    assert unexplained == []


def test_code_cites_only_files_in_the_repository() -> None:
    cited = []
    for root in ("pytest_meshconform", "conformance", "tests", "examples", "benchmarks"):
        for path in sorted((REPO / root).rglob("*.py")):
            if "DESIGN.md" in path.read_text() and path.name != "test_public_api.py":
                cited.append(str(path.relative_to(REPO)))
    assert cited == []
    for path in sorted((PACKAGE / "plugin").glob("*.py")):
        for doc in re.findall(r"docs/[\w./-]+\.md", path.read_text()):
            assert (REPO / doc).is_file(), f"{path.name}: {doc}"


def test_fixture_helpers_hide_their_frames() -> None:
    for helper in (
        workloads.WorkloadHandle.curl,
        workloads.WorkloadHandle.exec,
        workloads.WorkloadLookup.__call__,
        policies.PolicyApplier.__call__,
        identity.XfccReader.__call__,
        identity.CertReader.__call__,
        rotation.RotationWatcher.watch,
        tables.CallTable.__call__,
        probes.TlsProber.__call__,
    ):
        assert "__tracebackhide__" in helper.__code__.co_varnames, helper


def test_the_builtin_suites_and_examples_use_only_the_face() -> None:
    """`conformance/` and `examples/` import `pytest_meshconform` and nothing below it: a
    platform team's suite can do all that ours do."""
    below = []
    for root in ("conformance", "examples"):
        for path in sorted((REPO / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                modules = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else []
                )
                below += [
                    f"{path.relative_to(REPO)}: {m}"
                    for m in modules
                    if m.startswith("pytest_meshconform.")
                ]
    assert below == []
