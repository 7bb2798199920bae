"""pytest_meshconform.evidence.pcap through `analyze_pcap`: link layers, pcap and pcapng
containers, damaged and foreign files. Synthetic captures (tests/wire_helpers.py); literal
values come from what the test built, never from the code under test."""

from __future__ import annotations

import re
import struct
from collections.abc import Callable

import pytest
from wire_helpers import (
    ISTIO_HELLO_13,
    V4,
    V6,
    Conversation,
    Flights,
    bsd_null,
    ethernet,
    linux_sll,
    linux_sll2,
    make_flights,
    only_flow,
    pcap_file,
    pcap_header,
    pcap_record,
    pcapng_custom_block,
    pcapng_enhanced_packet,
    pcapng_interface,
    pcapng_section,
    pcapng_simple_packet,
    pppoe,
)

from pytest_meshconform.evidence.pcap import CaptureError
from pytest_meshconform.evidence.wire import analyze_pcap


@pytest.fixture(scope="module")
def flights(tmp_path_factory: pytest.TempPathFactory) -> Flights:
    return make_flights(tmp_path_factory.mktemp("tls"))


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
