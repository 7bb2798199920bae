"""`capture` -> `Capturer`: `with capture(workload, port=None) as cap:` records the pod's wire
traffic for the block and parses it (`CaptureResult`: flows, TLS hellos, plaintext).

A capture is taken at the pod, so it sees the pod's ports: `port` names a port of the workload's
Service (number or name), which the capture maps to the pod port it targets (Service `ledger`
port 80 -> targetPort 8080: the capture records port 8080), or one of the pod's container ports
as it is. Without one: the pod's only container port, else the targetPort of its Service's only
HTTP port, else (no port at all, a client) every port. A port neither is a `ServicePortError`,
before tcpdump starts.

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

from pytest_meshconform.istio.ztunnel import HBONE_PORT
from pytest_meshconform.mesh import Mesh, MeshError, Workload
from pytest_meshconform.plugin.session import evidence_window
from pytest_meshconform.plugin.workloads import (
    ServicePortError,
    WorkloadHandle,
    service_port,
    service_ports_text,
    services_of,
)
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
    "pod_port",
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
        if flow.http2:
            streams = len(flow.http2_streams)
            parts.append(f"HTTP/2 ({streams} stream{'' if streams == 1 else 's'})")
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


def pod_port(mesh: Mesh, workload: Workload, port: int | str | None) -> int | None:
    """The pod port a capture of `workload` records for `port`: a Service port (number or name)
    of the Services selecting it -> its targetPort; a container port -> itself; None -> the
    only container port, else the targetPort of the Service's only HTTP port, else None (a pod
    that serves nothing: every port). `ServicePortError` names the ports otherwise."""
    __tracebackhide__ = True
    listens = ", ".join(map(str, workload.container_ports)) or "no port"
    if port is None:
        if len(workload.container_ports) <= 1:
            return workload.container_ports[0] if workload.container_ports else None
        try:
            return service_port(mesh, workload, None).target_port
        except ServicePortError as error:
            raise ServicePortError(
                f"capture({workload.key}): the pod listens on {listens}: which one? {error}"
            ) from None
    if isinstance(port, str):
        return service_port(mesh, workload, port).target_port
    services = [s for s in services_of(mesh, workload) if s.port == port]
    if len({s.target_port for s in services}) > 1:
        service_port(mesh, workload, port)  # raises, naming the Services that expose it
    if services and services[0].target_port != port and port in workload.container_ports:
        raise ServicePortError(
            f"capture({workload.key}, port={port}) is ambiguous: Service port {port} targets"
            f" the pod's port {services[0].target_port}, and the pod listens on {port} too;"
            f" pass port={services[0].target_port} or the Service port's name"
        )
    if services:
        return services[0].target_port
    if port in workload.container_ports:
        return port
    raise ServicePortError(
        f"capture({workload.key}, port={port}): the pod listens on {listens};"
        f" {service_ports_text(mesh, workload)}; pass port=<one of them>"
    )


@final
class Capturer:
    """What `capture` returns: `with capture(workload, port=None) as cap:` records the pod's
    wire traffic (not loopback) for the duration of the block -> `CaptureResult`.

    `port` is a port of the workload's Service, by number or name (mapped to the pod port it
    targets), or a container port of the pod; by default the pod's only container port, else
    the targetPort of the Service's only HTTP port (`pod_port`). Anything else raises
    `ServicePortError` before the capture starts. A capture with no TCP flow (to that pod port)
    raises EmptyCaptureError: absence assertions need a capture that saw the traffic at all.
    `allow_empty=True` opts out (for tests that expect silence).
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
        port: int | str | None = None,
        *,
        allow_empty: bool = False,
    ) -> AbstractContextManager[CaptureResult]:
        __tracebackhide__ = True
        w = target.workload if isinstance(target, WorkloadHandle) else target
        return self._run(w, pod_port(self._mesh, w, port), allow_empty)

    @contextmanager
    def _run(self, w: Workload, port: int | None, allow_empty: bool) -> Iterator[CaptureResult]:
        __tracebackhide__ = True
        from pytest_meshconform.evidence.wire import analyze_pcap

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
        if port is not None and w.ambient:  # the port's traffic arrives over HBONE too
            seen += result.capture.flows_to(HBONE_PORT)
        if not any(is_block_traffic(flow) for flow in seen) and not allow_empty:
            hint = ""
            tails = len(seen)
            if tails:
                hint = (
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

    `port`: a Service port (number or name; the capture records the pod port it targets) or a
    container port; by default the pod's only one. After the block, `cap.flows` etc. hold the
    parsed capture. A capture with no TCP flow (to
    `port`, when given) raises EmptyCaptureError: absence assertions need a capture that saw the
    traffic at all. Pass `allow_empty=True` to opt out.
    """
    return Capturer(mesh, evidence_window(mesh, request))
