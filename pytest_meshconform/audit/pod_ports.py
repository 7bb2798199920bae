"""Every port an audited pod listens on, what Istio does with it, and what a plaintext
connection to the pod's own address shows (issue 24: the paths around the mesh).

A pod's listening ports come from its sockets when the audit may read them (the local mesh:
``ss -ltnH`` run in the pod's network namespace, loopback-only listeners left out since no
other pod can reach them), else from the pod spec's container ports (a cluster: the audit never
execs into your pods). Each port is classified (`PortClass`):

- ``istio``: Envoy's or the agent's own port on a sidecar pod (`ISTIO_SIDECAR_PORTS`); listed,
  not probed.
- ``excluded``: left out of istio-iptables' capture by the pod's annotations, or one of the
  ports Istio's injection template excludes (`SidecarInterception.inbound_bypass` names which):
  plaintext reaches the app as sent, no PeerAuthentication or AuthorizationPolicy applies.
- ``around the mesh``: a captured port no Service exposes that takes plaintext by pod IP (the
  sidecar's passthrough filter chain under a mode that takes plaintext).
- ``in the mesh``: a captured port; the plaintext probe by pod IP must see the mode Istio's
  policies predict for the container port (reset under STRICT, taken otherwise).
- ``no sidecar``: a pod outside the mesh; plaintext reaches every port.

With the sidecar probe (the local mesh and clusters), each probed port also gets the mesh
probe's request to the pod's address, captured at the probe: Istio's sidecar sends it through
the PassthroughCluster in plaintext, or through a headless Service's per-pod listener with its mTLS
(`istio.plan.pod_ip_upstream`); the wire must show which.

``excluded`` and ``around the mesh`` ports that took plaintext are the bypasses: each needs an
unexpired entry of the accepted-exceptions file (`audit.exceptions`) to pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any, Final, Literal

from pytest_meshconform.audit.discovery import Predicted
from pytest_meshconform.audit.exceptions import (
    AcceptedException,
    AcceptedExceptions,
    ExceptionStatus,
)
from pytest_meshconform.audit.observe import read_wire
from pytest_meshconform.audit.probes import AUDIT_NAMESPACE
from pytest_meshconform.evidence.curl import curl_argv, parse_curl_output
from pytest_meshconform.evidence.pcap import CaptureError
from pytest_meshconform.evidence.tcp_connect import TcpError, parse_tcp_output, tcp_argv
from pytest_meshconform.evidence.wire import analyze_pcap
from pytest_meshconform.istio.ambient import ambient_mtls_mode
from pytest_meshconform.istio.api import PeerAuthentication, Policy
from pytest_meshconform.istio.envoy import PASSTHROUGH_CLUSTER
from pytest_meshconform.istio.interception import (
    ISTIO_SIDECAR_PORTS,
    InterceptionError,
    sidecar_interception,
)
from pytest_meshconform.istio.peer_authentication import effective_mtls_mode, port_level_ports
from pytest_meshconform.istio.plan import endpoints_of, plan_sidecar, pod_ip_upstream
from pytest_meshconform.istio.protocol import protocol_of
from pytest_meshconform.istio.ztunnel import (
    HBONE_PORT,
    ZTUNNEL_INBOUND_PLAINTEXT_PORT,
    ZTUNNEL_OUTBOUND_PORT,
)
from pytest_meshconform.mesh import Mesh, MeshError, Workload
from pytest_meshconform.outputs import write_file

__all__ = [
    "MeshByPodIp",
    "PodPort",
    "PodPortResult",
    "PortClass",
    "discover_pod_ports",
    "listening_ports",
    "parse_listening_ports",
    "probe_pod_port",
]

PortClass = Literal["in the mesh", "excluded", "istio", "around the mesh", "no sidecar"]
BYPASS_CLASSES: Final = ("excluded", "around the mesh")
POD_PROBE_LINE: Final = b"meshconform-audit\n"
POD_PROBE_WAIT_S: Final = 2.0
_TAKES_PLAINTEXT: Final = ("PERMISSIVE", "DISABLE", "NO_SIDECAR")


@dataclass(frozen=True, slots=True)
class PodPort:
    """One port an audited pod listens on, and what Istio's configuration says of it."""

    workload: Workload
    namespace: str  # the pod's namespace as the suites spell it
    port: int
    source: Literal["sockets", "pod spec"]
    services: tuple[str, ...]  # the Service ports (``name.ns:port``) whose targetPort it is
    predicted: Predicted  # the sidecar's mode for the container port (NO_SIDECAR: none)
    bypass: str | None = None  # why istio-iptables leaves it out of capture (None: captured)
    istio_port: str | None = None  # what it is when it is Envoy's or the agent's own
    # the mesh probe by pod IP: the cluster its sidecar sends it through (`pod_ip_upstream`:
    # a headless Service's, else the PassthroughCluster), whether that originates mTLS, and
    # whether an HTTP Service port targets the port (the probe then sends an HTTP request)
    mesh_cluster: str = PASSTHROUGH_CLUSTER
    mesh_tls: bool = False
    http: bool = False
    # no Service targets it and the workload's portLevelMtls names it: a passthrough chain of
    # its own in that mode (release note peer-authn-port-level-pass-through-filter)
    keyed_passthrough: bool = False

    @property
    def key(self) -> str:
        """``workload.namespace port N``."""
        return f"{self.workload.name}.{self.namespace} port {self.port}"


@dataclass(frozen=True, slots=True)
class MeshByPodIp:
    """The mesh probe's request to the pod's own address, as its capture shows it: did its
    sidecar originate mTLS (``tls``, with ``sni``), and did the pod answer (``admitted``: a
    ServerHello, or bytes back on a plaintext connection)."""

    target: str
    outcome: str
    expected_tls: bool
    cluster: str
    flows: int
    tls: bool
    admitted: bool
    sni: str | None = None
    pcap: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target,
            "outcome": self.outcome,
            "cluster": self.cluster,
            "expectedTls": self.expected_tls,
            "flows": self.flows,
            "tls": self.tls,
            "admitted": self.admitted,
        }
        if self.sni is not None:
            out["sni"] = self.sni
        if self.pcap is not None:
            out["pcap"] = self.pcap
        return out


@dataclass(frozen=True, slots=True)
class PodPortResult:
    """A pod port's class, the plaintext probe by pod IP, and the verdict."""

    port: PodPort
    port_class: PortClass
    verdict: Literal["pass", "fail", "error"]
    reason: str
    target: str = ""  # ``tcp://<pod IP>:<port>`` (empty: not probed)
    outcome: str = ""  # the probe's outcome (``answered``, ``reset``, ...; empty: not probed)
    exception: ExceptionStatus | None = None  # for a bypass: what the exceptions file says
    accepted_by: AcceptedException | None = None
    mesh: MeshByPodIp | None = None  # the mesh probe by pod IP (None: not probed)

    @property
    def is_bypass(self) -> bool:
        """Plaintext reached the app around the sidecar's mode (it must be accepted)."""
        return self.port_class in BYPASS_CLASSES

    @property
    def accepted(self) -> bool:
        return self.exception is ExceptionStatus.ACCEPTED

    def to_dict(self) -> dict[str, Any]:
        port = self.port
        out: dict[str, Any] = {
            "workload": port.workload.name,
            "namespace": port.namespace,
            "port": port.port,
            "source": port.source,
            "sidecar": port.workload.has_sidecar,
            "dataplane": port.workload.dataplane,
            "class": self.port_class,
            "services": list(port.services),
            "predicted": port.predicted,
            "verdict": self.verdict,
            "reason": self.reason,
        }
        if port.bypass is not None:
            out["bypass"] = port.bypass
        if self.target:
            out["probe"] = {"target": self.target, "outcome": self.outcome}
        if self.mesh is not None:
            out["meshProbe"] = self.mesh.to_dict()
        if self.exception is not None:
            out["exception"] = self.exception.value
        if self.accepted_by is not None:
            entry = self.accepted_by
            out["acceptedBy"] = {"reason": entry.reason, "line": entry.line}
            if entry.expires is not None:
                out["acceptedBy"]["expires"] = entry.expires.isoformat()
        return out


def parse_listening_ports(text: str, pod_ip: str) -> tuple[int, ...]:
    """The TCP ports ``ss -ltnH`` lists as listening on every address or on ``pod_ip`` (not
    loopback only), sorted."""
    ports: set[int] = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0] != "LISTEN":
            continue
        address, _, port = fields[3].rpartition(":")
        address = address.strip("[]").split("%", 1)[0]
        if not port.isdigit():
            continue
        if address.removeprefix("::ffff:") in ("*", "0.0.0.0", "::", pod_ip):
            ports.add(int(port))
    return tuple(sorted(ports))


def listening_ports(
    mesh: Mesh, workload: Workload, read_sockets: bool
) -> tuple[tuple[int, ...], Literal["sockets", "pod spec"]]:
    """The pod's listening ports, from its sockets when ``read_sockets`` (``ss`` in its
    network namespace), else from its spec's container ports."""
    if not read_sockets:
        return tuple(sorted(set(workload.container_ports))), "pod spec"
    result = mesh.exec(workload, ["ss", "-ltnH"], 15)
    if result.returncode != 0:
        raise MeshError(
            f"cannot read {workload.key}'s listening sockets: ss -ltnH exited"
            f" {result.returncode}: {result.stderr.decode(errors='replace').strip()}"
        )
    text = result.stdout.decode(errors="replace")
    return parse_listening_ports(text, mesh.pod_ip(workload)), "sockets"


def discover_pod_ports(
    mesh: Mesh,
    policies: Sequence[Policy],
    *,
    namespaces: Sequence[str] = (),
    exclude_namespaces: Sequence[str] = (),
    read_sockets: bool = False,
    client: Workload | None = None,
) -> tuple[tuple[PodPort, ...], tuple[str, ...]]:
    """Every listening port of every audited pod (sidecar or none), and notes on the pods the
    audit leaves out (ambient pods, a pod whose annotations Istio's injector would refuse).
    ``client``: the sidecar probe whose request by pod IP each port predicts
    (`pod_ip_upstream`)."""
    peer_auths = [p for p in policies if isinstance(p, PeerAuthentication)]
    workloads = tuple(mesh.workloads())
    services = tuple(mesh.services())
    plan = None
    if client is not None and client.has_sidecar:
        plan = plan_sidecar(
            client,
            policies,
            workloads=workloads,
            services=services,
            root_namespace=mesh.root_namespace,
            trust_domain=mesh.trust_domain,
        )
    found: list[PodPort] = []
    notes: list[str] = []
    for workload in workloads:
        logical = mesh.logical_namespace(workload.namespace)
        if logical == AUDIT_NAMESPACE or logical in exclude_namespaces:
            continue
        if namespaces and logical not in namespaces:
            continue
        interception = None
        if workload.has_sidecar:
            try:
                interception = sidecar_interception(workload.annotations)
            except InterceptionError as exc:
                notes.append(f"{workload.key}: Istio's injector would refuse the pod: {exc}")
                continue
        ports, source = listening_ports(mesh, workload, read_sockets)
        for port in ports:
            exposing = tuple(
                s.key
                for s in services
                if s.target_port == port and workload in endpoints_of(s, workloads)
            )
            predicted: Predicted = "NO_SIDECAR"
            if workload.has_sidecar:
                mode = effective_mtls_mode(
                    peer_auths, workload.namespace, workload.labels, port, mesh.root_namespace
                )
                predicted = mode.value  # type: ignore[assignment]  # STRICT/PERMISSIVE/DISABLE
            elif workload.ambient:  # ztunnel's verdict: STRICT or PERMISSIVE, never DISABLE
                mode = ambient_mtls_mode(
                    peer_auths, workload.namespace, workload.labels, port, mesh.root_namespace
                )
                predicted = mode.value  # type: ignore[assignment]
            via = None
            if plan is not None:
                via = pod_ip_upstream(plan, services, workloads, workload, port)
            found.append(
                PodPort(
                    workload=workload,
                    namespace=logical,
                    port=port,
                    source=source,
                    services=exposing,
                    predicted=predicted,
                    bypass=None if interception is None else interception.inbound_bypass(port),
                    istio_port=_istio_port(workload, port),
                    mesh_cluster=PASSTHROUGH_CLUSTER if via is None else via.cluster,
                    mesh_tls=via is not None and via.originates_tls,
                    http=any(
                        protocol_of(s).is_http
                        for s in services
                        if s.target_port == port and workload in endpoints_of(s, workloads)
                    ),
                    keyed_passthrough=workload.has_sidecar
                    and not exposing
                    and port
                    in port_level_ports(
                        peer_auths, workload.namespace, workload.labels, mesh.root_namespace
                    ),
                )
            )
    return tuple(found), tuple(notes)


# ztunnel's own sockets in an ambient pod's namespace (in-pod mode: istio-cni hands ztunnel
# the pod's namespace, where it listens; istio/ztunnel.py)
ZTUNNEL_POD_PORTS: Final[dict[int, str]] = {
    ZTUNNEL_OUTBOUND_PORT: "ztunnel's outbound port (istio-cni's redirect target)",
    ZTUNNEL_INBOUND_PLAINTEXT_PORT: "ztunnel's inbound plaintext port (istio-cni's target)",
    HBONE_PORT: "ztunnel's HBONE port",
}


def _istio_port(workload: Workload, port: int) -> str | None:
    """What the port is when it is the data plane's own: the sidecar's or ztunnel's."""
    if workload.has_sidecar:
        return ISTIO_SIDECAR_PORTS.get(port)
    if workload.ambient:
        return ZTUNNEL_POD_PORTS.get(port)
    return None


def _took_plaintext(outcome: str) -> bool | None:
    """Whether the app (or a sidecar's chain) took the plaintext connection: ``reset`` is a
    STRICT sidecar refusing it; ``answered``, ``silent`` and ``closed`` got through; ``refused``
    and ``timeout`` say nothing (nothing listening, or no route)."""
    if outcome == "reset":
        return False
    if outcome in ("answered", "silent", "closed"):
        return True
    return None


def _accept(
    result: PodPortResult, exceptions: AcceptedExceptions | None, today: date, fix: str
) -> PodPortResult:
    port = result.port
    accepted = exceptions or AcceptedExceptions()
    status, entry = accepted.judge(port.namespace, port.workload.name, port.port, today)
    where = f" ({accepted.source}:{entry.line})" if entry is not None and accepted.source else ""
    if status is ExceptionStatus.ACCEPTED and entry is not None:
        return _with(
            result, "pass", f"{result.reason}; accepted: {entry.reason}{where}", status, entry
        )
    if status is ExceptionStatus.EXPIRED and entry is not None:
        expires = "" if entry.expires is None else entry.expires.isoformat()
        reason = f"{result.reason}; the accepted exception expired on {expires}{where}: {fix}"
        return _with(result, "fail", reason, status, entry)
    reason = f"{result.reason}; not accepted: {fix}, or list it in the exceptions file (--accept)"
    return _with(result, "fail", reason, status, None)


def _with(
    result: PodPortResult,
    verdict: Literal["pass", "fail", "error"],
    reason: str,
    status: ExceptionStatus,
    entry: AcceptedException | None,
) -> PodPortResult:
    return PodPortResult(
        port=result.port,
        port_class=result.port_class,
        verdict=verdict,
        reason=reason,
        target=result.target,
        outcome=result.outcome,
        exception=status,
        accepted_by=entry,
        mesh=result.mesh,
    )


def probe_pod_port(
    mesh: Mesh,
    naked_probe: Workload,
    port: PodPort,
    *,
    exceptions: AcceptedExceptions | None = None,
    today: date | None = None,
    probe: Workload | None = None,
    evidence_dir: Path | None = None,
) -> PodPortResult:
    """Classify one pod port and judge it: a plaintext connection from the probe without
    sidecar to the pod's own address (a line of bytes, what comes back kept), then, with
    ``probe`` (the sidecar probe), the mesh probe's request to the same address, captured at
    the probe: its sidecar must send mTLS or plaintext as Istio's config predicts
    (`PodPort.mesh_tls`). Never raises for the port's own failures (an ``error`` verdict says
    why). The capture is kept under ``evidence_dir`` when given."""
    result = _plaintext_by_pod_ip(mesh, naked_probe, port, exceptions, today or date.today())
    if probe is None or not result.target:
        return result
    try:
        seen = _mesh_by_pod_ip(mesh, probe, port, evidence_dir)
    except (MeshError, CaptureError, TcpError, OSError) as exc:
        reason = f"{result.reason}; the mesh probe by pod IP could not run: {exc}"
        return replace(result, verdict="error", reason=reason)
    sent = "mTLS" if seen.tls else "plaintext"
    if seen.flows == 0:
        reason = (
            f"{result.reason}; the capture at {probe.key} saw no connection to"
            f" {seen.target}: the mesh probe by pod IP never reached the pod"
        )
        return replace(result, verdict="error", reason=reason, mesh=seen)
    if seen.tls != seen.expected_tls:
        want = "mTLS" if seen.expected_tls else "plaintext"
        reason = (
            f"{result.reason}; the mesh probe's sidecar sent {sent} to the pod IP, Istio's"
            f" config predicts {want} ({seen.cluster})"
        )
        return replace(result, verdict="fail", reason=reason, mesh=seen)
    answered = "answered" if seen.admitted else "not answered"
    reason = f"{result.reason}; a mesh client by pod IP: {sent} ({seen.cluster}), {answered}"
    return replace(result, reason=reason, mesh=seen)


def _mesh_by_pod_ip(
    mesh: Mesh, probe: Workload, port: PodPort, evidence_dir: Path | None
) -> MeshByPodIp:
    """The sidecar probe's request to the pod's own address (HTTP when an HTTP Service port
    targets it, else a line of bytes), captured at the probe."""
    ip = mesh.pod_ip(port.workload)
    target = f"{ip}:{port.port}"
    with mesh.capture(probe, port.port) as recording:
        if port.http:
            url = f"http://{target}/"
            ran = mesh.exec(probe, curl_argv(url, timeout=POD_PROBE_WAIT_S), POD_PROBE_WAIT_S + 10)
            outcome = parse_curl_output(
                url, probe.key, ran.returncode, ran.stdout, ran.stderr
            ).outcome
        else:
            argv = tcp_argv(ip, port.port, send=POD_PROBE_LINE, timeout=POD_PROBE_WAIT_S)
            ran = mesh.exec(probe, argv, POD_PROBE_WAIT_S + 10)
            outcome = parse_tcp_output(
                target, probe.key, ran.returncode, ran.stdout, ran.stderr, sent=POD_PROBE_LINE
            ).outcome
    kept = None
    if evidence_dir is not None:
        kept = evidence_dir / f"pod-{port.workload.name}.{port.namespace}-{port.port}.pcap"
        write_file(kept, recording.pcap)
    wire = read_wire(recording.pcap, kept, port.port)
    return MeshByPodIp(
        target=f"{'http' if port.http else 'tcp'}://{target}",
        outcome=outcome,
        expected_tls=port.mesh_tls,
        cluster=port.mesh_cluster,
        # every connection seen: one refused before a byte went (ztunnel's close) counts
        flows=len(analyze_pcap(recording.pcap).flows_to(port.port)),
        tls=wire.tls,
        admitted=wire.admitted,
        sni=wire.sni,
        pcap=wire.pcap,
    )


def _plaintext_by_pod_ip(
    mesh: Mesh,
    naked_probe: Workload,
    port: PodPort,
    exceptions: AcceptedExceptions | None,
    day: date,
) -> PodPortResult:
    """The port's class and verdict from the plaintext probe by pod IP (`probe_pod_port`)."""
    if port.istio_port is not None and not port.services:
        return PodPortResult(port, "istio", "pass", f"{port.istio_port} (Istio's own; not probed)")
    try:
        ip = mesh.pod_ip(port.workload)
        argv = tcp_argv(ip, port.port, send=POD_PROBE_LINE, timeout=POD_PROBE_WAIT_S)
        ran = mesh.exec(naked_probe, argv, POD_PROBE_WAIT_S + 10)
    except (MeshError, OSError) as exc:
        return PodPortResult(port, "in the mesh", "error", f"could not probe: {exc}")
    target = f"{ip}:{port.port}"
    try:
        tcp = parse_tcp_output(
            target, naked_probe.key, ran.returncode, ran.stdout, ran.stderr, sent=POD_PROBE_LINE
        )
    except TcpError as exc:
        return PodPortResult(port, "in the mesh", "error", f"could not probe {target}: {exc}")
    took = _took_plaintext(tcp.outcome)
    if port.workload.ambient and tcp.outcome == "closed":
        took = False  # ztunnel drops a denied connection: a close when no byte had arrived
    seen = f"plaintext by pod IP ({target}): {tcp.outcome}"
    if took is None:
        why = "nothing listens there" if tcp.outcome == "refused" else "no answer in time"
        return PodPortResult(
            port,
            "no sidecar" if port.workload.dataplane == "none" else "in the mesh",
            "error",
            f"{seen}: {why}; the {port.source} said it listens",
            f"tcp://{target}",
            tcp.outcome,
        )
    if port.workload.dataplane == "none":
        verdict: Literal["pass", "fail"] = "pass" if took else "fail"
        shown = "takes plaintext" if took else "refused plaintext, though no sidecar runs there"
        return PodPortResult(
            port,
            "no sidecar",
            verdict,
            f"no sidecar: {shown} ({seen})",
            f"tcp://{target}",
            tcp.outcome,
        )
    if port.bypass is not None:
        if not took:
            return PodPortResult(
                port,
                "excluded",
                "fail",
                f"{seen}; Istio's interception leaves it out of capture ({port.bypass}), so"
                " plaintext should reach the app",
                f"tcp://{target}",
                tcp.outcome,
            )
        result = PodPortResult(
            port,
            "excluded",
            "fail",
            f"excluded from interception ({port.bypass}): plaintext reaches the app around the"
            f" sidecar, no PeerAuthentication or AuthorizationPolicy applies ({seen})",
            f"tcp://{target}",
            tcp.outcome,
        )
        return _accept(result, exceptions, day, "remove the port from the annotation")
    expected = port.predicted in _TAKES_PLAINTEXT
    by = " (ztunnel)" if port.workload.ambient else ""
    if took != expected:
        return PodPortResult(
            port,
            "in the mesh",
            "fail",
            f"{seen}; Istio's policies predict {port.predicted}{by} for container port"
            f" {port.port}, which {'takes' if expected else 'refuses'} plaintext",
            f"tcp://{target}",
            tcp.outcome,
        )
    if took and not port.services:
        result = PodPortResult(
            port,
            "around the mesh",
            "fail",
            f"no Service exposes it and it takes plaintext by pod IP under {port.predicted}"
            f" ({seen})",
            f"tcp://{target}",
            tcp.outcome,
        )
        fix = "make the workload STRICT on the port, or stop listening on it"
        return _accept(result, exceptions, day, fix)
    exposed = ", ".join(port.services) or "no Service"
    if port.keyed_passthrough:
        exposed += ": its own passthrough chain, as portLevelMtls names it"
    taken = "takes plaintext" if took else "refuses plaintext"
    return PodPortResult(
        port,
        "in the mesh",
        "pass",
        f"{port.predicted}{by}: {taken} by pod IP, as predicted ({exposed})",
        f"tcp://{target}",
        tcp.outcome,
    )
