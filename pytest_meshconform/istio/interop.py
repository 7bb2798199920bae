"""Sidecars and ambient pods in one mesh (pure): how each reaches the other.

From istio/istio (at the commit docs/istio-model.md names) and istio/ztunnel:

- A sidecar sends HBONE to an ambient pod. With ambient enabled, istiod's
  ``PILOT_ENABLE_SENDING_HBONE`` is on (``EnableHBONESend``, registered with an ambient default
  of true, pilot/pkg/features/ambient.go), so every outbound cluster of a sidecar gets the
  ``hbone`` transport socket match first (``applyHBONETransportSocketMatches``,
  pilot/pkg/networking/core/cluster_tls.go: for auto mTLS, ``ISTIO_MUTUAL``, ``DISABLE`` or no
  TLS alike: "If a user sets ISTIO_MUTUAL, then HBONE is replacing it"); an endpoint matches it
  (metadata ``tunnel: http``) when its workload speaks HBONE (``supportTunnel``,
  pilot/pkg/xds/endpoints/endpoint_builder.go), which an ambient pod does: istio-cni's
  ``ambient.istio.io/redirection: enabled`` gives it ``TunnelProtocol_HBONE``
  (``setTunnelProtocol``, pilot/pkg/serviceregistry/ambient/workloads.go). The tunnel is the
  sidecar's ``connect_originate`` cluster (``buildConnectOriginate``,
  pilot/pkg/networking/core/cluster_waypoint.go): the endpoint's port 15008
  (``UpstreamPortOverride: HBoneInboundListenPort``), TLS 1.3 only, ALPN ``h2``, the sidecar's
  own certificate, the server's certificate checked against the mesh root (and trust-domain
  aliases, if any), no SNI (``buildCommonConnectTLSContext``,
  pilot/pkg/networking/core/listener_waypoint.go). The server's ztunnel sees the sidecar's
  identity and judges it as any HBONE peer.
- An ambient pod's ztunnel sends plain TCP to a sidecar pod. A sidecar pod's workload has no
  tunnel protocol unless it carries ``networking.istio.io/tunnel: http`` (the injector adds the
  label only when ``ISTIO_META_ENABLE_HBONE`` is set in the proxy metadata,
  manifests/charts/istio-control/istio-discovery/files/injection-template.yaml;
  ``EnableMtlsTransportProtocol`` is off in istiod's ambient index), and ztunnel sends a
  destination without HBONE its bytes as they are (``build_request``: ``InboundProtocol::TCP``
  keeps the workload's own address and port, ``OutboundProtocol::TCP`` ->
  ``proxy_to_tcp``, src/proxy/outbound.rs). The sidecar receives plaintext: a STRICT sidecar
  resets it, a PERMISSIVE one serves it without X-Forwarded-Client-Cert.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from pytest_meshconform.mesh import Workload

__all__ = [
    "TUNNEL_HTTP",
    "TUNNEL_LABEL",
    "Transport",
    "sidecar_sends_hbone",
    "ztunnel_transport",
]

# pilot/pkg/model/service.go TunnelLabel, TunnelHTTP
TUNNEL_LABEL: Final = "networking.istio.io/tunnel"
TUNNEL_HTTP: Final = "http"


class Transport(StrEnum):
    """How a proxy carries a connection to its destination pod."""

    HBONE = "HBONE"  # HTTP/2 CONNECT over mutual TLS 1.3 to the pod's port 15008
    TCP = "TCP"  # the bytes as they are, to the pod's own port


def speaks_hbone(server: Workload) -> bool:
    """Whether istiod gives ``server``'s workload ``TunnelProtocol_HBONE``
    (``setTunnelProtocol``): ambient-captured, or labelled ``networking.istio.io/tunnel: http``."""
    return server.ambient or server.labels.get(TUNNEL_LABEL) == TUNNEL_HTTP


def sidecar_sends_hbone(server: Workload, *, hbone_send: bool = True) -> bool:
    """Whether a sidecar's outbound cluster reaches ``server`` over HBONE (its endpoint
    matches the ``hbone`` transport socket match). ``hbone_send``: istiod's
    ``PILOT_ENABLE_SENDING_HBONE``, on wherever ambient is."""
    return hbone_send and speaks_hbone(server)


def ztunnel_transport(server: Workload) -> Transport:
    """How an ambient pod's ztunnel sends to ``server``'s pod (``build_request``): HBONE to a
    workload that speaks it, else plain TCP (a sidecar pod, a pod outside the mesh)."""
    return Transport.HBONE if speaks_hbone(server) else Transport.TCP
