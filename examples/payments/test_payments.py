"""A platform team's own services, proven on the mesh: HTTP and TCP on one workload.

The layout (topology.yaml beside this file): payments/ledger serves an HTTP API on Service
port 80 (`http`, container port 8080, httpbin) and a postgres-like TCP port 5432
(`tcp-postgres`, Istio's tcp-echo: it answers each line with ``hello <line>``); checkout/web
and checkout/refunds are sidecar clients with service accounts of their own; batch/nightly
has no sidecar. Run it (as root, on the local mesh):

    pytest --mesh-topology=examples/payments/topology.yaml examples/payments/

Every expectation is a literal from Istio's documentation, cited where it is used; only names
`pytest_meshconform` exports are imported, and `mypy --strict` checks this file.
"""

from __future__ import annotations

import pytest

from pytest_meshconform import (
    DENIED,
    MTLS,
    RESET,
    Call,
    CallTable,
    Capturer,
    PolicyApplier,
    WorkloadHandle,
    XfccReader,
    authorization_policy,
    peer_authentication,
)

# What tcp-echo answers: "echoes back any traffic it received with a prefix hello. For example,
# if you send "world" to tcp-echo, it will reply with hello world" (istio.io, Tasks > Security
# > Authorization > "Authorization for TCP traffic", Before you begin).
SENT = b"meshconform\n"
ECHOED = b"hello meshconform\n"

# istio.io, Tasks > Security > Authentication > "Mutual TLS Migration", "Lock down to mutual
# TLS by namespace": a namespace-wide STRICT PeerAuthentication, after which plaintext from the
# legacy namespace (no sidecar) fails: "000 command terminated with exit code 56" (curl's
# CURLE_RECV_ERROR: the server sidecar reset the connection; `reset`).
STRICT_PAYMENTS = peer_authentication("default", "payments", mode="STRICT")

# Workload identity (istio.io, Concepts > Security, "Istio identity"; the X-Forwarded-Client-Cert
# the server sidecar sets carries it as URI=): spiffe://<trust domain>/ns/<namespace>/sa/<service
# account>, trust domain cluster.local.
WEB_ID = "spiffe://cluster.local/ns/checkout/sa/checkout-web"
# An AuthorizationPolicy's principals drop the scheme: <trust domain>/ns/<namespace>/sa/<service
# account> (istio.io, Reference > Configuration > Security > "Authorization Policy", Source).
WEB_PRINCIPAL = "cluster.local/ns/checkout/sa/checkout-web"


@pytest.mark.mesh_features("mtls", "peer-authentication", "capture")
def test_strict_resets_plaintext_on_http_and_tcp(
    apply_policy: PolicyApplier,
    capture: Capturer,
    nightly: WorkloadHandle,
    web: WorkloadHandle,
    ledger: WorkloadHandle,
) -> None:
    """Under a STRICT namespace the ledger's sidecar resets plaintext from batch (no sidecar)
    on both Service ports, while a checkout sidecar gets through over mTLS on both."""
    apply_policy(STRICT_PAYMENTS)

    with capture(ledger, port="http") as cap:  # tcpdump at the pod port 80 targets (8080)
        plain_http = nightly.curl(ledger, port="http")
    assert plain_http.reset, plain_http  # exit 56: reset, not `refused` (nothing listening)
    assert cap.flows_from(nightly), cap  # the capture saw the attempt: it was a real reset

    plain_tcp = nightly.tcp(ledger, "tcp-postgres", send=SENT)
    assert plain_tcp.reset, plain_tcp  # the same verdict on the TCP port: no filter chain

    mtls_http = web.curl(ledger, port=80)
    assert mtls_http.status == 200, mtls_http
    mtls_tcp = web.tcp(ledger, 5432, send=SENT)
    assert mtls_tcp.received == ECHOED, mtls_tcp


@pytest.mark.mesh_features("mtls", "peer-authentication", "xfcc")
def test_the_ledger_sees_checkouts_spiffe_id(
    apply_policy: PolicyApplier, xfcc: XfccReader, web: WorkloadHandle, ledger: WorkloadHandle
) -> None:
    """Over mTLS the ledger's sidecar forwards the caller's identity to the app in
    X-Forwarded-Client-Cert, read from httpbin's echo at the named Service port."""
    apply_policy(STRICT_PAYMENTS)
    seen = xfcc(web, ledger, port="http")
    assert seen is not None, "mTLS from a sidecar carries X-Forwarded-Client-Cert"
    assert seen[0].uri == (WEB_ID,), seen


@pytest.mark.mesh_features("mtls", "peer-authentication", "port-level-mtls")
def test_a_port_level_permissive_exception_for_the_tcp_port(
    apply_policy: PolicyApplier,
    nightly: WorkloadHandle,
    web: WorkloadHandle,
    ledger: WorkloadHandle,
) -> None:
    """The namespace stays STRICT; the ledger's postgres port accepts plaintext from batch
    (PERMISSIVE for that port only) while its HTTP API still resets plaintext."""
    # istio.io, Reference > Configuration > Security > "PeerAuthentication": "Note the port value
    # in the portLevelMtls field refers to the port of the workload, not the port of the
    # Kubernetes service" (portLevelMtls needs a selector). 5432 is the container port here.
    apply_policy(STRICT_PAYMENTS)
    apply_policy(
        peer_authentication(
            "ledger-postgres",
            "payments",
            selector={"app": "ledger"},
            port_level={5432: "PERMISSIVE"},
        )
    )
    plain_tcp = nightly.tcp(ledger, "tcp-postgres", send=SENT)
    assert plain_tcp.received == ECHOED, plain_tcp  # plaintext reached tcp-echo

    plain_http = nightly.curl(ledger, port="http")
    assert plain_http.reset, plain_http  # the other port keeps the namespace's STRICT

    mtls_tcp = web.tcp(ledger, "tcp-postgres", send=SENT)
    assert mtls_tcp.received == ECHOED, mtls_tcp  # PERMISSIVE takes mTLS too


@pytest.mark.mesh_features("mtls", "peer-authentication", "port-level-mtls")
@pytest.mark.parametrize(
    ("port_key", "answered"),
    [(8080, True), (80, False)],
    ids=["container-port-8080", "service-port-80"],
)
def test_port_level_mtls_is_keyed_by_the_container_port(
    apply_policy: PolicyApplier,
    nightly: WorkloadHandle,
    ledger: WorkloadHandle,
    port_key: int,
    answered: bool,
) -> None:
    """The HTTP API's Service port is 80, its container port 8080: a PERMISSIVE exception keyed
    8080 lets plaintext through, one keyed 80 names no port of the workload and leaves STRICT."""
    # istio.io, "PeerAuthentication" reference: "the port value in the portLevelMtls field
    # refers to the port of the workload, not the port of the Kubernetes service".
    apply_policy(STRICT_PAYMENTS)
    apply_policy(
        peer_authentication(
            "ledger-http",
            "payments",
            selector={"app": "ledger"},
            port_level={port_key: "PERMISSIVE"},
        )
    )
    plain = nightly.curl(ledger, port="http")
    if answered:
        assert plain.status == 200, plain
    else:
        assert plain.reset, plain


@pytest.mark.mesh_features("mtls", "authorization")
def test_only_checkout_web_may_call_the_ledger(
    apply_policy: PolicyApplier,
    web: WorkloadHandle,
    refunds: WorkloadHandle,
    ledger: WorkloadHandle,
) -> None:
    """An ALLOW policy naming one service account: the other checkout client is denied on both
    ports (403 on HTTP, a connection closed without a byte on TCP); web gets 200 and the echo."""
    # istio.io, Tasks > Security > Authorization: "Authorization for HTTP traffic" (a denied
    # request: 403, "RBAC: access denied") and "Authorization for TCP traffic" (a denied
    # connection: no "hello" comes back, "connection rejected").
    apply_policy(
        authorization_policy(
            "ledger-web-only",
            "payments",
            selector={"app": "ledger"},
            rules=[{"from": [{"source": {"principals": [WEB_PRINCIPAL]}}]}],
        )
    )
    denied_http = refunds.curl(ledger, port="http")
    assert denied_http.status == 403, denied_http
    assert denied_http.body == b"RBAC: access denied", denied_http

    denied_tcp = refunds.tcp(ledger, "tcp-postgres", send=SENT)
    # The server's RBAC filter accepted the connection and closed it: not `refused` (nothing
    # listening) and not `reset` (STRICT against plaintext).
    assert denied_tcp.closed and denied_tcp.received == b"", denied_tcp
    assert denied_tcp.outcome == "closed", denied_tcp

    allowed_http = web.curl(ledger, port="http")
    assert allowed_http.status == 200, allowed_http
    allowed_tcp = web.tcp(ledger, "tcp-postgres", send=SENT)
    assert allowed_tcp.received == ECHOED, allowed_tcp


@pytest.mark.mesh_features("mtls", "peer-authentication", "authorization", "xfcc")
def test_the_http_matrix_as_a_table(call_table: CallTable) -> None:
    """The same promises as rows of literal outcomes, run by the built-in suites' runner (the
    table goes into every report): STRICT plus the ALLOW policy for checkout-web."""
    call_table(
        "payments STRICT, ledger allows checkout-web only",
        [
            Call("web.checkout", "ledger.payments", MTLS, port="http"),
            Call("refunds.checkout", "ledger.payments", DENIED, port="http"),
            Call("nightly.batch", "ledger.payments", RESET, port="http"),
        ],
        policies=[
            STRICT_PAYMENTS,
            authorization_policy(
                "ledger-web-only",
                "payments",
                selector={"app": "ledger"},
                rules=[{"from": [{"source": {"principals": [WEB_PRINCIPAL]}}]}],
            ),
        ],
    )
