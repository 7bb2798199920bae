"""Every Service port of the mesh and what Istio's policies in force predict for it (pure).

`discover_service_ports` lists one `ServicePort` per Service port and endpoint: the mode the
endpoint's sidecar enforces on the target port (the Istio model's `effective_mtls_mode`, or
"no sidecar"), and the outbound cluster a client sidecar uses towards it (`plan_sidecar`: TLS
or not, SNI, ALPN). Together they say what the audit's two probes must observe (`expected`).
Apart from the mode, the endpoint sidecar's authorization (`authorization_for`, evaluated as
Envoy does by `rbac_verdict`) says whether each probe that gets through is allowed or denied
(`authz_plaintext`, `authz_mesh`). An ambient Service that uses a waypoint carries it and the
AuthorizationPolicies bound to it for that Service (`istio.waypoint.waypoint_policies`); the
ambient probe's request goes through it, so the waypoint's verdict on that probe
(`istio.waypoint.waypoint_verdict`: `WaypointProbe`) comes before the endpoint's mode, and
the endpoint's ztunnel judges the waypoint's identity, not the probe's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pytest_meshconform.audit.probes import AUDIT_NAMESPACE, probe_workloads
from pytest_meshconform.istio.ambient import ambient_mtls_mode, ztunnel_policies
from pytest_meshconform.istio.api import (
    AuthorizationPolicy,
    PeerAuthentication,
    Policy,
    parse_policies,
)
from pytest_meshconform.istio.authorization import Authorization, authorization_for
from pytest_meshconform.istio.interception import InterceptionError, sidecar_interception
from pytest_meshconform.istio.peer_authentication import effective_mtls_mode
from pytest_meshconform.istio.plan import endpoints_of, plan_sidecar
from pytest_meshconform.istio.protocol import PortProtocol, protocol_of
from pytest_meshconform.istio.rbac import RbacRequest, rbac_verdict
from pytest_meshconform.istio.upstream import Upstream
from pytest_meshconform.istio.waypoint import waypoint_policies, waypoint_verdict
from pytest_meshconform.istio.ztunnel import Connection, ztunnel_admits
from pytest_meshconform.mesh import Mesh, Service, Waypoint, WaypointAware, Workload

__all__ = [
    "Authz",
    "Observed",
    "Predicted",
    "ServicePort",
    "WaypointProbe",
    "discover_service_ports",
    "probe_request",
]

# EXCLUDED: the endpoint has a sidecar, but istio-iptables leaves the target port out of
# capture (`istio.interception`): plaintext reaches the app, and a client sidecar's auto mTLS
# reaches an app that cannot read it
Predicted = Literal["STRICT", "PERMISSIVE", "DISABLE", "NO_SIDECAR", "EXCLUDED"]
Observed = Literal["STRICT", "PERMISSIVE", "PLAINTEXT", "CLOSED", "INCONCLUSIVE"]
# What authorization does to one probe: `allowed`, `denied` (HTTP 403 "RBAC: access denied",
# or on TCP the connection closed without a byte), `not reached` (the mode refused the
# connection before authorization), `unknown` (a rule on an attribute the audit cannot know)
Authz = Literal["allowed", "denied", "not reached", "unknown"]


@dataclass(frozen=True, slots=True)
class WaypointProbe:
    """What the waypoint in front of an ambient endpoint does to the audit's mesh probe (the
    ambient probe's Service traffic goes through it; the plaintext probe's goes straight to
    the pod): Envoy's verdict under the policies bound to it (`waypoint_verdict`) on the
    probe's identity, and the policies (``namespace/name``) that deny it or leave it unknown."""

    waypoint: str  # namespace/name
    identity: str  # the waypoint's own SPIFFE ID (what the endpoint's ztunnel sees)
    principal: str  # the ambient probe's SPIFFE ID, as the waypoint sees it
    verdict: Authz  # allowed, denied or unknown
    policies: tuple[str, ...] = ()


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
    authorization: Authorization | None = None  # the endpoint sidecar's; None: no sidecar
    authz_plaintext: Authz = "allowed"  # what authorization does to the plaintext probe
    authz_mesh: Authz = "allowed"  # ... and to the mesh probe
    bypass: str | None = None  # why the target port is not intercepted (predicted EXCLUDED)
    # a headless Service's endpoint that mesh clients cannot reach under auto mTLS, and why
    headless_break: str | None = None
    # an ambient endpoint: ztunnel's verdicts (the model's `ztunnel_admits`) on the plaintext
    # probe and on the ambient probe's HBONE tunnel; None: a sidecar or no data plane
    ztunnel_admits: tuple[bool, bool] | None = None
    # the waypoint (``namespace/name``) an ambient client's ztunnel sends this Service's
    # traffic through (`istio.waypoint.service_waypoint`), None without one: behind it the
    # endpoint's ztunnel sees the waypoint's identity, not the client's
    waypoint: str | None = None
    # the AuthorizationPolicies bound to that waypoint for this Service, in istiod's order
    # (`istio.waypoint.waypoint_policies`)
    waypoint_policies: tuple[AuthorizationPolicy, ...] = ()
    # the waypoint's verdict on the mesh probe (None: the mesh probe does not cross one)
    waypoint_probe: WaypointProbe | None = None

    @property
    def hbone(self) -> bool:
        """The mesh probe is the ambient probe's request, tunnelled by ztunnel over HBONE."""
        return self.ztunnel_admits is not None

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
        """The endpoint has a data plane: a sidecar, or ambient (ztunnel)."""
        return self.endpoint.dataplane != "none"

    @property
    def client_sends_mtls(self) -> bool:
        """Whether the client (the probe) originates TLS towards the endpoint: what its
        sidecar's cluster does for this endpoint (auto mTLS included); an ambient probe's
        ztunnel always does (HBONE)."""
        if self.hbone:
            return True
        return self.upstream is not None and self.upstream.towards(self.endpoint.key).originates_tls

    @property
    def accepts_plaintext(self) -> bool:
        """The endpoint takes plaintext (PERMISSIVE, DISABLE, or no sidecar; on an ambient
        endpoint, ztunnel's verdict)."""
        if self.ztunnel_admits is not None:
            return self.ztunnel_admits[0]
        return self.predicted in ("PERMISSIVE", "DISABLE", "NO_SIDECAR", "EXCLUDED")

    @property
    def mesh_mtls(self) -> bool:
        """The mesh probe's request arrives as mTLS the endpoint's data plane terminates."""
        if self.ztunnel_admits is not None:
            return self.ztunnel_admits[1]
        return self.client_sends_mtls and self.predicted in ("STRICT", "PERMISSIVE")

    @property
    def mesh_admitted(self) -> bool:
        """The mesh probe's connection gets past the endpoint's mode (mTLS taken, or
        plaintext sent to an endpoint that takes it)."""
        return self.mesh_mtls or (not self.client_sends_mtls and self.accepts_plaintext)

    @property
    def expected(self) -> Observed:
        """What the two probes must observe of the mode if Istio does what its policies say
        (whatever authorization then does with a request that got through)."""
        if self.mesh_mtls:
            return "PERMISSIVE" if self.accepts_plaintext else "STRICT"
        return "PLAINTEXT" if self.accepts_plaintext else "CLOSED"

    @property
    def expected_authz(self) -> str:
        """Both probes' expected authorization in a table cell: ``mesh allowed, plaintext
        denied``."""
        return f"mesh {self.authz_mesh}, plaintext {self.authz_plaintext}"


def probe_request(
    service: Service, host: str, protocol: PortProtocol, principal: str | None, sni: str = ""
) -> RbacRequest:
    """What the endpoint sidecar's RBAC filter sees of a probe: on an HTTP port curl's ``GET
    /`` with ``Host: <host>:<port>`` (other headers unknown), on a TCP port the connection;
    ``principal`` the probe's SPIFFE ID over mTLS, None for plaintext. The probe's address is
    not known (a rule on ``ipBlocks`` gives ``unknown``)."""
    headers = None
    if protocol.is_http:
        headers = {":authority": f"{host}:{service.port}", ":method": "GET", ":path": "/"}
    return RbacRequest(port=service.target_port, principal=principal, sni=sni, headers=headers)


def _authz(authorization: Authorization | None, admitted: bool, request: RbacRequest) -> Authz:
    if not admitted:
        return "not reached"
    if authorization is None:
        return "allowed"  # no sidecar: nothing enforces an AuthorizationPolicy
    return rbac_verdict(authorization, request)


def _bypass(endpoint: Workload, target_port: int) -> str | None:
    """Why istio-iptables leaves the endpoint's target port out of capture (None: captured,
    or no sidecar; annotations Istio's injector would refuse leave the default capture)."""
    if not endpoint.has_sidecar:
        return None
    try:
        return sidecar_interception(endpoint.annotations).inbound_bypass(target_port)
    except InterceptionError:
        return None


def _headless_break(port: ServicePort, endpoints: Sequence[Workload]) -> str | None:
    """Why mesh clients of a headless Service cannot reach ``port``'s endpoint under auto mTLS
    (None: they can, or it is not headless, or a DestinationRule chose the TLS): auto mTLS
    towards a headless Service makes one choice for all its endpoints
    (`istio.upstream`'s ``_headless_auto_mtls``), whatever each endpoint's own mode."""
    up = port.upstream
    if not port.service.headless or up is None or not up.auto or not port.endpoint.has_sidecar:
        return None
    if port.mesh_admitted:
        return None
    if port.client_sends_mtls:
        return (
            "a client sidecar sends mTLS to every endpoint of a headless Service (its"
            " ORIGINAL_DST cluster has no per-endpoint auto mTLS), and this endpoint's port"
            f" {port.service.target_port} is {port.predicted}: mesh clients cannot reach it"
            " (istio/istio#39439); fix: a DestinationRule with tls.mode DISABLE for"
            f" {port.service.fqdn}, or no DISABLE on the port"
        )
    naked = sorted(e.key for e in endpoints if not e.has_sidecar)
    if naked:
        return (
            f"the headless Service has endpoints without sidecar ({', '.join(naked)}), so a"
            " client sidecar sends plaintext to all of them (BestEffortInferServiceMTLSMode),"
            f" and this endpoint is {port.predicted}: mesh clients are reset"
            " (istio/istio#29873); fix: inject every endpoint, or a PERMISSIVE"
            " PeerAuthentication for the port"
        )
    return None


def _ztunnel_verdicts(
    mesh: Mesh,
    policies: Sequence[Policy],
    endpoint: Workload,
    port: int,
    naked: Workload | None,
    ambient: Workload | None,
    waypoint: Waypoint | None = None,
) -> tuple[bool, bool]:
    """(plaintext admitted, HBONE admitted): ztunnel's verdicts on the naked probe's
    plaintext and on the ambient probe's HBONE tunnel to the endpoint's ``port``
    (`ztunnel_admits` over `ztunnel_policies`: STRICT's derived deny and the L4
    AuthorizationPolicies); no ambient probe: no HBONE. Behind a ``waypoint`` the tunnel that
    reaches the endpoint is the waypoint's, with its identity (its address is not known: a rule
    on source addresses matches nothing)."""
    enforced = ztunnel_policies(policies, endpoint.namespace, endpoint.labels, mesh.root_namespace)
    naked = naked or probe_workloads()[1]
    server_ip = mesh.pod_ip(endpoint)
    plaintext = ztunnel_admits(enforced, Connection(port, None, mesh.pod_ip(naked), server_ip))
    hbone = False
    if ambient is not None and waypoint is not None:
        peer = waypoint.spiffe_id(mesh.trust_domain)
        hbone = ztunnel_admits(enforced, Connection(port, peer, "", server_ip))
    elif ambient is not None:
        peer = ambient.spiffe_id(mesh.trust_domain)
        hbone = ztunnel_admits(enforced, Connection(port, peer, mesh.pod_ip(ambient), server_ip))
    return plaintext, hbone


def _waypoint_probe(
    mesh: Mesh,
    waypoint: Waypoint,
    service: Service,
    protocol: PortProtocol,
    policies: Sequence[Policy],
    ambient: Workload,
) -> WaypointProbe:
    """The waypoint's verdict on the ambient probe's request to the Service port: curl's ``GET
    /`` (other headers unknown) or the TCP connection, its identity from the HBONE tunnel, on
    the Service port (the CONNECT authority)."""
    principal = ambient.spiffe_id(mesh.trust_domain)
    headers = None
    if protocol.is_http:
        host = f"{service.name}.{service.namespace}:{service.port}"
        headers = {":authority": host, ":method": "GET", ":path": "/"}
    request = RbacRequest(port=service.port, principal=principal, headers=headers)
    verdict, deciding = waypoint_verdict(
        waypoint,
        service,
        policies,
        request,
        root_namespace=mesh.root_namespace,
        trust_domain=mesh.trust_domain,
    )
    return WaypointProbe(
        waypoint=waypoint.key,
        identity=waypoint.spiffe_id(mesh.trust_domain),
        principal=principal,
        verdict=verdict,
        policies=tuple(f"{p.namespace or 'default'}/{p.name}" for p in deciding),
    )


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
    ambient_client: Workload | None = None,
    naked_client: Workload | None = None,
) -> tuple[ServicePort, ...]:
    """Every Service port of the mesh (one per endpoint), with its predicted mode.

    ``policies`` default to the mesh's own (``mesh.policies()``). ``namespaces`` (as the suites
    spell them) limits the ports to those namespaces, ``exclude_namespaces`` drops some; the
    audit's own namespace is never included. ``client``: the workload whose sidecar's
    outbound plan (``upstream``) is attached to each port; by default the audit's probe (a
    sidecar client in AUDIT_NAMESPACE). An ambient endpoint is predicted from ztunnel's
    verdicts (`ztunnel_admits` over `ztunnel_policies`) on the plaintext of ``naked_client``
    (default: the mesh's first workload without a data plane, else the audit's naked probe)
    and on the HBONE of ``ambient_client`` (the audit's ambient probe), by their pod addresses.
    """
    parsed = _parse(mesh.policies() if policies is None else policies)
    peer_auths = [p for p in parsed if isinstance(p, PeerAuthentication)]
    workloads = tuple(mesh.workloads())
    services = tuple(mesh.services())
    if naked_client is None:  # a suite's mesh runs no audit probe: one of its own plaintext pods
        naked_client = next((w for w in workloads if not w.has_sidecar and not w.ambient), None)
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
        endpoints = endpoints_of(service, workloads)
        waypoint = mesh.service_waypoint(service) if isinstance(mesh, WaypointAware) else None
        bound: tuple[AuthorizationPolicy, ...] = ()
        if waypoint is not None:
            bound = waypoint_policies(waypoint, service, parsed, mesh.root_namespace)
        for endpoint in endpoints:
            predicted: Predicted = "NO_SIDECAR"
            authorization = None
            admits: tuple[bool, bool] | None = None
            bypass = _bypass(endpoint, service.target_port)
            if bypass is not None:
                predicted = "EXCLUDED"  # no sidecar sees it: neither mode nor authorization
            elif endpoint.ambient:
                predicted = ambient_mtls_mode(  # type: ignore[assignment]  # STRICT/PERMISSIVE
                    peer_auths,
                    endpoint.namespace,
                    endpoint.labels,
                    service.target_port,
                    mesh.root_namespace,
                ).value
                admits = _ztunnel_verdicts(
                    mesh,
                    parsed,
                    endpoint,
                    service.target_port,
                    naked_client,
                    ambient_client,
                    waypoint,
                )
            elif endpoint.has_sidecar:
                authorization = authorization_for(
                    endpoint,
                    parsed,
                    root_namespace=mesh.root_namespace,
                    trust_domain=mesh.trust_domain,
                )
                mode = effective_mtls_mode(
                    peer_auths,
                    endpoint.namespace,
                    endpoint.labels,
                    service.target_port,
                    mesh.root_namespace,
                )
                predicted = mode.value  # type: ignore[assignment]  # STRICT/PERMISSIVE/DISABLE
            port = ServicePort(
                service=service,
                namespace=logical,
                endpoint=endpoint,
                protocol=protocol_of(service),
                predicted=predicted,
                upstream=None if plan is None else plan.outbound[(service.fqdn, service.port)],
                authorization=authorization,
                bypass=bypass,
                ztunnel_admits=admits,
                waypoint=None if waypoint is None else waypoint.key,
                waypoint_policies=bound,
            )
            if waypoint is not None and port.hbone and ambient_client is not None:
                port = replace(
                    port,
                    waypoint_probe=_waypoint_probe(
                        mesh, waypoint, service, port.protocol, parsed, ambient_client
                    ),
                )
            host = port.host
            plaintext = probe_request(service, host, port.protocol, None)
            mesh_request = plaintext
            if port.mesh_mtls and port.upstream is not None:
                mesh_request = probe_request(
                    service,
                    host,
                    port.protocol,
                    client.spiffe_id(mesh.trust_domain),
                    port.upstream.towards(endpoint.key).sni or "",
                )
            authz_mesh = _authz(authorization, port.mesh_admitted, mesh_request)
            if port.waypoint_probe is not None and port.waypoint_probe.verdict != "allowed":
                authz_mesh = port.waypoint_probe.verdict  # the waypoint decides first
            result.append(
                replace(
                    port,
                    authz_plaintext=_authz(authorization, port.accepts_plaintext, plaintext),
                    authz_mesh=authz_mesh,
                    headless_break=_headless_break(port, endpoints),
                )
            )
    return tuple(result)
