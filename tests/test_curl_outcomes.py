"""Outcomes with names: what `HttpResult.reset`, `refused`, `timed_out`, `tls_failed` and
`outcome` say about real curl runs (the argv the handles exec, this machine's curl) against
loopback servers that reset, close, stay silent, listen on nothing, or fail TLS.

"Refused by the mesh" (a reset: what STRICT does to plaintext) and "nothing listening" (curl
exit 7) are different outcomes: a suite asserting `result.reset` must fail on the second.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path

import pytest
from cert_fixtures import make_ca
from cryptography.hazmat.primitives import serialization

from pytest_meshconform.evidence.curl import HttpResult, curl_argv, parse_curl_output

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")

Serve = Callable[[socket.socket], None]


@contextmanager
def loopback(serve: Serve) -> Iterator[int]:
    """A one-connection TCP server on 127.0.0.1 that handles its connection with `serve`."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(10)

    def run() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with closing(conn):
            serve(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(15)


def curl(url: str, timeout: float = 5) -> HttpResult:
    ran = subprocess.run(curl_argv(url, timeout=timeout), capture_output=True, timeout=30)
    return parse_curl_output(url, "test", ran.returncode, ran.stdout, ran.stderr)


def reset_after_request(conn: socket.socket) -> None:
    conn.recv(4096)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close: RST


def close_after_request(conn: socket.socket) -> None:
    conn.recv(4096)  # then close: FIN, no byte of response


def silent(conn: socket.socket) -> None:
    conn.recv(4096)
    conn.settimeout(5)
    with suppress(OSError):
        conn.recv(1)  # until curl gives up and closes


def answer(conn: socket.socket) -> None:
    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 19\r\n\r\nRBAC: access denied")


def test_a_reset_is_reset() -> None:
    with loopback(reset_after_request) as port:
        result = curl(f"http://127.0.0.1:{port}/headers")
    assert (result.exit_code, result.status) == (56, None), result
    assert result.reset and not result.refused and not result.tls_failed, result
    assert result.outcome == "reset"
    assert result.stderr.startswith("curl: (56)"), result.stderr  # curl's line, not the trace


def test_an_empty_reply_is_reset_too() -> None:
    with loopback(close_after_request) as port:
        result = curl(f"http://127.0.0.1:{port}/headers")
    assert (result.exit_code, result.reset, result.outcome) == (52, True, "reset"), result


def test_nothing_listening_is_refused_not_reset() -> None:
    """The false pass of issue 19: curl exit 7 to a port nothing listens on."""
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    result = curl(f"http://127.0.0.1:{port}/headers")
    assert result.exit_code == 7 and result.status is None, result
    assert result.refused and not result.reset, result
    assert result.connect_error == "Connection refused"
    assert result.outcome == "refused"
    assert "failed to connect: Connection refused" in str(result)


def test_silence_is_a_timeout() -> None:
    with loopback(silent) as port:
        result = curl(f"http://127.0.0.1:{port}/headers", timeout=1)
    assert (result.exit_code, result.timed_out, result.outcome) == (28, True, "timeout"), result
    assert not result.reset and not result.refused


def test_an_answer_is_its_status() -> None:
    with loopback(answer) as port:
        result = curl(f"http://127.0.0.1:{port}/headers")
    assert result.outcome == "HTTP 403" and result.body == b"RBAC: access denied", result
    assert not (result.reset or result.refused or result.timed_out or result.tls_failed)


def test_tls_to_a_plaintext_server_is_a_tls_failure() -> None:
    with loopback(answer) as port:
        result = curl(f"https://127.0.0.1:{port}/")
    assert (result.exit_code, result.tls_failed, result.outcome) == (35, True, "TLS failure")
    assert not result.reset


def test_a_tls13_alert_after_the_handshake_is_a_tls_failure_not_a_reset(tmp_path: Path) -> None:
    """A TLS 1.3 server that requires a client certificate rejects its absence after the
    client's Finished: curl reports it when reading, exit 56 naming the alert."""
    issuer = make_ca("loopback")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(issuer.cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        issuer.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    context.load_verify_locations(cert)
    context.verify_mode = ssl.CERT_REQUIRED

    def require_client_cert(conn: socket.socket) -> None:
        tls = context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        with suppress(ssl.SSLError, OSError):
            tls.do_handshake()  # sends the alert: no client certificate
        # keep the connection until curl closes it: closing with its request unread would
        # answer with a RST, which may reach curl before it reads the alert
        deadline = time.monotonic() + 10
        with suppress(OSError):
            while time.monotonic() < deadline:
                readable, _, _ = select.select([tls.fileno()], [], [], 0.2)
                if readable and not os.read(tls.fileno(), 4096):
                    break
        tls.close()

    with loopback(require_client_cert) as port:
        argv = curl_argv(f"https://127.0.0.1:{port}/", timeout=5)
        ran = subprocess.run([argv[0], "-k", *argv[1:]], capture_output=True, timeout=30)
        result = parse_curl_output(argv[-1], "test", ran.returncode, ran.stdout, ran.stderr)
    assert result.exit_code == 56 and "alert" in result.stderr, result
    assert result.tls_failed and not result.reset and result.outcome == "TLS failure", result


@pytest.mark.parametrize(
    ("stderr", "reason", "outcome"),
    [
        # curl 8 (lib/cf-socket.c: "connect to %s port %u from %s port %d failed: %s",
        # Curl_strerror of the socket's errno), as glibc and musl spell EHOSTUNREACH
        (
            "* connect to 10.96.0.10 port 8000 from 10.244.0.12 port 40102 failed: No route to"
            " host\n",
            "No route to host",
            "no route to host",
        ),
        (
            "* connect to 10.96.0.10 port 8000 from 10.244.0.12 port 40102 failed: Host is"
            " unreachable\n",
            "Host is unreachable",
            "host is unreachable",
        ),
        # older curls (lib/connect.c: "Immediate connect fail for %s: %s")
        (
            "* Immediate connect fail for 10.96.0.10: Network is unreachable\n",
            "Network is unreachable",
            "network is unreachable",
        ),
        ("", "", "failed to connect"),  # curl did not say why
    ],
)
def test_other_causes_of_exit_7_are_not_refused(stderr: str, reason: str, outcome: str) -> None:
    text = stderr + "curl: (7) Failed to connect to 10.96.0.10 port 8000: Couldn't connect\n"
    result = parse_curl_output("http://x/", "c", 7, b"", text.encode())
    assert (result.connect_error, result.outcome) == (reason, outcome)
    assert not result.refused and not result.reset
