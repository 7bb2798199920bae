"""The local mesh's gRPC apps, on grpcio: the `grpc-echo` server a pod serves, and the client
`WorkloadHandle.grpc` runs inside a pod.

The server (`start_grpc_echo`, run by the app launcher `apps.py` in the pod's namespace) has one
method, ``/meshconform.echo.v1.Echo/Echo``, answering with the request metadata it saw (as
httpbin's ``/headers``: ``x-forwarded-client-cert`` shows there when a sidecar added it), and
the standard gRPC health service (``grpc.health.v1.Health``, grpcio-health-checking) reporting
SERVING for the server and the echo service. Requests and answers are raw bytes (the answer is
JSON), so no generated protobuf code is needed.

The client (``python -m pytest_meshconform.backends.local.grpc_echo HOST:PORT METHOD TIMEOUT
[KEY=VALUE...]``, the arguments of `evidence.grpc_call.grpc_client_args`; the local mesh runs
its `main` in a pod's long-lived `grpc_client` process) makes one unary call on a new
plaintext channel (the pod's sidecar, when it has one, originates mTLS) and prints the
status after `GRPC_OUTPUT_MARKER` as JSON. grpcio is imported only here, on first use: a
topology without gRPC never loads it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

from pytest_meshconform.evidence.grpc_call import (
    ECHO_METHOD,
    ECHO_SERVICE,
    GRPC_OUTPUT_MARKER,
    echo_answer,
)

__all__ = ["HEALTH_CHECK_METHOD", "call", "main", "start_grpc_echo"]

ECHO_WORKERS = 8
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
# Names resolve as every pod resolves them (/etc/hosts of its namespace, getaddrinfo); grpc
# core's default c-ares resolver would ask the pod's unreachable nameserver first.
_RESOLVER_ENV = {"GRPC_DNS_RESOLVER": "native"}
_CHANNEL_OPTIONS = (
    ("grpc.enable_retries", 0),  # one call, one attempt: the evidence is that attempt
    ("grpc.enable_http_proxy", 0),  # never a proxy from the environment
    # A channel of its own connections: a long-lived client (`grpc_client`) makes each call on
    # a new TCP connection, as a process per call did, never on an earlier channel's.
    ("grpc.use_local_subchannel_pool", 1),
)


def _grpc() -> Any:
    os.environ.update(_RESOLVER_ENV)
    import grpc  # type: ignore[import-untyped]

    return grpc


def start_grpc_echo(listen: str) -> list[threading.Thread]:
    """The echo service and the health service on each ``host:port`` of ``listen``
    (space-separated, as `apps.start_tcp_echo`); returns a thread that waits on the server."""
    from concurrent.futures import ThreadPoolExecutor

    grpc = _grpc()
    from grpc_health.v1 import (  # type: ignore[import-untyped]
        health,
        health_pb2,
        health_pb2_grpc,
    )

    def echo(request: bytes, context: Any) -> bytes:
        return echo_answer(tuple(context.invocation_metadata()), context.peer(), request)

    server = grpc.server(ThreadPoolExecutor(max_workers=ECHO_WORKERS))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                ECHO_SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
            ),
        )
    )
    checker = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    for service in ("", ECHO_SERVICE):
        checker.set(service, health_pb2.HealthCheckResponse.SERVING)
    addresses = listen.split()
    for address in addresses:
        if server.add_insecure_port(address) == 0:
            raise OSError(f"grpc-echo cannot listen on {address}")
    server.start()
    for address in addresses:
        print(f"Serving on grpc-echo {address}", flush=True)
    thread = threading.Thread(target=server.wait_for_termination, daemon=True)
    thread.start()
    return [thread]


def call(
    target: str, method: str, timeout: float, metadata: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """One unary call of ``method`` on ``target`` (``host:port``): the status, details, debug
    string, trailing metadata and, with OK, the echo's answer."""
    grpc = _grpc()
    with grpc.insecure_channel(target, options=_CHANNEL_OPTIONS) as channel:
        stub = channel.unary_unary(method)
        request = b"" if method == HEALTH_CHECK_METHOD else b"meshconform"  # service "": all
        try:
            answer, rpc = stub.with_call(request, metadata=metadata, timeout=timeout)
        except grpc.RpcError as error:
            return {
                "status": error.code().name,
                "details": error.details() or "",
                "debug": error.debug_error_string() or "",
                "trailing": _text_pairs(error.trailing_metadata()),
            }
    result: dict[str, Any] = {
        "status": "OK",
        "details": rpc.details() or "",
        "trailing": _text_pairs(rpc.trailing_metadata()),
    }
    if method == HEALTH_CHECK_METHOD:
        from grpc_health.v1 import health_pb2

        status = health_pb2.HealthCheckResponse.FromString(answer).status
        result["health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    try:
        result["echo"] = json.loads(answer) if method == ECHO_METHOD else {"metadata": []}
    except ValueError:
        result["echo"] = None
    return result


def _text_pairs(metadata: Any) -> list[list[str]]:
    return [[k, v] for k, v in (metadata or ()) if isinstance(v, str)]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3:
        print("usage: grpc_echo HOST:PORT METHOD TIMEOUT [KEY=VALUE ...]", file=sys.stderr)
        return 2
    target, method, timeout = args[0], args[1], float(args[2])
    metadata = [tuple(item.split("=", 1)) for item in args[3:]]
    result = call(target, method, timeout, [(k, v) for k, v in metadata])
    print(GRPC_OUTPUT_MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
