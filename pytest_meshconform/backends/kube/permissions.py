"""The Kubernetes permissions a run on an existing cluster needs, listed once (pure).

``RUN_PERMISSIONS`` is the one list: ``meshconform doctor`` and the existing-cluster preflight
ask the API server about each entry (SelfSubjectAccessReview), and the README's permission
table is ``permission_table()`` (tests/test_kube_permissions.py checks both, and derives the
list from the calls a whole run makes through ``ClusterApi``: ``permissions_of_call``).

How a call is authorized is the API server's (``RequestInfo`` and the RBAC authorizer):
verbs ``get``/``list`` for reads, ``create`` for POST, ``patch`` for PATCH, ``update`` for PUT,
``delete``. Two calls need more than their verb:

- a server-side apply (PATCH, ``application/apply-patch+yaml``) that creates the object is
  also authorized as ``create`` (``PatchResource`` wraps its create validation in
  ``withAuthorization`` with the create attributes, k8s.io/apiserver
  pkg/endpoints/handlers/patch.go);
- exec over a WebSocket is a GET on ``pods/exec`` (verb ``get``); Kubernetes 1.35 also asks for
  ``create`` on it (feature gate ``AuthorizePodWebsocketUpgradeCreatePermission``), as exec
  over SPDY always did; the same holds for a port-forward (``pods/portforward``), how ztunnel's
  ``/config_dump`` is read in ambient runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "KIND_RESOURCES",
    "RUN_PERMISSIONS",
    "SCOPE_TEXT",
    "Permission",
    "Scope",
    "permission_table",
    "permissions_of_call",
]

# Where a permission applies: cluster-scoped, the run's namespaces (mc-<run>-*, created by the
# run, so only cluster-wide grants reach them), istiod's namespace, Istio's root namespace.
Scope = Literal["cluster", "run", "istio", "root"]
SCOPE_TEXT: Final[Mapping[Scope, str]] = {
    "cluster": "cluster",
    "run": "the run's namespaces (every namespace: they do not exist yet)",
    "istio": "istiod's namespace",
    "root": "Istio's root namespace",
}

# kind -> (API group, resource) of every kind the kube backend reads or writes by kind.
KIND_RESOURCES: Final[Mapping[str, tuple[str, str]]] = {
    "ServiceAccount": ("", "serviceaccounts"),
    "Service": ("", "services"),
    "Deployment": ("apps", "deployments"),
    "Gateway": ("gateway.networking.k8s.io", "gateways"),
    "PeerAuthentication": ("security.istio.io", "peerauthentications"),
    "AuthorizationPolicy": ("security.istio.io", "authorizationpolicies"),
    "DestinationRule": ("networking.istio.io", "destinationrules"),
}


@dataclass(frozen=True, slots=True)
class Permission:
    """One verb on one resource (``pods/exec``: resource/subresource) in one scope."""

    verb: str
    group: str
    resource: str
    scope: Scope
    why: str
    required: bool = True  # False: the run goes on without it (and says what it skips)
    mesh_wide: bool = False  # only with --mesh-allow-mesh-wide
    ambient: bool = False  # only with ambient namespaces (--mesh-dataplane=ambient or both)

    @property
    def resource_name(self) -> str:
        """``pods/exec`` or ``peerauthentications.security.istio.io``, as kubectl spells it."""
        return f"{self.resource}.{self.group}" if self.group else self.resource

    @property
    def key(self) -> tuple[str, str, str, Scope]:
        return (self.verb, self.group, self.resource, self.scope)

    def line(self) -> str:
        """``create namespaces (cluster)``: the verb, the resource and where."""
        return f"{self.verb} {self.resource_name} ({self.scope})"

    def rbac_rule(self) -> str:
        """The RBAC rule that grants it, as a ClusterRole/Role writes it."""
        return (
            f'{{apiGroups: ["{self.group}"], resources: ["{self.resource}"],'
            f' verbs: ["{self.verb}"]}}'
        )


def _p(verb: str, kind_or_resource: str, scope: Scope, why: str, **extra: bool) -> Permission:
    group, resource = KIND_RESOURCES.get(kind_or_resource, ("", kind_or_resource))
    return Permission(verb, group, resource, scope, why, **extra)


def _written(kind: str, why: str) -> tuple[Permission, ...]:
    return (
        _p("create", kind, "run", why),
        _p("patch", kind, "run", why),
    )


def _policy(kind: str) -> tuple[Permission, ...]:
    why = f"apply_policy: {kind}s of the tests"
    wide = f"mesh-wide {kind}s (--mesh-allow-mesh-wide), put back at the end"
    return (
        _p("create", kind, "run", why),
        _p("patch", kind, "run", why),
        _p("get", kind, "run", why),
        _p("list", kind, "run", why),
        _p("delete", kind, "run", why),
        _p(
            "list",
            kind,
            "root",
            "the mesh-wide policies in force (without it what they decide is not checked)",
            required=False,
        ),
        _p("get", kind, "root", wide, mesh_wide=True),
        _p("create", kind, "root", wide, mesh_wide=True),
        _p("patch", kind, "root", wide, mesh_wide=True),
        _p("update", kind, "root", wide, mesh_wide=True),
        _p("delete", kind, "root", wide, mesh_wide=True),
    )


RUN_PERMISSIONS: Final[tuple[Permission, ...]] = (
    _p("create", "namespaces", "cluster", "the run's namespaces mc-<run>-foo, -bar, -legacy"),
    _p("delete", "namespaces", "cluster", "removing the run's namespaces at the end"),
    _p(
        "list",
        "namespaces",
        "cluster",
        "naming what earlier runs left (skipped without it)",
        required=False,
    ),
    *_written("ServiceAccount", "the sleep and httpbin workloads"),
    *_written("Service", "the sleep and httpbin workloads"),
    *_written("Deployment", "the sleep and httpbin workloads"),
    _p("list", "pods", "run", "waiting until the workloads are ready"),
    _p("get", "pods", "run", "the capture container's state"),
    _p("get", "pods/exec", "run", "curl, tcpdump and pilot-agent in the pods (WebSocket exec)"),
    _p("create", "pods/exec", "run", "curl, tcpdump and pilot-agent (Kubernetes 1.35 and later)"),
    _p("get", "pods/log", "run", "the workloads' logs of a failed test"),
    _p("patch", "pods/ephemeralcontainers", "run", "the tcpdump container of a capture"),
    _p("get", "configmaps", "run", "istiod's istio-ca-root-cert (the mesh root)"),
    _p(
        "list",
        "events",
        "run",
        "the warnings named when pods do not become ready",
        required=False,
    ),
    _p("list", "Deployment", "istio", "istiod: its revision, version and MAX_WORKLOAD_CERT_TTL"),
    _p("get", "configmaps", "istio", "istiod's mesh config (istio or istio-<rev>)"),
    _p(
        "list",
        "pods",
        "istio",
        "ztunnel and istio-cni found (the report header); with ambient namespaces, the ztunnel"
        " of each ambient workload's node",
        required=False,
    ),
    _p(
        "get",
        "pods/portforward",
        "istio",
        "ztunnel's /config_dump (admin port 15000; its image is distroless: no exec)",
        ambient=True,
    ),
    _p(
        "create",
        "pods/portforward",
        "istio",
        "ztunnel's /config_dump (Kubernetes 1.35 and later)",
        ambient=True,
    ),
    _p("create", "Gateway", "run", "bar's namespace waypoint (its Gateway)", ambient=True),
    _p("patch", "Gateway", "run", "bar's namespace waypoint (its Gateway)", ambient=True),
    _p("get", "Gateway", "run", "waiting until istiod has the waypoint Programmed", ambient=True),
    _p(
        "list",
        "Deployment",
        "run",
        "waiting until the waypoint's Deployment (istiod's) is ready",
        ambient=True,
    ),
    _p(
        "get",
        "pods/portforward",
        "run",
        "the waypoint Envoy's /config_dump (admin port 15000)",
        ambient=True,
    ),
    _p(
        "create",
        "pods/portforward",
        "run",
        "the waypoint Envoy's /config_dump (Kubernetes 1.35 and later)",
        ambient=True,
    ),
    *_policy("PeerAuthentication"),
    *_policy("DestinationRule"),
    *_policy("AuthorizationPolicy"),
)

# ClusterApi method -> the verb (and resource, when the method names one) it is authorized as.
_METHOD_VERBS: Final[Mapping[str, tuple[tuple[str, str | None], ...]]] = {
    "create_namespace": (("create", "namespaces"),),
    "delete_namespace": (("delete", "namespaces"),),
    "list_namespaces": (("list", "namespaces"),),
    "apply": (("create", None), ("patch", None)),
    "get": (("get", None),),
    "list_objects": (("list", None),),
    "delete": (("delete", None),),
    "replace": (("update", None),),
    "list_pods": (("list", "pods"),),
    "read_pod": (("get", "pods"),),
    "add_ephemeral_container": (("patch", "pods/ephemeralcontainers"),),
    "pod_log": (("get", "pods/log"),),
    "read_config_map": (("get", "configmaps"),),
    "list_deployments": (("list", "deployments"),),
    "list_events": (("list", "events"),),
    "open_exec": (("get", "pods/exec"), ("create", "pods/exec")),
    "port_forward_get": (("get", "pods/portforward"), ("create", "pods/portforward")),
    "served_versions": (),  # API discovery: every authenticated user may read it
}


def permissions_of_call(
    method: str, scope: Scope, kind: str | None = None
) -> tuple[tuple[str, str, str, Scope], ...]:
    """The (verb, group, resource, scope) keys a ``ClusterApi`` call in ``scope`` needs;
    ``kind`` for the methods that take one (apply, get, list_objects, delete, replace)."""
    if method not in _METHOD_VERBS:
        raise KeyError(f"ClusterApi.{method}: no permission known for it")
    keys = []
    for verb, resource in _METHOD_VERBS[method]:
        if resource is None:
            if kind is None or kind not in KIND_RESOURCES:
                raise KeyError(f"ClusterApi.{method}: unknown kind {kind!r}")
            group, name = KIND_RESOURCES[kind]
        else:
            group = "apps" if resource == "deployments" else ""
            name = resource
        keys.append((verb, group, name, scope))
    return tuple(keys)


def permission_table() -> list[str]:
    """The README's permission table (Markdown rows), one line per verb, resource and scope."""
    rows = [
        "| verb | resource | where | needed for |",
        "|---|---|---|---|",
    ]
    for permission in RUN_PERMISSIONS:
        note = ""
        if not permission.required:
            note = " (optional)"
        elif permission.mesh_wide:
            note = " (only with `--mesh-allow-mesh-wide`)"
        elif permission.ambient:
            note = " (only with ambient namespaces: `--mesh-dataplane=ambient` or `both`)"
        rows.append(
            f"| {permission.verb} | `{permission.resource_name}` | {permission.scope}"
            f" | {permission.why}{note} |"
        )
    return rows
