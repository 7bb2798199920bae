"""Captures on a kube pod: the ephemeral tcpdump container, the checks of its image, and the
pcaps kept in the run directory.

``KubeCapture`` (a mixin of ``KubeMesh``) adds one ephemeral container per pod (it cannot be
removed, so it idles and each capture execs tcpdump into it), refuses before any test a proxy
image that cannot capture (Istio's distroless one), records for a block's duration and keeps
the pcap. Whether a client reaches a server over HBONE (what a capture then shows) is read
here too.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from pytest_meshconform.backends.capture import capture_filter, is_pcap, pcap_file_name
from pytest_meshconform.backends.kube.client import is_transient
from pytest_meshconform.backends.kube.envoystate import EnvoyStateError, parse_config_dump
from pytest_meshconform.backends.kube.execproto import capture_argv
from pytest_meshconform.backends.kube.lifecycle import (
    POLL_S,
    PROXY_CONTAINER,
    KubeLifecycle,
    object_meta,
    pod_problem,
)
from pytest_meshconform.backends.kube.topology import CAPTURE_CONTAINER, CAPTURE_IMAGE_EXAMPLE
from pytest_meshconform.istio.envoy import outbound_cluster_name
from pytest_meshconform.istio.injection import DEFAULT_REVISION, is_distroless_image, proxy_image
from pytest_meshconform.mesh import MeshError, PcapRecording, Service, Workload
from pytest_meshconform.outputs import write_file
from pytest_meshconform.waiting import WaitTimeout, poll

# pkg/model TunnelLabel / TunnelHTTP: Istio's injection template sets it on a sidecar pod when
# the proxy metadata has ISTIO_META_ENABLE_HBONE=true; endpoints of such pods carry
# ``tunnel: http``, which a cluster's ``hbone`` transport socket match sends over HBONE
TUNNEL_LABEL: Final = "networking.istio.io/tunnel"
TUNNEL_HTTP: Final = "http"


def pod_proxy_image(pod: Mapping[str, Any]) -> str | None:
    spec = pod.get("spec") or {}
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        if container.get("name") == PROXY_CONTAINER:
            image = container.get("image")
            return str(image) if image else None
    return None


def pod_accepts_hbone(pod: Mapping[str, Any]) -> bool:
    """Whether the pod's endpoints carry ``tunnel: http`` (its ``networking.istio.io/tunnel``
    label lists ``http``: a comma-separated list, pkg/model ``TunnelLabel``)."""
    value = (object_meta(pod).get("labels") or {}).get(TUNNEL_LABEL)
    return isinstance(value, str) and TUNNEL_HTTP in [v.strip() for v in value.split(",")]


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


def _image_name(image: str) -> str:
    """``proxyv2`` of ``docker.io/istio/proxyv2:1.28.3-distroless`` (or ``...@sha256:...``)."""
    last = image.split("@", 1)[0].rpartition("/")[2]
    return last.partition(":")[0]


def _distroless(whose: str, image: str) -> str:
    return (
        f"{whose} is {image}, a distroless image (Istio's global.variant=distroless, the"
        " ambient profile's default) without bash and tcpdump, so captures cannot borrow it:"
        f" pass --mesh-capture-image=IMAGE with both (e.g. {CAPTURE_IMAGE_EXAMPLE}, or a copy"
        " in your registry)"
    )


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


class KubeCapture(KubeLifecycle):
    """Captures of a ``KubeMesh``'s pods."""

    _services: Sequence[Service]
    _capture_ready: set[tuple[str, str]]
    run_dir: Path | None

    def _check_capture_image(self) -> None:
        """Refuse, before any test runs, a capture image that cannot start: without
        --mesh-capture-image the capture container borrows the proxy image (an ambient pod has
        none: the cluster's proxyv2, `_mesh_proxy_image`), and Istio's distroless proxy has
        neither bash nor tcpdump."""
        if self.options.capture_image:
            return
        for workload in self._workloads:
            image = pod_proxy_image(self._pod(workload)) if workload.has_sidecar else None
            if image and is_distroless_image(image):
                raise MeshError(_distroless(f"the proxy image of {workload.key}", image))
        if not any(w.has_sidecar for w in self._workloads):  # nothing to borrow from
            found = self._mesh_proxy_image()
            if found is not None and is_distroless_image(found[0]):
                raise MeshError(
                    _distroless(
                        f"the ambient pods have no proxy; the mesh's ({found[1]})", found[0]
                    )
                )

    def _mesh_proxy_image(self) -> tuple[str, str] | None:
        """The cluster's proxyv2 image for capturing in a pod without a sidecar (an ambient
        pod has no istio-proxy to borrow from), and where it was found: by digest from a
        running proxyv2 container of Istio's namespace (a gateway's: the ``imageID`` its
        node pulled), else as the injector writes it (its ConfigMap's ``values``), else
        ztunnel's image with its name changed (Istio's charts take both from one hub and tag)."""
        namespace = self.options.istio_namespace
        pods = self.api.list_pods(namespace)
        for pod in pods:
            for status in (pod.get("status") or {}).get("containerStatuses") or ():
                image = str(status.get("image") or "")
                digest = str(status.get("imageID") or "").removeprefix("docker-pullable://")
                if _image_name(image) == "proxyv2" and "@sha256:" in digest:
                    where = f"pod {namespace}/{object_meta(pod).get('name')}, by digest"
                    return digest, where
        revision = self.revision or DEFAULT_REVISION
        config_map = self.api.read_config_map(
            namespace,
            "istio-sidecar-injector" + ("" if revision == DEFAULT_REVISION else f"-{revision}"),
        )
        text = ((config_map or {}).get("data") or {}).get("values")
        try:
            values = json.loads(text) if isinstance(text, str) else None
        except json.JSONDecodeError:
            values = None
        injected = proxy_image(values, None) if isinstance(values, Mapping) else None
        if injected is not None:
            return injected, "the injector's values"
        for pod in pods:
            if (object_meta(pod).get("labels") or {}).get("app") != "ztunnel":
                continue
            ztunnel = pod_proxy_image(pod) or ""
            if _image_name(ztunnel) == "ztunnel":
                head, _, tail = ztunnel.rpartition("/")
                return f"{head}/proxyv2{tail[len('ztunnel') :]}", f"ztunnel's image {ztunnel}"
        return None

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
        if image is None:  # no sidecar in the run (ambient): the cluster's proxyv2
            found = self._mesh_proxy_image()
            image = found[0] if found is not None else None
        if image is None:
            raise MeshError("no proxy image to capture with: pass --mesh-capture-image=IMAGE")
        return image

    def _ensure_capture_container(self, workload: Workload) -> dict[str, Any]:
        pod = self._pod(workload)
        name = str(object_meta(pod).get("name"))
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

        def running() -> dict[str, Any] | None:
            current = self.api.read_pod(workload.namespace, name)
            state, detail = ephemeral_state(current, CAPTURE_CONTAINER)
            if state == "running":
                return current
            problem = pod_problem(current)
            if state == "terminated" or problem:
                raise MeshError(
                    f"capture container in {workload.key} {state}: {problem or detail};"
                    " it needs an image with bash and tcpdump (--mesh-capture-image) and"
                    " NET_RAW/NET_ADMIN allowed in the namespace"
                )
            return None

        try:
            current = poll(
                running,
                timeout=120.0,
                interval=POLL_S,
                what=f"capture container in {workload.key} running",
                transient=is_transient,
            )
        except WaitTimeout as timeout:
            raise MeshError(
                f"capture container in {workload.key} not running after 120s"
                f"{timeout.transient_note}"
            ) from None
        self._capture_ready.add(key)
        return current

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
            workload.namespace,
            str(object_meta(pod).get("name")),
            CAPTURE_CONTAINER,
            argv,
            stdin=True,
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
        path = self.run_dir / "captures" / pcap_file_name(workload.key)
        write_file(path, pcap)  # 0600 in a 0700 directory, whatever the umask
        return path
