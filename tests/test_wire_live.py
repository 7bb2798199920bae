"""Live captures made here with tcpdump (loopback, IPv4 and IPv6) of real TLS handshakes and
plaintext HTTP, read by pytest_meshconform.evidence.wire. Literal values come from what the
test configured (SNI, ALPN, versions, requests), never from the code under test."""

from __future__ import annotations

import os
import re
import selectors
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import tenacity
from wire_helpers import (
    ISTIO_ALPN,
    ISTIO_SNI,
    client_context,
    make_certificate,
    server_context,
)

from pytest_meshconform.evidence.http import HttpRequest, HttpResponse
from pytest_meshconform.evidence.pcap import CaptureError
from pytest_meshconform.evidence.tls import ClientHello, ServerHello
from pytest_meshconform.evidence.wire import Capture, Flow, analyze_pcap


@dataclass
class LiveExchange:
    client: tuple[str, int]
    server: tuple[str, int]
    tls_version: str | None = None  # from the client's SSLSocket.version()
    cipher: str | None = None  # from the client's SSLSocket.cipher()
    alpn: str | None = None  # from the client's SSLSocket.selected_alpn_protocol()


def _serve_once(
    listener: socket.socket, handle: Callable[[socket.socket], None]
) -> threading.Thread:
    def run() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(10)
            handle(connection)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _read_request(connection: socket.socket | ssl.SSLSocket) -> bytes:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def _read_response(connection: socket.socket | ssl.SSLSocket) -> bytes:
    received = b""
    while len(received) < len(PLAIN_RESPONSE):
        chunk = connection.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def _read_all(connection: socket.socket | ssl.SSLSocket) -> bytes:
    received = b""
    while chunk := connection.recv(4096):
        received += chunk
    return received


PLAIN_REQUEST = (
    b"GET /headers HTTP/1.1\r\nHost: httpbin.foo:8000\r\nUser-Agent: curl/8.5.0\r\n"
    b"Accept: */*\r\n\r\n"
)

PLAIN_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


class LiveScenarios:
    """Servers on loopback, each answering one connection, and the clients that call them."""

    def __init__(self, directory: Path) -> None:
        cert, key = make_certificate(directory)
        self.tls13_server = server_context(cert, key, ["istio-http/1.1", "http/1.1"])
        self.tls12_server = server_context(
            cert, key, ["istio-http/1.1", "http/1.1"], tls12_cipher="ECDHE-ECDSA-AES128-GCM-SHA256"
        )
        self.listeners: dict[str, socket.socket] = {}

    def listen(self, name: str, host: str) -> int:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.bind((host, 0))
        listener.listen(1)
        listener.settimeout(10)  # a scenario that goes wrong fails instead of hanging
        self.listeners[name] = listener
        return int(listener.getsockname()[1])

    def close(self) -> None:
        for listener in self.listeners.values():
            listener.close()

    def tls(self, name: str, maximum: ssl.TLSVersion) -> LiveExchange:
        listener = self.listeners[name]
        server = self.tls13_server if maximum is ssl.TLSVersion.TLSv1_3 else self.tls12_server

        def handle(connection: socket.socket) -> None:
            with server.wrap_socket(connection, server_side=True) as tls:
                _read_request(tls)
                tls.sendall(PLAIN_RESPONSE)
                _read_all(tls)  # until the client's close_notify
                tls.unwrap()  # answer it, so neither side leaves data unread (no RST)

        thread = _serve_once(listener, handle)
        client = client_context(ISTIO_ALPN, maximum)
        client.minimum_version = ssl.TLSVersion.TLSv1_2  # Istio: TLS 1.2 min
        host, port = listener.getsockname()[:2]
        with (
            socket.create_connection((host, port), timeout=10) as raw,
            client.wrap_socket(raw, server_hostname=ISTIO_SNI) as tls,
        ):
            cipher = tls.cipher()
            exchange = LiveExchange(
                client=tls.getsockname()[:2],
                server=(host, port),
                tls_version=tls.version(),
                cipher=None if cipher is None else cipher[0],
                alpn=tls.selected_alpn_protocol(),
            )
            tls.sendall(PLAIN_REQUEST)
            assert _read_response(tls) == PLAIN_RESPONSE
            tls.unwrap()  # close_notify both ways, then FIN both ways
        thread.join(timeout=10)
        return exchange

    def plaintext(self, name: str, reset: bool = False) -> LiveExchange:
        listener = self.listeners[name]

        def handle(connection: socket.socket) -> None:
            _read_request(connection)
            if reset:  # what a STRICT sidecar does to plaintext: abort the connection
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                connection.sendall(PLAIN_RESPONSE)
                _read_all(connection)

        thread = _serve_once(listener, handle)
        host, port = listener.getsockname()[:2]
        with socket.create_connection((host, port), timeout=10) as connection:
            exchange = LiveExchange(client=connection.getsockname()[:2], server=(host, port))
            connection.sendall(PLAIN_REQUEST)
            try:
                assert _read_response(connection) == PLAIN_RESPONSE
            except ConnectionResetError:
                assert reset
        thread.join(timeout=10)
        return exchange


def _ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def _wait_for_listening(process: subprocess.Popen[bytes], timeout: float) -> None:
    """tcpdump prints 'listening on' once the capture is active; packets sent before are lost."""
    assert process.stderr is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    seen = b""
    try:
        while b"listening on" not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or process.poll() is not None:
                raise RuntimeError(
                    f"tcpdump did not say 'listening on' within {timeout}s: {seen!r}"
                )
            if selector.select(remaining):
                chunk = os.read(process.stderr.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"tcpdump closed stderr before listening: {seen!r}")
                seen += chunk
    finally:
        selector.close()


def _open_flows(capture: Capture, exchanges: dict[str, LiveExchange]) -> str | None:
    """What is still missing from the capture, or None when every exchange's flow is there and
    closed (FIN both ways, or a RST)."""
    for name, exchange in exchanges.items():
        # by endpoint: the 127.0.0.1 and ::1 listeners may get the same port number
        flows = [flow for flow in capture.flows if flow.server == exchange.server]
        if len(flows) != 1:
            return f"{name}: {len(flows)} flows to {exchange.server}"
        flow = flows[0]
        if not (flow.rst_seen or (flow.client_fin and flow.server_fin)):
            return f"{name}: the flow to {exchange.server} has not closed: {flow}"
    return None


def _wait_for_closed_flows(pcap: Path, exchanges: dict[str, LiveExchange]) -> str | None:
    """Re-read the growing pcap until every flow has closed; the last problem if it never did."""

    def problem() -> str | None:
        try:
            return _open_flows(analyze_pcap(pcap), exchanges)
        except CaptureError as error:  # tcpdump has not written the file header yet
            return str(error)

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(5),
        wait=tenacity.wait_fixed(0.02),
        retry=tenacity.retry_if_result(lambda found: found is not None),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )
    result: str | None = retrying(problem)
    return result


def _capture_live_scenarios(
    tcpdump: str, directory: Path
) -> tuple[Path, dict[str, LiveExchange], str | None, int]:
    """Run every scenario under one tcpdump on lo; return the pcap, the exchanges, what is
    missing from the capture (None: nothing) and how many packets tcpdump says it dropped."""
    directory.mkdir()
    scenarios = LiveScenarios(directory)
    plan = [("tls13", "127.0.0.1"), ("tls12", "127.0.0.1"), ("plain", "127.0.0.1")]
    plan.append(("reset", "127.0.0.1"))
    if _ipv6_loopback_works():
        plan += [("tls13_v6", "::1"), ("plain_v6", "::1")]
    ports = [scenarios.listen(name, host) for name, host in plan]
    pcap = directory / "loopback.pcap"
    port_filter = " or ".join(f"port {port}" for port in ports)
    # A snap length far above these packets' sizes (< 2 KB) but far below lo's 64 KB MTU:
    # libpcap sizes its ring slots by it, so the ring holds more packets. Capture.truncated
    # would show a cut packet.
    command = [tcpdump, "-U", "--immediate-mode", "-s", "16384", "-B", "16384", "-i", "lo"]
    process = subprocess.Popen(
        [*command, "-w", str(pcap), f"tcp and ({port_filter})"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_listening(process, timeout=10)
        exchanges = {
            "tls13": scenarios.tls("tls13", ssl.TLSVersion.TLSv1_3),
            "tls12": scenarios.tls("tls12", ssl.TLSVersion.TLSv1_2),
            "plain": scenarios.plaintext("plain"),
            "reset": scenarios.plaintext("reset", reset=True),
        }
        if "tls13_v6" in scenarios.listeners:
            exchanges["tls13_v6"] = scenarios.tls("tls13_v6", ssl.TLSVersion.TLSv1_3)
            exchanges["plain_v6"] = scenarios.plaintext("plain_v6")
        missing = _wait_for_closed_flows(pcap, exchanges)
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.stderr is not None
        statistics = process.stderr.read()
        process.stderr.close()
        scenarios.close()
    dropped = re.search(rb"(\d+) packets? dropped by kernel", statistics)
    return pcap, exchanges, missing, int(dropped.group(1)) if dropped else 0


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Capture, dict[str, LiveExchange]]:
    """One tcpdump on lo for all live scenarios: TLS 1.3 and 1.2 with Istio's SNI and ALPN,
    plaintext HTTP, and plaintext answered by a reset; over 127.0.0.1 and ::1.

    When tcpdump itself reports packets dropped by the kernel (a busy machine), the capture is
    incomplete evidence, not a result: it is taken again, at most three times."""
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        pytest.skip("tcpdump is not installed")
    if os.geteuid() != 0:
        pytest.skip("capturing on the loopback interface needs root")
    directory = tmp_path_factory.mktemp("live-capture")
    for attempt in range(3):
        pcap, exchanges, missing, dropped = _capture_live_scenarios(
            tcpdump, directory / f"attempt-{attempt}"
        )
        if not dropped:
            break
    else:
        pytest.fail(f"tcpdump dropped {dropped} packets on each of 3 attempts; last: {pcap}")
    assert missing is None, f"{missing} (capture: {pcap})"
    return analyze_pcap(pcap), exchanges


def live_flow(
    live: tuple[Capture, dict[str, LiveExchange]], name: str
) -> tuple[Flow, LiveExchange]:
    capture, exchanges = live
    if name not in exchanges:
        pytest.skip(f"{name}: IPv6 loopback (::1) is not available")
    exchange = exchanges[name]
    (flow,) = (flow for flow in capture.flows if flow.server == exchange.server)
    assert (flow.client, flow.server, flow.direction_from) == (
        exchange.client,
        exchange.server,
        "syn",
    )
    return flow, exchange


def test_live_capture_overall(live: tuple[Capture, dict[str, LiveExchange]]) -> None:
    capture, exchanges = live
    assert capture.link_type == "EN10MB"  # tcpdump -i lo on Linux
    assert capture.truncated is False
    assert capture.non_tcp_packet_count == 0  # the filter kept TCP only
    assert len(capture.flows) == len(exchanges)
    assert {flow.server for flow in capture.tls_flows} == {
        exchanges[name].server for name in exchanges if name.startswith("tls")
    }
    assert {flow.server for flow in capture.plaintext_flows} == {
        exchanges[name].server for name in exchanges if not name.startswith("tls")
    }


@pytest.mark.parametrize("name", ["tls13", "tls13_v6"])
def test_live_tls13_handshake_with_istio_hello(
    live: tuple[Capture, dict[str, LiveExchange]], name: str
) -> None:
    flow, exchange = live_flow(live, name)
    assert exchange.tls_version == "TLSv1.3"
    assert flow.tls is not None and flow.tls.problem is None
    assert flow.tls.client_hello == ClientHello(
        legacy_version="TLS1.2",
        sni="outbound_.8000_._.httpbin.foo.svc.cluster.local",
        alpn=("istio-http/1.1", "istio", "http/1.1"),
        supported_versions=("TLS1.3", "TLS1.2"),
    )
    server_hello = flow.tls.server_hello
    assert server_hello is not None
    assert (server_hello.version, server_hello.legacy_version) == ("TLS1.3", "TLS1.2")
    # OpenSSL's TLS 1.3 suite names are the IANA names.
    assert server_hello.cipher_suite_name == exchange.cipher
    # The server did choose a protocol, but TLS 1.3 encrypts that choice.
    assert exchange.alpn == "istio-http/1.1" and server_hello.alpn is None
    assert flow.http_requests == () and flow not in live[0].plaintext_flows
    assert b"GET /headers" not in flow.client_stream
    assert flow.client_fin and flow.server_fin and not flow.rst_seen


def test_live_tls12_handshake_shows_the_chosen_alpn(
    live: tuple[Capture, dict[str, LiveExchange]],
) -> None:
    flow, exchange = live_flow(live, "tls12")
    assert exchange.tls_version == "TLSv1.2"
    assert flow.tls is not None
    assert flow.tls.client_hello == ClientHello(
        legacy_version="TLS1.2",
        sni="outbound_.8000_._.httpbin.foo.svc.cluster.local",
        alpn=("istio-http/1.1", "istio", "http/1.1"),
        supported_versions=(),  # OpenSSL capped at 1.2 sends no supported_versions
    )
    assert flow.tls.server_hello == ServerHello(
        version="TLS1.2",
        legacy_version="TLS1.2",
        cipher_suite=0xC02B,  # the one suite the server allowed: ECDHE-ECDSA-AES128-GCM-SHA256
        cipher_suite_name="TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        alpn="istio-http/1.1",
    )
    assert exchange.alpn == "istio-http/1.1"


@pytest.mark.parametrize("name", ["plain", "plain_v6"])
def test_live_plaintext_http(live: tuple[Capture, dict[str, LiveExchange]], name: str) -> None:
    flow, _ = live_flow(live, name)
    assert flow.tls is None and flow in live[0].plaintext_flows
    assert flow.http_requests == (
        HttpRequest(
            method="GET",
            target="/headers",
            version="HTTP/1.1",
            host="httpbin.foo:8000",
            headers=(
                ("Host", "httpbin.foo:8000"),
                ("User-Agent", "curl/8.5.0"),
                ("Accept", "*/*"),
            ),
        ),
    )
    assert flow.http_responses == (
        HttpResponse(
            version="HTTP/1.1",
            status=200,
            reason="OK",
            headers=(("Content-Length", "2"), ("Connection", "close")),
        ),
    )
    assert (flow.client_bytes, flow.server_bytes) == (len(PLAIN_REQUEST), len(PLAIN_RESPONSE))
    assert flow.client_stream == PLAIN_REQUEST and flow.server_stream == PLAIN_RESPONSE


def test_live_plaintext_reset_has_no_response(
    live: tuple[Capture, dict[str, LiveExchange]],
) -> None:
    flow, _ = live_flow(live, "reset")
    assert [request.target for request in flow.http_requests] == ["/headers"]
    assert flow.http_responses == ()
    assert flow.server_rst and flow.rst_seen and flow.server_bytes == 0
