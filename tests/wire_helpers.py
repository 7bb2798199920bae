"""Builders for the synthetic captures of the test_wire*.py tests: real TCP/IP bytes from
dpkt, written with dpkt's pcap Writer or as hand-made pcapng blocks, and real TLS hellos from
OpenSSL (Python's ``ssl`` over memory BIOs, no sockets)."""

from __future__ import annotations

import contextlib
import datetime
import io
import ipaddress
import ssl
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dpkt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pytest_meshconform.evidence.tls import ClientHello
from pytest_meshconform.evidence.wire import Capture, Flow, analyze_pcap

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

ISTIO_ALPN = ("istio-http/1.1", "istio", "http/1.1")
ISTIO_SNI = "outbound_.8000_._.httpbin.foo.svc.cluster.local"

# --------------------------------------------------------------------------- IP and TCP


def tcp_packet(
    src: tuple[str, int],
    dst: tuple[str, int],
    seq: int,
    flags: int,
    payload: bytes = b"",
    ack: int = 0,
) -> bytes:
    """One IPv4 or IPv6 packet (by the address family) carrying one TCP segment."""
    segment = dpkt.tcp.TCP(
        sport=src[1],
        dport=dst[1],
        seq=seq & 0xFFFFFFFF,
        ack=ack & 0xFFFFFFFF,
        flags=flags,
        win=65535,
    )
    segment.data = payload
    source, destination = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    if source.version == 4:
        packet = dpkt.ip.IP(src=source.packed, dst=destination.packed, p=6, ttl=64, data=segment)
        return bytes(packet)
    packet6 = dpkt.ip6.IP6(src=source.packed, dst=destination.packed, nxt=6, hlim=64)
    packet6.data = segment
    packet6.plen = len(bytes(segment))
    return bytes(packet6)


class Conversation:
    """Packets of one TCP connection, with sequence numbers relative to each side's ISN."""

    def __init__(
        self,
        client: tuple[str, int] = ("10.1.0.1", 40000),
        server: tuple[str, int] = ("10.1.0.2", 8443),
        client_isn: int = 1000,
        server_isn: int = 900000,
    ) -> None:
        self.client, self.server = client, server
        self.client_isn, self.server_isn = client_isn, server_isn
        self.client_next = 0
        self.server_next = 0

    def handshake(self) -> list[bytes]:
        return [
            tcp_packet(self.client, self.server, self.client_isn, SYN),
            tcp_packet(
                self.server, self.client, self.server_isn, SYN | ACK, ack=self.client_isn + 1
            ),
            tcp_packet(self.client, self.server, self.client_isn + 1, ACK, ack=self.server_isn + 1),
        ]

    def client_sends(self, data: bytes, offset: int | None = None, flags: int = PSH | ACK) -> bytes:
        """A client segment at ``offset`` into its stream (default: right after the last one)."""
        if offset is None:
            offset = self.client_next
        self.client_next = max(self.client_next, offset + len(data))
        return tcp_packet(self.client, self.server, self.client_isn + 1 + offset, flags, data)

    def server_sends(self, data: bytes, offset: int | None = None, flags: int = PSH | ACK) -> bytes:
        if offset is None:
            offset = self.server_next
        self.server_next = max(self.server_next, offset + len(data))
        return tcp_packet(self.server, self.client, self.server_isn + 1 + offset, flags, data)

    def client_fin(self) -> bytes:
        return self.client_sends(b"", flags=FIN | ACK)

    def server_fin(self) -> bytes:
        return self.server_sends(b"", flags=FIN | ACK)


# --------------------------------------------------------------------------- link layers


def ethernet(ip_packet: bytes, vlan: int | None = None) -> bytes:
    ethertype = 0x0800 if ip_packet[0] >> 4 == 4 else 0x86DD
    header = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01"
    if vlan is not None:
        header += struct.pack("!HH", 0x8100, vlan)
    return header + struct.pack("!H", ethertype) + ip_packet


def pppoe(ip_packet: bytes) -> bytes:
    """Ethernet + PPPoE session (RFC 2516) + PPP protocol field."""
    ppp_protocol = 0x0021 if ip_packet[0] >> 4 == 4 else 0x0057
    session = struct.pack("!BBHHH", 0x11, 0x00, 0x1234, len(ip_packet) + 2, ppp_protocol)
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x88\x64" + session + ip_packet


def linux_sll(ip_packet: bytes) -> bytes:
    ethertype = 0x0800 if ip_packet[0] >> 4 == 4 else 0x86DD
    return bytes(dpkt.sll.SLL(type=0, hrd=772, hlen=6, ethtype=ethertype)) + ip_packet


def linux_sll2(ip_packet: bytes) -> bytes:
    ethertype = 0x0800 if ip_packet[0] >> 4 == 4 else 0x86DD
    return bytes(dpkt.sll2.SLL2(ethtype=ethertype, intindex=1, hrd=772, hlen=6)) + ip_packet


def bsd_null(ip_packet: bytes, family: int, byte_order: str = "<") -> bytes:
    return struct.pack(byte_order + "I", family) + ip_packet


# --------------------------------------------------------------------------- files


def pcap_file(frames: Iterable[bytes], link_type: int = 1, nano: bool = False) -> bytes:
    """A pcap file written by dpkt's Writer."""
    buffer = io.BytesIO()
    writer = dpkt.pcap.Writer(buffer, snaplen=65535, linktype=link_type, nano=nano)
    for number, frame in enumerate(frames):
        writer.writepkt(frame, ts=1_700_000_000 + number / 1000)
    return buffer.getvalue()


def pcap_record(frame: bytes, original_length: int | None = None) -> bytes:
    """A little-endian pcap record by hand, for caplen < origlen (a snap-length cut)."""
    original = len(frame) if original_length is None else original_length
    return struct.pack("<IIII", 1_700_000_000, 0, len(frame), original) + frame


def pcap_header(link_type: int, snaplen: int = 65535) -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, link_type)


def _pcapng_block(block_type: int, body: bytes, byte_order: str) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    total = 12 + len(body)
    return (
        struct.pack(byte_order + "II", block_type, total)
        + body
        + struct.pack(byte_order + "I", total)
    )


def pcapng_section(*blocks: bytes, byte_order: str = "<") -> bytes:
    """A Section Header Block (RFC draft-ietf-opsawg-pcapng) followed by ``blocks``."""
    shb = struct.pack(byte_order + "IHHq", 0x1A2B3C4D, 1, 0, -1)
    return _pcapng_block(0x0A0D0D0A, shb, byte_order) + b"".join(blocks)


def pcapng_interface(link_type: int, snaplen: int = 0, byte_order: str = "<") -> bytes:
    return _pcapng_block(1, struct.pack(byte_order + "HHI", link_type, 0, snaplen), byte_order)


def pcapng_enhanced_packet(
    interface: int, frame: bytes, original_length: int | None = None, byte_order: str = "<"
) -> bytes:
    original = len(frame) if original_length is None else original_length
    fixed = struct.pack(byte_order + "IIIII", interface, 0, 0, len(frame), original)
    return _pcapng_block(6, fixed + frame, byte_order)


def pcapng_simple_packet(frame: bytes, byte_order: str = "<") -> bytes:
    return _pcapng_block(3, struct.pack(byte_order + "I", len(frame)) + frame, byte_order)


def pcapng_custom_block(byte_order: str = "<") -> bytes:
    """A block type readers must skip (a Custom Block, type 0x00000BAD)."""
    return _pcapng_block(0x0BAD, struct.pack(byte_order + "I", 32473) + b"skip me", byte_order)


# --------------------------------------------------------------------------- TLS


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway self-signed P-256 certificate and key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "httpbin.foo.svc.cluster.local")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_context(
    cert_path: Path, key_path: Path, alpn: Sequence[str], tls12_cipher: str | None = None
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    context.set_alpn_protocols(list(alpn))
    if tls12_cipher is not None:
        context.set_ciphers(tls12_cipher)
    return context


def client_context(alpn: Sequence[str], maximum: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(list(alpn))
    context.maximum_version = maximum
    return context


def tls_first_flights(
    client: ssl.SSLContext, server: ssl.SSLContext, sni: str
) -> tuple[bytes, bytes]:
    """The bytes OpenSSL puts on the wire first: the client's ClientHello flight and the
    server's answer (ServerHello ...), produced over memory BIOs."""
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(client_in, client_out, server_hostname=sni)
    server_side = server.wrap_bio(server_in, server_out, server_side=True)
    with contextlib.suppress(ssl.SSLWantReadError):
        client_side.do_handshake()
    client_flight = client_out.read()
    server_in.write(client_flight)
    with contextlib.suppress(ssl.SSLWantReadError):
        server_side.do_handshake()
    return client_flight, server_out.read()


def tls_records(stream: bytes) -> list[tuple[int, bytes]]:
    """Split a byte stream into (content type, fragment) TLS records."""
    records = []
    position = 0
    while position + 5 <= len(stream):
        length = int.from_bytes(stream[position + 3 : position + 5], "big")
        records.append((stream[position], stream[position + 5 : position + 5 + length]))
        position += 5 + length
    return records


def refragment_handshake(stream: bytes, sizes: Sequence[int]) -> bytes:
    """Re-cut the leading handshake records of ``stream`` into records of ``sizes`` bytes (the
    last takes the rest), so one handshake message spans several records."""
    records = tls_records(stream)
    handshake = b"".join(fragment for kind, fragment in records if kind == 22)
    out = b""
    position = 0
    for index, size in enumerate(sizes):
        end = len(handshake) if index == len(sizes) - 1 else position + size
        fragment = handshake[position:end]
        out += struct.pack("!BHH", 22, 0x0303, len(fragment)) + fragment
        position = end
    return out


def handshake_record(message_type: int, body: bytes) -> bytes:
    message = bytes([message_type]) + len(body).to_bytes(3, "big") + body
    return struct.pack("!BHH", 22, 0x0303, len(message)) + message


def server_hello_body(
    random: bytes, cipher_suite: int, extensions: Sequence[tuple[int, bytes]]
) -> bytes:
    """A ServerHello body by hand (RFC 8446 4.1.3), e.g. for a HelloRetryRequest."""
    encoded = b"".join(struct.pack("!HH", kind, len(data)) + data for kind, data in extensions)
    return (
        struct.pack("!H", 0x0303)
        + random
        + b"\x20"
        + b"\x11" * 32
        + struct.pack("!HB", cipher_suite, 0)
        + struct.pack("!H", len(encoded))
        + encoded
    )


# --------------------------------------------------------------------------- for the tests

V4 = (("192.0.2.10", 40123), ("192.0.2.20", 8443))


V6 = (("2001:db8::10", 40123), ("2001:db8::20", 8443))


@dataclass(frozen=True)
class Flights:
    tls13: tuple[bytes, bytes]  # (ClientHello flight, server's first flight)
    tls12: tuple[bytes, bytes]


def make_flights(directory: Path) -> Flights:
    """Real hellos from OpenSSL (memory BIOs), with Istio's SNI and ALPN; the certificate is
    written under ``directory``."""
    cert, key = make_certificate(directory)
    server = server_context(cert, key, ["istio-http/1.1", "http/1.1"])
    server12 = server_context(
        cert, key, ["istio-http/1.1"], tls12_cipher="ECDHE-ECDSA-AES128-GCM-SHA256"
    )
    client13 = client_context(ISTIO_ALPN, ssl.TLSVersion.TLSv1_3)
    client13.minimum_version = ssl.TLSVersion.TLSv1_2
    return Flights(
        tls13=tls_first_flights(client13, server, ISTIO_SNI),
        tls12=tls_first_flights(
            client_context(ISTIO_ALPN, ssl.TLSVersion.TLSv1_2), server12, ISTIO_SNI
        ),
    )


ISTIO_HELLO_13 = ClientHello(
    legacy_version="TLS1.2",
    sni=ISTIO_SNI,
    alpn=ISTIO_ALPN,
    supported_versions=("TLS1.3", "TLS1.2"),
)


def analyze_frames(frames: list[bytes], link: Callable[[bytes], bytes] = ethernet) -> Capture:
    return analyze_pcap(pcap_file([link(frame) for frame in frames]))


def only_flow(capture: Capture) -> Flow:
    assert len(capture.flows) == 1, capture.flows
    return capture.flows[0]
