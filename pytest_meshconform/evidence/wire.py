"""Evidence from the wire: a pcap/pcapng capture -> TCP flows -> TLS hellos and plaintext HTTP.

The mesh promises are about what crosses the wire, so `analyze_pcap` reads what tcpdump wrote
and reports, per TCP connection, whether it began with a TLS ClientHello (and what the hellos
say: SNI, ALPN, versions, cipher) or carried plaintext HTTP (request and status lines,
headers) or plaintext HTTP/2 (the client's connection preface, then frames). One concept per
module, in reading order: `pcap` (files and link layers -> frames), `tcp` (IP/TCP ->
connections -> reassembled streams), `tls` (the hellos), `http` (HTTP/1.x), `http2` (the
preface and frame headers).

Everything is decoded with ``struct`` rather than dpkt's object decoders: a capture of a busy
pod holds hundreds of thousands of packets, and dpkt decodes neither TLS extension bodies nor
TCP streams anyway. A flow is TLS when the client's first bytes are a TLS record header (or,
after an HTTP CONNECT answered 2xx, the tunnel's first bytes are); a flow whose client began
with the HTTP/2 preface is HTTP/2 (gRPC without TLS), read as frames; otherwise its HTTP/1.x
messages are read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pytest_meshconform.evidence.http import (
    HttpRequest,
    HttpResponse,
    parse_requests,
    parse_responses,
)
from pytest_meshconform.evidence.http2 import HTTP2_PREFACE, Http2Frame, parse_frames
from pytest_meshconform.evidence.pcap import CaptureError, CaptureFile
from pytest_meshconform.evidence.tcp import (
    Connection,
    address_text,
    read_connections,
    reassemble,
)
from pytest_meshconform.evidence.tls import TlsInfo, analyze_tls

__all__ = ["Capture", "Flow", "analyze_pcap"]


@dataclass(frozen=True, slots=True)
class Flow:
    """One TCP connection as captured. Byte counts are TCP payload bytes seen on the wire
    (retransmissions included, like tshark's ``tcp.len``); the streams are reassembled."""

    client: tuple[str, int]
    server: tuple[str, int]
    direction_from: str  # "syn", "syn-ack", "port" or "first-packet": `tcp.Connection`
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
    client_gap: bool = False  # captured data after a hole in the stream was left out
    server_gap: bool = False
    client_stream: bytes = field(default=b"", repr=False)
    server_stream: bytes = field(default=b"", repr=False)
    # plaintext HTTP/2: the client began with the connection preface (RFC 9113, section 3.4),
    # and the complete frames each side sent (`http2.parse_frames`)
    http2: bool = False
    http2_client_frames: tuple[Http2Frame, ...] = field(default=(), repr=False)
    http2_server_frames: tuple[Http2Frame, ...] = field(default=(), repr=False)

    @property
    def http2_streams(self) -> tuple[int, ...]:
        """The streams a plaintext HTTP/2 client opened (its HEADERS frames), in order: one
        per request (a gRPC call is one)."""
        return tuple(
            dict.fromkeys(f.stream for f in self.http2_client_frames if f.type == "HEADERS")
        )

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
    frames = CaptureFile(data)
    trace = read_connections(frames)
    return Capture(
        link_type=frames.link_type,
        packet_count=trace.packet_count,
        non_tcp_packet_count=trace.non_tcp_packet_count,
        truncated=trace.truncated or frames.truncated,
        flows=tuple(_finish_flow(connection) for connection in trace.connections),
    )


def _finish_flow(connection: Connection) -> Flow:
    client, server, direction_from = connection.client_and_server()
    client_stream, client_gap = reassemble(client)
    server_stream, server_gap = reassemble(server)
    tls, requests, responses = _analyze_streams(client_stream, server_stream)
    http2 = tls is None and client_stream.startswith(HTTP2_PREFACE)
    return Flow(
        client=(address_text(client.address), client.port),
        server=(address_text(server.address), server.port),
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
        http2=http2,
        http2_client_frames=parse_frames(client_stream, len(HTTP2_PREFACE)) if http2 else (),
        http2_server_frames=parse_frames(server_stream) if http2 else (),
    )


def _analyze_streams(
    client_stream: bytes, server_stream: bytes
) -> tuple[TlsInfo | None, tuple[HttpRequest, ...], tuple[HttpResponse, ...]]:
    """The flow's TLS hellos, else its HTTP requests; its HTTP responses; and the hellos inside
    an HTTP CONNECT tunnel the server accepted."""
    tls = analyze_tls(client_stream, 0, server_stream, 0)
    requests: list[HttpRequest] = []
    tunnel_client = None
    if tls is None and not client_stream.startswith(HTTP2_PREFACE):  # `PRI *` is no request
        requests, tunnel_client = parse_requests(client_stream)
    responses: list[HttpResponse] = []
    if server_stream.startswith(b"HTTP/"):
        responses, tunnel_server = parse_responses(
            server_stream, [request.method for request in requests]
        )
        if tunnel_client is not None and tunnel_server is not None:
            tls = analyze_tls(client_stream, tunnel_client, server_stream, tunnel_server)
    return tls, tuple(requests), tuple(responses)
