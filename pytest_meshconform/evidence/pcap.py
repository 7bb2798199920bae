"""Capture files: pcap and pcapng containers -> frames -> where each frame's IP header starts.

- files: pcap (micro- and nanosecond, either byte order) and pcapng (several sections and
  interfaces; Enhanced, Simple and obsolete Packet Blocks);
- link types: EN10MB (Ethernet, with 802.1Q/802.1ad tags and PPPoE sessions), LINUX_SLL,
  LINUX_SLL2, NULL and LOOP (BSD loopback; IPv6 families 24, 28 and 30), RAW (101, and the
  platform values 12 and 14 that some files carry), IPV4 and IPV6.

A file that is damaged after some point yields what came before and says so (`truncated`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Final

__all__ = ["IP_OFFSET", "CaptureError", "CaptureFile"]


class CaptureError(ValueError):
    """The input is not a capture this module can read (the message names what was seen)."""


# --------------------------------------------------------------------------- files

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": "<",
    b"\xa1\xb2\xc3\xd4": ">",
    b"\x4d\x3c\xb2\xa1": "<",  # nanosecond timestamps
    b"\xa1\xb2\x3c\x4d": ">",
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_PCAPNG_BYTE_ORDER = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}


class CaptureFile:
    """The frames of one pcap or pcapng capture: iterating (once) yields (link type, frame
    bytes, cut short?) in file order. ``link_type`` (libpcap's name of the first interface's)
    and ``truncated`` (the file ends early or is damaged) are known once iterated. Raises
    CaptureError when the bytes are no capture at all."""

    __slots__ = ("_records", "link_type", "truncated")

    def __init__(self, data: bytes) -> None:
        self.link_type: str | None = None
        self.truncated = False
        magic = data[:4]
        if magic in _PCAP_MAGICS:
            self._records = _pcap_records(data, self)
        elif magic == _PCAPNG_SHB:
            self._records = _pcapng_records(data, self)
        elif not data:
            raise CaptureError("not a pcap or pcapng capture: the input is empty")
        else:
            raise CaptureError(f"not a pcap or pcapng capture: starts with {data[:16]!r}")

    def __iter__(self) -> Iterator[tuple[int, bytes, bool]]:
        return self._records


def _link_type_name(link_type: int) -> str:
    known = _LINK_TYPES.get(link_type)
    if known is None:
        supported = ", ".join(f"{number} ({name})" for number, (name, _) in _LINK_TYPES.items())
        raise CaptureError(f"unsupported link type {link_type}; supported: {supported}")
    return known[0]


def _pcap_records(data: bytes, state: CaptureFile) -> Iterator[tuple[int, bytes, bool]]:
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


def _pcapng_records(data: bytes, state: CaptureFile) -> Iterator[tuple[int, bytes, bool]]:
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
IP_OFFSET: Final[Mapping[int, Callable[[bytes], int]]] = {
    number: ip_offset for number, (_, ip_offset) in _LINK_TYPES.items()
}
"""Link type -> where the IP header starts in a frame of that type (-1: the frame carries no
IP). A frame too short for its link-layer header raises struct.error or IndexError."""
