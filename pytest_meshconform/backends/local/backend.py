"""The local mesh: pods as network namespaces, real Envoy sidecars, iptables interception, our CA.

`LocalMesh` is the `local` backend of the Mesh protocol, built from rooms: `lifecycle.py` (the
run, its processes: start, exec, close), `propagation.py` (policies pushed to the sidecars and
awaited), `capture.py` (tcpdump in a pod), `logs.py` (the pods' logs), `agent.py` (certificate
rotation and sidecar health). This module holds the mesh's state and its identity.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence

from pytest_meshconform.backends.local import host
from pytest_meshconform.backends.local.capture import LocalCapture
from pytest_meshconform.backends.local.control import Faults
from pytest_meshconform.backends.local.envoyadmin import admin_get
from pytest_meshconform.backends.local.grpc_client import GrpcClients
from pytest_meshconform.backends.local.logs import LocalLogs
from pytest_meshconform.backends.local.propagation import LocalPropagation
from pytest_meshconform.backends.local.topology import ROOT_NAMESPACE, TRUST_DOMAIN, Topology
from pytest_meshconform.backends.local.topology_file import default_topology
from pytest_meshconform.backends.registry import Progress
from pytest_meshconform.istio.protocol import PortProtocol, protocol_of
from pytest_meshconform.istio.tls import MinProtocolVersion, parse_min_protocol_version
from pytest_meshconform.mesh import (
    ALL_FEATURES,
    Feature,
    MeshError,
    Service,
    Waypoint,
    Workload,
)
from pytest_meshconform.version import __version__

__all__ = ["LocalMesh"]


class LocalMesh(LocalCapture, LocalLogs, LocalPropagation):
    """The `local` backend of the Mesh protocol."""

    backend = "local"
    name = "meshconform-local"
    trust_domain = TRUST_DOMAIN
    root_namespace = ROOT_NAMESPACE
    # The Istio release whose documented behaviour this mesh reproduces; `mesh_min_version`
    # markers compare against it (reports show `version`, which names the local mesh itself).
    istio_version = "1.24.0"
    revision: str | None = None  # one control plane, no Istio revisions

    def __init__(
        self,
        cert_ttl: dt.timedelta = dt.timedelta(hours=24),
        *,
        faults: Faults | None = None,
        keep: bool = False,
        progress: Progress | None = None,
        topology: Topology | None = None,
        min_tls_version: MinProtocolVersion = "TLS_AUTO",
    ) -> None:
        if cert_ttl <= dt.timedelta(0):
            raise ValueError(f"cert_ttl must be positive, got {cert_ttl}")
        self.cert_ttl = cert_ttl
        # meshConfig.meshMTLS.minProtocolVersion of this mesh (MeshMtlsAware)
        self.min_tls_version = parse_min_protocol_version(min_tls_version)
        self.faults = faults or Faults()
        self.keep = keep
        self.topology = topology or default_topology()
        self._progress = progress or (lambda message: None)
        self._policies = {}
        self._manifests = {}
        self._pods = {}
        self._state = None
        self._ca = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._agent = None
        self._envoy_path = None
        self._launcher = None
        self._launcher_output = b""
        self._spawner = None
        self._env = host.pod_environment()
        self._signals_owned = False
        self._health_lock = threading.Lock()
        self._problems = {}  # "Envoy of httpbin.foo" -> first seen
        self._watching = False
        self._watcher = None
        self._grpc_clients = GrpcClients()
        self._logs_settled_at = float("-inf")  # see _settle_logs
        self.rotations = []

    # -- Mesh protocol: identity -------------------------------------------------------------

    @property
    def features(self) -> frozenset[str]:
        """Every feature; `waypoint` only when the topology has a waypoint, `grpc` only when
        a gRPC Service port (Istio's protocol selection) reaches a pod serving grpc-echo."""
        missing = set()
        if not self.topology.waypoints:
            missing.add(Feature.WAYPOINT)
        if not any(
            protocol_of(e.service) is PortProtocol.GRPC
            and e.endpoints[0].app_on(e.service.target_port) == "grpc-echo"
            for e in self.topology.services
            if e.endpoints
        ):
            missing.add(Feature.GRPC)
        return ALL_FEATURES - missing

    @property
    def version(self) -> str:
        return f"meshconform-local/{__version__} (envoy 1.40)"

    def workloads(self) -> Sequence[Workload]:
        return tuple(p.workload for p in self.topology.pods)

    def workload(self, name: str, namespace: str) -> Workload:
        try:
            return self.topology.pod(name, namespace).workload
        except KeyError as exc:
            raise MeshError(exc.args[0]) from None

    def services(self) -> Sequence[Service]:
        return tuple(e.service for e in self.topology.services)

    # -- WaypointAware -------------------------------------------------------------------------

    def waypoints(self) -> Sequence[Waypoint]:
        return tuple(w.waypoint for w in self.topology.waypoints)

    def service_waypoint(self, service: Service) -> Waypoint | None:
        found = self.topology.service_waypoint(service)
        return found.waypoint if found is not None else None

    def pod_ip(self, workload: Workload) -> str:
        return self._pod(workload).ip

    def logical_namespace(self, namespace: str) -> str:
        """Namespaces are named as the suites spell them (`foo`)."""
        return namespace

    def envoy_admin(self, workload: Workload, path: str) -> bytes:
        """GET an admin path (e.g. `/certs`, `/config_dump`) on the workload's sidecar."""
        runtime = self._runtime(workload)
        if runtime.envoy is None:
            raise MeshError(f"{workload.key} has no sidecar")
        if not path.startswith("/"):
            raise MeshError(f"Envoy admin path must start with '/', got {path!r}")
        try:
            status, body = admin_get(runtime.paths.admin_socket, path)
        except OSError as exc:
            self._check_alive(runtime)
            raise MeshError(f"Envoy admin {path} on {workload.key}: {exc}") from exc
        if status != 200:
            raise MeshError(
                f"Envoy admin {path} on {workload.key} answered {status}: {body[:200]!r}"
            )
        return body

    # -- sidecar health (the watcher is in agent.py) -------------------------------------------

    def envoy_pid(self, workload: Workload) -> int:
        """The PID of the workload's Envoy (the process the mesh started and watches)."""
        runtime = self._runtime(workload)
        if runtime.envoy is None:
            raise MeshError(f"{workload.key} has no sidecar")
        return runtime.envoy.pid
