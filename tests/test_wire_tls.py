"""pytest_meshconform.evidence.tls through `analyze_pcap`: real OpenSSL hellos split, merged
and re-recorded, HelloRetryRequest, malformed hellos, unknown versions and GREASE. Literal
values come from what the test configured (SNI, ALPN, versions), never from the code under
test."""

from __future__ import annotations

import struct

import pytest
from wire_helpers import (
    ISTIO_ALPN,
    ISTIO_HELLO_13,
    ISTIO_SNI,
    Conversation,
    Flights,
    analyze_frames,
    handshake_record,
    make_flights,
    only_flow,
    refragment_handshake,
    server_hello_body,
    tls_records,
)

from pytest_meshconform.evidence.tls import ClientHello, ServerHello


@pytest.fixture(scope="module")
def flights(tmp_path_factory: pytest.TempPathFactory) -> Flights:
    return make_flights(tmp_path_factory.mktemp("tls"))


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
