"""A loopback fake of the Kubernetes API for the kube backend's tests (a helper module; its own
tests are in test_kube_fakes.py).

``FakeApiServer`` answers JSON GETs from a route table and runs exec requests over a real
WebSocket (RFC 6455, the ``v4.channel.k8s.io``/``v5.channel.k8s.io`` subprotocols: a channel
byte, then the payload) with a scripted handler, so the official kubernetes client runs its own
code path (URL building, handshake, framing, channel demux) against it. The framing code is
checked against the literal examples of RFC 6455 itself (test_kube_fakes.py). Listens on
127.0.0.1 only.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import socket
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from conftest import TESTDATA

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
DATA_DIR = Path(__file__).resolve().parent / "data" / "kube"


def websocket_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def encode_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final frame; masked (client to server) when ``mask`` is given."""
    head = bytes([0x80 | opcode])
    length = len(payload)
    mask_bit = 0x80 if mask is not None else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_frame(sock: socket.socket) -> tuple[int, bytes] | None:
    """(opcode, unmasked payload) of the next frame, None at EOF."""

    def exactly(n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    head = exactly(2)
    if head is None:
        return None
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    if length == 126:
        raw = exactly(2)
        if raw is None:
            return None
        length = struct.unpack("!H", raw)[0]
    elif length == 127:
        raw = exactly(8)
        if raw is None:
            return None
        length = struct.unpack("!Q", raw)[0]
    mask = exactly(4) if head[1] & 0x80 else None
    payload = exactly(length) if length else b""
    if payload is None or (head[1] & 0x80 and mask is None):
        return None
    if mask is not None:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return opcode, payload


@dataclass
class ExecCall:
    """An exec request as the API server saw it."""

    namespace: str
    pod: str
    container: str
    command: list[str]
    stdin: bool
    protocol: str


class ExecChannel:
    """The server side of one exec stream."""

    def __init__(self, sock: socket.socket, protocol: str) -> None:
        self.sock = sock
        self.protocol = protocol
        self.stdin = bytearray()
        self.stdin_closed = threading.Event()
        self._changed = threading.Condition()

    def send(self, channel: int, data: bytes) -> None:
        self.sock.sendall(encode_frame(0x2, bytes([channel]) + data))

    def send_status(self, status: Mapping[str, Any] | bytes) -> None:
        payload = status if isinstance(status, bytes) else json.dumps(status).encode()
        self.send(3, payload)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(encode_frame(0x8, struct.pack("!H", 1000)))

    def read_stdin(self) -> None:
        """Collect stdin frames until the client closes (runs on its own thread)."""
        try:
            while (frame := read_frame(self.sock)) is not None:
                opcode, payload = frame
                if opcode == 0x8:
                    break
                if payload[:1] == b"\x00":
                    with self._changed:
                        self.stdin += payload[1:]
                        self._changed.notify_all()
                elif payload[:2] == b"\xff\x00":  # v5: the client closed stdin
                    break
        except OSError:
            pass
        with self._changed:
            self.stdin_closed.set()
            self._changed.notify_all()

    def wait_stdin(self, predicate: Callable[[bytes], bool], timeout: float = 10.0) -> bool:
        with self._changed:
            return self._changed.wait_for(
                lambda: predicate(bytes(self.stdin)) or self.stdin_closed.is_set(), timeout
            ) and predicate(bytes(self.stdin))


ExecHandler = Callable[[ExecCall, ExecChannel], None]


@dataclass
class PortForwardCall:
    """A port-forward as the API server saw it, and the bytes the client sent the port."""

    namespace: str
    pod: str
    port: int
    request: bytes = b""


# (call) -> the bytes the pod's port answers, or a str: what the kubelet puts on the port's
# error channel (e.g. nothing listens on that port)
PortForwardHandler = Callable[[PortForwardCall], "bytes | str"]


@dataclass
class FakeApiServer:
    """JSON routes by exact path (query ignored unless the route includes it) and exec. A route
    is a JSON body, a (status, body) pair, or a callable of the request's path and body
    returning that pair (an answer that depends on what was asked)."""

    routes: dict[str, Any] = field(default_factory=dict)
    exec_handler: ExecHandler | None = None
    protocol: str = "v4.channel.k8s.io"
    requests: list[str] = field(default_factory=list)
    bodies: list[tuple[str, str, bytes]] = field(default_factory=list)  # request, type, body
    exec_calls: list[ExecCall] = field(default_factory=list)
    # pod name -> (HTTP status, metav1.Status): the API server refuses the exec in the handshake
    refused_pods: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    # when set, an exec handshake is held until the event is set (a slow API server)
    upgrade_gate: threading.Event | None = None
    port_forward_handler: PortForwardHandler | None = None
    port_forwards: list[PortForwardCall] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body leave in two writes: without TCP_NODELAY each answer waits out
            # the client's delayed ACK (40 ms on Linux)
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server.requests.append(f"GET {self.path}")
                if self.headers.get("Upgrade", "").lower() == "websocket":
                    server._upgrade(self)
                    return
                server._answer(self, "GET")

            def _with_body(self, method: str) -> None:
                server.requests.append(f"{method} {self.path}")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                server.bodies.append(
                    (f"{method} {self.path}", self.headers.get("Content-Type", ""), body)
                )
                server._answer(self, method, body)

            def do_POST(self) -> None:
                self._with_body("POST")

            def do_PATCH(self) -> None:
                self._with_body("PATCH")

            def do_DELETE(self) -> None:
                self._with_body("DELETE")

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _answer(self, handler: BaseHTTPRequestHandler, method: str, sent: bytes = b"") -> None:
        path = handler.path
        bare = urlsplit(path).path.rstrip("/") or "/"
        route = self.routes.get(f"{method} {path}", self.routes.get(f"{method} {bare}"))
        if route is None:
            status, body = (
                404,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": f"the server could not find the requested resource ({path})",
                    "reason": "NotFound",
                    "code": 404,
                },
            )
        elif callable(route):  # answers from the request: route(path, body) -> (status, JSON)
            status, body = route(path, sent)
        else:
            status, body = route if isinstance(route, tuple) else (200, route)
        payload = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _refused(self, handler: BaseHTTPRequestHandler, pod: str) -> bool:
        """Answer the handshake with the refusal ``refused_pods`` holds for ``pod``, if any."""
        if pod not in self.refused_pods:
            return False
        status, body = self.refused_pods[pod]
        payload = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)
        return True

    def _switch(self, handler: BaseHTTPRequestHandler) -> None:
        offered = handler.headers.get("Sec-WebSocket-Protocol", "")
        handler.send_response(101, "Switching Protocols")
        handler.send_header("Upgrade", "websocket")
        handler.send_header("Connection", "Upgrade")
        handler.send_header(
            "Sec-WebSocket-Accept", websocket_accept(handler.headers["Sec-WebSocket-Key"])
        )
        if self.protocol in offered:
            handler.send_header("Sec-WebSocket-Protocol", self.protocol)
        handler.end_headers()
        handler.wfile.flush()

    def _port_forward(self, handler: BaseHTTPRequestHandler, parts: list[str], query: Any) -> None:
        """The kubelet's WebSocket port-forward (one port): each of the port's two channels (0
        data, 1 error) first carries the port number, little-endian; then the data."""
        call = PortForwardCall(parts[3], parts[5], int(query.get("ports", ["0"])[0]))
        self.port_forwards.append(call)
        if self._refused(handler, call.pod):
            return
        self._switch(handler)
        sock = handler.connection
        for channel in (0, 1):
            sock.sendall(encode_frame(0x2, bytes([channel]) + struct.pack("<H", call.port)))
        while b"\r\n\r\n" not in call.request:
            frame = read_frame(sock)
            if frame is None or frame[0] == 0x8:
                break
            if frame[1][:1] == b"\x00":
                call.request += frame[1][1:]
        answer = (
            self.port_forward_handler(call)
            if self.port_forward_handler is not None
            else f"an error occurred forwarding {call.port}: no handler"
        )
        if isinstance(answer, str):
            sock.sendall(encode_frame(0x2, b"\x01" + answer.encode()))
        else:
            for start in range(0, len(answer), 16384):  # as a kubelet does: many frames
                sock.sendall(encode_frame(0x2, b"\x00" + answer[start : start + 16384]))
        with contextlib.suppress(OSError):
            sock.sendall(encode_frame(0x8, struct.pack("!H", 1000)))
        handler.close_connection = True

    def _upgrade(self, handler: BaseHTTPRequestHandler) -> None:
        split = urlsplit(handler.path)
        query = parse_qs(split.query)
        parts = split.path.strip("/").split("/")  # api v1 namespaces NS pods POD exec
        if parts[-1] == "portforward":
            self._port_forward(handler, parts, query)
            return
        call = ExecCall(
            namespace=parts[3],
            pod=parts[5],
            container=query.get("container", [""])[0],
            command=query.get("command", []),
            stdin=query.get("stdin", ["False"])[0].lower() == "true",
            protocol=self.protocol,
        )
        self.exec_calls.append(call)
        if self._refused(handler, call.pod):
            return
        if self.upgrade_gate is not None:
            self.upgrade_gate.wait(10)
        self._switch(handler)
        channel = ExecChannel(handler.connection, self.protocol)
        reader = threading.Thread(target=channel.read_stdin, daemon=True)
        reader.start()
        try:
            if self.exec_handler is not None:
                self.exec_handler(call, channel)
        finally:
            channel.close()
            reader.join(timeout=5)
        handler.close_connection = True


def kubeconfig_text(server: str, context: str = "fake") -> str:
    return (
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: {context}-cluster\n  cluster:\n    server: {server}\n"
        f"contexts:\n- name: {context}\n  context:\n    cluster: {context}-cluster\n"
        f"    user: {context}-user\n"
        f"current-context: {context}\n"
        f"users:\n- name: {context}-user\n  user:\n    token: not-a-secret\n"
    )


def load_exec_recording(name: str) -> dict[str, Any]:
    """A recorded exec session from tests/data/kube/exec-sessions.json, frames decoded."""
    sessions = json.loads((DATA_DIR / "exec-sessions.json").read_text())["sessions"]
    session = dict(sessions[name])
    session["frames"] = [
        (frame["channel"], base64.b64decode(frame["data_base64"])) for frame in session["frames"]
    ]
    return session


def replay(recording: Mapping[str, Any]) -> ExecHandler:
    """An exec handler that sends a recording's frames in order."""

    def handler(call: ExecCall, channel: ExecChannel) -> None:
        for number, data in recording["frames"]:
            channel.send(number, data)

    return handler


# --- an in-memory cluster with Istio, for KubeMesh ------------------------------------------
#
# REST-side state is held as API JSON built from the kubernetes client's own model classes
# (``sanitize_for_serialization``, exactly what ``KubeApi`` hands the backend); exec goes over
# the real client to a FakeApiServer whose handler plays istiod, the sidecars, curl and tcpdump.

# What `GET /version` answers on a kind v0.27 node (Kubernetes 1.32.2).
KUBE_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.2",
    "gitCommit": "67a30c0adcf52bd3f56ff0893ce19966be12991f",
    "gitTreeState": "clean",
    "buildDate": "2025-02-12T21:19:47Z",
    "goVersion": "go1.23.6",
    "compiler": "gc",
    "platform": "linux/amd64",
}

SHARED_SECRETS = TESTDATA / "secrets"
HOST_IP = "172.18.0.2"  # the kind node's address in docker's kind network
ISTIO_IMAGE_TAG = "1.25.1"
PROXY_IMAGE = f"docker.io/istio/proxyv2:{ISTIO_IMAGE_TAG}"


def model_json(model: Any) -> Any:
    from kubernetes import client as k8s

    return k8s.ApiClient().sanitize_for_serialization(model)


def istiod_deployment(
    *,
    revision: str | None = None,
    max_cert_ttl: str | None = None,
    image: str = f"docker.io/istio/pilot:{ISTIO_IMAGE_TAG}",
    namespace: str = "istio-system",
) -> dict[str, Any]:
    """istiod's Deployment as istioctl/Helm render it (labels, selector, discovery env)."""
    from kubernetes import client as k8s

    rev = revision or "default"
    labels = {"app": "istiod", "istio.io/rev": rev, "istio": "pilot"}
    env = [k8s.V1EnvVar(name="REVISION", value=rev)]
    if max_cert_ttl is not None:
        env.append(k8s.V1EnvVar(name="MAX_WORKLOAD_CERT_TTL", value=max_cert_ttl))
    deployment = k8s.V1Deployment(
        api_version="apps/v1",
        kind="Deployment",
        metadata=k8s.V1ObjectMeta(
            name="istiod" if revision is None else f"istiod-{revision}",
            namespace=namespace,
            labels=labels,
        ),
        spec=k8s.V1DeploymentSpec(
            selector=k8s.V1LabelSelector(match_labels={"app": "istiod", "istio.io/rev": rev}),
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=labels),
                spec=k8s.V1PodSpec(
                    containers=[
                        k8s.V1Container(
                            name="discovery",
                            image=image,
                            args=["discovery", "--monitoringAddr=:15014"],
                            env=env,
                        )
                    ]
                ),
            ),
        ),
    )
    return dict(model_json(deployment))


def pod_json(
    name: str,
    namespace: str,
    app: str,
    *,
    sidecar: bool,
    ready: bool = True,
    waiting_reason: str | None = None,
    labels: Mapping[str, str] | None = None,
    ephemeral: list[tuple[str, str]] | None = None,
    proxy_image: str = PROXY_IMAGE,
    hbone: bool = False,
    pod_ip: str = "10.244.0.17",
    node_name: str | None = None,
    annotations: Mapping[str, str] | None = None,
    service_account: str | None = None,
) -> dict[str, Any]:
    """A pod as the API returns it once scheduled: the app container, istio-proxy when
    injected, status Running/Ready (or waiting with ``waiting_reason``). ``hbone``: injected
    with ISTIO_META_ENABLE_HBONE=true, which Istio's injection template turns into the label
    ``networking.istio.io/tunnel: http`` and the proxy's env."""
    from kubernetes import client as k8s

    containers = [k8s.V1Container(name=app, image=f"example/{app}:1")]
    labels = dict(labels or {})
    if sidecar:
        env = [k8s.V1EnvVar(name="ISTIO_META_ENABLE_HBONE", value="true")] if hbone else None
        containers.append(k8s.V1Container(name="istio-proxy", image=proxy_image, env=env))
        if hbone:
            labels.setdefault("networking.istio.io/tunnel", "http")
    statuses = []
    for container in containers:
        state = (
            k8s.V1ContainerState(
                waiting=k8s.V1ContainerStateWaiting(
                    reason=waiting_reason, message=f'Back-off pulling image "{container.image}"'
                )
            )
            if waiting_reason and container.name == app
            else k8s.V1ContainerState(running=k8s.V1ContainerStateRunning())
        )
        statuses.append(
            k8s.V1ContainerStatus(
                name=container.name,
                image=container.image or "",
                image_id="",
                ready=ready and not waiting_reason,
                restart_count=0,
                state=state,
            )
        )
    ephemeral_statuses = [
        k8s.V1ContainerStatus(
            name=e_name,
            image="",
            image_id="",
            ready=False,
            restart_count=0,
            state=k8s.V1ContainerState(running=k8s.V1ContainerStateRunning())
            if e_state == "running"
            else k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(reason=e_state)),
        )
        for e_name, e_state in ephemeral or []
    ]
    is_ready = ready and not waiting_reason
    pod = k8s.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=k8s.V1ObjectMeta(
            name=name,
            namespace=namespace,
            labels={"app": app, **labels},
            annotations=dict(annotations) if annotations else None,
        ),
        spec=k8s.V1PodSpec(
            containers=containers, node_name=node_name, service_account_name=service_account
        ),
        status=k8s.V1PodStatus(
            phase="Running" if not waiting_reason else "Pending",
            host_ip=HOST_IP,
            pod_ip=pod_ip,
            conditions=[k8s.V1PodCondition(type="Ready", status="True" if is_ready else "False")],
            container_statuses=statuses,
            ephemeral_container_statuses=ephemeral_statuses or None,
        ),
    )
    return dict(model_json(pod))


# Istio's own injector output (../shared/testdata/istio-inject/, README there): the two forms a
# sidecar takes in a pod. "native": istio-proxy is an init container with restartPolicy Always
# (Kubernetes native sidecars; Istio's default since 1.28); "classic": an ordinary container.
INJECT_DATA = TESTDATA / "istio-inject"
INJECTOR_OUTPUT = {
    "native": "pod-native-default-1.28.0.yaml",
    "classic": "native-sidecar-opt-out-1.28.0.yaml",
}
INJECTOR_IMAGE = "gcr.io/istio-testing/proxyv2:latest"  # what the golden files were made with


def _running(name: str, image: str, *, ready: bool) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imageID": "",
        "ready": ready,
        "restartCount": 0,
        "started": True,
        "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}},
    }


def injected_pod_json(
    form: str,
    name: str,
    namespace: str,
    app: str,
    *,
    ready: bool = True,
    labels: Mapping[str, str] | None = None,
    proxy_image: str = PROXY_IMAGE,
    hbone: bool = False,
) -> dict[str, Any]:
    """A pod as Istio's injector writes it (``form`` "native" or "classic", its golden file
    in INJECT_DATA) with our app container in place of its ``hello``, once scheduled and
    running: istio-init terminated (Completed), istio-proxy running, started and (when
    ``ready``) ready, in ``initContainerStatuses`` for a native sidecar."""
    text = (INJECT_DATA / INJECTOR_OUTPUT[form]).read_text()
    # the golden files end with the YAML document separator: one pod, then nothing
    [pod] = [d for d in yaml.safe_load_all(text.replace(INJECTOR_IMAGE, proxy_image)) if d]
    meta = pod["metadata"]
    meta.update(name=name, namespace=namespace)
    meta["labels"] = {**(meta.get("labels") or {}), "app": app, **(labels or {})}
    spec = pod["spec"]
    hello = next(c for c in spec["containers"] if c["name"] == "hello")
    hello.update(name=app, image=f"example/{app}:1")
    hello["ports"] = [{"containerPort": 8080, "name": "http"}] if app == "httpbin" else []
    proxy = next(
        c
        for c in [*spec["containers"], *spec.get("initContainers", [])]
        if c["name"] == "istio-proxy"
    )
    if hbone:
        proxy["env"].append({"name": "ISTIO_META_ENABLE_HBONE", "value": "true"})
        meta["labels"].setdefault("networking.istio.io/tunnel", "http")
    init_statuses = []
    for container in spec.get("initContainers", []):
        if container.get("restartPolicy") == "Always":
            init_statuses.append(_running(container["name"], container["image"], ready=ready))
        else:
            init_statuses.append(
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": "",
                    "ready": True,
                    "restartCount": 0,
                    "started": False,
                    "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
                }
            )
    pod["status"] = {
        "phase": "Running",
        "hostIP": HOST_IP,
        "podIP": "10.244.0.17",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        "initContainerStatuses": init_statuses,
        "containerStatuses": [
            _running(c["name"], c["image"], ready=ready) for c in spec["containers"]
        ],
    }
    return pod


def container_state(pod: Mapping[str, Any], name: str) -> str | None:
    """ "running", "terminated" or "waiting" for a container of the pod (app, init or
    ephemeral), as its status says; None when the pod has no such container."""
    spec = pod.get("spec") or {}
    names = [
        c.get("name")
        for key in ("containers", "initContainers", "ephemeralContainers")
        for c in spec.get(key) or []
    ]
    if name not in names:
        return None
    status = pod.get("status") or {}
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for found in status.get(key) or []:
            if found.get("name") == name:
                state = found.get("state") or {}
                return next(
                    (k for k in ("running", "terminated", "waiting") if state.get(k) is not None),
                    "waiting",
                )
    return "waiting"


def config_map_json(namespace: str, name: str, data: Mapping[str, str]) -> dict[str, Any]:
    from kubernetes import client as k8s

    return dict(
        model_json(
            k8s.V1ConfigMap(
                api_version="v1",
                kind="ConfigMap",
                metadata=k8s.V1ObjectMeta(name=name, namespace=namespace),
                data=dict(data),
            )
        )
    )


# Istio's default mesh config as istioctl writes it into ConfigMap istio-system/istio (key
# "mesh"), trimmed to the fields meshconform reads plus neighbours.
DEFAULT_MESH_CONFIG = """\
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
  proxyMetadata:
    SECRET_TTL: 24h0m0s
defaultProviders:
  metrics:
  - prometheus
enablePrometheusMerge: true
rootNamespace: istio-system
trustDomain: cluster.local
"""


def root_pem_from_istio_dump() -> str:
    """The ROOTCA certificate of Istio's own config_dump test data (real istiod root)."""
    dump = json.loads((SHARED_SECRETS / "istio_config_dump.json").read_text())
    for secret in dump["configs"][0]["dynamic_active_secrets"]:
        if secret["name"] == "ROOTCA":
            trusted = secret["secret"]["validation_context"]["trusted_ca"]["inline_bytes"]
            return base64.b64decode(trusted).decode()
    raise AssertionError("no ROOTCA in istio_config_dump.json")


@dataclass
class FakeCluster:
    """An in-memory ClusterApi with Istio installed; exec delegates to a real ``KubeApi``."""

    exec_api: Any = None
    context: str = "fake"
    istio_namespace: str = "istio-system"
    deployments: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    config_maps: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    namespaces: dict[str, dict[str, Any]] = field(default_factory=dict)
    objects: dict[tuple[str, str, str, str], dict[str, Any]] = field(default_factory=dict)
    pods: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    served: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    root_pem: str = "-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n"
    pod_waiting: dict[str, str] = field(default_factory=dict)  # app -> waiting reason
    inject: bool = True
    proxy_image: str = PROXY_IMAGE  # what the injector puts in istio-proxy
    hbone_pods: bool = False  # injected with ISTIO_META_ENABLE_HBONE=true (see pod_json)
    calls: list[str] = field(default_factory=list)
    log_requests: list[tuple[str, str, str, int | None]] = field(default_factory=list)
    forbidden: set[str] = field(default_factory=set)  # operations answering 403 (RBAC)
    # operation ("list pods", "exec") -> how many more calls answer 503 (an API server restarting)
    flaky: dict[str, int] = field(default_factory=dict)
    dns_domain: str = "cluster.local"  # the kubelet's clusterDomain
    # "native" / "classic": injected pods as Istio's injector writes them (injected_pod_json;
    # needs ../shared/testdata/istio-inject); None: pod_json's classic pods
    injector_form: str | None = None
    # ambient: pods of namespaces labelled istio.io/dataplane-mode=ambient are enrolled by
    # istio-cni (its ambient.istio.io/redirection mark) unless ``cni`` is False; they run on
    # ``node`` with addresses of their own (10.244.7.N); ``ztunnel`` adds a ztunnel pod there
    cni: bool = True
    ztunnel: bool = False
    node: str = "istio-testing-control-plane"  # the node of the real 1.23 ztunnel dump
    _version: int = 100
    _ambient_ips: int = 0

    def _check(self, operation: str) -> None:
        from pytest_meshconform.backends.kube.client import KubeApiError

        if operation in self.forbidden:
            raise KubeApiError(f"{operation}: HTTP 403 Forbidden", 403)
        if self.flaky.get(operation, 0) > 0:
            self.flaky[operation] -= 1
            raise KubeApiError(f"{operation}: HTTP 503 Service Unavailable", 503)

    def __post_init__(self) -> None:
        self.deployments.setdefault(self.istio_namespace, [istiod_deployment()])
        self.config_maps.setdefault(
            (self.istio_namespace, "istio"),
            config_map_json(self.istio_namespace, "istio", {"mesh": DEFAULT_MESH_CONFIG}),
        )
        self.pods.setdefault(
            self.istio_namespace,
            [
                pod_json(
                    "istiod-7d4b9c8f6d-x2x9q",
                    self.istio_namespace,
                    "istiod",
                    sidecar=False,
                    labels={"istio.io/rev": "default"},
                )
            ],
        )
        if self.ztunnel:  # Istio's ztunnel and istio-cni DaemonSets: one pod each per node
            ztunnel = pod_json(
                "ztunnel-x7k2p",
                self.istio_namespace,
                "ztunnel",
                sidecar=False,
                node_name=self.node,
                pod_ip="10.244.0.5",
            )
            # the ztunnel chart's container: istio-proxy, image <hub>/ztunnel:<tag>
            ztunnel["spec"]["containers"][0].update(
                name="istio-proxy", image=f"docker.io/istio/ztunnel:{ISTIO_IMAGE_TAG}-distroless"
            )
            cni = pod_json(
                "istio-cni-node-q8v4d",
                self.istio_namespace,
                "istio-cni",
                sidecar=False,
                node_name=self.node,
                labels={"k8s-app": "istio-cni-node"},
            )
            self.pods[self.istio_namespace] += [ztunnel, cni]
        if not self.served:
            self.served = {
                ("security.istio.io", "PeerAuthentication"): ["v1", "v1beta1"],
                ("security.istio.io", "AuthorizationPolicy"): ["v1", "v1beta1"],
                ("networking.istio.io", "DestinationRule"): ["v1", "v1beta1", "v1alpha3"],
            }

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    # namespaces
    def create_namespace(self, manifest: Mapping[str, Any]) -> None:
        name = manifest["metadata"]["name"]
        self.calls.append(f"create namespace {name}")
        self.namespaces[name] = json.loads(json.dumps(manifest))
        # istiod publishes the mesh root into every namespace it discovers
        if self.discovered(name):
            self.config_maps[(name, "istio-ca-root-cert")] = config_map_json(
                name, "istio-ca-root-cert", {"root-cert.pem": self.root_pem}
            )

    def discovered(self, name: str) -> bool:
        """Whether istiod discovers a namespace: any of the mesh config's discoverySelectors
        matches its labels (and the API server's kubernetes.io/metadata.name), as istio.io's
        discovery-selectors guide describes them; all namespaces without selectors."""
        mesh_map = self.config_maps[(self.istio_namespace, "istio")]
        selectors = (yaml.safe_load(mesh_map["data"]["mesh"]) or {}).get("discoverySelectors")
        if not selectors:
            return True
        labels = (self.namespaces.get(name) or {}).get("metadata", {}).get("labels") or {}
        labels = {**labels, "kubernetes.io/metadata.name": name}

        def holds(expression: Mapping[str, Any]) -> bool:
            key, values = expression["key"], expression.get("values") or []
            return {
                "In": key in labels and labels[key] in values,
                "NotIn": labels.get(key) not in values,
                "Exists": key in labels,
                "DoesNotExist": key not in labels,
            }[expression["operator"]]

        return any(
            selector is not None
            and all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())
            and all(holds(e) for e in selector.get("matchExpressions") or [])
            for selector in selectors
        )

    def ambient(self, namespace: str) -> bool:
        """Whether the namespace is labelled for ambient (istio-cni's enablement selector)."""
        labels = (self.namespaces.get(namespace) or {}).get("metadata", {}).get("labels", {})
        return labels.get("istio.io/dataplane-mode") == "ambient"

    def injected(self, namespace: str) -> bool:
        """Whether Istio's injector webhooks select a namespace (mutatingwebhook.yaml): the
        default revision's for istio-injection=enabled, revision R's for istio.io/rev=R when
        istio-injection is absent; only revisions whose istiod is installed answer."""
        labels = (self.namespaces.get(namespace) or {}).get("metadata", {}).get("labels", {})
        revisions = {
            (d["metadata"].get("labels") or {}).get("istio.io/rev") or "default"
            for d in self.deployments.get(self.istio_namespace, [])
        }
        if "istio-injection" in labels:
            return labels["istio-injection"] == "enabled" and "default" in revisions
        return labels.get("istio.io/rev") in revisions

    def delete_namespace(self, name: str) -> bool:
        self.calls.append(f"delete namespace {name}")
        if (self.namespaces.get(name) or {}).get("metadata", {}).get("deletionTimestamp"):
            return False  # KubeApi.delete_namespace: 409, already terminating
        return self.namespaces.pop(name, None) is not None

    def list_namespaces(self, label_selector: str) -> list[dict[str, Any]]:
        self._check("list namespaces")
        key, _, value = label_selector.partition("=")
        return [
            ns
            for ns in self.namespaces.values()
            if (ns["metadata"].get("labels") or {}).get(key) == value
        ]

    # generic objects
    def served_versions(self, group: str, kind: str) -> list[str]:
        return list(self.served.get((group, kind), []))

    @staticmethod
    def _key(api_version: str, kind: str, namespace: str, name: str) -> tuple[str, str, str, str]:
        group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
        return (group, kind, namespace, name)

    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        key = self._key(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        self.calls.append(f"apply {manifest['kind']} {meta['namespace']}/{meta['name']}")
        if key[0].endswith("istio.io") and (key[0], key[1]) not in self.served:
            raise AssertionError(f"unserved kind {key}")
        current = self.objects.get(key)
        stored = json.loads(json.dumps(manifest))
        generation = 1
        if current is not None:
            generation = current["metadata"]["generation"]
            if current.get("spec") != stored.get("spec"):
                generation += 1
        stored["metadata"]["generation"] = generation
        stored["metadata"]["resourceVersion"] = self._next_version()
        stored["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001"
        self.objects[key] = stored
        if manifest["kind"] == "Deployment":
            self._schedule(stored)
        return json.loads(json.dumps(stored))

    def _schedule(self, deployment: Mapping[str, Any]) -> None:
        namespace = deployment["metadata"]["namespace"]
        app = deployment["metadata"]["name"]
        template = deployment["spec"]["template"].get("metadata") or {}
        inject_off = (template.get("annotations") or {}).get("sidecar.istio.io/inject") == "false"
        injected = self.inject and self.injected(namespace) and not inject_off
        # istio-cni's enablement: the pod's own istio.io/dataplane-mode, else its namespace's
        plane = (template.get("labels") or {}).get("istio.io/dataplane-mode")
        ambient = plane == "ambient" or (plane != "none" and self.ambient(namespace))
        pods = [
            p for p in self.pods.get(namespace, []) if p["metadata"]["labels"].get("app") != app
        ]
        name = f"{app}-6c8f9d7b5-{len(pods)}q2w"
        # a sidecar without the mesh root (an undiscovered namespace) never gets ready
        ready = not injected or self.discovered(namespace)
        if injected and self.injector_form is not None and app not in self.pod_waiting:
            pods.append(
                injected_pod_json(
                    self.injector_form,
                    name,
                    namespace,
                    app,
                    ready=ready,
                    proxy_image=self.proxy_image,
                    hbone=self.hbone_pods,
                )
            )
        elif ambient and not injected:
            self._ambient_ips += 1
            pods.append(
                pod_json(
                    name,
                    namespace,
                    app,
                    sidecar=False,
                    waiting_reason=self.pod_waiting.get(app),
                    pod_ip=f"10.244.7.{self._ambient_ips}",
                    node_name=self.node,
                    annotations={"ambient.istio.io/redirection": "enabled"} if self.cni else None,
                    # Kubernetes' default service account when the template names none
                    service_account=(deployment["spec"]["template"].get("spec") or {}).get(
                        "serviceAccountName"
                    )
                    or "default",
                )
            )
        else:
            pods.append(
                pod_json(
                    name,
                    namespace,
                    app,
                    sidecar=injected,
                    ready=ready,
                    waiting_reason=self.pod_waiting.get(app),
                    proxy_image=self.proxy_image,
                    hbone=self.hbone_pods,
                )
            )
        self.pods[namespace] = pods

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get(self._key(api_version, kind, namespace, name))
        return None if found is None else json.loads(json.dumps(found))

    def list_objects(
        self, api_version: str, kind: str, namespace: str, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        self._check(f"list {namespace}")
        group = api_version.rsplit("/", 1)[0]
        found = []
        for (g, k, ns, _), obj in self.objects.items():
            if (g, k, ns) != (group, kind, namespace):
                continue
            if label_selector:
                key, _, value = label_selector.partition("=")
                if (obj["metadata"].get("labels") or {}).get(key) != value:
                    continue
            found.append(json.loads(json.dumps(obj)))
        return found

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        self.calls.append(f"delete {kind} {namespace}/{name}")
        return self.objects.pop(self._key(api_version, kind, namespace, name), None) is not None

    def replace(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        self.calls.append(f"replace {manifest['kind']} {meta['namespace']}/{meta['name']}")
        key = self._key(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        current = self.objects[key]
        assert meta.get("resourceVersion") == current["metadata"]["resourceVersion"]
        stored = json.loads(json.dumps(manifest))
        stored["metadata"]["generation"] = current["metadata"]["generation"] + 1
        stored["metadata"]["resourceVersion"] = self._next_version()
        self.objects[key] = stored
        return stored

    # pods and friends
    def list_pods(self, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        self._check("list pods")
        pods = self.pods.get(namespace, [])
        if not label_selector:
            return json.loads(json.dumps(pods))
        wanted = dict(part.split("=", 1) for part in label_selector.split(","))
        return [
            json.loads(json.dumps(p))
            for p in pods
            if all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())
        ]

    def _find_pod(self, namespace: str, name: str) -> dict[str, Any]:
        for pod in self.pods.get(namespace, []):
            if pod["metadata"]["name"] == name:
                return pod
        raise AssertionError(f"no pod {namespace}/{name}")

    def read_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return json.loads(json.dumps(self._find_pod(namespace, name)))

    def add_ephemeral_container(
        self, namespace: str, pod: str, container: Mapping[str, Any]
    ) -> None:
        self.calls.append(f"ephemeral {namespace}/{pod} {json.dumps(container, sort_keys=True)}")
        found = self._find_pod(namespace, pod)
        found["spec"].setdefault("ephemeralContainers", []).append(dict(container))
        found["status"].setdefault("ephemeralContainerStatuses", []).append(
            {
                "name": container["name"],
                "image": container["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}},
            }
        )

    def pod_log(
        self,
        namespace: str,
        pod: str,
        container: str,
        limit_bytes: int,
        since_seconds: int | None = None,
    ) -> str:
        self.log_requests.append((namespace, pod, container, since_seconds))
        self._check_container("pod logs", namespace, pod, container)
        if since_seconds is not None:
            return f"log of {namespace}/{pod} [{container}] since {since_seconds}s\n"
        return f"log of {namespace}/{pod} [{container}]\n"

    def read_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.config_maps.get((namespace, name))

    def list_deployments(
        self, namespace: str, label_selector: str | None = None, timeout: float | None = None
    ) -> list[dict[str, Any]]:
        return json.loads(json.dumps(self.deployments.get(namespace, [])))

    def list_events(self, namespace: str) -> list[dict[str, Any]]:
        return []

    def port_forward_get(
        self, namespace: str, pod: str, port: int, path: str, *, timeout: float = 30.0
    ) -> bytes:
        self._check("port-forward")
        return bytes(self.exec_api.port_forward_get(namespace, pod, port, path, timeout=timeout))

    def open_exec(
        self, namespace: str, pod: str, container: str, argv: Any, *, stdin: bool = False
    ) -> Any:
        self._check("exec")
        self._check_container("exec", namespace, pod, container, running=True)
        return self.exec_api.open_exec(namespace, pod, container, argv, stdin=stdin)

    def _check_container(
        self, operation: str, namespace: str, pod: str, container: str, *, running: bool = False
    ) -> None:
        """What the API server answers for a container the pod does not have (or, for exec,
        one that is not running): HTTP 400, as the kubelet's container lookup refuses it."""
        from pytest_meshconform.backends.kube.client import KubeApiError

        found = next(
            (p for p in self.pods.get(namespace, []) if p["metadata"]["name"] == pod), None
        )
        if found is None:
            return  # a pod the test replaced: the API server's own 404 comes from exec_api
        state = container_state(found, container)
        if state is None:
            raise KubeApiError(
                f"{operation}: HTTP 400 container {container} is not valid for pod {pod}", 400
            )
        if running and state != "running":
            raise KubeApiError(
                f"{operation}: HTTP 400 container {container} is {state}, not running", 400
            )


RAW = {
    "name": "envoy.transport_sockets.raw_buffer",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
    },
}
# cluster_tls.go hboneTransportSocket around raw_buffer; the socket as istiod's 1.21 waypoint
# dump (istioctl testdata) prints util.FullMetadataPassthroughInternalUpstreamTransportSocket
HBONE_MATCH = {
    "name": "hbone",
    "match": {"tunnel": "http"},
    "transport_socket": {
        "name": "internal_upstream",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream"
            ".v3.InternalUpstreamTransport",
            "passthrough_metadata": [
                {"kind": {"host": {}}, "name": "envoy.filters.listener.original_dst"}
            ],
            "transport_socket": {
                "name": "raw_buffer",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer"
                    ".v3.RawBuffer"
                },
            },
        },
    },
}


# buildInboundPassthroughChains (pilot/pkg/networking/core/listener_inbound.go): every sidecar's
# virtualInbound takes unmatched traffic through the chains getFilterChainMatchOptions
# (filterchain_options.go) gives protocol Auto under the workload's mode, HTTP first
# (virtualInbound-catchall-http), then TCP (virtualInbound), each with the RBAC filters of the
# policies that apply (as the real 1.19-dev authz dump shows). The ALPNs are istiod's
# mtlsHTTPALPNs, plaintextHTTPALPNs (without "http/1.0" unless PILOT_HTTP10, as the real
# 1.20.8 and 1.22.3 dumps show) and mtlsTCPWithMxcALPNs.
MTLS_HTTP_ALPNS = ["istio-http/1.0", "istio-http/1.1", "istio-h2"]
PLAINTEXT_HTTP_ALPNS = ["http/1.1", "h2c"]
MTLS_TCP_ALPNS = ["istio-peer-exchange", "istio"]


def passthrough_chains(mode: str) -> list[dict[str, Any]]:
    """The passthrough chains of a sidecar under ``mode``: STRICT 2 (mTLS HTTP, mTLS TCP),
    PERMISSIVE 5 (those, plaintext HTTP and TCP, and one-way TLS passed through), DISABLE 2
    (plaintext HTTP and TCP); built from the hand-made PERMISSIVE dump's chains."""
    dump = _load_dump("config_dump-httpbin-permissive.json")
    listener = next(
        entry["active_state"]["listener"]
        for entry in dump["configs"][2]["dynamic_listeners"]
        if entry["name"] == "virtualInbound"
    )
    found = {
        (c["name"], c["filter_chain_match"].get("transport_protocol")): c
        for c in listener["filter_chains"]
    }
    http_mtls = copy.deepcopy(found[("0.0.0.0_8080", "tls")])
    del http_mtls["filter_chain_match"]["destination_port"]
    http_mtls["name"] = "virtualInbound-catchall-http"
    http_mtls["filters"][-1]["typed_config"]["stat_prefix"] = "InboundPassthroughCluster"
    http_mtls["filter_chain_match"]["application_protocols"] = MTLS_HTTP_ALPNS
    http_plain = found[("virtualInbound-catchall-http", "raw_buffer")]
    http_plain["filter_chain_match"]["application_protocols"] = PLAINTEXT_HTTP_ALPNS
    tcp_mtls = found[("virtualInbound", "tls")]
    tcp_plain = found[("virtualInbound", "raw_buffer")]
    tcp_tls = {
        "filter_chain_match": {"transport_protocol": "tls"},
        "filters": copy.deepcopy(tcp_plain["filters"]),
        "name": "virtualInbound",
    }
    if mode == "STRICT":
        tcp_mtls["filter_chain_match"].pop("application_protocols", None)
        return [http_mtls, tcp_mtls]
    if mode == "DISABLE":
        return [http_plain, tcp_plain]
    tcp_mtls["filter_chain_match"]["application_protocols"] = MTLS_TCP_ALPNS
    return [http_mtls, http_plain, tcp_mtls, tcp_plain, tcp_tls]


BASE_VERSION = "2025-03-14T09:26:41Z/12"  # the version_info of every hand-made dump


def _load_dump(name: str) -> dict[str, Any]:
    return dict(json.loads((DATA_DIR / name).read_text()))


@dataclass
class FakeIstio:
    """Plays the sidecars' Envoys, curl and the capture container behind a FakeApiServer.

    ``config_dump`` is rendered per pod from the policies in the cluster, with a deliberately
    small model of istiod (enough for the backend's tests; the real rules are in
    ``pytest_meshconform.istio.api``): httpbin's port 8080 takes the mode of its namespace's
    selector-less PeerAuthentication, else the root namespace's, else PERMISSIVE; each
    ``outbound|8000||httpbin.<ns>`` cluster follows the DestinationRule for that host in the
    client's or the service's namespace (tls.mode, maxRequestsPerConnection), else auto mTLS
    (no TLS when the service's namespace mode is DISABLE); with ``send_hbone`` (istiod's
    PILOT_ENABLE_SENDING_HBONE) the socket matches of cluster_tls.go
    ``applyHBONETransportSocketMatches`` (``hbone`` first). Every sidecar, sleep included, has
    a ``virtualInbound`` with istiod's passthrough chains for the mode (``passthrough_chains``)
    and, on every chain but the blackhole, the RBAC filters of the AuthorizationPolicies that
    select it. The pieces are the hand-made dumps in ``tests/data/kube/config_dump-*.json``.
    Pods are named ``<pod>.<namespace>`` (istiod's proxy IDs). ``stuck`` pods keep the config
    they started with (no policy at all, no push); every other pod takes a push (a new xDS
    version) on each policy change, after answering ``lag_reads`` reads with its old config.
    ``envoy_admin`` overrides a path's answer for every pod.
    """

    cluster: FakeCluster
    stuck: set[str] = field(default_factory=set)
    lag_reads: int = 0
    envoy_admin: dict[str, bytes] = field(default_factory=dict)
    envoy_admin_errors: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    curl_stdout: bytes = b"200"
    capture_pcap: bytes = b""
    capture_stderr: bytes = b""
    curl_hang: bool = False
    send_hbone: bool = False
    # edits every rendered config_dump (e.g. to write it as an older Istio would)
    rewrite_dump: Callable[[dict[str, Any]], None] | None = None
    config_dump_reads: list[str] = field(default_factory=list)  # <pod>.<namespace>, in order
    pushes: dict[str, int] = field(default_factory=dict)  # <pod>.<namespace> -> pushes taken
    _served: dict[str, bytes] = field(default_factory=dict)
    _unseen: dict[str, int] = field(default_factory=dict)
    _pushed_state: dict[str, str] = field(default_factory=dict)

    def __call__(self, call: ExecCall, channel: ExecChannel) -> None:
        if self.curl_hang and call.command[:1] == ["curl"]:
            channel.stdin_closed.wait(10)  # a request that never ends, until the client hangs up
        elif call.container == "istio-proxy":
            self._pilot_agent(call, channel)
        elif call.container == "mc-capture":
            self._tcpdump(call, channel)
        elif call.command == ["cat", "/etc/resolv.conf"]:
            # what the kubelet writes for a ClusterFirst pod (kind's kube-dns Service address)
            domain = self.cluster.dns_domain
            channel.send(
                1,
                f"search {call.namespace}.svc.{domain} svc.{domain} {domain}\n"
                "nameserver 10.96.0.10\noptions ndots:5\n".encode(),
            )
            channel.send_status({"metadata": {}, "status": "Success"})
        elif call.command[:1] == ["curl"]:
            host = urlsplit(call.command[-1]).hostname or ""
            if ".svc." in host and not host.endswith(f".svc.{self.cluster.dns_domain}"):
                channel.send(2, f"curl: (6) Could not resolve host: {host}\n".encode())
                channel.send_status(status_exit(6))
                return
            channel.send(1, self.curl_stdout)
            channel.send_status({"metadata": {}, "status": "Success"})
        else:
            channel.send_status(
                {
                    "metadata": {},
                    "status": "Failure",
                    "reason": "InternalError",
                    "message": f"unexpected exec {call}",
                }
            )

    # -- a tiny istiod ------------------------------------------------------------------------

    def _policies(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        return [
            obj
            for (_, k, ns, _), obj in sorted(self.cluster.objects.items())
            if k == kind and ns == namespace
        ]

    def _inbound_mode(self, namespace: str) -> str:
        for scope in (namespace, "istio-system"):
            for policy in self._policies("PeerAuthentication", scope):
                spec = policy.get("spec") or {}
                mode = (spec.get("mtls") or {}).get("mode")
                if not spec.get("selector") and mode not in (None, "UNSET"):
                    return str(mode)
        return "PERMISSIVE"

    def _cluster(self, client_namespace: str, namespace: str) -> dict[str, Any]:
        host = f"httpbin.{namespace}.svc.{self.cluster.dns_domain}"
        rule = next(
            (
                r
                for scope in (client_namespace, namespace)
                for r in self._policies("DestinationRule", scope)
                if r["spec"].get("host") == host
            ),
            None,
        )
        policy = (rule or {}).get("spec", {}).get("trafficPolicy") or {}
        mode = (policy.get("tls") or {}).get("mode")
        if mode is None and self._inbound_mode(namespace) == "DISABLE":
            mode = "DISABLE"  # auto mTLS towards a namespace without mTLS: no TLS at all
        template_namespace = {"ISTIO_MUTUAL": "foo", "DISABLE": "bar"}.get(mode or "", "legacy")
        clusters = _load_dump("config_dump-sleep-clusters.json")["configs"][1]
        entry = next(
            c
            for c in clusters["dynamic_active_clusters"]
            if c["cluster"]["name"]
            == f"outbound|8000||httpbin.{template_namespace}.svc.cluster.local"
        )
        text = json.dumps(entry)
        for old, new in (
            (f"httpbin.{template_namespace}.", f"httpbin.{namespace}."),
            (f"/ns/{template_namespace}/", f"/ns/{namespace}/"),
        ):
            text = text.replace(old, new)
        rendered: dict[str, Any] = json.loads(text)
        options = rendered["cluster"]["typed_extension_protocol_options"][
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ]["common_http_protocol_options"]
        options.pop("max_requests_per_connection", None)
        limit = ((policy.get("connectionPool") or {}).get("http") or {}).get(
            "maxRequestsPerConnection"
        )
        if limit is not None:
            options["max_requests_per_connection"] = limit
        if self.send_hbone:
            cluster = rendered["cluster"]
            socket = cluster.pop("transport_socket", None)
            matches = cluster.pop("transport_socket_matches", None)
            if matches is None and socket is not None:  # ISTIO_MUTUAL: HBONE or mTLS
                matches = [{"name": "tlsMode-istio", "transport_socket": socket}]
            elif matches is None:  # no TLS: HBONE or plaintext (hboneOrPlaintextSocket)
                matches = [{"name": "tlsMode-disabled", "match": {}, "transport_socket": RAW}]
            cluster["transport_socket_matches"] = [HBONE_MATCH, *matches]
        return rendered

    def render_config_dump(self, namespace: str, pod: str) -> bytes:
        """The config_dump istiod's config would give this pod's Envoy now."""
        app = pod.split("-", 1)[0]
        stuck = f"{pod}.{namespace}" in self.stuck
        mode = "PERMISSIVE" if stuck else self._inbound_mode(namespace)
        base = _load_dump(f"config_dump-httpbin-{mode.lower()}.json")
        listeners = base["configs"][2]["dynamic_listeners"]
        for entry in listeners:
            if entry["name"] != "virtualInbound":
                continue
            chains = entry["active_state"]["listener"]["filter_chains"]
            blackhole = [c for c in chains if c["name"] == "virtualInbound-blackhole"]
            # a sleep pod has no port any Service targets: only the passthrough chains
            ports = [c for c in chains if "destination_port" in c["filter_chain_match"]]
            ports = [c for c in ports if c not in blackhole and app == "httpbin"]
            chains[:] = [*blackhole, *passthrough_chains(mode), *ports]
        if not stuck:
            self._add_rbac(namespace, app, listeners)
        namespaces = sorted(ns for ns in self.cluster.pods if ns.startswith("mc-"))
        base["configs"][1]["dynamic_active_clusters"] = [
            self._stuck_cluster(ns) if stuck else self._cluster(namespace, ns) for ns in namespaces
        ]
        if self.rewrite_dump is not None:
            self.rewrite_dump(base)
        text = json.dumps(base)
        if self.cluster.dns_domain != "cluster.local":  # Service names in the cluster's domain
            text = text.replace(".svc.cluster.local", f".svc.{self.cluster.dns_domain}")
        return text.encode()

    # AuthorizationPolicy, as istiod's authz builder names its RBAC policies (a tiny istiod:
    # names and actions only; pilot/pkg/security/authz/builder/builder.go).
    HTTP_ONLY = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")

    def _rbac_filters(self, namespace: str, app: str, tcp: bool) -> list[dict[str, Any]]:
        chosen = [
            policy
            for scope in ("istio-system", namespace)
            for policy in self._policies("AuthorizationPolicy", scope)
            if all(
                {"app": app}.get(k) == v
                for k, v in (
                    (policy["spec"].get("selector") or {}).get("matchLabels") or {}
                ).items()
            )
        ]
        filters = []
        for action in ("DENY", "ALLOW"):
            rules: dict[str, Any] | None = None
            shadow: dict[str, Any] | None = None
            for policy in chosen:
                if (policy["spec"].get("action") or "ALLOW") != action:
                    continue
                dry = (policy["metadata"].get("annotations") or {}).get("istio.io/dry-run")
                target: dict[str, Any] = {}
                if dry == "true":
                    shadow = target = shadow if shadow is not None else {}
                else:
                    rules = target = rules if rules is not None else {}
                meta = policy["metadata"]
                prefix = f"ns[{meta['namespace']}]-policy[{meta['name']}]-rule"
                policy_rules = policy["spec"].get("rules") or []
                for index, rule in enumerate(policy_rules):
                    http_only = any(
                        key in (to.get("operation") or {})
                        for to in rule.get("to") or []
                        for key in self.HTTP_ONLY
                    ) or any(
                        str(w.get("key", "")).startswith("request.headers")
                        for w in rule.get("when") or []
                    )
                    if not (tcp and action == "ALLOW" and http_only):
                        target[f"{prefix}[{index}]"] = {}
                if not policy_rules:
                    target[f"{prefix}[0]"] = {}
            if rules is None and shadow is None:
                continue
            config: dict[str, Any] = {}
            for key, block in (("rules", rules), ("shadow_rules", shadow)):
                if block is not None:
                    config[key] = {"policies": block} if block else {}
                    if action == "DENY":
                        config[key]["action"] = "DENY"
            kind = "network" if tcp else "http"
            filters.append(
                {
                    "name": f"envoy.filters.{kind}.rbac",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters"
                        f".{kind}.rbac.v3.RBAC",
                        **config,
                    },
                }
            )
        return filters

    def _add_rbac(self, namespace: str, app: str, listeners: list[dict[str, Any]]) -> None:
        for entry in listeners:
            if entry["name"] != "virtualInbound":
                continue
            for chain in entry["active_state"]["listener"]["filter_chains"]:
                if (chain.get("filter_chain_match") or {}).get("destination_port") == 15006:
                    continue
                filters = chain["filters"]
                if filters[-1]["name"] == "envoy.filters.network.http_connection_manager":
                    hcm = filters[-1]["typed_config"]
                    hcm["http_filters"] = [
                        *self._rbac_filters(namespace, app, tcp=False),
                        *hcm.get("http_filters", []),
                    ]
                else:
                    filters[:0] = self._rbac_filters(namespace, app, tcp=True)

    def _stuck_cluster(self, namespace: str) -> dict[str, Any]:
        """A cluster as it is with no policy at all (auto mTLS), for pods that never update."""
        saved = self.cluster.objects
        self.cluster.objects = {}
        try:
            return self._cluster("", namespace)
        finally:
            self.cluster.objects = saved

    def _policy_state(self) -> str:
        """The Istio policies in the cluster: istiod pushes on every change of them."""
        kinds = {"PeerAuthentication", "DestinationRule", "AuthorizationPolicy"}
        return json.dumps(
            [
                [list(key), obj.get("spec"), obj["metadata"].get("annotations")]
                for key, obj in sorted(self.cluster.objects.items())
                if key[1] in kinds
            ],
            sort_keys=True,
        )

    def _config_dump(self, namespace: str, pod: str) -> bytes:
        """The pod's dump as its Envoy holds it. istiod pushes it a new version (xDS
        ``version_info``, ``<time>/<push>``) on every policy change, unless it is ``stuck``;
        the push arrives after ``lag_reads`` more reads of the old one."""
        proxy = f"{pod}.{namespace}"
        self.config_dump_reads.append(proxy)
        fresh = self.render_config_dump(namespace, pod)
        state = self._policy_state()
        if proxy not in self._served:  # what it had at start: no policy at all
            stuck, self.stuck = self.stuck, {proxy}
            try:
                self._served[proxy] = self.render_config_dump(namespace, pod)
            finally:
                self.stuck = stuck
            self._pushed_state[proxy] = state
        pushed = proxy not in self.stuck and state != self._pushed_state[proxy]
        if fresh != self._served[proxy] or pushed:
            self._unseen[proxy] = self._unseen.get(proxy, 0) + 1
            if self._unseen[proxy] <= self.lag_reads:
                return self._versioned(proxy, self._served[proxy])
            self.pushes[proxy] = self.pushes.get(proxy, 0) + 1
        self._unseen[proxy] = 0
        self._served[proxy] = fresh
        self._pushed_state[proxy] = state
        return self._versioned(proxy, fresh)

    def _versioned(self, proxy: str, dump: bytes) -> bytes:
        """``dump`` with the xDS version of the proxy's last push (the hand-made dumps are at
        push 12 of 2025-03-14T09:26:41Z, as istiod's ``<time>/<count>`` versions read)."""
        count = self.pushes.get(proxy, 0)
        if not count:
            return dump
        return dump.replace(BASE_VERSION.encode(), f"{BASE_VERSION[:-2]}{12 + count}".encode())

    def _pilot_agent(self, call: ExecCall, channel: ExecChannel) -> None:
        """``pilot-agent request`` (pilot/pkg/request/command.go): the body with fmt.Println,
        exit 0 for 2xx and for 404 (which it lets pass), ``Error: received unsuccessful status
        code N: <body>`` on stderr and exit 1 for any other status above 399."""
        assert call.command[:3] == ["pilot-agent", "request", "GET"], call.command
        path = call.command[3]
        if path in self.envoy_admin_errors:
            status, body = self.envoy_admin_errors[path]
            channel.send(2, f"Error: received unsuccessful status code {status}: ".encode())
            channel.send(2, body + b"\n")
            channel.send_status(status_exit(1))
            return
        if path in self.envoy_admin:
            body = self.envoy_admin[path]
        elif path == "config_dump":
            body = self._config_dump(call.namespace, call.pod)
        else:
            body = ENVOY_ADMIN_404_BODY
        channel.send(1, body + b"\n")  # fmt.Println
        channel.send_status({"metadata": {}, "status": "Success"})

    def _tcpdump(self, call: ExecCall, channel: ExecChannel) -> None:
        """The capture script's protocol: listening line, pcap stream, marker, stop."""
        assert call.command[:2] == ["bash", "-c"] and call.stdin
        marker_host = call.command[5]
        lines = self.capture_stderr.splitlines(keepends=True)
        channel.send(2, lines[0])
        pcap = self.capture_pcap
        channel.send(1, pcap[:24])  # the global header first, as tcpdump -U writes it
        for start in range(24, len(pcap), 500):
            channel.send(1, pcap[start : start + 500])
        assert channel.wait_stdin(lambda data: data.endswith(b"\n")), "no marker line"
        token = bytes(channel.stdin).strip()
        channel.send(1, marker_record(token, marker_host))
        assert channel.wait_stdin(lambda data: data.count(b"\n") >= 2), "no stop line"
        for line in lines[1:]:
            channel.send(2, line)
        channel.send_status({"metadata": {}, "status": "Success"})


# The first lines of Envoy's admin answer to an unknown path (HTTP 404), as Envoy 1.40's admin
# printed them for GET /nosuchpath (curl against `envoy -c` with only an admin listener).
ENVOY_ADMIN_404_BODY = (
    b"invalid path. admin commands are:\n"
    b"  /: Admin home page\n"
    b"  /allocprofiler (POST): enable/disable the allocation profiler (if supported)\n"
)


def status_not_found(kind: str, name: str) -> dict[str, Any]:
    """The metav1.Status an API server answers for a missing object (HTTP 404)."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'{kind} "{name}" not found',
        "reason": "NotFound",
        "details": {"name": name, "kind": kind},
        "code": 404,
    }


def status_exit(code: int) -> dict[str, Any]:
    return {
        "metadata": {},
        "status": "Failure",
        "message": "command terminated with non-zero exit code: command terminated with"
        f" exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def marker_record(token: bytes, marker_host: str) -> bytes:
    """A pcap record of the marker datagram (pod 10.244.0.6 -> node:9), built with dpkt."""
    import dpkt

    udp = dpkt.udp.UDP(sport=40000, dport=9, data=token)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(
        src=socket.inet_aton("10.244.0.6"),
        dst=socket.inet_aton(marker_host),
        p=dpkt.ip.IP_PROTO_UDP,
        data=udp,
        ttl=64,
    )
    ip.len = len(ip)
    frame = bytes(
        dpkt.ethernet.Ethernet(
            src=bytes.fromhex("0a580af40006"),
            dst=bytes.fromhex("0a580af40001"),
            type=dpkt.ethernet.ETH_TYPE_IP,
            data=ip,
        )
    )
    return struct.pack("<IIII", 1_700_000_000, 0, len(frame), len(frame)) + frame
