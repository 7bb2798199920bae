"""TCP from captured frames: IPv4/IPv6 and TCP headers -> connections -> each side's bytes.

- IPv4 and IPv6 (extension headers skipped). IP fragments and tunnels (L2TP, GRE, VXLAN) are not
  reassembled or opened: such packets count as non-TCP.
- A 4-tuple seen again with a SYN that starts a new sequence (or after a close) is a new
  connection.
- The client of a connection is the side that sent the SYN (or received the SYN-ACK). When
  neither was captured, the side sending to the lower port is the client; `client_and_server`
  says which rule decided.
- Each direction is reassembled in sequence order (32-bit wraparound, retransmissions and
  overlaps dropped). Where overlapping segments disagree, the bytes of the segment that starts
  earliest in sequence space win. The stream stops at the first hole (a lost or truncated
  segment); `reassemble` says that data after the hole was left out.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from pytest_meshconform.evidence.pcap import IP_OFFSET

__all__ = ["Connection", "Side", "TcpTrace", "address_text", "read_connections", "reassemble"]

_SEQ_MASK = 0xFFFFFFFF
_IPV6_SKIPPED_HEADERS = (0, 43, 60)  # hop-by-hop, routing, destination options
_TCP_HEADER = struct.Struct("!HHIIH")
_IPV4_HEADER = struct.Struct("!BxHxxHxB")
_IPV6_LENGTH = struct.Struct("!HB")
_U16 = struct.Struct("!H")


class Side:
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


class Connection:
    """One TCP connection: its two sides, in the order their first packet was seen."""

    __slots__ = ("first_frame", "sides")

    def __init__(self, first_frame: int, sender: Side, receiver: Side) -> None:
        self.first_frame = first_frame
        self.sides = (sender, receiver)

    def client_and_server(self) -> tuple[Side, Side, str]:
        """(client, server, the rule that decided: "syn", "syn-ack", "port" or
        "first-packet")."""
        first, second = self.sides
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
        return client, server, direction_from


def _closed(side: Side, peer: Side) -> bool:
    return side.fin or side.rst or peer.fin or peer.rst


@dataclass(frozen=True, slots=True)
class TcpTrace:
    """The TCP connections of a capture's frames, and what could not be read as TCP."""

    connections: tuple[Connection, ...]
    packet_count: int
    non_tcp_packet_count: int  # frames without a decodable TCP segment; counted and skipped
    truncated: bool  # a frame or its IP packet was cut short


def read_connections(frames: Iterable[tuple[int, bytes, bool]]) -> TcpTrace:
    """The connections of (link type, frame, cut short?) frames, each side's segments kept in
    capture order for `reassemble`. Work is linear in the frames' bytes."""
    connections: list[Connection] = []
    table: dict[tuple[bytes, int, bytes, int], Side] = {}
    packet_count = 0
    non_tcp = 0
    truncated = False
    ip_offset_of = IP_OFFSET
    tcp_header = _TCP_HEADER
    ipv4_header = _IPV4_HEADER
    ipv6_length = _IPV6_LENGTH

    for link_type, frame, cut in frames:
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
            connection = Connection(packet_count, Side(src, sport), Side(dst, dport))
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

    return TcpTrace(
        connections=tuple(connections),
        packet_count=packet_count,
        non_tcp_packet_count=non_tcp,
        truncated=truncated,
    )


def address_text(address: bytes) -> str:
    """A packed IPv4 or IPv6 address as text."""
    return socket.inet_ntop(socket.AF_INET if len(address) == 4 else socket.AF_INET6, address)


def reassemble(side: Side) -> tuple[bytes, bool]:
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
