"""A waypoint's AuthorizationPolicy state, read from its Envoy ``/config_dump`` (pure).

A waypoint (istiod's ``buildWaypointInbound``, pilot/pkg/networking/core/listener_waypoint.go)
terminates HBONE on ``connect_terminate`` (15008) and hands each inner stream to the internal
listener ``main_internal``, whose filter chains are chosen by destination (a
``filter_chain_matcher``, not ``filter_chain_match``):

- per port of each Service the waypoint serves, an HTTP chain (an HTTP connection manager
  whose HTTP filters carry the RBAC filters of ``NewBuilderForService(authz.Local, ..., svc)``:
  the policies bound to the waypoint and to the Service) and/or a TCP chain (its network
  RBAC filters, ``buildCompleteNetworkFilters`` with the Service as policy service). Since
  Istio 1.24 (istio/istio fa7f80c226f) each is named as the cluster it sends to,
  ``inbound-vip|<port>|http|<fqdn>`` / ``inbound-vip|<port>|tcp|<fqdn>``; before,
  ``inbound-vip|<port>||<fqdn>-http`` / ``-tcp`` (a real 1.21 waypoint's dump has those); a
  chain named otherwise is placed by the ``inbound-vip|<port>|<proto>|<fqdn>`` cluster its
  route or ``tcp_proxy`` sends to;
- ``direct-tcp`` and ``direct-http``, for workload-addressed traffic: the RBAC filters of the
  policies bound to the waypoint itself (no Service).

``connect_terminate`` carries RBAC only under ``ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES``
(default false) and is not read. :func:`waypoint_differences` compares each chain with what the
Istio model (``istio.waypoint.waypoint_authorization``) expects for its Service; the kube
backend waits until it finds nothing. As for sidecars (``authzstate``), the policy names say
which rules are in force; principals are not compared.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pytest_meshconform.backends.kube.authzstate import (
    ChainAuthz,
    SeenRbac,
    chain_authz,
    expected_rbac,
    listener_chains,
    rbac_agrees,
)
from pytest_meshconform.evidence.config_dump import (
    ConfigDumpError,
    read_network_filters,
)
from pytest_meshconform.istio import Authorization
from pytest_meshconform.istio.envoy import HCM_TYPE, TCP_PROXY_TYPE, VIRTUAL_INBOUND_BLACKHOLE

__all__ = [
    "MAIN_INTERNAL",
    "WaypointChain",
    "WaypointExpectation",
    "parse_waypoint_authz",
    "waypoint_differences",
]

MAIN_INTERNAL: Final = "main_internal"  # MainInternalName
_DIRECT: Final = ("direct-tcp", "direct-http")  # buildWaypointInternal's pod-address chains
# model.BuildSubsetKey(TrafficDirectionInboundVIP, "<http|tcp>", host, port): 1.24 and later
_CLUSTER_NAME: Final = re.compile(r"inbound-vip\|(\d+)\|(http|tcp)\|(.+)")
# before 1.24: BuildSubsetKey(InboundVIP, "", host, port) + "-http" / "-tcp"
_OLD_CHAIN_NAME: Final = re.compile(r"inbound-vip\|(\d+)\|\|(.+)-(http|tcp)")


@dataclass(frozen=True, slots=True)
class WaypointChain:
    """One ``main_internal`` chain: the Service port it serves (None: a ``direct-*`` chain
    or one not placed) and its RBAC filters."""

    authz: ChainAuthz
    service: tuple[str, int] | None  # (fqdn, port)
    direct: bool

    def describe(self) -> str:
        kind = "HTTP" if self.authz.http else "TCP"
        return f"{MAIN_INTERNAL} chain {self.authz.name or '?'} ({kind})"


@dataclass(frozen=True, slots=True)
class WaypointExpectation:
    """What one waypoint's Envoy must carry under the policies in force (the Istio model's):
    per Service port it serves, the RBAC filters of that Service's chains; for its
    ``direct-*`` chains, those of the policies bound to the waypoint itself. ``exact`` False:
    some policies could not be read or modelled (a chain may carry more)."""

    waypoint: str  # namespace/name
    namespace: str
    name: str
    services: Mapping[tuple[str, int], Authorization]
    direct: Authorization
    exact: bool = True


def _routed_cluster(raw: Mapping[str, Any], where: str) -> str | None:
    """The cluster a chain's ``tcp_proxy`` or its connection manager's first route sends to."""
    for network in read_network_filters(raw, where):
        if network.type_url == TCP_PROXY_TYPE:
            cluster = network.config.get("cluster")
            return cluster if isinstance(cluster, str) else None
        if network.type_url == HCM_TYPE:
            config = network.config.get("route_config")
            for host in (
                (config or {}).get("virtual_hosts") or [] if isinstance(config, Mapping) else []
            ):
                for route in (host or {}).get("routes") or []:
                    cluster = ((route or {}).get("route") or {}).get("cluster")
                    if isinstance(cluster, str):
                        return cluster
    return None


def _service_of(raw: Mapping[str, Any], name: str, where: str) -> tuple[str, int] | None:
    for pattern, host, port in ((_CLUSTER_NAME, 3, 1), (_OLD_CHAIN_NAME, 2, 1)):
        match = pattern.fullmatch(name)
        if match is not None:
            return match.group(host), int(match.group(port))
    try:
        cluster = _routed_cluster(raw, where)
    except ConfigDumpError:
        return None  # chain_authz reports it
    match = _CLUSTER_NAME.fullmatch(cluster or "")
    return (match.group(3), int(match.group(1))) if match is not None else None


def parse_waypoint_authz(data: bytes | str | Mapping[str, Any]) -> tuple[WaypointChain, ...] | None:
    """The chains of the active ``main_internal`` listener with their RBAC filters; None when
    the dump has no such listener (not a waypoint, or istiod has not pushed it yet)."""
    chains = listener_chains(data, MAIN_INTERNAL)
    if chains is None:
        return None
    found = []
    for chain_where, chain in chains:
        if not isinstance(chain, Mapping):
            continue
        chain_name = chain.get("name")
        chain_name = chain_name if isinstance(chain_name, str) else ""
        if chain_name == VIRTUAL_INBOUND_BLACKHOLE:  # no chain yet: matches nothing
            continue
        found.append(
            WaypointChain(
                chain_authz(chain, chain_where),
                _service_of(chain, chain_name, chain_where),
                chain_name in _DIRECT,
            )
        )
    return tuple(found)


def _compare(chain: WaypointChain, expected: Authorization, exact: bool) -> str | None:
    if chain.authz.problem is not None:
        return f"{chain.describe()}: {chain.authz.problem}"
    want: tuple[SeenRbac, ...] = tuple(
        expected_rbac(f) for f in (expected.http if chain.authz.http else expected.tcp)
    )
    if rbac_agrees(chain.authz.filters, want, exact):
        return None
    have = "; ".join(f.describe() for f in chain.authz.filters) or "no RBAC filter"
    wanted = "; ".join(f.describe() for f in want) or "no RBAC filter"
    return f"{chain.describe()}: RBAC {have} (want {wanted})"


def waypoint_differences(
    chains: Sequence[WaypointChain] | None, expected: WaypointExpectation
) -> tuple[str, ...]:
    """How the waypoint's ``main_internal`` chains differ from the model's expectation (empty:
    every chain of every Service port it serves, and its ``direct-*`` chains, carry exactly
    the expected RBAC filters). A Service port without any chain is a difference: istiod has
    not sent the waypoint that Service yet."""
    if chains is None:
        return (f"no active {MAIN_INTERNAL} listener (istiod has not configured the waypoint)",)
    found: list[str] = []
    for (fqdn, port), authorization in sorted(expected.services.items()):
        own = [c for c in chains if c.service == (fqdn, port) and not c.direct]
        if not own:
            found.append(f"{MAIN_INTERNAL} has no chain for {fqdn}:{port}")
        for chain in own:
            difference = _compare(chain, authorization, expected.exact)
            if difference is not None:
                found.append(difference)
    for chain in chains:
        if chain.direct:
            difference = _compare(chain, expected.direct, expected.exact)
            if difference is not None:
                found.append(difference)
    return tuple(found)
