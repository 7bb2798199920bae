"""Which DestinationRule a client sidecar applies and its TLS for a port
(``istio.destination_rule``), checked against Istio's documentation and unit tests.

Rules and expectations are transcribed from Istio's own tests and documentation, cited next to
each table; none of them was produced by the code under test.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings, strategies as st
from istio_samples import (
    DR_HEAD,
    META,
    drs,
)

from pytest_meshconform.istio import (
    client_tls_mode,
    client_tls_settings,
    destination_rule_for,
)
from pytest_meshconform.istio.api import (
    ClientTls,
    DestinationRule,
    PolicyError,
    PortTrafficPolicy,
    Subset,
    TlsMode,
    TrafficPolicy,
    parse_policy,
)
from pytest_meshconform.istio.api.destination_rule import destination_rule

# --- client side: which DestinationRule, which TLS mode -------------------------------------
# istio/istio pilot/pkg/model/push_context_test.go TestSetDestinationRuleWithExportTo: the
# rules (identified by their subsets) and, per proxy/service namespace, the wanted subsets.


def _export_rule(
    name: str, namespace: str, host: str, export_to: tuple[str, ...], subsets: tuple[str, ...]
) -> DestinationRule:
    # built directly, as the Istio test calls setDestinationRules without validation (its
    # rule3 mixes "*" with namespaces, which the webhook would reject)
    return DestinationRule(
        name=name,
        namespace=namespace,
        host=host,
        export_to=export_to,
        subsets=tuple(Subset(subset) for subset in subsets),
    )


EXPORT_TO_TEST_RULES = [
    _export_rule("rule1", "test1", "httpbin.org", (".", "ns1"), ("subset1", "subset2")),
    _export_rule(
        "rule2", "test2", "httpbin.org", ("test2", "ns1", "test1", "newNS"), ("subset3", "subset4")
    ),
    _export_rule("rule3", "test3", "httpbin.org", ("test1", "test2", "*"), ("subset5", "subset6")),
    _export_rule("rule4-local", "test4", "httpbin.org", ("test4",), ("subset15", "subset16")),
    _export_rule("rule4", "istio-system", "httpbin.org", (), ("subset7", "subset8")),
    _export_rule("rule1", "istio-system", "httpbin.org", (".",), ("subset9", "subset10")),
    _export_rule("rule2", "istio-system", "*.org", (".",), ("subset11", "subset12")),
    _export_rule("rule3", "istio-system", "*.app.org", (".",), ("subset13", "subset14")),
    _export_rule("rule5", "test5", "api.test.com", ("istio-system",), ("subset5-0", "subset5-1")),
    _export_rule("rule6", "test6", "api.test.com", ("istio-system",), ("subset6-0", "subset6-1")),
]
EXPORT_TO_TEST_CASES = [
    # (proxyNs, serviceNs, host, wantSubsets)
    ("test1", "test1", "httpbin.org", ["subset1", "subset2"]),
    ("test1", "test2", "httpbin.org", ["subset1", "subset2"]),
    ("test2", "test1", "httpbin.org", ["subset3", "subset4"]),
    ("newNS", "test2", "httpbin.org", ["subset3", "subset4"]),
    ("test3", "test1", "httpbin.org", ["subset5", "subset6"]),
    ("test5", "test4", "httpbin.org", ["subset7", "subset8"]),
    ("ns1", "test1", "httpbin.org", ["subset1", "subset2"]),
    ("ns1", "random", "httpbin.org", ["subset7", "subset8"]),
    ("random", "random", "httpbin.org", ["subset7", "subset8"]),
    ("test3", "random", "httpbin.org", ["subset5", "subset6"]),
    ("istio-system", "random", "httpbin.org", ["subset9", "subset10"]),
    ("istio-system", "istio-system", "httpbin.org", ["subset9", "subset10"]),
    ("istio-system", "istio-system", "foo.app.org", ["subset13", "subset14"]),
    # dr in the svc ns takes effect on proxy in root ns
    ("istio-system", "test5", "api.test.com", ["subset5-0", "subset5-1"]),
    ("istio-system", "test6", "api.test.com", ["subset6-0", "subset6-1"]),
    # both svc and dr namespace is not equal to proxy ns, the dr will not take effect
    ("istio-system", "test7", "api.test.com", None),
]


@pytest.mark.parametrize(
    ("proxy_ns", "service_ns", "host", "want"),
    [pytest.param(*case, id=f"{case[0]}-{case[1]}-{case[2]}") for case in EXPORT_TO_TEST_CASES],
)
def test_istio_destination_rule_with_export_to_cases(
    proxy_ns: str, service_ns: str, host: str, want: list[str] | None
) -> None:
    rules: list[DestinationRule] = list(EXPORT_TO_TEST_RULES)
    if proxy_ns == "newNS":
        # newNS is no Kubernetes namespace name, but Istio's exportTo check accepts it; the
        # client namespace argument is validated, so the case runs with the name lower-cased
        # in both places.
        rules = [
            r if r.name != "rule2" or r.namespace != "test2" else replace_export(r, "newns")
            for r in rules
        ]
        proxy_ns = "newns"
    found = destination_rule_for(rules, proxy_ns, host, service_namespace=service_ns)
    if want is None:
        assert found is None
    else:
        assert found is not None
        assert [subset.name for subset in found.subsets] == want


def replace_export(rule: DestinationRule, namespace: str) -> DestinationRule:
    return replace(rule, export_to=tuple(namespace if e == "newNS" else e for e in rule.export_to))


# The older istio.io "Authentication Policy" task (istio/istio.io authn-policy/index.md before
# PeerAuthentication) configured the client side with these rules and printed the results.
AUTHN_TASK_RULES = """
apiVersion: "networking.istio.io/v1alpha3"
kind: "DestinationRule"
metadata:
  name: "default"
  namespace: "istio-system"
spec:
  host: "*.local"
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
 name: "httpbin-legacy"
 namespace: "legacy"
spec:
 host: "httpbin.legacy.svc.cluster.local"
 trafficPolicy:
   tls:
     mode: DISABLE
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
 name: "api-server"
 namespace: istio-system
spec:
 host: "kubernetes.default.svc.cluster.local"
 trafficPolicy:
   tls:
     mode: DISABLE
"""


def test_authn_task_rules_server_namespace_beats_global() -> None:
    rules = drs(AUTHN_TASK_RULES)

    def mode(client: str, host: str, port: int) -> TlsMode | None:
        return client_tls_mode(destination_rule_for(rules, client, host), port)

    # "sleep.foo to httpbin.bar: 200" through the "*.local" ISTIO_MUTUAL rule
    assert mode("foo", "httpbin.bar.svc.cluster.local", 8000) is TlsMode.ISTIO_MUTUAL
    # "This destination rule is in the namespace of the server (httpbin.legacy), so it will be
    # preferred over the global destination rule defined in istio-system"
    assert mode("foo", "httpbin.legacy.svc.cluster.local", 8000) is TlsMode.DISABLE
    # the exact host in istio-system beats the "*.local" wildcard there
    assert mode("foo", "kubernetes.default.svc.cluster.local", 443) is TlsMode.DISABLE
    rule = destination_rule_for(rules, "foo", "httpbin.legacy.svc.cluster.local")
    assert rule is not None
    assert (rule.namespace, rule.name) == ("legacy", "httpbin-legacy")


# same task, "Policy precedence" and the port-level rule, applied with `kubectl apply -n ...`
OVERWRITE_EXAMPLE_RULES = """
apiVersion: "networking.istio.io/v1alpha3"
kind: "DestinationRule"
metadata:
  name: "default"
  namespace: "foo"
spec:
  host: "*.foo.svc.cluster.local"
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
---
apiVersion: "networking.istio.io/v1alpha3"
kind: "DestinationRule"
metadata:
  name: "overwrite-example"
spec:
  host: httpbin.foo.svc.cluster.local
  trafficPolicy:
    tls:
      mode: DISABLE
"""
PORT_LEVEL_RULE = """
apiVersion: "networking.istio.io/v1alpha3"
kind: "DestinationRule"
metadata:
  name: "httpbin"
spec:
  host: httpbin.bar.svc.cluster.local
  trafficPolicy:
    tls:
      mode: DISABLE
    portLevelSettings:
    - port:
        number: 1234
      tls:
        mode: ISTIO_MUTUAL
"""


def test_authn_task_exact_host_beats_namespace_wildcard() -> None:
    rules = drs(OVERWRITE_EXAMPLE_RULES, namespace="foo")
    for client in ("foo", "bar"):
        rule = destination_rule_for(rules, client, "httpbin.foo.svc.cluster.local")
        assert rule is not None and rule.name == "overwrite-example"
        assert client_tls_mode(rule, 8000) is TlsMode.DISABLE
    other = destination_rule_for(rules, "bar", "sleep.foo.svc.cluster.local")
    assert client_tls_mode(other, 80) is TlsMode.ISTIO_MUTUAL


def test_port_level_settings_override_the_rule_tls() -> None:
    # "The new policy will apply only to the httpbin service on port 1234. As a result, mutual
    # TLS is disabled (again) on port 8000"
    (rule,) = drs(PORT_LEVEL_RULE, namespace="bar")
    assert client_tls_mode(rule, 8000) is TlsMode.DISABLE
    assert client_tls_mode(rule, 1234) is TlsMode.ISTIO_MUTUAL


def test_port_level_entry_without_tls_falls_back_to_auto_mtls() -> None:
    # GetPortLevelTrafficPolicy (formerly in MergeTrafficPolicy): "per the docs, port level
    # policies do not inherit and instead to defaults if not provided"
    (rule,) = drs(
        DR_HEAD
        + META
        + """spec:
  host: db
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 5432}
      connectionPool: {tcp: {maxConnections: 10}}
"""
    )
    assert client_tls_mode(rule, 5432) is None
    assert client_tls_mode(rule, 80) is TlsMode.ISTIO_MUTUAL
    assert client_tls_mode(None, 80) is None
    settings = client_tls_settings(rule, 80)
    assert settings == ClientTls(TlsMode.ISTIO_MUTUAL)


def test_traffic_policy_without_tls_leaves_tls_to_auto_mtls() -> None:
    rule = parse_policy(
        DR_HEAD + META + "spec: {host: db, trafficPolicy: {loadBalancer: {simple: RANDOM}}}\n"
    )
    assert isinstance(rule, DestinationRule)
    assert client_tls_mode(rule, 80) is None
    (tls_empty,) = drs(DR_HEAD + META + "spec: {host: db, trafficPolicy: {tls: {}}}\n")
    assert client_tls_mode(tls_empty, 80) is TlsMode.DISABLE  # proto default, explicit


def test_client_namespace_rule_comes_first() -> None:
    rules = [
        parse_policy(
            destination_rule("mine", "sleep-ns", "httpbin.foo.svc.cluster.local", "DISABLE")
        ),
        parse_policy(destination_rule("server", "foo", "httpbin.foo.svc.cluster.local", "SIMPLE")),
        parse_policy(destination_rule("mesh", "istio-system", "*", "ISTIO_MUTUAL")),
    ]
    found = destination_rule_for(rules, "sleep-ns", "httpbin.foo.svc.cluster.local")
    assert found is not None and found.name == "mine"
    found = destination_rule_for(rules, "other", "httpbin.foo.svc.cluster.local")
    assert found is not None and found.name == "server"
    found = destination_rule_for(rules, "other", "reviews.bar.svc.cluster.local")
    assert found is not None and found.name == "mesh"


def test_short_host_is_resolved_in_the_rule_namespace() -> None:
    # destination_rule.proto: "A rule in the default namespace containing a host reviews will be
    # interpreted as reviews.default.svc.cluster.local"
    in_default = parse_policy(destination_rule("reviews", "default", "reviews", "DISABLE"))
    assert destination_rule_for([in_default], "prod", "reviews.prod.svc.cluster.local") is None
    found = destination_rule_for([in_default], "prod", "reviews.default.svc.cluster.local")
    assert found is not None and found.host == "reviews.default.svc.cluster.local"


def test_workload_selector_rule_applies_to_matching_clients_only() -> None:
    host = "httpbin.foo.svc.cluster.local"
    rules = [
        parse_policy(
            destination_rule(
                "sleep-only", "foo", host, "DISABLE", workload_selector={"app": "sleep"}
            )
        ),
        parse_policy(destination_rule("all", "foo", host, "SIMPLE")),
    ]
    chosen = destination_rule_for(rules, "foo", host, client_labels={"app": "sleep", "v": "1"})
    assert chosen is not None and chosen.name == "sleep-only"
    chosen = destination_rule_for(rules, "foo", host, client_labels={"app": "curl"})
    assert chosen is not None and chosen.name == "all"
    assert destination_rule_for(rules, "foo", host) == chosen
    # a selector rule is private to its namespace: a client elsewhere gets the exported one
    chosen = destination_rule_for(rules, "baz", host, client_labels={"app": "sleep"})
    assert chosen is not None and chosen.name == "all"


def test_non_matching_selector_rule_hides_the_root_rule() -> None:
    # PushContext.destinationRule stops at the client's namespace as soon as a host matches;
    # SidecarScope.DestinationRule then finds no catch-all rule there.
    rules = [
        parse_policy(
            destination_rule(
                "sel",
                "foo",
                "httpbin.bar.svc.cluster.local",
                "DISABLE",
                workload_selector={"a": "b"},
            )
        ),
        parse_policy(destination_rule("mesh", "istio-system", "*.local", "ISTIO_MUTUAL")),
    ]
    assert destination_rule_for(rules, "foo", "httpbin.bar.svc.cluster.local") is None
    assert destination_rule_for(rules, "qux", "httpbin.bar.svc.cluster.local") is not None


def test_rules_for_one_host_in_one_namespace_merge_oldest_first() -> None:
    # mergeDestinationRule: the oldest rule's metadata, subsets added, and the first top-level
    # traffic policy found (here the newer rule's, as the older one has none)
    older = parse_policy(
        DR_HEAD
        + "metadata: {name: subsets, namespace: foo, creationTimestamp: '2024-01-01T00:00:00Z'}\n"
        + "spec: {host: db.foo.svc.cluster.local, subsets: [{name: v1}]}\n"
    )
    newer = parse_policy(
        DR_HEAD
        + "metadata: {name: tls, namespace: foo, creationTimestamp: '2024-01-02T00:00:00Z'}\n"
        + "spec: {host: db.foo.svc.cluster.local, trafficPolicy: {tls: {mode: DISABLE}},"
        + " subsets: [{name: v1}, {name: v2}]}\n"
    )
    for order in ([older, newer], [newer, older]):
        merged = destination_rule_for(order, "foo", "db.foo.svc.cluster.local")
        assert merged is not None
        assert merged.name == "subsets"
        assert [s.name for s in merged.subsets] == ["v1", "v2"]
        assert client_tls_mode(merged, 5432) is TlsMode.DISABLE


def test_not_exported_most_specific_rule_blocks_wildcard_of_same_namespace() -> None:
    # getExportedDestinationRuleFromNamespace filters exportTo after picking the most specific
    # host, so an exact rule exported only to another namespace hides the public wildcard of
    # its own namespace from this client.
    rules = [
        parse_policy(
            destination_rule(
                "exact", "bar", "httpbin.bar.svc.cluster.local", "DISABLE", export_to=["baz"]
            )
        ),
        parse_policy(destination_rule("wild", "bar", "*.bar.svc.cluster.local", "SIMPLE")),
        parse_policy(destination_rule("mesh", "istio-system", "*.local", "ISTIO_MUTUAL")),
    ]
    found = destination_rule_for(rules, "foo", "httpbin.bar.svc.cluster.local")
    assert found is not None and found.name == "mesh"
    found = destination_rule_for(rules, "foo", "sleep.bar.svc.cluster.local")
    assert found is not None and found.name == "wild"
    found = destination_rule_for(rules, "baz", "httpbin.bar.svc.cluster.local")
    assert found is not None and found.name == "exact"


def test_destination_rule_for_rejects_bad_arguments() -> None:
    with pytest.raises(PolicyError, match="without wildcards"):
        destination_rule_for([], "foo", "*.bar.svc.cluster.local")
    with pytest.raises(PolicyError, match="client_namespace"):
        destination_rule_for([], "Foo", "a.b")
    with pytest.raises(PolicyError, match="given twice"):
        rule = parse_policy(destination_rule("a", "foo", "a"))
        destination_rule_for([rule, rule], "foo", "a.foo.svc.cluster.local")
    with pytest.raises(PolicyError, match="port must be in range"):
        client_tls_mode(None, 70000)


# --- property tests ------------------------------------------------------------------------

NOW = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
# distinct creation times, so that "the oldest" is always one policy
SECONDS = st.lists(st.integers(0, 10_000), max_size=8, unique=True)
NAMESPACES = ["foo", "bar", "istio-system"]
NAMESPACE = st.sampled_from(NAMESPACES)


RULE_SELECTOR = st.sampled_from([None, {"app": "sleep"}])
EXPORT_TO = st.sampled_from([(), (".",), ("*",), ("foo", "bar")])
RULE_PORT_LEVEL = st.sampled_from([(), (PortTrafficPolicy(8000, ClientTls(TlsMode.DISABLE)),)])
RULE_TLS = st.sampled_from([None, ClientTls(TlsMode.ISTIO_MUTUAL), ClientTls(TlsMode.SIMPLE)])
RULE_HOST = st.sampled_from(["httpbin", "httpbin.bar.svc.cluster.local", "*.local", "*"])


@st.composite
def rule_sets(draw: st.DrawFn) -> list[DestinationRule]:
    seconds = draw(SECONDS)
    parts = draw(
        st.lists(
            st.tuples(NAMESPACE, RULE_HOST, RULE_SELECTOR, EXPORT_TO, RULE_TLS, RULE_PORT_LEVEL),
            min_size=len(seconds),
            max_size=len(seconds),
        )
    )
    rules = []
    for index, (second, part) in enumerate(zip(seconds, parts, strict=True)):
        namespace, host, selector, export_to, tls, port_level = part
        rules.append(
            DestinationRule(
                name=f"r{index}",
                namespace=namespace,
                host=host,
                traffic_policy=TrafficPolicy(tls, port_level) if tls or port_level else None,
                subsets=(Subset(f"s{index}"),),
                export_to=() if selector else export_to,
                workload_selector=selector,
                creation_timestamp=NOW + timedelta(seconds=second),
            )
        )
    return rules


@settings(max_examples=200, deadline=None)
@given(
    rule_sets().flatmap(lambda rs: st.tuples(st.just(rs), st.permutations(rs))),
    NAMESPACE,
    st.sampled_from([{}, {"app": "sleep"}]),
)
def test_destination_rule_lookup_is_order_free(
    rules_and_shuffled: tuple[list[DestinationRule], list[DestinationRule]],
    client: str,
    labels: dict[str, str],
) -> None:
    rules, shuffled = rules_and_shuffled
    host = "httpbin.bar.svc.cluster.local"
    found = destination_rule_for(rules, client, host, client_labels=labels)
    assert destination_rule_for(shuffled, client, host, client_labels=labels) == found
    mode = client_tls_mode(found, 8000)
    assert mode is None or isinstance(mode, TlsMode)
