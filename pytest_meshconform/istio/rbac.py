"""Envoy's verdict on one request under the RBAC filters istiod builds (pure).

`authorization.py` builds the filters (``rules`` of ``config.rbac.v3.RBAC``); this module
evaluates them as Envoy does, for a request whose attributes are known: the audit's probes
(`audit.discovery`) predict whether a sidecar's authorization lets them through.

Envoy's semantics (envoyproxy/envoy ``source/extensions/filters/common/rbac/``,
``engine_impl.cc`` ``RoleBasedAccessControlEngineImpl::handleAction`` and ``matchers.cc``):

- A filter's ``rules`` with action ALLOW allows a request some policy matches and denies the
  rest; DENY denies a request some policy matches. A policy matches when one of its
  ``permissions`` and one of its ``principals`` match. The filters run in order (istiod puts
  DENY before ALLOW); the first denial ends the request. A filter without ``rules`` enforces
  nothing (dry-run policies only fill ``shadow_rules``).
- ``authenticated`` matches only a TLS connection with a peer certificate: its
  ``principal_name`` is matched against the certificate's URI SAN (``AuthenticatedMatcher``);
  a plaintext peer never matches it. ``filter_state`` (``FilterStateMatcher``) matches a
  string the connection's filter state holds under a key: a waypoint matches peers on
  ``io.istio.peer_principal``, which its HBONE termination sets to the tunnel's client
  certificate's URI SAN (istiod's ``principalAuthenticated`` with ``UseFilterState``); without
  it (no peer certificate) the matcher is false. ``direct_remote_ip`` is the downstream
  peer's address, ``destination_port`` the port the connection arrived on,
  ``requested_server_name`` the SNI (empty without TLS), ``url_path`` the ``:path`` without its
  query, ``header`` a request header (``HeaderMatcher``; on a TCP chain there are no headers).

An attribute the caller does not know (``None``: a client's address, a header the request may
carry) makes a matcher's answer unknown, and the verdict is ``unknown`` unless the rest decides
it (Kleene logic: ``false AND unknown`` is false, ``true OR unknown`` true).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pytest_meshconform.istio.api import AuthzAction
from pytest_meshconform.istio.authorization import (
    PEER_PRINCIPAL_FILTER_STATE,
    Authorization,
    RbacFilter,
)

__all__ = ["RbacRequest", "RbacVerdict", "rbac_verdict"]

RbacVerdict = Literal["allowed", "denied", "unknown"]
_Truth = bool | None  # None: cannot tell


@dataclass(frozen=True, slots=True)
class RbacRequest:
    """What Envoy's RBAC filter sees of one request or connection.

    ``principal``: the peer certificate's URI SAN (``spiffe://...``) on an mTLS connection,
    None for plaintext; at a waypoint, the HBONE tunnel's client identity (its
    ``io.istio.peer_principal`` filter state). ``headers``: the HTTP request's headers
    (lower-case names, ``:path``, ``:method``, ``:authority`` included), None on a TCP chain;
    a header not listed is unknown unless ``headers_complete``. ``source_ip`` None: unknown.
    """

    port: int
    principal: str | None = None
    source_ip: str | None = None
    sni: str = ""
    headers: Mapping[str, str] | None = field(default=None, hash=False)
    headers_complete: bool = False


def rbac_verdict(authorization: Authorization, request: RbacRequest) -> RbacVerdict:
    """``allowed``, ``denied`` or ``unknown`` for ``request`` at the sidecar whose
    authorization this is: its HTTP filters when the request has headers, else its TCP ones."""
    filters = authorization.http if request.headers is not None else authorization.tcp
    unknown = False
    for rbac in filters:
        allowed = _filter_allows(rbac, request)
        if allowed is False:
            return "denied"
        if allowed is None:
            unknown = True
    return "unknown" if unknown else "allowed"


def _filter_allows(rbac: RbacFilter, request: RbacRequest) -> _Truth:
    if rbac.rules is None:
        return True  # shadow rules only: evaluated and counted, never enforced
    matched = _any(_policy_matches(policy, request) for policy in rbac.rules.values())
    if matched is None:
        return None
    return matched if rbac.action is AuthzAction.ALLOW else not matched


def _policy_matches(policy: Mapping[str, Any], request: RbacRequest) -> _Truth:
    permission = _any(_permission(p, request) for p in policy.get("permissions") or ())
    principal = _any(_principal(p, request) for p in policy.get("principals") or ())
    return _all((permission, principal))


def _any(values: Iterable[_Truth]) -> _Truth:
    unknown = False
    for value in values:
        if value is True:
            return True
        if value is None:
            unknown = True
    return None if unknown else False


def _all(values: Iterable[_Truth]) -> _Truth:
    unknown = False
    for value in values:
        if value is False:
            return False
        if value is None:
            unknown = True
    return None if unknown else True


def _not(value: _Truth) -> _Truth:
    return None if value is None else not value


def _permission(matcher: Mapping[str, Any], request: RbacRequest) -> _Truth:
    if matcher.get("any"):
        return True
    if "and_rules" in matcher:
        return _all(_permission(m, request) for m in matcher["and_rules"]["rules"])
    if "or_rules" in matcher:
        return _any(_permission(m, request) for m in matcher["or_rules"]["rules"])
    if "not_rule" in matcher:
        return _not(_permission(matcher["not_rule"], request))
    if "destination_port" in matcher:
        return int(matcher["destination_port"]) == request.port
    if "requested_server_name" in matcher:
        return _string(matcher["requested_server_name"], request.sni)
    if "url_path" in matcher:
        if request.headers is None:
            return False
        path = request.headers.get(":path")
        if path is None:
            return None
        return _string(matcher["url_path"]["path"], path.partition("?")[0])
    if "header" in matcher:
        return _header(matcher["header"], request)
    return None  # a matcher the model does not generate: cannot tell


def _principal(matcher: Mapping[str, Any], request: RbacRequest) -> _Truth:
    if matcher.get("any"):
        return True
    if "and_ids" in matcher:
        return _all(_principal(m, request) for m in matcher["and_ids"]["ids"])
    if "or_ids" in matcher:
        return _any(_principal(m, request) for m in matcher["or_ids"]["ids"])
    if "not_id" in matcher:
        return _not(_principal(matcher["not_id"], request))
    if "authenticated" in matcher:
        if request.principal is None:
            return False  # no peer certificate: never authenticated
        name = matcher["authenticated"].get("principal_name")
        return True if name is None else _string(name, request.principal)
    if "filter_state" in matcher:
        state = matcher["filter_state"]
        if state.get("key") != PEER_PRINCIPAL_FILTER_STATE:
            return None  # a filter state the model does not set: cannot tell
        if request.principal is None:
            return False  # no peer certificate: nothing under the key
        return _string(state.get("string_match") or {}, request.principal)
    if "direct_remote_ip" in matcher:
        if request.source_ip is None:
            return None
        cidr = matcher["direct_remote_ip"]
        network = ipaddress.ip_network(
            f"{cidr['address_prefix']}/{cidr.get('prefix_len', 32)}", strict=False
        )
        return ipaddress.ip_address(request.source_ip) in network
    if "header" in matcher:
        return _header(matcher["header"], request)
    return None


def _header(matcher: Mapping[str, Any], request: RbacRequest) -> _Truth:
    if request.headers is None:
        return False  # a TCP chain has no headers
    name = str(matcher["name"]).lower()
    value = request.headers.get(name)
    if value is None and not request.headers_complete:
        return None
    if matcher.get("present_match"):
        return value is not None
    if value is None:
        return False
    return _string(matcher.get("string_match") or {}, value)


def _string(matcher: Mapping[str, Any], value: str) -> bool:
    """Envoy's ``StringMatcher``: exact, prefix, suffix, contains, safe_regex (whole value)."""
    ignore_case = bool(matcher.get("ignore_case"))
    folded = value.lower() if ignore_case else value

    def fold(text: object) -> str:
        return str(text).lower() if ignore_case else str(text)

    if "exact" in matcher:
        return folded == fold(matcher["exact"])
    if "prefix" in matcher:
        return folded.startswith(fold(matcher["prefix"]))
    if "suffix" in matcher:
        return folded.endswith(fold(matcher["suffix"]))
    if "contains" in matcher:
        return fold(matcher["contains"]) in folded
    if "safe_regex" in matcher:
        return re.fullmatch(matcher["safe_regex"]["regex"], value) is not None
    return False
