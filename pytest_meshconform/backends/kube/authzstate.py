"""A sidecar's AuthorizationPolicy state, read from its Envoy ``/config_dump`` (pure).

istiod puts its RBAC filters on every chain of the ``virtualInbound`` listener: an
``envoy.filters.http.rbac`` HTTP filter in each HTTP connection manager, an
``envoy.filters.network.rbac`` network filter on each TCP chain, DENY before ALLOW, each
naming its policies ``ns[<ns>]-policy[<name>]-rule[<i>]`` in ``rules`` (enforced) or
``shadow_rules`` (dry-run). :func:`authz_mismatches` compares what each chain carries with the
Istio model's :class:`pytest_meshconform.istio.Authorization`: the kube backend waits until it
finds nothing, i.e. until the policies just applied are in force on every chain.

The blackhole chain (15006) carries no RBAC and is skipped; CUSTOM's ext_authz RBAC filters
(shadow prefix ``istio_ext_authz_``) are not AuthorizationPolicy ALLOW/DENY and are ignored.
Principals are not compared (1.19+ proxies match them on Istio's filter state, the local mesh
on ``authenticated``): the policy names say which rules are in force.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_meshconform.evidence.config_dump import (
    ConfigDumpError,
    active_listener,
    load_json,
    read_chain_port,
    read_network_filters,
    sections,
)
from pytest_meshconform.istio import Authorization, RbacFilter
from pytest_meshconform.istio.authorization import EXT_AUTHZ_SHADOW_PREFIX
from pytest_meshconform.istio.envoy import (
    HCM_TYPE,
    HTTP_RBAC_TYPE,
    INBOUND_CAPTURE_PORT,
    NETWORK_RBAC_TYPE,
    VIRTUAL_INBOUND,
    VIRTUAL_INBOUND_BLACKHOLE,
)

__all__ = [
    "ChainAuthz",
    "SeenRbac",
    "authz_mismatches",
    "chain_authz",
    "expected_rbac",
    "listener_chains",
    "parse_inbound_authz",
    "rbac_agrees",
]


@dataclass(frozen=True, slots=True)
class SeenRbac:
    """One RBAC filter as a chain carries it: its action and policy names."""

    action: str  # "ALLOW" or "DENY"
    policies: frozenset[str]
    shadow_policies: frozenset[str]
    enforcing: bool  # has a ``rules`` block

    def describe(self) -> str:
        parts = [f"{self.action}{sorted(self.policies)}" if self.enforcing else self.action]
        if not self.enforcing:
            parts.append("(no rules)")
        if self.shadow_policies:
            parts.append(f"shadow{sorted(self.shadow_policies)}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class ChainAuthz:
    """The RBAC filters of one ``virtualInbound`` filter chain (``problem``: unreadable)."""

    name: str
    port: int | None
    http: bool
    filters: tuple[SeenRbac, ...]
    problem: str | None = None

    def describe(self) -> str:
        where = f"port {self.port}" if self.port is not None else "passthrough"
        kind = "HTTP" if self.http else "TCP"
        return f"virtualInbound chain {self.name or '?'} ({where}, {kind})"


def _rbac(config: Mapping[str, Any]) -> SeenRbac | None:
    if config.get("shadow_rules_stat_prefix") == EXT_AUTHZ_SHADOW_PREFIX:
        return None
    rules = config.get("rules")
    shadow = config.get("shadow_rules")
    block = rules if isinstance(rules, Mapping) else shadow
    action = str(block.get("action", "ALLOW")) if isinstance(block, Mapping) else "ALLOW"

    def names(value: object) -> frozenset[str]:
        if not isinstance(value, Mapping):
            return frozenset()
        policies = value.get("policies")
        return frozenset(str(k) for k in policies) if isinstance(policies, Mapping) else frozenset()

    return SeenRbac(action, names(rules), names(shadow), isinstance(rules, Mapping))


def chain_authz(raw: Mapping[str, Any], where: str) -> ChainAuthz:
    """The RBAC filters one filter chain carries, in order (network filters and the HTTP
    filters of its connection manager); ``problem`` when the chain cannot be read."""
    name = raw.get("name")
    name = name if isinstance(name, str) else ""
    try:
        port = read_chain_port(raw, where)
        filters: list[SeenRbac] = []
        http = False
        for network in read_network_filters(raw, where):
            if network.type_url == NETWORK_RBAC_TYPE:
                seen = _rbac(network.config)
                if seen is not None:
                    filters.append(seen)
            elif network.type_url == HCM_TYPE:
                http = True
                for http_filter in network.http_filters():
                    if http_filter.type_url == HTTP_RBAC_TYPE:
                        seen = _rbac(http_filter.config)
                        if seen is not None:
                            filters.append(seen)
    except ConfigDumpError as error:
        return ChainAuthz(name, None, False, (), problem=str(error))
    return ChainAuthz(name, port, http, tuple(filters))


def parse_inbound_authz(data: bytes | str | Mapping[str, Any]) -> tuple[ChainAuthz, ...]:
    """The RBAC filters on each chain of the active ``virtualInbound`` listener (empty when
    the dump has none: a sidecar without inbound listener, or no dump section). A chain that
    cannot be read is kept with the reason, so that it blocks the wait rather than pass."""
    chains = listener_chains(data, VIRTUAL_INBOUND)
    return tuple(
        chain_authz(chain, chain_where)
        for chain_where, chain in chains or ()
        if isinstance(chain, Mapping)
        and chain.get("name") != VIRTUAL_INBOUND_BLACKHOLE
        and _port(chain, chain_where) != INBOUND_CAPTURE_PORT  # the blackhole's
    )


def listener_chains(
    data: bytes | str | Mapping[str, Any], listener_name: str
) -> list[tuple[str, object]] | None:
    """The filter chains (with the path naming each) of the active dynamic listener
    ``listener_name`` of a config dump; None when the dump has no such listener. A listener
    that cannot be read is passed over: the mTLS reader (envoystate) reports it."""
    for section in sections(load_json(data)):
        if section.admin_type != "ListenersConfigDump":
            continue
        for where, raw in section.entries("dynamic_listeners"):
            try:
                name, listener = active_listener(raw, where)
                chains = [] if listener is None else listener.chains()
            except ConfigDumpError:
                continue
            if name == listener_name and listener is not None:
                return chains
    return None


def _port(chain: Mapping[str, Any], where: str) -> int | None:
    try:
        return read_chain_port(chain, where)
    except ConfigDumpError:
        return None  # _chain reports it


def expected_rbac(rbac: RbacFilter) -> SeenRbac:
    """The model's RBAC filter as a chain would carry it (action and policy names)."""
    return SeenRbac(
        rbac.action.value, rbac.policy_names, rbac.shadow_policy_names, rbac.rules is not None
    )


def authz_mismatches(
    chains: Sequence[ChainAuthz], expected: Authorization, *, root_known: bool = True
) -> tuple[str, ...]:
    """How each inbound chain's RBAC filters differ from what the model expects (empty: in
    force everywhere; also for a dump without ``virtualInbound``, which enforces nothing
    inbound to wait for). HTTP chains must carry ``expected.http``, TCP chains
    ``expected.tcp``, in order. ``root_known`` False (the root namespace could not be read):
    a chain may carry more policies than expected, from mesh-wide policies unseen here."""
    found: list[str] = []
    for chain in chains:
        if chain.problem is not None:
            found.append(f"{chain.describe()}: {chain.problem}")
            continue
        want = tuple(expected_rbac(f) for f in (expected.http if chain.http else expected.tcp))
        if rbac_agrees(chain.filters, want, root_known):
            continue
        have = "; ".join(f.describe() for f in chain.filters) or "no RBAC filter"
        wanted = "; ".join(f.describe() for f in want) or "no RBAC filter"
        found.append(f"{chain.describe()}: RBAC {have} (want {wanted})")
    return tuple(found)


def rbac_agrees(have: tuple[SeenRbac, ...], want: tuple[SeenRbac, ...], root_known: bool) -> bool:
    """Whether a chain's RBAC filters are the expected ones (in order); ``root_known`` False:
    each expected filter's policies are among the chain's (mesh-wide policies unseen)."""
    if root_known:
        return have == want
    by_action = {f.action: f for f in have}
    for wanted in want:
        seen = by_action.get(wanted.action)
        if seen is None or not (
            wanted.policies <= seen.policies and wanted.shadow_policies <= seen.shadow_policies
        ):
            return False
    return True
