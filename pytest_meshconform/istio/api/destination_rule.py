"""DestinationRule (``networking.istio.io``): the dataclasses, their validation and the builder.

Accepted in ``networking.istio.io/v1``, ``v1beta1`` and ``v1alpha3``. Which rule a client
sidecar applies and what it says for a port is :mod:`pytest_meshconform.istio.destination_rule`.

Validation, transcribed from istio/istio ``pkg/config/validation/validation.go`` and
``pkg/config/validation/agent/validation.go`` (the function is named in brackets):

- ``host`` is a DNS name whose first label may be a wildcard [``agent.ValidateWildcardDomain``];
  a ``trafficPolicy`` (also a subset's) has at least one field and not both ``tunnel`` and
  ``proxyProtocol`` [``validateTrafficPolicy``]; each ``portLevelSettings`` entry has a
  ``port`` and at least one other field [``validatePortTrafficPolicies``], port numbers are
  1..65535 [``agent.ValidatePort``]; TLS modes are ``DISABLE``, ``SIMPLE``, ``MUTUAL``,
  ``ISTIO_MUTUAL`` [CRD enum]; ``MUTUAL`` needs ``clientCertificate`` and ``privateKey`` unless
  ``credentialName`` is set, and with ``credentialName`` no certificate, key, CA or CRL may be
  set; ``insecureSkipVerify`` excludes CA, credential (SIMPLE) and SAN settings
  [``agent.ValidateTLS``]; subset names are unique DNS-1123 labels with valid label maps
  [``ValidateDestinationRule``, ``validateSubset``]; ``exportTo`` holds ``.``, ``*`` or
  namespace labels, without duplicates, ``*`` alone, and only the own namespace for a rule
  with a ``workloadSelector`` [``validateExportTo``].
- Stricter than istiod: ``ISTIO_MUTUAL`` with ``clientCertificate``, ``privateKey``,
  ``caCertificates``, ``credentialName`` or ``caCrl`` is rejected. The API says these "should be
  empty if mode is ISTIO_MUTUAL" (istio/api ``ClientTLSSettings``) and istiod ignores them, so
  a suite that sets them would be testing something Istio does not do. ``sni`` and
  ``subjectAltNames`` stay allowed: istiod does use them for ``ISTIO_MUTUAL``.
- The parts that do not affect TLS (``loadBalancer``, ``connectionPool``, ``outlierDetection``,
  ``tunnel``, ``proxyProtocol``) must be objects and are carried through untouched; not
  modelled: their content, ``configmap://`` credential names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Final

from pytest_meshconform.istio.api.fields import (
    ISTIO_LABEL,
    K8S_SUBDOMAIN,
    FieldError,
    Meta,
    PolicyError,
    check_keys,
    checked_manifest,
    empty_map,
    enum_member,
    enum_text,
    freeze_maps,
    mapping,
    object_manifest,
    opaque_fields,
    optional_list,
    optional_mapping,
    parse_envelope,
    parse_selector,
    shorten,
    show,
    string,
    string_list,
    string_map,
    thaw,
)

__all__ = [
    "DESTINATION_RULE_API_VERSIONS",
    "ClientTls",
    "DestinationRule",
    "PortTrafficPolicy",
    "Subset",
    "TlsMode",
    "TrafficPolicy",
    "destination_rule",
    "parse_destination_rule",
    "validate_wildcard_domain",
]

DESTINATION_RULE_API_VERSIONS: Final = (
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
)
# A DNS label with an optional wildcard prefix (pkg/config/labels: wildcardPrefix).
_ISTIO_WILDCARD_LABEL = re.compile(r"\*|(?:\*|\*-)?[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?")
# Kubernetes label keys and values (Istio labels.Instance.Validate applies the same rules).
_QUALIFIED_NAME = re.compile(r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(?:(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_ALL_DIGITS = re.compile(r"[+-]?[0-9]+")


class TlsMode(StrEnum):
    """DestinationRule ``tls.mode``: what a client sidecar originates."""

    DISABLE = "DISABLE"
    SIMPLE = "SIMPLE"
    MUTUAL = "MUTUAL"
    ISTIO_MUTUAL = "ISTIO_MUTUAL"


@dataclass(frozen=True, slots=True)
class ClientTls:
    """DestinationRule ``ClientTLSSettings``; empty strings and lists read as absent."""

    mode: TlsMode = TlsMode.DISABLE
    client_certificate: str | None = None
    private_key: str | None = None
    ca_certificates: str | None = None
    credential_name: str | None = None
    subject_alt_names: tuple[str, ...] = ()
    sni: str | None = None
    insecure_skip_verify: bool | None = None
    ca_crl: str | None = None

    def to_manifest(self) -> dict[str, Any]:
        """The ``tls`` block as a plain dict."""
        out: dict[str, Any] = {}
        for key, attribute in _TLS_KEYS.items():
            value = getattr(self, attribute)
            if isinstance(value, TlsMode):
                out[key] = value.value
            elif isinstance(value, tuple):
                if value:
                    out[key] = list(value)
            elif value is not None:
                out[key] = value
        return out


@dataclass(frozen=True, slots=True)
class PortTrafficPolicy:
    """One ``portLevelSettings`` entry; ``other`` holds the non-TLS fields, untouched."""

    port: int
    tls: ClientTls | None = None
    other: Mapping[str, Any] = field(default_factory=empty_map, hash=False)

    def __post_init__(self) -> None:
        freeze_maps(self, "other")

    def to_manifest(self) -> dict[str, Any]:
        """The entry as a plain dict."""
        out: dict[str, Any] = {"port": {"number": self.port}}
        out.update({key: thaw(value) for key, value in self.other.items()})
        if self.tls is not None:
            out["tls"] = self.tls.to_manifest()
        return out


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """A ``trafficPolicy``; ``other`` holds the non-TLS fields, untouched."""

    tls: ClientTls | None = None
    port_level_settings: tuple[PortTrafficPolicy, ...] = ()
    other: Mapping[str, Any] = field(default_factory=empty_map, hash=False)

    def __post_init__(self) -> None:
        freeze_maps(self, "other")

    def to_manifest(self) -> dict[str, Any]:
        """The traffic policy as a plain dict."""
        out: dict[str, Any] = {key: thaw(value) for key, value in self.other.items()}
        if self.tls is not None:
            out["tls"] = self.tls.to_manifest()
        if self.port_level_settings:
            out["portLevelSettings"] = [entry.to_manifest() for entry in self.port_level_settings]
        return out


@dataclass(frozen=True, slots=True)
class Subset:
    """A named subset of a DestinationRule's host."""

    name: str
    labels: Mapping[str, str] = field(default_factory=empty_map, hash=False)
    traffic_policy: TrafficPolicy | None = None

    def __post_init__(self) -> None:
        freeze_maps(self, "labels")

    def to_manifest(self) -> dict[str, Any]:
        """The subset as a plain dict."""
        out: dict[str, Any] = {"name": self.name}
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.traffic_policy is not None:
            out["trafficPolicy"] = self.traffic_policy.to_manifest()
        return out


@dataclass(frozen=True, slots=True)
class DestinationRule:
    """A DestinationRule: what client sidecars do towards ``host``.

    ``workload_selector`` is ``workloadSelector.matchLabels`` (``None`` without one). Build one
    with :func:`destination_rule` or :func:`parse_policy`: the constructor validates nothing.
    """

    kind: ClassVar[str] = "DestinationRule"

    name: str
    namespace: str | None
    host: str
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()
    export_to: tuple[str, ...] = ()
    workload_selector: Mapping[str, str] | None = field(default=None, hash=False)
    api_version: str = DESTINATION_RULE_API_VERSIONS[0]
    creation_timestamp: datetime | None = None
    labels: Mapping[str, str] = field(default_factory=empty_map, hash=False)
    annotations: Mapping[str, str] = field(default_factory=empty_map, hash=False)

    def __post_init__(self) -> None:
        freeze_maps(self, "workload_selector", "labels", "annotations")

    def to_manifest(self) -> dict[str, Any]:
        """The object as a plain dict, ready for ``yaml.safe_dump`` or ``kubectl apply``."""
        spec: dict[str, Any] = {"host": self.host}
        if self.traffic_policy is not None:
            spec["trafficPolicy"] = self.traffic_policy.to_manifest()
        if self.subsets:
            spec["subsets"] = [subset.to_manifest() for subset in self.subsets]
        if self.export_to:
            spec["exportTo"] = list(self.export_to)
        if self.workload_selector is not None:
            spec["workloadSelector"] = {"matchLabels": dict(self.workload_selector)}
        return object_manifest(self, spec)


def parse_destination_rule(document: Mapping[str, Any], namespace: str | None) -> DestinationRule:
    """One DestinationRule object (its ``kind`` already read); raises :class:`.FieldError`,
    which :mod:`.parse` turns into a :class:`.PolicyError` naming the document."""
    api_version, meta, spec = parse_envelope(
        document, DestinationRule.kind, DESTINATION_RULE_API_VERSIONS, namespace
    )
    if spec is None:
        raise FieldError("spec", "is required (spec.host is required)")
    return _parse_spec(spec, api_version, meta)


def _parse_spec(spec: Mapping[str, Any], api_version: str, meta: Meta) -> DestinationRule:
    """ValidateDestinationRule."""
    check_keys(spec, {"host", "trafficPolicy", "subsets", "exportTo", "workloadSelector"}, "spec")
    raw_host = spec.get("host")
    if raw_host is None:
        raise FieldError("spec.host", "is required")
    host = string(raw_host, "spec.host")
    validate_wildcard_domain(host, "spec.host")
    traffic_policy = _parse_traffic_policy(spec, "spec")
    subsets: list[Subset] = []
    seen_subsets: set[str] = set()
    for index, item in enumerate(optional_list(spec, "subsets", "spec")):
        path = f"spec.subsets[{index}]"
        if item is None:
            raise FieldError(path, "subset may not be null")
        subset = _parse_subset(mapping(item, path), path)
        if subset.name in seen_subsets:
            raise FieldError(f"{path}.name", f"duplicate subset names: {subset.name}")
        seen_subsets.add(subset.name)
        subsets.append(subset)
    selector = parse_selector(spec, "workloadSelector", "spec")
    export_to = tuple(string_list(spec.get("exportTo"), "spec.exportTo"))
    _validate_export_to(export_to, meta.namespace, selector is not None)
    return DestinationRule(
        name=meta.name,
        namespace=meta.namespace,
        host=host,
        traffic_policy=traffic_policy,
        subsets=tuple(subsets),
        export_to=export_to,
        workload_selector=selector,
        api_version=api_version,
        creation_timestamp=meta.creation_timestamp,
        labels=meta.labels,
        annotations=meta.annotations,
    )


def validate_wildcard_domain(host: str, path: str) -> None:
    """agent.ValidateWildcardDomain: a wildcard only in the first label."""
    if len(host) > 255:
        raise FieldError(path, f"domain name {show(host)} too long (max 255)")
    if not host:
        raise FieldError(path, "empty domain name not allowed")
    first, dot, rest = host.partition(".")
    if len(first) > 63 or not _ISTIO_WILDCARD_LABEL.fullmatch(first):
        raise FieldError(path, f"domain name {show(host)} invalid (label {show(first)} invalid)")
    if dot:
        _validate_dns1123_labels(rest, path, host)


def _validate_dns1123_labels(domain: str, path: str, shown: str) -> None:
    """agent.ValidateDNS1123Labels: no all-numeric top-level domain; a trailing dot is fine."""
    parts = domain.split(".")
    if _ALL_DIGITS.fullmatch(parts[-1]):
        raise FieldError(
            path,
            f"domain name {show(shown)} invalid (top level domain {show(parts[-1])} "
            "cannot be all-numeric)",
        )
    for index, label in enumerate(parts):
        if index == len(parts) - 1 and label == "":
            return
        if len(label) > 63 or not ISTIO_LABEL.fullmatch(label):
            raise FieldError(
                path, f"domain name {show(shown)} invalid (label {show(label)} invalid)"
            )


_TOP_LEVEL_OPAQUE: Final = ("loadBalancer", "connectionPool", "outlierDetection", "tunnel")
_TOP_LEVEL_OPAQUE_ALL: Final = (*_TOP_LEVEL_OPAQUE, "proxyProtocol")
_PORT_LEVEL_OPAQUE: Final = ("loadBalancer", "connectionPool", "outlierDetection")


def _parse_traffic_policy(parent: Mapping[str, Any], parent_path: str) -> TrafficPolicy | None:
    """validateTrafficPolicy, for the rule or a subset (validateSubset applies the same)."""
    path = f"{parent_path}.trafficPolicy"
    policy = optional_mapping(parent, "trafficPolicy", parent_path)
    if policy is None:
        return None
    check_keys(policy, {*_TOP_LEVEL_OPAQUE_ALL, "tls", "portLevelSettings"}, path)
    other = opaque_fields(policy, _TOP_LEVEL_OPAQUE_ALL, path)
    tls = _parse_tls(policy, path)
    entries: list[PortTrafficPolicy] = []
    for index, item in enumerate(optional_list(policy, "portLevelSettings", path)):
        entry_path = f"{path}.portLevelSettings[{index}]"
        if item is None:
            raise FieldError(entry_path, "traffic policy may not be null")
        entries.append(_parse_port_traffic_policy(mapping(item, entry_path), entry_path))
    if tls is None and not entries and not other:
        raise FieldError(path, "traffic policy must have at least one field")
    if "tunnel" in other and "proxyProtocol" in other:
        raise FieldError(path, "tunnel and proxyProtocol must not be set together")
    return TrafficPolicy(tls=tls, port_level_settings=tuple(entries), other=other)


def _parse_port_traffic_policy(entry: Mapping[str, Any], path: str) -> PortTrafficPolicy:
    """validatePortTrafficPolicies, for one entry."""
    check_keys(entry, {"port", *_PORT_LEVEL_OPAQUE, "tls"}, path)
    port_selector = optional_mapping(entry, "port", path)
    if port_selector is None:
        raise FieldError(f"{path}.port", "portTrafficPolicy must have valid port")
    check_keys(port_selector, {"number"}, f"{path}.port")
    raw_number = port_selector.get("number")
    if raw_number is None:
        raise FieldError(f"{path}.port.number", "is required")
    if not isinstance(raw_number, int) or isinstance(raw_number, bool):
        raise FieldError(f"{path}.port.number", f"{show(raw_number)} is not an integer")
    if not 1 <= raw_number <= 65535:
        raise FieldError(
            f"{path}.port.number", f"port number {raw_number} must be in range 1..65535"
        )
    other = opaque_fields(entry, _PORT_LEVEL_OPAQUE, path)
    tls = _parse_tls(entry, path)
    if tls is None and not other:
        raise FieldError(path, "port traffic policy must have at least one field")
    return PortTrafficPolicy(port=raw_number, tls=tls, other=other)


_TLS_KEYS: Final = {
    "mode": "mode",
    "clientCertificate": "client_certificate",
    "privateKey": "private_key",
    "caCertificates": "ca_certificates",
    "credentialName": "credential_name",
    "subjectAltNames": "subject_alt_names",
    "sni": "sni",
    "insecureSkipVerify": "insecure_skip_verify",
    "caCrl": "ca_crl",
}
_ISTIO_MUTUAL_FORBIDDEN: Final = (
    "clientCertificate",
    "privateKey",
    "caCertificates",
    "credentialName",
    "caCrl",
)


def _parse_tls(parent: Mapping[str, Any], parent_path: str) -> ClientTls | None:
    """agent.ValidateTLS, plus the ISTIO_MUTUAL rule from the API documentation."""
    path = f"{parent_path}.tls"
    tls = optional_mapping(parent, "tls", parent_path)
    if tls is None:
        return None
    check_keys(tls, set(_TLS_KEYS), path)
    raw_mode = tls.get("mode")
    mode = TlsMode.DISABLE if raw_mode is None else enum_member(TlsMode, raw_mode, f"{path}.mode")

    def text(key: str) -> str | None:
        value = tls.get(key)
        return None if value is None else (string(value, f"{path}.{key}") or None)

    skip = tls.get("insecureSkipVerify")
    if skip is not None and not isinstance(skip, bool):
        raise FieldError(f"{path}.insecureSkipVerify", f"{show(skip)} is not a boolean")
    settings = ClientTls(
        mode=mode,
        client_certificate=text("clientCertificate"),
        private_key=text("privateKey"),
        ca_certificates=text("caCertificates"),
        credential_name=text("credentialName"),
        subject_alt_names=tuple(string_list(tls.get("subjectAltNames"), f"{path}.subjectAltNames")),
        sni=text("sni"),
        insecure_skip_verify=skip,
        ca_crl=text("caCrl"),
    )
    if mode is TlsMode.ISTIO_MUTUAL:
        for key in _ISTIO_MUTUAL_FORBIDDEN:
            if getattr(settings, _TLS_KEYS[key]) is not None:
                raise FieldError(
                    f"{path}.{key}",
                    "must not be set with mode ISTIO_MUTUAL, which uses Istio's own "
                    "certificates (ClientTLSSettings: should be empty if mode is ISTIO_MUTUAL)",
                )
    if settings.insecure_skip_verify:
        if mode is TlsMode.SIMPLE and (
            settings.ca_certificates or settings.credential_name or settings.subject_alt_names
        ):
            raise FieldError(
                path,
                "cannot specify CaCertificates or CredentialName or SubjectAltNames when "
                "InsecureSkipVerify is set true",
            )
        if mode is TlsMode.MUTUAL and (settings.ca_certificates or settings.subject_alt_names):
            raise FieldError(
                path,
                "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify "
                "is set true",
            )
    if mode in (TlsMode.SIMPLE, TlsMode.MUTUAL) and settings.credential_name:
        if (
            settings.client_certificate
            or settings.ca_certificates
            or settings.private_key
            or settings.ca_crl
        ):
            raise FieldError(
                path,
                "cannot specify client certificates or CA certificate or CA CRL If "
                "credentialName is set",
            )
        return settings
    if mode is TlsMode.MUTUAL:
        if not settings.client_certificate:
            raise FieldError(
                f"{path}.clientCertificate", "client certificate required for mutual tls"
            )
        if not settings.private_key:
            raise FieldError(f"{path}.privateKey", "private key required for mutual tls")
    return settings


def _parse_subset(subset: Mapping[str, Any], path: str) -> Subset:
    """validateSubset: a DNS-1123 label name, valid labels, a valid traffic policy."""
    check_keys(subset, {"name", "labels", "trafficPolicy"}, path)
    raw_name = subset.get("name")
    if raw_name is None:
        raise FieldError(f"{path}.name", "subset name cannot be empty")
    name = string(raw_name, f"{path}.name")
    if not name:
        raise FieldError(f"{path}.name", "subset name cannot be empty")
    if len(name) > 63 or not ISTIO_LABEL.fullmatch(name):
        raise FieldError(f"{path}.name", f"subset name is invalid: {shorten(name, 80)}")
    labels = string_map(subset.get("labels"), f"{path}.labels") or {}
    for key, value in labels.items():
        _validate_label(key, value, f"{path}.labels[{show(key)}]")
    return Subset(
        name=name,
        labels=labels,
        traffic_policy=_parse_traffic_policy(subset, path),
    )


def _validate_label(key: str, value: str, path: str) -> None:
    """Kubernetes label syntax, as Istio's labels.Instance.Validate applies it."""
    prefix, slash, name = key.rpartition("/")
    valid_prefix = not slash or (
        0 < len(prefix) <= 253 and K8S_SUBDOMAIN.fullmatch(prefix.lower()) is not None
    )
    if not valid_prefix or len(name) > 63 or not _QUALIFIED_NAME.fullmatch(name):
        raise FieldError(path, f"invalid tag key: {show(key)}")
    if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
        raise FieldError(path, f"invalid tag value: {show(value)}")


def _validate_export_to(export_to: tuple[str, ...], namespace: str | None, selector: bool) -> None:
    """validateExportTo (isServiceEntry false); ``.`` counts as the rule's own namespace."""
    seen: set[str] = set()
    own = namespace if namespace is not None else "."
    for index, entry in enumerate(export_to):
        path = f"spec.exportTo[{index}]"
        key = own if entry == "." else entry
        if key in seen:
            if key != entry:
                raise FieldError(
                    path, f"duplicate entries in exportTo: . and current namespace {own}"
                )
            raise FieldError(path, f"duplicate entries in exportTo for entry {show(entry)}")
        if entry == "~":
            raise FieldError(path, "exportTo ~ (none) is not allowed for Istio configuration")
        if entry not in (".", "*") and (len(entry) > 63 or not ISTIO_LABEL.fullmatch(entry)):
            raise FieldError(
                path, "only .,*, or a valid DNS 1123 label is allowed as exportTo entry"
            )
        seen.add(key)
    if selector and seen:
        if own not in seen:
            raise FieldError(
                "spec.exportTo",
                "destination rule with workload selector cannot have exportTo beyond current "
                "namespace",
            )
        if len(seen) > 1:
            raise FieldError(
                "spec.exportTo",
                "destination rule with workload selector cannot have multiple entries in exportTo",
            )
    if "*" in seen and len(export_to) > 1:
        raise FieldError(
            "spec.exportTo",
            "cannot have both public (*) and non-public exportTo values for a resource",
        )


def destination_rule(
    name: str,
    namespace: str | None,
    host: str,
    mode: TlsMode | str | None = None,
    port_level: Mapping[int, TlsMode | str] | None = None,
    sni: str | None = None,
    subject_alt_names: Iterable[str] | None = None,
    *,
    credential_name: str | None = None,
    client_certificate: str | None = None,
    private_key: str | None = None,
    ca_certificates: str | None = None,
    workload_selector: Mapping[str, str] | None = None,
    export_to: Iterable[str] | None = None,
    api_version: str = DESTINATION_RULE_API_VERSIONS[0],
) -> dict[str, Any]:
    """A DestinationRule manifest (plain dict); raises PolicyError if Istio would reject it.

    ``mode`` and the TLS details go to ``trafficPolicy.tls``; ``port_level`` maps service
    ports to modes in ``portLevelSettings`` (sorted by port). TLS details without ``mode``
    are refused rather than silently meaning ``DISABLE``.
    """
    __tracebackhide__ = True  # a bad policy points at the suite's line
    details = {
        "sni": sni,
        "subjectAltNames": None if subject_alt_names is None else list(subject_alt_names),
        "credentialName": credential_name,
        "clientCertificate": client_certificate,
        "privateKey": private_key,
        "caCertificates": ca_certificates,
    }
    given = {key: value for key, value in details.items() if value is not None}
    traffic_policy: dict[str, Any] = {}
    if mode is not None:
        traffic_policy["tls"] = {"mode": enum_text(mode), **given}
    elif given:
        raise PolicyError(f"destination_rule: {', '.join(given)} given without a TLS mode")
    if port_level:
        traffic_policy["portLevelSettings"] = [
            {"port": {"number": _port_number(port)}, "tls": {"mode": enum_text(port_mode)}}
            for port, port_mode in sorted(
                port_level.items(), key=lambda item: _port_number(item[0])
            )
        ]
    spec: dict[str, Any] = {"host": host}
    if traffic_policy:
        spec["trafficPolicy"] = traffic_policy
    if export_to is not None:
        spec["exportTo"] = list(export_to)
    if workload_selector is not None:
        spec["workloadSelector"] = {"matchLabels": dict(workload_selector)}
    metadata = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
    manifest = {
        "apiVersion": api_version,
        "kind": DestinationRule.kind,
        "metadata": metadata,
        "spec": spec,
    }
    return checked_manifest(parse_destination_rule, manifest)


def _port_number(port: object) -> int:
    if not isinstance(port, int) or isinstance(port, bool):
        raise PolicyError(f"port {show(port)} is not an integer")
    return port
