# The public face of pytest_meshconform, listed once: type checkers and editors read this
# stub, and `__init__.py` loads each name from here on first use. The README documents each.

from pytest_meshconform.audit.discovery import ServicePort as ServicePort
from pytest_meshconform.evidence.certs import (
    CertError as CertError,
    WorkloadCert as WorkloadCert,
    load_pem_chain as load_pem_chain,
)
from pytest_meshconform.evidence.curl import HttpResult as HttpResult
from pytest_meshconform.evidence.grpc_call import GrpcResult as GrpcResult
from pytest_meshconform.evidence.tcp_connect import TcpResult as TcpResult
from pytest_meshconform.evidence.wire import Flow as Flow
from pytest_meshconform.evidence.xfcc import XfccElement as XfccElement
from pytest_meshconform.istio.api import PolicyError as PolicyError
from pytest_meshconform.istio.api.authorization_policy import (
    authorization_policy as authorization_policy,
)
from pytest_meshconform.istio.api.destination_rule import destination_rule as destination_rule
from pytest_meshconform.istio.api.peer_authentication import (
    peer_authentication as peer_authentication,
)
from pytest_meshconform.istio.sidecar_dump import inbound_tls_contexts as inbound_tls_contexts
from pytest_meshconform.mesh import (
    ExecResult as ExecResult,
    Feature as Feature,
    GrpcClientUnavailable as GrpcClientUnavailable,
    Mesh as Mesh,
    MeshError as MeshError,
    Workload as Workload,
    mesh_min_tls_version as mesh_min_tls_version,
    tunnels_over_hbone as tunnels_over_hbone,
)
from pytest_meshconform.plugin.capture import (
    Capturer as Capturer,
    CaptureResult as CaptureResult,
    EmptyCaptureError as EmptyCaptureError,
)
from pytest_meshconform.plugin.identity import CertReader as CertReader, XfccReader as XfccReader
from pytest_meshconform.plugin.options import mesh_settings_key as mesh_settings_key
from pytest_meshconform.plugin.policies import (
    PolicyApplier as PolicyApplier,
    UnmatchedPolicyError as UnmatchedPolicyError,
)
from pytest_meshconform.plugin.probes import Handshake as Handshake, TlsProber as TlsProber
from pytest_meshconform.plugin.rotation import (
    RotationResult as RotationResult,
    RotationWatcher as RotationWatcher,
)
from pytest_meshconform.plugin.service_ports import ServicePortLister as ServicePortLister
from pytest_meshconform.plugin.tables import (
    DENIED as DENIED,
    MTLS as MTLS,
    PLAINTEXT as PLAINTEXT,
    RESET as RESET,
    UNAVAILABLE as UNAVAILABLE,
    Call as Call,
    CallTable as CallTable,
    Outcome as Outcome,
)
from pytest_meshconform.plugin.workloads import (
    ServicePortError as ServicePortError,
    WorkloadHandle as WorkloadHandle,
    WorkloadLookup as WorkloadLookup,
)
from pytest_meshconform.report.observations import (
    ObservedTable as ObservedTable,
    TableRecorder as TableRecorder,
)
from pytest_meshconform.waiting import WaitTimeout as WaitTimeout, poll as poll

__version__: str
__all__: list[str]
