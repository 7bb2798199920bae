"""PERMISSIVE accepts both: plaintext from a client without a sidecar, mTLS from one with.

Istio's migration mode: the sidecar's inbound listener has an mTLS chain for Istio's ALPNs and
a plaintext chain for everything else. The server sees XFCC only over mTLS. A sidecar that
tunnels over HBONE (ambient profile) sends its mTLS to port 15008 with ALPN h2: asserted as
such; what XFCC the app sees through the tunnel Istio does not document, so it is asserted only
for sidecar-to-sidecar mTLS.

Ambient: a PERMISSIVE ztunnel takes plaintext on its inbound port and HBONE on 15008, and adds
no X-Forwarded-Client-Cert (ztunnel forwards TCP; only a sidecar or a waypoint, an Envoy, writes
XFCC): the app behind an ambient server sees none, over HBONE or not.
"""

from __future__ import annotations

import pytest

from pytest_meshconform import (
    Capturer,
    PolicyApplier,
    WorkloadHandle,
    XfccReader,
    peer_authentication,
    tunnels_over_hbone,
)

from .wire import (
    HBONE_ALPN,
    HBONE_PORT,
    ISTIO_HTTP11_ALPN,
    no_keepalive,
)

pytestmark = pytest.mark.mesh_features("mtls", "peer-authentication", "capture", "xfcc")


def test_permissive_accepts_plaintext(
    apply_policy: PolicyApplier,
    naked_sleep: WorkloadHandle,
    httpbin: WorkloadHandle,
    capture: Capturer,
    xfcc: XfccReader,
) -> None:
    """Under PERMISSIVE, a pod without a sidecar is answered in plaintext (request and 200 on
    the wire) and the server sees no X-Forwarded-Client-Cert."""
    apply_policy(peer_authentication("default", httpbin.namespace, mode="PERMISSIVE"))
    with capture(httpbin) as cap:
        seen = xfcc(naked_sleep, httpbin)
    assert seen is None, f"a plaintext request arrived with X-Forwarded-Client-Cert: {seen}"
    flows = cap.flows_from(naked_sleep)
    assert flows, f"the capture saw no connection from {naked_sleep}: {cap}"
    requests = [r for flow in flows for r in flow.http_requests]
    assert [(r.method, r.target) for r in requests] == [("GET", "/headers")], (
        f"the plaintext request is not on the wire: {requests} ({cap})"
    )
    statuses = [r.status for flow in flows for r in flow.http_responses]
    assert statuses == [200], f"plaintext response not on the wire: {statuses} ({cap})"


def test_permissive_accepts_mtls(
    apply_policy: PolicyApplier,
    sleep: WorkloadHandle,
    httpbin: WorkloadHandle,
    capture: Capturer,
    xfcc: XfccReader,
) -> None:
    """Under PERMISSIVE, a mesh client still speaks mTLS: Istio's ClientHello (or HBONE's) on
    the wire, no plaintext request, and a sidecar server sees the client's SPIFFE ID in
    X-Forwarded-Client-Cert (an ambient server's app sees none: ztunnel writes no XFCC)."""
    apply_policy(peer_authentication("default", httpbin.namespace, mode="PERMISSIVE"))
    apply_policy(no_keepalive(httpbin.namespace))
    hbone = tunnels_over_hbone(sleep.mesh, sleep.workload, httpbin.workload)
    with capture(httpbin) as cap:
        seen = xfcc(sleep, httpbin)
    if httpbin.dataplane == "ambient":
        assert seen is None, f"ztunnel writes no X-Forwarded-Client-Cert, the app saw {seen}"
    elif not hbone:
        assert seen is not None, "mTLS request arrived without X-Forwarded-Client-Cert"
        assert [e.uri for e in seen] == [(sleep.spiffe_id,)], f"XFCC {seen}"
    flows = cap.flows_from(sleep)
    assert flows, f"the capture saw no connection from {sleep}: {cap}"
    hellos = [f.tls.client_hello for f in flows if f.tls and f.tls.client_hello]
    if hbone:
        ports = sorted({f.server_port for f in flows})
        assert ports == [HBONE_PORT], f"HBONE went to ports {ports} ({cap})"
        assert hellos and hellos[-1].alpn == HBONE_ALPN, f"no HBONE ClientHello ({cap})"
    else:
        assert hellos and hellos[-1].alpn == ISTIO_HTTP11_ALPN, f"no Istio ClientHello ({cap})"
    assert [r for flow in flows for r in flow.http_requests] == [], f"plaintext leaked ({cap})"
