"""Istio's TLS posture for sidecar mTLS (pure): versions, cipher suites, workload keys.

What istiod puts in every sidecar's TLS contexts and what Istio's agent asks its CA for, so that
the local mesh renders the same contexts and the kube backend can read them back. All paths are
in istio/istio:

- Inbound (the server side of sidecar mTLS): ``BuildInboundTLS``
  (pilot/pkg/security/authn/utils/utils.go; pilot/pkg/networking/plugin/authn before 1.10)
  sets ``tls_params`` to ``SupportedCiphers``, minimum ``GetMinTLSVersion(meshConfig.meshMTLS
  .minProtocolVersion)`` (TLSv1_2 unless the mesh says TLSV1_3), maximum TLSv1_3, and
  ``require_client_certificate``.
- Outbound ISTIO_MUTUAL (the client side): ``defaultUpstreamCommonTLSContext``
  (pilot/pkg/networking/core/cluster_tls.go): TLSv1_2..TLSv1_3 and no cipher list (Envoy's
  client defaults).
- Workload keys: the agent's CSR key is RSA of ``WORKLOAD_RSA_KEY_SIZE`` bits (2048) unless
  ``ECC_SIGNATURE_ALGORITHM`` is set (default empty): pilot/cmd/pilot-agent/options/options.go,
  ``GenCSR`` (security/pkg/pki/util/generate_csr.go).
- Validity: the CA signs ``NotAfter = now + TTL`` and, since Istio 1.10 (istio/istio#32176),
  ``NotBefore = now - ClockSkewGracePeriod`` (2 minutes): ``genCertTemplateFromCSR``
  (security/pkg/pki/util/generate_cert.go).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Literal

__all__ = [
    "CLOCK_SKEW_GRACE_PERIOD",
    "ISTIO_INBOUND_CIPHER_SUITES",
    "ISTIO_WORKLOAD_KEY",
    "MIN_PROTOCOL_VERSIONS",
    "TLS_VERSIONS",
    "MinProtocolVersion",
    "TlsParams",
    "WorkloadKey",
    "accepted_versions",
    "inbound_tls_params",
    "negotiable",
    "parse_min_protocol_version",
    "server_choice",
    "upstream_tls_params",
]

# `SupportedCiphers` (pilot/pkg/security/authn/utils/utils.go), in istiod's order, which is
# the server's preference (Envoy's DownstreamTlsContext.prefer_client_ciphers is false).
ISTIO_INBOUND_CIPHER_SUITES: Final[tuple[str, ...]] = (
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
)

# MeshConfig.TLSConfig.TLSProtocol (istio/api mesh/v1alpha1/config.proto): the values
# `meshMTLS.minProtocolVersion` accepts.
MinProtocolVersion = Literal["TLS_AUTO", "TLSV1_2", "TLSV1_3"]
MIN_PROTOCOL_VERSIONS: Final[tuple[MinProtocolVersion, ...]] = ("TLS_AUTO", "TLSV1_2", "TLSV1_3")

# Envoy's TlsParameters.TlsProtocol names, oldest first, and the wire module's names for them.
_ENVOY_VERSIONS: Final = ("TLSv1_0", "TLSv1_1", "TLSv1_2", "TLSv1_3")
TLS_VERSIONS: Final[tuple[str, ...]] = ("TLS1.0", "TLS1.1", "TLS1.2", "TLS1.3")

CLOCK_SKEW_GRACE_PERIOD: Final = timedelta(minutes=2)


@dataclass(frozen=True, slots=True)
class TlsParams:
    """An Envoy ``common_tls_context.tls_params``: version bounds and the TLS 1.2 cipher list
    (empty: Envoy's defaults)."""

    minimum: str  # Envoy's name, e.g. "TLSv1_2"
    maximum: str
    cipher_suites: tuple[str, ...] = ()

    def envoy(self) -> dict[str, Any]:
        """The ``tls_params`` JSON, as istiod sends it and Envoy's config dump shows it."""
        params: dict[str, Any] = {
            "tls_minimum_protocol_version": self.minimum,
            "tls_maximum_protocol_version": self.maximum,
        }
        if self.cipher_suites:
            params["cipher_suites"] = list(self.cipher_suites)
        return params

    @classmethod
    def from_envoy(cls, params: Any) -> TlsParams:
        """Read a ``tls_params`` (snake_case or camelCase) from a config dump; Envoy's defaults
        when absent (TLSv1_2 minimum, TLSv1_3 maximum for a server)."""
        if not isinstance(params, dict):
            params = {}

        def get(snake: str, camel: str) -> Any:
            return params.get(snake, params.get(camel))

        minimum = get("tls_minimum_protocol_version", "tlsMinimumProtocolVersion")
        maximum = get("tls_maximum_protocol_version", "tlsMaximumProtocolVersion")
        ciphers = get("cipher_suites", "cipherSuites") or ()
        return cls(
            minimum=str(minimum) if minimum not in (None, "TLS_AUTO") else "TLSv1_2",
            maximum=str(maximum) if maximum not in (None, "TLS_AUTO") else "TLSv1_3",
            cipher_suites=tuple(str(c) for c in ciphers),
        )


def parse_min_protocol_version(value: object) -> MinProtocolVersion:
    """Validate a ``meshMTLS.minProtocolVersion`` (absent/None = TLS_AUTO); the error names the
    accepted values (istiod's enum has no TLS 1.0 or 1.1)."""
    if value is None or value == "":
        return "TLS_AUTO"
    for accepted in MIN_PROTOCOL_VERSIONS:
        if value == accepted:
            return accepted
    raise ValueError(
        f"invalid meshMTLS.minProtocolVersion {value!r}; accepted values:"
        f" {', '.join(MIN_PROTOCOL_VERSIONS)}"
    )


def _min_version(mesh_min: MinProtocolVersion) -> str:
    """``GetMinTLSVersion``: TLSv1_3 for TLSV1_3, TLSv1_2 for anything else."""
    return "TLSv1_3" if mesh_min == "TLSV1_3" else "TLSv1_2"


def inbound_tls_params(min_protocol_version: MinProtocolVersion = "TLS_AUTO") -> TlsParams:
    """The server side of sidecar mTLS (``BuildInboundTLS``)."""
    return TlsParams(_min_version(min_protocol_version), "TLSv1_3", ISTIO_INBOUND_CIPHER_SUITES)


def upstream_tls_params() -> TlsParams:
    """The client side of ISTIO_MUTUAL (``defaultUpstreamCommonTLSContext``)."""
    return TlsParams("TLSv1_2", "TLSv1_3")


def accepted_versions(params: TlsParams) -> tuple[str, ...]:
    """The protocol versions a context with these bounds completes a handshake with, in the
    wire module's names (``TLS1.2``), oldest first."""
    low, high = _ENVOY_VERSIONS.index(params.minimum), _ENVOY_VERSIONS.index(params.maximum)
    return TLS_VERSIONS[low : high + 1]


@dataclass(frozen=True, slots=True)
class WorkloadKey:
    """A workload certificate's key: ``RSA`` with its modulus size, or ``EC`` with its curve
    size."""

    algorithm: Literal["RSA", "EC"]
    bits: int

    def __str__(self) -> str:
        return f"{self.algorithm} {self.bits}"


# WORKLOAD_RSA_KEY_SIZE=2048, ECC_SIGNATURE_ALGORITHM="" (pilot-agent options.go; GenCSR).
ISTIO_WORKLOAD_KEY: Final = WorkloadKey("RSA", 2048)


def negotiable(cipher: str, key: WorkloadKey) -> bool:
    """Whether a TLS 1.2 suite can be chosen by a server whose certificate has this key: an
    ECDHE-ECDSA suite needs an EC key, ECDHE-RSA and the static-RSA suites an RSA key
    (RFC 5246 section 7.4.2, RFC 8422 section 5.3)."""
    if cipher.startswith("ECDHE-ECDSA-"):
        return key.algorithm == "EC"
    return key.algorithm == "RSA"


def server_choice(params: TlsParams, offered: tuple[str, ...], key: WorkloadKey) -> str | None:
    """The TLS 1.2 suite the server picks from a client's offer: the first of its own list (its
    preference) that the client offered and its key allows; None when there is none."""
    for cipher in params.cipher_suites:
        if cipher in offered and negotiable(cipher, key):
            return cipher
    return None
