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
    "MtlsMode": "policy",
    "TlsMode": "policy",
    "client_tls_mode": "policy",
    "destination_rule_for": "policy",
    # certs.py (rotation math and chains)
    "load_pem_chain": "certs",
    "rotation_time": "certs",
    "lifetime_elapsed": "certs",
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
        CertError as CertError,
    )
    from .certs import (
        EnvoyCert as EnvoyCert,
    )
    from .certs import (
        EnvoySecrets as EnvoySecrets,
    )
    from .certs import (
        SpiffeId as SpiffeId,
    )
    from .certs import (
        WorkloadCert as WorkloadCert,
    )
    from .certs import (
        lifetime_elapsed as lifetime_elapsed,
    )
    from .certs import (
        load_pem_chain as load_pem_chain,
    )
    from .certs import (
        parse_envoy_certs as parse_envoy_certs,
    )
    from .certs import (
        parse_envoy_secrets as parse_envoy_secrets,
    )
    from .certs import (
        parse_spiffe_id as parse_spiffe_id,
    )
    from .certs import (
        rotation_time as rotation_time,
    )
    from .policy import (
        DestinationRule as DestinationRule,
    )
    from .policy import (
        MtlsMode as MtlsMode,
    )
    from .policy import (
        PeerAuthentication as PeerAuthentication,
    )
    from .policy import (
        PolicyError as PolicyError,
    )
    from .policy import (
        TlsMode as TlsMode,
    )
    from .policy import (
        client_tls_mode as client_tls_mode,
    )
    from .policy import (
        destination_rule as destination_rule,
    )
    from .policy import (
        destination_rule_for as destination_rule_for,
    )
    from .policy import (
        effective_mtls_mode as effective_mtls_mode,
    )
    from .policy import (
        parse_policies as parse_policies,
    )
    from .policy import (
        parse_policy as parse_policy,
    )
    from .policy import (
        peer_authentication as peer_authentication,
    )
    from .wire import (
        Capture as Capture,
    )
    from .wire import (
        CaptureError as CaptureError,
    )
    from .wire import (
        ClientHello as ClientHello,
    )
    from .wire import (
        Flow as Flow,
    )
    from .wire import (
        HttpRequest as HttpRequest,
    )
    from .wire import (
        ServerHello as ServerHello,
    )
    from .wire import (
        TlsInfo as TlsInfo,
    )
    from .wire import (
        analyze_pcap as analyze_pcap,
    )
    from .xfcc import (
        XfccElement as XfccElement,
    )
    from .xfcc import (
        XfccError as XfccError,
    )
    from .xfcc import (
        parse_xfcc as parse_xfcc,
    )
