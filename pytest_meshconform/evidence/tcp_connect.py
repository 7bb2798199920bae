"""TCP connections made with curl inside a pod, and what came back (the argv builder and the
parser are pure).

`WorkloadHandle.tcp` opens a connection to a Service port with ``curl telnet://HOST:PORT``,
writes the bytes to send on curl's stdin and keeps what the server sent back. curl is what
Istio's `sleep`/`curl` sample (the kube backend's `curlimages/curl`) runs and ``sh`` is in it,
so both backends exec the same argv: ``sh -c 'printf "$1" | curl ...'``, the bytes to send
spelled as printf escapes (the Mesh's `exec` has no stdin; argv carries text only).

What curl's exit code and verbose trace tell apart (curl's manual, docs/cmdline-opts/
_EXITCODES.md; the same words as `HttpResult`):

- ``reset``: exit 56 (CURLE_RECV_ERROR, "Connection reset by peer"), or 55 (CURLE_SEND_ERROR)
  naming a reset: what a STRICT server sidecar does to plaintext (no filter chain matches the
  connection; Envoy closes it with the bytes unread, and the kernel answers with a RST).
- ``refused``: exit 7 (CURLE_COULDNT_CONNECT) whose trace says ``Connection refused``: nothing
  listens (no sidecar on the way: with a client sidecar, its Envoy accepts every connection and
  closes it when the upstream refuses, which is ``closed``).
- ``timeout``: exit 28 (CURLE_OPERATION_TIMEDOUT) before the connection was established.
- ``closed``: connected, and the peer closed the connection without a byte: what an
  AuthorizationPolicy's network RBAC filter does to a denied TCP connection.
- ``answered``: connected and bytes came back. A peer may keep the connection open, as an echo
  server does: once the bytes received end with the bytes sent (the echo came back), the probe
  closes the connection itself rather than wait out ``timeout`` (`TcpResult.echoed`; curl,
  stopped with SIGTERM, exits 143); otherwise curl waits until the peer closes or the time is up.
- ``silent``: connected, no byte, the connection still open when the time was up.

curl's telnet client answers telnet negotiation (bytes 0xFF...) if a server starts one:
`received` is byte-exact for servers that send no 0xFF byte (text protocols, Istio's tcp-echo).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "ECHO_POLL_S",
    "ECHO_STOP_LINE",
    "TCP_WRITE_OUT_MARKER",
    "TcpError",
    "TcpResult",
    "parse_tcp_output",
    "printf_escaped",
    "tcp_argv",
]

TCP_WRITE_OUT_MARKER: Final = "\n@@meshconform-tcp-write-out@@"
# The exits `tcp` reads as the mesh's answer; any other one means curl itself could not run
# the probe (not installed, bad option...): `TcpError`.
_EXIT_REASONS: Final = {
    0: "the peer closed the connection",
    6: "could not resolve host",
    7: "failed to connect",
    28: "timed out",
    55: "failure sending data",
    56: "failure receiving data",
}
_RESET_EXIT: Final = 56
_SEND_EXIT: Final = 55
_CONNECT_EXIT: Final = 7
_TIMEOUT_EXIT: Final = 28
_UNRESOLVED_EXIT: Final = 6
_REFUSED: Final = "Connection refused"  # strerror(ECONNREFUSED): a RST answered the SYN
# curl -v: "connect to 10.96.0.10 port 5432 failed: Connection refused" (7.8x), "... from
# 10.244.0.11 port 40102 failed: ..." (8.x), "Immediate connect fail for ...: No route to host"
_CONNECT_FAILURE: Final = re.compile(
    r"^\* (?:connect to .* failed|Immediate connect fail for [^:]*): (?P<reason>[^\r\n]+?)\s*$",
    re.MULTILINE,
)
_CONNECTED: Final = re.compile(r"^\* Connected to ", re.MULTILINE)
_VERBOSE_PREFIXES: Final = ("* ", "> ", "< ", "{ ", "} ", "*\t")
_PRINTABLE: Final = frozenset(range(0x20, 0x7F)) - {ord("\\"), ord("%")}
# How often the probe looks for the echo, in seconds (`sleep` takes fractions in coreutils and
# busybox alike).
ECHO_POLL_S: Final = 0.02
# The probe's own line on stderr when it closed a connection the peer kept open, once the bytes
# received ended with the bytes sent (curl then exits 143: SIGTERM, 128 + 15).
ECHO_STOP_LINE: Final = "* meshconform: the echo of what was sent came back; connection closed"
_ECHO_STOP_EXIT: Final = 143
# $1 the bytes to send (printf escapes), $2 curl's --max-time, $3 its write-out, $4 the URL,
# $5 how many bytes were sent, $6 the most polls for the echo. With bytes to send and a
# temporary directory, curl writes what it receives to a file and the loop stops curl (its own
# PID, `$!`) once the file ends with the bytes sent: an echo server keeps the connection open,
# and waiting for curl's --max-time would cost the whole timeout. Without either, curl alone.
_SCRIPT: Final = """\
if [ "$5" -gt 0 ] && d=$(mktemp -d 2>/dev/null); then
  trap 'rm -rf "$d"' EXIT
  printf "$1" >"$d/sent"
  printf "$1" | curl -sS -v -N --max-time "$2" -w "$3" -o "$d/got" "$4" >"$d/w" &
  pid=$!
  polls=0
  killed=
  while [ "$polls" -lt "$6" ] && kill -0 "$pid" 2>/dev/null; do
    if tail -c "$5" "$d/got" 2>/dev/null | cmp -s - "$d/sent" 2>/dev/null; then
      kill "$pid" 2>/dev/null && killed=1
      break
    fi
    polls=$((polls + 1))
    sleep {poll}
  done
  wait "$pid" 2>/dev/null
  rc=$?
  cat "$d/got" "$d/w" 2>/dev/null
  if [ -n "$killed" ] && [ "$rc" -eq {stopped} ]; then
    echo "{line}" >&2
  fi
  exit "$rc"
fi
printf "$1" | curl -sS -v --max-time "$2" -w "$3" "$4"
""".format(poll=f"{ECHO_POLL_S:g}", stopped=_ECHO_STOP_EXIT, line=ECHO_STOP_LINE)


class TcpError(AssertionError):
    """curl could not run the TCP probe at all (not installed, a bad option): no evidence
    about the mesh; the message has curl's exit code and error."""


def printf_escaped(data: bytes) -> str:
    """`data` as a printf format that prints exactly these bytes (printable ASCII as itself,
    every other byte, ``\\`` and ``%`` as a three-digit octal escape, as POSIX printf reads)."""
    return "".join(chr(b) if b in _PRINTABLE else f"\\{b:03o}" for b in data)


def tcp_argv(host: str, port: int, *, send: bytes, timeout: float) -> list[str]:
    """``sh -c 'printf ... | curl telnet://host:port'``: connect, send `send`, print what
    comes back until the peer closes, the echo of `send` came back or `timeout` seconds pass,
    then curl's write-out JSON (after `TCP_WRITE_OUT_MARKER`; none when the probe stopped curl)
    on stdout; its verbose trace and errors on stderr."""
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not in 1..65535")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    return [
        "sh",
        "-c",
        _SCRIPT,
        "sh",
        printf_escaped(send),
        f"{timeout:g}",
        TCP_WRITE_OUT_MARKER + "%{json}",
        f"telnet://{host}:{port}",
        str(len(send)),
        str(math.ceil(timeout / ECHO_POLL_S) + 1),
    ]


@dataclass(frozen=True, slots=True)
class TcpResult:
    """One TCP connection from a pod (`WorkloadHandle.tcp`): what was sent, what came back,
    and how the connection ended. `outcome` names it in one word (`answered`, `closed`,
    `silent`, `reset`, `refused`, `timeout`); `describe()` is the evidence line."""

    target: str  # "ledger.payments:5432"
    client: str  # workload key, e.g. "nightly.batch"
    exit_code: int  # curl's
    connected: bool  # the TCP handshake completed (curl's trace: "Connected to ...")
    received: bytes = b""  # every byte the peer sent before it closed or the time was up
    sent: bytes = b""
    stderr: str = ""  # curl's error line(s), e.g. "curl: (56) Recv failure: Connection reset..."
    # why the connection failed, from curl's verbose trace ("Connection refused", "No route to
    # host"); "" when it connected or curl did not say
    connect_error: str = ""
    time_total: float | None = None
    port_name: str = ""  # the Service port's name, when the target is a Service port
    # the probe closed the connection, still open, once the bytes received ended with the bytes
    # sent (an echo came back); curl's exit_code is then 143 (stopped with SIGTERM)
    echoed: bool = False

    @property
    def reset(self) -> bool:
        """The connection was reset (curl exit 56, or 55 naming a reset): what a STRICT server
        sidecar does to plaintext."""
        if self.exit_code == _RESET_EXIT:
            return True
        return self.exit_code == _SEND_EXIT and "reset by peer" in self.stderr

    @property
    def refused(self) -> bool:
        """Nothing accepted the connection: curl exit 7 with ``Connection refused``. Other
        causes of exit 7 (no route to host) are not `refused`: `outcome` names them."""
        return self.exit_code == _CONNECT_EXIT and self.connect_error == _REFUSED

    @property
    def timed_out(self) -> bool:
        """No connection within the time (curl exit 28 before the handshake completed). A
        connection still open when the time is up is not a timeout: it is `answered` or
        `silent`."""
        return self.exit_code == _TIMEOUT_EXIT and not self.connected

    @property
    def closed(self) -> bool:
        """Connected, and the peer closed the connection (curl exit 0), with or without bytes."""
        return self.connected and self.exit_code == 0

    @property
    def outcome(self) -> str:
        """What happened, in a word for messages and table cells: `answered` (bytes came back),
        `closed` (connected, closed without a byte), `silent` (connected, no byte, still open),
        `reset`, `refused`, `timeout`, `unresolved`, or the reason the connection failed
        otherwise (`no route to host`)."""
        if self.reset:
            return "reset"
        if self.refused:
            return "refused"
        if self.timed_out:
            return "timeout"
        if self.connected:
            if self.received:
                return "answered"
            return "closed" if self.exit_code == 0 else "silent"
        if self.exit_code == _UNRESOLVED_EXIT:
            return "unresolved"
        if self.exit_code == _CONNECT_EXIT:
            return (self.connect_error or "failed to connect").lower()
        return f"failed (curl exit {self.exit_code})"

    def describe(self) -> str:
        named = f" ({self.port_name})" if self.port_name else ""
        text = f"{self.client} -> tcp://{self.target}{named}: {self.outcome}"
        if self.connected:
            text += f", {len(self.received)} bytes received"
            if self.received:
                text += f" {self.received[:200]!r}"
            if self.exit_code == 0:
                text += ", then the peer closed the connection"
            elif self.exit_code == _TIMEOUT_EXIT:
                text += ", the connection still open when the time was up"
            elif self.echoed:
                text += ", the connection still open when the echo came back (the probe closed it)"
        reason = _EXIT_REASONS.get(self.exit_code, "see curl's manual")
        if self.echoed:
            reason = "stopped by the probe once the echo came back"
        if self.connect_error:
            reason = f"{reason}: {self.connect_error}"
        text += f"; sent {len(self.sent)} bytes; curl exit {self.exit_code} ({reason})"
        if self.stderr.strip():
            text += f", stderr: {self.stderr.strip()}"
        return text

    def __str__(self) -> str:
        return self.describe()


def parse_tcp_output(
    target: str,
    client: str,
    exit_code: int,
    stdout: bytes,
    stderr: bytes,
    *,
    sent: bytes = b"",
    port_name: str = "",
) -> TcpResult:
    """The `TcpResult` of a `tcp_argv` run; `TcpError` when curl could not run the probe."""
    text = stderr.decode(errors="replace")
    errors = "".join(
        line for line in text.splitlines(keepends=True) if not line.startswith(_VERBOSE_PREFIXES)
    )
    echoed = exit_code == _ECHO_STOP_EXIT and ECHO_STOP_LINE in text
    if exit_code not in _EXIT_REASONS and not echoed:
        raise TcpError(
            f"{client} -> tcp://{target}: curl could not run the probe (exit {exit_code}):"
            f" {errors.strip() or text.strip()[-500:] or 'no error output'}"
        )
    payload, marker, write_out = stdout.rpartition(TCP_WRITE_OUT_MARKER.encode())
    if not marker:
        payload, write_out = stdout, b""
    info: dict[str, Any] = {}
    if write_out:
        try:
            loaded = json.loads(write_out)
        except ValueError:
            loaded = None
        info = loaded if isinstance(loaded, dict) else {}
    failure = _CONNECT_FAILURE.findall(text)
    time_connect = info.get("time_connect")
    connected = bool(_CONNECTED.search(text)) or (
        isinstance(time_connect, int | float) and time_connect > 0
    )
    time_total = info.get("time_total")
    return TcpResult(
        target=target,
        client=client,
        exit_code=exit_code,
        connected=connected and exit_code not in (_CONNECT_EXIT, _UNRESOLVED_EXIT),
        received=payload,
        sent=sent,
        stderr=errors,
        connect_error=failure[-1] if failure else "",
        time_total=float(time_total) if isinstance(time_total, int | float) else None,
        port_name=port_name,
        echoed=echoed,
    )
