"""Shared wire-level expectations (literal, from Istio sidecars; see docs/istio-facts.md)."""

from __future__ import annotations

from typing import Any

# ALPN an Istio sidecar client offers for HTTP/1.1 over ISTIO_MUTUAL (istio.alpn filter).
ISTIO_HTTP11_ALPN = ("istio-http/1.1", "istio", "http/1.1")
TLS_VERSIONS_ALLOWED = ("TLS1.2", "TLS1.3")  # Istio: TLS 1.2 minimum, 1.3 maximum
# HBONE (a sidecar of an ambient-profile istiod sending to a pod labelled
# networking.istio.io/tunnel=http): HTTP/2 CONNECT over mTLS to port 15008
# (pkg/model HBoneInboundListenPort), ALPN h2 and TLS 1.3 only (istiod
# buildCommonConnectTLSContext); Istio's docs: "HBONE ... tunneling TCP connections over
# HTTP/2 CONNECT, over mTLS", port 15008 (ambient architecture, HBONE).
HBONE_PORT = 15008
HBONE_ALPN = ("h2",)
# ztunnel speaks TLS 1.3 only (src/tls/lib.rs tls_versions; TLS 1.2 only with TLS12_ENABLED)
HBONE_TLS_VERSIONS = ("TLS1.3",)


def istio_sni(service_fqdn: str, port: int = 8000) -> str:
    """Istio's SNI for ISTIO_MUTUAL: outbound_.<port>_._.<fqdn>."""
    return f"outbound_.{port}_._.{service_fqdn}"


def no_keepalive(namespace: str) -> dict[str, Any]:
    """A DestinationRule that makes every request a new connection, so a capture sees the
    TLS handshake (a pooled connection opened before the capture would show only app data).
    It sets no tls, so auto mTLS still decides the transport. Written out: the
    `destination_rule` builder writes TLS settings only (`apply_policy` validates it)."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "httpbin-no-keepalive", "namespace": namespace},
        "spec": {
            "host": f"httpbin.{namespace}.svc.cluster.local",
            "trafficPolicy": {"connectionPool": {"http": {"maxRequestsPerConnection": 1}}},
        },
    }
