"""`meshconform audit` on the local mesh: the topology gains the audit's namespace and probes.

The rest of a local audit is the local mesh itself (`backends.local`) and the engine; the
command line (`audit.cli`) brings the mesh up, applies ``--policy`` files and tears it down.
"""

from __future__ import annotations

from dataclasses import replace

from pytest_meshconform.audit.probes import AUDIT_NAMESPACE, ambient_probe, probe_workloads
from pytest_meshconform.backends.local.topology import POD_CIDR_PREFIX, Pod, Topology
from pytest_meshconform.backends.local.topology_file import TopologyError

__all__ = ["with_audit_probes"]


def with_audit_probes(topology: Topology) -> Topology:
    """The local topology plus the probes in AUDIT_NAMESPACE (``sleep`` pods, addressed after
    the last pod and waypoint; the ambient probe when the topology has ambient pods), its
    Services and waypoints kept. A topology that already has a namespace of that name is
    refused."""
    if any(pod.workload.namespace == AUDIT_NAMESPACE for pod in topology.pods):
        raise TopologyError(
            f"namespace {AUDIT_NAMESPACE!r} is the audit's own (its probes run there);"
            " choose another name"
        )
    pods = list(topology.pods)
    probes = list(probe_workloads())
    if any(pod.workload.ambient for pod in topology.pods):
        probes.append(ambient_probe())  # HBONE to the ambient endpoints
    for workload in probes:  # after every pod, the waypoints' too
        index = 10 + len(pods) + len(topology.waypoints)
        pods.append(Pod(workload=workload, ip=f"{POD_CIDR_PREFIX}{index}", kind="sleep"))
    return replace(topology, pods=tuple(pods))  # its Services and waypoints as they are
