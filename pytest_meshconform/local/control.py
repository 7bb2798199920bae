"""The local control plane (pure): policies in force -> a plan for every sidecar.

Every Istio decision comes from :mod:`pytest_meshconform.istio` (the model the kube backend
checks real sidecars against too); this module only adds the local mesh's pods and the
test-only :class:`Faults`, applied after the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..istio import plan_mesh
from ..policy import DestinationRule, MtlsMode, PeerAuthentication
from ..settings import FAULT_NAMES
from .topology import TRUST_DOMAIN, Topology
from .xds import SidecarPlan

Policy = PeerAuthentication | DestinationRule


@dataclass(frozen=True, slots=True)
class Faults:
    """Test-only ways to break the local mesh, to prove the suites can fail (never for users)."""

    strict_as_permissive: bool = False  # render STRICT inbound chains as PERMISSIVE
    no_xfcc: bool = False  # inbound HCM does not set X-Forwarded-Client-Cert
    no_rotation: bool = False  # the agent never rotates certificates
    wrong_spiffe_id: bool = False  # workload certs name another service account

    NAMES = FAULT_NAMES

    @classmethod
    def parse(cls, names: Iterable[str]) -> Faults:
        flags = {}
        for name in names:
            if name not in cls.NAMES:
                raise ValueError(
                    f"unknown mesh fault {name!r}; known faults: {', '.join(cls.NAMES)}"
                )
            flags[name.replace("-", "_")] = True
        return cls(**flags)


def plan_sidecars(
    topology: Topology,
    policies: Iterable[Policy],
    root_namespace: str,
    faults: Faults | None = None,
) -> Mapping[str, SidecarPlan]:
    """Each sidecar's plan: the Istio model's expectations for the topology, towards each
    Service port's (single) endpoint, with the test-only faults applied on top."""
    faults = faults or Faults()
    models = plan_mesh(
        [pod.workload for pod in topology.pods],
        [entry.service for entry in topology.services],
        policies,
        root_namespace=root_namespace,
        trust_domain=TRUST_DOMAIN,
    )

    def broken(mode: MtlsMode) -> MtlsMode:
        if faults.strict_as_permissive and mode is MtlsMode.STRICT:
            return MtlsMode.PERMISSIVE
        return mode

    plans: dict[str, SidecarPlan] = {}
    for pod in topology.pods:
        model = models.get(pod.workload.key)
        if model is None:
            continue
        plans[pod.workload.key] = SidecarPlan(
            pod=pod,
            inbound_modes={port: broken(mode) for port, mode in model.inbound.items()},
            default_inbound_mode=broken(model.default_inbound),
            outbound={
                (e.service.fqdn, e.service.port): model.outbound[
                    (e.service.fqdn, e.service.port)
                ].towards(e.endpoints[0].workload.key)
                for e in topology.services
            },
            services=topology.services,
            set_xfcc=not faults.no_xfcc,
            tcp_ports=frozenset(
                port for port, protocol in model.inbound_protocols.items() if protocol.is_tcp
            ),
        )
    return plans
