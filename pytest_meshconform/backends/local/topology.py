"""The local mesh's topology as pure data: pods, Services and their addresses.

The built-in topology (`topology_file.default_topology`, builtin_topology.yaml) is the one of
Istio's authn-policy and mtls-migration tasks: namespaces `foo` and `bar` are sidecar-injected,
`legacy` is not; each holds a `sleep` pod (a curl client) and an `httpbin` pod (container port
8080 behind Service `httpbin` port 8000). Other topologies come from a file
(`topology_file.load_topology`, `--mesh-topology`). Addresses live only inside the mesh's
network namespaces (pods 10.244.0.0/24, Services 10.96.0.0/16, as in kind).
"""

from __future__ import annotations

from dataclasses import dataclass

from pytest_meshconform.istio.waypoint import (
    USE_WAYPOINT_LABEL,
    service_waypoint,
    waypoint_workload,
    workload_waypoint,
)
from pytest_meshconform.mesh import Service, Waypoint, Workload

TRUST_DOMAIN = "cluster.local"
ROOT_NAMESPACE = "istio-system"
INJECTED_NAMESPACES = ("foo", "bar")
PLAIN_NAMESPACES = ("legacy",)
POD_CIDR_PREFIX = "10.244.0."
POD_PREFIX_LEN = 24
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_PREFIX = "10.96.0."
HTTPBIN_PORT = 8000
HTTPBIN_TARGET_PORT = 8080

# The proxy's identity and the ports it keeps, as istio-iptables uses them (its redirection
# ports: istio/envoy.py).
PROXY_UID = 1337
PROXY_GID = 1337
# The local mesh gives each sidecar its own uid and gid instead (Istio runs every proxy as
# 1337, one per pod, so nothing is shared there; here all pods share one machine): a block
# of PROXY_ID_BLOCK ids per run from PROXY_ID_BASE (`host.allocate_proxy_ids`), one id per
# pod. PROXY_GID stays a supplementary group of every proxy: it only traverses the run
# directory to the proxy's own pod directory.
PROXY_ID_BASE = 1_337_000_000
PROXY_ID_BLOCK = 256  # more than the 200 pods a topology may have

# The uid/gid the `sleep` app (and `exec` in its pod) runs as: not root and not the proxy's, as
# in Istio where only the proxy runs as 1337. The httpbin app stays root: its Python may live
# where no other uid can read it (e.g. a pyenv under /root), see docs/istio-facts.md.
APP_UID = 1000
APP_GID = 1000


@dataclass(frozen=True, slots=True)
class Pod:
    workload: Workload
    ip: str
    kind: str = ""  # the app it runs (topology_file.APP_KINDS); "" = the workload's app label
    # (container port, app kind) for each port served by another app than `kind` (a topology
    # file's `ports: [{port: 5432, serves: tcp-echo}]`); every other port serves `kind`
    serves: tuple[tuple[int, str], ...] = ()

    @property
    def app_kind(self) -> str:
        return self.kind or self.workload.app

    def app_on(self, port: int) -> str:
        """The app kind serving container port `port` (`httpbin`, `tcp-echo`)."""
        return dict(self.serves).get(port, self.app_kind)

    def apps(self) -> dict[str, tuple[int, ...]]:
        """The container ports each app kind of the pod serves, in port order."""
        result: dict[str, tuple[int, ...]] = {}
        for port in self.workload.container_ports:
            kind = self.app_on(port)
            result[kind] = (*result.get(kind, ()), port)
        return result


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    service: Service
    vip: str  # "" for a headless Service (``clusterIP: None``)
    endpoints: tuple[Pod, ...]
    # the Service's own labels (a topology file's `labels:`): ``istio.io/use-waypoint`` and
    # ``istio.io/use-waypoint-namespace`` choose its waypoint
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def addresses(self) -> tuple[str, ...]:
        """What the Service's name resolves to: its VIP, or a headless Service's endpoints'
        pod IPs (cluster DNS' A records for a headless Service)."""
        if self.service.headless:
            return tuple(pod.ip for pod in self.endpoints)
        return (self.vip,)


WAYPOINT_KIND = "waypoint"  # a waypoint's pod: its Envoy only, no app


@dataclass(frozen=True, slots=True)
class WaypointPod:
    """A waypoint (`waypoint: <name>` or `waypoints: [...]` in the topology file) and the pod
    running it (named after the Gateway, under its service account; not enrolled in ambient:
    istiod's waypoint template labels it ``istio.io/dataplane-mode: none``).
    ``enrolls_namespace``: its namespace is labelled ``istio.io/use-waypoint=<name>``
    (`waypoint:`, as ``istioctl waypoint apply --enroll-namespace``)."""

    waypoint: Waypoint
    pod: Pod
    enrolls_namespace: bool = True


def waypoint_pod(waypoint: Waypoint, ip: str, *, enrolls_namespace: bool = True) -> WaypointPod:
    return WaypointPod(
        waypoint, Pod(waypoint_workload(waypoint), ip, kind=WAYPOINT_KIND), enrolls_namespace
    )


@dataclass(frozen=True, slots=True)
class Topology:
    pods: tuple[Pod, ...]  # the workloads' pods (waypoints' pods are `waypoints`)
    services: tuple[ServiceEntry, ...]
    waypoints: tuple[WaypointPod, ...] = ()
    # each namespace's own labels (a topology file's namespace `labels:`), by namespace
    namespace_label_sets: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    @property
    def all_pods(self) -> tuple[Pod, ...]:
        """Every pod the mesh runs: the workloads' and the waypoints'."""
        return (*self.pods, *(w.pod for w in self.waypoints))

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        """A namespace's labels: those the file gives it, and ``istio.io/use-waypoint`` for a
        namespace with a waypoint (as ``istioctl waypoint apply --enroll-namespace`` sets it)."""
        labels = dict(dict(self.namespace_label_sets).get(namespace, ()))
        for entry in self.waypoints:
            if entry.enrolls_namespace and entry.waypoint.namespace == namespace:
                labels[USE_WAYPOINT_LABEL] = entry.waypoint.name
        return labels

    def service_labels(self, service: Service) -> dict[str, str]:
        """The labels of the Service a port belongs to."""
        for entry in self.services:
            s = entry.service
            if (s.namespace, s.name) == (service.namespace, service.name):
                return dict(entry.labels)
        return {}

    def service_waypoint(self, service: Service) -> WaypointPod | None:
        """The waypoint a Service's traffic goes through (the model's `service_waypoint`, with
        the Service's own labels and its namespace's)."""
        found = service_waypoint(
            self.service_labels(service),
            service.namespace,
            self.namespace_labels(service.namespace),
            [w.waypoint for w in self.waypoints],
        )
        return next((w for w in self.waypoints if w.waypoint == found), None)

    def workload_waypoint(self, pod: Pod) -> WaypointPod | None:
        """The waypoint traffic to a pod's own address goes through (the model's
        `workload_waypoint`: a waypoint for ``workload`` or ``all`` traffic)."""
        w = pod.workload
        found = workload_waypoint(
            w.labels,
            w.namespace,
            self.namespace_labels(w.namespace),
            [e.waypoint for e in self.waypoints],
        )
        return next((e for e in self.waypoints if e.waypoint == found), None)

    def pod(self, name: str, namespace: str) -> Pod:
        for pod in self.all_pods:
            if pod.workload.name == name and pod.workload.namespace == namespace:
                return pod
        known = ", ".join(p.workload.key for p in self.pods)
        raise KeyError(
            f"no workload {name}.{namespace} in the local mesh (have: {known}); a suite written"
            " for its own topology runs with --mesh-topology=PATH"
        )

    def pod_of(self, workload: Workload) -> Pod:
        return self.pod(workload.name, workload.namespace)

    def hosts_file(self, pod: Pod) -> str:
        """/etc/hosts for a pod: names resolve as cluster DNS with the pod's search path would."""
        lines = [
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
            f"{pod.ip}\t{pod.workload.name}",
        ]
        seen: set[str] = set()
        for entry in self.services:  # a Service with several ports has one entry per port
            svc = entry.service
            if svc.fqdn in seen:
                continue
            seen.add(svc.fqdn)
            names = [svc.fqdn, f"{svc.name}.{svc.namespace}.svc", f"{svc.name}.{svc.namespace}"]
            if svc.namespace == pod.workload.namespace:
                names.append(svc.name)
            lines += [f"{address}\t{' '.join(names)}" for address in entry.addresses]
        return "\n".join(lines) + "\n"

    def resolv_conf(self, pod: Pod) -> str:
        # No resolver is reachable from a pod: a name missing from /etc/hosts fails locally.
        ns = pod.workload.namespace
        return (
            f"nameserver 127.0.0.1\nsearch {ns}.svc.cluster.local svc.cluster.local cluster.local\n"
        )
