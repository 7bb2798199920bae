"""The existing-cluster checks (``meshconform doctor`` and the preflight) against the fake API
server, through the real kubernetes client: every finding with its fix, and a run that
refuses a bad certificate TTL, a revision mismatch and an unmatched discoverySelector within
seconds, before any test.

The cluster's objects are shaped as Istio's charts render them (release 1.28.0): istiod's
Deployment (kube_fakes.istiod_deployment), the injector webhooks of
manifests/charts/istio-control/istio-discovery/templates/mutatingwebhook.yaml and
revision-tags-mwc.yaml, the injector ConfigMap's ``values`` of istiod-injector-configmap.yaml
(values.yaml's ``global.hub``/``tag``/``variant``/``proxy.image``/``proxy.clusterDomain``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kube_fakes import (
    DEFAULT_MESH_CONFIG,
    KUBE_VERSION,
    FakeApiServer,
    config_map_json,
    istiod_deployment,
    kubeconfig_text,
    model_json,
    pod_json,
)

from pytest_meshconform.backends.kube.checkup import (
    Finding,
    RunRequest,
    blocking,
    check_survey,
)
from pytest_meshconform.backends.kube.client import KubeApi
from pytest_meshconform.backends.kube.entry import preflight
from pytest_meshconform.backends.kube.permissions import RUN_PERMISSIONS
from pytest_meshconform.backends.kube.survey import survey_cluster
from pytest_meshconform.mesh import MeshUnavailable
from pytest_meshconform.plugin.options import backend_run

ISTIO_NS = "istio-system"
SSAR = "POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


def _expressions(*items: tuple[str, str, list[str] | None]) -> dict[str, Any]:
    return {
        "matchExpressions": [
            {"key": k, "operator": op, **({"values": v} if v is not None else {})}
            for k, op, v in items
        ]
    }


def _webhook(
    prefix: str, namespace_selector: dict[str, Any], object_selector: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": f"{prefix}sidecar-injector.istio.io",
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Fail",
        "clientConfig": {"service": {"name": "istiod", "namespace": ISTIO_NS, "path": "/inject"}},
        "rules": [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
            }
        ],
        "namespaceSelector": namespace_selector,
        "objectSelector": object_selector,
    }


NOT_DISABLED = ("sidecar.istio.io/inject", "NotIn", ["false"])


def injector_webhooks(revision: str = "default", tag: str | None = None) -> dict[str, Any]:
    """The MutatingWebhookConfiguration of a revision (mutatingwebhook.yaml) or of a revision
    tag (revision-tags-mwc.yaml): rev.namespace and rev.object for ``tag or revision``, plus
    namespace. and object. when that is ``default``."""
    selects = tag or revision
    webhooks = [
        _webhook(
            "rev.namespace.",
            _expressions(
                ("istio.io/rev", "In", [selects]), ("istio-injection", "DoesNotExist", None)
            ),
            _expressions(NOT_DISABLED),
        ),
        _webhook(
            "rev.object.",
            _expressions(
                ("istio.io/rev", "DoesNotExist", None), ("istio-injection", "DoesNotExist", None)
            ),
            _expressions(NOT_DISABLED, ("istio.io/rev", "In", [selects])),
        ),
    ]
    if selects == "default":
        webhooks += [
            _webhook(
                "namespace.",
                _expressions(("istio-injection", "In", ["enabled"])),
                _expressions(NOT_DISABLED),
            ),
            _webhook(
                "object.",
                _expressions(
                    ("istio-injection", "DoesNotExist", None),
                    ("istio.io/rev", "DoesNotExist", None),
                ),
                _expressions(
                    ("sidecar.istio.io/inject", "In", ["true"]),
                    ("istio.io/rev", "DoesNotExist", None),
                ),
            ),
        ]
    labels = {"istio.io/rev": revision, "app": "sidecar-injector"}
    if tag is not None:
        labels["istio.io/tag"] = tag
        name = f"istio-revision-tag-{tag}"
    else:
        name = "istio-sidecar-injector" + ("" if revision == "default" else f"-{revision}")
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": labels},
        "webhooks": webhooks,
    }


def injector_values(
    *, tag: str = "1.28.0", variant: str = "", cluster_domain: str = "cluster.local"
) -> str:
    return json.dumps(
        {
            "global": {
                "hub": "docker.io/istio",
                "tag": tag,
                "variant": variant,
                "proxy": {"image": "proxyv2", "clusterDomain": cluster_domain},
            },
            "revision": "",
            "sidecarInjectorWebhook": {},
        }
    )


def node(name: str, kubelet: str) -> dict[str, Any]:
    """A Node as the API returns it (the client's own model), with its kubelet's version."""
    from kubernetes import client as k8s

    info = k8s.V1NodeSystemInfo(
        architecture="amd64",
        boot_id="b",
        container_runtime_version="containerd://2.0.2",
        kernel_version="6.8.0",
        kube_proxy_version=kubelet,
        kubelet_version=kubelet,
        machine_id="m",
        operating_system="linux",
        os_image="Debian GNU/Linux 12 (bookworm)",
        system_uuid="u",
    )
    model = k8s.V1Node(
        api_version="v1",
        kind="Node",
        metadata=k8s.V1ObjectMeta(name=name),
        status=k8s.V1NodeStatus(node_info=info),
    )
    return dict(model_json(model))


def listing(kind: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": f"{kind}List", "metadata": {}, "items": items}


def forbidden(what: str) -> tuple[int, dict[str, Any]]:
    return (
        403,
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": f'{what} is forbidden: User "ci" cannot list resource',
            "reason": "Forbidden",
            "code": 403,
        },
    )


@dataclass
class Cluster:
    """What the fake API server holds; ``routes()`` renders it."""

    deployments: list[dict[str, Any]] = field(default_factory=lambda: [istiod_deployment()])
    mesh_config: str = DEFAULT_MESH_CONFIG
    values: str = field(default_factory=injector_values)
    webhooks: list[dict[str, Any]] | None = field(default_factory=lambda: [injector_webhooks()])
    nodes: list[dict[str, Any]] | None = field(
        default_factory=lambda: [node("kind-control-plane", "v1.32.2")]
    )
    denied: set[tuple[str, str, str]] = field(default_factory=set)  # (verb, resource, namespace)
    admission: tuple[int, dict[str, Any]] | None = None  # the dry run's refusal
    reviews: list[dict[str, Any]] = field(default_factory=list)
    version: dict[str, str] = field(default_factory=lambda: dict(KUBE_VERSION))
    # label selector -> the pods of istiod's namespace it lists (ztunnel, istio-cni)
    system_pods: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def review(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        asked = json.loads(body)
        self.reviews.append(asked)
        attributes = asked["spec"]["resourceAttributes"]
        resource = attributes["resource"] + (
            f"/{attributes['subresource']}" if attributes.get("subresource") else ""
        )
        key = (attributes["verb"], resource, attributes.get("namespace") or "")
        allowed = key not in self.denied
        status = {"allowed": allowed}
        if not allowed:
            status["reason"] = "no RBAC policy matched"
        return 201, {**asked, "status": status}

    def create_namespace(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        assert "dryRun=All" in path, path  # the doctor never creates anything
        if self.admission is not None:
            return self.admission
        return 201, json.loads(body)

    def routes(self) -> dict[str, Any]:
        revisions = sorted(
            {d["metadata"]["labels"].get("istio.io/rev") or "default" for d in self.deployments}
        )
        routes: dict[str, Any] = {
            "GET /version": self.version,
            f"GET /apis/apps/v1/namespaces/{ISTIO_NS}/deployments": listing(
                "Deployment", self.deployments
            ),
            SSAR: self.review,
            "POST /api/v1/namespaces": self.create_namespace,
            "GET /apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations": listing(
                "MutatingWebhookConfiguration", self.webhooks
            )
            if self.webhooks is not None
            else forbidden("mutatingwebhookconfigurations.admissionregistration.k8s.io"),
            "GET /api/v1/nodes": listing("Node", self.nodes)
            if self.nodes is not None
            else forbidden("nodes"),
        }
        for selector, pods in self.system_pods.items():
            query = selector.replace("=", "%3D")
            path = f"GET /api/v1/namespaces/{ISTIO_NS}/pods?labelSelector={query}"
            routes[path] = listing("Pod", pods)
        for revision in revisions:
            suffix = "" if revision == "default" else f"-{revision}"
            for name, key, text in (
                (f"istio{suffix}", "mesh", self.mesh_config),
                (f"istio-sidecar-injector{suffix}", "values", self.values),
            ):
                routes[f"GET /api/v1/namespaces/{ISTIO_NS}/configmaps/{name}"] = config_map_json(
                    ISTIO_NS, name, {key: text}
                )
        return routes


@pytest.fixture
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "kubeconfig"
    monkeypatch.setenv("KUBECONFIG", str(path))
    yield path


Checkup = Callable[..., tuple[Finding, ...]]


@pytest.fixture
def checkup(kubeconfig: Path) -> Iterator[Callable[..., tuple[Finding, ...]]]:
    """checkup(cluster, **request) -> the findings, read over HTTP from the fake server."""
    servers: list[FakeApiServer] = []

    def run(cluster: Cluster, **asked: Any) -> tuple[Finding, ...]:
        server = FakeApiServer(routes=cluster.routes())
        servers.append(server.__enter__())
        kubeconfig.write_text(kubeconfig_text(server.url))
        api = KubeApi.connect(kubeconfig, "fake", retries=0)
        request = RunRequest(run_id="d0c70r", **asked)
        return check_survey(survey_cluster(api, request), request)

    yield run
    for server in servers:
        server.__exit__(None, None, None)


def finding(findings: tuple[Finding, ...], check: str) -> Finding:
    (found,) = [f for f in findings if f.check == check]
    return found


# --- a healthy cluster ----------------------------------------------------------------------------


def test_a_stock_istio_passes_every_check(checkup: Checkup) -> None:
    findings = checkup(Cluster())
    assert blocking(findings) == ()
    assert finding(findings, "kubernetes").found.startswith("Kubernetes v1.32.2 at http://")
    assert finding(findings, "istio").found.startswith(
        "Istio 1.25.1, revision default (deployment istio-system/istiod); istiods: istiod;"
        " revisions: default; tags: none"
    )
    assert finding(findings, "injection") == Finding(
        "injection",
        "ok",
        "the run labels its injected namespaces istio-injection=enabled (revision default):"
        " injected by default (webhook istio-sidecar-injector)",
    )
    assert finding(findings, "discovery").found == (
        "no discoverySelectors: istiod discovers every namespace"
    )
    assert finding(findings, "cert-ttl") == Finding(
        "cert-ttl", "ok", "--mesh-cert-ttl 24h, istiod signs up to MAX_WORKLOAD_CERT_TTL=2160h"
    )
    assert finding(findings, "proxy-image").found == (
        "the injector's proxy image is docker.io/istio/proxyv2:1.28.0: captures borrow it"
    )
    assert finding(findings, "domains").found == (
        "trust domain cluster.local (meshConfig.trustDomain), root namespace istio-system;"
        " DNS domain cluster.local (the injector's global.proxy.clusterDomain); the run reads"
        " the cluster's DNS domain from a pod's /etc/resolv.conf"
    )
    assert finding(findings, "pod-security").status == "ok"
    permissions = [f for f in findings if f.check == "permission"]
    assert len(permissions) == len(RUN_PERMISSIONS)
    assert all(f.status == "ok" for f in permissions)
    assert "create namespaces (cluster): allowed" in [f.found for f in permissions]
    assert "get pods/exec (run) in mc-d0c70r-foo: allowed" in [f.found for f in permissions]


def test_the_permissions_are_asked_one_by_one_where_the_run_uses_them(
    checkup: Checkup,
) -> None:
    cluster = Cluster()
    checkup(cluster)
    asked = [
        (
            r["spec"]["resourceAttributes"]["verb"],
            r["spec"]["resourceAttributes"].get("group", ""),
            r["spec"]["resourceAttributes"]["resource"],
            r["spec"]["resourceAttributes"].get("subresource"),
            r["spec"]["resourceAttributes"].get("namespace"),
        )
        for r in cluster.reviews
    ]
    assert len(asked) == len(RUN_PERMISSIONS)
    assert ("create", "", "namespaces", None, None) in asked
    assert ("patch", "", "pods", "ephemeralcontainers", "mc-d0c70r-foo") in asked
    assert ("list", "apps", "deployments", None, "istio-system") in asked
    assert ("delete", "security.istio.io", "peerauthentications", None, "istio-system") in asked


# --- each finding, with its fix ------------------------------------------------------------------


def test_an_old_kubernetes_client_is_named_with_the_pip_fix(
    checkup: Checkup, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pytest_meshconform.backends.kube.survey as survey

    monkeypatch.setattr(survey, "installed_kubernetes_client", lambda: "36.0.3")
    found = finding(checkup(Cluster()), "kubernetes-client")
    assert found.status == "fail"
    assert found.fix == "pip install 'kubernetes>=37.0.0'"
    assert "exec streams" in found.breaks


def test_a_kubernetes_without_ephemeral_containers(checkup: Checkup) -> None:
    cluster = Cluster(version=dict(KUBE_VERSION, minor="22", gitVersion="v1.22.17"))
    found = finding(checkup(cluster), "kubernetes")
    assert found.status == "fail"
    assert "ephemeral container" in found.breaks
    assert found.fix == "a cluster of Kubernetes 1.23 or later"


def test_no_istio_says_how_to_install_it(checkup: Checkup) -> None:
    found = finding(checkup(Cluster(deployments=[])), "istio")
    assert found.status == "fail"
    assert found.found.startswith(
        "no istiod Deployment (label app=istiod) in namespace istio-system"
    )
    assert found.fix.startswith("install Istio (istioctl install)")


def test_a_revision_that_is_not_installed_names_the_installed_ones(checkup: Checkup) -> None:
    cluster = Cluster(
        deployments=[istiod_deployment(revision="1-27"), istiod_deployment(revision="1-28")],
        webhooks=[injector_webhooks("1-27"), injector_webhooks("1-28")],
    )
    found = finding(checkup(cluster, revision="canary"), "istio")
    assert found.status == "fail"
    assert found.found.startswith("no istiod of revision 'canary' (found revisions: 1-27, 1-28)")
    assert found.fix == "--mesh-revision=REV with one of: 1-27, 1-28"


def test_a_revision_tag_names_the_revision_it_points_to(checkup: Checkup) -> None:
    cluster = Cluster(
        deployments=[istiod_deployment(revision="1-28")],
        webhooks=[injector_webhooks("1-28"), injector_webhooks("1-28", tag="prod")],
    )
    found = finding(checkup(cluster, revision="prod"), "istio")
    assert found.status == "fail"
    assert "'prod' is a revision tag of revision '1-28'" in found.found
    assert "tags: prod -> 1-28" in found.found
    assert found.fix == "--mesh-revision=1-28"


def test_several_revisions_without_a_default_need_the_flag(checkup: Checkup) -> None:
    cluster = Cluster(
        deployments=[istiod_deployment(revision="1-27"), istiod_deployment(revision="1-28")],
        webhooks=[injector_webhooks("1-27"), injector_webhooks("1-28")],
    )
    found = finding(checkup(cluster), "istio")
    assert found.status == "fail"
    assert "pass --mesh-revision=REV to pick one" in found.found
    assert found.fix == "--mesh-revision=REV with one of: 1-27, 1-28"


def test_a_revision_only_istio_is_injected_through_its_revision_label(checkup: Checkup) -> None:
    cluster = Cluster(
        deployments=[istiod_deployment(revision="1-28")], webhooks=[injector_webhooks("1-28")]
    )
    findings = checkup(cluster)
    assert blocking(findings) == ()
    assert finding(findings, "injection").found == (
        "the run labels its injected namespaces istio.io/rev=1-28 (revision 1-28): injected by"
        " 1-28 (webhook istio-sidecar-injector-1-28)"
    )


def test_no_injector_for_the_label_the_run_uses(checkup: Checkup) -> None:
    # istiod of the default revision, but only a webhook of revision 1-28 is installed
    cluster = Cluster(webhooks=[injector_webhooks("1-28")])
    found = finding(checkup(cluster), "injection")
    assert found.status == "fail"
    assert found.found == (
        "the run labels its injected namespaces istio-injection=enabled (revision default), but"
        " no Istio injector webhook selects such a namespace"
    )
    assert found.breaks == "the run's pods would start without istio-proxy"
    assert found.fix == (
        "--mesh-revision=REV naming a revision or tag whose injector is installed (1-28)"
    )


def test_a_default_tag_on_another_revision_is_a_revision_mismatch(checkup: Checkup) -> None:
    # istiod "default" is under test, but the default tag sends istio-injection=enabled
    # namespaces to revision 1-28's injector
    cluster = Cluster(
        deployments=[istiod_deployment(), istiod_deployment(revision="1-28")],
        webhooks=[injector_webhooks("1-28"), injector_webhooks("1-28", tag="default")],
    )
    found = finding(checkup(cluster), "injection")
    assert found.status == "fail"
    assert "the injector of 1-28 (webhook istio-revision-tag-default) selects it" in found.found
    assert found.fix == "--mesh-revision=1-28"


def test_unreadable_webhooks_are_a_warning_naming_the_grant(checkup: Checkup) -> None:
    found = finding(checkup(Cluster(webhooks=None)), "injection")
    assert found.status == "warn"
    assert "HTTP 403" in found.found
    assert found.fix.startswith("grant list on mutatingwebhookconfigurations")


def test_discovery_selectors_the_run_can_meet_name_the_label(checkup: Checkup) -> None:
    mesh = (
        DEFAULT_MESH_CONFIG + "discoverySelectors:\n- matchLabels:\n    istio-discovery: enabled\n"
    )
    found = finding(checkup(Cluster(mesh_config=mesh)), "discovery")
    assert found == Finding(
        "discovery",
        "ok",
        "discoverySelectors {matchLabels: {istio-discovery: enabled}}: the run's namespaces"
        " match with istio-discovery=enabled",
    )


def test_discovery_selectors_no_label_can_meet_fail_with_the_fix(checkup: Checkup) -> None:
    mesh = DEFAULT_MESH_CONFIG + (
        "discoverySelectors:\n- matchExpressions:\n  - key: kubernetes.io/metadata.name\n"
        "    operator: In\n    values: [shop]\n"
    )
    found = finding(checkup(Cluster(mesh_config=mesh)), "discovery")
    assert found.status == "fail"
    assert found.found == (
        "discoverySelectors {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In,"
        " values: [shop]}]} select none of the run's namespaces"
    )
    assert "istio-ca-root-cert" in found.breaks
    assert found.fix == (
        "add a selector with matchLabels (e.g. {matchLabels: {istio-discovery: enabled}}) to"
        " the mesh config's discoverySelectors"
    )


def test_a_cert_ttl_above_istiods_maximum(checkup: Checkup) -> None:
    cluster = Cluster(deployments=[istiod_deployment(max_cert_ttl="12h0m0s")])
    found = finding(checkup(cluster, cert_ttl=timedelta(hours=24)), "cert-ttl")
    assert found == Finding(
        "cert-ttl",
        "fail",
        "--mesh-cert-ttl 24h, istiod signs up to MAX_WORKLOAD_CERT_TTL=12h",
        "istiod would refuse every sidecar's certificate request (TTLError) and no pod would"
        " become ready",
        "--mesh-cert-ttl=12h or less",
    )


@pytest.mark.parametrize(
    ("image", "env", "kubelets", "shape"),
    [
        # Istio 1.28: ENABLE_NATIVE_SIDECARS defaults to auto (istio/istio#56428): native when
        # every kubelet is 1.33 or later (DetectNativeSidecar)
        ("1.28.0", None, ["v1.33.1", "v1.34.0"], "native sidecars"),
        ("1.28.0", None, ["v1.33.1", "v1.32.2"], "an ordinary container"),
        ("1.26.3", None, ["v1.34.0"], "an ordinary container"),  # before 1.27: false
        ("1.26.3", "true", ["v1.30.0"], "native sidecars"),
        ("1.28.0", "false", ["v1.34.0"], "an ordinary container"),
        ("1.28.0", None, None, "a native sidecar or an ordinary container"),
    ],
)
def test_native_sidecars_are_reported_as_istiod_decides_them(
    checkup: Checkup, image: str, env: str | None, kubelets: list[str] | None, shape: str
) -> None:
    deployment = istiod_deployment(image=f"docker.io/istio/pilot:{image}")
    if env is not None:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        container["env"].append({"name": "ENABLE_NATIVE_SIDECARS", "value": env})
    nodes = None if kubelets is None else [node(f"n{i}", k) for i, k in enumerate(kubelets)]
    found = finding(checkup(Cluster(deployments=[deployment], nodes=nodes)), "native-sidecars")
    assert found.status == "info"
    assert shape in found.found
    assert found.found.endswith(
        "meshconform finds, execs into and reads istio-proxy in either form"
    )


def test_a_distroless_proxy_needs_a_capture_image(checkup: Checkup) -> None:
    cluster = Cluster(values=injector_values(variant="distroless"))
    found = finding(checkup(cluster), "proxy-image")
    assert found.status == "fail"
    assert found.found == (
        "the injector's proxy image is docker.io/istio/proxyv2:1.28.0-distroless, distroless"
        " (no bash, no tcpdump)"
    )
    assert found.fix.startswith("--mesh-capture-image=IMAGE with bash and tcpdump (e.g.")
    ok = finding(checkup(cluster, capture_image="registry.local/netshoot:v0.13"), "proxy-image")
    assert ok.status == "ok"


def test_the_mesh_configs_image_type_overrides_the_variant(checkup: Checkup) -> None:
    mesh = DEFAULT_MESH_CONFIG.replace(
        "defaultConfig:\n", "defaultConfig:\n  image:\n    imageType: distroless\n"
    )
    found = finding(checkup(Cluster(mesh_config=mesh)), "proxy-image")
    assert found.status == "fail"
    assert "proxyv2:1.28.0-distroless" in found.found


def test_another_dns_and_trust_domain_are_reported(checkup: Checkup) -> None:
    mesh = DEFAULT_MESH_CONFIG.replace("trustDomain: cluster.local", "trustDomain: corp.example")
    cluster = Cluster(mesh_config=mesh, values=injector_values(cluster_domain="k8s.corp"))
    found = finding(checkup(cluster), "domains")
    assert found.found.startswith(
        "trust domain corp.example (meshConfig.trustDomain), root namespace istio-system;"
        " DNS domain k8s.corp (the injector's global.proxy.clusterDomain)"
    )


def test_an_admission_policy_refusing_privileged_namespaces(checkup: Checkup) -> None:
    refusal = (
        400,
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": 'admission webhook "validate.kyverno.svc" denied the request: privileged'
            " namespaces are not allowed",
            "reason": "BadRequest",
            "code": 400,
        },
    )
    found = finding(checkup(Cluster(admission=refusal)), "pod-security")
    assert found.status == "fail"
    assert "privileged namespaces are not allowed" in found.found
    assert found.fix.startswith(
        "allow namespaces labelled pod-security.kubernetes.io/enforce=privileged"
    )


def test_a_denied_permission_is_one_line_with_the_rbac_rule(checkup: Checkup) -> None:
    cluster = Cluster(denied={("patch", "pods/ephemeralcontainers", "mc-d0c70r-foo")})
    findings = checkup(cluster)
    (denied,) = blocking(findings)
    assert denied == Finding(
        "permission",
        "fail",
        "patch pods/ephemeralcontainers (run) in mc-d0c70r-foo: denied (no RBAC policy matched)",
        "the run needs it for the tcpdump container of a capture",
        'grant {apiGroups: [""], resources: ["pods/ephemeralcontainers"], verbs: ["patch"]}'
        " (the run's namespaces (every namespace: they do not exist yet)) through a ClusterRole"
        " bound with a ClusterRoleBinding",
    )


AMBIENT_PODS = {
    "app=ztunnel": [
        pod_json(
            "ztunnel-x7k2p", ISTIO_NS, "ztunnel", sidecar=False, node_name="kind-control-plane"
        )
    ],
    "k8s-app=istio-cni-node": [
        pod_json(
            "istio-cni-node-q8v4d",
            ISTIO_NS,
            "istio-cni",
            sidecar=False,
            node_name="kind-control-plane",
            labels={"k8s-app": "istio-cni-node"},
        )
    ],
}


def test_an_ambient_run_checks_ztunnel_and_istio_cni(checkup: Checkup) -> None:
    findings = checkup(Cluster(system_pods=AMBIENT_PODS), ambient=True)
    assert blocking(findings) == ()
    assert finding(findings, "ambient") == Finding(
        "ambient", "ok", "ambient: ztunnel on 1 node, istio-cni on 1 node"
    )
    portforward = [f.found for f in findings if "pods/portforward" in f.found]
    assert portforward == [
        "get pods/portforward (istio) in istio-system: allowed",
        "create pods/portforward (istio) in istio-system: allowed",
        # the waypoint Envoy's, in the run's namespaces
        "get pods/portforward (run) in mc-d0c70r-foo: allowed",
        "create pods/portforward (run) in mc-d0c70r-foo: allowed",
    ]


def test_an_ambient_run_without_the_ambient_profile_fails_with_the_install(
    checkup: Checkup,
) -> None:
    findings = checkup(
        Cluster(system_pods={"app=ztunnel": [], "k8s-app=istio-cni-node": []}), ambient=True
    )
    assert finding(findings, "ambient") == Finding(
        "ambient",
        "fail",
        "no ztunnel (app=ztunnel), istio-cni (k8s-app=istio-cni-node) pod in istio-system",
        "ambient namespaces need Istio's ambient data plane: their pods would not be enrolled"
        " or would have no ztunnel",
        "istioctl install --set profile=ambient (or pass --mesh-istio-namespace)",
    )
    assert [f.check for f in blocking(findings)] == ["ambient"]


def test_a_sidecar_run_asks_nothing_of_ambient(checkup: Checkup) -> None:
    cluster = Cluster(denied={("get", "pods/portforward", ISTIO_NS)})
    findings = checkup(cluster)
    assert [f for f in findings if f.check == "ambient"] == []
    (denied,) = [f for f in findings if f.found.startswith("get pods/portforward (istio)")]
    assert denied.status == "info" and denied.found.endswith(
        "needed only with ambient namespaces (--mesh-dataplane=ambient or both)"
    )
    assert blocking(findings) == ()


def test_optional_and_mesh_wide_permissions_do_not_block(checkup: Checkup) -> None:
    cluster = Cluster(
        denied={
            ("list", "namespaces", ""),
            ("delete", "peerauthentications", ISTIO_NS),
        }
    )
    findings = checkup(cluster)
    assert blocking(findings) == ()
    by_line = {f.found.split(":")[0]: f for f in findings if f.check == "permission"}
    assert by_line["list namespaces (cluster)"].status == "warn"
    assert by_line[
        "delete peerauthentications.security.istio.io (root) in istio-system"
    ].status == ("info")
    wide = checkup(cluster, allow_mesh_wide=True)
    assert [f.found for f in blocking(wide)] == [
        "delete peerauthentications.security.istio.io (root) in istio-system: denied (no RBAC"
        " policy matched)"
    ]


# --- the run refuses them before any test ------------------------------------------------------


def run_pytest_against(
    pytester: pytest.Pytester, kubeconfig: Path, cluster: Cluster, *args: str
) -> tuple[pytest.RunResult, FakeApiServer]:
    pytester.makepyfile("def test_needs_mesh(mesh): pass")
    with FakeApiServer(routes=cluster.routes()) as server:
        kubeconfig.write_text(kubeconfig_text(server.url))
        result = pytester.runpytest(
            "--mesh-cluster=existing", "--mesh-kube-context=fake", "-p", "no:cacheprovider", *args
        )
        return result, server


DISCOVERY_BY_NAME = DEFAULT_MESH_CONFIG + (
    "discoverySelectors:\n- matchExpressions:\n  - key: kubernetes.io/metadata.name\n"
    "    operator: In\n    values: [shop]\n"
)


@pytest.mark.parametrize(
    ("cluster", "args", "named"),
    [
        (
            Cluster(deployments=[istiod_deployment(max_cert_ttl="12h0m0s")]),
            ["--mesh-cert-ttl=24h"],
            (
                "[cert-ttl] --mesh-cert-ttl 24h, istiod signs up to MAX_WORKLOAD_CERT_TTL=12h;",
                "fix: --mesh-cert-ttl=12h or less",
            ),
        ),
        (
            Cluster(
                deployments=[istiod_deployment(revision="1-28")],
                webhooks=[injector_webhooks("1-28"), injector_webhooks("1-28", tag="prod")],
            ),
            ["--mesh-revision=prod"],
            ("[istio] no istiod of revision 'prod'", "fix: --mesh-revision=1-28"),
        ),
        (
            Cluster(mesh_config=DISCOVERY_BY_NAME),
            [],
            (
                "[discovery] discoverySelectors",
                "select none of the run's namespaces;",
                "fix: add a selector with matchLabels",
            ),
        ),
    ],
    ids=["cert-ttl", "revision", "discovery"],
)
def test_an_existing_cluster_run_refuses_at_once_naming_the_fix(
    pytester: pytest.Pytester,
    kubeconfig: Path,
    cluster: Cluster,
    args: list[str],
    named: tuple[str, ...],
) -> None:
    started = time.monotonic()
    result, server = run_pytest_against(pytester, kubeconfig, replace(cluster), *args)
    assert time.monotonic() - started < 10  # seconds, not the 10-minute ready timeout
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    stderr = result.stderr.str()
    assert f"ERROR: meshconform: context 'fake' ({server.url}) cannot run meshconform: " in stderr
    for part in named:
        assert part in stderr, part
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    assert not [
        r
        for r in server.requests
        if r.startswith(("POST", "PATCH", "DELETE", "PUT"))
        and "selfsubjectaccessreviews" not in r
        and "dryRun=All" not in r
    ]


def test_the_preflight_alone_takes_seconds(pytester: pytest.Pytester, kubeconfig: Path) -> None:
    cluster = Cluster(deployments=[istiod_deployment(max_cert_ttl="12h0m0s")])
    with FakeApiServer(routes=cluster.routes()) as server:
        kubeconfig.write_text(kubeconfig_text(server.url))
        config = pytester.parseconfigure(
            "--mesh-cluster=existing", "--mesh-kube-context=fake", "--mesh-cert-ttl=24h"
        )
        started = time.monotonic()
        with pytest.raises(MeshUnavailable, match=r"\[cert-ttl\]"):
            preflight(backend_run(config))
        assert time.monotonic() - started < 10  # seconds, not the 10-minute ready timeout
