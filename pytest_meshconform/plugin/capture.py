"""`capture` -> `Capturer`: `with capture(workload, port=None) as cap:` records the pod's wire
traffic for the block and parses it (`CaptureResult`: flows, TLS hellos, plaintext).

A capture that saw no traffic of its block raises `EmptyCaptureError`: an absence assertion
("no plaintext") needs a capture that saw the flow at all, and tcpdump's dropped packets make
the evidence incomplete, an error too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, final

import pytest

from pytest_meshconform.mesh import Mesh, MeshError, Workload
from pytest_meshconform.plugin.session import evidence_window
from pytest_meshconform.plugin.workloads import WorkloadHandle
from pytest_meshconform.report.exhibits import Evidence

if TYPE_CHECKING:
    from pytest_meshconform.evidence.wire import Capture, Flow

__all__ = [
    "CaptureResult",
    "Capturer",
    "EmptyCaptureError",
    "capture",
    "flow_line",
    "is_block_traffic",
    "service_port_hint",
]


class EmptyCaptureError(AssertionError):
    """A capture saw no packet of the flow it was meant to observe: never a pass."""


@final
@dataclass
class CaptureResult:
    """What `with capture(workload) as cap:` binds; filled when the block ends: the parsed
    capture (`flows`, `tls_flows`, `plaintext_flows`, `flows_from(client)`) and the pcap."""

    workload: Workload
    port: int | None
    capture: Capture | None = None
    pcap_path: Path | None = None
    names: Mapping[str, str] = field(default_factory=dict)  # pod IP -> workload key

    def _parsed(self) -> Capture:
        if self.capture is None:
            raise RuntimeError("the capture is read when its `with` block ends")
        return self.capture

    @property
    def flows(self) -> tuple[Flow, ...]:
        return self._parsed().flows

    @property
    def tls_flows(self) -> tuple[Flow, ...]:
        return self._parsed().tls_flows

    @property
    def plaintext_flows(self) -> tuple[Flow, ...]:
        return self._parsed().plaintext_flows

    def flows_from(self, client: WorkloadHandle | str) -> tuple[Flow, ...]:
        """Flows whose client address is `client`'s pod IP (local mesh) or the given IP."""
        ip = client if isinstance(client, str) else _pod_ip(client)
        return tuple(f for f in self.flows if f.client[0] == ip)

    def flow_lines(self) -> list[str]:
        """One line per flow: client -> server:port, TLS version, SNI, ALPN, plaintext bytes."""
        if self.capture is None:
            return []
        return [flow_line(flow, self.names) for flow in self.capture.flows]

    def __str__(self) -> str:
        where = f"capture at {self.workload.key} port {self.port or 'any'}"
        if self.capture is None:
            return f"{where} (still recording)"
        flows = self.capture.flows
        head = f"{where}: {len(flows)} flow{'' if len(flows) == 1 else 's'} ({self.pcap_path})"
        return "\n".join([head, *(f"  {line}" for line in self.flow_lines())])

    __repr__ = __str__  # `assert ..., cap` prints the repr: the flows, not a dataclass dump


def flow_line(flow: Flow, names: Mapping[str, str] | None = None) -> str:
    """`sleep.foo:41234 -> httpbin.foo:8080 TLSv1.3 SNI=outbound_.8000_._.httpbin... ALPN=
    istio-http/1.1 plaintext 0 B`: what one TCP flow of a capture was, for a person."""
    names = names or {}

    def end(address: tuple[str, int]) -> str:
        return f"{names.get(address[0], address[0])}:{address[1]}"

    parts = [f"{end(flow.client)} -> {end(flow.server)}"]
    tls = flow.tls
    if tls is not None:
        hello = tls.client_hello
        server_hello = tls.server_hello
        alpn = server_hello.alpn if server_hello and server_hello.alpn else None
        offered = ",".join(hello.alpn) if hello and hello.alpn else "-"
        parts.append(tls.version or "TLS (no ServerHello)")
        parts.append(f"SNI={hello.sni if hello and hello.sni else '-'}")
        parts.append(f"ALPN={alpn}" if alpn else f"ALPN offered={offered}")
        parts.append("plaintext 0 B")
    else:
        parts.append(f"plaintext {flow.client_bytes + flow.server_bytes} B")
        if flow.http_requests:
            first = flow.http_requests[0]
            parts.append(f"{first.method} {first.target}")
        if flow.http_responses:
            parts.append(f"-> {flow.http_responses[0].status}")
    if flow.rst_seen:
        parts.append("RST")
    return " ".join(parts)


def _pod_ip(handle: WorkloadHandle) -> str:
    return handle.mesh.pod_ip(handle.workload)


def _dropped_packets(tcpdump_stderr: str) -> int:
    """tcpdump's closing count of packets the kernel dropped (0 when it printed none)."""
    found = re.search(r"(\d+) packets? dropped by kernel", tcpdump_stderr)
    return int(found.group(1)) if found else 0


def service_port_hint(mesh: Mesh, workload: Workload, port: int) -> str:
    """When `port` is a Service port of `workload`'s Service, the container port to use."""
    if port in workload.container_ports:
        return ""
    namespace = mesh.logical_namespace(workload.namespace)
    for service in mesh.services():
        if (
            service.port == port
            and mesh.logical_namespace(service.namespace) == namespace
            and service.target_port in workload.container_ports
        ):
            return (
                f". Port {port} is the port of Service {service.name}.{namespace}; the pod"
                f" listens on {service.target_port}: capture(..., port={service.target_port})"
            )
    return ""


@final
class Capturer:
    """What `capture` returns: `with capture(workload, port=None) as cap:` records the pod's
    wire traffic (not loopback) for the duration of the block -> `CaptureResult`.

    `port` defaults to the workload's first container port. A capture with no TCP flow (to
    `port`, when given) raises EmptyCaptureError: absence assertions need a capture that saw
    the traffic at all. `allow_empty=True` opts out (for tests that expect silence).
    """

    def __init__(self, mesh: Mesh, evidence: Evidence) -> None:
        self._mesh = mesh
        self._evidence = evidence

    def __repr__(self) -> str:
        return f"<Capturer on the {self._mesh.backend} mesh>"

    def _names(self) -> dict[str, str]:
        names = {}
        for w in self._mesh.workloads():
            with suppress(MeshError):
                names[self._mesh.pod_ip(w)] = w.key
        return names

    def __call__(
        self,
        target: WorkloadHandle | Workload,
        port: int | None = None,
        *,
        allow_empty: bool = False,
    ) -> AbstractContextManager[CaptureResult]:
        return self._run(target, port, allow_empty)

    @contextmanager
    def _run(
        self, target: WorkloadHandle | Workload, port: int | None, allow_empty: bool
    ) -> Iterator[CaptureResult]:
        __tracebackhide__ = True
        from pytest_meshconform.evidence.wire import analyze_pcap

        w = target.workload if isinstance(target, WorkloadHandle) else target
        if port is None and w.container_ports:
            port = w.container_ports[0]
        result = CaptureResult(workload=w, port=port, names=self._names())
        self._evidence.observed.touch(w.key)
        with self._mesh.capture(w, port) as recording:
            yield result
        result.pcap_path = recording.path
        dropped = _dropped_packets(recording.tool_stderr)
        if dropped:
            raise MeshError(
                f"the capture at {w.key} is incomplete: tcpdump reports {dropped} packets dropped"
                f" by the kernel ({recording.path}); evidence with holes proves nothing"
            )
        result.capture = analyze_pcap(recording.pcap)
        if recording.path is not None:
            self._evidence.add_file(f"pcap {w.key} port {port or 'any'}", recording.path)
        self._evidence.observed.flows.extend(f"at {w.key}: {line}" for line in result.flow_lines())
        seen = result.capture.flows if port is None else result.capture.flows_to(port)
        if not any(is_block_traffic(flow) for flow in seen) and not allow_empty:
            hint = "" if port is None else service_port_hint(self._mesh, w, port)
            tails = len(seen)
            if tails:
                hint += (
                    f" (only the closing packets of {tails} connection(s) opened before the"
                    " block, which carry nothing)"
                )
            raise EmptyCaptureError(
                f"{result} saw no TCP flow{'' if port is None else f' to port {port}'}; an empty"
                f" capture proves nothing (is the traffic going where the test thinks?){hint}"
            )


def is_block_traffic(flow: Flow) -> bool:
    """Whether a captured flow is traffic of the capture's block: it opened there (SYN seen)
    or carried bytes. The bare FIN/RST of a connection opened before the block (a pooled
    connection an earlier test left, closed by a listener drain) is not: a capture that saw
    only that is empty."""
    return (
        flow.direction_from in ("syn", "syn-ack") or flow.client_bytes > 0 or flow.server_bytes > 0
    )


@pytest.fixture
def capture(mesh: Mesh, request: pytest.FixtureRequest) -> Capturer:
    """`with capture(workload, port=None) as cap:` records the pod's wire traffic (not loopback).

    After the block, `cap.flows` etc. hold the parsed capture. A capture with no TCP flow (to
    `port`, when given) raises EmptyCaptureError: absence assertions need a capture that saw the
    traffic at all. Pass `allow_empty=True` to opt out.
    """
    return Capturer(mesh, evidence_window(mesh, request))
