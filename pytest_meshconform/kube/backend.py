# Still one large module: split planned (lifecycle, propagation, capture), see docs/architecture.md.
"""The kube backend of the Mesh protocol: Istio on kind or on a cluster the user names.

Lifecycle: ``KubeMesh(...).start()`` reads the control plane (istiod revision and version, mesh
config, limits), creates this run's namespaces (``mc-<run>-foo``, ``-bar``, ``-legacy``),
deploys sleep and httpbin in each and waits until every pod is ready and every sleep reaches its
httpbin. ``close()`` puts back any mesh-wide policy a test changed and deletes the run's
namespaces; nothing else on the cluster is ever written.

Every cluster call goes through ``KubeApi`` (``client.py``), which speaks API JSON, so this
module is plain logic over dicts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple, Protocol

from ..istio import Authorization, authorization_for
from ..mesh import (
    ExecResult,
    LogPositions,
    MeshError,
    PcapRecording,
    PropagationTimeout,
    Service,
    Workload,
)
from ..policy import Policy, PolicyError, parse_policy
from ..settings import format_duration
from . import MeshWideNotAllowed
from .authzstate import authz_mismatches, parse_inbound_authz
from .client import ExecSession, KubeApiError
from .envoystate import (
    EnvoyStateError,
    SidecarExpectation,
    expected_sidecar,
    mismatches,
    outbound_cluster_name,
    parse_config_dump,
)
from .execproto import capture_argv, capture_filter, is_pcap, strip_request_newline
from .istio import (
    IstioDataError,
    IstiodInfo,
    MeshConfigInfo,
    parse_mesh_config,
    select_istiod,
)
from .options import KubeOptions
from .topology import (
    CAPTURE_CONTAINER,
    HTTPBIN_PORT,
    INJECTED_NAMESPACES,
    LOGICAL_NAMESPACES,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    OWNER_ANNOTATION,
    LocalizedManifest,
    RunNamespaces,
    TopologyError,
    WorkloadImages,
    delocalize_manifest,
    localize_manifest,
    namespace_manifest,
    parse_owner,
    run_id_of,
    topology_services,
    topology_workloads,
    workload_manifests,
)

__all__ = ["KUBE_FEATURES", "ClusterApi", "KubeMesh", "MeshWideNotAllowed"]

Progress = Callable[[str], None]
PROXY_CONTAINER: Final = "istio-proxy"
# pkg/model TunnelLabel / TunnelHTTP: Istio's injection template sets it on a sidecar pod when
# the proxy metadata has ISTIO_META_ENABLE_HBONE=true; endpoints of such pods carry
# ``tunnel: http``, which a cluster's ``hbone`` transport socket match sends over HBONE
TUNNEL_LABEL: Final = "networking.istio.io/tunnel"
TUNNEL_HTTP: Final = "http"
# an example image with bash and tcpdump, named in the fix when the proxy image has neither
CAPTURE_IMAGE_EXAMPLE: Final = "docker.io/nicolaka/netshoot:v0.13"
ROOT_CERT_CONFIG_MAP: Final = "istio-ca-root-cert"
# The start of Envoy's admin 404 body (checked against Envoy 1.40's admin on an unknown path).
ENVOY_ADMIN_NOT_FOUND: Final = b"invalid path. admin commands are:"
POLICY_KINDS: Final = (
    ("security.istio.io", "PeerAuthentication"),
    ("networking.istio.io", "DestinationRule"),
    ("security.istio.io", "AuthorizationPolicy"),
)
# The kinds whose effect on the sidecars' Envoy config meshconform predicts (and so waits for).
PROPAGATION_KINDS: Final = frozenset(
    {"PeerAuthentication", "DestinationRule", "AuthorizationPolicy"}
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
# What the fixtures' mesh_features marker may ask of this backend; "mesh-wide" only when
# root-namespace policies are allowed (kind, or --mesh-allow-mesh-wide).
KUBE_FEATURES: Final = frozenset(
    {
        "mtls",
        "peer-authentication",
        "port-level-mtls",
        "destination-rule",
        "xfcc",
        "capture",
        "certificates",
        "rotation",
        "authorization",
    }
)
_LOG_LIMIT_BYTES: Final = 1 << 20
_POLL_S: Final = 0.25
# A propagation wait says what it waits for once it has taken this long (then on each change).
_PROGRESS_AFTER_S: Final = 5.0


class _Expected(NamedTuple):
    """What one sidecar must implement under the policies in force (the Istio model's)."""

    workload: Workload
    sidecar: SidecarExpectation
    authorization: Authorization
    # False: some policies could not be read (root namespace) or modelled (CUSTOM, AUDIT): the
    # RBAC filters must carry at least the modelled rules
    authz_exact: bool


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


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def pod_has_sidecar(pod: Mapping[str, Any]) -> bool:
    """istio-proxy as a container, or as a native sidecar (an init container)."""
    spec = pod.get("spec") or {}
    names = [c.get("name") for c in (spec.get("containers") or [])]
    names += [c.get("name") for c in (spec.get("initContainers") or [])]
    return PROXY_CONTAINER in names


def pod_proxy_image(pod: Mapping[str, Any]) -> str | None:
    spec = pod.get("spec") or {}
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        if container.get("name") == PROXY_CONTAINER:
            image = container.get("image")
            return str(image) if image else None
    return None


def image_is_distroless(image: str) -> bool:
    """Istio's distroless proxy (``global.variant=distroless``, the tag suffix
    ``-distroless``; what the ambient profile installs): no shell, no tcpdump."""
    head, _, last = image.split("@", 1)[0].rpartition("/")
    name, _, tag = last.partition(":")
    repository = f"{head}/{name}"
    return tag == "distroless" or tag.endswith("-distroless") or "distroless" in repository


def pod_accepts_hbone(pod: Mapping[str, Any]) -> bool:
    """Whether the pod's endpoints carry ``tunnel: http`` (its ``networking.istio.io/tunnel``
    label lists ``http``: a comma-separated list, pkg/model ``TunnelLabel``)."""
    value = (_meta(pod).get("labels") or {}).get(TUNNEL_LABEL)
    return isinstance(value, str) and TUNNEL_HTTP in [v.strip() for v in value.split(",")]


def pod_is_ready(pod: Mapping[str, Any]) -> bool:
    if _meta(pod).get("deletionTimestamp"):
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


def ephemeral_state(pod: Mapping[str, Any], name: str) -> tuple[str, str]:
    """(``running``/``waiting``/``terminated``/``absent``, detail) of an ephemeral container."""
    for container in (pod.get("status") or {}).get("ephemeralContainerStatuses") or []:
        if container.get("name") != name:
            continue
        state = container.get("state") or {}
        for phase in ("running", "terminated", "waiting"):
            if state.get(phase) is not None:
                detail = state[phase] if isinstance(state[phase], Mapping) else {}
                text = " ".join(
                    str(detail.get(k)) for k in ("reason", "message", "exitCode") if detail.get(k)
                )
                return phase, text
        return "waiting", ""
    return "absent", ""


class KubeMesh:
    """The ``kind`` / ``existing`` backend of the Mesh protocol."""

    def __init__(
        self,
        api: ClusterApi,
        *,
        backend: Literal["kind", "existing"],
        options: KubeOptions,
        cert_ttl: timedelta,
        keep: bool,
        names: RunNamespaces | None = None,
        progress: Progress | None = None,
        owner: str = "meshconform",
        run_dir: Path | None = None,
        on_close: Callable[[bool], list[str]] | None = None,
        cluster_name: str | None = None,
    ) -> None:
        self.api = api
        self.name = cluster_name or api.context  # for reports: kind cluster or kube context
        self._backend = backend
        self.options = options
        self.cert_ttl = cert_ttl
        self.keep = keep
        self.names = names or RunNamespaces(secrets.token_hex(3))
        self._progress = progress or (lambda message: None)
        self.owner = owner
        self.run_dir = run_dir
        self._on_close = on_close
        # kind: the cluster is meshconform's own; existing: only with --mesh-allow-mesh-wide.
        self.allow_mesh_wide = backend == "kind" or options.allow_mesh_wide
        self._istiod: IstiodInfo | None = None
        self._mesh_config: MeshConfigInfo | None = None
        self._root_pem: str | None = None
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}
        self._capture_ready: set[tuple[str, str]] = set()
        self._originals: dict[tuple[str, str, str, str], dict[str, Any] | None] = {}
        self._created_namespaces: list[str] = []
        self._lock = threading.RLock()
        self._closed = False
        self._workloads = topology_workloads(self.names)
        self._services = topology_services(self.names)

    # -- Mesh protocol: identity -------------------------------------------------------------

    @property
    def backend(self) -> str:
        return self._backend

    @property
    def istiod(self) -> IstiodInfo:
        if self._istiod is None:
            raise MeshError("the kube mesh is not started (call start() first)")
        return self._istiod

    @property
    def mesh_config(self) -> MeshConfigInfo:
        if self._mesh_config is None:
            raise MeshError("the kube mesh is not started (call start() first)")
        return self._mesh_config

    @property
    def trust_domain(self) -> str:
        return self.mesh_config.trust_domain

    @property
    def min_tls_version(self) -> str:
        """meshConfig.meshMTLS.minProtocolVersion of istiod's mesh config (MeshMtlsAware)."""
        return self.mesh_config.min_tls_version

    @property
    def root_namespace(self) -> str:
        return self.mesh_config.root_namespace

    @property
    def root_cert(self) -> str:
        if self._root_pem is None:
            self._root_pem = self._read_root_cert()
        return self._root_pem

    @property
    def version(self) -> str:
        istiod = self.istiod
        revision = "" if istiod.revision == "default" else f" (revision {istiod.revision})"
        return f"istio {istiod.version}{revision}"

    @property
    def istio_version(self) -> str:
        """The bare Istio version (``1.25.1``), for ``mesh_min_version``."""
        return self.istiod.version

    @property
    def revision(self) -> str | None:
        """The Istio revision under test; None for the default one."""
        if self._istiod is None or self._istiod.revision == "default":
            return None
        return self._istiod.revision

    @property
    def features(self) -> frozenset[str]:
        return KUBE_FEATURES | ({"mesh-wide"} if self.allow_mesh_wide else set())

    @property
    def run_id(self) -> str:
        return self.names.run_id

    def workloads(self) -> Sequence[Workload]:
        return self._workloads

    def workload(self, name: str, namespace: str) -> Workload:
        """``namespace`` may be logical (``foo``) or real; the result carries the real one."""
        try:
            real = self.names.resolve(namespace)
        except TopologyError as error:
            raise MeshError(str(error)) from error
        for workload in self._workloads:
            if workload.name == name and workload.namespace == real:
                return workload
        known = ", ".join(sorted({w.name for w in self._workloads}))
        raise MeshError(f"no workload {name!r} in {namespace} (have: {known})")

    def services(self) -> Sequence[Service]:
        return self._services

    def logical_namespace(self, target: Workload | str) -> str:
        """foo/bar/legacy for this run's namespaces (given a workload or a namespace name);
        any other namespace (the root namespace) as it is. For comparing policy keys."""
        namespace = target.namespace if isinstance(target, Workload) else target
        return self.names.logical_of(namespace) or namespace

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> KubeMesh:
        started = time.monotonic()
        try:
            self.detect_istio()
            self._sweep_leftovers()
            self._create_topology()
            self._wait_pods_ready()
            self._check_capture_image()
            self._root_pem = self._read_root_cert()
            self._wait_reachable()
        except BaseException:
            try:
                self.close()  # with --mesh-keep, what failed stays there to be looked at
            except Exception as cleanup:
                self._progress(f"cleanup after the failed start: {cleanup}")
            raise
        self._progress(
            f"kube mesh {self.run_id} ready in {time.monotonic() - started:.0f}s:"
            f" {self.version}, trust domain {self.trust_domain}, namespaces"
            f" {', '.join(self.names.all_real)} (context {self.api.context})"
        )
        return self

    def __enter__(self) -> KubeMesh:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def detect_istio(self) -> IstiodInfo:
        """Read istiod and its mesh config; refuse what meshconform cannot work with."""
        namespace = self.options.istio_namespace
        deployments = self.api.list_deployments(namespace, "app=istiod")
        try:
            istiod = select_istiod(deployments, self.options.revision)
        except IstioDataError as error:
            raise MeshError(
                f"no usable Istio in {namespace} ({self.api.context}): {error}"
            ) from None
        config_map = self.api.read_config_map(namespace, istiod.mesh_config_map)
        text = str(((config_map or {}).get("data") or {}).get("mesh") or "")
        try:
            self._mesh_config = parse_mesh_config(text, namespace)
        except IstioDataError as error:
            raise MeshError(f"configmap {namespace}/{istiod.mesh_config_map}: {error}") from None
        self._istiod = istiod
        if self.cert_ttl > istiod.max_workload_cert_ttl:
            self._progress(
                "istiod caps workload certificates at MAX_WORKLOAD_CERT_TTL="
                f"{format_duration(istiod.max_workload_cert_ttl)}; --mesh-cert-ttl"
                f" {format_duration(self.cert_ttl)} will be cut to that"
            )
        return istiod

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
                if run_id_of(ns) != self.run_id and not _meta(ns).get("deletionTimestamp")
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
        ns_names = [str(_meta(ns).get("name")) for ns in others]
        if self._backend == "kind":
            stale_wide = [obj for obj in wide if run_id_of(obj) not in live_runs]
            for ns in stale:
                self.api.delete_namespace(str(_meta(ns).get("name")))
            for obj in stale_wide:
                self.api.delete(
                    str(obj.get("apiVersion")),
                    str(obj.get("kind")),
                    self.root_namespace,
                    str(_meta(obj).get("name")),
                )
            swept = [str(_meta(ns).get("name")) for ns in stale]
            swept += [f"{o.get('kind')} {_meta(o).get('name')}" for o in stale_wide]
            if swept:
                self._progress(f"swept leftovers of earlier runs: {', '.join(swept)}")
            if live:
                running = ", ".join(
                    f"{_meta(ns).get('name')} ({self._owner_of(ns)})" for ns in live
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
            listed = ", ".join(f"{o.get('kind')} {_meta(o).get('name')}" for o in wide)
            self._progress(
                f"WARNING: mesh-wide policies left by a meshconform run in {self.root_namespace}:"
                f" {listed}; they change mTLS for the whole mesh"
            )

    @staticmethod
    def _owner_of(namespace: Mapping[str, Any]) -> str:
        annotations = _meta(namespace).get("annotations") or {}
        return str(annotations.get(OWNER_ANNOTATION) or "no owner")

    def _run_is_dead(self, namespace: Mapping[str, Any]) -> bool:
        """The run that made ``namespace`` has ended: its owner process on this host is gone.

        Namespaces of other hosts count as alive (their process cannot be checked from here),
        namespaces without an owner annotation as dead (every run writes one).
        """
        annotations = _meta(namespace).get("annotations") or {}
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

    def _create_topology(self) -> None:
        images = WorkloadImages(self.options.sleep_image, self.options.httpbin_image)
        self._progress(f"creating namespaces {', '.join(self.names.all_real)} and workloads")
        for logical in LOGICAL_NAMESPACES:
            manifest = namespace_manifest(self.names, logical, self.options.revision, self.owner)
            self.api.create_namespace(manifest)
            self._created_namespaces.append(manifest["metadata"]["name"])
        for logical in LOGICAL_NAMESPACES:
            for manifest in workload_manifests(self.names, logical, images, self.cert_ttl):
                self.api.apply(manifest)

    def _deadline(self, timeout: timedelta | float) -> float:
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        return time.monotonic() + seconds

    def _wait_pods_ready(self) -> None:
        deadline = self._deadline(self.options.ready_timeout)
        last_summary = ""
        while True:
            pending: list[str] = []
            for workload in self._workloads:
                pods = self.api.list_pods(workload.namespace, f"app={workload.app}")
                live = [p for p in pods if not _meta(p).get("deletionTimestamp")]
                for pod in live:
                    problem = pod_problem(pod)
                    if problem:
                        raise MeshError(
                            f"pod {_meta(pod).get('name')} of {workload.key}: {problem}"
                            f"{image_hint(problem)}"
                        )
                ready = [p for p in live if pod_is_ready(p)]
                if not ready:
                    state = pod_waiting_summary(live[0]) if live else "no pod yet"
                    pending.append(f"{workload.key} ({state})")
                    continue
                pod = ready[0]
                if workload.has_sidecar and not pod_has_sidecar(pod):
                    revision = (
                        f" of revision {self.options.revision}" if self.options.revision else ""
                    )
                    raise MeshError(
                        f"pod {_meta(pod).get('name')} in {workload.namespace} has no"
                        f" istio-proxy: the injection webhook did not inject it (is istiod"
                        f"{revision} running and its webhook configured?)"
                    )
                self._pods[(workload.namespace, workload.app)] = pod
            if not pending:
                return
            summary = ", ".join(pending)
            if summary != last_summary:
                self._progress(f"waiting for pods: {summary}")
                last_summary = summary
            if time.monotonic() > deadline:
                raise MeshError(
                    f"pods not ready after {self.options.ready_timeout}: {summary};"
                    f" recent warnings: {self._recent_warnings()}"
                )
            time.sleep(1.0)

    def _recent_warnings(self) -> str:
        notes: list[str] = []
        for namespace in self.names.all_real:
            with contextlib.suppress(MeshError):
                for event in self.api.list_events(namespace)[-20:]:
                    if event.get("type") == "Warning":
                        involved = (event.get("involvedObject") or {}).get("name")
                        notes.append(f"{namespace}/{involved}: {event.get('message')}")
        return "; ".join(notes[-5:]) or "none"

    def _read_root_cert(self) -> str:
        namespace = self.names.real(INJECTED_NAMESPACES[0])
        config_map = self.api.read_config_map(namespace, ROOT_CERT_CONFIG_MAP)
        pem = ((config_map or {}).get("data") or {}).get("root-cert.pem")
        if not pem:
            raise MeshError(
                f"configmap {namespace}/{ROOT_CERT_CONFIG_MAP} has no root-cert.pem: istiod has"
                " not published the mesh root to this namespace"
            )
        return str(pem)

    def _wait_reachable(self) -> None:
        """Every sleep reaches its own namespace's httpbin: the data path works end to end."""
        deadline = self._deadline(self.options.ready_timeout)
        for logical in LOGICAL_NAMESPACES:
            sleep = self.workload("sleep", logical)
            url = f"http://httpbin.{sleep.namespace}.svc.cluster.local:{HTTPBIN_PORT}/status/200"
            argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5", url]
            while True:
                result = self.exec(sleep, argv, timeout=15)
                if result.stdout.strip() == b"200":
                    break
                if time.monotonic() > deadline:
                    raise MeshError(
                        f"{sleep.key} cannot reach {url}: curl exit {result.returncode},"
                        f" status {result.stdout.decode(errors='replace')!r},"
                        f" {result.stderr.decode(errors='replace').strip()}"
                    )
                time.sleep(1.0)

    def close(self, *, force: bool = False) -> None:
        """Restore mesh-wide policies, delete the run's namespaces (unless kept), then the
        cluster callback (kind). Does everything it can, then reports what failed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        failures: list[str] = []
        try:
            self._restore_mesh_wide()
        except Exception as error:
            failures.append(f"restoring mesh-wide policies: {error}")
        keep = self.keep and not force
        if keep:
            self._progress(
                f"--mesh-keep: left namespaces {', '.join(self._created_namespaces) or '(none)'}"
                f" in context {self.api.context}; delete them with: kubectl delete ns -l"
                f" {self.names.selector}"
            )
            if self.run_dir is not None and self.run_dir.exists():
                self._progress(f"--mesh-keep: left this run's captures in {self.run_dir}")
        else:
            for namespace in self._created_namespaces:
                try:
                    self.api.delete_namespace(namespace)
                except Exception as error:
                    failures.append(f"deleting namespace {namespace}: {error}")
            if self._created_namespaces:
                self._progress(
                    f"deleting namespaces {', '.join(self._created_namespaces)} (in the background)"
                )
        if self.run_dir is not None and not keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if self._on_close is not None:
            try:
                for message in self._on_close(keep):
                    self._progress(message)
            except Exception as error:
                failures.append(str(error))
        if failures:
            raise MeshError("kube mesh cleanup incomplete: " + "; ".join(failures))

    def _restore_mesh_wide(self) -> None:
        """Put every root-namespace object a test touched back as it was before the run."""
        for key, original in list(self._originals.items()):
            group, kind, namespace, name = key
            versions = self._served(group, kind)
            api_version = f"{group}/{versions[0]}" if versions else f"{group}/v1"
            current = self.api.get(api_version, kind, namespace, name)
            if original is None:
                if current is not None:
                    self.api.delete(api_version, kind, namespace, name)
                    self._progress(f"removed mesh-wide {kind} {namespace}/{name} (restored)")
            else:
                body = delocalize_manifest(original, self.names, self.root_namespace)
                body["metadata"]["namespace"] = namespace
                if current is None:
                    self.api.apply(body)
                else:
                    body["metadata"]["resourceVersion"] = _meta(current).get("resourceVersion")
                    self.api.replace(body)
                self._progress(f"restored mesh-wide {kind} {namespace}/{name}")
            del self._originals[key]

    # -- pods --------------------------------------------------------------------------------

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

    def pod_name(self, workload: Workload) -> str:
        return str(_meta(self._pod(workload)).get("name"))

    def pod_ip(self, workload: Workload) -> str:
        """The pod's IP (``status.podIP``): the client address a server's capture shows."""
        ip = (self._pod(workload).get("status") or {}).get("podIP")
        if not ip:
            raise MeshError(f"pod of {workload.key} has no status.podIP")
        return str(ip)

    def _run(
        self, workload: Workload, container: str, argv: Sequence[str], timeout: float
    ) -> ExecResult:
        session = self._open(workload, container, argv)
        try:
            if not session.wait_finished(timeout):
                raise MeshError(f"{session.description} did not finish within {timeout}s")
            status = session.status()
            if status.returncode is None:
                raise MeshError(f"{session.description} did not run: {status.message}")
            return ExecResult(status.returncode, bytes(session.stdout), bytes(session.stderr))
        finally:
            session.close()

    def _open(
        self, workload: Workload, container: str, argv: Sequence[str], *, stdin: bool = False
    ) -> ExecSession:
        pod = self.pod_name(workload)
        try:
            return self.api.open_exec(workload.namespace, pod, container, argv, stdin=stdin)
        except KubeApiError as error:
            if error.status != 404:
                raise
        # The pod was replaced (evicted, restarted): find the new one once.
        pod = str(_meta(self._pod(workload, refresh=True)).get("name"))
        return self.api.open_exec(workload.namespace, pod, container, argv, stdin=stdin)

    # -- Mesh protocol: actions --------------------------------------------------------------

    def exec(self, workload: Workload, argv: Sequence[str], timeout: float = 30.0) -> ExecResult:
        """Run argv in the workload's app container (``sleep`` or ``httpbin``)."""
        return self._run(workload, workload.app, argv, timeout)

    def envoy_admin(self, workload: Workload, path: str) -> bytes:
        """GET an Envoy admin path through ``pilot-agent request`` in istio-proxy."""
        if not workload.has_sidecar:
            raise MeshError(f"{workload.key} has no sidecar")
        argv = ["pilot-agent", "request", "GET", path.lstrip("/")]
        result = self._run(workload, PROXY_CONTAINER, argv, 30.0)
        if result.returncode != 0:
            raise MeshError(
                f"Envoy admin {path} on {workload.key}: pilot-agent exited {result.returncode}:"
                f" {result.stderr.decode(errors='replace').strip()[:500]}"
            )
        if result.stdout.startswith(ENVOY_ADMIN_NOT_FOUND):
            # pilot-agent request lets a 404 pass with exit 0 (pilot/pkg/request/command.go)
            raise MeshError(
                f"Envoy admin {path} on {workload.key}: Envoy answered 404"
                f" ({ENVOY_ADMIN_NOT_FOUND.decode()} ...): no such admin path"
            )
        return strip_request_newline(result.stdout)

    def logs(self, workload: Workload) -> dict[str, str]:
        """App and sidecar logs (first MiB each), for failure reports; never raises."""
        found: dict[str, str] = {}
        containers = [workload.app] + ([PROXY_CONTAINER] if workload.has_sidecar else [])
        try:
            pod = self.pod_name(workload)
        except MeshError as error:
            return {"error": str(error)}
        for container in containers:
            try:
                found[container] = self.api.pod_log(
                    workload.namespace, pod, container, _LOG_LIMIT_BYTES
                )
            except MeshError as error:
                found[container] = f"<could not read logs: {error}>"
        return found

    def log_positions(self) -> LogPositions:
        """Now: `logs_since` asks the API server for the lines written since then."""
        return LogPositions(at=time.time())

    def logs_since(self, workload: Workload, positions: LogPositions) -> dict[str, str]:
        """App and sidecar log lines of the test's window (Kubernetes' `sinceSeconds`, rounded
        up, plus a second for the clock: a line may be early, none is missed); never raises."""
        since = max(1, math.ceil(time.time() - positions.at) + 1)
        found: dict[str, str] = {}
        containers = [workload.app] + ([PROXY_CONTAINER] if workload.has_sidecar else [])
        try:
            pod = self.pod_name(workload)
        except MeshError as error:
            return {"error": str(error)}
        for container in containers:
            try:
                found[container] = self.api.pod_log(
                    workload.namespace, pod, container, _LOG_LIMIT_BYTES, since_seconds=since
                )
            except MeshError as error:
                found[container] = f"<could not read logs: {error}>"
        return found

    # -- policies ------------------------------------------------------------------------------

    def _localize(self, manifest: Mapping[str, Any], action: str) -> LocalizedManifest:
        try:
            localized = localize_manifest(manifest, self.names, self.root_namespace)
        except TopologyError as error:
            raise MeshError(f"cannot {action} policy: {error}") from None
        if localized.kind not in PROPAGATION_KINDS:
            raise MeshError(
                f"cannot {action} {localized.describe}: the kube backend waits for a policy by"
                " checking each sidecar's Envoy config against what PeerAuthentication,"
                " DestinationRule and AuthorizationPolicy imply, and cannot tell when a"
                f" {localized.kind} has arrived"
            )
        if localized.scope == "mesh-wide" and not self.allow_mesh_wide:
            raise MeshWideNotAllowed(
                f"{localized.describe} is mesh-wide (Istio root namespace {self.root_namespace}):"
                f" it would change mTLS for every workload of context {self.api.context}; pass"
                " --mesh-allow-mesh-wide to allow it (or deselect with -m 'not mesh_wide')"
            )
        return localized

    def _remember_original(self, localized: LocalizedManifest) -> None:
        if localized.scope != "mesh-wide" or localized.key in self._originals:
            return
        self._originals[localized.key] = self.api.get(
            f"{localized.group}/{localized.version}",
            localized.kind,
            localized.namespace,
            localized.name,
        )

    def apply(self, manifest: Mapping[str, Any]) -> None:
        """Server-side apply, then wait until every sidecar of the run implements the
        policies now in force (see ``_wait_propagated``)."""
        localized = self._localize(manifest, "apply")
        with self._lock:
            self._remember_original(localized)
        self.api.apply(localized.manifest)
        self._wait_propagated(localized, "applied")

    def delete(self, manifest: Mapping[str, Any]) -> None:
        localized = self._localize(manifest, "delete")
        with self._lock:
            self._remember_original(localized)
        api_version = f"{localized.group}/{localized.version}"
        current = self.api.get(api_version, localized.kind, localized.namespace, localized.name)
        if current is None:
            return
        if self.api.delete(api_version, localized.kind, localized.namespace, localized.name):
            self._wait_propagated(localized, "deleted")

    def policies(self) -> Sequence[Mapping[str, Any]]:
        """Istio policies in force for this run: its namespaces' (and the root namespace's when
        mesh-wide changes are allowed), written with logical namespaces; apply() takes them
        back as they are."""
        found: list[dict[str, Any]] = []
        # The root namespace only when this run may change it: otherwise there is nothing
        # there to restore, and a user on a shared cluster may not even read it.
        wide = (self.root_namespace,) if self.allow_mesh_wide else ()
        for group, kind in POLICY_KINDS:
            versions = self._served(group, kind)
            if not versions:
                continue
            for namespace in (*self.names.all_real, *wide):
                for obj in self.api.list_objects(f"{group}/{versions[0]}", kind, namespace):
                    found.append(delocalize_manifest(obj, self.names, self.root_namespace))
        return found

    def _served(self, group: str, kind: str) -> list[str]:
        try:
            return self.api.served_versions(group, kind)
        except MeshError:
            return []

    # -- propagation -----------------------------------------------------------------------------

    def _policies_in_force(self) -> tuple[list[Policy], bool, bool]:
        """PeerAuthentications, DestinationRules and AuthorizationPolicies that can affect this
        run's sidecars (its namespaces' and the root namespace's), as istiod sees them, with
        real namespaces; whether the root namespace could be read (a user on a shared cluster
        may not); and whether every AuthorizationPolicy could be modelled (a platform's own
        CUSTOM or AUDIT policy in the root namespace cannot: the sidecars' RBAC filters are
        then only checked to carry the modelled ones)."""
        found: list[Policy] = []
        root_known = True
        authz_modelled = True
        for group, kind in POLICY_KINDS:
            if kind not in PROPAGATION_KINDS:
                continue
            versions = self._served(group, kind)
            if not versions:
                continue
            for namespace in (*self.names.all_real, self.root_namespace):
                try:
                    objects = self.api.list_objects(f"{group}/{versions[0]}", kind, namespace)
                except KubeApiError:
                    if namespace != self.root_namespace:
                        raise
                    root_known = False
                    continue
                for obj in objects:
                    try:
                        policy = parse_policy(obj)
                    except PolicyError as error:
                        if kind == "AuthorizationPolicy":
                            authz_modelled = False
                            continue
                        raise MeshError(
                            f"cannot predict what the sidecars must do: {error}"
                        ) from None
                    found.append(policy)
        return found, root_known, authz_modelled

    def _expectations(self) -> dict[str, _Expected]:
        """Per sidecar of the run, what its Envoy must implement under the policies in force:
        mTLS and clusters (``envoystate``) and the AuthorizationPolicy RBAC filters
        (``authzstate``), both from the Istio model."""
        policies, root_known, authz_modelled = self._policies_in_force()
        expected: dict[str, _Expected] = {}
        for workload in self._workloads:
            if not workload.has_sidecar:
                continue
            labels = _meta(self._pod(workload)).get("labels") or workload.labels
            try:
                labelled = dataclasses.replace(
                    workload, labels={str(k): str(v) for k, v in labels.items()}
                )
                expected[workload.key] = _Expected(
                    workload,
                    expected_sidecar(
                        policies,
                        namespace=workload.namespace,
                        labels={str(k): str(v) for k, v in labels.items()},
                        container_ports=workload.container_ports,
                        services=self._services,
                        root_namespace=self.root_namespace,
                        root_known=root_known,
                        workloads=self._workloads,
                        name=workload.name,
                        auto_mtls=self.mesh_config.enable_auto_mtls,
                    ),
                    authorization_for(labelled, policies, root_namespace=self.root_namespace),
                    root_known and authz_modelled,
                )
            except (PolicyError, EnvoyStateError) as error:
                raise MeshError(f"cannot predict what {workload.key} must do: {error}") from None
        return expected

    def _sidecar_lag(self, expected: _Expected) -> str | None:
        """None when the sidecar's own Envoy config implements ``expected``, else what it
        has instead (or why it could not be read)."""
        try:
            dump = self.envoy_admin(expected.workload, "/config_dump")
            state = parse_config_dump(dump)
        except MeshError as error:
            return f"config_dump not readable: {error}"
        except EnvoyStateError as error:
            return f"config_dump not understood: {error}"
        found = mismatches(state, expected.sidecar) + authz_mismatches(
            parse_inbound_authz(dump),
            expected.authorization,
            root_known=expected.authz_exact,
        )
        if not found:
            return None
        return "; ".join(found) + f" [{state.version}]"

    def _wait_propagated(self, localized: LocalizedManifest, verb: str) -> None:
        """Wait until every sidecar of the run implements, in its own Envoy config
        (``/config_dump``), the inbound mTLS modes and outbound cluster TLS that the Istio
        model (``pytest_meshconform.istio``) predicts for the policies now in force. Works on
        every Istio version; raises PropagationTimeout naming each lagging sidecar, what it has and
        what was expected."""
        timeout = self.options.propagation_timeout
        deadline = self._deadline(timeout)
        started = time.monotonic()
        pending = self._expectations()
        lagging: dict[str, str] = {}
        shown = ""
        while True:
            lagging = {}
            for key, expectation in list(pending.items()):
                lag = self._sidecar_lag(expectation)
                if lag is None:
                    del pending[key]  # it has the change; later pushes cannot undo it
                else:
                    lagging[key] = lag
            if not pending:
                return
            waited = time.monotonic() - started
            if time.monotonic() > deadline:
                raise PropagationTimeout(
                    f"{localized.describe} {verb} but not every sidecar implements it after"
                    f" {waited:.0f}s (--mesh-propagation-timeout {timeout}): "
                    + "; ".join(f"{key}: {state}" for key, state in sorted(lagging.items()))
                )
            summary = ", ".join(sorted(lagging))
            if waited >= _PROGRESS_AFTER_S and summary != shown:
                self._progress(
                    f"waiting {waited:.0f}s for {localized.describe} ({verb}) to reach {summary}"
                )
                shown = summary
            time.sleep(_POLL_S)

    # -- capture -------------------------------------------------------------------------------

    def _check_capture_image(self) -> None:
        """Refuse, before any test runs, a capture image that cannot start: without
        --mesh-capture-image the capture container borrows the proxy image, and Istio's
        distroless proxy has neither bash nor tcpdump."""
        if self.options.capture_image:
            return
        for workload in self._workloads:
            image = pod_proxy_image(self._pod(workload)) if workload.has_sidecar else None
            if image and image_is_distroless(image):
                raise MeshError(
                    f"the proxy image of {workload.key} is {image}, a distroless image (Istio's"
                    " global.variant=distroless, the ambient profile's default) without bash"
                    " and tcpdump, so captures cannot borrow it: pass"
                    f" --mesh-capture-image=IMAGE with both (e.g. {CAPTURE_IMAGE_EXAMPLE},"
                    " or a copy in your registry)"
                )

    def hbone_tunnel(self, client: Workload, server: Workload) -> bool:
        """Whether ``client``'s sidecar sends mesh traffic for ``server`` over HBONE (mTLS to
        port 15008, HTTP/2 CONNECT) rather than to the server port: the server's pod carries
        ``networking.istio.io/tunnel: http`` and the client's Envoy cluster for the server's
        Service has the ``hbone`` transport socket match (istiod's PILOT_ENABLE_SENDING_HBONE,
        on by default in the ambient profile; cluster_tls.go ``applyHBONETransportSocketMatches``).
        Read from the pod and from the client's own config_dump."""
        if not client.has_sidecar or not pod_accepts_hbone(self._pod(server)):
            return False
        services = [
            s
            for s in self._services
            if s.namespace == server.namespace and s.selector_app == server.app
        ]
        if not services:
            raise MeshError(f"no Service of the run selects {server.key}")
        try:
            state = parse_config_dump(self.envoy_admin(client, "/config_dump"))
        except EnvoyStateError as error:
            raise MeshError(f"config_dump of {client.key} not understood: {error}") from None
        name = outbound_cluster_name(services[0].fqdn, services[0].port)
        cluster = state.clusters.get(name)
        if cluster is None:
            raise MeshError(f"{client.key} has no cluster {name}: is it ready?")
        return cluster.hbone

    def _capture_image(self, pod: Mapping[str, Any]) -> str:
        if self.options.capture_image:
            return self.options.capture_image
        image = pod_proxy_image(pod)
        if image is None:  # a pod without sidecar: borrow the mesh's proxy image
            for workload in self._workloads:
                if workload.has_sidecar:
                    image = pod_proxy_image(self._pod(workload))
                    if image:
                        break
        if image is None:
            raise MeshError("no proxy image to capture with: pass --mesh-capture-image=IMAGE")
        return image

    def _ensure_capture_container(self, workload: Workload) -> dict[str, Any]:
        pod = self._pod(workload)
        name = str(_meta(pod).get("name"))
        key = (workload.namespace, name)
        if key in self._capture_ready:
            return pod
        state, _ = ephemeral_state(self.api.read_pod(workload.namespace, name), CAPTURE_CONTAINER)
        if state == "absent":
            image = self._capture_image(pod)
            self._progress(f"adding capture container ({image}) to {workload.key}")
            self.api.add_ephemeral_container(
                workload.namespace, name, capture_container_spec(image)
            )
        deadline = self._deadline(120.0)
        while True:
            current = self.api.read_pod(workload.namespace, name)
            state, detail = ephemeral_state(current, CAPTURE_CONTAINER)
            if state == "running":
                self._capture_ready.add(key)
                return current
            problem = pod_problem(current)
            if state == "terminated" or problem:
                raise MeshError(
                    f"capture container in {workload.key} {state}: {problem or detail};"
                    " it needs an image with bash and tcpdump (--mesh-capture-image) and"
                    " NET_RAW/NET_ADMIN allowed in the namespace"
                )
            if time.monotonic() > deadline:
                raise MeshError(f"capture container in {workload.key} not running after 120s")
            time.sleep(_POLL_S)

    @contextlib.contextmanager
    def capture(self, workload: Workload, port: int | None = None) -> Iterator[PcapRecording]:
        """tcpdump on the pod's eth0 from an ephemeral container, for the block's duration."""
        recording = PcapRecording(workload=workload, port=port)
        pod = self._ensure_capture_container(workload)
        marker_host = str((pod.get("status") or {}).get("hostIP") or "")
        if not marker_host:
            raise MeshError(f"pod of {workload.key} has no status.hostIP for the capture marker")
        argv = capture_argv(capture_filter(port, marker_host), marker_host)
        session = self.api.open_exec(
            workload.namespace, str(_meta(pod).get("name")), CAPTURE_CONTAINER, argv, stdin=True
        )
        token = f"meshconform-end-{secrets.token_hex(8)}"
        try:
            if not session.wait_for(lambda s: b"listening on" in s.stderr, 20.0):
                raise MeshError(
                    f"tcpdump in {workload.key} did not start listening:"
                    f" {bytes(session.stderr).decode(errors='replace').strip()[:300]}"
                )
            yield recording
            session.write_stdin(f"{token}\n".encode())
            if not session.wait_for(lambda s: token.encode() in s.stdout, 10.0):
                raise MeshError(
                    f"tcpdump in {workload.key} never recorded the end-of-capture marker to"
                    f" {marker_host}: {bytes(session.stderr).decode(errors='replace')[-300:]}"
                )
            session.write_stdin(b"stop\n")
            if not session.wait_finished(10.0):
                raise MeshError(f"tcpdump in {workload.key} did not stop within 10s")
        finally:
            session.close()
            recording.tool_stderr = bytes(session.stderr).decode(errors="replace")
        pcap = bytes(session.stdout)
        if not is_pcap(pcap):
            raise MeshError(
                f"capture in {workload.key} did not produce a pcap (first bytes {pcap[:8]!r}):"
                f" {recording.tool_stderr[-300:]}"
            )
        recording.pcap = pcap
        recording.path = self._keep_pcap(workload, pcap)

    def _keep_pcap(self, workload: Workload, pcap: bytes) -> Path | None:
        if self.run_dir is None:
            return None
        directory = self.run_dir / "captures"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{workload.key}-{int(time.time() * 1000)}-{secrets.token_hex(2)}.pcap"
        path.write_bytes(pcap)
        return path


def capture_container_spec(image: str) -> dict[str, Any]:
    """The ephemeral container that shares the pod's network namespace and runs tcpdump.

    It idles (``sleep``, which GNU and busybox both accept with a plain number) and each
    capture execs the capture script into it: ephemeral containers cannot be removed, so one
    per pod is reused.
    """
    return {
        "name": CAPTURE_CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sleep", "2147483647"],
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "capabilities": {"add": ["NET_RAW", "NET_ADMIN"]},
        },
    }


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
