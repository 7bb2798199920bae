"""Every Service port of the mesh and what Istio's policies in force predict for it (pure).

`discover_service_ports` lists one `ServicePort` per Service port and endpoint: the mode the
endpoint's sidecar enforces on the target port (the Istio model's `effective_mtls_mode`, or
"no sidecar"), and the outbound cluster a client sidecar uses towards it (`plan_sidecar`: TLS
or not, SNI, ALPN). Together they say what the audit's two probes must observe (`expected`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pytest_meshconform.audit.probes import AUDIT_NAMESPACE, probe_workloads
from pytest_meshconform.istio.api import PeerAuthentication, Policy, parse_policies
from pytest_meshconform.istio.peer_authentication import effective_mtls_mode
from pytest_meshconform.istio.plan import endpoints_of, plan_sidecar
from pytest_meshconform.istio.protocol import PortProtocol, protocol_of
from pytest_meshconform.istio.upstream import Upstream
from pytest_meshconform.mesh import Mesh, Service, Workload

__all__ = ["Observed", "Predicted", "ServicePort", "discover_service_ports"]

Predicted = Literal["STRICT", "PERMISSIVE", "DISABLE", "NO_SIDECAR"]
Observed = Literal["STRICT", "PERMISSIVE", "PLAINTEXT", "CLOSED", "INCONCLUSIVE"]


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One Service port of the mesh and what Istio's policies in force predict for it.

    ``predicted`` is the server side: the endpoint's effective PeerAuthentication mode for the
    target port (``NO_SIDECAR`` for an endpoint outside the mesh). ``upstream`` is the cluster
    the client's sidecar uses towards it (TLS or not, SNI, ALPN: the audit's probe unless
    another client was named), None for a client without sidecar (it only sends plaintext).
    """

    service: Service
    namespace: str  # the Service's namespace as the suites spell it (`foo`)
    endpoint: Workload
    protocol: PortProtocol
    predicted: Predicted
    upstream: Upstream | None = None

    @property
    def key(self) -> str:
        """``name.namespace:port``, the namespace as the suites spell it."""
        return f"{self.service.name}.{self.namespace}:{self.service.port}"

    @property
    def host(self) -> str:
        """The Service's name as a client in another namespace resolves it (its real
        namespace: a kube run's ``mc-<run>-foo``)."""
        return f"{self.service.name}.{self.service.namespace}"

    def url(self, path: str = "/") -> str:
        """The port's URL for an HTTP request from another namespace."""
        return f"http://{self.host}:{self.service.port}{path}"

    @property
    def in_mesh(self) -> bool:
        return self.endpoint.has_sidecar

    @property
    def client_sends_mtls(self) -> bool:
        """Whether the client (the probe) originates TLS towards the endpoint: what its
        sidecar's cluster does for this endpoint (auto mTLS included)."""
        return self.upstream is not None and self.upstream.towards(self.endpoint.key).originates_tls

    @property
    def expected(self) -> Observed:
        """What the two probes must observe if Istio does what its policies say."""
        accepts_plaintext = self.predicted in ("PERMISSIVE", "DISABLE", "NO_SIDECAR")
        if self.client_sends_mtls:
            accepts_mtls = self.predicted in ("STRICT", "PERMISSIVE")
            if accepts_mtls:
                return "PERMISSIVE" if accepts_plaintext else "STRICT"
            return "PLAINTEXT" if accepts_plaintext else "CLOSED"
        return "PLAINTEXT" if accepts_plaintext else "CLOSED"


def _parse(policies: Iterable[Policy | Mapping[str, Any]]) -> list[Policy]:
    parsed: list[Policy] = []
    for item in policies:
        if isinstance(item, Mapping):
            parsed.extend(parse_policies(item))
        else:
            parsed.append(item)
    return parsed


def discover_service_ports(
    mesh: Mesh,
    policies: Iterable[Policy | Mapping[str, Any]] | None = None,
    *,
    namespaces: Sequence[str] = (),
    exclude_namespaces: Sequence[str] = (),
    client: Workload | None = None,
) -> tuple[ServicePort, ...]:
    """Every Service port of the mesh (one per endpoint), with its predicted mode.

    ``policies`` default to the mesh's own (``mesh.policies()``). ``namespaces`` (as the suites
    spell them) limits the ports to those namespaces, ``exclude_namespaces`` drops some; the
    audit's own namespace is never included. ``client``: the workload whose sidecar's
    outbound plan (``upstream``) is attached to each port; by default the audit's probe (a
    sidecar client in AUDIT_NAMESPACE).
    """
    parsed = _parse(mesh.policies() if policies is None else policies)
    peer_auths = [p for p in parsed if isinstance(p, PeerAuthentication)]
    workloads = tuple(mesh.workloads())
    services = tuple(mesh.services())
    if client is None:
        client = probe_workloads()[0]
    plan = None
    if client.has_sidecar:
        plan = plan_sidecar(
            client,
            parsed,
            workloads=workloads,
            services=services,
            root_namespace=mesh.root_namespace,
            trust_domain=mesh.trust_domain,
        )
    result: list[ServicePort] = []
    for service in services:
        logical = mesh.logical_namespace(service.namespace)
        if logical == AUDIT_NAMESPACE or logical in exclude_namespaces:
            continue
        if namespaces and logical not in namespaces:
            continue
        for endpoint in endpoints_of(service, workloads):
            predicted: Predicted = "NO_SIDECAR"
            if endpoint.has_sidecar:
                mode = effective_mtls_mode(
                    peer_auths,
                    endpoint.namespace,
                    endpoint.labels,
                    service.target_port,
                    mesh.root_namespace,
                )
                predicted = mode.value  # type: ignore[assignment]  # STRICT/PERMISSIVE/DISABLE
            result.append(
                ServicePort(
                    service=service,
                    namespace=logical,
                    endpoint=endpoint,
                    protocol=protocol_of(service),
                    predicted=predicted,
                    upstream=None if plan is None else plan.outbound[(service.fqdn, service.port)],
                )
            )
    return tuple(result)
