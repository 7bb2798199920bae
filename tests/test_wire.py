"""Tests for pytest_meshconform.evidence.wire: real third-party captures (expected values
transcribed from tshark 4.0.17), live captures made here with tcpdump, synthetic captures for
the odd cases, and property tests. Literal values below come from tshark output or from what the
test configured, never from the code under test."""

from __future__ import annotations

import itertools
import os
import random
import re
import selectors
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import dpkt
import pytest
import tenacity
from conftest import TESTDATA, load_benchmark
from hypothesis import HealthCheck, given, settings, strategies as st
from wire_helpers import (
    ISTIO_ALPN,
    ISTIO_SNI,
    Conversation,
    bsd_null,
    client_context,
    ethernet,
    handshake_record,
    linux_sll,
    linux_sll2,
    make_certificate,
    pcap_file,
    pcap_header,
    pcap_record,
    pcapng_custom_block,
    pcapng_enhanced_packet,
    pcapng_interface,
    pcapng_section,
    pcapng_simple_packet,
    pppoe,
    refragment_handshake,
    server_context,
    server_hello_body,
    tls_first_flights,
    tls_records,
)

from pytest_meshconform.evidence.http import HttpRequest, HttpResponse
from pytest_meshconform.evidence.pcap import CaptureError
from pytest_meshconform.evidence.tls import ClientHello, ServerHello
from pytest_meshconform.evidence.wire import Capture, Flow, analyze_pcap

PCAPS = TESTDATA / "pcaps"


@cache
def real_capture(name: str) -> Capture:
    path = PCAPS / name
    if not path.exists():
        pytest.skip(f"third-party capture {path} is absent (not shipped with the project)")
    return analyze_pcap(path)


def only_flow(capture: Capture) -> Flow:
    assert len(capture.flows) == 1, capture.flows
    return capture.flows[0]


# =========================================================================== 1. real captures
# link type: capinfos "File encapsulation" in libpcap's names; packets: capinfos; non-TCP:
# `tshark -Y "not tcp" | wc -l`; flows: `tshark -q -z conv,tcp`.

FILE_SUMMARIES = [
    ("dpkt__http.pcap", "EN10MB", 43, 2, 2),
    # tshark: 32 non-TCP frames and 3 conversations; the third (10 frames) runs inside an L2TP
    # tunnel (UDP), which wire.py does not open, so those frames count as non-TCP here.
    ("dpkt__nb6-http.pcap", "EN10MB", 62, 42, 2),
    ("filesamples__200722_tcp_anon.pcapng", "EN10MB", 35, 0, 2),
    ("filesamples__simple_http.pcap", "EN10MB", 24, 0, 2),
    ("filesamples__simple_http_sll2.pcap", "LINUX_SLL2", 24, 0, 2),
    ("illustrated-tls12__capture.pcap", "NULL", 22, 0, 1),
    ("illustrated-tls13__capture.pcap", "NULL", 22, 0, 1),
    ("ja4__badcurveball.pcap", "EN10MB", 12, 0, 1),
    ("ja4__browsers-x509.pcapng", "EN10MB", 179, 0, 3),
    ("ja4__http1-with-cookies.pcapng", "NULL", 12, 0, 1),
    ("ja4__https-connect.pcap", "EN10MB", 18, 0, 1),
    ("ja4__tls-alpn-h2.pcap", "NULL", 9, 0, 1),
    ("ja4__tls-non-ascii-alpn.pcapng", "EN10MB", 2, 0, 1),
    ("ja4__tls12.pcap", "EN10MB", 1, 0, 1),
    ("tcpdump__resp_2_inline.pcap", "LINUX_SLL", 14, 0, 1),
    ("tcpdump__tcp-handshake-nano.pcap", "LINUX_SLL", 3, 0, 1),
    ("tls-client-auth__tls-client-auth.pcap", "NULL", 22, 0, 1),
]


@pytest.mark.parametrize(("name", "link_type", "packets", "non_tcp", "flows"), FILE_SUMMARIES)
def test_real_capture_summary(
    name: str, link_type: str, packets: int, non_tcp: int, flows: int
) -> None:
    capture = real_capture(name)
    assert (capture.link_type, capture.packet_count, capture.non_tcp_packet_count) == (
        link_type,
        packets,
        non_tcp,
    )
    assert len(capture.flows) == flows
    assert capture.truncated is False


def test_every_real_capture_is_covered() -> None:
    if not PCAPS.exists():
        pytest.skip(f"third-party captures {PCAPS} are absent")
    assert sorted(path.name for path in PCAPS.iterdir()) == sorted(row[0] for row in FILE_SUMMARIES)


# Per flow, in order of first packet: client, server, how the client was known, packets and
# TCP payload bytes (sum of tcp.len) per direction, FIN and RST per direction.
# From: tshark -Y tcp -T fields -e tcp.stream -e ip.src -e ipv6.src -e tcp.srcport ... -e tcp.len
#       -e tcp.flags.syn -e tcp.flags.ack -e tcp.flags.fin -e tcp.flags.reset
FlowRow = tuple[tuple[str, int], tuple[str, int], str, tuple[int, int], tuple[int, int], str, str]
# fin/rst columns: "" none, "c" client, "s" server, "cs" both
REAL_FLOWS: dict[str, list[FlowRow]] = {
    "dpkt__http.pcap": [
        (
            ("145.254.160.237", 3372),
            ("65.208.228.223", 80),
            "syn",
            (16, 18),
            (479, 18364),
            "cs",
            "",
        ),
        (("145.254.160.237", 3371), ("216.239.59.99", 80), "port", (3, 4), (721, 3020), "", ""),
    ],
    "dpkt__nb6-http.pcap": [
        (("10.251.23.139", 33198), ("93.17.156.250", 80), "syn", (6, 4), (138, 885), "cs", ""),
        (("95.136.242.99", 52573), ("216.69.252.100", 80), "syn", (6, 4), (82, 357), "cs", ""),
    ],
    "filesamples__200722_tcp_anon.pcapng": [
        (("192.168.200.135", 7875), ("192.168.200.21", 2000), "syn", (5, 3), (6, 0), "cs", ""),
        (("192.168.200.135", 7876), ("192.168.200.21", 2000), "syn", (14, 13), (9519, 6), "cs", ""),
    ],
    "filesamples__simple_http.pcap": [
        (("127.0.0.1", 32784), ("127.0.0.1", 56789), "syn", (6, 6), (493, 200), "cs", ""),
        (("127.0.0.1", 32796), ("127.0.0.1", 56789), "syn", (6, 6), (448, 655), "cs", ""),
    ],
    "filesamples__simple_http_sll2.pcap": [
        (("127.0.0.1", 37614), ("127.0.0.1", 8000), "syn", (6, 6), (512, 200), "cs", ""),
        (("127.0.0.1", 37616), ("127.0.0.1", 8000), "syn", (6, 6), (466, 655), "cs", ""),
    ],
    "illustrated-tls12__capture.pcap": [
        (("::1", 50159), ("::1", 8443), "syn", (11, 11), (393, 1316), "cs", ""),
    ],
    "illustrated-tls13__capture.pcap": [
        (("127.0.0.1", 59219), ("127.0.0.1", 8400), "syn", (11, 11), (359, 1865), "cs", ""),
    ],
    "ja4__badcurveball.pcap": [
        (("172.130.128.76", 55318), ("54.226.182.138", 443), "syn", (7, 5), (524, 1796), "cs", ""),
    ],
    "ja4__browsers-x509.pcapng": [
        (("172.27.7.31", 54524), ("13.107.21.239", 443), "syn", (52, 60), (10524, 15690), "cs", ""),
        (("172.27.7.31", 54525), ("68.67.160.117", 443), "syn", (21, 22), (6718, 7112), "cs", "s"),
        (("172.27.7.31", 54603), ("103.42.133.15", 443), "syn", (12, 12), (644, 5514), "cs", "s"),
    ],
    "ja4__http1-with-cookies.pcapng": [
        (("127.0.0.1", 61256), ("127.0.0.1", 8000), "syn", (6, 6), (205, 1270), "cs", ""),
    ],
    "ja4__https-connect.pcap": [
        (("10.11.12.13", 54723), ("10.9.8.7", 8080), "syn", (8, 10), (499, 3901), "", ""),
    ],
    "ja4__tls-alpn-h2.pcap": [
        (
            ("2001:4998:ef83:14:8000::100d", 64034),
            ("2606:4700::6811:d209", 443),
            "syn",
            (4, 5),
            (237, 2810),
            "",
            "",
        ),
    ],
    "ja4__tls-non-ascii-alpn.pcapng": [
        (("192.168.1.168", 50112), ("142.251.16.94", 443), "port", (1, 1), (517, 1412), "", ""),
    ],
    "ja4__tls12.pcap": [
        (("192.168.133.129", 36372), ("34.117.237.239", 443), "port", (1, 0), (517, 0), "", ""),
    ],
    "tcpdump__resp_2_inline.pcap": [
        (("127.0.0.1", 35934), ("127.0.0.1", 6379), "syn", (8, 6), (167, 1288), "cs", ""),
    ],
    "tcpdump__tcp-handshake-nano.pcap": [
        (("131.155.215.69", 46656), ("137.116.81.94", 80), "syn", (2, 1), (0, 0), "", ""),
    ],
    "tls-client-auth__tls-client-auth.pcap": [
        (("::1", 58606), ("::1", 8081), "syn", (11, 11), (1977, 5823), "cs", ""),
    ],
}


@pytest.mark.parametrize("name", sorted(REAL_FLOWS))
def test_real_capture_flows(name: str) -> None:
    seen = [
        (
            flow.client,
            flow.server,
            flow.direction_from,
            (flow.client_packets, flow.server_packets),
            (flow.client_bytes, flow.server_bytes),
            "c" * flow.client_fin + "s" * flow.server_fin,
            "c" * flow.client_rst + "s" * flow.server_rst,
        )
        for flow in real_capture(name).flows
    ]
    assert seen == REAL_FLOWS[name]


@pytest.mark.parametrize(
    ("name", "first_frames"),
    [
        # tshark -Y tcp -T fields -e tcp.stream -e frame.number, first frame of each stream
        ("ja4__browsers-x509.pcapng", [1, 30, 120]),
        ("dpkt__http.pcap", [1, 18]),
        ("dpkt__nb6-http.pcap", [7, 35]),  # DNS over PPPoE in frames 1-6
    ],
)
def test_real_first_frames(name: str, first_frames: list[int]) -> None:
    assert [flow.first_frame for flow in real_capture(name).flows] == first_frames


# From: tshark -Y tls.handshake.type==1 -T fields -e tcp.stream -e tls.handshake.version
#   -e tls.handshake.extensions_server_name -e tls.handshake.extensions_alpn_str
#   -e tls.handshake.extensions.supported_version   (GREASE values dropped by hand)
# (legacy_version is 0x0303 = TLS1.2 in every one of them)
ClientHelloRow = tuple[str | None, tuple[str, ...], tuple[str, ...]]
REAL_CLIENT_HELLOS: dict[str, list[ClientHelloRow]] = {
    "illustrated-tls12__capture.pcap": [("example.ulfheim.net", (), ())],
    "illustrated-tls13__capture.pcap": [("example.ulfheim.net", (), ("TLS1.3",))],
    "ja4__badcurveball.pcap": [
        ("bad.curveballtest.com", ("h2", "http/1.1"), ("TLS1.3", "TLS1.2", "TLS1.1", "TLS1.0"))
    ],
    "ja4__browsers-x509.pcapng": [
        ("edge.microsoft.com", ("h2", "http/1.1"), ("TLS1.3", "TLS1.2")),
        ("nym1-ib.adnxs.com", ("h2", "http/1.1"), ("TLS1.3", "TLS1.2")),
        ("lptag.liveperson.net", ("h2", "http/1.1"), ("TLS1.3", "TLS1.2")),
    ],
    # The ClientHello is sent inside an HTTP CONNECT tunnel, without SNI or ALPN.
    "ja4__https-connect.pcap": [(None, (), ())],
    "ja4__tls-alpn-h2.pcap": [("www.cloudflare.com", ("h2", "http/1.1"), ())],
    # ALPN bytes 02 ba ad (tshark -x): kept as backslash escapes.
    "ja4__tls-non-ascii-alpn.pcapng": [
        ("clientservices.googleapis.com", ("\\xba\\xad", "http/1.1"), ("TLS1.3", "TLS1.2"))
    ],
    "ja4__tls12.pcap": [("contile.services.mozilla.com", ("h2", "http/1.1"), ("TLS1.3", "TLS1.2"))],
    "tls-client-auth__tls-client-auth.pcap": [("localhost", ("h2", "http/1.1"), ())],
}

# From: tshark -Y tls.handshake.type==2 -T fields -e tls.handshake.version
#   -e tls.handshake.ciphersuite -e tls.handshake.extensions_alpn_str
#   -e tls.handshake.extensions.supported_version ; names from tshark -V "Cipher Suite:"
ServerHelloRow = tuple[str, int, str | None, str | None] | None
REAL_SERVER_HELLOS: dict[str, list[ServerHelloRow]] = {
    "illustrated-tls12__capture.pcap": [
        ("TLS1.2", 0xC013, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", None)
    ],
    "illustrated-tls13__capture.pcap": [("TLS1.3", 0x1302, "TLS_AES_256_GCM_SHA384", None)],
    "ja4__badcurveball.pcap": [
        ("TLS1.2", 0xC02B, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "http/1.1")
    ],
    "ja4__browsers-x509.pcapng": [
        ("TLS1.2", 0xC030, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "h2"),
        ("TLS1.2", 0xC02B, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "h2"),
        ("TLS1.2", 0xC02F, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "h2"),
    ],
    "ja4__https-connect.pcap": [("TLS1.2", 0xC030, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", None)],
    "ja4__tls-alpn-h2.pcap": [
        ("TLS1.2", 0xCCA9, "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "h2")
    ],
    "ja4__tls-non-ascii-alpn.pcapng": [("TLS1.3", 0x1301, "TLS_AES_128_GCM_SHA256", None)],
    "ja4__tls12.pcap": [None],  # only the ClientHello packet was captured
    "tls-client-auth__tls-client-auth.pcap": [
        ("TLS1.2", 0xC030, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", None)
    ],
}


@pytest.mark.parametrize("name", sorted(REAL_CLIENT_HELLOS))
def test_real_client_hellos(name: str) -> None:
    capture = real_capture(name)
    assert capture.tls_flows == capture.flows
    seen = []
    for flow in capture.tls_flows:
        assert flow.tls is not None and flow.tls.client_hello is not None
        hello = flow.tls.client_hello
        assert hello.legacy_version == "TLS1.2"
        seen.append((hello.sni, hello.alpn, hello.supported_versions))
    assert seen == REAL_CLIENT_HELLOS[name]


@pytest.mark.parametrize("name", sorted(REAL_SERVER_HELLOS))
def test_real_server_hellos(name: str) -> None:
    seen: list[ServerHelloRow] = []
    for flow in real_capture(name).tls_flows:
        assert flow.tls is not None
        hello = flow.tls.server_hello
        seen.append(
            None
            if hello is None
            else (hello.version, hello.cipher_suite, hello.cipher_suite_name, hello.alpn)
        )
    assert seen == REAL_SERVER_HELLOS[name]


def test_missing_server_hello_is_explained() -> None:
    tls = only_flow(real_capture("ja4__tls12.pcap")).tls
    assert tls is not None and tls.server_hello is None and tls.version is None
    assert tls.problem == "no ServerHello: server stream ends inside the handshake"


# From: tshark -Y "http.request or http.response" -T fields -e tcp.stream -e http.request.method
#   -e http.request.uri -e http.request.version -e http.host -e http.response.version
#   -e http.response.code -e http.response.phrase
GOOGLE_ADS_TARGET = (
    "/pagead/ads?client=ca-pub-2309191948673629&random=1084443430285&lmt=1082467020"
    "&format=468x60_as&output=html&url=http%3A%2F%2Fwww.ethereal.com%2Fdownload.html"
    "&color_bg=FFFFFF&color_text=333333&color_link=000000&color_url=666633&color_border=666633"
)
RequestRow = tuple[str, str, str, str | None]
ResponseRow = tuple[str, int, str]
REAL_HTTP: dict[str, list[tuple[list[RequestRow], list[ResponseRow]]]] = {
    "dpkt__http.pcap": [
        ([("GET", "/download.html", "HTTP/1.1", "www.ethereal.com")], [("HTTP/1.1", 200, "OK")]),
        (
            [("GET", GOOGLE_ADS_TARGET, "HTTP/1.1", "pagead2.googlesyndication.com")],
            [("HTTP/1.1", 200, "OK")],
        ),
    ],
    "dpkt__nb6-http.pcap": [
        (
            [
                (
                    "GET",
                    "/nb6dsl_Vers%203.3.4_ter/nb6-3.3.4_ter.sha256sum",
                    "HTTP/1.1",
                    "ncdn.nb6dsl.neufbox.neuf.fr",
                )
            ],
            [("HTTP/1.1", 200, "OK")],
        ),
        ([("GET", "/", "HTTP/1.1", "ipv4.icanhazip.com")], [("HTTP/1.1", 200, "OK")]),
    ],
    "filesamples__simple_http.pcap": [
        ([("GET", "/", "HTTP/1.1", "localhost:56789")], [("HTTP/1.0", 200, "OK")]),
        (
            [("GET", "/favicon.ico", "HTTP/1.1", "localhost:56789")],
            [("HTTP/1.0", 404, "File not found")],
        ),
    ],
    "filesamples__simple_http_sll2.pcap": [
        ([("GET", "/", "HTTP/1.1", "localhost:8000")], [("HTTP/1.0", 200, "OK")]),
        (
            [("GET", "/favicon.ico", "HTTP/1.1", "localhost:8000")],
            [("HTTP/1.0", 404, "File not found")],
        ),
    ],
    "ja4__http1-with-cookies.pcapng": [
        ([("GET", "/", "HTTP/1.1", "localhost:8000")], [("HTTP/1.0", 200, "OK")]),
    ],
    "ja4__https-connect.pcap": [
        ([("CONNECT", "ts01-b.cloudsink.net:443", "HTTP/1.0", None)], [("HTTP/1.0", 200, "OK")]),
    ],
    # Not HTTP: a custom protocol on port 2000 and Redis (RESP) on 6379.
    "filesamples__200722_tcp_anon.pcapng": [([], []), ([], [])],
    "tcpdump__resp_2_inline.pcap": [([], [])],
}


@pytest.mark.parametrize("name", sorted(REAL_HTTP))
def test_real_http(name: str) -> None:
    seen = [
        (
            [(r.method, r.target, r.version, r.host) for r in flow.http_requests],
            [(r.version, r.status, r.reason) for r in flow.http_responses],
        )
        for flow in real_capture(name).flows
    ]
    assert seen == REAL_HTTP[name]


def test_real_plaintext_and_tls_flows_are_told_apart() -> None:
    http = real_capture("filesamples__simple_http.pcap")
    assert http.plaintext_flows == http.flows and http.tls_flows == ()
    assert [flow.client[1] for flow in http.flows_to(56789)] == [32784, 32796]
    assert http.flows_to(80) == ()
    tls = real_capture("illustrated-tls13__capture.pcap")
    assert tls.plaintext_flows == () and tls.tls_flows == tls.flows
    # A flow with only a handshake carries no payload: neither TLS nor plaintext.
    empty = real_capture("tcpdump__tcp-handshake-nano.pcap")
    assert empty.plaintext_flows == () and empty.tls_flows == ()
    # CONNECT then TLS: the tunnel's ClientHello makes it a TLS flow.
    assert real_capture("ja4__https-connect.pcap").plaintext_flows == ()


def test_real_stream_reassembly_crosses_segments() -> None:
    # Reassembled lengths from `tshark -q -z follow,tcp,raw,N` (hex bytes per direction).
    flow = real_capture("dpkt__http.pcap").flows[0]
    assert (len(flow.client_stream), len(flow.server_stream)) == (479, 18364)
    assert flow.server_stream.startswith(b"HTTP/1.1 200 OK\r\n")
    assert flow.server_gap is False
    # Flow 1: frame 36 (1430 bytes) is a spurious retransmission (tshark expert info), so the
    # server sent 3020 payload bytes on the wire but its stream holds 1590.
    retransmitted = real_capture("dpkt__http.pcap").flows[1]
    assert (retransmitted.server_bytes, len(retransmitted.server_stream)) == (3020, 1590)


def test_source_may_be_bytes_path_or_str() -> None:
    path = PCAPS / "ja4__tls12.pcap"
    if not path.exists():
        pytest.skip(f"third-party capture {path} is absent")
    from_path = analyze_pcap(path)
    assert analyze_pcap(str(path)) == from_path
    assert analyze_pcap(path.read_bytes()) == from_path


# =========================================================================== 2. live captures


@dataclass
class LiveExchange:
    client: tuple[str, int]
    server: tuple[str, int]
    tls_version: str | None = None  # from the client's SSLSocket.version()
    cipher: str | None = None  # from the client's SSLSocket.cipher()
    alpn: str | None = None  # from the client's SSLSocket.selected_alpn_protocol()


def _serve_once(
    listener: socket.socket, handle: Callable[[socket.socket], None]
) -> threading.Thread:
    def run() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(10)
            handle(connection)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _read_request(connection: socket.socket | ssl.SSLSocket) -> bytes:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def _read_response(connection: socket.socket | ssl.SSLSocket) -> bytes:
    received = b""
    while len(received) < len(PLAIN_RESPONSE):
        chunk = connection.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def _read_all(connection: socket.socket | ssl.SSLSocket) -> bytes:
    received = b""
    while chunk := connection.recv(4096):
        received += chunk
    return received


PLAIN_REQUEST = (
    b"GET /headers HTTP/1.1\r\nHost: httpbin.foo:8000\r\nUser-Agent: curl/8.5.0\r\n"
    b"Accept: */*\r\n\r\n"
)
PLAIN_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


class LiveScenarios:
    """Servers on loopback, each answering one connection, and the clients that call them."""

    def __init__(self, directory: Path) -> None:
        cert, key = make_certificate(directory)
        self.tls13_server = server_context(cert, key, ["istio-http/1.1", "http/1.1"])
        self.tls12_server = server_context(
            cert, key, ["istio-http/1.1", "http/1.1"], tls12_cipher="ECDHE-ECDSA-AES128-GCM-SHA256"
        )
        self.listeners: dict[str, socket.socket] = {}

    def listen(self, name: str, host: str) -> int:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.bind((host, 0))
        listener.listen(1)
        listener.settimeout(10)  # a scenario that goes wrong fails instead of hanging
        self.listeners[name] = listener
        return int(listener.getsockname()[1])

    def close(self) -> None:
        for listener in self.listeners.values():
            listener.close()

    def tls(self, name: str, maximum: ssl.TLSVersion) -> LiveExchange:
        listener = self.listeners[name]
        server = self.tls13_server if maximum is ssl.TLSVersion.TLSv1_3 else self.tls12_server

        def handle(connection: socket.socket) -> None:
            with server.wrap_socket(connection, server_side=True) as tls:
                _read_request(tls)
                tls.sendall(PLAIN_RESPONSE)
                _read_all(tls)  # until the client's close_notify
                tls.unwrap()  # answer it, so neither side leaves data unread (no RST)

        thread = _serve_once(listener, handle)
        client = client_context(ISTIO_ALPN, maximum)
        client.minimum_version = ssl.TLSVersion.TLSv1_2  # Istio: TLS 1.2 min
        host, port = listener.getsockname()[:2]
        with (
            socket.create_connection((host, port), timeout=10) as raw,
            client.wrap_socket(raw, server_hostname=ISTIO_SNI) as tls,
        ):
            cipher = tls.cipher()
            exchange = LiveExchange(
                client=tls.getsockname()[:2],
                server=(host, port),
                tls_version=tls.version(),
                cipher=None if cipher is None else cipher[0],
                alpn=tls.selected_alpn_protocol(),
            )
            tls.sendall(PLAIN_REQUEST)
            assert _read_response(tls) == PLAIN_RESPONSE
            tls.unwrap()  # close_notify both ways, then FIN both ways
        thread.join(timeout=10)
        return exchange

    def plaintext(self, name: str, reset: bool = False) -> LiveExchange:
        listener = self.listeners[name]

        def handle(connection: socket.socket) -> None:
            _read_request(connection)
            if reset:  # what a STRICT sidecar does to plaintext: abort the connection
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                connection.sendall(PLAIN_RESPONSE)
                _read_all(connection)

        thread = _serve_once(listener, handle)
        host, port = listener.getsockname()[:2]
        with socket.create_connection((host, port), timeout=10) as connection:
            exchange = LiveExchange(client=connection.getsockname()[:2], server=(host, port))
            connection.sendall(PLAIN_REQUEST)
            try:
                assert _read_response(connection) == PLAIN_RESPONSE
            except ConnectionResetError:
                assert reset
        thread.join(timeout=10)
        return exchange


def _ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def _wait_for_listening(process: subprocess.Popen[bytes], timeout: float) -> None:
    """tcpdump prints 'listening on' once the capture is active; packets sent before are lost."""
    assert process.stderr is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    seen = b""
    try:
        while b"listening on" not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or process.poll() is not None:
                raise RuntimeError(
                    f"tcpdump did not say 'listening on' within {timeout}s: {seen!r}"
                )
            if selector.select(remaining):
                chunk = os.read(process.stderr.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"tcpdump closed stderr before listening: {seen!r}")
                seen += chunk
    finally:
        selector.close()


def _open_flows(capture: Capture, exchanges: dict[str, LiveExchange]) -> str | None:
    """What is still missing from the capture, or None when every exchange's flow is there and
    closed (FIN both ways, or a RST)."""
    for name, exchange in exchanges.items():
        # by endpoint: the 127.0.0.1 and ::1 listeners may get the same port number
        flows = [flow for flow in capture.flows if flow.server == exchange.server]
        if len(flows) != 1:
            return f"{name}: {len(flows)} flows to {exchange.server}"
        flow = flows[0]
        if not (flow.rst_seen or (flow.client_fin and flow.server_fin)):
            return f"{name}: the flow to {exchange.server} has not closed: {flow}"
    return None


def _wait_for_closed_flows(pcap: Path, exchanges: dict[str, LiveExchange]) -> str | None:
    """Re-read the growing pcap until every flow has closed; the last problem if it never did."""

    def problem() -> str | None:
        try:
            return _open_flows(analyze_pcap(pcap), exchanges)
        except CaptureError as error:  # tcpdump has not written the file header yet
            return str(error)

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(5),
        wait=tenacity.wait_fixed(0.02),
        retry=tenacity.retry_if_result(lambda found: found is not None),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )
    result: str | None = retrying(problem)
    return result


def _capture_live_scenarios(
    tcpdump: str, directory: Path
) -> tuple[Path, dict[str, LiveExchange], str | None, int]:
    """Run every scenario under one tcpdump on lo; return the pcap, the exchanges, what is
    missing from the capture (None: nothing) and how many packets tcpdump says it dropped."""
    directory.mkdir()
    scenarios = LiveScenarios(directory)
    plan = [("tls13", "127.0.0.1"), ("tls12", "127.0.0.1"), ("plain", "127.0.0.1")]
    plan.append(("reset", "127.0.0.1"))
    if _ipv6_loopback_works():
        plan += [("tls13_v6", "::1"), ("plain_v6", "::1")]
    ports = [scenarios.listen(name, host) for name, host in plan]
    pcap = directory / "loopback.pcap"
    port_filter = " or ".join(f"port {port}" for port in ports)
    # A snap length far above these packets' sizes (< 2 KB) but far below lo's 64 KB MTU:
    # libpcap sizes its ring slots by it, so the ring holds more packets. Capture.truncated
    # would show a cut packet.
    command = [tcpdump, "-U", "--immediate-mode", "-s", "16384", "-B", "16384", "-i", "lo"]
    process = subprocess.Popen(
        [*command, "-w", str(pcap), f"tcp and ({port_filter})"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_listening(process, timeout=10)
        exchanges = {
            "tls13": scenarios.tls("tls13", ssl.TLSVersion.TLSv1_3),
            "tls12": scenarios.tls("tls12", ssl.TLSVersion.TLSv1_2),
            "plain": scenarios.plaintext("plain"),
            "reset": scenarios.plaintext("reset", reset=True),
        }
        if "tls13_v6" in scenarios.listeners:
            exchanges["tls13_v6"] = scenarios.tls("tls13_v6", ssl.TLSVersion.TLSv1_3)
            exchanges["plain_v6"] = scenarios.plaintext("plain_v6")
        missing = _wait_for_closed_flows(pcap, exchanges)
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.stderr is not None
        statistics = process.stderr.read()
        process.stderr.close()
        scenarios.close()
    dropped = re.search(rb"(\d+) packets? dropped by kernel", statistics)
    return pcap, exchanges, missing, int(dropped.group(1)) if dropped else 0


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Capture, dict[str, LiveExchange]]:
    """One tcpdump on lo for all live scenarios: TLS 1.3 and 1.2 with Istio's SNI and ALPN,
    plaintext HTTP, and plaintext answered by a reset; over 127.0.0.1 and ::1.

    When tcpdump itself reports packets dropped by the kernel (a busy machine), the capture is
    incomplete evidence, not a result: it is taken again, at most three times."""
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        pytest.skip("tcpdump is not installed")
    if os.geteuid() != 0:
        pytest.skip("capturing on the loopback interface needs root")
    directory = tmp_path_factory.mktemp("live-capture")
    for attempt in range(3):
        pcap, exchanges, missing, dropped = _capture_live_scenarios(
            tcpdump, directory / f"attempt-{attempt}"
        )
        if not dropped:
            break
    else:
        pytest.fail(f"tcpdump dropped {dropped} packets on each of 3 attempts; last: {pcap}")
    assert missing is None, f"{missing} (capture: {pcap})"
    return analyze_pcap(pcap), exchanges


def live_flow(
    live: tuple[Capture, dict[str, LiveExchange]], name: str
) -> tuple[Flow, LiveExchange]:
    capture, exchanges = live
    if name not in exchanges:
        pytest.skip(f"{name}: IPv6 loopback (::1) is not available")
    exchange = exchanges[name]
    (flow,) = (flow for flow in capture.flows if flow.server == exchange.server)
    assert (flow.client, flow.server, flow.direction_from) == (
        exchange.client,
        exchange.server,
        "syn",
    )
    return flow, exchange


def test_live_capture_overall(live: tuple[Capture, dict[str, LiveExchange]]) -> None:
    capture, exchanges = live
    assert capture.link_type == "EN10MB"  # tcpdump -i lo on Linux
    assert capture.truncated is False
    assert capture.non_tcp_packet_count == 0  # the filter kept TCP only
    assert len(capture.flows) == len(exchanges)
    assert {flow.server for flow in capture.tls_flows} == {
        exchanges[name].server for name in exchanges if name.startswith("tls")
    }
    assert {flow.server for flow in capture.plaintext_flows} == {
        exchanges[name].server for name in exchanges if not name.startswith("tls")
    }


@pytest.mark.parametrize("name", ["tls13", "tls13_v6"])
def test_live_tls13_handshake_with_istio_hello(
    live: tuple[Capture, dict[str, LiveExchange]], name: str
) -> None:
    flow, exchange = live_flow(live, name)
    assert exchange.tls_version == "TLSv1.3"
    assert flow.tls is not None and flow.tls.problem is None
    assert flow.tls.client_hello == ClientHello(
        legacy_version="TLS1.2",
        sni="outbound_.8000_._.httpbin.foo.svc.cluster.local",
        alpn=("istio-http/1.1", "istio", "http/1.1"),
        supported_versions=("TLS1.3", "TLS1.2"),
    )
    server_hello = flow.tls.server_hello
    assert server_hello is not None
    assert (server_hello.version, server_hello.legacy_version) == ("TLS1.3", "TLS1.2")
    # OpenSSL's TLS 1.3 suite names are the IANA names.
    assert server_hello.cipher_suite_name == exchange.cipher
    # The server did choose a protocol, but TLS 1.3 encrypts that choice.
    assert exchange.alpn == "istio-http/1.1" and server_hello.alpn is None
    assert flow.http_requests == () and flow not in live[0].plaintext_flows
    assert b"GET /headers" not in flow.client_stream
    assert flow.client_fin and flow.server_fin and not flow.rst_seen


def test_live_tls12_handshake_shows_the_chosen_alpn(
    live: tuple[Capture, dict[str, LiveExchange]],
) -> None:
    flow, exchange = live_flow(live, "tls12")
    assert exchange.tls_version == "TLSv1.2"
    assert flow.tls is not None
    assert flow.tls.client_hello == ClientHello(
        legacy_version="TLS1.2",
        sni="outbound_.8000_._.httpbin.foo.svc.cluster.local",
        alpn=("istio-http/1.1", "istio", "http/1.1"),
        supported_versions=(),  # OpenSSL capped at 1.2 sends no supported_versions
    )
    assert flow.tls.server_hello == ServerHello(
        version="TLS1.2",
        legacy_version="TLS1.2",
        cipher_suite=0xC02B,  # the one suite the server allowed: ECDHE-ECDSA-AES128-GCM-SHA256
        cipher_suite_name="TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        alpn="istio-http/1.1",
    )
    assert exchange.alpn == "istio-http/1.1"


@pytest.mark.parametrize("name", ["plain", "plain_v6"])
def test_live_plaintext_http(live: tuple[Capture, dict[str, LiveExchange]], name: str) -> None:
    flow, _ = live_flow(live, name)
    assert flow.tls is None and flow in live[0].plaintext_flows
    assert flow.http_requests == (
        HttpRequest(
            method="GET",
            target="/headers",
            version="HTTP/1.1",
            host="httpbin.foo:8000",
            headers=(
                ("Host", "httpbin.foo:8000"),
                ("User-Agent", "curl/8.5.0"),
                ("Accept", "*/*"),
            ),
        ),
    )
    assert flow.http_responses == (
        HttpResponse(
            version="HTTP/1.1",
            status=200,
            reason="OK",
            headers=(("Content-Length", "2"), ("Connection", "close")),
        ),
    )
    assert (flow.client_bytes, flow.server_bytes) == (len(PLAIN_REQUEST), len(PLAIN_RESPONSE))
    assert flow.client_stream == PLAIN_REQUEST and flow.server_stream == PLAIN_RESPONSE


def test_live_plaintext_reset_has_no_response(
    live: tuple[Capture, dict[str, LiveExchange]],
) -> None:
    flow, _ = live_flow(live, "reset")
    assert [request.target for request in flow.http_requests] == ["/headers"]
    assert flow.http_responses == ()
    assert flow.server_rst and flow.rst_seen and flow.server_bytes == 0


# =========================================================================== 3. synthetic files


@dataclass(frozen=True)
class Flights:
    tls13: tuple[bytes, bytes]  # (ClientHello flight, server's first flight)
    tls12: tuple[bytes, bytes]


@pytest.fixture(scope="session")
def flights(tmp_path_factory: pytest.TempPathFactory) -> Flights:
    """Real hellos from OpenSSL (memory BIOs), with Istio's SNI and ALPN."""
    cert, key = make_certificate(tmp_path_factory.mktemp("tls"))
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


def test_client_hello_split_reordered_retransmitted_and_overlapping(flights: Flights) -> None:
    hello, answer = flights.tls13
    assert len(hello) > 250
    conversation = Conversation()
    frames = [
        *conversation.handshake(),
        conversation.client_sends(hello[200:], offset=200),  # third part first
        conversation.client_sends(hello[:60], offset=0),
        conversation.client_sends(hello[40:120], offset=40),  # overlaps parts one and two
        conversation.client_sends(hello[60:200], offset=60),
        conversation.client_sends(hello[60:200], offset=60),  # retransmission
        conversation.server_sends(answer),
    ]
    flow = only_flow(analyze_frames(frames))
    assert flow.client_stream == hello and flow.client_gap is False
    assert flow.tls is not None and flow.tls.client_hello == ISTIO_HELLO_13
    assert flow.tls.server_hello is not None and flow.tls.server_hello.version == "TLS1.3"
    assert (flow.client_packets, flow.server_packets) == (2 + 5, 1 + 1)
    assert flow.client_bytes == len(hello) - 200 + 60 + 80 + 140 + 140


def test_handshake_message_spread_over_several_tls_records(flights: Flights) -> None:
    hello, answer = flights.tls12
    split_hello = refragment_handshake(hello, [7, 100, 0])  # the last record takes the rest
    assert [kind for kind, _ in tls_records(split_hello)] == [22, 22, 22]
    # The whole server flight (ServerHello, Certificate, ...) in records of 30 bytes.
    handshake_length = sum(len(fragment) for _, fragment in tls_records(answer))
    split_answer = refragment_handshake(answer, [30] * (handshake_length // 30) + [0])
    conversation = Conversation()
    frames = [
        *conversation.handshake(),
        conversation.client_sends(split_hello),
        conversation.server_sends(split_answer),
    ]
    tls = only_flow(analyze_frames(frames)).tls
    assert tls is not None and tls.problem is None
    assert tls.client_hello == ClientHello("TLS1.2", ISTIO_SNI, ISTIO_ALPN, ())
    assert tls.server_hello == ServerHello(
        "TLS1.2", "TLS1.2", 0xC02B, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "istio-http/1.1"
    )


def test_several_handshake_messages_in_one_record(flights: Flights) -> None:
    _, answer = flights.tls12
    one_record = refragment_handshake(answer, [0])
    assert len(tls_records(one_record)) == 1
    conversation = Conversation()
    frames = [
        conversation.client_sends(flights.tls12[0]),
        conversation.server_sends(one_record),
    ]
    tls = only_flow(analyze_frames(frames)).tls
    assert tls is not None and tls.server_hello is not None
    assert tls.server_hello.alpn == "istio-http/1.1"


def test_missing_syn_takes_the_lower_port_as_server(flights: Flights) -> None:
    hello, answer = flights.tls13
    conversation = Conversation(client=("10.1.0.1", 51000), server=("10.1.0.2", 15006))
    # Capture starts late: the first packet seen is the server's answer.
    frames = [conversation.server_sends(answer), conversation.client_sends(hello)]
    flow = only_flow(analyze_frames(frames))
    assert (flow.client, flow.server, flow.direction_from) == (
        ("10.1.0.1", 51000),
        ("10.1.0.2", 15006),
        "port",
    )
    assert flow.first_frame == 1
    assert flow.tls is not None and flow.tls.client_hello == ISTIO_HELLO_13


def test_syn_ack_alone_identifies_the_client() -> None:
    # The server listens on the higher port here; the SYN-ACK still says who is who.
    conversation = Conversation(client=("10.1.0.1", 80), server=("10.1.0.2", 9000))
    _, syn_ack, ack = conversation.handshake()
    flow = only_flow(
        analyze_frames([syn_ack, ack, conversation.client_sends(b"GET / HTTP/1.0\r\n\r\n")])
    )
    assert (flow.client, flow.server, flow.direction_from) == (
        ("10.1.0.1", 80),
        ("10.1.0.2", 9000),
        "syn-ack",
    )
    assert [request.target for request in flow.http_requests] == ["/"]


def test_equal_ports_without_syn_take_the_first_sender_as_client() -> None:
    conversation = Conversation(client=("10.1.0.2", 7000), server=("10.1.0.1", 7000))
    flow = only_flow(
        analyze_frames([conversation.client_sends(b"x"), conversation.server_sends(b"y")])
    )
    assert (flow.client, flow.direction_from) == (("10.1.0.2", 7000), "first-packet")


V4 = (("192.0.2.10", 40123), ("192.0.2.20", 8443))
V6 = (("2001:db8::10", 40123), ("2001:db8::20", 8443))

LINK_LAYERS: list[tuple[str, int, str, Callable[[bytes], bytes], tuple[tuple[str, int], ...]]] = [
    ("ethernet", 1, "EN10MB", ethernet, V4),
    ("ethernet-v6", 1, "EN10MB", ethernet, V6),
    ("ethernet-vlan", 1, "EN10MB", lambda p: ethernet(p, vlan=42), V4),
    ("pppoe", 1, "EN10MB", pppoe, V4),
    ("pppoe-v6", 1, "EN10MB", pppoe, V6),
    ("sll", 113, "LINUX_SLL", linux_sll, V4),
    ("sll-v6", 113, "LINUX_SLL", linux_sll, V6),
    ("sll2", 276, "LINUX_SLL2", linux_sll2, V4),
    ("sll2-v6", 276, "LINUX_SLL2", linux_sll2, V6),
    ("raw101", 101, "RAW", lambda p: p, V4),
    ("raw101-v6", 101, "RAW", lambda p: p, V6),
    ("raw12", 12, "RAW", lambda p: p, V4),
    ("raw14-v6", 14, "RAW", lambda p: p, V6),
    ("ipv4", 228, "IPV4", lambda p: p, V4),
    ("ipv6", 229, "IPV6", lambda p: p, V6),
    ("null-le", 0, "NULL", lambda p: bsd_null(p, 2, "<"), V4),
    ("null-be", 0, "NULL", lambda p: bsd_null(p, 2, ">"), V4),
    ("null-v6-24", 0, "NULL", lambda p: bsd_null(p, 24, "<"), V6),
    ("null-v6-28", 0, "NULL", lambda p: bsd_null(p, 28, "<"), V6),
    ("null-v6-30", 0, "NULL", lambda p: bsd_null(p, 30, "<"), V6),
    ("null-v6-30-be", 0, "NULL", lambda p: bsd_null(p, 30, ">"), V6),
    ("loop-v6", 108, "LOOP", lambda p: bsd_null(p, 24, ">"), V6),
]


@pytest.mark.parametrize(
    ("link_type_number", "link_type", "link", "endpoints"),
    [row[1:] for row in LINK_LAYERS],
    ids=[row[0] for row in LINK_LAYERS],
)
def test_link_layers(
    flights: Flights,
    link_type_number: int,
    link_type: str,
    link: Callable[[bytes], bytes],
    endpoints: tuple[tuple[str, int], tuple[str, int]],
) -> None:
    hello, answer = flights.tls13
    conversation = Conversation(client=endpoints[0], server=endpoints[1])
    frames = [
        *conversation.handshake(),
        conversation.client_sends(hello),
        conversation.server_sends(answer),
        conversation.client_fin(),
        conversation.server_fin(),
    ]
    capture = analyze_pcap(pcap_file([link(frame) for frame in frames], link_type=link_type_number))
    assert (capture.link_type, capture.packet_count, capture.non_tcp_packet_count) == (
        link_type,
        7,
        0,
    )
    flow = only_flow(capture)
    assert (flow.client, flow.server) == endpoints
    assert flow.tls is not None and flow.tls.client_hello == ISTIO_HELLO_13
    assert flow.client_fin and flow.server_fin


def test_null_with_an_unknown_family_is_not_tcp(flights: Flights) -> None:
    packet = Conversation().client_sends(b"data")
    capture = analyze_pcap(pcap_file([bsd_null(packet, 10)], link_type=0))  # 10: Linux AF_INET6
    assert (capture.packet_count, capture.non_tcp_packet_count, capture.flows) == (1, 1, ())


def test_non_tcp_packets_are_counted_and_skipped() -> None:
    conversation = Conversation()
    tcp = conversation.client_sends(b"hello")
    udp = bytes(
        dpkt.ip.IP(
            src=bytes([10, 1, 0, 1]),
            dst=bytes([10, 1, 0, 2]),
            p=17,
            data=dpkt.udp.UDP(sport=53, dport=53, data=b"dns"),
        )
    )
    fragment = bytearray(tcp)
    fragment[6] = 0x20  # More Fragments: a first fragment is not a whole segment
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\x00" * 28
    frames = [ethernet(udp), ethernet(bytes(fragment)), arp, ethernet(tcp)]
    capture = analyze_pcap(pcap_file(frames))
    assert (capture.packet_count, capture.non_tcp_packet_count, len(capture.flows)) == (4, 3, 1)
    assert capture.flows[0].first_frame == 4


def test_ipv6_extension_headers_are_skipped() -> None:
    packet = bytearray(Conversation(*V6).client_sends(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
    hop_by_hop = bytes([6, 0, 1, 4, 0, 0, 0, 0])  # next header TCP, 8 bytes, PadN
    packet[6] = 0  # IPv6 next header: hop-by-hop options
    struct.pack_into("!H", packet, 4, struct.unpack_from("!H", packet, 4)[0] + 8)
    with_options = bytes(packet[:40]) + hop_by_hop + bytes(packet[40:])
    flow = only_flow(analyze_pcap(pcap_file([with_options], link_type=101)))
    assert flow.http_requests[0].host == "a"


def test_port_reuse_starts_a_new_flow() -> None:
    first = Conversation(client_isn=100)
    second = Conversation(client_isn=7_000_000)
    frames = [
        *first.handshake(),
        first.client_sends(b"one"),
        first.client_fin(),
        first.server_fin(),
        *second.handshake(),
        second.client_sends(b"two"),
    ]
    capture = analyze_frames(frames)
    assert [flow.client_stream for flow in capture.flows] == [b"one", b"two"]
    assert [flow.first_frame for flow in capture.flows] == [1, 7]


def test_retransmitted_syn_stays_in_the_same_flow() -> None:
    conversation = Conversation()
    syn = conversation.handshake()[0]
    capture = analyze_frames(
        [syn, syn, *conversation.handshake()[1:], conversation.client_sends(b"x")]
    )
    assert len(capture.flows) == 1 and capture.flows[0].client_packets == 4


def test_sequence_wraparound_with_syn() -> None:
    request = b"GET /wrap HTTP/1.1\r\nHost: wrap.example\r\n\r\n"
    conversation = Conversation(client_isn=2**32 - 10)  # data starts 9 before the wrap
    frames = [
        *conversation.handshake(),
        conversation.client_sends(request[20:], offset=20),
        conversation.client_sends(request[:12], offset=0),
        conversation.client_sends(request[12:20], offset=12),
    ]
    flow = only_flow(analyze_frames(frames))
    assert flow.client_stream == request
    assert [(r.target, r.host) for r in flow.http_requests] == [("/wrap", "wrap.example")]


def test_sequence_wraparound_without_syn() -> None:
    request = b"GET /wrap HTTP/1.1\r\nHost: wrap.example\r\n\r\n"
    conversation = Conversation(client_isn=2**32 - 5)
    frames = [
        conversation.client_sends(request[10:], offset=10),  # after the wrap: seq 6
        conversation.client_sends(request[:10], offset=0),  # before it: seq 2**32 - 4
    ]
    assert struct.unpack_from("!I", frames[0], 24)[0] < struct.unpack_from("!I", frames[1], 24)[0]
    flow = only_flow(analyze_frames(frames))
    assert flow.client_stream == request and flow.direction_from == "port"


def test_a_hole_stops_the_stream_and_is_flagged() -> None:
    conversation = Conversation()
    frames = [
        *conversation.handshake(),
        conversation.client_sends(b"GET / HTTP/1.1\r\n", offset=0),
        conversation.client_sends(b"\r\nnext", offset=30),  # bytes 16..29 never captured
    ]
    flow = only_flow(analyze_frames(frames))
    assert (flow.client_stream, flow.client_gap) == (b"GET / HTTP/1.1\r\n", True)
    assert flow.http_requests == ()  # the head never completed in what was captured


def test_disagreeing_overlaps_keep_the_earliest_starting_segment() -> None:
    conversation = Conversation()
    frames = [
        *conversation.handshake(),
        conversation.client_sends(b"WXYZ", offset=3),
        conversation.client_sends(b"abcdef", offset=0),
    ]
    assert only_flow(analyze_frames(frames)).client_stream == b"abcdefZ"


def test_truncated_file_keeps_what_was_read(flights: Flights) -> None:
    hello, answer = flights.tls13
    conversation = Conversation()
    frames = [
        *conversation.handshake(),
        conversation.client_sends(hello),
        conversation.server_sends(answer),
    ]
    whole = pcap_file([ethernet(frame) for frame in frames])
    cut_in_last_packet = analyze_pcap(whole[:-50])
    assert (cut_in_last_packet.truncated, cut_in_last_packet.packet_count) == (True, 5)
    tls = only_flow(cut_in_last_packet).tls
    assert tls is not None and tls.client_hello == ISTIO_HELLO_13
    last_record_start = len(whole) - len(ethernet(frames[-1])) - 16
    cut_in_record_header = analyze_pcap(whole[: last_record_start + 9])
    assert (cut_in_record_header.truncated, cut_in_record_header.packet_count) == (True, 4)
    assert analyze_pcap(whole).truncated is False


def test_truncated_pcapng_keeps_what_was_read() -> None:
    conversation = Conversation()
    blocks = [pcapng_enhanced_packet(0, ethernet(frame)) for frame in conversation.handshake()]
    whole = pcapng_section(pcapng_interface(1), *blocks)
    capture = analyze_pcap(whole[:-30])
    assert (capture.truncated, capture.packet_count, len(capture.flows)) == (True, 3, 1)
    damaged = bytearray(whole)
    damaged[-4:] = b"\x00\x00\x00\x00"  # the last block's trailing length no longer matters
    struct.pack_into("<I", damaged, len(whole) - len(blocks[-1]) + 4, 13)  # length not % 4
    capture = analyze_pcap(bytes(damaged))
    assert (capture.truncated, capture.packet_count) == (True, 2)


def test_truncated_packet_reports_what_was_captured(flights: Flights) -> None:
    hello, _ = flights.tls13
    conversation = Conversation()
    syn, syn_ack, ack = (ethernet(frame) for frame in conversation.handshake())
    hello_frame = ethernet(conversation.client_sends(hello))
    later_frame = ethernet(conversation.client_sends(b"after the cut"))
    snap = 96  # like tcpdump -s 96: 14 + 20 + 20 header bytes, then 42 of the ClientHello
    data = (
        pcap_header(1, snaplen=snap)
        + b"".join(pcap_record(frame) for frame in (syn, syn_ack, ack))
        + pcap_record(hello_frame[:snap], original_length=len(hello_frame))
        + pcap_record(later_frame)
    )
    capture = analyze_pcap(data)
    assert capture.truncated is True
    flow = only_flow(capture)
    assert flow.client_bytes == len(hello) + len(b"after the cut")  # as on the wire
    assert (flow.client_stream, flow.client_gap) == (hello[:42], True)
    assert flow.tls is not None and flow.tls.client_hello is None
    assert flow.tls.problem is not None
    assert flow.tls.problem.startswith("no ClientHello: client stream ends inside the handshake")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a pcap or pcapng capture: the input is empty"),
        (
            b"<html><body>not a capture</body></html>",
            "not a pcap or pcapng capture: starts with b'<html><body>not '",
        ),
        (b"\x34\xcd\xb2\xa1" + b"\x00" * 20, "not a pcap or pcapng capture: starts with"),
        (b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00\x00\x00", "pcap file header truncated: 10 of 24 bytes"),
        (pcap_header(105), "unsupported link type 105"),
        (b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x00\x00\x00\x00", "pcapng byte-order magic"),
    ],
    ids=["empty", "html", "modified-pcap", "short-header", "wifi", "pcapng-byte-order"],
)
def test_not_a_capture(data: bytes, message: str) -> None:
    with pytest.raises(CaptureError, match=re.escape(message)):
        analyze_pcap(data)


def test_capture_error_is_a_value_error() -> None:
    assert issubclass(CaptureError, ValueError)


def test_pcapng_sections_interfaces_and_block_types() -> None:
    web = Conversation(client=("10.1.0.1", 40000), server=("10.1.0.2", 80))
    mesh = Conversation(client=("10.1.0.3", 40001), server=("10.1.0.4", 15006))
    tunnel = Conversation(client=("fd00::1", 40002), server=("fd00::2", 15008))
    request = b"GET /ip HTTP/1.1\r\nHost: httpbin\r\n\r\n"
    little = pcapng_section(
        pcapng_interface(1),  # interface 0: Ethernet
        pcapng_interface(101),  # interface 1: raw IP
        pcapng_enhanced_packet(0, ethernet(web.handshake()[0])),
        pcapng_custom_block(),
        pcapng_enhanced_packet(1, mesh.client_sends(b"\x00binary")),
        pcapng_simple_packet(ethernet(web.client_sends(request))),
        pcapng_enhanced_packet(7, b"no such interface"),
    )
    big = pcapng_section(
        pcapng_interface(276, byte_order=">"),
        pcapng_enhanced_packet(0, linux_sll2(tunnel.client_sends(b"x")), byte_order=">"),
        byte_order=">",
    )
    capture = analyze_pcap(little + big)
    assert (capture.link_type, capture.packet_count, capture.non_tcp_packet_count) == (
        "EN10MB",
        5,
        1,
    )
    assert [(flow.client, flow.server) for flow in capture.flows] == [
        (("10.1.0.1", 40000), ("10.1.0.2", 80)),
        (("10.1.0.3", 40001), ("10.1.0.4", 15006)),
        (("fd00::1", 40002), ("fd00::2", 15008)),
    ]
    assert capture.flows[0].http_requests[0].target == "/ip"
    assert [flow.server_port for flow in capture.plaintext_flows] == [80, 15006, 15008]
    assert [flow.client for flow in capture.flows_to(15006)] == [("10.1.0.3", 40001)]
    assert capture.flows_to(443) == ()


def test_pcapng_without_interfaces_has_no_link_type() -> None:
    capture = analyze_pcap(pcapng_section())
    assert (capture.link_type, capture.packet_count, capture.flows) == (None, 0, ())


def test_pcapng_packet_on_unsupported_link_type_is_an_error() -> None:
    data = pcapng_section(pcapng_interface(105), pcapng_enhanced_packet(0, b"\x00" * 40))
    with pytest.raises(CaptureError, match="unsupported link type 105"):
        analyze_pcap(data)


def test_nanosecond_big_endian_pcap() -> None:
    frame = ethernet(Conversation().client_sends(b"x"))
    little = pcap_file([frame], nano=True)
    # Rewrite as big-endian: magic a1b23c4d, every header field byte-swapped.
    fields = struct.unpack_from("<IHHiIII", little, 0)
    record = struct.unpack_from("<IIII", little, 24)
    big = struct.pack(">IHHiIII", *fields) + struct.pack(">IIII", *record) + little[40:]
    assert big[:4] == b"\xa1\xb2\x3c\x4d"
    assert only_flow(analyze_pcap(big)).client_stream == b"x"


def test_http_keep_alive_framing() -> None:
    requests = (
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello"
        b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n0\r\nTrailer: t\r\n\r\n"
        b"HEAD /d HTTP/1.1\r\nhost: h2\r\n\r\n"
        b"DELETE /e HTTP/1.0\r\n\r\n"
    )
    responses = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n"  # HEAD: no body follows
        b"HTTP/1.1 204 No Content\r\n\r\n"
    )
    conversation = Conversation(server=("10.1.0.2", 80))
    frames = [
        *conversation.handshake(),
        conversation.client_sends(requests[:50]),
        conversation.client_sends(requests[50:]),
        conversation.server_sends(responses),
    ]
    flow = only_flow(analyze_frames(frames))
    assert [(r.method, r.target, r.version, r.host) for r in flow.http_requests] == [
        ("GET", "/a", "HTTP/1.1", "h"),
        ("POST", "/b", "HTTP/1.1", "h"),
        ("POST", "/c", "HTTP/1.1", "h"),
        ("HEAD", "/d", "HTTP/1.1", "h2"),
        ("DELETE", "/e", "HTTP/1.0", None),
    ]
    assert [(r.status, r.reason) for r in flow.http_responses] == [
        (200, "OK"),
        (100, "Continue"),
        (201, "Created"),
        (200, "OK"),
        (200, "OK"),
        (204, "No Content"),
    ]


def test_http_response_without_length_runs_to_the_close() -> None:
    conversation = Conversation(server=("10.1.0.2", 80))
    frames = [
        conversation.client_sends(b"GET / HTTP/1.0\r\n\r\n"),
        conversation.server_sends(b"HTTP/1.0 200 OK\r\n\r\nHTTP/1.0 200 looks like a response"),
    ]
    flow = only_flow(analyze_frames(frames))
    assert [(r.version, r.status, r.reason) for r in flow.http_responses] == [
        ("HTTP/1.0", 200, "OK")
    ]


def test_http_header_folding_and_malformed_heads() -> None:
    conversation = Conversation(server=("10.1.0.2", 80))
    frames = [
        conversation.client_sends(
            b"GET /fold HTTP/1.1\r\nHost: h\r\nX-Long: one\r\n\ttwo\r\n\r\n"
            b"GET /bad HTTP/1.1\r\nno colon here\r\n\r\n"
        )
    ]
    flow = only_flow(analyze_frames(frames))
    assert [r.headers for r in flow.http_requests] == [(("Host", "h"), ("X-Long", "one two"))]


def test_tls_sent_to_a_plaintext_server(flights: Flights) -> None:
    """A TLS client meeting a plaintext HTTP server: the server's 400 is still reported."""
    hello, _ = flights.tls13
    conversation = Conversation(server=("10.1.0.2", 8000))
    answer = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    frames = [
        *conversation.handshake(),
        conversation.client_sends(hello),
        conversation.server_sends(answer),
    ]
    flow = only_flow(analyze_frames(frames))
    assert flow.tls is not None and flow.tls.client_hello == ISTIO_HELLO_13
    assert flow.tls.server_hello is None
    assert flow.tls.problem == (
        "no ServerHello: server bytes at stream offset 0 are not a TLS record: b'HTTP/1.1'"
    )
    assert [(r.status, r.reason) for r in flow.http_responses] == [(400, "Bad Request")]


def test_hello_retry_request_then_server_hello(flights: Flights) -> None:
    hello, _ = flights.tls13
    hrr_random = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
    retry = handshake_record(
        2, server_hello_body(hrr_random, 0x1302, [(43, b"\x03\x04"), (51, b"\x00\x17")])
    )
    change_cipher_spec = b"\x14\x03\x03\x00\x01\x01"
    real = handshake_record(
        2, server_hello_body(b"\x42" * 32, 0x1302, [(43, b"\x03\x04"), (51, b"\x00\x17\x00\x00")])
    )
    conversation = Conversation()
    frames = [
        conversation.client_sends(hello),
        conversation.server_sends(retry + change_cipher_spec),
        conversation.server_sends(real + b"\x17\x03\x03\x00\x05opaque"),
    ]
    tls = only_flow(analyze_frames(frames)).tls
    assert tls is not None and tls.hello_retry_request is True
    assert tls.server_hello == ServerHello(
        "TLS1.3", "TLS1.2", 0x1302, "TLS_AES_256_GCM_SHA384", None
    )


def test_malformed_client_hello_names_the_field() -> None:
    body = b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\xff" + b"\x13\x01"  # claims 255 bytes
    conversation = Conversation()
    frames = [conversation.client_sends(handshake_record(1, body))]
    tls = only_flow(analyze_frames(frames)).tls
    assert tls is not None and tls.client_hello is None
    assert tls.problem is not None
    assert tls.problem.startswith(
        "ClientHello cipher_suites needs 255 bytes at offset 37, only 2 left"
    )


def test_unknown_versions_are_shown_in_hex_and_grease_is_dropped() -> None:
    supported = b"\x08" + b"\x0a\x0a" + b"\x7f\x1c" + b"\x03\x04" + b"\xfa\xfa"
    extensions = struct.pack("!HH", 43, len(supported)) + supported
    body = (
        b"\x03\x03"
        + b"\x00" * 32
        + b"\x00"
        + b"\x00\x02\x13\x01"
        + b"\x01\x00"
        + struct.pack("!H", len(extensions))
        + extensions
    )
    conversation = Conversation()
    tls = only_flow(analyze_frames([conversation.client_sends(handshake_record(1, body))])).tls
    assert tls is not None
    assert tls.client_hello == ClientHello("TLS1.2", None, (), ("0x7f1c", "TLS1.3"))


# =========================================================================== 4. properties

PCAP_HEADER = pcap_header(1)
PCAPNG_HEADER = pcapng_section(pcapng_interface(1))


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=600),
        st.binary(max_size=600).map(lambda tail: PCAP_HEADER + tail),
        st.binary(max_size=600).map(lambda tail: PCAPNG_HEADER + tail),
    )
)
def test_arbitrary_bytes_give_a_capture_or_capture_error(data: bytes) -> None:
    try:
        result = analyze_pcap(data)
    except CaptureError:
        return
    assert isinstance(result, Capture)


PAYLOADS = st.one_of(
    st.binary(max_size=400),
    st.binary(max_size=400).map(lambda tail: b"\x16\x03\x01" + tail),
    st.binary(max_size=400).map(
        lambda tail: b"\x16\x03\x01\x01\x00\x01\x00\x00\xfc\x03\x03" + tail
    ),
    st.binary(max_size=400).map(lambda tail: b"GET / HTTP/1.1\r\n" + tail),
    st.binary(max_size=400).map(
        lambda tail: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + tail
    ),
    st.binary(max_size=400).map(lambda tail: b"CONNECT a:1 HTTP/1.1\r\n\r\n\x16\x03\x03" + tail),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    segments=st.lists(
        st.tuples(st.booleans(), st.integers(0, 2000), PAYLOADS), min_size=1, max_size=6
    ),
    with_handshake=st.booleans(),
    isn=st.integers(0, 2**32 - 1),
)
def test_arbitrary_payloads_in_a_well_formed_pcap_give_a_capture(
    segments: list[tuple[bool, int, bytes]], with_handshake: bool, isn: int
) -> None:
    conversation = Conversation(client_isn=isn, server_isn=isn ^ 0x5A5A5A5A)
    frames = conversation.handshake() if with_handshake else []
    for from_client, offset, payload in segments:
        send = conversation.client_sends if from_client else conversation.server_sends
        frames.append(send(payload, offset=offset))
    capture = analyze_frames(frames)
    assert capture.packet_count == len(frames) and len(capture.flows) == 1


@settings(max_examples=250, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=3000),
    cuts=st.lists(st.integers(1, 2999), max_size=8),
    isn=st.integers(0, 2**32 - 1),
    with_handshake=st.booleans(),
    order=st.randoms(use_true_random=False),
    repeats=st.lists(st.integers(0, 8), max_size=4),
)
def test_reassembly_recovers_any_reordering_and_duplication(
    data: bytes,
    cuts: list[int],
    isn: int,
    with_handshake: bool,
    order: random.Random,
    repeats: list[int],
) -> None:
    bounds = sorted({0, len(data), *(cut for cut in cuts if cut < len(data))})
    pieces = [(start, data[start:end]) for start, end in itertools.pairwise(bounds)]
    pieces += [pieces[index % len(pieces)] for index in repeats]  # retransmissions
    order.shuffle(pieces)
    conversation = Conversation(client_isn=isn)
    frames = conversation.handshake() if with_handshake else []
    frames += [conversation.client_sends(piece, offset=start) for start, piece in pieces]
    flow = only_flow(analyze_frames(frames))
    assert (flow.client_stream, flow.client_gap) == (data, False)


# =========================================================================== 5. benchmark smoke


def test_benchmark_builder_writes_a_capture_wire_can_read(tmp_path: Path) -> None:
    bench = load_benchmark("bench_wire")
    path = tmp_path / "bench.pcap"
    written = bench.build_capture(path, packets=300)
    assert written >= 300
    capture = analyze_pcap(path)
    assert capture.packet_count == written and capture.truncated is False
    assert capture.tls_flows and capture.plaintext_flows
    hellos = [f.tls.client_hello for f in capture.tls_flows if f.tls and f.tls.client_hello]
    assert hellos and all(hello.alpn == ISTIO_ALPN for hello in hellos)
    assert any(flow.http_requests for flow in capture.plaintext_flows)
