"""The kube backend with pods as Istio's injector writes them, in both forms: native sidecars
(``istio-proxy`` an init container with ``restartPolicy: Always``, Istio's default since 1.28)
and classic ones (an ordinary container). The pods come from Istio's own injector golden files
in ``../shared/testdata/istio-inject/`` (used in place; skipped when absent), and the fake API
server answers logs and exec only for a container the pod has and, for exec, runs: every place
the backend finds the proxy container (readiness, exec, Envoy admin and the certificates read
through it, logs, the capture container and its image) is exercised with both."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_fakes import (
    DATA_DIR,
    INJECT_DATA,
    INJECTOR_OUTPUT,
    SHARED_SECRETS,
    FakeCluster,
    container_state,
)
from kube_world import FOO, World, fake_world, peer_auth, proxy_id

from pytest_meshconform.backends.kube.backend import KubeMesh
from pytest_meshconform.backends.kube.capture import pod_proxy_image
from pytest_meshconform.backends.kube.client import KubeApiError
from pytest_meshconform.backends.kube.lifecycle import pod_has_sidecar
from pytest_meshconform.istio.sidecar_dump import parse_envoy_secrets
from pytest_meshconform.mesh import MeshError, PropagationTimeout

pytestmark = pytest.mark.skipif(
    not INJECT_DATA.is_dir(), reason=f"Istio's injector output not available at {INJECT_DATA}"
)
PROXY = "docker.io/istio/proxyv2:1.28.0"


@pytest.fixture(params=sorted(INJECTOR_OUTPUT))
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    cluster = FakeCluster(injector_form=request.param, proxy_image=PROXY)
    with fake_world(tmp_path, cluster) as world:
        yield world


@pytest.fixture
def started(world: World) -> Iterator[KubeMesh]:
    mesh = world.mesh()
    mesh.start()
    yield mesh
    mesh.close()


def proxy_container(pod: dict[str, object], form: str) -> dict[str, object]:
    spec = pod["spec"]
    assert isinstance(spec, dict)
    where = "initContainers" if form == "native" else "containers"
    [proxy] = [c for c in spec[where] if c["name"] == "istio-proxy"]
    return dict(proxy)


def test_the_pods_have_the_form_istios_injector_gives_them(world: World, started: KubeMesh) -> None:
    form = world.cluster.injector_form
    assert form is not None
    pod = started._pod(started.workload("httpbin", "foo"))
    proxy = proxy_container(pod, form)
    assert proxy["image"] == PROXY
    assert (proxy.get("restartPolicy") == "Always") is (form == "native")
    assert pod_has_sidecar(pod) and pod_proxy_image(pod) == PROXY
    assert container_state(pod, "istio-proxy") == "running"
    assert container_state(pod, "istio-init") == "terminated"
    annotations = pod["metadata"]["annotations"]
    status = json.loads(annotations["sidecar.istio.io/status"])
    assert ("istio-proxy" in status["initContainers"]) is (form == "native")


def test_policies_propagate_through_the_proxy_container(world: World, started: KubeMesh) -> None:
    world.istio.lag_reads = 1
    started.apply(peer_auth("foo", "STRICT"))
    assert {c.container for c in world.server.exec_calls} >= {"istio-proxy"}
    world.istio.stuck = {proxy_id(started, "httpbin", "foo")}
    with pytest.raises(PropagationTimeout, match=f"httpbin.{FOO}: inbound port 8080"):
        started.apply(peer_auth("foo", "DISABLE"))


def test_certificates_are_read_from_the_proxy_container(world: World, started: KubeMesh) -> None:
    if not SHARED_SECRETS.is_dir():
        pytest.skip(f"shared test data not available at {SHARED_SECRETS}")
    world.istio.envoy_admin["config_dump"] = (
        SHARED_SECRETS / "istio_config_dump.json"
    ).read_bytes()
    body = started.envoy_admin(started.workload("httpbin", "foo"), "/config_dump")
    cert = parse_envoy_secrets(body).workload
    assert cert is not None and cert.serial.lower() == "6fbee254c22900615cb1f74e3d2f1713"


def test_logs_are_read_from_both_containers(world: World, started: KubeMesh) -> None:
    logs = started.logs(started.workload("httpbin", "foo"))
    assert sorted(logs) == ["httpbin", "istio-proxy"]
    assert all(text.startswith("log of ") for text in logs.values()), logs


def test_captures_borrow_the_proxy_image(world: World, started: KubeMesh) -> None:
    world.istio.capture_pcap = (DATA_DIR / "httpbin-eth0.pcap").read_bytes()
    world.istio.capture_stderr = (DATA_DIR / "httpbin-eth0.tcpdump-stderr.txt").read_bytes()
    with started.capture(started.workload("httpbin", "foo"), 8080) as recording:
        pass
    assert recording.pcap
    [added] = [c for c in world.cluster.calls if c.startswith("ephemeral ")]
    assert json.loads(added.split(" ", 2)[2])["image"] == PROXY


def test_a_distroless_proxy_is_found_in_either_form(world: World) -> None:
    world.cluster.proxy_image = "docker.io/istio/proxyv2:1.28.0-distroless"
    with pytest.raises(MeshError, match="a distroless image"):
        world.mesh().start()


def test_the_fake_refuses_containers_the_pod_has_not(world: World, started: KubeMesh) -> None:
    """What the tests above rely on: the fake API server answers only for containers the pod
    has (and execs only into running ones), as the real one does."""
    httpbin = started.workload("httpbin", "foo")
    pod = started.pod_name(httpbin)
    with pytest.raises(KubeApiError, match="container istio-init is terminated, not running"):
        world.cluster.open_exec(httpbin.namespace, pod, "istio-init", ["true"])
    with pytest.raises(KubeApiError, match="container nope is not valid for pod"):
        world.cluster.pod_log(httpbin.namespace, pod, "nope", 1024)
