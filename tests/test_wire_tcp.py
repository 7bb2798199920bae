"""pytest_meshconform.evidence.tcp through `analyze_pcap`: who is the client, IP layers,
connections on a reused 4-tuple, and stream reassembly (order, wraparound, holes, overlaps).
Synthetic captures (tests/wire_helpers.py); literal values come from what the test built."""

from __future__ import annotations

import itertools
import random
import struct

import dpkt
import pytest
from hypothesis import given, settings, strategies as st
from wire_helpers import (
    ISTIO_HELLO_13,
    V6,
    Conversation,
    Flights,
    analyze_frames,
    ethernet,
    make_flights,
    only_flow,
    pcap_file,
)

from pytest_meshconform.evidence.wire import analyze_pcap


@pytest.fixture(scope="module")
def flights(tmp_path_factory: pytest.TempPathFactory) -> Flights:
    return make_flights(tmp_path_factory.mktemp("tls"))


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
