"""Envoy's ``/config_dump``, read (pure): its sections, the active listeners with their filter
chains (match, transport socket, network and HTTP filters) and the active clusters with their
transport sockets.

Generic Envoy, in the admin API's snake_case JSON: no mesh's names. The readers that know what
a mesh's control plane sends (the kube backend's, with the names of ``istio.envoy``) classify
what this module reads. Each part is read when asked for, and a part that cannot be read raises
:class:`ConfigDumpError` naming its field by path, so a caller can keep an unreadable chain or
cluster where it is and still read the rest.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "ADMIN_V2_PREFIX",
    "ADMIN_V3_PREFIX",
    "RAW_BUFFER_TYPE",
    "ConfigDumpError",
    "FilterChain",
    "Listener",
    "NetworkFilter",
    "Section",
    "SocketMatch",
    "TlsSecrets",
    "TransportSocket",
    "active_cluster",
    "active_listener",
    "as_list",
    "as_object",
    "as_string",
    "as_uint32",
    "cluster_socket",
    "load_json",
    "message_name",
    "read_chain_port",
    "read_filter_chain",
    "read_network_filters",
    "read_socket_match",
    "read_transport_socket",
    "sections",
    "show",
    "socket_matches",
]

ADMIN_V3_PREFIX: Final = "type.googleapis.com/envoy.admin.v3."
ADMIN_V2_PREFIX: Final = "type.googleapis.com/envoy.admin.v2alpha."
# Envoy's default transport socket, which a socket given by name only may stand for
RAW_BUFFER_TYPE: Final = (
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
)
# Envoy's well-known name of the raw buffer socket, and its deprecated short form
_RAW_BUFFER_NAMES: Final = frozenset({"envoy.transport_sockets.raw_buffer", "raw_buffer"})
_SHOWN: Final = 80


class ConfigDumpError(ValueError):
    """A config dump without the shape Envoy gives it; the message names the field."""


# --- JSON -------------------------------------------------------------------------------------


def show(value: object) -> str:
    """``value`` as JSON, cut short enough for an error message."""
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool)) else "?"
    text = text if value is not None else "null"
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def load_json(data: bytes | str | Mapping[str, Any] | Sequence[Any]) -> object:
    """The document: JSON text parsed, an already loaded object as it is."""
    if not isinstance(data, (bytes, str)):
        return data
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigDumpError(f"config_dump is not JSON: {error}") from None


def as_object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigDumpError(f"{where}: expected an object, got {show(value)}")
    return value


def as_list(value: object, where: str) -> list[Any]:
    """A JSON list; absent (null) is the empty list, as protobuf's JSON mapping has it."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigDumpError(f"{where}: expected a list, got {show(value)}")
    return value


def as_string(value: object, where: str, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise ConfigDumpError(f"{where}: expected a string, got {show(value)}")
    return value


def as_uint32(value: object, where: str) -> int:
    """A protobuf UInt32Value in JSON: a number (Envoy never quotes 32-bit integers)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 32:
        raise ConfigDumpError(f"{where}: expected an unsigned 32-bit integer, got {show(value)}")
    return value


def message_name(type_url: str) -> str:
    """The protobuf message a type URL names: ``...tls.v3.DownstreamTlsContext`` ->
    ``DownstreamTlsContext``."""
    return type_url.rsplit(".", 1)[-1]


# --- sections ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Section:
    """One entry of ``configs``: an admin ``*ConfigDump`` message."""

    type_url: str
    body: Mapping[str, Any]

    @property
    def admin_type(self) -> str | None:
        """The v3 admin message (``ListenersConfigDump``, ``ClustersConfigDump``, ...); None
        for any other type (``is_v2`` says whether it is Envoy's v2 API)."""
        if self.type_url.startswith(ADMIN_V3_PREFIX):
            return self.type_url[len(ADMIN_V3_PREFIX) :]
        return None

    @property
    def is_v2(self) -> bool:
        return self.type_url.startswith(ADMIN_V2_PREFIX)

    def version_info(self, where: str) -> str:
        return as_string(self.body.get("version_info"), f"{where}.version_info")

    def entries(self, key: str) -> list[tuple[str, object]]:
        """The entries of one of the section's lists (``dynamic_listeners``,
        ``dynamic_active_clusters``, ...), each with the path that names it."""
        return [(f"{key}[{i}]", raw) for i, raw in enumerate(as_list(self.body.get(key), key))]


def sections(document: object) -> tuple[Section, ...]:
    """The ``configs`` of a ``/config_dump`` document, in order."""
    configs = as_list(as_object(document, "config_dump").get("configs"), "config_dump.configs")
    found = []
    for index, raw in enumerate(configs):
        section = as_object(raw, f"configs[{index}]")
        found.append(Section(as_string(section.get("@type"), f"configs[{index}].@type"), section))
    return tuple(found)


# --- transport sockets ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsSecrets:
    """The SDS secrets and SNI of a TLS context's ``common_tls_context``."""

    certificates: tuple[str, ...]  # tls_certificate_sds_secret_configs, by name
    validation: str | None  # the validation context's SDS secret (combined or plain)
    sni: str | None


@dataclass(frozen=True, slots=True)
class TransportSocket:
    """A ``transport_socket``: its type (also for a socket given by a well-known name only) and
    its ``typed_config``."""

    where: str
    name: str
    type_url: str
    config: Mapping[str, Any]  # the typed_config; empty for a socket given by name only

    @property
    def message(self) -> str:
        return message_name(self.type_url)

    def require_client_certificate(self) -> bool:
        """A DownstreamTlsContext's ``require_client_certificate`` (default false)."""
        value = self.config.get("require_client_certificate", False)
        if not isinstance(value, bool):
            raise ConfigDumpError(
                f"{self.where}.typed_config.require_client_certificate:"
                f" expected a boolean, got {show(value)}"
            )
        return value

    def tls_secrets(self) -> TlsSecrets:
        """The SDS secrets a TLS context names and its SNI."""
        where = f"{self.where}.typed_config"
        common = as_object(
            self.config.get("common_tls_context") or {}, f"{where}.common_tls_context"
        )
        configs = as_list(
            common.get("tls_certificate_sds_secret_configs"),
            f"{where}.common_tls_context.tls_certificate_sds_secret_configs",
        )
        certificates = tuple(
            as_string(as_object(c, f"{where}.sds[{i}]").get("name"), f"{where}.sds[{i}].name")
            for i, c in enumerate(configs)
        )
        combined = as_object(
            common.get("combined_validation_context") or {},
            f"{where}.common_tls_context.combined_validation_context",
        )
        validation = combined.get("validation_context_sds_secret_config") or common.get(
            "validation_context_sds_secret_config"
        )
        root = None
        if validation is not None:
            at = f"{where}.validation_context_sds_secret_config"
            root = as_string(as_object(validation, at).get("name"), f"{at}.name")
        sni = as_string(self.config.get("sni"), f"{where}.sni") or None
        return TlsSecrets(certificates, root, sni)

    def inner(self) -> TransportSocket | None:
        """The socket a wrapping socket (an internal upstream transport) carries, if any."""
        inner = self.config.get("transport_socket")
        if inner is None:
            return None
        return read_transport_socket(inner, f"{self.where}.typed_config.transport_socket")


def read_transport_socket(raw: object, where: str) -> TransportSocket:
    """A ``transport_socket``. A socket without ``typed_config`` is read by its name when
    Envoy knows it by name alone (the raw buffer socket: Istio <= 1.13 writes it that way)."""
    socket = as_object(raw, where)
    typed = socket.get("typed_config")
    if typed is None:
        name = as_string(socket.get("name"), f"{where}.name")
        if name in _RAW_BUFFER_NAMES:
            return TransportSocket(where, name, RAW_BUFFER_TYPE, {})
        raise ConfigDumpError(
            f"{where}.typed_config: expected an object, got null"
            + (f" (socket {name!r} without a config)" if name else "")
        )
    config = as_object(typed, f"{where}.typed_config")
    kind = as_string(config.get("@type"), f"{where}.typed_config.@type")
    if not kind:
        raise ConfigDumpError(f"{where}.typed_config: no @type")
    given = socket.get("name")
    return TransportSocket(where, given if isinstance(given, str) else "", kind, config)


# --- listeners --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listener:
    """One listener; its chains are read one by one (:func:`read_filter_chain`)."""

    name: str
    raw: Mapping[str, Any]

    def chains(self) -> list[tuple[str, object]]:
        """Each ``filter_chains`` entry with the path that names it
        (``<listener>.filter_chains[<i>]``)."""
        where = f"{self.name}.filter_chains"
        return [
            (f"{where}[{i}]", c)
            for i, c in enumerate(as_list(self.raw.get("filter_chains"), where))
        ]


def active_listener(raw: object, where: str) -> tuple[str, Listener | None]:
    """A ``dynamic_listeners`` entry's name and its active listener (None while warming or
    draining: not serving)."""
    entry = as_object(raw, where)
    name = as_string(entry.get("name"), f"{where}.name")
    active = entry.get("active_state")
    if active is None:
        return name, None
    listener = as_object(
        as_object(active, f"{where}.active_state").get("listener"),
        f"{where}.active_state.listener",
    )
    return name, Listener(name, listener)


@dataclass(frozen=True, slots=True)
class FilterChain:
    """A filter chain's match and transport socket (its filters: :func:`read_network_filters`)."""

    name: str
    destination_port: int | None
    transport_protocol: str  # "tls", "raw_buffer" or "" (any)
    application_protocols: tuple[str, ...]
    transport_socket: TransportSocket | None


def _chain_match(chain: object, where: str) -> Mapping[str, Any]:
    return as_object(
        as_object(chain, where).get("filter_chain_match") or {}, f"{where}.filter_chain_match"
    )


def read_chain_port(chain: object, where: str) -> int | None:
    """A chain's ``filter_chain_match.destination_port``, None for a chain without one."""
    port = _chain_match(chain, where).get("destination_port")
    return None if port is None else as_uint32(port, f"{where}.destination_port")


def read_filter_chain(chain: object, where: str) -> FilterChain:
    match = _chain_match(chain, where)
    alpns = as_list(match.get("application_protocols"), f"{where}.application_protocols")
    for index, alpn in enumerate(alpns):
        as_string(alpn, f"{where}.application_protocols[{index}]")
    raw_socket = as_object(chain, where).get("transport_socket")
    socket = (
        None
        if raw_socket is None
        else read_transport_socket(raw_socket, f"{where}.transport_socket")
    )
    port = match.get("destination_port")
    return FilterChain(
        name=as_string(as_object(chain, where).get("name"), f"{where}.name"),
        destination_port=None if port is None else as_uint32(port, f"{where}.destination_port"),
        transport_protocol=as_string(
            match.get("transport_protocol"), f"{where}.transport_protocol"
        ),
        application_protocols=tuple(alpns),
        transport_socket=socket,
    )


@dataclass(frozen=True, slots=True)
class NetworkFilter:
    """A network (or HTTP) filter: its name, type and ``typed_config``."""

    where: str
    name: str
    type_url: str
    config: Mapping[str, Any]

    def http_filters(self) -> tuple[NetworkFilter, ...]:
        """An HTTP connection manager's ``http_filters``, read the same way."""
        return _filters(self.config.get("http_filters"), f"{self.where}.http_filters")


def _filters(value: object, where: str) -> tuple[NetworkFilter, ...]:
    if value is None:
        raise ConfigDumpError(f"{where}: expected a list, got null")
    found = []
    for index, raw in enumerate(as_list(value, where)):
        at = f"{where}[{index}]"
        entry = as_object(raw, at)
        config = as_object(entry.get("typed_config") or {}, f"{at}.typed_config")
        found.append(
            NetworkFilter(
                at,
                as_string(entry.get("name"), f"{at}.name"),
                as_string(config.get("@type"), f"{at}.typed_config.@type"),
                config,
            )
        )
    return tuple(found)


def read_network_filters(chain: object, where: str) -> tuple[NetworkFilter, ...]:
    """A chain's ``filters``, in order."""
    return _filters(as_object(chain, where).get("filters"), f"{where}.filters")


# --- clusters ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SocketMatch:
    """One ``transport_socket_matches`` entry: its name; its socket is read when asked for."""

    where: str
    name: str
    raw_socket: object

    def socket(self) -> TransportSocket | None:
        """The entry's socket; None when it has none (plaintext)."""
        if self.raw_socket is None:
            return None
        return read_transport_socket(self.raw_socket, f"{self.where}.transport_socket")


def active_cluster(raw: object, where: str) -> tuple[str, Mapping[str, Any]]:
    """A ``dynamic_active_clusters`` entry's cluster name and the cluster."""
    cluster = as_object(as_object(raw, where).get("cluster"), f"{where}.cluster")
    return as_string(cluster.get("name"), f"{where}.cluster.name"), cluster


def cluster_socket(cluster: Mapping[str, Any], where: str) -> TransportSocket | None:
    """A cluster's own ``transport_socket`` (the fallback when it has socket matches)."""
    socket = cluster.get("transport_socket")
    return None if socket is None else read_transport_socket(socket, f"{where}.transport_socket")


def socket_matches(cluster: Mapping[str, Any], where: str) -> list[tuple[str, object]]:
    """A cluster's ``transport_socket_matches`` entries, each with its path (read one by one
    with :func:`read_socket_match`)."""
    at = f"{where}.transport_socket_matches"
    return [
        (f"{at}[{i}]", m)
        for i, m in enumerate(as_list(cluster.get("transport_socket_matches"), at))
    ]


def read_socket_match(raw: object, where: str) -> SocketMatch:
    entry = as_object(raw, where)
    return SocketMatch(
        where, as_string(entry.get("name"), f"{where}.name"), entry.get("transport_socket")
    )
