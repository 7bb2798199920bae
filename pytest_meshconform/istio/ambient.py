"""Ambient mode, as istiod and ztunnel decide it (pure): which pods ztunnel captures, how
istiod turns PeerAuthentication into the L4 `Authorization`s it sends ztunnel, and how ztunnel
judges a connection with them.

Each function names the Istio or ztunnel function it reproduces (istio/istio and istio/ztunnel
at the commits docs/istio-model.md names); the tests transcribe Istio's own cases (istiod's
golden files ``pilot/pkg/serviceregistry/ambient/testdata/peer-authn-*.yaml``, ztunnel's
``src/rbac.rs`` tests).

In ambient mode ztunnel receives no PeerAuthentication: istiod computes, per workload, DENY
policies that reject connections without a peer identity (``NotPrincipals: [presence]``), a
static one for an effective STRICT mode (``istio_converted_static_strict`` in the root
namespace) and a converted one per workload PeerAuthentication with port-level exceptions
(``converted_peer_authentication_<name>``). ``DISABLE`` means what ``PERMISSIVE`` means: ztunnel
accepts plaintext, it cannot turn mTLS off.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from pytest_meshconform.istio.api import MtlsMode, PeerAuthentication
from pytest_meshconform.istio.selection import GO_ZERO_TIME, is_subset

__all__ = [
    "AMBIENT_REDIRECTION_ANNOTATION",
    "DATAPLANE_MODE_LABEL",
    "STATIC_STRICT_POLICY_NAME",
    "Action",
    "Connection",
    "Match",
    "Presence",
    "Scope",
    "ZtunnelAuthorization",
    "ambient_enrolled",
    "ambient_mtls_mode",
    "authorization_matches",
    "convert_peer_authentication",
    "converted_peer_authentications",
    "converted_selector_peer_authentication_keys",
    "static_strict_policy",
    "ztunnel_admits",
    "ztunnel_peer_policies",
    "ztunnel_policy_keys",
]

# istio.io/api label.IoIstioDataplaneMode; values constants.DataplaneModeAmbient / ...None
DATAPLANE_MODE_LABEL: Final = "istio.io/dataplane-mode"
DATAPLANE_MODE_AMBIENT: Final = "ambient"
DATAPLANE_MODE_NONE: Final = "none"
# annotation.SidecarStatus: the injector's mark on a pod with a sidecar
SIDECAR_STATUS_ANNOTATION: Final = "sidecar.istio.io/status"
# annotation.AmbientRedirection: istio-cni's mark on a pod it enrolled ("enabled")
AMBIENT_REDIRECTION_ANNOTATION: Final = "ambient.istio.io/redirection"
# pilot/pkg/serviceregistry/ambient/authorization.go staticStrictPolicyName
STATIC_STRICT_POLICY_NAME: Final = "istio_converted_static_strict"
# model.GetAmbientPolicyConfigName for a PeerAuthentication (pilot/pkg/model/authentication.go)
CONVERTED_PEER_AUTHENTICATION_PREFIX: Final = "converted_peer_authentication_"


def ambient_enrolled(
    pod_labels: Mapping[str, str],
    namespace_labels: Mapping[str, str],
    pod_annotations: Mapping[str, str] | None = None,
    *,
    host_network: bool = False,
) -> bool:
    """Whether istio-cni enrols the pod in ambient (ztunnel captures its traffic).

    ``CompiledEnablementSelectors.Matches`` (cni/pkg/util/enablement_selector.go) with the
    chart's default ``ambient.enablementSelectors`` (manifests/charts/istio-cni/values.yaml):
    the pod labelled ``istio.io/dataplane-mode=ambient``, or the namespace labelled so and the
    pod not labelled ``istio.io/dataplane-mode=none``. Never a host-network pod, never a pod with
    a sidecar (``sidecar.istio.io/status``: "Ztunnel and sidecar for a single pod is currently
    not supported").
    """
    if host_network or SIDECAR_STATUS_ANNOTATION in (pod_annotations or {}):
        return False
    if pod_labels.get(DATAPLANE_MODE_LABEL) == DATAPLANE_MODE_AMBIENT:
        return True
    return (
        namespace_labels.get(DATAPLANE_MODE_LABEL) == DATAPLANE_MODE_AMBIENT
        and pod_labels.get(DATAPLANE_MODE_LABEL) != DATAPLANE_MODE_NONE
    )


class Scope(StrEnum):
    """istio.security.Scope (pkg/workloadapi/security/authorization.proto)."""

    GLOBAL = "GLOBAL"
    NAMESPACE = "NAMESPACE"
    WORKLOAD_SELECTOR = "WORKLOAD_SELECTOR"


class Action(StrEnum):
    """istio.security.Action."""

    ALLOW = "ALLOW"
    DENY = "DENY"


@dataclass(frozen=True, slots=True)
class Presence:
    """``StringMatch{presence: {}}``: any non-empty value (ztunnel ``StringMatch::Presence``)."""


@dataclass(frozen=True, slots=True)
class Match:
    """One ``istio.security.Match`` as far as PeerAuthentication uses it: the peer's principal
    and the destination port, each positive or negated (``not...``)."""

    principals: tuple[Presence, ...] = ()
    not_principals: tuple[Presence, ...] = ()
    destination_ports: tuple[int, ...] = ()
    not_destination_ports: tuple[int, ...] = ()

    def is_empty(self) -> bool:
        return not (
            self.principals
            or self.not_principals
            or self.destination_ports
            or self.not_destination_ports
        )

    def to_dict(self) -> dict[str, Any]:
        """The protobuf JSON/YAML shape istiod's golden files show (camelCase, empty omitted)."""
        out: dict[str, Any] = {}
        if self.destination_ports:
            out["destinationPorts"] = list(self.destination_ports)
        if self.not_destination_ports:
            out["notDestinationPorts"] = list(self.not_destination_ports)
        if self.principals:
            out["principals"] = [{"presence": {}} for _ in self.principals]
        if self.not_principals:
            out["notPrincipals"] = [{"presence": {}} for _ in self.not_principals]
        return out


# a Group's rules are AND'd, a Rules' matches are OR'd, a policy's groups are OR'd
Rules = tuple[Match, ...]
Group = tuple[Rules, ...]

NO_PEER_IDENTITY: Final = Match(not_principals=(Presence(),))


@dataclass(frozen=True, slots=True)
class ZtunnelAuthorization:
    """An ``istio.security.Authorization`` as istiod sends it to ztunnel."""

    name: str
    namespace: str
    scope: Scope
    action: Action
    groups: tuple[Group, ...]

    @property
    def key(self) -> str:
        """``namespace/name``, how a workload lists its policies (``Authorization::to_key``)."""
        return f"{self.namespace}/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        """The shape of istiod's golden files (``groups[].rules[].matches[]``)."""
        out: dict[str, Any] = {
            "action": self.action.value,
            "groups": [
                {"rules": [{"matches": [m.to_dict() for m in rules]} for rules in group]}
                for group in self.groups
            ],
            "name": self.name,
        }
        if self.namespace:
            out["namespace"] = self.namespace
        out["scope"] = self.scope.value
        return out


@dataclass(frozen=True, slots=True)
class Connection:
    """What ztunnel's RBAC sees of a connection (``rbac::Connection``): the destination port
    and the peer's SPIFFE identity (None: plaintext, or TLS without a mesh certificate)."""

    port: int
    peer: str | None = None  # spiffe://<trust domain>/ns/<ns>/sa/<sa>


def static_strict_policy(root_namespace: str) -> ZtunnelAuthorization:
    """The DENY-without-identity policy istiod sends once any PeerAuthentication exists
    (``DefaultPolicy``, pilot/pkg/serviceregistry/ambient/policies.go)."""
    return ZtunnelAuthorization(
        STATIC_STRICT_POLICY_NAME,
        root_namespace,
        Scope.WORKLOAD_SELECTOR,
        Action.DENY,
        (((NO_PEER_IDENTITY,),),),
    )


def _mode(policy: PeerAuthentication | None) -> MtlsMode:
    """``GetMtls().GetMode()``: no policy, no ``mtls`` block and ``UNSET`` are all UNSET."""
    if policy is None or policy.mode is None:
        return MtlsMode.UNSET
    return policy.mode


def _strict(policy: PeerAuthentication | None) -> bool:
    return _mode(policy) is MtlsMode.STRICT


def _unset(policy: PeerAuthentication | None) -> bool:
    return _mode(policy) is MtlsMode.UNSET


def _lax(mode: MtlsMode) -> bool:
    return mode in (MtlsMode.PERMISSIVE, MtlsMode.DISABLE)


def _oldest(policies: Sequence[PeerAuthentication]) -> PeerAuthentication | None:
    """``getOldestPeerAuthn``: the first with the earliest creation time (Go's ``Before``)."""
    oldest: PeerAuthentication | None = None
    for policy in policies:
        if oldest is None or _created(policy) < _created(oldest):
            oldest = policy
    return oldest


def _created(policy: PeerAuthentication) -> Any:
    return policy.creation_timestamp or GO_ZERO_TIME


def _converted_name(policy: PeerAuthentication) -> str:
    return CONVERTED_PEER_AUTHENTICATION_PREFIX + policy.name


def convert_peer_authentication(
    root_namespace: str,
    policy: PeerAuthentication,
    namespace_policy: PeerAuthentication | None,
    root_policy: PeerAuthentication | None,
) -> ZtunnelAuthorization | None:
    """The L4 policy istiod derives from one workload PeerAuthentication with port-level
    modes, merged with the namespace's and the mesh's modes (``convertPeerAuthentication``,
    pilot/pkg/serviceregistry/ambient/authorization.go); None when it derives none (a policy
    in the root namespace, without a selector or port-level modes, or STRICT on every port:
    the static STRICT policy covers that)."""
    namespace = policy.namespace or ""
    mode = _mode(policy)
    if namespace == root_namespace or policy.selector is None or not policy.port_level:
        return None
    rules: list[Rules] = []
    groups: list[Group] = []
    if mode is MtlsMode.STRICT:
        rules.append((NO_PEER_IDENTITY,))
    found_non_strict_port = False
    for port, port_mode in sorted(policy.port_level.items()):  # maps.SeqStable: by port
        if port_mode is MtlsMode.STRICT:
            # Go's `a || b && c || d` binds as `a || (b && c) || d`: transcribed as written.
            if (
                _strict(policy)
                or (_unset(policy) and namespace_policy is not None and _strict(namespace_policy))
                or (
                    (namespace_policy is None or _unset(namespace_policy))
                    and root_policy is not None
                    and _strict(root_policy)
                )
            ):
                continue  # the parent policy enforces it
            groups.append(((Match(not_principals=(Presence(),), destination_ports=(port,)),),))
        elif _lax(port_mode):
            if _lax(mode):
                continue
            if mode is MtlsMode.UNSET and (
                (namespace_policy is not None and not _strict(namespace_policy))
                or (
                    namespace_policy is None
                    and root_policy is not None
                    and not _strict(root_policy)
                )
                or (namespace_policy is None and root_policy is None)
            ):
                continue  # not STRICT here, and the effective policy is not STRICT either
            found_non_strict_port = True
            rules.append((Match(not_destination_ports=(port,)),))
        # UNSET on a port: skipped
    if mode is MtlsMode.STRICT and not found_non_strict_port:
        return None
    if not rules and not groups:
        return None
    merge_strict = (
        root_policy is not None
        and _strict(root_policy)
        and (namespace_policy is None or _unset(namespace_policy) or _strict(namespace_policy))
    ) or (namespace_policy is not None and _strict(namespace_policy))
    if merge_strict and found_non_strict_port:
        rules.append((NO_PEER_IDENTITY,))
    if rules:
        groups.append(tuple(rules))
    return ZtunnelAuthorization(
        _converted_name(policy), namespace, Scope.WORKLOAD_SELECTOR, Action.DENY, tuple(groups)
    )


def converted_selector_peer_authentication_keys(
    root_namespace: str, policies: Sequence[PeerAuthentication]
) -> tuple[str, ...]:
    """The PeerAuthentication-derived policies a workload lists (``namespace/name``, sorted),
    from the PeerAuthentications that apply to it (`applicable`): the static STRICT policy when
    its effective mode is STRICT everywhere, its workload policy's converted form when that has
    port-level exceptions (``convertedSelectorPeerAuthentications`` and
    ``effectivePeerAuthenticationKeys``, pilot/pkg/serviceregistry/ambient/authorization.go)."""
    mesh: PeerAuthentication | None = None
    namespace_wide: PeerAuthentication | None = None
    workload: PeerAuthentication | None = None
    for policy in policies:
        if not policy.selector:  # nil selector or empty matchLabels
            if policy.namespace == root_namespace:
                if mesh is None or _created(policy) < _created(mesh):
                    mesh = policy
            elif namespace_wide is None or _created(policy) < _created(namespace_wide):
                namespace_wide = policy
        elif policy.namespace != root_namespace and (
            workload is None or _created(policy) < _created(workload)
        ):
            workload = policy
    strict = mesh is not None and _strict(mesh)
    if namespace_wide is not None and not _unset(namespace_wide):
        strict = _strict(namespace_wide)
    port_key = ""
    if workload is not None:
        if _strict(workload):
            strict = True
        if _lax(_mode(workload)):
            strict = False
        if workload.port_level:
            key = f"{workload.namespace}/{_converted_name(workload)}"
            modes = workload.port_level.values()
            top = _mode(workload)
            if top is MtlsMode.STRICT:
                if any(_lax(m) for m in modes):
                    port_key, strict = key, False
            elif _lax(top):
                if any(m is MtlsMode.STRICT for m in modes):
                    port_key = key
            elif strict:  # UNSET under a STRICT mesh or namespace
                if any(m is MtlsMode.PERMISSIVE for m in modes):  # DISABLE not counted (sic)
                    port_key, strict = key, False
            else:  # UNSET under a PERMISSIVE mesh or namespace
                strict = False
                if any(m is MtlsMode.STRICT for m in modes):
                    port_key = key
    keys = set()
    if strict:
        keys.add(f"{root_namespace}/{STATIC_STRICT_POLICY_NAME}")
    if port_key:
        keys.add(port_key)
    return tuple(sorted(keys))


def ztunnel_policy_keys(
    policies: Iterable[PeerAuthentication],
    namespace: str,
    labels: Mapping[str, str],
    root_namespace: str = "istio-system",
) -> tuple[str, ...]:
    """The PeerAuthentication-derived policy keys a workload's ``Workload`` lists
    (``buildWorkloadPolicies``, pilot/pkg/serviceregistry/ambient/workloads.go)."""
    return converted_selector_peer_authentication_keys(
        root_namespace, _applicable(policies, namespace, labels, root_namespace)
    )


def _applicable(
    policies: Iterable[PeerAuthentication],
    namespace: str,
    labels: Mapping[str, str],
    root_namespace: str,
) -> list[PeerAuthentication]:
    """``fetchPeerAuthentications`` (pilot/pkg/serviceregistry/ambient/workloads.go): the
    workload's namespace's policies without a selector or whose selector matches, then the root
    namespace's policies without a selector."""
    policies = list(policies)
    own = [
        p
        for p in policies
        if p.namespace == namespace and (p.selector is None or is_subset(p.selector, labels))
    ]
    if namespace != root_namespace:
        own += [p for p in policies if p.namespace == root_namespace and p.selector is None]
    return own


def converted_peer_authentications(
    policies: Iterable[PeerAuthentication], root_namespace: str
) -> dict[str, ZtunnelAuthorization]:
    """Every PeerAuthentication-derived policy istiod sends ztunnel, by key: the static STRICT
    policy once any PeerAuthentication exists (``DefaultPolicy``), and each workload policy's
    converted form (``PeerAuthDerivedPolicies``, pilot/pkg/serviceregistry/ambient/policies.go:
    its namespace's and the root namespace's policies without a selector, the oldest of each,
    are the parents it merges with)."""
    policies = list(policies)
    out: dict[str, ZtunnelAuthorization] = {}
    if not policies:
        return out
    static = static_strict_policy(root_namespace)
    out[static.key] = static
    for policy in policies:
        namespace_parent = _oldest(
            [p for p in policies if p.namespace == policy.namespace and p.selector is None]
        )
        root_parent = _oldest(
            [p for p in policies if p.namespace == root_namespace and p.selector is None]
        )
        converted = convert_peer_authentication(
            root_namespace, policy, namespace_parent, root_parent
        )
        if converted is not None:
            out[converted.key] = converted
    return out


def ztunnel_peer_policies(
    policies: Iterable[PeerAuthentication],
    namespace: str,
    labels: Mapping[str, str],
    root_namespace: str = "istio-system",
) -> tuple[ZtunnelAuthorization, ...]:
    """The PeerAuthentication-derived policies ztunnel enforces for one workload: the keys its
    Workload lists (``buildWorkloadPolicies``) resolved against what istiod sends (a key
    without a policy is skipped, as ztunnel's ``assert_rbac`` skips an unknown policy)."""
    policies = list(policies)
    sent = converted_peer_authentications(policies, root_namespace)
    keys = ztunnel_policy_keys(policies, namespace, labels, root_namespace)
    return tuple(sent[key] for key in keys if key in sent)


def _match_matches(match: Match, connection: Connection) -> bool:
    """One ``RbacMatch`` (ztunnel ``Authorization::matches``): within a kind ANY positive value
    and NO negative value must match; every kind must hold."""
    principal = connection.peer or ""
    # StringMatch::matches_principal: strip "spiffe://", fail without it; presence: non-empty
    has_principal = principal.startswith("spiffe://") and bool(principal[len("spiffe://") :])

    def kind(positive: Sequence[Any], negative: Sequence[Any], predicate: Any) -> bool:
        pm = not positive or any(predicate(v) for v in positive)
        nm = not negative or not any(predicate(v) for v in negative)
        return pm and nm

    return kind(
        match.destination_ports, match.not_destination_ports, lambda p: p == connection.port
    ) and kind(match.principals, match.not_principals, lambda _: has_principal)


def authorization_matches(policy: ZtunnelAuthorization, connection: Connection) -> bool:
    """Whether a policy matches a connection (``Authorization::matches``, ztunnel
    src/rbac.rs): ANY group whose every rules-clause has ANY non-empty match that matches; an
    empty clause matches, a policy without groups matches nothing."""
    if not policy.groups:
        return False
    for group in policy.groups:
        if all(
            not clause or any(not m.is_empty() and _match_matches(m, connection) for m in clause)
            for clause in group
        ):
            return True
    return False


def ztunnel_admits(policies: Iterable[ZtunnelAuthorization], connection: Connection) -> bool:
    """ztunnel's verdict on a connection (``ProxyState::assert_rbac``, ztunnel src/state.rs):
    denied when any DENY policy matches; else allowed when there is no ALLOW policy or one
    matches."""
    policies = list(policies)
    if any(p.action is Action.DENY and authorization_matches(p, connection) for p in policies):
        return False
    allow = [p for p in policies if p.action is Action.ALLOW]
    return not allow or any(authorization_matches(p, connection) for p in allow)


def ambient_mtls_mode(
    policies: Iterable[PeerAuthentication],
    namespace: str,
    labels: Mapping[str, str],
    port: int,
    root_namespace: str = "istio-system",
) -> MtlsMode:
    """What an ambient workload's ztunnel enforces on a port: STRICT when it denies a
    connection without a peer identity, else PERMISSIVE (ztunnel accepts plaintext and mTLS
    alike; a DISABLE PeerAuthentication cannot turn HBONE off)."""
    enforced = ztunnel_peer_policies(policies, namespace, labels, root_namespace)
    if ztunnel_admits(enforced, Connection(port)):
        return MtlsMode.PERMISSIVE
    return MtlsMode.STRICT
