"""gRPC on the local mesh, on the wire (issue 25): the example suite `examples/catalog/`
(a user's typed suite for a gRPC service: `shop/catalog` serves the grpc-echo app on Service
port 50051 named `grpc`, on 8081 with `appProtocol: http2` and on 8083 named `grpc-web`, and
httpbin on port 80 named `storefront`, which Istio sniffs; `frontend/web` and
`frontend/cart` have sidecars and service accounts of their own; `jobs/reindex` has none), run
by pytester against real Envoy sidecars, real grpcio on both ends and real tcpdump. Its module
docstring says where each expected value comes from (and docs/istio-facts.md, "gRPC and HTTP/2
ports": Envoy turns an RBAC denial into PERMISSION_DENIED for a gRPC caller,
``Grpc::Utility::httpToGrpcStatus``).

The same suite run with the test-only faults (STRICT rendered as PERMISSIVE, RBAC ignoring
principals, no XFCC) fails on the row each fault breaks, so its passes prove something.
"""

from __future__ import annotations

import pytest
from local_helpers import REPO, assert_runs_left_nothing, needs_local_mesh

CATALOG = REPO / "examples" / "catalog"


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "-rfEs",
        f"--mesh-topology={CATALOG / 'topology.yaml'}",
        *args,
        str(CATALOG),
    )


@needs_local_mesh
def test_the_catalog_suite_passes_on_its_own_topology(pytester: pytest.Pytester) -> None:
    result = _run(pytester)
    result.assert_outcomes(passed=5)
    assert_runs_left_nothing(result.stdout.str())


@needs_local_mesh
def test_each_grpc_row_fails_on_the_fault_that_breaks_it(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        "--mesh-fault=strict-as-permissive",
        "--mesh-fault=authz-ignores-principals",
        "--mesh-fault=no-xfcc",
    )
    result.assert_outcomes(passed=2, failed=3)
    result.stdout.fnmatch_lines_random(
        [
            "FAILED *test_catalog.py::test_strict_resets_plaintext_grpc*",
            "FAILED *test_catalog.py::test_identity_from_the_metadata_the_server_saw*",
            "FAILED *test_catalog.py::test_authorization_by_principal_denies_another_caller*",
            "*reindex.jobs -> grpc://catalog.shop:50051 (grpc): gRPC OK*",
            "*cart.frontend -> grpc://catalog.shop:50051 (grpc): gRPC OK*",
        ]
    )
    assert_runs_left_nothing(result.stdout.str())
