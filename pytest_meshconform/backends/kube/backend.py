"""The kube backend of the Mesh protocol: Istio on kind or on a cluster the user names.

Lifecycle: ``KubeMesh(...).start()`` reads the control plane (istiod revision and version, mesh
config, limits), creates this run's namespaces (``mc-<run>-foo``, ``-bar``, ``-legacy``),
deploys sleep and httpbin in each and waits until every pod is ready and every sleep reaches its
httpbin. ``close()`` puts back any mesh-wide policy a test changed and deletes the run's
namespaces; nothing else on the cluster is ever written.

This module keeps ``KubeMesh`` and the Mesh protocol (identity, start and close, exec, Envoy
admin, logs, policies); its rooms are mixins: ``lifecycle.py`` (namespaces, sweeping of dead
runs, pods readiness), ``propagation.py`` (policies in force, expectations, the wait until the
sidecars match) and ``capture.py`` (the ephemeral tcpdump container, its image, pcaps).

Every cluster call goes through ``KubeApi`` (``client.py``), which speaks API JSON, so this
module is plain logic over dicts.
"""

from __future__ import annotations

import math
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Literal

from pytest_meshconform.backends.kube.capture import KubeCapture
from pytest_meshconform.backends.kube.client import ExecSession, KubeApiError, is_transient
from pytest_meshconform.backends.kube.control_plane import (
    IstioDataError,
    IstiodInfo,
    MeshConfigInfo,
    cert_ttl_problem,
    istiod_revisions,
    parse_mesh_config,
    select_istiod,
)
from pytest_meshconform.backends.kube.execproto import strip_request_newline
from pytest_meshconform.backends.kube.lifecycle import (
    POLICY_KINDS,
    PROXY_CONTAINER,
    ClusterApi,
    object_meta,
)
from pytest_meshconform.backends.kube.options import KubeOptions
from pytest_meshconform.backends.kube.propagation import PROPAGATION_KINDS, KubePropagation
from pytest_meshconform.backends.kube.topology import (
    HTTPBIN_PORT,
    INJECTED_NAMESPACES,
    LOGICAL_NAMESPACES,
    LocalizedManifest,
    RunNamespaces,
    TopologyError,
    delocalize_manifest,
    dns_domain_from_resolv_conf,
    localize_manifest,
    topology_services,
    topology_workloads,
)
from pytest_meshconform.backends.kube.ztunnel import (
    ISTIO_CNI_LABEL,
    ZTUNNEL_LABEL,
    ambient_found,
    read_ztunnel_dump,
    ztunnel_on_node,
    ztunnel_pods,
)
from pytest_meshconform.backends.registry import Progress
from pytest_meshconform.istio.ambient import DATAPLANE_MODE_LABEL
from pytest_meshconform.mesh import (
    DEFAULT_DNS_DOMAIN,
    ExecResult,
    LogPositions,
    MeshError,
    MeshWideNotAllowed,
    Service,
    Waypoint,
    Workload,
)
from pytest_meshconform.settings import Dataplane
from pytest_meshconform.waiting import WaitTimeout, poll

__all__ = ["KUBE_FEATURES", "KubeMesh"]

ROOT_CERT_CONFIG_MAP: Final = "istio-ca-root-cert"
# The start of Envoy's admin 404 body (checked against Envoy 1.40's admin on an unknown path).
ENVOY_ADMIN_NOT_FOUND: Final = b"invalid path. admin commands are:"
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
_READ_RETRY_S: Final = 30.0  # how long a one-off read at start retries transient API errors


class KubeMesh(KubeCapture, KubePropagation):
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
        artifacts: Path | None = None,
        dataplane: Dataplane = "sidecar",
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
        self.artifacts = artifacts  # --mesh-artifacts: a propagation timeout's dumps go here
        self._propagation_timeouts = 0
        self._on_close = on_close
        # kind: the cluster is meshconform's own; existing: only with --mesh-allow-mesh-wide.
        self.allow_mesh_wide = backend == "kind" or options.allow_mesh_wide
        self._istiod: IstiodInfo | None = None
        self._istiod_revisions: tuple[str, ...] = ()
        self.ambient_found: str | None = None  # what of ambient the cluster runs (header)
        self.runs_ztunnel = False  # ztunnel pods in Istio's namespace (after start)
        self._mesh_config: MeshConfigInfo | None = None
        self._root_pem: str | None = None
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}
        self._capture_ready: set[tuple[str, str]] = set()
        self._originals: dict[tuple[str, str, str, str], dict[str, Any] | None] = {}
        self._created_namespaces: list[str] = []
        self._lock = threading.RLock()
        self._closed = False
        # the cluster's DNS domain, read from a pod at start (Kubernetes' default until then)
        self.dns_domain = DEFAULT_DNS_DOMAIN
        self.dataplane: Dataplane = dataplane  # foo and bar: sidecars, or enrolled in ambient
        self._workloads = topology_workloads(self.names, dataplane)
        self._services = topology_services(self.names)
        self._waypoints: tuple[Waypoint, ...] = ()  # planned at start (waypoints.py)
        self.waypoint_absence: str | None = None

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
    def istiod_revisions(self) -> tuple[str, ...]:
        """Every istiod revision installed beside the one under test (after start)."""
        return self._istiod_revisions

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
        ambient = f" ({self.ambient_found})" if self.ambient_found else ""
        return f"istio {istiod.version}{revision}{ambient}"

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
        """``mesh-wide`` when root-namespace policies are allowed; ``waypoint`` when the run
        has a waypoint (an ambient run on a cluster serving the Gateway API)."""
        extra = {"mesh-wide"} if self.allow_mesh_wide else set()
        if self._waypoints:
            extra.add("waypoint")
        return KUBE_FEATURES | extra

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
            self._plan_waypoints()
            self._sweep_leftovers()
            self._create_topology()
            self._apply_waypoints()
            self._wait_pods_ready()
            self._wait_waypoints_ready()
            self._read_dns_domain()
            self._check_capture_image()
            self._root_pem = self._read_root_cert()
            self._wait_ztunnels_hold_the_run()
            self._check_ztunnel_ttl()
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
        """Read istiod and its mesh config; refuse what meshconform cannot work with (a
        certificate TTL istiod would not sign)."""
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
        problem = cert_ttl_problem(istiod, self.cert_ttl)
        if problem is not None:
            raise MeshError(problem)
        self._istiod = istiod
        self._istiod_revisions = istiod_revisions(deployments)
        self.ambient_found = self._detect_ambient()
        return istiod

    def _detect_ambient(self) -> str | None:
        """ztunnel and istio-cni in Istio's namespace and the namespaces labelled for ambient,
        for the report header (whatever this run's data plane); a user who may not list them
        is told, and the run goes on (an ambient run then fails where it needs them)."""
        namespace = self.options.istio_namespace
        try:
            ztunnels = self.api.list_pods(namespace, ZTUNNEL_LABEL)
            cni = self.api.list_pods(namespace, ISTIO_CNI_LABEL)
        except KubeApiError as error:
            self._progress(f"could not look for ztunnel and istio-cni in {namespace}: {error}")
            return None
        labelled: list[str] | None = None
        self.runs_ztunnel = bool(ztunnels)
        if ztunnels or cni:
            try:
                labelled = [
                    str(object_meta(ns).get("name"))
                    for ns in self.api.list_namespaces(f"{DATAPLANE_MODE_LABEL}=ambient")
                ]
            except KubeApiError:
                labelled = None
        return ambient_found(ztunnels, cni, labelled)

    def _check_ztunnel_ttl(self) -> None:
        """kind (the cluster is ours): ztunnel asks its CA for certificates of --mesh-cert-ttl
        (its ``secretTtl``, from the SECRET_TTL the install sets), or the rotation suites
        would wait for a lifetime the run did not choose."""
        if self._backend != "kind" or not any(w.ambient for w in self._workloads):
            return
        namespace = self.options.istio_namespace
        wanted = int(self.cert_ttl.total_seconds())
        for pod in ztunnel_pods(self.api, namespace):
            config = read_ztunnel_dump(self.api, pod).config
            if config.secret_ttl_seconds not in (None, wanted):
                raise MeshError(
                    f"ztunnel {namespace}/{pod.name} asks for certificates of"
                    f" {config.secret_ttl_seconds}s (its secretTtl), not --mesh-cert-ttl"
                    f" {wanted}s: the install did not reach ztunnel's SECRET_TTL"
                )

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

    def _read_dns_domain(self) -> None:
        """The cluster's DNS domain, from the first workload's resolv.conf (a curl image):
        Services are named in it (``httpbin.<ns>.svc.<domain>``, Envoy's cluster names and
        SNIs carry it)."""
        sleep = self._workloads[0]
        try:
            result = poll(
                lambda: self.exec(sleep, ["cat", "/etc/resolv.conf"], timeout=15),
                timeout=_READ_RETRY_S,
                interval=1.0,
                what=f"{sleep.key}'s /etc/resolv.conf",
                transient=is_transient,
            )
        except WaitTimeout as timeout:
            raise MeshError(f"cannot read the cluster's DNS domain: {timeout}") from None
        text = result.stdout.decode(errors="replace")
        try:
            if result.returncode != 0:
                raise TopologyError(
                    f"cat exited {result.returncode}: {result.stderr.decode(errors='replace')}"
                )
            self.dns_domain = dns_domain_from_resolv_conf(text, sleep.namespace)
        except TopologyError as error:
            raise MeshError(
                f"cannot tell the cluster's DNS domain from {sleep.key}'s /etc/resolv.conf: {error}"
            ) from None
        self._services = tuple(replace(s, domain=self.dns_domain) for s in self._services)

    def _wait_reachable(self) -> None:
        """Every sleep reaches its own namespace's httpbin: the data path works end to end."""
        deadline = self._deadline(self.options.ready_timeout)
        for logical in LOGICAL_NAMESPACES:
            self._wait_reaches(self.workload("sleep", logical), deadline)

    def _wait_reaches(self, sleep: Workload, deadline: float) -> None:
        fqdn = f"httpbin.{sleep.namespace}.svc.{self.dns_domain}"
        url = f"http://{fqdn}:{HTTPBIN_PORT}/status/200"
        argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5", url]
        tried: list[ExecResult] = []

        def reached() -> Literal[True] | None:
            tried.append(self.exec(sleep, argv, timeout=15))
            return True if tried[-1].stdout.strip() == b"200" else None

        try:
            poll(
                reached,
                timeout=deadline - time.monotonic(),
                interval=1.0,
                what=f"{sleep.key} reaching {url}",
                transient=is_transient,
            )
        except WaitTimeout as timeout:
            if not tried:
                raise MeshError(
                    f"{sleep.key} cannot reach {url}: no exec answered{timeout.transient_note}"
                ) from None
            result = tried[-1]
            raise MeshError(
                f"{sleep.key} cannot reach {url}: curl exit {result.returncode},"
                f" status {result.stdout.decode(errors='replace')!r},"
                f" {result.stderr.decode(errors='replace').strip()}{timeout.transient_note}"
            ) from None

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
                    body["metadata"]["resourceVersion"] = object_meta(current).get(
                        "resourceVersion"
                    )
                    self.api.replace(body)
                self._progress(f"restored mesh-wide {kind} {namespace}/{name}")
            del self._originals[key]

    def pod_name(self, workload: Workload) -> str:
        return str(object_meta(self._pod(workload)).get("name"))

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
        pod = str(object_meta(self._pod(workload, refresh=True)).get("name"))
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

    def ztunnel_certificate_pem(self, workload: Workload) -> str:
        """The chain ztunnel holds for an ambient workload's identity (``ZtunnelCertificates``),
        from the ``certificates`` of the dump of the ztunnel on its node: what it presents
        on the workload's behalf over HBONE."""
        if not workload.ambient:
            raise MeshError(f"{workload.key} is not ambient: its certificate is its sidecar's")
        node = str((self._pod(workload).get("spec") or {}).get("nodeName") or "")
        namespace = self.options.istio_namespace
        pod = ztunnel_on_node(ztunnel_pods(self.api, namespace), node, namespace)
        dump = read_ztunnel_dump(self.api, pod)
        identity = workload.spiffe_id(self.trust_domain)
        held = dump.certificate_for(identity)
        if held is None or not held.available:
            state = "none" if held is None else held.state or "no chain"
            raise MeshError(
                f"ztunnel {namespace}/{pod.name} holds no available certificate for {identity}"
                f" ({state}; it holds {len(dump.certificates)} identities)"
            )
        return "".join(entry.pem for entry in held.chain)

    def logs(self, workload: Workload) -> dict[str, str]:
        """App and sidecar logs (first MiB each), for failure reports; never raises."""
        return self._logs(workload, None)

    def log_positions(self) -> LogPositions:
        """Now: `logs_since` asks the API server for the lines written since then."""
        return LogPositions(at=time.time())

    def logs_since(self, workload: Workload, positions: LogPositions) -> dict[str, str]:
        """App and sidecar log lines of the test's window (Kubernetes' `sinceSeconds`, rounded
        up, plus a second for the clock: a line may be early, none is missed); never raises."""
        return self._logs(workload, max(1, math.ceil(time.time() - positions.at) + 1))

    def _logs(self, workload: Workload, since_seconds: int | None) -> dict[str, str]:
        found: dict[str, str] = {}
        containers = [workload.app] + ([PROXY_CONTAINER] if workload.has_sidecar else [])
        try:
            pod = self.pod_name(workload)
        except MeshError as error:
            return {"error": str(error)}
        for container in containers:
            try:
                found[container] = self.api.pod_log(
                    workload.namespace,
                    pod,
                    container,
                    _LOG_LIMIT_BYTES,
                    since_seconds=since_seconds,
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
        baseline = self._propagation_baseline()  # --mesh-propagation=version only
        self.api.apply(localized.manifest)
        self._wait_propagated(localized, "applied", baseline)

    def delete(self, manifest: Mapping[str, Any]) -> None:
        localized = self._localize(manifest, "delete")
        with self._lock:
            self._remember_original(localized)
        api_version = f"{localized.group}/{localized.version}"
        current = self.api.get(api_version, localized.kind, localized.namespace, localized.name)
        if current is None:
            return
        baseline = self._propagation_baseline()  # --mesh-propagation=version only
        if self.api.delete(api_version, localized.kind, localized.namespace, localized.name):
            self._wait_propagated(localized, "deleted", baseline)

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
