"""Protocol selection: which protocol istiod assigns a Kubernetes Service port (pure).

Istio decides from the port's ``appProtocol`` if set, else from the port name's prefix
(``http``, ``http-web``, ``tcp-echo``...); a name it does not recognise leaves the protocol
"unsupported", which makes the sidecar sniff it (except on a few well-known ports, taken as
TCP). The protocol decides the filter chains: an HTTP connection manager for HTTP protocols (and
the ``istio.alpn`` override of the ClientHello's ALPN), a TCP proxy for the others.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from pytest_meshconform.mesh import Service

__all__ = [
    "WELL_KNOWN_TCP_PORTS",
    "ListenerProtocol",
    "PortProtocol",
    "parse_protocol",
    "protocol_of",
    "service_port_protocol",
]


class ListenerProtocol(StrEnum):
    """``networking.ListenerProtocol`` (pilot/pkg/networking/networking.go): how istiod builds
    a port's listener: an HTTP connection manager, a TCP proxy, or both behind protocol
    detection (``AUTO``: the chains split by what Envoy's inspectors saw)."""

    TCP = "TCP"
    HTTP = "HTTP"
    AUTO = "AUTO"


class PortProtocol(StrEnum):
    """``protocol.Instance`` of istio/istio pkg/config/protocol/instance.go (same spellings)."""

    GRPC = "GRPC"
    GRPC_WEB = "GRPC-Web"
    HTTP = "HTTP"
    HTTP_PROXY = "HTTP_PROXY"
    HTTP2 = "HTTP2"
    HTTPS = "HTTPS"
    TCP = "TCP"
    TLS = "TLS"
    UDP = "UDP"
    MONGO = "Mongo"
    REDIS = "Redis"
    MYSQL = "MySQL"
    UNSUPPORTED = "UnsupportedProtocol"

    @property
    def is_http(self) -> bool:
        """``Instance.IsHTTP``: served by an HTTP connection manager."""
        return self in _HTTP

    @property
    def is_tcp(self) -> bool:
        """``Instance.IsTCP``: served by a TCP proxy."""
        return self in _TCP

    @property
    def is_http2(self) -> bool:
        """``Instance.IsHTTP2``: HTTP2, GRPC, GRPC-Web, which istiod proxies with HTTP/2
        (the inbound HTTP connection manager's ``http2_protocol_options``, ``setH2Options``
        on the clusters) and the ``istio-h2`` ALPN."""
        return self in (PortProtocol.HTTP2, PortProtocol.GRPC, PortProtocol.GRPC_WEB)

    @property
    def listener_protocol(self) -> ListenerProtocol | None:
        """``ModelProtocolToListenerProtocol`` (pilot/pkg/networking/networking.go): HTTP for
        the HTTP family, TCP for the TCP family, AUTO (sniffing) for UnsupportedProtocol; None
        for UDP (``ListenerProtocolUnknown``: the sidecar builds no listener for it)."""
        if self.is_http:
            return ListenerProtocol.HTTP
        if self.is_tcp:
            return ListenerProtocol.TCP
        if self is PortProtocol.UDP:
            return None
        return ListenerProtocol.AUTO

    @property
    def sniffed(self) -> bool:
        """``Instance.IsUnsupported``: the sidecar detects the protocol per connection."""
        return self is PortProtocol.UNSUPPORTED


_HTTP: Final = frozenset(
    {
        PortProtocol.HTTP,
        PortProtocol.HTTP2,
        PortProtocol.HTTP_PROXY,
        PortProtocol.GRPC,
        PortProtocol.GRPC_WEB,
    }
)
_TCP: Final = frozenset(
    {
        PortProtocol.TCP,
        PortProtocol.HTTPS,
        PortProtocol.TLS,
        PortProtocol.MONGO,
        PortProtocol.REDIS,
        PortProtocol.MYSQL,
    }
)

_BY_LOWER_NAME: Final[dict[str, PortProtocol]] = {
    "tcp": PortProtocol.TCP,
    "udp": PortProtocol.UDP,
    "grpc": PortProtocol.GRPC,
    "grpc-web": PortProtocol.GRPC_WEB,
    "http": PortProtocol.HTTP,
    "http_proxy": PortProtocol.HTTP_PROXY,
    "http2": PortProtocol.HTTP2,
    "https": PortProtocol.HTTPS,
    "tls": PortProtocol.TLS,
    "mongo": PortProtocol.MONGO,
    "redis": PortProtocol.REDIS,
    "mysql": PortProtocol.MYSQL,
}

# ``wellKnownPorts`` of pkg/config/kube/conversion.go: SMTP, DNS, MySQL, MongoDB.
WELL_KNOWN_TCP_PORTS: Final = frozenset({25, 53, 3306, 27017})


def parse_protocol(text: str) -> PortProtocol:
    """``protocol.Parse`` (pkg/config/protocol/instance.go): the name, case ignored; anything
    else is UNSUPPORTED."""
    return _BY_LOWER_NAME.get(text.lower(), PortProtocol.UNSUPPORTED)


def service_port_protocol(
    port: int, name: str = "", app_protocol: str | None = None, *, udp: bool = False
) -> PortProtocol:
    """``kube.ConvertProtocol`` (pkg/config/kube/conversion.go; called for each Service port
    by pilot/pkg/serviceregistry/kube/conversion.go ``ConvertService``).

    UDP ports are UDP. Otherwise ``appProtocol`` when set, else the port name: a ``grpc-web``
    prefix (any case) is GRPC-Web; else the part before the first ``-`` goes through
    :func:`parse_protocol`; UNSUPPORTED on a well-known port (25, 53, 3306, 27017) is TCP.
    """
    if udp:
        return PortProtocol.UDP
    text = name if app_protocol is None else app_protocol
    if text[: len("grpc-web")].lower() == "grpc-web":
        return PortProtocol.GRPC_WEB
    prefix = text.split("-", 1)[0]
    protocol = parse_protocol(prefix)
    if protocol is PortProtocol.UNSUPPORTED and port in WELL_KNOWN_TCP_PORTS:
        return PortProtocol.TCP
    return protocol


def protocol_of(service: Service) -> PortProtocol:
    """:func:`service_port_protocol` of one Service port (its name and ``appProtocol``)."""
    return service_port_protocol(service.port, service.port_name, service.app_protocol)
