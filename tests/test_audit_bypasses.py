"""`meshconform audit` finds the paths around the mesh on a real local mesh (real Envoy
sidecars, istio-iptables' rules from the pods' annotations, real sockets read with ``ss`` in
each pod's namespace, plaintext probes by pod IP) and judges them against an accepted-exceptions
file.

Where the expected values come from:
- ``traffic.sidecar.istio.io/excludeInboundPorts`` leaves the port out of istio-iptables'
  capture (``-d``, istio/istio ``tools/istio-iptables/pkg/capture/run.go``): plaintext reaches
  the app; Envoy's own ports are Istio's "Ports used by Istio" (15001 outbound, 15006 inbound).
- A port no Service exposes is served by the sidecar's inbound passthrough chain under the
  workload's mode (PERMISSIVE by default: plaintext gets through).
- ``portLevelMtls`` is keyed by the workload's port, not the Service's (the PeerAuthentication
  reference; istio/istio#49098): a key naming Service port 80 (targetPort 8080) applies to
  nothing, and 8080 keeps the workload's mode.
- Istio's tcp-echo sample answers ``hello <line>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from local_helpers import needs_local_mesh, runs_made, traces_of

from pytest_meshconform.audit.pod_ports import parse_listening_ports
from pytest_meshconform.audit.report import AUDIT_SCHEMA
from pytest_meshconform.cli import main

TOPOLOGY = """\
namespaces:
  - name: payments
    dataplane: sidecar
    workloads:
      - name: ledger
        kind: httpbin
        ports: [8080, {port: 5432, serves: tcp-echo}, {port: 9100, serves: tcp-echo}]
        annotations: {traffic.sidecar.istio.io/excludeInboundPorts: "5432"}
    services:
      - name: ledger
        selector: {app: ledger}
        ports: [{name: http, port: 80, targetPort: 8080}, {name: tcp-db, port: 5432}]
"""

# PERMISSIVE for ledger, "STRICT on port 80" keyed by the Service port: it applies to nothing
SERVICE_PORT_KEYED = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ledger, namespace: payments}
spec:
  selector: {matchLabels: {app: ledger}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls:
    80: {mode: STRICT}
"""


def _accept_file(tmp_path: Path, db_expires: str) -> Path:
    path = tmp_path / "exceptions.yaml"
    path.write_text(
        "exceptions:\n"
        "  - {namespace: payments, workload: ledger, port: 5432,"
        f" reason: replication from the old data centre, expires: {db_expires}}}\n"
        "  - {namespace: payments, workload: ledger, port: 9100, reason: node exporter}\n"
        "  - {namespace: payments, workload: ledger, port: 6379, reason: the old cache}\n"
    )
    return path


def _audit(tmp_path: Path, name: str, *args: str) -> tuple[int, str, dict[str, Any]]:
    topology = tmp_path / "payments.yaml"
    topology.write_text(TOPOLOGY)
    report = tmp_path / f"{name}.yaml"
    with runs_made() as run_ids:
        code = main(["audit", "--mesh-topology", str(topology), *args, "--report", str(report)])
    data = yaml.safe_load(report.read_text())
    jsonschema.validate(data, json.loads(AUDIT_SCHEMA.read_text()))
    left = {run_id: traces_of(run_id) for run_id in run_ids}
    assert not any(left.values()), f"the audit left these behind: {left}"
    return code, report.read_text(), data


def _pod_ports(data: dict[str, Any]) -> dict[int, tuple[str, str, str | None]]:
    return {
        p["port"]: (p["class"], p["verdict"], p.get("exception"))
        for p in data["podPorts"]
        if p["workload"] == "ledger"
    }


def test_ss_listeners_reachable_by_pod_ip() -> None:
    text = (
        "LISTEN 0 128 0.0.0.0:8080 0.0.0.0:*\n"
        "LISTEN 0 128 127.0.0.1:15000 0.0.0.0:*\n"
        "LISTEN 0 128 [::]:9100 [::]:*\n"
        "LISTEN 0 128 10.244.0.3:5432 0.0.0.0:*\n"
        "LISTEN 0 128 10.244.0.9:7000 0.0.0.0:*\n"
        "LISTEN 0 128 [::ffff:127.0.0.1]:6000 [::]:*\n"
        "LISTEN 0 128 *:15006 *:*\n"
    )
    assert parse_listening_ports(text, "10.244.0.3") == (5432, 8080, 9100, 15006)


@needs_local_mesh
def test_bypasses_fail_until_accepted_and_again_once_expired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # no exceptions file: the excluded port and the port without a Service both fail
    code, _, data = _audit(tmp_path, "bare")
    out = capsys.readouterr().out
    assert code == 1, out
    assert _pod_ports(data) == {
        5432: ("excluded", "fail", "not accepted"),
        8080: ("in the mesh", "pass", None),
        9100: ("around the mesh", "fail", "not accepted"),
        15001: ("istio", "pass", None),
        15006: ("istio", "pass", None),
    }
    db = next(p for p in data["podPorts"] if p["port"] == 5432)
    assert db["bypass"] == "in traffic.sidecar.istio.io/excludeInboundPorts"
    assert db["source"] == "sockets" and db["probe"]["outcome"] == "answered"
    assert db["services"] == ["ledger.payments:5432"]
    assert data["podPortSummary"] == {"ports": 5, "bypasses": 2, "accepted": 0, "failed": 2}
    assert data["inapplicablePolicies"] == [] and data["acceptedExceptions"] == []
    # the line that ends the table counts the pod ports too (they fail the audit)
    assert any(
        line.endswith("; 5 pod ports: 3 passed, 2 failed or in error") for line in out.splitlines()
    ), out

    # every bypass accepted and unexpired: exit 0; the accepted ones listed apart, the entry
    # that matches no bypass listed as stale
    accept = _accept_file(tmp_path, "2999-12-31")
    code, _, data = _audit(tmp_path, "accepted", "--accept", str(accept))
    out = capsys.readouterr().out
    assert code == 0, out
    assert _pod_ports(data)[5432] == ("excluded", "pass", "accepted")
    assert _pod_ports(data)[9100] == ("around the mesh", "pass", "accepted")
    assert any(
        line.endswith("; 5 pod ports: 5 passed, 0 failed or in error, 2 accepted")
        for line in out.splitlines()
    ), out
    assert data["acceptedExceptions"] == [
        {
            "namespace": "payments",
            "workload": "ledger",
            "port": 5432,
            "class": "excluded",
            "reason": "replication from the old data centre",
            "expires": "2999-12-31",
        },
        {
            "namespace": "payments",
            "workload": "ledger",
            "port": 9100,
            "class": "around the mesh",
            "reason": "node exporter",
        },
    ]
    assert data["staleExceptions"] == [
        {"namespace": "payments", "workload": "ledger", "port": 6379, "line": 4}
    ]
    assert (
        "accepted exception: ledger.payments port 5432 (excluded): replication from the old"
        " data centre, until 2999-12-31"
    ) in out.splitlines()
    assert (
        f"stale exception: payments/ledger port 6379 ({accept}:4) matches no bypass:"
        " the entry can go"
    ) in out.splitlines()
    # the Service port on the excluded target port: plaintext only, whatever the mode
    db_service = next(p for p in data["ports"] if p["port"] == 5432)
    assert (db_service["predicted"], db_service["observed"], db_service["verdict"]) == (
        "EXCLUDED",
        "PLAINTEXT",
        "pass",
    )
    assert db_service["bypass"] == "in traffic.sidecar.istio.io/excludeInboundPorts"

    # the Markdown report lists the accepted ones apart from the other pod ports
    markdown = tmp_path / "accepted.md"
    assert (
        main(
            [
                "audit",
                "--mesh-topology",
                str(tmp_path / "payments.yaml"),
                "--accept",
                str(accept),
                "--report",
                str(markdown),
            ]
        )
        == 0
    )
    capsys.readouterr()
    pods, accepted = markdown.read_text().split(" Accepted exceptions (bypasses accepted by")
    pods = pods.split(" Pod ports (every port the audited pods listen on")[1]
    assert "ledger.payments port 8080" in pods and "ledger.payments port 5432" not in pods
    assert "ledger.payments port 5432" in accepted and "node exporter" in accepted

    # the entry for 5432 expired: exit 1 again, naming the day
    accept = _accept_file(tmp_path, "2020-01-31")
    code, _, data = _audit(tmp_path, "expired", "--accept", str(accept))
    out = capsys.readouterr().out
    assert code == 1, out
    assert _pod_ports(data)[5432] == ("excluded", "fail", "expired")
    assert _pod_ports(data)[9100] == ("around the mesh", "pass", "accepted")
    db = next(p for p in data["podPorts"] if p["port"] == 5432)
    assert "the accepted exception expired on 2020-01-31" in db["reason"]


@needs_local_mesh
def test_port_level_mtls_keyed_by_the_service_port_cannot_apply(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "ledger.yaml"
    policy.write_text(SERVICE_PORT_KEYED)
    accept = _accept_file(tmp_path, "2999-12-31")
    code, _, data = _audit(tmp_path, "keyed", "--policy", str(policy), "--accept", str(accept))
    out = capsys.readouterr().out
    assert code == 1, out
    assert data["inapplicablePolicies"] == [
        "PeerAuthentication payments/ledger: portLevelMtls 80 (STRICT) names a Service port"
        " (ledger.payments port 80 -> targetPort 8080), no port of the workloads it selects:"
        " it applies to nothing; key it by the targetPort. Istio keys portLevelMtls by the"
        " workload's port, not the Service's (PeerAuthentication reference;"
        " istio/istio#49098)"
    ]
    # the port the user believes STRICT takes plaintext, as Istio's rule predicts
    assert _pod_ports(data)[8080] == ("in the mesh", "pass", None)
    http = next(p for p in data["ports"] if p["port"] == 80)
    assert (http["predicted"], http["observed"]) == ("PERMISSIVE", "PERMISSIVE")
    assert f"policy that cannot apply: {data['inapplicablePolicies'][0]}" in out.splitlines()
