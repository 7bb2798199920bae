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
from typing import Any, Final, Literal, Protocol

from pytest_meshconform.istio.ztunnel_dump import (
    ZtunnelDump,
    ZtunnelDumpError,
    parse_ztunnel_dump,
)
from pytest_meshconform.mesh import MeshError

__all__ = [
    "ISTIO_CNI_LABEL",
    "ZTUNNEL_ADMIN_PORT",
    "ZTUNNEL_LABEL",
    "ZtunnelApi",
    "ZtunnelPod",
    "ambient_check",
    "ambient_found",
    "read_ztunnel_dump",
    "ztunnel_on_node",
    "ztunnel_pods",
]

ZTUNNEL_LABEL: Final = "app=ztunnel"
# Istio's istio-cni chart labels its DaemonSet's pods k8s-app=istio-cni-node
# (manifests/charts/istio-cni/templates/daemonset.yaml)
ISTIO_CNI_LABEL: Final = "k8s-app=istio-cni-node"
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


def _image_tag(pod: Mapping[str, Any]) -> str:
    for container in (pod.get("spec") or {}).get("containers") or ():
        if container.get("name") == "istio-proxy":
            image = str(container.get("image") or "")
            return image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
    return ""


def ambient_found(
    ztunnels: Sequence[Mapping[str, Any]],
    cni: Sequence[Mapping[str, Any]],
    ambient_namespaces: Sequence[str] | None,
) -> str | None:
    """What of Istio's ambient data plane a cluster runs, in one phrase for the report header
    (``ambient: ztunnel 1.24.0 on 2 nodes, istio-cni on 2 nodes, 3 namespaces labelled
    istio.io/dataplane-mode=ambient``); None when neither ztunnel nor istio-cni runs.
    ``ambient_namespaces`` None: the namespaces could not be listed."""
    if not ztunnels and not cni:
        return None
    parts = []
    if ztunnels:
        tags = sorted({_image_tag(p) for p in ztunnels} - {""})
        nodes = {(p.get("spec") or {}).get("nodeName") for p in ztunnels}
        version = f" {', '.join(tags)}" if tags else ""
        parts.append(f"ztunnel{version} on {len(nodes)} node{'s' if len(nodes) != 1 else ''}")
    else:
        parts.append("no ztunnel")
    if cni:
        nodes = {(p.get("spec") or {}).get("nodeName") for p in cni}
        parts.append(f"istio-cni on {len(nodes)} node{'s' if len(nodes) != 1 else ''}")
    else:
        parts.append("no istio-cni")
    if ambient_namespaces is not None:
        count = len(ambient_namespaces)
        parts.append(
            f"{count} namespace{'s' if count != 1 else ''} labelled istio.io/dataplane-mode=ambient"
        )
    return "ambient: " + ", ".join(parts)


def ambient_check(
    ztunnels: Sequence[Mapping[str, Any]] | None,
    cni: Sequence[Mapping[str, Any]] | None,
    error: str | None,
    namespace: str,
) -> tuple[Literal["ok", "warn", "fail"], str, str, str]:
    """The doctor's and the preflight's finding for a run with ambient namespaces: (status,
    found, what it breaks, the fix). ztunnel and istio-cni must run in Istio's namespace
    (the ambient profile installs both), every ztunnel ready."""
    if error is not None or ztunnels is None or cni is None:
        return (
            "warn",
            f"could not look for ztunnel and istio-cni in {namespace}: {error or 'not read'}",
            "an ambient run needs both",
            f"grant list pods in {namespace}",
        )
    install = "istioctl install --set profile=ambient (or pass --mesh-istio-namespace)"
    missing = [
        name
        for name, pods, label in (
            ("ztunnel", ztunnels, ZTUNNEL_LABEL),
            ("istio-cni", cni, ISTIO_CNI_LABEL),
        )
        if not pods
    ]
    if missing:
        labels = ", ".join(
            f"{name} ({ZTUNNEL_LABEL if name == 'ztunnel' else ISTIO_CNI_LABEL})"
            for name in missing
        )
        return (
            "fail",
            f"no {labels} pod in {namespace}",
            "ambient namespaces need Istio's ambient data plane: their pods would not be"
            " enrolled or would have no ztunnel",
            install,
        )
    found = ambient_found(ztunnels, cni, None) or ""
    unready = sorted(str((p.get("metadata") or {}).get("name")) for p in ztunnels if not _ready(p))
    if unready:
        return (
            "warn",
            f"{found}; not ready: {', '.join(unready)}",
            "ambient workloads on those nodes have no working ztunnel",
            f"kubectl -n {namespace} describe pod {unready[0]}",
        )
    return ("ok", found, "", "")
