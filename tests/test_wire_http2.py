"""pytest_meshconform.evidence.http2 through `analyze_pcap`: a plaintext HTTP/2 connection is
told by the client's connection preface (RFC 9113, section 3.4) and read as frames (section
4.1), never as an HTTP/1 request ``PRI *``. Synthetic captures; the frames are the ones a gRPC
client and server send (SETTINGS, HEADERS, DATA, WINDOW_UPDATE, PING), literal values from
what the test sent. The live counterpart is `tests/test_grpc_live.py` (real grpcio, real
tcpdump)."""

from __future__ import annotations

from hypothesis import given, strategies as st
from wire_helpers import Conversation, analyze_frames, only_flow

from pytest_meshconform.evidence.http2 import HTTP2_PREFACE, Http2Frame, parse_frames


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes([kind, flags])
        + stream.to_bytes(4, "big")
        + (payload)
    )


CLIENT = (
    HTTP2_PREFACE
    + frame(0x4, 0, 0, b"\x00\x02\x00\x00\x00\x00")  # SETTINGS ENABLE_PUSH=0
    + frame(0x1, 0x4, 1, b"\x83\x86")  # HEADERS END_HEADERS (HPACK: :method POST, :scheme http)
    + frame(0x0, 0x1, 1, b"\x00\x00\x00\x00\x0bmeshconform")  # DATA END_STREAM, a gRPC message
    + frame(0x1, 0x5, 3, b"\x82")  # HEADERS END_STREAM|END_HEADERS, a second request
)
SERVER = frame(0x4, 0, 0) + frame(0x4, 0x1, 0) + frame(0x8, 0, 0, b"\x00\x00\x10\x00")


def test_a_plaintext_http2_connection_is_read_as_frames_not_as_http1() -> None:
    conversation = Conversation(server=("10.244.0.10", 50051))
    frames = [
        *conversation.handshake(),
        conversation.client_sends(CLIENT[:30]),  # the preface split across segments
        conversation.client_sends(CLIENT[30:]),
        conversation.server_sends(SERVER),
    ]
    flow = only_flow(analyze_frames(frames))
    assert flow.http2 and flow.tls is None
    assert flow.http_requests == () and flow.http_responses == ()
    assert [(f.type, f.flags, f.stream) for f in flow.http2_client_frames] == [
        ("SETTINGS", 0, 0),
        ("HEADERS", 0x4, 1),
        ("DATA", 0x1, 1),
        ("HEADERS", 0x5, 3),
    ]
    assert [f.type for f in flow.http2_server_frames] == ["SETTINGS", "SETTINGS", "WINDOW_UPDATE"]
    assert flow.http2_streams == (1, 3)
    assert flow.client_bytes == len(CLIENT)


def test_http1_and_a_truncated_preface_are_not_http2() -> None:
    for sent in (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", HTTP2_PREFACE[:20]):
        conversation = Conversation()
        flow = only_flow(
            analyze_frames([*conversation.handshake(), conversation.client_sends(sent)])
        )
        assert not flow.http2 and flow.http2_client_frames == () and flow.http2_streams == ()


def test_a_frame_cut_short_by_the_capture_is_left_out() -> None:
    stream = frame(0x4, 0, 0) + frame(0x0, 0, 1, b"abcdef")[:12]
    assert parse_frames(stream) == (Http2Frame("SETTINGS", 0, 0, 0),)
    assert parse_frames(frame(0xFA, 0x80, 0x80000005)) == (Http2Frame("0xfa", 0x80, 5, 0),)


@given(st.binary(max_size=400))
def test_any_bytes_give_frames_that_add_up(stream: bytes) -> None:
    """Hostile input: frames never claim more bytes than the stream holds."""
    frames = parse_frames(stream)
    assert sum(9 + f.length for f in frames) <= len(stream)
