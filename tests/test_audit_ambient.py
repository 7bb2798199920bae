"""`meshconform audit` of an ambient namespace on the local mesh: STRICT judged from ztunnel's
behaviour (the naked probe's plaintext, the ambient probe's HBONE on the wire), the pods'
ports classified, the data plane reported per port.

Where the expected values come from:
- istio.io "Use Layer 4 security policy" and Istio's ambient PeerAuthentication cases: under
  STRICT ztunnel refuses plaintext from a client without a data plane (the connection is
  closed or reset), and takes HBONE from an ambient client; without a policy (PERMISSIVE) it
  takes both (istiod turns STRICT into a ztunnel deny for callers without a peer identity,
  ``convertPeerAuthentication``, pilot/pkg/serviceregistry/kube/controller/ambient).
- ztunnel's HBONE: mutual TLS 1.3 to the destination pod's port 15008, ALPN ``h2``, no SNI
  (src/tls/certificate.rs ``client_config``; docs/istio-model.md, "Ambient on the wire").
- ztunnel listens in the pod's network namespace on 15001, 15006 and 15008 (src/config.rs,
  ``construct_config``; in-pod mode): its own ports.
- Istio's tcp-echo sample answers ``hello <line>``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from local_helpers import needs_local_mesh, run_local_audit

from pytest_meshconform.audit.discovery import ServicePort
from pytest_meshconform.audit.observe import WireEvidence, wire_problems
from pytest_meshconform.audit.probes import ambient_probe
from pytest_meshconform.istio.protocol import protocol_of
from pytest_meshconform.mesh import Service, Workload

TOPOLOGY = """\
namespaces:
  - name: vault
    dataplane: ambient
    workloads:
      - name: keeper
        kind: tcp-echo
        ports: [9000, 9300]
      - name: console
        kind: httpbin
    services:
      - name: keeper
        selector: {app: keeper}
        ports: [{name: tcp-main, port: 9000}]
      - name: console
        selector: {app: console}
        ports: [{name: http, port: 80, targetPort: 8080}]
"""

VAULT_STRICT = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: vault}
spec:
  mtls: {mode: STRICT}
"""


def _audit(tmp_path: Path, name: str, *policies: str) -> tuple[int, dict[str, Any]]:
    code, data, _ = run_local_audit(tmp_path, TOPOLOGY, name, policies, stem="vault")
    return code, data


def _ports(data: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    return {
        f"{p['service']}:{p['port']}": (p["dataplane"], p["predicted"], p["observed"], p["verdict"])
        for p in data["ports"]
    }


def _pod_ports(data: dict[str, Any]) -> dict[tuple[str, int], tuple[Any, ...]]:
    return {
        (p["workload"], p["port"]): (p["dataplane"], p["class"], p["verdict"])
        for p in data["podPorts"]
    }


@needs_local_mesh
def test_strict_in_an_ambient_namespace_is_judged_from_ztunnels_behaviour(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, data = _audit(tmp_path, "strict", VAULT_STRICT)
    out = capsys.readouterr().out
    assert code == 0, out
    assert _ports(data) == {
        "keeper:9000": ("ambient", "STRICT", "STRICT", "pass"),
        "console:80": ("ambient", "STRICT", "STRICT", "pass"),
    }
    for port in data["ports"]:
        evidence = port["evidence"]
        # plaintext from the probe without a data plane: ztunnel refuses it
        assert evidence["plaintext"]["admitted"] is False, evidence["plaintext"]
        # the ambient probe's request went through ztunnel's HBONE tunnel, and got through
        assert evidence["mesh"]["client"] == "probe-ambient.meshconform-audit"
        assert evidence["mesh"]["admitted"] is True
        wire = evidence["wire"]
        assert (wire["tls"], wire["serverHello"], wire["alpn"]) == (True, True, ["h2"])
        assert "sni" not in wire and wire["pcap"].endswith(".pcap")
    # every port of the ambient pods: ztunnel's own listed, the app's refusing plaintext
    pods = _pod_ports(data)
    assert pods[("keeper", 9000)] == ("ambient", "in the mesh", "pass")
    assert pods[("keeper", 9300)] == ("ambient", "in the mesh", "pass")  # no Service: STRICT
    assert pods[("keeper", 15008)] == ("ambient", "istio", "pass")
    assert pods[("console", 8080)] == ("ambient", "in the mesh", "pass")
    assert "keeper.vault:9000  TCP       ambient  STRICT" in out

    # no policy: ztunnel takes both; the port no Service exposes is a path around the mesh
    code, data = _audit(tmp_path, "permissive")
    out = capsys.readouterr().out
    assert _ports(data) == {
        "keeper:9000": ("ambient", "PERMISSIVE", "PERMISSIVE", "pass"),
        "console:80": ("ambient", "PERMISSIVE", "PERMISSIVE", "pass"),
    }
    assert _pod_ports(data)[("keeper", 9300)] == ("ambient", "around the mesh", "fail")
    assert code == 1, out


def test_an_hbone_handshake_that_is_not_tls_1_3_is_a_wire_problem() -> None:
    """ztunnel's HBONE is TLS 1.3 only (src/tls/lib.rs ``tls_versions``): a ServerHello on
    port 15008 that chose TLS 1.2 is named, whatever else the wire shows."""
    service = Service("console", "vault", 80, 8080, "console")
    endpoint = Workload(
        "console", "vault", "console", "console", False, labels={"app": "console"}, ambient=True
    )
    port = ServicePort(
        service=service,
        namespace="vault",
        endpoint=endpoint,
        protocol=protocol_of(service),
        predicted="STRICT",
        ztunnel_admits=(False, True),
    )
    wire = WireEvidence(pcap=None, flows=1, tls=True, alpn=("h2",), server_hello=True)
    assert wire_problems(port, replace(wire, tls_version="TLS1.3"), ambient_probe()) == []
    assert wire_problems(port, replace(wire, tls_version="TLS1.2"), ambient_probe()) == [
        "the handshake on port 15008 chose TLS1.2; ztunnel's HBONE is TLS1.3 only"
    ]
