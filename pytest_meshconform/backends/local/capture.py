"""Packet capture in a local pod: tcpdump on the pod's eth0 (never loopback) for a block.

The capture filter, the end-of-capture marker's port and the pcap's name are the kube
backend's too (`backends/capture.py`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator

from pytest_meshconform.backends.capture import MARKER_PORT, capture_filter, pcap_file_name
from pytest_meshconform.backends.local import host
from pytest_meshconform.backends.local.lifecycle import LocalLifecycle
from pytest_meshconform.istio.ztunnel import HBONE_PORT
from pytest_meshconform.mesh import MeshError, PcapRecording, Workload
from pytest_meshconform.waiting import WaitTimeout, poll

__all__ = ["LocalCapture"]


CAPTURE_BUFFER_KIB = 16384  # tcpdump -B: the capture's kernel buffer, in KiB


class LocalCapture(LocalLifecycle):
    """The Mesh protocol's `capture` on the local mesh."""

    @contextlib.contextmanager
    def capture(self, workload: Workload, port: int | None = None) -> Iterator[PcapRecording]:
        """tcpdump on the pod's eth0 (never loopback) for the duration of the block; at an
        ambient pod, `port`'s flows and its HBONE flows (port 15008)."""
        runtime = self._runtime(workload)
        if port is not None and (isinstance(port, bool) or not 1 <= int(port) <= 65535):
            raise MeshError(f"capture port must be in 1..65535, got {port!r}")
        recording = PcapRecording(workload=workload, port=port)
        pcap_dir = self.run_dir / "captures"
        pcap_dir.mkdir(mode=host.PRIVATE_DIR_MODE, exist_ok=True)
        host.private_directory(pcap_dir)
        path = pcap_dir / pcap_file_name(workload.key)
        # Made 0600 before tcpdump opens it (tcpdump keeps an existing file's mode): a live
        # capture's plaintext payloads are root's alone.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, host.PRIVATE_FILE_MODE))
        marker = secrets.token_hex(8)
        peer = next(p.ip for p in self.topology.pods if p.ip != runtime.pod.ip)
        # an ambient pod's port is reached over HBONE too: its tunnels are recorded with it
        flt = capture_filter(port, peer, tunnel_port=HBONE_PORT if workload.ambient else None)
        argv = ["setpriv", "--pdeathsig=KILL", "tcpdump", "-i", "eth0", "-U", "--immediate-mode"]
        # -B: a 16 MiB kernel buffer (libpcap's default is 2 MiB): on a starved CPU a burst
        # (a TLS probe's dozen handshakes) filled the default one and the kernel dropped packets,
        # which makes the capture incomplete (an error), not evidence
        argv += ["-B", str(CAPTURE_BUFFER_KIB), "-n", "-Z", "root", "-s", "0", "-w", str(path), flt]
        proc = self._popen(
            host.in_netns(runtime.netns, argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=self._env,
        )
        try:
            recording.tool_stderr = _wait_for_line(proc, b"listening on", 10.0)
            yield recording
            # A marker datagram to another pod proves tcpdump has written everything before it.
            self.exec(workload, ["bash", "-c", f"echo {marker} > /dev/udp/{peer}/{MARKER_PORT}"])
            _wait_until(
                lambda: path.exists() and marker.encode() in path.read_bytes(),
                5.0,
                f"tcpdump in {workload.key} to record the end-of-capture marker",
            )
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            recording.tool_stderr += err.decode(errors="replace")
        recording.pcap = path.read_bytes()
        recording.path = path


def _wait_for_line(proc: subprocess.Popen[bytes], needle: bytes, timeout: float) -> str:
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + timeout
    fd = proc.stderr.fileno()
    while needle not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            raise MeshError(
                f"tcpdump did not start listening: {seen.decode(errors='replace').strip()}"
            )
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                continue
            seen += chunk
    return seen.decode(errors="replace")


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """`waiting.poll` every 5 ms; a timeout is a MeshError naming `what`."""
    try:
        poll(lambda: True if condition() else None, timeout=timeout, interval=0.005, what=what)
    except WaitTimeout as timed_out:
        raise MeshError(f"timed out waiting for {timed_out}") from None
