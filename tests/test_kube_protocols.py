"""The kube reader (``kube/envoystate.py``) on the protocols a port carries: the HTTP version
each cluster speaks upstream, read from config dumps real istiod-programmed proxies wrote
(``../shared/testdata/istio-dumps``, read in place, skipped when absent), and the wait's
expectation of it (issue 25).

Expected facts are read off the dumps' text (the cluster's ``HttpProtocolOptions``), the port
names from the Services those clusters belong to (Istio's own charts: istiod's 15010
`grpc-xds`, the ingress gateway's 80 `http2`, the tracing Service's 80 `http-query` and 16685
`grpc-query`; hello-openshift's 8080 has no name Istio recognises), and Istio's generator:
``setUpstreamProtocol`` (pilot/pkg/networking/core/cluster_builder.go) gives ``IsHTTP2`` ports
``setH2Options`` (``explicit_http_config.http2_protocol_options``), sniffed ports
``setUseDownstreamProtocol`` (``use_downstream_protocol_config``), and other HTTP ports nothing
(Envoy's default HTTP/1.1). The five chains of a sniffed inbound port in the same dumps are
tests/test_kube_real_dumps.py's and tests/test_istio_sniffing.py's.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import TESTDATA

from pytest_meshconform.backends.kube.envoystate import (
    ExpectedOutbound,
    SidecarExpectation,
    expected_sidecar,
    mismatches,
    parse_config_dump,
)
from pytest_meshconform.istio.envoy import UpstreamHttp
from pytest_meshconform.mesh import Service

DUMPS = TESTDATA / "istio-dumps"
H2, DOWNSTREAM, H1 = UpstreamHttp.HTTP2, UpstreamHttp.DOWNSTREAM, UpstreamHttp.HTTP1
HELLO = "outbound|8080||hello-openshift.vanilla-playground.svc.cluster.local"


def load(name: str) -> dict[str, Any]:
    path = DUMPS / name
    if not path.is_file():
        pytest.skip(f"shared test data not available ({path})")
    document: dict[str, Any] = json.loads(path.read_bytes())
    return document


@pytest.mark.parametrize(
    ("dump", "cluster", "want"),
    [
        (
            "ossm__pod_config_dump.json",
            "outbound|15010||istiod-basic.istio-system.svc.cluster.local",
            H2,
        ),
        (
            "ossm__pod_config_dump.json",
            "outbound|80||istio-ingressgateway.istio-system.svc.cluster.local",
            H2,
        ),
        ("ossm__pod_config_dump.json", HELLO, DOWNSTREAM),
        ("ossm__pod_config_dump.json", "inbound|8080||", DOWNSTREAM),
        ("mplb__envoy_config_dump.json", "outbound|80||tracing.istio-system.svc.cluster.local", H1),
        (
            "mplb__envoy_config_dump.json",
            "outbound|16685||tracing.istio-system.svc.cluster.local",
            H2,
        ),
        (
            "mplb__envoy_config_dump.json",
            "outbound|3333||app1.default.svc.cluster.local",
            DOWNSTREAM,
        ),
    ],
)
def test_the_http_version_each_real_cluster_speaks(
    dump: str, cluster: str, want: UpstreamHttp
) -> None:
    assert parse_config_dump(load(dump)).clusters[cluster].upstream_http is want


def _service(port_name: str, app_protocol: str | None = None) -> Service:
    return Service(
        "hello-openshift",
        "vanilla-playground",
        8080,
        8080,
        "hello-openshift",
        port_name,
        app_protocol,
    )


@pytest.mark.parametrize(
    ("service", "want"),
    [
        (_service("web"), DOWNSTREAM),  # sniffed
        (_service("grpc-api"), H2),
        (_service("metrics", "http2"), H2),
        (_service("grpc-web"), H2),
        (_service("http"), None),  # MeshConfig h2UpgradePolicy (not read here) may upgrade it
        (_service("tcp-db"), None),  # a TCP proxy: no HTTP version to expect
    ],
)
def test_the_wait_expects_the_ports_http_version(
    service: Service, want: UpstreamHttp | None
) -> None:
    expectation = expected_sidecar(
        [],
        namespace="vanilla-playground",
        labels={"app": "client"},
        container_ports=(),
        services=[service],
        root_namespace="istio-system",
    )
    [outbound] = expectation.outbound
    assert outbound.cluster == HELLO and outbound.upstream_http is want


def test_a_destination_rule_leaves_a_sniffed_ports_version_unchecked() -> None:
    """``shouldH2Upgrade``: a rule's ``h2UpgradePolicy: UPGRADE`` upgrades even a sniffed
    port, so with a rule for the Service the wait does not expect the client's version."""
    from pytest_meshconform.istio.api import parse_policy

    rule = parse_policy(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "upgrade", "namespace": "vanilla-playground"},
            "spec": {
                "host": "hello-openshift",
                "trafficPolicy": {"connectionPool": {"http": {"h2UpgradePolicy": "UPGRADE"}}},
            },
        }
    )
    [outbound] = expected_sidecar(
        [rule],
        namespace="vanilla-playground",
        labels={"app": "client"},
        container_ports=(),
        services=[_service("web")],
        root_namespace="istio-system",
    ).outbound
    assert outbound.upstream_http is None


def test_a_sniffed_port_read_as_grpc_is_a_mismatch_naming_both() -> None:
    """The real 1.20.8 cluster of an unnamed port, against the expectation of a gRPC port
    (the Service renamed `grpc-...` but the proxy not yet updated): the wait keeps waiting."""
    state = parse_config_dump(load("ossm__pod_config_dump.json"))
    grpc = SidecarExpectation((), (ExpectedOutbound(HELLO, None, None, upstream_http=H2),))
    assert mismatches(state, grpc) == (
        f"cluster {HELLO}: upstream the client's HTTP version, expected HTTP/2 (the port's"
        " protocol, setUpstreamProtocol)",
    )
    sniffed = SidecarExpectation(
        (), (ExpectedOutbound(HELLO, None, None, upstream_http=DOWNSTREAM),)
    )
    assert mismatches(state, sniffed) == ()
