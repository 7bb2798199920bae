"""`tcp_argv` and `parse_tcp_output` against real servers on loopback, run with the real sh and
curl the pods run: each way a connection ends gets its own outcome.

Where the expected values come from: the servers below do what the mesh does (an echo server
like Istio's tcp-echo sample answers `hello <line>`; a close with unread bytes and SO_LINGER 0
is a reset, as the kernel sends for an Envoy closing a connection no filter chain matched;
a plain close after reading is what a network RBAC filter does to a denied connection), and
curl's exit codes are its manual's (docs/cmdline-opts/_EXITCODES.md).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from local_helpers import needs_local_mesh

from pytest_meshconform import (
    ServicePortError,
    TcpResult,
    WorkloadHandle,
    authorization_policy,
    peer_authentication,
)
from pytest_meshconform.evidence.tcp_connect import (
    TcpError,
    parse_tcp_output,
    printf_escaped,
    tcp_argv,
)
from pytest_meshconform.report.exhibits import Evidence

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def _serve(handler: Callable[[socket.socket], None]) -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def loop() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                handler(conn)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(5)
        server.close()


def _echo(conn: socket.socket) -> None:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk
    conn.sendall(b"hello " + data)
    conn.settimeout(3)
    with contextlib.suppress(OSError):
        conn.recv(1)  # keep the connection open, as tcp-echo does, until the client goes


def _reset(conn: socket.socket) -> None:
    conn.settimeout(3)
    conn.recv(1, socket.MSG_PEEK)  # wait for the client's bytes, leave them unread
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _close_after_reading(conn: socket.socket) -> None:
    conn.settimeout(3)
    conn.recv(4096)


def _silent(conn: socket.socket) -> None:
    conn.settimeout(3)
    with contextlib.suppress(OSError):
        conn.recv(4096)
        conn.recv(4096)


def _run(
    port: int,
    send: bytes = b"meshconform\n",
    timeout: float = 1.0,
    shell: list[str] | None = None,
) -> TcpResult:
    argv = tcp_argv("127.0.0.1", port, send=send, timeout=timeout)
    if shell is not None:
        assert argv[0] == "sh"
        argv = [*shell, *argv[1:]]
    done = subprocess.run(argv, capture_output=True, timeout=timeout + 10, check=False)
    return parse_tcp_output(
        f"127.0.0.1:{port}", "client.test", done.returncode, done.stdout, done.stderr, sent=send
    )


@pytest.fixture
def echo_port() -> Iterator[int]:
    yield from _serve(_echo)


# The shells the probe meets: the local mesh's pods run the host's sh (dash here), the kube
# backend's curl image busybox's ash.
SHELLS = [
    pytest.param(["sh"], id="sh"),
    pytest.param(
        ["busybox", "sh"],
        id="busybox-sh",
        marks=pytest.mark.skipif(shutil.which("busybox") is None, reason="no busybox"),
    ),
]


@pytest.mark.parametrize("shell", SHELLS)
def test_an_echo_answers_and_the_probe_closes_once_it_came_back(
    echo_port: int, shell: list[str]
) -> None:
    """The server keeps the connection open (as tcp-echo does); the probe stops curl once what
    came back ends with what was sent, instead of waiting for curl's time to be up."""
    result = _run(echo_port, timeout=30.0, shell=shell)
    assert result.received == b"hello meshconform\n", result
    assert result.connected and not result.reset and not result.timed_out, result
    assert result.outcome == "answered"
    assert result.echoed and result.exit_code == 143, result  # SIGTERM from the probe, not 28
    assert not result.closed  # the server had not closed it
    assert result.stderr == "", result  # the probe's own line is trace, not an error
    assert "18 bytes received b'hello meshconform\\n'" in result.describe()
    assert "still open when the echo came back (the probe closed it)" in result.describe()
    assert "curl exit 143 (stopped by the probe once the echo came back)" in result.describe()


def _answer_other_bytes(conn: socket.socket) -> None:
    conn.settimeout(3)
    conn.recv(4096)
    conn.sendall(b"+OK ready\n")  # not an echo of what was sent
    with contextlib.suppress(OSError):
        conn.recv(1)


@pytest.mark.parametrize("shell", SHELLS)
def test_bytes_that_are_not_the_echo_wait_for_the_peer_or_the_time(shell: list[str]) -> None:
    for port in _serve(_answer_other_bytes):
        result = _run(port, timeout=0.5, shell=shell)
        assert result.received == b"+OK ready\n" and result.outcome == "answered", result
        assert not result.echoed and result.exit_code == 28, result
        assert "still open when the time was up" in result.describe()


def test_nothing_sent_waits_for_the_peer_or_the_time() -> None:
    """Without bytes to send there is no echo to wait for (every reply would end with the
    empty bytes): curl alone, as before."""
    for port in _serve(_answer_other_bytes):
        result = _run(port, send=b"", timeout=0.5)
        assert not result.echoed and result.exit_code == 28 and result.sent == b"", result


def test_a_reset_is_reset() -> None:
    for port in _serve(_reset):
        result = _run(port)
        assert result.reset and result.outcome == "reset", result
        assert result.connected and result.received == b""
        assert not result.refused and not result.timed_out


def test_a_close_without_bytes_is_closed_not_reset() -> None:
    for port in _serve(_close_after_reading):
        result = _run(port)
        assert result.outcome == "closed", result
        assert result.connected and result.closed and result.received == b""
        assert not result.reset and not result.refused and not result.timed_out


def test_a_silent_server_is_silent_not_a_timeout() -> None:
    for port in _serve(_silent):
        result = _run(port, timeout=0.5)
        assert result.outcome == "silent", result
        assert result.connected and not result.timed_out and result.exit_code == 28


def test_nothing_listening_is_refused() -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    result = _run(port)
    assert result.refused and result.outcome == "refused", result
    assert result.connect_error == "Connection refused"
    assert not result.connected and not result.reset and not result.timed_out
    assert "Connection refused" in result.describe()


def test_every_byte_is_sent_as_given(echo_port: int) -> None:
    payload = bytes(b for b in range(1, 255) if b not in b"\n") + b"%s\\n\n"
    received = b""

    def keep(conn: socket.socket) -> None:
        nonlocal received
        conn.settimeout(3)
        while not received.endswith(b"\\n\n"):
            chunk = conn.recv(4096)
            if not chunk:
                return
            received += chunk

    for port in _serve(keep):
        result = _run(port, send=payload)
        assert result.connected, result
    assert received == payload
    script = subprocess.run(
        ["sh", "-c", 'printf "$1"', "sh", printf_escaped(b"\x00a%b\\c\xff")],
        capture_output=True,
        check=True,
    )
    assert script.stdout == b"\x00a%b\\c\xff"


def test_curl_that_cannot_run_is_an_error_not_an_outcome() -> None:
    with pytest.raises(TcpError, match=r"could not run the probe \(exit 127\): sh: curl: not"):
        parse_tcp_output("h:1", "c.ns", 127, b"", b"sh: curl: not found\n")


@pytest.mark.parametrize(
    ("port", "timeout", "message"),
    [(0, 1.0, "port 0 is not in 1..65535"), (80, 0.0, "timeout must be positive")],
)
def test_argv_refuses_what_curl_would_misread(port: int, timeout: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tcp_argv("h", port, send=b"", timeout=timeout)


# --- on the local mesh: WorkloadHandle.tcp through real sidecars ------------------------------


@pytest.fixture(scope="module")
def payments_mesh() -> Iterator[Any]:
    from local_helpers import REPO, traces_of

    from pytest_meshconform.backends.local.backend import LocalMesh
    from pytest_meshconform.backends.local.topology_file import load_topology

    topology = load_topology(REPO / "examples" / "payments" / "topology.yaml")
    mesh = LocalMesh(topology=topology).start()
    run_id = mesh.run_id
    try:
        yield mesh
    finally:
        mesh.close()
    assert traces_of(run_id) == []


def _handles(mesh: Any) -> tuple[Evidence, dict[str, WorkloadHandle]]:
    evidence = Evidence()
    names = {"ledger": "payments", "web": "checkout", "refunds": "checkout", "nightly": "batch"}
    return evidence, {
        n: WorkloadHandle(mesh, mesh.workload(n, ns), evidence) for n, ns in names.items()
    }


@needs_local_mesh
def test_tcp_tells_reset_from_closed_from_answered_on_the_mesh(payments_mesh: Any) -> None:
    mesh = payments_mesh
    evidence, w = _handles(mesh)
    strict = peer_authentication("default", "payments", mode="STRICT")
    allow_web = authorization_policy(
        "ledger-callers",
        "payments",
        selector={"app": "ledger"},
        rules=[
            {"from": [{"source": {"principals": ["cluster.local/ns/checkout/sa/checkout-web"]}}]}
        ],
    )
    mesh.apply(strict)
    mesh.apply(allow_web)
    try:
        plain = w["nightly"].tcp(w["ledger"], "tcp-postgres")
        allowed = w["web"].tcp(w["ledger"], 5432, timeout=1.0)
        denied = w["refunds"].tcp(w["ledger"])  # the Service's only TCP port
    finally:
        mesh.delete(allow_web)
        mesh.delete(strict)
    assert plain.reset and plain.outcome == "reset" and plain.received == b"", plain
    assert allowed.outcome == "answered" and allowed.received == b"hello meshconform\n", allowed
    assert denied.outcome == "closed" and denied.connected and denied.received == b"", denied
    assert [r.line() for r in evidence.observed.requests] == [
        "nightly.batch -> ledger.payments (tcp://ledger.payments:5432): reset (curl exit 56)",
        "web.checkout -> ledger.payments (tcp://ledger.payments:5432): answered, 18 bytes received",
        "refunds.checkout -> ledger.payments (tcp://ledger.payments:5432): closed, 0 bytes"
        " received",
    ]
    assert [r.received for r in evidence.observed.requests] == [0, 18, 0]
    text = evidence.texts["tcp nightly.batch -> tcp://ledger.payments:5432"]
    assert text.startswith("nightly.batch -> tcp://ledger.payments:5432 (tcp-postgres): reset")


@needs_local_mesh
def test_a_port_the_service_lacks_is_an_error_before_sending(payments_mesh: Any) -> None:
    evidence, w = _handles(payments_mesh)
    with pytest.raises(ServicePortError, match=r"ledger\.payments exposes .*5432 \(tcp-postgres\)"):
        w["nightly"].tcp(w["ledger"], 5433)
    assert evidence.observed.requests == []
