"""Certificates as a sidecar holds them: SPIFFE IDs, PEM chains, X.509-SVIDs and their
verification, Envoy's ``/certs``, lifetimes.

Both backends fetch the same raw material from a proxy (the secrets of Envoy's
``/config_dump``, read by :mod:`.config_dump`; Envoy's ``/certs``; ``istioctl proxy-config
secret -o json``), so the suites can say which identity a workload holds and whether its chain
leads to the mesh root.

Choices where the sources leave room:

- Serial numbers are lowercase hex of the serial's big-endian bytes, as istioctl prints them
  and as Envoy 1.40's ``/certs`` shows them (BoringSSL ``BN_bn2hex``): ``0193a5...``, with
  the leading zero digit of the first byte kept. Older istioctl printed ``%x`` of the integer
  (``193a5...``); serials from ``/certs`` are normalised to the same form so the two compare.
- SPIFFE IDs follow github.com/spiffe/spiffe standards/SPIFFE-ID.md strictly, as go-spiffe
  does: lowercase ``spiffe`` scheme and trust domain, no userinfo/port/query/fragment, no
  percent-encoding, no empty/``.``/``..`` segments, no trailing ``/``, at most 2048 bytes and a
  trust domain of at most 255. An X.509-SVID carries exactly one URI SAN (X509-SVID.md).
- Times are aware UTC datetimes (JSON timestamps: :mod:`.protojson`).
- Work is linear in the input: PEM blocks are found in one pass (a BEGIN line is paired with
  the next END line), and messages quote at most a few items of the offending value.

Errors are :class:`CertError`, whose message names the field or certificate at fault.
"""

from __future__ import annotations

import base64
import binascii
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from pytest_meshconform.evidence.protojson import (
    ProtoJsonError,
    field,
    fragment,
    json_list,
    json_object,
    load_json_object,
    optional_string,
    parse_timestamp,
)

__all__ = [
    "CertError",
    "EnvoyCert",
    "SpiffeId",
    "WorkloadCert",
    "aware_utc",
    "checked_lifetime",
    "lifetime_elapsed",
    "load_pem_chain",
    "parse_envoy_certs",
    "parse_spiffe_id",
    "serial_from_int",
    "serial_hex",
    "trust_domain_problem",
]

_SPIFFE_SCHEME = "spiffe://"
_MAX_SPIFFE_ID_BYTES = 2048
_MAX_TRUST_DOMAIN_BYTES = 255
_TRUST_DOMAIN_CHARS = frozenset(string.ascii_lowercase + string.digits + ".-_")
_PATH_SEGMENT_CHARS = frozenset(string.ascii_letters + string.digits + ".-_")

_HEX = re.compile(r"[0-9A-Fa-f]+")
_PEM_BEGIN_LINE = re.compile(r"-----BEGIN ([^\r\n-]*)-----")
_PEM_END_LINE = re.compile(r"-----END ([^\r\n-]*)-----")


class CertError(ValueError):
    """Input that is not what it claims to be: a bad dump, PEM, SPIFFE ID or chain."""


def _rfc3339(moment: datetime) -> str:
    """A UTC instant as istioctl prints it (``2023-05-16T01:32:52Z``), microseconds if any."""
    moment = moment.astimezone(UTC).replace(tzinfo=None)
    # isoformat, not strftime: glibc's %Y prints year 1 as "1", not "0001"
    return moment.isoformat(timespec="microseconds" if moment.microsecond else "seconds") + "Z"


def aware_utc(moment: object, name: str) -> datetime:
    """``moment`` in UTC; a naive datetime is refused because its zone would be a guess."""
    if not isinstance(moment, datetime):
        raise CertError(f"{name} must be a datetime, got {type(moment).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise CertError(f"{name} must be timezone-aware, got naive {moment.isoformat()}")
    return moment.astimezone(UTC)


# --- SPIFFE IDs -----------------------------------------------------------------------------


def trust_domain_problem(trust_domain: str) -> str | None:
    if not trust_domain:
        return "trust domain is empty"
    if "@" in trust_domain:
        return "userinfo is not allowed in the trust domain"
    if ":" in trust_domain:
        return "a port (or ':') is not allowed in the trust domain"
    if "%" in trust_domain:
        return "percent-encoded characters are not allowed in the trust domain"
    if any(char in string.ascii_uppercase for char in trust_domain):
        return "trust domain must be lowercase"
    bad = sorted(set(trust_domain) - _TRUST_DOMAIN_CHARS)
    if bad:
        return f"trust domain has characters outside [a-z0-9.-_]: {fragment(''.join(bad))}"
    if len(trust_domain) > _MAX_TRUST_DOMAIN_BYTES:
        return f"trust domain is {len(trust_domain)} bytes, more than {_MAX_TRUST_DOMAIN_BYTES}"
    return None


def _path_problem(path: str) -> str | None:
    if path == "":
        return None
    if not path.startswith("/"):
        return "path must be empty or start with '/'"
    if path.endswith("/"):
        return "path must not end with '/'"
    for segment in path[1:].split("/"):
        if segment == "":
            return "path has an empty segment ('//')"
        if segment in (".", ".."):
            return f"path segment {segment!r} is a relative path modifier"
        if "%" in segment:
            return f"percent-encoded characters are not allowed in the path: {fragment(segment)}"
        bad = sorted(set(segment) - _PATH_SEGMENT_CHARS)
        if bad:
            return (
                f"path segment {fragment(segment)} has characters outside [A-Za-z0-9.-_]: "
                f"{fragment(''.join(bad))}"
            )
    return None


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A SPIFFE ID; ``str()`` gives the URI back. Construction validates like parsing does."""

    trust_domain: str
    path: str = ""

    def __post_init__(self) -> None:
        problem = trust_domain_problem(self.trust_domain) or _path_problem(self.path)
        if problem is None and len(str(self)) > _MAX_SPIFFE_ID_BYTES:
            problem = f"SPIFFE ID is longer than {_MAX_SPIFFE_ID_BYTES} bytes"
        if problem is not None:
            raise CertError(f"invalid SPIFFE ID {fragment(str(self))}: {problem}")

    def __str__(self) -> str:
        return f"{_SPIFFE_SCHEME}{self.trust_domain}{self.path}"

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path[1:].split("/")) if self.path else ()

    @property
    def namespace(self) -> str | None:
        """The Kubernetes namespace when the path is Istio's ``/ns/<ns>/sa/<sa>``."""
        return self.segments[1] if self._is_istio_identity() else None

    @property
    def service_account(self) -> str | None:
        """The service account when the path is Istio's ``/ns/<ns>/sa/<sa>``."""
        return self.segments[3] if self._is_istio_identity() else None

    def _is_istio_identity(self) -> bool:
        segments = self.segments
        return len(segments) == 4 and segments[0] == "ns" and segments[2] == "sa"


def parse_spiffe_id(uri: str) -> SpiffeId:
    """Parse ``spiffe://<trust domain><path>``, refusing anything SPIFFE-ID.md forbids."""
    if not isinstance(uri, str):
        raise CertError(f"a SPIFFE ID must be a str, got {type(uri).__name__}")
    if not uri.isascii():
        raise CertError(f"invalid SPIFFE ID {fragment(uri)}: not ASCII")
    if len(uri) > _MAX_SPIFFE_ID_BYTES:
        raise CertError(
            f"invalid SPIFFE ID {fragment(uri)}: {len(uri)} bytes, more than {_MAX_SPIFFE_ID_BYTES}"
        )
    if not uri.startswith(_SPIFFE_SCHEME):
        if uri[: len(_SPIFFE_SCHEME)].lower() == _SPIFFE_SCHEME:
            problem = "scheme must be lowercase 'spiffe'"
        else:
            problem = "scheme must be 'spiffe://'"
        raise CertError(f"invalid SPIFFE ID {fragment(uri)}: {problem}")
    rest = uri[len(_SPIFFE_SCHEME) :]
    if "?" in rest or "#" in rest:
        raise CertError(f"invalid SPIFFE ID {fragment(uri)}: query and fragment are not allowed")
    slash = rest.find("/")
    trust_domain, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    return SpiffeId(trust_domain, path)


# --- PEM and certificates -------------------------------------------------------------------


def serial_from_int(serial: int) -> str:
    """Lowercase hex of the serial's big-endian bytes (Go ``SerialNumber.Bytes()``)."""
    magnitude = abs(serial)
    if magnitude == 0:
        return "00"  # RFC 5280 forbids it; Go would print nothing, BoringSSL "0"
    return magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "big").hex()


def serial_hex(cert: x509.Certificate) -> str:
    """The serial as istioctl and Envoy's ``/certs`` print it: ``0193a543fe...``."""
    return serial_from_int(cert.serial_number)


def _subject_text(cert: x509.Certificate) -> str:
    try:
        text = cert.subject.rfc4514_string()
    except ValueError:
        return "unreadable subject"
    return repr(text) if text else "empty subject"


def _describe(cert: x509.Certificate, role: str) -> str:
    return f"{role} serial {serial_hex(cert)} ({_subject_text(cert)})"


def _pem_blocks(text: str) -> list[tuple[str, str, str]]:
    """(BEGIN label, body, END label) of every block, in one pass over ``text``.

    Each BEGIN line is matched with the first END line after it; a BEGIN line without one, or
    another BEGIN line before it, is an error. Every character is looked at a bounded number of
    times (a lazy ``BEGIN(.*?)END`` regex rescans the rest of the text from every BEGIN line).
    """
    blocks: list[tuple[str, str, str]] = []
    position = 0
    while (begin := text.find("-----BEGIN ", position)) >= 0:
        begin_line = _PEM_BEGIN_LINE.match(text, begin)
        end = -1 if begin_line is None else text.find("-----END ", begin_line.end())
        end_line = None if end < 0 else _PEM_END_LINE.match(text, end)
        if begin_line is None or end_line is None:
            raise CertError("PEM has a BEGIN line without its matching END line")
        if text.find("-----BEGIN ", begin_line.end(), end) >= 0:
            raise CertError("PEM has a BEGIN line without its matching END line")
        blocks.append((begin_line.group(1), text[begin_line.end() : end], end_line.group(1)))
        position = end_line.end()
    return blocks


def load_pem_chain(pem: bytes | str) -> tuple[x509.Certificate, ...]:
    """Every ``CERTIFICATE`` block of ``pem``, in order (leaf first for a chain).

    Text between blocks is ignored (RFC 7468 explanatory text); any other block type, a block
    without its END line, bad base64 or DER that is not a certificate is an error.
    """
    if isinstance(pem, bytes | bytearray):
        try:
            text = bytes(pem).decode("ascii")
        except UnicodeDecodeError as exc:
            raise CertError(f"PEM is not ASCII (byte {exc.start})") from exc
    elif isinstance(pem, str):
        if not pem.isascii():
            raise CertError("PEM is not ASCII")
        text = pem
    else:
        raise CertError(f"PEM must be bytes or str, got {type(pem).__name__}")
    blocks = _pem_blocks(text)
    if not blocks:
        raise CertError(f"no PEM CERTIFICATE block in {fragment(text)}")
    chain: list[x509.Certificate] = []
    for index, (label, body, end_label) in enumerate(blocks):
        if label != end_label:
            raise CertError(f"PEM block {index}: BEGIN {label!r} ends with END {end_label!r}")
        if label != "CERTIFICATE":
            raise CertError(f"PEM block {index} is {label!r}, not 'CERTIFICATE'")
        try:
            der = base64.b64decode("".join(body.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CertError(f"PEM block {index}: bad base64 ({exc})") from exc
        try:
            chain.append(x509.load_der_x509_certificate(der))
        except ValueError as exc:
            raise CertError(f"PEM block {index}: not an X.509 certificate ({exc})") from exc
    return tuple(chain)


def _leaf_spiffe_id(leaf: x509.Certificate) -> SpiffeId:
    """The one URI SAN of an X.509-SVID, parsed."""
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise CertError(
            f"{_describe(leaf, 'leaf')} has no subjectAltName: an X.509-SVID carries its "
            "SPIFFE ID there"
        ) from exc
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise CertError(f"{_describe(leaf, 'leaf')} has unreadable extensions: {exc}") from exc
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise CertError(
            f"{_describe(leaf, 'leaf')} has {len(uris)} URI SANs {fragment(uris)}; "
            "an X.509-SVID has exactly one"
        )
    try:
        return parse_spiffe_id(uris[0])
    except CertError as exc:
        raise CertError(f"{_describe(leaf, 'leaf')}: {exc}") from exc


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _check_validity(cert: x509.Certificate, role: str, at: datetime) -> None:
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if at < not_before:
        raise CertError(
            f"not yet valid: {_describe(cert, role)} is valid from {_rfc3339(not_before)}, "
            f"checked at {_rfc3339(at)}"
        )
    if at > not_after:
        raise CertError(
            f"expired: {_describe(cert, role)} expired at {_rfc3339(not_after)}, "
            f"checked at {_rfc3339(at)}"
        )


def _path_to_roots(
    chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate]
) -> list[tuple[str, x509.Certificate]]:
    """Leaf, chain certificates and the trusted root that signed them; the reason if none.

    Trusted roots are tried before the chain's own certificates at every step, so a copy of
    the root at the end of the chain (Istio sends one) is never mistaken for the anchor.
    """
    current, role = chain[0], "leaf"
    pool = [(f"chain[{index}]", cert) for index, cert in enumerate(chain) if index > 0]
    path = [(role, current)]
    for _ in range(len(chain)):
        for root in roots:
            if root.subject == current.issuer and _signed_by(current, root):
                path.append(("root", root))
                return path
        if current.issuer == current.subject and _signed_by(current, current):
            raise CertError(
                f"no path to roots: the chain ends in the self-signed {_describe(current, role)}, "
                f"which is not among the {len(roots)} given root(s)"
            )
        issuer_name = current.issuer.rfc4514_string()
        named = [c for c in roots if c.subject == current.issuer]
        named += [c for _, c in pool if c.subject == current.issuer]
        if not named:
            raise CertError(
                f"no path to roots: {_describe(current, role)} was issued by {issuer_name!r}, "
                f"and neither the chain nor the {len(roots)} given root(s) hold a certificate "
                "of that name"
            )
        step = next(
            (entry for entry in pool if entry[1] in named and _signed_by(current, entry[1])),
            None,
        )
        if step is None:
            raise CertError(
                f"wrong signature: {_describe(current, role)} names {issuer_name!r} as its "
                f"issuer, but its signature does not verify with the key of any of the "
                f"{len(named)} certificate(s) of that name"
            )
        pool.remove(step)
        role, current = step
        path.append(step)
    raise CertError("no path to roots: the chain never reaches a trusted root")


@dataclass(frozen=True, slots=True)
class WorkloadCert:
    """A workload's X.509-SVID: who it is, which certificate, and how long it lives."""

    spiffe_id: SpiffeId
    serial: str
    not_before: datetime
    not_after: datetime
    chain: tuple[x509.Certificate, ...]

    @classmethod
    def from_chain(cls, chain: Sequence[x509.Certificate]) -> WorkloadCert:
        """Build from certificates, leaf first; the leaf must be a valid X.509-SVID."""
        if not chain:
            raise CertError("empty certificate chain: no leaf")
        leaf = chain[0]
        return cls(
            spiffe_id=_leaf_spiffe_id(leaf),
            serial=serial_hex(leaf),
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            chain=tuple(chain),
        )

    @classmethod
    def from_pem(cls, pem: bytes | str) -> WorkloadCert:
        """Build from a PEM chain, leaf first (a cert-chain.pem, an SDS ``inline_string``)."""
        return cls.from_chain(load_pem_chain(pem))

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def lifetime(self) -> timedelta:
        """``not_after - not_before``; istiod backdates not_before by 2 minutes for clock skew."""
        return self.not_after - self.not_before

    def lifetime_elapsed(self, at: datetime) -> float:
        """Fraction of ``not_before..not_after`` elapsed at ``at`` (not clamped to 0..1)."""
        return lifetime_elapsed(self.not_before, self.not_after, at)

    def verify(self, roots: Iterable[x509.Certificate], at: datetime) -> None:
        """Raise :class:`CertError` unless the chain leads to one of ``roots``, valid at ``at``.

        The reason comes first from our own checks (expired, not yet valid, no path to roots,
        wrong signature), then the whole chain goes through cryptography's RFC 5280 path
        validation with its *client* verifier: Istio's leaves have an empty subject and only a
        URI SAN, which the server verifier rejects for want of a DNS name to match (checked
        with cryptography 50.0.2), while a client certificate needs no name.
        """
        moment = aware_utc(at, "at")
        anchors = tuple(roots)
        if not anchors:
            raise CertError(f"no roots given to verify {self.spiffe_id} against")
        _check_validity(self.leaf, "leaf", moment)
        for role, cert in _path_to_roots(self.chain, anchors)[1:]:
            _check_validity(cert, role, moment)
        verifier = PolicyBuilder().store(Store(list(anchors))).time(moment).build_client_verifier()
        try:
            verifier.verify(self.leaf, list(self.chain[1:]))
        except VerificationError as exc:
            raise CertError(
                f"chain of {self.spiffe_id} (leaf serial {self.serial}) fails RFC 5280 path "
                f"validation: {exc}"
            ) from exc


# --- Envoy /certs ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnvoyCert:
    """One certificate as Envoy's ``/certs`` admin endpoint describes it.

    ``context_index`` is the position in ``certificates[]`` (one per TLS context), ``kind``
    the list it came from. ``days_until_expiration`` is left out: whole days say nothing about
    a certificate that lives for an hour.
    """

    context_index: int
    kind: Literal["ca_cert", "cert_chain"]
    path: str | None
    serial: str
    uris: tuple[str, ...]
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    valid_from: datetime
    expiration_time: datetime


def _parse_cert_details(
    item: Any, context_index: int, kind: Literal["ca_cert", "cert_chain"], where: str
) -> EnvoyCert:
    details = json_object(item, where)
    path = optional_string(field(details, "path", where), f"{where}.path")
    serial = field(details, "serial_number", where)
    if not isinstance(serial, str) or _HEX.fullmatch(serial) is None:
        raise CertError(f"{where}.serial_number: not a hex serial: {fragment(serial)}")
    names: dict[str, list[str]] = {"uri": [], "dns": [], "ip_address": []}
    sans = field(details, "subject_alt_names", where)
    for index, san in enumerate(
        json_list([] if sans is None else sans, f"{where}.subject_alt_names")
    ):
        san_at = f"{where}.subject_alt_names[{index}]"
        san = json_object(san, san_at)
        present = [key for key in names if field(san, key, san_at) is not None]
        if len(present) != 1:
            raise CertError(f"{san_at}: expected one of uri, dns, ip_address, got {fragment(san)}")
        value = field(san, present[0], san_at)
        if not isinstance(value, str):
            raise CertError(f"{san_at}.{present[0]}: expected a string, got {fragment(value)}")
        names[present[0]].append(value)
    valid_from = field(details, "valid_from", where)
    expiration = field(details, "expiration_time", where)
    if valid_from is None or expiration is None:
        raise CertError(f"{where}: valid_from and expiration_time are required")
    return EnvoyCert(
        context_index=context_index,
        kind=kind,
        path=path,
        serial=serial_from_int(int(serial, 16)),
        uris=tuple(names["uri"]),
        dns_names=tuple(names["dns"]),
        ip_addresses=tuple(names["ip_address"]),
        valid_from=parse_timestamp(valid_from, f"{where}.valid_from"),
        expiration_time=parse_timestamp(expiration, f"{where}.expiration_time"),
    )


def parse_envoy_certs(data: bytes | str | Mapping[str, Any]) -> tuple[EnvoyCert, ...]:
    """Parse Envoy's ``/certs``: every ``ca_cert`` and ``cert_chain`` entry, in order."""
    try:
        return _envoy_certs(data)
    except ProtoJsonError as exc:
        raise CertError(str(exc)) from exc


def _envoy_certs(data: bytes | str | Mapping[str, Any]) -> tuple[EnvoyCert, ...]:
    document = load_json_object(data, "/certs output")
    contexts = document.get("certificates")
    if contexts is None:
        if document:
            raise CertError(
                "/certs output has no 'certificates' list; keys "
                f"{fragment(sorted(map(str, document)))}"
            )
        return ()
    certs: list[EnvoyCert] = []
    for context_index, context in enumerate(json_list(contexts, "certificates")):
        where = f"certificates[{context_index}]"
        context = json_object(context, where)
        kinds: tuple[Literal["ca_cert", "cert_chain"], ...] = ("ca_cert", "cert_chain")
        for kind in kinds:
            entries = field(context, kind, where)
            if entries is None:
                continue
            for index, entry in enumerate(json_list(entries, f"{where}.{kind}")):
                certs.append(
                    _parse_cert_details(entry, context_index, kind, f"{where}.{kind}[{index}]")
                )
    return tuple(certs)


# --- Lifetime -------------------------------------------------------------------------------


def checked_lifetime(
    start: datetime, end: datetime, names: tuple[str, str] = ("created", "expires")
) -> tuple[datetime, datetime, timedelta]:
    """``start`` and ``end`` in UTC and the time between; an error names the two times when
    ``end`` is not after ``start``."""
    start, end = aware_utc(start, names[0]), aware_utc(end, names[1])
    if end <= start:
        raise CertError(f"{names[1]} {_rfc3339(end)} is not after {names[0]} {_rfc3339(start)}")
    return start, end, end - start


def lifetime_elapsed(not_before: datetime, not_after: datetime, at: datetime) -> float:
    """Fraction of ``not_before..not_after`` gone at ``at``: 0.5 is half-life, >1 expired."""
    start, _, lifetime = checked_lifetime(not_before, not_after, ("not_before", "not_after"))
    return (aware_utc(at, "at") - start) / lifetime
