"""Literal outcomes for the suites' tables, as Istio's reachability test names them."""

from __future__ import annotations

from pytest_meshconform import Outcome

# 200 and the server saw the client's certificate (X-Forwarded-Client-Cert naming its SPIFFE ID).
MTLS = Outcome("mTLS", status=200, mtls=True)
# 200 without XFCC: the request reached the app in plaintext.
PLAIN = Outcome("plaintext", status=200, mtls=False)
# Plaintext into a STRICT sidecar: no filter chain matches, the connection is reset (curl 56).
RESET = Outcome("reset", status=None, curl_exit=56)
# The client's own sidecar could not reach the upstream (e.g. plaintext to STRICT, TLS to a
# server without a sidecar) and answered 503 itself.
E503 = Outcome("503", status=503)
