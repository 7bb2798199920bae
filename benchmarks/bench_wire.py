"""How fast does wire.analyze_pcap read a busy capture, next to tshark on the same file?

Builds a pcap of many interleaved TCP flows (TLS 1.3 and 1.2 handshakes with Istio's SNI and
ALPN followed by application data, plaintext HTTP keep-alive exchanges, plaintext answered by a
reset, flows whose SYN was not captured, some UDP), written with dpkt, then times analyze_pcap
(best of N) and, when tshark is installed, tshark's ClientHello SNI extraction and its TCP
conversation table on the same file.

    .venv/bin/python benchmarks/bench_wire.py [--packets N] [--repeat N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import random
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dpkt

from pytest_meshconform.evidence.wire import Capture, analyze_pcap

# Real hellos are made the way the tests make them (tests/wire_helpers.py), not a second way.
_TESTS = str(Path(__file__).resolve().parents[1] / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
from wire_helpers import (  # noqa: E402
    ACK,
    FIN,
    ISTIO_ALPN,
    PSH,
    RST,
    SYN,
    client_context,
    make_certificate,
    server_context,
    tls_first_flights,
)

MSS = 1448
MAC_A, MAC_B = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"


def _tls_flights(directory: Path, services: int) -> list[tuple[bytes, bytes]]:
    """Real first flights (ClientHello; ServerHello...) from OpenSSL over memory BIOs, for a
    few services, alternating TLS 1.3 and TLS 1.2."""
    cert, key = make_certificate(directory)
    server = server_context(cert, key, ["istio-http/1.1", "http/1.1"])
    flights = []
    for index in range(services):
        maximum = ssl.TLSVersion.TLSv1_3 if index % 2 else ssl.TLSVersion.TLSv1_2
        sni = f"outbound_.8000_._.svc{index}.foo.svc.cluster.local"
        flights.append(tls_first_flights(client_context(ISTIO_ALPN, maximum), server, sni))
    return flights


class _FlowWriter:
    """Ethernet/IPv4/TCP packets of one flow, built with dpkt."""

    def __init__(self, client: tuple[bytes, int], server: tuple[bytes, int], isn: int) -> None:
        self.client, self.server = client, server
        self.seq = {True: isn, False: (isn * 7919) & 0xFFFFFFFF}
        self.frames: list[bytes] = []

    def _packet(self, from_client: bool, flags: int, payload: bytes = b"") -> None:
        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        segment = dpkt.tcp.TCP(
            sport=src[1],
            dport=dst[1],
            seq=self.seq[from_client],
            ack=self.seq[not from_client],
            flags=flags,
            win=65535,
            data=payload,
        )
        packet = dpkt.ip.IP(src=src[0], dst=dst[0], p=6, ttl=64, data=segment)
        self.frames.append(
            bytes(dpkt.ethernet.Ethernet(src=MAC_A, dst=MAC_B, type=0x0800, data=packet))
        )
        self.seq[from_client] = (self.seq[from_client] + len(payload)) & 0xFFFFFFFF
        if flags & (SYN | FIN):
            self.seq[from_client] = (self.seq[from_client] + 1) & 0xFFFFFFFF

    def handshake(self) -> None:
        self._packet(True, SYN)
        self._packet(False, SYN | ACK)
        self._packet(True, ACK)

    def send(self, from_client: bool, data: bytes) -> None:
        for start in range(0, len(data), MSS):
            self._packet(from_client, PSH | ACK, data[start : start + MSS])
        self._packet(not from_client, ACK)

    def close(self) -> None:
        self._packet(True, FIN | ACK)
        self._packet(False, FIN | ACK)
        self._packet(True, ACK)

    def reset(self) -> None:
        self._packet(False, RST | ACK)


def _flow_frames(
    number: int, rng: random.Random, flights: list[tuple[bytes, bytes]]
) -> list[bytes]:
    client = (bytes([10, 0, (number >> 8) & 0xFF, number & 0xFF]), 30000 + number % 30000)
    kind = number % 10
    server_port = 15006 if kind < 6 else 8000
    server = (bytes([10, 1, 0, 1 + number % 50]), server_port)
    flow = _FlowWriter(client, server, rng.getrandbits(32))
    if number % 17:  # every 17th flow: the capture missed the handshake
        flow.handshake()
    if kind < 6:  # mTLS between sidecars: handshake, then application data records
        hello, answer = flights[number % len(flights)]
        flow.send(True, hello)
        flow.send(False, answer)
        for _ in range(3):
            flow.send(True, b"\x17\x03\x03\x01\x00" + rng.randbytes(256))
            flow.send(False, b"\x17\x03\x03\x0b\xb8" + rng.randbytes(3000))
        flow.close()
    elif kind < 9:  # plaintext HTTP keep-alive (PERMISSIVE)
        for request in range(3):
            body = rng.randbytes(rng.choice((0, 200, 5000)))
            flow.send(
                True,
                f"GET /status/{request} HTTP/1.1\r\nHost: httpbin.foo:8000\r\n"
                f"User-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n".encode(),
            )
            flow.send(
                False,
                f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n".encode()
                + body,
            )
        flow.close()
    else:  # plaintext to a STRICT sidecar: reset, no response
        flow.send(True, b"GET /headers HTTP/1.1\r\nHost: httpbin.foo:8000\r\n\r\n")
        flow.reset()
    return flow.frames


def _udp_frame(rng: random.Random) -> bytes:
    datagram = dpkt.udp.UDP(sport=53, dport=40000, data=rng.randbytes(80))
    packet = dpkt.ip.IP(src=b"\x0a\x60\x00\x0a", dst=b"\x0a\x00\x00\x01", p=17, data=datagram)
    return bytes(dpkt.ethernet.Ethernet(src=MAC_A, dst=MAC_B, type=0x0800, data=packet))


def _interleave(batches: list[list[bytes]]) -> Iterator[bytes]:
    """Round-robin over concurrent flows, as a capture of a busy pod would show them."""
    position = 0
    while any(position < len(frames) for frames in batches):
        for frames in batches:
            if position < len(frames):
                yield frames[position]
        position += 1


def build_capture(path: Path, packets: int, seed: int = 1) -> int:
    """Write a pcap of at least ``packets`` packets to ``path``; return how many it holds."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as scratch:
        flights = _tls_flights(Path(scratch), services=8)
    written = 0
    number = 0
    with path.open("wb") as file:
        writer = dpkt.pcap.Writer(file, snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB)
        timestamp = 1_700_000_000.0
        while written < packets:
            batch = [_flow_frames(number + index, rng, flights) for index in range(25)]
            number += 25
            for frame in _interleave(batch):
                writer.writepkt(frame, ts=timestamp)
                timestamp += 0.0001
                written += 1
                if written % 500 == 0:
                    writer.writepkt(_udp_frame(rng), ts=timestamp)
                    written += 1
    return written


def best_of(repeat: int, run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    parser.add_argument("--keep", type=Path, help="write the capture here and keep it")
    arguments = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        path = (arguments.keep or Path(scratch)) / "bench_wire.pcap"
        started = time.perf_counter()
        written = build_capture(path, arguments.packets)
        megabytes = path.stat().st_size / 1e6
        print(
            f"capture: {written} packets, {megabytes:.1f} MB, built in "
            f"{time.perf_counter() - started:.1f} s ({path})"
        )

        latest: list[Capture] = []

        def analyze() -> None:
            latest[:] = [analyze_pcap(path)]  # keep one result alive, as a caller would

        seconds = best_of(arguments.repeat, analyze)
        capture = latest[0]
        hellos = sum(1 for f in capture.tls_flows if f.tls and f.tls.client_hello)
        print(
            f"analyze_pcap: {seconds:.3f} s (best of {arguments.repeat}) = "
            f"{written / seconds:,.0f} packets/s, {megabytes / seconds:.1f} MB/s; "
            f"{len(capture.flows)} flows, {hellos} ClientHellos, "
            f"{sum(len(f.http_requests) for f in capture.flows)} HTTP requests"
        )

        tshark = shutil.which("tshark")
        if tshark is None:
            print("tshark: not installed, no comparison")
            return
        commands = {
            "tshark SNI (-Y tls.handshake.type==1 -e ...server_name)": [
                tshark,
                "-r",
                str(path),
                "-Y",
                "tls.handshake.type==1",
                "-T",
                "fields",
                "-e",
                "tls.handshake.extensions_server_name",
            ],
            "tshark conversations (-q -z conv,tcp)": [
                tshark,
                "-r",
                str(path),
                "-q",
                "-z",
                "conv,tcp",
            ],
        }
        for label, command in commands.items():
            outputs: list[bytes] = []

            def run(command: list[str] = command, outputs: list[bytes] = outputs) -> None:
                outputs.append(
                    subprocess.run(command, check=True, capture_output=True, timeout=3600).stdout
                )

            tshark_seconds = best_of(arguments.repeat, run)
            extra = ""
            if "SNI" in label:
                tshark_hellos = len(outputs[-1].splitlines())
                extra = f"; {tshark_hellos} ClientHellos (analyze_pcap: {hellos})"
            print(
                f"{label}: {tshark_seconds:.3f} s = {written / tshark_seconds:,.0f} packets/s"
                f"{extra}; analyze_pcap is {tshark_seconds / seconds:.1f}x faster"
            )


if __name__ == "__main__":
    main()
