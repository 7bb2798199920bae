"""HTTP/1.x from a plaintext TCP stream: request and status lines and header fields.

Messages are read in order from the start of each stream and framed by Content-Length or
chunked encoding; reading stops at the first head that is incomplete or malformed (lines must
end in CRLF), at a body that runs to the close, or at a protocol switch. Start lines and
header fields are decoded as latin-1 (every byte maps to one character); a request line is at
most 64 KiB, and an obsolete folded header line is joined once (linear work).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["HttpRequest", "HttpResponse", "parse_requests", "parse_responses"]


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One plaintext HTTP/1.x request head."""

    method: str
    target: str
    version: str
    host: str | None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """One plaintext HTTP/1.x response head."""

    version: str
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([!-~]{1,65536}) (HTTP/[0-9]\.[0-9])")
_STATUS_LINE = re.compile(rb"(HTTP/[0-9]\.[0-9]) ([0-9]{3})(?: ([^\r\n]*))?")
_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEX_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


class _Head:
    __slots__ = ("body_start", "headers", "start_line")

    def __init__(
        self, start_line: re.Match[bytes], headers: list[tuple[str, str]], end: int
    ) -> None:
        self.start_line = start_line
        self.headers = headers
        self.body_start = end

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name]


def _parse_head(stream: bytes, position: int, start_line: re.Pattern[bytes]) -> _Head | None:
    """A complete message head (start line, header fields) at ``position``, or None."""
    line_end = stream.find(b"\r\n", position, position + 70000)
    if line_end < 0:
        return None
    matched = start_line.fullmatch(stream, position, line_end)
    if matched is None:
        return None
    head_end = stream.find(b"\r\n\r\n", line_end)
    if head_end < 0:
        return None
    # Each field as its name and value pieces: an obsolete folded line appends a piece, joined
    # once at the end (re-building the value per line costs the square of the field's length).
    fields: list[tuple[bytes, list[bytes]]] = []
    if head_end > line_end:
        for line in stream[line_end + 2 : head_end].split(b"\r\n"):
            if line[:1] in (b" ", b"\t") and fields:  # obsolete line folding
                fields[-1][1].append(line.strip(b" \t"))
                continue
            name, colon, value = line.partition(b":")
            if not colon or not _FIELD_NAME.fullmatch(name):
                return None
            fields.append((name, [value.strip(b" \t")]))
    headers = [
        (name.decode("latin-1"), b" ".join(value).decode("latin-1")) for name, value in fields
    ]
    return _Head(matched, headers, head_end + 4)


def _body_end(stream: bytes, head: _Head) -> int | None:
    """Where the body framed by Transfer-Encoding / Content-Length ends; None when it cannot be
    framed (it runs to the end of the connection, or the stream stops first)."""
    transfer_encoding = head.values("transfer-encoding")
    if transfer_encoding:
        if transfer_encoding[-1].split(",")[-1].strip().lower() != "chunked":
            return None
        return _chunked_end(stream, head.body_start)
    lengths = {value.strip() for value in head.values("content-length")}
    if not lengths:
        return head.body_start
    if len(lengths) != 1 or not (length := lengths.pop()).isdigit():
        return None
    end = head.body_start + int(length)
    return end if end <= len(stream) else None


def _chunked_end(stream: bytes, position: int) -> int | None:
    while True:
        line_end = stream.find(b"\r\n", position)
        if line_end < 0:
            return None
        size_text = stream[position:line_end].split(b";", 1)[0].strip(b" \t")
        if not _HEX_SIZE.fullmatch(size_text):
            return None
        size = int(size_text, 16)
        if size == 0:
            if stream.startswith(b"\r\n", line_end + 2):
                return line_end + 4
            trailer_end = stream.find(b"\r\n\r\n", line_end + 2)
            return None if trailer_end < 0 else trailer_end + 4
        position = line_end + 2 + size
        if not stream.startswith(b"\r\n", position):
            return None
        position += 2


def parse_requests(stream: bytes) -> tuple[list[HttpRequest], int | None]:
    """Requests from the start of the client stream, and where a CONNECT tunnel starts."""
    requests: list[HttpRequest] = []
    position = 0
    while position < len(stream):
        head = _parse_head(stream, position, _REQUEST_LINE)
        if head is None:
            break
        method, target, version = (part.decode("latin-1") for part in head.start_line.groups())
        hosts = head.values("host")
        requests.append(
            HttpRequest(
                method=method,
                target=target,
                version=version,
                host=hosts[0] if hosts else None,
                headers=tuple(head.headers),
            )
        )
        if method == "CONNECT":
            return requests, head.body_start
        end = _body_end(stream, head)
        if end is None:
            break
        position = end
    return requests, None


def parse_responses(
    stream: bytes, request_methods: list[str]
) -> tuple[list[HttpResponse], int | None]:
    """Responses from the start of the server stream, and where an accepted CONNECT tunnel
    starts. The request methods say which responses have no body (HEAD) or open a tunnel."""
    responses: list[HttpResponse] = []
    answered = 0
    position = 0
    while position < len(stream):
        head = _parse_head(stream, position, _STATUS_LINE)
        if head is None:
            break
        version, status_text, reason = head.start_line.groups()
        status = int(status_text)
        responses.append(
            HttpResponse(
                version=version.decode("latin-1"),
                status=status,
                reason=(reason or b"").decode("latin-1"),
                headers=tuple(head.headers),
            )
        )
        if status == 101:
            break  # the connection switched protocols
        if 100 <= status < 200:
            position = head.body_start
            continue
        method = request_methods[answered] if answered < len(request_methods) else None
        answered += 1
        if method == "CONNECT" and 200 <= status < 300:
            return responses, head.body_start
        if method == "HEAD" or status in (204, 304):
            position = head.body_start
            continue
        end = _body_end(stream, head)
        if end is None or (end == head.body_start and not head.values("content-length")):
            break  # no length given: the body runs to the end of the connection
        position = end
    return responses, None
