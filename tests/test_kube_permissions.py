"""The permissions a run needs are the calls a run makes: a whole existing-cluster run against
the in-memory cluster, every ``ClusterApi`` call recorded and mapped to the verb and resource
the API server authorizes it as, equals ``RUN_PERMISSIONS``; and the README's table is that
list."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kube_fakes import DATA_DIR, FakeApiServer, FakeCluster, FakeIstio, kubeconfig_text
from kube_waypoint_fakes import FakeWaypointEnvoy, PortForwards, WaypointCluster
from kube_ztunnel_fakes import ISTIO_ZTUNNEL_DUMP, FakeZtunnel

from pytest_meshconform.backends.kube.backend import KubeMesh
from pytest_meshconform.backends.kube.client import KubeApi
from pytest_meshconform.backends.kube.lifecycle import ClusterApi
from pytest_meshconform.backends.kube.options import KubeOptions
from pytest_meshconform.backends.kube.permissions import (
    RUN_PERMISSIONS,
    Scope,
    permission_table,
    permissions_of_call,
)
from pytest_meshconform.backends.kube.topology import RunNamespaces

RUN = "9e9e9e"
FOO = f"mc-{RUN}-foo"
README = Path(__file__).resolve().parents[1] / "README.md"
Key = tuple[str, str, str, Scope]


class Recorder:
    """A ClusterApi that records, per call, the permissions it needs, then delegates."""

    def __init__(self, cluster: FakeCluster, names: RunNamespaces) -> None:
        self.cluster = cluster
        self.names = names
        self.context = cluster.context
        self.needed: set[Key] = set()

    def _scope(self, namespace: str | None, kind: str | None = None) -> Scope:
        if namespace is None:
            return "cluster"
        if namespace in self.names.all_real:
            return "run"
        policy = kind in ("PeerAuthentication", "DestinationRule", "AuthorizationPolicy")
        return "root" if policy else "istio"

    def __getattr__(self, method: str) -> Any:
        target = getattr(self.cluster, method)
        if method not in ClusterApi.__dict__:
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            namespace, kind = _where(method, args)
            self.needed |= set(permissions_of_call(method, self._scope(namespace, kind), kind))
            return target(*args, **kwargs)

        return call


def _where(method: str, args: tuple[Any, ...]) -> tuple[str | None, str | None]:
    """(namespace, kind) of a ClusterApi call, from its arguments."""
    if method in ("create_namespace", "delete_namespace", "list_namespaces", "served_versions"):
        return None, None
    if method in ("apply", "replace"):
        manifest: Mapping[str, Any] = args[0]
        return manifest["metadata"]["namespace"], manifest["kind"]
    if method in ("get", "list_objects", "delete"):
        return args[2], args[1]
    return args[0], None


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[Recorder]:
    cluster = FakeCluster()
    istio = FakeIstio(cluster)
    with FakeApiServer(exec_handler=istio) as server:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(kubeconfig_text(server.url))
        cluster.exec_api = KubeApi.connect(kubeconfig, "fake")
        istio.capture_pcap = (DATA_DIR / "httpbin-eth0.pcap").read_bytes()
        istio.capture_stderr = (DATA_DIR / "httpbin-eth0.tcpdump-stderr.txt").read_bytes()
        yield Recorder(cluster, RunNamespaces(RUN))


def policy(kind: str, namespace: str, spec: dict[str, Any], name: str = "") -> dict[str, Any]:
    group = "networking.istio.io" if kind == "DestinationRule" else "security.istio.io"
    return {
        "apiVersion": f"{group}/v1",
        "kind": kind,
        "metadata": {
            "name": name or ("httpbin" if kind == "DestinationRule" else "default"),
            "namespace": namespace,
        },
        "spec": spec,
    }


def policies_of(namespace: str) -> dict[str, dict[str, Any]]:
    """One policy of each kind for ``namespace``, shaped as the fakes render them."""
    return {
        "PeerAuthentication": {"mtls": {"mode": "PERMISSIVE"}},
        "DestinationRule": {
            "host": f"httpbin.{namespace}.svc.cluster.local",
            "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
        },
        "AuthorizationPolicy": {
            "action": "DENY",
            "rules": [{"from": [{"source": {"namespaces": ["x"]}}]}],
        },
    }


ROOT_POLICIES = {
    "PeerAuthentication": {"mtls": {"mode": "STRICT"}},
    "DestinationRule": {"host": "httpbin.istio-system.svc.cluster.local"},
    "AuthorizationPolicy": {"action": "ALLOW", "rules": [{}]},
}


def test_a_whole_run_needs_exactly_the_listed_permissions(
    recorder: Recorder, tmp_path: Path
) -> None:
    # a platform's own mesh-wide policies, so that putting them back replaces them (update)
    for kind, spec in ROOT_POLICIES.items():
        recorder.cluster.apply(policy(kind, "istio-system", spec))
    mesh = KubeMesh(
        recorder,
        backend="existing",
        options=KubeOptions(
            allow_mesh_wide=True,
            ready_timeout=timedelta(seconds=5),
            propagation_timeout=timedelta(seconds=1),
        ),
        cert_ttl=timedelta(seconds=40),
        keep=False,
        names=recorder.names,
        run_dir=tmp_path / "run",
    )
    mesh.start()
    try:
        httpbin = mesh.workload("httpbin", "foo")
        for namespace in (FOO, "istio-system"):
            for kind, spec in policies_of(namespace).items():
                mesh.apply(policy(kind, namespace, spec))
        for kind, spec in policies_of(FOO).items():
            mesh.delete(policy(kind, FOO, spec))
        for kind, spec in policies_of("istio-system").items():  # a test's own, deleted
            mesh.apply(policy(kind, "istio-system", spec, name="extra"))
            mesh.delete(policy(kind, "istio-system", spec, name="extra"))
        mesh.policies()
        mesh.logs(httpbin)
        with mesh.capture(httpbin, 8080):
            pass
    finally:
        mesh.close()
    listed = {p.key for p in RUN_PERMISSIONS}
    # what a run does only when something goes wrong: events are read when pods are not ready
    unexercised = {("list", "", "events", "run")}
    ambient = {p.key for p in RUN_PERMISSIONS if p.ambient}  # the next test's
    assert recorder.needed == listed - unexercised - ambient
    assert {p.key for p in RUN_PERMISSIONS if p.verb == "list" and p.resource == "events"} == (
        unexercised
    )


@pytest.mark.skipif(not ISTIO_ZTUNNEL_DUMP.is_file(), reason=f"{ISTIO_ZTUNNEL_DUMP} is absent")
def test_an_ambient_run_needs_the_ambient_permissions_too(tmp_path: Path) -> None:
    """With ambient namespaces a run also reads each ztunnel's config_dump by port-forward in
    istiod's namespace, and deploys bar's waypoint (its Gateway, the wait for istiod's
    Deployment, its Envoy's config_dump by port-forward): the entries marked ``ambient``
    (listing the ztunnel pods there is the optional entry every run uses to say what of ambient
    the cluster runs)."""
    cluster = WaypointCluster(ztunnel=True)  # serving the Gateway API: bar gets a waypoint
    with FakeApiServer(exec_handler=FakeIstio(cluster)) as server:
        server.port_forward_handler = PortForwards(FakeZtunnel(cluster), FakeWaypointEnvoy(cluster))
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(kubeconfig_text(server.url))
        cluster.exec_api = KubeApi.connect(kubeconfig, "fake")
        recorder = Recorder(cluster, RunNamespaces(RUN))
        mesh = KubeMesh(
            recorder,
            backend="existing",
            options=KubeOptions(
                ready_timeout=timedelta(seconds=5),
                propagation_timeout=timedelta(seconds=30),
                capture_image="docker.io/nicolaka/netshoot:v0.13",  # ambient: distroless
            ),
            cert_ttl=timedelta(seconds=40),
            keep=False,
            names=recorder.names,
            run_dir=tmp_path / "run",
            dataplane="ambient",
        )
        mesh.start()
        try:
            mesh.apply(policy("PeerAuthentication", FOO, {"mtls": {"mode": "STRICT"}}))
        finally:
            mesh.close()
    ambient = {p.key for p in RUN_PERMISSIONS if p.ambient}
    assert ambient == {
        ("get", "", "pods/portforward", "istio"),
        ("create", "", "pods/portforward", "istio"),
        ("create", "gateway.networking.k8s.io", "gateways", "run"),
        ("patch", "gateway.networking.k8s.io", "gateways", "run"),
        ("get", "gateway.networking.k8s.io", "gateways", "run"),
        ("list", "apps", "deployments", "run"),
        ("get", "", "pods/portforward", "run"),
        ("create", "", "pods/portforward", "run"),
    }
    assert ambient <= recorder.needed <= {p.key for p in RUN_PERMISSIONS}


def test_every_cluster_call_has_its_permission() -> None:
    methods = [
        m for m in ClusterApi.__dict__ if not m.startswith("_") and callable(ClusterApi.__dict__[m])
    ]
    for method in methods:
        kind = (
            "Deployment"
            if method in ("apply", "get", "list_objects", "delete", "replace")
            else None
        )
        permissions_of_call(method, "run", kind)  # KeyError for one without
    with pytest.raises(KeyError, match="no permission known"):
        permissions_of_call("patch_everything", "run")


def test_permission_lines_are_one_per_verb_and_resource() -> None:
    keys = [p.key for p in RUN_PERMISSIONS]
    assert len(keys) == len(set(keys))
    lines = [p.line() for p in RUN_PERMISSIONS]
    assert "create namespaces (cluster)" in lines
    assert "patch pods/ephemeralcontainers (run)" in lines
    assert "update peerauthentications.security.istio.io (root)" in lines


def test_the_readme_lists_exactly_these_permissions() -> None:
    lines = README.read_text().splitlines()
    start = lines.index(permission_table()[0])
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    assert lines[start:end] == permission_table()
