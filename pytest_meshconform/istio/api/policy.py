# Large on purpose: one parser and validator of the Istio policy kinds, see docs/architecture.md.
"""Istio PeerAuthentication, DestinationRule and AuthorizationPolicy: parse, validate, build.

The suites state what a mesh must do in terms of Istio policy objects; this module turns those
objects into frozen dataclasses and rejects what Istio would reject. What they mean for each
sidecar (precedence, DestinationRule lookup, auto mTLS) is :mod:`pytest_meshconform.istio`;
``effective_mtls_mode``, ``destination_rule_for``, ``client_tls_settings`` and
``client_tls_mode`` stay importable from here.

Accepted objects (anything else is rejected with the accepted list):

- ``PeerAuthentication`` in ``security.istio.io/v1`` and ``security.istio.io/v1beta1``;
- ``DestinationRule`` in ``networking.istio.io/v1``, ``v1beta1`` and ``v1alpha3``;
- ``AuthorizationPolicy`` in ``security.istio.io/v1`` and ``v1beta1`` (ALLOW and DENY; AUDIT,
  CUSTOM, ``provider``, ``targetRef(s)``, JWT and service-account fields, ``remoteIpBlocks``
  and path templates are refused by name: meshconform does not model them);
- in :func:`parse_policies` also ``v1/List`` (what ``kubectl get -o yaml`` prints), flattened.

Sources are YAML or JSON text (``str`` or UTF-8 ``bytes``, possibly several ``---`` documents;
empty documents are skipped) or already-loaded mappings. Duplicate keys in a YAML mapping are
an error, as they are for ``kubectl``. ``null`` in an object field means absent (Kubernetes
prunes nulls of non-nullable CRD fields); ``null`` as a list item or map value is an error.
Unknown fields in the modelled parts are errors, like ``kubectl``'s strict field validation;
the parts that do not affect TLS (``loadBalancer``, ``connectionPool``, ``outlierDetection``,
``tunnel``, ``proxyProtocol``) must be objects and are carried through untouched. In
``metadata`` only ``name``, ``namespace``, ``creationTimestamp``, ``labels`` and ``annotations``
are kept; server-populated fields (``uid``, ``resourceVersion``, ...) and ``status`` are
ignored so that ``kubectl get -o yaml`` output parses.

Validation, transcribed from istio/istio ``pkg/config/validation/validation.go`` and
``pkg/config/validation/agent/validation.go``, and from the CRD rules generated from istio/api
(the function or rule is named in brackets; Kubernetes rules come from apimachinery):

- ``metadata.name`` is required and a DNS-1123 subdomain; ``metadata.namespace`` is optional
  (``None`` is "the namespace the caller applies it to", like ``kubectl apply -n``) and a
  DNS-1123 label [apimachinery ``IsDNS1123Subdomain`` / ``ValidateNamespaceName``].
- PeerAuthentication modes are ``UNSET``, ``DISABLE``, ``PERMISSIVE``, ``STRICT`` [CRD enum].
  ``selector.matchLabels`` keys are non-empty and neither keys nor values contain ``*``
  [``validateWorkloadSelector``]. ``portLevelMtls`` needs a selector with at least one label
  ["portLevelMtls requires selector", CRD CEL; "mesh/namespace peer authentication cannot have
  port level mTLS", ``ValidatePeerAuthentication``], has at least one entry ["port level mTLS,
  if defined, must have at least one element"], and its keys are ports 1..65535 ["port must be
  in range 1..65535"].
- DestinationRule ``host`` is a DNS name whose first label may be a wildcard
  [``agent.ValidateWildcardDomain``]; a ``trafficPolicy`` (also a subset's) has at least one
  field and not both ``tunnel`` and ``proxyProtocol`` [``validateTrafficPolicy``]; each
  ``portLevelSettings`` entry has a ``port`` and at least one other field
  [``validatePortTrafficPolicies``], port numbers are 1..65535 [``agent.ValidatePort``]; TLS
  modes are ``DISABLE``, ``SIMPLE``, ``MUTUAL``, ``ISTIO_MUTUAL`` [CRD enum]; ``MUTUAL`` needs
  ``clientCertificate`` and ``privateKey`` unless ``credentialName`` is set, and with
  ``credentialName`` no certificate, key, CA or CRL may be set; ``insecureSkipVerify`` excludes
  CA, credential (SIMPLE) and SAN settings [``agent.ValidateTLS``]; subset names are unique
  DNS-1123 labels with valid label maps [``ValidateDestinationRule``, ``validateSubset``];
  ``exportTo`` holds ``.``, ``*`` or namespace labels, without duplicates, ``*`` alone, and
  only the own namespace for a rule with a ``workloadSelector`` [``validateExportTo``].
- Stricter than istiod: ``ISTIO_MUTUAL`` with ``clientCertificate``, ``privateKey``,
  ``caCertificates``, ``credentialName`` or ``caCrl`` is rejected. The API says these "should be
  empty if mode is ISTIO_MUTUAL" (istio/api ``ClientTLSSettings``) and istiod ignores them, so
  a suite that sets them would be testing something Istio does not do. ``sni`` and
  ``subjectAltNames`` stay allowed: istiod does use them for ``ISTIO_MUTUAL``.
- AuthorizationPolicy [``ValidateAuthorizationPolicy``]: ``from``/``to`` not empty when
  present, each ``source``/``operation`` set and not empty, no empty values, IPs and CIDRs
  valid [``security.ValidateIPs``], ports decimal 0..65535 [``security.ValidatePorts``],
  ``when`` keys known with ``values`` or ``notValues``, a DENY policy needs ``rules``; the
  ``istio.io/dry-run`` annotation must parse as Go's ``strconv.ParseBool`` (istiod logs and
  ignores a bad one; refused here).
- Not modelled: the content of the carried-through parts, ``configmap://`` credential names.

Work is linear in the input, and YAML, which has no limits of its own, gets Kubernetes' and
Python's: before a document is constructed its node graph is walked as go-yaml's decoder walks
it (aliases and merge keys followed), and it is refused, as ``kubectl`` refuses it, with
"contains excessive aliasing" once more than 99 % of over 1,000 decoded nodes came through
aliases (falling to 10 % between 400,000 and 4,000,000 nodes: go-yaml ``allowedAliasRatio``);
an integer scalar longer than 4300 characters (Python's ``int()`` limit; YAML 1.1 base-60
integers would otherwise cost a big-integer multiplication per digit) is refused; a
``creationTimestamp`` whose UTC instant falls outside years 1..9999 is an error. Messages
quote at most a few items of an offending value.

Errors are :class:`PolicyError`, whose message names the document, the field path
(``spec.portLevelMtls[8080].mode``) and the offending value.
"""

from __future__ import annotations

import itertools
import re
import reprlib
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeAlias

import yaml

__all__ = [
    "AuthorizationPolicy",
    "AuthzAction",
    "AuthzCondition",
    "AuthzOperation",
    "AuthzRule",
    "AuthzSource",
    "ClientTls",
    "DestinationRule",
    "MtlsMode",
    "PeerAuthentication",
    "PolicyError",
    "PortTrafficPolicy",
    "Subset",
    "TlsMode",
    "TrafficPolicy",
    "authorization_policy",
    "destination_rule",
    "parse_policies",
    "parse_policy",
    "peer_authentication",
]

PEER_AUTHENTICATION_API_VERSIONS: Final = ("security.istio.io/v1", "security.istio.io/v1beta1")
DESTINATION_RULE_API_VERSIONS: Final = (
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
)
AUTHORIZATION_POLICY_API_VERSIONS: Final = ("security.istio.io/v1", "security.istio.io/v1beta1")
_ACCEPTED_KINDS: Final = {
    "PeerAuthentication": PEER_AUTHENTICATION_API_VERSIONS,
    "DestinationRule": DESTINATION_RULE_API_VERSIONS,
    "AuthorizationPolicy": AUTHORIZATION_POLICY_API_VERSIONS,
}

# Kubernetes object names and namespaces (apimachinery, lower case only).
_K8S_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")
_K8S_SUBDOMAIN = re.compile(
    r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"  # first label
    r"(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
)
# Istio's own DNS label (pkg/config/labels: dns1123LabelFmt, wildcardPrefix); allows upper case.
_ISTIO_LABEL = re.compile(r"[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?")
_ISTIO_WILDCARD_LABEL = re.compile(r"\*|(?:\*|\*-)?[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?")
# Kubernetes label keys and values (Istio labels.Instance.Validate applies the same rules).
_QUALIFIED_NAME = re.compile(r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(?:(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")
_PORT_KEY = re.compile(r"[0-9]+")
_ALL_DIGITS = re.compile(r"[+-]?[0-9]+")
# Limits for the carried-through parts, so that YAML aliases cannot blow up a copy.
_MAX_OPAQUE_NODES: Final = 100_000
_MAX_OPAQUE_DEPTH: Final = 64
_VALUE_LIMIT: Final = 60
# YAML has no limits of its own; these are Kubernetes' and Python's (see _check_yaml_work).
_ALIAS_RATIO_RANGE_LOW: Final = 400_000
_ALIAS_RATIO_RANGE_HIGH: Final = 4_000_000
_MAX_INT_SCALAR: Final = 4300  # sys.int_info.default_max_str_digits
_YAML_INT_TAG: Final = "tag:yaml.org,2002:int"
# What a scalar tagged !!bool, !!int, !!float or !!timestamp must look like: the resolver's own
# patterns (PyYAML's constructors fail with KeyError, IndexError or AttributeError otherwise).
_YAML_SCALAR_FORMS: Final = {
    tag: pattern
    for resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.values()
    for tag, pattern in resolvers
    if tag.rpartition(":")[2] in ("bool", "int", "float", "timestamp")
}
# reprlib with small limits: a message quotes a few items of a value, never walks all of it.
_SHORT_REPR: Final = reprlib.Repr()  # keyword arguments need Python 3.12
_SHORT_REPR.maxlevel = 3
_SHORT_REPR.maxtuple = _SHORT_REPR.maxlist = _SHORT_REPR.maxdict = _SHORT_REPR.maxset = 4
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = _VALUE_LIMIT


class PolicyError(ValueError):
    """A policy Istio would reject (or that this module cannot read without guessing)."""

    def __init__(self, problem: str, *, path: str = "", document: str = "") -> None:
        where = ": ".join(part for part in (document, path) if part)
        super().__init__(f"{where}: {problem}" if where else problem)
        self.problem = problem
        self.path = path
        self.document = document


class MtlsMode(StrEnum):
    """PeerAuthentication ``mtls.mode``: what a server sidecar accepts."""

    UNSET = "UNSET"
    DISABLE = "DISABLE"
    PERMISSIVE = "PERMISSIVE"
    STRICT = "STRICT"


class TlsMode(StrEnum):
    """DestinationRule ``tls.mode``: what a client sidecar originates."""

    DISABLE = "DISABLE"
    SIMPLE = "SIMPLE"
    MUTUAL = "MUTUAL"
    ISTIO_MUTUAL = "ISTIO_MUTUAL"


def _freeze_maps(obj: object, *names: str) -> None:
    """Replace a frozen dataclass's mapping fields by read-only copies (None stays None)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None:
            object.__setattr__(obj, name, MappingProxyType(dict(value)))


def _empty_map() -> Mapping[Any, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class PeerAuthentication:
    """A PeerAuthentication: the mTLS mode server sidecars enforce.

    ``mode`` is ``None`` when the object has no ``mtls`` block (both that and ``UNSET`` inherit).
    ``selector`` is the ``selector.matchLabels`` map, ``None`` without a selector; an empty map
    is, like no selector, namespace-wide. ``port_level`` maps container ports to modes.
    Build one with :func:`peer_authentication` or :func:`parse_policy`: the constructor
    copies the maps but validates nothing.
    """

    kind: ClassVar[str] = "PeerAuthentication"

    name: str
    namespace: str | None
    mode: MtlsMode | None = None
    selector: Mapping[str, str] | None = field(default=None, hash=False)
    port_level: Mapping[int, MtlsMode] = field(default_factory=_empty_map, hash=False)
    api_version: str = PEER_AUTHENTICATION_API_VERSIONS[0]
    creation_timestamp: datetime | None = None
    labels: Mapping[str, str] = field(default_factory=_empty_map, hash=False)
    annotations: Mapping[str, str] = field(default_factory=_empty_map, hash=False)

    def __post_init__(self) -> None:
        _freeze_maps(self, "selector", "port_level", "labels", "annotations")

    @property
    def is_workload_policy(self) -> bool:
        """True when a non-empty selector limits it to some workloads (istiod's test)."""
        return bool(self.selector)

    def to_manifest(self) -> dict[str, Any]:
        """The object as a plain dict, ready for ``yaml.safe_dump`` or ``kubectl apply``."""
        spec: dict[str, Any] = {}
        if self.selector is not None:
            spec["selector"] = {"matchLabels": dict(self.selector)}
        if self.mode is not None:
            spec["mtls"] = {"mode": self.mode.value}
        if self.port_level:
            spec["portLevelMtls"] = {
                str(port): {"mode": mode.value} for port, mode in sorted(self.port_level.items())
            }
        return _object_manifest(self, spec)


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
    other: Mapping[str, Any] = field(default_factory=_empty_map, hash=False)

    def __post_init__(self) -> None:
        _freeze_maps(self, "other")

    def to_manifest(self) -> dict[str, Any]:
        """The entry as a plain dict."""
        out: dict[str, Any] = {"port": {"number": self.port}}
        out.update({key: _thaw(value) for key, value in self.other.items()})
        if self.tls is not None:
            out["tls"] = self.tls.to_manifest()
        return out


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """A ``trafficPolicy``; ``other`` holds the non-TLS fields, untouched."""

    tls: ClientTls | None = None
    port_level_settings: tuple[PortTrafficPolicy, ...] = ()
    other: Mapping[str, Any] = field(default_factory=_empty_map, hash=False)

    def __post_init__(self) -> None:
        _freeze_maps(self, "other")

    def to_manifest(self) -> dict[str, Any]:
        """The traffic policy as a plain dict."""
        out: dict[str, Any] = {key: _thaw(value) for key, value in self.other.items()}
        if self.tls is not None:
            out["tls"] = self.tls.to_manifest()
        if self.port_level_settings:
            out["portLevelSettings"] = [entry.to_manifest() for entry in self.port_level_settings]
        return out


@dataclass(frozen=True, slots=True)
class Subset:
    """A named subset of a DestinationRule's host."""

    name: str
    labels: Mapping[str, str] = field(default_factory=_empty_map, hash=False)
    traffic_policy: TrafficPolicy | None = None

    def __post_init__(self) -> None:
        _freeze_maps(self, "labels")

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
    labels: Mapping[str, str] = field(default_factory=_empty_map, hash=False)
    annotations: Mapping[str, str] = field(default_factory=_empty_map, hash=False)

    def __post_init__(self) -> None:
        _freeze_maps(self, "workload_selector", "labels", "annotations")

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
        return _object_manifest(self, spec)


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
    labels: Mapping[str, str] = field(default_factory=_empty_map, hash=False)
    annotations: Mapping[str, str] = field(default_factory=_empty_map, hash=False)

    def __post_init__(self) -> None:
        _freeze_maps(self, "selector", "labels", "annotations")

    @property
    def dry_run(self) -> bool:
        """``istio.io/dry-run: "true"``: the rules are shadow rules, never enforced."""
        return self.annotations.get(DRY_RUN_ANNOTATION, "false") in _GO_TRUE

    def to_manifest(self) -> dict[str, Any]:
        """The object as a plain dict, ready for ``yaml.safe_dump`` or ``kubectl apply``."""
        spec: dict[str, Any] = {}
        if self.selector is not None:
            spec["selector"] = {"matchLabels": dict(self.selector)}
        spec["action"] = self.action.value
        if self.rules:
            spec["rules"] = [rule.to_manifest() for rule in self.rules]
        return _object_manifest(self, spec)


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


Policy: TypeAlias = PeerAuthentication | DestinationRule | AuthorizationPolicy
PolicySource: TypeAlias = str | bytes | Mapping[str, Any]


# --------------------------------------------------------------------------- parsing


class _FieldError(Exception):
    """Raised inside one document; turned into a PolicyError with the document's label."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(problem)
        self.path = path
        self.problem = problem


def parse_policy(source: PolicySource, *, namespace: str | None = None) -> Policy:
    """Parse exactly one policy from YAML/JSON text or a mapping.

    ``namespace`` works like ``kubectl apply -n``: it fills in a missing
    ``metadata.namespace`` and must agree with one that is present.
    """
    policies = parse_policies(source, namespace=namespace)
    if len(policies) != 1:
        raise PolicyError(f"expected exactly one policy, found {len(policies)}")
    return policies[0]


def parse_policies(
    source: PolicySource | Iterable[Mapping[str, Any]], *, namespace: str | None = None
) -> tuple[Policy, ...]:
    """Parse every policy in YAML/JSON text (``---`` separated), a mapping, or mappings."""
    if namespace is not None:
        _check_argument_namespace(namespace, "namespace argument")
    policies: list[Policy] = []
    for label, document in _documents(source):
        try:
            policies.append(_parse_document(document, namespace))
        except _FieldError as error:
            raise PolicyError(
                error.problem, path=error.path, document=_describe(label, document)
            ) from None
    return tuple(policies)


def _documents(source: object) -> Iterator[tuple[str, object]]:
    """Yield (label, loaded document) pairs, flattening ``kind: List``."""
    if isinstance(source, bytes | bytearray):
        try:
            source = bytes(source).decode("utf-8")
        except UnicodeDecodeError as error:
            raise PolicyError(f"input is not UTF-8: {error}") from None
    if isinstance(source, str):
        loaded = _load_yaml(source)
    elif isinstance(source, Mapping):
        loaded = [source]
    elif isinstance(source, Iterable):
        loaded = list(source)
    else:
        raise PolicyError(
            f"expected YAML/JSON text, bytes or mappings, got {type(source).__name__}"
        )
    count = 0
    for document in loaded:
        if document is None:  # an empty document between separators
            continue
        count += 1
        label = f"document {count}"
        if isinstance(document, Mapping) and document.get("kind") == "List":
            items = document.get("items")
            if not isinstance(items, list):
                raise PolicyError("a List needs an items list", path="items", document=label)
            for index, item in enumerate(items):
                yield f"{label} items[{index}]", item
        else:
            yield label, document


if TYPE_CHECKING:
    _SafeLoader = yaml.SafeLoader
else:  # libyaml's parser when PyYAML has it (about 15 times faster), else PyYAML's own
    _SafeLoader = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader


class _StrictLoader(_SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one silently.

    Only scanning, parsing and composing come from libyaml (``CSafeLoader``); resolving tags
    and constructing values are PyYAML's Python ``Resolver`` and ``SafeConstructor`` either
    way, so documents mean the same with or without it.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable: the base constructor reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> list[object]:
    """Every document of ``text``; each node graph is checked before it is constructed."""
    documents: list[object] = []
    loader = None
    try:
        loader = _StrictLoader(text)  # the reader checks the characters here
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                break
            _check_yaml_work(node, len(documents) + 1)
            documents.append(loader.construct_document(node))
    except PolicyError:
        raise
    except yaml.YAMLError as error:
        raise PolicyError(
            f"not valid YAML: {_shorten(' '.join(str(error).split()), 300)}"
        ) from None
    except RecursionError:
        raise PolicyError("not valid YAML: nested too deeply") from None
    except (ValueError, OverflowError, LookupError, TypeError) as error:
        # PyYAML's constructors call int(), datetime() and dict lookups on the scalars
        raise PolicyError(
            f"not valid YAML: {type(error).__name__}: {_shorten(str(error), 300)}"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
    return documents


def _aliasing_allowed(decodes: int) -> float:
    """go-yaml's ``allowedAliasRatio`` (gopkg.in/yaml.v2 decode.go, which kubectl decodes
    with through sigs.k8s.io/yaml): the share of decoded nodes that may come from following
    aliases, 0.99 up to 400,000 nodes, falling to 0.10 at 4,000,000."""
    if decodes <= _ALIAS_RATIO_RANGE_LOW:
        return 0.99
    if decodes >= _ALIAS_RATIO_RANGE_HIGH:
        return 0.10
    spread = _ALIAS_RATIO_RANGE_HIGH - _ALIAS_RATIO_RANGE_LOW
    return 0.99 - 0.89 * (decodes - _ALIAS_RATIO_RANGE_LOW) / spread


def _check_yaml_work(root: yaml.Node, number: int) -> None:
    """Refuse a document whose aliases expand it beyond what Kubernetes decodes, or that holds
    an integer longer than ``_MAX_INT_SCALAR`` characters, before anything is constructed.

    Walks the document as go-yaml's decoder does, following every alias (and YAML merge key,
    which PyYAML copies), and stops as go-yaml stops: once more than 100 of more than 1,000
    decoded nodes came through aliases and their share exceeds :func:`_aliasing_allowed`.
    The walk therefore takes at most about 100 steps per node of the document, and no more
    than its own nodes plus about 400,000 for a big one.
    """
    decodes = aliased = 0
    seen: set[int] = set()
    # One iterator of children per open node (keys and values in document order): a long
    # list reached again through an alias costs one step per child visited, not its length.
    stack: list[tuple[Iterator[yaml.Node], bool]] = [(iter((root,)), False)]
    while stack:
        children, through_alias = stack[-1]
        node = next(children, None)
        if node is None:
            stack.pop()
            continue
        decodes += 1
        if id(node) in seen:
            through_alias = True  # the anchor was decoded before: this is an alias
        seen.add(id(node))
        if through_alias:
            aliased += 1
            if aliased > 100 and decodes > 1000 and aliased / decodes > _aliasing_allowed(decodes):
                raise PolicyError(
                    f"document {number} contains excessive aliasing: after {decodes} nodes, "
                    f"{aliased} came from following YAML aliases, more than the "
                    f"{_aliasing_allowed(decodes):.0%} Kubernetes' YAML decoder (go-yaml) "
                    "allows; write the repeated parts out"
                )
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _YAML_INT_TAG and len(node.value) > _MAX_INT_SCALAR:
                raise PolicyError(
                    f"document {number}: an integer of more than {_MAX_INT_SCALAR} characters "
                    f"at line {node.start_mark.line + 1} (the limit of Python's int())"
                )
            form = _YAML_SCALAR_FORMS.get(node.tag)
            if form is not None and not form.match(node.value):  # an explicit !!int x
                raise PolicyError(
                    f"document {number}: {show(node.value)} at line {node.start_mark.line + 1} "
                    f"is not a valid !!{node.tag.rpartition(':')[2]}"
                )
        elif isinstance(node, yaml.SequenceNode):
            stack.append((iter(node.value), through_alias))
        elif isinstance(node, yaml.MappingNode):
            stack.append((itertools.chain.from_iterable(node.value), through_alias))


def _describe(label: str, document: object) -> str:
    if isinstance(document, Mapping):
        kind = document.get("kind")
        metadata = document.get("metadata")
        name = metadata.get("name") if isinstance(metadata, Mapping) else None
        if isinstance(kind, str) and isinstance(name, str):
            return f"{label} ({_shorten(kind, 40)} {_shorten(name, 80)!r})"
        if isinstance(kind, str):
            return f"{label} ({_shorten(kind, 40)})"
    return label


def _parse_document(document: object, namespace: str | None) -> Policy:
    if not isinstance(document, Mapping):
        raise _FieldError("", f"expected a mapping (an object), got {_type_name(document)}")
    kind = document.get("kind")
    api_version = document.get("apiVersion")
    if not isinstance(kind, str) or kind not in _ACCEPTED_KINDS:
        accepted = ", ".join(
            f"{version} {name}"
            for name, versions in _ACCEPTED_KINDS.items()
            for version in versions
        )
        problem = "is required" if kind is None else f"{show(kind)} is not an accepted kind"
        raise _FieldError("kind", f"{problem}; accepted: {accepted}")
    versions = _ACCEPTED_KINDS[kind]
    if api_version not in versions:
        problem = (
            "is required"
            if api_version is None
            else f"{show(api_version)} is not an accepted apiVersion"
        )
        raise _FieldError("apiVersion", f"{problem} for {kind}; accepted: {', '.join(versions)}")
    assert isinstance(api_version, str)
    _check_keys(document, {"apiVersion", "kind", "metadata", "spec", "status"}, "")
    meta = _parse_metadata(document.get("metadata"), namespace)
    spec = _optional_object(document, "spec", "")
    if kind == "PeerAuthentication":
        return _parse_peer_authentication(spec or {}, api_version, meta)
    if kind == "AuthorizationPolicy":
        return _parse_authorization_policy(spec or {}, api_version, meta)
    if spec is None:
        raise _FieldError("spec", "is required (spec.host is required)")
    return _parse_destination_rule(spec, api_version, meta)


@dataclass(frozen=True, slots=True)
class _Meta:
    name: str
    namespace: str | None
    creation_timestamp: datetime | None
    labels: Mapping[str, str]
    annotations: Mapping[str, str]


def _parse_metadata(value: object, namespace_argument: str | None) -> _Meta:
    if value is None:
        raise _FieldError("metadata", "is required (metadata.name is required)")
    metadata = _object(value, "metadata")
    name = metadata.get("name")
    if name is None:
        raise _FieldError("metadata.name", "is required")
    name = _string(name, "metadata.name")
    if len(name) > 253 or not _K8S_SUBDOMAIN.fullmatch(name):
        raise _FieldError(
            "metadata.name",
            f"{show(name)} is not a DNS-1123 subdomain (lower case letters, digits, '-' and "
            "'.', starting and ending with a letter or digit, at most 253 characters)",
        )
    namespace = metadata.get("namespace")
    if namespace is not None:
        namespace = _string(namespace, "metadata.namespace")
        problem = _k8s_label_problem(namespace)
        if problem is not None:
            raise _FieldError("metadata.namespace", problem)
        if namespace_argument is not None and namespace != namespace_argument:
            raise _FieldError(
                "metadata.namespace",
                f"{show(namespace)} does not match the namespace it is applied to "
                f"({namespace_argument!r})",
            )
    else:
        namespace = namespace_argument
    stamp = metadata.get("creationTimestamp")
    creation = None if stamp is None else _timestamp(stamp, "metadata.creationTimestamp")
    labels = _string_map(metadata.get("labels"), "metadata.labels")
    annotations = _string_map(metadata.get("annotations"), "metadata.annotations")
    return _Meta(name, namespace, creation, labels or {}, annotations or {})


def _k8s_label_problem(value: str) -> str | None:
    """Why ``value`` is no Kubernetes namespace name (a DNS-1123 label), or None."""
    if len(value) <= 63 and _K8S_LABEL.fullmatch(value):
        return None
    return (
        f"{show(value)} is not a DNS-1123 label (lower case letters, digits and '-', "
        "starting and ending with a letter or digit, at most 63 characters)"
    )


def _timestamp(value: object, path: str) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and _RFC3339.fullmatch(value):
        try:
            parsed = datetime.fromisoformat(value.upper())
        except ValueError as error:
            raise _FieldError(path, f"{show(value)} is not a valid time: {error}") from None
    else:
        raise _FieldError(path, f"{show(value)} is not an RFC 3339 time with a time zone")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise _FieldError(path, f"{show(value)} has no time zone")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise _FieldError(
            path, f"{show(value)} is in UTC outside the range of years 1..9999 (Python's datetime)"
        ) from None


def _parse_peer_authentication(
    spec: Mapping[str, Any], api_version: str, meta: _Meta
) -> PeerAuthentication:
    """ValidatePeerAuthentication plus the PeerAuthentication CRD rules."""
    _check_keys(spec, {"selector", "mtls", "portLevelMtls"}, "spec")
    selector = _parse_selector(spec, "selector", "spec")
    mode: MtlsMode | None = None
    mtls = _optional_object(spec, "mtls", "spec")
    if mtls is not None:
        mode = _parse_mtls(mtls, "spec.mtls")
    port_level: dict[int, MtlsMode] = {}
    raw_ports = spec.get("portLevelMtls")
    if raw_ports is not None and not isinstance(raw_ports, Mapping):
        raise _FieldError("spec.portLevelMtls", f"expected an object, got {_type_name(raw_ports)}")
    if raw_ports is not None:
        if not selector:
            raise _FieldError("spec.portLevelMtls", "portLevelMtls requires selector")
        if not raw_ports:
            raise _FieldError(
                "spec.portLevelMtls", "port level mTLS, if defined, must have at least one element"
            )
        for key, value in raw_ports.items():
            port = _port_key(key, "spec.portLevelMtls")
            path = f"spec.portLevelMtls[{port}]"
            if port in port_level:
                raise _FieldError(path, f"port {port} is given twice")
            if value is None:
                raise _FieldError(path, "must not be null")
            port_level[port] = _parse_mtls(_object(value, path), path)
    return PeerAuthentication(
        name=meta.name,
        namespace=meta.namespace,
        mode=mode,
        selector=selector,
        port_level=port_level,
        api_version=api_version,
        creation_timestamp=meta.creation_timestamp,
        labels=meta.labels,
        annotations=meta.annotations,
    )


def _parse_mtls(mtls: Mapping[str, Any], path: str) -> MtlsMode:
    _check_keys(mtls, {"mode"}, path)
    raw = mtls.get("mode")
    return MtlsMode.UNSET if raw is None else _enum(MtlsMode, raw, f"{path}.mode")


def _port_key(key: object, path: str) -> int:
    """A portLevelMtls key: an int (YAML) or its decimal string (JSON), 1..65535."""
    if isinstance(key, int) and not isinstance(key, bool):
        port = key
    elif isinstance(key, str) and _PORT_KEY.fullmatch(key) and len(key) <= 10:
        port = int(key)
    else:
        raise _FieldError(f"{path}[{show(key)}]", "key is not a port number")
    if not 1 <= port <= 65535:
        raise _FieldError(f"{path}[{port}]", "port must be in range 1..65535")
    return port


def _parse_selector(spec: Mapping[str, Any], key: str, parent: str) -> Mapping[str, str] | None:
    """A WorkloadSelector: ``{matchLabels: {...}}``; validateWorkloadSelector's rules."""
    path = f"{parent}.{key}"
    selector = _optional_object(spec, key, parent)
    if selector is None:
        return None
    _check_keys(selector, {"matchLabels"}, path)
    labels = _string_map(selector.get("matchLabels"), f"{path}.matchLabels") or {}
    for label_key, label_value in labels.items():
        where = f"{path}.matchLabels[{show(label_key)}]"
        if not label_key:
            raise _FieldError(where, "empty key is not supported in selector")
        if "*" in label_key or "*" in label_value:
            raise _FieldError(
                where, f"wildcard is not supported in selector: {label_key}={label_value}"
            )
    return labels


def _parse_destination_rule(
    spec: Mapping[str, Any], api_version: str, meta: _Meta
) -> DestinationRule:
    """ValidateDestinationRule."""
    _check_keys(spec, {"host", "trafficPolicy", "subsets", "exportTo", "workloadSelector"}, "spec")
    raw_host = spec.get("host")
    if raw_host is None:
        raise _FieldError("spec.host", "is required")
    host = _string(raw_host, "spec.host")
    _validate_wildcard_domain(host, "spec.host")
    traffic_policy = _parse_traffic_policy(spec, "spec")
    subsets: list[Subset] = []
    seen_subsets: set[str] = set()
    for index, item in enumerate(_optional_list(spec, "subsets", "spec")):
        path = f"spec.subsets[{index}]"
        if item is None:
            raise _FieldError(path, "subset may not be null")
        subset = _parse_subset(_object(item, path), path)
        if subset.name in seen_subsets:
            raise _FieldError(f"{path}.name", f"duplicate subset names: {subset.name}")
        seen_subsets.add(subset.name)
        subsets.append(subset)
    selector = _parse_selector(spec, "workloadSelector", "spec")
    export_to = tuple(_string_list(spec.get("exportTo"), "spec.exportTo"))
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


def _validate_wildcard_domain(host: str, path: str) -> None:
    """agent.ValidateWildcardDomain: a wildcard only in the first label."""
    if len(host) > 255:
        raise _FieldError(path, f"domain name {show(host)} too long (max 255)")
    if not host:
        raise _FieldError(path, "empty domain name not allowed")
    first, dot, rest = host.partition(".")
    if len(first) > 63 or not _ISTIO_WILDCARD_LABEL.fullmatch(first):
        raise _FieldError(path, f"domain name {show(host)} invalid (label {show(first)} invalid)")
    if dot:
        _validate_dns1123_labels(rest, path, host)


def _validate_dns1123_labels(domain: str, path: str, shown: str) -> None:
    """agent.ValidateDNS1123Labels: no all-numeric top-level domain; a trailing dot is fine."""
    parts = domain.split(".")
    if _ALL_DIGITS.fullmatch(parts[-1]):
        raise _FieldError(
            path,
            f"domain name {show(shown)} invalid (top level domain {show(parts[-1])} "
            "cannot be all-numeric)",
        )
    for index, label in enumerate(parts):
        if index == len(parts) - 1 and label == "":
            return
        if len(label) > 63 or not _ISTIO_LABEL.fullmatch(label):
            raise _FieldError(
                path, f"domain name {show(shown)} invalid (label {show(label)} invalid)"
            )


_TOP_LEVEL_OPAQUE: Final = ("loadBalancer", "connectionPool", "outlierDetection", "tunnel")
_TOP_LEVEL_OPAQUE_ALL: Final = (*_TOP_LEVEL_OPAQUE, "proxyProtocol")
_PORT_LEVEL_OPAQUE: Final = ("loadBalancer", "connectionPool", "outlierDetection")


def _parse_traffic_policy(parent: Mapping[str, Any], parent_path: str) -> TrafficPolicy | None:
    """validateTrafficPolicy, for the rule or a subset (validateSubset applies the same)."""
    path = f"{parent_path}.trafficPolicy"
    policy = _optional_object(parent, "trafficPolicy", parent_path)
    if policy is None:
        return None
    _check_keys(policy, {*_TOP_LEVEL_OPAQUE_ALL, "tls", "portLevelSettings"}, path)
    other = _opaque_fields(policy, _TOP_LEVEL_OPAQUE_ALL, path)
    tls = _parse_tls(policy, path)
    entries: list[PortTrafficPolicy] = []
    for index, item in enumerate(_optional_list(policy, "portLevelSettings", path)):
        entry_path = f"{path}.portLevelSettings[{index}]"
        if item is None:
            raise _FieldError(entry_path, "traffic policy may not be null")
        entries.append(_parse_port_traffic_policy(_object(item, entry_path), entry_path))
    if tls is None and not entries and not other:
        raise _FieldError(path, "traffic policy must have at least one field")
    if "tunnel" in other and "proxyProtocol" in other:
        raise _FieldError(path, "tunnel and proxyProtocol must not be set together")
    return TrafficPolicy(tls=tls, port_level_settings=tuple(entries), other=other)


def _parse_port_traffic_policy(entry: Mapping[str, Any], path: str) -> PortTrafficPolicy:
    """validatePortTrafficPolicies, for one entry."""
    _check_keys(entry, {"port", *_PORT_LEVEL_OPAQUE, "tls"}, path)
    port_selector = _optional_object(entry, "port", path)
    if port_selector is None:
        raise _FieldError(f"{path}.port", "portTrafficPolicy must have valid port")
    _check_keys(port_selector, {"number"}, f"{path}.port")
    raw_number = port_selector.get("number")
    if raw_number is None:
        raise _FieldError(f"{path}.port.number", "is required")
    if not isinstance(raw_number, int) or isinstance(raw_number, bool):
        raise _FieldError(f"{path}.port.number", f"{show(raw_number)} is not an integer")
    if not 1 <= raw_number <= 65535:
        raise _FieldError(
            f"{path}.port.number", f"port number {raw_number} must be in range 1..65535"
        )
    other = _opaque_fields(entry, _PORT_LEVEL_OPAQUE, path)
    tls = _parse_tls(entry, path)
    if tls is None and not other:
        raise _FieldError(path, "port traffic policy must have at least one field")
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
    tls = _optional_object(parent, "tls", parent_path)
    if tls is None:
        return None
    _check_keys(tls, set(_TLS_KEYS), path)
    raw_mode = tls.get("mode")
    mode = TlsMode.DISABLE if raw_mode is None else _enum(TlsMode, raw_mode, f"{path}.mode")

    def text(key: str) -> str | None:
        value = tls.get(key)
        return None if value is None else (_string(value, f"{path}.{key}") or None)

    skip = tls.get("insecureSkipVerify")
    if skip is not None and not isinstance(skip, bool):
        raise _FieldError(f"{path}.insecureSkipVerify", f"{show(skip)} is not a boolean")
    settings = ClientTls(
        mode=mode,
        client_certificate=text("clientCertificate"),
        private_key=text("privateKey"),
        ca_certificates=text("caCertificates"),
        credential_name=text("credentialName"),
        subject_alt_names=tuple(
            _string_list(tls.get("subjectAltNames"), f"{path}.subjectAltNames")
        ),
        sni=text("sni"),
        insecure_skip_verify=skip,
        ca_crl=text("caCrl"),
    )
    if mode is TlsMode.ISTIO_MUTUAL:
        for key in _ISTIO_MUTUAL_FORBIDDEN:
            if getattr(settings, _TLS_KEYS[key]) is not None:
                raise _FieldError(
                    f"{path}.{key}",
                    "must not be set with mode ISTIO_MUTUAL, which uses Istio's own "
                    "certificates (ClientTLSSettings: should be empty if mode is ISTIO_MUTUAL)",
                )
    if settings.insecure_skip_verify:
        if mode is TlsMode.SIMPLE and (
            settings.ca_certificates or settings.credential_name or settings.subject_alt_names
        ):
            raise _FieldError(
                path,
                "cannot specify CaCertificates or CredentialName or SubjectAltNames when "
                "InsecureSkipVerify is set true",
            )
        if mode is TlsMode.MUTUAL and (settings.ca_certificates or settings.subject_alt_names):
            raise _FieldError(
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
            raise _FieldError(
                path,
                "cannot specify client certificates or CA certificate or CA CRL If "
                "credentialName is set",
            )
        return settings
    if mode is TlsMode.MUTUAL:
        if not settings.client_certificate:
            raise _FieldError(
                f"{path}.clientCertificate", "client certificate required for mutual tls"
            )
        if not settings.private_key:
            raise _FieldError(f"{path}.privateKey", "private key required for mutual tls")
    return settings


def _parse_subset(subset: Mapping[str, Any], path: str) -> Subset:
    """validateSubset: a DNS-1123 label name, valid labels, a valid traffic policy."""
    _check_keys(subset, {"name", "labels", "trafficPolicy"}, path)
    raw_name = subset.get("name")
    if raw_name is None:
        raise _FieldError(f"{path}.name", "subset name cannot be empty")
    name = _string(raw_name, f"{path}.name")
    if not name:
        raise _FieldError(f"{path}.name", "subset name cannot be empty")
    if len(name) > 63 or not _ISTIO_LABEL.fullmatch(name):
        raise _FieldError(f"{path}.name", f"subset name is invalid: {_shorten(name, 80)}")
    labels = _string_map(subset.get("labels"), f"{path}.labels") or {}
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
        0 < len(prefix) <= 253 and _K8S_SUBDOMAIN.fullmatch(prefix.lower()) is not None
    )
    if not valid_prefix or len(name) > 63 or not _QUALIFIED_NAME.fullmatch(name):
        raise _FieldError(path, f"invalid tag key: {show(key)}")
    if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
        raise _FieldError(path, f"invalid tag value: {show(value)}")


def _validate_export_to(export_to: tuple[str, ...], namespace: str | None, selector: bool) -> None:
    """validateExportTo (isServiceEntry false); ``.`` counts as the rule's own namespace."""
    seen: set[str] = set()
    own = namespace if namespace is not None else "."
    for index, entry in enumerate(export_to):
        path = f"spec.exportTo[{index}]"
        key = own if entry == "." else entry
        if key in seen:
            if key != entry:
                raise _FieldError(
                    path, f"duplicate entries in exportTo: . and current namespace {own}"
                )
            raise _FieldError(path, f"duplicate entries in exportTo for entry {show(entry)}")
        if entry == "~":
            raise _FieldError(path, "exportTo ~ (none) is not allowed for Istio configuration")
        if entry not in (".", "*") and (len(entry) > 63 or not _ISTIO_LABEL.fullmatch(entry)):
            raise _FieldError(
                path, "only .,*, or a valid DNS 1123 label is allowed as exportTo entry"
            )
        seen.add(key)
    if selector and seen:
        if own not in seen:
            raise _FieldError(
                "spec.exportTo",
                "destination rule with workload selector cannot have exportTo beyond current "
                "namespace",
            )
        if len(seen) > 1:
            raise _FieldError(
                "spec.exportTo",
                "destination rule with workload selector cannot have multiple entries in exportTo",
            )
    if "*" in seen and len(export_to) > 1:
        raise _FieldError(
            "spec.exportTo",
            "cannot have both public (*) and non-public exportTo values for a resource",
        )


# ------------------------------------------------------------- AuthorizationPolicy

# Fields Istio accepts that this project does not model (JWT, remote IPs, service accounts,
# CUSTOM providers, targetRefs): refused by name rather than silently ignored.
_AUTHZ_UNSUPPORTED_SPEC: Final = ("provider", "targetRef", "targetRefs")
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


def _parse_authorization_policy(
    spec: Mapping[str, Any], api_version: str, meta: _Meta
) -> AuthorizationPolicy:
    """ValidateAuthorizationPolicy (pkg/config/validation/validation.go) for the fields
    modelled here; the rest of the API is refused by name."""
    for key in _AUTHZ_UNSUPPORTED_SPEC:
        if spec.get(key) is not None:
            raise _FieldError(
                f"spec.{key}", "is not supported by meshconform (CUSTOM providers and targetRefs)"
            )
    _check_keys(spec, {"selector", "action", "rules"}, "spec")
    selector = _parse_selector(spec, "selector", "spec")
    raw_action = spec.get("action")
    if raw_action is None:
        action = AuthzAction.ALLOW
    elif raw_action in ("AUDIT", "CUSTOM"):
        raise _FieldError(
            "spec.action",
            f"{raw_action} is not supported by meshconform (supported: ALLOW, DENY); AUDIT needs"
            " a telemetry provider and CUSTOM an external authorizer",
        )
    else:
        action = _enum(AuthzAction, raw_action, "spec.action")
    raw_rules = spec.get("rules")
    if raw_rules is None and action is AuthzAction.DENY:
        raise _FieldError(
            "spec.rules",
            "DENY action without `rules` is meaningless as it will never be triggered, add an"
            " empty rule `{}` if you want it be triggered for every request",
        )
    rules = tuple(
        _parse_authz_rule(item, f"spec.rules[{index}]")
        for index, item in enumerate(_optional_list(spec, "rules", "spec"))
    )
    dry_run = meta.annotations.get(DRY_RUN_ANNOTATION)
    if dry_run is not None and dry_run not in _GO_TRUE | _GO_FALSE:
        raise _FieldError(
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
    )


def _parse_authz_rule(value: object, path: str) -> AuthzRule:
    if value is None:
        raise _FieldError(path, "`rule` must not be nil")
    rule = _object(value, path)
    _check_keys(rule, {"from", "to", "when"}, path)
    sources: list[AuthzSource] = []
    if rule.get("from") is not None:
        items = _optional_list(rule, "from", path)
        if not items:
            raise _FieldError(f"{path}.from", "`from` must not be empty")
        for index, item in enumerate(items):
            where = f"{path}.from[{index}]"
            entry = _object(item, where) if item is not None else {}
            _check_keys(entry, {"source"}, where)
            if entry.get("source") is None:
                raise _FieldError(f"{where}.source", "`from.source` must not be nil")
            sources.append(_parse_authz_source(_object(entry["source"], f"{where}.source"), where))
    operations: list[AuthzOperation] = []
    if rule.get("to") is not None:
        items = _optional_list(rule, "to", path)
        if not items:
            raise _FieldError(f"{path}.to", "`to` must not be empty")
        for index, item in enumerate(items):
            where = f"{path}.to[{index}]"
            entry = _object(item, where) if item is not None else {}
            _check_keys(entry, {"operation"}, where)
            if entry.get("operation") is None:
                raise _FieldError(f"{where}.operation", "`to.operation` must not be nil")
            operations.append(
                _parse_authz_operation(_object(entry["operation"], f"{where}.operation"), where)
            )
    conditions = tuple(
        _parse_authz_condition(item, f"{path}.when[{index}]")
        for index, item in enumerate(_optional_list(rule, "when", path))
    )
    return AuthzRule(tuple(sources), tuple(operations), conditions)


def _authz_values(obj: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
    """A list of non-empty strings (security.CheckEmptyValues)."""
    where = f"{path}.{key}"
    values = _string_list(obj.get(key), where)
    for index, item in enumerate(values):
        if not item:
            raise _FieldError(f"{where}[{index}]", f"empty value not allowed, found in {key}")
    return tuple(values)


def _parse_authz_source(source: Mapping[str, Any], parent: str) -> AuthzSource:
    path = f"{parent}.source"
    for key in _AUTHZ_UNSUPPORTED_SOURCE:
        if source.get(key) is not None:
            raise _FieldError(
                f"{path}.{key}",
                "is not supported by meshconform (JWT, remote IPs and service accounts are not"
                f" modelled); supported: {', '.join(_SOURCE_KEYS)}",
            )
    _check_keys(source, set(_SOURCE_KEYS), path)
    values = {attr: _authz_values(source, key, path) for key, attr in _SOURCE_KEYS.items()}
    if not any(values.values()):
        raise _FieldError(path, "`from.source` must not be empty")
    for key in ("ipBlocks", "notIpBlocks"):
        for index, block in enumerate(values[_SOURCE_KEYS[key]]):
            _check_ip_block(block, f"{path}.{key}[{index}]")
    return AuthzSource(**values)


def _parse_authz_operation(operation: Mapping[str, Any], parent: str) -> AuthzOperation:
    path = f"{parent}.operation"
    _check_keys(operation, set(_OPERATION_KEYS), path)
    values = {attr: _authz_values(operation, key, path) for key, attr in _OPERATION_KEYS.items()}
    if not any(values.values()):
        raise _FieldError(path, "`to.operation` must not be empty")
    for key in ("ports", "notPorts"):
        for index, port in enumerate(values[_OPERATION_KEYS[key]]):
            _check_authz_port(port, f"{path}.{key}[{index}]")
    for key in ("paths", "notPaths"):
        for index, item in enumerate(values[_OPERATION_KEYS[key]]):
            if "{" in item or "}" in item:
                raise _FieldError(
                    f"{path}.{key}[{index}]",
                    "path templates ({*}, {**}) are not supported by meshconform",
                )
    return AuthzOperation(**values)


def _parse_authz_condition(value: object, path: str) -> AuthzCondition:
    if value is None:
        raise _FieldError(path, "when field cannot be nil")
    condition = _object(value, path)
    _check_keys(condition, {"key", "values", "notValues"}, path)
    key = _string(condition.get("key", ""), f"{path}.key")
    if not key:
        raise _FieldError(f"{path}.key", "`key` must not be empty")
    supported = ", ".join(AUTHZ_WHEN_KEYS)
    if key.startswith(_AUTHZ_UNSUPPORTED_WHEN):
        raise _FieldError(
            f"{path}.key", f"{show(key)} is not supported by meshconform; supported: {supported}"
        )
    header = _AUTHZ_HEADER_KEY.fullmatch(key)
    if key not in AUTHZ_WHEN_KEYS and header is None:
        hint = " (write request.headers[<name>])" if key.startswith("request.headers") else ""
        raise _FieldError(f"{path}.key", f"unknown attribute {show(key)}{hint}; known: {supported}")
    values = _authz_values(condition, "values", path)
    not_values = _authz_values(condition, "notValues", path)
    if not values and not not_values:
        raise _FieldError(
            path, f"at least one of `values` or `notValues` must be set for key {key}"
        )
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
    import ipaddress

    try:
        if "/" in value:
            ipaddress.ip_network(value, strict=False)
        else:
            ipaddress.ip_address(value)
    except ValueError:
        raise _FieldError(path, f"{show(value)} is not a valid IP address or CIDR") from None


def _check_authz_port(value: str, path: str) -> None:
    """security.ValidatePorts: a decimal port 0..65535."""
    if not _PORT_KEY.fullmatch(value) or len(value) > 5 or int(value) > 65535:
        raise _FieldError(path, f"{show(value)} is not a port number (0..65535, as a string)")


# ----------------------------------------------------------------- small type checks


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def show(value: object) -> str:
    """A value for a message: quoted, cut short."""
    if isinstance(value, str):
        return repr(_shorten(value, _VALUE_LIMIT))
    # reprlib, not repr: the repr of a YAML alias bomb is exponentially long
    return _shorten(_SHORT_REPR.repr(value), _VALUE_LIMIT)


def _object(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _FieldError(path, f"expected an object, got {_type_name(value)}")
    for key in value:
        if not isinstance(key, str):
            raise _FieldError(f"{path}[{show(key)}]", "keys must be strings")
    return value


def _optional_object(
    parent: Mapping[str, Any], key: str, parent_path: str
) -> Mapping[str, Any] | None:
    value = parent.get(key)
    return None if value is None else _object(value, _join(parent_path, key))


def _optional_list(parent: Mapping[str, Any], key: str, parent_path: str) -> list[Any]:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise _FieldError(_join(parent_path, key), f"expected a list, got {_type_name(value)}")
    return list(value)


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def _string(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise _FieldError(path, f"expected a string, got {_type_name(value)} ({show(value)})")
    return value


def _string_list(value: object, path: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise _FieldError(path, f"expected a list of strings, got {_type_name(value)}")
    return [_string(item, f"{path}[{index}]") for index, item in enumerate(value)]


def _string_map(value: object, path: str) -> dict[str, str] | None:
    if value is None:
        return None
    mapping = _object(value, path)
    return {key: _string(item, f"{path}[{show(key)}]") for key, item in mapping.items()}


def _enum(
    enum: type[MtlsMode] | type[TlsMode] | type[AuthzAction], value: object, path: str
) -> Any:
    if isinstance(value, str) and value in enum.__members__:
        return enum[value]
    accepted = ", ".join(enum.__members__)
    hint = (
        " (YAML reads yes/no/on/off as booleans: quote the value)"
        if isinstance(value, bool)
        else ""
    )
    raise _FieldError(path, f"{show(value)} is not one of {accepted}{hint}")


def _check_keys(obj: Mapping[Any, Any], allowed: set[str], path: str) -> None:
    for key in obj:
        if key not in allowed:
            where = _join(path, key) if isinstance(key, str) else f"{path}[{show(key)}]"
            raise _FieldError(where, f"unknown field; accepted here: {', '.join(sorted(allowed))}")


def _opaque_fields(obj: Mapping[str, Any], keys: tuple[str, ...], path: str) -> dict[str, Any]:
    """Copy the carried-through fields (objects, content unchecked) into frozen values."""
    out: dict[str, Any] = {}
    budget = [_MAX_OPAQUE_NODES]
    for key in keys:
        value = obj.get(key)
        if value is None:
            continue
        where = f"{path}.{key}"
        _object(value, where)
        out[key] = _freeze(value, where, budget, 0)
    return out


def _freeze(value: object, path: str, budget: list[int], depth: int) -> object:
    budget[0] -= 1
    if budget[0] < 0 or depth > _MAX_OPAQUE_DEPTH:
        raise _FieldError(path, "is too large or nested too deeply to carry through")
    if value is None or isinstance(value, str | bool | int | float | datetime | date):
        return value
    if isinstance(value, Mapping):
        frozen: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _FieldError(f"{path}[{show(key)}]", "keys must be strings")
            frozen[key] = _freeze(item, f"{path}.{key}", budget, depth + 1)
        return MappingProxyType(frozen)
    if isinstance(value, list | tuple):
        return tuple(
            _freeze(item, f"{path}[{index}]", budget, depth + 1) for index, item in enumerate(value)
        )
    raise _FieldError(path, f"{_type_name(value)} is not a JSON value")


def _thaw(value: object) -> object:
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    return value


def _object_manifest(policy: Policy, spec: dict[str, Any]) -> dict[str, Any]:
    """A policy's ``apiVersion``, ``kind`` and ``metadata`` around ``spec``, as plain data."""
    metadata: dict[str, Any] = {"name": policy.name}
    if policy.namespace is not None:
        metadata["namespace"] = policy.namespace
    if policy.creation_timestamp is not None:
        utc = policy.creation_timestamp.astimezone(UTC).replace(tzinfo=None)
        # isoformat, not strftime: glibc's %Y prints year 1 as "1", not "0001"
        spec_ = "microseconds" if utc.microsecond else "seconds"
        metadata["creationTimestamp"] = utc.isoformat(timespec=spec_) + "Z"
    if policy.labels:
        metadata["labels"] = dict(policy.labels)
    if policy.annotations:
        metadata["annotations"] = dict(policy.annotations)
    return {
        "apiVersion": policy.api_version,
        "kind": policy.kind,
        "metadata": metadata,
        "spec": spec,
    }


def _checked_manifest(
    kind: str, api_version: str, name: str, namespace: str | None, spec: dict[str, Any]
) -> dict[str, Any]:
    """A built manifest, put through the parser (Istio's rules) and written back out."""
    metadata = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
    manifest = {"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec}
    return parse_policy(manifest).to_manifest()


# ------------------------------------------------------------------------- builders


def peer_authentication(
    name: str,
    namespace: str | None,
    mode: MtlsMode | str | None = None,
    selector: Mapping[str, str] | None = None,
    port_level: Mapping[int, MtlsMode | str] | None = None,
    api_version: str = PEER_AUTHENTICATION_API_VERSIONS[0],
) -> dict[str, Any]:
    """A PeerAuthentication manifest (plain dict); raises PolicyError if Istio would reject it.

    ``mode=None`` writes no ``mtls`` block (inherit); ``selector`` becomes
    ``selector.matchLabels``; ``port_level`` maps container ports to modes and needs a selector.
    ``portLevelMtls`` keys are written as strings, as JSON (and the API server) has them.
    """
    spec: dict[str, Any] = {}
    if selector is not None:
        spec["selector"] = {"matchLabels": dict(selector)}
    if mode is not None:
        spec["mtls"] = {"mode": _mode_text(mode)}
    if port_level is not None:
        spec["portLevelMtls"] = {
            _port_text(port): {"mode": _mode_text(port_mode)}
            for port, port_mode in port_level.items()
        }
    return _checked_manifest("PeerAuthentication", api_version, name, namespace, spec)


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
        traffic_policy["tls"] = {"mode": _mode_text(mode), **given}
    elif given:
        raise PolicyError(f"destination_rule: {', '.join(given)} given without a TLS mode")
    if port_level:
        traffic_policy["portLevelSettings"] = [
            {"port": {"number": _port_number(port)}, "tls": {"mode": _mode_text(port_mode)}}
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
    return _checked_manifest("DestinationRule", api_version, name, namespace, spec)


def authorization_policy(
    name: str,
    namespace: str | None,
    action: AuthzAction | str = AuthzAction.ALLOW,
    rules: Iterable[Mapping[str, Any]] | None = None,
    selector: Mapping[str, str] | None = None,
    *,
    dry_run: bool = False,
    api_version: str = AUTHORIZATION_POLICY_API_VERSIONS[0],
) -> dict[str, Any]:
    """An AuthorizationPolicy manifest (plain dict); raises PolicyError if Istio would reject it.

    ``rules`` are written as the API has them (``[{"from": [{"source": {"principals":
    [...]}}]}]``; ``[{}]`` matches everything, ``None`` writes no rules: an ALLOW policy that
    allows nothing). ``selector`` becomes ``selector.matchLabels``; ``dry_run`` sets the
    ``istio.io/dry-run`` annotation.
    """
    spec: dict[str, Any] = {"action": _mode_text(action)}
    if selector is not None:
        spec["selector"] = {"matchLabels": dict(selector)}
    if rules is not None:
        spec["rules"] = [dict(rule) for rule in rules]
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    if dry_run:
        metadata["annotations"] = {DRY_RUN_ANNOTATION: "true"}
    manifest = {
        "apiVersion": api_version,
        "kind": "AuthorizationPolicy",
        "metadata": metadata,
        "spec": spec,
    }
    return parse_policy(manifest).to_manifest()


def _mode_text(mode: object) -> object:
    """An enum member as its plain string; anything else as given, for the parser to judge."""
    return mode.value if isinstance(mode, MtlsMode | TlsMode | AuthzAction) else mode


def _port_text(port: object) -> object:
    return str(port) if isinstance(port, int) and not isinstance(port, bool) else port


def _port_number(port: object) -> int:
    if not isinstance(port, int) or isinstance(port, bool):
        raise PolicyError(f"port {show(port)} is not an integer")
    return port


# ------------------------------------------------- resolution (moved to pytest_meshconform.istio)

# The istiod resolution functions live in pytest_meshconform.istio; these names stay importable
# from here for existing code (PEP 562, lazily, since that package imports this module).
_MOVED_TO_ISTIO: Final = frozenset(
    {"client_tls_mode", "client_tls_settings", "destination_rule_for", "effective_mtls_mode"}
)


def _check_argument_namespace(value: object, what: str) -> None:
    if not isinstance(value, str):
        raise PolicyError(f"{what} must be a string, got {_type_name(value)}")
    problem = _k8s_label_problem(value)
    if problem is not None:
        raise PolicyError(f"{what}: {problem}")


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_ISTIO:
        from pytest_meshconform import istio

        return getattr(istio, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
