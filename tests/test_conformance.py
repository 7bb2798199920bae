"""The built-in suites pass on the local mesh, and fail, pointing at the broken promise, when
the mesh breaks one (the test-only --mesh-fault switch)."""

from __future__ import annotations

import re

import pytest
from local_helpers import CONFORMANCE, assert_runs_left_nothing, needs_local_mesh

pytestmark = needs_local_mesh


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rfs", *args)
    assert_runs_left_nothing(result.stdout.str())
    return result


def test_builtin_suites_pass_on_the_local_mesh(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "-v", str(CONFORMANCE))
    # the waypoint cases (and the gRPC rows behind a waypoint) need a waypoint: the built-in
    # topology has one on ambient only
    result.assert_outcomes(passed=44, skipped=8)
    # The full 3x3 reachability matrix ran under every policy the local-mesh issue names.
    ran = result.stdout.str()
    for case in (
        "no policy",
        "mesh-wide STRICT",
        "namespace foo STRICT",
        "workload httpbin.bar STRICT",
        "port-level DISABLE under namespace STRICT",
        "workload DISABLE over namespace STRICT",
        "DestinationRule DISABLE towards STRICT",
    ):
        assert f"test_reachability[{case}] PASSED" in ran
    # the gRPC rows, on httpbin.foo's grpc port (50051, grpc-echo)
    for test in (
        "test_strict_resets_plaintext_grpc",
        "test_permissive_accepts_plaintext_and_mtls_grpc",
        "test_grpc_server_sees_the_callers_identity",
        "test_grpc_authorization_by_principal",
    ):
        assert f"test_grpc.py::{test} PASSED" in ran, test


def test_waypoint_suite_passes_on_the_ambient_builtin_topology(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "-v", str(CONFORMANCE / "test_waypoint.py"), "--mesh-dataplane=ambient")
    result.assert_outcomes(passed=4)


def test_builtin_suites_pass_on_ambient(pytester: pytest.Pytester) -> None:
    """--mesh-dataplane=ambient: every suite runs against ztunnel (ids name the data plane);
    only the sidecar's own config check is skipped, naming why. The gRPC rows run on
    httpbin.foo's grpc port, an ambient endpoint without a waypoint, and behind a waypoint on
    httpbin.bar's (bar's namespace waypoint)."""
    result = _run(pytester, "-v", "--mesh-dataplane=ambient", str(CONFORMANCE))
    result.assert_outcomes(passed=51, skipped=1)
    ran = result.stdout.str()
    assert "test_inbound_tls_context_in_the_sidecar[ambient] SKIPPED" in ran
    assert "httpbin.foo is ambient: no sidecar config to read" in ran
    for test in (
        "test_strict.py::test_strict_resets_plaintext[ambient]",
        "test_strict.py::test_strict_accepts_mtls[ambient]",
        "test_reachability[ambient-namespace foo STRICT]",
        "test_authorization[ambient-ALLOW GET on /ip only]",
        "test_rotation_before_expiry[ambient]",
        "test_grpc.py::test_strict_resets_plaintext_grpc[ambient]",
        "test_grpc.py::test_permissive_accepts_plaintext_and_mtls_grpc[ambient]",
        "test_grpc.py::test_grpc_server_sees_the_callers_identity[ambient]",
        "test_grpc.py::test_grpc_authorization_by_principal[ambient]",
        "test_grpc_waypoint.py::test_strict_resets_plaintext_grpc_behind_a_waypoint[ambient]",
        "test_grpc_waypoint.py::test_permissive_accepts_plaintext_and_mtls_grpc_behind_a"
        "_waypoint[ambient]",
        "test_grpc_waypoint.py::test_grpc_waypoint_judges_the_callers_identity[ambient]",
        "test_grpc_waypoint.py::test_grpc_authorization_by_principal_at_the_waypoint[ambient]",
    ):
        assert f"{test} PASSED" in ran, test


FAULTS = [
    pytest.param(
        "strict-as-permissive",
        ["test_strict.py", "test_reachability.py", "test_grpc.py"],
        {
            "test_strict.py::test_strict_resets_plaintext": "plaintext was not refused by STRICT",
            "test_strict_resets_plaintext_grpc": (
                "plaintext gRPC was not refused by STRICT: sleep.legacy ->"
                " grpc://httpbin.foo:50051 (grpc): gRPC OK"
            ),
            "test_reachability[namespace foo STRICT]": (
                "expected reset: sleep.legacy -> http://httpbin.foo:8000/headers: HTTP 200"
            ),
            "test_reachability[mesh-wide STRICT]": "observed differs from expected",
        },
        id="strict-as-permissive",
    ),
    pytest.param(
        "no-xfcc",
        ["test_identity.py", "test_permissive.py", "test_grpc.py"],
        {
            "test_xfcc_names_client_and_server[foo-foo]": "expected one XFCC element, got None",
            "test_permissive_accepts_mtls": "mTLS request arrived without X-Forwarded-Client-Cert",
            "test_permissive_accepts_plaintext_and_mtls_grpc": (
                "mTLS gRPC arrived without X-Forwarded-Client-Cert"
            ),
            "test_grpc_server_sees_the_callers_identity": "expected one XFCC element, got None",
        },
        id="no-xfcc",
    ),
    pytest.param(
        "wrong-spiffe-id",
        ["test_identity.py"],
        {
            "test_served_certificate[httpbin-foo]": (
                "serves spiffe://cluster.local/ns/foo/sa/httpbin-impostor,"
                " want spiffe://cluster.local/ns/foo/sa/httpbin"
            ),
        },
        id="wrong-spiffe-id",
    ),
    pytest.param(
        "tls10-allowed",
        ["test_posture.py"],
        {
            "test_inbound_accepts_only_tls12_and_tls13": (
                "the inbound mTLS port accepted ('TLS1.0', 'TLS1.1', 'TLS1.2', 'TLS1.3'),"
                " Istio accepts ('TLS1.2', 'TLS1.3')"
            ),
            "test_inbound_tls12_ciphers_are_istios": "'AES128-GCM-SHA256', 'ECDHE-RSA-AES128-SHA')",
            "test_inbound_tls_context_in_the_sidecar": "chain 0.0.0.0_8080-mtls",
        },
        id="tls10-allowed",
    ),
    pytest.param(
        "client-cert-optional",
        ["test_posture.py"],
        {
            "test_inbound_requires_a_mesh_client_certificate": (
                "a client without a certificate got through: curl exit 0, HTTP '200'"
            ),
        },
        id="client-cert-optional",
    ),
    pytest.param(
        "authz-ignores-principals",
        ["test_authorization.py", "test_grpc.py"],
        {
            "test_grpc_authorization_by_principal": (
                "sleep.bar was not denied: sleep.bar -> grpc://httpbin.foo:50051 (grpc): gRPC OK"
            ),
            "test_authorization[allow only sleep.foo's principal]": (
                "sleep.legacy GET /headers -> httpbin.foo: expected 403 RBAC: sleep.legacy ->"
                " http://httpbin.foo:8000/headers: HTTP 200"
            ),
            "test_authorization[principal ALLOW under PERMISSIVE refuses plaintext]": (
                "authorization of httpbin.foo under 'principal ALLOW under PERMISSIVE refuses"
                " plaintext'"
            ),
            "test_authorization[namespace isolation: only foo]": "observed differs from expected",
        },
        id="authz-ignores-principals",
    ),
    pytest.param(
        "waypoint-ignores-l7",
        ["test_waypoint.py", "test_grpc_waypoint.py", "--mesh-dataplane=ambient"],
        {
            "test_grpc_waypoint_judges_the_callers_identity[ambient]": (
                "the waypoint let sleep.foo in under ALLOW"
                " cluster.local/ns/foo/sa/sleep-someone-else, so it did not judge the caller's"
                " own identity spiffe://cluster.local/ns/foo/sa/sleep"
            ),
            "test_grpc_authorization_by_principal_at_the_waypoint[ambient]": (
                "httpbin.foo was not denied: httpbin.foo -> grpc://httpbin.bar:50051 (grpc):"
                " gRPC OK"
            ),
            "targetRefs Service: GET from sleep.foo only]": (
                "sleep.foo DELETE /delete -> httpbin.bar: expected 403 RBAC, observed 200"
            ),
            "targetRefs Gateway: DENY POST for all": (
                "sleep.bar POST /post -> httpbin.bar: expected 403 RBAC, observed 200"
            ),
        },
        id="waypoint-ignores-l7",
    ),
    # only the gRPC identity row sends a forged XFCC through the waypoint; the HTTP waypoint
    # rows assert nothing of XFCC and pass
    pytest.param(
        "waypoint-forwards-xfcc",
        ["test_waypoint.py", "test_grpc_waypoint.py", "--mesh-dataplane=ambient"],
        {
            "test_grpc_waypoint_judges_the_callers_identity[ambient]": (
                "the waypoint passed an X-Forwarded-Client-Cert on (it sanitizes XFCC):"
                " sleep.foo -> grpc://httpbin.bar:50051 (grpc): gRPC OK"
            ),
        },
        id="waypoint-forwards-xfcc",
    ),
    pytest.param(
        "no-rotation",
        ["test_rotation.py", "--mesh-cert-ttl=6s"],
        {"test_rotation_before_expiry": "was not rotated before it expired"},
        id="no-rotation",
    ),
]


@pytest.mark.parametrize(("fault", "targets", "failures"), FAULTS)
def test_suites_fail_against_a_broken_mesh(
    pytester: pytest.Pytester, fault: str, targets: list[str], failures: dict[str, str]
) -> None:
    args = [str(CONFORMANCE / t) if t.endswith(".py") else t for t in targets]
    result = _run(pytester, f"--mesh-fault={fault}", *args)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    text = result.stdout.str()
    failed = re.findall(r"^FAILED (\S+(?: [^-\n]+?)?)(?: - |$)", text, re.M)
    for test, message in failures.items():
        assert any(test in f for f in failed), f"{test} did not fail under {fault}: {failed}"
        assert message in text, f"failure of {test} does not say {message!r}"


# The same faults in the local ztunnel: each ambient suite fails on the one that breaks its
# promise (no-xfcc has nothing to break there: ztunnel writes no XFCC). The gRPC rows: STRICT
# on strict-as-permissive, the others on wrong-spiffe-id (the caller's identity) and
# authz-ignores-principals (ztunnel's L4 authorization; behind a waypoint, the waypoint's RBAC
# too).
AMBIENT_FAULTS = [
    pytest.param(
        "strict-as-permissive",
        ["test_strict.py", "test_reachability.py", "test_grpc.py", "test_grpc_waypoint.py"],
        {
            "test_strict_resets_plaintext[ambient]": "plaintext was not refused by STRICT",
            "test_strict_resets_plaintext_grpc_behind_a_waypoint[ambient]": (
                "plaintext gRPC was not refused by STRICT: sleep.legacy ->"
                " grpc://httpbin.bar:50051 (grpc): gRPC OK"
            ),
            "test_strict_resets_plaintext_grpc[ambient]": (
                "plaintext gRPC was not refused by STRICT: sleep.legacy ->"
                " grpc://httpbin.foo:50051 (grpc): gRPC OK"
            ),
            "test_reachability[ambient-namespace foo STRICT]": (
                "expected reset: sleep.legacy -> http://httpbin.foo:8000/headers: HTTP 200"
            ),
            "test_reachability[ambient-mesh-wide STRICT]": "observed differs from expected",
        },
        id="strict-as-permissive",
    ),
    pytest.param(
        "wrong-spiffe-id",
        ["test_identity.py", "test_grpc.py", "test_grpc_waypoint.py"],
        {
            "test_permissive_accepts_plaintext_and_mtls_grpc_behind_a_waypoint[ambient]": (
                "mTLS gRPC under PERMISSIVE did not arrive with the waypoint's identity: the"
                " server's ztunnel refused it under ALLOW cluster.local/ns/bar/sa/waypoint"
            ),
            "test_grpc_waypoint_judges_the_callers_identity[ambient]": (
                "the waypoint refused sleep.foo under ALLOW cluster.local/ns/foo/sa/sleep:"
                " sleep.foo -> grpc://httpbin.bar:50051 (grpc): gRPC PERMISSION_DENIED"
            ),
            "test_permissive_accepts_plaintext_and_mtls_grpc[ambient]": (
                "mTLS gRPC under PERMISSIVE did not arrive with the caller's identity: ztunnel"
                " refused sleep.foo under ALLOW cluster.local/ns/foo/sa/sleep"
            ),
            "test_grpc_server_sees_the_callers_identity[ambient]": (
                "ztunnel refused sleep.foo under ALLOW cluster.local/ns/foo/sa/sleep: sleep.foo"
                " -> grpc://httpbin.foo:50051 (grpc): reset"
            ),
            "test_served_certificate[ambient-httpbin-foo]": (
                "serves spiffe://cluster.local/ns/foo/sa/httpbin-impostor,"
                " want spiffe://cluster.local/ns/foo/sa/httpbin"
            ),
            "test_xfcc_names_client_and_server[ambient-foo-foo]": (
                "ztunnel refused sleep.foo under ALLOW cluster.local/ns/foo/sa/sleep"
            ),
        },
        id="wrong-spiffe-id",
    ),
    pytest.param(
        "tls10-allowed",
        ["test_posture.py"],
        {
            "test_inbound_accepts_only_tls12_and_tls13[ambient]": (
                "the HBONE port 15008 accepted ('TLS1.2', 'TLS1.3'), ztunnel accepts ('TLS1.3',)"
            ),
            "test_inbound_tls12_ciphers_are_istios[ambient]": "TLS 1.2 suites accepted:",
        },
        id="tls10-allowed",
    ),
    pytest.param(
        "client-cert-optional",
        ["test_posture.py"],
        {
            "test_inbound_requires_a_mesh_client_certificate[ambient]": (
                "a client without a certificate got through: curl exit 0"
            ),
        },
        id="client-cert-optional",
    ),
    pytest.param(
        "authz-ignores-principals",
        ["test_authorization.py", "test_identity.py", "test_grpc.py", "test_grpc_waypoint.py"],
        {
            "test_grpc_authorization_by_principal_at_the_waypoint[ambient]": (
                "httpbin.foo was not denied: httpbin.foo -> grpc://httpbin.bar:50051 (grpc):"
                " gRPC OK"
            ),
            "test_permissive_accepts_plaintext_and_mtls_grpc_behind_a_waypoint[ambient]": (
                "plaintext gRPC under PERMISSIVE got past an ALLOW of principal"
                " cluster.local/ns/bar/sa/waypoint, which needs mTLS"
            ),
            "test_permissive_accepts_plaintext_and_mtls_grpc[ambient]": (
                "plaintext gRPC under PERMISSIVE got past an ALLOW of principal"
                " cluster.local/ns/foo/sa/sleep, which needs mTLS"
            ),
            "test_grpc_server_sees_the_callers_identity[ambient]": (
                "ztunnel let sleep.foo in under ALLOW cluster.local/ns/foo/sa/sleep-someone-else,"
                " so it did not judge the caller's own identity"
            ),
            "test_grpc_authorization_by_principal[ambient]": (
                "sleep.bar was not denied: sleep.bar -> grpc://httpbin.foo:50051 (grpc): gRPC OK"
            ),
            "test_authorization[ambient-allow only sleep.foo's principal]": (
                "sleep.legacy GET /headers -> httpbin.foo: expected closed by ztunnel:"
                " sleep.legacy -> http://httpbin.foo:8000/headers: HTTP 200"
            ),
            "test_authorization[ambient-namespace isolation: only foo]": (
                "observed differs from expected"
            ),
            "test_xfcc_names_client_and_server[ambient-bar-foo]": (
                "ztunnel let sleep.bar in under ALLOW"
                " cluster.local/ns/bar/sa/sleep-someone-else, so it did not judge the client's"
                " own identity spiffe://cluster.local/ns/bar/sa/sleep"
            ),
        },
        id="authz-ignores-principals",
    ),
    pytest.param(
        "no-rotation",
        ["test_rotation.py", "--mesh-cert-ttl=6s"],
        {"test_rotation_before_expiry[ambient]": "was not rotated before it expired"},
        id="no-rotation",
    ),
]


@pytest.mark.parametrize(("fault", "targets", "failures"), AMBIENT_FAULTS)
def test_ambient_suites_fail_against_a_broken_ztunnel(
    pytester: pytest.Pytester, fault: str, targets: list[str], failures: dict[str, str]
) -> None:
    args = [str(CONFORMANCE / t) if t.endswith(".py") else t for t in targets]
    result = _run(pytester, "--mesh-dataplane=ambient", f"--mesh-fault={fault}", *args)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    text = result.stdout.str()
    failed = re.findall(r"^FAILED (\S+(?: [^-\n]+?)?)(?: - |$)", text, re.M)
    for test, message in failures.items():
        assert any(test in f for f in failed), f"{test} did not fail under {fault}: {failed}"
        assert message in text, f"failure of {test} does not say {message!r}"
