"""gRPC without a mesh: the grpc-echo app and the gRPC client as real processes on loopback
(grpcio both sides; the client as its one-shot command and as the long-lived client process the
local mesh keeps per pod), the argument builder, the Envoy config the local mesh renders for gRPC
and HTTP/2 ports, and the kube backends' typed refusal.

Where the expected values come from:

- gRPC status names and codes: grpc/grpc doc/statuscodes.md (PERMISSION_DENIED is 7,
  UNAVAILABLE 14); grpcio's ``StatusCode`` spells them so.
- The health service: grpc/grpc doc/health-checking.md (``grpc.health.v1.Health/Check``,
  SERVING for the empty service name).
- Envoy config (checked against a real istiod's clusters at the end): istiod's
  ``buildSidecarInboundHTTPOpts`` (pilot/pkg/networking/core/listener_inbound.go) sets an
  empty ``Http2ProtocolOptions`` on the inbound HTTP connection manager of a port whose
  ``Protocol.IsHTTP2()``; ``setUpstreamProtocol`` -> ``setH2Options`` (cluster_builder.go)
  makes every cluster of such a port HTTP/2 (``explicit_http_config: {http2_protocol_options:
  {}}``); the outbound manager has no HTTP/2 options; the client's ALPN is ``mtlsHTTP2ALPN``
  (pilot/pkg/xds/filters/filters.go): istio-h2, istio, h2.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from local_helpers import REPO, wait_for
from test_kube_real_dumps import load, raw_clusters
from test_ports_by_service import kube_mesh

from pytest_meshconform.backends.kube.backend import KubeMesh
from pytest_meshconform.backends.local import xds
from pytest_meshconform.backends.local.control import plan_sidecars
from pytest_meshconform.backends.local.grpc_client import GrpcClients
from pytest_meshconform.backends.local.grpc_echo import HEALTH_CHECK_METHOD
from pytest_meshconform.backends.local.topology_file import load_topology
from pytest_meshconform.evidence.grpc_call import (
    ECHO_METHOD,
    GrpcError,
    GrpcResult,
    grpc_client_args,
    parse_grpc_output,
)
from pytest_meshconform.istio.envoy import cluster_http_protocol_options
from pytest_meshconform.istio.protocol import service_port_protocol
from pytest_meshconform.mesh import ExecResult, GrpcCapable, GrpcClientUnavailable, MeshError

CATALOG = load_topology(REPO / "examples" / "catalog" / "topology.yaml")
PATHS = xds.SidecarPaths(Path("/run/meshconform/abc123/pods/x/envoy"))
CATALOG_FQDN = "catalog.shop.svc.cluster.local"
H2_OPTIONS = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def echo_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The grpc-echo app in a process of its own, on a loopback port."""
    port = _free_port()
    log = tmp_path_factory.mktemp("grpc") / "echo.log"
    code = (
        "from pytest_meshconform.backends.local.grpc_echo import start_grpc_echo\n"
        f"for t in start_grpc_echo('127.0.0.1:{port}'): t.join()\n"
    )
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=out)
    try:
        wait_for(lambda: b"Serving on" in log.read_bytes(), 20, "the grpc-echo app")
        yield port
    finally:
        server.terminate()
        server.wait(10)


def one_shot(args: list[str]) -> ExecResult:
    """The client as its own process: ``python -m ...grpc_echo ARGS``."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_meshconform.backends.local.grpc_echo", *args],
        capture_output=True,
        timeout=30,
    )
    return ExecResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GrpcClients, Any]]:
    """Long-lived client processes (`grpc_client`) on loopback, as the local mesh starts them
    in a pod (there: in its namespace), and the ``start`` that makes one."""
    log = tmp_path_factory.mktemp("grpc-client") / "grpc-client.log"

    def start() -> tuple[subprocess.Popen[bytes], Path, int]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pytest_meshconform.backends.local.grpc_client"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=out,
            )
            return proc, log, out.tell()

    pool = GrpcClients()
    try:
        yield pool, start
    finally:
        pool.close()


@pytest.fixture(params=["one-shot", "long-lived"])
def run_client(request: pytest.FixtureRequest) -> Any:
    """Runs the client with its arguments, each way the project runs it."""
    if request.param == "one-shot":
        return one_shot
    pool, start = request.getfixturevalue("clients")
    return lambda args: pool.call("test", args, 30, start)


def call(run_client: Any, port: int, method: str = ECHO_METHOD, **metadata: str) -> GrpcResult:
    args = grpc_client_args("localhost", port, metadata=metadata, timeout=5, method=method)
    result = run_client(args)
    return parse_grpc_output(
        f"localhost:{port}", "test", result.returncode, result.stdout, result.stderr
    )


def test_the_echo_answers_with_the_metadata_it_saw(echo_port: int, run_client: Any) -> None:
    result = call(run_client, echo_port, **{"x-team": "payments", "x-request-id": "abc"})
    assert result.ok and result.status == "OK" and result.code == 0, result
    assert result.metadata("x-request-id") == ("abc",), result.server_metadata
    assert result.metadata("X-Team") == ("payments",)  # keys are case-insensitive
    assert result.metadata("user-agent")[0].startswith("grpc-python/"), result.server_metadata
    assert not result.reset and result.outcome == "gRPC OK"


def test_the_health_service_reports_serving(echo_port: int, run_client: Any) -> None:
    assert call(run_client, echo_port, HEALTH_CHECK_METHOD).status == "OK"


def test_an_unknown_method_is_unimplemented(echo_port: int, run_client: Any) -> None:
    result = call(run_client, echo_port, "/meshconform.echo.v1.Echo/Nope")
    assert result.status == "UNIMPLEMENTED" and result.code == 12, result
    assert result.server_metadata == () and result.outcome == "gRPC UNIMPLEMENTED"


def test_a_port_nothing_listens_on_is_refused_not_reset(run_client: Any) -> None:
    result = call(run_client, _free_port())
    assert result.status == "UNAVAILABLE" and result.code == 14, result
    assert result.refused and not result.reset and result.outcome == "refused", result
    assert "Connection refused" in result.describe()


def test_a_client_that_cannot_run_is_a_grpc_error_with_its_output(run_client: Any) -> None:
    result = run_client(["only-one-arg"])
    with pytest.raises(GrpcError, match=r"could not make the call \(exit 2\): usage: grpc_echo"):
        parse_grpc_output("x:1", "test", result.returncode, result.stdout, result.stderr)


def test_the_long_lived_client_returns_what_the_one_shot_command_does(
    clients: tuple[GrpcClients, Any],
) -> None:
    """Exit status, stdout and stderr as the command's own process: a usage error, an uncaught
    exception's traceback (exit 1) and, after them, a call that works."""
    pool, start = clients
    for args in (["only-one-arg"], ["localhost:1", "/x/Y", "not-a-number"]):
        mine, theirs = pool.call("test", args, 30, start), one_shot(args)
        assert (mine.returncode, mine.stdout) == (theirs.returncode, theirs.stdout), args
        assert mine.stderr.splitlines()[-1] == theirs.stderr.splitlines()[-1], (mine, theirs)
    assert b"Traceback" in mine.stderr and mine.returncode == 1, mine


def test_one_client_process_makes_each_call_on_a_new_connection(
    echo_port: int, clients: tuple[GrpcClients, Any]
) -> None:
    """The same process answers every call (no grpcio import per call), and each call is a
    new TCP connection, as a process per call made: the echo names a new client port."""
    pool, start = clients
    peers, pids = [], []
    for _ in range(3):
        result = pool.call("reuse", grpc_client_args("localhost", echo_port, timeout=5), 30, start)
        answer = json.loads(result.stdout.split(b"@@meshconform-grpc@@")[1])
        peers.append(answer["echo"]["peer"])
        pids.append(pool.pids())
    assert len(set(peers)) == 3, peers  # ipv4:127.0.0.1:<a new port each call>
    assert pids[0] == pids[1] == pids[2] and len(pids[0]) >= 1, pids


def test_a_hung_client_is_killed_at_the_timeout_and_a_dead_one_replaced(
    echo_port: int, tmp_path: Path
) -> None:
    log = tmp_path / "grpc-client.log"
    started: list[subprocess.Popen[bytes]] = []

    def start() -> tuple[subprocess.Popen[bytes], Path, int]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pytest_meshconform.backends.local.grpc_client"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=out,
            )
        started.append(proc)
        return proc, log, 0

    pool = GrpcClients()
    args = grpc_client_args("localhost", echo_port, timeout=5)
    try:
        assert pool.call("hang", args, 30, start).returncode == 0
        os.kill(started[0].pid, signal.SIGSTOP)  # hung: it never answers
        with pytest.raises(MeshError, match=r"in hang did not finish within 0\.5s; its gRPC cl"):
            pool.call("hang", args, 0.5, start)
        assert started[0].returncode == -signal.SIGKILL and pool.pids() == []  # killed, reaped
        assert pool.call("hang", args, 30, start).returncode == 0  # a new one
        os.kill(started[1].pid, signal.SIGKILL)  # died between calls
        started[1].wait()
        assert pool.call("hang", args, 30, start).returncode == 0
        assert len(started) == 3 and pool.pids() == [started[2].pid]
    finally:
        pool.close()
    assert all(proc.returncode is not None for proc in started)  # none left running


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ({"X-Upper": "v"}, "lower-case ASCII"),
        ({"trace-bin": "v"}, "no '-bin' binary keys"),
        ({"grpc-timeout": "1S"}, "no 'grpc-' prefix"),
        ({"x-ok": "line\nbreak"}, "not printable ASCII"),
    ],
)
def test_metadata_grpc_would_refuse_is_refused_before_anything_runs(
    metadata: dict[str, str], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        grpc_client_args("catalog.shop", 50051, metadata=metadata, timeout=1)


# ============================================================================ kube


def test_the_kube_backends_refuse_a_grpc_call_with_a_typed_error() -> None:
    """The kube client pod runs curlimages/curl: no gRPC client, and no silent fallback."""
    assert not hasattr(KubeMesh, "grpc_exec")
    mesh = kube_mesh()
    cast(Any, mesh).backend = "kind"
    assert not isinstance(mesh, GrpcCapable)
    sleep, httpbin = mesh.handle("sleep", "foo"), mesh.handle("httpbin", "foo")
    with pytest.raises(
        GrpcClientUnavailable,
        match=r"^the kind backend cannot run a gRPC client in sleep\.mc-a1b2c3-foo's pod \(its"
        r" client container is curlimages/curl, which has none\)",
    ):
        sleep.grpc(httpbin, port="http")
    assert mesh.sent == []


# ============================================================================ Envoy config


def catalog_plans() -> dict[str, xds.SidecarPlan]:
    return dict(plan_sidecars(CATALOG, [], "istio-system"))


def _inbound_hcm(plan: xds.SidecarPlan, port: int) -> dict[str, Any]:
    (inbound,) = [x for x in xds.listeners(plan, PATHS) if x["name"] == "virtualInbound"]
    chains = [c for c in inbound["filter_chains"] if c["name"].startswith(f"0.0.0.0_{port}-")]
    assert chains
    configs = [c["filters"][-1]["typed_config"] for c in chains]
    assert all(config == configs[0] for config in configs)
    config: dict[str, Any] = configs[0]
    return config


def _cluster(plan: xds.SidecarPlan, name: str) -> dict[str, Any]:
    (found,) = [c for c in xds.clusters(plan, PATHS) if c["name"] == name]
    return found


def test_grpc_and_http2_ports_get_the_http2_codec_inbound() -> None:
    catalog = catalog_plans()["catalog.shop"]
    for port in (50051, 8081):  # name grpc; appProtocol http2
        hcm = _inbound_hcm(catalog, port)
        assert hcm["codec_type"] == "AUTO" and hcm["http2_protocol_options"] == {}
        assert hcm["forward_client_cert_details"] == "APPEND_FORWARD"  # XFCC as on HTTP
        assert _cluster(catalog, f"inbound|{port}||")["typed_extension_protocol_options"] == (
            H2_OPTIONS
        )


def test_clients_reach_a_grpc_port_over_http2_with_istios_h2_alpn() -> None:
    web = catalog_plans()["web.frontend"]
    for port in (50051, 8081):
        outbound = _cluster(web, f"outbound|{port}||{CATALOG_FQDN}")
        assert outbound["typed_extension_protocol_options"] == H2_OPTIONS
        tls = outbound["transport_socket"]["typed_config"]
        assert tls["common_tls_context"]["alpn_protocols"] == ["istio-h2", "istio", "h2"]
        assert tls["sni"] == f"outbound_.{port}_._.{CATALOG_FQDN}"
        (listener,) = [x for x in xds.listeners(web, PATHS) if x["name"] == f"10.96.0.10_{port}"]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        assert hcm["codec_type"] == "AUTO" and "http2_protocol_options" not in hcm


def test_http_ports_keep_http1_upstream() -> None:
    """The built-in topology's HTTP ports: no HTTP/2 options anywhere (Envoy's default)."""
    from test_local_config import plans

    plan = plans()["httpbin.foo"]
    assert "typed_extension_protocol_options" not in _cluster(plan, "inbound|8080||")
    assert "http2_protocol_options" not in _inbound_hcm(plan, 8080)


# ============================================================================ real istiod


# Service ports of Istio's own manifests, and the outbound clusters istiod sent for them in a
# real sidecar's dump (shared test data, mplb__envoy_config_dump.json): istiod's `grpc-xds`
# 15010 and `http-monitoring` 15014 (manifests/charts/istio-control/istio-discovery/templates/
# service.yaml), the ingress gateway's `http2` 80 (manifests/charts/gateways/istio-ingress/
# values.yaml), the jaeger addon's `grpc-query` 16685 and `http-query` 80 (Service `tracing`)
# and `grpc-otel` 4317 (samples/addons/jaeger.yaml).
REAL_PORTS = {
    "outbound|15010||istiod.istio-system.svc.cluster.local": (15010, "grpc-xds"),
    "outbound|80||istio-ingressgateway.istio-system.svc.cluster.local": (80, "http2"),
    "outbound|16685||tracing.istio-system.svc.cluster.local": (16685, "grpc-query"),
    "outbound|4317||jaeger-collector.istio-system.svc.cluster.local": (4317, "grpc-otel"),
    "outbound|15014||istiod.istio-system.svc.cluster.local": (15014, "http-monitoring"),
    "outbound|80||tracing.istio-system.svc.cluster.local": (80, "http-query"),
}


def test_the_http2_cluster_options_are_what_real_istiod_sent() -> None:
    clusters = raw_clusters(load("istio-dumps/mplb__envoy_config_dump.json"))
    for name, (port, port_name) in REAL_PORTS.items():
        protocol = service_port_protocol(port, port_name, None)
        assert clusters[name].get("typed_extension_protocol_options") == (
            cluster_http_protocol_options(protocol)
        ), name
    assert sum(service_port_protocol(p, n, None).is_http2 for p, n in REAL_PORTS.values()) == 4
