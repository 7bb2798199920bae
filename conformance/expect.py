"""Literal outcomes for the suites' tables, as Istio's reachability test names them."""

from __future__ import annotations

from dataclasses import dataclass

from pytest_meshconform.evidence.curl import HttpResult, header_from_httpbin
from pytest_meshconform.plugin.fixtures import WorkloadHandle


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one client -> server call should give: the response, and whether it was mTLS."""

    label: str
    status: int | None  # None: no HTTP response at all
    curl_exit: int
    mtls: bool | None  # XFCC present at the server; None when the call does not reach it

    def __str__(self) -> str:
        return self.label


# 200 and the server saw the client's certificate (X-Forwarded-Client-Cert present).
MTLS = Outcome("mTLS", 200, 0, True)
# 200 without XFCC: the request reached the app in plaintext.
PLAIN = Outcome("plaintext", 200, 0, False)
# Plaintext into a STRICT sidecar: no filter chain matches, the connection is reset (curl 56).
RESET = Outcome("reset", None, 56, None)
# The client's own sidecar could not reach the upstream (e.g. plaintext to STRICT, TLS to a
# server without a sidecar) and answered 503 itself.
E503 = Outcome("503", 503, 0, None)


def observe(client: WorkloadHandle, server: WorkloadHandle) -> tuple[Outcome, HttpResult]:
    """Call server's /headers from client and classify what happened."""
    result = client.curl(server, path="/headers")
    if result.ok:
        xfcc = header_from_httpbin(result.json(), "X-Forwarded-Client-Cert")
        if xfcc is None:
            return PLAIN, result
        if client.spiffe_id not in xfcc:
            return Outcome(f"mTLS as someone else ({xfcc})", 200, 0, True), result
        return MTLS, result
    for known in (RESET, E503):
        if result.status == known.status and result.exit_code == known.curl_exit:
            return known, result
    label = f"HTTP {result.status}" if result.status else f"curl exit {result.exit_code}"
    return Outcome(label, result.status, result.exit_code, None), result
