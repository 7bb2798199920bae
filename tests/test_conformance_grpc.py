"""The built-in suites' gRPC rows (conformance/test_grpc.py) on a mesh that serves gRPC: the
example catalog topology (a gRPC Service port, an HTTP/2 one, a gRPC-Web one and a sniffed
HTTP port, examples/catalog/topology.yaml), on sidecars as written and on ambient (its
sidecar namespaces labelled for ambient). They pass there, and each fails, pointing at the
broken promise, under the test-only fault that breaks it. The built-in topology runs them on
httpbin's grpc port in foo, on both data planes (tests/test_conformance.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from local_helpers import CONFORMANCE, REPO, assert_runs_left_nothing, needs_local_mesh

pytestmark = needs_local_mesh

CATALOG = REPO / "examples" / "catalog" / "topology.yaml"
SUITE = CONFORMANCE / "test_grpc.py"


def _run(pytester: pytest.Pytester, *args: str, topology: Path = CATALOG) -> pytest.RunResult:
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "-rfs",
        f"--mesh-topology={topology}",
        *args,
        str(SUITE),
    )
    assert_runs_left_nothing(result.stdout.str())
    return result


def test_grpc_rows_pass_where_the_mesh_serves_grpc(pytester: pytest.Pytester) -> None:
    _run(pytester).assert_outcomes(passed=4)


@pytest.mark.parametrize(
    ("fault", "failed", "message"),
    [
        (
            "strict-as-permissive",
            ["test_strict_resets_plaintext_grpc"],
            "plaintext gRPC was not refused by STRICT: reindex.jobs -> grpc://catalog.shop:50051"
            " (grpc): gRPC OK",
        ),
        (
            "no-xfcc",
            [
                "test_permissive_accepts_plaintext_and_mtls_grpc",
                "test_grpc_server_sees_the_callers_identity",
            ],
            "mTLS gRPC arrived without X-Forwarded-Client-Cert",
        ),
        (
            "authz-ignores-principals",
            ["test_grpc_authorization_by_principal"],
            "cart.frontend was not denied: cart.frontend -> grpc://catalog.shop:50051 (grpc):"
            " gRPC OK",
        ),
    ],
)
def test_each_grpc_row_fails_on_the_fault_that_breaks_it(
    pytester: pytest.Pytester, fault: str, failed: list[str], message: str
) -> None:
    result = _run(pytester, f"--mesh-fault={fault}")
    result.assert_outcomes(passed=4 - len(failed), failed=len(failed))
    result.stdout.fnmatch_lines_random([f"FAILED *test_grpc.py::{name}*" for name in failed])
    assert message in result.stdout.str()


def _ambient_catalog(pytester: pytest.Pytester) -> Path:
    """The catalog topology with its sidecar namespaces (shop, frontend) labelled for ambient
    (as ``istio.io/dataplane-mode=ambient`` would: `dataplane: ambient`); jobs keeps none."""
    document = yaml.safe_load(CATALOG.read_text(encoding="utf-8"))
    for namespace in document["namespaces"]:
        if namespace["dataplane"] == "sidecar":
            namespace["dataplane"] = "ambient"
    path = pytester.path / "catalog-ambient.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def test_grpc_rows_pass_on_an_ambient_topology(pytester: pytest.Pytester) -> None:
    """Not the built-in topology: catalog.shop's grpc port behind ztunnel, the frontend's two
    ambient clients and jobs' plaintext one."""
    result = _run(pytester, "-v", topology=_ambient_catalog(pytester))
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines_random(["*test_grpc.py::test_*_grpc* PASSED*"])


@pytest.mark.parametrize(
    ("fault", "failed", "message"),
    [
        (
            "strict-as-permissive",
            ["test_strict_resets_plaintext_grpc"],
            "plaintext gRPC was not refused by STRICT: reindex.jobs -> grpc://catalog.shop:50051"
            " (grpc): gRPC OK",
        ),
        (
            "authz-ignores-principals",
            [
                "test_permissive_accepts_plaintext_and_mtls_grpc",
                "test_grpc_server_sees_the_callers_identity",
                "test_grpc_authorization_by_principal",
            ],
            "cart.frontend was not denied: cart.frontend -> grpc://catalog.shop:50051 (grpc):"
            " gRPC OK",
        ),
    ],
)
def test_each_ambient_grpc_row_fails_on_the_fault_that_breaks_it(
    pytester: pytest.Pytester, fault: str, failed: list[str], message: str
) -> None:
    result = _run(pytester, f"--mesh-fault={fault}", topology=_ambient_catalog(pytester))
    result.assert_outcomes(passed=4 - len(failed), failed=len(failed))
    result.stdout.fnmatch_lines_random([f"FAILED *test_grpc.py::{name}*" for name in failed])
    assert message in result.stdout.str()
