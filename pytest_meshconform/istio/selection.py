"""Which policies apply to which workloads, as istiod decides (pure).

The selector, root-namespace and age rules that PeerAuthentication, DestinationRule and
AuthorizationPolicy resolution share, and :func:`unmatched_reason`: why a policy would apply to
no workload of a mesh (the plugin refuses such a policy, the audit too). Each rule names the
istiod function it reproduces; docs/istio-model.md lists them all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Final

from pytest_meshconform.istio.api import (
    AuthorizationPolicy,
    PeerAuthentication,
    Policy,
    PolicyError,
)
from pytest_meshconform.istio.api.fields import show
from pytest_meshconform.mesh import Workload

__all__ = [
    "GO_ZERO_TIME",
    "age_key",
    "check_labels_argument",
    "ignored_in_root_namespace",
    "in_scope",
    "is_subset",
    "unmatched_reason",
]

GO_ZERO_TIME: Final = datetime(1, 1, 1, tzinfo=UTC)
"""A config without creationTimestamp has Go's zero time in istiod: older than all others."""


def age_key(policy: Policy, namespace: str) -> tuple[datetime, str, str]:
    """istiod's ``sortConfigByCreationTime`` order (pilot/pkg/model): creation time, then
    name, then namespace."""
    stamp = policy.creation_timestamp or GO_ZERO_TIME
    return (stamp, policy.name, namespace)


def is_subset(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """``labels.Instance.SubsetOf`` (pkg/config/labels): every selector label is present with
    the same value; an empty selector selects every workload."""
    return all(labels.get(key) == value for key, value in selector.items())


def in_scope(policy_namespace: str, workload_namespace: str, root_namespace: str) -> bool:
    """A workload sees the policies of its own namespace and of the root namespace
    (``getConfigsForWorkload``, pilot/pkg/model/authentication.go; ``ListAuthorizationPolicies``,
    pilot/pkg/model/authorization.go); their selectors then decide."""
    return policy_namespace in (workload_namespace, root_namespace)


def ignored_in_root_namespace(policy: Policy, policy_namespace: str, root_namespace: str) -> bool:
    """A PeerAuthentication with a selector in the root namespace applies to no workload, not
    even one of the root namespace: ``ComposePeerAuthentication``
    (pilot/pkg/security/authn/policy_applier.go) takes selector policies only from the
    workload's own namespace."""
    return (
        isinstance(policy, PeerAuthentication)
        and policy.is_workload_policy
        and policy_namespace == root_namespace
    )


def check_labels_argument(labels: object, what: str) -> None:
    """Workload labels given to a resolution function map strings to strings."""
    if not isinstance(labels, Mapping) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in labels.items()
    ):
        raise PolicyError(f"{what} must map strings to strings, got {show(labels)}")


def _same_namespace(namespace: str) -> str:
    return namespace


def unmatched_reason(
    policy: Policy,
    workloads: Sequence[Workload],
    root_namespace: str,
    logical_namespace: Callable[[str], str] = _same_namespace,
) -> str | None:
    """Why ``policy`` would apply to none of ``workloads``, or None when it applies to some.

    ``logical_namespace`` maps a namespace as the mesh names it to the name the suite uses (a
    kube run's per-run namespaces); ``root_namespace`` is in that spelling. A policy without a
    namespace lives in ``default``. A selector selects workloads of the policy's own namespace
    only (``getConfigsForWorkload``, pilot/pkg/model/authentication.go;
    ``SidecarScope.DestinationRule``, pilot/pkg/model/sidecar.go), and istiod ignores a
    PeerAuthentication with a selector in the root namespace (docs/istio-facts.md); an
    AuthorizationPolicy in the root namespace selects in every namespace
    (``ListAuthorizationPolicies``, pilot/pkg/model/authorization.go).
    """
    namespace = logical_namespace(policy.namespace or "default")
    root = root_namespace
    present = sorted({logical_namespace(w.namespace) for w in workloads})
    if namespace != root and namespace not in present:
        return (
            f"namespace {namespace!r} does not exist in the mesh (namespaces: {', '.join(present)};"
            f" root namespace {root})"
        )
    selector = (
        policy.selector
        if isinstance(policy, PeerAuthentication | AuthorizationPolicy)
        else policy.workload_selector
    )
    if not selector:
        return None
    if ignored_in_root_namespace(policy, namespace, root):
        return (
            f"istiod ignores a PeerAuthentication with a selector in the root namespace {root}:"
            " it applies to no workload (drop the selector for a mesh-wide policy, or move it"
            " to the workloads' namespace)"
        )
    if isinstance(policy, AuthorizationPolicy):
        local = [w for w in workloads if in_scope(namespace, logical_namespace(w.namespace), root)]
    else:  # a workload selector picks workloads of its own namespace only
        local = [w for w in workloads if logical_namespace(w.namespace) == namespace]
    if any(is_subset(selector, w.labels) for w in local):
        return None
    labels = "; ".join(f"{w.name}: {dict(w.labels)}" for w in local) or "none"
    return f"selector {dict(selector)} matches no workload in {namespace} (workloads: {labels})"
