"""The local mesh's network: one namespace per pod, wired to a bridge in a "node" namespace.

Each pod namespace gets its /etc/netns hosts and resolv.conf (names resolve as cluster DNS
would), a veth pair to the node's bridge, its address and the Service route, and its
istio-iptables-style interception rules. Nothing here is reachable from the root namespace.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from pytest_meshconform.backends.local import host, xds
from pytest_meshconform.backends.local.iptables import istio_iptables_rules
from pytest_meshconform.backends.local.runtime import PodRuntime
from pytest_meshconform.backends.local.topology import (
    POD_PREFIX_LEN,
    PROXY_GID,
    PROXY_UID,
    SERVICE_CIDR,
    Pod,
    Topology,
)

__all__ = ["create_namespaces", "netns_name", "node_netns", "proxy_ids", "wire_network"]


_ETC_DIR_MODE = 0o755
_ETC_FILE_MODE = 0o644


def _write_etc_file(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, _ETC_FILE_MODE)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), _ETC_FILE_MODE)
        out.write(text)


def netns_name(run_id: str, pod: Pod) -> str:
    return f"{host.NETNS_PREFIX}{run_id}-{pod.workload.namespace}-{pod.workload.name}"


def node_netns(run_id: str) -> str:
    """The namespace holding the bridge every pod is wired to."""
    return f"{host.NETNS_PREFIX}{run_id}-node"


def create_namespaces(
    state: host.RunState, topology: Topology, proxies: Mapping[str, int]
) -> dict[str, PodRuntime]:
    """Every pod's namespace (and the node's), with its /etc/netns files and its directory
    in the run directory; the pods' runtimes by workload key (`proxies`: each sidecar
    pod's Envoy uid)."""
    run_id = state.run_id
    names = [node_netns(run_id), *(netns_name(run_id, p) for p in topology.all_pods)]
    state.add_netns(*names)  # recorded before they exist: a crash now still gets swept
    host.create_netns(names)
    runtimes: dict[str, PodRuntime] = {}
    for pod in topology.all_pods:
        netns = netns_name(run_id, pod)
        etc = host.NETNS_ETC / netns
        # Bound over the pod's /etc by `ip netns exec`: read by every process in the pod (its
        # app's and Envoy's uids), written by root only, whatever the umask.
        etc.mkdir(parents=True, exist_ok=True)
        etc.chmod(_ETC_DIR_MODE)
        _write_etc_file(etc / "hosts", topology.hosts_file(pod))
        _write_etc_file(etc / "resolv.conf", topology.resolv_conf(pod))
        directory: Path = state.directory / "pods" / pod.workload.key
        directory.mkdir(parents=True)
        # Every Envoy (group PROXY_GID) traverses pods/, each only its own pod's directory
        # (its own gid) to its envoy/; a pod without a sidecar keeps its directory root's.
        host.private_directory(directory.parent, group=PROXY_GID)
        proxy_id = proxies.get(pod.workload.key)
        host.private_directory(directory, group=proxy_id)
        runtimes[pod.workload.key] = PodRuntime(
            pod, netns, directory, xds.SidecarPaths(directory / "envoy"), proxy_id=proxy_id
        )
    return runtimes


def proxy_ids(base: int, topology: Topology) -> dict[str, int]:
    """Each sidecar, ambient or waypoint pod's Envoy uid (and gid) in a run's block: `base` +
    the pod's index (an ambient pod's Envoy plays its ztunnel)."""
    waypoints = {w.pod.workload.key for w in topology.waypoints}
    return {
        pod.workload.key: base + index
        for index, pod in enumerate(topology.all_pods)
        if pod.workload.has_sidecar or pod.workload.ambient or pod.workload.key in waypoints
    }


def wire_network(run_id: str, topology: Topology, proxies: Mapping[str, int]) -> None:
    """Bridge, veth pairs, addresses, routes and nat rules: one command per namespace (each
    sidecar pod's rules exclude its own Envoy's uid and gid, `proxies`)."""
    node = node_netns(run_id)
    node_batch = ["link add br0 type bridge", "link set br0 up", "link set lo up"]
    for index, pod in enumerate(topology.all_pods):
        veth = f"veth{index}"
        node_batch += [
            f"link add {veth} type veth peer name eth0 netns {netns_name(run_id, pod)}",
            f"link set {veth} master br0",
            f"link set {veth} up",
        ]
    host.run(["ip", "-n", node, "-batch", "-"], input="\n".join(node_batch).encode())
    commands: list[tuple[Sequence[str], bytes | None]] = []
    for pod in topology.all_pods:
        netns = netns_name(run_id, pod)
        pod_batch = (
            "link set lo up\n"
            f"addr add {pod.ip}/{POD_PREFIX_LEN} dev eth0\n"
            "link set eth0 up\n"
            f"route add {SERVICE_CIDR} dev eth0\n"
        )
        commands.append((["ip", "-n", netns, "-batch", "-"], pod_batch.encode()))
        commands.append(
            (
                host.in_netns(netns, ["iptables-restore"]),
                istio_iptables_rules(
                    pod, topology, proxy_id=proxies.get(pod.workload.key, PROXY_UID)
                ).encode(),
            )
        )
    host.run_all(commands)
