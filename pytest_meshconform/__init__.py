"""meshconform: prove what a service mesh promises about mutual TLS, from evidence.

The parsers are exported lazily (PEP 562) so that pytest auto-loading the plugin through its
entry point costs nothing for test runs that never ask for a mesh.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # xfcc.py
    "parse_xfcc": "xfcc",
    "XfccElement": "xfcc",
    "XfccError": "xfcc",
    # certs.py
    "parse_envoy_secrets": "certs",
    "parse_envoy_certs": "certs",
    "parse_spiffe_id": "certs",
    "EnvoySecrets": "certs",
    "EnvoyCert": "certs",
    "WorkloadCert": "certs",
    "SpiffeId": "certs",
    "CertError": "certs",
    # wire.py
    "analyze_pcap": "wire",
    "Capture": "wire",
    "Flow": "wire",
    "ClientHello": "wire",
    "ServerHello": "wire",
    "TlsInfo": "wire",
    "HttpRequest": "wire",
    "CaptureError": "wire",
    # policy.py
    "parse_policy": "policy",
    "parse_policies": "policy",
    "peer_authentication": "policy",
    "destination_rule": "policy",
    "effective_mtls_mode": "policy",
    "PeerAuthentication": "policy",
    "DestinationRule": "policy",
    "PolicyError": "policy",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .certs import (
        CertError,
        EnvoyCert,
        EnvoySecrets,
        SpiffeId,
        WorkloadCert,
        parse_envoy_certs,
        parse_envoy_secrets,
        parse_spiffe_id,
    )
    from .policy import (
        DestinationRule,
        PeerAuthentication,
        PolicyError,
        destination_rule,
        effective_mtls_mode,
        parse_policies,
        parse_policy,
        peer_authentication,
    )
    from .wire import (
        Capture,
        CaptureError,
        ClientHello,
        Flow,
        HttpRequest,
        ServerHello,
        TlsInfo,
        analyze_pcap,
    )
    from .xfcc import XfccElement, XfccError, parse_xfcc
