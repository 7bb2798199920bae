"""PeerAuthentication (``security.istio.io``): the dataclass, its validation and its builder.

Accepted in ``security.istio.io/v1`` and ``v1beta1``. What a PeerAuthentication means for a
sidecar (precedence, port-level modes) is :mod:`pytest_meshconform.istio.peer_authentication`.

Validation, transcribed from istio/istio ``pkg/config/validation/validation.go`` and the CRD
rules generated from istio/api (the function or rule is named in brackets):

- Modes are ``UNSET``, ``DISABLE``, ``PERMISSIVE``, ``STRICT`` [CRD enum].
- ``selector``: see :func:`.fields.parse_selector` [``validateWorkloadSelector``].
- ``portLevelMtls`` needs a selector with at least one label ["portLevelMtls requires
  selector", CRD CEL; "mesh/namespace peer authentication cannot have port level mTLS",
  ``ValidatePeerAuthentication``], has at least one entry ["port level mTLS, if defined, must
  have at least one element"], and its keys are ports 1..65535 ["port must be in range
  1..65535"].
"""

from __future__ import annotations

from collections.abc import Mapping
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
    optional_mapping,
    parse_envelope,
    parse_selector,
    show,
    type_name,
)

__all__ = [
    "PEER_AUTHENTICATION_API_VERSIONS",
    "MtlsMode",
    "PeerAuthentication",
    "parse_peer_authentication",
    "peer_authentication",
]

PEER_AUTHENTICATION_API_VERSIONS: Final = ("security.istio.io/v1", "security.istio.io/v1beta1")


class MtlsMode(StrEnum):
    """PeerAuthentication ``mtls.mode``: what a server sidecar accepts."""

    UNSET = "UNSET"
    DISABLE = "DISABLE"
    PERMISSIVE = "PERMISSIVE"
    STRICT = "STRICT"


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
    port_level: Mapping[int, MtlsMode] = field(default_factory=empty_map, hash=False)
    api_version: str = PEER_AUTHENTICATION_API_VERSIONS[0]
    creation_timestamp: datetime | None = None
    labels: Mapping[str, str] = field(default_factory=empty_map, hash=False)
    annotations: Mapping[str, str] = field(default_factory=empty_map, hash=False)

    def __post_init__(self) -> None:
        freeze_maps(self, "selector", "port_level", "labels", "annotations")

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
        return object_manifest(self, spec)


def parse_peer_authentication(
    document: Mapping[str, Any], namespace: str | None
) -> PeerAuthentication:
    """One PeerAuthentication object (its ``kind`` already read); raises :class:`.FieldError`,
    which :mod:`.parse` turns into a :class:`.PolicyError` naming the document."""
    api_version, meta, spec = parse_envelope(
        document, PeerAuthentication.kind, PEER_AUTHENTICATION_API_VERSIONS, namespace
    )
    return _parse_spec(spec or {}, api_version, meta)


def _parse_spec(spec: Mapping[str, Any], api_version: str, meta: Meta) -> PeerAuthentication:
    """ValidatePeerAuthentication plus the PeerAuthentication CRD rules."""
    check_keys(spec, {"selector", "mtls", "portLevelMtls"}, "spec")
    selector = parse_selector(spec, "selector", "spec")
    mode: MtlsMode | None = None
    mtls = optional_mapping(spec, "mtls", "spec")
    if mtls is not None:
        mode = _parse_mtls(mtls, "spec.mtls")
    port_level: dict[int, MtlsMode] = {}
    raw_ports = spec.get("portLevelMtls")
    if raw_ports is not None and not isinstance(raw_ports, Mapping):
        raise FieldError("spec.portLevelMtls", f"expected an object, got {type_name(raw_ports)}")
    if raw_ports is not None:
        if not selector:
            raise FieldError("spec.portLevelMtls", "portLevelMtls requires selector")
        if not raw_ports:
            raise FieldError(
                "spec.portLevelMtls", "port level mTLS, if defined, must have at least one element"
            )
        for key, value in raw_ports.items():
            port = _port_key(key, "spec.portLevelMtls")
            path = f"spec.portLevelMtls[{port}]"
            if port in port_level:
                raise FieldError(path, f"port {port} is given twice")
            if value is None:
                raise FieldError(path, "must not be null")
            port_level[port] = _parse_mtls(mapping(value, path), path)
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
    check_keys(mtls, {"mode"}, path)
    raw = mtls.get("mode")
    return MtlsMode.UNSET if raw is None else enum_member(MtlsMode, raw, f"{path}.mode")


def _port_key(key: object, path: str) -> int:
    """A portLevelMtls key: an int (YAML) or its decimal string (JSON), 1..65535."""
    if isinstance(key, int) and not isinstance(key, bool):
        port = key
    elif isinstance(key, str) and DECIMAL.fullmatch(key) and len(key) <= 10:
        port = int(key)
    else:
        raise FieldError(f"{path}[{show(key)}]", "key is not a port number")
    if not 1 <= port <= 65535:
        raise FieldError(f"{path}[{port}]", "port must be in range 1..65535")
    return port


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
    __tracebackhide__ = True  # a bad policy points at the suite's line
    spec: dict[str, Any] = {}
    if selector is not None:
        spec["selector"] = {"matchLabels": dict(selector)}
    if mode is not None:
        spec["mtls"] = {"mode": enum_text(mode)}
    if port_level is not None:
        spec["portLevelMtls"] = {
            _port_text(port): {"mode": enum_text(port_mode)}
            for port, port_mode in port_level.items()
        }
    metadata = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
    manifest = {
        "apiVersion": api_version,
        "kind": PeerAuthentication.kind,
        "metadata": metadata,
        "spec": spec,
    }
    return checked_manifest(parse_peer_authentication, manifest)


def _port_text(port: object) -> object:
    return str(port) if isinstance(port, int) and not isinstance(port, bool) else port
