"""Client side: which DestinationRule a sidecar applies to a Service, and what it says for a
port, as istiod decides (pure).

Each function names the istiod function it reproduces; docs/istio-model.md lists them all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pytest_meshconform.istio.api import (
    ClientTls,
    DestinationRule,
    PeerAuthentication,
    Policy,
    PolicyError,
    TlsMode,
)
from pytest_meshconform.istio.api.destination_rule import validate_wildcard_domain
from pytest_meshconform.istio.api.fields import (
    K8S_LABEL,
    FieldError,
    check_argument_namespace,
    show,
)
from pytest_meshconform.istio.selection import age_key, check_labels_argument, is_subset

__all__ = [
    "PortPolicy",
    "client_tls_mode",
    "client_tls_settings",
    "destination_rule_for",
    "max_requests_per_connection",
    "port_traffic_policy",
]


@dataclass
class _Consolidated:
    """istiod's ConsolidatedDestRule: a (possibly merged) rule and its exportTo set."""

    rule: DestinationRule
    export_to: frozenset[str]


@dataclass
class _RuleIndex:
    """istiod's consolidatedDestRules: rules per resolved host, specific and wildcard."""

    specific: dict[str, list[_Consolidated]] = field(default_factory=dict)
    wildcard: dict[str, list[_Consolidated]] = field(default_factory=dict)

    def merge(self, rule: DestinationRule, export_to: frozenset[str]) -> None:
        """mergeDestinationRule (pilot/pkg/model/destination_rule.go), enhanced merge on."""
        table = self.wildcard if rule.host.startswith("*") else self.specific
        existing = table.get(rule.host)
        if existing is None:
            table[rule.host] = [_Consolidated(rule, export_to)]
            return
        append_separately = True
        for consolidated in existing:
            current = consolidated.rule
            both_without = rule.workload_selector is None and current.workload_selector is None
            both_with = rule.workload_selector is not None and current.workload_selector is not None
            selectors_match = dict(current.workload_selector or {}) == dict(
                rule.workload_selector or {}
            )
            # ENABLE_ENHANCED_DESTINATIONRULE_MERGE, on by default since Istio 1.24.
            if export_to == consolidated.export_to:
                append_separately = not (both_without or (both_with and selectors_match))
            elif consolidated.export_to and export_to >= consolidated.export_to:
                append_separately = True
            else:
                append_separately = True
                continue
            if both_with and not selectors_match:
                append_separately = True
                continue
            if both_without or (both_with and selectors_match):
                append_separately = False
            names = {subset.name for subset in current.subsets}
            added = tuple(subset for subset in rule.subsets if subset.name not in names)
            traffic_policy = current.traffic_policy
            if traffic_policy is None and rule.traffic_policy is not None:
                traffic_policy = rule.traffic_policy
            consolidated.rule = replace(
                current, subsets=current.subsets + added, traffic_policy=traffic_policy
            )
        if append_separately:
            existing.append(_Consolidated(rule, export_to))

    def most_specific(self, host: str) -> list[_Consolidated] | None:
        """MostSpecificHostMatch: the exact host, else the longest matching wildcard."""
        if host in self.specific:
            return self.specific[host]
        best: str | None = None
        for wildcard in self.wildcard:
            if host.endswith(wildcard[1:]) and (best is None or len(wildcard) > len(best)):
                best = wildcard
        return None if best is None else self.wildcard[best]


def destination_rule_for(
    rules: Iterable[Policy],
    client_namespace: str,
    host_fqdn: str,
    root_namespace: str = "istio-system",
    *,
    service_namespace: str | None = None,
    client_labels: Mapping[str, str] | None = None,
    default_namespace: str = "default",
    domain_suffix: str = "cluster.local",
) -> DestinationRule | None:
    """The DestinationRule a client sidecar in ``client_namespace`` applies to ``host_fqdn``.

    Transcribed from istio/istio pilot/pkg/model: ``setDestinationRules`` and
    ``mergeDestinationRule`` index the rules (short hosts resolved against the rule's namespace
    and ``domain_suffix``; rules for the same host in one namespace merged, oldest first: the
    oldest rule's metadata, the first ``trafficPolicy`` found, subsets added by name; a
    ``workloadSelector`` rule is private to its namespace); ``PushContext.destinationRule``
    then looks, taking the most specific host (exact beats the longest wildcard) at each step:

    1. in the client's namespace (its private and public rules), or, for a client in the root
       namespace, in the root namespace's private rules;
    2. in the service's namespace, among rules exported to the client (no ``exportTo``, ``*``,
       or the client's namespace);
    3. in the root namespace, among rules exported to the client.

    A step whose most specific host matches but whose rules are not exported to the client
    yields nothing and the next step is tried. Finally ``SidecarScope.DestinationRule``
    (sidecar.go) prefers a rule of the client's namespace whose ``workloadSelector`` matches
    ``client_labels`` and otherwise takes the rule without a selector; a step that found only
    non-matching selector rules therefore means no rule at all. ``exportTo`` is honoured, with
    the mesh default export of ``*``. ``service_namespace`` defaults to the namespace in a
    Kubernetes service name ``<name>.<namespace>.svc.<domain_suffix>``; otherwise step 2 is
    skipped. A rule whose namespace is ``None`` is taken to live in ``default_namespace``.
    Destination rule inheritance (``PILOT_ENABLE_DESTINATION_RULE_INHERITANCE``, off by
    default) and ``Sidecar`` egress scoping are not modelled. The returned rule carries the
    resolved host.
    """
    check_argument_namespace(client_namespace, "client_namespace")
    check_argument_namespace(root_namespace, "root_namespace")
    check_argument_namespace(default_namespace, "default_namespace")
    if client_labels is not None:
        check_labels_argument(client_labels, "client_labels")
    if not isinstance(host_fqdn, str) or "*" in host_fqdn:
        raise PolicyError(f"host_fqdn must be a host name without wildcards, got {show(host_fqdn)}")
    try:
        validate_wildcard_domain(host_fqdn, "host_fqdn")
    except FieldError as error:
        raise PolicyError(error.problem, path=error.path) from None
    if service_namespace is None:
        service_namespace = _kubernetes_service_namespace(host_fqdn, domain_suffix)
    else:
        check_argument_namespace(service_namespace, "service_namespace")

    placed: list[tuple[str, DestinationRule]] = []
    seen: set[tuple[str, str]] = set()
    for rule in rules:
        if isinstance(rule, PeerAuthentication):
            continue
        if not isinstance(rule, DestinationRule):
            raise PolicyError(f"not a policy: {show(rule)}")
        rule_namespace = rule.namespace if rule.namespace is not None else default_namespace
        if (rule_namespace, rule.name) in seen:
            raise PolicyError(f"DestinationRule {rule_namespace}/{rule.name} given twice")
        seen.add((rule_namespace, rule.name))
        resolved = _resolve_short_name(rule.host, rule_namespace, domain_suffix)
        placed.append((rule_namespace, replace(rule, host=resolved, namespace=rule_namespace)))
    # sortConfigBySelectorAndCreationTime: selector rules first, then the oldest.
    placed.sort(key=lambda item: (item[1].workload_selector is None, age_key(item[1], item[0])))

    namespace_local: dict[str, _RuleIndex] = {}
    exported: dict[str, _RuleIndex] = {}
    root_local = _RuleIndex()
    for rule_namespace, rule in placed:
        export_to = frozenset({"."} if rule.workload_selector is not None else rule.export_to)
        if not export_to or {"*", ".", rule_namespace} & export_to:
            namespace_local.setdefault(rule_namespace, _RuleIndex()).merge(rule, export_to)
        private_only = len(export_to) == 1 and bool({".", rule_namespace} & export_to)
        if not private_only:
            exported.setdefault(rule_namespace, _RuleIndex()).merge(rule, export_to)
        elif rule_namespace == root_namespace:
            root_local.merge(rule, export_to)

    def exported_from(owner: str) -> list[_Consolidated]:
        """getExportedDestinationRuleFromNamespace."""
        index = exported.get(owner)
        found = index.most_specific(host_fqdn) if index is not None else None
        return [
            c
            for c in found or []
            if not c.export_to or "*" in c.export_to or client_namespace in c.export_to
        ]

    found: list[_Consolidated] | None
    if client_namespace != root_namespace:
        index = namespace_local.get(client_namespace)
        found = index.most_specific(host_fqdn) if index is not None else None
    else:
        found = root_local.most_specific(host_fqdn)
    if not found and service_namespace is not None:
        found = exported_from(service_namespace)
    if not found:
        found = exported_from(root_namespace)
    if not found:
        return None
    catch_all: DestinationRule | None = None
    for consolidated in found:
        candidate = consolidated.rule
        if candidate.workload_selector is None:
            catch_all = candidate
        elif candidate.namespace == client_namespace and is_subset(
            candidate.workload_selector, client_labels or {}
        ):
            return candidate
    return catch_all


def _resolve_short_name(host: str, namespace: str, domain_suffix: str) -> str:
    """ResolveShortnameToFQDN: a host without a dot is a service in the rule's namespace."""
    if host == "*" or "." in host:
        return host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"{host}.{namespace}.svc.{domain_suffix}"
    return host


def _kubernetes_service_namespace(host: str, domain_suffix: str) -> str | None:
    suffix = f".svc.{domain_suffix}"
    if not host.endswith(suffix):
        return None
    parts = host[: -len(suffix)].split(".")
    if len(parts) == 2 and len(parts[1]) <= 63 and K8S_LABEL.fullmatch(parts[1]):
        return parts[1]
    return None


@dataclass(frozen=True, slots=True)
class PortPolicy:
    """The traffic policy in force for one service port: the fields a ``portLevelSettings``
    entry can set, after ``GetPortLevelTrafficPolicy``. ``None`` means unset (Istio's
    default). ``port_level`` says whether a ``portLevelSettings`` entry supplied them."""

    tls: ClientTls | None = None
    connection_pool: Mapping[str, Any] | None = field(default=None, hash=False)
    load_balancer: Mapping[str, Any] | None = field(default=None, hash=False)
    outlier_detection: Mapping[str, Any] | None = field(default=None, hash=False)
    port_level: bool = False


def _check_port(port: object) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise PolicyError(f"port must be in range 1..65535, got {show(port)}")
    return port


def port_traffic_policy(rule: DestinationRule | None, port: int) -> PortPolicy | None:
    """The traffic policy ``rule`` puts in force on service ``port``; None without one.

    ``GetPortLevelTrafficPolicy`` (pilot/pkg/networking/util/util.go; older releases have the
    same rule inside ``MergeTrafficPolicy``, pilot/pkg/networking/core/cluster_builder.go and
    before that v1alpha3/cluster_builder.go): the first ``portLevelSettings`` entry for the
    port replaces ``connectionPool``, ``loadBalancer``, ``outlierDetection`` and ``tls``, all
    four, each taken from the entry even when the entry does not set it ("port level policies
    do not inherit and instead to defaults if not provided"; ``shadowCopyPortTrafficPolicy``).
    So an entry that sets only ``tls`` drops the rule's ``connectionPool``, and an entry without
    ``tls`` leaves TLS to auto mTLS. The port is the Service port, not the container port.
    Subset clusters (``MergeSubsetTrafficPolicy``) are not modelled: meshconform's Services
    are reached through their default cluster.
    """
    _check_port(port)
    if rule is None or rule.traffic_policy is None:
        return None
    policy = rule.traffic_policy
    for entry in policy.port_level_settings:
        if entry.port == port:
            return PortPolicy(
                tls=entry.tls,
                connection_pool=entry.other.get("connectionPool"),
                load_balancer=entry.other.get("loadBalancer"),
                outlier_detection=entry.other.get("outlierDetection"),
                port_level=True,
            )
    return PortPolicy(
        tls=policy.tls,
        connection_pool=policy.other.get("connectionPool"),
        load_balancer=policy.other.get("loadBalancer"),
        outlier_detection=policy.other.get("outlierDetection"),
    )


def client_tls_settings(rule: DestinationRule | None, port: int) -> ClientTls | None:
    """The TLS settings a client sidecar uses towards a service port under ``rule``.

    The ``tls`` of :func:`port_traffic_policy`. ``None`` means the rule sets no TLS for the
    port, and Istio's auto mTLS decides.
    """
    found = port_traffic_policy(rule, port)
    return None if found is None else found.tls


def client_tls_mode(rule: DestinationRule | None, port: int) -> TlsMode | None:
    """The mode of :func:`client_tls_settings`; ``None`` when the rule leaves TLS to auto mTLS."""
    settings = client_tls_settings(rule, port)
    return None if settings is None else settings.mode


def max_requests_per_connection(rule: DestinationRule | None, port: int) -> int | None:
    """``connectionPool.http.maxRequestsPerConnection`` in force on ``port`` (after
    :func:`port_traffic_policy`), or None when unset.

    ``applyConnectionPool`` (pilot/pkg/networking/core/cluster_traffic_policy.go) copies it to
    the cluster's ``common_http_protocol_options.max_requests_per_connection`` only when it is
    greater than 0, so 0 reads as unset.
    """
    found = port_traffic_policy(rule, port)
    pool = None if found is None else found.connection_pool
    http = pool.get("http") if isinstance(pool, Mapping) else None
    value = http.get("maxRequestsPerConnection") if isinstance(http, Mapping) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        assert rule is not None
        raise PolicyError(
            f"DestinationRule {rule.namespace}/{rule.name}: connectionPool.http"
            f".maxRequestsPerConnection {show(value)} is not an integer"
        )
    return value if value > 0 else None
