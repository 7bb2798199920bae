"""`meshconform audit` on the protocols real services speak (issue 25): the catalog topology
(examples/catalog/topology.yaml: Service ports `grpc` 50051, `metrics` 8081 with
`appProtocol: http2`, `grpc-web` 8083 and `storefront` 80, a name Istio does not recognise, so
it is sniffed), audited on the local mesh under STRICT and an AuthorizationPolicy allowing
one principal, and with no policy.

How each port is probed and what is expected, from Istio's protocol selection (istio.io,
"Protocol Selection"; `istio.service_port_protocol`): the HTTP family (gRPC, HTTP/2 and
gRPC-Web are HTTP/2 ports, "grpc, grpc-web: Same as http2") gets an HTTP request, which the
sidecar's HTTP connection manager handles whatever the app speaks, so a denial is Envoy's
`403 RBAC: access denied`; a sniffed port gets the TCP probe's line, which is not HTTP, so
Envoy's inspector sends it down the port's TCP chains, where a denial is the network RBAC
filter's close without a byte (istiod's `getFilterChainMatchOptions` for an auto-detected
port: TCP chains beside the HTTP ones). STRICT: "Connection is an mTLS tunnel" (istio.io,
PeerAuthentication reference) on every protocol alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from local_helpers import REPO, needs_local_mesh, runs_made, traces_of

from pytest_meshconform.cli import main

CATALOG = REPO / "examples" / "catalog" / "topology.yaml"
POLICIES = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-only, namespace: shop}
spec:
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/frontend/sa/frontend-web"]}
"""


def _audit(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    report = tmp_path / "audit.yaml"
    with runs_made() as run_ids:
        code = main(["audit", f"--mesh-topology={CATALOG}", *args, "--report", str(report)])
    left = {run_id: traces_of(run_id) for run_id in run_ids}
    assert not any(left.values()), f"the audit left these behind: {left}"
    data: dict[str, Any] = yaml.safe_load(report.read_text())
    return code, data


def _ports(data: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    return {
        f"{p['service']}:{p['port']}": (p["protocol"], p["predicted"], p["observed"], p["verdict"])
        for p in data["ports"]
    }


@needs_local_mesh
def test_grpc_http2_grpc_web_and_sniffed_ports_under_strict_and_authorization(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policies.yaml"
    policy.write_text(POLICIES)
    code, data = _audit(tmp_path, "--policy", str(policy))
    out = capsys.readouterr().out
    assert code == 0, out
    assert _ports(data) == {
        "catalog:50051": ("GRPC", "STRICT", "STRICT", "pass"),
        "catalog:8081": ("HTTP2", "STRICT", "STRICT", "pass"),
        "catalog:8083": ("GRPC-Web", "STRICT", "STRICT", "pass"),
        "catalog:80": ("UnsupportedProtocol", "STRICT", "STRICT", "pass"),
    }
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("catalog.shop:")}
    for http2 in ("catalog.shop:50051", "catalog.shop:8081", "catalog.shop:8083"):
        assert "authorization denied the mesh probe (HTTP 403 RBAC: access denied" in lines[http2]
    assert "authorization denied the mesh probe (closed without a byte" in lines["catalog.shop:80"]


@needs_local_mesh
def test_the_same_ports_without_a_policy_take_both(tmp_path: Path) -> None:
    code, data = _audit(tmp_path)
    assert code == 0
    assert {key: value[1:] for key, value in _ports(data).items()} == {
        key: ("PERMISSIVE", "PERMISSIVE", "pass")
        for key in ("catalog:50051", "catalog:8081", "catalog:8083", "catalog:80")
    }
