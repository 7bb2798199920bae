"""The kube backend's test world: a FakeCluster, its FakeIstio and a loopback API server, and
the KubeMesh built on them (a helper module of the test_kube_* files), with the policies and
names those tests use."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from kube_fakes import FakeApiServer, FakeCluster, FakeIstio, kubeconfig_text

from pytest_meshconform.backends.kube.backend import KubeMesh
from pytest_meshconform.backends.kube.client import KubeApi
from pytest_meshconform.backends.kube.options import KubeOptions
from pytest_meshconform.backends.kube.topology import RunNamespaces
from pytest_meshconform.settings import Dataplane

RUN = "1a2b3c"
FOO, BAR, LEGACY = (f"mc-{RUN}-{ns}" for ns in ("foo", "bar", "legacy"))


@dataclass
class World:
    cluster: FakeCluster
    istio: FakeIstio
    server: FakeApiServer
    tmp_path: Path
    messages: list[str] = field(default_factory=list)

    def mesh(
        self,
        *,
        backend: str = "existing",
        allow_mesh_wide: bool = False,
        keep: bool = False,
        cert_ttl: timedelta = timedelta(seconds=40),
        artifacts: Path | None = None,
        dataplane: Dataplane = "sidecar",
        propagation_timeout: timedelta = timedelta(seconds=1),
        **options: Any,
    ) -> KubeMesh:
        return KubeMesh(
            self.cluster,
            backend=backend,  # type: ignore[arg-type]
            options=KubeOptions(
                allow_mesh_wide=allow_mesh_wide,
                ready_timeout=timedelta(seconds=5),
                propagation_timeout=propagation_timeout,
                **options,
            ),
            cert_ttl=cert_ttl,
            keep=keep,
            names=RunNamespaces(RUN),
            progress=self.messages.append,
            run_dir=self.tmp_path / "run",
            artifacts=artifacts,
            dataplane=dataplane,
        )

    def exec_commands(self, container: str) -> list[list[str]]:
        return [c.command for c in self.server.exec_calls if c.container == container]


@contextmanager
def fake_world(tmp_path: Path, cluster: FakeCluster | None = None) -> Iterator[World]:
    """A World whose API server runs for the block."""
    cluster = cluster or FakeCluster()
    istio = FakeIstio(cluster)
    with FakeApiServer(exec_handler=istio) as server:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(kubeconfig_text(server.url))
        cluster.exec_api = KubeApi.connect(kubeconfig, "fake")
        yield World(cluster, istio, server, tmp_path)


def peer_auth(namespace: str, mode: str, name: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1beta1",
        "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"mtls": {"mode": mode}},
    }


def dest_rule(namespace: str, mode: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "httpbin", "namespace": namespace},
        "spec": {
            "host": f"httpbin.{namespace}.svc.cluster.local",
            "trafficPolicy": {"tls": {"mode": mode}},
        },
    }


def proxy_id(started: KubeMesh, name: str, namespace: str) -> str:
    """``<pod>.<namespace>``, how the fake Envoys are named."""
    workload = started.workload(name, namespace)
    return f"{started.pod_name(workload)}.{workload.namespace}"


def sidecar_pods(started: KubeMesh) -> dict[str, str]:
    """workload key -> proxy id, for the four sidecars of the run."""
    return {
        w.key: f"{started.pod_name(w)}.{w.namespace}" for w in started.workloads() if w.has_sidecar
    }


def authz(name: str, spec: dict[str, Any], namespace: str = "foo", **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": namespace, **meta},
        "spec": spec,
    }
