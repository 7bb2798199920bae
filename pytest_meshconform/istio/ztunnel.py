"""What ztunnel does with the L4 policies istiod sends it (pure): the ``istio.security``
``Authorization`` resource and ztunnel's verdict on a connection.

Reproduces istio/ztunnel ``src/rbac.rs`` (``Authorization::matches``, ``StringMatch``,
``ServiceAccountMatch``) and ``src/state.rs`` (``ProxyState::assert_rbac``); the resource's
shape is istio/istio ``pkg/workloadapi/security/authorization.proto``. Which policies istiod
derives for ztunnel is :mod:`pytest_meshconform.istio.ambient`.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, TypeVar

from pytest_meshconform.istio.tls import WorkloadKey

__all__ = [
    "HBONE_ALPN",
    "HBONE_PORT",
    "HBONE_TLS_VERSION",
    "ZTUNNEL_CONNECT_TIMEOUT_S",
    "ZTUNNEL_DENIED_STATUS",
    "ZTUNNEL_INBOUND_PLAINTEXT_PORT",
    "ZTUNNEL_OUTBOUND_PORT",
    "ZTUNNEL_WORKLOAD_KEY",
    "Action",
    "Address",
    "Connection",
    "Match",
    "Scope",
    "ServiceAccountMatch",
    "StringMatch",
    "ZtunnelAuthorization",
    "authorization_matches",
    "hbone_authority",
    "ztunnel_admits",
    "ztunnel_refresh_at",
]

SPIFFE_PREFIX: Final = "spiffe://"

# --- the wire (docs/istio-model.md, "Ambient on the wire") ----------------------------------
# ztunnel's listeners in an enrolled pod's network namespace (src/config.rs, ``construct_config``:
# ``inbound_addr`` 15008, ``inbound_plaintext_addr`` 15006, ``outbound_addr`` 15001), where
# istio-cni's in-pod rules send the pod's traffic (cni/pkg/iptables/iptables.go; golden
# cni/pkg/iptables/testdata/default.golden)
HBONE_PORT: Final = 15008
ZTUNNEL_INBOUND_PLAINTEXT_PORT: Final = 15006
ZTUNNEL_OUTBOUND_PORT: Final = 15001
# HBONE's TLS: rustls with TLS 1.3 only unless TLS12_ENABLED (src/tls/lib.rs, ``tls_versions``)
# and ALPN h2 on both ends (src/tls/certificate.rs, ``server_config`` and ``client_config``)
HBONE_TLS_VERSION: Final = "TLSv1_3"
HBONE_ALPN: Final = "h2"
# What ztunnel answers a CONNECT its RBAC denies (src/proxy/inbound.rs, ``serve_connect``:
# ``StatusCode::UNAUTHORIZED``)
ZTUNNEL_DENIED_STATUS: Final = 401
# How long ztunnel waits for a TCP connection it opens (to a peer's 15008, or to the app):
# ``CONNECTION_TIMEOUT`` of ``freebind_connect`` (src/proxy.rs), 10 s; the TLS handshake on an
# HBONE connection that follows is not bounded by it (``ConnSpawner::new_pool_conn``,
# src/proxy/pool.rs)
ZTUNNEL_CONNECT_TIMEOUT_S: Final = 10


class Scope(StrEnum):
    """``istio.security.Scope``: GLOBAL (0, a root-namespace policy without selector),
    NAMESPACE, WORKLOAD_SELECTOR."""

    GLOBAL = "GLOBAL"
    NAMESPACE = "NAMESPACE"
    WORKLOAD_SELECTOR = "WORKLOAD_SELECTOR"


class Action(StrEnum):
    """``istio.security.Action``: ALLOW (0) or DENY."""

    ALLOW = "ALLOW"
    DENY = "DENY"


class StringKind(StrEnum):
    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    PRESENCE = "presence"


@dataclass(frozen=True, slots=True)
class StringMatch:
    """``StringMatch``: exact, prefix, suffix, or presence (any non-empty value)."""

    kind: StringKind
    value: str = ""

    def matches(self, check: str) -> bool:
        if self.kind is StringKind.PREFIX:
            return check.startswith(self.value)
        if self.kind is StringKind.SUFFIX:
            return check.endswith(self.value)
        if self.kind is StringKind.EXACT:
            return check == self.value
        return bool(check)

    def matches_principal(self, check: str) -> bool:
        """Principals are matched without ``spiffe://``; one without it matches nothing."""
        if not check.startswith(SPIFFE_PREFIX):
            return False
        return self.matches(check[len(SPIFFE_PREFIX) :])

    def to_dict(self) -> dict[str, Any]:
        return {self.kind.value: {} if self.kind is StringKind.PRESENCE else self.value}


PRESENCE: Final = StringMatch(StringKind.PRESENCE)


@dataclass(frozen=True, slots=True)
class ServiceAccountMatch:
    """``ServiceAccountMatch``: a peer identity's namespace and service account."""

    namespace: str
    service_account: str

    def to_dict(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "serviceAccount": self.service_account}


@dataclass(frozen=True, slots=True)
class Address:
    """``Address``: an IP as written (not masked, as ``netip.ParsePrefix`` keeps it) and a
    prefix length; it contains the addresses of that network."""

    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    length: int

    def contains(self, ip: str) -> bool:
        try:
            network = ipaddress.ip_network(f"{self.ip}/{self.length}", strict=False)
            return ipaddress.ip_address(ip) in network
        except ValueError:
            return False

    def to_dict(self) -> dict[str, Any]:
        """Protobuf JSON: the address bytes in base64 and the prefix length."""
        return {"address": base64.b64encode(self.ip.packed).decode(), "length": self.length}


@dataclass(frozen=True, slots=True)
class Match:
    """``istio.security.Match``: within one kind ANY positive value and NO negative value must
    match; every kind present must hold. An empty match matches nothing (ztunnel skips it)."""

    namespaces: tuple[StringMatch, ...] = ()
    not_namespaces: tuple[StringMatch, ...] = ()
    service_accounts: tuple[ServiceAccountMatch, ...] = ()
    not_service_accounts: tuple[ServiceAccountMatch, ...] = ()
    principals: tuple[StringMatch, ...] = ()
    not_principals: tuple[StringMatch, ...] = ()
    source_ips: tuple[Address, ...] = ()
    not_source_ips: tuple[Address, ...] = ()
    destination_ips: tuple[Address, ...] = ()
    not_destination_ips: tuple[Address, ...] = ()
    destination_ports: tuple[int, ...] = ()
    not_destination_ports: tuple[int, ...] = ()

    def is_empty(self) -> bool:
        return not any(getattr(self, name) for name in _MATCH_FIELDS)

    def to_dict(self) -> dict[str, Any]:
        """The protobuf JSON/YAML shape istiod's golden files show (camelCase, empty omitted)."""
        out: dict[str, Any] = {}
        for name, key in _MATCH_FIELDS.items():
            values = getattr(self, name)
            if values:
                out[key] = [v if isinstance(v, int) else v.to_dict() for v in values]
        return out


_MATCH_FIELDS: Final = {
    "namespaces": "namespaces",
    "not_namespaces": "notNamespaces",
    "service_accounts": "serviceAccounts",
    "not_service_accounts": "notServiceAccounts",
    "principals": "principals",
    "not_principals": "notPrincipals",
    "source_ips": "sourceIps",
    "not_source_ips": "notSourceIps",
    "destination_ips": "destinationIps",
    "not_destination_ips": "notDestinationIps",
    "destination_ports": "destinationPorts",
    "not_destination_ports": "notDestinationPorts",
}

# a Group's rules are AND'd, a Rules' matches are OR'd, a policy's groups are OR'd
Rules = tuple[Match, ...]
Group = tuple[Rules, ...]


@dataclass(frozen=True, slots=True)
class ZtunnelAuthorization:
    """An ``istio.security.Authorization`` as istiod sends it to ztunnel."""

    name: str
    namespace: str
    scope: Scope
    action: Action
    groups: tuple[Group, ...]
    dry_run: bool = False

    @property
    def key(self) -> str:
        """``namespace/name``, how a workload lists its policies (``Authorization::to_key``)."""
        return f"{self.namespace}/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        """The shape of istiod's golden files: protobuf defaults (ALLOW, GLOBAL, empty
        namespace, no groups) omitted."""
        out: dict[str, Any] = {}
        if self.action is not Action.ALLOW:
            out["action"] = self.action.value
        if self.groups:
            out["groups"] = [
                {"rules": [{"matches": [m.to_dict() for m in rules]} for rules in group]}
                for group in self.groups
            ]
        out["name"] = self.name
        if self.namespace:
            out["namespace"] = self.namespace
        if self.scope is not Scope.GLOBAL:
            out["scope"] = self.scope.value
        if self.dry_run:
            out["dryRun"] = True
        return out


@dataclass(frozen=True, slots=True)
class Connection:
    """What ztunnel's RBAC sees of a connection (``rbac::Connection``): addresses, the
    destination port and the peer's SPIFFE identity (None: plaintext)."""

    port: int
    peer: str | None = None  # spiffe://<trust domain>/ns/<namespace>/sa/<service account>
    source_ip: str = ""
    destination_ip: str = ""

    @property
    def peer_namespace(self) -> str:
        return self._identity_part("ns")

    @property
    def peer_service_account(self) -> str:
        return self._identity_part("sa")

    def _identity_part(self, key: str) -> str:
        if not self.peer or not self.peer.startswith(SPIFFE_PREFIX):
            return ""
        parts = self.peer[len(SPIFFE_PREFIX) :].split("/")
        # <td>/ns/<ns>/sa/<sa> (Identity::Spiffe)
        if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa":
            return parts[2] if key == "ns" else parts[4]
        return ""


_T = TypeVar("_T")


def _kind(positive: Sequence[_T], negative: Sequence[_T], predicate: Callable[[_T], bool]) -> bool:
    """``matches_internal``: ANY positive (when there are some) and NO negative."""
    pm = not positive or any(predicate(v) for v in positive)
    nm = not negative or not any(predicate(v) for v in negative)
    return pm and nm


def match_matches(match: Match, connection: Connection) -> bool:
    """One non-empty ``RbacMatch`` against a connection (the body of ``Authorization::matches``)."""
    peer = connection.peer or ""
    namespace = connection.peer_namespace
    account = connection.peer_service_account

    def sa_matches(m: ServiceAccountMatch) -> bool:
        return bool(connection.peer) and (m.namespace, m.service_account) == (namespace, account)

    return (
        _kind(
            match.destination_ips,
            match.not_destination_ips,
            lambda a: a.contains(connection.destination_ip),
        )
        and _kind(
            match.source_ips, match.not_source_ips, lambda a: a.contains(connection.source_ip)
        )
        and _kind(
            match.destination_ports,
            match.not_destination_ports,
            lambda p: p == connection.port,
        )
        and _kind(match.service_accounts, match.not_service_accounts, sa_matches)
        and _kind(match.principals, match.not_principals, lambda s: s.matches_principal(peer))
        and _kind(match.namespaces, match.not_namespaces, lambda s: s.matches(namespace))
    )


def authorization_matches(policy: ZtunnelAuthorization, connection: Connection) -> bool:
    """Whether a policy matches a connection (``Authorization::matches``, ztunnel
    src/rbac.rs): ANY group whose every clause (rules) has ANY non-empty match that matches; a
    clause without matches matches, a policy without groups matches nothing."""
    for group in policy.groups:
        if all(
            not clause or any(not m.is_empty() and match_matches(m, connection) for m in clause)
            for clause in group
        ):
            return True
    return False


def ztunnel_admits(policies: Iterable[ZtunnelAuthorization], connection: Connection) -> bool:
    """ztunnel's verdict on a connection (``ProxyState::assert_rbac``, ztunnel src/state.rs):
    dry-run policies only log; denied when any DENY policy matches; else allowed when there is
    no ALLOW policy or one matches."""
    enforced = [p for p in policies if not p.dry_run]
    if any(p.action is Action.DENY and authorization_matches(p, connection) for p in enforced):
        return False
    allow = [p for p in enforced if p.action is Action.ALLOW]
    return not allow or any(authorization_matches(p, connection) for p in allow)


def hbone_authority(ip: str, port: int) -> str:
    """The CONNECT authority ztunnel sends: the destination workload's address and target port
    (src/proxy/outbound.rs, ``create_hbone_request``: the URI is ``hbone_target_destination``)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# The key of every certificate ztunnel requests: ECDSA P-256 (``CsrOptions::generate``,
# src/tls/csr.rs, with each TLS backend: ``EcGroup::from_curve_name(X9_62_PRIME256V1)`` or
# ``rcgen::PKCS_ECDSA_P256_SHA256``), where a sidecar's agent makes RSA 2048.
ZTUNNEL_WORKLOAD_KEY: Final = WorkloadKey("EC", 256)


def ztunnel_refresh_at(not_before: dt.datetime, not_after: dt.datetime) -> dt.datetime:
    """When ztunnel renews a workload certificate: halfway through its validity, from NotBefore,
    without jitter (``WorkloadCertificate::refresh_at``, src/tls/certificate.rs: ``not_before +
    valid_for / 2``, scheduled by ``SecretManager``'s worker, src/identity/manager.rs); a
    certificate whose NotAfter is not after its NotBefore is renewed at NotAfter."""
    if not_after <= not_before:
        return not_after
    return not_before + (not_after - not_before) / 2
