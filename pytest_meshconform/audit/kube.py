"""`meshconform audit` on a Kubernetes cluster: the cluster's own Services, read-only.

`KubeAuditMesh` is a `KubeMesh` whose workloads are the cluster's pods (grouped by labels) and
whose Services are the cluster's, read from the API (namespaces, Services, pods, Istio
policies: PeerAuthentication, DestinationRule, AuthorizationPolicy; nothing of the user's is
ever written). It creates one namespace of its own,
``meshconform-audit-<run>`` (injected), with the two probes of `audit.probes` (`probe` with a
sidecar, `probe-naked` with ``sidecar.istio.io/inject: "false"``) and, when the cluster runs
ztunnel, ``probe-ambient`` (no sidecar, the pod labelled ``istio.io/dataplane-mode=ambient``:
istio-cni enrols it, ztunnel tunnels its requests over HBONE), execs curl / bash in them,
captures at the probe with the kube backend's ephemeral tcpdump container, and deletes the
namespace at the end. `cluster_topology` (pure) turns the API's JSON into workloads and
Services, naming what it cannot audit. Its waypoints are the cluster's Gateways of class
``istio-waypoint`` (read-only), and a Service's is the one the model's `service_waypoint`
picks from the Service's and its namespace's labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from pytest_meshconform.audit.probes import AUDIT_NAMESPACE, ambient_probe, probe_workloads
from pytest_meshconform.backends.kube.backend import KubeMesh
from pytest_meshconform.backends.kube.client import KubeApiError
from pytest_meshconform.backends.kube.lifecycle import (
    object_meta,
    pod_enrolled_in_ambient,
    pod_has_sidecar,
    pod_is_ready,
)
from pytest_meshconform.backends.kube.options import KubeOptions
from pytest_meshconform.backends.kube.topology import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    RunNamespaces,
    run_labels,
)
from pytest_meshconform.istio.ambient import DATAPLANE_MODE_LABEL
from pytest_meshconform.istio.injection import injection_labels
from pytest_meshconform.istio.waypoint import (
    WAYPOINT_FOR_LABEL,
    WAYPOINT_GATEWAY_CLASS,
    service_waypoint,
)
from pytest_meshconform.mesh import MeshError, Service, Waypoint, Workload

__all__ = [
    "SYSTEM_NAMESPACES",
    "ClusterTopology",
    "KubeAuditMesh",
    "cluster_topology",
    "cluster_waypoints",
]

# Never audited: Kubernetes' own namespaces (the Istio namespace is added at run time).
SYSTEM_NAMESPACES: Final = ("kube-system", "kube-public", "kube-node-lease")
# waypoints: Gateways of class istio-waypoint (the Gateway API's group)
GATEWAY_KIND: Final = ("gateway.networking.k8s.io", "Gateway")
# The policies the audit's predictions read: the modes (PeerAuthentication, DestinationRule)
# and what authorization does to its probes (AuthorizationPolicy)
POLICY_KINDS: Final = (
    ("security.istio.io", "PeerAuthentication"),
    ("networking.istio.io", "DestinationRule"),
    ("security.istio.io", "AuthorizationPolicy"),
)


@dataclass(frozen=True, slots=True)
class ClusterTopology:
    """What the cluster runs, as the Istio model reads it, and what cannot be audited."""

    workloads: tuple[Workload, ...]
    services: tuple[Service, ...]
    not_audited: tuple[str, ...]


def _workload_name(pod: Mapping[str, Any]) -> str:
    labels = object_meta(pod).get("labels") or {}
    for key in ("app", "app.kubernetes.io/name"):
        if labels.get(key):
            return str(labels[key])
    generate = str(object_meta(pod).get("generateName") or "").rstrip("-")
    return generate or str(object_meta(pod).get("name"))


def _container_ports(pod: Mapping[str, Any]) -> dict[str, int]:
    named: dict[str, int] = {}
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            number = port.get("containerPort")
            if isinstance(number, int):
                named[str(port.get("name") or number)] = number
    return named


def cluster_topology(
    namespaces: Sequence[str],
    services: Mapping[str, Sequence[Mapping[str, Any]]],
    pods: Mapping[str, Sequence[Mapping[str, Any]]],
) -> ClusterTopology:
    """Workloads (ready pods grouped by namespace, labels, service account, sidecar and ambient
    enrolment, istio-cni's ``ambient.istio.io/redirection: enabled`` mark: the replicas of one
    Deployment are one workload) and one `Service` per Service port, from the
    API's JSON of each namespace. Services without selector or ExternalName ones, UDP ports,
    ports without ready endpoints and a headless Service's port whose targetPort is another
    number are listed in ``not_audited`` with why."""
    workloads: dict[tuple[Any, ...], Workload] = {}
    ports_of: dict[tuple[Any, ...], dict[str, int]] = {}
    found_services: list[Service] = []
    notes: list[str] = []
    for namespace in namespaces:
        for pod in pods.get(namespace, ()):
            if not pod_is_ready(pod):
                continue
            labels = {str(k): str(v) for k, v in (object_meta(pod).get("labels") or {}).items()}
            account = str((pod.get("spec") or {}).get("serviceAccountName") or "default")
            sidecar = pod_has_sidecar(pod)
            # enrolled in ambient as istio-cni says it did (its mark on the pod), not as the
            # labels say it should: a pod started before its namespace was labelled is not
            ambient = not sidecar and pod_enrolled_in_ambient(pod)
            key = (namespace, tuple(sorted(labels.items())), account, sidecar, ambient)
            if key not in workloads:
                named = _container_ports(pod)
                workloads[key] = Workload(
                    name=_workload_name(pod),
                    namespace=namespace,
                    app=labels.get("app", _workload_name(pod)),
                    service_account=account,
                    has_sidecar=sidecar,
                    ambient=ambient,
                    labels=labels,
                    container_ports=tuple(sorted(set(named.values()))),
                    annotations={  # the interception ones say which ports bypass the sidecar
                        str(k): str(v)
                        for k, v in (object_meta(pod).get("annotations") or {}).items()
                    },
                )
                ports_of[key] = named
        for svc in services.get(namespace, ()):
            name = str(object_meta(svc).get("name"))
            spec = svc.get("spec") or {}
            where = f"{name}.{namespace}"
            selector = {str(k): str(v) for k, v in (spec.get("selector") or {}).items()}
            if spec.get("type") == "ExternalName" or not selector:
                notes.append(f"{where}: no selector (ExternalName or manual endpoints)")
                continue
            headless = spec.get("clusterIP") == "None"
            selected = [
                (key, w)
                for key, w in workloads.items()
                if w.namespace == namespace
                and all(w.labels.get(k) == v for k, v in selector.items())
            ]
            for port in spec.get("ports") or []:
                number = port.get("port")
                label = f"{where}:{number}"
                if port.get("protocol", "TCP") != "TCP":
                    notes.append(f"{label}: {port.get('protocol')} (only TCP is audited)")
                    continue
                target = port.get("targetPort", number)
                resolved = [
                    ports_of[key].get(str(target)) if isinstance(target, str) else target
                    for key, _ in selected
                ]
                numbers = {r for r in resolved if isinstance(r, int)}
                if not selected:
                    notes.append(f"{label}: no ready endpoint")
                    continue
                if len(numbers) != 1:
                    notes.append(
                        f"{label}: targetPort {target!r} resolves to {sorted(numbers) or 'nothing'}"
                        " across its endpoints"
                    )
                    continue
                resolved_port = numbers.pop()
                if headless and resolved_port != number:
                    notes.append(
                        f"{label}: headless, targetPort {resolved_port} (clients of a headless"
                        " Service connect to the pod at the port itself)"
                    )
                    continue
                found_services.append(
                    Service(
                        name=name,
                        namespace=namespace,
                        port=int(number),
                        target_port=resolved_port,
                        selector_app=selector.get("app", ""),
                        port_name=str(port.get("name") or ""),
                        app_protocol=port.get("appProtocol"),
                        selector=tuple(sorted(selector.items())),
                        headless=headless,
                    )
                )
    return ClusterTopology(tuple(workloads.values()), tuple(found_services), tuple(notes))


def cluster_waypoints(gateways: Sequence[Mapping[str, Any]]) -> tuple[Waypoint, ...]:
    """The waypoints among a cluster's Gateways: class ``istio-waypoint``, the traffic type
    their ``istio.io/waypoint-for`` label names, else ``service`` (``gatewayToWaypointTransform``,
    istio.waypoint); istiod takes the label's value as written, so one naming no traffic type
    makes a waypoint nothing is sent through. Its HBONE listener's ``allowedRoutes.namespaces``
    says which other namespaces may use it (``Same`` unless given)."""
    found = []
    for gateway in gateways:
        if (gateway.get("spec") or {}).get("gatewayClassName") != WAYPOINT_GATEWAY_CLASS:
            continue
        meta = object_meta(gateway)
        traffic = str((meta.get("labels") or {}).get(WAYPOINT_FOR_LABEL, "service"))
        listeners = (gateway.get("spec") or {}).get("listeners") or []
        hbone: Mapping[str, Any] = next((x for x in listeners if x.get("protocol") == "HBONE"), {})
        allowed = (hbone.get("allowedRoutes") or {}).get("namespaces") or {}
        labels = ((allowed.get("selector") or {}).get("matchLabels") or {}).items()
        found.append(
            Waypoint(
                name=str(meta.get("name")),
                namespace=str(meta.get("namespace")),
                traffic_type=traffic,
                allowed_routes=str(allowed.get("from") or "Same"),
                allowed_route_labels=tuple(sorted((str(k), str(v)) for k, v in labels)),
            )
        )
    return tuple(found)


class KubeAuditMesh(KubeMesh):
    """The cluster as the audit sees it: its Services and pods read-only, plus the audit's
    own namespace with the two probes (the only thing created, and deleted at the end)."""

    def __init__(
        self,
        api: Any,
        *,
        options: KubeOptions,
        progress: Any = None,
        owner: str = "meshconform",
        run_dir: Path | None = None,
        run_id: str | None = None,
    ) -> None:
        names = RunNamespaces(run_id) if run_id else None
        super().__init__(
            api,
            backend="existing",
            options=options,
            cert_ttl=timedelta(hours=24),
            keep=False,
            names=names,
            progress=progress,
            owner=owner,
            run_dir=run_dir,
        )
        self.audit_namespace = f"{AUDIT_NAMESPACE}-{self.names.run_id}"
        self._probes: tuple[Workload, ...] = probe_workloads(
            self.audit_namespace, service_account="default"
        )
        self._workloads = self._probes
        self._services = ()
        self.not_audited: tuple[str, ...] = ()
        self._audited_namespaces: tuple[str, ...] = ()
        self._waypoints: tuple[Waypoint, ...] = ()
        self._namespace_labels: dict[str, dict[str, str]] = {}
        self._service_labels: dict[tuple[str, str], dict[str, str]] = {}

    # -- what the audit reads ------------------------------------------------------------------

    @property
    def audited_namespaces(self) -> tuple[str, ...]:
        """The cluster's namespaces the audit read (after `start`)."""
        return self._audited_namespaces

    def logical_namespace(self, target: Workload | str) -> str:
        namespace = target.namespace if isinstance(target, Workload) else target
        return AUDIT_NAMESPACE if namespace == self.audit_namespace else namespace

    def workload(self, name: str, namespace: str) -> Workload:
        real = self.audit_namespace if namespace == AUDIT_NAMESPACE else namespace
        for workload in self._workloads:
            if workload.name == name and workload.namespace == real:
                return workload
        raise MeshError(f"no workload {name!r} in {namespace}")

    def waypoints(self) -> Sequence[Waypoint]:
        """The cluster's waypoints (`cluster_waypoints`) in the audited namespaces and Istio's
        (after `start`); none where the Gateway API is not installed."""
        return self._waypoints

    def service_waypoint(self, service: Service) -> Waypoint | None:
        """The waypoint the Service's traffic goes through (`istio.waypoint.service_waypoint`
        with the labels the API gave the Service and its namespace)."""
        return service_waypoint(
            self._service_labels.get((service.namespace, service.name), {}),
            service.namespace,
            self._namespace_labels.get(service.namespace, {}),
            self._waypoints,
        )

    def policies(self) -> Sequence[Mapping[str, Any]]:
        """Every PeerAuthentication, DestinationRule and AuthorizationPolicy of the audited
        namespaces and the root namespace (read-only)."""
        found: list[dict[str, Any]] = []
        for group, kind in POLICY_KINDS:
            versions = self._served(group, kind)
            if not versions:
                continue
            for namespace in (*self._audited_namespaces, self.root_namespace):
                try:
                    found += self.api.list_objects(f"{group}/{versions[0]}", kind, namespace)
                except KubeApiError as error:
                    raise MeshError(
                        f"cannot read {kind}s in {namespace} to predict the audit: {error}"
                    ) from None
        return found

    def apply(self, manifest: Mapping[str, Any]) -> None:
        raise MeshError("the audit never changes the cluster's resources (no --policy there)")

    def delete(self, manifest: Mapping[str, Any]) -> None:
        raise MeshError("the audit never changes the cluster's resources")

    # -- lifecycle: only the audit's own namespace is created ---------------------------------

    def _sweep_leftovers(self) -> None:
        """Nothing: the audit touches no namespace but its own."""

    def _plan_waypoints(self) -> None:
        """None: the audit deploys no waypoint; it reads the cluster's (`discover`)."""
        self._waypoints = ()

    def _create_topology(self) -> None:
        labels = run_labels(self.names)
        labels["pod-security.kubernetes.io/enforce"] = "privileged"  # the capture container
        labels.update(injection_labels(self.revision, injected=True))
        labels.update(self.discovery_labels(self.audit_namespace, labels))
        self._progress(f"creating the audit's namespace {self.audit_namespace} with its probes")
        self.api.create_namespace(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": self.audit_namespace, "labels": labels},
            }
        )
        self._created_namespaces.append(self.audit_namespace)
        if self.runs_ztunnel:  # the mesh probe of ambient endpoints: HBONE through ztunnel
            self._probes = (*self._probes, self._ambient_probe())
            self._workloads = self._probes
        for probe in self._probes:
            template: dict[str, Any] = {"labels": {"app": probe.app, **run_labels(self.names)}}
            if not probe.has_sidecar:
                template["annotations"] = {"sidecar.istio.io/inject": "false"}
            if probe.ambient:
                template["labels"][DATAPLANE_MODE_LABEL] = "ambient"
            self.api.apply(
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {
                        "name": probe.name,
                        "namespace": self.audit_namespace,
                        "labels": {MANAGED_BY_LABEL: MANAGED_BY, "app": probe.app},
                    },
                    "spec": {
                        "replicas": 1,
                        "selector": {"matchLabels": {"app": probe.app}},
                        "template": {
                            "metadata": template,
                            "spec": {
                                "terminationGracePeriodSeconds": 0,
                                "containers": [
                                    {
                                        "name": probe.app,
                                        "image": self.options.sleep_image,
                                        "imagePullPolicy": "IfNotPresent",
                                        "command": ["/bin/sleep", "infinity"],
                                    }
                                ],
                            },
                        },
                    },
                }
            )

    def _ambient_probe(self) -> Workload:
        """`audit.probes`' ambient probe, under the namespace's default service account as the
        other probes, its pod labelled ``istio.io/dataplane-mode=ambient`` (the namespace is
        injected for the sidecar probe, so the pod enrols itself)."""
        probe = ambient_probe(self.audit_namespace)
        return replace(
            probe,
            service_account="default",
            labels={**probe.labels, DATAPLANE_MODE_LABEL: "ambient"},
        )

    def _read_root_cert(self) -> str:
        config_map = self.api.read_config_map(self.audit_namespace, "istio-ca-root-cert")
        pem = ((config_map or {}).get("data") or {}).get("root-cert.pem")
        if not pem:
            raise MeshError(
                f"configmap {self.audit_namespace}/istio-ca-root-cert has no root-cert.pem"
            )
        return str(pem)

    def _wait_reachable(self) -> None:
        """Instead of the test topology's reachability: read the cluster (read-only)."""
        self.discover()

    def discover(self) -> ClusterTopology:
        """List namespaces, Services and pods; the probes stay first among the workloads."""
        skip = {*SYSTEM_NAMESPACES, self.options.istio_namespace, self.audit_namespace}
        listed = self.api.list_namespaces("")
        self._namespace_labels = {
            str(object_meta(ns).get("name")): {
                str(k): str(v) for k, v in (object_meta(ns).get("labels") or {}).items()
            }
            for ns in listed
        }
        namespaces = sorted(
            str(object_meta(ns).get("name"))
            for ns in listed
            if str(object_meta(ns).get("name")) not in skip
            and (object_meta(ns).get("labels") or {}).get(MANAGED_BY_LABEL) != MANAGED_BY
        )
        services = {ns: self.api.list_objects("v1", "Service", ns) for ns in namespaces}
        self._service_labels = {
            (ns, str(object_meta(svc).get("name"))): {
                str(k): str(v) for k, v in (object_meta(svc).get("labels") or {}).items()
            }
            for ns, found_services in services.items()
            for svc in found_services
        }
        self._waypoints = self._read_waypoints((*namespaces, self.options.istio_namespace))
        pods = {ns: self.api.list_pods(ns) for ns in namespaces}
        found = cluster_topology(namespaces, services, pods)
        self._audited_namespaces = tuple(namespaces)
        self._workloads = (*self._probes, *found.workloads)
        self._services = tuple(replace(s, domain=self.dns_domain) for s in found.services)
        self.not_audited = found.not_audited
        self._progress(
            f"read {len(namespaces)} namespaces: {len(found.services)} Service ports,"
            f" {len(found.workloads)} workloads, {len(self._waypoints)} waypoints; not audited:"
            f" {len(found.not_audited)}"
        )
        return found

    def _read_waypoints(self, namespaces: Sequence[str]) -> tuple[Waypoint, ...]:
        """The Gateways of class ``istio-waypoint`` of ``namespaces`` (none when the Gateway
        API's CRDs are not installed: no waypoint can exist)."""
        versions = self._served(*GATEWAY_KIND)
        if not versions:
            return ()
        gateways: list[dict[str, Any]] = []
        for namespace in namespaces:
            try:
                gateways += self.api.list_objects(
                    f"{GATEWAY_KIND[0]}/{versions[0]}", GATEWAY_KIND[1], namespace
                )
            except KubeApiError as error:
                raise MeshError(
                    f"cannot read Gateways in {namespace} to find the waypoints: {error}"
                ) from None
        return cluster_waypoints(gateways)
