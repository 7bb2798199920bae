"""The Mesh protocol: what every backend (local, kind, existing) provides to the fixtures.

Backends produce raw evidence (pcap bytes, Envoy admin JSON, process output); the pure modules
(`wire`, `certs`, `xfcc`, `policy`) turn it into facts. Nothing here imports a backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Literal, Protocol, runtime_checkable


class Feature(StrEnum):
    """What a test may need of a mesh: `@pytest.mark.mesh_features("mtls", "capture")`.

    A marker naming anything else is a usage error at collection, so a typo cannot skip a suite.
    """

    MTLS = "mtls"  # sidecars speak Istio mTLS to each other
    PEER_AUTHENTICATION = "peer-authentication"  # PeerAuthentication is applied and enforced
    PORT_LEVEL_MTLS = "port-level-mtls"  # PeerAuthentication portLevelMtls
    DESTINATION_RULE = "destination-rule"  # DestinationRule trafficPolicy.tls on the client
    XFCC = "xfcc"  # the server sidecar forwards X-Forwarded-Client-Cert
    CAPTURE = "capture"  # pcap of a pod's traffic (`capture` fixture)
    CERTIFICATES = "certificates"  # the sidecar's served certificate (`cert_of`)
    ROTATION = "rotation"  # certificates rotate while the run watches (`rotation`)
    MESH_WIDE = "mesh-wide"  # policies in the root namespace may be applied
    AUTHORIZATION = "authorization"  # AuthorizationPolicy ALLOW/DENY is applied and enforced
    # a waypoint serves the Services of an ambient namespace (targetRefs policies, L7 rules)
    WAYPOINT = "waypoint"
    # gRPC calls (`WorkloadHandle.grpc`) to a gRPC Service port whose pod serves grpc-echo
    GRPC = "grpc"


ALL_FEATURES: Final[frozenset[Feature]] = frozenset(Feature)


class MeshError(RuntimeError):
    """A backend could not do what was asked (bring-up, exec, apply, capture...)."""


class PropagationTimeout(MeshError):
    """A policy change did not reach every affected proxy before the deadline."""


@dataclass(frozen=True, slots=True)
class Workload:
    """A pod of the conformance topology, addressed the way Kubernetes does."""

    name: str
    namespace: str
    app: str
    service_account: str
    has_sidecar: bool
    labels: Mapping[str, str] = field(default_factory=dict)
    container_ports: tuple[int, ...] = ()
    # enrolled in ambient mode (istio-cni captures its traffic to ztunnel); never with a sidecar
    ambient: bool = False
    # the pod's annotations (those the local mesh reads: istio.interception's)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """`name.namespace`, the way Istio names a workload in its tests."""
        return f"{self.name}.{self.namespace}"

    @property
    def dataplane(self) -> Literal["sidecar", "ambient", "none"]:
        """The pod's data plane: an Envoy sidecar, ambient (ztunnel), or none."""
        if self.has_sidecar:
            return "sidecar"
        return "ambient" if self.ambient else "none"

    def spiffe_id(self, trust_domain: str) -> str:
        return f"spiffe://{trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.key


DEFAULT_DNS_DOMAIN: Final = "cluster.local"  # the kubelet's --cluster-domain default


@dataclass(frozen=True, slots=True)
class Service:
    """One port of a Kubernetes Service (port -> targetPort); a Service with several ports is
    one `Service` per port, same name and namespace.

    ``port_name`` and ``app_protocol`` are the port's ``name`` and ``appProtocol``, from which
    Istio selects the protocol (`pytest_meshconform.istio.protocol_of`); the default is a
    port named ``http``, as the built-in `httpbin` Service's.
    """

    name: str
    namespace: str
    port: int
    target_port: int
    selector_app: str  # the Service's `app` selector: its endpoints (istio.plan.endpoints_of)
    port_name: str = "http"
    app_protocol: str | None = None
    # the Service's full selector as (label, value) pairs, when it selects by more than `app`
    # (a cluster's own Services); empty: the `app` selector alone
    selector: tuple[tuple[str, str], ...] = ()
    # the cluster's DNS domain (the kubelet's clusterDomain): Kubernetes' default unless the
    # backend read another one
    domain: str = DEFAULT_DNS_DOMAIN
    # `clusterIP: None`: no VIP, the name resolves to the endpoints' pod IPs, and a client
    # sidecar reaches them through an ORIGINAL_DST cluster (docs/istio-model.md, "Headless
    # Services"); its port is the container port
    headless: bool = False

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.namespace}.svc.{self.domain}"

    @property
    def key(self) -> str:
        """`name.namespace:port`, how the audit names a Service port."""
        return f"{self.name}.{self.namespace}:{self.port}"


@dataclass(frozen=True, slots=True)
class Waypoint:
    """A waypoint proxy: a Gateway of class ``istio-waypoint`` (as ``istioctl waypoint apply``
    writes it) and the pods that run it, under the service account of the Gateway's name.
    ``traffic_type`` is its ``istio.io/waypoint-for`` (``service`` unless labelled). What it
    means for traffic and policies is `pytest_meshconform.istio.waypoint`."""

    name: str
    namespace: str
    traffic_type: str = "service"
    # its HBONE listener's ``allowedRoutes.namespaces``: ``from`` (``Same`` unless given:
    # Gateway API's default, which istioctl's Gateway keeps) and, for ``Selector``, the
    # ``matchLabels`` a namespace must carry to use the waypoint from another namespace
    allowed_routes: str = "Same"
    allowed_route_labels: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        """``namespace/name``, as istiod names a waypoint (``ResourceName``)."""
        return f"{self.namespace}/{self.name}"

    @property
    def service_account(self) -> str:
        """The waypoint deployment's service account: the Gateway's name (the waypoint
        GatewayClass sets ``DisableNameSuffix``)."""
        return self.name

    def spiffe_id(self, trust_domain: str) -> str:
        return f"spiffe://{trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


@runtime_checkable
class WaypointAware(Protocol):
    """A backend that knows its waypoints (the local mesh); kept apart from `Mesh`: a backend
    without it has none, and a policy bound by ``targetRefs`` binds to nothing there."""

    def waypoints(self) -> Sequence[Waypoint]:
        """Every waypoint of the mesh."""
        ...

    def service_waypoint(self, service: Service) -> Waypoint | None:
        """The waypoint the Service's traffic goes through (`istio.waypoint.service_waypoint`
        with the Service's and its namespace's labels), or None."""
        ...


def waypoints_of(mesh: Mesh) -> Sequence[Waypoint]:
    """The mesh's waypoints (none for a backend that does not say)."""
    return mesh.waypoints() if isinstance(mesh, WaypointAware) else ()


@runtime_checkable
class WaypointAbsence(Protocol):
    """A backend whose run may go without the waypoints it would have (a cluster without the
    Gateway API), and says why."""

    @property
    def waypoint_absence(self) -> str | None:
        """Why the run has none of its waypoints, with the fix; None when it has them."""
        ...


def waypoint_absence_of(mesh: Mesh) -> str | None:
    """Why the mesh's run has no waypoint, with the fix (None: it has them, or cannot say)."""
    return mesh.waypoint_absence if isinstance(mesh, WaypointAbsence) else None


@dataclass(frozen=True, slots=True)
class ExecResult:
    returncode: int
    stdout: bytes
    stderr: bytes


@dataclass(slots=True)
class PcapRecording:
    """Filled when the `capture` block ends: the raw pcap and where it was kept."""

    workload: Workload
    port: int | None
    pcap: bytes = b""
    path: Path | None = None
    tool_stderr: str = ""


@dataclass(frozen=True, slots=True)
class LogPositions:
    """Where the logs stood at one moment: `offsets` per workload key and log name (backends
    with log files), and the wall-clock time (backends that ask for logs since a time)."""

    at: float  # time.time() when taken
    offsets: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


@runtime_checkable
class Mesh(Protocol):
    """What a backend implements. All methods are synchronous and raise `MeshError`.

    The fixtures use nothing else: every member they need is declared here.
    """

    @property
    def backend(self) -> str: ...  # "local", "kind" or "existing"

    @property
    def name(self) -> str: ...  # the mesh's name in reports ("meshconform-local", "kind"...)

    @property
    def istio_version(self) -> str:
        """The Istio release the mesh is (or reproduces): what `mesh_min_version` compares."""
        ...

    @property
    def revision(self) -> str | None: ...  # the Istio revision under test, None for default

    @property
    def features(self) -> Set[str]:
        """The `Feature` values this mesh can serve in this run."""
        ...

    @property
    def trust_domain(self) -> str: ...

    @property
    def root_cert(self) -> str: ...  # PEM of the mesh's root CA

    @property
    def version(self) -> str: ...  # mesh version string for reports

    @property
    def root_namespace(self) -> str: ...

    def workloads(self) -> Sequence[Workload]: ...

    def workload(self, name: str, namespace: str) -> Workload: ...

    def services(self) -> Sequence[Service]: ...

    def logical_namespace(self, namespace: str) -> str:
        """The namespace as suites spell it (`foo`) for a backend's real name of it (a kube run
        uses `mc-<run>-foo`); any other namespace unchanged."""
        ...

    def pod_ip(self, workload: Workload) -> str: ...

    def exec(self, workload: Workload, argv: Sequence[str], timeout: float = 30.0) -> ExecResult:
        """Run argv inside the workload's pod (network namespace), as the app's user."""
        ...

    def apply(self, manifest: Mapping[str, Any]) -> None:
        """Create or replace an Istio policy object and wait until the proxies have it."""
        ...

    def delete(self, manifest: Mapping[str, Any]) -> None:
        """Delete an Istio policy object and wait until the proxies have dropped it."""
        ...

    def policies(self) -> Sequence[Mapping[str, Any]]:
        """The policy manifests currently in force (so fixtures can restore them)."""
        ...

    def capture(
        self, workload: Workload, port: int | None = None
    ) -> AbstractContextManager[PcapRecording]:
        """Record the workload's wire traffic (not loopback) for the duration of the block."""
        ...

    def envoy_admin(self, workload: Workload, path: str) -> bytes:
        """GET an Envoy admin path on the workload's sidecar."""
        ...

    def logs(self, workload: Workload) -> Mapping[str, str]:
        """The workload's logs so far (sidecar, app), by name, for failure reports."""
        ...

    def log_positions(self) -> LogPositions:
        """Where every workload's logs end now (cheap: called as each test starts), so that
        `logs_since` can return only what a test's own time window wrote."""
        ...

    def logs_since(self, workload: Workload, positions: LogPositions) -> Mapping[str, str]:
        """The workload's log lines written after `positions` (from `log_positions`), by name."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class HboneAware(Protocol):
    """A backend whose sidecars may tunnel mesh traffic over HBONE (Istio's ambient-profile
    istiod sends it to pods labelled ``networking.istio.io/tunnel: http``). Kept apart from
    `Mesh` so backends that never tunnel (the local mesh) need nothing."""

    def hbone_tunnel(self, client: Workload, server: Workload) -> bool:
        """Whether ``client``'s sidecar reaches ``server`` over HBONE (mTLS to 15008)."""
        ...


def tunnels_over_hbone(mesh: Mesh, client: Workload, server: Workload) -> bool:
    """What the wire suites ask before asserting ALPN/SNI/port: HBONE traffic has Istio's
    HBONE shape (TLS to port 15008, ALPN h2), not the sidecar-to-sidecar mTLS one. Always
    towards an ambient pod from a mesh client (ztunnel, or a sidecar: istiod sends sidecars
    HBONE to ambient pods, `istio.interop.sidecar_sends_hbone`); otherwise, from a sidecar, as
    the backend says (a sidecar server labelled for HBONE)."""
    if server.dataplane == "ambient" and client.dataplane in ("ambient", "sidecar"):
        return True
    return isinstance(mesh, HboneAware) and mesh.hbone_tunnel(client, server)


@runtime_checkable
class ZtunnelCertificates(Protocol):
    """A backend that reads an ambient workload's certificate from ztunnel's own dump (the kube
    backend: ztunnel is not Envoy, its ``/config_dump`` lists ``certificates``). Kept apart from
    `Mesh`: the local mesh's ztunnel is an Envoy whose ``/config_dump`` carries the secret."""

    def ztunnel_certificate_pem(self, workload: Workload) -> str:
        """The chain (PEM, leaf first) the ztunnel of the workload's node holds for its
        identity; a `MeshError` naming the state when it holds none available."""
        ...


class SidecarDied(MeshError):
    """A process of the mesh itself (a sidecar's Envoy, an app) exited, was stopped or stopped
    answering: the run's infrastructure broke, so what a test saw since is no evidence about the
    mesh's behaviour. Such a test ends as an error (not a failure) naming the process and its
    exit status, marked `infrastructure` in reports; `meshconform diff` keeps it apart from
    conformance regressions."""

    def __init__(
        self,
        workload: str,
        process: str,
        pid: int | None,
        what: str,
        *,
        exit_status: int | None = None,
        detail: str = "",
        at: datetime | None = None,
    ) -> None:
        self.workload = workload  # "httpbin.foo"
        self.process = process  # "Envoy", "app"
        self.pid = pid
        self.what = what  # "was killed by SIGKILL (exit status -9)", "is stopped (SIGSTOP)"...
        self.exit_status = exit_status  # as Popen reports it (-N: killed by signal N)
        self.detail = detail  # the end of its log
        self.at = at or datetime.now(UTC)
        when = self.at.strftime("%Y-%m-%dT%H:%M:%SZ")
        pid_text = f"pid {pid}, " if pid is not None else ""
        super().__init__(
            f"{process} of {workload} {what}: {pid_text}at {when}; {detail or 'no log'}"
        )

    def again(self) -> SidecarDied:
        """The same failure as a fresh exception (each test raises its own)."""
        return SidecarDied(
            self.workload,
            self.process,
            self.pid,
            self.what,
            exit_status=self.exit_status,
            detail=self.detail,
            at=self.at,
        )


class GrpcClientUnavailable(MeshError):
    """This backend cannot run a gRPC client in the client's pod (the kube backend's client
    runs ``curlimages/curl``, which has no gRPC client): a gRPC call there proves nothing, so
    it is this error, never a fallback to another client. The message names the backend."""


@runtime_checkable
class GrpcCapable(Protocol):
    """A backend that runs meshconform's gRPC client inside a pod (the local mesh). Kept apart
    from `Mesh`: a backend without it raises `GrpcClientUnavailable` for a gRPC call."""

    def grpc_exec(
        self, workload: Workload, args: Sequence[str], timeout: float = 30.0
    ) -> ExecResult:
        """Run the gRPC client with ``args`` (`evidence.grpc_call.grpc_client_args`) inside
        the workload's pod (network namespace), as `exec` runs curl."""
        ...


@runtime_checkable
class HealthAware(Protocol):
    """A backend that watches its own processes (the local mesh); kept apart from `Mesh`."""

    def health_problems(self) -> Sequence[SidecarDied]:
        """Each process of the mesh that died, was stopped or stopped answering (first seen
        first); empty while the mesh is healthy or not running."""
        ...


def health_problems(mesh: Mesh) -> Sequence[SidecarDied]:
    """What broke in the mesh's own processes so far (nothing for a backend that cannot tell)."""
    return mesh.health_problems() if isinstance(mesh, HealthAware) else ()


@runtime_checkable
class MeshMtlsAware(Protocol):
    """A backend that knows its mesh's ``meshConfig.meshMTLS`` (the local mesh: its
    ``--mesh-min-tls-version``; Kubernetes: istiod's mesh ConfigMap). Kept apart from `Mesh`
    so that a backend without it still satisfies the protocol."""

    @property
    def min_tls_version(self) -> str:
        """``meshMTLS.minProtocolVersion``: ``TLS_AUTO``, ``TLSV1_2`` or ``TLSV1_3``."""
        ...


def mesh_min_tls_version(mesh: Mesh) -> str:
    """The ``meshMTLS.minProtocolVersion`` in force: the backend's, or ``TLS_AUTO`` (Istio's
    default, TLS 1.2) for a backend that does not say."""
    return mesh.min_tls_version if isinstance(mesh, MeshMtlsAware) else "TLS_AUTO"


class MeshWideNotAllowed(MeshError):
    """A policy targets Istio's root namespace while mesh-wide changes are not allowed.

    Fixtures turn it into a skip: the message is the reason (it names the flag to pass).
    """


class MeshUnavailable(MeshError):
    """The chosen backend cannot run here (no Docker, no kind, no root...); names the fix."""


@dataclass(frozen=True, slots=True)
class MeshInfo:
    """What a report says about the mesh under test."""

    backend: str
    name: str
    version: str
    trust_domain: str
    revision: str | None = None
    # each workload's data plane and container ports: (name, namespace as the suites spell
    # it, "sidecar" | "ambient" | "none", ports); with --mesh-dataplane=both, the workloads of
    # both meshes (`merged`)
    workloads: tuple[tuple[str, str, str, tuple[int, ...]], ...] = ()

    @classmethod
    def of(cls, mesh: Mesh) -> MeshInfo:
        workloads = tuple(
            (w.name, mesh.logical_namespace(w.namespace), w.dataplane, tuple(w.container_ports))
            for w in mesh.workloads()
        )
        return cls(
            mesh.backend, mesh.name, mesh.version, mesh.trust_domain, mesh.revision, workloads
        )

    def merged(self, later: MeshInfo) -> MeshInfo:
        """This mesh's record with the workloads of a later mesh of the same run (another data
        plane) added; the later mesh's other facts win."""
        return replace(later, workloads=tuple(dict.fromkeys((*self.workloads, *later.workloads))))
