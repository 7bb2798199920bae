"""The audit's own namespace and its two probes.

``probe`` is a curl client with a sidecar (its requests are the mesh's), ``probe-naked`` the
same without one (its requests are plaintext), and on a local mesh with ambient pods
``probe-ambient``, enrolled in ambient mode (the mesh probe of ambient endpoints). They live
in `AUDIT_NAMESPACE`, which the audit never audits; the local mesh gains them with
`audit.local.with_audit_probes`, a cluster in ``meshconform-audit-<run>`` (`audit.kube`).
"""

from __future__ import annotations

from typing import Final

from pytest_meshconform.mesh import Workload

__all__ = [
    "AMBIENT_PROBE",
    "AUDIT_NAMESPACE",
    "NAKED_PROBE",
    "PROBE",
    "ambient_probe",
    "probe_workloads",
]

AUDIT_NAMESPACE: Final = "meshconform-audit"
PROBE: Final = "probe"  # a curl client with a sidecar, in AUDIT_NAMESPACE
NAKED_PROBE: Final = "probe-naked"  # the same without a sidecar
# an ambient curl client (ztunnel tunnels its requests over HBONE): the mesh probe of ambient
# endpoints, added by the local mesh when the topology has ambient pods
AMBIENT_PROBE: Final = "probe-ambient"


def ambient_probe(namespace: str = AUDIT_NAMESPACE) -> Workload:
    """The ambient probe: enrolled in ambient mode, no sidecar."""
    return Workload(
        name=AMBIENT_PROBE,
        namespace=namespace,
        app=AMBIENT_PROBE,
        service_account=AMBIENT_PROBE,
        has_sidecar=False,
        labels={"app": AMBIENT_PROBE},
        ambient=True,
    )


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
