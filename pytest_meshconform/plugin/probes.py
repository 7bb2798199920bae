"""`tls_probe` -> `TlsProber`: offer chosen TLS handshakes to a workload's pod port and read each
answer off the wire.

From a client pod without a sidecar (so the ClientHello is curl's own), each probe is one curl
with the probe's TLS options, from a source port of its own, to the server's pod IP and first
container port (an ambient server's HBONE port, 15008), all under one capture at the server's
pod: the ServerHello says what the server
accepted even when it then drops the connection for want of a mesh certificate. One shell runs
every probe (one exec: on Kubernetes each exec is an API round trip). An attempt curl could not
make, or whose ClientHello is not on the wire, proves nothing: the test fails naming it.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

import pytest

from pytest_meshconform.istio.ztunnel import HBONE_PORT
from pytest_meshconform.mesh import Mesh
from pytest_meshconform.plugin.capture import Capturer, CaptureResult
from pytest_meshconform.plugin.workloads import WorkloadHandle

if TYPE_CHECKING:
    from pytest_meshconform.evidence.wire import Flow

__all__ = ["Handshake", "TlsProber", "read_probe_outputs", "tls_probe"]

CURL_COULD_NOT_TRY: Final = {
    45: "could not bind its source port",
    59: "could not use the cipher list",
}
"""curl exits that mean the probe was never offered as asked."""

# Client source ports: one per probe of the run, so each flow on the wire is known by its port
# (and no probe reuses a port an earlier one left in TIME_WAIT).
_SOURCE_PORTS = iter(range(20000 + secrets.randbelow(9000), 65000))


@final
@dataclass(frozen=True, slots=True)
class Handshake:
    """One probe: curl's exit and what it said, and the handshake as the server's pod saw it."""

    label: str
    curl_tls: tuple[str, ...]  # curl's TLS options for this attempt
    source_port: int
    exit_code: int
    stderr: str
    flow: Flow | None  # the probe's TCP flow at the server's pod
    capture: CaptureResult  # the capture every probe of the call shares (its pcap)

    @property
    def offered(self) -> bool:
        """Whether the probe's ClientHello is on the wire."""
        return (
            self.flow is not None
            and self.flow.tls is not None
            and (self.flow.tls.client_hello is not None)
        )

    @property
    def server_hello(self) -> tuple[str, int] | None:
        """(version, cipher suite code) of the server's answer; None when it sent none."""
        tls = self.flow.tls if self.flow is not None else None
        if tls is None or tls.server_hello is None:
            return None
        return tls.server_hello.version, tls.server_hello.cipher_suite

    def __str__(self) -> str:
        answer = self.server_hello
        said = "no ServerHello" if answer is None else f"ServerHello {answer[0]} 0x{answer[1]:04X}"
        return f"{self.label}: curl exit {self.exit_code} ({self.stderr.strip()}); {said}"


@final
class TlsProber:
    """What `tls_probe` returns: ``tls_probe(client, server, {label: curl TLS options})`` ->
    one `Handshake` per probe, in order (``{"TLS1.0": ["--tlsv1.0", "--tls-max", "1.0"]}``)."""

    def __init__(self, mesh: Mesh, capture: Capturer) -> None:
        self._mesh = mesh
        self._capture = capture

    def __repr__(self) -> str:
        return f"<TlsProber on the {self._mesh.backend} mesh>"

    def url(self, server: WorkloadHandle) -> str:
        """The server's pod port as the probes reach it: ``https://<pod IP>:<port>/headers``;
        at an ambient workload its ztunnel's HBONE port (15008), where it speaks mTLS."""
        port = HBONE_PORT if server.workload.ambient else server.workload.container_ports[0]
        return f"https://{self._mesh.pod_ip(server.workload)}:{port}/headers"

    def __call__(
        self,
        client: WorkloadHandle,
        server: WorkloadHandle,
        probes: Mapping[str, Sequence[str]],
    ) -> tuple[Handshake, ...]:
        __tracebackhide__ = True
        url = self.url(server)
        ports = [next(_SOURCE_PORTS) for _ in probes]
        lines = []
        for number, (options, port) in enumerate(zip(probes.values(), ports, strict=True)):
            argv = ["curl", "-sS", "-k", "-o", "/dev/null", "--connect-timeout", "5", "-m", "10"]
            argv += ["--local-port", str(port), *options, url]
            lines.append(f'{shlex.join(argv)} 2>&1; echo "@@ {number} $?"')
        with self._capture(server) as cap:
            result = client.exec(["sh", "-c", "\n".join(lines)], timeout=10 + 11 * len(probes))
        outputs = read_probe_outputs(result.stdout.decode(errors="replace"))
        assert len(outputs) == len(probes), f"the probes did not all run in {client}: {result}"
        client_ip = self._mesh.pod_ip(client.workload)
        by_port = {f.client[1]: f for f in cap.flows if f.client[0] == client_ip}
        seen = tuple(
            Handshake(label, tuple(options), port, *outputs[number], by_port.get(port), cap)
            for number, ((label, options), port) in enumerate(
                zip(probes.items(), ports, strict=True)
            )
        )
        for handshake in seen:
            # No false greens: an attempt the client could not even offer proves nothing.
            assert handshake.exit_code not in CURL_COULD_NOT_TRY, (
                f"curl {CURL_COULD_NOT_TRY.get(handshake.exit_code)}: {handshake}"
            )
            assert handshake.offered, (
                f"no ClientHello from {client} on the wire for {handshake} ({cap})"
            )
        return seen


def read_probe_outputs(stdout: str) -> dict[int, tuple[int, str]]:
    """Probe number -> (curl's exit code, what it printed), from the shell's `@@ <n> <exit>`
    markers."""
    outputs: dict[int, tuple[int, str]] = {}
    said: list[str] = []
    for line in stdout.splitlines():
        if (marker := re.fullmatch(r"@@ (\d+) (\d+)", line)) is not None:
            outputs[int(marker[1])] = (int(marker[2]), "\n".join(said))
            said = []
        else:
            said.append(line)
    return outputs


@pytest.fixture
def tls_probe(mesh: Mesh, capture: Capturer) -> TlsProber:
    """`tls_probe(client, server, {label: curl TLS options})`: each handshake as the server's
    pod saw it."""
    return TlsProber(mesh, capture)
