"""The capture script that runs in the ephemeral container, run for real: bash and tcpdump in
a pod-like network namespace, a plaintext HTTP request from a second namespace, the marker
datagram and the stop line over stdin, the pcap over stdout.

Needs root, ip(8), bash, tcpdump and curl (skipped otherwise); makes two network namespaces
joined by a veth pair and deletes them afterwards. Traffic stays inside those namespaces.
"""

from __future__ import annotations

import os
import secrets
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from pytest_meshconform.backends.capture import capture_filter, is_pcap
from pytest_meshconform.backends.kube.execproto import capture_argv
from pytest_meshconform.evidence.wire import analyze_pcap

TOOLS = ("ip", "bash", "tcpdump", "curl")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(tool) is None for tool in TOOLS),
    reason="needs root and ip, bash, tcpdump, curl",
)
CLIENT_IP, SERVER_IP = "10.250.7.1", "10.250.7.2"


@dataclass
class Pods:
    client: str
    server: str


def run(argv: list[str], **kwargs: object) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=20, **kwargs)  # type: ignore[call-overload]


@pytest.fixture
def pods() -> Iterator[Pods]:
    tag = f"mccap{secrets.token_hex(2)}"
    pods = Pods(client=f"{tag}-c", server=f"{tag}-s")
    made: list[str] = []
    try:
        for name in (pods.client, pods.server):
            run(["ip", "netns", "add", name])
            made.append(name)
        run(["ip", "link", "add", f"{tag}a", "type", "veth", "peer", "name", f"{tag}b"])
        for link, netns, ip in (
            (f"{tag}a", pods.client, CLIENT_IP),
            (f"{tag}b", pods.server, SERVER_IP),
        ):
            run(["ip", "link", "set", link, "netns", netns])
            run(["ip", "-n", netns, "link", "set", link, "name", "eth0"])
            run(["ip", "-n", netns, "addr", "add", f"{ip}/24", "dev", "eth0"])
            run(["ip", "-n", netns, "link", "set", "eth0", "up"])
            run(["ip", "-n", netns, "link", "set", "lo", "up"])
        yield pods
    finally:
        for name in made:
            subprocess.run(
                ["ip", "netns", "del", name], capture_output=True, timeout=20, check=False
            )


def read_until(
    proc: subprocess.Popen[bytes], stream: str, done: Callable[[bytes], bool], timeout: float
) -> bytes:
    """Read ``proc.<stream>`` until ``done(data)`` or the deadline (then fail)."""
    pipe = getattr(proc, stream)
    data = b""
    deadline = time.monotonic() + timeout
    while not done(data):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out reading {stream}: {data[-300:]!r}"
        ready, _, _ = select.select([pipe], [], [], remaining)
        if ready:
            chunk = os.read(pipe.fileno(), 65536)
            if not chunk:
                break
            data += chunk
    return data


@pytest.fixture
def http_server(pods: Pods) -> Iterator[None]:
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            pods.server,
            sys.executable,
            "-u",
            "-m",
            "http.server",
            "8080",
            "--bind",
            SERVER_IP,
            "--directory",
            "/nonexistent-meshconform",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        read_until(server, "stdout", lambda data: b"Serving HTTP" in data, 10)
        yield
    finally:
        server.kill()
        server.wait(timeout=10)
        assert server.stdout is not None
        server.stdout.close()


def start_capture(pods: Pods, port: int | None) -> subprocess.Popen[bytes]:
    argv = capture_argv(capture_filter(port, CLIENT_IP), CLIENT_IP)
    return subprocess.Popen(
        ["ip", "netns", "exec", pods.server, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_script_records_until_the_marker_then_stops(pods: Pods, http_server: None) -> None:
    capture = start_capture(pods, 8080)
    assert capture.stdin is not None
    try:
        stderr = read_until(capture, "stderr", lambda data: b"listening on eth0" in data, 10)
        curl = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                pods.client,
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-m",
                "5",
                f"http://{SERVER_IP}:8080/headers",
            ],
            capture_output=True,
            timeout=20,
            check=False,
        )
        assert curl.stdout == b"404"  # http.server has no /headers: a response all the same
        token = f"meshconform-end-{secrets.token_hex(8)}".encode()
        capture.stdin.write(token + b"\n")
        capture.stdin.flush()
        pcap = read_until(capture, "stdout", lambda data: token in data, 10)
        capture.stdin.write(b"stop\n")
        capture.stdin.close()
        pcap += read_until(capture, "stdout", lambda data: False, 10)
        assert capture.wait(timeout=10) == 0
        assert capture.stderr is not None
        stderr += capture.stderr.read()
    finally:
        capture.kill()
        capture.wait(timeout=10)
        for pipe in (capture.stdout, capture.stderr):
            if pipe is not None:
                pipe.close()
    assert is_pcap(pcap)
    parsed = analyze_pcap(pcap)
    assert parsed.link_type == "EN10MB"  # tcpdump -i eth0 on a veth: Ethernet
    assert parsed.non_tcp_packet_count == 1  # the marker datagram
    [flow] = parsed.flows
    assert flow.client[0] == CLIENT_IP and flow.server == (SERVER_IP, 8080)
    assert [(r.method, r.target) for r in flow.http_requests] == [("GET", "/headers")]
    assert [r.status for r in flow.http_responses] == [404]
    assert b"0 packets dropped by kernel" in stderr


def test_script_stops_when_the_client_vanishes(pods: Pods) -> None:
    capture = start_capture(pods, None)
    assert capture.stdin is not None
    try:
        read_until(capture, "stderr", lambda data: b"listening on eth0" in data, 10)
        capture.stdin.close()  # EOF: the exec stream went away
        assert capture.wait(timeout=10) == 0
        assert capture.stdout is not None
        assert is_pcap(capture.stdout.read())
    finally:
        capture.kill()
        capture.wait(timeout=10)
        for pipe in (capture.stdout, capture.stderr):
            if pipe is not None:
                pipe.close()
