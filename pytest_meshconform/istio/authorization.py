"""AuthorizationPolicy: which policies apply to a workload, and the Envoy RBAC filters istiod
builds from them for its sidecar (pure).

Every rule names the istiod function it reproduces (all in istio/istio):

- Which policies apply: those of the workload's namespace and of the root namespace whose
  ``selector`` is empty or a subset of the workload's labels; ordered by creation time, then
  name, then namespace [``AuthorizationPolicies.ListAuthorizationPolicies``,
  ``GetAuthorizationPolicies`` + ``sortConfigByCreationTime``, pilot/pkg/model/authorization.go].
  A policy with ``targetRefs`` never applies to a sidecar ("if targetRef is specified, ignore
  the policy altogether", ``WorkloadPolicyMatcher.ShouldAttachPolicy``,
  pilot/pkg/model/policyattachment.go): it binds to waypoints
  (:mod:`pytest_meshconform.istio.waypoint`).
- One RBAC filter per action, DENY before ALLOW (CUSTOM would come first, AUDIT is logging
  only; neither is accepted by :mod:`pytest_meshconform.istio.api`); a workload without ALLOW
  policies has no ALLOW filter, so everything not denied is allowed [``build`` in
  pilot/pkg/security/authz/builder/builder.go].
- One Envoy policy per rule, named ``ns[<namespace>]-policy[<name>]-rule[<index>]``
  [``policyName``]; a policy without rules becomes one policy that never matches (an ALLOW
  policy without rules allows nothing) [``rbacPolicyMatchNever``].
- ``istio.io/dry-run: "true"``: the policy's rules go to ``shadow_rules``, evaluated and
  counted, never enforced; a filter whose policies are all dry-run has no ``rules`` at all and
  so enforces nothing [``isDryRun``, ``build``]. The shadow stat prefix is
  ``istio_dry_run_deny_`` for DENY shadow rules, else ``istio_dry_run_allow_``
  [``shadowRuleStatPrefix``; a filter without shadow rules gets the ALLOW prefix, as Go's
  ``GetAction()`` of a nil message is ALLOW].
- A rule: permissions are one AND per ``to`` entry (hosts, methods, paths, ports, then the
  ``when`` conditions on the destination), principals one AND per ``from`` entry
  (principals, namespaces, ipBlocks, then the ``when`` conditions on the source); each field
  is an OR of its values, plus NOT(OR(notValues)); nothing = ``any``
  [``model.New``, ``Generate``, ``generatePermission``, ``generatePrincipal``,
  pilot/pkg/security/authz/model/model.go].
- Principals match the peer certificate's URI SAN with ``spiffe://`` prepended (``*`` = any
  non-empty, ``x*`` prefix, ``*x`` the regex ``spiffe://.*x``), namespaces the regex
  ``.*/ns/<ns>/.*`` (``*`` -> ``.*``), both through ``authenticated.principal_name``: a
  plaintext peer has no principal, so a principal or namespace rule never matches it, even
  under PERMISSIVE
  [``srcPrincipalGenerator``, ``srcNamespaceGenerator``, generator.go;
  ``StringMatcherWithPrefix``, pilot/pkg/security/authz/matcher/string.go;
  ``principalAuthenticated``, principal.go].
  Istio >= 1.19 proxies carry the same matcher on the ``io.istio.peer_principal`` filter
  state (set by Istio's own ``istio_authn`` filter, which upstream Envoy lacks); the local
  mesh renders the ``authenticated`` form istiod generates without ``UseFilterState``.
  Waypoints always use the filter state (``use_filter_state=True``: ``NewBuilderForService(...,
  true, svc)`` in ``buildWaypointHTTPFilters``, pilot/pkg/networking/core/
  listener_waypoint.go), which their HBONE termination sets from the tunnel's client
  certificate (``%DOWNSTREAM_PEER_URI_SAN%``, pilot/pkg/xds/filters/filters.go).
- A principal in the ``cluster.local`` trust domain names the mesh's trust domain
  [``Bundle.ReplaceTrustDomainAliases``, pilot/pkg/security/trustdomain/bundle.go, with no
  aliases].
- TCP filter chains: hosts, methods, paths and ``request.headers`` are HTTP only. In an ALLOW
  policy such a rule is dropped whole (a smaller allow); in a DENY policy only the HTTP-only
  values are dropped and the rest of the rule still denies (a wider deny: a DENY on methods
  alone denies every TCP connection) [``rule.checkError``, model.go].
- Denials: the HTTP filter answers ``403`` with body ``RBAC: access denied``, the network
  filter closes the connection (Envoy's RBAC filters; stat prefix ``tcp.`` on TCP chains
  [``RBACTCPFilterStatPrefix``]).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from pytest_meshconform.istio.api import (
    AuthorizationPolicy,
    AuthzAction,
    AuthzCondition,
    AuthzOperation,
    AuthzRule,
    AuthzSource,
)
from pytest_meshconform.istio.envoy import HTTP_RBAC_TYPE, NETWORK_RBAC_TYPE
from pytest_meshconform.istio.selection import age_key, in_scope, is_subset
from pytest_meshconform.mesh import Workload

__all__ = [
    "EXT_AUTHZ_SHADOW_PREFIX",
    "HTTP_RBAC_FILTER",
    "NETWORK_RBAC_FILTER",
    "RBAC_DENIED_BODY",
    "Authorization",
    "RbacFilter",
    "authorization_for",
    "authorization_policies_for",
    "build_authorization",
    "rbac_policy_name",
]

HTTP_RBAC_FILTER: Final = "envoy.filters.http.rbac"
NETWORK_RBAC_FILTER: Final = "envoy.filters.network.rbac"
RBAC_DENIED_BODY: Final = "RBAC: access denied"
TCP_STAT_PREFIX: Final = "tcp."
SHADOW_ALLOW_PREFIX: Final = "istio_dry_run_allow_"
SHADOW_DENY_PREFIX: Final = "istio_dry_run_deny_"
# CUSTOM's RBAC filters (shadow only, for ext_authz), pilot/pkg/security/authz/model/model.go
# ``RBACExtAuthzShadowRulesStatPrefix``: not AuthorizationPolicy ALLOW/DENY
EXT_AUTHZ_SHADOW_PREFIX: Final = "istio_ext_authz_"
DEFAULT_TRUST_DOMAIN: Final = "cluster.local"
SPIFFE_PREFIX: Final = "spiffe://"

_NEVER: Final[Mapping[str, Any]] = {
    "permissions": [{"not_rule": {"any": True}}],
    "principals": [{"not_id": {"any": True}}],
}


class _HttpOnly(Exception):
    """A value that cannot be checked on a TCP filter chain (istiod: "... is HTTP only")."""


@dataclass(frozen=True, slots=True)
class RbacFilter:
    """One Envoy RBAC filter istiod puts on a sidecar's inbound filter chains.

    ``rules`` / ``shadow_rules`` map policy names to Envoy ``config.rbac.v3.Policy`` JSON;
    ``None`` when the filter has no such block (``rules=None``: it enforces nothing).
    """

    action: AuthzAction
    rules: Mapping[str, Mapping[str, Any]] | None = field(hash=False)
    shadow_rules: Mapping[str, Mapping[str, Any]] | None = field(hash=False)

    def __post_init__(self) -> None:
        for name in ("rules", "shadow_rules"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, MappingProxyType(dict(value)))

    @property
    def policy_names(self) -> frozenset[str]:
        return frozenset(self.rules or ())

    @property
    def shadow_policy_names(self) -> frozenset[str]:
        return frozenset(self.shadow_rules or ())

    def _rbac(self, policies: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.action is AuthzAction.DENY:  # ALLOW is the proto default: not written
            out["action"] = "DENY"
        if policies:
            out["policies"] = {name: _thaw(policy) for name, policy in sorted(policies.items())}
        return out

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {}
        if self.rules is not None:
            config["rules"] = self._rbac(self.rules)
        if self.shadow_rules is not None:
            config["shadow_rules"] = self._rbac(self.shadow_rules)
        deny_shadow = self.shadow_rules is not None and self.action is AuthzAction.DENY
        config["shadow_rules_stat_prefix"] = (
            SHADOW_DENY_PREFIX if deny_shadow else SHADOW_ALLOW_PREFIX
        )
        return config

    def http_filter(self) -> dict[str, Any]:
        """The ``envoy.filters.http.rbac`` HTTP filter (builder ``buildHTTP``)."""
        return {
            "name": HTTP_RBAC_FILTER,
            "typed_config": {"@type": HTTP_RBAC_TYPE, **self._config()},
        }

    def network_filter(self) -> dict[str, Any]:
        """The ``envoy.filters.network.rbac`` network filter (builder ``buildTCP``)."""
        config = {"@type": NETWORK_RBAC_TYPE, **self._config(), "stat_prefix": TCP_STAT_PREFIX}
        return {"name": NETWORK_RBAC_FILTER, "typed_config": config}


@dataclass(frozen=True, slots=True)
class Authorization:
    """What a server sidecar enforces: the policies that apply (istiod's order) and the RBAC
    filters for its HTTP filter chains (``http``) and TCP filter chains (``tcp``), DENY first.
    Both empty: no policy applies, everything is allowed."""

    workload: Workload
    policies: tuple[AuthorizationPolicy, ...]
    http: tuple[RbacFilter, ...]
    tcp: tuple[RbacFilter, ...]

    def http_filters(self) -> list[dict[str, Any]]:
        return [rbac.http_filter() for rbac in self.http]

    def network_filters(self) -> list[dict[str, Any]]:
        return [rbac.network_filter() for rbac in self.tcp]


def rbac_policy_name(namespace: str, name: str, index: int) -> str:
    """``ns[<namespace>]-policy[<name>]-rule[<index>]`` (builder ``policyName``)."""
    return f"ns[{namespace}]-policy[{name}]-rule[{index}]"


def authorization_policies_for(
    workload: Workload,
    policies: Iterable[object],
    root_namespace: str = "istio-system",
) -> tuple[AuthorizationPolicy, ...]:
    """The AuthorizationPolicies that apply to ``workload``, in istiod's order.

    A policy without a namespace lives in ``default``; other kinds are ignored.
    """
    chosen = []
    for policy in policies:
        if not isinstance(policy, AuthorizationPolicy) or policy.target_refs:
            continue
        namespace = policy.namespace or "default"
        if not in_scope(namespace, workload.namespace, root_namespace):
            continue
        if is_subset(policy.selector or {}, workload.labels):
            chosen.append(policy)
    chosen.sort(key=lambda p: age_key(p, p.namespace or "default"))
    return tuple(chosen)


def authorization_for(
    workload: Workload,
    policies: Iterable[object],
    *,
    root_namespace: str = "istio-system",
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
) -> Authorization:
    """What ``workload``'s sidecar enforces under ``policies`` (istiod's authz builder)."""
    applying = authorization_policies_for(workload, policies, root_namespace)
    return build_authorization(workload, applying, trust_domain=trust_domain)


def build_authorization(
    workload: Workload,
    applying: tuple[AuthorizationPolicy, ...],
    *,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    use_filter_state: bool = False,
) -> Authorization:
    """The RBAC filters istiod's authz builder makes from the policies that apply, in order
    (``builder.New`` + ``BuildHTTP``/``BuildTCP``); ``use_filter_state``: peer identities
    matched on the ``io.istio.peer_principal`` filter state, as on waypoints."""
    http: list[RbacFilter] = []
    tcp: list[RbacFilter] = []
    for action in (AuthzAction.DENY, AuthzAction.ALLOW):
        chosen = [p for p in applying if p.action is action]
        if not chosen:
            continue
        for for_tcp, out in ((False, http), (True, tcp)):
            out.append(
                _build(
                    chosen,
                    action,
                    for_tcp=for_tcp,
                    trust_domain=trust_domain,
                    use_filter_state=use_filter_state,
                )
            )
    return Authorization(workload, applying, tuple(http), tuple(tcp))


def _build(
    policies: list[AuthorizationPolicy],
    action: AuthzAction,
    *,
    for_tcp: bool,
    trust_domain: str,
    use_filter_state: bool = False,
) -> RbacFilter:
    """builder ``build``: enforced and shadow (dry-run) policies of one action."""
    enforced: dict[str, Mapping[str, Any]] = {}
    shadow: dict[str, Mapping[str, Any]] = {}
    has_enforced = has_shadow = False
    for policy in policies:
        if policy.dry_run:
            target, has_shadow = shadow, True
        else:
            target, has_enforced = enforced, True
        namespace = policy.namespace or "default"
        for index, rule in enumerate(policy.rules):
            generated = _generate(rule, action, _Target(for_tcp, trust_domain, use_filter_state))
            if generated is not None:
                target[rbac_policy_name(namespace, policy.name, index)] = generated
        if not policy.rules:
            target[rbac_policy_name(namespace, policy.name, 0)] = _NEVER
    return RbacFilter(
        action=action,
        rules=enforced if has_enforced else None,
        shadow_rules=shadow if has_shadow else None,
    )


# ------------------------------------------------------------------- one rule (model.go)

_Field = tuple[str, tuple[str, ...], tuple[str, ...]]  # key, values, notValues


def _permission_fields(operation: AuthzOperation | None, when: list[_Field]) -> list[_Field]:
    """``New``: hosts, methods, paths, ports in front of the ``when`` destination keys."""
    front: list[_Field] = []
    if operation is not None:
        front = [
            ("hosts", operation.hosts, operation.not_hosts),
            ("methods", operation.methods, operation.not_methods),
            ("paths", operation.paths, operation.not_paths),
            ("ports", operation.ports, operation.not_ports),
        ]
    return [f for f in front if f[1] or f[2]] + when


def _principal_fields(source: AuthzSource | None, when: list[_Field]) -> list[_Field]:
    """``New``: principals, namespaces, ipBlocks in front of the ``when`` source keys."""
    front: list[_Field] = []
    if source is not None:
        front = [
            ("principals", source.principals, source.not_principals),
            ("namespaces", source.namespaces, source.not_namespaces),
            ("ipBlocks", source.ip_blocks, source.not_ip_blocks),
        ]
    return [f for f in front if f[1] or f[2]] + when


_DESTINATION_KEYS: Final = frozenset({"destination.port", "connection.sni"})
# the filter state key waypoints match peer identities on (principal.go principalAuthenticated)
PEER_PRINCIPAL_FILTER_STATE: Final = "io.istio.peer_principal"


@dataclass(frozen=True, slots=True)
class _Target:
    """Where the filter goes: a TCP chain or not, the trust domain, and whether peer identities
    are read from the filter state (waypoints) or the connection's certificate."""

    for_tcp: bool
    trust_domain: str
    use_filter_state: bool = False


def _generate(rule: AuthzRule, action: AuthzAction, target: _Target) -> Mapping[str, Any] | None:
    """``Model.Generate``: the Envoy policy of one rule, or None when istiod skips it."""
    conditions: tuple[AuthzCondition, ...] = rule.conditions
    when_permissions = [
        (c.key, c.values, c.not_values) for c in conditions if c.key in _DESTINATION_KEYS
    ]
    when_principals = [
        (c.key, c.values, c.not_values) for c in conditions if c.key not in _DESTINATION_KEYS
    ]
    operations: list[AuthzOperation | None] = list(rule.operations) or [None]
    sources: list[AuthzSource | None] = list(rule.sources) or [None]
    try:
        permissions = [
            _and(
                "and_rules",
                "rules",
                _matchers(_permission_fields(op, when_permissions), action, target),
            )
            for op in operations
        ]
        principals = [
            _and(
                "and_ids",
                "ids",
                _matchers(_principal_fields(src, when_principals), action, target),
            )
            for src in sources
        ]
    except _HttpOnly:
        return None  # ALLOW: the whole rule is dropped on a TCP chain
    return {"permissions": permissions, "principals": principals}


def _and(kind: str, items: str, matchers: list[dict[str, Any]]) -> dict[str, Any]:
    return {kind: {items: matchers or [{"any": True}]}}


def _matchers(fields: list[_Field], action: AuthzAction, target: _Target) -> list[dict[str, Any]]:
    """``rule.permission`` / ``rule.principal``: OR of values, then NOT(OR(notValues))."""
    out: list[dict[str, Any]] = []
    for key, values, not_values in fields:
        permission = key in ("hosts", "methods", "paths", "ports", *_DESTINATION_KEYS)
        or_kind, items = ("or_rules", "rules") if permission else ("or_ids", "ids")
        not_kind = "not_rule" if permission else "not_id"
        for negate, group in ((False, values), (True, not_values)):
            matched = []
            for value in group:
                try:
                    matched.append(_matcher(key, value, target))
                except _HttpOnly:
                    if action is AuthzAction.ALLOW:
                        raise
                    # DENY: the value is ignored, the rest of the rule still denies.
            if matched:
                either = {or_kind: {items: matched}}
                out.append({not_kind: either} if negate else either)
    return out


_HTTP_ONLY: Final = frozenset({"hosts", "methods", "paths"})


def _matcher(key: str, value: str, target: _Target) -> dict[str, Any]:
    """One value of one field as an Envoy permission or principal (generator.go)."""
    for_tcp, trust_domain = target.for_tcp, target.trust_domain
    if for_tcp and (key in _HTTP_ONLY or key.startswith("request.headers")):
        raise _HttpOnly(key)
    if key == "hosts":  # hostGenerator: :authority, case-insensitive
        return {"header": _header_matcher(":authority", value, ignore_case=True)}
    if key == "methods":  # methodGenerator
        return {"header": _header_matcher(":method", value)}
    if key == "paths":  # pathGenerator: url_path (the path without the query)
        return {"url_path": {"path": _string_matcher(value)}}
    if key in ("ports", "destination.port"):  # destPortGenerator
        return {"destination_port": int(value)}
    if key == "connection.sni":  # connSNIGenerator
        return {"requested_server_name": _string_matcher(value)}
    if key in ("principals", "source.principal"):  # srcPrincipalGenerator
        principal = _migrate_trust_domain(value, trust_domain)
        return _peer(_string_matcher(principal, SPIFFE_PREFIX), target)
    if key in ("namespaces", "source.namespace"):  # srcNamespaceGenerator
        regex = f".*/ns/{value.replace('*', '.*')}/.*"
        return _peer({"safe_regex": {"regex": regex}}, target)
    if key in ("ipBlocks", "source.ip"):  # srcIPGenerator: direct_remote_ip
        return {"direct_remote_ip": _cidr(value)}
    header = re.fullmatch(r"request\.headers\[(.+)\]", key)
    if header is not None:  # requestHeaderGenerator
        return {"header": _header_matcher(header.group(1), value)}
    raise ValueError(f"unknown authorization attribute {key!r}")  # the parser refuses these


def _peer(name: dict[str, Any], target: _Target) -> dict[str, Any]:
    """``principalAuthenticated``: the certificate's URI SAN, or the filter state."""
    if target.use_filter_state:
        return {"filter_state": {"key": PEER_PRINCIPAL_FILTER_STATE, "string_match": name}}
    return {"authenticated": {"principal_name": name}}


def _migrate_trust_domain(principal: str, trust_domain: str) -> str:
    """``ReplaceTrustDomainAliases`` without aliases: ``cluster.local`` means the mesh's."""
    prefix = DEFAULT_TRUST_DOMAIN + "/"
    if trust_domain != DEFAULT_TRUST_DOMAIN and principal.startswith(prefix):
        return f"{trust_domain}/{principal[len(prefix) :]}"
    return principal


def _string_matcher(value: str, prefix: str = "") -> dict[str, Any]:
    """``StringMatcherWithPrefix``: ``*`` any non-empty, ``x*`` prefix, ``*x`` suffix (with a
    prefix, ``*x`` is the regex ``<prefix>.*x``, unescaped as istiod writes it)."""
    if value == "*":
        return {"safe_regex": {"regex": ".+"}}
    if value.startswith("*"):
        if prefix:
            return {"safe_regex": {"regex": prefix + ".*" + value[1:]}}
        return {"suffix": value[1:]}
    if value.endswith("*"):
        return {"prefix": prefix + value[:-1]}
    return {"exact": prefix + value}


def _header_matcher(name: str, value: str, *, ignore_case: bool = False) -> dict[str, Any]:
    """``HeaderMatcher`` / ``HostMatcher``: ``*`` present, else a string match."""
    if value == "*":
        return {"name": name, "present_match": True}
    if value.startswith("*"):
        match: dict[str, Any] = {"suffix": value[1:]}
    elif value.endswith("*"):
        match = {"prefix": value[:-1]}
    else:
        match = {"exact": value}
    if ignore_case:
        match["ignore_case"] = True
    return {"name": name, "string_match": match}


def _cidr(value: str) -> dict[str, Any]:
    """``AddrStrToCidrRange``: an address is a /32 (/128)."""
    import ipaddress

    network = ipaddress.ip_network(value, strict=False)
    address = value.split("/", 1)[0]
    return {"address_prefix": address, "prefix_len": network.prefixlen}


def _thaw(value: object) -> Any:
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(item) for item in value]
    return value
