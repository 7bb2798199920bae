"""The built-in suites' gRPC rows (conformance/test_grpc.py) on a mesh that serves gRPC: the
example catalog topology (a gRPC Service port, an HTTP/2 one, a gRPC-Web one and a sniffed
HTTP port, examples/catalog/topology.yaml), on sidecars as written and on ambient (its
sidecar namespaces labelled for ambient); and the rows behind a waypoint
(conformance/test_grpc_waypoint.py) on the ambient catalog whose shop namespace has a waypoint.
They pass there, and each fails, pointing at the broken promise, under the test-only fault
that breaks it. The built-in topology runs them on httpbin's grpc port in foo, on both data
planes, and behind bar's waypoint on ambient (tests/test_conformance.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from local_helpers import CONFORMANCE, REPO, assert_runs_left_nothing, needs_local_mesh

pytestmark = needs_local_mesh

CATALOG = REPO / "examples" / "catalog" / "topology.yaml"
SUITE = CONFORMANCE / "test_grpc.py"
WAYPOINT_SUITE = CONFORMANCE / "test_grpc_waypoint.py"


def _run(
    pytester: pytest.Pytester, *args: str, topology: Path = CATALOG, suites: tuple[Path, ...] = ()
) -> pytest.RunResult:
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "-rfs",
        f"--mesh-topology={topology}",
        *args,
        *(str(suite) for suite in suites or (SUITE,)),
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


def _ambient_catalog(pytester: pytest.Pytester, waypoint: str | None = None) -> Path:
    """The catalog topology with its sidecar namespaces (shop, frontend) labelled for ambient
    (as ``istio.io/dataplane-mode=ambient`` would: `dataplane: ambient`); jobs keeps none.
    ``waypoint``: shop gets a namespace waypoint of that name (``istioctl waypoint apply
    --enroll-namespace``), so catalog's Service traffic from frontend goes through it."""
    document = yaml.safe_load(CATALOG.read_text(encoding="utf-8"))
    for namespace in document["namespaces"]:
        if namespace["dataplane"] == "sidecar":
            namespace["dataplane"] = "ambient"
        if waypoint is not None and namespace["name"] == "shop":
            namespace["waypoint"] = waypoint
    path = pytester.path / f"catalog-ambient{'-' + waypoint if waypoint else ''}.yaml"
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


def test_grpc_rows_pass_behind_a_waypoint_on_a_catalog_topology(pytester: pytest.Pytester) -> None:
    """Not the built-in topology: catalog.shop's grpc port behind shop's waypoint `gatekeeper`,
    frontend's two ambient clients and jobs' plaintext one. The rows without a waypoint find no
    gRPC port to run on and say where the waypoint's rows are."""
    topology = _ambient_catalog(pytester, waypoint="gatekeeper")
    result = _run(pytester, "-v", topology=topology, suites=(WAYPOINT_SUITE, SUITE))
    result.assert_outcomes(passed=4, skipped=4)
    result.stdout.fnmatch_lines_random(
        [
            "*test_grpc_waypoint.py::test_strict_resets_plaintext_grpc_behind_a_waypoint PASSED*",
            "*test_grpc_waypoint.py::test_grpc_authorization_by_principal_at_the_waypoint PASSED*",
            "SKIPPED*catalog.shop:50051 (ambient, waypoint shop/gatekeeper)*"
            "conformance/test_grpc_waypoint.py*",
        ]
    )


@pytest.mark.parametrize(
    ("fault", "failed", "message"),
    [
        (
            "strict-as-permissive",
            ["test_strict_resets_plaintext_grpc_behind_a_waypoint"],
            "plaintext gRPC was not refused by STRICT: reindex.jobs -> grpc://catalog.shop:50051"
            " (grpc): gRPC OK",
        ),
        (
            "wrong-spiffe-id",
            [
                "test_permissive_accepts_plaintext_and_mtls_grpc_behind_a_waypoint",
                "test_grpc_waypoint_judges_the_callers_identity",
                "test_grpc_authorization_by_principal_at_the_waypoint",
            ],
            "mTLS gRPC under PERMISSIVE did not arrive with the waypoint's identity: the server's"
            " ztunnel refused it under ALLOW cluster.local/ns/shop/sa/gatekeeper",
        ),
        (
            "authz-ignores-principals",
            [
                "test_permissive_accepts_plaintext_and_mtls_grpc_behind_a_waypoint",
                "test_grpc_waypoint_judges_the_callers_identity",
                "test_grpc_authorization_by_principal_at_the_waypoint",
            ],
            "the waypoint let web.frontend in under ALLOW"
            " cluster.local/ns/frontend/sa/frontend-web-someone-else, so it did not judge the"
            " caller's own identity",
        ),
        (
            "waypoint-ignores-l7",
            [
                "test_grpc_waypoint_judges_the_callers_identity",
                "test_grpc_authorization_by_principal_at_the_waypoint",
            ],
            "cart.frontend was not denied: cart.frontend -> grpc://catalog.shop:50051 (grpc):"
            " gRPC OK",
        ),
        (
            "waypoint-forwards-xfcc",
            ["test_grpc_waypoint_judges_the_callers_identity"],
            "the waypoint passed an X-Forwarded-Client-Cert on (it sanitizes XFCC):"
            " web.frontend -> grpc://catalog.shop:50051 (grpc): gRPC OK",
        ),
    ],
)
def test_each_grpc_row_behind_a_waypoint_fails_on_the_fault_that_breaks_it(
    pytester: pytest.Pytester, fault: str, failed: list[str], message: str
) -> None:
    topology = _ambient_catalog(pytester, waypoint="gatekeeper")
    result = _run(pytester, f"--mesh-fault={fault}", topology=topology, suites=(WAYPOINT_SUITE,))
    result.assert_outcomes(passed=4 - len(failed), failed=len(failed))
    result.stdout.fnmatch_lines_random(
        [f"FAILED *test_grpc_waypoint.py::{name}*" for name in failed]
    )
    assert message in result.stdout.str()
