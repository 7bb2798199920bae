"""Server side: which mTLS mode a sidecar enforces, as istiod decides (pure).

Each function names the istiod function it reproduces; docs/istio-model.md lists them all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pytest_meshconform.istio.api import (
    DestinationRule,
    MtlsMode,
    PeerAuthentication,
    Policy,
    PolicyError,
)
from pytest_meshconform.istio.api.fields import check_argument_namespace, show
from pytest_meshconform.istio.selection import (
    age_key,
    check_labels_argument,
    ignored_in_root_namespace,
    in_scope,
    is_subset,
)

__all__ = ["effective_mtls_mode", "port_level_ports", "service_mtls_mode"]


def effective_mtls_mode(
    policies: Iterable[Policy],
    namespace: str,
    labels: Mapping[str, str],
    port: int | None,
    root_namespace: str = "istio-system",
    *,
    default_namespace: str = "default",
) -> MtlsMode:
    """The mTLS mode the sidecar of a workload enforces on a container port, as istiod decides.

    Transcribed from istio/istio: ``getConfigsForWorkload`` (pilot/pkg/model/authentication.go)
    picks the PeerAuthentications of the workload's namespace and of the root namespace whose
    selector is empty or a subset of ``labels``; ``ComposePeerAuthentication``
    (pilot/pkg/security/authn/policy_applier.go) then takes, at each level, the OLDEST policy
    (istiod sorts by ``creationTimestamp``, then name, then namespace; a policy without a
    timestamp counts as Go's zero time, so it is older than any with one, and policies without
    timestamps fall back to name order):

    - mesh level: no selector (or empty ``matchLabels``), in ``root_namespace``;
    - namespace level: no selector, in the workload's namespace;
    - workload level: a non-empty selector, NOT in the root namespace. A selector policy in the
      root namespace is ignored, even for workloads in the root namespace.

    Starting from PERMISSIVE, each level's mode replaces the result unless it is UNSET (or the
    policy has no ``mtls``): mesh, then namespace, then workload. If the chosen workload policy
    has ``portLevelMtls`` for ``port``, that mode wins, and an UNSET port mode takes the
    workload-level result (``GetMutualTLSModeForPort``); ``port=None`` asks for the mode of
    the ports that ``portLevelMtls`` does not name. The result is never UNSET.
    ``DestinationRule`` objects in ``policies`` are ignored (they are client-side), and a policy
    whose namespace is ``None`` is taken to live in ``default_namespace``.
    """
    if port is not None and (
        not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535
    ):
        raise PolicyError(f"port must be in range 1..65535 or None, got {show(port)}")
    mode, workload = _compose(policies, namespace, labels, root_namespace, default_namespace)
    if workload is not None and port is not None and port in workload.port_level:
        port_mode = workload.port_level[port]
        if port_mode is not MtlsMode.UNSET:
            mode = port_mode
    return mode


def port_level_ports(
    policies: Iterable[Policy],
    namespace: str,
    labels: Mapping[str, str],
    root_namespace: str = "istio-system",
    *,
    default_namespace: str = "default",
) -> tuple[int, ...]:
    """The ports the workload's effective PeerAuthentication names in ``portLevelMtls``: the
    keys of the workload-level policy ``ComposePeerAuthentication`` chooses (its ``PerPort``,
    UNSET ones included: they inherit), which ``PortLevelSetting`` hands to istiod's
    passthrough chains (``Builder.ForPassthrough``, pilot/pkg/networking/plugin/authn/
    authentication.go), sorted."""
    _, workload = _compose(policies, namespace, labels, root_namespace, default_namespace)
    return () if workload is None else tuple(sorted(workload.port_level))


def _compose(
    policies: Iterable[Policy],
    namespace: str,
    labels: Mapping[str, str],
    root_namespace: str,
    default_namespace: str,
) -> tuple[MtlsMode, PeerAuthentication | None]:
    """``ComposePeerAuthentication``: the workload's mode for ports no ``portLevelMtls``
    names, and the workload-level policy chosen (None: none applies)."""
    check_argument_namespace(namespace, "namespace")
    check_argument_namespace(root_namespace, "root_namespace")
    check_argument_namespace(default_namespace, "default_namespace")
    check_labels_argument(labels, "labels")
    applicable: list[tuple[str, PeerAuthentication]] = []
    seen: set[tuple[str, str]] = set()
    for policy in policies:
        if isinstance(policy, DestinationRule):
            continue
        if not isinstance(policy, PeerAuthentication):
            raise PolicyError(f"not a policy: {show(policy)}")
        policy_namespace = policy.namespace if policy.namespace is not None else default_namespace
        key = (policy_namespace, policy.name)
        if key in seen:
            raise PolicyError(f"PeerAuthentication {policy_namespace}/{policy.name} given twice")
        seen.add(key)
        if not in_scope(policy_namespace, namespace, root_namespace):
            continue
        if ignored_in_root_namespace(policy, policy_namespace, root_namespace):
            continue
        if policy.selector and not is_subset(policy.selector, labels):
            continue
        applicable.append((policy_namespace, policy))

    def oldest(workload_level: bool, in_root: bool) -> PeerAuthentication | None:
        """The policy ComposePeerAuthentication takes at one level: the oldest applicable."""
        level = [
            (policy_namespace, policy)
            for policy_namespace, policy in applicable
            if policy.is_workload_policy == workload_level
            and (policy_namespace == root_namespace) == in_root
        ]
        if not level:
            return None
        return min(level, key=lambda item: age_key(item[1], item[0]))[1]

    mesh = oldest(workload_level=False, in_root=True)
    namespace_wide = oldest(workload_level=False, in_root=False)
    workload = oldest(workload_level=True, in_root=False)
    mode = MtlsMode.PERMISSIVE
    for chosen in (mesh, namespace_wide, workload):
        if chosen is not None and chosen.mode is not None and chosen.mode is not MtlsMode.UNSET:
            mode = chosen.mode
    return mode, workload


def service_mtls_mode(
    policies: Iterable[Policy],
    service_namespace: str,
    root_namespace: str = "istio-system",
    *,
    default_namespace: str = "default",
) -> MtlsMode:
    """The mTLS mode auto mTLS assumes for a Service: ``BestEffortInferServiceMTLSMode``
    (pilot/pkg/model/push_context.go) for an in-mesh, non-headless Service.

    That is ``AuthenticationPolicies.GetNamespaceMutualTLSMode`` (pilot/pkg/model/
    authentication.go) of the Service's namespace, PERMISSIVE when neither it nor the mesh has
    a policy: only PeerAuthentications without a selector count, the oldest per namespace
    (``addPeerAuthentication``), a namespace UNSET inherits the mesh, a mesh UNSET is
    PERMISSIVE. Workload and port-level policies are ignored on purpose ("best effort"); the
    endpoints' own modes are applied later, per endpoint (:func:`..cluster.auto_mtls_to`).
    This equals :func:`effective_mtls_mode` for a workload with no labels and no port.
    """
    return effective_mtls_mode(
        policies, service_namespace, {}, None, root_namespace, default_namespace=default_namespace
    )
