"""Hostile inputs for the evidence and policy parsers, each next to a benign input of the same
size: shared by tests/test_hostile_inputs.py (small sizes, work compared in CPU time) and
benchmarks/bench_parsers.py (10 MB, MB/s).

Every generator takes a target size in bytes and returns the parser's input (``bytes`` or
``str``) of about that size. The hostile shapes are the ones an adversarial probe found
(issue 14, defect 5) plus the ones found while fixing them; the benign shapes are what the
parser meets in practice (a big trust bundle, pipelined HTTP, a TLS handshake in full-size
records, many policy documents, many XFCC hops).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pytest_meshconform.evidence.certs import CertError, parse_envoy_certs
from pytest_meshconform.evidence.pcap import CaptureError
from pytest_meshconform.evidence.wire import analyze_pcap
from pytest_meshconform.evidence.xfcc import XfccError, parse_xfcc
from pytest_meshconform.istio.api import PolicyError, parse_policies
from pytest_meshconform.istio.sidecar_dump import parse_envoy_secrets

# Timestamps at the edges of Python's datetime range: valid RFC 3339, but the UTC instant
# falls outside years 1..9999 (issue 14, defect 6).
EDGE_TIMESTAMPS = ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00")

TYPED_ERRORS = (CaptureError, CertError, PolicyError, XfccError)


# --------------------------------------------------------------------------- measuring work


def cpu_per_call(function: Callable[[], object], budget: float = 0.05, batches: int = 3) -> float:
    """CPU seconds one call takes: the best of ``batches`` batches, each repeated until it
    used ``budget`` CPU seconds. Process CPU time, not wall time, so another process on the
    machine does not count; the best batch drops this process's own hiccups (GC, page faults).
    """
    best = float("inf")
    for _ in range(batches):
        calls = 0
        start = time.process_time()
        while True:
            with contextlib.suppress(*TYPED_ERRORS):
                function()
            calls += 1
            spent = time.process_time() - start
            if spent >= budget:
                break
        best = min(best, spent / calls)
    return best


# --------------------------------------------------------------------------- certificates


@functools.cache
def certificate_pem() -> str:
    """One self-signed P-256 certificate, PEM (about 600 bytes)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster.local")])
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0x0193A543FE)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _root_secret_dump(pem: str) -> bytes:
    secret = {
        "name": "ROOTCA",
        "version_info": "1",
        "last_updated": "2026-01-01T00:00:00Z",
        "secret": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            "name": "ROOTCA",
            "validation_context": {"trusted_ca": {"inline_string": pem}},
        },
    }
    return json.dumps({"dynamic_active_secrets": [secret]}).encode()


def secrets_begin_without_end(size: int) -> bytes:
    """A secrets dump whose trusted CA is PEM BEGIN lines without END lines (a lazy regex
    rescans the rest of the text from every BEGIN)."""
    line = "-----BEGIN CERTIFICATE-----\n"
    return _root_secret_dump(line * max(1, size // len(line)))


def secrets_big_bundle(size: int) -> bytes:
    """A secrets dump whose ROOTCA holds a trust bundle of real certificates."""
    pem = certificate_pem()
    return _root_secret_dump(pem * max(1, size // len(pem)))


def _certs_entry(serial: str, uris: list[str]) -> dict[str, object]:
    return {
        "serial_number": serial,
        "subject_alt_names": [{"uri": uri} for uri in uris],
        "valid_from": "2026-01-01T00:00:00Z",
        "expiration_time": "2026-01-02T00:00:00Z",
    }


def certs_huge_serial(size: int) -> bytes:
    """Envoy ``/certs`` whose one certificate has a serial of ``size`` hex digits."""
    entry = _certs_entry("f" * size, ["spiffe://cluster.local/ns/foo/sa/sleep"])
    return json.dumps({"certificates": [{"cert_chain": [entry]}]}).encode()


def certs_many(size: int) -> bytes:
    """Envoy ``/certs`` of many TLS contexts, each a CA and a workload certificate."""
    context = {
        "ca_cert": [_certs_entry("0193a543fe0011", [])],
        "cert_chain": [_certs_entry("0193a543fe0012", ["spiffe://cluster.local/ns/foo/sa/sl"])],
    }
    count = max(1, size // len(json.dumps(context)))
    return json.dumps({"certificates": [context] * count}).encode()


# --------------------------------------------------------------------------- XFCC

_XFCC_HOP = (
    "By=spiffe://cluster.local/ns/foo/sa/httpbin;Hash=2b7e151628aed2a6abf7158809cf4f3c762e7160"
    'f38b4da56a784d9045190cfe;Subject="";URI=spiffe://cluster.local/ns/foo/sa/sleep'
)


def xfcc_many_hops(size: int) -> str:
    """An XFCC header of many hops, as a chain of proxies writes it."""
    return ",".join([_XFCC_HOP] * max(1, size // (len(_XFCC_HOP) + 1)))


def xfcc_escapes(size: int) -> str:
    """One hop whose quoted Subject is nothing but backslash escapes, then a percent-encoded
    Chain: the character-by-character paths of the parser."""
    half = max(2, size // 2)
    return f'By=a;Subject="{chr(92) * 2 * (half // 2)}";Chain={"%41" * (half // 3)}'


# --------------------------------------------------------------------------- policies

_POLICY = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: p{index}
  namespace: foo
  creationTimestamp: "2026-01-01T00:00:00Z"
spec:
  selector:
    matchLabels:
      app: httpbin
  mtls:
    mode: STRICT
  portLevelMtls:
    "8080":
      mode: PERMISSIVE
"""


def policies_many(size: int) -> str:
    """Many PeerAuthentication documents, ``---`` separated."""
    documents = []
    total = 0
    index = 0
    while total < size:
        document = _POLICY.format(index=index)
        documents.append(document)
        total += len(document) + 4
        index += 1
    return "---\n".join(documents)


def alias_bomb_name(levels: int = 12, width: int = 9) -> str:
    """A PeerAuthentication whose ``metadata.name`` is a YAML "billion laughs": ``levels``
    anchors, each a list of ``width`` aliases to the previous one (about 600 bytes for the
    defaults, ``width ** levels`` strings once expanded)."""
    parts = ["&a0 [" + ",".join(["x"] * width) + "]"]
    parts += [f"&a{n} [" + ",".join([f"*a{n - 1}"] * width) + "]" for n in range(1, levels)]
    return (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n"
        f"  name: [{','.join(parts)}]\n"
    )


def alias_items_times_sans(size: int) -> str:
    """A ``kind: List`` whose items are N aliases of one DestinationRule with N aliased
    subjectAltNames: O(size) text, O(size**2) validation once the aliases are followed."""
    count = max(2, size // 6)
    sans = ",".join(["*s"] * (count - 1))
    items = ",".join(["*d"] * (count - 1))
    rule = (
        "{apiVersion: networking.istio.io/v1, kind: DestinationRule, metadata: {name: r}, "
        f"spec: {{host: httpbin, trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL, "
        f"subjectAltNames: [&s a,{sans}]}}}}}}}}"
    )
    return f"apiVersion: v1\nkind: List\nitems: [&d {rule},{items}]\n"


def self_alias_list(size: int) -> str:
    """A list holding ``size // 3`` aliases of itself (``&a [*a, *a, ...]``): every alias that
    is followed reaches the whole list again."""
    aliases = ",".join(["*a"] * max(1, size // 3))
    return f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nx: &a [{aliases}]\n"


def merge_key_bomb(levels: int = 24) -> str:
    """YAML merge keys, each mapping merging the previous one twice: PyYAML's constructor
    copies the merged pairs before dropping duplicates, ``2 ** levels`` pairs."""
    lines = ["x-0: &m0 {a: 1, b: 2}"]
    lines += [f"x-{n}: &m{n} {{<<: [*m{n - 1}, *m{n - 1}]}}" for n in range(1, levels)]
    return "\n".join(lines) + "\n"


def sexagesimal_int(size: int) -> str:
    """A YAML 1.1 base-60 integer (``1:59:59:...``) of ``size`` characters: PyYAML builds it
    with one big-integer multiplication per digit pair."""
    digits = ":59" * (size // 3)
    return f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nx: 1{digits}\n"


def plain_scalar_policy(size: int) -> str:
    """A policy carrying a long plain string of the same size (the benign twin of the above)."""
    return (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        f"metadata: {{name: a, annotations: {{x: {'y' * size}}}}}\n"
    )


# --------------------------------------------------------------------------- captures

_CLIENT, _SERVER = b"\x0a\x01\x00\x01", b"\x0a\x01\x00\x02"
_SYN, _ACK, _PSH = 0x02, 0x10, 0x08
_SEGMENT = 65_000  # IPv4 total length is 16 bits: one TSO-sized segment per packet


def _ipv4_tcp(client_sends: bool, seq: int, flags: int, payload: bytes = b"") -> bytes:
    src, dst = (_CLIENT, _SERVER) if client_sends else (_SERVER, _CLIENT)
    sport, dport = (40000, 8080) if client_sends else (8080, 40000)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, 0, 5 << 4, flags, 65535, 0, 0)
    total = 40 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 6, 0, src, dst)
    return ip + tcp + payload


def capture(client_stream: bytes, server_stream: bytes = b"", segment: int = _SEGMENT) -> bytes:
    """A pcap (link type IPV4) of one TCP connection carrying the two streams."""
    packets = [_ipv4_tcp(True, 1000, _SYN), _ipv4_tcp(False, 9000, _SYN | _ACK)]
    for client_sends, stream, isn in ((True, client_stream, 1001), (False, server_stream, 9001)):
        for offset in range(0, len(stream), segment):
            chunk = stream[offset : offset + segment]
            packets.append(_ipv4_tcp(client_sends, isn + offset, _PSH | _ACK, chunk))
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262_144, 228)
    records = [struct.pack("<IIII", 1_700_000_000, 0, len(p), len(p)) + p for p in packets]
    return header + b"".join(records)


def http_folded_header(size: int) -> bytes:
    """A request whose one header is continued by obsolete line folding (RFC 9112 5.2) on
    every following line."""
    head = b"GET / HTTP/1.1\r\nHost: httpbin\r\nX-Folded: a\r\n"
    return capture(head + b" b\r\n" * max(1, size // 4) + b"\r\n")


def http_many_headers(size: int) -> bytes:
    """A request with as many ordinary header lines (the benign twin of the above)."""
    head = b"GET / HTTP/1.1\r\nHost: httpbin\r\n"
    return capture(head + b"X: b\r\n" * max(1, size // 6) + b"\r\n")


def http_pipelined(size: int) -> bytes:
    """Keep-alive HTTP: requests with 1 KiB bodies, and their answers."""
    body = b"x" * 1024
    request = b"POST /post HTTP/1.1\r\nHost: httpbin:8000\r\nContent-Length: 1024\r\n\r\n" + body
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\nServer: envoy\r\n\r\n" + body
    count = max(1, size // (len(request) + len(response)))
    return capture(request * count, response * count, segment=1448)


def client_hello_message(length: int) -> bytes:
    """A ClientHello handshake message of ``length`` body bytes: a real hello (SNI
    ``httpbin``, one suite) followed by padding the parser must step over."""
    sni = b"httpbin"
    server_name = struct.pack("!HBH", len(sni) + 3, 0, len(sni)) + sni
    extensions = struct.pack("!HH", 0, len(server_name)) + server_name
    body = (
        b"\x03\x03"
        + b"\x11" * 32
        + b"\x00"
        + b"\x00\x02\x13\x01"
        + b"\x01\x00"
        + struct.pack("!H", len(extensions))
        + extensions
    )
    body += b"\x00" * max(0, length - len(body))
    return b"\x01" + len(body).to_bytes(3, "big") + body


def _records(message: bytes, size: int) -> bytes:
    return b"".join(
        b"\x16\x03\x01" + struct.pack("!H", len(message[i : i + size])) + message[i : i + size]
        for i in range(0, len(message), size)
    )


def tls_one_byte_records(size: int) -> bytes:
    """A ClientHello split into 1-byte TLS records (legal: RFC 8446 5.1), 6 bytes each."""
    return capture(_records(client_hello_message(max(64, size // 6)), 1))


def tls_full_records(size: int) -> bytes:
    """A ClientHello of the same size in 16 KiB records (the benign twin of the above)."""
    return capture(_records(client_hello_message(max(64, size - size // 3000 * 5)), 16_384))


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    """One hostile input and its benign twin for one parser."""

    parser: str
    name: str
    hostile: Callable[[int], bytes | str]
    benign_name: str
    benign: Callable[[int], bytes | str]
    parse: Callable[[bytes | str], object]


def _secrets(data: bytes | str) -> object:
    return parse_envoy_secrets(data)


def _certs(data: bytes | str) -> object:
    return parse_envoy_certs(data)


def _pcap(data: bytes | str) -> object:
    assert isinstance(data, bytes)
    return analyze_pcap(data)


def _xfcc(data: bytes | str) -> object:
    assert isinstance(data, str)
    return parse_xfcc(data)


def _policies(data: bytes | str) -> object:
    return parse_policies(data)


CASES = (
    Case(
        "parse_envoy_secrets",
        "PEM BEGIN lines without END",
        secrets_begin_without_end,
        "ROOTCA trust bundle of certificates",
        secrets_big_bundle,
        _secrets,
    ),
    Case(
        "parse_envoy_certs",
        "one huge hex serial",
        certs_huge_serial,
        "many /certs contexts",
        certs_many,
        _certs,
    ),
    Case(
        "analyze_pcap",
        "obsolete header folding",
        http_folded_header,
        "keep-alive HTTP with bodies",
        http_pipelined,
        _pcap,
    ),
    Case(
        "analyze_pcap",
        "ClientHello in 1-byte records",
        tls_one_byte_records,
        "the same ClientHello, 16 KiB records",
        tls_full_records,
        _pcap,
    ),
    Case(
        "parse_xfcc",
        "quoted escapes, percent-encoding",
        xfcc_escapes,
        "many hops",
        xfcc_many_hops,
        _xfcc,
    ),
    Case(
        "parse_policies",
        "aliased items x aliased SANs",
        alias_items_times_sans,
        "many PeerAuthentications",
        policies_many,
        _policies,
    ),
    Case(
        "parse_policies",
        "a list of aliases to itself",
        self_alias_list,
        "many PeerAuthentications",
        policies_many,
        _policies,
    ),
    Case(
        "parse_policies",
        "base-60 integer",
        sexagesimal_int,
        "a long plain scalar",
        plain_scalar_policy,
        _policies,
    ),
)
