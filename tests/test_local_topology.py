"""Topology as data: Istio's protocol selection, the topology file, and a TCP Service served.

Where the expected values come from:

- Protocol selection: the cases of ``TestConvertProtocol`` (istio/istio
  pkg/config/kube/conversion_test.go) and ``protocol.Parse`` (pkg/config/protocol/instance.go).
- The ALPN of a TCP port's ISTIO_MUTUAL ClientHello: ``ALPNInMeshWithMxc``
  (``istio-peer-exchange``, ``istio``; pilot/pkg/networking/util/util.go), since only the HTTP
  connection manager's ``istio.alpn`` filter overrides the cluster's list.
- The built-in topology: the README's description (Istio's authn-policy task: foo and bar
  injected, legacy not; Service httpbin 8000 -> 8080 named http).
- Istio's tcp-echo sample answers each line with ``hello <line>`` (samples/tcp-echo).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from local_helpers import REPO, envoy_path, needs_local_mesh, traces_of

from pytest_meshconform.backends.local import xds
from pytest_meshconform.backends.local.control import plan_sidecars
from pytest_meshconform.backends.local.topology_file import (
    BUILTIN_TOPOLOGY,
    TopologyError,
    default_topology,
    load_topology,
    parse_topology,
)
from pytest_meshconform.evidence.wire import analyze_pcap
from pytest_meshconform.istio import (
    ALPN_IN_MESH_WITH_MXC,
    ISTIO_MTLS_HTTP11_ALPN,
    PortProtocol,
    plan_sidecar,
    service_port_protocol,
)
from pytest_meshconform.istio.api import MtlsMode, parse_policy
from pytest_meshconform.istio.api.peer_authentication import peer_authentication

# (port, name, appProtocol, udp) -> Istio's protocol, from TestConvertProtocol.
CONVERT_PROTOCOL_CASES = [
    ((0, "", None, False), PortProtocol.UNSUPPORTED),  # resolves empty
    ((0, "", None, True), PortProtocol.UDP),  # resolves from protocol directly
    ((0, "http-something", None, False), PortProtocol.HTTP),  # resolves from port name
    ((0, "http-something", "https", False), PortProtocol.HTTPS),  # prefers appProto
    ((0, "something-httpx", "https", False), PortProtocol.HTTPS),  # resolves from appProto
    ((0, "grpc-web-x", None, False), PortProtocol.GRPC_WEB),  # resolves grpc-web
    ((0, "grpcweb-x", None, False), PortProtocol.UNSUPPORTED),  # grpc-web not resolved wrongly
    ((3306, "random-name", None, False), PortProtocol.TCP),  # resolves based on known ports
    ((0, "TCP-echo", None, False), PortProtocol.TCP),  # Parse ignores case
    ((0, "mongo", None, False), PortProtocol.MONGO),
]


@pytest.mark.parametrize(("given", "want"), CONVERT_PROTOCOL_CASES)
def test_protocol_selection_is_istios(given: tuple[int, str, str | None, bool], want: Any) -> None:
    port, name, app_protocol, udp = given
    assert service_port_protocol(port, name, app_protocol, udp=udp) is want


def test_the_builtin_topology_is_the_authn_task() -> None:
    topology = default_topology()
    assert [(p.workload.key, p.workload.has_sidecar, p.kind) for p in topology.pods] == [
        ("sleep.foo", True, "sleep"),
        ("httpbin.foo", True, "httpbin"),
        ("sleep.bar", True, "sleep"),
        ("httpbin.bar", True, "httpbin"),
        ("sleep.legacy", False, "sleep"),
        ("httpbin.legacy", False, "httpbin"),
    ]
    assert [
        (e.service.key, e.service.target_port, e.service.port_name) for e in topology.services
    ] == [
        ("httpbin.foo:8000", 8080, "http"),
        ("httpbin.foo:50051", 50051, "grpc"),
        ("httpbin.bar:8000", 8080, "http"),
        ("httpbin.bar:50051", 50051, "grpc"),
        ("httpbin.legacy:8000", 8080, "http"),
    ]
    assert [p.ip for p in topology.pods] == [f"10.244.0.{n}" for n in range(10, 16)]
    # one VIP per Service, whatever its ports
    assert [e.vip for e in topology.services] == [
        "10.96.0.10",
        "10.96.0.10",
        "10.96.0.11",
        "10.96.0.11",
        "10.96.0.12",
    ]
    assert BUILTIN_TOPOLOGY.is_file()


ECHO_TOPOLOGY = """\
namespaces:
  - name: shop
    injected: true
    workloads:
      - {name: client, kind: sleep}
      - name: echo
        kind: tcp-echo
        serviceAccount: echo-sa
        labels: {app: echo, version: v1}
        ports: [9000, 9001]
      - {name: web, kind: httpbin, ports: [8080]}
    services:
      - name: echo
        selector: {app: echo}
        ports:
          - {name: tcp-main, port: 9000}
          - {name: side, port: 9100, targetPort: 9001, appProtocol: tcp}
      - name: web
        selector: {app: web}
        ports:
          - {name: http-web, port: 80, targetPort: 8080}
  - name: outside
    injected: false
    workloads:
      - {name: naked, kind: sleep}
"""


def test_a_topology_file_with_a_two_port_tcp_service() -> None:
    topology = parse_topology(ECHO_TOPOLOGY, "echo.yaml")
    echo = topology.pod("echo", "shop")
    assert echo.kind == "tcp-echo"
    assert echo.workload.service_account == "echo-sa"
    assert dict(echo.workload.labels) == {"app": "echo", "version": "v1"}
    assert echo.workload.container_ports == (9000, 9001)
    assert not topology.pod("naked", "outside").workload.has_sidecar
    ports = [(e.service.key, e.service.target_port, e.vip) for e in topology.services]
    assert ports == [
        ("echo.shop:9000", 9000, "10.96.0.10"),
        ("echo.shop:9100", 9001, "10.96.0.10"),  # one Service, one VIP, two ports
        ("web.shop:80", 8080, "10.96.0.11"),
    ]
    hosts = topology.hosts_file(topology.pod("client", "shop"))
    assert hosts.count("echo.shop.svc.cluster.local") == 1


def test_tcp_ports_get_tcp_proxies_and_the_mxc_alpn() -> None:
    topology = parse_topology(ECHO_TOPOLOGY, "echo.yaml")
    policies = [
        parse_policy(peer_authentication("echo", "shop", "STRICT", selector={"app": "echo"}))
    ]
    plans = plan_sidecars(topology, policies, "istio-system")
    client = plans["client.shop"]
    assert client.outbound[("echo.shop.svc.cluster.local", 9000)].alpn == ALPN_IN_MESH_WITH_MXC
    assert client.outbound[("web.shop.svc.cluster.local", 80)].alpn == ISTIO_MTLS_HTTP11_ALPN
    assert plans["echo.shop"].tcp_ports == frozenset({9000, 9001})
    assert plans["web.shop"].tcp_ports == frozenset()
    listeners = {item["name"]: item for item in xds.listeners(client, xds.SidecarPaths(Path("/x")))}
    (echo_filter,) = listeners["10.96.0.10_9000"]["filter_chains"][0]["filters"]
    assert echo_filter["name"] == "envoy.filters.network.tcp_proxy"
    assert echo_filter["typed_config"]["cluster"] == "outbound|9000||echo.shop.svc.cluster.local"
    (web_filter,) = listeners["10.96.0.11_80"]["filter_chains"][0]["filters"]
    assert web_filter["name"] == "envoy.filters.network.http_connection_manager"
    inbound = xds.listeners(plans["echo.shop"], xds.SidecarPaths(Path("/x")))[0]
    by_port = {
        c["filter_chain_match"].get("destination_port"): c
        for c in inbound["filter_chains"]
        if "destination_port" in c["filter_chain_match"]
    }
    assert by_port[9001]["filters"][0]["name"] == "envoy.filters.network.tcp_proxy"
    assert by_port[9001]["filter_chain_match"]["transport_protocol"] == "tls"  # STRICT


def test_tcp_rendering_passes_envoys_validation(tmp_path: Path) -> None:
    envoy = envoy_path()
    topology = parse_topology(ECHO_TOPOLOGY, "echo.yaml")
    for key, plan in plan_sidecars(topology, [], "istio-system").items():
        paths = xds.SidecarPaths(tmp_path / key)
        for sub in (paths.lds.parent, paths.cds.parent, paths.sds_dir):
            sub.mkdir(parents=True)
        for path, body in (
            (paths.bootstrap, xds.bootstrap(plan.pod, paths)),
            (paths.lds, xds.discovery_file("1", xds.listeners(plan, paths))),
            (paths.cds, xds.discovery_file("1", xds.clusters(plan, paths))),
        ):
            path.write_text(json.dumps(body))
        result = subprocess.run(
            [str(envoy), "--mode", "validate", "-c", str(paths.bootstrap), "-l", "warning"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"{key}: {result.stdout}{result.stderr}"


def test_a_port_level_disable_reaches_the_model() -> None:
    topology = parse_topology(ECHO_TOPOLOGY, "echo.yaml")
    workloads = [p.workload for p in topology.pods]
    services = [e.service for e in topology.services]
    policy = parse_policy(
        peer_authentication(
            "echo", "shop", "STRICT", selector={"app": "echo"}, port_level={9001: "DISABLE"}
        )
    )
    echo = plan_sidecar(
        topology.pod("echo", "shop").workload, [policy], workloads=workloads, services=services
    )
    assert dict(echo.inbound) == {9000: MtlsMode.STRICT, 9001: MtlsMode.DISABLE}
    client = plan_sidecar(
        topology.pod("client", "shop").workload, [policy], workloads=workloads, services=services
    )
    # auto mTLS: plaintext towards the endpoint whose target port is DISABLE
    assert "echo.shop" in client.outbound[("echo.shop.svc.cluster.local", 9100)].plaintext_endpoints
    assert client.outbound[("echo.shop.svc.cluster.local", 9000)].plaintext_endpoints == frozenset()


def test_an_ambient_namespace_enrols_its_workloads_in_ambient_mode() -> None:
    """`dataplane: ambient` is a namespace labelled istio.io/dataplane-mode=ambient: its pods
    have no sidecar, ztunnel captures them; the handle's data plane says so."""
    topology = parse_topology(
        "namespaces:\n"
        "  - name: shop\n    dataplane: ambient\n"
        "    workloads: [{name: cashier, kind: sleep}, {name: ledger, kind: tcp-echo}]\n"
        "  - name: batch\n    dataplane: none\n    workloads: [{name: nightly, kind: sleep}]\n"
        "  - name: web\n    dataplane: sidecar\n    workloads: [{name: front, kind: sleep}]\n",
        "t.yaml",
    )
    seen = {p.workload.key: (p.workload.has_sidecar, p.workload.ambient) for p in topology.pods}
    assert seen == {
        "cashier.shop": (False, True),
        "ledger.shop": (False, True),
        "nightly.batch": (False, False),
        "front.web": (True, False),
    }
    assert [p.workload.dataplane for p in topology.pods] == [
        "ambient",
        "ambient",
        "none",
        "sidecar",
    ]


BAD_FILES = [
    ("namespaces: []\n", ":1: namespaces: no namespace"),
    (
        "namespaces:\n  - name: foo\n",
        ":2: namespaces[0].dataplane: required field missing: write dataplane: sidecar |"
        " ambient | none (or injected: true | false)",
    ),
    (
        "namespaces:\n  - name: foo\n    dataplane: waypoint\n",
        ":3: namespaces[0].dataplane: unknown data plane 'waypoint'; the local mesh runs:"
        " sidecar | ambient | none",
    ),
    (
        "namespaces:\n  - name: foo\n    dataplane: ambient\n    injected: false\n",
        ":4: namespaces[0].injected: injected: false contradicts dataplane: ambient; give only"
        " dataplane",
    ),
    (
        "namespaces:\n  - name: foo\n    dataplane: none\n    injected: true\n",
        ":4: namespaces[0].injected: injected: true contradicts dataplane: none; give only"
        " dataplane",
    ),
    (
        "namespaces:\n  - name: a\n    dataplane: sidecar\n    workloads:\n"
        "      - {name: x, kind: httpbin, ports: [8080, {port: 5432, serves: postgres}]}\n",
        ":5: namespaces[0].workloads[0].ports[1].serves: 'postgres' serves no port; a port is"
        " served by httpbin or tcp-echo or grpc-echo or tcp-banner",
    ),
    (
        "namespaces:\n  - name: a\n    dataplane: sidecar\n    workloads:\n"
        "      - {name: x, kind: httpbin, ports: [8080, {port: 8080, serves: tcp-echo}]}\n",
        ":5: namespaces[0].workloads[0].ports[1]: port 8080 is listed twice",
    ),
    (
        "namespaces:\n  - name: a\n    dataplane: sidecar\n    workloads:\n"
        "      - {name: x, ports: [{port: 5432, serves: tcp-echo}, 8080]}\n",
        ":5: namespaces[0].workloads[0].ports[1]: a plain port is served by the workload's kind,"
        " and it names none: give kind, or write {port: 8080, serves: httpbin | tcp-echo |"
        " grpc-echo | tcp-banner}",
    ),
    (
        "namespaces:\n  - name: a\n    dataplane: sidecar\n    workloads:\n      - {name: x}\n",
        ":5: namespaces[0].workloads[0].kind: required field missing (one of httpbin, sleep,"
        " tcp-echo, grpc-echo, tcp-banner), unless every port says what serves it",
    ),
    (
        "namespaces:\n  - name: a\n    dataplane: sidecar\n    workloads:\n"
        "      - {name: x, kind: httpbin, ports: [{port: 5432, serves: tcp-echo, tls: true}]}\n",
        ":5: namespaces[0].workloads[0].ports[0].tls: unknown field; known fields: port, serves",
    ),
    (
        "namespaces:\n  - name: a\n    dataplane: sidecar\n    workloads:\n"
        "      - {name: x, kind: sleep, ports: [{port: 5432, serves: tcp-echo}]}\n",
        ":5: namespaces[0].workloads[0].ports: a sleep workload serves no port",
    ),
    (
        "namespaces:\n  - name: foo\n    injected: yes please\n",
        ":3: namespaces[0].injected: expected true or false",
    ),
    (
        "namespaces:\n  - name: foo\n    injected: true\n    workload: []\n",
        ":4: namespaces[0].workload: unknown field; known fields: name, dataplane, injected,"
        " labels, waypoint, waypoints, workloads, services",
    ),
    (
        "namespaces:\n  - name: Foo\n    injected: true\n",
        ":2: namespaces[0].name: 'Foo' is not a DNS label",
    ),
    (
        "namespaces:\n  - name: istio-system\n    injected: true\n",
        ":2: namespaces[0].name: 'istio-system' is reserved",
    ),
    (
        "namespaces:\n  - name: a\n    injected: true\n    workloads:\n"
        "      - {name: x, kind: nginx}\n",
        ":5: namespaces[0].workloads[0].kind: unknown app kind 'nginx'; known kinds: httpbin,"
        " sleep, tcp-echo",
    ),
    (
        "namespaces:\n  - name: a\n    injected: true\n    workloads:\n"
        "      - {name: x, kind: httpbin, ports: [70000]}\n",
        ":5: namespaces[0].workloads[0].ports[0]: port 70000 is not in 1..65535",
    ),
    (
        "namespaces:\n  - name: a\n    injected: true\n    workloads:\n"
        "      - {name: x, kind: httpbin}\n    services:\n      - name: s\n"
        "        selector: {app: y}\n        ports: [{port: 80, targetPort: 8080}]\n",
        ":8: namespaces[0].services[0].selector: selects no workload of namespace a",
    ),
    (
        "namespaces:\n  - name: a\n    injected: true\n    workloads:\n"
        "      - {name: x, kind: httpbin}\n    services:\n      - name: s\n"
        "        selector: {app: x}\n        ports:\n"
        "          - {name: http, port: 80, targetPort: 9999}\n",
        ":10: namespaces[0].services[0].ports[0].targetPort: x does not serve port 9999 (its"
        " ports: 8080)",
    ),
    (
        "namespaces:\n  - name: a\n    injected: true\n    workloads:\n"
        "      - {name: x, kind: httpbin}\n    services:\n      - name: s\n"
        "        selector: {app: x}\n        ports:\n"
        "          - {name: udp-dns, port: 80, targetPort: 8080}\n",
        ":10: namespaces[0].services[0].ports[0].name: Istio selects protocol UDP",
    ),
    (
        "namespaces:\n  - name: a\n    injected: true\n    workloads:\n"
        "      - {name: x, kind: httpbin}\n    services:\n      - name: s\n"
        "        selector: {app: x}\n        ports:\n"
        "          - {name: web, port: 80, targetPort: 8080, appProtocol: udp}\n",
        ":10: namespaces[0].services[0].ports[0].appProtocol: Istio selects protocol UDP",
    ),
    ("namespaces: [\n", ":2: not valid YAML"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_a_bad_file_gets_one_error_naming_line_and_field(text: str, message: str) -> None:
    with pytest.raises(TopologyError) as caught:
        parse_topology(text, "t.yaml")
    assert str(caught.value).startswith("t.yaml" + message), caught.value


def test_ports_served_by_different_apps_and_the_dataplane_field() -> None:
    topology = load_topology(REPO / "examples" / "payments" / "topology.yaml")
    ledger = topology.pod("ledger", "payments")
    assert ledger.workload.container_ports == (8080, 5432)
    assert ledger.apps() == {"httpbin": (8080,), "tcp-echo": (5432,)}
    assert (ledger.app_on(8080), ledger.app_on(5432)) == ("httpbin", "tcp-echo")
    assert [(p.workload.key, p.workload.has_sidecar) for p in topology.pods] == [
        ("ledger.payments", True),
        ("web.checkout", True),
        ("refunds.checkout", True),
        ("nightly.batch", False),
    ]
    assert [
        (e.service.key, e.service.port_name, e.service.target_port) for e in topology.services
    ] == [
        ("ledger.payments:80", "http", 8080),
        ("ledger.payments:5432", "tcp-postgres", 5432),
    ]
    # without kind, each port says what serves it; the first names the pod's kind
    only_ports = parse_topology(
        "namespaces:\n  - name: a\n    dataplane: none\n    injected: false\n    workloads:\n"
        "      - {name: x, ports: [{port: 9000, serves: tcp-echo}, {port: 80, serves: httpbin}]}\n",
        "t.yaml",
    ).pod("x", "a")
    assert only_ports.kind == "tcp-echo" and not only_ports.workload.has_sidecar
    assert only_ports.apps() == {"tcp-echo": (9000,), "httpbin": (80,)}


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match=r"nope\.yaml: no such file$"):
        load_topology(tmp_path / "nope.yaml")


def test_the_option_refuses_a_bad_file_before_any_test(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", topo="namespaces:\n  - name: foo\n    injected: maybe\n")
    pytester.makepyfile("def test_x(mesh):\n    pass\n")
    result = pytester.runpytest("--mesh-topology=topo.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --mesh-topology: *topo.yaml:3: namespaces[[]0[]].injected:"
            " expected true or false*"
        ]
    )


def test_the_option_is_for_the_local_mesh_only(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", topo=ECHO_TOPOLOGY)
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("--mesh-topology=topo.yaml", "--mesh-cluster=kind")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--mesh-topology: a topology file describes the local mesh*"])


@pytest.fixture(scope="module")
def echo_mesh() -> Iterator[Any]:
    from pytest_meshconform.backends.local.backend import LocalMesh

    mesh = LocalMesh(topology=parse_topology(ECHO_TOPOLOGY, "echo.yaml")).start()
    run_id = mesh.run_id
    try:
        yield mesh
    finally:
        mesh.close()
    assert traces_of(run_id) == []


def _echo(mesh: Any, client: str, namespace: str, host: str, port: int) -> str:
    script = f"exec 3<>/dev/tcp/{host}/{port} && echo meshconform >&3 && timeout 5 head -n1 <&3"
    result = mesh.exec(mesh.workload(client, namespace), ["bash", "-c", script], timeout=15)
    return result.stdout.decode().strip() or f"(exit {result.returncode}: {result.stderr!r})"


@needs_local_mesh
def test_a_tcp_echo_service_on_two_ports_through_sidecars(echo_mesh: Any) -> None:
    mesh = echo_mesh
    echo = mesh.workload("echo", "shop")
    with mesh.capture(mesh.workload("client", "shop"), 9001) as recording:
        assert _echo(mesh, "client", "shop", "echo.shop", 9100) == "hello meshconform"
    assert _echo(mesh, "client", "shop", "echo.shop", 9000) == "hello meshconform"
    assert _echo(mesh, "naked", "outside", "echo.shop", 9000) == "hello meshconform"  # PERMISSIVE
    (flow,) = [f for f in analyze_pcap(recording.pcap).flows_to(9001) if f.has_payload]
    assert flow.tls is not None and flow.tls.client_hello is not None
    assert flow.tls.client_hello.sni == "outbound_.9100_._.echo.shop.svc.cluster.local"
    assert flow.tls.client_hello.alpn == ("istio-peer-exchange", "istio")
    assert echo.container_ports == (9000, 9001)


def test_the_ini_twin_names_the_file_too(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", topo="namespaces:\n  - name: foo\n    injected: true\n    x: 1\n")
    pytester.makeini("[pytest]\nmesh_topology = topo.yaml\n")
    pytester.makepyfile("def test_x(mesh):\n    pass\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*topo.yaml:4: namespaces[[]0[]].x: unknown field*"])
