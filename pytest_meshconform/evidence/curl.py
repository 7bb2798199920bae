"""Requests made with curl inside a pod, and what came back (the argv builder and parser are pure).

curl is what Istio's `sleep`/`curl` sample runs, so both backends exec the same argv. Its exit
code matters as much as the status: a STRICT sidecar resets a plaintext connection (curl exit 56,
no status), while a client sidecar that cannot reach its upstream answers 503 itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

WRITE_OUT_MARKER = "\n@@meshconform-write-out@@"
CURL_EXIT_REASONS = {
    0: "ok",
    6: "could not resolve host",
    7: "failed to connect",
    28: "timed out",
    35: "TLS handshake failed",
    52: "empty reply from server",
    56: "failure receiving data (connection reset by peer)",
}


class HttpError(AssertionError):
    """A request whose outcome a helper needed (e.g. to read XFCC) did not succeed."""


@dataclass(frozen=True, slots=True)
class HttpResult:
    """One curl request from a pod: the evidence a failed assertion should print."""

    url: str
    client: str  # workload key, e.g. "sleep.foo"
    exit_code: int
    status: int | None  # None when no HTTP response arrived (curl's %{http_code} was 000)
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-cased names
    body: bytes = b""
    stderr: str = ""
    time_total: float | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.status is not None and 200 <= self.status < 300

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise HttpError(f"{self.describe()}: body is not JSON: {self.body[:200]!r}") from exc

    def describe(self) -> str:
        reason = CURL_EXIT_REASONS.get(self.exit_code, "see curl's manual")
        status = "no HTTP response" if self.status is None else f"HTTP {self.status}"
        text = f"{self.client} -> {self.url}: {status}, curl exit {self.exit_code} ({reason})"
        if self.stderr.strip():
            text += f", stderr: {self.stderr.strip()}"
        return text

    def __str__(self) -> str:
        return self.describe()


def curl_argv(
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    data: str | None = None,
    timeout: float = 10.0,
) -> list[str]:
    """curl that prints response head, body and its write-out JSON on stdout, errors on stderr."""
    argv = ["curl", "-sS", "-i", "--max-time", f"{timeout:g}", "-X", method]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    if data is not None:
        argv += ["--data-binary", data]
    argv += ["-w", WRITE_OUT_MARKER + "%{json}", url]
    return argv


def parse_curl_output(
    url: str, client: str, exit_code: int, stdout: bytes, stderr: bytes
) -> HttpResult:
    """Split curl's `-i` output into the final response's head and body, plus the write-out."""
    payload, marker, write_out = stdout.rpartition(WRITE_OUT_MARKER.encode())
    if not marker:
        payload, write_out = stdout, b""
    info: dict[str, Any] = {}
    if write_out:
        try:
            info = json.loads(write_out)
        except ValueError:
            info = {}
    code = int(info.get("http_code") or info.get("response_code") or 0)
    headers: dict[str, str] = {}
    body = payload
    # -i prints every response head (e.g. a 100 Continue first); the last one is the answer.
    while body.startswith(b"HTTP/"):
        head, sep, rest = body.partition(b"\r\n\r\n")
        if not sep:
            break
        headers = {}
        for line in head.split(b"\r\n")[1:]:
            name, colon, value = line.partition(b":")
            if colon:
                key = name.decode("latin-1").strip().lower()
                text = value.decode("latin-1").strip()
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
        body = rest
    time_total = info.get("time_total")
    return HttpResult(
        url=url,
        client=client,
        exit_code=exit_code,
        status=code or None,
        headers=headers,
        body=body,
        stderr=stderr.decode(errors="replace"),
        time_total=float(time_total) if isinstance(time_total, int | float) else None,
    )


def header_from_httpbin(body: Any, name: str) -> str | None:
    """A request header as httpbin echoed it in /headers: a string (httpbin) or list (go-httpbin).

    Several values (go-httpbin's array, or repeated headers) are joined with `,`, which is how
    HTTP combines them and how XFCC separates elements.
    """
    headers = body.get("headers") if isinstance(body, Mapping) else None
    if not isinstance(headers, Mapping):
        raise HttpError(f"not an httpbin /headers response: {str(body)[:200]}")
    for key, value in headers.items():
        if str(key).lower() == name.lower():
            if isinstance(value, str):
                return value
            if isinstance(value, Sequence):
                return ",".join(str(v) for v in value)
            raise HttpError(f"unexpected {name} value in httpbin response: {value!r}")
    return None
