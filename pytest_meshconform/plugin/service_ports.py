"""The `mesh_service_ports` fixture: every Service port of the mesh, with Istio's prediction.

For suites over real services: `mesh_service_ports()` returns a `ServicePort` per Service port
and endpoint (namespace as the suites spell it, protocol, the endpoint, the mode the policies in
force predict, what the probes must observe), computed when called, so after `apply_policy` it
predicts under the new policies. Write your per-service assertions on top of it, with your own
clients (`naked_sleep.curl(port.url())`, `capture`...), as `meshconform audit` does with its
probes. Registered by the plugin next to the other fixtures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import final

import pytest

from pytest_meshconform.audit.discovery import ServicePort, discover_service_ports
from pytest_meshconform.mesh import Mesh, Workload

__all__ = ["ServicePortLister", "mesh_service_ports"]


@final
class ServicePortLister:
    """What `mesh_service_ports` returns: call it for the Service ports (a tuple of
    `ServicePort`), optionally limited to ``namespaces`` or without ``exclude_namespaces``.

    ``client``: a workload with a sidecar (or its `WorkloadHandle`) whose outbound plan is
    attached to each port (``upstream``: TLS or not, SNI, ALPN), so ``expected`` says what that
    client's requests must observe; by default the audit's probe, a sidecar client in a
    namespace of its own.
    """

    def __init__(self, mesh: Mesh) -> None:
        self._mesh = mesh

    def __call__(
        self,
        *,
        namespaces: Sequence[str] = (),
        exclude_namespaces: Sequence[str] = (),
        client: Workload | object | None = None,
    ) -> tuple[ServicePort, ...]:
        __tracebackhide__ = True
        workload = getattr(client, "workload", client)
        if workload is not None and not isinstance(workload, Workload):
            raise TypeError(f"client must be a Workload or WorkloadHandle, got {client!r}")
        ports = discover_service_ports(
            self._mesh,
            namespaces=namespaces,
            exclude_namespaces=exclude_namespaces,
            client=workload,
        )
        if not ports:
            pytest.fail(
                "no Service port in the mesh"
                + (f" in namespaces {', '.join(namespaces)}" if namespaces else "")
                + ": nothing to assert on",
                pytrace=False,
            )
        return ports


@pytest.fixture
def mesh_service_ports(mesh: Mesh) -> ServicePortLister:
    """`mesh_service_ports()`: every Service port of the mesh with its predicted mode."""
    return ServicePortLister(mesh)
