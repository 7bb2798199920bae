"""The pure side of running things in pods: exec statuses and the capture script.

Kubernetes exec over WebSocket (``v4.channel.k8s.io``/``v5.channel.k8s.io``) multiplexes
channels by a first byte: 0 stdin, 1 stdout, 2 stderr, 3 the final ``metav1.Status``. The exit
code lives only in that status, read here with client-go's rules (``errorDecoderV4``):
``Success`` is 0; ``Failure`` with reason ``NonZeroExitCode`` carries the code in the cause of
type ``ExitCode`` (JSON ``reason``); any other failure means the command did not run.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from pytest_meshconform.backends.capture import MARKER_PORT

__all__ = [
    "CAPTURE_SCRIPT",
    "ExecStatus",
    "ExecStatusError",
    "capture_argv",
    "describe_argv",
    "parse_exec_status",
    "strip_request_newline",
]


_EXIT_CODE_RE: Final = re.compile(r"[0-9]+")


class ExecStatusError(ValueError):
    """The status channel held something client-go would reject; names the fragment."""


@dataclass(frozen=True, slots=True)
class ExecStatus:
    """The outcome of an exec: ``returncode`` None means the command never ran."""

    returncode: int | None
    reason: str
    message: str


def parse_exec_status(payload: bytes | str) -> ExecStatus:
    """Parse the status channel's ``metav1.Status`` JSON (all frames of channel 3, joined)."""
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
    if not text.strip():
        raise ExecStatusError("empty status channel: the exec stream ended without a status")
    try:
        status = json.loads(text)
    except json.JSONDecodeError as error:
        raise ExecStatusError(f"status is not JSON ({error.msg}): {text[:200]!r}") from error
    if not isinstance(status, dict):
        raise ExecStatusError(f"status: expected an object, got {text[:200]!r}")
    state = status.get("status")
    reason = str(status.get("reason") or "")
    message = str(status.get("message") or "")
    if state == "Success":
        return ExecStatus(0, reason, message)
    if state != "Failure":
        raise ExecStatusError(f"status.status {state!r}: expected Success or Failure")
    if reason != "NonZeroExitCode":
        return ExecStatus(None, reason, message or "exec failed without a message")
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    if not isinstance(causes, list):
        raise ExecStatusError(f"NonZeroExitCode status without details.causes: {text[:200]!r}")
    for cause in causes:
        if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
            code = cause.get("message")
            # strconv.ParseUint(code, 10, 8): ASCII digits only, at most 255
            if not isinstance(code, str) or not _EXIT_CODE_RE.fullmatch(code) or int(code) > 255:
                raise ExecStatusError(f"invalid exit code value {code!r}")
            return ExecStatus(int(code), reason, message)
    raise ExecStatusError(f"NonZeroExitCode status without an ExitCode cause: {text[:200]!r}")


def describe_argv(argv: Sequence[str]) -> str:
    return shlex.join(argv)


def strip_request_newline(output: bytes) -> bytes:
    """``pilot-agent request`` prints the body with Go's ``fmt.Println``: drop that newline."""
    return output[:-1] if output.endswith(b"\n") else output


# --- capture ---------------------------------------------------------------------------------


# Runs in the capture container (sharing the pod's network namespace) with bash:
#   $1 = tcpdump filter, $2 = address the end-of-capture marker datagram goes to.
# The first stdin line is a marker token: it is sent as a UDP datagram that the filter also
# matches, so once the token shows up in the pcap stream, everything the pod put on the wire
# before it has been written too. The second line (or stdin EOF, when the client vanished)
# stops tcpdump; its exit code is the script's.
CAPTURE_SCRIPT: Final = f"""\
tcpdump -i eth0 -U --immediate-mode -n -s 0 -w - "$1" &
pid=$!
if IFS= read -r token; then
  printf '%s' "$token" > "/dev/udp/$2/{MARKER_PORT}" || echo "marker to $2 failed" >&2
  IFS= read -r _ || true
fi
kill -INT "$pid" 2>/dev/null
wait "$pid"
"""


def capture_argv(filter_expression: str, marker_host: str) -> list[str]:
    return ["bash", "-c", CAPTURE_SCRIPT, "meshconform-capture", filter_expression, marker_host]
