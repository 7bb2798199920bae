"""Port-level PeerAuthentication on passthrough filter chains: modelled, rendered by the local
mesh, and audited on the wire.

Where the expected values come from: Istio's release note
``peer-authn-port-level-pass-through-filter`` (istio/istio#27994, #28601): "the per-port-level
setting will be supported even if the port number is not defined in a service, a special pass
through filter chain will be added to respect the corresponding per-port-level mTLS
specification". istiod: ``Builder.ForPassthrough`` (pilot/pkg/networking/plugin/authn/
authentication.go) adds, besides the full passthrough chains (port 0, the workload's mode), one
per key of ``PortLevelSetting()`` for which ``needPerPortPassthroughFilterChain`` holds (no
Service targets that port); ``buildInboundPassthroughChains`` (pilot/pkg/networking/core/
listener_inbound.go) matches it by destination port. ``ComposePeerAuthentication``
(pilot/pkg/security/authn/policy_applier.go): an UNSET port-level mode inherits the
workload's. Istio's tcp-echo sample answers ``hello <line>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from local_helpers import needs_local_mesh, run_local_audit

from pytest_meshconform.backends.local.control import plan_sidecars
from pytest_meshconform.backends.local.topology_file import parse_topology
from pytest_meshconform.backends.local.xds import SidecarPaths, clusters, listeners
from pytest_meshconform.istio.api import MtlsMode, parse_policies
from pytest_meshconform.istio.plan import plan_sidecar

# an exporter: its API behind a Service, a metrics port and a debug port no Service exposes
TOPOLOGY = """\
namespaces:
  - name: telemetry
    dataplane: sidecar
    workloads:
      - name: exporter
        kind: httpbin
        ports: [8080, {port: 9100, serves: tcp-echo}, {port: 9200, serves: tcp-echo}]
    services:
      - name: exporter
        selector: {app: exporter}
        ports: [{name: http, port: 80, targetPort: 8080}]
"""

# PERMISSIVE, but STRICT on the metrics port 9100 (no Service), UNSET on 8080 (a Service's)
METRICS_STRICT = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: exporter, namespace: telemetry}
spec:
  selector: {matchLabels: {app: exporter}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls:
    9100: {mode: STRICT}
    8080: {mode: UNSET}
"""


def _plan() -> Any:
    topology = parse_topology(TOPOLOGY)
    policies = parse_policies(yaml.safe_load(METRICS_STRICT))
    exporter = topology.pod("exporter", "telemetry").workload
    workloads = [p.workload for p in topology.pods]
    services = [e.service for e in topology.services]
    return (
        topology,
        policies,
        plan_sidecar(exporter, policies, workloads=workloads, services=services),
    )


def test_a_port_level_key_no_service_targets_gets_a_passthrough_chain() -> None:
    _, _, sidecar = _plan()
    # 8080 is a Service's target port: its own chain; 9100 only the port-level key names
    assert dict(sidecar.passthrough) == {9100: MtlsMode.STRICT}
    assert sidecar.inbound[8080] is MtlsMode.PERMISSIVE  # UNSET inherits the workload's
    assert sidecar.default_inbound is MtlsMode.PERMISSIVE


def test_the_local_mesh_renders_it_as_istiod_matches_it() -> None:
    topology, policies, _ = _plan()
    plan = plan_sidecars(topology, policies, "istio-system")["exporter.telemetry"]
    paths = SidecarPaths(Path("/run/x"))
    inbound = next(item for item in listeners(plan, paths) if item["name"] == "virtualInbound")
    chains = {c["name"]: c for c in inbound["filter_chains"]}
    # STRICT on 9100: one TLS chain matching the port, to the passthrough cluster
    keyed = [name for name in chains if name.startswith("virtualInbound_9100")]
    assert keyed == ["virtualInbound_9100-mtls"]
    chain = chains["virtualInbound_9100-mtls"]
    assert chain["filter_chain_match"] == {"destination_port": 9100, "transport_protocol": "tls"}
    proxy = chain["filters"][-1]["typed_config"]
    assert proxy["cluster"] == "InboundPassthroughCluster"
    # only the Service's target port has a per-port chain and cluster of its own
    assert not any(name.startswith(("0.0.0.0_9100", "0.0.0.0_9200")) for name in chains)
    names = {c["name"] for c in clusters(plan, paths)}
    assert "inbound|8080||" in names and "inbound|9100||" not in names


def _audit(tmp_path: Path, *policies: str) -> tuple[int, dict[str, Any]]:
    code, data, _ = run_local_audit(tmp_path, TOPOLOGY, "policy", policies, stem="telemetry")
    return code, data


@needs_local_mesh
def test_the_audit_sees_the_port_level_mode_on_a_port_no_service_exposes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, data = _audit(tmp_path, METRICS_STRICT)
    out = capsys.readouterr().out
    ports = {
        p["port"]: (p["class"], p["predicted"], p["probe"]["outcome"], p["verdict"])
        for p in data["podPorts"]
        if p["workload"] == "exporter" and "probe" in p
    }
    assert ports == {
        8080: ("in the mesh", "PERMISSIVE", "answered", "pass"),
        9100: ("in the mesh", "STRICT", "reset", "pass"),  # its own passthrough chain
        9200: ("around the mesh", "PERMISSIVE", "answered", "fail"),  # the full passthrough
    }
    metrics = next(p for p in data["podPorts"] if p["port"] == 9100)
    assert metrics["reason"].startswith(
        "STRICT: refuses plaintext by pod IP, as predicted (no Service: its own passthrough"
        " chain, as portLevelMtls names it)"
    )
    # the key names a port the workload listens on: it applies
    assert data["inapplicablePolicies"] == []
    assert code == 1, out  # 9200 is a bypass no file accepts
