"""The Envoy admin client: HTTP/1.1 GETs over a sidecar's admin Unix socket, with the chunked
transfer decoding Envoy's answers use, and a reader of `/stats` text."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path


def _request(sock_path: Path, path: str, timeout: float) -> socket.socket:
    """Connect to Envoy's admin unix socket and send a GET (HTTP/1.1: 1.0 gets a 426)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(sock_path))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: envoy\r\nConnection: close\r\n\r\n".encode())
    except OSError:
        sock.close()
        raise
    return sock


def _response(sock: socket.socket, sock_path: Path) -> tuple[int, bytes]:
    with sock:
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    try:
        status = int(status_line.split()[1])
    except (IndexError, ValueError):
        raise OSError(f"not an HTTP response from {sock_path}: {raw[:80]!r}") from None
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (h.partition(b":") for h in header_lines)
    }
    if headers.get(b"transfer-encoding") == b"chunked":
        body = dechunk(body)
    return status, body


def admin_get(sock_path: Path, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET an Envoy admin path over its unix socket."""
    return _response(_request(sock_path, path, timeout), sock_path)


def admin_get_all(
    sock_paths: Sequence[Path], path: str, timeout: float = 5.0
) -> list[tuple[int, bytes] | OSError]:
    """The same GET to several Envoys at once: they answer in parallel, not one after another."""
    sent: list[socket.socket | OSError] = []
    for sock_path in sock_paths:
        try:
            sent.append(_request(sock_path, path, timeout))
        except OSError as exc:
            sent.append(exc)
    results: list[tuple[int, bytes] | OSError] = []
    for sock_path, sock in zip(sock_paths, sent, strict=True):
        if isinstance(sock, OSError):
            results.append(sock)
            continue
        try:
            results.append(_response(sock, sock_path))
        except OSError as exc:
            results.append(exc)
    return results


def dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


def parse_stats(body: bytes) -> dict[str, str]:
    """`name: value` lines of /stats; text readouts keep their quotes stripped."""
    found = {}
    for line in body.decode(errors="replace").splitlines():
        name, sep, value = line.partition(":")
        if sep:
            found[name.strip()] = value.strip().strip('"')
    return found
