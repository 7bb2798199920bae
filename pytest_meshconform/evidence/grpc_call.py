"""gRPC calls made from inside a pod, and what came back (the argument builder and the parser
are pure).

`WorkloadHandle.grpc` calls the echo service of a workload that serves ``grpc-echo`` (its
``Echo`` method answers with the request metadata the server saw, as httpbin's ``/headers``
does) with grpcio, the field's own gRPC library, run inside the client's pod as curl is. The
client program prints one JSON object on stdout: the gRPC status name (``OK``,
``UNAVAILABLE``, ``PERMISSION_DENIED``...: the ``grpc.StatusCode`` names, which are the gRPC
spec's codes, doc/statuscodes.md of grpc/grpc), its details, grpc core's debug string, and
with ``OK`` the echo's answer. This module builds that program's arguments and reads its
output into a `GrpcResult`.

What tells a reset apart: a connection the server side closes with a RST (a STRICT server
sidecar refusing plaintext) surfaces in grpc core as status ``UNAVAILABLE`` whose details or
debug string name the socket error (``Connection reset by peer``, ``recvmsg:...``,
``Socket closed``: grpc core's tcp_posix and chttp2 transport texts); an Envoy in front
of the server that answers itself (RBAC, no upstream) gives a status and no socket error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pytest_meshconform.evidence.xfcc import XfccElement, parse_xfcc

__all__ = [
    "ECHO_METHOD",
    "ECHO_SERVICE",
    "GRPC_OUTPUT_MARKER",
    "GrpcError",
    "GrpcResult",
    "echo_answer",
    "grpc_client_args",
    "parse_grpc_output",
]

ECHO_SERVICE: Final = "meshconform.echo.v1.Echo"
ECHO_METHOD: Final = f"/{ECHO_SERVICE}/Echo"
# The line before the client program's JSON on stdout (grpc core may print to stdout too).
GRPC_OUTPUT_MARKER: Final = "@@meshconform-grpc@@"
# The gRPC status codes by name (grpc/grpc doc/statuscodes.md; grpc.StatusCode spells them so).
STATUS_CODES: Final = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}
# The socket errors grpc core names when the peer reset or closed the connection under it.
_RESET: Final = re.compile(
    r"Connection reset by peer|recvmsg:Connection reset|Socket closed|Broken pipe|"
    r"Connection closed|GOAWAY received",
    re.IGNORECASE,
)
_REFUSED: Final = re.compile(r"Connection refused", re.IGNORECASE)
_METADATA_KEY: Final = re.compile(r"[0-9a-z_.-]+")


class GrpcError(AssertionError):
    """The gRPC client could not run the call at all (not installed, a bad argument): no
    evidence about the mesh; the message has its exit code and error output."""


def grpc_client_args(
    host: str,
    port: int,
    *,
    metadata: Mapping[str, str] | None = None,
    timeout: float,
    method: str = ECHO_METHOD,
) -> list[str]:
    """The client program's arguments: ``HOST:PORT METHOD TIMEOUT [KEY=VALUE ...]`` (metadata
    keys as gRPC allows them: lower-case ASCII letters, digits, ``_ . -``; no ``-bin`` binary
    keys)."""
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not in 1..65535")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    args = [f"{host}:{port}", method, f"{timeout:g}"]
    for key, value in (metadata or {}).items():
        if not _METADATA_KEY.fullmatch(key) or key.endswith("-bin") or key.startswith("grpc-"):
            raise ValueError(
                f"metadata key {key!r}: gRPC takes lower-case ASCII letters, digits, '_', '.'"
                " and '-' (no 'grpc-' prefix, no '-bin' binary keys here)"
            )
        if not isinstance(value, str) or not value.isprintable() or not value.isascii():
            raise ValueError(f"metadata {key}: {value!r} is not printable ASCII")
        args.append(f"{key}={value}")
    return args


@dataclass(frozen=True, slots=True)
class GrpcResult:
    """One gRPC call from a pod (`WorkloadHandle.grpc`): the status the client got, and with
    ``OK`` the request metadata the server saw (``x-forwarded-client-cert`` among it when a
    sidecar added it). `outcome` names it in a word; `describe()` is the evidence line."""

    target: str  # "catalog.shop:50051"
    client: str  # workload key, e.g. "web.frontend"
    status: str  # the gRPC status name: "OK", "UNAVAILABLE", "PERMISSION_DENIED"...
    details: str = ""  # the status message ("RBAC: access denied", "Socket closed"...)
    # every (key, value) of request metadata the server saw, in order (keys lower-case)
    server_metadata: tuple[tuple[str, str], ...] = ()
    debug: str = ""  # grpc core's debug error string (the socket error, the address tried)
    exit_code: int = 0  # the client program's
    port_name: str = ""  # the Service port's name, when the target is a Service port
    trailing_metadata: tuple[tuple[str, str], ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    @property
    def code(self) -> int | None:
        """The numeric gRPC status code (7 for PERMISSION_DENIED), None for an unknown name."""
        return STATUS_CODES.get(self.status)

    @property
    def reset(self) -> bool:
        """The connection was reset or closed under the call before any response: status
        UNAVAILABLE with a socket error (what a STRICT server sidecar does to plaintext)."""
        return self.status == "UNAVAILABLE" and bool(_RESET.search(f"{self.details} {self.debug}"))

    @property
    def refused(self) -> bool:
        """Nothing accepted the connection (UNAVAILABLE, ``Connection refused``)."""
        return self.status == "UNAVAILABLE" and bool(
            _REFUSED.search(f"{self.details} {self.debug}")
        )

    @property
    def outcome(self) -> str:
        """In a word for messages and table cells: ``reset``, ``refused``, else ``gRPC
        <STATUS>`` (``gRPC OK``, ``gRPC PERMISSION_DENIED``, ``gRPC UNAVAILABLE``)."""
        if self.reset:
            return "reset"
        if self.refused:
            return "refused"
        return f"gRPC {self.status}"

    @property
    def xfcc(self) -> tuple[XfccElement, ...] | None:
        """The ``x-forwarded-client-cert`` the server saw, parsed (first hop first; its
        `spiffe_uri` is the client's identity as the server sidecar verified it), or None
        when the server saw none (no sidecar terminated mTLS in front of it)."""
        values = self.metadata("x-forwarded-client-cert")
        return parse_xfcc(",".join(values)) if values else None

    def metadata(self, key: str) -> tuple[str, ...]:
        """Every value the server saw for metadata ``key`` (case-insensitive), in order."""
        key = key.lower()
        return tuple(v for k, v in self.server_metadata if k == key)

    def describe(self) -> str:
        named = f" ({self.port_name})" if self.port_name else ""
        text = f"{self.client} -> grpc://{self.target}{named}: {self.outcome}"
        if self.details:
            text += f", details: {self.details}"
        if self.ok:
            text += f"; the server saw {len(self.server_metadata)} metadata entries"
        if self.debug and not self.ok:
            text += f"; grpc debug: {self.debug[:500]}"
        return text

    def __str__(self) -> str:
        return self.describe()


def _pairs(value: Any, what: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in value
    ):
        raise GrpcError(f"the gRPC client printed {what} that is not a list of [key, value]")
    return tuple((k, v) for k, v in value)


def parse_grpc_output(
    target: str,
    client: str,
    exit_code: int,
    stdout: bytes,
    stderr: bytes,
    *,
    port_name: str = "",
) -> GrpcResult:
    """The `GrpcResult` of a client run; `GrpcError` when the client program did not report a
    call (it could not start, or crashed), with its exit code and error output."""
    _, marker, payload = stdout.rpartition(GRPC_OUTPUT_MARKER.encode())
    info: Any = None
    if marker:
        try:
            info = json.loads(payload)
        except ValueError:
            info = None
    if exit_code != 0 or not isinstance(info, dict) or not isinstance(info.get("status"), str):
        error = stderr.decode(errors="replace").strip()
        raise GrpcError(
            f"{client} -> grpc://{target}: the gRPC client could not make the call (exit"
            f" {exit_code}): {error[-800:] or 'no error output'}"
        )
    status = info["status"]
    if status not in STATUS_CODES:
        raise GrpcError(f"{client} -> grpc://{target}: unknown gRPC status {status!r}")
    echoed = info.get("echo")
    seen: tuple[tuple[str, str], ...] = ()
    if status == "OK":
        if not isinstance(echoed, dict):
            raise GrpcError(f"{client} -> grpc://{target}: status OK without the echo's answer")
        seen = _pairs(echoed.get("metadata"), "server metadata")
    details, debug = info.get("details", ""), info.get("debug", "")
    return GrpcResult(
        target=target,
        client=client,
        status=status,
        details=details if isinstance(details, str) else "",
        server_metadata=seen,
        debug=debug if isinstance(debug, str) else "",
        exit_code=exit_code,
        port_name=port_name,
        trailing_metadata=_pairs(info.get("trailing", []), "trailing metadata"),
    )


def echo_answer(metadata: Sequence[tuple[str, str | bytes]], peer: str, message: bytes) -> bytes:
    """What the echo service answers: the request metadata it saw (binary values as
    ``base64:`` text), the peer grpcio names and the message, as JSON."""
    import base64

    pairs = [
        [k, v if isinstance(v, str) else "base64:" + base64.b64encode(v).decode()]
        for k, v in metadata
    ]
    return json.dumps(
        {"metadata": pairs, "peer": peer, "message": message.decode(errors="replace")}
    ).encode()
