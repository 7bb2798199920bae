"""Tests for pytest_meshconform.evidence.wire, the whole decoder: real third-party captures
(expected values transcribed from tshark 4.0.17), property tests on any input, and the
benchmark's capture builder. Each layer has its own file (test_wire_pcap.py, test_wire_tcp.py,
test_wire_tls.py, test_wire_http.py; test_wire_live.py: live captures made here with tcpdump).
Literal values below come from tshark output or from what the test configured, never from the
code under test."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
from conftest import TESTDATA, load_benchmark
from hypothesis import HealthCheck, given, settings, strategies as st
from wire_helpers import (
    ISTIO_ALPN,
    Conversation,
    analyze_frames,
    only_flow,
    pcap_header,
    pcapng_interface,
    pcapng_section,
)

from pytest_meshconform.evidence.pcap import CaptureError
from pytest_meshconform.evidence.wire import Capture, analyze_pcap

PCAPS = TESTDATA / "pcaps"


@cache
def real_capture(name: str) -> Capture:
    path = PCAPS / name
    if not path.exists():
        pytest.skip(f"third-party capture {path} is absent (not shipped with the project)")
    return analyze_pcap(path)


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
