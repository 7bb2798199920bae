"""The conformance topology on Kubernetes, as pure data: per-run namespaces and manifests.

Suites speak of the logical namespaces of Istio's authn tasks (``foo`` and ``bar`` injected,
``legacy`` not). On a cluster each run gets its own namespaces, ``<prefix>-<run id>-foo`` and
so on, so runs never collide and cleanup deletes only what this run made. This module maps
between the two: it builds the run's manifests and rewrites a policy manifest written for the
logical namespaces into the real ones (and back, for ``Mesh.policies``). No I/O.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Literal

from pytest_meshconform.istio.ambient import DATAPLANE_MODE_LABEL
from pytest_meshconform.istio.injection import injection_labels
from pytest_meshconform.istio.waypoint import USE_WAYPOINT_LABEL
from pytest_meshconform.mesh import Service, Workload
from pytest_meshconform.settings import Dataplane, format_duration

__all__ = [
    "AMBIENT_WAYPOINT",
    "AMBIENT_WAYPOINT_NAMESPACE",
    "CAPTURE_CONTAINER",
    "CAPTURE_IMAGE_EXAMPLE",
    "HTTPBIN_PORT",
    "HTTPBIN_TARGET_PORT",
    "INJECTED_NAMESPACES",
    "LOGICAL_LABEL",
    "LOGICAL_NAMESPACES",
    "MANAGED_BY",
    "MANAGED_BY_LABEL",
    "OWNER_ANNOTATION",
    "PLAIN_NAMESPACES",
    "POLICY_GROUPS",
    "RUN_LABEL",
    "LocalizedManifest",
    "RunNamespaces",
    "RunOwner",
    "TopologyError",
    "WorkloadImages",
    "delocalize_manifest",
    "dns_domain_from_resolv_conf",
    "localize_manifest",
    "namespace_dataplane",
    "namespace_manifest",
    "namespace_waypoint",
    "owner_text",
    "parse_owner",
    "run_id_of",
    "topology_services",
    "topology_workloads",
    "workload_manifests",
]

INJECTED_NAMESPACES: Final = ("foo", "bar")  # in the mesh: sidecars, or ambient (below)
PLAIN_NAMESPACES: Final = ("legacy",)
LOGICAL_NAMESPACES: Final = (*INJECTED_NAMESPACES, *PLAIN_NAMESPACES)
APPS: Final = ("sleep", "httpbin")
# An ambient run's namespace waypoint, as on the local mesh's built-in topology (istio.io's
# ambient getting started: `istioctl waypoint apply -n bar --enroll-namespace`, name `waypoint`)
AMBIENT_WAYPOINT_NAMESPACE: Final = "bar"
AMBIENT_WAYPOINT: Final = "waypoint"
HTTPBIN_PORT: Final = 8000
HTTPBIN_TARGET_PORT: Final = 8080
CAPTURE_CONTAINER: Final = "mc-capture"
# an example image with bash and tcpdump, named in the fix when the proxy image has neither
CAPTURE_IMAGE_EXAMPLE: Final = "docker.io/nicolaka/netshoot:v0.13"

MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "meshconform"
RUN_LABEL: Final = "meshconform.dev/run"
LOGICAL_LABEL: Final = "meshconform.dev/logical-namespace"
OWNER_ANNOTATION: Final = "meshconform.dev/owner"
_OWNER_RE: Final = re.compile(r"(?P<user>[^@]*)@(?P<host>[^ @]+) pid (?P<pid>[0-9]{1,10})")

POLICY_GROUPS: Final = ("security.istio.io", "networking.istio.io")
_RUN_ID_RE: Final = re.compile(r"[a-z0-9]{1,12}")
_PREFIX_RE: Final = re.compile(r"[a-z]([-a-z0-9]{0,14}[a-z0-9])?")
_SERVER_FIELDS: Final = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "finalizers",
    "ownerReferences",
)
_LAST_APPLIED: Final = "kubectl.kubernetes.io/last-applied-configuration"


def namespace_dataplane(
    logical: str, dataplane: Dataplane
) -> Literal["sidecar", "ambient", "none"]:
    """The data plane of one logical namespace under the run's ``--mesh-dataplane``: foo and
    bar get sidecars or are enrolled in ambient; ``legacy`` stays outside the mesh. (``both``
    is the plugin's: it opens one mesh per data plane.)"""
    if logical not in INJECTED_NAMESPACES:
        return "none"
    return dataplane


def namespace_waypoint(logical: str, dataplane: Dataplane) -> str | None:
    """The name of the namespace waypoint a logical namespace gets under the run's data plane:
    ``bar`` gets ``waypoint`` when ambient; None elsewhere."""
    if (
        logical == AMBIENT_WAYPOINT_NAMESPACE
        and namespace_dataplane(logical, dataplane) == "ambient"
    ):
        return AMBIENT_WAYPOINT
    return None


class TopologyError(ValueError):
    """A manifest cannot be placed in this run's namespaces; the message names the field."""


@dataclass(frozen=True, slots=True)
class RunOwner:
    """Who made a run's namespaces (their ``meshconform.dev/owner`` annotation): so a later
    run can tell a crashed run's leftovers (dead process on this host) from a run in progress."""

    user: str
    host: str
    pid: int


def owner_text(owner: RunOwner) -> str:
    return f"{owner.user}@{owner.host} pid {owner.pid}"


def parse_owner(text: object) -> RunOwner | None:
    """The owner annotation's value (``user@host pid N``); None when absent or not ours."""
    if not isinstance(text, str):
        return None
    match = _OWNER_RE.fullmatch(text)
    if match is None:
        return None
    return RunOwner(match.group("user"), match.group("host"), int(match.group("pid")))


@dataclass(frozen=True, slots=True)
class RunNamespaces:
    """The real namespaces of one run: ``<prefix>-<run_id>-<logical>``."""

    run_id: str
    prefix: str = "mc"

    def __post_init__(self) -> None:
        if not _RUN_ID_RE.fullmatch(self.run_id):
            raise TopologyError(f"run id {self.run_id!r}: expected 1-12 of [a-z0-9]")
        if not _PREFIX_RE.fullmatch(self.prefix):
            raise TopologyError(f"namespace prefix {self.prefix!r}: expected a short DNS label")

    def real(self, logical: str) -> str:
        if logical not in LOGICAL_NAMESPACES:
            raise TopologyError(
                f"unknown logical namespace {logical!r} (have: {', '.join(LOGICAL_NAMESPACES)})"
            )
        return f"{self.prefix}-{self.run_id}-{logical}"

    @property
    def all_real(self) -> tuple[str, ...]:
        return tuple(self.real(ns) for ns in LOGICAL_NAMESPACES)

    @property
    def injected_real(self) -> tuple[str, ...]:
        return tuple(self.real(ns) for ns in INJECTED_NAMESPACES)

    def logical_of(self, namespace: str) -> str | None:
        """The logical name of one of this run's real namespaces (None if not ours)."""
        for logical in LOGICAL_NAMESPACES:
            if namespace == self.real(logical):
                return logical
        return None

    def resolve(self, namespace: str) -> str:
        """Accept a logical (``foo``) or real (``mc-1a2b3c-foo``) name; return the real one."""
        if namespace in LOGICAL_NAMESPACES:
            return self.real(namespace)
        if self.logical_of(namespace) is not None:
            return namespace
        raise TopologyError(
            f"namespace {namespace!r} is not part of this run (logical: "
            f"{', '.join(LOGICAL_NAMESPACES)}; real: {', '.join(self.all_real)})"
        )

    @property
    def selector(self) -> str:
        """Label selector matching everything this run created."""
        return f"{RUN_LABEL}={self.run_id}"


@dataclass(frozen=True, slots=True)
class WorkloadImages:
    sleep: str
    httpbin: str


def run_labels(names: RunNamespaces, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {MANAGED_BY_LABEL: MANAGED_BY, RUN_LABEL: names.run_id, **(extra or {})}


def namespace_manifest(
    names: RunNamespaces,
    logical: str,
    revision: str | None,
    owner: str,
    dataplane: Dataplane = "sidecar",
    waypoint: str | None = None,
) -> dict[str, Any]:
    """A run namespace: injected by the injector of ``revision`` (None: the default one), or
    enrolled in ambient (``istio.io/dataplane-mode=ambient``, as Istio's ambient guides label a
    namespace; injection then stays off: istio-cni never enrols a pod with a sidecar),
    privileged for captures. ``waypoint``: the namespace uses that waypoint
    (``istio.io/use-waypoint``, as ``istioctl waypoint apply --enroll-namespace`` labels it).

    ``pod-security.kubernetes.io/enforce: privileged`` because Istio's init container and the
    capture container need NET_ADMIN/NET_RAW, which the baseline Pod Security level rejects.
    """
    labels = run_labels(names, {LOGICAL_LABEL: logical})
    labels["pod-security.kubernetes.io/enforce"] = "privileged"
    plane = namespace_dataplane(logical, dataplane)
    labels.update(injection_labels(revision, injected=plane == "sidecar"))
    if plane == "ambient":
        labels[DATAPLANE_MODE_LABEL] = "ambient"
    if waypoint is not None:
        labels[USE_WAYPOINT_LABEL] = waypoint
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": names.real(logical),
            "labels": labels,
            "annotations": {OWNER_ANNOTATION: owner},
        },
    }


def _proxy_config(cert_ttl: timedelta) -> str:
    """Per-pod ProxyConfig: the agent's SECRET_TTL, and the app waits for its sidecar."""
    return json.dumps(
        {
            "holdApplicationUntilProxyStarts": True,
            "proxyMetadata": {"SECRET_TTL": format_duration(cert_ttl)},
        },
        sort_keys=True,
    )


def workload_manifests(
    names: RunNamespaces,
    logical: str,
    images: WorkloadImages,
    cert_ttl: timedelta,
    dataplane: Dataplane = "sidecar",
) -> list[dict[str, Any]]:
    """ServiceAccounts, the httpbin Service and both Deployments of one logical namespace.

    Shaped like Istio's samples (samples/curl/curl.yaml, samples/httpbin/httpbin.yaml): a
    ``sleep`` pod running ``sleep infinity`` with curl, and httpbin on 8080 behind Service port
    8000. No probes on httpbin: on a pod without sidecar a kubelet probe would be plaintext on
    the port the suites capture.
    """
    namespace = names.real(logical)
    # ambient pods carry no proxy: their certificates are ztunnel's (its own SECRET_TTL)
    injected = namespace_dataplane(logical, dataplane) == "sidecar"
    manifests: list[dict[str, Any]] = []
    for app in APPS:
        manifests.append(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": app, "namespace": namespace, "labels": run_labels(names)},
            }
        )
    manifests.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "httpbin",
                "namespace": namespace,
                "labels": run_labels(names, {"app": "httpbin", "service": "httpbin"}),
            },
            "spec": {
                "ports": [
                    {"name": "http", "port": HTTPBIN_PORT, "targetPort": HTTPBIN_TARGET_PORT}
                ],
                "selector": {"app": "httpbin"},
            },
        }
    )
    containers: dict[str, dict[str, Any]] = {
        "sleep": {
            "name": "sleep",
            "image": images.sleep,
            "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/sleep", "infinity"],
        },
        "httpbin": {
            "name": "httpbin",
            "image": images.httpbin,
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"containerPort": HTTPBIN_TARGET_PORT, "name": "http"}],
        },
    }
    for app in APPS:
        template_meta: dict[str, Any] = {"labels": {"app": app, **run_labels(names)}}
        if injected:
            template_meta["annotations"] = {"proxy.istio.io/config": _proxy_config(cert_ttl)}
        manifests.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": app,
                    "namespace": namespace,
                    "labels": run_labels(names, {"app": app}),
                },
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": app}},
                    "template": {
                        "metadata": template_meta,
                        "spec": {
                            "serviceAccountName": app,
                            "terminationGracePeriodSeconds": 0,
                            "containers": [containers[app]],
                        },
                    },
                },
            }
        )
    return manifests


def topology_workloads(
    names: RunNamespaces, dataplane: Dataplane = "sidecar"
) -> tuple[Workload, ...]:
    """The six workloads; ``namespace`` is the REAL namespace (SPIFFE IDs carry it)."""
    return tuple(
        Workload(
            name=app,
            namespace=names.real(logical),
            app=app,
            service_account=app,
            has_sidecar=namespace_dataplane(logical, dataplane) == "sidecar",
            ambient=namespace_dataplane(logical, dataplane) == "ambient",
            labels={"app": app},
            container_ports=(HTTPBIN_TARGET_PORT,) if app == "httpbin" else (),
        )
        for logical in LOGICAL_NAMESPACES
        for app in APPS
    )


def topology_services(names: RunNamespaces) -> tuple[Service, ...]:
    return tuple(
        Service("httpbin", names.real(logical), HTTPBIN_PORT, HTTPBIN_TARGET_PORT, "httpbin")
        for logical in LOGICAL_NAMESPACES
    )


def dns_domain_from_resolv_conf(text: str, namespace: str) -> str:
    """The cluster's DNS domain, from the ``/etc/resolv.conf`` of a pod in ``namespace``.

    For a pod of DNS policy ClusterFirst the kubelet writes the search path
    ``<namespace>.svc.<clusterDomain> svc.<clusterDomain> <clusterDomain>`` (Kubernetes'
    "DNS for Services and Pods"); the first entry names the domain without guessing.
    """
    prefix = f"{namespace}.svc."
    for line in text.splitlines():
        words = line.split()
        if words[:1] != ["search"]:
            continue
        for word in words[1:]:
            if word.startswith(prefix) and len(word) > len(prefix):
                return word[len(prefix) :].rstrip(".")
    raise TopologyError(
        f"resolv.conf has no search entry {prefix}<domain> (a pod of DNS policy ClusterFirst"
        f" has one): {text.strip()[:300]!r}"
    )


# --- policy manifests ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalizedManifest:
    """A policy manifest rewritten into the run's namespaces, and where it lands."""

    manifest: dict[str, Any]
    scope: Literal["run", "mesh-wide"]
    group: str
    version: str
    kind: str
    namespace: str
    name: str

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.group, self.kind, self.namespace, self.name)

    @property
    def describe(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def _split_api_version(api_version: object) -> tuple[str, str]:
    if not isinstance(api_version, str) or api_version.count("/") != 1:
        raise TopologyError(
            f"apiVersion {api_version!r}: expected <group>/<version> of an Istio API"
            f" ({', '.join(POLICY_GROUPS)})"
        )
    group, version = api_version.split("/")
    if group not in POLICY_GROUPS or not version:
        raise TopologyError(
            f"apiVersion {api_version!r}: only Istio policy APIs ({', '.join(POLICY_GROUPS)})"
            " are applied by meshconform"
        )
    return group, version


def _map_namespace_word(value: str, mapping: Mapping[str, str]) -> str:
    return mapping.get(value, value)


def _map_host(host: str, mapping: Mapping[str, str]) -> str:
    """``httpbin.foo[.svc[.cluster.local]]`` and ``*.foo.svc...``: map the namespace label."""
    parts = host.split(".")
    in_cluster = len(parts) == 2 or (len(parts) >= 3 and parts[2] == "svc")
    if in_cluster and parts[1] in mapping:
        parts[1] = mapping[parts[1]]
    return ".".join(parts)


def _map_principal(principal: str, mapping: Mapping[str, str]) -> str:
    """``<trust domain>/ns/<ns>/sa/<sa>`` (AuthorizationPolicy principals)."""
    parts = principal.split("/")
    for index in range(len(parts) - 1):
        if parts[index] == "ns" and parts[index + 1] in mapping:
            parts[index + 1] = mapping[parts[index + 1]]
    return "/".join(parts)


def _map_spec(kind: str, spec: dict[str, Any], mapping: Mapping[str, str]) -> None:
    """Rewrite the namespace references a policy's spec can hold, in place."""
    if kind == "DestinationRule" and isinstance(spec.get("host"), str):
        spec["host"] = _map_host(spec["host"], mapping)
    if isinstance(spec.get("exportTo"), list):
        spec["exportTo"] = [
            _map_namespace_word(v, mapping) if isinstance(v, str) else v for v in spec["exportTo"]
        ]
    if kind != "AuthorizationPolicy" or not isinstance(spec.get("rules"), list):
        return
    for rule in spec["rules"]:
        if not isinstance(rule, dict):
            continue
        for source_entry in rule.get("from") or []:
            source = source_entry.get("source") if isinstance(source_entry, dict) else None
            if not isinstance(source, dict):
                continue
            for key in ("namespaces", "notNamespaces"):
                if isinstance(source.get(key), list):
                    source[key] = [
                        _map_namespace_word(v, mapping) if isinstance(v, str) else v
                        for v in source[key]
                    ]
            for key in ("principals", "notPrincipals"):
                if isinstance(source.get(key), list):
                    source[key] = [
                        _map_principal(v, mapping) if isinstance(v, str) else v for v in source[key]
                    ]
        for condition in rule.get("when") or []:
            if not isinstance(condition, dict):
                continue
            mapper = {"source.namespace": _map_namespace_word, "source.principal": _map_principal}
            attribute = condition.get("key")
            if not isinstance(attribute, str) or attribute not in mapper:
                continue
            for field in ("values", "notValues"):
                if isinstance(condition.get(field), list):
                    condition[field] = [
                        mapper[attribute](v, mapping) if isinstance(v, str) else v
                        for v in condition[field]
                    ]


def localize_manifest(
    manifest: Mapping[str, Any], names: RunNamespaces, root_namespace: str
) -> LocalizedManifest:
    """Rewrite a policy written for foo/bar/legacy into this run's namespaces.

    The root namespace stays (a mesh-wide policy, ``scope="mesh-wide"``); any other namespace
    is refused: meshconform writes only to its own namespaces. Our labels are added so a
    crashed run's leftovers can be found.
    """
    if not isinstance(manifest, Mapping):
        raise TopologyError(f"manifest: expected a mapping, got {type(manifest).__name__}")
    group, version = _split_api_version(manifest.get("apiVersion"))
    kind = manifest.get("kind")
    if not isinstance(kind, str) or not kind:
        raise TopologyError(f"kind {kind!r}: expected the Istio kind, e.g. PeerAuthentication")
    metadata = manifest.get("metadata")
    if not isinstance(metadata, Mapping):
        raise TopologyError(f"{kind}: metadata {metadata!r}: expected a mapping")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise TopologyError(f"{kind}: metadata.name {name!r}: expected a name")
    namespace = metadata.get("namespace")
    if not isinstance(namespace, str) or not namespace:
        raise TopologyError(
            f"{kind} {name}: metadata.namespace is missing; name foo, bar, legacy or the root"
            f" namespace {root_namespace} explicitly"
        )
    scope: Literal["run", "mesh-wide"]
    if namespace == root_namespace:
        scope, real_namespace = "mesh-wide", namespace
    else:
        try:
            real_namespace = names.resolve(namespace)
        except TopologyError as error:
            raise TopologyError(
                f"{kind} {namespace}/{name}: metadata.namespace {namespace!r} is neither one of"
                f" this run's namespaces ({', '.join(LOGICAL_NAMESPACES)}) nor the root"
                f" namespace {root_namespace}; meshconform never writes elsewhere"
            ) from error
        scope = "run"
    mapping = {logical: names.real(logical) for logical in LOGICAL_NAMESPACES}
    localized = copy.deepcopy(dict(manifest))
    meta = dict(localized["metadata"])
    meta["namespace"] = real_namespace
    for field in _SERVER_FIELDS:
        meta.pop(field, None)
    labels = meta.get("labels")
    meta["labels"] = {**(labels if isinstance(labels, Mapping) else {}), **run_labels(names)}
    localized["metadata"] = meta
    localized.pop("status", None)
    spec = localized.get("spec")
    if isinstance(spec, dict):
        _map_spec(kind, spec, mapping)
    return LocalizedManifest(localized, scope, group, version, kind, real_namespace, name)


def delocalize_manifest(
    obj: Mapping[str, Any], names: RunNamespaces, root_namespace: str
) -> dict[str, Any]:
    """An object read from the cluster, as a suite would have written it (foo/bar/legacy).

    Server-side fields, status and meshconform's own labels are dropped, so the result can be
    applied again to restore the state it describes.
    """
    reverse = {names.real(logical): logical for logical in LOGICAL_NAMESPACES}
    result: dict[str, Any] = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
    }
    metadata = obj.get("metadata")
    meta: dict[str, Any] = dict(metadata) if isinstance(metadata, Mapping) else {}
    for field in _SERVER_FIELDS:
        meta.pop(field, None)
    namespace = meta.get("namespace")
    if isinstance(namespace, str):
        meta["namespace"] = reverse.get(namespace, namespace)
    # Only meshconform's own marks go: a managed-by label naming someone else (Helm, Argo CD)
    # is part of the object being restored, and Helm refuses to upgrade objects without it.
    labels = {
        k: v
        for k, v in (meta.get("labels") or {}).items()
        if k != RUN_LABEL and not (k == MANAGED_BY_LABEL and v == MANAGED_BY)
    }
    if labels:
        meta["labels"] = labels
    else:
        meta.pop("labels", None)
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != _LAST_APPLIED}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    result["metadata"] = meta
    spec = obj.get("spec")
    if isinstance(spec, Mapping):
        spec_copy = copy.deepcopy(dict(spec))
        _map_spec(str(obj.get("kind")), spec_copy, reverse)
        result["spec"] = spec_copy
    return result


def run_id_of(obj: Mapping[str, Any]) -> str | None:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    value = labels.get(RUN_LABEL) if isinstance(labels, Mapping) else None
    return value if isinstance(value, str) else None
