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

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from pytest_meshconform.istio.api import MtlsMode, PeerAuthentication, Policy
from pytest_meshconform.istio.api.authorization_policy import (
    DRY_RUN_ANNOTATION,
    AuthorizationPolicy,
    AuthzAction,
    AuthzCondition,
    AuthzRule,
)
from pytest_meshconform.istio.selection import GO_ZERO_TIME, is_subset
from pytest_meshconform.istio.ztunnel import (
    PRESENCE,
    Action,
    Address,
    Connection,
    Group,
    Match,
    Rules,
    Scope,
    ServiceAccountMatch,
    StringKind,
    StringMatch,
    ZtunnelAuthorization,
    ztunnel_admits,
)

__all__ = [
    "AMBIENT_REDIRECTION_ANNOTATION",
    "DATAPLANE_MODE_LABEL",
    "STATIC_STRICT_POLICY_NAME",
    "ambient_enrolled",
    "ambient_mtls_mode",
    "convert_authorization_policy",
    "convert_peer_authentication",
    "converted_peer_authentications",
    "converted_selector_peer_authentication_keys",
    "static_strict_policy",
    "ztunnel_peer_policies",
    "ztunnel_policies",
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


NO_PEER_IDENTITY: Final = Match(not_principals=(PRESENCE,))


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
            groups.append(((Match(not_principals=(PRESENCE,), destination_ports=(port,)),),))
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


# handleRule's l4WhenAttributes: the `when` keys ztunnel can evaluate
L4_WHEN_KEYS: Final = frozenset(
    {"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"}
)
# convertAuthorizationPolicy's status messages (httpRuleFmt and its boilerplates)
_HTTP_RULE = (
    "ztunnel does not support HTTP attributes (found: {found}). In ambient mode you must use a"
    " waypoint proxy to enforce HTTP rules. {boilerplate}"
)
_DENY_NO_EFFECT = (
    "After omitting unsupported HTTP attributes, this DENY policy has no enforceable rules at"
    " ztunnel and will have no effect. Deploy a waypoint proxy and use a targetRef to enforce"
    " this policy."
)
_DENY_MIXED = (
    "DENY policy with HTTP attributes is enforced without the HTTP rules. This will be more"
    " restrictive than requested."
)
_ALLOW_RULE = (
    "Within an ALLOW policy, rules matching HTTP attributes are omitted. This will be more"
    " restrictive than requested."
)
_GO_TRUE: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})


def string_matches(values: Iterable[str]) -> tuple[StringMatch, ...]:
    """``stringToMatch``: ``*`` is presence, ``*x`` a suffix, ``x*`` a prefix, else exact."""
    out = []
    for v in values:
        if v == "*":
            out.append(StringMatch(StringKind.PRESENCE))
        elif v.startswith("*"):
            out.append(StringMatch(StringKind.SUFFIX, v[1:]))
        elif v.endswith("*"):
            out.append(StringMatch(StringKind.PREFIX, v[:-1]))
        else:
            out.append(StringMatch(StringKind.EXACT, v))
    return tuple(out)


def service_account_matches(
    values: Iterable[str], namespace: str
) -> tuple[ServiceAccountMatch, ...]:
    """``stringToServiceAccountMatch``: ``ns/sa``, or ``sa`` in the policy's namespace."""
    out = []
    for v in values:
        ns, slash, sa = v.partition("/")
        out.append(ServiceAccountMatch(ns, sa) if slash else ServiceAccountMatch(namespace, v))
    return tuple(out)


def port_numbers(values: Iterable[str]) -> tuple[int, ...]:
    """``stringToPort``: decimal ports up to 65535; anything else is skipped."""
    out = []
    for v in values:
        if v.isdigit() and int(v) <= 65535:
            out.append(int(v))
    return tuple(out)


def addresses(values: Iterable[str]) -> tuple[Address, ...]:
    """``stringToIP``: an address (its full length) or a CIDR; anything else is skipped."""
    out = []
    for v in values:
        text, slash, bits = v.partition("/")
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            continue
        if not slash:
            out.append(Address(ip, ip.max_prefixlen))
        elif bits.isdigit() and int(bits) <= ip.max_prefixlen and bits == str(int(bits)):
            out.append(Address(ip, int(bits)))
    return tuple(out)


def _when_match(condition: AuthzCondition) -> Match:
    """One ``when`` condition as a match (``whenMatch`` per L4 key; other keys match nothing)."""

    def pick(key: str, invert: bool) -> tuple[str, ...]:
        if condition.key != key:
            return ()
        return condition.not_values if invert else condition.values

    return Match(
        namespaces=string_matches(pick("source.namespace", False)),
        principals=string_matches(pick("source.principal", False)),
        source_ips=addresses(pick("source.ip", False)),
        destination_ports=port_numbers(pick("destination.port", False)),
        destination_ips=addresses(pick("destination.ip", False)),
        not_namespaces=string_matches(pick("source.namespace", True)),
        not_principals=string_matches(pick("source.principal", True)),
        not_source_ips=addresses(pick("source.ip", True)),
        not_destination_ports=port_numbers(pick("destination.port", True)),
        not_destination_ips=addresses(pick("destination.ip", True)),
    )


def _handle_rule(
    action: Action, rule: AuthzRule, namespace: str
) -> tuple[tuple[Rules, ...] | None, set[str]]:
    """``handleRule``: a rule's ``to``, ``from`` and each ``when`` as AND'd clauses, and the
    HTTP attributes found (an ALLOW rule with any is dropped: it could never match)."""
    http: set[str] = set()
    to: list[Match] = []
    for op in rule.operations:
        for name, values in (
            ("hosts", op.hosts),
            ("notHosts", op.not_hosts),
            ("methods", op.methods),
            ("notMethods", op.not_methods),
            ("paths", op.paths),
            ("notPaths", op.not_paths),
        ):
            if values:
                http.add(name)
        to.append(
            Match(
                destination_ports=port_numbers(op.ports),
                not_destination_ports=port_numbers(op.not_ports),
            )
        )
    sources: list[Match] = []
    for src in rule.sources:
        sources.append(
            Match(
                source_ips=addresses(src.ip_blocks),
                not_source_ips=addresses(src.not_ip_blocks),
                namespaces=string_matches(src.namespaces),
                not_namespaces=string_matches(src.not_namespaces),
                principals=string_matches(src.principals),
                not_principals=string_matches(src.not_principals),
            )
        )
    rules: list[Rules] = []
    if to:
        rules.append(tuple(to))
    if sources:
        rules.append(tuple(sources))
    for condition in rule.conditions:
        if condition.key not in L4_WHEN_KEYS:
            http.add(condition.key)
        rules.append((_when_match(condition),))
    if action is Action.ALLOW and http:
        return None, http
    return tuple(rules), http


def _has_effective_rules(groups: Sequence[Group]) -> bool:
    """``hasEffectiveRules``: some group every clause of which has a non-empty match."""
    return any(
        not group or all(any(not m.is_empty() for m in clause) for clause in group)
        for group in groups
    )


def convert_authorization_policy(
    root_namespace: str, policy: AuthorizationPolicy, *, dry_run_enabled: bool = False
) -> tuple[ZtunnelAuthorization | None, str | None]:
    """The L4 policy istiod sends ztunnel for an AuthorizationPolicy, and the status message
    it writes (``convertAuthorizationPolicy``, pilot/pkg/serviceregistry/ambient/
    authorization.go): rules with HTTP attributes are dropped from ALLOW policies and enforced
    without them in DENY ones. A dry-run policy is not sent unless
    ``AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY`` (``dry_run_enabled``, off by default).
    A policy with ``targetRefs`` binds to waypoints and is not sent to ztunnel ("TargetRef is
    not intended for ztunnel"): (None, None)."""
    namespace = policy.namespace or ""
    dry_run = policy.annotations.get(DRY_RUN_ANNOTATION, "") in _GO_TRUE
    if dry_run and not dry_run_enabled:
        return None, (
            f'found policy "{namespace}/{policy.name}" using dry-run annotation, but support for'
            " ambient dry-run authorizationPolicies isn't enabled"
        )
    if policy.target_refs:
        return None, None
    if policy.selector is None:
        scope = Scope.GLOBAL if namespace == root_namespace else Scope.NAMESPACE
    else:
        scope = Scope.WORKLOAD_SELECTOR
    action = Action.DENY if policy.action is AuthzAction.DENY else Action.ALLOW
    groups: list[Group] = []
    http: set[str] = set()
    for rule in policy.rules:
        rules, found = _handle_rule(action, rule, namespace)
        if rules is not None:
            groups.append(rules)
        http |= found
    converted = ZtunnelAuthorization(
        policy.name, namespace, scope, action, tuple(groups), dry_run=dry_run
    )
    if not http:
        return converted, None
    if action is Action.DENY and not _has_effective_rules(groups):
        boilerplate = _DENY_NO_EFFECT
    elif action is Action.DENY:
        boilerplate = _DENY_MIXED
    else:
        boilerplate = _ALLOW_RULE
    found_text = ", ".join(sorted(http))
    return converted, _HTTP_RULE.format(found=found_text, boilerplate=boilerplate)


def ztunnel_policies(
    policies: Iterable[Policy],
    namespace: str,
    labels: Mapping[str, str],
    root_namespace: str = "istio-system",
) -> tuple[ZtunnelAuthorization, ...]:
    """Every L4 policy ztunnel enforces on a connection to one ambient workload, from the
    policies in force (other kinds are ignored: ztunnel gets no DestinationRule).

    ztunnel's ``ProxyState::assert_rbac`` (src/state.rs) takes the policies of the workload's
    namespace (scope NAMESPACE), the global ones (GLOBAL: the root namespace's without a
    selector) and those its ``Workload`` lists: the PeerAuthentication-derived ones
    (`ztunnel_peer_policies`) and the AuthorizationPolicies with a selector, in its namespace
    or the root namespace, that select it (``buildWorkloadPolicies``,
    pilot/pkg/serviceregistry/ambient/workloads.go)."""
    policies = list(policies)
    peer = [p for p in policies if isinstance(p, PeerAuthentication)]
    out = list(ztunnel_peer_policies(peer, namespace, labels, root_namespace))
    for policy in policies:
        if not isinstance(policy, AuthorizationPolicy):
            continue
        converted, _ = convert_authorization_policy(root_namespace, policy)
        if converted is None:
            continue
        if converted.scope is Scope.GLOBAL:
            out.append(converted)
        elif converted.scope is Scope.NAMESPACE:
            if converted.namespace == namespace:
                out.append(converted)
        elif (
            converted.namespace in (namespace, root_namespace)
            and policy.selector is not None
            and is_subset(policy.selector, labels)
        ):
            out.append(converted)
    return tuple(out)
