"""The secrets of Envoy's ``/config_dump`` (``evidence/config_dump.py`` ``read_secrets``, by
Istio's names through ``istio/sidecar_dump.py`` ``parse_envoy_secrets``), on dumps made for a PKI
of our own (``cert_fixtures``): both spellings, every input form, malformed and arbitrary
input. The real dumps from istio/istio are read in ``test_certs.py``, with what their
certificates prove.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
from cert_fixtures import (
    DUMPS,
    JSON_VALUES,
    KEY_WORDS,
    LEAF_NOT_AFTER,
    LEAF_NOT_BEFORE,
    LEAF_SERIAL_TEXT,
    MID_VALIDITY,
    ROOT_SERIAL_TEXT,
    SECRETS_DUMP_TYPE,
    SHAPED_JSON,
    Pki,
    b64_of,
    make_pki,
    pem_of,
    snake_dump,
    utc,
)
from hypothesis import given, settings, strategies as st

from pytest_meshconform.evidence.certs import CertError, SpiffeId, serial_hex
from pytest_meshconform.evidence.config_dump import EnvoySecrets
from pytest_meshconform.istio.envoy import ROOT_SECRET
from pytest_meshconform.istio.sidecar_dump import parse_envoy_secrets


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


# --- dumps of our own PKI -------------------------------------------------------------------


@pytest.mark.parametrize("style", sorted(DUMPS))
def test_generated_dump_parses(pki: Pki, style: str) -> None:
    dump = DUMPS[style](pem_of(pki.leaf, pki.root.cert), pem_of(pki.root.cert))
    secrets = parse_envoy_secrets(dump)

    workload = secrets.workload
    assert workload is not None
    assert workload.spiffe_id == SpiffeId("cluster.local", "/ns/foo/sa/sleep")
    assert (workload.spiffe_id.namespace, workload.spiffe_id.service_account) == ("foo", "sleep")
    assert workload.serial == LEAF_SERIAL_TEXT
    assert (workload.not_before, workload.not_after) == (LEAF_NOT_BEFORE, LEAF_NOT_AFTER)
    assert workload.lifetime == dt.timedelta(hours=24, minutes=2)
    assert workload.chain == (pki.leaf, pki.root.cert)
    assert secrets.roots == (pki.root.cert,)
    assert [serial_hex(c) for c in secrets.roots] == [ROOT_SERIAL_TEXT]

    assert [(s.name, s.state, s.version_info) for s in secrets.secrets] == [
        ("default", "active", "2024-06-01T12:00:00Z/7"),
        ("ROOTCA", "active", "2024-06-01T12:00:00Z/7"),
        ("file-root:/etc/certs/root-cert.pem", "warming", "uninitialized"),
    ]
    default, rootca, _ = secrets.secrets
    # Nanoseconds cut to microseconds; +02:00 converted to UTC.
    assert default.last_updated == utc(2024, 6, 1, 12, 0, 1) + dt.timedelta(microseconds=123456)
    assert rootca.last_updated == utc(2024, 6, 1, 10, 0, 1)

    workload.verify(secrets.roots, MID_VALIDITY)


def test_input_forms_agree(pki: Pki) -> None:
    dump = snake_dump(pem_of(pki.leaf), pem_of(pki.root.cert))
    text = json.dumps(dump)
    secrets_section = dump["configs"][1]
    parsed = [
        parse_envoy_secrets(dump),
        parse_envoy_secrets(text),
        parse_envoy_secrets(text.encode()),
        parse_envoy_secrets(secrets_section),
        parse_envoy_secrets({k: v for k, v in secrets_section.items() if k != "@type"}),
    ]
    assert all(p == parsed[0] for p in parsed)


def test_inline_string_static_and_unpadded_urlsafe_base64(pki: Pki) -> None:
    chain = pem_of(pki.leaf, pki.root.cert)
    urlsafe_unpadded = base64.urlsafe_b64encode(pem_of(pki.root.cert).encode()).decode().rstrip("=")
    dump = {
        "static_secrets": [
            {
                "name": "static-root",
                "last_updated": "2024-06-01T12:00:00Z",
                "secret": {
                    "validation_context": {"trusted_ca": {"inline_bytes": urlsafe_unpadded}}
                },
            }
        ],
        "dynamic_active_secrets": [
            {
                "name": "default",
                "secret": {"tls_certificate": {"certificate_chain": {"inline_string": chain}}},
            },
            {
                "name": "ROOTCA",
                "secret": {"validation_context": {"trusted_ca": {"filename": "/etc/root.pem"}}},
            },
        ],
    }
    secrets = parse_envoy_secrets(dump)
    assert secrets.workload is not None and secrets.workload.serial == LEAF_SERIAL_TEXT
    static = secrets.secret("static-root", "static")
    assert static is not None and static.certificates == (pki.root.cert,)
    rootca = secrets.secret("ROOTCA")
    assert rootca is not None and rootca.file == "/etc/root.pem"
    assert secrets.roots == ()


def test_no_default_secret_means_no_workload(pki: Pki) -> None:
    assert parse_envoy_secrets({}) == EnvoySecrets((), None, ROOT_SECRET)
    assert parse_envoy_secrets({"@type": SECRETS_DUMP_TYPE}).workload is None
    warming_only = {"dynamic_warming_secrets": [{"name": "default", "secret": {"name": "default"}}]}
    parsed = parse_envoy_secrets(warming_only)
    assert parsed.workload is None
    assert [(s.name, s.state, s.kind) for s in parsed.secrets] == [("default", "warming", None)]


# --- malformed dumps ------------------------------------------------------------------------


def _valid_section(pki: Pki) -> dict[str, Any]:
    section: dict[str, Any] = snake_dump(pem_of(pki.leaf), pem_of(pki.root.cert))["configs"][1]
    return section


def _break(pki: Pki, mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    section = copy.deepcopy(_valid_section(pki))
    mutate(section)
    return section


def _default_secret(section: dict[str, Any]) -> dict[str, Any]:
    secret: dict[str, Any] = section["dynamic_active_secrets"][0]["secret"]
    return secret


BROKEN_DUMPS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "bad base64",
        lambda s: _default_secret(s)["tls_certificate"]["certificate_chain"].update(
            inline_bytes="***"
        ),
        r"dynamic_active_secrets\[0\]\.secret\.tls_certificate\.certificate_chain\.inline_bytes: "
        "not valid base64",
    ),
    (
        "not PEM",
        lambda s: _default_secret(s)["tls_certificate"]["certificate_chain"].update(
            inline_bytes=b64_of("hello")
        ),
        r"certificate_chain\.inline_bytes: no PEM CERTIFICATE block",
    ),
    (
        "snake and camel",
        lambda s: _default_secret(s).update(tlsCertificate={}),
        r"dynamic_active_secrets\[0\]\.secret: both 'tls_certificate' and 'tlsCertificate'",
    ),
    (
        "two kinds",
        lambda s: _default_secret(s).update(generic_secret={}),
        "a secret is one of its kinds, got tls_certificate, generic_secret",
    ),
    (
        "wrong secret type",
        lambda s: _default_secret(s).update({"@type": "type.googleapis.com/x.Y"}),
        r"secret\.@type: 'type.googleapis.com/x.Y' is not",
    ),
    (
        "default holds roots",
        lambda s: s["dynamic_active_secrets"][0].update(
            secret=s["dynamic_active_secrets"][1]["secret"]
        ),
        "secret 'default' is a validation_context, expected a tls_certificate",
    ),
    (
        "two defaults",
        lambda s: s["dynamic_active_secrets"].append(s["dynamic_active_secrets"][0]),
        "2 active secrets are named 'default'",
    ),
    (
        "bad timestamp",
        lambda s: s["dynamic_active_secrets"][0].update(last_updated="2024-13-01T00:00:00Z"),
        r"dynamic_active_secrets\[0\]\.last_updated: impossible date",
    ),
    (
        "timestamp without zone",
        lambda s: s["dynamic_active_secrets"][0].update(last_updated="2024-06-01T12:00:00"),
        "not an RFC 3339 timestamp",
    ),
    (
        "name missing",
        lambda s: s["dynamic_active_secrets"][1].pop("name"),
        r"dynamic_active_secrets\[1\]\.name: expected a string, got NoneType",
    ),
    (
        "list expected",
        lambda s: s.update(dynamic_warming_secrets={"name": "x"}),
        "dynamic_warming_secrets: expected a list, got dict",
    ),
    (
        "secret file",
        lambda s: _default_secret(s)["tls_certificate"].update(
            certificate_chain={"filename": "/etc/certs/cert-chain.pem"}
        ),
        "secret 'default' names file '/etc/certs/cert-chain.pem' on the proxy",
    ),
    (
        "two data sources",
        lambda s: _default_secret(s)["tls_certificate"]["certificate_chain"].update(filename="/x"),
        "more than one data source: inline_bytes, filename",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "message"), [(m, e) for _, m, e in BROKEN_DUMPS], ids=[i for i, _, _ in BROKEN_DUMPS]
)
def test_malformed_dumps_are_refused(
    pki: Pki, mutate: Callable[[dict[str, Any]], None], message: str
) -> None:
    with pytest.raises(CertError, match=message):
        parse_envoy_secrets(_break(pki, mutate))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe{", "secrets dump is not valid JSON"),
        ("[1, 2]", "secrets dump must be a JSON object, got list"),
        (42, "secrets dump must be bytes, str or a dict, got int"),
        ({"hello": 1}, r"not an Envoy secrets dump: .* keys \['hello'\]"),
        ({"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump"}, "is not"),
        ({"configs": [{"@type": "x"}]}, "expected one .*SecretsConfigDump, found 0 among"),
        (
            {"configs": [{"@type": SECRETS_DUMP_TYPE}, {"@type": SECRETS_DUMP_TYPE}]},
            "found 2",
        ),
        ({"configs": ["x"]}, r'configs\[0\]: expected an object, got "x"'),
    ],
)
def test_not_a_secrets_dump(data: Any, message: str) -> None:
    with pytest.raises(CertError, match=message):
        parse_envoy_secrets(data)


# --- property tests -------------------------------------------------------------------------


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _replace(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    clone = copy.copy(node)
    clone[path[0]] = _replace(node[path[0]], path[1:], value)
    return clone


def _secrets_or_cert_error(data: Any) -> None:
    try:
        result = parse_envoy_secrets(data)
    except CertError:
        return
    assert isinstance(result, EnvoySecrets)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        JSON_VALUES,
        SHAPED_JSON,
        st.dictionaries(st.sampled_from(KEY_WORDS), SHAPED_JSON),
    )
)
def test_arbitrary_json_gives_secrets_or_cert_error(document: Any) -> None:
    _secrets_or_cert_error(document)
    _secrets_or_cert_error(json.dumps(document))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_secrets_or_cert_error(data: bytes) -> None:
    _secrets_or_cert_error(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_damaged_real_dump_gives_secrets_or_cert_error(data: st.DataObject) -> None:
    """One subtree of a valid dump replaced by arbitrary JSON, to reach the deep branches."""
    pki = make_pki()
    template = snake_dump(pem_of(pki.leaf, pki.root.cert), pem_of(pki.root.cert))
    path = data.draw(st.sampled_from(_paths(template)))
    damaged = _replace(template, path, data.draw(st.one_of(JSON_VALUES, SHAPED_JSON)))
    _secrets_or_cert_error(damaged)
