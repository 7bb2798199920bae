"""The policy kinds (``pytest_meshconform.istio.api``): what is exported, what parses, the
builders and the round trip.

Manifests are transcribed from Istio's documentation (and ``kubectl`` output); the properties
hold for any input. Validation errors are in ``test_policy_validation.py``.
"""

from __future__ import annotations

import string
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from hypothesis import given, settings, strategies as st
from istio_samples import (
    AUTHN_BAR_HTTPBIN_PORT_8080_DISABLE,
    DISABLE,
    STRICT,
)

import pytest_meshconform
import pytest_meshconform.istio.api
from pytest_meshconform.istio import (
    client_tls_mode,
    client_tls_settings,
    destination_rule_for,
    effective_mtls_mode,
)
from pytest_meshconform.istio.api import (
    ClientTls,
    DestinationRule,
    MtlsMode,
    PeerAuthentication,
    PolicyError,
    PortTrafficPolicy,
    Subset,
    TlsMode,
    TrafficPolicy,
    parse_policies,
    parse_policy,
)
from pytest_meshconform.istio.api.destination_rule import destination_rule
from pytest_meshconform.istio.api.peer_authentication import peer_authentication

# --- the package exports -------------------------------------------------------------------


def test_the_builders_are_on_the_package_face_and_the_parsers_are_not() -> None:
    """A suite writer builds manifests (validated); parsing and the model stay in their rooms."""
    assert pytest_meshconform.peer_authentication is peer_authentication
    assert pytest_meshconform.destination_rule is destination_rule
    assert issubclass(pytest_meshconform.PolicyError, ValueError)
    face = set(pytest_meshconform.__all__)
    assert parse_policy.__name__ not in face
    assert parse_policies.__name__ not in face
    assert effective_mtls_mode.__name__ not in face
    assert PeerAuthentication.__name__ not in face
    assert DestinationRule.__name__ not in face


def test_resolution_lives_in_the_istio_model_only() -> None:
    istio: Any = pytest_meshconform.istio
    assert istio.effective_mtls_mode is effective_mtls_mode
    assert istio.destination_rule_for is destination_rule_for
    assert istio.client_tls_settings is client_tls_settings
    assert istio.client_tls_mode is client_tls_mode
    api: Any = pytest_meshconform.istio.api
    for name in ("effective_mtls_mode", "destination_rule_for", "client_tls_settings", "plan_mesh"):
        with pytest.raises(AttributeError, match=f"no attribute '{name}'"):
            getattr(api, name)


# --- parsing what kubectl prints --------------------------------------------------------------

KUBECTL_GET_LIST = """
apiVersion: v1
items:
- apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {"apiVersion":"security.istio.io/v1","kind":"PeerAuthentication"}
    creationTimestamp: "2024-03-01T12:00:00Z"
    generation: 1
    name: default
    namespace: foo
    resourceVersion: "1234"
    uid: 0f9d0f0e-8e2a-4c4b-9d6f-1b2c3d4e5f60
  spec:
    mtls:
      mode: STRICT
- apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata:
    creationTimestamp: "2024-03-01T12:00:05Z"
    name: reviews
    namespace: foo
  spec:
    host: reviews
    trafficPolicy:
      loadBalancer:
        simple: LEAST_REQUEST
      portLevelSettings:
      - port:
          number: 9080
        loadBalancer:
          simple: ROUND_ROBIN
        tls:
          mode: ISTIO_MUTUAL
    subsets:
    - name: v1
      labels:
        version: v1
  status: {}
kind: List
metadata:
  resourceVersion: ""
"""


def test_parses_kubectl_get_list_output() -> None:
    peer, rule = parse_policies(KUBECTL_GET_LIST)
    assert isinstance(peer, PeerAuthentication)
    assert isinstance(rule, DestinationRule)
    assert peer.creation_timestamp == datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert peer.mode is STRICT
    assert rule.host == "reviews"
    assert rule.traffic_policy == TrafficPolicy(
        tls=None,
        port_level_settings=(
            PortTrafficPolicy(
                9080,
                ClientTls(TlsMode.ISTIO_MUTUAL),
                {"loadBalancer": {"simple": "ROUND_ROBIN"}},
            ),
        ),
        other={"loadBalancer": {"simple": "LEAST_REQUEST"}},
    )
    assert rule.subsets == (Subset("v1", {"version": "v1"}),)
    # what is carried through comes back unchanged
    assert rule.to_manifest()["spec"]["trafficPolicy"]["loadBalancer"] == {
        "simple": "LEAST_REQUEST"
    }


def test_parse_accepts_mappings_and_iterables() -> None:
    manifest = peer_authentication("default", "foo", "STRICT")
    assert parse_policy(manifest) == parse_policies([manifest, None])[0]  # type: ignore[list-item]


# --- builders and the round trip ------------------------------------------------------------


def test_peer_authentication_builder_writes_the_documented_manifest() -> None:
    built = peer_authentication(
        "httpbin", "bar", MtlsMode.STRICT, {"app": "httpbin"}, {8080: "DISABLE"}
    )
    assert built == {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "httpbin", "namespace": "bar"},
        "spec": {
            "selector": {"matchLabels": {"app": "httpbin"}},
            "mtls": {"mode": "STRICT"},
            "portLevelMtls": {"8080": {"mode": "DISABLE"}},
        },
    }
    # the same object as the one the task applies
    assert parse_policy(built) == replace_api(
        parse_policy(AUTHN_BAR_HTTPBIN_PORT_8080_DISABLE), "security.istio.io/v1"
    )
    assert peer_authentication("default", None, api_version="security.istio.io/v1beta1") == {
        "apiVersion": "security.istio.io/v1beta1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default"},
        "spec": {},
    }


def replace_api(policy: Any, api_version: str) -> Any:
    return replace(policy, api_version=api_version)


def test_destination_rule_builder_writes_the_documented_manifest() -> None:
    built = destination_rule(
        "httpbin",
        "bar",
        "httpbin.bar.svc.cluster.local",
        TlsMode.DISABLE,
        port_level={1234: "ISTIO_MUTUAL"},
    )
    assert built == {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "httpbin", "namespace": "bar"},
        "spec": {
            "host": "httpbin.bar.svc.cluster.local",
            "trafficPolicy": {
                "tls": {"mode": "DISABLE"},
                "portLevelSettings": [
                    {"port": {"number": 1234}, "tls": {"mode": "ISTIO_MUTUAL"}},
                ],
            },
        },
    }
    assert destination_rule(
        "x", "foo", "x.example.com", "SIMPLE", sni="x.example.com", subject_alt_names=["x"]
    )["spec"]["trafficPolicy"] == {
        "tls": {"mode": "SIMPLE", "sni": "x.example.com", "subjectAltNames": ["x"]}
    }
    assert destination_rule("bare", None, "bare") == {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "bare"},
        "spec": {"host": "bare"},
    }


def test_builders_refuse_what_istio_refuses() -> None:
    with pytest.raises(PolicyError, match="portLevelMtls requires selector"):
        peer_authentication("p", "foo", "STRICT", port_level={8080: "DISABLE"})
    with pytest.raises(PolicyError, match=r"spec\.mtls\.mode: 'strict' is not one of"):
        peer_authentication("p", "foo", "strict")
    with pytest.raises(PolicyError, match="client certificate required for mutual tls"):
        destination_rule("d", "foo", "db", TlsMode.MUTUAL)
    with pytest.raises(PolicyError, match="sni given without a TLS mode"):
        destination_rule("d", "foo", "db", sni="db")
    with pytest.raises(PolicyError, match=r"metadata\.name"):
        destination_rule("D", "foo", "db")


def test_round_trip_through_yaml_text() -> None:
    manifests = [
        peer_authentication("httpbin", "bar", "STRICT", {"app": "httpbin"}, {8080: "DISABLE"}),
        peer_authentication("default", "istio-system", "UNSET"),
        destination_rule(
            "api",
            "istio-system",
            "kubernetes.default.svc.cluster.local",
            "ISTIO_MUTUAL",
            {443: TlsMode.DISABLE, 80: TlsMode.SIMPLE},
            sni="outbound_.443_._.kubernetes.default.svc.cluster.local",
            subject_alt_names=["spiffe://cluster.local/ns/default/sa/kubernetes"],
        ),
        destination_rule(
            "creds",
            "foo",
            "*.example.com",
            "MUTUAL",
            credential_name="client-credential",
            workload_selector={"app": "sleep"},
            export_to=["."],
        ),
    ]
    for manifest in manifests:
        text = yaml.safe_dump_all([manifest, manifest])
        first, second = parse_policies(text)
        assert first == second == parse_policy(manifest)
        assert first.to_manifest() == manifest


def test_round_trip_keeps_everything_parsed() -> None:
    peer, rule = parse_policies(KUBECTL_GET_LIST)
    for policy in (peer, rule):
        again = parse_policy(yaml.safe_dump(policy.to_manifest()))
        assert again == policy
        assert again.to_manifest() == policy.to_manifest()
    assert peer.to_manifest()["metadata"]["creationTimestamp"] == "2024-03-01T12:00:00Z"


def test_models_are_immutable_and_hashable() -> None:
    policy = parse_policy(AUTHN_BAR_HTTPBIN_PORT_8080_DISABLE)
    assert isinstance(policy, PeerAuthentication)
    with pytest.raises(AttributeError):
        policy.mode = DISABLE  # type: ignore[misc]
    assert policy.selector is not None
    with pytest.raises(TypeError):
        policy.selector["app"] = "other"  # type: ignore[index]
    assert len({policy, parse_policy(AUTHN_BAR_HTTPBIN_PORT_8080_DISABLE)}) == 1


# --- property tests ------------------------------------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=12)
FIELD_NAMES = st.sampled_from(
    [
        "apiVersion",
        "kind",
        "metadata",
        "spec",
        "name",
        "namespace",
        "selector",
        "matchLabels",
        "mtls",
        "mode",
        "portLevelMtls",
        "host",
        "trafficPolicy",
        "tls",
        "portLevelSettings",
        "port",
        "number",
        "subsets",
        "exportTo",
        "workloadSelector",
        "loadBalancer",
        "creationTimestamp",
        "8080",
    ]
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(FIELD_NAMES | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
KIND_AND_VERSION = st.sampled_from(
    [
        ("PeerAuthentication", "security.istio.io/v1"),
        ("PeerAuthentication", "security.istio.io/v1beta1"),
        ("DestinationRule", "networking.istio.io/v1"),
        ("DestinationRule", "networking.istio.io/v1alpha3"),
        ("DestinationRule", "security.istio.io/v1"),
        ("Sidecar", "networking.istio.io/v1"),
    ]
)
MODES = st.sampled_from(["UNSET", "DISABLE", "PERMISSIVE", "STRICT", "strict", "", 3, None])
TLS_MODES = st.sampled_from(["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL", "mtls", None])
PORTS = st.sampled_from([0, 1, 80, 8080, 65535, 65536, -1, "8080", "http", True])


METADATA = st.fixed_dictionaries(
    {"name": st.sampled_from(["p", "Bad", "", "a.b"])},
    optional={
        "namespace": st.sampled_from(["foo", "Foo", "istio-system"]),
        "creationTimestamp": st.sampled_from(["2020-02-02T02:02:02Z", "2020-02-02", "x"]),
    },
)
PA_SPECS = st.fixed_dictionaries(
    {},
    optional={
        "selector": st.fixed_dictionaries(
            {"matchLabels": st.dictionaries(st.text(max_size=3), JSON_SCALARS, max_size=2)}
        ),
        "mtls": st.fixed_dictionaries({"mode": MODES}),
        "portLevelMtls": st.dictionaries(
            PORTS, st.fixed_dictionaries({"mode": MODES}) | JSON_SCALARS, max_size=3
        ),
    },
)
TLS_SETTINGS = st.fixed_dictionaries(
    {"mode": TLS_MODES},
    optional={
        **{
            key: st.sampled_from(["/x.pem", "", 1])
            for key in ("clientCertificate", "privateKey", "credentialName", "caCertificates")
        },
        "sni": st.sampled_from(["db", ""]),
        "insecureSkipVerify": st.sampled_from([True, False, "yes"]),
    },
)
TRAFFIC_POLICIES = st.fixed_dictionaries(
    {},
    optional={
        "tls": TLS_SETTINGS,
        "loadBalancer": st.sampled_from([{"simple": "RANDOM"}, "RANDOM"]),
        "portLevelSettings": st.lists(
            st.fixed_dictionaries(
                {"port": st.fixed_dictionaries({"number": PORTS})},
                optional={"tls": st.fixed_dictionaries({"mode": TLS_MODES})},
            ),
            max_size=2,
        ),
    },
)
DR_SPECS = st.fixed_dictionaries(
    {"host": st.sampled_from(["db", "*.local", "a.*.b", "", "10.0.0.1", 7])},
    optional={
        "trafficPolicy": TRAFFIC_POLICIES,
        "exportTo": st.lists(st.sampled_from([".", "*", "~", "foo", "Bar"]), max_size=3),
        "subsets": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["v1", "v1.0", ""])},
                optional={"trafficPolicy": TRAFFIC_POLICIES},
            ),
            max_size=2,
        ),
        "workloadSelector": st.fixed_dictionaries({"matchLabels": st.just({"app": "a"})}),
    },
)


def _document(api_version: str, kind: str) -> Any:
    return lambda metadata, spec: {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": metadata,
        "spec": spec,
    }


# documents close enough to valid that the deep checks run (mostly well-formed metadata)
GOOD_METADATA = st.fixed_dictionaries(
    {"name": st.just("p")}, optional={"namespace": st.just("foo")}
)
NEAR_VALID_DOCUMENTS = st.one_of(
    st.builds(_document("security.istio.io/v1", "PeerAuthentication"), GOOD_METADATA, PA_SPECS),
    st.builds(_document("networking.istio.io/v1", "DestinationRule"), GOOD_METADATA, DR_SPECS),
    st.builds(_document("networking.istio.io/v1", "DestinationRule"), GOOD_METADATA, DR_SPECS),
    st.builds(
        lambda kind_version, metadata, spec: _document(kind_version[1], kind_version[0])(
            metadata, spec
        ),
        KIND_AND_VERSION,
        METADATA,
        PA_SPECS | DR_SPECS,
    ),
)


YAML_TOKENS = st.sampled_from(
    [
        "apiVersion: security.istio.io/v1\n",
        "kind: PeerAuthentication\n",
        "kind: DestinationRule\n",
        "metadata: {name: p}\n",
        "spec:\n",
        "  mtls: {mode: STRICT}\n",
        "  portLevelMtls: {8080: {mode: DISABLE}}\n",
        "  selector: {matchLabels: {app: a}}\n",
        "  host: db\n",
        "---\n",
        "&a [*a]\n",
        "x: !!binary aGk=\n",
        "- 1\n",
        ": :\n",
        "{",
        "'",
        "\t",
        "\x00",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.lists(YAML_TOKENS, max_size=12).map("".join))
def test_any_text_gives_policies_or_policy_error(text: str) -> None:
    try:
        result = parse_policies(text)
    except PolicyError:
        return
    assert all(isinstance(p, PeerAuthentication | DestinationRule) for p in result)


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {"apiVersion": st.sampled_from(["security.istio.io/v1", "networking.istio.io/v1"])},
        optional={
            "kind": st.sampled_from(["PeerAuthentication", "DestinationRule", "List"]),
            "metadata": JSON_VALUES,
            "spec": JSON_VALUES,
            "items": JSON_VALUES,
        },
    )
    | JSON_VALUES
)
def test_any_mapping_gives_a_policy_or_policy_error(document: Any) -> None:
    try:
        parse_policies([document])
    except PolicyError:
        return


@settings(max_examples=250, deadline=None)
@given(NEAR_VALID_DOCUMENTS)
def test_near_valid_documents_give_a_policy_or_policy_error(document: dict[str, Any]) -> None:
    try:
        policy = parse_policy(document)
    except PolicyError as error:
        assert error.path or error.problem
        return
    # whatever parses survives the round trip through YAML unchanged
    assert parse_policy(yaml.safe_dump(policy.to_manifest())) == policy


LABEL_TEXT = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(
    name=LABEL_TEXT,
    namespace=st.none() | LABEL_TEXT,
    mode=st.none() | st.sampled_from(list(MtlsMode)),
    selector=st.none() | st.dictionaries(LABEL_TEXT, LABEL_TEXT, max_size=3),
    ports=st.dictionaries(st.integers(1, 65535), st.sampled_from(list(MtlsMode)), max_size=3),
)
def test_peer_authentication_builder_round_trips(
    name: str,
    namespace: str | None,
    mode: MtlsMode | None,
    selector: dict[str, str] | None,
    ports: dict[int, MtlsMode],
) -> None:
    try:
        manifest = peer_authentication(name, namespace, mode, selector, ports or None)
    except PolicyError as error:
        assert ports and not selector and "portLevelMtls requires selector" in str(error)
        return
    parsed = parse_policy(yaml.safe_dump(manifest))
    assert parsed == PeerAuthentication(name, namespace, mode, selector, ports)
    assert parsed.to_manifest() == manifest


@settings(max_examples=200, deadline=None)
@given(
    name=LABEL_TEXT,
    namespace=st.none() | LABEL_TEXT,
    host=st.sampled_from(
        ["httpbin", "httpbin.foo.svc.cluster.local", "*.local", "*", "a-b.example.com"]
    ),
    mode=st.none() | st.sampled_from([TlsMode.DISABLE, TlsMode.SIMPLE, TlsMode.ISTIO_MUTUAL]),
    ports=st.dictionaries(st.integers(1, 65535), st.sampled_from(list(TlsMode)), max_size=3),
    sni=st.none() | st.sampled_from(["outbound_.8000_._.httpbin.foo.svc.cluster.local"]),
)
def test_destination_rule_builder_round_trips(
    name: str,
    namespace: str | None,
    host: str,
    mode: TlsMode | None,
    ports: dict[int, TlsMode],
    sni: str | None,
) -> None:
    try:
        manifest = destination_rule(name, namespace, host, mode, ports, sni=sni)
    except PolicyError as error:
        assert (sni and mode is None) or TlsMode.MUTUAL in ports.values(), str(error)
        return
    parsed = parse_policy(yaml.safe_dump(manifest))
    assert isinstance(parsed, DestinationRule)
    assert parsed.to_manifest() == manifest
    for port, port_mode in ports.items():
        assert client_tls_mode(parsed, port) is port_mode
    other_port = next(port for port in range(1, 10) if port not in ports)
    assert client_tls_mode(parsed, other_port) is mode
