"""The TLS posture model (`istio/tls.py`) against Istio's source and real sidecar dumps.

Expected values are literal from istio/istio: `SupportedCiphers` and `BuildInboundTLS`
(pilot/pkg/security/authn/utils/utils.go), `GetMinTLSVersion` (same file),
`defaultUpstreamCommonTLSContext` (pilot/pkg/networking/core/cluster_tls.go), and the inbound
and outbound `tls_params` of real sidecar config dumps (shared test data, skipped when absent).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TESTDATA

from pytest_meshconform.backends.kube.control_plane import IstioDataError, parse_mesh_config
from pytest_meshconform.istio.tls import (
    ISTIO_INBOUND_CIPHER_SUITES,
    ISTIO_WORKLOAD_KEY,
    MIN_PROTOCOL_VERSIONS,
    TlsParams,
    WorkloadKey,
    accepted_versions,
    inbound_tls_params,
    negotiable,
    parse_min_protocol_version,
    server_choice,
    upstream_tls_params,
)
from pytest_meshconform.settings import MIN_TLS_VERSIONS

SUPPORTED_CIPHERS = [
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
]
DUMPS = TESTDATA / "istio-dumps"
REPO = Path(__file__).resolve().parents[1]


def test_inbound_tls_is_build_inbound_tls() -> None:
    assert inbound_tls_params().envoy() == {
        "tls_minimum_protocol_version": "TLSv1_2",
        "tls_maximum_protocol_version": "TLSv1_3",
        "cipher_suites": SUPPORTED_CIPHERS,
    }
    assert list(ISTIO_INBOUND_CIPHER_SUITES) == SUPPORTED_CIPHERS
    # No CBC, RC4 or 3DES suite: every one is an AEAD (GCM) suite.
    assert all("GCM" in c and "CBC" not in c and "RC4" not in c for c in SUPPORTED_CIPHERS)


@pytest.mark.parametrize(
    ("mesh_min", "envoy_min", "versions"),
    [
        ("TLS_AUTO", "TLSv1_2", ("TLS1.2", "TLS1.3")),
        ("TLSV1_2", "TLSv1_2", ("TLS1.2", "TLS1.3")),
        ("TLSV1_3", "TLSv1_3", ("TLS1.3",)),
    ],
)
def test_min_protocol_version_is_get_min_tls_version(
    mesh_min: Any, envoy_min: str, versions: tuple[str, ...]
) -> None:
    params = inbound_tls_params(mesh_min)
    assert params.minimum == envoy_min and params.maximum == "TLSv1_3"
    assert accepted_versions(params) == versions


def test_min_protocol_version_values() -> None:
    assert MIN_PROTOCOL_VERSIONS == MIN_TLS_VERSIONS == ("TLS_AUTO", "TLSV1_2", "TLSV1_3")
    assert parse_min_protocol_version(None) == "TLS_AUTO"
    assert parse_min_protocol_version("TLSV1_3") == "TLSV1_3"
    with pytest.raises(ValueError, match=r"'TLSV1_0'.*accepted values: TLS_AUTO, TLSV1_2"):
        parse_min_protocol_version("TLSV1_0")


def test_mesh_config_min_protocol_version() -> None:
    assert parse_mesh_config("", "istio-system").min_tls_version == "TLS_AUTO"
    info = parse_mesh_config("meshMTLS:\n  minProtocolVersion: TLSV1_3\n", "istio-system")
    assert info.min_tls_version == "TLSV1_3"
    with pytest.raises(IstioDataError, match="minProtocolVersion 'TLSv1_3'"):
        parse_mesh_config("meshMTLS:\n  minProtocolVersion: TLSv1_3\n", "istio-system")


def test_upstream_tls_is_default_upstream_common_tls_context() -> None:
    assert upstream_tls_params().envoy() == {
        "tls_minimum_protocol_version": "TLSv1_2",
        "tls_maximum_protocol_version": "TLSv1_3",
    }


def test_workload_key_and_negotiable_suites() -> None:
    assert WorkloadKey("RSA", 2048) == ISTIO_WORKLOAD_KEY
    rsa_ok = [c for c in SUPPORTED_CIPHERS if negotiable(c, ISTIO_WORKLOAD_KEY)]
    assert rsa_ok == [
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
        "AES128-GCM-SHA256",
    ]
    ec_ok = [c for c in SUPPORTED_CIPHERS if negotiable(c, WorkloadKey("EC", 256))]
    assert ec_ok == ["ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256"]


def test_server_choice_follows_istios_order() -> None:
    params = inbound_tls_params()
    everything = (*reversed(SUPPORTED_CIPHERS), "ECDHE-RSA-CHACHA20-POLY1305")
    assert server_choice(params, everything, ISTIO_WORKLOAD_KEY) == "ECDHE-RSA-AES256-GCM-SHA384"
    assert server_choice(params, ("ECDHE-RSA-AES128-SHA",), ISTIO_WORKLOAD_KEY) is None


def _tls_params(document: Any) -> Iterator[tuple[str, Any]]:
    """(kind, tls_params) of every TLS context of a config dump."""
    if isinstance(document, dict):
        kind = document.get("@type", "")
        context = document.get("common_tls_context")
        if isinstance(context, dict) and "tls_params" in context:
            yield ("downstream" if "Downstream" in kind else "upstream"), context["tls_params"]
        for value in document.values():
            yield from _tls_params(value)
    elif isinstance(document, list):
        for value in document:
            yield from _tls_params(value)


# Sidecar dumps whose istiod rendered the inbound mTLS chains (Istio 1.9.1 .. 1.22.3).
REAL_SIDECARS = ["scout__config_dump.json", "mplb__envoy_config_dump.json"]


@pytest.mark.parametrize("name", REAL_SIDECARS)
def test_model_matches_real_sidecar_dumps(name: str) -> None:
    path: Path = DUMPS / name
    if not path.is_file():
        pytest.skip(f"shared test data absent: {path}")
    found = list(_tls_params(json.loads(path.read_text())))
    downstream = {json.dumps(p, sort_keys=True) for k, p in found if k == "downstream"}
    assert downstream, f"no DownstreamTlsContext in {name}"
    for text in downstream:
        params = TlsParams.from_envoy(json.loads(text))
        assert params == inbound_tls_params(), f"{name}: inbound {text}"
    upstream = [TlsParams.from_envoy(p) for k, p in found if k == "upstream"]
    assert all(p == upstream_tls_params() for p in upstream), f"{name}: upstream {upstream}"


@pytest.mark.parametrize("name", REAL_SIDECARS)
def test_posture_suite_reads_real_inbound_contexts(name: str) -> None:
    """The posture suite's config check, on what real istiod wrote: every TLS chain of
    virtualInbound carries SupportedCiphers, TLS 1.2..1.3 and requires a client certificate."""
    from pytest_meshconform.istio.sidecar_dump import inbound_tls_contexts

    path: Path = DUMPS / name
    if not path.is_file():
        pytest.skip(f"shared test data absent: {path}")
    contexts = inbound_tls_contexts(json.loads(path.read_text()))
    assert contexts, f"no TLS chain in {name}'s virtualInbound"
    for chain, context in contexts:
        params = TlsParams.from_envoy(context["common_tls_context"].get("tls_params"))
        assert params == inbound_tls_params(), f"{name} {chain}: {params}"
        assert context["require_client_certificate"] is True, f"{name} {chain}"
