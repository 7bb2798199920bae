"""Requests made with curl inside a pod, and what came back (the argv builder and parser are pure).

curl is what Istio's `sleep`/`curl` sample runs, so both backends exec the same argv. Its exit
code matters as much as the status: a STRICT sidecar resets a plaintext connection (curl exit 56,
no status), while a client sidecar that cannot reach its upstream answers 503 itself, and a port
nothing listens on refuses the connection (curl exit 7). `HttpResult` names these outcomes
(`reset`, `refused`, `timed_out`, `tls_failed`, `outcome`), from curl's exit codes as its
manual lists them (docs/cmdline-opts/_EXITCODES.md, libcurl-errors.md) and, for exit 7, from the
reason curl's verbose output gives (`connect to ... failed: Connection refused`): curl's one-line
error says only "Couldn't connect to server" for any cause, and its write-out has no errno.
"""

from __future__ import annotations

import json
import re
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
    55: "failure sending data",
    56: "failure receiving data (connection reset by peer)",
    60: "server certificate not trusted",
}
# Exits that mean "the connection was reset or closed before any response": 56 (CURLE_RECV_ERROR,
# "Failure in receiving network data": a reset, or a TLS session torn down) and 52
# (CURLE_GOT_NOTHING, "The server did not reply anything": closed without a byte).
RESET_EXITS = frozenset({52, 56})
# TLS-family exits (libcurl-errors.md, CURLE_SSL_* and CURLE_PEER_FAILED_VERIFICATION): 35 SSL
# connect error (the handshake failed), 51 (older curls' peer verification), 53/54/66 SSL
# engine, 58 local certificate, 59 cipher, 60 peer certificate not trusted, 64 required TLS level
# failed, 77 CA file, 80 TLS shutdown, 82 CRL file, 83 issuer check, 90 pinned public key, 91
# certificate status (OCSP), 98 client certificate required.
TLS_EXITS = frozenset({35, 51, 53, 54, 58, 59, 60, 64, 66, 77, 80, 82, 83, 90, 91, 98})
TIMEOUT_EXIT = 28  # CURLE_OPERATION_TIMEDOUT
CONNECT_EXIT = 7  # CURLE_COULDNT_CONNECT: any cause; `connect_error` says which
UNRESOLVED_EXIT = 6  # CURLE_COULDNT_RESOLVE_HOST
CONNECTION_REFUSED = "Connection refused"  # strerror(ECONNREFUSED): a RST answered the SYN
# curl -v: "connect to 10.96.0.10 port 8000 failed: Connection refused" (7.8x), "... from
# 10.244.0.11 port 40102 failed: ..." (8.x), "Immediate connect fail for 10.96.0.10: No route
# to host" (happy eyeballs, older curls)
_CONNECT_FAILURE = re.compile(
    r"^\* (?:connect to .* failed|Immediate connect fail for [^:]*): (?P<reason>[^\r\n]+?)\s*$",
    re.MULTILINE,
)
# curl's verbose lines: "* " info, "> "/"< " headers, "{ "/"} " data sizes
_VERBOSE_PREFIXES = ("* ", "> ", "< ", "{ ", "} ", "*\t")


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
    stderr: str = ""  # curl's error line(s), e.g. "curl: (56) Recv failure: Connection reset..."
    time_total: float | None = None
    # why the TCP connection failed, from curl's verbose output ("Connection refused", "No
    # route to host", "Network is unreachable"); "" when it connected or curl did not say
    connect_error: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.status is not None and 200 <= self.status < 300

    @property
    def reset(self) -> bool:
        """The connection was reset or closed before any response (curl exit 56 or 52; 55, a
        send failure, when the peer reset it): what a STRICT sidecar does to plaintext. A TLS
        alert received instead of a response (exit 56 with an SSL alert) is `tls_failed`."""
        if self.status is not None or self.tls_failed:
            return False
        if self.exit_code in RESET_EXITS:
            return True
        return self.exit_code == 55 and "reset by peer" in self.stderr

    @property
    def refused(self) -> bool:
        """Nothing accepted the connection: curl exit 7 with "Connection refused" (the SYN was
        answered with a RST: no listener, or a port the Service does not expose). Other causes
        of exit 7 (no route to host, network unreachable) are not `refused`: `connect_error`
        names them, `outcome` too."""
        return self.exit_code == CONNECT_EXIT and self.connect_error == CONNECTION_REFUSED

    @property
    def timed_out(self) -> bool:
        """curl gave up after its --max-time (exit 28): no answer in time, whatever the cause."""
        return self.exit_code == TIMEOUT_EXIT

    @property
    def tls_failed(self) -> bool:
        """The TLS session failed (curl exit 35 and the other TLS-family exits), or the server
        answered the request with a TLS alert (exit 56 naming an SSL alert: TLS 1.3 servers
        reject a client certificate after the handshake)."""
        if self.exit_code in TLS_EXITS:
            return True
        return self.exit_code == 56 and _tls_alert(self.stderr)

    @property
    def outcome(self) -> str:
        """What happened, in a word or a short phrase for messages and table cells: `HTTP 403`,
        `reset`, `refused`, `timeout`, `TLS failure`, `unresolved`, or the reason a connection
        failed otherwise (`no route to host`), else `no response (curl exit N)`."""
        if self.status is not None:
            failed = f", curl exit {self.exit_code}" if self.exit_code else ""
            return f"HTTP {self.status}{failed}"
        if self.reset:
            return "reset"
        if self.refused:
            return "refused"
        if self.timed_out:
            return "timeout"
        if self.tls_failed:
            return "TLS failure"
        if self.exit_code == UNRESOLVED_EXIT:
            return "unresolved"
        if self.exit_code == CONNECT_EXIT:
            return (self.connect_error or "failed to connect").lower()
        if self.exit_code == 0:
            return "no response"
        return f"no response (curl exit {self.exit_code})"

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise HttpError(f"{self.describe()}: body is not JSON: {self.body[:200]!r}") from exc

    def describe(self) -> str:
        reason = CURL_EXIT_REASONS.get(self.exit_code, "see curl's manual")
        status = "no HTTP response" if self.status is None else f"HTTP {self.status}"
        if self.exit_code == CONNECT_EXIT and self.connect_error:
            reason = f"{reason}: {self.connect_error}"
        text = f"{self.client} -> {self.url}: {status}, curl exit {self.exit_code} ({reason})"
        if self.stderr.strip():
            text += f", stderr: {self.stderr.strip()}"
        return text

    def __str__(self) -> str:
        return self.describe()

    # `assert result.reset, result` prints the repr: what happened, not a dataclass dump
    __repr__ = __str__


def curl_argv(
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    data: str | None = None,
    timeout: float = 10.0,
) -> list[str]:
    """curl that prints response head, body and its write-out JSON on stdout, errors on stderr.

    Verbose (`-v`, on stderr) because only its trace says why a connection failed (`Connection
    refused` or `No route to host`, both exit 7); `parse_curl_output` keeps curl's error lines
    and that reason, not the trace."""
    argv = ["curl", "-sS", "-i", "--max-time", f"{timeout:g}", "-X", method]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    if data is not None:
        argv += ["--data-binary", data]
    argv += ["-v", "-w", WRITE_OUT_MARKER + "%{json}", url]
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
    text = stderr.decode(errors="replace")
    failure = _CONNECT_FAILURE.findall(text)
    return HttpResult(
        url=url,
        client=client,
        exit_code=exit_code,
        status=code or None,
        headers=headers,
        body=body,
        stderr=_curl_errors(text),
        time_total=float(time_total) if isinstance(time_total, int | float) else None,
        connect_error=failure[-1] if failure else "",
    )


def _curl_errors(stderr: str) -> str:
    """curl's own error lines of a verbose run's stderr (what it prints without `-v`)."""
    lines = stderr.splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith(_VERBOSE_PREFIXES))


def _tls_alert(stderr: str) -> bool:
    """Whether curl's error names a TLS alert the peer sent (`sslv3 alert handshake failure`,
    `tlsv13 alert certificate required`): a TLS failure, not a plain reset."""
    return re.search(r"\b(?:ssl|tls)v[0-9]+ alert\b", stderr, re.IGNORECASE) is not None


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
