"""TLS posture: what a sidecar's inbound mTLS port accepts, and the certificates Istio issues.

Proven from inside a pod without a sidecar (sleep.legacy) with curl against httpbin.foo's pod
port under STRICT, each handshake read off the wire at the server's pod by the `tls_probe`
fixture (the ServerHello says what the server accepted, even when it then refuses the
connection for want of a mesh certificate). Expectations, literal from istio/istio:

- ``BuildInboundTLS`` (pilot/pkg/security/authn/utils/utils.go): TLS 1.2 minimum (TLS 1.3 when
  ``meshConfig.meshMTLS.minProtocolVersion`` is TLSV1_3, ``GetMinTLSVersion``), TLS 1.3
  maximum, the cipher list ``SupportedCiphers`` for TLS 1.2 (ECDHE GCM suites plus
  AES256-GCM-SHA384 and AES128-GCM-SHA256: no CBC, RC4 or 3DES), a client certificate required
  and validated against the mesh root.
- The agent's CSR key (pilot/cmd/pilot-agent/options/options.go, ``GenCSR``): RSA 2048
  (WORKLOAD_RSA_KEY_SIZE) unless ECC_SIGNATURE_ALGORITHM is set (default empty).
- The CA (``genCertTemplateFromCSR``, security/pkg/pki/util/generate_cert.go): the SPIFFE ID as
  the only SAN, ``NotAfter = now + TTL`` and, from Istio 1.10 (istio/istio#32176), ``NotBefore
  = now - 2m`` (ClockSkewGracePeriod).

Which of Istio's suites a server can choose depends on its certificate's key (an RSA key cannot
sign ECDHE-ECDSA; RFC 5246 7.4.2, RFC 8422 5.3), so the accepted set is checked against the key
the sidecar serves. RC4 and 3DES cannot be offered by an OpenSSL 3 curl; their absence is
checked in the sidecar's own config (the inbound chains' cipher list is exactly Istio's).

Ambient: the inbound mTLS port is ztunnel's HBONE port 15008 (what ``tls_probe`` probes at an
ambient server), literal from istio/ztunnel: TLS 1.3 only (src/tls/lib.rs ``tls_versions``:
TLS 1.2 only with ``TLS12_ENABLED``, off by default), so no TLS 1.2 suite at all; a client
certificate of the mesh required (``TrustDomainVerifier``, src/tls/workload.rs); ztunnel's
certificates carry an ECDSA P-256 key (``CsrOptions::generate``, src/tls/csr.rs). ztunnel is no
Envoy: there is no sidecar config to read.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from pytest_meshconform import (
    CertReader,
    ExecResult,
    Handshake,
    Mesh,
    PolicyApplier,
    TableRecorder,
    TlsProber,
    WorkloadHandle,
    WorkloadLookup,
    inbound_tls_contexts,
    load_pem_chain,
    mesh_min_tls_version,
    mesh_settings_key,
    peer_authentication,
)

pytestmark = pytest.mark.mesh_features("mtls", "peer-authentication", "capture")

# SupportedCiphers (pilot/pkg/security/authn/utils/utils.go), in istiod's order.
ISTIO_TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
)
# Suites outside Istio's list that an OpenSSL 3 curl can offer: CBC (SHA-1 and SHA-2 MACs),
# ChaCha20 (in Envoy's own default list) and finite-field DHE.
NOT_ISTIOS = (
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-RSA-AES256-SHA",
    "ECDHE-RSA-AES128-SHA256",
    "AES128-SHA",
    "AES256-SHA",
    "AES128-SHA256",
    "DHE-RSA-AES128-GCM-SHA256",
)
# IANA code points (RFC 5288, 5289, 5246, 7905) of the suites above, as the ServerHello names them.
IANA = {
    "ECDHE-ECDSA-AES256-GCM-SHA384": 0xC02C,
    "ECDHE-RSA-AES256-GCM-SHA384": 0xC030,
    "ECDHE-ECDSA-AES128-GCM-SHA256": 0xC02B,
    "ECDHE-RSA-AES128-GCM-SHA256": 0xC02F,
    "AES256-GCM-SHA384": 0x009D,
    "AES128-GCM-SHA256": 0x009C,
    "ECDHE-RSA-CHACHA20-POLY1305": 0xCCA8,
    "ECDHE-RSA-AES128-SHA": 0xC013,
    "ECDHE-RSA-AES256-SHA": 0xC014,
    "ECDHE-RSA-AES128-SHA256": 0xC027,
    "AES128-SHA": 0x002F,
    "AES256-SHA": 0x0035,
    "AES128-SHA256": 0x003C,
    "DHE-RSA-AES128-GCM-SHA256": 0x009E,
}
# GetMinTLSVersion: meshMTLS.minProtocolVersion -> the versions a sidecar's inbound accepts.
ACCEPTED_VERSIONS = {
    "TLS_AUTO": ("TLS1.2", "TLS1.3"),
    "TLSV1_2": ("TLS1.2", "TLS1.3"),
    "TLSV1_3": ("TLS1.3",),
}
ENVOY_MIN_VERSION = {"TLS_AUTO": "TLSv1_2", "TLSV1_2": "TLSv1_2", "TLSV1_3": "TLSv1_3"}
# tls_versions (ztunnel src/tls/lib.rs), whatever meshMTLS says
ZTUNNEL_VERSIONS: tuple[str, ...] = ("TLS1.3",)
CLOCK_SKEW_GRACE_PERIOD = dt.timedelta(minutes=2)  # genCertTemplateFromCSR, Istio >= 1.10

# curl exits that mean the attempt never reached the server's TLS, so prove nothing.
UNREACHED = {
    6: "could not resolve",
    7: "could not connect",
    28: "timed out",
    45: "could not bind its source port",
    58: "could not use its client certificate",
}


def _answer(s: Handshake, *, suite: bool) -> str:
    """A probe's outcome as a table cell: what the server's pod put on the wire."""
    if s.server_hello is None:
        return "refused"
    version, code = s.server_hello
    return f"accepted ({version}, 0x{code:04X})" if suite else f"accepted ({version})"


def _record(
    record_table: TableRecorder,
    title: str,
    seen: Sequence[Handshake],
    expected: Sequence[str],
    *,
    suite: bool,
) -> None:
    """Put the probes in the report: expected and observed answer per probe."""
    column = "server answer"
    record_table(
        title,
        rows=[s.label for s in seen],
        columns=[column],
        expected={(s.label, column): want for s, want in zip(seen, expected, strict=True)},
        observed={(s.label, column): _answer(s, suite=suite) for s in seen},
        corner="ClientHello offers",
    )


def _tls12(cipher: str) -> tuple[str, tuple[str, ...]]:
    return cipher, ("--tlsv1.2", "--tls-max", "1.2", "--ciphers", f"{cipher}:@SECLEVEL=0")


def test_inbound_accepts_only_tls12_and_tls13(
    mesh: Mesh,
    apply_policy: PolicyApplier,
    naked_sleep: WorkloadHandle,
    httpbin: WorkloadHandle,
    tls_probe: TlsProber,
    record_table: TableRecorder,
) -> None:
    """The inbound mTLS port answers TLS 1.2 and 1.3 ClientHellos and refuses TLS 1.0 and 1.1
    (only 1.3 under meshMTLS.minProtocolVersion TLSV1_3), as seen in the ServerHellos."""
    apply_policy(peer_authentication("default", httpbin.namespace, mode="STRICT"))
    legacy = "DEFAULT:@SECLEVEL=0"  # OpenSSL 3 offers TLS 1.0/1.1 only at security level 0
    probes = {
        "TLS1.0": ("--tlsv1.0", "--tls-max", "1.0", "--ciphers", legacy),
        "TLS1.1": ("--tlsv1.1", "--tls-max", "1.1", "--ciphers", legacy),
        "TLS1.2": ("--tlsv1.2", "--tls-max", "1.2", "--ciphers", legacy),
        "TLS1.3": ("--tlsv1.3", "--tls-max", "1.3"),
    }
    seen = tls_probe(naked_sleep, httpbin, probes)
    cap = seen[0].capture
    minimum = mesh_min_tls_version(mesh)
    if httpbin.dataplane == "ambient":
        port, want, who = "HBONE port 15008", ZTUNNEL_VERSIONS, "ztunnel accepts"
    else:
        port, want, who = "inbound mTLS port", ACCEPTED_VERSIONS[minimum], "Istio accepts"
    _record(
        record_table,
        f"TLS versions at {httpbin}'s {port} (meshMTLS.minProtocolVersion {minimum})",
        seen,
        [f"accepted ({label})" if label in want else "refused" for label in probes],
        suite=False,
    )
    accepted = tuple(s.label for s in seen if s.server_hello is not None)
    report = "\n".join(str(s) for s in seen)
    assert accepted == want, (
        f"the {port} accepted {accepted}, {who} {want}"
        f" (meshMTLS.minProtocolVersion {minimum}):\n{report}\n({cap})"
    )
    for s in seen:
        if s.server_hello is not None:
            assert s.server_hello[0] == s.label, f"negotiated another version: {s}"


@pytest.mark.mesh_features("certificates")
def test_inbound_tls12_ciphers_are_istios(
    mesh: Mesh,
    apply_policy: PolicyApplier,
    naked_sleep: WorkloadHandle,
    httpbin: WorkloadHandle,
    tls_probe: TlsProber,
    cert_of: CertReader,
    record_table: TableRecorder,
) -> None:
    """For TLS 1.2 the inbound port accepts each of Istio's suites its key can use and no other
    (CBC, ChaCha20, DHE refused); offered everything, it picks by Istio's order."""
    if mesh_min_tls_version(mesh) == "TLSV1_3":
        pytest.skip("meshMTLS.minProtocolVersion is TLSV1_3: the inbound port speaks no TLS 1.2")
    apply_policy(peer_authentication("default", httpbin.namespace, mode="STRICT"))
    key = cert_of(httpbin).leaf.public_key()
    usable = tuple(
        c
        for c in ISTIO_TLS12_CIPHERS
        if c.startswith("ECDHE-ECDSA-") == isinstance(key, ec.EllipticCurvePublicKey)
    )
    if httpbin.dataplane == "ambient":
        usable = ()  # ztunnel speaks no TLS 1.2 (tls_versions): every TLS 1.2 offer refused
    offer_all = ("--tlsv1.2", "--tls-max", "1.2", "--ciphers", "ALL:@SECLEVEL=0")
    probes = {
        **dict(_tls12(c) for c in (*ISTIO_TLS12_CIPHERS, *NOT_ISTIOS)),
        "everything": offer_all,
    }
    seen = tls_probe(naked_sleep, httpbin, probes)
    cap = seen[0].capture
    _record(
        record_table,
        f"TLS 1.2 cipher suites at {httpbin}'s inbound mTLS port (it serves an"
        f" {'EC' if isinstance(key, ec.EllipticCurvePublicKey) else 'RSA'} key)",
        seen,
        [
            f"accepted (TLS1.2, 0x{IANA[label]:04X})" if label in usable else "refused"
            for label in list(probes)[:-1]
        ]
        + [f"accepted (TLS1.2, 0x{IANA[usable[0]]:04X})" if usable else "refused"],
        suite=True,
    )
    report = "\n".join(str(s) for s in seen)
    accepted = tuple(s.label for s in seen[:-1] if s.server_hello is not None)
    assert accepted == usable, (
        f"TLS 1.2 suites accepted: {accepted}; Istio's list usable with the served"
        f" {type(key).__name__}: {usable}\n{report}\n({cap})"
    )
    for s in seen[:-1]:
        if s.server_hello is not None:
            assert s.server_hello == ("TLS1.2", IANA[s.label]), f"other suite chosen: {s}"
    if not usable:
        assert seen[-1].server_hello is None, f"ztunnel spoke TLS 1.2: {seen[-1]}\n({cap})"
        return
    # Offered everything, the server picks by Istio's order: its first suite the key allows.
    assert seen[-1].server_hello == ("TLS1.2", IANA[usable[0]]), (
        f"offered every suite, the server chose {seen[-1]}; Istio's order picks {usable[0]}"
    )


def test_inbound_tls_context_in_the_sidecar(
    mesh: Mesh, apply_policy: PolicyApplier, httpbin: WorkloadHandle
) -> None:
    """The sidecar's own inbound TLS chains carry exactly Istio's cipher list (so no RC4 or 3DES),
    its version bounds, and require a client certificate."""
    if httpbin.dataplane == "ambient":
        pytest.skip(
            f"{httpbin} is ambient: no sidecar config to read (ztunnel is no Envoy); its HBONE"
            " port's TLS is judged on the wire by the tests above"
        )
    apply_policy(peer_authentication("default", httpbin.namespace, mode="STRICT"))
    contexts = inbound_tls_contexts(mesh.envoy_admin(httpbin.workload, "/config_dump"))
    assert contexts is not None, f"{httpbin}'s sidecar has no virtualInbound listener"
    assert contexts, f"STRICT, yet {httpbin}'s virtualInbound has no TLS filter chain"
    want = {
        "tls_minimum_protocol_version": ENVOY_MIN_VERSION[mesh_min_tls_version(mesh)],
        "tls_maximum_protocol_version": "TLSv1_3",
        "cipher_suites": list(ISTIO_TLS12_CIPHERS),
    }
    for chain, context in contexts:
        common = context.get("common_tls_context") or {}
        assert common.get("tls_params") == want, f"chain {chain}: {common.get('tls_params')}"
        assert context.get("require_client_certificate") is True, f"chain {chain}: {context}"


def _assert_refused(result: ExecResult, who: str) -> None:
    """The server refused the TLS session: no HTTP response at all. curl says so with exit 35
    (handshake failed), 56 (receive failed: TLS 1.3 reports a missing or rejected client
    certificate after the client's Finished), 16 (HTTP/2 framing) or another TLS/transfer
    error; an attempt that never reached the server is an error, not a refusal."""
    __tracebackhide__ = True
    code, said = result.returncode, result.stderr.decode(errors="replace").strip()
    assert code not in UNREACHED, f"{who}: curl {UNREACHED[code]} (exit {code}): {said}"
    assert code != 0 and result.stdout == b"000", (
        f"{who} got through: curl exit {code}, HTTP {result.stdout.decode()!r} ({said})"
    )


def _foreign_identity(spiffe_id: str) -> tuple[str, str]:
    """A CA of our own and a leaf naming ``spiffe_id``, made now: (cert chain PEM, key PEM)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "not-the-mesh")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())  # any key will do: the CA is what is wrong
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    chain = (leaf.public_bytes(pem) + ca.public_bytes(pem)).decode()
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return chain, key_pem


def test_inbound_requires_a_mesh_client_certificate(
    mesh: Mesh,
    apply_policy: PolicyApplier,
    naked_sleep: WorkloadHandle,
    httpbin: WorkloadHandle,
    tls_probe: TlsProber,
) -> None:
    """A client without a certificate, and one presenting a mesh identity signed by another CA,
    get no HTTP response from the inbound mTLS port."""
    apply_policy(peer_authentication("default", httpbin.namespace, mode="STRICT"))
    url = tls_probe.url(httpbin)
    base = ["curl", "-sS", "-k", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10", url]
    _assert_refused(naked_sleep.exec(base, timeout=15), "a client without a certificate")
    # The identity of a real workload, signed by a CA the mesh does not trust.
    chain, key = _foreign_identity(naked_sleep.workload.spiffe_id(mesh.trust_domain))
    stem = f"/tmp/mc-posture-{secrets.token_hex(4)}"
    write = 'umask 077; printf "%s" "$1" > "$3"; printf "%s" "$2" > "$4"'
    made = naked_sleep.exec(["sh", "-c", write, "sh", chain, key, f"{stem}.crt", f"{stem}.key"])
    assert made.returncode == 0, f"could not write the client certificate: {made}"
    try:
        foreign = naked_sleep.exec([*base, "--cert", f"{stem}.crt", "--key", f"{stem}.key"])
    finally:
        naked_sleep.exec(["rm", "-f", f"{stem}.crt", f"{stem}.key"])
    _assert_refused(foreign, "a certificate from another CA")


@pytest.mark.mesh_features("certificates")
@pytest.mark.parametrize(("name", "namespace"), [("httpbin", "foo"), ("sleep", "bar")])
def test_workload_certificate(
    mesh: Mesh,
    pytestconfig: pytest.Config,
    workload: WorkloadLookup,
    cert_of: CertReader,
    name: str,
    namespace: str,
) -> None:
    """The served workload certificate: RSA 2048 (ztunnel's: ECDSA P-256), the SPIFFE ID as its
    only SAN, valid for the TTL in force, chained to the mesh root."""
    target = workload(name, namespace)
    cert = cert_of(target)
    leaf = cert.leaf
    key = leaf.public_key()
    if target.dataplane == "ambient":
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1", (
            f"{target}'s ztunnel serves a {type(key).__name__} key"
            f" ({getattr(key, 'key_size', '?')} bits); ztunnel makes ECDSA P-256"
        )
    else:
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048, (
            f"{target} serves a {type(key).__name__} key"
            f" ({getattr(key, 'key_size', '?')} bits); Istio's agent makes RSA 2048"
        )
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = [(type(n).__name__, n.value) for n in san]
    assert names == [("UniformResourceIdentifier", target.spiffe_id)], (
        f"{target}'s SANs {names}: Istio puts the SPIFFE ID {target.spiffe_id} and nothing else"
    )
    ttl = pytestconfig.stash[mesh_settings_key].cert_ttl
    lifetime = cert.not_after - cert.not_before
    assert lifetime in (ttl, ttl + CLOCK_SKEW_GRACE_PERIOD), (
        f"{target}'s certificate lives {lifetime}; the TTL in force is {ttl} (istiod signs"
        f" now..now+TTL, backdated by {CLOCK_SKEW_GRACE_PERIOD} since Istio 1.10)"
    )
    cert.verify(load_pem_chain(mesh.root_cert), dt.datetime.now(dt.UTC))
