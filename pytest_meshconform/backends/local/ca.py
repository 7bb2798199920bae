"""The local mesh's certificate authority: one self-signed root per mesh, Istio-shaped leaves.

Mirrors what istiod's self-signed CA issues (security/pkg/pki/util/generate_cert.go): a root
with `O=<trust domain>` (ECDSA P-256 here; istiod's is RSA), and workload certificates with an
empty subject, the SPIFFE ID as the only (critical) URI SAN, key usages digitalSignature +
keyEncipherment, extended key usages serverAuth + clientAuth, a random 128-bit serial and
NotBefore = now. Workload keys are what Istio's agent generates for its CSR
(`istio.tls.ISTIO_WORKLOAD_KEY`: RSA 2048); RSA keys take ~50-100 ms each, so a `KeyPool`
makes them ahead in a background thread (the work runs outside the GIL).

Deliberate difference: istiod (1.10+) backdates NotBefore by its 2-minute ClockSkewGracePeriod;
this CA does not, so the rotation watch can measure the half-life from the certificate itself.
"""

from __future__ import annotations

import datetime as dt
import queue
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pytest_meshconform.istio.tls import ISTIO_WORKLOAD_KEY, WorkloadKey

ROOT_LIFETIME = dt.timedelta(days=3650)


@dataclass(frozen=True, slots=True)
class IssuedCert:
    cert_pem: str
    key_pem: str
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime


WorkloadPrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

_CURVES: dict[int, ec.EllipticCurve] = {256: ec.SECP256R1(), 384: ec.SECP384R1()}


def generate_key(spec: WorkloadKey) -> WorkloadPrivateKey:
    """A private key of the given kind (RSA bits, or an EC curve of that size)."""
    if spec.algorithm == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=spec.bits)
    if spec.bits not in _CURVES:
        raise ValueError(f"no EC curve of {spec.bits} bits; known: {sorted(_CURVES)}")
    return ec.generate_private_key(_CURVES[spec.bits])


class KeyPool:
    """Workload keys made ahead of need by one daemon thread, so issuing a certificate does not
    wait for RSA key generation. `take` never blocks on the thread: an empty pool generates the
    key on the spot. `close` stops the thread."""

    def __init__(self, spec: WorkloadKey, size: int = 6) -> None:
        self.spec = spec
        self._keys: queue.Queue[WorkloadPrivateKey] = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="meshconform-keys", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        while not self._stop.is_set():
            key = generate_key(self.spec)
            while not self._stop.is_set():
                try:
                    self._keys.put(key, timeout=0.2)
                    break
                except queue.Full:
                    continue

    def take(self) -> WorkloadPrivateKey:
        try:
            return self._keys.get_nowait()
        except queue.Empty:
            return generate_key(self.spec)

    def take_many(self, count: int) -> list[WorkloadPrivateKey]:
        """``count`` keys at once: the pool's, the rest generated in parallel threads (key
        generation runs outside the GIL), so a mesh's first certificates wait for the slowest
        key, not for all of them in turn."""
        if count <= 0:
            return []
        with ThreadPoolExecutor(min(count, 8), thread_name_prefix="meshconform-key") as pool:
            return list(pool.map(lambda _: self.take(), range(count)))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def _private_key_pem(key: WorkloadPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


class MeshCA:
    """A root CA for one mesh run; never written anywhere but the run's own directory."""

    def __init__(
        self,
        trust_domain: str = "cluster.local",
        workload_key: WorkloadKey = ISTIO_WORKLOAD_KEY,
        *,
        pool: bool = False,
    ) -> None:
        self.trust_domain = trust_domain
        self.workload_key = workload_key
        # one round of the default topology's six pods: keys made ahead are not wasted at close
        self._pool = KeyPool(workload_key) if pool else None
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain)])
        ski = x509.SubjectKeyIdentifier.from_public_key(self._key.public_key())
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(secrets.randbits(127) | 1)
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + ROOT_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.root_pem = self._cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def root_cert(self) -> x509.Certificate:
        return self._cert

    def close(self) -> None:
        """Stop the key pool's thread (if any)."""
        if self._pool is not None:
            self._pool.close()

    def workload_keys(self, count: int) -> list[WorkloadPrivateKey]:
        """``count`` workload keys made in parallel, for issuing many certificates at once."""
        if self._pool is not None:
            return self._pool.take_many(count)
        return [generate_key(self.workload_key) for _ in range(count)]

    def issue_workload(
        self,
        namespace: str,
        service_account: str,
        ttl: dt.timedelta,
        now: dt.datetime | None = None,
        key: WorkloadPrivateKey | None = None,
    ) -> IssuedCert:
        """Issue a workload certificate for spiffe://<td>/ns/<namespace>/sa/<service_account>."""
        if ttl <= dt.timedelta(0):
            raise ValueError(f"certificate TTL must be positive, got {ttl}")
        if key is None:
            key = self._pool.take() if self._pool is not None else generate_key(self.workload_key)
        not_before = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
        not_after = not_before + ttl
        serial = secrets.randbits(128) or 1
        spiffe = f"spiffe://{self.trust_domain}/ns/{namespace}/sa/{service_account}"
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            # An empty subject makes the SAN extension critical (RFC 5280 4.2.1.6), as in Istio.
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        return IssuedCert(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            key_pem=_private_key_pem(key),
            serial=serial,
            not_before=not_before,
            not_after=not_after,
        )
