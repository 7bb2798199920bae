"""ztunnel on a cluster: which ztunnel serves a node, and what it holds (its ``/config_dump``,
read through the API server's port-forward).

Istio's ztunnel chart (``manifests/charts/ztunnel/templates/daemonset.yaml``) runs one pod per
node, labelled ``app: ztunnel``; its admin server listens on the pod's localhost, port 15000
(istio/ztunnel ``src/config.rs``, ``DEFAULT_ADMIN_PORT``; the dumps show ``adminAddr``
``{"Localhost": [true, 15000]}``). The image is distroless: there is nothing to exec, so the dump
is read as ``istioctl ztunnel-config`` reads it, by port-forward. What the dump means is
:mod:`pytest_meshconform.istio.ztunnel_dump`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from pytest_meshconform.istio.ztunnel_dump import (
    ZtunnelDump,
    ZtunnelDumpError,
    parse_ztunnel_dump,
)
from pytest_meshconform.mesh import MeshError

__all__ = [
    "ZTUNNEL_ADMIN_PORT",
    "ZTUNNEL_LABEL",
    "ZtunnelApi",
    "ZtunnelPod",
    "read_ztunnel_dump",
    "ztunnel_on_node",
    "ztunnel_pods",
]

ZTUNNEL_LABEL: Final = "app=ztunnel"
ZTUNNEL_ADMIN_PORT: Final = 15000


class ZtunnelApi(Protocol):
    """What reading ztunnel needs from a cluster (``client.KubeApi``)."""

    def list_pods(
        self, namespace: str, label_selector: str | None = None
    ) -> list[dict[str, Any]]: ...

    def port_forward_get(
        self, namespace: str, pod: str, port: int, path: str, *, timeout: float = 30.0
    ) -> bytes: ...


@dataclass(frozen=True, slots=True)
class ZtunnelPod:
    """One ztunnel pod: where it runs and whether it is ready."""

    namespace: str
    name: str
    node: str
    ready: bool


def _ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return False
    conditions = status.get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def ztunnel_pods(api: ZtunnelApi, namespace: str) -> tuple[ZtunnelPod, ...]:
    """The ztunnel pods of ``namespace`` (Istio's namespace), by node name."""
    found = []
    for pod in api.list_pods(namespace, ZTUNNEL_LABEL):
        metadata = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        found.append(
            ZtunnelPod(
                namespace=str(metadata.get("namespace") or namespace),
                name=str(metadata.get("name") or ""),
                node=str(spec.get("nodeName") or ""),
                ready=_ready(pod),
            )
        )
    return tuple(sorted(found, key=lambda p: (p.node, p.name)))


def ztunnel_on_node(pods: Sequence[ZtunnelPod], node: str, namespace: str) -> ZtunnelPod:
    """The ready ztunnel serving ``node``; a :class:`MeshError` that says what to check
    otherwise (no ztunnel at all: the ambient profile is not installed)."""
    if not pods:
        raise MeshError(
            f"no ztunnel pod ({ZTUNNEL_LABEL}) in namespace {namespace}: ambient mode needs"
            " Istio's ambient profile (istioctl install --set profile=ambient); if ztunnel runs"
            " in another namespace, pass it with --mesh-istio-namespace"
        )
    here = [p for p in pods if p.node == node]
    if not here:
        nodes = ", ".join(sorted({p.node for p in pods}))
        raise MeshError(
            f"no ztunnel pod on node {node} (ztunnel runs on: {nodes}); a ztunnel DaemonSet"
            " that does not tolerate this node's taints leaves its pods outside the mesh"
        )
    ready = [p for p in here if p.ready]
    if not ready:
        raise MeshError(
            f"ztunnel {namespace}/{here[0].name} on node {node} is not ready:"
            f" kubectl -n {namespace} describe pod {here[0].name}"
        )
    return ready[0]


def read_ztunnel_dump(api: ZtunnelApi, pod: ZtunnelPod, *, timeout: float = 30.0) -> ZtunnelDump:
    """What ``pod`` holds now, from its ``/config_dump`` (a :class:`MeshError` names the pod
    when the dump cannot be read or is not ztunnel's)."""
    body = api.port_forward_get(
        pod.namespace, pod.name, ZTUNNEL_ADMIN_PORT, "/config_dump", timeout=timeout
    )
    try:
        return parse_ztunnel_dump(body)
    except ZtunnelDumpError as exc:
        raise MeshError(f"ztunnel {pod.namespace}/{pod.name} /config_dump: {exc}") from None
