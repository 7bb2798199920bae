"""The local mesh's pods as processes: start them, run commands in them, stop them all.

`LocalLifecycle.start()` sweeps what dead runs left, records the run, creates one network
namespace per pod plus a "node" namespace holding a bridge (`network.py`), writes each
sidecar's bootstrap, xDS and SDS files (`delivery.py`), starts every Envoy (its own uid) and app
while it wires the pods to the bridge, and waits until every process is ready. `close()` ends
every process by the PID it started and deletes every namespace, /etc/netns entry and file.
Every request starts inside a pod namespace: nothing is ever sent to a pod address from the
root namespace.

Processes and uids: each sidecar's Envoy runs as a uid and gid of its own (`setpriv`; a block
per run from PROXY_ID_BASE, `host.allocate_proxy_ids`, where Istio runs every proxy as 1337:
here one Envoy must not read another pod's key or reach its admin socket), with the
supplementary group PROXY_GID that traverses the run directory; its pod's interception rules
exclude that uid and gid as istio-iptables excludes 1337. `exec` in a `sleep` pod runs as APP_UID,
the httpbin apps run as root (forked by `apps.py` from one Python, which may live where other
uids cannot read). Every process gets PR_SET_PDEATHSIG=SIGKILL, so a test process killed with
SIGKILL takes its mesh's processes with it; the next start sweeps the namespaces and files.
A kept mesh (`keep=True`) is started without it, so it outlives its owner until that sweep.
The kernel sends that signal when the *thread* that forked the process ends, so long-lived
processes are forked by a thread the mesh owns until close(), whatever thread calls it.

`LocalLifecycle` is the base of `backend.LocalMesh`'s rooms (`propagation.py`, `capture.py`,
`logs.py`); it holds the run's state, which `LocalMesh.__init__` sets.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import json
import os
import secrets
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Self

from pytest_meshconform import signals
from pytest_meshconform.backends.local import host, xds
from pytest_meshconform.backends.local.agent import SidecarAgent
from pytest_meshconform.backends.local.ca import MeshCA, WorkloadPrivateKey, generate_key
from pytest_meshconform.backends.local.control import (
    Faults,
    issued_identity,
    plan_sidecars,
    plan_waypoints,
    plan_ztunnels,
)
from pytest_meshconform.backends.local.delivery import (
    ENVOY_CONCURRENCY,
    render,
    version_problems,
    write_json,
    write_text,
)
from pytest_meshconform.backends.local.envoyadmin import admin_get
from pytest_meshconform.backends.local.grpc_client import GrpcClients
from pytest_meshconform.backends.local.network import create_namespaces, proxy_ids, wire_network
from pytest_meshconform.backends.local.runtime import PodRuntime, log_tail
from pytest_meshconform.backends.local.sidecar_hbone import with_internal_listeners
from pytest_meshconform.backends.local.topology import (
    APP_GID,
    APP_UID,
    PROXY_GID,
    TRUST_DOMAIN,
    Pod,
    Topology,
)
from pytest_meshconform.backends.local.waypoint import WaypointPlan, waypoint_bootstrap
from pytest_meshconform.backends.local.xds import SidecarPlan
from pytest_meshconform.backends.local.ztunnel import ZtunnelPlan, ztunnel_bootstrap
from pytest_meshconform.backends.registry import Progress
from pytest_meshconform.istio.api import Policy
from pytest_meshconform.istio.envoy import ROOT_SECRET, WORKLOAD_SECRET
from pytest_meshconform.istio.rotation import rotation_time
from pytest_meshconform.istio.tls import MinProtocolVersion
from pytest_meshconform.istio.ztunnel import ZTUNNEL_WORKLOAD_KEY, ztunnel_refresh_at
from pytest_meshconform.mesh import ExecResult, MeshError, Workload
from pytest_meshconform.waiting import WaitTimeout, poll

__all__ = ["ENVOY_DRAIN_TIME_S", "ENVOY_FILE_FLUSH_MS", "LocalLifecycle"]

# Filter chains replaced by a policy change drain at once: kept-alive connections (the client
# sidecars' pooled mTLS connections) must not go on being served by the old chain's RBAC or
# mode; `apply` also waits until no replaced chain is draining (`delivery.version_problems`).
ENVOY_DRAIN_TIME_S = 0
ENVOY_FILE_FLUSH_MS = 200  # access logs reach the disk (and failure reports) quickly
READY_DEADLINE_S = 20.0
PROGRESS_EVERY_S = 2.0


class LocalLifecycle(SidecarAgent):
    """The run's state and its processes: start, exec, close."""

    # Set by LocalMesh.__init__ (and start()).
    root_namespace: str
    cert_ttl: dt.timedelta
    min_tls_version: MinProtocolVersion
    faults: Faults
    keep: bool
    topology: Topology
    _progress: Progress
    _policies: dict[tuple[str, str, str], Policy]
    _manifests: dict[tuple[str, str, str], dict[str, Any]]
    _state: host.RunState | None
    _ca: MeshCA | None
    _agent: threading.Thread | None
    _envoy_path: Path | None
    _launcher: subprocess.Popen[bytes] | None
    _launcher_output: bytes
    _spawner: ThreadPoolExecutor | None
    _env: dict[str, str]
    _signals_owned: bool
    _watcher: threading.Thread | None
    _grpc_clients: GrpcClients

    # -- the run -------------------------------------------------------------------------------

    @property
    def root_cert(self) -> str:
        return self._require_ca().root_pem

    @property
    def run_id(self) -> str:
        return self._require_state().run_id

    @property
    def run_dir(self) -> Path:
        return self._require_state().directory

    @property
    def running(self) -> bool:
        return self._state is not None

    def netns(self, workload: Workload) -> str:
        """The network namespace of the workload's pod (`ip netns exec <it> ...`)."""
        return self._runtime(workload).netns

    def proxy_uid(self, workload: Workload) -> int:
        """The uid (and gid) this workload's Envoy runs as: its own, no other pod's."""
        runtime = self._runtime(workload)
        if runtime.proxy_id is None:
            raise MeshError(f"{workload.key} has no sidecar, so no proxy uid")
        return runtime.proxy_id

    def app_uid(self, workload: Workload) -> int:
        """The uid `exec` (and the app) runs as in this workload's pod."""
        return 0 if self._pod(workload).workload.container_ports else APP_UID

    def exec_argv(
        self, workload: Workload, argv: Sequence[str], *, uid: int | None = None
    ) -> list[str]:
        """The full command line `exec` runs, for callers that need a long-lived process
        (``uid``: another uid than the app's, 0 for the project's own Python, see `grpc_exec`).

        It carries PR_SET_PDEATHSIG: the process dies with the thread that starts it.
        """
        runtime = self._runtime(workload)
        if not argv:
            raise MeshError(f"exec in {workload.key}: empty command")
        uid = self.app_uid(workload) if uid is None else uid
        drop = [] if uid == 0 else [f"--reuid={uid}", f"--regid={APP_GID}", "--clear-groups"]
        return host.in_netns(runtime.netns, ["setpriv", *drop, "--pdeathsig=KILL", *argv])

    def pids(self) -> list[int]:
        """PIDs of the mesh's long-running processes (Envoys, app launcher, apps, the gRPC
        clients started so far)."""
        state = self._require_state()
        return [pid for pid, start in state.pids if host.proc_start_ticks(pid) == start]

    def _pod(self, workload: Workload) -> Pod:
        try:
            return self.topology.pod_of(workload)
        except KeyError as exc:
            raise MeshError(exc.args[0]) from None

    def _runtime(self, workload: Workload) -> PodRuntime:
        self._require_state()
        try:
            return self._pods[workload.key]
        except KeyError:
            known = ", ".join(self._pods)
            raise MeshError(
                f"no workload {workload.key} in the local mesh (have: {known})"
            ) from None

    # -- running commands in the pods ----------------------------------------------------------

    def exec(self, workload: Workload, argv: Sequence[str], timeout: float = 30.0) -> ExecResult:
        """Run argv in the workload's pod as the app's uid (APP_UID; root in httpbin pods).

        Raises SidecarDied when a process of the mesh has died or stopped: nothing run now
        would be evidence, and a stopped sidecar would make every request wait its timeout.
        """
        return self._run_in_pod(workload, self.exec_argv(workload, list(argv)), argv, timeout)

    def grpc_exec(
        self, workload: Workload, args: Sequence[str], timeout: float = 30.0
    ) -> ExecResult:
        """Run meshconform's gRPC client (`grpc_echo`, grpcio) with ``args`` in the workload's
        pod, in the pod's long-lived client process (`grpc_client`: started on its first call,
        a new connection per call). It runs as root, as the apps do: the project's Python may
        live where no other uid can read it (docs/istio-facts.md); its traffic is intercepted
        as any app's (only the proxy's uid is exempt)."""
        self._raise_if_broken()
        runtime = self._runtime(workload)

        def start() -> tuple[subprocess.Popen[bytes], Path, int]:
            argv = [sys.executable, "-m", "pytest_meshconform.backends.local.grpc_client"]
            path = runtime.directory / "grpc-client.log"
            log = os.fdopen(
                os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab"
            )  # evidence: root only, every client of the pod appends
            try:
                size = log.tell()
                proc = self._popen(
                    self.exec_argv(workload, argv, uid=0),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    start_new_session=True,  # Ctrl-C in the terminal is ours to handle
                    env=self._env,
                )
            finally:
                log.close()
            return proc, path, size

        result = self._grpc_clients.call(workload.key, args, timeout, start)
        return self._pod_result(workload, result)

    def _run_in_pod(
        self, workload: Workload, command: list[str], argv: Sequence[str], timeout: float
    ) -> ExecResult:
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
        return self._pod_result(workload, ExecResult(proc.returncode, proc.stdout, proc.stderr))

    def _pod_result(self, workload: Workload, result: ExecResult) -> ExecResult:
        """What ran in the pod returned; a MeshError when the pod's namespace was gone."""
        if result.returncode == 255 and result.stderr.startswith(b"Cannot open network namespace"):
            raise MeshError(
                f"the pod {workload.key} is gone ({self.netns(workload)}):"
                f" {result.stderr.decode(errors='replace').strip()}"
            )
        return result

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
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
            self._progress(f"local mesh {self.run_id}: creating {len(self.topology.all_pods)} pods")
            state = self._require_state()
            ids = proxy_ids(host.allocate_proxy_ids(state), self.topology)
            self._pods = create_namespaces(state, self.topology, ids)
            # The network is wired (ip, iptables-restore: other processes) while this thread
            # writes the config and starts the Envoys and apps; nothing of them needs it
            # before they are ready, and the mesh is ready only once both are done.
            with ThreadPoolExecutor(1, thread_name_prefix="meshconform-wire") as wiring:
                wired = wiring.submit(wire_network, self.run_id, self.topology, ids)
                try:
                    self._start_apps()  # forked once the launcher has imported httpbin
                    self._write_initial_config()  # each Envoy started once its files are
                finally:
                    wired.exception()  # never torn down while it is still wiring
                wired.result()
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

    def __enter__(self) -> Self:
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
        self._grpc_clients.close()  # a kept mesh keeps its pods, not the clients of its calls
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
        return _started(argv, self._popen_soon(argv, **options))

    def _popen_soon(self, argv: list[str], **options: Any) -> Future[subprocess.Popen[bytes]]:
        """`_popen` without waiting: the process, once the mesh's thread has started it
        (`_started` reads the future)."""
        if self._spawner is None:
            raise MeshError("the local mesh is not running (call start() first)")
        state = self._require_state()

        def spawn() -> subprocess.Popen[bytes]:
            proc = subprocess.Popen(argv, **options)
            state.add_pid(proc.pid)
            return proc

        return self._spawner.submit(spawn)

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
        # An Envoy's uid may not traverse the venv (e.g. under /root or a mode-700 home): give
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

    def _write_initial_config(self) -> None:
        plans: dict[str, SidecarPlan | ZtunnelPlan | WaypointPlan] = {
            **plan_sidecars(
                self.topology, [], self.root_namespace, self.faults, self.min_tls_version
            ),
            **plan_ztunnels(self.topology, [], self.root_namespace, self.faults),
            **plan_waypoints(self.topology, [], self.root_namespace, self.faults),
        }
        ca = self._require_ca()
        # RSA 2048 for the sidecars, made in parallel, not one by one (ztunnel's are EC P-256,
        # made on the spot in `_issue_cert`)
        keys = ca.workload_keys(sum(isinstance(plan, SidecarPlan) for plan in plans.values()))
        starting: list[tuple[PodRuntime, list[str], IO[bytes], Future[subprocess.Popen[bytes]]]]
        starting = []
        try:
            for key, plan in plans.items():
                runtime = self._pods[key]
                self._write_pod_config(runtime, plan, ca, keys)
                # Its Envoy starts (from the mesh's thread) while the next pod's files are
                # written.
                starting.append((runtime, *self._start_envoy(runtime)))
        finally:  # every process asked for is started (and recorded) before this returns
            for runtime, argv, log, future in starting:
                try:
                    runtime.envoy = _started(argv, future)
                finally:
                    log.close()

    def _write_pod_config(
        self,
        runtime: PodRuntime,
        plan: SidecarPlan | ZtunnelPlan | WaypointPlan,
        ca: MeshCA,
        keys: list[WorkloadPrivateKey],
    ) -> None:
        """One Envoy's directories and files: bootstrap, SDS (root, its certificate), CDS, LDS."""
        paths = runtime.paths
        owner = runtime.proxy_owner  # this pod's Envoy, no other pod's
        # Its directories are its Envoy's, 0700; every file in them is written as its
        # Envoy's, 0600, by `write_text`.
        for sub in (paths.root, paths.lds.parent, paths.cds.parent, paths.sds_dir):
            sub.mkdir(mode=host.PRIVATE_DIR_MODE)
            os.chown(sub, *owner)
            os.chmod(sub, host.PRIVATE_DIR_MODE)  # whatever the umask
        # Envoy appends to it: made first, so it is 0600 and not Envoy's default 0644.
        write_text(paths.access_log, "", owner=owner)
        if isinstance(plan, ZtunnelPlan):
            config = ztunnel_bootstrap(runtime.pod, paths)
        elif isinstance(plan, WaypointPlan):
            config = waypoint_bootstrap(runtime.pod, paths)
        else:
            config = xds.bootstrap(runtime.pod, paths)
            if plan.hbone_tunnels:  # its connect_originate listeners are internal
                config = with_internal_listeners(config)
        write_json(paths.bootstrap, config, owner=owner)
        write_json(
            paths.sds(ROOT_SECRET),
            xds.secret_resources(ROOT_SECRET, root_pem=ca.root_pem),
            owner=owner,
        )
        self._issue_cert(runtime, keys.pop() if isinstance(plan, SidecarPlan) else None)
        render(runtime, plan)

    def _issue_cert(self, runtime: PodRuntime, key: WorkloadPrivateKey | None = None) -> None:
        """A new certificate for the pod's proxy (its sidecar, or its ztunnel: an ECDSA P-256
        key, renewed halfway through, as ztunnel does), written for SDS."""
        namespace, service_account = issued_identity(runtime.pod.workload, self.faults)
        ambient = runtime.pod.workload.ambient
        if ambient:
            key = generate_key(ZTUNNEL_WORKLOAD_KEY)
        cert = self._require_ca().issue_workload(namespace, service_account, self.cert_ttl, key=key)
        runtime.cert = cert
        write_json(
            runtime.paths.sds(WORKLOAD_SECRET),
            xds.secret_resources(
                WORKLOAD_SECRET, cert_pem=cert.cert_pem + self.root_cert, key_pem=cert.key_pem
            ),
            owner=runtime.proxy_owner,
        )
        runtime.next_rotation = (
            None
            if self.faults.no_rotation
            else (ztunnel_refresh_at if ambient else rotation_time)(cert.not_before, cert.not_after)
        )

    def _start_envoy(
        self, runtime: PodRuntime
    ) -> tuple[list[str], IO[bytes], Future[subprocess.Popen[bytes]]]:
        """Start the pod's Envoy (its own uid) from the mesh's thread: its argv, its open log
        (the caller closes it once the process exists) and the future process."""
        argv = host.in_netns(
            runtime.netns,
            [
                "setpriv",
                f"--reuid={runtime.proxy_id}",
                f"--regid={runtime.proxy_id}",
                f"--groups={PROXY_GID}",  # to traverse the run directory only
                *self._pdeathsig(),
                str(self._envoy_path),
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
        )
        log = _private_log(runtime.directory / "envoy.log")
        try:
            future = self._popen_soon(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal is ours to handle, not theirs
                env=self._env,
            )
        except BaseException:
            log.close()
            raise
        return argv, log, future

    def _start_apps(self) -> None:
        """Hand every serving pod (httpbin, tcp-echo) to the launcher; it forks one app per pod
        once httpbin is imported, listening on each container port."""
        launcher = self._launcher
        assert launcher is not None and launcher.stdin is not None
        specs = []
        for runtime in self._pods.values():
            if runtime.serves_app:
                specs.append(
                    {
                        "key": runtime.key,
                        "netns": runtime.netns,
                        "serves": {
                            kind: " ".join(f"0.0.0.0:{port}" for port in ports)
                            for kind, ports in runtime.pod.apps().items()
                        },
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
            return not version_problems(runtime)
        except OSError:
            return False

    @staticmethod
    def _app_ready(runtime: PodRuntime) -> bool:
        if not runtime.serves_app:
            return True
        if runtime.app_pid is None:
            return False
        try:
            # every app prints one "Serving on" line per port it listens on (waitress, tcp-echo,
            # grpc-echo): a pod serving several apps is ready once every port is
            log = (runtime.directory / "app.log").read_bytes()
            return log.count(b"Serving on") >= len(runtime.pod.workload.container_ports)
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


def _started(argv: list[str], future: Future[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """The process `_popen_soon` started; a MeshError naming the command when it could not."""
    try:
        return future.result()
    except OSError as exc:
        raise MeshError(f"cannot start `{' '.join(argv)}`: {exc}") from exc


def _private_log(path: Path) -> IO[bytes]:
    """A log file (0600, root's) opened for a child process to write; the caller closes it."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
