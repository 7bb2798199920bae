"""STRICT rejects plaintext, proven on the wire (a capture at the server's pod).

Istio: plaintext into a STRICT sidecar matches no filter chain and is reset (`HttpResult.reset`:
curl exit 56, no HTTP response); a sidecar client's mTLS goes through, its ClientHello offering
Istio's ALPN and SNI, and none of the request travels in plaintext. A sidecar that tunnels over
HBONE (ambient profile) sends that mTLS to port 15008 with ALPN h2 instead: asserted as such.

Ambient (``--mesh-dataplane=ambient``): istiod turns STRICT into a DENY for callers without a
peer identity (``istio_converted_static_strict``, pilot/pkg/serviceregistry/ambient/
authorization.go), so the server's ztunnel drops plaintext (istio.io "Use Layer 4 security
policy": curl's "Connection reset by peer"); an ambient client's ztunnel sends HBONE: TLS 1.3
only (ztunnel src/tls/lib.rs ``tls_versions``), ALPN h2, no SNI (``client_config`` sets
``enable_sni = false``, src/tls/certificate.rs), to port 15008.
"""

from __future__ import annotations

import pytest

from pytest_meshconform import (
    Capturer,
    PolicyApplier,
    WorkloadHandle,
    peer_authentication,
    tunnels_over_hbone,
)

from .wire import (
    HBONE_ALPN,
    HBONE_PORT,
    ISTIO_HTTP11_ALPN,
    istio_sni,
    no_keepalive,
)

pytestmark = pytest.mark.mesh_features("mtls", "peer-authentication", "capture")


def test_strict_resets_plaintext(
    apply_policy: PolicyApplier,
    naked_sleep: WorkloadHandle,
    httpbin: WorkloadHandle,
    capture: Capturer,
) -> None:
    """Under a STRICT namespace policy, a plaintext request from a pod without a sidecar is
    reset: no HTTP answer, the request line on the wire, a reset from the server (its sidecar,
    or its ztunnel in ambient)."""
    apply_policy(peer_authentication("default", httpbin.namespace, mode="STRICT"))
    with capture(httpbin) as cap:
        result = naked_sleep.curl(httpbin)
    assert result.reset, (
        f"plaintext was not refused by STRICT (a reset expected, got {result.outcome}): {result}"
    )
    attempts = cap.flows_from(naked_sleep)
    # Sanity first: the capture must have seen the attempt, or "no response" proves nothing.
    assert attempts, f"the capture saw no connection from {naked_sleep}: {cap}"
    requests = [r for flow in attempts for r in flow.http_requests]
    assert [(r.method, r.target) for r in requests] == [("GET", "/headers")], (
        f"the plaintext request line is not on the wire as sent: {requests} ({cap})"
    )
    responses = [r for flow in attempts for r in flow.http_responses]
    assert responses == [], f"STRICT answered plaintext with HTTP: {responses} ({cap})"
    assert any(flow.server_rst for flow in attempts), f"no reset from the server ({cap})"


def test_strict_accepts_mtls(
    apply_policy: PolicyApplier,
    sleep: WorkloadHandle,
    httpbin: WorkloadHandle,
    capture: Capturer,
) -> None:
    """Under STRICT, a mesh client (sidecar or ambient) still gets through, and only over Istio
    mTLS: its ClientHello carries Istio's ALPN and SNI (or HBONE's shape), and no plaintext is
    on the wire."""
    apply_policy(peer_authentication("default", httpbin.namespace, mode="STRICT"))
    apply_policy(no_keepalive(httpbin.namespace))
    hbone = tunnels_over_hbone(sleep.mesh, sleep.workload, httpbin.workload)
    with capture(httpbin) as cap:
        result = sleep.curl(httpbin)
    assert result.ok, f"mTLS into STRICT failed: {result}"
    flows = cap.flows_from(sleep)
    assert flows, f"the capture saw no connection from {sleep}: {cap}"
    hellos = [f.tls.client_hello for f in flows if f.tls and f.tls.client_hello]
    assert hellos, f"no TLS ClientHello from {sleep}'s sidecar on the wire ({cap})"
    hello = hellos[-1]
    if hbone:
        ports = sorted({f.server_port for f in flows})
        assert ports == [HBONE_PORT], f"HBONE went to ports {ports} ({cap})"
        assert hello.alpn == HBONE_ALPN, f"HBONE ALPN {hello.alpn} ({cap})"
        assert "TLS1.3" in hello.supported_versions, f"HBONE without TLS 1.3: {hello} ({cap})"
        if sleep.dataplane == "ambient":  # ztunnel's own ClientHello
            assert hello.supported_versions == ("TLS1.3",), f"ztunnel offers {hello} ({cap})"
            assert hello.sni is None, f"ztunnel sent SNI {hello.sni!r} ({cap})"
    else:
        assert hello.alpn == ISTIO_HTTP11_ALPN, f"ALPN {hello.alpn} ({cap})"
        assert hello.sni == istio_sni(f"httpbin.{httpbin.namespace}.svc.cluster.local"), (
            f"SNI {hello.sni} ({cap})"
        )
    leaked = [r for flow in cap.flows for r in flow.http_requests]
    assert leaked == [], f"plaintext HTTP on the wire under STRICT: {leaked} ({cap})"
    assert cap.plaintext_flows == (), f"non-TLS payload on the wire: {cap}"
