"""ztunnel on a cluster: finding the ztunnel of a node, and reading its ``/config_dump``
through the API server's port-forward with the real kubernetes client (``KubeApi
.port_forward_get``) against a loopback API server speaking the kubelet's WebSocket
port-forward protocol (each channel's first frame is its port, little-endian; channel 0 data,
channel 1 errors). The dump served is kiali's real ztunnel 1.24 dump from the shared test data
(skipped when absent); its facts were read with ``jq``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_fakes import FakeApiServer, kubeconfig_text, status_not_found
from test_ztunnel_dump import KIALI_DUMP, needs_dumps

from pytest_meshconform.backends.kube.client import KubeApi, KubeApiError
from pytest_meshconform.backends.kube.ztunnel import (
    ZTUNNEL_ADMIN_PORT,
    ZtunnelPod,
    read_ztunnel_dump,
    ztunnel_on_node,
    ztunnel_pods,
)
from pytest_meshconform.mesh import MeshError

PODS_PATH = "GET /api/v1/namespaces/istio-system/pods?labelSelector=app%3Dztunnel"


def _pod(name: str, node: str, *, ready: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "istio-system", "labels": {"app": "ztunnel"}},
        "spec": {"nodeName": node, "containers": [{"name": "istio-proxy", "image": "ztunnel"}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


# kiali's dump: jq '.workloads[]|select(.name|startswith("ztunnel"))|{name,node}'
ZTUNNELS = {
    "apiVersion": "v1",
    "kind": "PodList",
    "metadata": {},
    "items": [_pod("ztunnel-6z6nt", "ci-worker"), _pod("ztunnel-7hml8", "ci-control-plane")],
}


def _http(body: bytes, *, status: str = "200 OK", chunked: bool = False) -> bytes:
    if chunked:
        framed = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 7000]), body[i : i + 7000])
            for i in range(0, len(body), 7000)
        )
        head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        head += "transfer-encoding: chunked\r\n\r\n"
        return head.encode() + framed + b"0\r\n\r\n"
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
    head += f"content-length: {len(body)}\r\n\r\n"
    return head.encode() + body


@pytest.fixture
def fake_server() -> Iterator[FakeApiServer]:
    server = FakeApiServer(routes={PODS_PATH: ZTUNNELS})
    with server:
        yield server


@pytest.fixture
def api(fake_server: FakeApiServer, tmp_path: Path) -> KubeApi:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(kubeconfig_text(fake_server.url))
    return KubeApi.connect(kubeconfig, "fake")


def test_the_ztunnel_of_a_node(api: KubeApi) -> None:
    pods = ztunnel_pods(api, "istio-system")
    assert [(p.name, p.node) for p in pods] == [
        ("ztunnel-7hml8", "ci-control-plane"),
        ("ztunnel-6z6nt", "ci-worker"),
    ]
    assert ztunnel_on_node(pods, "ci-worker", "istio-system").name == "ztunnel-6z6nt"


def test_no_ztunnel_says_what_to_install_or_check() -> None:
    with pytest.raises(
        MeshError,
        match=r"no ztunnel pod \(app=ztunnel\) in namespace istio-system.*profile=ambient",
    ):
        ztunnel_on_node((), "ci-worker", "istio-system")
    elsewhere = (ZtunnelPod("istio-system", "ztunnel-a", "node-a", True),)
    with pytest.raises(
        MeshError, match=r"no ztunnel pod on node node-b \(ztunnel runs on: node-a\)"
    ):
        ztunnel_on_node(elsewhere, "node-b", "istio-system")
    not_ready = (ZtunnelPod("istio-system", "ztunnel-a", "node-a", False),)
    with pytest.raises(
        MeshError, match="ztunnel istio-system/ztunnel-a on node node-a is not ready"
    ):
        ztunnel_on_node(not_ready, "node-a", "istio-system")


@needs_dumps
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_the_dump_is_read_through_port_forward(
    fake_server: FakeApiServer, api: KubeApi, chunked: bool
) -> None:
    dump_bytes = KIALI_DUMP.read_bytes()
    fake_server.port_forward_handler = lambda call: _http(dump_bytes, chunked=chunked)
    pod = ztunnel_on_node(ztunnel_pods(api, "istio-system"), "ci-worker", "istio-system")
    dump = read_ztunnel_dump(api, pod, timeout=10)
    # jq -r '.version.gitTag, (.workloads|length)'
    assert dump.version == "1.24.0-2-g4c7cdf1" and len(dump.workloads) == 48
    (call,) = fake_server.port_forwards
    assert (call.namespace, call.pod, call.port) == ("istio-system", "ztunnel-6z6nt", 15000)
    assert call.request.startswith(b"GET /config_dump HTTP/1.1\r\n")
    assert b"\r\nHost: localhost:15000\r\n" in call.request
    assert any("/pods/ztunnel-6z6nt/portforward?ports=15000" in r for r in fake_server.requests)


def test_an_error_on_the_ports_error_channel_is_named(
    fake_server: FakeApiServer, api: KubeApi
) -> None:
    refused = (
        "an error occurred forwarding 15000 -> 15000: error forwarding port 15000 to pod"
        " abc, uid : failed to execute portforward in network namespace: connection refused"
    )
    fake_server.port_forward_handler = lambda call: refused
    with pytest.raises(KubeApiError) as info:
        api.port_forward_get(
            "istio-system", "ztunnel-6z6nt", ZTUNNEL_ADMIN_PORT, "/config_dump", timeout=10
        )
    message = str(info.value)
    assert message.startswith(
        "GET /config_dump on port 15000 of istio-system/ztunnel-6z6nt (port-forward): "
    )
    assert "connection refused" in message


def test_a_non_200_answer_is_an_error(fake_server: FakeApiServer, api: KubeApi) -> None:
    fake_server.port_forward_handler = lambda call: _http(b"not found\n", status="404 Not Found")
    with pytest.raises(KubeApiError, match=r"\(port-forward\): HTTP 404 Not Found: not found"):
        api.port_forward_get("istio-system", "ztunnel-6z6nt", 15000, "/config_dumpp", timeout=10)


def test_an_answer_over_the_limit_is_refused(fake_server: FakeApiServer, api: KubeApi) -> None:
    fake_server.port_forward_handler = lambda call: _http(b"x" * 5000)
    with pytest.raises(KubeApiError, match="larger than 4096 bytes"):
        api.port_forward_get("istio-system", "z", 15000, "/config_dump", timeout=10, limit=4096)


def test_a_pod_that_is_gone_fails_the_handshake(fake_server: FakeApiServer, api: KubeApi) -> None:
    fake_server.refused_pods["ztunnel-gone"] = (404, status_not_found("pods", "ztunnel-gone"))
    # the refusal is answered before the upgrade, as for exec
    fake_server.port_forward_handler = None
    with pytest.raises(KubeApiError, match=r'HTTP 404 pods "ztunnel-gone" not found'):
        api.port_forward_get("istio-system", "ztunnel-gone", 15000, "/config_dump", timeout=10)


def test_an_envoy_dump_is_not_taken_for_ztunnels(fake_server: FakeApiServer, api: KubeApi) -> None:
    envoy = json.dumps({"configs": []}).encode()
    fake_server.port_forward_handler = lambda call: _http(envoy)
    pod = ZtunnelPod("istio-system", "ztunnel-6z6nt", "ci-worker", True)
    with pytest.raises(
        MeshError,
        match=r"ztunnel istio-system/ztunnel-6z6nt /config_dump: not a ztunnel config_dump",
    ):
        read_ztunnel_dump(api, pod, timeout=10)
