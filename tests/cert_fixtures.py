"""Certificates and Envoy secret dumps made for the tests of the certificate readers
(``test_certs.py``, ``test_config_dump_secrets.py``): a PKI shaped like istiod's (literal serials
and dates), the secrets dumps Envoy and istioctl print for it, and JSON strategies for the
property tests."""

from __future__ import annotations

import base64
import datetime as dt
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import strategies as st

UTC = dt.UTC
SECRETS_DUMP_TYPE = "type.googleapis.com/envoy.admin.v3.SecretsConfigDump"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
REDACTED_KEY = "W3JlZGFjdGVkXQ=="  # base64 of "[redacted]", as in Istio's testdata


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# --- a PKI -----------------------------------------------------------------------

ROOT_NOT_BEFORE = utc(2024, 1, 1, 0, 0, 0)
ROOT_NOT_AFTER = utc(2034, 1, 1, 0, 0, 0)
CREATED = utc(2024, 6, 1, 12, 0, 0)
LEAF_NOT_BEFORE = utc(2024, 6, 1, 11, 58, 0)  # istiod backdates by 2 minutes
LEAF_NOT_AFTER = utc(2024, 6, 2, 12, 0, 0)
LEAF_SERIAL = 0x0123456789ABCDEF0123456789ABCDEF  # openssl -serial: 0123456789ABCDEF...
LEAF_SERIAL_TEXT = "0123456789abcdef0123456789abcdef"
ROOT_SERIAL = 0xF00D  # high bit set: DER pads it with 00, the text form must not
ROOT_SERIAL_TEXT = "f00d"
SLEEP_ID = "spiffe://cluster.local/ns/foo/sa/sleep"
MID_VALIDITY = utc(2024, 6, 2, 0, 0, 0)


def _name(organization: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)])


@dataclass(frozen=True)
class Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def make_ca(
    organization: str,
    serial: int = ROOT_SERIAL,
    parent: Issuer | None = None,
    not_after: dt.datetime = ROOT_NOT_AFTER,
) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(organization))
        .issuer_name(_name(organization) if parent is None else parent.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(ROOT_NOT_BEFORE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    signer = key if parent is None else parent.key
    if parent is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()),
            critical=False,
        )
    return Issuer(builder.sign(signer, hashes.SHA256()), key)


def istio_leaf(
    issuer: Issuer,
    *,
    uris: Sequence[str] = (SLEEP_ID,),
    serial: int = LEAF_SERIAL,
    not_before: dt.datetime = LEAF_NOT_BEFORE,
    not_after: dt.datetime = LEAF_NOT_AFTER,
    usages: Sequence[x509.ObjectIdentifier] = (
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ),
) -> x509.Certificate:
    """Shaped like istiod's: ECDSA P-256, empty subject, the SPIFFE ID as critical URI SAN."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=True,
        )
    return builder.sign(issuer.key, hashes.SHA256())


def pem_of(*chain: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)


def b64_of(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@dataclass(frozen=True)
class Pki:
    root: Issuer
    leaf: x509.Certificate
    rogue_root: Issuer  # same name as root, other key
    other_root: Issuer  # other name
    intermediate: Issuer
    leaf_via_intermediate: x509.Certificate


@functools.cache
def make_pki() -> Pki:
    root = make_ca("cluster.local")
    intermediate = make_ca("istiod intermediate", serial=0x77, parent=root)
    return Pki(
        root=root,
        leaf=istio_leaf(root),
        rogue_root=make_ca("cluster.local", serial=0xBAD),
        other_root=make_ca("other.local", serial=0x0BAD),
        intermediate=intermediate,
        leaf_via_intermediate=istio_leaf(intermediate, serial=0x42),
    )


def snake_dump(chain_pem: str, roots_pem: str) -> dict[str, Any]:
    """A full Envoy /config_dump whose secrets section is Envoy's snake_case."""
    return {
        "configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": {}},
            {
                "@type": SECRETS_DUMP_TYPE,
                "dynamic_active_secrets": [
                    {
                        "name": "default",
                        "version_info": "2024-06-01T12:00:00Z/7",
                        "last_updated": "2024-06-01T12:00:01.123456789Z",
                        "secret": {
                            "@type": SECRET_TYPE,
                            "name": "default",
                            "tls_certificate": {
                                "certificate_chain": {"inline_bytes": b64_of(chain_pem)},
                                "private_key": {"inline_bytes": REDACTED_KEY},
                            },
                        },
                    },
                    {
                        "name": "ROOTCA",
                        "version_info": "2024-06-01T12:00:00Z/7",
                        "last_updated": "2024-06-01T12:00:01+02:00",
                        "secret": {
                            "@type": SECRET_TYPE,
                            "name": "ROOTCA",
                            "validation_context": {
                                "trusted_ca": {"inline_bytes": b64_of(roots_pem)}
                            },
                        },
                    },
                ],
                "dynamic_warming_secrets": [
                    {
                        "name": "file-root:/etc/certs/root-cert.pem",
                        "version_info": "uninitialized",
                        "last_updated": "2024-06-01T12:00:00Z",
                        "secret": {
                            "@type": SECRET_TYPE,
                            "name": "file-root:/etc/certs/root-cert.pem",
                        },
                    }
                ],
            },
        ]
    }


def camel_dump(chain_pem: str, roots_pem: str) -> dict[str, Any]:
    """What ``istioctl proxy-config secret -o json`` prints: protojson camelCase, no configs."""
    return {
        "dynamicActiveSecrets": [
            {
                "name": "default",
                "versionInfo": "2024-06-01T12:00:00Z/7",
                "lastUpdated": "2024-06-01T12:00:01.123456789Z",
                "secret": {
                    "@type": SECRET_TYPE,
                    "name": "default",
                    "tlsCertificate": {
                        "certificateChain": {"inlineBytes": b64_of(chain_pem)},
                        "privateKey": {"inlineBytes": REDACTED_KEY},
                    },
                },
            },
            {
                "name": "ROOTCA",
                "versionInfo": "2024-06-01T12:00:00Z/7",
                "lastUpdated": "2024-06-01T12:00:01+02:00",
                "secret": {
                    "@type": SECRET_TYPE,
                    "name": "ROOTCA",
                    "validationContext": {"trustedCa": {"inlineBytes": b64_of(roots_pem)}},
                },
            },
        ],
        "dynamicWarmingSecrets": [
            {
                "name": "file-root:/etc/certs/root-cert.pem",
                "versionInfo": "uninitialized",
                "lastUpdated": "2024-06-01T12:00:00Z",
                "secret": {"@type": SECRET_TYPE, "name": "file-root:/etc/certs/root-cert.pem"},
            }
        ],
    }


DUMPS: dict[str, Callable[[str, str], dict[str, Any]]] = {
    "snake": snake_dump,
    "camel": camel_dump,
}


# --- JSON for the property tests -----------------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=4)
    ),
    max_leaves=12,
)
KEY_WORDS = [
    "configs", "@type", SECRETS_DUMP_TYPE, SECRET_TYPE, "name", "default", "ROOTCA",
    "dynamic_active_secrets", "dynamicActiveSecrets", "dynamic_warming_secrets", "static_secrets",
    "secret", "tls_certificate", "tlsCertificate", "certificate_chain", "inline_bytes",
    "inline_string", "filename", "validation_context", "trusted_ca", "custom_validator_config",
    "typed_config", "trust_domains", "trust_bundle", "last_updated", "version_info",
    "certificates", "cert_chain", "ca_cert", "serial_number", "subject_alt_names", "uri",
    "valid_from", "expiration_time",
]  # fmt: skip
SHAPED_JSON = st.recursive(
    JSON_SCALARS | st.sampled_from(KEY_WORDS),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEY_WORDS) | st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=15,
)
