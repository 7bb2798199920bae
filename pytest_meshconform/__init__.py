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
    "HttpResponse": "wire",
    "CaptureError": "wire",
    # policy.py
    "parse_policy": "policy",
    "parse_policies": "policy",
    "peer_authentication": "policy",
    "destination_rule": "policy",
    "PeerAuthentication": "policy",
    "DestinationRule": "policy",
    "PolicyError": "policy",
    "MtlsMode": "policy",
    "TlsMode": "policy",
    # istio/ (the model of Istio's policy semantics)
    "effective_mtls_mode": "istio",
    "client_tls_mode": "istio",
    "destination_rule_for": "istio",
    "plan_sidecar": "istio",
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
        EnvoyCert as EnvoyCert,
        EnvoySecrets as EnvoySecrets,
        SpiffeId as SpiffeId,
        WorkloadCert as WorkloadCert,
        lifetime_elapsed as lifetime_elapsed,
        load_pem_chain as load_pem_chain,
        parse_envoy_certs as parse_envoy_certs,
        parse_envoy_secrets as parse_envoy_secrets,
        parse_spiffe_id as parse_spiffe_id,
        rotation_time as rotation_time,
    )
    from .istio import (
        client_tls_mode as client_tls_mode,
        destination_rule_for as destination_rule_for,
        effective_mtls_mode as effective_mtls_mode,
        plan_sidecar as plan_sidecar,
    )
    from .policy import (
        DestinationRule as DestinationRule,
        MtlsMode as MtlsMode,
        PeerAuthentication as PeerAuthentication,
        PolicyError as PolicyError,
        TlsMode as TlsMode,
        destination_rule as destination_rule,
        parse_policies as parse_policies,
        parse_policy as parse_policy,
        peer_authentication as peer_authentication,
    )
    from .wire import (
        Capture as Capture,
        CaptureError as CaptureError,
        ClientHello as ClientHello,
        Flow as Flow,
        HttpRequest as HttpRequest,
        HttpResponse as HttpResponse,
        ServerHello as ServerHello,
        TlsInfo as TlsInfo,
        analyze_pcap as analyze_pcap,
    )
    from .xfcc import (
        XfccElement as XfccElement,
        XfccError as XfccError,
        parse_xfcc as parse_xfcc,
    )
