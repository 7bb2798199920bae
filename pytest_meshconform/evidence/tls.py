"""TLS from a TCP stream: the plaintext handshake records -> the ClientHello and ServerHello.

What a mesh's TLS shows in the clear is its hellos: SNI, ALPN, offered and negotiated
versions, the cipher suite. Strings from the hellos (SNI, ALPN) are decoded as ASCII with
``backslashreplace``: non-ASCII bytes show as ``\\xNN`` escapes and never raise. Unknown
version numbers are shown as ``0x....``; GREASE values are dropped from
``supported_versions``. A handshake message may span records and a record may hold several;
a record is at most 2^14 + 2048 bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["ClientHello", "ServerHello", "TlsInfo", "analyze_tls"]


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What a TLS client offered, in the clear, in its first handshake message."""

    legacy_version: str
    sni: str | None
    alpn: tuple[str, ...]
    supported_versions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ServerHello:
    """What the server chose. ``alpn`` is visible only up to TLS 1.2 (1.3 encrypts it)."""

    version: str
    legacy_version: str
    cipher_suite: int
    cipher_suite_name: str | None
    alpn: str | None


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """The plaintext part of a TLS handshake; ``problem`` says why a hello is missing."""

    client_hello: ClientHello | None
    server_hello: ServerHello | None
    hello_retry_request: bool = False
    problem: str | None = None

    @property
    def version(self) -> str | None:
        """The negotiated version, when the ServerHello was seen."""
        return None if self.server_hello is None else self.server_hello.version


_VERSION_NAMES = {
    0x0300: "SSL3.0",
    0x0301: "TLS1.0",
    0x0302: "TLS1.1",
    0x0303: "TLS1.2",
    0x0304: "TLS1.3",
}

# IANA names of the suites a mesh (Envoy/BoringSSL, Go, OpenSSL) negotiates.
_CIPHER_SUITE_NAMES = {
    0x002F: "TLS_RSA_WITH_AES_128_CBC_SHA",
    0x0035: "TLS_RSA_WITH_AES_256_CBC_SHA",
    0x009C: "TLS_RSA_WITH_AES_128_GCM_SHA256",
    0x009D: "TLS_RSA_WITH_AES_256_GCM_SHA384",
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0x1304: "TLS_AES_128_CCM_SHA256",
    0x1305: "TLS_AES_128_CCM_8_SHA256",
    0xC009: "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    0xC00A: "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    0xC013: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    0xC014: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    0xC02B: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    0xC02C: "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    0xC02F: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    0xC030: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    0xCCA8: "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    0xCCA9: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
}

# RFC 8446 4.1.3: a ServerHello with this random is a HelloRetryRequest.
_HELLO_RETRY_RANDOM = bytes.fromhex(
    "cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c"
)
_MAX_RECORD_LENGTH = 2**14 + 2048
_EXT_SERVER_NAME, _EXT_ALPN, _EXT_SUPPORTED_VERSIONS = 0, 16, 43
_U16 = struct.Struct("!H")


def _version_name(version: int) -> str:
    return _VERSION_NAMES.get(version, f"0x{version:04x}")


def _is_grease(value: int) -> bool:
    """RFC 8701 reserved values: 0x0a0a, 0x1a1a, ... 0xfafa."""
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


def _text(raw: bytes) -> str:
    return raw.decode("ascii", "backslashreplace")


def _starts_with_tls_record(stream: bytes, offset: int) -> bool:
    if len(stream) - offset < 5:
        return False
    content_type, major, minor, length = struct.unpack_from("!BBBH", stream, offset)
    return bool(
        20 <= content_type <= 23 and major == 3 and minor <= 4 and length <= _MAX_RECORD_LENGTH
    )


class _Malformed(Exception):
    """A hello field does not fit in its message; the text names the field."""


class _Fields:
    """A bounds-checked cursor over one handshake message body."""

    __slots__ = ("data", "message", "position")

    def __init__(self, data: bytes, message: str) -> None:
        self.data = data
        self.message = message
        self.position = 0

    def take(self, count: int, what: str) -> bytes:
        start = self.position
        end = start + count
        if end > len(self.data):
            raise _Malformed(
                f"{self.message} {what} needs {count} bytes at offset {start}, "
                f"only {len(self.data) - start} left"
            )
        self.position = end
        return self.data[start:end]

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def vector8(self, what: str) -> bytes:
        return self.take(self.u8(what + " length"), what)

    def vector16(self, what: str) -> bytes:
        return self.take(self.u16(what + " length"), what)

    def remaining(self) -> int:
        return len(self.data) - self.position

    def extensions(self) -> dict[int, bytes]:
        """Extension bodies by type (absent block = none); the first of a repeated type wins."""
        found: dict[int, bytes] = {}
        if self.remaining() == 0:
            return found
        block = _Fields(self.vector16("extensions"), f"{self.message} extensions:")
        while block.remaining():
            extension_type = block.u16("extension type")
            found.setdefault(extension_type, block.vector16(f"extension {extension_type}"))
        return found


def _parse_client_hello(body: bytes) -> ClientHello:
    fields = _Fields(body, "ClientHello")
    legacy_version = fields.u16("legacy_version")
    fields.take(32, "random")
    fields.vector8("session_id")
    fields.vector16("cipher_suites")
    fields.vector8("compression_methods")
    extensions = fields.extensions()

    sni = None
    if _EXT_SERVER_NAME in extensions:
        names = _Fields(extensions[_EXT_SERVER_NAME], "ClientHello server_name")
        entries = _Fields(names.vector16("list"), "ClientHello server_name")
        while entries.remaining():
            name_type = entries.u8("name_type")
            name = entries.vector16("name")
            if name_type == 0 and sni is None:
                sni = _text(name)
    alpn: tuple[str, ...] = ()
    if _EXT_ALPN in extensions:
        alpn = _alpn_names(extensions[_EXT_ALPN], "ClientHello")
    supported_versions: tuple[str, ...] = ()
    if _EXT_SUPPORTED_VERSIONS in extensions:
        versions = _Fields(
            _Fields(extensions[_EXT_SUPPORTED_VERSIONS], "ClientHello").vector8(
                "supported_versions"
            ),
            "ClientHello supported_versions",
        )
        if versions.remaining() % 2:
            raise _Malformed(
                f"ClientHello supported_versions has an odd length {len(versions.data)}"
            )
        supported_versions = tuple(
            _version_name(version)
            for (version,) in _U16.iter_unpack(versions.data)
            if not _is_grease(version)
        )
    return ClientHello(
        legacy_version=_version_name(legacy_version),
        sni=sni,
        alpn=alpn,
        supported_versions=supported_versions,
    )


def _alpn_names(extension: bytes, message: str) -> tuple[str, ...]:
    names = _Fields(_Fields(extension, message + " ALPN").vector16("list"), message + " ALPN")
    found = []
    while names.remaining():
        found.append(_text(names.vector8("protocol")))
    return tuple(found)


def _parse_server_hello(body: bytes) -> tuple[ServerHello, bool]:
    """The ServerHello, and whether it is a HelloRetryRequest."""
    fields = _Fields(body, "ServerHello")
    legacy_version = fields.u16("legacy_version")
    random = fields.take(32, "random")
    fields.vector8("session_id")
    cipher_suite = fields.u16("cipher_suite")
    fields.u8("compression_method")
    extensions = fields.extensions()
    version = legacy_version
    if _EXT_SUPPORTED_VERSIONS in extensions:
        version = _Fields(extensions[_EXT_SUPPORTED_VERSIONS], "ServerHello").u16(
            "supported_versions"
        )
    alpn = None
    if _EXT_ALPN in extensions:
        chosen = _alpn_names(extensions[_EXT_ALPN], "ServerHello")
        if len(chosen) != 1:
            raise _Malformed(f"ServerHello ALPN lists {len(chosen)} protocols, not 1")
        alpn = chosen[0]
    hello = ServerHello(
        version=_version_name(version),
        legacy_version=_version_name(legacy_version),
        cipher_suite=cipher_suite,
        cipher_suite_name=_CIPHER_SUITE_NAMES.get(cipher_suite),
        alpn=alpn,
    )
    return hello, random == _HELLO_RETRY_RANDOM


class _HandshakeMessages:
    """Handshake messages from the plaintext TLS records at the start of one stream; a message
    may span records, and a record may hold several messages."""

    __slots__ = ("buffer", "consumed", "problem", "record_offset", "side", "stream")

    def __init__(self, stream: bytes, offset: int, side: str) -> None:
        self.stream = stream
        self.record_offset = offset
        # Record payloads are appended to a bytearray (amortised constant work per byte) and
        # consumed messages dropped only once they are half of it: a message split into
        # 1-byte records must not copy everything buffered so far once per record.
        self.buffer = bytearray()
        self.consumed = 0
        self.side = side
        self.problem: str | None = None

    def next(self) -> tuple[int, bytes] | None:
        """The next message (type, body), or None with ``problem`` set."""
        while True:
            available = len(self.buffer) - self.consumed
            if available >= 4:
                header = self.buffer[self.consumed : self.consumed + 4]
                length = int.from_bytes(header[1:], "big")
                if available - 4 >= length:
                    start = self.consumed + 4
                    self.consumed = start + length
                    return header[0], bytes(self.buffer[start : self.consumed])
                missing = 4 + length - available
            else:
                missing = 4 - available
            if not self._read_records(missing):
                return None

    def _read_records(self, missing: int) -> bool:
        """Append the payloads of handshake records until ``missing`` more bytes are buffered
        (at least one record is read); False with ``problem`` set when the records stop."""
        if self.consumed > len(self.buffer) // 2:
            del self.buffer[: self.consumed]
            self.consumed = 0
        stream, offset, buffer = self.stream, self.record_offset, self.buffer
        size = len(stream)
        wanted = len(buffer) + missing
        try:
            while True:
                if offset >= size:
                    self.problem = f"{self.side} stream ends inside the handshake"
                    return False
                if not _starts_with_tls_record(stream, offset):
                    self.problem = (
                        f"{self.side} bytes at stream offset {offset} are not a TLS record: "
                        f"{stream[offset : offset + 8]!r}"
                    )
                    return False
                content_type = stream[offset]
                end = offset + 5 + ((stream[offset + 3] << 8) | stream[offset + 4])
                if content_type == 22:
                    buffer += stream[offset + 5 : end]
                elif content_type != 20:  # 20: change_cipher_spec (TLS 1.3 compatibility)
                    kind = "alert" if content_type == 21 else "application data"
                    self.problem = (
                        f"{self.side} sent {kind} at stream offset {offset} before the hello"
                    )
                    return False
                offset = end
                if len(buffer) >= wanted:
                    return True
        finally:
            self.record_offset = offset


def analyze_tls(
    client_stream: bytes, client_offset: int, server_stream: bytes, server_offset: int
) -> TlsInfo | None:
    """The hellos of a connection whose streams start (at the offsets) with TLS: TlsInfo when
    the client's first bytes are a TLS record (or, if the client sent nothing, the server's),
    else None. A hello that is missing or malformed is named in ``problem``, never raised."""
    if len(client_stream) > client_offset:
        if not _starts_with_tls_record(client_stream, client_offset):
            return None
    elif not _starts_with_tls_record(server_stream, server_offset):
        return None
    problems: list[str] = []
    client_hello = None
    messages = _HandshakeMessages(client_stream, client_offset, "client")
    message = messages.next()
    try:
        if message is None:
            problems.append(f"no ClientHello: {messages.problem}")
        elif message[0] != 1:
            problems.append(f"client's first handshake message is type {message[0]}, not 1")
        else:
            client_hello = _parse_client_hello(message[1])
    except _Malformed as error:
        problems.append(str(error))

    server_hello = None
    hello_retry = False
    messages = _HandshakeMessages(server_stream, server_offset, "server")
    try:
        while server_hello is None:
            message = messages.next()
            if message is None:
                problems.append(f"no ServerHello: {messages.problem}")
                break
            if message[0] != 2:
                problems.append(f"server's handshake message is type {message[0]}, not 2")
                break
            hello, is_retry = _parse_server_hello(message[1])
            if is_retry:
                hello_retry = True
            else:
                server_hello = hello
    except _Malformed as error:
        problems.append(str(error))
    return TlsInfo(
        client_hello=client_hello,
        server_hello=server_hello,
        hello_retry_request=hello_retry,
        problem="; ".join(problems) or None,
    )
