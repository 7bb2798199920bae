"""AuthorizationPolicy (``security.istio.io``): the dataclasses, their validation and the builder.

Accepted in ``security.istio.io/v1`` and ``v1beta1``, ALLOW and DENY. What the policies do on
a sidecar (which apply, the RBAC filters) is :mod:`pytest_meshconform.istio.authorization`.

Validation [``ValidateAuthorizationPolicy``, istio/istio pkg/config/validation/validation.go]:
``from``/``to`` not empty when present, each ``source``/``operation`` set and not empty, no
empty values, IPs and CIDRs valid [``security.ValidateIPs``], ports decimal 0..65535
[``security.ValidatePorts``], ``when`` keys known with ``values`` or ``notValues``, a DENY
policy needs ``rules``; the ``istio.io/dry-run`` annotation must parse as Go's
``strconv.ParseBool`` (istiod logs and ignores a bad one; refused here).

``targetRefs`` (and the older single ``targetRef``) bind a policy to a waypoint: the kinds
istiod accepts (``validatePolicyTargetReference``: Service, ServiceEntry, Gateway,
GatewayClass, no ``namespace``), never together with a ``selector``
(``validateOneOfSelectorType``). What they bind to is :mod:`pytest_meshconform.istio.waypoint`.

Refused by name, since meshconform does not model them: AUDIT, CUSTOM, ``provider``, JWT and
service-account fields, ``remoteIpBlocks`` and path templates.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Final

from pytest_meshconform.istio.api.fields import (
    DECIMAL,
    FieldError,
    Meta,
    check_keys,
    checked_manifest,
    empty_map,
    enum_member,
    enum_text,
    freeze_maps,
    mapping,
    object_manifest,
    optional_list,
    parse_envelope,
    parse_selector,
    show,
    string,
    string_list,
)

__all__ = [
    "AUTHORIZATION_POLICY_API_VERSIONS",
    "AUTHZ_WHEN_KEYS",
    "DRY_RUN_ANNOTATION",
    "AuthorizationPolicy",
    "AuthzAction",
    "AuthzCondition",
    "AuthzOperation",
    "AuthzRule",
    "AuthzSource",
    "PolicyTargetRef",
    "authorization_policy",
    "parse_authorization_policy",
]

AUTHORIZATION_POLICY_API_VERSIONS: Final = ("security.istio.io/v1", "security.istio.io/v1beta1")


class AuthzAction(StrEnum):
    """AuthorizationPolicy ``action``; AUDIT and CUSTOM are refused when parsing."""

    ALLOW = "ALLOW"
    DENY = "DENY"


# The ``when`` keys accepted (istio/istio pilot/pkg/security/authz/model/model.go ``New``,
# without the JWT ``request.auth.*`` keys, ``remote.ip``, ``destination.ip`` and the
# experimental ones); ``request.headers[<name>]`` is matched by prefix.
AUTHZ_WHEN_KEYS: Final = (
    "request.headers[<name>]",
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.port",
    "connection.sni",
)
DRY_RUN_ANNOTATION: Final = "istio.io/dry-run"
# strconv.ParseBool, which istiod's isDryRun (pilot/pkg/security/authz/builder) uses.
_GO_TRUE: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE: Final = frozenset({"0", "f", "F", "FALSE", "false", "False"})


@dataclass(frozen=True, slots=True)
class PolicyTargetRef:
    """``targetRefs[]`` (``istio.type.v1beta1.PolicyTargetReference``): what a policy binds to
    instead of selecting workloads. ``group`` is as written (``""`` is the core group)."""

    kind: str
    name: str
    group: str = ""

    @property
    def canonical_group(self) -> str:
        """``config.CanonicalGroup``: the core group is ``core``."""
        return self.group or "core"

    def to_manifest(self) -> dict[str, Any]:
        return {"group": self.group, "kind": self.kind, "name": self.name}


# validation.go ``allowedTargetRefs``: (canonical group, kind), and how istiod prints the list
# (``%v`` of its GroupVersionKinds: CanonicalGroup/Version/Kind)
_TARGET_REF_KINDS: Final = (
    ("core", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
)
_TARGET_REF_KINDS_TEXT: Final = (
    "[core/v1/Service networking.istio.io/v1/ServiceEntry gateway.networking.k8s.io/v1/Gateway"
    " gateway.networking.k8s.io/v1/GatewayClass]"
)


@dataclass(frozen=True, slots=True)
class AuthzSource:
    """``rules[].from[].source``: who the caller is (all lists are ORed, fields ANDed)."""

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()

    def to_manifest(self) -> dict[str, Any]:
        return _authz_fields(self, _SOURCE_KEYS)


@dataclass(frozen=True, slots=True)
class AuthzOperation:
    """``rules[].to[].operation``: what is called (ports are strings, as in the API)."""

    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    not_ports: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()

    def to_manifest(self) -> dict[str, Any]:
        return _authz_fields(self, _OPERATION_KEYS)


@dataclass(frozen=True, slots=True)
class AuthzCondition:
    """``rules[].when[]``: ``key`` with ``values`` and/or ``notValues``."""

    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()

    def to_manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key}
        if self.values:
            out["values"] = list(self.values)
        if self.not_values:
            out["notValues"] = list(self.not_values)
        return out


@dataclass(frozen=True, slots=True)
class AuthzRule:
    """One rule: any ``from`` AND any ``to`` AND every ``when``; empty parts match anything."""

    sources: tuple[AuthzSource, ...] = ()
    operations: tuple[AuthzOperation, ...] = ()
    conditions: tuple[AuthzCondition, ...] = ()

    def to_manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.sources:
            out["from"] = [{"source": source.to_manifest()} for source in self.sources]
        if self.operations:
            out["to"] = [{"operation": op.to_manifest()} for op in self.operations]
        if self.conditions:
            out["when"] = [condition.to_manifest() for condition in self.conditions]
        return out


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    """An AuthorizationPolicy (``security.istio.io``): ALLOW or DENY on a server's sidecar.

    ``selector`` is ``selector.matchLabels`` (``None`` without one: namespace-wide, or
    mesh-wide in the root namespace). ``rules`` empty means the policy matches nothing (an
    ALLOW policy without rules allows nothing); ``rules: [{}]`` matches everything.
    ``dry_run`` comes from the ``istio.io/dry-run`` annotation. Build one with
    :func:`authorization_policy` or :func:`parse_policy`.
    """

    kind: ClassVar[str] = "AuthorizationPolicy"

    name: str
    namespace: str | None
    action: AuthzAction = AuthzAction.ALLOW
    rules: tuple[AuthzRule, ...] = ()
    selector: Mapping[str, str] | None = field(default=None, hash=False)
    api_version: str = AUTHORIZATION_POLICY_API_VERSIONS[0]
    creation_timestamp: datetime | None = None
    labels: Mapping[str, str] = field(default_factory=empty_map, hash=False)
    annotations: Mapping[str, str] = field(default_factory=empty_map, hash=False)
    # ``targetRefs`` (or the older ``targetRef``, kept apart to write it back as given): a
    # policy with either binds to waypoints only (``model.GetTargetRefs``)
    target_refs: tuple[PolicyTargetRef, ...] = ()
    legacy_target_ref: bool = False

    def __post_init__(self) -> None:
        freeze_maps(self, "selector", "labels", "annotations")

    @property
    def dry_run(self) -> bool:
        """``istio.io/dry-run: "true"``: the rules are shadow rules, never enforced."""
        return self.annotations.get(DRY_RUN_ANNOTATION, "false") in _GO_TRUE

    def to_manifest(self) -> dict[str, Any]:
        """The object as a plain dict, ready for ``yaml.safe_dump`` or ``kubectl apply``."""
        spec: dict[str, Any] = {}
        if self.selector is not None:
            spec["selector"] = {"matchLabels": dict(self.selector)}
        if self.legacy_target_ref and self.target_refs:
            spec["targetRef"] = self.target_refs[0].to_manifest()
        elif self.target_refs:
            spec["targetRefs"] = [ref.to_manifest() for ref in self.target_refs]
        spec["action"] = self.action.value
        if self.rules:
            spec["rules"] = [rule.to_manifest() for rule in self.rules]
        return object_manifest(self, spec)


_SOURCE_KEYS: Final = {
    "principals": "principals",
    "notPrincipals": "not_principals",
    "namespaces": "namespaces",
    "notNamespaces": "not_namespaces",
    "ipBlocks": "ip_blocks",
    "notIpBlocks": "not_ip_blocks",
}
_OPERATION_KEYS: Final = {
    "hosts": "hosts",
    "notHosts": "not_hosts",
    "ports": "ports",
    "notPorts": "not_ports",
    "methods": "methods",
    "notMethods": "not_methods",
    "paths": "paths",
    "notPaths": "not_paths",
}


def _authz_fields(obj: object, keys: Mapping[str, str]) -> dict[str, Any]:
    return {key: list(getattr(obj, attr)) for key, attr in keys.items() if getattr(obj, attr)}


# Fields Istio accepts that this project does not model (JWT, remote IPs, service accounts,
# CUSTOM providers): refused by name rather than silently ignored.
_AUTHZ_UNSUPPORTED_SPEC: Final = ("provider",)
_AUTHZ_UNSUPPORTED_SOURCE: Final = (
    "requestPrincipals",
    "notRequestPrincipals",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
    "serviceAccounts",
    "notServiceAccounts",
)
_AUTHZ_UNSUPPORTED_WHEN: Final = (
    "request.auth.",
    "remote.ip",
    "destination.ip",
    "experimental.envoy.filters.",
    "source.serviceAccount",
)
_AUTHZ_HEADER_KEY = re.compile(r"request\.headers\[([^\[\]]+)\]")


def parse_authorization_policy(
    document: Mapping[str, Any], namespace: str | None
) -> AuthorizationPolicy:
    """One AuthorizationPolicy object (its ``kind`` already read); raises
    :class:`.FieldError`, which :mod:`.parse` turns into a :class:`.PolicyError` naming the
    document."""
    api_version, meta, spec = parse_envelope(
        document, AuthorizationPolicy.kind, AUTHORIZATION_POLICY_API_VERSIONS, namespace
    )
    return _parse_spec(spec or {}, api_version, meta)


def _parse_spec(spec: Mapping[str, Any], api_version: str, meta: Meta) -> AuthorizationPolicy:
    """ValidateAuthorizationPolicy (pkg/config/validation/validation.go) for the fields
    modelled here; the rest of the API is refused by name."""
    for key in _AUTHZ_UNSUPPORTED_SPEC:
        if spec.get(key) is not None:
            raise FieldError(f"spec.{key}", "is not supported by meshconform (CUSTOM providers)")
    check_keys(spec, {"selector", "targetRef", "targetRefs", "action", "rules"}, "spec")
    selector = parse_selector(spec, "selector", "spec")
    target_refs, legacy = _parse_target_refs(spec)
    given = (selector, spec.get("targetRef"), spec.get("targetRefs") or None)
    if sum(part is not None for part in given) > 1:  # validateOneOfSelectorType
        raise FieldError("spec", "only one of targetRefs or workloadSelector can be set")
    raw_action = spec.get("action")
    if raw_action is None:
        action = AuthzAction.ALLOW
    elif raw_action in ("AUDIT", "CUSTOM"):
        raise FieldError(
            "spec.action",
            f"{raw_action} is not supported by meshconform (supported: ALLOW, DENY); AUDIT needs"
            " a telemetry provider and CUSTOM an external authorizer",
        )
    else:
        action = enum_member(AuthzAction, raw_action, "spec.action")
    raw_rules = spec.get("rules")
    if raw_rules is None and action is AuthzAction.DENY:
        raise FieldError(
            "spec.rules",
            "DENY action without `rules` is meaningless as it will never be triggered, add an"
            " empty rule `{}` if you want it be triggered for every request",
        )
    rules = tuple(
        _parse_authz_rule(item, f"spec.rules[{index}]")
        for index, item in enumerate(optional_list(spec, "rules", "spec"))
    )
    dry_run = meta.annotations.get(DRY_RUN_ANNOTATION)
    if dry_run is not None and dry_run not in _GO_TRUE | _GO_FALSE:
        raise FieldError(
            f"metadata.annotations[{DRY_RUN_ANNOTATION!r}]",
            f"{show(dry_run)} is not a boolean (istiod parses it with Go's strconv.ParseBool:"
            ' "true" or "false")',
        )
    return AuthorizationPolicy(
        name=meta.name,
        namespace=meta.namespace,
        action=action,
        rules=rules,
        selector=selector,
        api_version=api_version,
        creation_timestamp=meta.creation_timestamp,
        labels=meta.labels,
        annotations=meta.annotations,
        target_refs=target_refs,
        legacy_target_ref=legacy,
    )


def _parse_target_refs(spec: Mapping[str, Any]) -> tuple[tuple[PolicyTargetRef, ...], bool]:
    """``targetRefs``, else ``targetRef`` (``model.GetTargetRefs``), each checked as
    ``validatePolicyTargetReference`` checks it; True when the older ``targetRef`` was used."""
    refs = [
        _parse_target_ref(item, f"spec.targetRefs[{index}]")
        for index, item in enumerate(optional_list(spec, "targetRefs", "spec"))
    ]
    single = spec.get("targetRef")
    if single is not None:
        ref = _parse_target_ref(single, "spec.targetRef")
        if not refs:
            return (ref,), True
    return tuple(refs), False


def _parse_target_ref(value: object, path: str) -> PolicyTargetRef:
    ref = mapping(value, path)
    check_keys(ref, {"group", "kind", "name", "namespace"}, path)
    group = string(ref.get("group", ""), f"{path}.group")
    kind = string(ref.get("kind", ""), f"{path}.kind")
    name = string(ref.get("name", ""), f"{path}.name")
    if not name:
        raise FieldError(path, "targetRef name must be set")
    if ref.get("namespace"):
        raise FieldError(
            f"{path}.namespace",
            "targetRef namespace must not be set; cross namespace referencing is not supported",
        )
    target = PolicyTargetRef(kind, name, group)
    if (target.canonical_group, kind) not in _TARGET_REF_KINDS:
        raise FieldError(
            path, f"targetRef must be to one of {_TARGET_REF_KINDS_TEXT} but was {group}/{kind}"
        )
    return target


def _parse_authz_rule(value: object, path: str) -> AuthzRule:
    if value is None:
        raise FieldError(path, "`rule` must not be nil")
    rule = mapping(value, path)
    check_keys(rule, {"from", "to", "when"}, path)
    sources: list[AuthzSource] = []
    if rule.get("from") is not None:
        items = optional_list(rule, "from", path)
        if not items:
            raise FieldError(f"{path}.from", "`from` must not be empty")
        for index, item in enumerate(items):
            where = f"{path}.from[{index}]"
            entry = mapping(item, where) if item is not None else {}
            check_keys(entry, {"source"}, where)
            if entry.get("source") is None:
                raise FieldError(f"{where}.source", "`from.source` must not be nil")
            sources.append(_parse_authz_source(mapping(entry["source"], f"{where}.source"), where))
    operations: list[AuthzOperation] = []
    if rule.get("to") is not None:
        items = optional_list(rule, "to", path)
        if not items:
            raise FieldError(f"{path}.to", "`to` must not be empty")
        for index, item in enumerate(items):
            where = f"{path}.to[{index}]"
            entry = mapping(item, where) if item is not None else {}
            check_keys(entry, {"operation"}, where)
            if entry.get("operation") is None:
                raise FieldError(f"{where}.operation", "`to.operation` must not be nil")
            operations.append(
                _parse_authz_operation(mapping(entry["operation"], f"{where}.operation"), where)
            )
    conditions = tuple(
        _parse_authz_condition(item, f"{path}.when[{index}]")
        for index, item in enumerate(optional_list(rule, "when", path))
    )
    return AuthzRule(tuple(sources), tuple(operations), conditions)


def _authz_values(obj: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
    """A list of non-empty strings (security.CheckEmptyValues)."""
    where = f"{path}.{key}"
    values = string_list(obj.get(key), where)
    for index, item in enumerate(values):
        if not item:
            raise FieldError(f"{where}[{index}]", f"empty value not allowed, found in {key}")
    return tuple(values)


def _parse_authz_source(source: Mapping[str, Any], parent: str) -> AuthzSource:
    path = f"{parent}.source"
    for key in _AUTHZ_UNSUPPORTED_SOURCE:
        if source.get(key) is not None:
            raise FieldError(
                f"{path}.{key}",
                "is not supported by meshconform (JWT, remote IPs and service accounts are not"
                f" modelled); supported: {', '.join(_SOURCE_KEYS)}",
            )
    check_keys(source, set(_SOURCE_KEYS), path)
    values = {attr: _authz_values(source, key, path) for key, attr in _SOURCE_KEYS.items()}
    if not any(values.values()):
        raise FieldError(path, "`from.source` must not be empty")
    for key in ("ipBlocks", "notIpBlocks"):
        for index, block in enumerate(values[_SOURCE_KEYS[key]]):
            _check_ip_block(block, f"{path}.{key}[{index}]")
    return AuthzSource(**values)


def _parse_authz_operation(operation: Mapping[str, Any], parent: str) -> AuthzOperation:
    path = f"{parent}.operation"
    check_keys(operation, set(_OPERATION_KEYS), path)
    values = {attr: _authz_values(operation, key, path) for key, attr in _OPERATION_KEYS.items()}
    if not any(values.values()):
        raise FieldError(path, "`to.operation` must not be empty")
    for key in ("ports", "notPorts"):
        for index, port in enumerate(values[_OPERATION_KEYS[key]]):
            _check_authz_port(port, f"{path}.{key}[{index}]")
    for key in ("paths", "notPaths"):
        for index, item in enumerate(values[_OPERATION_KEYS[key]]):
            if "{" in item or "}" in item:
                raise FieldError(
                    f"{path}.{key}[{index}]",
                    "path templates ({*}, {**}) are not supported by meshconform",
                )
    return AuthzOperation(**values)


def _parse_authz_condition(value: object, path: str) -> AuthzCondition:
    if value is None:
        raise FieldError(path, "when field cannot be nil")
    condition = mapping(value, path)
    check_keys(condition, {"key", "values", "notValues"}, path)
    key = string(condition.get("key", ""), f"{path}.key")
    if not key:
        raise FieldError(f"{path}.key", "`key` must not be empty")
    supported = ", ".join(AUTHZ_WHEN_KEYS)
    if key.startswith(_AUTHZ_UNSUPPORTED_WHEN):
        raise FieldError(
            f"{path}.key", f"{show(key)} is not supported by meshconform; supported: {supported}"
        )
    header = _AUTHZ_HEADER_KEY.fullmatch(key)
    if key not in AUTHZ_WHEN_KEYS and header is None:
        hint = " (write request.headers[<name>])" if key.startswith("request.headers") else ""
        raise FieldError(f"{path}.key", f"unknown attribute {show(key)}{hint}; known: {supported}")
    values = _authz_values(condition, "values", path)
    not_values = _authz_values(condition, "notValues", path)
    if not values and not not_values:
        raise FieldError(path, f"at least one of `values` or `notValues` must be set for key {key}")
    for field_name, items in (("values", values), ("notValues", not_values)):
        for index, item in enumerate(items):
            where = f"{path}.{field_name}[{index}]"
            if key == "source.ip":
                _check_ip_block(item, where)
            elif key == "destination.port":
                _check_authz_port(item, where)
    return AuthzCondition(key, values, not_values)


def _check_ip_block(value: str, path: str) -> None:
    """security.ValidateIPs: an IP address or a CIDR block."""
    try:
        if "/" in value:
            ipaddress.ip_network(value, strict=False)
        else:
            ipaddress.ip_address(value)
    except ValueError:
        raise FieldError(path, f"{show(value)} is not a valid IP address or CIDR") from None


def _check_authz_port(value: str, path: str) -> None:
    """security.ValidatePorts: a decimal port 0..65535."""
    if not DECIMAL.fullmatch(value) or len(value) > 5 or int(value) > 65535:
        raise FieldError(path, f"{show(value)} is not a port number (0..65535, as a string)")


def authorization_policy(
    name: str,
    namespace: str | None,
    action: AuthzAction | str = AuthzAction.ALLOW,
    rules: Iterable[Mapping[str, Any]] | None = None,
    selector: Mapping[str, str] | None = None,
    *,
    target_refs: Iterable[Mapping[str, str]] | None = None,
    dry_run: bool = False,
    api_version: str = AUTHORIZATION_POLICY_API_VERSIONS[0],
) -> dict[str, Any]:
    """An AuthorizationPolicy manifest (plain dict); raises PolicyError if Istio would reject it.

    ``rules`` are written as the API has them (``[{"from": [{"source": {"principals":
    [...]}}]}]``; ``[{}]`` matches everything, ``None`` writes no rules: an ALLOW policy that
    allows nothing). ``selector`` becomes ``selector.matchLabels``; ``target_refs`` the
    ``targetRefs`` that bind the policy to a waypoint (``[{"kind": "Service", "group": "",
    "name": "httpbin"}]``, or ``kind: Gateway``, ``group: gateway.networking.k8s.io``);
    ``dry_run`` sets the ``istio.io/dry-run`` annotation.
    """
    __tracebackhide__ = True  # a bad policy points at the suite's line
    spec: dict[str, Any] = {"action": enum_text(action)}
    if selector is not None:
        spec["selector"] = {"matchLabels": dict(selector)}
    if target_refs is not None:
        spec["targetRefs"] = [dict(ref) for ref in target_refs]
    if rules is not None:
        spec["rules"] = [dict(rule) for rule in rules]
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    if dry_run:
        metadata["annotations"] = {DRY_RUN_ANNOTATION: "true"}
    manifest = {
        "apiVersion": api_version,
        "kind": AuthorizationPolicy.kind,
        "metadata": metadata,
        "spec": spec,
    }
    return checked_manifest(parse_authorization_policy, manifest)
