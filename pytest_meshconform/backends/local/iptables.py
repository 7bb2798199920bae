"""Interception rules: the nat table istio-iptables would give one pod, plus Service VIP DNAT.

Pure: rendered from the topology, applied by `network.wire_network` inside the pod's namespace.
"""

from __future__ import annotations

from pytest_meshconform.backends.local.topology import (
    PROXY_UID,
    Pod,
    Topology,
)
from pytest_meshconform.istio.envoy import (
    INBOUND_CAPTURE_PORT,
    INBOUND_PASSTHROUGH_BIND,
    OUTBOUND_CAPTURE_PORT,
)
from pytest_meshconform.istio.interception import SidecarInterception, sidecar_interception
from pytest_meshconform.istio.ztunnel import (
    HBONE_PORT,
    ZTUNNEL_INBOUND_PLAINTEXT_PORT,
    ZTUNNEL_OUTBOUND_PORT,
)


def istio_iptables_rules(pod: Pod, topology: Topology, *, proxy_id: int = PROXY_UID) -> str:
    """nat rules for one pod, in iptables-restore format.

    Sidecar pods get istio-iptables' interception (tools/istio-iptables/pkg/capture/run.go):
    inbound TCP to 15006 (the ports the pod's annotations leave to it, `istio.interception`),
    outbound TCP to 15001 (but its excluded ports), the proxy's uid and gid and traffic from
    127.0.0.6 excluded. The proxy's uid and gid are `proxy_id` (Istio's 1337 by default; the
    local mesh gives each sidecar its own, and each pod's namespace has its own rules). Every
    pod gets kube-proxy-style DNAT of Service VIPs, jumped from OUTPUT after ISTIO_OUTPUT, so
    Envoy and naked apps reach the endpoint's target port. Ambient pods get istio-cni's in-pod
    rules instead (`_inpod_rules`).
    """
    services = [
        f"-A MC_SERVICES -d {e.vip}/32 -p tcp --dport {e.service.port} -j DNAT"
        f" --to-destination {e.endpoints[0].ip}:{e.service.target_port}"
        for e in topology.services
        if not e.service.headless  # no VIP: clients connect to the pod itself
    ]
    lines = ["*nat", ":MC_SERVICES - [0:0]"]
    if pod.workload.has_sidecar:
        interception = sidecar_interception(pod.workload.annotations)
        lines += [
            ":ISTIO_INBOUND - [0:0]",
            ":ISTIO_IN_REDIRECT - [0:0]",
            ":ISTIO_OUTPUT - [0:0]",
            ":ISTIO_REDIRECT - [0:0]",
            *_inbound_rules(interception),
            f"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {INBOUND_CAPTURE_PORT}",
            "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
            # excludeOutboundPorts, before connections back to self are redirected (run.go)
            *(
                f"-A ISTIO_OUTPUT -p tcp --dport {port} -j RETURN"
                for port in interception.exclude_outbound
            ),
            f"-A ISTIO_OUTPUT -s {INBOUND_PASSTHROUGH_BIND}/32 -o lo -j RETURN",
            f"-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner {proxy_id}"
            " -j ISTIO_IN_REDIRECT",
            f"-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner {proxy_id} -j RETURN",
            f"-A ISTIO_OUTPUT -m owner --uid-owner {proxy_id} -j RETURN",
            f"-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --gid-owner {proxy_id}"
            " -j ISTIO_IN_REDIRECT",
            f"-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner {proxy_id} -j RETURN",
            f"-A ISTIO_OUTPUT -m owner --gid-owner {proxy_id} -j RETURN",
            "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
            "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
            f"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {OUTBOUND_CAPTURE_PORT}",
        ]
    elif pod.workload.ambient:
        lines += _inpod_rules(proxy_id)
    lines += ["-A OUTPUT -p tcp -j MC_SERVICES", *services, "COMMIT", ""]
    return "\n".join(lines)


def _inbound_rules(interception: SidecarInterception) -> list[str]:
    """istio-iptables' ``handleInboundPortsInclude`` (REDIRECT mode): 15008 always let through;
    ``-b '*'``: the ``-d`` ports let through, the rest redirected; a port list: only those
    redirected; ``-b ''``: no inbound interception at all."""
    rules = [f"-A ISTIO_INBOUND -p tcp --dport {HBONE_PORT} -j RETURN"]
    if interception.include_inbound is None:
        rules.insert(0, "-A PREROUTING -p tcp -j ISTIO_INBOUND")
        rules += [
            f"-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN"
            for port in interception.exclude_inbound
        ]
        rules.append("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT")
    elif interception.include_inbound:
        rules.insert(0, "-A PREROUTING -p tcp -j ISTIO_INBOUND")
        rules += [
            f"-A ISTIO_INBOUND -p tcp --dport {port} -j ISTIO_IN_REDIRECT"
            for port in interception.include_inbound
        ]
    return rules


def _inpod_rules(proxy_id: int) -> list[str]:
    """istio-cni's in-pod redirection for an ambient pod (cni/pkg/iptables/iptables.go; golden
    cni/pkg/iptables/testdata/default.golden), in the nat table only: inbound TCP to 15008 goes
    to ztunnel's HBONE listener, other inbound TCP to 15006 (istio-cni uses TPROXY in mangle,
    keeping the original destination; REDIRECT keeps it too, for SO_ORIGINAL_DST), outbound
    TCP not to 127.0.0.1 to 15001. ztunnel's own connections are let through by their mark
    0x539 there; here by the uid of the pod's ztunnel Envoy (`proxy_id`), which has no
    CAP_NET_ADMIN to set a mark. RETURN instead of ACCEPT: the Service DNAT follows."""
    return [
        ":ISTIO_PRERT - [0:0]",
        ":ISTIO_OUTPUT - [0:0]",
        "-A PREROUTING -j ISTIO_PRERT",
        f"-A ISTIO_PRERT -p tcp --dport {HBONE_PORT} -j RETURN",
        f"-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -j REDIRECT --to-ports"
        f" {ZTUNNEL_INBOUND_PLAINTEXT_PORT}",
        "-A OUTPUT -j ISTIO_OUTPUT",
        f"-A ISTIO_OUTPUT -m owner --uid-owner {proxy_id} -j RETURN",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j RETURN",
        f"-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -j REDIRECT --to-ports {ZTUNNEL_OUTBOUND_PORT}",
    ]
