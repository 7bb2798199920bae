"""Issue 19's false pass, reproduced on the local mesh with the platform team's own layout, and
what it gives now (a user's suite run by pytester, real Envoy sidecars, real curl).

The layout: Service `ledger` in `payments` with port 80 named `http` -> 8080 and `tcp-postgres`
5432; `checkout` with a sidecar; `batch/nightly` without one. The user's test asserted that
plaintext from `nightly` gets no HTTP response. It passed with no policy at all: the handle
guessed port 8000, which the Service does not have, and curl's exit 7 (nothing listening) looked
like a refusal. Now the handle addresses port 80: without a policy the plaintext request is
answered (the test fails, saying so), port 8000 is a `ServicePortError` naming ports 80 and
5432, what port 8000 gives is a failed connection named as such, never `reset`, and STRICT's
answer on port 80 is `reset`.
"""

from __future__ import annotations

import pytest
from local_helpers import assert_runs_left_nothing, needs_local_mesh

LEDGER_TOPOLOGY = """\
namespaces:
  - name: payments
    injected: true
    workloads:
      - {name: ledger, kind: httpbin, ports: [8080, 5432]}
    services:
      - name: ledger
        selector: {app: ledger}
        ports:
          - {name: http, port: 80, targetPort: 8080}
          - {name: tcp-postgres, port: 5432}
  - name: checkout
    injected: true
    workloads:
      - {name: checkout, kind: sleep}
  - name: batch
    injected: false
    workloads:
      - {name: nightly, kind: sleep}
"""

SUITE = r'''
import pytest

from pytest_meshconform import (
    Capturer,
    PolicyApplier,
    ServicePortError,
    WorkloadLookup,
    XfccReader,
    peer_authentication,
)


def test_plaintext_is_refused_as_the_user_wrote_it(workload: WorkloadLookup) -> None:
    """Issue 19's test: it passed with no policy, on a port the Service does not have."""
    nightly, ledger = workload("nightly", "batch"), workload("ledger", "payments")
    result = nightly.curl(ledger)
    assert result.status is None, result


def test_port_8000_is_an_error_before_anything_is_sent(workload: WorkloadLookup) -> None:
    nightly, ledger = workload("nightly", "batch"), workload("ledger", "payments")
    with pytest.raises(ServicePortError, match=(
        r"^ledger\.payments exposes 80 \(http\), 5432 \(tcp-postgres\), not 8000;"
    )):
        nightly.curl(ledger, port=8000)


def test_what_port_8000_gives_is_not_a_reset(workload: WorkloadLookup) -> None:
    """curl exit 7: the connection failed, and curl's trace says why (the local mesh's node
    has no route for a Service address at a port the Service lacks; elsewhere nothing may
    listen: `refused`). Never `reset`, what a suite asserts of STRICT."""
    result = workload("nightly", "batch").curl("http://ledger.payments:8000/headers")
    assert result.exit_code == 7 and not result.reset, result
    assert result.outcome in ("refused", "no route to host"), result


def test_strict_resets_plaintext_on_the_service_port(
    apply_policy: PolicyApplier, workload: WorkloadLookup, capture: Capturer
) -> None:
    nightly, ledger = workload("nightly", "batch"), workload("ledger", "payments")
    apply_policy(peer_authentication("default", "payments", mode="STRICT"))
    with capture(ledger, port="http") as cap:
        result = nightly.curl(ledger)
    assert result.reset and result.outcome == "reset", result
    assert result.url == "http://ledger.payments:80/headers"
    assert cap.port == 8080 and cap.flows_from(nightly), cap


def test_mtls_identity_at_a_named_port(xfcc: XfccReader, workload: WorkloadLookup) -> None:
    seen = xfcc(workload("checkout", "checkout"), workload("ledger", "payments"), port="http")
    assert seen is not None and seen[0].uri == (
        "spiffe://cluster.local/ns/checkout/sa/checkout",
    ), seen
'''


@needs_local_mesh
def test_the_false_pass_of_issue_19_now_fails_for_the_right_reason(
    pytester: pytest.Pytester,
) -> None:
    pytester.makefile(".yaml", payments=LEDGER_TOPOLOGY)
    pytester.makepyfile(test_ledger=SUITE)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "--mesh-topology=payments.yaml")
    result.assert_outcomes(passed=4, failed=1)
    # the user's assertion now fails: port 80 answered plaintext, there is no policy yet
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: nightly.batch -> http://ledger.payments:80/headers: HTTP 200*",
            "*FAILED test_ledger.py::test_plaintext_is_refused_as_the_user_wrote_it*",
        ]
    )
    assert_runs_left_nothing(result.stdout.str())
