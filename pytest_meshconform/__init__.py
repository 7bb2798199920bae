"""meshconform: prove what a service mesh promises about mutual TLS, from evidence.

`_EXPORTS` is the one list of public names (`__all__` is made from it; the README documents
each, and a test checks that the `TYPE_CHECKING` imports below name the same). They are
exported lazily (PEP 562) so that pytest auto-loading the plugin through its entry point costs
nothing for test runs that never ask for a mesh.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pytest_meshconform.version import __version__

_EXPORTS: dict[str, str] = {
    # fixtures.py: what the fixtures return, and their errors
    "WorkloadHandle": "plugin.fixtures",
    "WorkloadLookup": "plugin.fixtures",
    "PolicyApplier": "plugin.fixtures",
    "UnmatchedPolicyError": "plugin.fixtures",
    "XfccReader": "plugin.fixtures",
    "CertReader": "plugin.fixtures",
    "Capturer": "plugin.fixtures",
    "CaptureResult": "plugin.fixtures",
    "EmptyCaptureError": "plugin.fixtures",
    "RotationWatcher": "plugin.fixtures",
    "RotationResult": "plugin.fixtures",
    # http.py
    "HttpResult": "evidence.curl",
    "HttpError": "evidence.curl",
    # mesh.py: the protocol every backend implements
    "Mesh": "mesh",
    "Workload": "mesh",
    "Service": "mesh",
    "ExecResult": "mesh",
    "Feature": "mesh",
    "MeshError": "mesh",
    "MeshUnavailable": "mesh",
    "MeshWideNotAllowed": "mesh",
    "PropagationTimeout": "mesh",
    "tunnels_over_hbone": "mesh",
    "SidecarDied": "mesh",
    "MeshMtlsAware": "mesh",
    "mesh_min_tls_version": "mesh",
    # plugin.py / settings.py: the run's settings, for a suite's conftest
    "mesh_settings_key": "plugin.options",
    "MeshSettings": "settings",
    # waiting.py
    "poll": "waiting",
    "WaitTimeout": "waiting",
    # xfcc.py
    "parse_xfcc": "evidence.xfcc",
    "XfccElement": "evidence.xfcc",
    "XfccError": "evidence.xfcc",
    # certs.py
    "parse_envoy_secrets": "evidence.certs",
    "parse_envoy_certs": "evidence.certs",
    "parse_spiffe_id": "evidence.certs",
    "EnvoySecrets": "evidence.certs",
    "EnvoyCert": "evidence.certs",
    "WorkloadCert": "evidence.certs",
    "SpiffeId": "evidence.certs",
    "CertError": "evidence.certs",
    "load_pem_chain": "evidence.certs",
    "rotation_time": "istio.rotation",
    "lifetime_elapsed": "evidence.certs",
    # wire.py
    "analyze_pcap": "evidence.wire",
    "Capture": "evidence.wire",
    "Flow": "evidence.wire",
    "ClientHello": "evidence.wire",
    "ServerHello": "evidence.wire",
    "TlsInfo": "evidence.wire",
    "HttpRequest": "evidence.wire",
    "HttpResponse": "evidence.wire",
    "CaptureError": "evidence.wire",
    # policy.py
    "parse_policy": "istio.api.policy",
    "parse_policies": "istio.api.policy",
    "peer_authentication": "istio.api.policy",
    "destination_rule": "istio.api.policy",
    "PeerAuthentication": "istio.api.policy",
    "DestinationRule": "istio.api.policy",
    "PolicyError": "istio.api.policy",
    "MtlsMode": "istio.api.policy",
    "TlsMode": "istio.api.policy",
    # istio/ (the model of Istio's policy semantics)
    "effective_mtls_mode": "istio",
    "client_tls_mode": "istio",
    "destination_rule_for": "istio",
    "plan_sidecar": "istio",
    # AuthorizationPolicy: parsed by policy.py, its effect decided by istio/authorization.py
    "AuthorizationPolicy": "istio.api.policy",
    "AuthzAction": "istio.api.policy",
    "authorization_policy": "istio.api.policy",
    "Authorization": "istio",
    "RbacFilter": "istio",
    "authorization_for": "istio",
    # observations.py / report_render.py: evidence per test, human-readable reports
    "TableRecorder": "report.observations",
    "ObservedTable": "report.observations",
    "Observations": "report.observations",
    "LogPositions": "mesh",
    # audit.py / service_ports.py: every Service port, its predicted mode (meshconform audit)
    "ServicePort": "audit.engine",
    "discover_service_ports": "audit.engine",
    "ServicePortLister": "plugin.service_ports",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only (mirrors _EXPORTS)
    from pytest_meshconform.audit.engine import (
        ServicePort as ServicePort,
        discover_service_ports as discover_service_ports,
    )
    from pytest_meshconform.evidence.certs import (
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
    )
    from pytest_meshconform.evidence.curl import HttpError as HttpError, HttpResult as HttpResult
    from pytest_meshconform.evidence.wire import (
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
    from pytest_meshconform.evidence.xfcc import (
        XfccElement as XfccElement,
        XfccError as XfccError,
        parse_xfcc as parse_xfcc,
    )
    from pytest_meshconform.istio import (
        Authorization as Authorization,
        RbacFilter as RbacFilter,
        authorization_for as authorization_for,
        client_tls_mode as client_tls_mode,
        destination_rule_for as destination_rule_for,
        effective_mtls_mode as effective_mtls_mode,
        plan_sidecar as plan_sidecar,
    )
    from pytest_meshconform.istio.api.policy import (
        AuthorizationPolicy as AuthorizationPolicy,
        AuthzAction as AuthzAction,
        DestinationRule as DestinationRule,
        MtlsMode as MtlsMode,
        PeerAuthentication as PeerAuthentication,
        PolicyError as PolicyError,
        TlsMode as TlsMode,
        authorization_policy as authorization_policy,
        destination_rule as destination_rule,
        parse_policies as parse_policies,
        parse_policy as parse_policy,
        peer_authentication as peer_authentication,
    )
    from pytest_meshconform.istio.rotation import rotation_time as rotation_time
    from pytest_meshconform.mesh import (
        ExecResult as ExecResult,
        Feature as Feature,
        LogPositions as LogPositions,
        Mesh as Mesh,
        MeshError as MeshError,
        MeshMtlsAware as MeshMtlsAware,
        MeshUnavailable as MeshUnavailable,
        MeshWideNotAllowed as MeshWideNotAllowed,
        PropagationTimeout as PropagationTimeout,
        Service as Service,
        SidecarDied as SidecarDied,
        Workload as Workload,
        mesh_min_tls_version as mesh_min_tls_version,
        tunnels_over_hbone as tunnels_over_hbone,
    )
    from pytest_meshconform.plugin.fixtures import (
        Capturer as Capturer,
        CaptureResult as CaptureResult,
        CertReader as CertReader,
        EmptyCaptureError as EmptyCaptureError,
        PolicyApplier as PolicyApplier,
        RotationResult as RotationResult,
        RotationWatcher as RotationWatcher,
        UnmatchedPolicyError as UnmatchedPolicyError,
        WorkloadHandle as WorkloadHandle,
        WorkloadLookup as WorkloadLookup,
        XfccReader as XfccReader,
    )
    from pytest_meshconform.plugin.options import mesh_settings_key as mesh_settings_key
    from pytest_meshconform.plugin.service_ports import ServicePortLister as ServicePortLister
    from pytest_meshconform.report.observations import (
        Observations as Observations,
        ObservedTable as ObservedTable,
        TableRecorder as TableRecorder,
    )
    from pytest_meshconform.settings import MeshSettings as MeshSettings
    from pytest_meshconform.waiting import WaitTimeout as WaitTimeout, poll as poll
