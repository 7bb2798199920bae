"""The Istio model (pytest_meshconform.istio) and the parity of the two backends built on it.

One table of policy sets goes through the local mesh's planner (``local.control.plan_sidecars``)
and the kube backend's expectation builder (``kube.envoystate.expected_sidecar``); both must
expect the same thing of every sidecar. Each row also states, literally, what Istio does, with
the istiod function that decides it (istio/istio, see docs/istio-model.md):

- inbound mode: ``ComposePeerAuthentication`` (pilot/pkg/security/authn/policy_applier.go),
  ``GetMutualTLSModeForPort``;
- which DestinationRule: ``PushContext.destinationRule`` + ``SidecarScope.DestinationRule``
  (pilot/pkg/model/push_context.go, sidecar.go), ``exportTo``;
- the port's settings: ``GetPortLevelTrafficPolicy`` (pilot/pkg/networking/util/util.go);
- the cluster's TLS: ``buildUpstreamTLSSettings`` (pilot/pkg/networking/core/cluster_builder.go)
  with ``BestEffortInferServiceMTLSMode`` (pilot/pkg/model/push_context.go);
- per endpoint: ``mtlsChecker.computeForEndpoint`` (pilot/pkg/xds/endpoints/endpoint_builder.go).
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import TESTDATA

from pytest_meshconform.backends.kube.envoystate import (
    ExpectedInbound,
    UpstreamTransport,
    expected_sidecar,
    mismatches,
    parse_config_dump,
)
from pytest_meshconform.backends.local.control import plan_sidecars
from pytest_meshconform.backends.local.topology_file import default_topology
from pytest_meshconform.istio import (
    ISTIO_MTLS_HTTP11_ALPN,
    Sidecar,
    plan_mesh,
    port_traffic_policy,
)
from pytest_meshconform.istio.api import DestinationRule, MtlsMode, Policy, TlsMode, parse_policies
from pytest_meshconform.istio.api.destination_rule import destination_rule
from pytest_meshconform.istio.api.peer_authentication import peer_authentication
from pytest_meshconform.mesh import Service

TOPOLOGY = default_topology()
WORKLOADS = tuple(pod.workload for pod in TOPOLOGY.pods)
SERVICES = tuple(entry.service for entry in TOPOLOGY.services)
ROOT = "istio-system"
FOO, BAR, LEGACY = (f"httpbin.{ns}.svc.cluster.local" for ns in ("foo", "bar", "legacy"))
SIDECARS = ("sleep.foo", "httpbin.foo", "sleep.bar", "httpbin.bar")
STRICT, PERMISSIVE, DISABLE = MtlsMode.STRICT, MtlsMode.PERMISSIVE, MtlsMode.DISABLE


def _dr(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


# The first divergence: a rule for sleep only (SidecarScope.DestinationRule).
SLEEP_ONLY_DISABLE = _dr(
    "sleep-only",
    "foo",
    {
        "host": FOO,
        "workloadSelector": {"matchLabels": {"app": "sleep"}},
        "trafficPolicy": {"tls": {"mode": "DISABLE"}},
    },
)
# The second divergence: the port entry sets only tls (GetPortLevelTrafficPolicy).
PORT_TLS_ONLY = _dr(
    "pool",
    "foo",
    {
        "host": BAR,
        "trafficPolicy": {
            "connectionPool": {"http": {"maxRequestsPerConnection": 1}},
            "portLevelSettings": [{"port": {"number": 8000}, "tls": {"mode": "ISTIO_MUTUAL"}}],
        },
    },
)
POOL_ONLY = _dr(
    "pool-only",
    "bar",
    {
        "host": FOO,
        "trafficPolicy": {
            "tls": {"mode": "DISABLE"},
            "portLevelSettings": [
                {
                    "port": {"number": 8000},
                    "connectionPool": {"http": {"maxRequestsPerConnection": 3}},
                }
            ],
        },
    },
)
PRIVATE_TO_BAR = _dr(
    "private",
    "bar",
    {"host": BAR, "exportTo": ["."], "trafficPolicy": {"tls": {"mode": "DISABLE"}}},
)
EXPORTED_TO_FOO = _dr(
    "to-foo",
    "legacy",
    {"host": LEGACY, "exportTo": ["foo"], "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}},
)

# Outbound, per (client, Service namespace): (the cluster, reaches the endpoint over TLS,
# maxRequestsPerConnection). The cluster is "auto" (auto mTLS: ISTIO_MUTUAL per endpoint),
# "none" (no TLS at all: auto mTLS towards a Service whose namespace DISABLEs mTLS), or a
# DestinationRule mode.
AUTO_DEFAULT = {
    (client, ns): ("auto", ns != "legacy", None)
    for client in SIDECARS
    for ns in ("foo", "bar", "legacy")
}

ROWS: list[tuple[str, list[Any], dict[str, MtlsMode], dict[tuple[str, str], Any]]] = [
    (
        "nothing: PERMISSIVE, auto mTLS to sidecars, plaintext to legacy",
        [],
        {"httpbin.foo": PERMISSIVE, "httpbin.bar": PERMISSIVE},
        AUTO_DEFAULT,
    ),
    (
        "namespace STRICT in foo",
        [peer_authentication("default", "foo", "STRICT")],
        {"httpbin.foo": STRICT, "httpbin.bar": PERMISSIVE},
        AUTO_DEFAULT,
    ),
    (
        "mesh STRICT, bar DISABLE: auto mTLS sends no TLS to bar (BestEffortInferServiceMTLSMode)",
        [
            peer_authentication("default", ROOT, "STRICT"),
            peer_authentication("default", "bar", "DISABLE"),
        ],
        {"httpbin.foo": STRICT, "httpbin.bar": DISABLE},
        {**AUTO_DEFAULT, **{(c, "bar"): ("none", False, None) for c in SIDECARS}},
    ),
    (
        "bar DISABLE but httpbin STRICT: the client still sends no TLS (namespace-level only)",
        [
            peer_authentication("default", "bar", "DISABLE"),
            peer_authentication("httpbin", "bar", "STRICT", selector={"app": "httpbin"}),
        ],
        {"httpbin.foo": PERMISSIVE, "httpbin.bar": STRICT},
        {**AUTO_DEFAULT, **{(c, "bar"): ("none", False, None) for c in SIDECARS}},
    ),
    (
        "workload DISABLE on httpbin.bar: auto mTLS cluster, plaintext to that endpoint",
        [peer_authentication("httpbin", "bar", "DISABLE", selector={"app": "httpbin"})],
        {"httpbin.foo": PERMISSIVE, "httpbin.bar": DISABLE},
        {**AUTO_DEFAULT, **{(c, "bar"): ("auto", False, None) for c in SIDECARS}},
    ),
    (
        "portLevelMtls DISABLE on the target port 8080 (GetMutualTLSModeForPort)",
        [
            peer_authentication("default", "foo", "STRICT"),
            peer_authentication(
                "httpbin",
                "foo",
                "STRICT",
                selector={"app": "httpbin"},
                port_level={8080: "DISABLE"},
            ),
        ],
        {"httpbin.foo": DISABLE, "httpbin.bar": PERMISSIVE},
        {**AUTO_DEFAULT, **{(c, "foo"): ("auto", False, None) for c in SIDECARS}},
    ),
    (
        "DestinationRule with workloadSelector app=sleep: sleep.foo only (SidecarScope)",
        [SLEEP_ONLY_DISABLE],
        {"httpbin.foo": PERMISSIVE, "httpbin.bar": PERMISSIVE},
        {**AUTO_DEFAULT, ("sleep.foo", "foo"): ("DISABLE", False, None)},
    ),
    (
        "port entry with only tls drops the rule's connectionPool (GetPortLevelTrafficPolicy)",
        [PORT_TLS_ONLY],
        {"httpbin.foo": PERMISSIVE, "httpbin.bar": PERMISSIVE},
        {
            **AUTO_DEFAULT,
            ("sleep.foo", "bar"): ("ISTIO_MUTUAL", True, None),
            ("httpbin.foo", "bar"): ("ISTIO_MUTUAL", True, None),
        },
    ),
    (
        "port entry with only connectionPool drops the rule's tls: auto mTLS",
        [POOL_ONLY],
        {"httpbin.foo": PERMISSIVE, "httpbin.bar": PERMISSIVE},
        {
            **AUTO_DEFAULT,
            ("sleep.bar", "foo"): ("auto", True, 3),
            ("httpbin.bar", "foo"): ("auto", True, 3),
        },
    ),
    (
        "exportTo: '.' keeps a rule to bar's clients, ['foo'] exports it to foo only",
        [PRIVATE_TO_BAR, EXPORTED_TO_FOO],
        {"httpbin.foo": PERMISSIVE, "httpbin.bar": PERMISSIVE},
        {
            **AUTO_DEFAULT,
            ("sleep.bar", "bar"): ("DISABLE", False, None),
            ("httpbin.bar", "bar"): ("DISABLE", False, None),
            ("sleep.foo", "legacy"): ("ISTIO_MUTUAL", True, None),
            ("httpbin.foo", "legacy"): ("ISTIO_MUTUAL", True, None),
        },
    ),
    (
        "a root-namespace rule applies to every client; a client-namespace rule wins",
        [
            destination_rule("all-foo", ROOT, FOO, mode="DISABLE"),
            destination_rule("own", "bar", FOO, mode="ISTIO_MUTUAL"),
        ],
        {"httpbin.foo": PERMISSIVE, "httpbin.bar": PERMISSIVE},
        {
            **AUTO_DEFAULT,
            **{(c, "foo"): ("DISABLE", False, None) for c in SIDECARS},
            ("sleep.bar", "foo"): ("ISTIO_MUTUAL", True, None),
            ("httpbin.bar", "foo"): ("ISTIO_MUTUAL", True, None),
        },
    ),
]


def _policies(items: list[dict[str, Any]]) -> list[Policy]:
    return list(parse_policies(items))


def _cluster_kind(sidecar: Sidecar, fqdn: str) -> tuple[str, bool, int | None]:
    upstream = sidecar.outbound[(fqdn, 8000)]
    kind = "none" if upstream.mode is None else "auto" if upstream.auto else upstream.mode.value
    endpoint = f"httpbin.{fqdn.split('.')[1]}"
    return kind, upstream.towards(endpoint).originates_tls, upstream.max_requests_per_connection


def _local(policies: list[Policy]) -> dict[str, Any]:
    """The local planner's expectations, in the shape the kube backend can check."""
    found: dict[str, Any] = {}
    for key, plan in plan_sidecars(TOPOLOGY, policies, ROOT).items():
        found[key] = (
            dict(plan.inbound_modes),
            {
                f"outbound|{port}||{fqdn}": (
                    None if up.auto else up.mode,
                    up.max_requests_per_connection,
                )
                for (fqdn, port), up in plan.outbound.items()
            },
        )
    return found


def _kube(policies: list[Policy]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for workload in WORKLOADS:
        if not workload.has_sidecar:
            continue
        expected = expected_sidecar(
            policies,
            namespace=workload.namespace,
            labels=workload.labels,
            container_ports=workload.container_ports,
            services=SERVICES,
            root_namespace=ROOT,
            workloads=WORKLOADS,
            name=workload.name,
        )
        found[workload.key] = (
            {e.port: e.mode for e in expected.inbound},
            {o.cluster: (o.tls_mode, o.max_requests_per_connection) for o in expected.outbound},
        )
    return found


@pytest.mark.parametrize(("case", "items", "inbound", "outbound"), ROWS, ids=[r[0] for r in ROWS])
def test_both_backends_expect_what_istio_does(
    case: str,
    items: list[Any],
    inbound: dict[str, MtlsMode],
    outbound: dict[tuple[str, str], Any],
) -> None:
    policies = _policies(items)
    local, kube = _local(policies), _kube(policies)
    assert local == kube, case
    assert sorted(local) == sorted(SIDECARS)
    model = plan_mesh(WORKLOADS, SERVICES, policies, root_namespace=ROOT)
    assert {key: model[key].inbound[8080] for key in ("httpbin.foo", "httpbin.bar")} == inbound
    assert {
        (client, ns): _cluster_kind(model[client], f"httpbin.{ns}.svc.cluster.local")
        for client in SIDECARS
        for ns in ("foo", "bar", "legacy")
    } == outbound


def test_divergence_workload_selector_rule_binds_by_the_clients_labels() -> None:
    """Issue: with a ``workloadSelector: {app: sleep}`` rule the local plan rendered
    ISTIO_MUTUAL for sleep (no client labels were passed), kube expected DISABLE. Istio's
    ``SidecarScope.DestinationRule`` (pilot/pkg/model/sidecar.go) takes the rule whose selector
    matches the proxy's labels: DISABLE for sleep, auto mTLS for httpbin next to it."""
    policies = _policies([SLEEP_ONLY_DISABLE])
    plans = plan_sidecars(TOPOLOGY, policies, ROOT)
    assert plans["sleep.foo"].outbound[(FOO, 8000)].mode is TlsMode.DISABLE
    assert plans["httpbin.foo"].outbound[(FOO, 8000)].mode is TlsMode.ISTIO_MUTUAL
    assert plans["httpbin.foo"].outbound[(FOO, 8000)].auto
    kube = expected_sidecar(
        policies,
        namespace="foo",
        labels={"app": "sleep"},
        container_ports=(),
        services=SERVICES,
        root_namespace=ROOT,
    )
    assert kube.outbound[0].tls_mode is TlsMode.DISABLE


def test_divergence_port_entry_replaces_the_whole_connection_pool() -> None:
    """Issue: top-level ``maxRequestsPerConnection: 1`` and a port entry setting only ``tls``:
    local gave 1, kube None. ``GetPortLevelTrafficPolicy`` (pilot/pkg/networking/util/util.go)
    returns ``shadowCopyPortTrafficPolicy(entry)``: connectionPool, loadBalancer,
    outlierDetection and tls all from the entry ("port level policies do not inherit and
    instead to defaults if not provided"), so the limit is unset: None is right."""
    policies = _policies([PORT_TLS_ONLY])
    plans = plan_sidecars(TOPOLOGY, policies, ROOT)
    assert plans["sleep.foo"].outbound[(BAR, 8000)].max_requests_per_connection is None
    assert plans["sleep.foo"].outbound[(BAR, 8000)].mode is TlsMode.ISTIO_MUTUAL
    kube = expected_sidecar(
        policies,
        namespace="foo",
        labels={"app": "sleep"},
        container_ports=(),
        services=SERVICES,
        root_namespace=ROOT,
    )
    assert kube.outbound[1].max_requests_per_connection is None
    rule = next(p for p in policies if p.name == "pool")
    assert isinstance(rule, DestinationRule)
    on_port, elsewhere = port_traffic_policy(rule, 8000), port_traffic_policy(rule, 9000)
    assert on_port is not None and elsewhere is not None
    assert on_port.port_level and on_port.connection_pool is None
    assert elsewhere.connection_pool == {"http": {"maxRequestsPerConnection": 1}}


def test_istio_mutual_sni_sans_and_alpn() -> None:
    """ISTIO_MUTUAL: SNI ``outbound_.<port>_._.<fqdn>`` (BuildDNSSrvSubsetKey), SANs the
    Service's SPIFFE identities (buildUpstreamTLSSettings), ALPN ``mtlsHTTP11ALPN``
    (pilot/pkg/xds/filters/filters.go); a rule's own sni/subjectAltNames win."""
    assert ISTIO_MTLS_HTTP11_ALPN == ("istio-http/1.1", "istio", "http/1.1")
    model = plan_mesh(WORKLOADS, SERVICES, [], root_namespace=ROOT)
    auto = model["sleep.foo"].outbound[(BAR, 8000)]
    assert (auto.sni, auto.subject_alt_names, auto.alpn) == (
        "outbound_.8000_._.httpbin.bar.svc.cluster.local",
        ("spiffe://cluster.local/ns/bar/sa/httpbin",),
        ("istio-http/1.1", "istio", "http/1.1"),
    )
    own = destination_rule(
        "own", "foo", BAR, mode="ISTIO_MUTUAL", sni="x.example", subject_alt_names=["spiffe://x"]
    )
    model = plan_mesh(WORKLOADS, SERVICES, _policies([own]), root_namespace=ROOT)
    explicit = model["sleep.foo"].outbound[(BAR, 8000)]
    assert (explicit.auto, explicit.sni, explicit.subject_alt_names, explicit.alpn) == (
        False,
        "x.example",
        ("spiffe://x",),
        ("istio-http/1.1", "istio", "http/1.1"),
    )
    simple = destination_rule("simple", "foo", BAR, mode="SIMPLE", sni="y.example")
    model = plan_mesh(WORKLOADS, SERVICES, _policies([simple]), root_namespace=ROOT)
    assert model["sleep.foo"].outbound[(BAR, 8000)].alpn == ()  # alpn_override off


# --- against real config dumps ------------------------------------------------------------------

REAL_DUMPS = TESTDATA / "istio-dumps"


@pytest.mark.parametrize(
    ("dump", "namespace", "app", "port", "services"),
    [
        # OpenShift Service Mesh 2.6.7 (ISTIO_VERSION 1.20.8), app hello-openshift
        (
            "ossm__hello-openshift-config-dump.json",
            "vanilla-playground",
            "hello-openshift",
            8080,
            [("grafana", 3000), ("kiali", 20001), ("istiod-basic", 15012)],
        ),
        # Istio 1.22.3 (ServiceLayerNetworking/multiparty-lb), app1 serving port 3333
        (
            "mplb__envoy_config_dump.json",
            "default",
            "app1",
            3333,
            [("jaeger-collector", 14268), ("istiod", 15012), ("istio-ingressgateway", 15021)],
        ),
    ],
)
def test_real_sidecars_implement_what_the_model_expects_without_policies(
    dump: str, namespace: str, app: str, port: int, services: list[tuple[str, int]]
) -> None:
    """Real istiod output under Istio's defaults (no PeerAuthentication, no DestinationRule,
    auto mTLS on): the model expects PERMISSIVE on the app port and auto mTLS clusters
    (``tlsMode-istio`` TLS, else plaintext) towards in-mesh Services, and the dumps have them."""
    path = REAL_DUMPS / dump
    if not path.is_file():
        pytest.skip(f"shared test data absent: {path}")
    state = parse_config_dump(path.read_bytes())
    expected = expected_sidecar(
        [],
        namespace=namespace,
        labels={"app": app},
        container_ports=(port,),
        services=[Service(name, ROOT, p, p, name) for name, p in services],
        root_namespace=ROOT,
    )
    assert [o.auto_transport for o in expected.outbound] == [UpstreamTransport.AUTO] * len(services)
    assert expected.inbound == (ExpectedInbound(port, PERMISSIVE),)
    assert mismatches(state, expected) == ()


def test_auto_mtls_turned_off_in_mesh_config_leaves_plaintext_without_a_rule() -> None:
    """``buildUpstreamTLSSettings``: ``!autoMTLSEnabled`` returns no TLS settings when no rule
    sets TLS; a rule's TLS still applies."""
    rule = _policies([destination_rule("own", "foo", BAR, mode="ISTIO_MUTUAL")])
    model = plan_mesh(WORKLOADS, SERVICES, rule, root_namespace=ROOT, auto_mtls=False)
    to_foo = model["sleep.foo"].outbound[(FOO, 8000)]
    assert (to_foo.mode, to_foo.auto, to_foo.originates_tls) == (None, False, False)
    assert model["sleep.foo"].outbound[(BAR, 8000)].mode is TlsMode.ISTIO_MUTUAL
    kube = expected_sidecar(
        rule,
        namespace="foo",
        labels={"app": "sleep"},
        container_ports=(),
        services=SERVICES,
        root_namespace=ROOT,
        auto_mtls=False,
    )
    # httpbin.foo's two ports (8000, 50051), httpbin.bar's two (the rule's TLS), httpbin.legacy
    assert [(o.tls_mode, o.auto_transport) for o in kube.outbound] == [
        (None, None),
        (None, None),
        (TlsMode.ISTIO_MUTUAL, None),
        (TlsMode.ISTIO_MUTUAL, None),
        (None, None),
    ]
