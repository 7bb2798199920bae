# Large on purpose: one decoder (pcap, TCP, TLS, HTTP) read top to bottom, see docs/architecture.md.
"""Evidence from the wire: a pcap/pcapng capture -> TCP flows -> TLS hellos and plaintext HTTP.

The mesh promises are about what crosses the wire, so this module reads what tcpdump wrote and
reports, per TCP connection, whether it began with a TLS ClientHello (and what the hellos say:
SNI, ALPN, versions, cipher) or carried plaintext HTTP (request and status lines, headers).

Everything is decoded here with ``struct`` rather than dpkt's object decoders: a capture of a
busy pod holds hundreds of thousands of packets, and dpkt decodes neither TLS extension bodies
nor TCP streams anyway. What is read:

- files: pcap (micro- and nanosecond, either byte order) and pcapng (several sections and
  interfaces; Enhanced, Simple and obsolete Packet Blocks);
- link types: EN10MB (Ethernet, with 802.1Q/802.1ad tags and PPPoE sessions), LINUX_SLL,
  LINUX_SLL2, NULL and LOOP (BSD loopback; IPv6 families 24, 28 and 30), RAW (101, and the
  platform values 12 and 14 that some files carry), IPV4 and IPV6;
- IPv4 and IPv6 (extension headers skipped). IP fragments and tunnels (L2TP, GRE, VXLAN) are not
  reassembled or opened: such packets count as non-TCP.

Decoding choices a reader of the evidence should know:

- The client of a flow is the side that sent the SYN (or received the SYN-ACK). When neither
  was captured, the side sending to the lower port is the client; ``Flow.direction_from`` says
  which rule decided.
- Each direction is reassembled in sequence order (32-bit wraparound, retransmissions and
  overlaps dropped). Where overlapping segments disagree, the bytes of the segment that starts
  earliest in sequence space win. The stream stops at the first hole (a lost or truncated
  segment); ``Flow.client_gap`` / ``Flow.server_gap`` tell that data after the hole was left out.
- A flow is TLS when the client's first bytes are a TLS record header (or, after an HTTP
  CONNECT answered 2xx, the tunnel's first bytes are). Strings from TLS hellos (SNI, ALPN) are
  decoded as ASCII with ``backslashreplace``: non-ASCII bytes show as ``\\xNN`` escapes and never
  raise. HTTP start lines and headers are decoded as latin-1 (every byte maps to one character).
- Unknown version numbers are shown as ``0x....``; GREASE values are dropped from
  ``supported_versions``.
- HTTP/1.x messages are read in order from the start of each stream and framed by
  Content-Length or chunked encoding; reading stops at the first head that is incomplete or
  malformed (lines must end in CRLF), at a body that runs to the close, or at a protocol switch.
"""

from __future__ import annotations

import os
import re
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Capture",
    "CaptureError",
    "ClientHello",
    "Flow",
    "HttpRequest",
    "HttpResponse",
    "ServerHello",
    "TlsInfo",
    "analyze_pcap",
]


class CaptureError(ValueError):
    """The input is not a capture this module can read (the message names what was seen)."""


# --------------------------------------------------------------------------- public results


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


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One plaintext HTTP/1.x request head."""

    method: str
    target: str
    version: str
    host: str | None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """One plaintext HTTP/1.x response head."""

    version: str
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Flow:
    """One TCP connection as captured. Byte counts are TCP payload bytes seen on the wire
    (retransmissions included, like tshark's ``tcp.len``); the streams are reassembled."""

    client: tuple[str, int]
    server: tuple[str, int]
    direction_from: str  # "syn", "syn-ack", "port" or "first-packet"
    first_frame: int  # 1-based packet number in the capture, like tshark's frame.number
    client_packets: int
    server_packets: int
    client_bytes: int
    server_bytes: int
    client_fin: bool
    server_fin: bool
    client_rst: bool
    server_rst: bool
    tls: TlsInfo | None
    http_requests: tuple[HttpRequest, ...]
    http_responses: tuple[HttpResponse, ...]
    client_gap: bool = False
    server_gap: bool = False
    client_stream: bytes = field(default=b"", repr=False)
    server_stream: bytes = field(default=b"", repr=False)

    @property
    def rst_seen(self) -> bool:
        return self.client_rst or self.server_rst

    @property
    def server_port(self) -> int:
        return self.server[1]

    @property
    def has_payload(self) -> bool:
        return self.client_bytes > 0 or self.server_bytes > 0


@dataclass(frozen=True, slots=True)
class Capture:
    """Everything read from one capture. ``truncated``: the file ends early or is damaged after
    some point, or a packet was cut short (snap length); what came before is reported."""

    link_type: str | None  # None only for a pcapng that describes no interface
    packet_count: int
    non_tcp_packet_count: int  # packets without a decodable TCP segment; counted and skipped
    truncated: bool
    flows: tuple[Flow, ...]

    @property
    def tls_flows(self) -> tuple[Flow, ...]:
        return tuple(f for f in self.flows if f.tls is not None)

    @property
    def plaintext_flows(self) -> tuple[Flow, ...]:
        """Flows that carried payload and did not start with TLS."""
        return tuple(f for f in self.flows if f.tls is None and f.has_payload)

    def flows_to(self, port: int) -> tuple[Flow, ...]:
        """Flows whose server listens on ``port``."""
        return tuple(f for f in self.flows if f.server_port == port)


# --------------------------------------------------------------------------- reading files

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": "<",
    b"\xa1\xb2\xc3\xd4": ">",
    b"\x4d\x3c\xb2\xa1": "<",  # nanosecond timestamps
    b"\xa1\xb2\x3c\x4d": ">",
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_PCAPNG_BYTE_ORDER = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}


class _ReadState:
    """What the record readers learn besides the packets themselves."""

    __slots__ = ("link_type", "truncated")

    def __init__(self) -> None:
        self.link_type: str | None = None
        self.truncated = False


def _link_type_name(link_type: int) -> str:
    known = _LINK_TYPES.get(link_type)
    if known is None:
        supported = ", ".join(f"{number} ({name})" for number, (name, _) in _LINK_TYPES.items())
        raise CaptureError(f"unsupported link type {link_type}; supported: {supported}")
    return known[0]


def _pcap_records(data: bytes, state: _ReadState) -> Iterator[tuple[int, bytes, bool]]:
    """Yield (link type, packet bytes, cut short?) from a pcap file."""
    endian = _PCAP_MAGICS[data[:4]]
    if len(data) < 24:
        raise CaptureError(f"pcap file header truncated: {len(data)} of 24 bytes")
    link_type = struct.unpack_from(endian + "I", data, 20)[0] & 0xFFFF
    state.link_type = _link_type_name(link_type)
    record_header = struct.Struct(endian + "8xII")
    offset = 24
    size = len(data)
    while offset < size:
        if size - offset < 16:
            state.truncated = True
            return
        caplen, origlen = record_header.unpack_from(data, offset)
        offset += 16
        end = offset + caplen
        if end > size:
            state.truncated = True
            yield link_type, data[offset:size], True
            return
        yield link_type, data[offset:end], caplen < origlen
        offset = end


def _pcapng_records(data: bytes, state: _ReadState) -> Iterator[tuple[int, bytes, bool]]:
    """Yield (link type, packet bytes, cut short?) from a pcapng file."""
    size = len(data)
    offset = 0
    endian = "<"
    interfaces: list[tuple[int, int]] = []  # (link type, snap length) per interface id
    while offset < size:
        if size - offset < 12:
            state.truncated = True
            return
        block_type_raw = data[offset : offset + 4]
        if block_type_raw == _PCAPNG_SHB:
            order = data[offset + 8 : offset + 12]
            if order not in _PCAPNG_BYTE_ORDER:
                if offset == 0:
                    raise CaptureError(f"pcapng byte-order magic not recognised: {order!r}")
                state.truncated = True
                return
            endian = _PCAPNG_BYTE_ORDER[order]
            interfaces = []
        block_type, block_len = struct.unpack_from(endian + "II", data, offset)
        if block_len < 12 or block_len % 4:
            state.truncated = True  # damaged: nothing after this can be trusted
            return
        end = offset + block_len
        cut_block = end > size
        if cut_block:
            state.truncated = True
            end = size
        body = offset + 8
        if block_type == 1 and end - body >= 8:  # Interface Description Block
            link_type, _, snaplen = struct.unpack_from(endian + "HHI", data, body)
            interfaces.append((link_type, snaplen))
            if state.link_type is None:
                known = _LINK_TYPES.get(link_type)
                state.link_type = known[0] if known else f"LINKTYPE_{link_type}"
        elif block_type in (6, 2) and end - body >= 20:  # Enhanced / obsolete Packet Block
            if block_type == 6:
                interface_id, _, _, caplen, origlen = struct.unpack_from(
                    endian + "IIIII", data, body
                )
            else:
                interface_id, _, _, _, caplen, origlen = struct.unpack_from(
                    endian + "HHIIII", data, body
                )
            start = body + 20
            available = max(0, (end if cut_block else end - 4) - start)
            yield _pcapng_packet(interfaces, interface_id, data, start, caplen, origlen, available)
        elif block_type == 3 and end - body >= 4 and interfaces:  # Simple Packet Block
            origlen = struct.unpack_from(endian + "I", data, body)[0]
            snaplen = interfaces[0][1] or origlen
            start = body + 4
            available = max(0, (end if cut_block else end - 4) - start)
            yield _pcapng_packet(
                interfaces, 0, data, start, min(origlen, snaplen), origlen, available
            )
        if cut_block:
            return
        offset = end


def _pcapng_packet(
    interfaces: list[tuple[int, int]],
    interface_id: int,
    data: bytes,
    start: int,
    caplen: int,
    origlen: int,
    available: int,
) -> tuple[int, bytes, bool]:
    if interface_id >= len(interfaces):
        return -1, b"", False  # no such interface: not decodable, counted as non-TCP
    link_type = interfaces[interface_id][0]
    _link_type_name(link_type)
    taken = min(caplen, available)
    return link_type, data[start : start + taken], taken < caplen or caplen < origlen


# --------------------------------------------------------------------------- link layers
# Each returns the offset of the IP header in the frame, or -1 when the frame carries no IP.

_U16 = struct.Struct("!H")
_ETHERTYPE_IP = (0x0800, 0x86DD)


def _ip_after_ethernet(frame: bytes) -> int:
    ethertype = (frame[12] << 8) | frame[13]
    offset = 14
    while ethertype in (0x8100, 0x88A8, 0x9100):  # VLAN tags
        ethertype = _U16.unpack_from(frame, offset + 2)[0]
        offset += 4
    if ethertype in _ETHERTYPE_IP:
        return offset
    # PPPoE session: a 6-byte header, then the PPP protocol (IPv4 0x0021, IPv6 0x0057)
    if ethertype == 0x8864 and _U16.unpack_from(frame, offset + 6)[0] in (0x0021, 0x0057):
        return offset + 8
    return -1


def _ip_after_sll(frame: bytes) -> int:
    return 16 if _U16.unpack_from(frame, 14)[0] in _ETHERTYPE_IP else -1


def _ip_after_sll2(frame: bytes) -> int:
    return 20 if _U16.unpack_from(frame, 0)[0] in _ETHERTYPE_IP else -1


# AF_INET, and AF_INET6 as BSD variants number it (NetBSD/OpenBSD 24, FreeBSD 28, macOS 30).
_BSD_IP_FAMILIES = (2, 24, 28, 30)


def _ip_after_null(frame: bytes) -> int:
    """BSD loopback: a 4-byte address family in the capturing host's byte order."""
    family = struct.unpack_from("<I", frame, 0)[0]
    if family > 0xFFFF:
        family = struct.unpack_from(">I", frame, 0)[0]
    return 4 if family in _BSD_IP_FAMILIES else -1


def _ip_after_loop(frame: bytes) -> int:
    """OpenBSD loopback: like NULL, always big-endian."""
    return 4 if struct.unpack_from(">I", frame, 0)[0] in _BSD_IP_FAMILIES else -1


def _ip_at_start(frame: bytes) -> int:
    return 0


# Link-layer header type (tcpdump.org linktypes) -> libpcap's name, and where IP starts.
_LINK_TYPES: dict[int, tuple[str, Callable[[bytes], int]]] = {
    0: ("NULL", _ip_after_null),
    1: ("EN10MB", _ip_after_ethernet),
    12: ("RAW", _ip_at_start),
    14: ("RAW", _ip_at_start),
    101: ("RAW", _ip_at_start),
    108: ("LOOP", _ip_after_loop),
    113: ("LINUX_SLL", _ip_after_sll),
    228: ("IPV4", _ip_at_start),
    229: ("IPV6", _ip_at_start),
    276: ("LINUX_SLL2", _ip_after_sll2),
}
_IP_OFFSET = {number: ip_offset for number, (_, ip_offset) in _LINK_TYPES.items()}


# --------------------------------------------------------------------------- TCP flows

_SEQ_MASK = 0xFFFFFFFF
_IPV6_SKIPPED_HEADERS = (0, 43, 60)  # hop-by-hop, routing, destination options
_TCP_HEADER = struct.Struct("!HHIIH")
_IPV4_HEADER = struct.Struct("!BxHxxHxB")
_IPV6_LENGTH = struct.Struct("!HB")


class _Side:
    """One direction of a connection while the capture is read."""

    __slots__ = (
        "address",
        "fin",
        "packets",
        "payloads",
        "port",
        "rst",
        "sent_syn",
        "sent_synack",
        "seqs",
        "syn_seq",
        "wire_bytes",
    )

    def __init__(self, address: bytes, port: int) -> None:
        self.address = address
        self.port = port
        self.packets = 0
        self.wire_bytes = 0
        # Segments as two parallel lists of untracked objects (ints, bytes): one tuple per
        # segment would give the cyclic GC hundreds of thousands of objects to scan.
        self.seqs: list[int] = []
        self.payloads: list[bytes] = []
        self.syn_seq: int | None = None
        self.sent_syn = False
        self.sent_synack = False
        self.fin = False
        self.rst = False


class _Connection:
    __slots__ = ("first_frame", "sides")

    def __init__(self, first_frame: int, sender: _Side, receiver: _Side) -> None:
        self.first_frame = first_frame
        self.sides = (sender, receiver)


def _closed(side: _Side, peer: _Side) -> bool:
    return side.fin or side.rst or peer.fin or peer.rst


def analyze_pcap(source: bytes | str | os.PathLike[str]) -> Capture:
    """Read a pcap/pcapng capture (bytes, or a path to one) into TCP flows with their TLS
    hellos and plaintext HTTP. Raises CaptureError when the input is not a readable capture
    (a file that cannot be opened raises the OS's error). Work is linear in the input."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        try:
            data = Path(source).read_bytes()
        except ValueError as error:  # a NUL in the path
            raise CaptureError(f"not a capture path: {error}") from error
    state = _ReadState()
    magic = data[:4]
    records: Iterator[tuple[int, bytes, bool]]
    if magic in _PCAP_MAGICS:
        records = _pcap_records(data, state)
    elif magic == _PCAPNG_SHB:
        records = _pcapng_records(data, state)
    elif not data:
        raise CaptureError("not a pcap or pcapng capture: the input is empty")
    else:
        raise CaptureError(f"not a pcap or pcapng capture: starts with {data[:16]!r}")

    connections: list[_Connection] = []
    table: dict[tuple[bytes, int, bytes, int], _Side] = {}
    packet_count = 0
    non_tcp = 0
    truncated = False
    ip_offset_of = _IP_OFFSET
    tcp_header = _TCP_HEADER
    ipv4_header = _IPV4_HEADER
    ipv6_length = _IPV6_LENGTH

    for link_type, frame, cut in records:
        packet_count += 1
        if cut:
            truncated = True
        try:
            decode = ip_offset_of.get(link_type)
            ip = -1 if decode is None else decode(frame)
            if ip < 0:
                non_tcp += 1
                continue
            version = frame[ip] >> 4
            if version == 4:
                version_ihl, total_length, fragment, protocol = ipv4_header.unpack_from(frame, ip)
                header_length = (version_ihl & 0x0F) * 4
                if protocol != 6 or fragment & 0x3FFF or header_length < 20:
                    non_tcp += 1
                    continue
                src = frame[ip + 12 : ip + 16]
                dst = frame[ip + 16 : ip + 20]
                # total length 0: a TSO/BIG TCP segment captured before segmentation
                ip_end = ip + total_length if total_length else len(frame)
                tcp = ip + header_length
                if ip_end < tcp + 20:
                    non_tcp += 1
                    continue
            elif version == 6:
                payload_length, next_header = ipv6_length.unpack_from(frame, ip + 4)
                src = frame[ip + 8 : ip + 24]
                dst = frame[ip + 24 : ip + 40]
                tcp = ip + 40
                ip_end = tcp + payload_length if payload_length else len(frame)
                while next_header != 6:
                    if next_header in _IPV6_SKIPPED_HEADERS:
                        next_header = frame[tcp]
                        tcp += (frame[tcp + 1] + 1) * 8
                    elif next_header == 51:  # authentication header
                        next_header = frame[tcp]
                        tcp += (frame[tcp + 1] + 2) * 4
                    elif next_header == 44 and not (
                        _U16.unpack_from(frame, tcp + 2)[0] & 0xFFF9
                    ):  # an atomic fragment (offset 0, no more fragments) is whole
                        next_header = frame[tcp]
                        tcp += 8
                    else:
                        break
                if next_header != 6 or ip_end < tcp + 20:
                    non_tcp += 1
                    continue
            else:
                non_tcp += 1
                continue
            sport, dport, seq, _, offset_flags = tcp_header.unpack_from(frame, tcp)
        except (struct.error, IndexError):
            non_tcp += 1
            truncated = truncated or cut
            continue
        payload_start = tcp + (offset_flags >> 12) * 4
        wire_length = ip_end - payload_start
        if wire_length < 0 or payload_start < tcp + 20:
            non_tcp += 1
            continue
        if ip_end > len(frame):
            truncated = True
        flags = offset_flags & 0x1FF

        key = (src, sport, dst, dport)
        side = table.get(key)
        # A SYN without ACK with a new ISN, or after a close, on a known 4-tuple: the 4-tuple
        # is reused by a new connection.
        if (
            side is not None
            and flags & 0x12 == 0x02
            and (
                (side.syn_seq is not None and side.syn_seq != seq)
                or (side.syn_seq is None and _closed(side, table[(dst, dport, src, sport)]))
            )
        ):
            side = None
        if side is None:
            connection = _Connection(packet_count, _Side(src, sport), _Side(dst, dport))
            connections.append(connection)
            side, peer = connection.sides
            table[key] = side
            table[(dst, dport, src, sport)] = peer
        side.packets += 1
        side.wire_bytes += wire_length
        if flags & 0x07:  # SYN, FIN or RST
            if flags & 0x02:
                side.syn_seq = seq
                if flags & 0x10:
                    side.sent_synack = True
                else:
                    side.sent_syn = True
                seq = (seq + 1) & 0xFFFFFFFF  # the SYN takes one sequence number
            if flags & 0x01:
                side.fin = True
            if flags & 0x04:
                side.rst = True
        if wire_length and payload_start < len(frame):
            side.seqs.append(seq)
            side.payloads.append(frame[payload_start:ip_end])

    return Capture(
        link_type=state.link_type,
        packet_count=packet_count,
        non_tcp_packet_count=non_tcp,
        truncated=truncated or state.truncated,
        flows=tuple(_finish_flow(connection) for connection in connections),
    )


def _finish_flow(connection: _Connection) -> Flow:
    first, second = connection.sides
    if first.sent_syn or second.sent_syn:
        client_is_first = first.sent_syn
        direction_from = "syn"
    elif first.sent_synack or second.sent_synack:
        client_is_first = second.sent_synack
        direction_from = "syn-ack"
    elif first.port != second.port:
        client_is_first = first.port > second.port
        direction_from = "port"
    else:
        client_is_first = True
        direction_from = "first-packet"
    client, server = (first, second) if client_is_first else (second, first)
    client_stream, client_gap = _reassemble(client)
    server_stream, server_gap = _reassemble(server)
    tls, requests, responses = _analyze_streams(client_stream, server_stream)
    return Flow(
        client=(_address_text(client.address), client.port),
        server=(_address_text(server.address), server.port),
        direction_from=direction_from,
        first_frame=connection.first_frame,
        client_packets=client.packets,
        server_packets=server.packets,
        client_bytes=client.wire_bytes,
        server_bytes=server.wire_bytes,
        client_fin=client.fin,
        server_fin=server.fin,
        client_rst=client.rst,
        server_rst=server.rst,
        tls=tls,
        http_requests=requests,
        http_responses=responses,
        client_gap=client_gap,
        server_gap=server_gap,
        client_stream=client_stream,
        server_stream=server_stream,
    )


def _address_text(address: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(address) == 4 else socket.AF_INET6, address)


def _reassemble(side: _Side) -> tuple[bytes, bool]:
    """The contiguous byte stream one side sent, and whether captured data lay beyond a hole.

    Sequence numbers are taken relative to the SYN when it was captured, else to the earliest
    segment in serial-number order (RFC 1982), so a stream that crosses 2**32 stays in order.
    """
    seqs, payloads = side.seqs, side.payloads
    if not seqs:
        return b"", False
    reference = seqs[0] if side.syn_seq is None else (side.syn_seq + 1) & _SEQ_MASK
    placed = [
        (((seq - reference + 0x80000000) & _SEQ_MASK) - 0x80000000, -len(payload), index)
        for index, (seq, payload) in enumerate(zip(seqs, payloads, strict=True))
    ]
    placed.sort()
    position = 0 if side.syn_seq is not None else placed[0][0]
    pieces: list[bytes] = []
    for start, negative_length, index in placed:
        end = start - negative_length
        if end <= position:
            continue  # retransmitted, or before the SYN
        if start > position:
            return b"".join(pieces), True
        payload = payloads[index]
        pieces.append(payload if start == position else payload[position - start :])
        position = end
    return b"".join(pieces), False


# --------------------------------------------------------------------------- TLS

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


def _analyze_tls(
    client_stream: bytes, client_offset: int, server_stream: bytes, server_offset: int
) -> TlsInfo | None:
    """TlsInfo when the client's first bytes are a TLS record (or, if the client sent nothing,
    the server's), else None."""
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


# --------------------------------------------------------------------------- HTTP/1.x

_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([!-~]{1,65536}) (HTTP/[0-9]\.[0-9])")
_STATUS_LINE = re.compile(rb"(HTTP/[0-9]\.[0-9]) ([0-9]{3})(?: ([^\r\n]*))?")
_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEX_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


class _Head:
    __slots__ = ("body_start", "headers", "start_line")

    def __init__(
        self, start_line: re.Match[bytes], headers: list[tuple[str, str]], end: int
    ) -> None:
        self.start_line = start_line
        self.headers = headers
        self.body_start = end

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name]


def _parse_head(stream: bytes, position: int, start_line: re.Pattern[bytes]) -> _Head | None:
    """A complete message head (start line, header fields) at ``position``, or None."""
    line_end = stream.find(b"\r\n", position, position + 70000)
    if line_end < 0:
        return None
    matched = start_line.fullmatch(stream, position, line_end)
    if matched is None:
        return None
    head_end = stream.find(b"\r\n\r\n", line_end)
    if head_end < 0:
        return None
    # Each field as its name and value pieces: an obsolete folded line appends a piece, joined
    # once at the end (re-building the value per line costs the square of the field's length).
    fields: list[tuple[bytes, list[bytes]]] = []
    if head_end > line_end:
        for line in stream[line_end + 2 : head_end].split(b"\r\n"):
            if line[:1] in (b" ", b"\t") and fields:  # obsolete line folding
                fields[-1][1].append(line.strip(b" \t"))
                continue
            name, colon, value = line.partition(b":")
            if not colon or not _FIELD_NAME.fullmatch(name):
                return None
            fields.append((name, [value.strip(b" \t")]))
    headers = [
        (name.decode("latin-1"), b" ".join(value).decode("latin-1")) for name, value in fields
    ]
    return _Head(matched, headers, head_end + 4)


def _body_end(stream: bytes, head: _Head) -> int | None:
    """Where the body framed by Transfer-Encoding / Content-Length ends; None when it cannot be
    framed (it runs to the end of the connection, or the stream stops first)."""
    transfer_encoding = head.values("transfer-encoding")
    if transfer_encoding:
        if transfer_encoding[-1].split(",")[-1].strip().lower() != "chunked":
            return None
        return _chunked_end(stream, head.body_start)
    lengths = {value.strip() for value in head.values("content-length")}
    if not lengths:
        return head.body_start
    if len(lengths) != 1 or not (length := lengths.pop()).isdigit():
        return None
    end = head.body_start + int(length)
    return end if end <= len(stream) else None


def _chunked_end(stream: bytes, position: int) -> int | None:
    while True:
        line_end = stream.find(b"\r\n", position)
        if line_end < 0:
            return None
        size_text = stream[position:line_end].split(b";", 1)[0].strip(b" \t")
        if not _HEX_SIZE.fullmatch(size_text):
            return None
        size = int(size_text, 16)
        if size == 0:
            if stream.startswith(b"\r\n", line_end + 2):
                return line_end + 4
            trailer_end = stream.find(b"\r\n\r\n", line_end + 2)
            return None if trailer_end < 0 else trailer_end + 4
        position = line_end + 2 + size
        if not stream.startswith(b"\r\n", position):
            return None
        position += 2


def _parse_requests(stream: bytes) -> tuple[list[HttpRequest], int | None]:
    """Requests from the start of the client stream, and where a CONNECT tunnel starts."""
    requests: list[HttpRequest] = []
    position = 0
    while position < len(stream):
        head = _parse_head(stream, position, _REQUEST_LINE)
        if head is None:
            break
        method, target, version = (part.decode("latin-1") for part in head.start_line.groups())
        hosts = head.values("host")
        requests.append(
            HttpRequest(
                method=method,
                target=target,
                version=version,
                host=hosts[0] if hosts else None,
                headers=tuple(head.headers),
            )
        )
        if method == "CONNECT":
            return requests, head.body_start
        end = _body_end(stream, head)
        if end is None:
            break
        position = end
    return requests, None


def _parse_responses(
    stream: bytes, request_methods: list[str]
) -> tuple[list[HttpResponse], int | None]:
    """Responses from the start of the server stream, and where an accepted CONNECT tunnel
    starts. The request methods say which responses have no body (HEAD) or open a tunnel."""
    responses: list[HttpResponse] = []
    answered = 0
    position = 0
    while position < len(stream):
        head = _parse_head(stream, position, _STATUS_LINE)
        if head is None:
            break
        version, status_text, reason = head.start_line.groups()
        status = int(status_text)
        responses.append(
            HttpResponse(
                version=version.decode("latin-1"),
                status=status,
                reason=(reason or b"").decode("latin-1"),
                headers=tuple(head.headers),
            )
        )
        if status == 101:
            break  # the connection switched protocols
        if 100 <= status < 200:
            position = head.body_start
            continue
        method = request_methods[answered] if answered < len(request_methods) else None
        answered += 1
        if method == "CONNECT" and 200 <= status < 300:
            return responses, head.body_start
        if method == "HEAD" or status in (204, 304):
            position = head.body_start
            continue
        end = _body_end(stream, head)
        if end is None or (end == head.body_start and not head.values("content-length")):
            break  # no length given: the body runs to the end of the connection
        position = end
    return responses, None


def _analyze_streams(
    client_stream: bytes, server_stream: bytes
) -> tuple[TlsInfo | None, tuple[HttpRequest, ...], tuple[HttpResponse, ...]]:
    tls = _analyze_tls(client_stream, 0, server_stream, 0)
    requests: list[HttpRequest] = []
    tunnel_client = None
    if tls is None:
        requests, tunnel_client = _parse_requests(client_stream)
    responses: list[HttpResponse] = []
    if server_stream.startswith(b"HTTP/"):
        responses, tunnel_server = _parse_responses(
            server_stream, [request.method for request in requests]
        )
        if tunnel_client is not None and tunnel_server is not None:
            tls = _analyze_tls(client_stream, tunnel_client, server_stream, tunnel_server)
    return tls, tuple(requests), tuple(responses)
