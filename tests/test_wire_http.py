"""pytest_meshconform.evidence.http through `analyze_pcap`: HTTP/1.x framing (keep-alive,
Content-Length, chunked, bodies to the close), folded and malformed heads. Synthetic captures;
literal values come from what the test sent."""

from __future__ import annotations

from wire_helpers import (
    Conversation,
    analyze_frames,
    only_flow,
)


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
