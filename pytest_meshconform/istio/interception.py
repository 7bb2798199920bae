"""Which of a sidecar pod's ports istio-iptables intercepts (pure): the pod's
``traffic.sidecar.istio.io/*`` annotations, turned into istio-iptables' arguments by the
injector and into nat rules by istio-iptables.

- The injection template (istio/istio ``manifests/charts/istio-control/istio-discovery/files/
  injection-template.yaml``, the ``istio-init`` container) passes ``-b`` = the
  ``includeInboundPorts`` annotation (default ``*``) and ``-d`` = ``15090,15021,`` followed by
  ``excludeInboundPort(<status port>, <excludeInboundPorts annotation>)`` (``pkg/kube/inject/
  template.go``: the annotation's ports, trimmed, with the agent's status port
  (``status.sidecar.istio.io/port``, default 15020) appended unless already there or ``0``);
  ``-o`` = ``excludeOutboundPorts`` when annotated. Istio's injector output for a pod without
  annotations shows ``-b '*' -d 15090,15021,15020``.
- istio-iptables (``tools/istio-iptables/pkg/capture/run.go``, ``handleInboundPortsInclude``)
  always lets 15008 (HBONE) through first; with ``-b '*'`` it lets each ``-d`` port through and
  redirects every other inbound TCP port to 15006; with a port list, it redirects only those
  ports; with an empty ``-b``, nothing inbound. ``-o`` ports go out around Envoy (``RETURN``
  in ``ISTIO_OUTPUT``). Goldens: ``tools/istio-iptables/pkg/capture/testdata/
  inbound-ports-include.golden`` and ``inbound-ports-wildcard.golden``.
- A bad value makes the injector refuse the pod (``pkg/kube/inject/validate.go``,
  ``validateAnnotations``: ``invalid value '<v>' for annotation '<name>': <name> invalid:
  failed parsing port ...``).

Traffic to a port that is not intercepted reaches the app as it was sent: no sidecar sees it,
so no PeerAuthentication or AuthorizationPolicy applies to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "AGENT_HEALTH_PORT",
    "AGENT_STATUS_PORT",
    "ENVOY_PROMETHEUS_PORT",
    "EXCLUDE_INBOUND_PORTS",
    "EXCLUDE_OUTBOUND_PORTS",
    "INCLUDE_INBOUND_PORTS",
    "ISTIO_SIDECAR_PORTS",
    "STATUS_PORT",
    "InterceptionError",
    "SidecarInterception",
    "sidecar_interception",
]

INCLUDE_INBOUND_PORTS: Final = "traffic.sidecar.istio.io/includeInboundPorts"
EXCLUDE_INBOUND_PORTS: Final = "traffic.sidecar.istio.io/excludeInboundPorts"
EXCLUDE_OUTBOUND_PORTS: Final = "traffic.sidecar.istio.io/excludeOutboundPorts"
STATUS_PORT: Final = "status.sidecar.istio.io/port"

ENVOY_PROMETHEUS_PORT: Final = 15090  # Envoy's merged Prometheus stats
AGENT_HEALTH_PORT: Final = 15021  # the agent's /healthz/ready
AGENT_STATUS_PORT: Final = 15020  # the agent's status server (default of STATUS_PORT)
HBONE_PORT: Final = 15008
_ISTIO_OWN: Final = (ENVOY_PROMETHEUS_PORT, AGENT_HEALTH_PORT)  # the template's literal prefix

# The ports a sidecar pod's Envoy and agent listen on, as Istio's "Application requirements"
# page lists them ("Ports used by Istio", istio.io docs/ops/deployment/application-requirements;
# 15000, 15004 and 15053 listen on localhost only). An app must not use them.
ISTIO_SIDECAR_PORTS: Final[Mapping[int, str]] = {
    15000: "Envoy's admin port",
    15001: "Envoy's outbound port (istio-iptables' redirect target)",
    15004: "the agent's debug port",
    15006: "Envoy's inbound port (istio-iptables' redirect target)",
    HBONE_PORT: "the HBONE mTLS tunnel port",
    15009: "the HBONE port for secure networks",
    AGENT_STATUS_PORT: "the agent's merged Prometheus telemetry port",
    AGENT_HEALTH_PORT: "the agent's health check port",
    15053: "the agent's DNS proxy port",
    ENVOY_PROMETHEUS_PORT: "Envoy's Prometheus telemetry port",
}

_ANNOTATION_PARAMETER: Final = {  # what validate.go names each list in its message
    INCLUDE_INBOUND_PORTS: "includeInboundPorts",
    EXCLUDE_INBOUND_PORTS: "excludeInboundPorts",
    EXCLUDE_OUTBOUND_PORTS: "excludeOutboundPorts",
    STATUS_PORT: "excludeInboundPorts",  # validateStatusPort says so too
}


class InterceptionError(ValueError):
    """An interception annotation Istio's injector would refuse; the message is Istio's."""


def _parse_port(annotation: str, value: str, text: str) -> int:
    """``parsePort``: ``strconv.ParseUint(strings.TrimSpace(s), 10, 16)``."""
    stripped = text.strip(" \t\n\r\v\f")
    if stripped.isascii() and stripped.isdigit() and int(stripped) <= 65535:
        return int(stripped)
    raise InterceptionError(
        f"invalid value '{value}' for annotation '{annotation}':"
        f" {_ANNOTATION_PARAMETER[annotation]} invalid: failed parsing port '{text}'"
    )


def _port_list(annotation: str, value: str) -> tuple[int, ...]:
    """``parsePorts``: empty (after trimming) is no port; otherwise every comma-separated
    item must be a port (``a,,b`` fails on the empty item, as in Istio)."""
    if not value.strip(" \t\n\r\v\f"):
        return ()
    return tuple(_parse_port(annotation, value, item) for item in value.split(","))


@dataclass(frozen=True, slots=True)
class SidecarInterception:
    """istio-iptables' inbound and outbound port arguments for one sidecar pod."""

    include_inbound: tuple[int, ...] | None  # None: every port (``-b '*'``)
    exclude_inbound: tuple[int, ...]  # ``-d``, in the template's order
    exclude_outbound: tuple[int, ...]  # ``-o``
    annotations: Mapping[str, str]

    def inbound_captured(self, port: int) -> bool:
        """Whether inbound TCP to ``port`` is redirected to the sidecar (15006)."""
        if port == HBONE_PORT:
            return False
        if self.include_inbound is None:
            return port not in self.exclude_inbound
        return port in self.include_inbound

    def inbound_bypass(self, port: int) -> str | None:
        """Why inbound TCP to ``port`` reaches the app around the sidecar (None: it does not):
        the annotation that says so, or the Istio port it is."""
        if self.inbound_captured(port):
            return None
        if port == HBONE_PORT:
            return f"{HBONE_PORT} is HBONE's port (istio-iptables lets it through)"
        if self.include_inbound is not None:
            listed = self.annotations.get(INCLUDE_INBOUND_PORTS, "")
            return f"not in {INCLUDE_INBOUND_PORTS} ({listed!r})"
        if port in _annotation_ports(self.annotations, EXCLUDE_INBOUND_PORTS):
            return f"in {EXCLUDE_INBOUND_PORTS}"
        if port == ENVOY_PROMETHEUS_PORT:
            return f"{port} is Envoy's Prometheus port (excluded by Istio's injection template)"
        if port == AGENT_HEALTH_PORT:
            return f"{port} is the agent's health port (excluded by Istio's injection template)"
        return f"{port} is the agent's status port ({STATUS_PORT}; excluded by the injector)"

    def outbound_captured(self, port: int) -> bool:
        """Whether outbound TCP to ``port`` goes through the sidecar (15001)."""
        return port not in self.exclude_outbound

    @property
    def iptables_arguments(self) -> tuple[str, ...]:
        """``-b``, ``-d`` (and ``-o``) as the injector writes them into ``istio-init``."""
        include = "*" if self.include_inbound is None else ",".join(map(str, self.include_inbound))
        args: tuple[str, ...] = ("-b", include, "-d", ",".join(map(str, self.exclude_inbound)))
        if EXCLUDE_OUTBOUND_PORTS in self.annotations:
            args += ("-o", self.annotations[EXCLUDE_OUTBOUND_PORTS])
        return args


def _annotation_ports(annotations: Mapping[str, str], name: str) -> tuple[int, ...]:
    return _port_list(name, annotations[name]) if name in annotations else ()


def sidecar_interception(annotations: Mapping[str, str]) -> SidecarInterception:
    """The interception a sidecar pod with these annotations gets (no annotations: Istio's
    defaults, ``-b '*' -d 15090,15021,15020``); :class:`InterceptionError` with Istio's message
    for a value the injector refuses."""
    include_text = annotations.get(INCLUDE_INBOUND_PORTS, "*")
    include: tuple[int, ...] | None = None
    if include_text != "*":
        include = _port_list(INCLUDE_INBOUND_PORTS, include_text)
    excluded = list(_annotation_ports(annotations, EXCLUDE_INBOUND_PORTS))
    status = AGENT_STATUS_PORT
    if STATUS_PORT in annotations:
        status = _parse_port(STATUS_PORT, annotations[STATUS_PORT], annotations[STATUS_PORT])
    if status != 0 and status not in excluded:  # excludeInboundPort
        excluded.append(status)
    return SidecarInterception(
        include_inbound=include,
        exclude_inbound=(*_ISTIO_OWN, *excluded),
        exclude_outbound=_annotation_ports(annotations, EXCLUDE_OUTBOUND_PORTS),
        annotations=dict(annotations),
    )
