"""`meshconform audit`: predictions, usage errors, and the audit of real local meshes.

Where the expected values come from:

- Modes: Istio's authn-policy task (a namespace-wide STRICT PeerAuthentication refuses
  plaintext from clients without sidecar; PERMISSIVE, the default, accepts both; a workload
  without sidecar is outside the mesh and serves plaintext) and the PeerAuthentication
  reference (``portLevelMtls`` overrides the workload's mode for that container port).
- The ClientHello: ALPN ``istio-http/1.1, istio, http/1.1`` for HTTP (``mtlsHTTP11ALPN``) and
  ``istio-peer-exchange, istio`` for TCP (``ALPNInMeshWithMxc``), SNI
  ``outbound_.<port>_._.<fqdn>`` (``BuildDNSSrvSubsetKey``), from istio/istio's source.
- Istio's tcp-echo sample answers ``hello <line>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kube_fakes import kubeconfig_text
from local_helpers import needs_local_mesh, runs_made, traces_of

from pytest_meshconform.audit.cli import EXIT_USAGE
from pytest_meshconform.audit.discovery import discover_service_ports
from pytest_meshconform.audit.local import with_audit_probes
from pytest_meshconform.audit.observe import WireEvidence, wire_problems
from pytest_meshconform.audit.report import AUDIT_SCHEMA
from pytest_meshconform.backends.local.backend import LocalMesh
from pytest_meshconform.backends.local.entry import builtin_topology
from pytest_meshconform.backends.local.topology_file import TopologyError, parse_topology
from pytest_meshconform.cli import main
from pytest_meshconform.istio.api.peer_authentication import peer_authentication

FOO_STRICT = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {mtls: {mode: STRICT}}
"""
MESH_STRICT = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"""
ECHO_TOPOLOGY = """\
namespaces:
  - name: shop
    injected: true
    workloads:
      - name: echo
        kind: tcp-echo
        ports: [9000, 9001]
    services:
      - name: echo
        selector: {app: echo}
        ports:
          - {name: tcp-main, port: 9000}
          - {name: tcp-side, port: 9100, targetPort: 9001}
"""
ECHO_POLICY = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: echo, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  mtls: {mode: STRICT}
  portLevelMtls:
    9001: {mode: DISABLE}
"""


def _validate(report: dict[str, Any]) -> None:
    jsonschema.validate(report, json.loads(AUDIT_SCHEMA.read_text()))


def test_predictions_come_from_the_policies_in_force() -> None:
    mesh = LocalMesh(topology=with_audit_probes(parse_topology(ECHO_TOPOLOGY, "echo.yaml")))
    probe = mesh.workload("probe", "meshconform-audit")
    ports = discover_service_ports(mesh, [yaml.safe_load(ECHO_POLICY)], client=probe)
    by_key = {p.key: p for p in ports}
    assert sorted(by_key) == ["echo.shop:9000", "echo.shop:9100"]  # never the probes' namespace
    main_port, side = by_key["echo.shop:9000"], by_key["echo.shop:9100"]
    assert (main_port.predicted, main_port.expected, main_port.client_sends_mtls) == (
        "STRICT",
        "STRICT",
        True,
    )
    # port level DISABLE: auto mTLS sends plaintext to it, and it serves plaintext
    assert (side.predicted, side.expected, side.client_sends_mtls) == (
        "DISABLE",
        "PLAINTEXT",
        False,
    )
    assert main_port.upstream is not None
    assert main_port.upstream.sni == "outbound_.9000_._.echo.shop.svc.cluster.local"
    assert main_port.upstream.alpn == ("istio-peer-exchange", "istio")


ECHO_PLAINTEXT_RULE = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: shop}
spec:
  host: echo.shop.svc.cluster.local
  trafficPolicy: {tls: {mode: DISABLE}}
"""


def test_without_a_client_the_prediction_is_the_audit_probes() -> None:
    """Istio's DestinationRule reference: ``tls.mode: DISABLE`` makes every client sidecar
    send plaintext (no auto mTLS), which a STRICT endpoint refuses; a client without a sidecar
    sends plaintext whatever the rules say."""
    mesh = LocalMesh(topology=with_audit_probes(parse_topology(ECHO_TOPOLOGY, "echo.yaml")))
    strict = yaml.safe_load(ECHO_POLICY)
    default = {p.key: p for p in discover_service_ports(mesh, [strict])}
    main_port = default["echo.shop:9000"]
    assert main_port.upstream is not None
    assert main_port.upstream.sni == "outbound_.9000_._.echo.shop.svc.cluster.local"
    assert (main_port.predicted, main_port.client_sends_mtls, main_port.expected) == (
        "STRICT",
        True,
        "STRICT",
    )
    ruled = {
        p.key: p
        for p in discover_service_ports(mesh, [strict, yaml.safe_load(ECHO_PLAINTEXT_RULE)])
    }
    assert (ruled["echo.shop:9000"].client_sends_mtls, ruled["echo.shop:9000"].expected) == (
        False,
        "CLOSED",
    )
    assert (ruled["echo.shop:9100"].client_sends_mtls, ruled["echo.shop:9100"].expected) == (
        False,
        "PLAINTEXT",
    )
    naked = mesh.workload("probe-naked", "meshconform-audit")
    by_naked = {p.key: p for p in discover_service_ports(mesh, [strict], client=naked)}
    assert by_naked["echo.shop:9000"].upstream is None
    assert (by_naked["echo.shop:9000"].client_sends_mtls, by_naked["echo.shop:9000"].expected) == (
        False,
        "CLOSED",
    )


@pytest.mark.parametrize(
    ("alpn", "problem"),
    [
        (("istio-http/1.1", "istio", "http/1.1"), None),  # mtlsHTTP11ALPN
        (("istio-peer-exchange", "istio"), None),  # ALPNInMeshWithMxc
        (("istio-h2",), None),  # one of allIstioMtlsALPNs is enough for the inbound chain
        (("h2", "http/1.1"), "has none of Istio's mTLS ALPNs"),  # TLS, but not a sidecar's
    ],
)
def test_the_wire_must_show_a_clienthello_istio_takes_as_mtls(
    alpn: tuple[str, ...], problem: str | None
) -> None:
    """Istio's inbound chains take a connection as Istio mTLS when its ALPN holds one of
    ``allIstioMtlsALPNs`` (pilot/pkg/networking/core); the SNI is ``outbound_.<port>_._.<fqdn>``
    (``BuildDNSSrvSubsetKey``)."""
    mesh = LocalMesh(topology=with_audit_probes(parse_topology(ECHO_TOPOLOGY, "echo.yaml")))
    probe = mesh.workload("probe", "meshconform-audit")
    port = next(p for p in discover_service_ports(mesh, []) if p.key == "echo.shop:9000")
    sni = "outbound_.9000_._.echo.shop.svc.cluster.local"
    problems = wire_problems(
        port, WireEvidence(pcap=None, flows=1, tls=True, sni=sni, alpn=alpn), probe
    )
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1
        assert problem in problems[0] and str(list(alpn)) in problems[0]
    wrong_sni = WireEvidence(pcap=None, flows=1, tls=True, sni="echo", alpn=alpn)
    assert f"the ClientHello's SNI is 'echo', Istio's is {sni!r}" in wire_problems(
        port, wrong_sni, probe
    )
    unseen = wire_problems(port, WireEvidence(pcap=None, flows=0, tls=False), probe)
    assert unseen == [
        "the capture at probe.meshconform-audit saw no connection to port 9000: the mesh"
        " request never reached the endpoint"
    ]


def test_a_topology_cannot_take_the_audits_namespace() -> None:
    taken = ECHO_TOPOLOGY.replace("name: shop", "name: meshconform-audit")
    with pytest.raises(TopologyError, match="'meshconform-audit' is the audit's own"):
        with_audit_probes(parse_topology(taken, "taken.yaml"))
    probes = with_audit_probes(parse_topology(ECHO_TOPOLOGY, "echo.yaml")).pods[-2:]
    assert [(p.workload.key, p.workload.has_sidecar, p.ip) for p in probes] == [
        ("probe.meshconform-audit", True, "10.244.0.11"),
        ("probe-naked.meshconform-audit", False, "10.244.0.12"),
    ]


def test_namespace_selection() -> None:
    mesh = LocalMesh()
    everything = [p.key for p in discover_service_ports(mesh, [])]
    assert everything == [
        "httpbin.foo:8000",
        "httpbin.foo:50051",
        "httpbin.bar:8000",
        "httpbin.bar:50051",
        "httpbin.legacy:8000",
    ]
    legacy = discover_service_ports(mesh, [], namespaces=["legacy"])
    assert [(p.key, p.predicted, p.expected) for p in legacy] == [
        ("httpbin.legacy:8000", "NO_SIDECAR", "PLAINTEXT")
    ]
    rest = discover_service_ports(
        mesh, [peer_authentication("default", "foo", "STRICT")], exclude_namespaces=["legacy"]
    )
    assert [(p.key, p.predicted) for p in rest] == [
        ("httpbin.foo:8000", "STRICT"),
        ("httpbin.foo:50051", "STRICT"),
        ("httpbin.bar:8000", "PERMISSIVE"),
        ("httpbin.bar:50051", "PERMISSIVE"),
    ]


def test_a_service_port_names_the_waypoint_its_traffic_goes_through() -> None:
    """`ServicePort.waypoint`: the ambient built-in topology's bar has the namespace waypoint
    `waypoint` (istio.io's ambient getting started: `istioctl waypoint apply
    --enroll-namespace`), so its Services' traffic from ambient clients goes through it; foo
    has none, sidecars and plaintext pods never."""
    ambient = LocalMesh(topology=builtin_topology("ambient"))
    assert [(p.key, p.waypoint) for p in discover_service_ports(ambient, [])] == [
        ("httpbin.foo:8000", None),
        ("httpbin.foo:50051", None),
        ("httpbin.bar:8000", "bar/waypoint"),
        ("httpbin.bar:50051", "bar/waypoint"),
        ("httpbin.legacy:8000", None),
    ]
    assert {p.waypoint for p in discover_service_ports(LocalMesh(), [])} == {None}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mesh-cluster=existing"], "--mesh-cluster=existing needs --mesh-kube-context=NAME"),
        (["--mesh-cluster=kind"], "--mesh-cluster=kind: the audit reads a cluster you run"),
        (
            ["--mesh-cluster=existing", "--mesh-kube-context=nope"],
            "kube context 'nope' is not in the kubeconfig",
        ),
        (
            ["--mesh-cluster=existing", "--policy", "x.yaml"],
            "--policy applies policies to the local mesh only",
        ),
        (["--report", "out.txt"], "--report out.txt: accepted suffixes: .yaml, .yml, .json"),
        (["--namespace", "nope"], "--namespace nope: no such namespace in the mesh"),
        (
            ["--namespace", "foo", "--exclude-namespace", "foo"],
            "--namespace and --exclude-namespace both name foo",
        ),
        (["--policy", "missing.yaml"], "missing.yaml: no such file"),
    ],
)
def test_usage_errors_exit_2_naming_the_fix(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "kubeconfig").write_text(kubeconfig_text("https://127.0.0.1:9"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    assert main(["audit", *argv]) == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_a_bad_topology_or_policy_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topology = tmp_path / "t.yaml"
    topology.write_text("namespaces:\n  - name: a\n    injected: sure\n")
    assert main(["audit", f"--mesh-topology={topology}"]) == EXIT_USAGE
    assert (
        f"{topology}:3: namespaces[0].injected: expected true or false" in capsys.readouterr().err
    )
    policy = tmp_path / "p.yaml"
    policy.write_text(FOO_STRICT.replace("STRICT", "STRICTEST"))
    assert main(["audit", "--policy", str(policy)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert str(policy) in err and "STRICTEST" in err


def test_the_report_schema_refuses_a_wrong_report() -> None:
    with pytest.raises(jsonschema.ValidationError):
        _validate({"apiVersion": "meshconform/v1alpha1", "kind": "AuditReport"})


def _run(tmp_path: Path, *args: str) -> tuple[int, str, dict[str, Any]]:
    report = tmp_path / "audit.yaml"
    with runs_made() as run_ids:
        code = main(["audit", "--mesh-cluster=local", *args, "--report", str(report)])
    data = yaml.safe_load(report.read_text())
    _validate(data)
    left = {run_id: traces_of(run_id) for run_id in run_ids}
    assert not any(left.values()), f"the audit left these behind: {left}"
    return code, report.read_text(), data


@needs_local_mesh
def test_strict_on_foo_only_fails_naming_the_plaintext_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "foo-strict.yaml"
    policy.write_text(FOO_STRICT)
    code, _, data = _run(
        tmp_path, "--policy", str(policy), "--require=STRICT", "--exclude-namespace", "legacy"
    )
    out = capsys.readouterr().out
    assert code == 1, out
    line = next(x for x in out.splitlines() if x.startswith("httpbin.bar:8000"))
    assert "accepts plaintext; required STRICT" in line and "FAIL" in line
    ports = {f"{p['service']}.{p['namespace']}:{p['port']}": p for p in data["ports"]}
    assert sorted(ports) == [
        "httpbin.bar:50051",
        "httpbin.bar:8000",
        "httpbin.foo:50051",
        "httpbin.foo:8000",
    ]
    # the grpc ports (grpc-echo) are judged as the http ones: the policy is per workload
    verdicts = {k: (p["predicted"], p["observed"], p["verdict"]) for k, p in ports.items()}
    assert verdicts["httpbin.foo:50051"] == ("STRICT", "STRICT", "pass")
    assert verdicts["httpbin.bar:50051"] == ("PERMISSIVE", "PERMISSIVE", "fail")
    foo, bar = ports["httpbin.foo:8000"], ports["httpbin.bar:8000"]
    assert (foo["predicted"], foo["observed"], foo["verdict"]) == ("STRICT", "STRICT", "pass")
    assert (bar["predicted"], bar["observed"], bar["verdict"]) == (
        "PERMISSIVE",
        "PERMISSIVE",
        "fail",
    )
    assert bar["meetsRequirement"] is False and bar["conforms"] is True
    assert bar["evidence"]["plaintext"]["status"] == 200  # the naked probe got an answer
    assert foo["evidence"]["plaintext"]["answered"] is False  # STRICT reset it
    wire = foo["evidence"]["wire"]
    assert wire["tls"] is True and wire["plaintextPayload"] is False
    assert wire["alpn"] == ["istio-http/1.1", "istio", "http/1.1"]
    assert wire["sni"] == "outbound_.8000_._.httpbin.foo.svc.cluster.local"
    assert Path(wire["pcap"]).is_file()
    assert data["result"] == "failure" and data["require"] == "STRICT"
    assert data["excludedNamespaces"] == ["legacy"]


@needs_local_mesh
def test_mesh_wide_strict_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "mesh-strict.yaml"
    policy.write_text(MESH_STRICT)
    code, _, data = _run(
        tmp_path, "--policy", str(policy), "--require=STRICT", "--exclude-namespace", "legacy"
    )
    assert code == 0, capsys.readouterr().out
    assert [(p["namespace"], p["port"], p["observed"]) for p in data["ports"]] == [
        ("foo", 8000, "STRICT"),
        ("foo", 50051, "STRICT"),
        ("bar", 8000, "STRICT"),
        ("bar", 50051, "STRICT"),
    ]
    assert data["summary"] == {"ports": 4, "passed": 4, "failed": 0, "errors": 0}


@needs_local_mesh
def test_a_workload_without_sidecar_fails_the_requirement_unless_excluded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "mesh-strict.yaml"
    policy.write_text(MESH_STRICT)
    code, _, data = _run(tmp_path, "--policy", str(policy), "--require=STRICT")
    out = capsys.readouterr().out
    assert code == 1
    legacy = next(p for p in data["ports"] if p["namespace"] == "legacy")
    assert (legacy["predicted"], legacy["observed"], legacy["verdict"]) == (
        "NO_SIDECAR",
        "PLAINTEXT",
        "fail",
    )
    assert "outside the mesh (no sidecar)" in out


@needs_local_mesh
def test_a_two_port_tcp_service_is_audited_port_by_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topology = tmp_path / "echo.yaml"
    topology.write_text(ECHO_TOPOLOGY)
    policy = tmp_path / "echo-policy.yaml"
    policy.write_text(ECHO_POLICY)
    code, _, data = _run(tmp_path, f"--mesh-topology={topology}", "--policy", str(policy))
    out = capsys.readouterr().out
    assert code == 0, out
    ports = {p["port"]: p for p in data["ports"]}
    strict, disabled = ports[9000], ports[9100]
    assert (strict["protocol"], strict["predicted"], strict["observed"]) == (
        "TCP",
        "STRICT",
        "STRICT",
    )
    assert strict["evidence"]["plaintext"]["answered"] is False
    assert strict["evidence"]["mesh"]["detail"] == (
        "hello meshconform-audit; the probe closed the connection once the echo came back"
    )
    assert strict["evidence"]["wire"]["alpn"] == ["istio-peer-exchange", "istio"]
    assert strict["evidence"]["wire"]["sni"] == "outbound_.9000_._.echo.shop.svc.cluster.local"
    assert (disabled["targetPort"], disabled["predicted"], disabled["observed"]) == (
        9001,
        "DISABLE",
        "PLAINTEXT",
    )
    assert disabled["evidence"]["plaintext"]["detail"] == (
        "hello meshconform-audit; the probe closed the connection once the echo came back"
    )
    assert disabled["evidence"]["wire"]["tls"] is False
    assert disabled["evidence"]["wire"]["plaintextPayload"] is True
    # and with --require=STRICT the DISABLEd port is named as accepting plaintext
    code, _, data = _run(
        tmp_path, f"--mesh-topology={topology}", "--policy", str(policy), "--require=STRICT"
    )
    assert code == 1
    assert [p["port"] for p in data["ports"] if p["verdict"] == "fail"] == [9100]


@needs_local_mesh
def test_a_policy_that_selects_nothing_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "typo.yaml"
    policy.write_text(
        FOO_STRICT.replace("spec: {", "spec: {selector: {matchLabels: {app: httpbinn}}, ")
    )
    with runs_made() as run_ids:
        assert main(["audit", "--policy", str(policy)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "applies to no workload" in err and "httpbinn" in err, err
    assert not any(traces_of(run_id) for run_id in run_ids)
