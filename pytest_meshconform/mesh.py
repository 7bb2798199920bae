"""The Mesh protocol: what every backend (local, kind, existing) provides to the fixtures.

Backends produce raw evidence (pcap bytes, Envoy admin JSON, process output); the pure modules
(`wire`, `certs`, `xfcc`, `policy`) turn it into facts. Nothing here imports a backend.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


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

    @property
    def key(self) -> str:
        """`name.namespace`, the way Istio names a workload in its tests."""
        return f"{self.name}.{self.namespace}"

    def spiffe_id(self, trust_domain: str) -> str:
        return f"spiffe://{trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True, slots=True)
class Service:
    """A Kubernetes Service in front of one workload (port -> targetPort)."""

    name: str
    namespace: str
    port: int
    target_port: int
    selector_app: str

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.namespace}.svc.cluster.local"


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


@runtime_checkable
class Mesh(Protocol):
    """What a backend implements. All methods are synchronous and raise `MeshError`."""

    @property
    def backend(self) -> str: ...  # "local", "kind" or "existing"

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
    HBONE shape (TLS to port 15008, ALPN h2), not the sidecar-to-sidecar mTLS one."""
    return isinstance(mesh, HboneAware) and mesh.hbone_tunnel(client, server)


def iter_sidecar_workloads(mesh: Mesh) -> Iterator[Workload]:
    return (w for w in mesh.workloads() if w.has_sidecar)


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

    @classmethod
    def of(cls, mesh: Mesh, name: str, revision: str | None = None) -> MeshInfo:
        return cls(mesh.backend, name, mesh.version, mesh.trust_domain, revision)
