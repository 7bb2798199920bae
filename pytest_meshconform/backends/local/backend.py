# Over 800 lines on purpose: the lifecycle (start, wiring, readiness, close) and the Mesh
# protocol are one class whose steps share the run's state; its neighbours hold the rest
# (iptables.py, envoyadmin.py, agent.py, runtime.py), see docs/architecture.md.
"""The local mesh: pods as network namespaces, real Envoy sidecars, iptables interception, our CA.

Lifecycle: `LocalMesh(...).start()` sweeps what dead runs left, records the run, creates one
network namespace per pod plus a "node" namespace holding a bridge, writes each sidecar's
bootstrap, xDS and SDS files, starts every Envoy (uid 1337) and app while it wires the pods to
the bridge (veth pairs, addresses, istio-iptables-style rules), and waits until every process
is ready. `close()` ends every process by the PID it started and deletes every namespace,
/etc/netns entry and file. Every request starts inside a pod namespace: nothing is ever sent to
a pod address from the root namespace.

Processes and uids: Envoy runs as 1337 (`setpriv`), `exec` in a `sleep` pod runs as APP_UID,
the httpbin apps run as root (forked by `apps.py` from one Python, which may live where other
uids cannot read). Every process gets PR_SET_PDEATHSIG=SIGKILL, so a test process killed with
SIGKILL takes its mesh's processes with it; the next start sweeps the namespaces and files.
A kept mesh (`keep=True`) is started without it, so it outlives its owner until that sweep.
The kernel sends that signal when the *thread* that forked the process ends, so long-lived
processes are forked by a thread the mesh owns until close(), whatever thread calls it.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Final

from pytest_meshconform import __version__, signals
from pytest_meshconform.backends.capture import MARKER_PORT, capture_filter, pcap_file_name
from pytest_meshconform.backends.local import host, xds
from pytest_meshconform.backends.local.agent import Rotation, SidecarAgent
from pytest_meshconform.backends.local.ca import MeshCA, WorkloadPrivateKey
from pytest_meshconform.backends.local.control import Faults, Policy, plan_sidecars
from pytest_meshconform.backends.local.envoyadmin import admin_get, admin_get_all, parse_stats
from pytest_meshconform.backends.local.iptables import istio_iptables_rules
from pytest_meshconform.backends.local.runtime import PodRuntime, log_tail
from pytest_meshconform.backends.local.topology import (
    APP_GID,
    APP_UID,
    POD_PREFIX_LEN,
    PROXY_GID,
    PROXY_UID,
    ROOT_NAMESPACE,
    SERVICE_CIDR,
    TRUST_DOMAIN,
    Pod,
    Topology,
    default_topology,
)
from pytest_meshconform.istio.api import PolicyError, parse_policy
from pytest_meshconform.istio.envoy import ROOT_SECRET, WORKLOAD_SECRET
from pytest_meshconform.istio.rotation import rotation_time
from pytest_meshconform.istio.tls import MinProtocolVersion, parse_min_protocol_version
from pytest_meshconform.mesh import (
    ALL_FEATURES,
    ExecResult,
    LogPositions,
    MeshError,
    PcapRecording,
    PropagationTimeout,
    Service,
    SidecarDied,
    Workload,
)
from pytest_meshconform.waiting import WaitTimeout, poll

Progress = Callable[[str], None]
# Filter chains replaced by a policy change drain at once: kept-alive connections (the client
# sidecars' pooled mTLS connections) must not go on being served by the old chain's RBAC or
# mode; `apply` also waits until no replaced chain is draining (see _version_problems).
ENVOY_DRAIN_TIME_S = 0
ENVOY_CONCURRENCY = 1  # one worker: each listener (re)build is acknowledged once
ENVOY_FILE_FLUSH_MS = 200  # access logs reach the disk (and failure reports) quickly
READY_DEADLINE_S = 20.0
PROPAGATION_DEADLINE_S = 10.0
PROGRESS_EVERY_S = 2.0
SLOW_PROPAGATION_S = 1.0
# The Envoy stats that tell whether a config version is in force, in one admin request.
_VERSION_STATS = (
    "listener_manager.lds.version_text",
    "listener_manager.lds.update_rejected",
    "listener_manager.listener_added",
    "listener_manager.listener_modified",
    "listener_manager.listener_create_success",
    "listener_manager.listener_create_failure",
    "listener_manager.total_listeners_warming",
    "listener_manager.total_filter_chains_draining",
    "listener_manager.total_listeners_draining",
    "cluster_manager.cds.version_text",
    "cluster_manager.cds.update_rejected",
    "cluster_manager.warming_clusters",
)
_VERSION_STATS_PATH = "/stats?filter=" + urllib.parse.quote(
    "^(" + "|".join(name.replace(".", r"\.") for name in _VERSION_STATS) + ")$", safe=""
)


class LocalMesh(SidecarAgent):
    """The `local` backend of the Mesh protocol."""

    backend = "local"
    name = "meshconform-local"
    trust_domain = TRUST_DOMAIN
    root_namespace = ROOT_NAMESPACE
    # The Istio release whose documented behaviour this mesh reproduces; `mesh_min_version`
    # markers compare against it (reports show `version`, which names the local mesh itself).
    istio_version = "1.24.0"
    revision: str | None = None  # one control plane, no Istio revisions
    features: frozenset[str] = ALL_FEATURES

    def __init__(
        self,
        cert_ttl: dt.timedelta = dt.timedelta(hours=24),
        *,
        faults: Faults | None = None,
        keep: bool = False,
        progress: Progress | None = None,
        topology: Topology | None = None,
        min_tls_version: MinProtocolVersion = "TLS_AUTO",
    ) -> None:
        if cert_ttl <= dt.timedelta(0):
            raise ValueError(f"cert_ttl must be positive, got {cert_ttl}")
        self.cert_ttl = cert_ttl
        # meshConfig.meshMTLS.minProtocolVersion of this mesh (MeshMtlsAware)
        self.min_tls_version: MinProtocolVersion = parse_min_protocol_version(min_tls_version)
        self.faults = faults or Faults()
        self.keep = keep
        self.topology = topology or default_topology()
        self._progress = progress or (lambda message: None)
        self._policies: dict[tuple[str, str, str], Policy] = {}
        self._manifests: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._pods: dict[str, PodRuntime] = {}
        self._state: host.RunState | None = None
        self._ca: MeshCA | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._agent: threading.Thread | None = None
        self._envoy_path: Path | None = None
        self._launcher: subprocess.Popen[bytes] | None = None
        self._launcher_output = b""
        self._spawner: ThreadPoolExecutor | None = None
        self._env = host.pod_environment()
        self._signals_owned = False
        self._health_lock = threading.Lock()
        self._problems: dict[str, SidecarDied] = {}  # "Envoy of httpbin.foo" -> first seen
        self._watching = False
        self._watcher: threading.Thread | None = None
        self._logs_settled_at = float("-inf")  # see _settle_logs
        self.rotations: list[Rotation] = []

    # -- Mesh protocol: identity -------------------------------------------------------------

    @property
    def root_cert(self) -> str:
        return self._require_ca().root_pem

    @property
    def version(self) -> str:
        return f"meshconform-local/{__version__} (envoy 1.40)"

    @property
    def run_id(self) -> str:
        return self._require_state().run_id

    @property
    def run_dir(self) -> Path:
        return self._require_state().directory

    @property
    def running(self) -> bool:
        return self._state is not None

    def workloads(self) -> Sequence[Workload]:
        return tuple(p.workload for p in self.topology.pods)

    def workload(self, name: str, namespace: str) -> Workload:
        try:
            return self.topology.pod(name, namespace).workload
        except KeyError as exc:
            raise MeshError(exc.args[0]) from None

    def services(self) -> Sequence[Service]:
        return tuple(e.service for e in self.topology.services)

    def pod_ip(self, workload: Workload) -> str:
        return self._pod(workload).ip

    def logical_namespace(self, namespace: str) -> str:
        """Namespaces are named as the suites spell them (`foo`)."""
        return namespace

    def netns(self, workload: Workload) -> str:
        """The network namespace of the workload's pod (`ip netns exec <it> ...`)."""
        return self._runtime(workload).netns

    def app_uid(self, workload: Workload) -> int:
        """The uid `exec` (and the app) runs as in this workload's pod."""
        return 0 if self._pod(workload).workload.container_ports else APP_UID

    def exec_argv(self, workload: Workload, argv: Sequence[str]) -> list[str]:
        """The full command line `exec` runs, for callers that need a long-lived process.

        It carries PR_SET_PDEATHSIG: the process dies with the thread that starts it.
        """
        runtime = self._runtime(workload)
        if not argv:
            raise MeshError(f"exec in {workload.key}: empty command")
        uid = self.app_uid(workload)
        drop = [] if uid == 0 else [f"--reuid={uid}", f"--regid={APP_GID}", "--clear-groups"]
        return host.in_netns(runtime.netns, ["setpriv", *drop, "--pdeathsig=KILL", *argv])

    def pids(self) -> list[int]:
        """PIDs of the mesh's long-running processes (Envoys, app launcher, apps)."""
        state = self._require_state()
        return [pid for pid, start in state.pids if host.proc_start_ticks(pid) == start]

    def _pod(self, workload: Workload) -> Pod:
        try:
            return self.topology.pod_of(workload)
        except KeyError as exc:
            raise MeshError(exc.args[0]) from None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> LocalMesh:
        if self._state is not None:
            raise MeshError(f"local mesh {self._state.run_id} is already running")
        started = time.monotonic()
        host.preflight()
        swept = host.sweep_stale_runs()
        if swept:
            self._progress(f"swept leftovers of dead runs: {'; '.join(swept)}")
        self._stop.clear()
        try:
            # From before the run dir exists until its last file is gone, SIGTERM and SIGHUP
            # interrupt like Ctrl-C; one arriving while the run is being recorded is delivered
            # once it is, inside this try, so the except below removes it all.
            with signals.held():
                self._signals_owned = signals.acquire()
                self._state = host.RunState.create(secrets.token_hex(3), keep=self.keep)
                self._spawner = ThreadPoolExecutor(1, thread_name_prefix="meshconform-spawner")
                atexit.register(self.close)  # a script that forgets close() leaves nothing
            self._ca = MeshCA(TRUST_DOMAIN, pool=True)  # RSA keys made while pods start
            self._prepare_envoy_binary()
            self._start_app_launcher()  # imports httpbin while the namespaces are built
            self._progress(f"local mesh {self.run_id}: creating {len(self.topology.pods)} pods")
            self._create_namespaces()
            self._write_initial_config()
            self._start_envoys()
            self._start_apps()
            self._wire_network()
            self._wait_ready()
            self._agent = threading.Thread(
                target=self._rotation_agent, name="meshconform-agent", daemon=True
            )
            self._agent.start()
            self._problems = {}
            self._watching = True
            self._watcher = threading.Thread(
                target=self._health_watch, name="meshconform-health", daemon=True
            )
            self._watcher.start()
        except BaseException:
            self.close(force=True)
            raise
        self._progress(f"local mesh {self.run_id} up in {time.monotonic() - started:.2f}s")
        return self

    def __enter__(self) -> LocalMesh:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, *, force: bool = False) -> None:
        """Stop everything and remove every trace; with `keep`, leave it running and say what.

        SIGINT, SIGTERM and SIGHUP wait until the end (a second one must not leave half a
        mesh behind); the first of them is delivered then.
        """
        with signals.held():
            try:
                self._close(force=force)
            finally:
                if self._state is None:  # gone (or kept on purpose): nothing of ours is left
                    owned, self._signals_owned = self._signals_owned, False
                    signals.release(owned)

    def _close(self, *, force: bool) -> None:
        self._watching = False  # what close() ends is no sidecar death
        self._stop.set()
        for thread in (self._agent, self._watcher):
            if thread is not None:
                thread.join(timeout=5)
        self._agent = self._watcher = None
        state = self._state
        if state is None:
            return
        atexit.unregister(self.close)
        if self.keep and not force:
            self._progress(self._kept_message(state))
            self._state = None
            self._stop_spawner()
            return
        if self._launcher is not None and self._launcher.stdin is not None:
            with contextlib.suppress(OSError):
                self._launcher.stdin.close()
        host.teardown_state(state)
        for runtime in self._pods.values():
            if runtime.envoy is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    runtime.envoy.wait(timeout=1)
        if self._launcher is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._launcher.wait(timeout=1)
            if self._launcher.stdout is not None:
                self._launcher.stdout.close()
        self._stop_spawner()
        self._state = None
        if self._ca is not None:
            self._ca.close()
        self._ca = None
        self._pods = {}
        self._launcher = None
        left = host.leftovers(state)
        if left:
            self._progress(
                f"local mesh {state.run_id}: could not remove {', '.join(left)};"
                " the next run retries"
            )

    def _stop_spawner(self) -> None:
        if self._spawner is not None:
            self._spawner.shutdown(wait=True)
            self._spawner = None

    def _popen(self, argv: list[str], **options: Any) -> subprocess.Popen[bytes]:
        """Popen from the mesh's own thread: PR_SET_PDEATHSIG fires when the forking thread ends.

        The process is recorded by that thread too, as soon as it exists: a KeyboardInterrupt
        (SIGTERM) in the caller while it waits cannot leave a process the teardown misses.
        """
        if self._spawner is None:
            raise MeshError("the local mesh is not running (call start() first)")
        state = self._require_state()

        def spawn() -> subprocess.Popen[bytes]:
            proc = subprocess.Popen(argv, **options)
            state.add_pid(proc.pid)
            return proc

        try:
            return self._spawner.submit(spawn).result()
        except OSError as exc:
            raise MeshError(f"cannot start `{' '.join(argv)}`: {exc}") from exc

    def _kept_message(self, state: host.RunState) -> str:
        sleeper = next(
            (r for r in self._pods.values() if not r.pod.workload.has_sidecar), None
        ) or next(iter(self._pods.values()))
        return (
            f"keep: left local mesh {state.run_id} running: {len(self.pids())} processes"
            f" (PIDs {', '.join(map(str, self.pids()))}), namespaces {', '.join(state.netns)},"
            f" /etc/netns entries of those, state and logs in {state.directory}. Try"
            f" `ip netns exec {sleeper.netns} curl -sS http://httpbin.foo:8000/headers`."
            " Once this process has exited, the next run sweeps it, and so does"
            " `meshconform sweep`."
        )

    # -- building ------------------------------------------------------------------------------

    def _require_state(self) -> host.RunState:
        if self._state is None:
            raise MeshError("the local mesh is not running (call start() first)")
        return self._state

    def _require_ca(self) -> MeshCA:
        if self._ca is None:
            raise MeshError("the local mesh is not running (call start() first)")
        return self._ca

    def _prepare_envoy_binary(self) -> None:
        # uid 1337 may not traverse the venv (e.g. under /root or a mode-700 home): then give
        # Envoy a hard link (or, across filesystems, a copy: ~100 MB) in the run directory.
        source = host.envoy_binary()
        if host.runnable_by_others(source):
            self._envoy_path = source
            return
        target = self.run_dir / "envoy"
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
        os.chmod(target, 0o755)
        self._envoy_path = target

    def _netns_name(self, pod: Pod) -> str:
        return f"{host.NETNS_PREFIX}{self.run_id}-{pod.workload.namespace}-{pod.workload.name}"

    @property
    def _node_netns(self) -> str:
        return f"{host.NETNS_PREFIX}{self.run_id}-node"

    def _pdeathsig(self) -> list[str]:
        """A kept mesh must outlive this process; otherwise its processes die with it."""
        return [] if self.keep else ["--pdeathsig=KILL"]

    def _start_app_launcher(self) -> None:
        state = self._require_state()
        log = _private_log(state.directory / "apps.log")
        try:
            self._launcher = self._popen(
                [
                    "setpriv",
                    *self._pdeathsig(),
                    sys.executable,
                    "-m",
                    "pytest_meshconform.backends.local.apps",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,  # Ctrl-C in the terminal is ours to handle, not theirs
                env=self._env,
            )
        finally:
            log.close()

    def _create_namespaces(self) -> None:
        state = self._require_state()
        names = [self._node_netns, *(self._netns_name(p) for p in self.topology.pods)]
        state.add_netns(*names)  # recorded before they exist: a crash now still gets swept
        host.create_netns(names)
        for pod in self.topology.pods:
            netns = self._netns_name(pod)
            etc = host.NETNS_ETC / netns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(self.topology.hosts_file(pod))
            (etc / "resolv.conf").write_text(self.topology.resolv_conf(pod))
            directory = self.run_dir / "pods" / pod.workload.key
            directory.mkdir(parents=True)
            for made in (directory.parent, directory):  # Envoy (group 1337) reaches envoy/
                host.private_directory(made, group=PROXY_GID)
            runtime = PodRuntime(pod, netns, directory, xds.SidecarPaths(directory / "envoy"))
            self._pods[pod.workload.key] = runtime

    def _wire_network(self) -> None:
        """Bridge, veth pairs, addresses, routes and nat rules: one command per namespace."""
        node_batch = ["link add br0 type bridge", "link set br0 up", "link set lo up"]
        for index, pod in enumerate(self.topology.pods):
            veth = f"veth{index}"
            node_batch += [
                f"link add {veth} type veth peer name eth0 netns {self._netns_name(pod)}",
                f"link set {veth} master br0",
                f"link set {veth} up",
            ]
        host.run(
            ["ip", "-n", self._node_netns, "-batch", "-"], input="\n".join(node_batch).encode()
        )
        commands: list[tuple[Sequence[str], bytes | None]] = []
        for pod in self.topology.pods:
            netns = self._netns_name(pod)
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
                    istio_iptables_rules(pod, self.topology).encode(),
                )
            )
        host.run_all(commands)

    def _write_initial_config(self) -> None:
        plans = plan_sidecars(
            self.topology, [], self.root_namespace, self.faults, self.min_tls_version
        )
        ca = self._require_ca()
        keys = ca.workload_keys(len(plans))  # RSA 2048: made in parallel, not one by one
        for key, plan in plans.items():
            runtime = self._pods[key]
            paths = runtime.paths
            for sub in (paths.lds.parent, paths.cds.parent, paths.sds_dir):
                sub.mkdir(parents=True, exist_ok=True)
            # Envoy appends to it: made first, so it is 0600 and not Envoy's default 0644.
            _write_text(paths.access_log, "")
            _write_json(paths.bootstrap, xds.bootstrap(runtime.pod, paths))
            _write_json(
                paths.sds(ROOT_SECRET),
                xds.secret_resources(ROOT_SECRET, root_pem=ca.root_pem),
            )
            self._issue_cert(runtime, keys.pop())
            self._render(runtime, plan)
            for path in paths.root.rglob("*"):
                os.chown(path, PROXY_UID, PROXY_GID)
                if path.is_dir():
                    os.chmod(path, host.PRIVATE_DIR_MODE)
            os.chown(paths.root, PROXY_UID, PROXY_GID)
            os.chmod(paths.root, host.PRIVATE_DIR_MODE)

    def _issue_cert(self, runtime: PodRuntime, key: WorkloadPrivateKey | None = None) -> None:
        w = runtime.pod.workload
        service_account = (
            f"{w.service_account}-impostor" if self.faults.wrong_spiffe_id else w.service_account
        )
        cert = self._require_ca().issue_workload(
            w.namespace, service_account, self.cert_ttl, key=key
        )
        runtime.cert = cert
        _write_json(
            runtime.paths.sds(WORKLOAD_SECRET),
            xds.secret_resources(
                WORKLOAD_SECRET, cert_pem=cert.cert_pem + self.root_cert, key_pem=cert.key_pem
            ),
        )
        runtime.next_rotation = (
            None if self.faults.no_rotation else rotation_time(cert.not_before, cert.not_after)
        )

    def _render(self, runtime: PodRuntime, plan: xds.SidecarPlan) -> bool:
        """Write the sidecar's CDS then LDS when they changed; True when anything was written."""
        changed = False
        cds_doc = json.dumps(xds.clusters(plan, runtime.paths), sort_keys=True)
        if cds_doc != runtime.cds_doc:
            runtime.cds_version += 1
            runtime.cds_doc = cds_doc
            _write_text(runtime.paths.cds, _discovery_text(runtime.cds_version, cds_doc))
            changed = True
        lds_doc = json.dumps(xds.listeners(plan, runtime.paths), sort_keys=True)
        if lds_doc != runtime.lds_doc:
            runtime.lds_version += 1
            runtime.lds_doc = lds_doc
            _write_text(runtime.paths.lds, _discovery_text(runtime.lds_version, lds_doc))
            changed = True
        return changed

    def _spawn(
        self, runtime: PodRuntime, argv: list[str], log_name: str
    ) -> subprocess.Popen[bytes]:
        log = _private_log(runtime.directory / log_name)
        try:
            proc = self._popen(
                host.in_netns(runtime.netns, argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal is ours to handle, not theirs
                env=self._env,
            )
        finally:
            log.close()
        return proc

    def _start_envoys(self) -> None:
        envoy = str(self._envoy_path)
        for runtime in self._pods.values():
            if not runtime.pod.workload.has_sidecar:
                continue
            runtime.envoy = self._spawn(
                runtime,
                [
                    "setpriv",
                    f"--reuid={PROXY_UID}",
                    f"--regid={PROXY_GID}",
                    "--clear-groups",
                    *self._pdeathsig(),
                    envoy,
                    "-c",
                    str(runtime.paths.bootstrap),
                    "--disable-hot-restart",
                    "--concurrency",
                    str(ENVOY_CONCURRENCY),
                    "--drain-time-s",
                    str(ENVOY_DRAIN_TIME_S),
                    "--drain-strategy",
                    "immediate",
                    "--file-flush-interval-msec",
                    str(ENVOY_FILE_FLUSH_MS),
                    "--log-level",
                    "warning",
                ],
                "envoy.log",
            )

    def _start_apps(self) -> None:
        """Hand every serving pod (httpbin, tcp-echo) to the launcher; it forks one app per pod
        once httpbin is imported, listening on each container port."""
        launcher = self._launcher
        assert launcher is not None and launcher.stdin is not None
        specs = []
        for runtime in self._pods.values():
            if runtime.serves_app:
                ports = runtime.pod.workload.container_ports
                specs.append(
                    {
                        "key": runtime.key,
                        "kind": runtime.pod.app_kind,
                        "netns": runtime.netns,
                        "listen": " ".join(f"0.0.0.0:{port}" for port in ports),
                        "log": str(runtime.directory / "app.log"),
                        "pdeathsig": not self.keep,
                    }
                )
        try:
            launcher.stdin.write("".join(json.dumps(s) + "\n" for s in specs).encode())
            launcher.stdin.close()
        except OSError as exc:
            raise MeshError(f"the app launcher died: {self._launcher_log_tail()}") from exc

    def _collect_app_pids(self) -> None:
        """Read the PIDs the launcher printed so far (never blocks)."""
        launcher = self._launcher
        if launcher is None or launcher.stdout is None or launcher.stdout.closed:
            return
        fd = launcher.stdout.fileno()
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                launcher.stdout.close()
                break
            self._launcher_output += chunk
        *lines, self._launcher_output = self._launcher_output.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            message = json.loads(line)
            runtime = self._pods[message["key"]]
            runtime.app_pid = int(message["pid"])
            runtime.app_start = host.proc_start_ticks(runtime.app_pid)
            self._require_state().add_pid(runtime.app_pid)

    def _launcher_log_tail(self) -> str:
        try:
            text = (self.run_dir / "apps.log").read_text(errors="replace")
        except (OSError, MeshError):
            return "no log"
        return " | ".join(text.strip().splitlines()[-5:]) or "empty log"

    def _wait_ready(self) -> None:
        started = time.monotonic()
        next_note = started + PROGRESS_EVERY_S
        pending = {k: r for k, r in self._pods.items() if r.envoy or r.serves_app}
        self._progress(
            f"waiting for {sum(bool(r.envoy) + r.serves_app for r in pending.values())} processes"
        )

        def ready() -> bool | None:
            nonlocal next_note
            self._collect_app_pids()
            for key, runtime in list(pending.items()):
                self._check_alive(runtime)
                if self._envoy_ready(runtime) and self._app_ready(runtime):
                    del pending[key]
            if not pending:
                return True
            now = time.monotonic()
            if now > next_note:
                self._progress(
                    f"still waiting ({now - started:.0f}s) for "
                    + ", ".join(self._describe_pending(r) for r in pending.values())
                )
                next_note = now + PROGRESS_EVERY_S
            return None

        try:
            poll(ready, timeout=READY_DEADLINE_S, interval=0.005, what="the local mesh ready")
        except WaitTimeout:
            raise MeshError(
                f"local mesh not ready after {READY_DEADLINE_S:.0f}s: waiting for "
                + ", ".join(self._describe_pending(r) for r in pending.values())
            ) from None

    def _describe_pending(self, runtime: PodRuntime) -> str:
        parts = []
        if runtime.envoy is not None and not self._envoy_ready(runtime):
            parts.append(f"Envoy of {runtime.key} ({log_tail(runtime, 'envoy.log')})")
        if runtime.serves_app and not self._app_ready(runtime):
            parts.append(f"app of {runtime.key} ({log_tail(runtime, 'app.log')})")
        return ", ".join(parts) or runtime.key

    def _envoy_ready(self, runtime: PodRuntime) -> bool:
        if runtime.envoy is None:
            return True
        try:
            status, body = admin_get(runtime.paths.admin_socket, "/ready", timeout=1)
            if status != 200 or body.strip() != b"LIVE":
                return False
            return not self._version_problems(runtime)
        except OSError:
            return False

    @staticmethod
    def _app_ready(runtime: PodRuntime) -> bool:
        if not runtime.serves_app:
            return True
        if runtime.app_pid is None:
            return False
        try:
            return b"Serving on" in (runtime.directory / "app.log").read_bytes()
        except OSError:
            return False

    def _check_alive(self, runtime: PodRuntime) -> None:
        self._raise_if_broken()  # once up: SidecarDied, an infrastructure error
        envoy = runtime.envoy
        if envoy is not None and envoy.poll() is not None:
            raise MeshError(
                f"Envoy of {runtime.key} exited with {envoy.returncode}:"
                f" {log_tail(runtime, 'envoy.log')}"
            )
        if runtime.serves_app:
            if runtime.app_pid is not None:
                if host.proc_start_ticks(runtime.app_pid) != runtime.app_start:
                    raise MeshError(
                        f"the app of {runtime.key} (pid {runtime.app_pid}) exited:"
                        f" {log_tail(runtime, 'app.log')}"
                    )
            elif self._launcher is not None and self._launcher.poll() is not None:
                raise MeshError(
                    f"the app launcher exited with {self._launcher.returncode} before starting"
                    f" the app of {runtime.key}: {self._launcher_log_tail()}"
                )

    @staticmethod
    def _log_files(runtime: PodRuntime) -> tuple[tuple[str, Path], ...]:
        return (
            ("envoy.log", runtime.directory / "envoy.log"),
            ("envoy-access.log", runtime.paths.access_log),
            ("app.log", runtime.directory / "app.log"),
        )

    def logs(self, workload: Workload) -> dict[str, str]:
        """The sidecar's log and access log and the app's log so far, for failure reports."""
        runtime = self._runtime(workload)
        found = {}
        for label, path in self._log_files(runtime):
            with contextlib.suppress(OSError):
                found[label] = path.read_text(errors="replace")
        return found

    def log_positions(self) -> LogPositions:
        """The size of every pod's log files now: `logs_since` reads from there on."""
        self._require_state()
        offsets: dict[str, dict[str, int]] = {}
        for key, runtime in self._pods.items():
            sizes = offsets[key] = {}
            for label, path in self._log_files(runtime):
                with contextlib.suppress(OSError):
                    sizes[label] = path.stat().st_size
        return LogPositions(at=time.time(), offsets=offsets)

    def _settle_logs(self) -> None:
        """Envoy writes an access log line when a stream ends and flushes every
        ENVOY_FILE_FLUSH_MS: give the lines of a request that just ended time to land (once per
        burst of reads, so a failure report waits half a second at most)."""
        settle = 2.5 * ENVOY_FILE_FLUSH_MS / 1000
        if time.monotonic() - self._logs_settled_at > settle:
            time.sleep(settle)
            self._logs_settled_at = time.monotonic()

    def logs_since(self, workload: Workload, positions: LogPositions) -> dict[str, str]:
        """What each log file of the pod gained after `positions` (whole lines only)."""
        runtime = self._runtime(workload)
        self._settle_logs()
        start = positions.offsets.get(workload.key, {})
        found = {}
        for label, path in self._log_files(runtime):
            try:
                with path.open("rb") as log:
                    log.seek(start.get(label, 0))
                    data = log.read()
            except OSError:
                continue
            found[label] = _lines_since(data.decode(errors="replace"), positions.at)
        return found

    def _runtime(self, workload: Workload) -> PodRuntime:
        self._require_state()
        try:
            return self._pods[workload.key]
        except KeyError:
            known = ", ".join(self._pods)
            raise MeshError(
                f"no workload {workload.key} in the local mesh (have: {known})"
            ) from None

    # -- Mesh protocol: actions ------------------------------------------------------------------

    def exec(self, workload: Workload, argv: Sequence[str], timeout: float = 30.0) -> ExecResult:
        """Run argv in the workload's pod as the app's uid (APP_UID; root in httpbin pods).

        Raises SidecarDied when a process of the mesh has died or stopped: nothing run now
        would be evidence, and a stopped sidecar would make every request wait its timeout.
        """
        command = self.exec_argv(workload, list(argv))
        self._raise_if_broken()
        try:
            proc = subprocess.run(
                command,
                capture_output=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                env=self._env,
            )
        except subprocess.TimeoutExpired as exc:
            raise MeshError(
                f"`{' '.join(argv)}` in {workload.key} did not finish within {timeout}s;"
                f" stdout so far: {(exc.stdout or b'')[:200]!r},"
                f" stderr: {(exc.stderr or b'')[:200]!r}"
            ) from exc
        except OSError as exc:
            raise MeshError(f"cannot run `{' '.join(argv)}` in {workload.key}: {exc}") from exc
        if proc.returncode == 255 and proc.stderr.startswith(b"Cannot open network namespace"):
            raise MeshError(
                f"the pod {workload.key} is gone ({self.netns(workload)}):"
                f" {proc.stderr.decode(errors='replace').strip()}"
            )
        return ExecResult(proc.returncode, proc.stdout, proc.stderr)

    def policies(self) -> Sequence[Mapping[str, Any]]:
        with self._lock:
            return [json.loads(json.dumps(m)) for m in self._manifests.values()]

    @staticmethod
    def _parse(manifest: Mapping[str, Any], verb: str) -> tuple[tuple[str, str, str], Policy]:
        try:
            policy = parse_policy(dict(manifest))
        except PolicyError as exc:
            raise MeshError(f"cannot {verb} an invalid policy: {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise MeshError(f"cannot {verb} {manifest!r:.200}: {exc}") from exc
        return (type(policy).__name__, policy.namespace or "default", policy.name), policy

    def apply(self, manifest: Mapping[str, Any]) -> None:
        """Create or replace a policy; returns once every affected Envoy has it in force."""
        key, policy = self._parse(manifest, "apply")
        with self._lock:
            self._require_state()
            self._change(lambda: self._store(key, policy))

    def delete(self, manifest: Mapping[str, Any]) -> None:
        """Delete a policy (a missing one is not an error); returns once no Envoy uses it."""
        key, _ = self._parse(manifest, "delete")
        with self._lock:
            self._require_state()
            self._change(lambda: self._drop(key))

    def _store(self, key: tuple[str, str, str], policy: Policy) -> None:
        self._policies[key] = policy
        self._manifests[key] = policy.to_manifest()

    def _drop(self, key: tuple[str, str, str]) -> None:
        self._policies.pop(key, None)
        self._manifests.pop(key, None)

    def _change(self, edit: Callable[[], None]) -> None:
        """Edit the policy set and push it; if the proxies refuse it, put the old set back."""
        before = (dict(self._policies), dict(self._manifests))
        edit()
        try:
            self._push()
        except MeshError:
            self._policies, self._manifests = before
            with contextlib.suppress(MeshError):
                self._push()
            raise

    def _push(self) -> None:
        plans = plan_sidecars(
            self.topology,
            list(self._policies.values()),
            self.root_namespace,
            self.faults,
            self.min_tls_version,
        )
        changed = [
            self._pods[key] for key, plan in plans.items() if self._render(self._pods[key], plan)
        ]
        self._wait_versions(changed)

    def _version_problems(self, runtime: PodRuntime, body: bytes | None = None) -> list[str]:
        """Why this Envoy does not run its latest config yet (empty: it does, on its worker).

        `body` is its answer to _VERSION_STATS_PATH (fetched here when not given). Raises
        MeshError when Envoy rejected a config or failed to build a listener.
        """
        if body is None:
            _, body = admin_get(runtime.paths.admin_socket, _VERSION_STATS_PATH)
        stats = parse_stats(body)

        def number(name: str) -> int:
            try:
                return int(stats.get(name, "0"))
            except ValueError:
                return 0

        refused = (
            number("listener_manager.lds.update_rejected")
            + number("cluster_manager.cds.update_rejected")
            + number("listener_manager.listener_create_failure")
        )
        if refused > runtime.rejected_seen:
            runtime.rejected_seen = refused
            raise MeshError(
                f"Envoy of {runtime.key} rejected its new config: {log_tail(runtime, 'envoy.log')}"
            )
        problems = []
        lds = stats.get("listener_manager.lds.version_text")
        cds = stats.get("cluster_manager.cds.version_text")
        if lds != str(runtime.lds_version):
            problems.append(f"LDS version {lds}, wants {runtime.lds_version}")
        if cds != str(runtime.cds_version):
            problems.append(f"CDS version {cds}, wants {runtime.cds_version}")
        warming = number("listener_manager.total_listeners_warming")
        warming += number("cluster_manager.warming_clusters")
        if warming:
            problems.append(f"{warming} listeners/clusters warming")
        draining = number("listener_manager.total_filter_chains_draining")
        draining += number("listener_manager.total_listeners_draining")
        if draining:  # old chains or listeners still serve their kept-alive connections
            problems.append(f"{draining} replaced filter chains/listeners draining")
        # Each added or modified listener is handed to every worker, which acknowledges it.
        wanted = ENVOY_CONCURRENCY * (
            number("listener_manager.listener_added") + number("listener_manager.listener_modified")
        )
        acked = number("listener_manager.listener_create_success") + number(
            "listener_manager.listener_create_failure"
        )
        if acked < wanted:
            problems.append(f"workers took {acked} of {wanted} listener builds")
        return problems

    def _wait_versions(self, runtimes: list[PodRuntime]) -> None:
        """Wait until every changed Envoy runs the config just written (LDS, CDS, workers)."""
        started = time.monotonic()
        noted = False
        pending = list(runtimes)
        waiting: list[tuple[PodRuntime, list[str]]] = []

        def applied() -> bool | None:
            nonlocal pending, waiting, noted
            if not pending:
                return True
            waiting = []
            answers = admin_get_all([r.paths.admin_socket for r in pending], _VERSION_STATS_PATH)
            for runtime, answer in zip(pending, answers, strict=True):
                if isinstance(answer, OSError):
                    self._check_alive(runtime)
                    problems = [f"admin socket: {answer}"]
                else:
                    problems = self._version_problems(runtime, answer[1])
                if problems:
                    waiting.append((runtime, problems))
            if not waiting:
                return True
            self._raise_if_broken()  # a dead or stopped Envoy never catches up: say so now
            if not noted and time.monotonic() - started > SLOW_PROPAGATION_S:
                self._progress(
                    "waiting for Envoy of " + ", ".join(r.key for r, _ in waiting) + " to apply"
                )
                noted = True
            pending = [r for r, _ in waiting]
            return None

        try:
            poll(applied, timeout=PROPAGATION_DEADLINE_S, interval=0.001, what="config in force")
        except WaitTimeout:
            raise PropagationTimeout(
                f"policy change not in force within {PROPAGATION_DEADLINE_S:.0f}s at: "
                + "; ".join(f"{r.key} ({', '.join(p)})" for r, p in waiting)
            ) from None

    @contextlib.contextmanager
    def capture(self, workload: Workload, port: int | None = None) -> Iterator[PcapRecording]:
        """tcpdump on the pod's eth0 (never loopback) for the duration of the block."""
        runtime = self._runtime(workload)
        if port is not None and (isinstance(port, bool) or not 1 <= int(port) <= 65535):
            raise MeshError(f"capture port must be in 1..65535, got {port!r}")
        recording = PcapRecording(workload=workload, port=port)
        pcap_dir = self.run_dir / "captures"
        pcap_dir.mkdir(mode=host.PRIVATE_DIR_MODE, exist_ok=True)
        host.private_directory(pcap_dir)
        path = pcap_dir / pcap_file_name(workload.key)
        # Made 0600 before tcpdump opens it (tcpdump keeps an existing file's mode): a live
        # capture's plaintext payloads are root's alone.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, host.PRIVATE_FILE_MODE))
        marker = secrets.token_hex(8)
        peer = next(p.ip for p in self.topology.pods if p.ip != runtime.pod.ip)
        flt = capture_filter(port, peer)
        argv = ["setpriv", "--pdeathsig=KILL", "tcpdump", "-i", "eth0", "-U", "--immediate-mode"]
        argv += ["-n", "-Z", "root", "-s", "0", "-w", str(path), flt]
        proc = self._popen(
            host.in_netns(runtime.netns, argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=self._env,
        )
        try:
            recording.tool_stderr = _wait_for_line(proc, b"listening on", 10.0)
            yield recording
            # A marker datagram to another pod proves tcpdump has written everything before it.
            self.exec(workload, ["bash", "-c", f"echo {marker} > /dev/udp/{peer}/{MARKER_PORT}"])
            _wait_until(
                lambda: path.exists() and marker.encode() in path.read_bytes(),
                5.0,
                f"tcpdump in {workload.key} to record the end-of-capture marker",
            )
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            recording.tool_stderr += err.decode(errors="replace")
        recording.pcap = path.read_bytes()
        recording.path = path

    def envoy_admin(self, workload: Workload, path: str) -> bytes:
        """GET an admin path (e.g. `/certs`, `/config_dump`) on the workload's sidecar."""
        runtime = self._runtime(workload)
        if runtime.envoy is None:
            raise MeshError(f"{workload.key} has no sidecar")
        if not path.startswith("/"):
            raise MeshError(f"Envoy admin path must start with '/', got {path!r}")
        try:
            status, body = admin_get(runtime.paths.admin_socket, path)
        except OSError as exc:
            self._check_alive(runtime)
            raise MeshError(f"Envoy admin {path} on {workload.key}: {exc}") from exc
        if status != 200:
            raise MeshError(
                f"Envoy admin {path} on {workload.key} answered {status}: {body[:200]!r}"
            )
        return body

    # -- sidecar health (the watcher is in agent.py) -------------------------------------------

    def envoy_pid(self, workload: Workload) -> int:
        """The PID of the workload's Envoy (the process the mesh started and watches)."""
        runtime = self._runtime(workload)
        if runtime.envoy is None:
            raise MeshError(f"{workload.key} has no sidecar")
        return runtime.envoy.pid


_PROXY_OWNER = (PROXY_UID, PROXY_GID)


def _write_json(
    path: Path, data: Any, *, owner: tuple[int, int] | None = _PROXY_OWNER, mode: int = 0o600
) -> None:
    _write_text(path, json.dumps(data), owner=owner, mode=mode)


def _write_text(
    path: Path, text: str, *, owner: tuple[int, int] | None = _PROXY_OWNER, mode: int = 0o600
) -> None:
    """Write then rename into place: Envoy's watched_directory sees one atomic move.

    Every file is Envoy's (uid 1337) and 0600: config, keys and logs are no other user's.
    """
    tmp = path.parent / f".{path.name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        if owner is not None:
            os.fchown(fd, *owner)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _private_log(path: Path) -> IO[bytes]:
    """A log file (0600, root's) opened for a child process to write; the caller closes it."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


def _discovery_text(version: int, resources_json: str) -> str:
    """xds.discovery_file as text, from resources already encoded (they were, to compare)."""
    return f'{{"version_info": "{version}", "resources": {resources_json}}}'


def _wait_for_line(proc: subprocess.Popen[bytes], needle: bytes, timeout: float) -> str:
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + timeout
    fd = proc.stderr.fileno()
    while needle not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            raise MeshError(
                f"tcpdump did not start listening: {seen.decode(errors='replace').strip()}"
            )
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                continue
            seen += chunk
    return seen.decode(errors="replace")


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """`waiting.poll` every 5 ms; a timeout is a MeshError naming `what`."""
    try:
        poll(lambda: True if condition() else None, timeout=timeout, interval=0.005, what=what)
    except WaitTimeout as timed_out:
        raise MeshError(f"timed out waiting for {timed_out}") from None


# Envoy's access log lines start with the request's start time (`[%START_TIME%]`, UTC), its own
# log lines with a local time stamp (`[%Y-%m-%d %T.%e]`).
_ACCESS_STAMP: Final = re.compile(r"\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z\]")
_ENVOY_STAMP: Final = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\]")


def _lines_since(text: str, at: float) -> str:
    """The lines of `text` not stamped before `at` (Unix time). Envoy flushes its logs every
    ENVOY_FILE_FLUSH_MS, so a file offset taken at `at` may precede lines of earlier requests;
    their time stamps tell them apart. Unstamped lines follow the line before them."""
    kept: list[str] = []
    keep = True
    for line in text.splitlines(keepends=True):
        if match := _ACCESS_STAMP.match(line):
            moment = dt.datetime.fromisoformat(match.group(1)).replace(tzinfo=dt.UTC)
            keep = moment.timestamp() >= at - 0.001
        elif match := _ENVOY_STAMP.match(line):
            keep = dt.datetime.fromisoformat(match.group(1)).timestamp() >= at - 0.001
        if keep:
            kept.append(line)
    return "".join(kept)
