"""ztunnel's ``/config_dump`` read with Istio's names (pure): the workloads, Services, L4
policies and certificates one ztunnel holds, and how its policies compare with the model's.

ztunnel's admin server (port 15000) serialises ``admin::ConfigDump`` (istio/ztunnel
``src/admin.rs``): the proxy state flattened in (``state::ProxyStateSerialization``:
``workloads``, ``services``, ``policies``, ``stagedServices``), ``staticConfig``, ``version``
(``BuildInfo``), ``config`` and ``certificates`` (``CertsDump``: ``identity``, ``state``,
``certChain`` and, since ztunnel 1.25, ``rootCerts``; each ``CertDump`` a base64 PEM, a decimal
``serialNumber``, RFC 3339 ``validFrom`` / ``expirationTime``). Field shapes follow serde's
derives in ``src/state/workload.rs`` (``Workload``, ``GatewayAddress``), ``src/state/service.rs``
(``Service``, ``Endpoint``) and ``src/rbac.rs`` (``Authorization``: ``rules`` nested rule ->
clause -> match, ``StringMatch`` externally tagged as ``{"Exact": "..."}``, ``IpNet`` as
``"10.0.0.0/8"``, ``RbacScope`` ``Global|Namespace|WorkloadSelector``, ``RbacAction``
``Allow|Deny``). It is not an Envoy document: :mod:`pytest_meshconform.evidence.config_dump` does
not apply. What the L4 policies mean is :mod:`pytest_meshconform.istio.ztunnel`.

Every reader raises only :class:`ZtunnelDumpError`, naming the field by path.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from pytest_meshconform.evidence.certs import CertError, WorkloadCert
from pytest_meshconform.evidence.protojson import (
    ProtoJsonError,
    fragment,
    load_json_object,
    parse_timestamp,
)
from pytest_meshconform.istio.ztunnel import (
    Action,
    Address,
    Match,
    Scope,
    ServiceAccountMatch,
    StringKind,
    StringMatch,
    ZtunnelAuthorization,
)

__all__ = [
    "ZtunnelCertificate",
    "ZtunnelChainEntry",
    "ZtunnelConfig",
    "ZtunnelDump",
    "ZtunnelDumpError",
    "ZtunnelService",
    "ZtunnelWorkload",
    "parse_ztunnel_dump",
    "policy_differences",
    "read_ztunnel_policy",
]

# ztunnel's enums as serde writes them (variant names) -> the model's
_SCOPES: Final = {
    "Global": Scope.GLOBAL,
    "Namespace": Scope.NAMESPACE,
    "WorkloadSelector": Scope.WORKLOAD_SELECTOR,
}
_ACTIONS: Final = {"Allow": Action.ALLOW, "Deny": Action.DENY}
_STRING_KINDS: Final = {
    "Exact": StringKind.EXACT,
    "Prefix": StringKind.PREFIX,
    "Suffix": StringKind.SUFFIX,
    "Presence": StringKind.PRESENCE,
}
# RbacMatch's fields (camelCase) -> Match's, by value kind
_STRING_FIELDS: Final = {
    "namespaces": "namespaces",
    "notNamespaces": "not_namespaces",
    "principals": "principals",
    "notPrincipals": "not_principals",
}
_ACCOUNT_FIELDS: Final = {
    "serviceAccounts": "service_accounts",
    "notServiceAccounts": "not_service_accounts",
}
_IP_FIELDS: Final = {
    "sourceIps": "source_ips",
    "notSourceIps": "not_source_ips",
    "destinationIps": "destination_ips",
    "notDestinationIps": "not_destination_ips",
}
_PORT_FIELDS: Final = {
    "destinationPorts": "destination_ports",
    "notDestinationPorts": "not_destination_ports",
}
_POLICY_FIELDS: Final = frozenset({"name", "namespace", "scope", "action", "rules", "dryRun"})


class ZtunnelDumpError(ValueError):
    """A ztunnel config dump without the shape ztunnel gives it; the message names the field."""


# --- JSON pieces --------------------------------------------------------------------------------


def _object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ZtunnelDumpError(f"{where}: expected an object, got {fragment(value)}")
    return value


def _list(value: object, where: str) -> list[Any]:
    """A list; absent (null) is the empty list (serde's ``default``)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ZtunnelDumpError(f"{where}: expected a list, got {fragment(value)}")
    return value


def _string(value: object, where: str, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise ZtunnelDumpError(f"{where}: expected a string, got {fragment(value)}")
    return value


def _port(value: object, where: str) -> int:
    """A u16, as a number or (a map key) as decimal text."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 5:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ZtunnelDumpError(f"{where}: expected a port (0-65535), got {fragment(value)}")
    return value


def _port_map(value: object, where: str) -> dict[int, int]:
    """``HashMap<u16, u16>``: a Service port -> the port its endpoints listen on."""
    return {
        _port(key, f"{where}[{fragment(key)}]"): _port(target, f"{where}[{fragment(key)}]")
        for key, target in _object(value if value is not None else {}, where).items()
    }


def _network_ip(value: object, where: str) -> str:
    """``NetworkAddress`` as serde writes it: ``network/ip`` (an empty network: ``/ip``)."""
    text = _string(value, where)
    _, _, ip = text.rpartition("/")
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        raise ZtunnelDumpError(f"{where}: expected 'network/ip', got {fragment(text)}") from None


def _timestamp(value: object, where: str) -> datetime:
    try:
        return parse_timestamp(value, where)
    except ProtoJsonError as exc:
        raise ZtunnelDumpError(str(exc)) from None


# --- the parts ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ZtunnelConfig:
    """The parts of ztunnel's ``Config`` a check relies on (``src/config.rs``)."""

    cluster_domain: str
    inbound_addr: str  # HBONE, port 15008
    inbound_plaintext_addr: str  # port 15006
    outbound_addr: str  # port 15001
    proxy_mode: str  # Shared (a node's ztunnel) or Dedicated
    secret_ttl_seconds: int | None  # the certificate lifetime ztunnel asks the CA for


@dataclass(frozen=True, slots=True)
class ZtunnelWorkload:
    """One ``Workload`` as ztunnel holds it."""

    uid: str
    name: str
    namespace: str
    service_account: str
    trust_domain: str
    protocol: str  # HBONE (enrolled in ambient or a sidecar that speaks HBONE) or TCP
    ips: tuple[str, ...]
    node: str
    status: str
    waypoint: str | None  # the waypoint's destination (namespace/hostname or network/ip)
    authorization_policies: tuple[str, ...]  # ``namespace/name`` keys

    @property
    def identity(self) -> str:
        """``Workload::identity`` as a SPIFFE ID."""
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


@dataclass(frozen=True, slots=True)
class ZtunnelService:
    """One ``Service`` as ztunnel holds it: VIPs, port map, endpoints' workload UIDs."""

    name: str
    namespace: str
    hostname: str
    vips: tuple[str, ...]
    ports: Mapping[int, int]
    endpoints: tuple[str, ...]  # workload UIDs
    waypoint: str | None


@dataclass(frozen=True, slots=True)
class ZtunnelChainEntry:
    """One ``CertDump``: the certificate (PEM), its serial in decimal, its validity."""

    pem: str
    serial: int
    valid_from: datetime
    expiration: datetime


@dataclass(frozen=True, slots=True)
class ZtunnelCertificate:
    """One ``CertsDump``: the identity ztunnel holds a certificate for, its state
    (``Available``, ``Initializing``, ``Unavailable: <error>``) and the chain, leaf first."""

    identity: str
    state: str
    chain: tuple[ZtunnelChainEntry, ...]
    roots: tuple[ZtunnelChainEntry, ...]

    @property
    def available(self) -> bool:
        return self.state == "Available" and bool(self.chain)

    def workload_cert(self) -> WorkloadCert:
        """The leaf as an X.509-SVID (its SPIFFE ID, serial, lifetime and chain)."""
        if not self.chain:
            raise ZtunnelDumpError(f"certificate of {self.identity}: {self.state}, no chain")
        try:
            return WorkloadCert.from_pem("".join(entry.pem for entry in self.chain))
        except CertError as exc:
            raise ZtunnelDumpError(f"certificate of {self.identity}: {exc}") from None


@dataclass(frozen=True, slots=True)
class ZtunnelDump:
    """What one ztunnel holds, from its ``/config_dump``."""

    version: str  # BuildInfo's gitTag, e.g. 1.24.0-2-g4c7cdf1
    config: ZtunnelConfig
    workloads: tuple[ZtunnelWorkload, ...]
    services: tuple[ZtunnelService, ...]
    policies: tuple[ZtunnelAuthorization, ...]
    certificates: tuple[ZtunnelCertificate, ...]

    def workload_at(self, ip: str) -> ZtunnelWorkload | None:
        """The workload with this address, if ztunnel knows one."""
        for workload in self.workloads:
            if ip in workload.ips:
                return workload
        return None

    def certificate_for(self, identity: str) -> ZtunnelCertificate | None:
        """The certificate ztunnel holds for a SPIFFE identity, if any."""
        for certificate in self.certificates:
            if certificate.identity == identity:
                return certificate
        return None

    def policies_for(self, workload: ZtunnelWorkload) -> tuple[str, ...]:
        """The keys of the policies ztunnel checks for a connection to ``workload``, as
        ``ProxyState::assert_rbac`` gathers them: NAMESPACE-scoped ones of the workload's
        namespace, every GLOBAL-scoped one, then those the workload lists."""
        keys = [
            p.key
            for p in self.policies
            if p.scope is Scope.NAMESPACE and p.namespace == workload.namespace
        ]
        keys += [p.key for p in self.policies if p.scope is Scope.GLOBAL]
        keys += workload.authorization_policies
        return tuple(dict.fromkeys(keys))


# --- readers ------------------------------------------------------------------------------------


def _gateway(value: object, where: str) -> str | None:
    if value is None:
        return None
    # serde-untagged Destination: a NetworkAddress (network/ip) or a NamespacedHostname
    # (namespace/hostname), each written as one string
    return _string(_object(value, where).get("destination"), f"{where}.destination")


def _workload(raw: object, where: str) -> ZtunnelWorkload:
    item = _object(raw, where)
    return ZtunnelWorkload(
        uid=_string(item.get("uid"), f"{where}.uid"),
        name=_string(item.get("name"), f"{where}.name"),
        namespace=_string(item.get("namespace"), f"{where}.namespace"),
        service_account=_string(item.get("serviceAccount"), f"{where}.serviceAccount"),
        # absent: serde's skip_serializing_if default; ztunnel fills cluster.local in
        trust_domain=_string(item.get("trustDomain"), f"{where}.trustDomain", "cluster.local"),
        protocol=_string(item.get("protocol"), f"{where}.protocol", "TCP"),
        ips=tuple(
            _network_ip(f"/{ip}" if isinstance(ip, str) else ip, f"{where}.workloadIps[{i}]")
            for i, ip in enumerate(_list(item.get("workloadIps"), f"{where}.workloadIps"))
        ),
        node=_string(item.get("node"), f"{where}.node"),
        status=_string(item.get("status"), f"{where}.status", "Healthy"),
        waypoint=_gateway(item.get("waypoint"), f"{where}.waypoint"),
        authorization_policies=tuple(
            _string(key, f"{where}.authorizationPolicies[{i}]")
            for i, key in enumerate(
                _list(item.get("authorizationPolicies"), f"{where}.authorizationPolicies")
            )
        ),
    )


def _service(raw: object, where: str) -> ZtunnelService:
    item = _object(raw, where)
    endpoints = item.get("endpoints")
    uids: list[str] = []
    if isinstance(endpoints, Mapping):  # EndpointSet: endpoint key -> Endpoint
        for key, endpoint in endpoints.items():
            here = f"{where}.endpoints[{fragment(key)}]"
            uids.append(_string(_object(endpoint, here).get("workloadUid"), f"{here}.workloadUid"))
    elif endpoints is not None:
        raise ZtunnelDumpError(f"{where}.endpoints: expected an object, got {fragment(endpoints)}")
    return ZtunnelService(
        name=_string(item.get("name"), f"{where}.name"),
        namespace=_string(item.get("namespace"), f"{where}.namespace"),
        hostname=_string(item.get("hostname"), f"{where}.hostname"),
        vips=tuple(
            _network_ip(vip, f"{where}.vips[{i}]")
            for i, vip in enumerate(_list(item.get("vips"), f"{where}.vips"))
        ),
        ports=_port_map(item.get("ports"), f"{where}.ports"),
        endpoints=tuple(uids),
        waypoint=_gateway(item.get("waypoint"), f"{where}.waypoint"),
    )


def _chain_entry(raw: object, where: str) -> ZtunnelChainEntry:
    item = _object(raw, where)
    encoded = _string(item.get("pem"), f"{where}.pem")
    try:
        pem = base64.b64decode(encoded, validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        raise ZtunnelDumpError(f"{where}.pem: not base64 of a PEM text") from None
    serial = _string(item.get("serialNumber"), f"{where}.serialNumber")
    if not (serial.isascii() and serial.isdigit()) or len(serial) > 60:
        raise ZtunnelDumpError(
            f"{where}.serialNumber: expected decimal digits, got {fragment(serial)}"
        )
    return ZtunnelChainEntry(
        pem=pem,
        serial=int(serial),
        valid_from=_timestamp(item.get("validFrom"), f"{where}.validFrom"),
        expiration=_timestamp(item.get("expirationTime"), f"{where}.expirationTime"),
    )


def _certificate(raw: object, where: str) -> ZtunnelCertificate:
    item = _object(raw, where)
    return ZtunnelCertificate(
        identity=_string(item.get("identity"), f"{where}.identity"),
        state=_string(item.get("state"), f"{where}.state"),
        chain=tuple(
            _chain_entry(entry, f"{where}.certChain[{i}]")
            for i, entry in enumerate(_list(item.get("certChain"), f"{where}.certChain"))
        ),
        roots=tuple(
            _chain_entry(entry, f"{where}.rootCerts[{i}]")
            for i, entry in enumerate(_list(item.get("rootCerts"), f"{where}.rootCerts"))
        ),
    )


def _string_match(raw: object, where: str) -> StringMatch:
    item = _object(raw, where)
    if len(item) != 1:
        raise ZtunnelDumpError(
            f"{where}: expected one of {sorted(_STRING_KINDS)}, got {fragment(item)}"
        )
    ((tag, value),) = item.items()
    kind = _STRING_KINDS.get(tag)
    if kind is None:
        raise ZtunnelDumpError(f"{where}: unknown string match {fragment(tag)}")
    if kind is StringKind.PRESENCE:
        return StringMatch(kind)
    return StringMatch(kind, _string(value, f"{where}.{tag}"))


def _ip_net(raw: object, where: str) -> Address:
    text = _string(raw, where)
    ip, slash, length = text.partition("/")
    try:
        address = ipaddress.ip_address(ip)
        bits = int(length) if slash else address.max_prefixlen
    except ValueError:
        raise ZtunnelDumpError(f"{where}: expected an IP network, got {fragment(text)}") from None
    if not 0 <= bits <= address.max_prefixlen:
        raise ZtunnelDumpError(f"{where}: prefix length out of range in {fragment(text)}")
    return Address(address, bits)


def _match(raw: object, where: str) -> Match:
    item = _object(raw, where)
    values: dict[str, Any] = {}
    for key, value in item.items():
        here = f"{where}.{key}"
        entries = _list(value, here)
        if key in _STRING_FIELDS:
            values[_STRING_FIELDS[key]] = tuple(
                _string_match(v, f"{here}[{i}]") for i, v in enumerate(entries)
            )
        elif key in _ACCOUNT_FIELDS:
            values[_ACCOUNT_FIELDS[key]] = tuple(
                ServiceAccountMatch(
                    _string(_object(v, f"{here}[{i}]").get("namespace"), f"{here}[{i}].namespace"),
                    _string(v.get("serviceAccount"), f"{here}[{i}].serviceAccount"),
                )
                for i, v in enumerate(entries)
            )
        elif key in _IP_FIELDS:
            values[_IP_FIELDS[key]] = tuple(
                _ip_net(v, f"{here}[{i}]") for i, v in enumerate(entries)
            )
        elif key in _PORT_FIELDS:
            values[_PORT_FIELDS[key]] = tuple(
                _port(v, f"{here}[{i}]") for i, v in enumerate(entries)
            )
        else:
            raise ZtunnelDumpError(f"{here}: not a field of ztunnel's RbacMatch")
    return Match(**values)


def read_ztunnel_policy(raw: object, where: str = "policy") -> ZtunnelAuthorization:
    """One ``rbac::Authorization`` as ztunnel dumps it, as the model's resource."""
    item = _object(raw, where)
    unknown = sorted(set(item) - _POLICY_FIELDS)
    if unknown:  # ztunnel derives it with deny_unknown_fields
        raise ZtunnelDumpError(f"{where}: unknown fields {unknown}")
    scope = _SCOPES.get(_string(item.get("scope"), f"{where}.scope"))
    action = _ACTIONS.get(_string(item.get("action"), f"{where}.action"))
    if scope is None:
        raise ZtunnelDumpError(f"{where}.scope: expected one of {sorted(_SCOPES)}")
    if action is None:
        raise ZtunnelDumpError(f"{where}.action: expected one of {sorted(_ACTIONS)}")
    dry_run = item.get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise ZtunnelDumpError(f"{where}.dryRun: expected true or false, got {fragment(dry_run)}")
    groups = []
    for r, rule in enumerate(_list(item.get("rules"), f"{where}.rules")):
        clauses = []
        for c, clause in enumerate(_list(rule, f"{where}.rules[{r}]")):
            here = f"{where}.rules[{r}][{c}]"
            clauses.append(
                tuple(_match(m, f"{here}[{i}]") for i, m in enumerate(_list(clause, here)))
            )
        groups.append(tuple(clauses))
    return ZtunnelAuthorization(
        name=_string(item.get("name"), f"{where}.name"),
        namespace=_string(item.get("namespace"), f"{where}.namespace"),
        scope=scope,
        action=action,
        groups=tuple(groups),
        dry_run=dry_run,
    )


def _config(raw: object) -> ZtunnelConfig:
    item = _object(raw if raw is not None else {}, "config")
    ttl = item.get("secretTtl")
    seconds: int | None = None
    if ttl is not None:  # a serde Duration: {"secs": N, "nanos": M}
        secs = _object(ttl, "config.secretTtl").get("secs")
        if isinstance(secs, bool) or not isinstance(secs, int) or secs < 0:
            raise ZtunnelDumpError(f"config.secretTtl.secs: expected seconds, got {fragment(secs)}")
        seconds = secs
    return ZtunnelConfig(
        cluster_domain=_string(item.get("clusterDomain"), "config.clusterDomain"),
        inbound_addr=_string(item.get("inboundAddr"), "config.inboundAddr"),
        inbound_plaintext_addr=_string(
            item.get("inboundPlaintextAddr"), "config.inboundPlaintextAddr"
        ),
        outbound_addr=_string(item.get("outboundAddr"), "config.outboundAddr"),
        proxy_mode=_string(item.get("proxyMode"), "config.proxyMode"),
        secret_ttl_seconds=seconds,
    )


def parse_ztunnel_dump(data: bytes | str | Mapping[str, Any]) -> ZtunnelDump:
    """Read ztunnel's ``/config_dump`` (or ``istioctl ztunnel-config all -o json``)."""
    try:
        document = load_json_object(data, "ztunnel config_dump")
    except ProtoJsonError as exc:
        raise ZtunnelDumpError(str(exc)) from None
    if "workloads" not in document and "certificates" not in document:
        raise ZtunnelDumpError(
            "not a ztunnel config_dump: no 'workloads' or 'certificates' (an Envoy dump has"
            " 'configs')"
        )
    version = _object(document.get("version") or {}, "version")
    return ZtunnelDump(
        version=_string(version.get("gitTag"), "version.gitTag"),
        config=_config(document.get("config")),
        workloads=tuple(
            _workload(w, f"workloads[{i}]")
            for i, w in enumerate(_list(document.get("workloads"), "workloads"))
        ),
        services=tuple(
            _service(s, f"services[{i}]")
            for i, s in enumerate(_list(document.get("services"), "services"))
        ),
        policies=tuple(
            read_ztunnel_policy(p, f"policies[{i}]")
            for i, p in enumerate(_list(document.get("policies"), "policies"))
        ),
        certificates=tuple(
            _certificate(c, f"certificates[{i}]")
            for i, c in enumerate(_list(document.get("certificates"), "certificates"))
        ),
    )


def policy_differences(
    dump: ZtunnelDump, expected: Iterable[ZtunnelAuthorization]
) -> tuple[str, ...]:
    """How ztunnel's policies differ from those the model derives (istiod's conversion in
    :mod:`pytest_meshconform.istio.ambient`): one line per policy missing, extra or different,
    empty when ztunnel holds exactly what was expected."""
    held = {policy.key: policy for policy in dump.policies}
    wanted = {policy.key: policy for policy in expected}
    lines: list[str] = []
    for key in sorted(wanted.keys() - held.keys()):
        lines.append(f"{key}: expected, ztunnel does not hold it")
    for key in sorted(held.keys() - wanted.keys()):
        lines.append(f"{key}: ztunnel holds it, not expected")
    for key in sorted(wanted.keys() & held.keys()):
        if wanted[key] != held[key]:
            lines.append(
                f"{key}: ztunnel holds {held[key].to_dict()}, expected {wanted[key].to_dict()}"
            )
    return tuple(lines)
