"""`meshconform audit --mesh-cluster=existing` against the fake API server and recorded data.

The official kubernetes client talks to `tests/kube_fakes.py`'s FakeApiServer (real WebSocket
exec); the cluster holds namespaces `foo` (a STRICT PeerAuthentication) and `bar`, each with
Service `httpbin` (port `http` 8000 -> 8080) in front of an injected httpbin pod. The probes'
captures are the pcaps recorded at the real audit probe of the local mesh
(`tests/data/kube/audit-probe-httpbin.*-8000.pcap`, see that README); curl answers as curl
8.x prints (`-i` head and body, then the `-w %{json}` write-out), a STRICT server's reset as
curl's exit 56. Expected: Istio's authn-policy task (STRICT refuses plaintext, PERMISSIVE
accepts it) and that the audit writes nothing but its own namespace. The mesh probe by pod
IP replays what the local audit's probe captured and printed for the same headless Service
(`tests/data/kube/audit-probe-pod-kv.stock-*`), and expects the local audit's verdicts
(tests/test_audit_headless.py; docs/istio-model.md, "Traffic to a pod IP").
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from kube_fakes import (
    DATA_DIR,
    DEFAULT_MESH_CONFIG,
    ExecCall,
    ExecChannel,
    FakeApiServer,
    FakeCluster,
    FakeIstio,
    config_map_json,
    istiod_deployment,
    kubeconfig_text,
    marker_record,
    pod_json,
    status_exit,
)
from kube_ztunnel_fakes import ISTIO_ZTUNNEL_DUMP, FakeZtunnel

from pytest_meshconform.audit.engine import run_audit
from pytest_meshconform.audit.exceptions import load_exceptions
from pytest_meshconform.audit.kube import KubeAuditMesh, cluster_topology
from pytest_meshconform.audit.report import AUDIT_SCHEMA
from pytest_meshconform.backends.kube.client import KubeApi
from pytest_meshconform.backends.kube.options import KubeOptions
from pytest_meshconform.evidence.curl import WRITE_OUT_MARKER
from pytest_meshconform.evidence.tcp_connect import TCP_WRITE_OUT_MARKER
from pytest_meshconform.evidence.wire import analyze_pcap

FOO_STRICT = {
    "apiVersion": "security.istio.io/v1",
    "kind": "PeerAuthentication",
    "metadata": {"name": "default", "namespace": "foo"},
    "spec": {"mtls": {"mode": "STRICT"}},
}


def _service(
    namespace: str, ports: list[dict[str, Any]], name: str = "httpbin", **spec: Any
) -> dict[str, Any]:
    """A Service selecting ``app: <name>`` unless ``spec`` says otherwise."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"app": name}, "ports": ports, **spec},
    }


def _namespace(name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": dict(labels)}}


INJECTED = {"istio-injection": "enabled"}
HTTP_8000 = [{"name": "http", "port": 8000, "targetPort": 8080, "protocol": "TCP"}]


class AuditCluster(FakeCluster):
    """FakeCluster with the user's Services and namespaces, honouring the probes' inject
    annotation as Istio's injector does."""

    services: dict[str, list[dict[str, Any]]]

    def __post_init__(self) -> None:
        super().__post_init__()
        self.services = {}
        for namespace in ("foo", "bar"):
            self.namespaces[namespace] = _namespace(namespace, INJECTED)
            self.services[namespace] = [_service(namespace, HTTP_8000)]
            self.pods[namespace] = [
                pod_json(f"httpbin-7d8f-{namespace}", namespace, "httpbin", sidecar=True),
                pod_json(f"sleep-5c6d-{namespace}", namespace, "sleep", sidecar=True),
            ]
        self.namespaces["kube-system"] = {"metadata": {"name": "kube-system"}}

    def list_namespaces(self, label_selector: str) -> list[dict[str, Any]]:
        if not label_selector:
            self.calls.append("list namespaces")
            return json.loads(json.dumps(list(self.namespaces.values())))
        return super().list_namespaces(label_selector)

    def list_objects(
        self, api_version: str, kind: str, namespace: str, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        if (api_version, kind) == ("v1", "Service"):
            return json.loads(json.dumps(self.services.get(namespace, [])))
        return super().list_objects(api_version, kind, namespace, label_selector)

    def _schedule(self, deployment: Mapping[str, Any]) -> None:
        super()._schedule(deployment)
        template = deployment["spec"]["template"]["metadata"]
        ambient = (template.get("labels") or {}).get("istio.io/dataplane-mode") == "ambient"
        if (template.get("annotations") or {}).get("sidecar.istio.io/inject") == "false" and (
            not ambient  # FakeCluster enrols it as istio-cni would
        ):
            namespace = deployment["metadata"]["namespace"]
            app = deployment["metadata"]["name"]
            self.pods[namespace] = [
                p for p in self.pods[namespace] if p["metadata"]["labels"]["app"] != app
            ] + [pod_json(f"{app}-6c8f9d7b5-0q2w", namespace, app, sidecar=False)]


def _curl_ok(body: bytes = b'{"headers": {}}') -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n"
    return head + body + WRITE_OUT_MARKER.encode() + b'{"http_code":200,"time_total":0.004}'


class AuditIstio(FakeIstio):
    """Plays curl in the probes (plaintext refused by the STRICT namespace) and the capture
    (the recorded pcap of the Service the probe asks next)."""

    def __call__(self, call: ExecCall, channel: ExecChannel) -> None:
        if call.container == "mc-capture":
            self.capture_pcap = (
                DATA_DIR / f"audit-probe-{self.next_target}-8000.pcap"
            ).read_bytes()
            self.capture_stderr = (
                b"tcpdump: listening on eth0, link-type EN10MB (Ethernet), snapshot length"
                b" 262144 bytes\n2 packets captured\n"
            )
        elif call.command[:1] == ["curl"]:
            url = call.command[-1]
            naked = call.container == "probe-naked"
            if naked and "httpbin.foo:" in url:
                channel.send(2, b"curl: (56) Recv failure: Connection reset by peer\n")
                channel.send(1, WRITE_OUT_MARKER.encode() + b'{"http_code":0}')
                channel.send_status(status_exit(56))
                return
            channel.send(1, _curl_ok())
            channel.send_status({"metadata": {}, "status": "Success"})
            return
        elif call.command[:2] == ["sh", "-c"] and self.pod_answers:
            # the plaintext probe by pod IP: a STRICT sidecar resets it, an app answers
            target = next(a for a in call.command if a.startswith("telnet://"))
            answer = self.pod_answers[target.removeprefix("telnet://")]
            connected = f"* Connected to {target} port\n".encode()
            if answer == "reset":
                channel.send(2, connected + b"curl: (56) Recv failure: Connection reset by peer\n")
                channel.send(1, TCP_WRITE_OUT_MARKER.encode() + b'{"time_connect":0.001}')
                channel.send_status(status_exit(56))
            else:
                channel.send(2, connected)
                channel.send(1, answer.encode() + TCP_WRITE_OUT_MARKER.encode() + b"{}")
                channel.send_status({"metadata": {}, "status": "Success"})
            return
        super().__call__(call, channel)

    next_target = ""
    pod_answers: Mapping[str, str] = {}  # pod IP:port -> "reset" or the app's answer


@contextmanager
def _serving(fake: AuditCluster, istio: AuditIstio, tmp_path: Path) -> Iterator[FakeApiServer]:
    """The fake's API server for the block, its exec calls answered by ``istio``; the fake
    execs through it (a kubeconfig in ``tmp_path``)."""
    with FakeApiServer(exec_handler=istio) as server:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(kubeconfig_text(server.url))
        fake.exec_api = KubeApi.connect(kubeconfig, "fake")
        yield server


def _cluster_of_its_own(*, ztunnel: bool = False) -> AuditCluster:
    """An AuditCluster without its foo and bar: the test puts its own namespaces in."""
    fake = AuditCluster(ztunnel=ztunnel)
    for namespace in ("foo", "bar"):
        del fake.namespaces[namespace], fake.services[namespace], fake.pods[namespace]
    return fake


def _audit_mesh(
    fake: AuditCluster, tmp_path: Path, run_id: str, options: KubeOptions | None = None
) -> KubeAuditMesh:
    """The audit's mesh on the fake cluster: quiet, its run directory ``tmp_path``."""
    return KubeAuditMesh(
        fake,
        options=options or KubeOptions(),
        progress=lambda line: None,
        run_dir=tmp_path,
        run_id=run_id,
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[AuditCluster, AuditIstio]]:
    cluster = AuditCluster()
    cluster.apply(FOO_STRICT)  # the user's policy, there before the audit
    istio = AuditIstio(cluster)
    with _serving(cluster, istio, tmp_path):
        cluster.calls.clear()
        yield cluster, istio


def test_cluster_topology_reads_services_and_pods() -> None:
    pods = {
        "shop": [
            pod_json("web-1", "shop", "web", sidecar=True, labels={"tier": "front"}),
            pod_json("web-2", "shop", "web", sidecar=True, labels={"tier": "front"}),
            pod_json("old-1", "shop", "old", sidecar=False),
        ]
    }
    services = {
        "shop": [
            {
                "metadata": {"name": "web"},
                "spec": {
                    "selector": {"app": "web", "tier": "front"},
                    "ports": [
                        {"name": "http-web", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                        {"name": "dns", "port": 53, "protocol": "UDP"},
                    ],
                },
            },
            {"metadata": {"name": "ext"}, "spec": {"type": "ExternalName"}},
            {
                "metadata": {"name": "hl"},
                "spec": {
                    "clusterIP": "None",
                    "selector": {"app": "web"},
                    "ports": [
                        {"name": "tcp-peer", "port": 8080, "protocol": "TCP"},
                        {"name": "tcp-admin", "port": 9000, "targetPort": 8080},
                    ],
                },
            },
            {
                "metadata": {"name": "gone"},
                "spec": {"selector": {"app": "nope"}, "ports": [{"port": 9000, "protocol": "TCP"}]},
            },
        ]
    }
    excluded = "traffic.sidecar.istio.io/excludeInboundPorts"
    pods["shop"][0]["metadata"]["annotations"] = {excluded: "5432"}
    pods["shop"][0]["spec"]["containers"][0]["ports"] = [
        {"containerPort": 8080},
        {"containerPort": 5432},
    ]
    found = cluster_topology(["shop"], services, pods)
    # the pod spec's ports and interception annotations: what the audit's pod ports read there
    web = found.workloads[0]
    assert (web.container_ports, web.annotations[excluded]) == ((5432, 8080), "5432")
    assert [(w.name, w.has_sidecar, w.labels.get("tier")) for w in found.workloads] == [
        ("web", True, "front"),  # two replicas, one workload
        ("old", False, None),
    ]
    svc, headless = found.services
    assert (svc.key, svc.target_port, svc.port_name, dict(svc.selector), svc.headless) == (
        "web.shop:80",
        8080,
        "http-web",
        {"app": "web", "tier": "front"},
        False,
    )
    # a headless Service's port is the container port its name leads to
    assert (headless.key, headless.target_port, headless.headless) == ("hl.shop:8080", 8080, True)
    assert found.not_audited == (
        "web.shop:53: UDP (only TCP is audited)",
        "ext.shop: no selector (ExternalName or manual endpoints)",
        "hl.shop:9000: headless, targetPort 8080 (clients of a headless Service connect to the"
        " pod at the port itself)",
        "gone.shop:9000: no ready endpoint",
    )


def test_cluster_topology_knows_ambient_pods_by_istio_cnis_mark() -> None:
    """A pod istio-cni enrolled carries ``ambient.istio.io/redirection: enabled``: it is an
    ambient workload (ztunnel judges its ports); one of the same labels started before the
    namespace was labelled has no mark and is a workload of its own, without a data plane."""
    enrolled = pod_json(
        "ledger-1",
        "bank",
        "ledger",
        sidecar=False,
        annotations={"ambient.istio.io/redirection": "enabled"},
    )
    late = pod_json("ledger-2", "bank", "ledger", sidecar=False)
    found = cluster_topology(["bank"], {}, {"bank": [enrolled, late]})
    assert [(w.name, w.dataplane) for w in found.workloads] == [
        ("ledger", "ambient"),
        ("ledger", "none"),
    ]


def test_the_audit_of_a_cluster_reads_and_only_writes_its_namespace(
    cluster: tuple[AuditCluster, AuditIstio], tmp_path: Path
) -> None:
    fake, istio = cluster
    mesh = _audit_mesh(fake, tmp_path, "a1b2c3")
    _route_captures(fake, istio)
    umask = os.umask(0)  # the captures and the evidence are private whatever the umask
    try:
        mesh.start()
        try:
            result = run_audit(mesh, require="STRICT", evidence_dir=tmp_path / "evidence")
            modes = {
                str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode)
                for kept in ("captures", "evidence")
                for p in (tmp_path / kept, *(tmp_path / kept).iterdir())
            }
        finally:
            mesh.close()  # removes its run directory
    finally:
        os.umask(umask)
    captures = [name for name in modes if name.startswith("captures/probe.meshconform-audit-")]
    assert len(captures) == 2, modes  # a capture per port, in the probe's pod
    assert modes == {
        "captures": 0o700,
        **dict.fromkeys(captures, 0o600),
        "evidence": 0o700,
        **{f"evidence/{port}.pcap": 0o600 for port in ("httpbin.bar-8000", "httpbin.foo-8000")},
    }
    by_key = {r.port.key: r for r in result.ports}
    assert sorted(by_key) == ["httpbin.bar:8000", "httpbin.foo:8000"]
    foo, bar = by_key["httpbin.foo:8000"], by_key["httpbin.bar:8000"]
    assert (foo.port.predicted, foo.observed, foo.verdict) == ("STRICT", "STRICT", "pass"), foo
    assert (bar.port.predicted, bar.observed, bar.verdict) == ("PERMISSIVE", "PERMISSIVE", "fail")
    assert bar.reason == "accepts plaintext; required STRICT"
    assert (
        foo.wire is not None and foo.wire.sni == "outbound_.8000_._.httpbin.foo.svc.cluster.local"
    )
    assert foo.plaintext is not None and foo.plaintext.exit_code == 56
    writes = [c for c in fake.calls if not c.startswith("list")]
    ns = "meshconform-audit-a1b2c3"
    assert writes[:3] == [
        f"create namespace {ns}",
        f"apply Deployment {ns}/probe",
        f"apply Deployment {ns}/probe-naked",
    ]
    assert writes[-1] == f"delete namespace {ns}"
    assert all(ns in c for c in writes), writes  # nothing of the user's was written
    report = result.to_dict()
    jsonschema.validate(report, json.loads(AUDIT_SCHEMA.read_text()))
    assert report["mesh"]["backend"] == "existing"
    assert yaml.safe_load(yaml.safe_dump(report))["result"] == "failure"


def test_the_pods_ports_of_a_cluster_come_from_the_pod_spec(
    cluster: tuple[AuditCluster, AuditIstio], tmp_path: Path
) -> None:
    """On a cluster the audit lists each pod's ports from its spec (it never execs into your
    pods) and probes each by pod IP from its naked probe: foo is STRICT (the sidecar resets
    plaintext), bar PERMISSIVE with port 9090 excluded from interception by annotation."""
    fake, istio = cluster
    for namespace, ip in (("foo", "10.244.1.5"), ("bar", "10.244.2.5")):
        httpbin = fake.pods[namespace][0]
        httpbin["status"]["podIP"] = ip
        httpbin["spec"]["containers"][0]["ports"] = [
            {"containerPort": 8080, "name": "http"},
            {"containerPort": 9090, "name": "metrics"},
        ]
    excluded = "traffic.sidecar.istio.io/excludeInboundPorts"
    fake.pods["bar"][0]["metadata"].setdefault("annotations", {})[excluded] = "9090"
    istio.pod_answers = {
        "10.244.1.5:8080": "reset",
        "10.244.1.5:9090": "reset",
        "10.244.2.5:8080": "HTTP/1.1 400 Bad Request\r\n\r\n",
        "10.244.2.5:9090": "# metrics\n",
    }
    accept = tmp_path / "exceptions.yaml"
    accept.write_text(
        "exceptions:\n  - {namespace: bar, workload: httpbin, port: 9090, reason: scraping}\n"
    )
    mesh = _audit_mesh(fake, tmp_path, "d4e5f6")
    _route_captures(fake, istio)
    mesh.start()
    try:
        result = run_audit(mesh, exceptions=load_exceptions(accept))
    finally:
        mesh.close()
    found = {
        r.port.key: (r.port.source, r.port_class, r.verdict, r.outcome) for r in result.pod_ports
    }
    assert found == {
        "httpbin.bar port 8080": ("pod spec", "in the mesh", "pass", "answered"),
        "httpbin.bar port 9090": ("pod spec", "excluded", "pass", "answered"),
        "httpbin.foo port 8080": ("pod spec", "in the mesh", "pass", "reset"),
        "httpbin.foo port 9090": ("pod spec", "in the mesh", "pass", "reset"),
    }
    (accepted,) = result.accepted
    assert accepted.port.bypass == f"in {excluded}"
    assert accepted.reason.endswith(f"accepted: scraping ({accept}:2)")
    report = result.to_dict()
    jsonschema.validate(report, json.loads(AUDIT_SCHEMA.read_text()))
    assert report["acceptedExceptions"] == [
        {
            "namespace": "bar",
            "workload": "httpbin",
            "port": 9090,
            "class": "excluded",
            "reason": "scraping",
        }
    ]


def _route_captures(
    fake: AuditCluster, istio: AuditIstio, order: Iterable[str] = ("httpbin.bar", "httpbin.foo")
) -> None:
    """Hand each capture the recorded pcap of the target probed next (``order``; by default
    the Services of foo and bar, sorted namespaces)."""
    targets = iter(order)
    original = fake.open_exec

    def open_exec(
        namespace: str, pod: str, container: str, argv: Any, *, stdin: bool = False
    ) -> Any:
        if container == "mc-capture":
            istio.next_target = next(targets)
        return original(namespace, pod, container, argv, stdin=stdin)

    fake.open_exec = open_exec  # type: ignore[method-assign]


def test_the_command_audits_a_cluster_and_says_what_it_creates(
    cluster: tuple[AuditCluster, AuditIstio],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pytest_meshconform.backends.kube import client as kube_client, kind as kube_kind
    from pytest_meshconform.cli import main

    fake, istio = cluster
    _route_captures(fake, istio)
    monkeypatch.setattr(
        kube_kind, "resolve_context", lambda name: kube_kind.ResolvedContext(name, None)
    )
    monkeypatch.setattr(kube_client.KubeApi, "connect", lambda *a, **k: fake)
    report = tmp_path / "audit.json"
    code = main(
        [
            "audit",
            "--mesh-cluster=existing",
            "--mesh-kube-context=fake",
            "--require=STRICT",
            "--report",
            str(report),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1, out + err
    assert "the audit only reads your resources; it creates namespace meshconform-audit-" in err
    assert any(
        line.startswith("httpbin.bar:8000") and "accepts plaintext; required STRICT" in line
        for line in out.splitlines()
    ), out
    data = json.loads(report.read_text())
    jsonschema.validate(data, json.loads(AUDIT_SCHEMA.read_text()))
    assert [p["verdict"] for p in data["ports"]] == ["fail", "pass"]
    assert all(Path(p["evidence"]["wire"]["pcap"]).is_file() for p in data["ports"])
    writes = [c for c in fake.calls if not c.startswith("list")]
    assert all("meshconform-audit-" in c for c in writes), writes
    assert writes[-1].startswith("delete namespace meshconform-audit-")


def test_the_audits_namespace_is_labelled_for_the_revision_and_the_discovery_selectors(
    cluster: tuple[AuditCluster, AuditIstio], tmp_path: Path
) -> None:
    """A revision-only Istio (its injector selects istio.io/rev=<rev>, mutatingwebhook.yaml)
    whose mesh config discovers only labelled namespaces: the probes' namespace carries both,
    or its probe would get no sidecar and no mesh root."""
    fake, _ = cluster
    fake.deployments["istio-system"] = [istiod_deployment(revision="1-25-1")]
    mesh_config = DEFAULT_MESH_CONFIG + (
        "discoverySelectors:\n- matchLabels:\n    istio-discovery: enabled\n"
    )
    for name in ("istio", "istio-1-25-1"):
        fake.config_maps[("istio-system", name)] = config_map_json(
            "istio-system", name, {"mesh": mesh_config}
        )
    mesh = _audit_mesh(fake, tmp_path, "a1b2c3")
    mesh.start()
    try:
        labels = fake.namespaces["meshconform-audit-a1b2c3"]["metadata"]["labels"]
        assert labels["istio.io/rev"] == "1-25-1" and "istio-injection" not in labels
        assert labels["istio-discovery"] == "enabled"
        assert mesh.workload("probe", "meshconform-audit").has_sidecar
    finally:
        mesh.close()


def test_the_audit_names_services_in_the_clusters_dns_domain(
    cluster: tuple[AuditCluster, AuditIstio], tmp_path: Path
) -> None:
    """Its expectations (SNI, Envoy cluster names) come from Service FQDNs: in a cluster of
    --cluster-domain=corp.example they end in .svc.corp.example (the probe's resolv.conf)."""
    fake, _ = cluster
    fake.dns_domain = "corp.example"
    mesh = _audit_mesh(fake, tmp_path, "a1b2c3")
    mesh.start()
    try:
        assert sorted(s.fqdn for s in mesh.services()) == [
            "httpbin.bar.svc.corp.example",
            "httpbin.foo.svc.corp.example",
        ]
    finally:
        mesh.close()


# ----------------------------------------- a multi-port Service under an AuthorizationPolicy

LEDGER_PORTS = [
    {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
    {"name": "tcp-postgres", "port": 5432, "protocol": "TCP"},
]
LEDGER_WEB_ONLY = {
    "apiVersion": "security.istio.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "ledger-web-only", "namespace": "payments"},
    "spec": {
        "selector": {"matchLabels": {"app": "ledger"}},
        "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/checkout/sa/web"]}}]}],
    },
}
# Envoy's RBAC filter's local reply (Istio's authorization docs: "RBAC: access denied")
RBAC_403 = (
    b"HTTP/1.1 403 Forbidden\r\ncontent-length: 19\r\ncontent-type: text/plain\r\n"
    b"server: envoy\r\n\r\nRBAC: access denied"
)


class LedgerIstio(AuditIstio):
    """curl as a sidecar whose AuthorizationPolicy denies both probes answers: HTTP 403
    ``RBAC: access denied`` on port 80; on 5432 a connection closed without a byte (exit 0,
    ``* Connected to`` in curl's trace). Captures: the pcaps recorded at the local audit's
    probe under the same policy (tests/data/kube/README.md)."""

    def __call__(self, call: ExecCall, channel: ExecChannel) -> None:
        if call.container == "mc-capture":
            self.capture_pcap = (
                DATA_DIR / f"audit-probe-ledger.payments-{self.next_target}.pcap"
            ).read_bytes()
            self.capture_stderr = b"tcpdump: listening on eth0\n16 packets captured\n"
            FakeIstio.__call__(self, call, channel)  # the fake's capture, with this pcap
            return
        if call.command[:1] == ["curl"]:
            channel.send(1, RBAC_403 + WRITE_OUT_MARKER.encode() + b'{"http_code":403}')
            channel.send_status({"metadata": {}, "status": "Success"})
            return
        if call.command[:2] == ["sh", "-c"] and any(
            arg.startswith("telnet://") for arg in call.command
        ):
            channel.send(2, b"* Connected to ledger.payments (10.96.0.20) port 5432\n")
            channel.send(1, TCP_WRITE_OUT_MARKER.encode() + b'{"time_connect":0.001}')
            channel.send_status({"metadata": {}, "status": "Success"})
            return
        super().__call__(call, channel)


def _ledger_audit(tmp_path: Path, *policies: dict[str, Any]) -> tuple[AuditCluster, Any]:
    """The audit of a cluster running ledger (ports 80 and 5432) whose sidecar denies both
    probes (`LedgerIstio`), with ``policies`` in the cluster before the audit."""
    fake = _cluster_of_its_own()
    fake.namespaces["payments"] = _namespace("payments", INJECTED)
    fake.services["payments"] = [_service("payments", LEDGER_PORTS, "ledger")]
    fake.pods["payments"] = [pod_json("ledger-5f6d-x1", "payments", "ledger", sidecar=True)]
    for policy in policies:
        fake.apply(policy)  # the user's policies, there before the audit
    fake.calls.clear()
    istio = LedgerIstio(fake)
    with _serving(fake, istio, tmp_path):
        _route_captures(fake, istio, ["80", "5432"])
        mesh = _audit_mesh(fake, tmp_path, "c0ffee")
        mesh.start()
        try:
            result = run_audit(mesh)
        finally:
            mesh.close()
    return fake, result


def test_a_cluster_port_denied_by_authorization_is_judged_apart_from_its_mode(
    tmp_path: Path,
) -> None:
    """The kube side builds the local audit's verdict (tests/test_audit_authorization.py):
    both probes got through the PERMISSIVE mode (the mesh probe's mTLS answered by a
    ServerHello on the recorded wire), and authorization denied both, as the cluster's own
    AuthorizationPolicy predicts: a pass, never a CLOSED port."""
    fake, result = _ledger_audit(tmp_path, LEDGER_WEB_ONLY)
    report = result.to_dict()
    jsonschema.validate(report, json.loads(AUDIT_SCHEMA.read_text()))
    ports = {p["port"]: p for p in report["ports"]}
    assert sorted(ports) == [80, 5432]
    for number, how in ((80, "HTTP 403 RBAC: access denied"), (5432, "closed without a byte")):
        port = ports[number]
        assert (port["predicted"], port["expected"], port["observed"], port["verdict"]) == (
            "PERMISSIVE",
            "PERMISSIVE",
            "PERMISSIVE",
            "pass",
        ), port
        assert port["authorization"] == {
            "policies": ["payments/ledger-web-only"],
            "expected": {"mesh": "denied", "plaintext": "denied"},
            "observed": {"mesh": "denied", "plaintext": "denied"},
            "conforms": True,
        }
        assert port["reason"] == (
            f"mTLS and plaintext, as predicted; authorization denied both probes ({how};"
            " AuthorizationPolicy payments/ledger-web-only), as the AuthorizationPolicies predict"
        )
        assert port["evidence"]["wire"]["serverHello"] is True
    assert ports[80]["evidence"]["mesh"]["outcome"] == "HTTP 403 RBAC: access denied"
    assert ports[5432]["evidence"]["plaintext"]["outcome"] == "closed"
    # the policy was read (the predictions above come from it), nothing of the user's written
    assert all("meshconform-audit-c0ffee" in c for c in fake.calls if not c.startswith("list"))


def test_a_denial_no_policy_of_the_cluster_predicts_fails_the_port(tmp_path: Path) -> None:
    """The same sidecar answers, but the cluster holds no AuthorizationPolicy: Istio's
    policies predict both probes allowed, so each denial is named and the port fails, its mode
    still PERMISSIVE."""
    _, result = _ledger_audit(tmp_path)
    report = result.to_dict()
    jsonschema.validate(report, json.loads(AUDIT_SCHEMA.read_text()))
    ports = {p["port"]: p for p in report["ports"]}
    for number in (80, 5432):
        port = ports[number]
        assert (port["observed"], port["verdict"], port["conforms"]) == (
            "PERMISSIVE",
            "fail",
            False,
        )
        assert port["authorization"] == {
            "policies": [],
            "expected": {"mesh": "allowed", "plaintext": "allowed"},
            "observed": {"mesh": "denied", "plaintext": "denied"},
            "conforms": False,
        }
    assert ports[80]["reason"] == (
        "mTLS and plaintext, as predicted; authorization denied the mesh probe (HTTP 403 RBAC:"
        " access denied); Istio's policies predict allowed; authorization denied the plaintext"
        " probe (HTTP 403 RBAC: access denied); Istio's policies predict allowed"
    )
    assert ports[5432]["reason"] == (
        "mTLS and plaintext, as predicted; authorization denied the mesh probe (closed without"
        " a byte: the RBAC filter's close, or the app's own); Istio's policies predict allowed;"
        " authorization denied the plaintext probe (closed without a byte: the RBAC filter's"
        " close, or the app's own); Istio's policies predict allowed"
    )
    assert result.passed is False


# ------------------------------------------------------------------- a headless Service

KV_PEERS_PORTS = [
    {"name": "http", "port": 8080, "protocol": "TCP"},
    {"name": "tcp-gossip", "port": 7000, "protocol": "TCP"},
]
STOCK_STRICT = {
    "apiVersion": "security.istio.io/v1",
    "kind": "PeerAuthentication",
    "metadata": {"name": "default", "namespace": "stock"},
    "spec": {"mtls": {"mode": "STRICT"}},
}


# the local audit's probe (10.244.0.12) and kv (10.244.0.10), where the captures were recorded
KV_IP = "10.244.0.10"
# what curl printed in the local audit's sidecar probe when it asked kv by pod IP
# (tests/data/kube/README.md): the URL or telnet:// target -> returncode, stdout, stderr
KV_BY_POD_IP: dict[str, dict[str, Any]] = json.loads(
    (DATA_DIR / "audit-probe-pod-kv.stock-exec.json").read_text()
)
# the order of the audit's captures at its probe: the Service ports, then the pod ports by pod IP
KV_CAPTURES = (
    "kv-peers.stock-8080",
    "kv-peers.stock-7000",
    "pod-kv.stock-7000",
    "pod-kv.stock-8080",
)


def _send_recorded(channel: ExecChannel, answer: Mapping[str, Any]) -> None:
    """An exec answered as a probe printed it (a recording's ``stderr``, ``stdout`` and
    ``returncode``): its output, then its status."""
    channel.send(2, answer["stderr"].encode())
    channel.send(1, answer["stdout"].encode())
    code = answer["returncode"]
    channel.send_status(status_exit(code) if code else {"metadata": {}, "status": "Success"})


class KvIstio(AuditIstio):
    """curl as a STRICT sidecar behind a headless Service answers: the naked probe's plaintext
    reset (exit 56) on both ports, the mesh probe's request by name answered (HTTP 200 on 8080,
    tcp-echo's ``hello <line>`` on 7000), its request by pod IP as curl printed it in the local
    audit's probe. Captures: the pcaps recorded at the local audit's probe with the same
    Service and policy (tests/data/kube/README.md); ``empty``: captures that saw nothing."""

    empty: frozenset[str] = frozenset()

    def __call__(self, call: ExecCall, channel: ExecChannel) -> None:
        if call.container == "mc-capture":
            recorded = (DATA_DIR / f"audit-probe-{self.next_target}.pcap").read_bytes()
            # a pcap's global header is 24 bytes: the same file without a packet
            self.capture_pcap = recorded[:24] if self.next_target in self.empty else recorded
            self.capture_stderr = b"tcpdump: listening on eth0\n12 packets captured\n"
            FakeIstio.__call__(self, call, channel)
            return
        naked = call.container == "probe-naked"
        tcp = call.command[:2] == ["sh", "-c"]
        if naked and (tcp or call.command[:1] == ["curl"]):
            channel.send(2, b"curl: (56) Recv failure: Connection reset by peer\n")
            marker = TCP_WRITE_OUT_MARKER if tcp else WRITE_OUT_MARKER
            channel.send(1, marker.encode() + b'{"http_code":0}')
            channel.send_status(status_exit(56))
            return
        target = next((a for a in call.command if a.startswith("telnet://")), call.command[-1])
        by_pod_ip = KV_BY_POD_IP.get(target)
        if by_pod_ip is not None:
            _send_recorded(channel, by_pod_ip)
            return
        if tcp:
            channel.send(2, f"* Connected to kv-peers.stock ({KV_IP}) port 7000\n".encode())
            channel.send(1, b"hello meshconform-audit\n" + TCP_WRITE_OUT_MARKER.encode() + b"{}")
            channel.send_status({"metadata": {}, "status": "Success"})
            return
        super().__call__(call, channel)


@contextmanager
def _kv_cluster(tmp_path: Path, empty: frozenset[str] = frozenset()) -> Iterator[AuditCluster]:
    """A cluster running a StatefulSet-like kv (one pod, ports 8080 and 7000 in its spec)
    behind the headless Service kv-peers, namespace stock STRICT; its API server runs for the
    block, its probes answer as `KvIstio`."""
    fake = _cluster_of_its_own()
    fake.namespaces["stock"] = _namespace("stock", INJECTED)
    fake.services["stock"] = [
        _service("stock", KV_PEERS_PORTS, "kv-peers", clusterIP="None", selector={"app": "kv"})
    ]
    kv = pod_json("kv-0", "stock", "kv", sidecar=True, pod_ip=KV_IP)
    kv["spec"]["containers"][0]["ports"] = [{"containerPort": 8080}, {"containerPort": 7000}]
    fake.pods["stock"] = [kv]
    fake.apply(STOCK_STRICT)
    fake.calls.clear()
    istio = KvIstio(fake)
    istio.empty = empty
    with _serving(fake, istio, tmp_path):
        _route_captures(fake, istio, KV_CAPTURES)
        yield fake


def test_a_headless_service_of_a_cluster_is_audited_by_its_name(tmp_path: Path) -> None:
    """A StatefulSet's headless Service (clusterIP None, the ports are the container ports) is
    probed by its name, as the local audit does (tests/test_audit_headless.py): under STRICT
    both ports refuse plaintext and take the mesh probe's mTLS, with Istio's SNI for the
    headless host on the recorded wire."""
    with _kv_cluster(tmp_path) as fake:
        mesh = _audit_mesh(fake, tmp_path, "5e7a11")
        mesh.start()
        try:
            result = run_audit(mesh, require="STRICT")
        finally:
            mesh.close()
    assert mesh.not_audited == ()
    found = {
        r.port.key: (r.port.service.headless, (r.port.predicted, r.observed), r.verdict)
        for r in result.ports
    }
    assert found == {
        "kv-peers.stock:8080": (True, ("STRICT", "STRICT"), "pass"),
        "kv-peers.stock:7000": (True, ("STRICT", "STRICT"), "pass"),
    }
    assert {r.wire.sni for r in result.ports if r.wire is not None} == {
        "outbound_.8080_._.kv-peers.stock.svc.cluster.local",
        "outbound_.7000_._.kv-peers.stock.svc.cluster.local",
    }
    report = result.to_dict()
    jsonschema.validate(report, json.loads(AUDIT_SCHEMA.read_text()))
    # the pod's ports, from its spec, probed by pod IP: the sidecar resets plaintext on both
    assert {r.port.key: (r.port_class, r.verdict, r.outcome) for r in result.pod_ports} == {
        "kv.stock port 7000": ("in the mesh", "pass", "reset"),
        "kv.stock port 8080": ("in the mesh", "pass", "reset"),
    }
    assert [p["headless"] for p in report["ports"]] == [True, True]
    assert report["result"] == "success"


# --- ambient ----------------------------------------------------------------------------------


@pytest.mark.skipif(not ISTIO_ZTUNNEL_DUMP.is_file(), reason=f"{ISTIO_ZTUNNEL_DUMP} is absent")
def test_a_cluster_running_ztunnel_gets_the_ambient_probe(tmp_path: Path) -> None:
    """Where ztunnel runs, the audit's namespace also gets ``probe-ambient``: no sidecar, the
    pod labelled ``istio.io/dataplane-mode=ambient`` (the namespace is injected for the
    sidecar probe), enrolled by istio-cni and held by its node's ztunnel before the audit
    begins. Without ztunnel there is none (the test above: two probes)."""
    cluster = AuditCluster(ztunnel=True)
    with _serving(cluster, AuditIstio(cluster), tmp_path) as server:
        server.port_forward_handler = FakeZtunnel(cluster)
        mesh = _audit_mesh(
            cluster,
            tmp_path,
            "a1b2c3",
            KubeOptions(
                ready_timeout=timedelta(seconds=20), propagation_timeout=timedelta(seconds=30)
            ),
        )
        mesh.start()
        try:
            probes = [w for w in mesh.workloads() if w.namespace == mesh.audit_namespace]
            assert [(w.name, w.dataplane) for w in probes] == [
                ("probe", "sidecar"),
                ("probe-naked", "none"),
                ("probe-ambient", "ambient"),
            ]
            deployment = cluster.get("apps/v1", "Deployment", mesh.audit_namespace, "probe-ambient")
            assert deployment is not None
            template = deployment["spec"]["template"]["metadata"]
            assert template["labels"]["istio.io/dataplane-mode"] == "ambient"
            assert template["annotations"] == {"sidecar.istio.io/inject": "false"}
            assert server.port_forwards  # its ztunnel was read before the audit began
        finally:
            mesh.close()


def _audit_command(
    fake: AuditCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, dict[str, Any]]:
    """``meshconform audit --mesh-cluster=existing --require=STRICT --report`` on ``fake``:
    its exit status and JSON report."""
    from pytest_meshconform.backends.kube import client as kube_client, kind as kube_kind
    from pytest_meshconform.cli import main

    monkeypatch.setattr(
        kube_kind, "resolve_context", lambda name: kube_kind.ResolvedContext(name, None)
    )
    monkeypatch.setattr(kube_client.KubeApi, "connect", lambda *a, **k: fake)
    report = tmp_path / "audit.json"
    argv = ["audit", "--mesh-cluster=existing", "--mesh-kube-context=fake", "--require=STRICT"]
    code = main([*argv, "--report", str(report)])
    data = json.loads(report.read_text())
    jsonschema.validate(data, json.loads(AUDIT_SCHEMA.read_text()))
    return code, data


def test_the_mesh_probe_asks_each_pod_of_a_cluster_by_its_ip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a cluster, as on the local mesh (tests/test_audit_headless.py), the audit's sidecar
    probe also asks every pod port by pod IP, captured at the probe, and the wire must show
    what Istio's config predicts (docs/istio-model.md, "Traffic to a pod IP"): the headless
    Service's TCP port 7000 has a per-pod listener, so mTLS with the Service's SNI, answered;
    its HTTP port 8080 has none for the pod IP, so the PassthroughCluster in plaintext, which
    the STRICT sidecar resets (the probe's Envoy answers 503). The same verdicts and fields as
    the local audit's, from the wire recorded there."""
    with _kv_cluster(tmp_path) as fake:
        code, data = _audit_command(fake, tmp_path, monkeypatch)
    out = capsys.readouterr().out
    assert code == 0, out
    pods = {p["port"]: p for p in data["podPorts"]}
    mesh_probes = {n: p["meshProbe"] for n, p in pods.items()}
    assert {n: (m["cluster"], m["tls"], m["admitted"]) for n, m in mesh_probes.items()} == {
        7000: ("outbound|7000||kv-peers.stock.svc.cluster.local", True, True),
        8080: ("PassthroughCluster", False, False),
    }
    assert mesh_probes[7000]["sni"] == "outbound_.7000_._.kv-peers.stock.svc.cluster.local"
    assert (mesh_probes[7000]["target"], mesh_probes[7000]["outcome"]) == (
        "tcp://10.244.0.10:7000",
        "answered",
    )
    assert (mesh_probes[8080]["target"], mesh_probes[8080]["outcome"]) == (
        "http://10.244.0.10:8080",
        "HTTP 503",  # the probe's sidecar: upstream reset
    )
    assert [m["expectedTls"] for m in mesh_probes.values()] == [True, False]
    assert [m["flows"] for m in mesh_probes.values()] == [1, 1]
    evidence = tmp_path / "audit-evidence"
    for number, mesh_probe in mesh_probes.items():
        kept = Path(mesh_probe["pcap"])
        assert kept == evidence / f"pod-kv.stock-{number}.pcap"
        recorded = (DATA_DIR / f"audit-probe-pod-kv.stock-{number}.pcap").read_bytes()
        assert kept.read_bytes().startswith(recorded)  # then the capture's end marker
    assert {n: (p["verdict"], p["reason"]) for n, p in pods.items()} == {
        7000: (
            "pass",
            "STRICT: refuses plaintext by pod IP, as predicted (kv-peers.stock:7000); a mesh"
            " client by pod IP: mTLS (outbound|7000||kv-peers.stock.svc.cluster.local), answered",
        ),
        8080: (
            "pass",
            "STRICT: refuses plaintext by pod IP, as predicted (kv-peers.stock:8080); a mesh"
            " client by pod IP: plaintext (PassthroughCluster), not answered",
        ),
    }
    header = next(line for line in out.splitlines() if line.startswith("POD PORT"))
    column = header.index("MESH BY POD IP")
    seen = {
        line.split()[2]: line[column:].split()[0]
        for line in out.splitlines()
        if line.startswith("kv.stock port")
    }
    assert seen == {"7000": "mTLS", "8080": "plaintext"}


def test_a_mesh_probe_by_pod_ip_the_capture_never_saw_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No false green on a cluster: when the capture at the probe holds no connection to the
    pod's port (a capture on the wrong interface, a probe that never sent), the port is an
    error saying so, never a pass, and the audit exits 1."""
    with _kv_cluster(tmp_path, empty=frozenset({"pod-kv.stock-8080"})) as fake:
        code, data = _audit_command(fake, tmp_path, monkeypatch)
    assert code == 1
    pods = {p["port"]: p for p in data["podPorts"]}
    assert pods[7000]["verdict"] == "pass"
    broken = pods[8080]
    assert (broken["verdict"], broken["meshProbe"]["flows"]) == ("error", 0)
    probe_key = broken["reason"].split("the capture at ")[1].split(" saw")[0]
    assert probe_key.startswith("probe.meshconform-audit")
    assert broken["reason"].endswith(
        f"saw no connection to http://{KV_IP}:8080: the mesh probe by pod IP never reached the pod"
    )
    assert data["result"] == "failure"
    # the table says nothing was seen, never "plaintext"
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("POD PORT"))
    row = next(line for line in out.splitlines() if line.startswith("kv.stock port 8080"))
    assert row[header.index("MESH BY POD IP") :].split()[:3] == ["none", "seen", "ERROR"]


# --- a full ambient audit ---------------------------------------------------------------------

# What the local audit's probes printed and captured in two ambient namespaces, `vault` under
# STRICT and `till` without a policy (tests/data/kube/README.md, scripts/record_ambient_audit.py)
AMBIENT_RECORDING: dict[str, Any] = json.loads(
    (DATA_DIR / "audit-probe-ambient-exec.json").read_text()
)
# The same with vault behind its namespace waypoint `checkpoint`, which allows vault's own
# accounts only (scripts/record_ambient_audit.py --waypoint)
WAYPOINT_RECORDING: dict[str, Any] = json.loads(
    (DATA_DIR / "audit-probe-waypoint-exec.json").read_text()
)
AMBIENT_NAMESPACES = ("till", "vault")
AMBIENT_SERVICES = (
    ("console", {"app": "console"}, [{"name": "http", "port": 80, "targetPort": 8080}]),
    ("keeper", {"app": "keeper"}, [{"name": "tcp-main", "port": 9000}]),
)
AMBIENT_CONTAINER_PORTS = {"console": 8080, "keeper": 9000}
VAULT_STRICT = {
    "apiVersion": "security.istio.io/v1",
    "kind": "PeerAuthentication",
    "metadata": {"name": "default", "namespace": "vault"},
    "spec": {"mtls": {"mode": "STRICT"}},
}


class AmbientIstio(AuditIstio):
    """The recorded probes of an ambient audit: each probe's exec answers as the same probe
    printed it on the local mesh for the same target; each capture is the pcap recorded while
    its probe asked the same target (``<svc>.<ns>-<port>`` at the ambient probe,
    ``pod-<workload>.<ns>-<port>`` at the sidecar probe by pod IP), streamed once the probe's
    request has run. ``empty``: captures that saw nothing (the global header alone);
    ``instead``: a capture replaced by another recorded file; ``answers``: an exec's answer
    replaced by another target's recorded one (``(probe, target)`` -> ``(probe, target)``)."""

    empty: frozenset[str] = frozenset()
    instead: Mapping[str, str] = {}
    answers: Mapping[tuple[str, str], tuple[str, str]] = {}
    last_target: str = ""
    # the recording replayed, and its files' prefix (`WAYPOINT_RECORDING`: vault behind a
    # waypoint that denies the audit's probes)
    recording: Mapping[str, Any] = AMBIENT_RECORDING
    prefix: str = "audit-probe-ambient-"

    def __call__(self, call: ExecCall, channel: ExecChannel) -> None:
        if call.container == "mc-capture":
            self._replay_capture(call, channel)
            return
        target = next((a for a in call.command if a.startswith("telnet://")), call.command[-1])
        if call.command[:1] == ["curl"] or target.startswith("telnet://"):
            probe, asked = self.answers.get((call.container, target), (call.container, target))
            answer = self.recording["execs"][probe][asked]
            if call.container != "probe-naked":
                self.last_target = target  # the capture running now is this request's
            _send_recorded(channel, answer)
            return
        FakeIstio.__call__(self, call, channel)

    def _pcap_name(self) -> str:
        split = urlsplit(self.last_target)
        host, port = split.hostname or "", split.port
        by_ip = {ip: key for key, ip in self.recording["pods"].items()}
        return f"pod-{by_ip[host]}-{port}" if host in by_ip else f"{host}-{port}"

    def _replay_capture(self, call: ExecCall, channel: ExecChannel) -> None:
        """The capture script's protocol (`FakeIstio._tcpdump`), the packets sent once the
        marker line says the probe's request has run: the recording of that request."""
        assert call.command[:2] == ["bash", "-c"] and call.stdin
        channel.send(2, b"tcpdump: listening on eth0, link-type EN10MB (Ethernet)\n")
        assert channel.wait_stdin(lambda data: data.endswith(b"\n")), "no marker line"
        name = self._pcap_name()
        self.captured.append(name)
        file = self.instead.get(name, f"{self.prefix}{name}.pcap")
        pcap = (DATA_DIR / file).read_bytes()
        channel.send(1, pcap[:24] if name in self.empty else pcap)
        channel.send(1, marker_record(bytes(channel.stdin).strip(), call.command[5]))
        assert channel.wait_stdin(lambda data: data.count(b"\n") >= 2), "no stop line"
        channel.send(2, b"12 packets captured\n")
        channel.send_status({"metadata": {}, "status": "Success"})

    captured: list[str]


@contextmanager
def _ambient_cluster(tmp_path: Path, **replay: Any) -> Iterator[tuple[AuditCluster, AmbientIstio]]:
    """A cluster running ztunnel and istio-cni with the recording's two ambient namespaces
    (labelled ``istio.io/dataplane-mode=ambient``, their pods enrolled: istio-cni's mark, the
    recorded pod addresses, their container ports in the spec), `vault` STRICT; its API
    server and ztunnel run for the block, its probes answer as `AmbientIstio` (``replay``:
    its overrides)."""
    fake = _cluster_of_its_own(ztunnel=True)
    for namespace in AMBIENT_NAMESPACES:
        fake.namespaces[namespace] = _namespace(namespace, {"istio.io/dataplane-mode": "ambient"})
        fake.services[namespace] = [
            _service(namespace, ports, name, selector=selector)
            for name, selector, ports in AMBIENT_SERVICES
        ]
        fake.pods[namespace] = []
        for app, port in AMBIENT_CONTAINER_PORTS.items():
            pod = pod_json(
                f"{app}-7f9c-{namespace}",
                namespace,
                app,
                sidecar=False,
                pod_ip=replay.get("recording", AMBIENT_RECORDING)["pods"][f"{app}.{namespace}"],
                node_name=fake.node,
                annotations={"ambient.istio.io/redirection": "enabled"},
            )
            pod["spec"]["containers"][0]["ports"] = [{"containerPort": port}]
            fake.pods[namespace].append(pod)
    fake.apply(VAULT_STRICT)
    fake.calls.clear()
    istio = AmbientIstio(fake)
    istio.captured = []
    for key, value in replay.items():
        setattr(istio, key, value)
    with _serving(fake, istio, tmp_path) as server:
        server.port_forward_handler = FakeZtunnel(fake)
        yield fake, istio


def _ambient_ports(data: Mapping[str, Any]) -> dict[str, tuple[Any, ...]]:
    return {
        f"{p['service']}.{p['namespace']}:{p['port']}": (
            p["dataplane"],
            p["predicted"],
            p["observed"],
            p["verdict"],
        )
        for p in data["ports"]
    }


@pytest.mark.skipif(not ISTIO_ZTUNNEL_DUMP.is_file(), reason=f"{ISTIO_ZTUNNEL_DUMP} is absent")
def test_an_ambient_cluster_is_judged_from_ztunnels_behaviour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``meshconform audit --require=STRICT`` on a cluster whose namespaces run ambient, with
    the probes' answers and captures recorded on the local mesh: under STRICT ztunnel refuses
    the naked probe's plaintext and takes the ambient probe's HBONE (mutual TLS 1.3 to the
    pod's port 15008, ALPN h2, no SNI, on the recorded wire): a pass; without a policy
    (PERMISSIVE) it takes both: a failure against --require=STRICT (istio.io "Use Layer 4
    security policy"; Istio's ambient PeerAuthentication cases). The pods' ports by pod IP:
    refused under STRICT, taken under PERMISSIVE. The same verdicts as the local audit's."""
    with _ambient_cluster(tmp_path) as (fake, istio):
        code, data = _audit_command(fake, tmp_path, monkeypatch)
    out = capsys.readouterr().out
    assert code == 1, out
    # each Service port's HBONE at the ambient probe, then each pod port by pod IP
    assert sorted(istio.captured) == sorted(
        f"{prefix}{app}.{namespace}-{port}"
        for namespace in AMBIENT_NAMESPACES
        for app, port, prefix in (
            ("console", 80, ""),
            ("keeper", 9000, ""),
            ("console", 8080, "pod-"),
            ("keeper", 9000, "pod-"),
        )
    )
    assert _ambient_ports(data) == {
        "console.till:80": ("ambient", "PERMISSIVE", "PERMISSIVE", "fail"),
        "keeper.till:9000": ("ambient", "PERMISSIVE", "PERMISSIVE", "fail"),
        "console.vault:80": ("ambient", "STRICT", "STRICT", "pass"),
        "keeper.vault:9000": ("ambient", "STRICT", "STRICT", "pass"),
    }
    evidence_dir = tmp_path / "audit-evidence"
    for port in data["ports"]:
        name = f"{port['service']}.{port['namespace']}-{port['port']}"
        if port["namespace"] == "till":
            assert port["reason"] == "accepts plaintext; required STRICT"
            assert port["evidence"]["plaintext"]["admitted"] is True, port
        else:
            assert port["reason"] == "mTLS only, as predicted"
            # ztunnel refused the plaintext: reset, or closed without a reply
            assert port["evidence"]["plaintext"]["admitted"] is False, port
        mesh = port["evidence"]["mesh"]
        assert mesh["client"].startswith("probe-ambient.meshconform-audit-")
        assert (mesh["admitted"], mesh["authorization"]) == (True, "allowed")
        wire = port["evidence"]["wire"]
        # the recorded HBONE: one TLS 1.3 flow to 15008, ALPN h2, no SNI, answered
        assert (wire["flows"], wire["tls"], wire["alpn"], wire["serverHello"]) == (
            1,
            True,
            ["h2"],
            True,
        ), wire
        assert "sni" not in wire and wire["tlsVersion"] == "TLS1.3"
        assert Path(wire["pcap"]) == evidence_dir / f"{name}.pcap"
        recorded = (DATA_DIR / f"audit-probe-ambient-{name}.pcap").read_bytes()
        assert Path(wire["pcap"]).read_bytes().startswith(recorded)
    assert {
        (p["workload"], p["namespace"], p["port"]): (p["class"], p["verdict"])
        for p in data["podPorts"]
    } == {
        (app, namespace, port): ("in the mesh", "pass")
        for app, port in AMBIENT_CONTAINER_PORTS.items()
        for namespace in AMBIENT_NAMESPACES
    }
    assert data["summary"] == {"ports": 4, "passed": 2, "failed": 2, "errors": 0}
    assert "console.vault:80" in out and "ambient" in out


_NOT_TUNNELLED = "saw no connection to port 15008: the request was not tunnelled over HBONE"
# each case: what the evidence says instead of the recording, the port it touches, and the
# verdict and reason that port must then get (never a pass)
AMBIENT_FALSE_GREENS = {
    "an empty capture": (
        {"empty": frozenset({"console.vault-80"})},
        "console.vault:80",
        "error",
        _NOT_TUNNELLED,
    ),
    "an empty capture under PERMISSIVE": (
        {"empty": frozenset({"keeper.till-9000"})},
        "keeper.till:9000",
        "error",
        _NOT_TUNNELLED,
    ),
    # the capture of a client whose request went straight to the app's port in plaintext
    # (httpbin-eth0.pcap: a GET to 8080), as from a probe istio-cni never enrolled
    "a mesh probe never seen on 15008": (
        {"instead": {"console.vault-80": "httpbin-eth0.pcap"}},
        "console.vault:80",
        "error",
        _NOT_TUNNELLED,
    ),
    # the STRICT namespace's ztunnel answering the plaintext probe as the PERMISSIVE one did
    "plaintext answered under STRICT": (
        {
            "answers": {
                ("probe-naked", "http://console.vault:80/"): (
                    "probe-naked",
                    "http://console.till:80/",
                )
            }
        },
        "console.vault:80",
        "fail",
        "observed PERMISSIVE, Istio's policies predict STRICT (which means STRICT from the probes)",
    ),
}


@pytest.mark.skipif(not ISTIO_ZTUNNEL_DUMP.is_file(), reason=f"{ISTIO_ZTUNNEL_DUMP} is absent")
@pytest.mark.parametrize("case", sorted(AMBIENT_FALSE_GREENS))
def test_an_ambient_port_whose_evidence_says_otherwise_never_passes(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No false green in ambient: the same recording with one piece of evidence changed. A
    capture at the ambient probe without a connection to port 15008 (empty, or the request
    gone to the app's port in plaintext) is an error naming it; a STRICT namespace whose
    ztunnel answers plaintext fails. Every other port keeps its verdict."""
    replay, key, verdict, reason = AMBIENT_FALSE_GREENS[case]
    with _ambient_cluster(tmp_path, **replay) as (fake, _):
        code, data = _audit_command(fake, tmp_path, monkeypatch)
    assert (code, data["result"]) == (1, "failure")
    ports = {f"{p['service']}.{p['namespace']}:{p['port']}": p for p in data["ports"]}
    got = ports[key]
    assert got["verdict"] == verdict, got
    # the error names the probe whose capture it was (its pod in the audit's namespace)
    probe, _, rest = got["reason"].removeprefix("the capture at ").partition(" ")
    assert got["reason"] == reason or (
        probe.startswith("probe-ambient.meshconform-audit-") and rest == reason
    ), got
    others = {k: p["verdict"] for k, p in ports.items() if k != key}
    assert others == {
        k: "pass" if k.split(".")[1].startswith("vault") else "fail" for k in ports if k != key
    }


# --- waypoints: read from the cluster, their policies listed ------------------------------------

# the Gateway `istioctl waypoint apply -n vault --name checkpoint` writes (istioctl/pkg/waypoint:
# class istio-waypoint, listener `mesh` on 15008, protocol HBONE), and another class's Gateway
CHECKPOINT = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "Gateway",
    "metadata": {"name": "checkpoint", "namespace": "vault"},
    "spec": {
        "gatewayClassName": "istio-waypoint",
        "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
    },
}
# a waypoint other namespaces may use (its listener's allowedRoutes from All)
SHARED = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "Gateway",
    "metadata": {"name": "shared", "namespace": "vault"},
    "spec": {
        "gatewayClassName": "istio-waypoint",
        "listeners": [
            {
                "name": "mesh",
                "port": 15008,
                "protocol": "HBONE",
                "allowedRoutes": {"namespaces": {"from": "All"}},
            }
        ],
    },
}
INGRESS = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "Gateway",
    "metadata": {"name": "front", "namespace": "till"},
    "spec": {
        "gatewayClassName": "istio",
        "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
    },
}


def _bound_policy(
    namespace: str, name: str, kind: str, target: str, action: str = "ALLOW"
) -> dict[str, Any]:
    group = "" if kind == "Service" else "gateway.networking.k8s.io"
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "targetRefs": [{"group": group, "kind": kind, "name": target}],
            "action": action,
            "rules": [{}]
            if action == "ALLOW"
            else [{"to": [{"operation": {"methods": ["DELETE"]}}]}],
        },
    }


@pytest.mark.skipif(not ISTIO_ZTUNNEL_DUMP.is_file(), reason=f"{ISTIO_ZTUNNEL_DUMP} is absent")
def test_a_clusters_waypoints_and_the_policies_bound_to_them_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a cluster the audit reads the waypoints (Gateways of class ``istio-waypoint``, not
    another class's) and which Services use them (``vault`` labelled ``istio.io/use-waypoint:
    checkpoint``, as ``istioctl waypoint apply --enroll-namespace`` does; a Service of ``till``
    labelled for a waypoint of ``vault`` whose listener allows ``All`` namespaces, another for
    one that allows only its own: ``AllowsAttachmentFromNamespace``), and lists per Service
    port the AuthorizationPolicies bound to its waypoint: a targetRefs to the Gateway (both
    Services), to the Service (console only), to the GatewayClass from the root namespace (both);
    never a selector policy (``ShouldAttachPolicy``, pilot/pkg/model/policyattachment.go). A
    targetRefs policy that binds nothing is a policy that cannot apply, with istiod's reason
    (``WaypointPolicyStatusCollection``, pilot/pkg/serviceregistry/ambient/policies.go). The
    probes replay the recording without a waypoint: this test is about what is listed."""
    with _ambient_cluster(tmp_path) as (fake, _):
        fake.served[("gateway.networking.k8s.io", "Gateway")] = ["v1"]
        fake.namespaces["vault"]["metadata"]["labels"]["istio.io/use-waypoint"] = "checkpoint"
        # till's Services name vault's waypoints: keeper the shared one, console checkpoint,
        # which allows no other namespace (allowedRoutes Same, istioctl's default)
        for service, waypoint in (("keeper", "shared"), ("console", "checkpoint")):
            (found,) = [s for s in fake.services["till"] if s["metadata"]["name"] == service]
            found["metadata"]["labels"] = {
                "istio.io/use-waypoint": waypoint,
                "istio.io/use-waypoint-namespace": "vault",
            }
        for manifest in (
            CHECKPOINT,
            SHARED,
            INGRESS,
            _bound_policy("till", "keeper-via-shared", "Service", "keeper"),
            _bound_policy("vault", "through-checkpoint", "Gateway", "checkpoint"),
            _bound_policy("vault", "console-no-delete", "Service", "console", "DENY"),
            _bound_policy("istio-system", "every-waypoint", "GatewayClass", "istio-waypoint"),
            _bound_policy("vault", "archive-reads", "Service", "archive"),
            _bound_policy("vault", "class-outside-root", "GatewayClass", "istio-waypoint"),
            _bound_policy("till", "through-front", "Gateway", "front"),
            _bound_policy("till", "console-direct", "Service", "console"),
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": {"name": "keeper-l4", "namespace": "vault"},
                "spec": {"selector": {"matchLabels": {"app": "keeper"}}, "rules": [{}]},
            },
        ):
            fake.apply(manifest)
        code, data = _audit_command(fake, tmp_path, monkeypatch)
    assert code == 1  # policies that cannot apply fail the audit
    waypoints = {
        f"{p['service']}.{p['namespace']}:{p['port']}": p.get("waypoint") for p in data["ports"]
    }
    every = {
        "name": "istio-system/every-waypoint",
        "action": "ALLOW",
        "targetRefs": ["GatewayClass istio-waypoint"],
    }
    through = {
        "name": "vault/through-checkpoint",
        "action": "ALLOW",
        "targetRefs": ["Gateway vault/checkpoint"],
    }
    no_delete = {
        "name": "vault/console-no-delete",
        "action": "DENY",
        "targetRefs": ["Service vault/console"],
    }
    assert waypoints["console.till:80"] is None  # not permitted to attach
    assert waypoints["keeper.till:9000"] == {
        "name": "vault/shared",
        "policies": [
            every,
            {
                "name": "till/keeper-via-shared",
                "action": "ALLOW",
                "targetRefs": ["Service till/keeper"],
            },
        ],
        # the ALLOW policies' empty rule matches every request: the mesh probe's too
        "meshProbe": "allowed",
    }
    assert waypoints["console.vault:80"]["name"] == "vault/checkpoint"
    # the DENY on DELETE does not match the mesh probe's GET
    assert waypoints["console.vault:80"]["meshProbe"] == "allowed"
    assert sorted(map(str, waypoints["console.vault:80"]["policies"])) == sorted(
        map(str, (every, through, no_delete))
    )
    assert waypoints["keeper.vault:9000"]["name"] == "vault/checkpoint"
    assert sorted(map(str, waypoints["keeper.vault:9000"]["policies"])) == sorted(
        map(str, (every, through))
    )
    rest = "(sidecars and ztunnel ignore targetRefs policies)"
    assert sorted(data["inapplicablePolicies"]) == [
        "AuthorizationPolicy till/console-direct binds to no waypoint: Service till/console is"
        f" not bound to a waypoint {rest}",
        "AuthorizationPolicy till/through-front binds to no waypoint: Gateway till/front is not"
        f" a waypoint (waypoints: vault/checkpoint, vault/shared) {rest}",
        "AuthorizationPolicy vault/archive-reads binds to no waypoint: Service vault/archive was"
        f" not found {rest}",
        "AuthorizationPolicy vault/class-outside-root binds to no waypoint: AuthorizationPolicy"
        f" must be in the root namespace `istio-system` when referencing a GatewayClass {rest}",
    ]


# --- a waypoint that denies the audit's probe ----------------------------------------------------

# bound to vault's waypoint: vault's own accounts only (scripts/record_ambient_audit.py)
VAULT_ONLY = {
    "apiVersion": "security.istio.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "vault-only", "namespace": "vault"},
    "spec": {
        "targetRefs": [
            {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "checkpoint"}
        ],
        "action": "ALLOW",
        "rules": [{"from": [{"source": {"namespaces": ["vault"]}}]}],
    },
}


@pytest.mark.skipif(not ISTIO_ZTUNNEL_DUMP.is_file(), reason=f"{ISTIO_ZTUNNEL_DUMP} is absent")
def test_a_clusters_waypoint_that_denies_the_probe_proves_no_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """vault behind its waypoint ``checkpoint`` (labelled ``istio.io/use-waypoint``), whose
    bound policy allows vault's own accounts only, replaying the probes recorded on the local
    mesh with the same waypoint and policy: the waypoint answered the ambient probe's request
    to console ``403`` with Envoy's RBAC body (``RBAC: access denied``, server ``envoy``) and
    closed its connection to keeper without a byte (the network RBAC filter's close). Neither
    reached the endpoint, so neither port is judged STRICT (the audit without a waypoint
    prediction passed console and failed keeper as CLOSED): each is an error naming the
    waypoint, the policy and the fix. till, without a waypoint, is judged as before."""
    with _ambient_cluster(
        tmp_path, recording=WAYPOINT_RECORDING, prefix="audit-probe-waypoint-"
    ) as (fake, _):
        fake.served[("gateway.networking.k8s.io", "Gateway")] = ["v1"]
        fake.namespaces["vault"]["metadata"]["labels"]["istio.io/use-waypoint"] = "checkpoint"
        fake.apply(CHECKPOINT)
        fake.apply(VAULT_ONLY)
        code, data = _audit_command(fake, tmp_path, monkeypatch)
        table = capsys.readouterr().out
        # the same audit again, its report in Markdown
        from pytest_meshconform.cli import main

        markdown = tmp_path / "audit.md"
        argv = ["audit", "--mesh-cluster=existing", "--mesh-kube-context=fake", "--require=STRICT"]
        assert main([*argv, "--report", str(markdown)]) == 1
    assert code == 1
    policy = "vault/vault-only: ALLOW, targetRefs Gateway vault/checkpoint"
    for key in ("console.vault:80", "keeper.vault:9000"):
        line = f"waypoint: {key} through vault/checkpoint: AuthorizationPolicy {policy}"
        assert f"{line}; the audit's mesh probe: denied" in table, table
    text = markdown.read_text()
    assert "the audit's mesh probe: denied" in text
    assert "authorization denied by the waypoint vault/checkpoint" in text, text
    assert _ambient_ports(data) == {
        "console.till:80": ("ambient", "PERMISSIVE", "PERMISSIVE", "fail"),
        "keeper.till:9000": ("ambient", "PERMISSIVE", "PERMISSIVE", "fail"),
        "console.vault:80": ("ambient", "STRICT", "INCONCLUSIVE", "error"),
        "keeper.vault:9000": ("ambient", "STRICT", "INCONCLUSIVE", "error"),
    }
    ports = {f"{p['service']}.{p['namespace']}:{p['port']}": p for p in data["ports"]}
    # the ambient probe's identity: the audit's namespace of this run, its probes' account
    audit_namespace = ports["console.vault:80"]["evidence"]["mesh"]["client"].split(".")[1]
    probe = f"cluster.local/ns/{audit_namespace}/sa/default"  # the probes run as default
    never = ": the request never reached the endpoint, so its mode cannot be judged"
    fix = (
        f"; fix: allow the audit's probe (source principal {probe}, or every run's: source"
        ' namespace "meshconform-audit*") in an ALLOW AuthorizationPolicy bound to the waypoint'
        " (targetRefs), or exempt it from the DENY ones"
    )
    why = f", as AuthorizationPolicy vault/vault-only predicts for its identity spiffe://{probe}"
    assert ports["console.vault:80"]["reason"] == (
        "the waypoint vault/checkpoint denied the mesh probe (HTTP 403 RBAC: access denied)"
        f"{why}{never}{fix}"
    )
    assert ports["keeper.vault:9000"]["reason"] == (
        "the waypoint vault/checkpoint closed the mesh probe's connection without a byte (its"
        f" RBAC network filter's denial){why}{never}{fix}"
    )
    for key in ("console.vault:80", "keeper.vault:9000"):
        port = ports[key]
        assert port["waypoint"] == {
            "name": "vault/checkpoint",
            "policies": [
                {
                    "name": "vault/vault-only",
                    "action": "ALLOW",
                    "targetRefs": ["Gateway vault/checkpoint"],
                }
            ],
            "meshProbe": "denied",
        }
        mesh = port["evidence"]["mesh"]
        assert (mesh["authorization"], mesh["deniedBy"]) == ("denied", "waypoint vault/checkpoint")
        assert "admitted" not in mesh  # the waypoint's answer says nothing of the mode
        assert port["evidence"]["plaintext"]["admitted"] is False  # ztunnel's STRICT refusal
        # the recorded HBONE went to the waypoint's pod on 15008, no endpoint's
        wire = port["evidence"]["wire"]
        assert (wire["flows"], wire["tls"], wire["alpn"]) == (1, True, ["h2"]), wire
        (flow,) = analyze_pcap(Path(wire["pcap"]).read_bytes()).flows_to(15008)
        assert flow.server[0] not in WAYPOINT_RECORDING["pods"].values(), flow
    assert ports["console.vault:80"]["evidence"]["mesh"]["status"] == 403
    assert ports["keeper.vault:9000"]["evidence"]["mesh"]["outcome"] == "closed"
    assert "waypoint" not in ports["console.till:80"]
