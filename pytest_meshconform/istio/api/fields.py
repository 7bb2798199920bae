"""What every Istio policy object shares: metadata, field checks, the error type.

Each kind (``peer_authentication``, ``destination_rule``, ``authorization_policy``) parses its
``spec`` with these checks; :mod:`.parse` reads the documents and picks the kind.

- Unknown fields in the modelled parts are errors, like ``kubectl``'s strict field validation.
  ``null`` in an object field means absent (Kubernetes prunes nulls of non-nullable CRD
  fields); ``null`` as a list item or map value is an error.
- In ``metadata`` only ``name``, ``namespace``, ``creationTimestamp``, ``labels`` and
  ``annotations`` are kept; server-populated fields (``uid``, ``resourceVersion``, ...) and
  ``status`` are ignored so that ``kubectl get -o yaml`` output parses.
- ``metadata.name`` is required and a DNS-1123 subdomain; ``metadata.namespace`` is optional
  (``None`` is "the namespace the caller applies it to", like ``kubectl apply -n``) and a
  DNS-1123 label [apimachinery ``IsDNS1123Subdomain`` / ``ValidateNamespaceName``]; a
  ``creationTimestamp`` whose UTC instant falls outside years 1..9999 is an error.
- A workload selector's ``matchLabels`` keys are non-empty and neither keys nor values contain
  ``*`` [``validateWorkloadSelector``, istio/istio pkg/config/validation/validation.go].
- The parts a kind carries through untouched (they do not affect TLS) must be objects; a copy
  is bounded in size and depth, so that YAML aliases cannot blow it up.

Errors are :class:`PolicyError`, whose message names the document, the field path
(``spec.portLevelMtls[8080].mode``) and the offending value; messages quote at most a few
items of an offending value.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, ClassVar, Final, Protocol, TypeVar

__all__ = [
    "DECIMAL",
    "ISTIO_LABEL",
    "K8S_LABEL",
    "K8S_SUBDOMAIN",
    "FieldError",
    "Meta",
    "PolicyError",
    "PolicyObject",
    "check_argument_namespace",
    "check_keys",
    "checked_manifest",
    "describe",
    "empty_map",
    "enum_member",
    "enum_text",
    "freeze_maps",
    "mapping",
    "object_manifest",
    "opaque_fields",
    "optional_list",
    "optional_mapping",
    "parse_envelope",
    "parse_selector",
    "shorten",
    "show",
    "string",
    "string_list",
    "string_map",
    "thaw",
    "type_name",
]

# Kubernetes object names and namespaces (apimachinery, lower case only).
K8S_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")
K8S_SUBDOMAIN = re.compile(
    r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"  # first label
    r"(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
)

# Istio's own DNS label (pkg/config/labels: dns1123LabelFmt); allows upper case.
ISTIO_LABEL = re.compile(r"[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")
# Port numbers written as text (portLevelMtls keys, AuthorizationPolicy ports).
DECIMAL = re.compile(r"[0-9]+")

# Limits for the carried-through parts, so that YAML aliases cannot blow up a copy.
_MAX_OPAQUE_NODES: Final = 100_000
_MAX_OPAQUE_DEPTH: Final = 64
_VALUE_LIMIT: Final = 60
# reprlib with small limits: a message quotes a few items of a value, never walks all of it.
_SHORT_REPR: Final = reprlib.Repr()  # keyword arguments need Python 3.12
_SHORT_REPR.maxlevel = 3
_SHORT_REPR.maxtuple = _SHORT_REPR.maxlist = _SHORT_REPR.maxdict = _SHORT_REPR.maxset = 4
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = _VALUE_LIMIT

_Enum = TypeVar("_Enum", bound=StrEnum)


class PolicyError(ValueError):
    """A policy Istio would reject (or that meshconform cannot read without guessing)."""

    def __init__(self, problem: str, *, path: str = "", document: str = "") -> None:
        where = ": ".join(part for part in (document, path) if part)
        super().__init__(f"{where}: {problem}" if where else problem)
        self.problem = problem
        self.path = path
        self.document = document


class FieldError(Exception):
    """Raised inside one document; turned into a PolicyError with the document's label."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(problem)
        self.path = path
        self.problem = problem


class PolicyObject(Protocol):
    """What every policy kind's dataclass has: its kind, apiVersion and metadata."""

    kind: ClassVar[str]

    @property
    def name(self) -> str: ...
    @property
    def namespace(self) -> str | None: ...
    @property
    def api_version(self) -> str: ...
    @property
    def creation_timestamp(self) -> datetime | None: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def annotations(self) -> Mapping[str, str]: ...
    def to_manifest(self) -> dict[str, Any]: ...


def freeze_maps(obj: object, *names: str) -> None:
    """Replace a frozen dataclass's mapping fields by read-only copies (None stays None)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None:
            object.__setattr__(obj, name, MappingProxyType(dict(value)))


def empty_map() -> Mapping[Any, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Meta:
    """The ``metadata`` fields meshconform keeps."""

    name: str
    namespace: str | None
    creation_timestamp: datetime | None
    labels: Mapping[str, str]
    annotations: Mapping[str, str]


def parse_envelope(
    document: Mapping[str, Any], kind: str, api_versions: tuple[str, ...], namespace: str | None
) -> tuple[str, Meta, Mapping[str, Any] | None]:
    """The ``apiVersion``, ``metadata`` and (unchecked) ``spec`` of one object of ``kind``.

    ``namespace`` works like ``kubectl apply -n`` (see :func:`.parse.parse_policy`).
    """
    api_version = document.get("apiVersion")
    if api_version not in api_versions:
        problem = (
            "is required"
            if api_version is None
            else f"{show(api_version)} is not an accepted apiVersion"
        )
        raise FieldError("apiVersion", f"{problem} for {kind}; accepted: {', '.join(api_versions)}")
    assert isinstance(api_version, str)
    check_keys(document, {"apiVersion", "kind", "metadata", "spec", "status"}, "")
    meta = _parse_metadata(document.get("metadata"), namespace)
    return api_version, meta, optional_mapping(document, "spec", "")


def _parse_metadata(value: object, namespace_argument: str | None) -> Meta:
    if value is None:
        raise FieldError("metadata", "is required (metadata.name is required)")
    metadata = mapping(value, "metadata")
    name = metadata.get("name")
    if name is None:
        raise FieldError("metadata.name", "is required")
    name = string(name, "metadata.name")
    if len(name) > 253 or not K8S_SUBDOMAIN.fullmatch(name):
        raise FieldError(
            "metadata.name",
            f"{show(name)} is not a DNS-1123 subdomain (lower case letters, digits, '-' and "
            "'.', starting and ending with a letter or digit, at most 253 characters)",
        )
    namespace = metadata.get("namespace")
    if namespace is not None:
        namespace = string(namespace, "metadata.namespace")
        problem = _k8s_label_problem(namespace)
        if problem is not None:
            raise FieldError("metadata.namespace", problem)
        if namespace_argument is not None and namespace != namespace_argument:
            raise FieldError(
                "metadata.namespace",
                f"{show(namespace)} does not match the namespace it is applied to "
                f"({namespace_argument!r})",
            )
    else:
        namespace = namespace_argument
    stamp = metadata.get("creationTimestamp")
    creation = None if stamp is None else _timestamp(stamp, "metadata.creationTimestamp")
    labels = string_map(metadata.get("labels"), "metadata.labels")
    annotations = string_map(metadata.get("annotations"), "metadata.annotations")
    return Meta(name, namespace, creation, labels or {}, annotations or {})


def _k8s_label_problem(value: str) -> str | None:
    """Why ``value`` is no Kubernetes namespace name (a DNS-1123 label), or None."""
    if len(value) <= 63 and K8S_LABEL.fullmatch(value):
        return None
    return (
        f"{show(value)} is not a DNS-1123 label (lower case letters, digits and '-', "
        "starting and ending with a letter or digit, at most 63 characters)"
    )


def check_argument_namespace(value: object, what: str) -> None:
    """A namespace passed to a function (not read from a document) is a DNS-1123 label."""
    __tracebackhide__ = True  # a bad policy points at the suite's line
    if not isinstance(value, str):
        raise PolicyError(f"{what} must be a string, got {type_name(value)}")
    problem = _k8s_label_problem(value)
    if problem is not None:
        raise PolicyError(f"{what}: {problem}")


def _timestamp(value: object, path: str) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and _RFC3339.fullmatch(value):
        try:
            parsed = datetime.fromisoformat(value.upper())
        except ValueError as error:
            raise FieldError(path, f"{show(value)} is not a valid time: {error}") from None
    else:
        raise FieldError(path, f"{show(value)} is not an RFC 3339 time with a time zone")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise FieldError(path, f"{show(value)} has no time zone")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise FieldError(
            path, f"{show(value)} is in UTC outside the range of years 1..9999 (Python's datetime)"
        ) from None


def parse_selector(spec: Mapping[str, Any], key: str, parent: str) -> Mapping[str, str] | None:
    """A WorkloadSelector: ``{matchLabels: {...}}``; validateWorkloadSelector's rules."""
    path = f"{parent}.{key}"
    selector = optional_mapping(spec, key, parent)
    if selector is None:
        return None
    check_keys(selector, {"matchLabels"}, path)
    labels = string_map(selector.get("matchLabels"), f"{path}.matchLabels") or {}
    for label_key, label_value in labels.items():
        where = f"{path}.matchLabels[{show(label_key)}]"
        if not label_key:
            raise FieldError(where, "empty key is not supported in selector")
        if "*" in label_key or "*" in label_value:
            raise FieldError(
                where, f"wildcard is not supported in selector: {label_key}={label_value}"
            )
    return labels


def describe(label: str, document: object) -> str:
    """How a message names a document: its label, and its kind and name when it has them."""
    if isinstance(document, Mapping):
        kind = document.get("kind")
        metadata = document.get("metadata")
        name = metadata.get("name") if isinstance(metadata, Mapping) else None
        if isinstance(kind, str) and isinstance(name, str):
            return f"{label} ({shorten(kind, 40)} {shorten(name, 80)!r})"
        if isinstance(kind, str):
            return f"{label} ({shorten(kind, 40)})"
    return label


# ----------------------------------------------------------------- small type checks


def type_name(value: object) -> str:
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


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def show(value: object) -> str:
    """A value for a message: quoted, cut short."""
    if isinstance(value, str):
        return repr(shorten(value, _VALUE_LIMIT))
    # reprlib, not repr: the repr of a YAML alias bomb is exponentially long
    return shorten(_SHORT_REPR.repr(value), _VALUE_LIMIT)


def mapping(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise FieldError(path, f"expected an object, got {type_name(value)}")
    for key in value:
        if not isinstance(key, str):
            raise FieldError(f"{path}[{show(key)}]", "keys must be strings")
    return value


def optional_mapping(
    parent: Mapping[str, Any], key: str, parent_path: str
) -> Mapping[str, Any] | None:
    value = parent.get(key)
    return None if value is None else mapping(value, _join(parent_path, key))


def optional_list(parent: Mapping[str, Any], key: str, parent_path: str) -> list[Any]:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise FieldError(_join(parent_path, key), f"expected a list, got {type_name(value)}")
    return list(value)


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def string(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise FieldError(path, f"expected a string, got {type_name(value)} ({show(value)})")
    return value


def string_list(value: object, path: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise FieldError(path, f"expected a list of strings, got {type_name(value)}")
    return [string(item, f"{path}[{index}]") for index, item in enumerate(value)]


def string_map(value: object, path: str) -> dict[str, str] | None:
    if value is None:
        return None
    return {key: string(item, f"{path}[{show(key)}]") for key, item in mapping(value, path).items()}


def enum_member(enum: type[_Enum], value: object, path: str) -> _Enum:
    if isinstance(value, str) and value in enum.__members__:
        return enum[value]
    accepted = ", ".join(enum.__members__)
    hint = (
        " (YAML reads yes/no/on/off as booleans: quote the value)"
        if isinstance(value, bool)
        else ""
    )
    raise FieldError(path, f"{show(value)} is not one of {accepted}{hint}")


def check_keys(obj: Mapping[Any, Any], allowed: set[str], path: str) -> None:
    for key in obj:
        if key not in allowed:
            where = _join(path, key) if isinstance(key, str) else f"{path}[{show(key)}]"
            raise FieldError(where, f"unknown field; accepted here: {', '.join(sorted(allowed))}")


def opaque_fields(obj: Mapping[str, Any], keys: tuple[str, ...], path: str) -> dict[str, Any]:
    """Copy the carried-through fields (objects, content unchecked) into frozen values."""
    out: dict[str, Any] = {}
    budget = [_MAX_OPAQUE_NODES]
    for key in keys:
        value = obj.get(key)
        if value is None:
            continue
        where = f"{path}.{key}"
        mapping(value, where)
        out[key] = _freeze(value, where, budget, 0)
    return out


def _freeze(value: object, path: str, budget: list[int], depth: int) -> object:
    budget[0] -= 1
    if budget[0] < 0 or depth > _MAX_OPAQUE_DEPTH:
        raise FieldError(path, "is too large or nested too deeply to carry through")
    if value is None or isinstance(value, str | bool | int | float | datetime | date):
        return value
    if isinstance(value, Mapping):
        frozen: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise FieldError(f"{path}[{show(key)}]", "keys must be strings")
            frozen[key] = _freeze(item, f"{path}.{key}", budget, depth + 1)
        return MappingProxyType(frozen)
    if isinstance(value, list | tuple):
        return tuple(
            _freeze(item, f"{path}[{index}]", budget, depth + 1) for index, item in enumerate(value)
        )
    raise FieldError(path, f"{type_name(value)} is not a JSON value")


def thaw(value: object) -> object:
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [thaw(item) for item in value]
    return value


# ------------------------------------------------------------------------- manifests


def object_manifest(policy: PolicyObject, spec: dict[str, Any]) -> dict[str, Any]:
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


def checked_manifest(
    parse: Callable[[Mapping[str, Any], str | None], PolicyObject],
    manifest: dict[str, Any],
) -> dict[str, Any]:
    """A manifest a builder wrote, put through its kind's parser (Istio's rules) and written
    back out; an error names it as :func:`.parse.parse_policy` would."""
    __tracebackhide__ = True  # a bad policy points at the suite's line
    try:
        return parse(manifest, None).to_manifest()
    except FieldError as error:
        raise PolicyError(
            error.problem, path=error.path, document=describe("document 1", manifest)
        ) from None


def enum_text(mode: object) -> object:
    """An enum member as its plain string; anything else as given, for the parser to judge."""
    return mode.value if isinstance(mode, StrEnum) else mode
