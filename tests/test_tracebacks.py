"""A bad policy in a suite points at the suite's line: the README promises that the helpers
hide their own frames, and the policy parsers (pure code, no pytest) hide theirs too."""

from __future__ import annotations

import pytest
from local_helpers import needs_local_mesh

BAD_MODE = "spec.mtls.mode: 'STRCT' is not one of UNSET, DISABLE, PERMISSIVE, STRICT"


def _frames_of_the_library(output: str) -> list[str]:
    return [line for line in output.splitlines() if "pytest_meshconform/" in line]


def test_a_builder_error_shows_only_the_suites_frame(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_suite="""
from pytest_meshconform import authorization_policy, destination_rule, peer_authentication


def test_mode() -> None:
    peer_authentication("default", "foo", mode="STRCT")


def test_namespace() -> None:
    destination_rule("x", "Not A Namespace", host="httpbin", tls_mode="ISTIO_MUTUAL")


def test_action() -> None:
    authorization_policy("x", "foo", action="ALOW")
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(failed=3)
    output = result.stdout.str()
    assert BAD_MODE in output
    assert _frames_of_the_library(output) == []


@needs_local_mesh
def test_an_apply_policy_error_shows_only_the_suites_frame(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_suite="""
from pytest_meshconform import PolicyApplier


def test_bad(apply_policy: PolicyApplier) -> None:
    apply_policy(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "x", "namespace": "foo"},
            "spec": {"mtls": {"mode": "STRCT"}},
        }
    )


def test_bad_yaml(apply_policy: PolicyApplier) -> None:
    apply_policy(
        "apiVersion: security.istio.io/v1\\nkind: PeerAuthentication\\n"
        "metadata: {name: x, namespace: foo}\\nspec: {mtls: {mode: STRCT}}\\n"
    )
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(failed=2)
    output = result.stdout.str()
    assert BAD_MODE in output
    assert _frames_of_the_library(output) == []
