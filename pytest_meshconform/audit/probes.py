"""The audit's own namespace and its two probes, and how the local mesh gains them.

``probe`` is a curl client with a sidecar (its requests are the mesh's), ``probe-naked`` the
same without one (its requests are plaintext). Both live in `AUDIT_NAMESPACE`, which the audit
never audits; on a cluster the namespace is ``meshconform-audit-<run>`` (`audit.kube`).
"""

from __future__ import annotations

from typing import Final

from pytest_meshconform.backends.local.topology import POD_CIDR_PREFIX, Pod, Topology
from pytest_meshconform.backends.local.topology_file import TopologyError
from pytest_meshconform.mesh import Workload

__all__ = ["AUDIT_NAMESPACE", "NAKED_PROBE", "PROBE", "probe_workloads", "with_audit_probes"]

AUDIT_NAMESPACE: Final = "meshconform-audit"
PROBE: Final = "probe"  # a curl client with a sidecar, in AUDIT_NAMESPACE
NAKED_PROBE: Final = "probe-naked"  # the same without a sidecar


def probe_workloads(
    namespace: str = AUDIT_NAMESPACE, service_account: str | None = None
) -> tuple[Workload, Workload]:
    """``(probe, naked probe)`` in ``namespace``; each runs as its own service account unless
    ``service_account`` names one for both."""

    def probe(name: str, sidecar: bool) -> Workload:
        return Workload(
            name=name,
            namespace=namespace,
            app=name,
            service_account=service_account or name,
            has_sidecar=sidecar,
            labels={"app": name},
        )

    return probe(PROBE, True), probe(NAKED_PROBE, False)


def with_audit_probes(topology: Topology) -> Topology:
    """The local topology plus the probes in AUDIT_NAMESPACE (``sleep`` pods, addressed after
    the last pod). A topology that already has a namespace of that name is refused."""
    if any(pod.workload.namespace == AUDIT_NAMESPACE for pod in topology.pods):
        raise TopologyError(
            f"namespace {AUDIT_NAMESPACE!r} is the audit's own (its probes run there);"
            " choose another name"
        )
    pods = list(topology.pods)
    for workload in probe_workloads():
        pods.append(Pod(workload=workload, ip=f"{POD_CIDR_PREFIX}{10 + len(pods)}", kind="sleep"))
    return Topology(pods=tuple(pods), services=topology.services)
