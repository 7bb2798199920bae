"""Lifecycle of a kube run: its namespaces, the sweeping of dead runs' leftovers, its pods.

``KubeLifecycle`` (a mixin of ``KubeMesh``) creates the run's namespaces and workloads, sweeps
(kind) or reports (existing cluster) what crashed runs left, waits until every pod is ready
with its sidecar, and keeps the ready pod of each workload. The pure pod facts over API JSON
(ready, a problem that will not fix itself, has a sidecar) and ``ClusterApi``, what the kube
backend needs from a cluster, live here too.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from pytest_meshconform.backends.kube.checkup import undiscoverable_message
from pytest_meshconform.backends.kube.client import ExecSession, KubeApiError, is_transient
from pytest_meshconform.backends.kube.control_plane import IstiodInfo, MeshConfigInfo
from pytest_meshconform.backends.kube.options import KubeOptions
from pytest_meshconform.backends.kube.topology import (
    LOGICAL_NAMESPACES,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    OWNER_ANNOTATION,
    RunNamespaces,
    WorkloadImages,
    namespace_manifest,
    parse_owner,
    run_id_of,
    workload_manifests,
)
from pytest_meshconform.backends.registry import Progress
from pytest_meshconform.istio.ambient import AMBIENT_REDIRECTION_ANNOTATION
from pytest_meshconform.istio.discovery import discovery_labels
from pytest_meshconform.istio.injection import DEFAULT_REVISION, injection_labels
from pytest_meshconform.mesh import MeshError, Waypoint, Workload
from pytest_meshconform.settings import Dataplane
from pytest_meshconform.waiting import WaitTimeout, poll

PROXY_CONTAINER: Final = "istio-proxy"
POLICY_KINDS: Final = (
    ("security.istio.io", "PeerAuthentication"),
    ("networking.istio.io", "DestinationRule"),
    ("security.istio.io", "AuthorizationPolicy"),
)
_BAD_WAITING_REASONS: Final = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
# How often the propagation and capture waits look again (pods readiness looks each second).
POLL_S: Final = 0.25


class ClusterApi(Protocol):
    """What KubeMesh needs from a cluster (``client.KubeApi``; tests pass a fake)."""

    context: str

    def create_namespace(self, manifest: Mapping[str, Any]) -> None: ...
    def delete_namespace(self, name: str) -> bool: ...
    def list_namespaces(self, label_selector: str) -> list[dict[str, Any]]: ...
    def served_versions(self, group: str, kind: str) -> list[str]: ...
    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]: ...
    def get(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> dict[str, Any] | None: ...
    def list_objects(
        self, api_version: str, kind: str, namespace: str, label_selector: str | None = None
    ) -> list[dict[str, Any]]: ...
    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool: ...
    def replace(self, manifest: Mapping[str, Any]) -> dict[str, Any]: ...
    def list_pods(
        self, namespace: str, label_selector: str | None = None
    ) -> list[dict[str, Any]]: ...
    def read_pod(self, namespace: str, name: str) -> dict[str, Any]: ...
    def add_ephemeral_container(
        self, namespace: str, pod: str, container: Mapping[str, Any]
    ) -> None: ...
    def pod_log(
        self,
        namespace: str,
        pod: str,
        container: str,
        limit_bytes: int,
        since_seconds: int | None = None,
    ) -> str: ...
    def read_config_map(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def list_deployments(
        self, namespace: str, label_selector: str | None = None, timeout: float | None = None
    ) -> list[dict[str, Any]]: ...
    def list_events(self, namespace: str) -> list[dict[str, Any]]: ...
    def port_forward_get(
        self, namespace: str, pod: str, port: int, path: str, *, timeout: float = 30.0
    ) -> bytes: ...
    def open_exec(
        self,
        namespace: str,
        pod: str,
        container: str,
        argv: Sequence[str],
        *,
        stdin: bool = False,
    ) -> ExecSession: ...


# --- pod facts (pure helpers over API JSON) ----------------------------------------------------


def object_meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """An API object's ``metadata`` ({} when absent or not a mapping)."""
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def pod_has_sidecar(pod: Mapping[str, Any]) -> bool:
    """istio-proxy as a container, or as a native sidecar (an init container)."""
    spec = pod.get("spec") or {}
    names = [c.get("name") for c in (spec.get("containers") or [])]
    names += [c.get("name") for c in (spec.get("initContainers") or [])]
    return PROXY_CONTAINER in names


def pod_enrolled_in_ambient(pod: Mapping[str, Any]) -> bool:
    """istio-cni has enrolled the pod: its ``ambient.istio.io/redirection: enabled`` mark
    (``annotation.AmbientRedirection``, written once the pod's traffic goes to ztunnel)."""
    annotations = object_meta(pod).get("annotations") or {}
    return annotations.get(AMBIENT_REDIRECTION_ANNOTATION) == "enabled"


def pod_is_ready(pod: Mapping[str, Any]) -> bool:
    if object_meta(pod).get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def pod_problem(pod: Mapping[str, Any]) -> str | None:
    """A container state that will not fix itself (bad image, crash loop), described."""
    status = pod.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for container in status.get(key) or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in _BAD_WAITING_REASONS:
                message = waiting.get("message") or ""
                return f"container {container.get('name')}: {reason} {message}".strip()
    return None


def pod_waiting_summary(pod: Mapping[str, Any]) -> str:
    status = pod.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(key) or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason"):
                return str(waiting["reason"])
    return str(status.get("phase") or "Pending")


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0 checks, sends nothing)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def image_hint(problem: str) -> str:
    if "Image" in problem:
        return "; set --mesh-sleep-image / --mesh-httpbin-image to images your nodes can pull"
    return ""


class KubeLifecycle:
    """Namespaces, sweeping and pods of a ``KubeMesh`` (which sets these attributes)."""

    api: ClusterApi
    options: KubeOptions
    names: RunNamespaces
    owner: str
    cert_ttl: timedelta
    dataplane: Dataplane
    _backend: Literal["kind", "existing"]
    _progress: Progress
    _workloads: Sequence[Workload]
    _waypoints: tuple[Waypoint, ...]  # the run's namespace waypoints (waypoints.py)
    _pods: dict[tuple[str, str], dict[str, Any]]
    _created_namespaces: list[str]
    _lock: threading.RLock

    if TYPE_CHECKING:  # KubeMesh's (the Mesh protocol)

        @property
        def root_namespace(self) -> str: ...
        @property
        def run_id(self) -> str: ...
        @property
        def mesh_config(self) -> MeshConfigInfo: ...
        @property
        def istiod(self) -> IstiodInfo: ...
        @property
        def istiod_revisions(self) -> tuple[str, ...]: ...
        @property
        def revision(self) -> str | None: ...
        @property
        def trust_domain(self) -> str: ...
        def pod_ip(self, workload: Workload) -> str: ...
        def envoy_admin(self, workload: Workload, path: str) -> bytes: ...

    def _sweep_leftovers(self) -> None:
        """kind (our cluster): delete what crashed runs left. existing: only report it (and
        skip the look when the user may not list namespaces: it is a courtesy, not a need).

        A run in progress is never swept, even on kind: two sessions of one project share its
        cluster. A namespace is stale when its owner annotation names this host and a process
        that is gone (or names nobody); a mesh-wide leftover when no live run carries its id.
        """
        try:
            others = [  # terminating ones are already going: nothing to sweep or report
                ns
                for ns in self.api.list_namespaces(f"{MANAGED_BY_LABEL}={MANAGED_BY}")
                if run_id_of(ns) != self.run_id and not object_meta(ns).get("deletionTimestamp")
            ]
            wide = self._mesh_wide_leftovers()
        except KubeApiError as error:
            if self._backend == "kind":
                raise
            self._progress(f"could not look for leftovers of earlier runs: {error}")
            return
        if not others and not wide:
            return
        stale = [ns for ns in others if self._run_is_dead(ns)]
        live = [ns for ns in others if not self._run_is_dead(ns)]
        live_runs = {run_id_of(ns) for ns in live}
        ns_names = [str(object_meta(ns).get("name")) for ns in others]
        if self._backend == "kind":
            stale_wide = [obj for obj in wide if run_id_of(obj) not in live_runs]
            for ns in stale:
                self.api.delete_namespace(str(object_meta(ns).get("name")))
            for obj in stale_wide:
                self.api.delete(
                    str(obj.get("apiVersion")),
                    str(obj.get("kind")),
                    self.root_namespace,
                    str(object_meta(obj).get("name")),
                )
            swept = [str(object_meta(ns).get("name")) for ns in stale]
            swept += [f"{o.get('kind')} {object_meta(o).get('name')}" for o in stale_wide]
            if swept:
                self._progress(f"swept leftovers of earlier runs: {', '.join(swept)}")
            if live:
                running = ", ".join(
                    f"{object_meta(ns).get('name')} ({self._owner_of(ns)})" for ns in live
                )
                self._progress(f"left alone namespaces of meshconform runs in progress: {running}")
            return
        if ns_names:
            self._progress(
                f"namespaces of other meshconform runs exist ({', '.join(ns_names)}): left"
                " alone, they may belong to a run in progress; if stale: kubectl delete ns -l"
                f" {MANAGED_BY_LABEL}={MANAGED_BY},meshconform.dev/run=<run id>"
            )
        if wide:
            listed = ", ".join(f"{o.get('kind')} {object_meta(o).get('name')}" for o in wide)
            self._progress(
                f"WARNING: mesh-wide policies left by a meshconform run in {self.root_namespace}:"
                f" {listed}; they change mTLS for the whole mesh"
            )

    @staticmethod
    def _owner_of(namespace: Mapping[str, Any]) -> str:
        annotations = object_meta(namespace).get("annotations") or {}
        return str(annotations.get(OWNER_ANNOTATION) or "no owner")

    def _run_is_dead(self, namespace: Mapping[str, Any]) -> bool:
        """The run that made ``namespace`` has ended: its owner process on this host is gone.

        Namespaces of other hosts count as alive (their process cannot be checked from here),
        namespaces without an owner annotation as dead (every run writes one).
        """
        annotations = object_meta(namespace).get("annotations") or {}
        raw = annotations.get(OWNER_ANNOTATION)
        if raw is None:
            return True
        owner = parse_owner(raw)
        if owner is None or owner.host != socket.gethostname():
            return False
        return not process_alive(owner.pid)

    def _mesh_wide_leftovers(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for group, kind in POLICY_KINDS:
            versions = self._served(group, kind)
            if not versions:
                continue
            found += self.api.list_objects(
                f"{group}/{versions[0]}",
                kind,
                self.root_namespace,
                f"{MANAGED_BY_LABEL}={MANAGED_BY}",
            )
        return [obj for obj in found if run_id_of(obj) != self.run_id]

    def discovery_labels(self, name: str, labels: Mapping[str, str]) -> dict[str, str]:
        """The labels that make istiod discover namespace ``name`` under the mesh config's
        ``discoverySelectors`` ({} without them); MeshError naming the selectors and the fix
        when none can be met by adding labels (istiod would never publish the mesh root
        there, and every sidecar would wait for it until --mesh-ready-timeout)."""
        selectors = self.mesh_config.discovery_selectors
        extra = discovery_labels(selectors, name, labels)
        if extra is not None:
            return extra
        config_map = f"{self.options.istio_namespace}/{self.istiod.mesh_config_map}"
        raise MeshError(undiscoverable_message(selectors, name, labels, config_map))

    def _create_topology(self) -> None:
        images = WorkloadImages(self.options.sleep_image, self.options.httpbin_image)
        manifests = [
            namespace_manifest(
                self.names,
                logical,
                self.revision,
                self.owner,
                self.dataplane,
                waypoint=next(
                    (w.name for w in self._waypoints if w.namespace == self.names.real(logical)),
                    None,
                ),
            )
            for logical in LOGICAL_NAMESPACES
        ]
        for manifest in manifests:  # every refusal before anything is created
            meta = manifest["metadata"]
            meta["labels"].update(self.discovery_labels(meta["name"], meta["labels"]))
        self._progress(f"creating namespaces {', '.join(self.names.all_real)} and workloads")
        for manifest in manifests:
            self.api.create_namespace(manifest)
            self._created_namespaces.append(manifest["metadata"]["name"])
        for logical in LOGICAL_NAMESPACES:
            for manifest in workload_manifests(
                self.names, logical, images, self.cert_ttl, self.dataplane
            ):
                self.api.apply(manifest)

    def _deadline(self, timeout: timedelta | float) -> float:
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        return time.monotonic() + seconds

    def _wait_pods_ready(self) -> None:
        last_summary = ""

        def all_ready() -> Literal[True] | None:
            nonlocal last_summary
            pending: list[str] = []
            for workload in self._workloads:
                pods = self.api.list_pods(workload.namespace, f"app={workload.app}")
                live = [p for p in pods if not object_meta(p).get("deletionTimestamp")]
                for pod in live:
                    problem = pod_problem(pod)
                    if problem:
                        raise MeshError(
                            f"pod {object_meta(pod).get('name')} of {workload.key}: {problem}"
                            f"{image_hint(problem)}"
                        )
                ready = [p for p in live if pod_is_ready(p)]
                if not ready:
                    state = pod_waiting_summary(live[0]) if live else "no pod yet"
                    pending.append(f"{workload.key} ({state})")
                    continue
                pod = ready[0]
                if workload.has_sidecar and not pod_has_sidecar(pod):
                    raise MeshError(self._not_injected(pod, workload.namespace))
                if workload.ambient and pod_has_sidecar(pod):
                    raise MeshError(
                        f"pod {object_meta(pod).get('name')} in {workload.namespace} has an"
                        " istio-proxy sidecar: istio-cni never enrols such a pod in ambient;"
                        " the namespace must not be selected by an injection webhook"
                    )
                if workload.ambient and not pod_enrolled_in_ambient(pod):
                    pending.append(
                        f"{workload.key} (not enrolled by istio-cni: no"
                        f" {AMBIENT_REDIRECTION_ANNOTATION}=enabled; is istio-cni running on"
                        f" node {(pod.get('spec') or {}).get('nodeName') or '?'}?)"
                    )
                    continue
                self._pods[(workload.namespace, workload.app)] = pod
            if not pending:
                return True
            summary = ", ".join(pending)
            if summary != last_summary:
                self._progress(f"waiting for pods: {summary}")
                last_summary = summary
            return None

        try:
            poll(
                all_ready,
                timeout=self.options.ready_timeout.total_seconds(),
                interval=1.0,
                what="every pod of the run ready",
                transient=is_transient,
            )
        except WaitTimeout as timeout:
            raise MeshError(
                f"pods not ready after {self.options.ready_timeout}: {last_summary or '?'};"
                f" recent warnings: {self._recent_warnings()}{timeout.transient_note}"
            ) from None

    def _not_injected(self, pod: Mapping[str, Any], namespace: str) -> str:
        """Why a pod of an injected namespace came up without istio-proxy, and the fix."""
        revision = self.revision or DEFAULT_REVISION
        wanted = injection_labels(self.revision, injected=True)
        label = ", ".join(f"{k}={v}" for k, v in wanted.items())
        message = (
            f"pod {object_meta(pod).get('name')} in {namespace} has no istio-proxy: the"
            f" injection webhook of istiod revision {revision} did not inject it (namespace"
            f" labelled {label}; is that istiod running and its webhook configured?)"
        )
        revisions = self.istiod_revisions
        if revisions != (DEFAULT_REVISION,):
            message += (
                f"; istiod revisions in {self.options.istio_namespace}: {', '.join(revisions)}:"
                " pass --mesh-revision=REV to use the one whose injector serves your pods"
            )
        return message

    def _recent_warnings(self) -> str:
        notes: list[str] = []
        for namespace in self.names.all_real:
            with contextlib.suppress(MeshError):
                for event in self.api.list_events(namespace)[-20:]:
                    if event.get("type") == "Warning":
                        involved = (event.get("involvedObject") or {}).get("name")
                        notes.append(f"{namespace}/{involved}: {event.get('message')}")
        return "; ".join(notes[-5:]) or "none"

    def _pod(self, workload: Workload, *, refresh: bool = False) -> dict[str, Any]:
        key = (workload.namespace, workload.app)
        with self._lock:
            cached = self._pods.get(key)
        if cached is not None and not refresh:
            return cached
        pods = [
            p
            for p in self.api.list_pods(workload.namespace, f"app={workload.app}")
            if pod_is_ready(p)
        ]
        if not pods:
            raise MeshError(f"no ready pod for {workload.key}")
        with self._lock:
            self._pods[key] = pods[0]
        return pods[0]

    def _served(self, group: str, kind: str) -> list[str]:
        try:
            return self.api.served_versions(group, kind)
        except MeshError:
            return []
