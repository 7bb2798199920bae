"""Envoy's ``/config_dump``, read (pure): its sections, the active listeners with their filter
chains (match, transport socket, network and HTTP filters), the active clusters with their
transport sockets, and the secrets with the certificates they hold.

Generic Envoy, in the admin API's snake_case JSON: no mesh's names. The readers that know what
a mesh's control plane sends (the kube backend's) classify what this module reads. Each part
is read when asked for, and a part that cannot be read raises
:class:`ConfigDumpError` naming its field by path, so a caller can keep an unreadable chain or
cluster where it is and still read the rest.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from cryptography import x509

from pytest_meshconform.evidence.certs import (
    CertError,
    WorkloadCert,
    load_pem_chain,
    trust_domain_problem,
)
from pytest_meshconform.evidence.protojson import (
    ProtoJsonError,
    decode_base64,
    field,
    fragment,
    join,
    json_list,
    json_object,
    load_json_object,
    optional_string,
    parse_timestamp,
)

__all__ = [
    "ADMIN_V2_PREFIX",
    "ADMIN_V3_PREFIX",
    "RAW_BUFFER_TYPE",
    "SECRETS_CONFIG_DUMP_TYPE",
    "SECRET_TYPE",
    "SPIFFE_VALIDATOR_TYPE",
    "ConfigDumpError",
    "EnvoySecret",
    "EnvoySecrets",
    "FilterChain",
    "Listener",
    "NetworkFilter",
    "Section",
    "SocketMatch",
    "TlsSecrets",
    "TransportSocket",
    "TrustBundle",
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
    "read_secrets",
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
    Envoy knows it by name alone (the raw buffer socket, as older control planes write it)."""
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


# --- secrets ----------------------------------------------------------------------------------
#
# Envoy's snake_case (``dynamic_active_secrets[].secret.tls_certificate.certificate_chain
# .inline_bytes``) or protojson's camelCase as istioctl prints it (``dynamicActiveSecrets
# ...inlineBytes``), read with :mod:`.protojson`; a full ``/config_dump`` must hold exactly
# one ``SecretsConfigDump``. Which secret is the workload certificate and which the roots is
# the mesh's choice: the caller names them.

SECRETS_CONFIG_DUMP_TYPE: Final = "type.googleapis.com/envoy.admin.v3.SecretsConfigDump"
SECRET_TYPE: Final = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SPIFFE_VALIDATOR_TYPE: Final = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"
)

SecretState = Literal["static", "active", "warming"]
SecretKind = Literal[
    "tls_certificate", "validation_context", "session_ticket_keys", "generic_secret"
]
_SECRET_KINDS: tuple[SecretKind, ...] = (
    "tls_certificate",
    "validation_context",
    "session_ticket_keys",
    "generic_secret",
)


@dataclass(frozen=True, slots=True)
class TrustBundle:
    """The roots Envoy's SPIFFE validator trusts for one trust domain (SPIRE federation)."""

    trust_domain: str
    certificates: tuple[x509.Certificate, ...]


@dataclass(frozen=True, slots=True)
class EnvoySecret:
    """One secret of the dump, as istioctl lists it, with the certificates it holds.

    ``kind`` is None for a secret without payload (a warming secret still waiting for SDS).
    ``file`` is set when the PEM lives in a file on the proxy, which the dump only names.
    """

    name: str
    state: SecretState
    version_info: str | None
    last_updated: datetime | None
    kind: SecretKind | None
    certificates: tuple[x509.Certificate, ...]
    trust_bundles: tuple[TrustBundle, ...] = ()
    file: str | None = None


@dataclass(frozen=True, slots=True)
class EnvoySecrets:
    """A proxy's secrets: the full list, and the workload certificate and roots in it.

    ``workload`` is the certificate of the active secret the mesh names for it, kept rather
    than derived because building it validates the chain; the roots are read off the active
    secret named ``root_secret``.
    """

    secrets: tuple[EnvoySecret, ...]
    workload: WorkloadCert | None
    root_secret: str

    def secret(self, name: str, state: SecretState = "active") -> EnvoySecret | None:
        return next((s for s in self.secrets if s.name == name and s.state == state), None)

    @property
    def trust_bundles(self) -> tuple[TrustBundle, ...]:
        """The per-trust-domain bundles of the root secret's SPIFFE validator (SPIRE
        federation)."""
        root_secret = self.secret(self.root_secret)
        return () if root_secret is None else root_secret.trust_bundles

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        """Every root the root secret holds: its ``trusted_ca``, then each trust bundle's."""
        root_secret = self.secret(self.root_secret)
        if root_secret is None:
            return ()
        bundled = tuple(c for bundle in root_secret.trust_bundles for c in bundle.certificates)
        return root_secret.certificates + bundled

    def roots_for(self, trust_domain: str) -> tuple[x509.Certificate, ...]:
        """The roots Envoy would check a peer of ``trust_domain`` against.

        With SPIFFE validator bundles that is the bundle of that trust domain (none if it has
        no bundle, as Envoy then rejects the peer); otherwise every root certificate.
        """
        if not self.trust_bundles:
            return self.roots
        for bundle in self.trust_bundles:
            if bundle.trust_domain == trust_domain:
                return bundle.certificates
        return ()


def _data_source(value: Any, where: str) -> tuple[tuple[x509.Certificate, ...], str | None]:
    """Certificates of an Envoy DataSource, or the proxy-side file it names."""
    source = json_object(value, where)
    present = [
        key
        for key in ("inline_bytes", "inline_string", "filename", "environment_variable")
        if field(source, key, where) is not None
    ]
    if len(present) > 1:
        raise CertError(f"{where}: more than one data source: {', '.join(present)}")
    if not present:
        return (), None
    key = present[0]
    at = join(where, key)
    raw = field(source, key, where)
    if key == "filename":
        return (), optional_string(raw, at)
    if key == "environment_variable":
        raise CertError(f"{at}: PEM in environment variable {fragment(raw)} is not in the dump")
    if key == "inline_bytes":
        pem: bytes | str = decode_base64(raw, at)
    else:
        if not isinstance(raw, str):
            raise CertError(f"{at}: expected a string, got {type(raw).__name__}")
        pem = raw
    try:
        return load_pem_chain(pem), None
    except CertError as exc:
        raise CertError(f"{at}: {exc}") from exc


def _spiffe_bundles(validation: Mapping[str, Any], where: str) -> tuple[TrustBundle, ...]:
    custom = field(validation, "custom_validator_config", where)
    if custom is None:
        return ()
    at = join(where, "custom_validator_config")
    typed = field(json_object(custom, at), "typed_config", at)
    if typed is None:
        return ()
    at = join(at, "typed_config")
    typed = json_object(typed, at)
    if typed.get("@type") != SPIFFE_VALIDATOR_TYPE:
        return ()  # another validator: it holds no SPIFFE bundles
    domains = field(typed, "trust_domains", at)
    if domains is None:
        return ()
    bundles: list[TrustBundle] = []
    for index, entry in enumerate(json_list(domains, join(at, "trust_domains"))):
        entry_at = f"{at}.trust_domains[{index}]"
        entry = json_object(entry, entry_at)
        name = field(entry, "name", entry_at)
        if not isinstance(name, str) or trust_domain_problem(name) is not None:
            raise CertError(f"{entry_at}.name: not a SPIFFE trust domain: {fragment(name)}")
        bundle = field(entry, "trust_bundle", entry_at)
        certs = () if bundle is None else _data_source(bundle, f"{entry_at}.trust_bundle")[0]
        bundles.append(TrustBundle(name, certs))
    return tuple(bundles)


def _parse_secret(item: Any, state: SecretState, where: str) -> EnvoySecret:
    entry = json_object(item, where)
    name = field(entry, "name", where)
    if not isinstance(name, str):
        raise CertError(f"{where}.name: expected a string, got {type(name).__name__}")
    version_info = optional_string(field(entry, "version_info", where), f"{where}.version_info")
    updated = field(entry, "last_updated", where)
    last_updated = None if updated is None else parse_timestamp(updated, f"{where}.last_updated")
    secret = field(entry, "secret", where)
    if secret is None:
        return EnvoySecret(name, state, version_info, last_updated, None, ())
    at = f"{where}.secret"
    secret = json_object(secret, at)
    type_url = secret.get("@type")
    if type_url is not None and type_url != SECRET_TYPE:
        raise CertError(f"{at}.@type: {fragment(type_url)} is not {SECRET_TYPE}")
    kinds = [kind for kind in _SECRET_KINDS if field(secret, kind, at) is not None]
    if len(kinds) > 1:
        raise CertError(f"{at}: a secret is one of its kinds, got {', '.join(kinds)}")
    if not kinds:
        return EnvoySecret(name, state, version_info, last_updated, None, ())
    kind = kinds[0]
    body = json_object(field(secret, kind, at), f"{at}.{kind}")
    certs: tuple[x509.Certificate, ...] = ()
    file = None
    bundles: tuple[TrustBundle, ...] = ()
    if kind == "tls_certificate":
        chain = field(body, "certificate_chain", f"{at}.{kind}")
        if chain is not None:
            certs, file = _data_source(chain, f"{at}.{kind}.certificate_chain")
    elif kind == "validation_context":
        trusted = field(body, "trusted_ca", f"{at}.{kind}")
        if trusted is not None:
            certs, file = _data_source(trusted, f"{at}.{kind}.trusted_ca")
        bundles = _spiffe_bundles(body, f"{at}.{kind}")
    return EnvoySecret(name, state, version_info, last_updated, kind, certs, bundles, file)


def _secrets_config_dump(document: Mapping[str, Any]) -> Mapping[str, Any]:
    """The SecretsConfigDump inside a full ``/config_dump``, or the document itself."""
    if document.get("configs") is not None:
        found = sections(document)
        secrets = [s.body for s in found if s.type_url == SECRETS_CONFIG_DUMP_TYPE]
        if len(secrets) != 1:
            raise CertError(
                f"configs: expected one {SECRETS_CONFIG_DUMP_TYPE}, found {len(secrets)} among "
                f"{fragment([s.type_url for s in found])}"
            )
        return secrets[0]
    type_url = document.get("@type")
    if type_url is not None and type_url != SECRETS_CONFIG_DUMP_TYPE:
        raise CertError(f"@type: {fragment(type_url)} is not {SECRETS_CONFIG_DUMP_TYPE}")
    known = ("static_secrets", "dynamic_active_secrets", "dynamic_warming_secrets")
    if type_url is None and document and all(field(document, k, "") is None for k in known):
        raise CertError(
            f"not an Envoy secrets dump: no 'configs', '@type' or secret lists among keys "
            f"{fragment(sorted(map(str, document)))}"
        )
    return document


def _single_secret(
    secrets: Sequence[EnvoySecret], name: str, allowed_kind: SecretKind
) -> EnvoySecret | None:
    matches = [s for s in secrets if s.state == "active" and s.name == name]
    if len(matches) > 1:
        raise CertError(f"{len(matches)} active secrets are named {name!r}")
    if not matches:
        return None
    secret = matches[0]
    if secret.kind not in (None, allowed_kind):
        raise CertError(f"secret {name!r} is a {secret.kind}, expected a {allowed_kind}")
    return secret


def read_secrets(
    data: bytes | str | Mapping[str, Any], *, workload_secret: str, root_secret: str
) -> EnvoySecrets:
    """Envoy's secrets: a full ``/config_dump`` (its one SecretsConfigDump), that section
    alone, or istioctl's JSON of it. ``workload_secret`` names the secret holding the workload
    certificate (``workload`` is None until it is active), ``root_secret`` the one holding the
    roots. Errors are ``CertError``, naming the field or certificate at fault."""
    try:
        return _read_secrets(data, workload_secret, root_secret)
    except (ProtoJsonError, ConfigDumpError) as exc:
        raise CertError(str(exc)) from exc


def _read_secrets(
    data: bytes | str | Mapping[str, Any], workload_secret: str, root_secret: str
) -> EnvoySecrets:
    document = load_json_object(data, "secrets dump")
    dump = _secrets_config_dump(document)
    secrets: list[EnvoySecret] = []
    lists: tuple[tuple[SecretState, str], ...] = (
        ("static", "static_secrets"),
        ("active", "dynamic_active_secrets"),
        ("warming", "dynamic_warming_secrets"),
    )
    for state, key in lists:
        items = field(dump, key, "")
        if items is None:
            continue
        for index, item in enumerate(json_list(items, key)):
            secrets.append(_parse_secret(item, state, f"{key}[{index}]"))

    workload = None
    default = _single_secret(secrets, workload_secret, "tls_certificate")
    if default is not None and default.certificates:
        try:
            workload = WorkloadCert.from_chain(default.certificates)
        except CertError as exc:
            raise CertError(f"secret {workload_secret!r}: {exc}") from exc
    elif default is not None and default.file is not None:
        raise CertError(
            f"secret {workload_secret!r} names file {default.file!r} on the proxy "
            "instead of holding the PEM"
        )

    _single_secret(secrets, root_secret, "validation_context")  # one, of the right kind
    return EnvoySecrets(tuple(secrets), workload, root_secret)
