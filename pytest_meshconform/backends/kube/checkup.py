"""What an existing cluster means for a meshconform run, judged from what was read (pure).

``survey.py`` reads a cluster into a ``Survey`` (API JSON, as ``KubeApi`` returns it, and each
read's error); ``run_plan`` works out what a run would do there (which istiod, which labels its
namespaces get) and ``check_survey`` turns both into ``Finding``s: what was found, what it
breaks, and the fix (a flag, a label, a value). ``meshconform doctor`` prints them; the
existing-cluster preflight refuses the run on any ``fail`` (``blocking``). Istio's facts come
from ``istio/`` (injection labels and webhooks, discovery selectors, the proxy image, native
sidecars) and ``control_plane.py`` (istiod, its mesh config, MAX_WORKLOAD_CERT_TTL).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final, Literal

from pytest_meshconform.backends.kube.control_plane import (
    IstioDataError,
    IstiodInfo,
    MeshConfigInfo,
    cert_ttl_problem,
    istiod_revisions,
    parse_mesh_config,
    select_istiod,
)
from pytest_meshconform.backends.kube.kind import waypoint_check
from pytest_meshconform.backends.kube.options import DEFAULT_ISTIO_NAMESPACE
from pytest_meshconform.backends.kube.permissions import RUN_PERMISSIONS, SCOPE_TEXT, Permission
from pytest_meshconform.backends.kube.topology import (
    CAPTURE_IMAGE_EXAMPLE,
    INJECTED_NAMESPACES,
    LOGICAL_NAMESPACES,
    RunNamespaces,
    WorkloadImages,
    namespace_manifest,
    workload_manifests,
)
from pytest_meshconform.backends.kube.ztunnel import ambient_check
from pytest_meshconform.istio.discovery import (
    NAME_LABEL,
    NamespaceSelector,
    SelectorError,
    discovery_labels,
    parse_discovery_selectors,
)
from pytest_meshconform.istio.injection import (
    DEFAULT_REVISION,
    NATIVE_SIDECARS_ENV,
    NATIVE_SIDECARS_MIN_KUBELET_MINOR,
    REVISION_LABEL,
    TAG_LABEL,
    injection_labels,
    is_distroless_image,
    kubelet_supports_native_sidecars,
    native_sidecar_mode,
    proxy_cluster_domain,
    proxy_image,
)
from pytest_meshconform.settings import format_duration

__all__ = [
    "MIN_EPHEMERAL_KUBERNETES_MINOR",
    "MIN_KUBERNETES_CLIENT",
    "Finding",
    "RunPlan",
    "RunRequest",
    "Survey",
    "blocking",
    "check_survey",
    "injector_config_map",
    "kubernetes_client_problem",
    "run_plan",
    "undiscoverable_message",
]

Status = Literal["ok", "info", "warn", "fail"]
# Ephemeral containers (the capture's tcpdump) are on by default since Kubernetes 1.23 (beta),
# GA in 1.25 (KEP-277).
MIN_EPHEMERAL_KUBERNETES_MINOR: Final = 23
_INJECTOR_SUFFIX: Final = "sidecar-injector.istio.io"
_DISCOVERY_EXAMPLE: Final = "{matchLabels: {istio-discovery: enabled}}"
# answers that say nothing about admission: no answer, not served, throttled, server errors
_UNANSWERED: Final = frozenset({0, 404, 429, 500, 502, 503, 504})


# kubernetes 37.0.0 is the first release whose WSClient.update reads the frames an SSLSocket
# already holds decrypted (``pending()``, kubernetes-client/python#2414): before it an exec
# stream can stall with its last frames unread (capture markers, config_dump reads). Clients
# before 30.1 also decoded binary exec output as UTF-8.
MIN_KUBERNETES_CLIENT: Final = (37, 0, 0)
_CLIENT_RELEASE_RE: Final = re.compile(r"([0-9]+)(?:\.([0-9]+))?(?:\.([0-9]+))?")


def kubernetes_client_problem(version: str | None) -> str | None:
    """Why the installed kubernetes client (``version``; None: not installed) cannot drive a
    cluster, with the fix; None when it can."""
    wanted = ".".join(str(part) for part in MIN_KUBERNETES_CLIENT)
    fix = f"pip install 'kubernetes>={wanted}'"
    if version is None:
        return f"the kubernetes client is not installed: {fix}"
    match = _CLIENT_RELEASE_RE.match(version)
    release = tuple(int(part or 0) for part in match.groups()) if match else (0, 0, 0)
    if release >= MIN_KUBERNETES_CLIENT:
        return None
    return (
        f"kubernetes client {version} can leave the last frames of an exec stream unread"
        " (WSClient.update ignores SSLSocket.pending(), kubernetes-client/python#2414), which"
        f" stalls captures and config_dump reads; {fix}"
    )


@dataclass(frozen=True, slots=True)
class RunRequest:
    """What the run asks of the cluster: its options that the cluster must accept."""

    istio_namespace: str = DEFAULT_ISTIO_NAMESPACE
    revision: str | None = None
    cert_ttl: timedelta = timedelta(hours=24)
    capture_image: str | None = None
    allow_mesh_wide: bool = False
    ambient: bool = False  # the run enrols namespaces in ambient (--mesh-dataplane)
    run_id: str = "d0c70r"  # the namespaces asked about (mc-<run id>-foo...)
    owner: str = "meshconform doctor"


@dataclass(frozen=True, slots=True)
class Survey:
    """What was read from a cluster (API JSON), with each read's error (None: read)."""

    context: str
    server: str
    client_version: str | None
    kube_version: str | None = None
    deployments: tuple[Mapping[str, Any], ...] = ()  # istiod's namespace, app=istiod
    deployments_error: str | None = None
    config_maps: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)
    config_map_errors: Mapping[str, str] = field(default_factory=dict)
    webhooks: tuple[Mapping[str, Any], ...] | None = None  # MutatingWebhookConfigurations
    webhooks_error: str | None = None
    nodes: tuple[Mapping[str, Any], ...] | None = None
    nodes_error: str | None = None
    # Permission.key -> (allowed, the authorizer's reason); absent: not asked
    access: Mapping[tuple[str, str, str, str], tuple[bool, str]] = field(default_factory=dict)
    access_error: str | None = None
    admission_checked: bool = False  # the dry-run create of a run namespace was made
    admission_error: str | None = None  # what the API server said when it refused it
    admission_status: int = 0
    # ambient runs: the ztunnel and istio-cni pods of istiod's namespace (None: not read)
    ztunnels: tuple[Mapping[str, Any], ...] | None = None
    istio_cni: tuple[Mapping[str, Any], ...] | None = None
    data_plane_error: str | None = None
    # ambient runs: the versions Gateway of gateway.networking.k8s.io is served in (None: not
    # read), for the run's waypoint
    gateway_api: tuple[str, ...] | None = None
    gateway_api_error: str | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """One fact about the cluster and what it means for a run."""

    check: str
    status: Status
    found: str
    breaks: str = ""
    fix: str = ""

    def text(self) -> str:
        """``found; breaks; fix: ...`` in one line."""
        parts = [self.found]
        if self.breaks:
            parts.append(self.breaks)
        if self.fix:
            parts.append(f"fix: {self.fix}")
        return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class RunPlan:
    """What a run would do on the surveyed cluster."""

    names: RunNamespaces
    istiod: IstiodInfo | None
    istiod_problem: str | None
    revisions: tuple[str, ...]
    mesh: MeshConfigInfo | None
    mesh_problem: str | None
    namespaces: tuple[dict[str, Any], ...]  # the run's Namespace manifests, labels complete
    discovery_problem: str | None

    @property
    def root_namespace(self) -> str | None:
        return self.mesh.root_namespace if self.mesh is not None else None

    @property
    def revision(self) -> str | None:
        """The revision whose injector the run's namespaces name (None: the default one)."""
        if self.istiod is None or self.istiod.revision == DEFAULT_REVISION:
            return None
        return self.istiod.revision

    def namespace_for(self, scope: str, istio_namespace: str) -> str:
        """The namespace a permission of ``scope`` is asked about ("" cluster-scoped)."""
        if scope == "run":
            return self.names.real(INJECTED_NAMESPACES[0])
        if scope == "root":
            return self.root_namespace or istio_namespace
        if scope == "istio":
            return istio_namespace
        return ""


def injector_config_map(revision: str) -> str:
    """The injector's ConfigMap (``values``, ``config``): istiod-injector-configmap.yaml."""
    return "istio-sidecar-injector" + ("" if revision == DEFAULT_REVISION else f"-{revision}")


def undiscoverable_message(
    selectors: Sequence[NamespaceSelector],
    name: str,
    labels: Mapping[str, str],
    config_map: str,
) -> str:
    """Why istiod would not discover run namespace ``name`` and how to fix it."""
    listed = "; ".join(selector.describe() for selector in selectors)
    return (
        f"istiod would not discover namespace {name}: the mesh config (configmap"
        f" {config_map}) has discoverySelectors {listed}, and no matchLabels of theirs can"
        f" be added to its labels {dict(sorted(labels.items()))}; add a selector with"
        f" matchLabels (e.g. {_DISCOVERY_EXAMPLE}) to discoverySelectors"
        " so meshconform can label its namespaces into the mesh"
    )


def _data(config_map: Mapping[str, Any] | None, key: str) -> str:
    data = (config_map or {}).get("data") or {}
    value = data.get(key) if isinstance(data, Mapping) else None
    return str(value) if value is not None else ""


def run_plan(survey: Survey, request: RunRequest) -> RunPlan:
    """Which istiod the run would use, its mesh config and its namespaces' labels."""
    names = RunNamespaces(request.run_id)
    revisions = istiod_revisions(survey.deployments)
    istiod: IstiodInfo | None = None
    istiod_problem = survey.deployments_error
    mesh: MeshConfigInfo | None = None
    mesh_problem: str | None = None
    if istiod_problem is None:
        try:
            istiod = select_istiod(survey.deployments, request.revision)
        except IstioDataError as error:
            istiod_problem = str(error)
    if istiod is not None:
        name = istiod.mesh_config_map
        if name in survey.config_map_errors:
            mesh_problem = (
                f"configmap {request.istio_namespace}/{name}: {survey.config_map_errors[name]}"
            )
        else:
            try:
                mesh = parse_mesh_config(
                    _data(survey.config_maps.get(name), "mesh"), request.istio_namespace
                )
            except IstioDataError as error:
                mesh_problem = f"configmap {request.istio_namespace}/{name}: {error}"
    revision = None if istiod is None or istiod.revision == DEFAULT_REVISION else istiod.revision
    manifests = [
        namespace_manifest(names, logical, revision, request.owner)
        for logical in LOGICAL_NAMESPACES
    ]
    discovery_problem: str | None = None
    if mesh is not None and istiod is not None:
        for manifest in manifests:
            meta = manifest["metadata"]
            extra = discovery_labels(mesh.discovery_selectors, meta["name"], meta["labels"])
            if extra is None:
                discovery_problem = discovery_problem or undiscoverable_message(
                    mesh.discovery_selectors,
                    meta["name"],
                    meta["labels"],
                    f"{request.istio_namespace}/{istiod.mesh_config_map}",
                )
                continue
            meta["labels"].update(extra)
    return RunPlan(
        names=names,
        istiod=istiod,
        istiod_problem=istiod_problem,
        revisions=revisions,
        mesh=mesh,
        mesh_problem=mesh_problem,
        namespaces=tuple(manifests),
        discovery_problem=discovery_problem,
    )


# --- the findings --------------------------------------------------------------------------------


def _release(version: str | None) -> tuple[int, int] | None:
    if not version:
        return None
    parts = version.lstrip("v").split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return None


def _kubernetes(survey: Survey) -> Finding:
    release = _release(survey.kube_version)
    found = f"Kubernetes {survey.kube_version} at {survey.server} (context {survey.context})"
    if release is not None and release < (1, MIN_EPHEMERAL_KUBERNETES_MINOR):
        return Finding(
            "kubernetes",
            "fail",
            found,
            "captures run tcpdump in an ephemeral container, which this release does not"
            f" enable (on by default since 1.{MIN_EPHEMERAL_KUBERNETES_MINOR}, GA in 1.25)",
            f"a cluster of Kubernetes 1.{MIN_EPHEMERAL_KUBERNETES_MINOR} or later",
        )
    return Finding("kubernetes", "ok", found)


def _labels_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels if isinstance(labels, Mapping) else {}


@dataclass(frozen=True, slots=True)
class _Injector:
    config: str  # the MutatingWebhookConfiguration's name
    revision: str  # the revision whose istiod injects (a tag's target)
    tag: str | None
    namespace_selector: NamespaceSelector
    object_selector: NamespaceSelector


def _selector(raw: Any) -> NamespaceSelector:
    """A webhook's label selector (absent or ``{}``: everything)."""
    return parse_discovery_selectors([raw or {}])[0]


def _injectors(webhooks: Sequence[Mapping[str, Any]]) -> tuple[list[_Injector], list[str]]:
    """Istio's injector webhooks (``*sidecar-injector.istio.io``) and the unreadable ones."""
    found: list[_Injector] = []
    problems: list[str] = []
    for config in webhooks:
        labels = _labels_of(config)
        name = str((config.get("metadata") or {}).get("name") or "")
        for webhook in config.get("webhooks") or []:
            if not str(webhook.get("name") or "").endswith(_INJECTOR_SUFFIX):
                continue
            try:
                found.append(
                    _Injector(
                        config=name,
                        revision=str(labels.get(REVISION_LABEL) or DEFAULT_REVISION),
                        tag=labels.get(TAG_LABEL),
                        namespace_selector=_selector(webhook.get("namespaceSelector")),
                        object_selector=_selector(webhook.get("objectSelector")),
                    )
                )
            except SelectorError as error:
                problems.append(f"{name}/{webhook.get('name')}: {error}")
    return found, problems


def _tags(injectors: Sequence[_Injector]) -> dict[str, str]:
    return {i.tag: i.revision for i in injectors if i.tag}


def _istio(survey: Survey, request: RunRequest, plan: RunPlan) -> Finding:
    where = f"namespace {request.istio_namespace}"
    injectors, _ = _injectors(survey.webhooks or ())
    tags = _tags(injectors)
    tag_text = ", ".join(f"{t} -> {r}" for t, r in sorted(tags.items())) or "none"
    if survey.webhooks is None:
        tag_text = "unknown (cannot list mutatingwebhookconfigurations)"
    if plan.istiod is None:
        problem = plan.istiod_problem or "no istiod"
        fix = (
            "install Istio (istioctl install), pass --mesh-istio-namespace if istiod lives"
            " elsewhere, or use --mesh-cluster=kind"
        )
        if request.revision is not None and request.revision in tags:
            target = tags[request.revision]
            problem += f"; {request.revision!r} is a revision tag of revision {target!r}"
            fix = f"--mesh-revision={target}"
        elif plan.revisions:
            fix = f"--mesh-revision=REV with one of: {', '.join(plan.revisions)}"
        return Finding(
            "istio",
            "fail",
            f"{problem} in {where} (revisions: {', '.join(plan.revisions) or 'none'}; tags:"
            f" {tag_text})",
            "the run needs the istiod whose injector and CA serve its pods",
            fix,
        )
    versions = ", ".join(
        f"{d.get('metadata', {}).get('name')}"
        for d in survey.deployments
        if isinstance(d.get("metadata"), Mapping)
    )
    return Finding(
        "istio",
        "ok",
        f"Istio {plan.istiod.version}, revision {plan.istiod.revision} (deployment"
        f" {plan.istiod.namespace}/{plan.istiod.name}); istiods: {versions}; revisions:"
        f" {', '.join(plan.revisions)}; tags: {tag_text}",
    )


def _pod_labels(plan: RunPlan) -> Mapping[str, str]:
    manifests = workload_manifests(
        plan.names, INJECTED_NAMESPACES[0], WorkloadImages("sleep", "httpbin"), timedelta(hours=1)
    )
    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    labels: Mapping[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def _injection(survey: Survey, plan: RunPlan) -> Finding:
    if plan.istiod is None:
        return Finding("injection", "info", "not decided: no istiod to inject the run's pods")
    manifest = plan.namespaces[0]
    name = manifest["metadata"]["name"]
    wanted = injection_labels(plan.revision, injected=True)
    label = ", ".join(f"{k}={v}" for k, v in wanted.items())
    revision = plan.istiod.revision
    found = f"the run labels its injected namespaces {label} (revision {revision})"
    if survey.webhooks is None:
        return Finding(
            "injection",
            "warn",
            f"{found}; the injector webhooks could not be read ({survey.webhooks_error})",
            "a namespace no injector selects starts pods without istio-proxy, which the run"
            " names at start",
            "grant list on mutatingwebhookconfigurations.admissionregistration.k8s.io to check it"
            " here",
        )
    injectors, problems = _injectors(survey.webhooks)
    namespace_labels = {**manifest["metadata"]["labels"], NAME_LABEL: name}
    pod_labels = _pod_labels(plan)
    serving = sorted(
        {
            f"{i.revision} (webhook {i.config})"
            for i in injectors
            if i.namespace_selector.matches(namespace_labels)
            and i.object_selector.matches(pod_labels)
        }
    )
    revisions = {s.split(" ", 1)[0] for s in serving}
    if revisions == {revision}:
        return Finding("injection", "ok", f"{found}: injected by {', '.join(serving)}")
    available = sorted({i.revision for i in injectors} | set(_tags(injectors)))
    if not serving:
        broken = f"; unreadable selectors: {'; '.join(problems)}" if problems else ""
        return Finding(
            "injection",
            "fail",
            f"{found}, but no Istio injector webhook selects such a namespace{broken}",
            "the run's pods would start without istio-proxy",
            "--mesh-revision=REV naming a revision or tag whose injector is installed"
            f" ({', '.join(available) or 'none found'})",
        )
    return Finding(
        "injection",
        "fail",
        f"{found}, but the injector of {', '.join(serving)} selects it",
        "the pods would get another revision's sidecar than the istiod under test",
        f"--mesh-revision={sorted(revisions - {revision})[0]}",
    )


def _discovery(plan: RunPlan) -> Finding:
    if plan.mesh is None:
        return Finding(
            "discovery",
            "warn" if plan.mesh_problem else "info",
            f"not decided: {plan.mesh_problem or 'no istiod'}",
        )
    if not plan.mesh.discovery_selectors:
        return Finding("discovery", "ok", "no discoverySelectors: istiod discovers every namespace")
    listed = "; ".join(s.describe() for s in plan.mesh.discovery_selectors)
    if plan.discovery_problem is not None:
        return Finding(
            "discovery",
            "fail",
            f"discoverySelectors {listed} select none of the run's namespaces",
            "istiod would never publish the mesh root (istio-ca-root-cert) there and no sidecar"
            " would become ready",
            f"add a selector with matchLabels (e.g. {_DISCOVERY_EXAMPLE}) to the mesh config's"
            " discoverySelectors",
        )
    added = {
        k: v
        for manifest in plan.namespaces
        for k, v in manifest["metadata"]["labels"].items()
        if any(k in s.match_labels for s in plan.mesh.discovery_selectors)
    }
    label_text = ", ".join(f"{k}={v}" for k, v in sorted(added.items())) or "their own labels"
    return Finding(
        "discovery",
        "ok",
        f"discoverySelectors {listed}: the run's namespaces match with {label_text}",
    )


def _cert_ttl(request: RunRequest, plan: RunPlan) -> Finding:
    if plan.istiod is None:
        return Finding("cert-ttl", "info", "not decided: no istiod")
    problem = cert_ttl_problem(plan.istiod, request.cert_ttl)
    longest = format_duration(plan.istiod.max_workload_cert_ttl)
    found = (
        f"--mesh-cert-ttl {format_duration(request.cert_ttl)}, istiod signs up to"
        f" MAX_WORKLOAD_CERT_TTL={longest}"
    )
    if problem is None:
        return Finding("cert-ttl", "ok", found)
    return Finding(
        "cert-ttl",
        "fail",
        found,
        "istiod would refuse every sidecar's certificate request (TTLError) and no pod would"
        " become ready",
        f"--mesh-cert-ttl={longest} or less",
    )


def _istiod_env(istiod: IstiodInfo, survey: Survey) -> Mapping[str, str]:
    for deployment in survey.deployments:
        if (deployment.get("metadata") or {}).get("name") != istiod.name:
            continue
        containers = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
        for container in containers.get("containers") or []:
            if container.get("name") == "discovery":
                return {
                    str(e.get("name")): str(e.get("value"))
                    for e in container.get("env") or []
                    if e.get("value") is not None
                }
    return {}


def _native_sidecars(survey: Survey, plan: RunPlan) -> Finding:
    if plan.istiod is None:
        return Finding("native-sidecars", "info", "not decided: no istiod")
    env = _istiod_env(plan.istiod, survey).get(NATIVE_SIDECARS_ENV)
    mode = native_sidecar_mode(env, plan.istiod.version)
    source = (
        f"{NATIVE_SIDECARS_ENV}={env}"
        if env is not None
        else f"{mode}, Istio {plan.istiod.version}'s default"
    )
    native: bool | None = mode == "true"
    why = source
    if mode == "auto":
        if survey.nodes is None:
            native = None
            why = (
                f"{source}: native when every kubelet is 1.{NATIVE_SIDECARS_MIN_KUBELET_MINOR}"
                f" or later, and the nodes could not be listed ({survey.nodes_error})"
            )
        else:
            kubelets = sorted(
                {
                    str(
                        ((n.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion") or "?"
                    )
                    for n in survey.nodes
                }
            )
            native = bool(kubelets) and all(kubelet_supports_native_sidecars(k) for k in kubelets)
            why = f"{source}, kubelets {', '.join(kubelets) or 'none'}"
    shape = {
        True: "native sidecars: istio-proxy is an init container with restartPolicy Always",
        False: "istio-proxy is an ordinary container",
        None: "istio-proxy is a native sidecar or an ordinary container",
    }[native]
    return Finding(
        "native-sidecars",
        "info",
        f"{shape} ({why}); meshconform finds, execs into and reads istio-proxy in either form",
    )


def _injector_values(survey: Survey, istiod: IstiodInfo) -> tuple[Mapping[str, Any] | None, str]:
    name = injector_config_map(istiod.revision)
    if name in survey.config_map_errors:
        return None, f"configmap {istiod.namespace}/{name}: {survey.config_map_errors[name]}"
    config_map = survey.config_maps.get(name)
    if config_map is None:
        return None, f"no configmap {istiod.namespace}/{name}"
    try:
        values = json.loads(_data(config_map, "values") or "null")
    except json.JSONDecodeError as error:
        return None, f"configmap {istiod.namespace}/{name}: values is not JSON: {error}"
    if not isinstance(values, Mapping):
        return None, f"configmap {istiod.namespace}/{name} has no values"
    return values, ""


def _image_type(plan: RunPlan, survey: Survey) -> str | None:
    """meshConfig.defaultConfig.image.imageType (ProxyConfig.image), if set."""
    if plan.istiod is None:
        return None
    import yaml

    text = _data(survey.config_maps.get(plan.istiod.mesh_config_map), "mesh")
    try:
        mesh = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return None
    image = (
        ((mesh or {}).get("defaultConfig") or {}).get("image")
        if isinstance(mesh, Mapping)
        else None
    )
    kind = image.get("imageType") if isinstance(image, Mapping) else None
    return kind if isinstance(kind, str) and kind else None


def _proxy_image(survey: Survey, request: RunRequest, plan: RunPlan) -> Finding:
    if plan.istiod is None:
        return Finding("proxy-image", "info", "not decided: no istiod")
    if request.capture_image:
        return Finding(
            "proxy-image",
            "ok",
            f"captures use --mesh-capture-image={request.capture_image} (needs bash and tcpdump)",
        )
    values, problem = _injector_values(survey, plan.istiod)
    image = proxy_image(values, _image_type(plan, survey)) if values is not None else None
    if image is None:
        return Finding(
            "proxy-image",
            "warn",
            f"the proxy image is not known here ({problem or 'no global.hub in the values'})",
            "captures borrow it; a distroless one (no bash, no tcpdump) stops the run at start",
            f"pass --mesh-capture-image=IMAGE with bash and tcpdump (e.g. {CAPTURE_IMAGE_EXAMPLE})"
            " to be independent of it",
        )
    if is_distroless_image(image):
        return Finding(
            "proxy-image",
            "fail",
            f"the injector's proxy image is {image}, distroless (no bash, no tcpdump)",
            "captures borrow the proxy image and could not run tcpdump",
            f"--mesh-capture-image=IMAGE with bash and tcpdump (e.g. {CAPTURE_IMAGE_EXAMPLE},"
            " or a copy in your registry)",
        )
    return Finding(
        "proxy-image", "ok", f"the injector's proxy image is {image}: captures borrow it"
    )


def _domains(survey: Survey, plan: RunPlan) -> Finding:
    if plan.istiod is None or plan.mesh is None:
        return Finding("domains", "info", f"not decided: {plan.mesh_problem or 'no istiod'}")
    values, _ = _injector_values(survey, plan.istiod)
    domain = proxy_cluster_domain(values) if values is not None else None
    dns = (
        f"DNS domain {domain} (the injector's global.proxy.clusterDomain)"
        if domain
        else "DNS domain unknown here"
    )
    return Finding(
        "domains",
        "info",
        f"trust domain {plan.mesh.trust_domain} (meshConfig.trustDomain), root namespace"
        f" {plan.mesh.root_namespace}; {dns}; the run reads the cluster's DNS domain from a pod's"
        " /etc/resolv.conf",
    )


def _pod_security(survey: Survey, plan: RunPlan) -> Finding:
    labels = plan.namespaces[0]["metadata"]["labels"]
    level = labels.get("pod-security.kubernetes.io/enforce")
    found = (
        f"the run's namespaces carry pod-security.kubernetes.io/enforce={level} (istio-init and"
        " the capture container add NET_ADMIN and NET_RAW)"
    )
    if not survey.admission_checked:
        return Finding("pod-security", "info", f"{found}; not tried (no istiod)")
    if survey.admission_error is None:
        return Finding(
            "pod-security", "ok", f"{found}: the API server accepts such a namespace (dry run)"
        )
    create = survey.access.get(("create", "", "namespaces", "cluster"))
    if (create is not None and not create[0]) or survey.admission_status in _UNANSWERED:
        return Finding(
            "pod-security",
            "warn",
            f"{found}; the dry run could not be tried: {survey.admission_error}",
            "whether admission accepts such a namespace is seen only when the run creates one",
            "see the permissions (create namespaces)" if create and not create[0] else "",
        )
    return Finding(
        "pod-security",
        "fail",
        f"{found}, and the API server refuses such a namespace (dry run): {survey.admission_error}",
        "the run cannot create its namespaces, or their pods would be refused NET_ADMIN/NET_RAW",
        "allow namespaces labelled pod-security.kubernetes.io/enforce=privileged for your"
        " user (your admission policy or Pod Security exemptions)",
    )


def _permission(
    permission: Permission, survey: Survey, request: RunRequest, namespace: str
) -> Finding:
    where = f" in {namespace}" if namespace else ""
    line = f"{permission.line()}{where}"
    answer = survey.access.get(permission.key)
    if answer is None:
        return Finding(
            "permission",
            "warn",
            f"{line}: not checked ({survey.access_error or 'no answer'})",
            f"needed for {permission.why}",
        )
    allowed, reason = answer
    if allowed:
        return Finding("permission", "ok", f"{line}: allowed")
    denied = f"{line}: denied" + (f" ({reason})" if reason else "")
    scope = SCOPE_TEXT[permission.scope]
    role = (
        "a ClusterRole bound with a ClusterRoleBinding"
        if permission.scope in ("cluster", "run")
        else f"a Role in {namespace}"
    )
    fix = f"grant {permission.rbac_rule()} ({scope}) through {role}"
    if permission.mesh_wide and not request.allow_mesh_wide:
        return Finding("permission", "info", f"{denied}; needed only with --mesh-allow-mesh-wide")
    if permission.ambient and not request.ambient:
        return Finding(
            "permission",
            "info",
            f"{denied}; needed only with ambient namespaces (--mesh-dataplane=ambient or both)",
        )
    if not permission.required:
        return Finding(
            "permission", "warn", denied, f"without it the run skips {permission.why}", fix
        )
    return Finding("permission", "fail", denied, f"the run needs it for {permission.why}", fix)


def check_survey(
    survey: Survey, request: RunRequest, plan: RunPlan | None = None
) -> tuple[Finding, ...]:
    """Every finding about ``survey`` for a run asking ``request``, in a stable order."""
    plan = plan or run_plan(survey, request)
    client = kubernetes_client_problem(survey.client_version)
    findings = [
        Finding(
            "kubernetes-client",
            "ok" if client is None else "fail",
            f"kubernetes client {survey.client_version or 'not installed'}",
            "" if client is None else "exec streams (captures, config_dump reads) can stall",
            "" if client is None else client.rsplit("; ", 1)[-1],
        ),
        _kubernetes(survey),
        _istio(survey, request, plan),
        _injection(survey, plan),
        _discovery(plan),
        _cert_ttl(request, plan),
        _native_sidecars(survey, plan),
        _proxy_image(survey, request, plan),
        _domains(survey, plan),
        _pod_security(survey, plan),
    ]
    if request.ambient:
        findings.append(
            Finding(
                "ambient",
                *ambient_check(
                    survey.ztunnels,
                    survey.istio_cni,
                    survey.data_plane_error,
                    request.istio_namespace,
                ),
            )
        )
        findings.append(
            Finding("waypoint", *waypoint_check(survey.gateway_api, survey.gateway_api_error))
        )
    for permission in RUN_PERMISSIONS:
        namespace = plan.namespace_for(permission.scope, request.istio_namespace)
        findings.append(_permission(permission, survey, request, namespace))
    return tuple(findings)


def blocking(findings: Sequence[Finding]) -> tuple[Finding, ...]:
    """The findings that would break a run."""
    return tuple(f for f in findings if f.status == "fail")
