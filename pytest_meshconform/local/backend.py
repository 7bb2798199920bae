"""The local mesh: pods as network namespaces, real Envoy sidecars, iptables interception, our CA.

Lifecycle: `LocalMesh(...).start()` sweeps what dead runs left, builds the topology (a node
namespace holding a bridge, one namespace per pod wired to it by a veth pair), writes each
sidecar's bootstrap, xDS and SDS files, starts every Envoy (uid 1337) and app, and waits until
all are ready. `close()` ends every process by the PID it started and deletes every namespace,
/etc/netns entry and file. Every request starts inside a pod namespace: nothing is ever sent to
a pod address from the root namespace.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..certs import rotation_time
from ..mesh import ExecResult, MeshError, PcapRecording, PropagationTimeout, Service, Workload
from ..policy import PolicyError, parse_policy
from . import host, xds
from .ca import IssuedCert, MeshCA
from .control import Faults, Policy, plan_sidecars
from .topology import (
    EXCLUDED_INBOUND_PORTS,
    INBOUND_CAPTURE_PORT,
    INBOUND_PASSTHROUGH_BIND,
    OUTBOUND_CAPTURE_PORT,
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

Progress = Callable[[str], None]
ENVOY_DRAIN_TIME_S = 1  # a mode switch reaches kept-alive connections within a second
READY_DEADLINE_S = 20.0
PROPAGATION_DEADLINE_S = 10.0


def istio_iptables_rules(pod: Pod, topology: Topology) -> str:
    """nat rules for one pod, in iptables-restore format.

    Sidecar pods get istio-iptables' interception (tools/istio-iptables/pkg/capture/run.go):
    inbound TCP to 15006, outbound TCP to 15001, the proxy's uid/gid 1337 and traffic from
    127.0.0.6 excluded. Every pod gets kube-proxy-style DNAT of Service VIPs, jumped from OUTPUT
    after ISTIO_OUTPUT, so Envoy (uid 1337) and naked apps reach the endpoint's target port.
    """
    services = [
        f"-A MC_SERVICES -d {e.vip}/32 -p tcp --dport {e.service.port} -j DNAT"
        f" --to-destination {e.endpoints[0].ip}:{e.service.target_port}"
        for e in topology.services
    ]
    lines = ["*nat", ":MC_SERVICES - [0:0]"]
    if pod.workload.has_sidecar:
        lines += [
            ":ISTIO_INBOUND - [0:0]",
            ":ISTIO_IN_REDIRECT - [0:0]",
            ":ISTIO_OUTPUT - [0:0]",
            ":ISTIO_REDIRECT - [0:0]",
            "-A PREROUTING -p tcp -j ISTIO_INBOUND",
            *(
                f"-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN"
                for port in EXCLUDED_INBOUND_PORTS
            ),
            "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
            f"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {INBOUND_CAPTURE_PORT}",
            "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
            f"-A ISTIO_OUTPUT -s {INBOUND_PASSTHROUGH_BIND}/32 -o lo -j RETURN",
            f"-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner {PROXY_UID}"
            " -j ISTIO_IN_REDIRECT",
            f"-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner {PROXY_UID} -j RETURN",
            f"-A ISTIO_OUTPUT -m owner --uid-owner {PROXY_UID} -j RETURN",
            f"-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --gid-owner {PROXY_GID}"
            " -j ISTIO_IN_REDIRECT",
            f"-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner {PROXY_GID} -j RETURN",
            f"-A ISTIO_OUTPUT -m owner --gid-owner {PROXY_GID} -j RETURN",
            "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
            "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
            f"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {OUTBOUND_CAPTURE_PORT}",
        ]
    lines += ["-A OUTPUT -p tcp -j MC_SERVICES", *services, "COMMIT", ""]
    return "\n".join(lines)


def _admin_get(sock_path: Path, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """HTTP/1.1 GET on Envoy's admin unix socket (admin answers HTTP/1.0 with 426)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(sock_path))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: envoy\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    status = int(status_line.split()[1])
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (h.partition(b":") for h in header_lines)
    }
    if headers.get(b"transfer-encoding") == b"chunked":
        body = _dechunk(body)
    return status, body


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


@dataclass
class _PodRuntime:
    pod: Pod
    netns: str
    directory: Path
    paths: xds.SidecarPaths
    envoy: subprocess.Popen[bytes] | None = None
    app: subprocess.Popen[bytes] | None = None
    lds_version: int = 0
    cds_version: int = 0
    lds_doc: str = ""
    cds_doc: str = ""
    cert: IssuedCert | None = None
    cert_version: int = 0
    next_rotation: dt.datetime | None = None


class LocalMesh:
    """The `local` backend of the Mesh protocol."""

    backend = "local"
    trust_domain = TRUST_DOMAIN
    root_namespace = ROOT_NAMESPACE

    def __init__(
        self,
        cert_ttl: dt.timedelta = dt.timedelta(hours=24),
        *,
        faults: Faults | None = None,
        keep: bool = False,
        progress: Progress | None = None,
        topology: Topology | None = None,
    ) -> None:
        self.cert_ttl = cert_ttl
        self.faults = faults or Faults()
        self.keep = keep
        self.topology = topology or default_topology()
        self._progress = progress or (lambda message: None)
        self._policies: dict[tuple[str, str, str], Policy] = {}
        self._manifests: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._pods: dict[str, _PodRuntime] = {}
        self._state: host.RunState | None = None
        self._ca: MeshCA | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._agent: threading.Thread | None = None
        self._envoy_path: Path | None = None
        self.rotations: list[tuple[str, int, int, dt.datetime]] = []  # (pod, old, new, when)

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

    def workloads(self) -> Sequence[Workload]:
        return tuple(p.workload for p in self.topology.pods)

    def workload(self, name: str, namespace: str) -> Workload:
        return self.topology.pod(name, namespace).workload

    def services(self) -> Sequence[Service]:
        return tuple(e.service for e in self.topology.services)

    def pod_ip(self, workload: Workload) -> str:
        return self.topology.pod_of(workload).ip

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> LocalMesh:
        started = time.monotonic()
        host.preflight()
        swept = host.sweep_stale_runs()
        if swept:
            self._progress(f"swept leftovers of dead runs: {', '.join(swept)}")
        self._state = host.RunState.create(secrets.token_hex(3))
        try:
            self._ca = MeshCA(TRUST_DOMAIN)
            self._prepare_envoy_binary()
            self._progress(f"local mesh {self.run_id}: creating {len(self.topology.pods)} pods")
            self._build_network()
            self._write_initial_config()
            self._start_processes()
            self._wait_ready()
            self._agent = threading.Thread(
                target=self._rotation_agent, name="mc-agent", daemon=True
            )
            self._agent.start()
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
        self._stop.set()
        if self._agent is not None:
            self._agent.join(timeout=5)
            self._agent = None
        state = self._state
        if state is None:
            return
        if self.keep and not force:
            self._progress(
                f"--mesh-keep: left local mesh {state.run_id} running: namespaces"
                f" {', '.join(state.netns)}; state in {state.directory}; the next run sweeps it"
                " once this process has exited"
            )
            return
        host.teardown_state(state)
        self._state = None

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
        # uid 1337 may not traverse the venv (e.g. under /root or a mode-700 temp dir): give Envoy
        # a hard link (or copy) inside the run directory, which is world-traversable.
        source = host.envoy_binary()
        target = self.run_dir / "envoy"
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
        os.chmod(target, 0o755)
        self._envoy_path = target

    def _netns_name(self, pod: Pod) -> str:
        return f"{host.NETNS_PREFIX}{self.run_id}-{pod.workload.namespace}-{pod.workload.name}"

    def _build_network(self) -> None:
        state = self._require_state()
        node = f"{host.NETNS_PREFIX}{self.run_id}-node"
        state.add_netns(node)
        host.run(["ip", "netns", "add", node])
        host.run(
            ["ip", "-n", node, "-batch", "-"],
            input=b"link add br0 type bridge\nlink set br0 up\nlink set lo up\n",
        )
        for index, pod in enumerate(self.topology.pods):
            netns = self._netns_name(pod)
            state.add_netns(netns)
            host.run(["ip", "netns", "add", netns])
            etc = host.NETNS_ETC / netns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(self.topology.hosts_file(pod))
            (etc / "resolv.conf").write_text(self.topology.resolv_conf(pod))
            veth = f"veth{index}"
            host.run(
                ["ip", "-n", node, "-batch", "-"],
                input=(
                    f"link add {veth} type veth peer name eth0 netns {netns}\n"
                    f"link set {veth} master br0\nlink set {veth} up\n"
                ).encode(),
            )
            host.run(
                ["ip", "-n", netns, "-batch", "-"],
                input=(
                    "link set lo up\n"
                    f"addr add {pod.ip}/{POD_PREFIX_LEN} dev eth0\n"
                    "link set eth0 up\n"
                    f"route add {SERVICE_CIDR} dev eth0\n"
                ).encode(),
            )
            host.run(
                host.in_netns(netns, ["iptables-restore"]),
                input=istio_iptables_rules(pod, self.topology).encode(),
            )
            directory = self.run_dir / "pods" / pod.workload.key
            directory.mkdir(parents=True)
            runtime = _PodRuntime(pod, netns, directory, xds.SidecarPaths(directory / "envoy"))
            self._pods[pod.workload.key] = runtime

    def _write_initial_config(self) -> None:
        plans = plan_sidecars(self.topology, [], self.root_namespace, self.faults)
        ca = self._require_ca()
        for key, plan in plans.items():
            runtime = self._pods[key]
            paths = runtime.paths
            for sub in (paths.lds.parent, paths.cds.parent, paths.sds_dir):
                sub.mkdir(parents=True, exist_ok=True)
            _write_json(paths.bootstrap, xds.bootstrap(runtime.pod, paths))
            _write_json(
                paths.sds(xds.ROOT_SECRET),
                xds.secret_resources(xds.ROOT_SECRET, root_pem=ca.root_pem),
            )
            self._issue_cert(runtime)
            self._render(runtime, plan)
            for path in paths.root.rglob("*"):
                os.chown(path, PROXY_UID, PROXY_GID)
            os.chown(paths.root, PROXY_UID, PROXY_GID)

    def _issue_cert(self, runtime: _PodRuntime) -> None:
        w = runtime.pod.workload
        service_account = (
            f"{w.service_account}-impostor" if self.faults.wrong_spiffe_id else w.service_account
        )
        cert = self._require_ca().issue_workload(w.namespace, service_account, self.cert_ttl)
        runtime.cert = cert
        runtime.cert_version += 1
        _write_json(
            runtime.paths.sds(xds.WORKLOAD_SECRET),
            xds.secret_resources(
                xds.WORKLOAD_SECRET, cert_pem=cert.cert_pem + self.root_cert, key_pem=cert.key_pem
            ),
            owner=(PROXY_UID, PROXY_GID),
            mode=0o600,
        )
        runtime.next_rotation = (
            None if self.faults.no_rotation else rotation_time(cert.not_before, cert.not_after)
        )

    def _render(self, runtime: _PodRuntime, plan: xds.SidecarPlan) -> bool:
        """Write the sidecar's CDS then LDS when they changed; True when anything was written."""
        changed = False
        cds_doc = json.dumps(xds.clusters(plan, runtime.paths), sort_keys=True)
        if cds_doc != runtime.cds_doc:
            runtime.cds_version += 1
            runtime.cds_doc = cds_doc
            _write_json(
                runtime.paths.cds,
                xds.discovery_file(str(runtime.cds_version), json.loads(cds_doc)),
                owner=(PROXY_UID, PROXY_GID),
            )
            changed = True
        lds_doc = json.dumps(xds.listeners(plan, runtime.paths), sort_keys=True)
        if lds_doc != runtime.lds_doc:
            runtime.lds_version += 1
            runtime.lds_doc = lds_doc
            _write_json(
                runtime.paths.lds,
                xds.discovery_file(str(runtime.lds_version), json.loads(lds_doc)),
                owner=(PROXY_UID, PROXY_GID),
            )
            changed = True
        return changed

    def _spawn(
        self, runtime: _PodRuntime, argv: list[str], log_name: str
    ) -> subprocess.Popen[bytes]:
        log = open(runtime.directory / log_name, "wb")  # noqa: SIM115 - owned by the child
        try:
            proc = subprocess.Popen(
                host.in_netns(runtime.netns, argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal is ours to handle, not theirs
            )
        finally:
            log.close()
        self._require_state().add_pid(proc.pid)
        return proc

    def _start_processes(self) -> None:
        envoy = str(self._envoy_path)
        for runtime in self._pods.values():
            w = runtime.pod.workload
            if w.has_sidecar:
                runtime.envoy = self._spawn(
                    runtime,
                    [
                        "setpriv",
                        f"--reuid={PROXY_UID}",
                        f"--regid={PROXY_GID}",
                        "--clear-groups",
                        "--pdeathsig=KILL",
                        envoy,
                        "-c",
                        str(runtime.paths.bootstrap),
                        "--disable-hot-restart",
                        "--concurrency",
                        "1",
                        "--drain-time-s",
                        str(ENVOY_DRAIN_TIME_S),
                        "--drain-strategy",
                        "immediate",
                        "--log-level",
                        "warning",
                    ],
                    "envoy.log",
                )
            if w.app == "httpbin":
                runtime.app = self._spawn(
                    runtime,
                    [
                        "setpriv",
                        "--pdeathsig=KILL",
                        sys.executable,
                        "-m",
                        "waitress",
                        f"--listen=0.0.0.0:{w.container_ports[0]}",
                        "--threads=8",
                        "httpbin:app",
                    ],
                    "app.log",
                )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_DEADLINE_S
        pending = {k: r for k, r in self._pods.items() if r.envoy or r.app}
        self._progress(
            f"waiting for {sum(bool(r.envoy) + bool(r.app) for r in pending.values())} processes"
        )
        while pending:
            for key, runtime in list(pending.items()):
                self._check_alive(runtime)
                if self._envoy_ready(runtime) and self._app_ready(runtime):
                    del pending[key]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise MeshError(
                    f"local mesh not ready after {READY_DEADLINE_S:.0f}s: waiting for "
                    + ", ".join(f"{k} ({self._log_tail(r)})" for k, r in pending.items())
                )
            time.sleep(0.01)

    def _envoy_ready(self, runtime: _PodRuntime) -> bool:
        if runtime.envoy is None:
            return True
        try:
            status, body = _admin_get(runtime.paths.admin_socket, "/ready", timeout=1)
        except OSError:
            return False
        return status == 200 and body.strip() == b"LIVE"

    @staticmethod
    def _app_ready(runtime: _PodRuntime) -> bool:
        if runtime.app is None:
            return True
        try:
            return b"Serving on" in (runtime.directory / "app.log").read_bytes()
        except OSError:
            return False

    def _check_alive(self, runtime: _PodRuntime) -> None:
        for name, proc in (("envoy", runtime.envoy), ("app", runtime.app)):
            if proc is not None and proc.poll() is not None:
                raise MeshError(
                    f"{name} of {runtime.pod.workload.key} exited with {proc.returncode}:"
                    f" {self._log_tail(runtime, 'envoy.log' if name == 'envoy' else 'app.log')}"
                )

    @staticmethod
    def _log_tail(runtime: _PodRuntime, name: str = "envoy.log", lines: int = 5) -> str:
        try:
            text = (runtime.directory / name).read_text(errors="replace")
        except OSError:
            return "no log"
        return " | ".join(text.strip().splitlines()[-lines:]) or "empty log"

    def logs(self, workload: Workload) -> dict[str, str]:
        """The sidecar's and the app's logs so far, for failure reports."""
        runtime = self._runtime(workload)
        found = {}
        for name in ("envoy.log", "app.log"):
            path = runtime.directory / name
            if path.exists():
                found[name] = path.read_text(errors="replace")
        return found

    def _runtime(self, workload: Workload) -> _PodRuntime:
        try:
            return self._pods[workload.key]
        except KeyError:
            raise MeshError(f"no workload {workload.key} in the local mesh") from None

    # -- Mesh protocol: actions ------------------------------------------------------------------

    def exec(self, workload: Workload, argv: Sequence[str], timeout: float = 30.0) -> ExecResult:
        runtime = self._runtime(workload)
        try:
            proc = subprocess.run(
                host.in_netns(runtime.netns, list(argv)),
                capture_output=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise MeshError(
                f"`{' '.join(argv)}` in {workload.key} did not finish within {timeout}s"
            ) from exc
        return ExecResult(proc.returncode, proc.stdout, proc.stderr)

    def policies(self) -> Sequence[Mapping[str, Any]]:
        with self._lock:
            return [json.loads(json.dumps(m)) for m in self._manifests.values()]

    def apply(self, manifest: Mapping[str, Any]) -> None:
        try:
            policy = parse_policy(dict(manifest))
        except PolicyError as exc:
            raise MeshError(f"invalid policy: {exc}") from exc
        key = (type(policy).__name__, policy.namespace or "default", policy.name)
        with self._lock:
            self._policies[key] = policy
            self._manifests[key] = policy.to_manifest()
            self._push()

    def delete(self, manifest: Mapping[str, Any]) -> None:
        try:
            policy = parse_policy(dict(manifest))
        except PolicyError as exc:
            raise MeshError(f"invalid policy: {exc}") from exc
        key = (type(policy).__name__, policy.namespace or "default", policy.name)
        with self._lock:
            self._policies.pop(key, None)
            self._manifests.pop(key, None)
            self._push()

    def _push(self) -> None:
        plans = plan_sidecars(
            self.topology, list(self._policies.values()), self.root_namespace, self.faults
        )
        changed = [
            self._pods[key] for key, plan in plans.items() if self._render(self._pods[key], plan)
        ]
        self._wait_versions(changed)

    def _stat_text(self, runtime: _PodRuntime, name: str) -> str | None:
        _, body = _admin_get(
            runtime.paths.admin_socket, f"/stats?filter=^{name}$&type=TextReadouts"
        )
        for line in body.decode(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip().strip('"')
        return None

    def _stat_counter(self, runtime: _PodRuntime, name: str) -> int:
        _, body = _admin_get(runtime.paths.admin_socket, f"/stats?filter=^{name}$")
        for line in body.decode(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return int(value.strip())
        return 0

    def _wait_versions(self, runtimes: list[_PodRuntime]) -> None:
        """Wait until every changed Envoy reports the versions just written (LDS and CDS)."""
        deadline = time.monotonic() + PROPAGATION_DEADLINE_S
        pending = list(runtimes)
        while pending:
            still = []
            for runtime in pending:
                lds = self._stat_text(runtime, "listener_manager.lds.version_text")
                cds = self._stat_text(runtime, "cluster_manager.cds.version_text")
                if lds == str(runtime.lds_version) and cds == str(runtime.cds_version):
                    continue
                for kind in ("listener_manager.lds", "cluster_manager.cds"):
                    if self._stat_counter(runtime, f"{kind}.update_rejected"):
                        raise MeshError(
                            f"Envoy of {runtime.pod.workload.key} rejected the new config:"
                            f" {self._log_tail(runtime)}"
                        )
                still.append((runtime, lds, cds))
            if not still:
                return
            if time.monotonic() > deadline:
                raise PropagationTimeout(
                    f"policy change not applied within {PROPAGATION_DEADLINE_S:.0f}s by: "
                    + ", ".join(
                        f"{r.pod.workload.key} (wants lds {r.lds_version}/cds {r.cds_version},"
                        f" has {lds}/{cds})"
                        for r, lds, cds in still
                    )
                )
            pending = [r for r, _, _ in still]
            time.sleep(0.002)

    @contextlib.contextmanager
    def capture(self, workload: Workload, port: int | None = None) -> Iterator[PcapRecording]:
        runtime = self._runtime(workload)
        recording = PcapRecording(workload=workload, port=port)
        pcap_dir = self.run_dir / "captures"
        pcap_dir.mkdir(exist_ok=True)
        path = pcap_dir / f"{workload.key}-{int(time.time() * 1000)}-{secrets.token_hex(2)}.pcap"
        marker = secrets.token_hex(8)
        peer = next(p.ip for p in self.topology.pods if p.ip != runtime.pod.ip)
        marker_filter = f"(udp and dst host {peer} and dst port 9)"
        tcp_filter = "tcp" if port is None else f"(tcp port {port})"
        flt = f"{tcp_filter} or {marker_filter}"
        proc = subprocess.Popen(
            host.in_netns(
                runtime.netns,
                [
                    "tcpdump",
                    "-i",
                    "eth0",
                    "-U",
                    "--immediate-mode",
                    "-n",
                    "-Z",
                    "root",
                    "-s",
                    "0",
                    "-w",
                    str(path),
                    flt,
                ],
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._require_state().add_pid(proc.pid)
        try:
            recording.tool_stderr = _wait_for_line(proc, b"listening on", 10.0)
            yield recording
            # A marker datagram to another pod proves tcpdump has written everything before it.
            self.exec(workload, ["bash", "-c", f"echo {marker} > /dev/udp/{peer}/9"])
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
        runtime = self._runtime(workload)
        if runtime.envoy is None:
            raise MeshError(f"{workload.key} has no sidecar")
        status, body = _admin_get(runtime.paths.admin_socket, path)
        if status != 200:
            raise MeshError(
                f"Envoy admin {path} on {workload.key} answered {status}: {body[:200]!r}"
            )
        return body

    # -- agent: certificate rotation ---------------------------------------------------------------

    def _rotation_agent(self) -> None:
        while not self._stop.is_set():
            now = dt.datetime.now(dt.UTC)
            due = [r for r in self._pods.values() if r.next_rotation is not None]
            for runtime in due:
                assert runtime.next_rotation is not None and runtime.cert is not None
                if runtime.next_rotation <= now:
                    old = runtime.cert.serial
                    with self._lock:
                        self._issue_cert(runtime)
                    self.rotations.append((runtime.pod.workload.key, old, runtime.cert.serial, now))
            upcoming = [r.next_rotation for r in self._pods.values() if r.next_rotation is not None]
            wait = min(
                ((t - dt.datetime.now(dt.UTC)).total_seconds() for t in upcoming), default=60.0
            )
            self._stop.wait(max(0.005, min(wait, 60.0)))


def _write_json(
    path: Path, data: Any, *, owner: tuple[int, int] | None = None, mode: int = 0o644
) -> None:
    """Write then rename into place: Envoy's watched_directory sees one atomic move."""
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(json.dumps(data))
    os.chmod(tmp, mode)
    if owner is not None:
        os.chown(tmp, *owner)
    tmp.replace(path)


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
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise MeshError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)
