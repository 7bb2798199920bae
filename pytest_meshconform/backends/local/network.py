"""The local mesh's network: one namespace per pod, wired to a bridge in a "node" namespace.

Each pod namespace gets its /etc/netns hosts and resolv.conf (names resolve as cluster DNS
would), a veth pair to the node's bridge, its address and the Service route, and its
istio-iptables-style interception rules. Nothing here is reachable from the root namespace.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pytest_meshconform.backends.local import host, xds
from pytest_meshconform.backends.local.iptables import istio_iptables_rules
from pytest_meshconform.backends.local.runtime import PodRuntime
from pytest_meshconform.backends.local.topology import (
    POD_PREFIX_LEN,
    PROXY_GID,
    SERVICE_CIDR,
    Pod,
    Topology,
)

__all__ = ["create_namespaces", "netns_name", "node_netns", "wire_network"]


def netns_name(run_id: str, pod: Pod) -> str:
    return f"{host.NETNS_PREFIX}{run_id}-{pod.workload.namespace}-{pod.workload.name}"


def node_netns(run_id: str) -> str:
    """The namespace holding the bridge every pod is wired to."""
    return f"{host.NETNS_PREFIX}{run_id}-node"


def create_namespaces(state: host.RunState, topology: Topology) -> dict[str, PodRuntime]:
    """Every pod's namespace (and the node's), with its /etc/netns files and its directory
    in the run directory; the pods' runtimes by workload key."""
    run_id = state.run_id
    names = [node_netns(run_id), *(netns_name(run_id, p) for p in topology.pods)]
    state.add_netns(*names)  # recorded before they exist: a crash now still gets swept
    host.create_netns(names)
    runtimes: dict[str, PodRuntime] = {}
    for pod in topology.pods:
        netns = netns_name(run_id, pod)
        etc = host.NETNS_ETC / netns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(topology.hosts_file(pod))
        (etc / "resolv.conf").write_text(topology.resolv_conf(pod))
        directory: Path = state.directory / "pods" / pod.workload.key
        directory.mkdir(parents=True)
        for made in (directory.parent, directory):  # Envoy (group 1337) reaches envoy/
            host.private_directory(made, group=PROXY_GID)
        runtimes[pod.workload.key] = PodRuntime(
            pod, netns, directory, xds.SidecarPaths(directory / "envoy")
        )
    return runtimes


def wire_network(run_id: str, topology: Topology) -> None:
    """Bridge, veth pairs, addresses, routes and nat rules: one command per namespace."""
    node = node_netns(run_id)
    node_batch = ["link add br0 type bridge", "link set br0 up", "link set lo up"]
    for index, pod in enumerate(topology.pods):
        veth = f"veth{index}"
        node_batch += [
            f"link add {veth} type veth peer name eth0 netns {netns_name(run_id, pod)}",
            f"link set {veth} master br0",
            f"link set {veth} up",
        ]
    host.run(["ip", "-n", node, "-batch", "-"], input="\n".join(node_batch).encode())
    commands: list[tuple[Sequence[str], bytes | None]] = []
    for pod in topology.pods:
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
                istio_iptables_rules(pod, topology).encode(),
            )
        )
    host.run_all(commands)
