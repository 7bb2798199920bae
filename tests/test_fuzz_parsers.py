"""Fuzz tests: for any input, every parser returns a result or raises its own typed error
(each a ValueError subclass); nothing else may escape (issue 14).

Inputs are drawn three ways, so that the fuzzer reaches deep into each format instead of
stopping at the first byte: documents built from the format's own vocabulary (field names,
PEM lines, XFCC keys, TLS and HTTP framing); real artifacts (the shared test data, when
present, and generated ones) with a few parts replaced by hostile values; and the serialised
text or bytes of either, with bytes flipped, cut, inserted or repeated. The hostile values
include everything issue 14 found (timestamps at the datetime edges, lone surrogates, PEM
BEGIN lines without END, header folding, 1-byte TLS records, YAML aliases and merge keys).

The budget comes from the hypothesis profile (tests/conftest.py): ``ci`` by default, or
``HYPOTHESIS_PROFILE=fuzz`` for 100,000 inputs per parser.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import hostile_inputs as hi
import yaml
from conftest import TESTDATA
from hypothesis import given, strategies as st

from pytest_meshconform.backends.kube.envoystate import EnvoyStateError, parse_config_dump
from pytest_meshconform.backends.local.topology_file import (
    BUILTIN_TOPOLOGY,
    TopologyError,
    load_topology,
)
from pytest_meshconform.evidence.certs import (
    CertError,
    WorkloadCert,
    load_pem_chain,
    parse_envoy_certs,
    parse_spiffe_id,
)
from pytest_meshconform.evidence.pcap import CaptureError
from pytest_meshconform.evidence.wire import analyze_pcap
from pytest_meshconform.evidence.xfcc import XfccError, parse_xfcc
from pytest_meshconform.istio.api import PolicyError, parse_policies
from pytest_meshconform.istio.api.authorization_policy import authorization_policy
from pytest_meshconform.istio.api.destination_rule import destination_rule
from pytest_meshconform.istio.api.peer_authentication import peer_authentication
from pytest_meshconform.istio.sidecar_dump import parse_envoy_secrets
from pytest_meshconform.istio.ztunnel_dump import ZtunnelDumpError, parse_ztunnel_dump
from pytest_meshconform.report import ReportError, load_report

# --------------------------------------------------------------------------- shared pieces

HOSTILE_STRINGS = (
    *hi.EDGE_TIMESTAMPS,
    "2026-01-01T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-01-01T00:00:00.1234567891+23:59",
    "-----BEGIN CERTIFICATE-----\n",
    "-----END CERTIFICATE-----\n",
    "\udcff",
    "\x00",
    "spiffe://cluster.local/ns/foo/sa/sleep",
    "spiffe://",
    "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig",
    "default",
    "ROOTCA",
    "f" * 300,
    "0" * 5000,
    "%",
    "%zz",
    '"',
    "\\",
    "",
)

_FIELD_NAMES = (
    "configs",
    "@type",
    "static_secrets",
    "dynamic_active_secrets",
    "dynamicActiveSecrets",
    "dynamic_warming_secrets",
    "name",
    "version_info",
    "last_updated",
    "lastUpdated",
    "secret",
    "tls_certificate",
    "certificate_chain",
    "validation_context",
    "trusted_ca",
    "inline_bytes",
    "inline_string",
    "inlineString",
    "filename",
    "environment_variable",
    "custom_validator_config",
    "typed_config",
    "trust_domains",
    "trust_bundle",
    "certificates",
    "ca_cert",
    "cert_chain",
    "serial_number",
    "subject_alt_names",
    "uri",
    "dns",
    "ip_address",
    "valid_from",
    "expiration_time",
    "apiVersion",
    "kind",
    "metadata",
    "namespace",
    "creationTimestamp",
    "labels",
    "annotations",
    "spec",
    "selector",
    "matchLabels",
    "mtls",
    "mode",
    "portLevelMtls",
    "host",
    "trafficPolicy",
    "portLevelSettings",
    "port",
    "number",
    "tls",
    "subsets",
    "exportTo",
    "workloadSelector",
    "items",
    # AuthorizationPolicy
    "action",
    "rules",
    "from",
    "source",
    "principals",
    "ipBlocks",
    "to",
    "operation",
    "ports",
    "methods",
    "when",
    "key",
    "values",
    "notValues",
)


@functools.cache
def _pem_strings() -> tuple[str, ...]:
    pem = hi.certificate_pem()
    return (pem, base64.b64encode(pem.encode()).decode(), pem.replace("\n", "\r\n"))


_ATOMS: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=24),
    st.sampled_from(HOSTILE_STRINGS),
    st.deferred(lambda: st.sampled_from(_pem_strings())),
)
# JSON-like values whose keys are mostly the formats' own field names.
JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    _ATOMS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(_FIELD_NAMES) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=16,
)


def _containers(node: Any) -> list[Any]:
    """Every list and dict inside ``node``, ``node`` first."""
    found: list[Any] = []
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            found.append(current)
            stack.extend(current.values())
        elif isinstance(current, list):
            found.append(current)
            stack.extend(current)
    return found


def _replacement(data: st.DataObject, old: Any) -> Any:
    """A new value for ``old``: often one of its own kind (a string for a string, edited or
    hostile), so that the parser gets past the type check and into the value."""
    if isinstance(old, str) and data.draw(st.booleans(), label="same kind"):
        if data.draw(st.booleans(), label="hostile"):
            return data.draw(st.sampled_from(HOSTILE_STRINGS), label="hostile string")
        position = data.draw(st.integers(0, len(old)), label="at")
        inserted = data.draw(st.sampled_from(("\udcff", "\x00", "-", ":", "%", "Z", "9")))
        return old[:position] + inserted + old[position + 1 :]
    if isinstance(old, int) and not isinstance(old, bool) and data.draw(st.booleans()):
        return data.draw(st.integers(min_value=-(2**64), max_value=2**64), label="integer")
    return data.draw(JSON_VALUES, label="value")


def mutate_document(data: st.DataObject, document: Any) -> Any:
    """A copy of ``document`` (JSON data) with 1-4 of its parts replaced, removed or
    repeated."""
    document = json.loads(json.dumps(document))  # a copy, several times faster than deepcopy
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        containers = _containers(document)
        if not containers:
            return data.draw(JSON_VALUES, label="replacement root")
        target = data.draw(st.sampled_from(containers), label="container")
        action = data.draw(st.sampled_from(("replace", "remove", "repeat", "add")))
        if isinstance(target, dict):
            if action == "add" or not target:
                key = data.draw(st.sampled_from(_FIELD_NAMES), label="key")
                target[key] = data.draw(JSON_VALUES, label="value")
                continue
            key = data.draw(st.sampled_from(sorted(target, key=str)), label="key")
            if action == "remove":
                del target[key]
            elif action == "repeat":
                target[key] = [target[key], target[key]]
            else:
                target[key] = _replacement(data, target[key])
        else:
            if action == "add" or not target:
                target.append(data.draw(JSON_VALUES, label="item"))
                continue
            index = data.draw(st.integers(0, len(target) - 1), label="index")
            if action == "remove":
                del target[index]
            elif action == "repeat":
                target.insert(index, target[index])
            else:
                target[index] = _replacement(data, target[index])
    return document


def mutate_bytes(data: st.DataObject, blob: bytes) -> bytes:
    """``blob`` with 0-4 byte-level edits: flips, cuts, inserted or repeated runs."""
    for _ in range(data.draw(st.integers(0, 4), label="byte edits")):
        if not blob:
            return data.draw(st.binary(max_size=64), label="bytes")
        position = data.draw(st.integers(0, len(blob) - 1), label="position")
        action = data.draw(st.sampled_from(("flip", "cut", "insert", "repeat", "word")))
        if action == "flip":
            value = data.draw(st.integers(0, 255), label="byte")
            blob = blob[:position] + bytes([value]) + blob[position + 1 :]
        elif action == "cut":
            blob = blob[:position]
        elif action == "insert":
            blob = blob[:position] + data.draw(st.binary(max_size=16)) + blob[position:]
        elif action == "repeat":
            run = blob[position : position + data.draw(st.integers(1, 64))]
            blob = blob[:position] + run * data.draw(st.integers(2, 8)) + blob[position:]
        else:  # a length or offset field at its extremes
            word = data.draw(st.sampled_from((b"\x00\x00", b"\xff\xff", b"\x7f\xff\xff\xff")))
            blob = blob[:position] + word + blob[position + len(word) :]
    return blob


def serialised(data: st.DataObject, document: Any) -> bytes | str | Any:
    """``document`` as JSON text, JSON bytes (possibly damaged) or the object itself."""
    form = data.draw(st.sampled_from(("str", "bytes", "object")), label="form")
    if form == "object":
        return document
    text = json.dumps(document)  # ensure_ascii: a lone surrogate becomes "\\udcff"
    if form == "str":
        return text
    return mutate_bytes(data, text.encode())


def _shared_json(*names: str) -> list[Any]:
    """Real documents from the shared test data that are present (none is fine: the
    generated seeds still run)."""
    documents = []
    for name in names:
        path = TESTDATA / name
        if path.is_file():
            documents.append(json.loads(path.read_text()))
    return documents


# --------------------------------------------------------------------------- certificates


@functools.cache
def _secret_seeds() -> tuple[Any, ...]:
    real = _shared_json(
        "secrets/istio_config_dump.json",
        "secrets/spire_config_dump.json",
        "secrets/proxyconfig_full_config_dump.json",
    )
    generated = [
        json.loads(hi.secrets_big_bundle(1200)),
        json.loads(hi.secrets_begin_without_end(200)),
    ]
    return (*real, *generated)


@given(st.data())
def test_parse_envoy_secrets_raises_only_cert_errors(data: st.DataObject) -> None:
    source = data.draw(st.sampled_from(("seed", "built")), label="source")
    if source == "seed":
        document = mutate_document(data, data.draw(st.sampled_from(_secret_seeds())))
    else:
        document = data.draw(JSON_VALUES, label="document")
    with contextlib.suppress(CertError):
        parse_envoy_secrets(serialised(data, document))


@given(st.data())
def test_parse_envoy_certs_raises_only_cert_errors(data: st.DataObject) -> None:
    seed = json.loads(hi.certs_many(1200))
    document = mutate_document(data, seed)
    with contextlib.suppress(CertError):
        parse_envoy_certs(serialised(data, document))


_PEM_LINES = (
    "-----BEGIN CERTIFICATE-----",
    "-----END CERTIFICATE-----",
    "-----BEGIN PRIVATE KEY-----",
    "-----END PRIVATE KEY-----",
    "-----BEGIN -----",
    "-----BEGIN CERTIFICATE",
    "-----END ",
    "MIIBszCCAVmgAwIBAgIF",
    "====",
    "explanatory text",
)


@given(st.data())
def test_load_pem_chain_raises_only_cert_errors(data: st.DataObject) -> None:
    pieces = data.draw(
        st.lists(
            st.one_of(
                st.sampled_from(_PEM_LINES), st.sampled_from(_pem_strings()), st.text(max_size=12)
            ),
            max_size=8,
        )
    )
    text = "\n".join(pieces)
    pem: bytes | str = text
    if data.draw(st.booleans(), label="as bytes"):
        pem = mutate_bytes(data, text.encode("utf-8", "surrogatepass"))
    with contextlib.suppress(CertError):
        load_pem_chain(pem)
    with contextlib.suppress(CertError):
        WorkloadCert.from_pem(pem)


@given(
    st.one_of(
        st.text(),
        st.builds(lambda tail: "spiffe://" + tail, st.text()),
        st.builds(
            lambda parts: "spiffe://" + "/".join(parts),
            st.lists(
                st.sampled_from(("cluster.local", "ns", "", ".", "..", "%41", "a@b", "A")),
                max_size=6,
            ),
        ),
    )
)
def test_parse_spiffe_id_raises_only_cert_errors(uri: str) -> None:
    with contextlib.suppress(CertError):
        parse_spiffe_id(uri)


# --------------------------------------------------------------------------- XFCC

_XFCC_KEYS = ("By", "Hash", "Cert", "Chain", "Subject", "URI", "DNS", "by", "X-Y", "", " k")
_XFCC_VALUES = (
    "spiffe://cluster.local/ns/foo/sa/sleep",
    '""',
    '"a\\"b"',
    '"CN=a\\, O=b"',
    '"unterminated',
    'a"b',
    "%41%zz",
    "-----BEGIN%20CERTIFICATE-----%0A",
    "\udcff",
    "",
)


@given(st.data())
def test_parse_xfcc_raises_only_xfcc_errors(data: st.DataObject) -> None:
    if data.draw(st.integers(0, 4), label="grammar") > 0:
        pair = st.builds(
            lambda key, equals, value: f"{key}{equals}{value}",
            st.sampled_from(_XFCC_KEYS),
            st.sampled_from(("=", "", " = ")),
            st.one_of(st.sampled_from(_XFCC_VALUES), st.text(max_size=12)),
        )
        element = st.lists(pair, max_size=5).map(";".join)
        separator = st.sampled_from((",", ", ", ",,", " ,\t"))
        elements = data.draw(st.lists(element, max_size=4), label="elements")
        header = data.draw(separator).join(elements)
    else:
        header = data.draw(st.text(), label="header")
    with contextlib.suppress(XfccError):
        parse_xfcc(header)


# --------------------------------------------------------------------------- captures


def _stream() -> st.SearchStrategy[bytes]:
    """A TCP stream: HTTP heads (folded, chunked, CONNECT) and TLS records, glued together."""
    http_line = st.sampled_from(
        (
            b"GET / HTTP/1.1\r\n",
            b"CONNECT httpbin:443 HTTP/1.1\r\n",
            b"HEAD / HTTP/1.0\r\n",
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 101 Switching\r\n",
            b"Host: httpbin\r\n",
            b" folded\r\n",
            b"\tfolded\r\n",
            b"Content-Length: 4\r\n",
            b"Content-Length: 99999999999\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"\r\n",
            b"4\r\nbody\r\n0\r\n\r\n",
            b"ffffffffffffffff\r\n",
        )
    )
    tls = st.builds(
        lambda kind, version, body, size: b"".join(
            bytes([kind])
            + version
            + len(body[i : i + size]).to_bytes(2, "big")
            + body[i : i + size]
            for i in range(0, max(len(body), 1), size)
        ),
        st.sampled_from((20, 21, 22, 23, 24)),
        st.sampled_from((b"\x03\x01", b"\x03\x03", b"\x03\x05", b"\x02\x00")),
        st.one_of(
            st.binary(max_size=64),
            st.sampled_from((b"\x01\xff\xff\xff", b"\x02\x00\x00\x00", b"\x01\x00\x00\x05abcde")),
            st.builds(hi.client_hello_message, st.integers(0, 300)),
        ),
        st.integers(1, 70),
    )
    return st.lists(st.one_of(http_line, tls, st.binary(max_size=16)), max_size=10).map(b"".join)


@functools.cache
def _capture_seeds() -> tuple[bytes, ...]:
    directory = TESTDATA / "pcaps"
    real = (
        tuple(
            path.read_bytes()
            for path in sorted(directory.iterdir())
            if path.stat().st_size < 70_000
        )
        if directory.is_dir()
        else ()
    )
    return (
        *real,
        hi.http_pipelined(3000),
        hi.tls_one_byte_records(600),
        hi.http_folded_header(300),
    )


@given(st.data())
def test_analyze_pcap_raises_only_capture_errors(data: st.DataObject) -> None:
    if data.draw(st.booleans(), label="built"):
        client, server = data.draw(_stream(), label="client"), data.draw(_stream(), label="server")
        segment = data.draw(st.integers(1, 1500), label="segment")
        blob = hi.capture(client, server, segment=segment)
    else:
        blob = data.draw(st.sampled_from(_capture_seeds()), label="seed")
    blob = mutate_bytes(data, blob)
    with contextlib.suppress(CaptureError):
        capture = analyze_pcap(blob)
        for flow in capture.flows:  # the results are plain data: reading them cannot fail
            repr(flow)


# --------------------------------------------------------------------------- policies


@functools.cache
def _policy_seeds() -> tuple[dict[str, Any], ...]:
    return (
        peer_authentication("strict", "foo", mode="STRICT"),
        peer_authentication(
            "per-port",
            "foo",
            mode="PERMISSIVE",
            selector={"app": "httpbin"},
            port_level={8080: "STRICT"},
        ),
        destination_rule(
            "httpbin",
            "foo",
            "httpbin.foo.svc.cluster.local",
            mode="ISTIO_MUTUAL",
            sni="a",
            subject_alt_names=["spiffe://cluster.local/ns/foo/sa/httpbin"],
        ),
        destination_rule(
            "plain", "bar", "*.bar.svc.cluster.local", mode="DISABLE", port_level={8000: "SIMPLE"}
        ),
        {
            "apiVersion": "v1",
            "kind": "List",
            "items": [peer_authentication("a", "foo", mode="DISABLE")],
        },
        authorization_policy(
            "authz",
            "foo",
            "DENY",
            rules=[
                {
                    "from": [{"source": {"principals": ["*"], "ipBlocks": ["10.0.0.0/8"]}}],
                    "to": [{"operation": {"ports": ["8080"], "methods": ["GET"]}}],
                    "when": [{"key": "source.ip", "values": ["10.1.2.3"], "notValues": ["::1"]}],
                }
            ],
            selector={"app": "httpbin"},
            dry_run=True,
        ),
    )


_YAML_SNIPPETS = (
    "&a ",
    "*a",
    "<<: *a\n",
    "<<: [*a, *a]\n",
    "!!binary ",
    "!!int ",
    "!!timestamp ",
    "!!python/object:os.system ",
    "1:59:59",
    "0x" + "f" * 50,
    "? [a, b]\n: c\n",
    "---\n",
    "...\n",
    "{",
    "[",
    "%YAML 1.1\n",
    "2026-13-45T99:00:00Z",
    *hi.EDGE_TIMESTAMPS,
    "\t",
    "\udcff",
    "\x85",
)


@given(st.data())
def test_parse_policies_raises_only_policy_errors(data: st.DataObject) -> None:
    document = mutate_document(data, data.draw(st.sampled_from(_policy_seeds()), label="seed"))
    form = data.draw(st.sampled_from(("yaml", "json", "object", "text")), label="form")
    source: Any
    if form == "object":
        source = document
    elif form == "text":
        source = data.draw(st.text(), label="text")
    else:
        text = yaml.safe_dump(document) if form == "yaml" else json.dumps(document)
        for _ in range(data.draw(st.integers(0, 3), label="snippets")):
            position = data.draw(st.integers(0, len(text)), label="position")
            snippet = data.draw(st.sampled_from(_YAML_SNIPPETS), label="snippet")
            text = text[:position] + snippet + text[position:]
        source = text
        if data.draw(st.booleans(), label="as bytes"):
            source = mutate_bytes(data, text.encode("utf-8", "surrogatepass"))
    with contextlib.suppress(PolicyError):
        for policy in parse_policies(source):
            policy.to_manifest()


# --------------------------------------------------------------------------- Envoy config


@functools.cache
def _config_dump_seeds() -> tuple[Any, ...]:
    names = (
        [
            f"istio-dumps/{path.name}"
            for path in sorted((TESTDATA / "istio-dumps").glob("*.json"))
            if path.stat().st_size < 250_000
        ]
        if (TESTDATA / "istio-dumps").is_dir()
        else []
    )
    return (*_shared_json(*names), {"configs": []})


@given(st.data())
def test_parse_config_dump_raises_only_envoy_state_errors(data: st.DataObject) -> None:
    document = mutate_document(data, data.draw(st.sampled_from(_config_dump_seeds())))
    with contextlib.suppress(EnvoyStateError):
        parse_config_dump(serialised(data, document))


@functools.cache
def _ztunnel_dump_seeds() -> tuple[Any, ...]:
    policy = {  # ztunnel's examples/localhost.yaml policy, with every match kind added
        "action": "Allow",
        "name": "p",
        "namespace": "default",
        "scope": "Namespace",
        "dryRun": False,
        "rules": [
            [
                [
                    {
                        "notDestinationPorts": [9999],
                        "principals": [{"Exact": "cluster.local/ns/a/sa/b"}, {"Presence": []}],
                        "serviceAccounts": [{"namespace": "a", "serviceAccount": "b"}],
                        "sourceIps": ["10.0.0.0/8"],
                    }
                ]
            ]
        ],
    }
    real = _shared_json("istio-dumps/ztunnel/kiali__ztunnel-config.json")
    return (*real, {"workloads": [], "policies": [policy]})


@given(st.data())
def test_parse_ztunnel_dump_raises_only_ztunnel_dump_errors(data: st.DataObject) -> None:
    document = mutate_document(data, data.draw(st.sampled_from(_ztunnel_dump_seeds())))
    with contextlib.suppress(ZtunnelDumpError):
        dump = parse_ztunnel_dump(serialised(data, document))
        for certificate in dump.certificates:
            certificate.workload_cert()


# --------------------------------------------------------------------------- users' files
# Issue 23, finding 3: the files a user names are read by `userfiles` and parsed by the
# topology loader or the report loader; for any bytes, only their typed errors come out.

_TOPOLOGY_TEXT = BUILTIN_TOPOLOGY.read_text()


def _users_file(data: st.DataObject, seed: str) -> bytes:
    text = seed
    for _ in range(data.draw(st.integers(0, 3), label="snippets")):
        position = data.draw(st.integers(0, len(text)), label="position")
        text = text[:position] + data.draw(st.sampled_from(_YAML_SNIPPETS)) + text[position:]
    return mutate_bytes(data, text.encode("utf-8", "surrogatepass"))


@given(st.data())
def test_a_topology_file_raises_only_topology_errors(data: st.DataObject) -> None:
    raw = _users_file(data, _TOPOLOGY_TEXT)
    with tempfile.TemporaryDirectory(prefix="mc-fuzz-") as tmp:
        path = Path(tmp) / "topology.yaml"
        path.write_bytes(raw)
        with contextlib.suppress(TopologyError):
            load_topology(path)


@given(st.data())
def test_a_report_file_raises_only_report_errors(data: st.DataObject) -> None:
    suffix = data.draw(st.sampled_from((".yaml", ".json")), label="suffix")
    seed = json.dumps(_REPORT_SEED) if suffix == ".json" else yaml.safe_dump(_REPORT_SEED)
    raw = _users_file(data, seed)
    with tempfile.TemporaryDirectory(prefix="mc-fuzz-") as tmp:
        path = Path(tmp) / f"report{suffix}"
        path.write_bytes(raw)
        with contextlib.suppress(ReportError):
            load_report(path)


_REPORT_SEED = {
    "apiVersion": "meshconform/v1alpha1",
    "kind": "ConformanceReport",
    "date": "2026-12-07T05:24:22Z",
    "mesh": {"used": False, "backend": "local"},
    "statistics": {"total": 1, "passed": 1, "failed": 0},
    "suites": [{"name": "strict", "tests": [{"name": "test_a", "result": "passed"}]}],
}
