"""KubeApi's REST side through the official client against a loopback API server: discovery and
server-side apply of Istio CRs with the dynamic client, reads that map 404 to None, the typed
calls' requests and their deserialisation into the client's pydantic models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_fakes import (
    KUBE_VERSION,
    FakeApiServer,
    istiod_deployment,
    kubeconfig_text,
    pod_json,
)

from pytest_meshconform.backends.kube.client import KubeApi, KubeApiError

VERBS = ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"]


def resource_list(group_version: str, *resources: tuple[str, str]) -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": [
            {
                "name": plural,
                "singularName": plural[:-1],
                "namespaced": True,
                "kind": kind,
                "verbs": VERBS,
            }
            for plural, kind in resources
        ],
    }


# Discovery as an API server with Istio's CRDs answers it (security.istio.io served in v1 and
# v1beta1, v1 preferred; networking.istio.io in v1, v1beta1, v1alpha3).
DISCOVERY = {
    "GET /version": KUBE_VERSION,
    "GET /api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
    "GET /apis": {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [
            {
                "name": "security.istio.io",
                "versions": [
                    {"groupVersion": "security.istio.io/v1", "version": "v1"},
                    {"groupVersion": "security.istio.io/v1beta1", "version": "v1beta1"},
                ],
                "preferredVersion": {"groupVersion": "security.istio.io/v1", "version": "v1"},
            },
            {
                "name": "networking.istio.io",
                "versions": [
                    {"groupVersion": "networking.istio.io/v1", "version": "v1"},
                    {"groupVersion": "networking.istio.io/v1beta1", "version": "v1beta1"},
                    {"groupVersion": "networking.istio.io/v1alpha3", "version": "v1alpha3"},
                ],
                "preferredVersion": {"groupVersion": "networking.istio.io/v1", "version": "v1"},
            },
        ],
    },
    "GET /apis/security.istio.io/v1": resource_list(
        "security.istio.io/v1", ("peerauthentications", "PeerAuthentication")
    ),
    "GET /apis/security.istio.io/v1beta1": resource_list(
        "security.istio.io/v1beta1", ("peerauthentications", "PeerAuthentication")
    ),
    "GET /apis/networking.istio.io/v1": resource_list(
        "networking.istio.io/v1", ("destinationrules", "DestinationRule")
    ),
    "GET /apis/networking.istio.io/v1beta1": resource_list(
        "networking.istio.io/v1beta1", ("destinationrules", "DestinationRule")
    ),
    "GET /apis/networking.istio.io/v1alpha3": resource_list(
        "networking.istio.io/v1alpha3", ("destinationrules", "DestinationRule")
    ),
}
PA_PATH = "/apis/security.istio.io/v1/namespaces/mc-1a2b3c-foo/peerauthentications/default"
STRICT = {
    "apiVersion": "security.istio.io/v1",
    "kind": "PeerAuthentication",
    "metadata": {"name": "default", "namespace": "mc-1a2b3c-foo"},
    "spec": {"mtls": {"mode": "STRICT"}},
}


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    with FakeApiServer(routes=dict(DISCOVERY)) as fake:
        yield fake


@pytest.fixture
def api(server: FakeApiServer, tmp_path: Path) -> KubeApi:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(kubeconfig_text(server.url))
    return KubeApi.connect(kubeconfig, "fake", discovery_cache=tmp_path / "discovery.json")


def test_served_versions_preferred_first(api: KubeApi, tmp_path: Path) -> None:
    assert api.served_versions("security.istio.io", "PeerAuthentication") == ["v1", "v1beta1"]
    assert api.served_versions("networking.istio.io", "DestinationRule") == [
        "v1",
        "v1alpha3",
        "v1beta1",
    ]
    assert (tmp_path / "discovery.json").is_file()  # the discovery cache stays in the run dir


def test_server_side_apply(server: FakeApiServer, api: KubeApi) -> None:
    stored = {**STRICT, "metadata": {**STRICT["metadata"], "generation": 1, "uid": "5e1f"}}
    server.routes[f"PATCH {PA_PATH}"] = stored
    result = api.apply(STRICT)
    assert result["metadata"]["generation"] == 1
    [(request, content_type, body)] = server.bodies
    assert request == f"PATCH {PA_PATH}?fieldManager=meshconform&force=true"
    assert content_type == "application/apply-patch+yaml"
    assert json.loads(body) == STRICT


def test_apply_of_an_unserved_kind_says_so(api: KubeApi) -> None:
    manifest = {**STRICT, "apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication"}
    with pytest.raises(KubeApiError, match="does not serve RequestAuthentication"):
        api.apply(manifest)


def test_get_list_delete(server: FakeApiServer, api: KubeApi) -> None:
    assert api.get("security.istio.io/v1", "PeerAuthentication", "mc-1a2b3c-foo", "default") is None
    server.routes[f"GET {PA_PATH}"] = STRICT
    assert api.get("security.istio.io/v1", "PeerAuthentication", "mc-1a2b3c-foo", "default") == (
        STRICT
    )
    server.routes["GET /apis/security.istio.io/v1/namespaces/mc-1a2b3c-foo/peerauthentications"] = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthenticationList",
        "metadata": {"resourceVersion": "77"},
        "items": [STRICT],
    }
    assert api.list_objects(
        "security.istio.io/v1", "PeerAuthentication", "mc-1a2b3c-foo", "meshconform.dev/run=1a2b3c"
    ) == [STRICT]
    assert server.requests[-1].endswith("?labelSelector=meshconform.dev/run%3D1a2b3c")
    assert not api.delete("security.istio.io/v1", "PeerAuthentication", "mc-1a2b3c-foo", "x")
    server.routes[f"DELETE {PA_PATH}"] = {"kind": "Status", "apiVersion": "v1", "status": "Success"}
    assert api.delete("security.istio.io/v1", "PeerAuthentication", "mc-1a2b3c-foo", "default")


def test_typed_reads_come_back_as_api_json(server: FakeApiServer, api: KubeApi) -> None:
    pod = pod_json("sleep-6c8f9d7b5-0q2w", "mc-1a2b3c-foo", "sleep", sidecar=True)
    server.routes["GET /api/v1/namespaces/mc-1a2b3c-foo/pods"] = {
        "apiVersion": "v1",
        "kind": "PodList",
        "metadata": {"resourceVersion": "12"},
        "items": [pod],
    }
    server.routes["GET /apis/apps/v1/namespaces/istio-system/deployments"] = {
        "apiVersion": "apps/v1",
        "kind": "DeploymentList",
        "metadata": {"resourceVersion": "13"},
        "items": [istiod_deployment()],
    }
    [listed] = api.list_pods("mc-1a2b3c-foo", "app=sleep")
    assert listed["spec"]["containers"][1]["name"] == "istio-proxy"
    assert listed["status"]["hostIP"] == "172.18.0.2"
    [deployment] = api.list_deployments("istio-system", "app=istiod")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["env"][0] == {
        "name": "REVISION",
        "value": "default",
    }
    assert "GET /api/v1/namespaces/mc-1a2b3c-foo/pods?labelSelector=app%3Dsleep" in server.requests


def test_ephemeral_container_is_a_strategic_merge_patch(
    server: FakeApiServer, api: KubeApi
) -> None:
    path = "/api/v1/namespaces/mc-1a2b3c-foo/pods/httpbin-0/ephemeralcontainers"
    server.routes[f"PATCH {path}"] = pod_json("httpbin-0", "mc-1a2b3c-foo", "httpbin", sidecar=True)
    container = {"name": "mc-capture", "image": "docker.io/istio/proxyv2:1.25.1"}
    api.add_ephemeral_container("mc-1a2b3c-foo", "httpbin-0", container)
    [(request, content_type, body)] = server.bodies
    assert request == f"PATCH {path}"
    assert content_type == "application/strategic-merge-patch+json"
    assert json.loads(body) == {"spec": {"ephemeralContainers": [container]}}


def test_api_errors_carry_the_status(server: FakeApiServer, api: KubeApi) -> None:
    server.routes["POST /api/v1/namespaces"] = (
        403,
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": 'namespaces is forbidden: User "dev" cannot create resource "namespaces"',
            "reason": "Forbidden",
            "code": 403,
        },
    )
    with pytest.raises(KubeApiError) as failure:
        api.create_namespace({"metadata": {"name": "mc-1a2b3c-foo", "labels": {}}})
    assert failure.value.status == 403
    assert str(failure.value).startswith("create namespace mc-1a2b3c-foo: HTTP 403 Forbidden")
    assert 'User \\"dev\\" cannot create resource' in str(failure.value)


def test_deleting_a_terminating_namespace_is_not_an_error(
    server: FakeApiServer, api: KubeApi
) -> None:
    # what the namespace registry answers while the namespace is Terminating
    server.routes["DELETE /api/v1/namespaces/mc-0ld0ld-foo"] = (
        409,
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": 'Operation cannot be fulfilled on namespaces "mc-0ld0ld-foo": The system is'
            " ensuring all content is removed from this namespace.  Upon completion, this"
            " namespace will automatically be purged by the system.",
            "reason": "Conflict",
            "details": {"name": "mc-0ld0ld-foo", "kind": "namespaces"},
            "code": 409,
        },
    )
    assert api.delete_namespace("mc-0ld0ld-foo") is False
    assert api.delete_namespace("mc-never-was") is False  # 404
    assert [r for r in server.requests if r.startswith("DELETE")] == [
        "DELETE /api/v1/namespaces/mc-0ld0ld-foo?propagationPolicy=Background",
        "DELETE /api/v1/namespaces/mc-never-was?propagationPolicy=Background",
    ]


def test_pod_log_since_asks_the_api_server_for_the_window(
    server: FakeApiServer, api: KubeApi
) -> None:
    log_path = "/api/v1/namespaces/mc-1a2b3c-foo/pods/httpbin-0/log"
    server.routes[f"GET {log_path}"] = "line\n"
    api.pod_log("mc-1a2b3c-foo", "httpbin-0", "istio-proxy", 1024, since_seconds=7)
    api.pod_log("mc-1a2b3c-foo", "httpbin-0", "istio-proxy", 1024)
    since, whole = [r for r in server.requests if r.startswith(f"GET {log_path}")]
    assert "sinceSeconds=7" in since and "container=istio-proxy" in since
    assert "sinceSeconds" not in whole
