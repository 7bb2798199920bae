"""HTTP/2 in a captured TCP stream, as far as it shows without decoding header blocks (pure).

A plaintext HTTP/2 connection (h2c with prior knowledge, what gRPC speaks without TLS) begins
with the client connection preface, ``PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n`` (RFC 9113,
section 3.4); then each side sends frames, a 9-octet header (length: 24 bits, type, flags,
reserved bit and stream identifier: 31 bits) and the payload (section 4.1). The server sends
no preface of its own: its first frame is SETTINGS. Header blocks are HPACK-compressed
(RFC 7541) and stay undecoded: a frame's type and stream say which requests were made. The
preface is also a valid-looking HTTP/1.x request line (``PRI *``), deliberately so; `wire`
reads it as HTTP/2, never as an HTTP/1 request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["FRAME_TYPES", "HTTP2_PREFACE", "Http2Frame", "parse_frames"]

HTTP2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FRAME_HEADER: Final = 9
# RFC 9113 section 6 (and 6.10 CONTINUATION); any other type is kept as its number
FRAME_TYPES: Final = {
    0x0: "DATA",
    0x1: "HEADERS",
    0x2: "PRIORITY",
    0x3: "RST_STREAM",
    0x4: "SETTINGS",
    0x5: "PUSH_PROMISE",
    0x6: "PING",
    0x7: "GOAWAY",
    0x8: "WINDOW_UPDATE",
    0x9: "CONTINUATION",
}


@dataclass(frozen=True, slots=True)
class Http2Frame:
    """One frame's header: ``type`` by name (``HEADERS``; ``0xNN`` for a type RFC 9113 does
    not define), ``flags``, ``stream`` (0: the connection) and the payload's ``length``."""

    type: str
    flags: int
    stream: int
    length: int


def parse_frames(stream: bytes, start: int = 0) -> tuple[Http2Frame, ...]:
    """The complete frames of ``stream`` from ``start`` (after the client's preface, or 0 for
    the server's side), in order; a frame cut short by the end of the capture is left out.
    Linear in the input: each frame advances by at least its 9-octet header."""
    frames: list[Http2Frame] = []
    position = start
    while position + _FRAME_HEADER <= len(stream):
        length = int.from_bytes(stream[position : position + 3], "big")
        kind = stream[position + 3]
        flags = stream[position + 4]
        stream_id = int.from_bytes(stream[position + 5 : position + 9], "big") & 0x7FFFFFFF
        end = position + _FRAME_HEADER + length
        if end > len(stream):
            break
        frames.append(Http2Frame(FRAME_TYPES.get(kind, f"0x{kind:02x}"), flags, stream_id, length))
        position = end
    return tuple(frames)
