"""Ambient mode on the local mesh, proven from the wire (issue 20): a user's suite run by
pytester on a topology with an ambient namespace, real Envoys playing each ambient pod's
ztunnel, real curl, openssl and tcpdump.

Where the expected values come from (docs/istio-model.md, "Ambient on the wire"):

- HBONE: ztunnel tunnels to the destination pod's port 15008 (src/config.rs
  ``inbound_addr``) over TLS 1.3 only (src/tls/lib.rs ``tls_versions``) with ALPN ``h2``
  (src/tls/certificate.rs ``client_config``), without SNI (src/tls/workload.rs
  ``client_config`` sets ``enable_sni = false``, src/tls/certificate.rs);
- STRICT refuses plaintext with a reset, PERMISSIVE takes it: istiod's
  ``istio_converted_static_strict`` policy and ztunnel's verdict (the model, transcribed from
  istiod's golden files), and istio.io's "Use Layer 4 security policy", whose denied curl ends
  "Connection reset by peer" (exit 56);
- an L4 AuthorizationPolicy selects callers by principal: istio.io's "Use Layer 4 security
  policy" (an ALLOW policy naming the `sleep` service account's principal);
- the identity a workload's ztunnel presents: ``spiffe://<trust domain>/ns/<ns>/sa/<sa>``
  (Istio's SPIFFE identity format), with an ECDSA P-256 key (src/tls/csr.rs
  ``CsrOptions::generate``).

The layout is not sleep/httpbin: `shop` is ambient (a `cashier` client with its own service
account, a `ledger` serving HTTP on 8080 behind Service port 80 and a TCP line echo on 5432),
`batch` has no data plane (`nightly`).
"""

from __future__ import annotations

import re

import pytest
from local_helpers import assert_runs_left_nothing, needs_local_mesh

from pytest_meshconform.backends.local import host

SHOP_TOPOLOGY = """\
namespaces:
  - name: shop
    dataplane: ambient
    workloads:
      - {name: cashier, kind: sleep, serviceAccount: shop-cashier}
      - name: ledger
        kind: httpbin
        serviceAccount: shop-ledger
        ports: [8080, {port: 5432, serves: tcp-echo}]
    services:
      - name: ledger
        selector: {app: ledger}
        ports:
          - {name: http, port: 80, targetPort: 8080}
          - {name: tcp-postgres, port: 5432}
  - name: batch
    dataplane: none
    workloads:
      - {name: nightly, kind: sleep}
"""

SUITE = r'''
import os
import re

import pytest
from cryptography import x509

from pytest_meshconform import (
    Capturer,
    CertReader,
    PolicyApplier,
    TlsProber,
    WorkloadLookup,
    authorization_policy,
    peer_authentication,
)

LEDGER_ID = "spiffe://cluster.local/ns/shop/sa/shop-ledger"
CASHIER_ID = "spiffe://cluster.local/ns/shop/sa/shop-cashier"


def test_handles_say_their_data_plane(workload: WorkloadLookup, mesh) -> None:
    assert workload("cashier", "shop").dataplane == "ambient"
    assert workload("ledger", "shop").dataplane == "ambient"
    assert workload("nightly", "batch").dataplane == "none"
    assert not workload("ledger", "shop").has_sidecar
    print("MESH PIDS:", " ".join(map(str, mesh.pids())))


def test_ambient_to_ambient_is_hbone_on_the_wire(
    workload: WorkloadLookup, capture: Capturer, mesh
) -> None:
    cashier, ledger = workload("cashier", "shop"), workload("ledger", "shop")
    marker = "/anything/hbone-" + os.urandom(6).hex()
    with capture(cashier) as at_client, capture(ledger, port="http") as at_server:
        result = cashier.curl(ledger, path=marker)
        echo = cashier.tcp(ledger, port="tcp-postgres", send=b"ping\n")
    assert result.status == 200 and marker.encode() in result.body, result
    assert echo.received == b"hello ping\n", echo
    for cap in (at_client, at_server):
        tunnels = [f for f in cap.flows if f.server_port == 15008]
        # the HTTP request and the TCP echo are two CONNECT streams, over one pooled
        # connection or two (ztunnel pools HBONE connections: src/proxy/pool.rs)
        assert tunnels, cap
        for flow in tunnels:
            assert flow.client[0] == mesh.pod_ip(cashier.workload), flow
            hello = flow.tls.client_hello
            assert hello is not None, flow
            assert hello.alpn == ("h2",), hello
            assert hello.supported_versions == ("TLS1.3",), hello
            assert hello.sni is None, hello
            assert flow.tls.version == "TLS1.3", flow.tls
            assert marker.encode() not in flow.client_stream, flow
            assert b"ping" not in flow.client_stream, flow
        # nothing of the app's went in plaintext: no flow to 8080 or 5432, no HTTP seen
        assert not [f for f in cap.flows if f.server_port in (8080, 5432, 80)], cap
        assert not cap.plaintext_flows, cap


def test_server_presents_its_spiffe_identity_on_15008(
    workload: WorkloadLookup, cert_of: CertReader, mesh
) -> None:
    """The certificate the ledger's ztunnel presents on 15008, read by openssl from a pod
    without a data plane (TLS 1.3: the server's certificate comes before the client's)."""
    nightly, ledger = workload("nightly", "batch"), workload("ledger", "shop")
    out = nightly.exec(
        ["sh", "-c", f"openssl s_client -connect {mesh.pod_ip(ledger.workload)}:15008 -alpn h2"
         " -showcerts </dev/null 2>&1"],
    )
    text = out.stdout.decode()
    pem = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)
    assert pem, text
    cert = x509.load_pem_x509_certificate(pem.group(0).encode())
    uris = cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == [LEDGER_ID], uris
    assert "ALPN protocol: h2" in text and "TLSv1.3" in text, text
    held = cert_of(ledger)
    assert str(held.spiffe_id) == LEDGER_ID, held
    assert held.chain[0].serial_number == cert.serial_number, held


def test_hbone_port_speaks_tls13_only(workload: WorkloadLookup, tls_probe: TlsProber) -> None:
    """ztunnel's rustls offers TLS 1.3 only (src/tls/lib.rs, tls_versions): a TLS 1.2
    ClientHello to 15008 gets no ServerHello, a TLS 1.3 one gets a TLS 1.3 answer."""
    nightly, ledger = workload("nightly", "batch"), workload("ledger", "shop")
    tls12, tls13 = tls_probe(
        nightly,
        ledger,
        {"TLS1.2": ["--tlsv1.2", "--tls-max", "1.2"], "TLS1.3": ["--tlsv1.3"]},
    )
    assert tls12.server_hello is None, str(tls12)
    assert tls13.server_hello is not None and tls13.server_hello[0] == "TLS1.3", str(tls13)
    assert tls13.flow is not None and tls13.flow.server_port == 15008, tls13


def test_permissive_accepts_plaintext_from_a_pod_without_data_plane(
    apply_policy: PolicyApplier, workload: WorkloadLookup, capture: Capturer
) -> None:
    nightly, ledger = workload("nightly", "batch"), workload("ledger", "shop")
    apply_policy(peer_authentication("default", "shop", mode="PERMISSIVE"))
    with capture(ledger, port="http") as cap:
        result = nightly.curl(ledger)
    assert result.status == 200, result
    plain = [f for f in cap.flows_from(nightly) if f.server_port == 8080]
    assert plain and plain[0].http_requests, cap


def test_strict_resets_plaintext_and_keeps_hbone(
    apply_policy: PolicyApplier, workload: WorkloadLookup, capture: Capturer
) -> None:
    nightly, cashier = workload("nightly", "batch"), workload("cashier", "shop")
    ledger = workload("ledger", "shop")
    apply_policy(peer_authentication("default", "shop", mode="STRICT"))
    with capture(ledger, port="http") as cap:
        refused = nightly.curl(ledger)
        refused_tcp = nightly.tcp(ledger, port="tcp-postgres", send=b"ping\n")
    assert refused.reset and refused.outcome == "reset", refused
    # closed at once: a reset when the bytes sent had arrived (the kernel resets a socket closed
    # with unread data), else a plain close; never an answer
    assert refused_tcp.outcome in ("reset", "closed") and not refused_tcp.received, refused_tcp
    assert [f for f in cap.flows_from(nightly) if f.server_port == 8080], cap
    assert cashier.curl(ledger).status == 200


def test_ztunnel_certificate_is_ecdsa_p256(workload: WorkloadLookup, cert_of: CertReader) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    key = cert_of(workload("ledger", "shop")).leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1", key


def test_l4_authorization_by_principal(
    apply_policy: PolicyApplier, workload: WorkloadLookup
) -> None:
    cashier, ledger = workload("cashier", "shop"), workload("ledger", "shop")
    nightly = workload("nightly", "batch")
    others_only = authorization_policy(
        "ledger-callers", "shop", "ALLOW",
        [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/someone-else"]}}]}],
        selector={"app": "ledger"},
    )
    apply_policy(others_only)
    denied = cashier.curl(ledger)
    assert denied.status is None and denied.exit_code in (52, 56), denied
    assert nightly.curl(ledger).status is None  # no identity: no principal matches
    apply_policy(authorization_policy(
        "ledger-callers", "shop", "ALLOW",
        [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/shop-cashier"]}}]}],
        selector={"app": "ledger"},
    ))
    assert cashier.curl(ledger).status == 200
    refused = nightly.curl(ledger)
    assert refused.status is None and refused.reset, refused
'''


@needs_local_mesh
def test_ambient_pods_speak_hbone_and_enforce_ztunnels_verdicts(
    pytester: pytest.Pytester,
) -> None:
    pytester.makefile(".yaml", shop=SHOP_TOPOLOGY)
    pytester.makepyfile(test_shop=SUITE)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-s", "--mesh-topology=shop.yaml")
    result.assert_outcomes(passed=8)
    output = result.stdout.str()
    assert_runs_left_nothing(output)
    pids = re.search(r"MESH PIDS: ([\d ]+)", output)
    assert pids, output[-2000:]
    alive = [pid for pid in map(int, pids.group(1).split()) if host.proc_start_ticks(pid)]
    assert not alive, f"mesh processes left running: {alive}"


AMBIENT_FAULTS = [
    # ztunnel ignores the policies istiod derives from STRICT: plaintext is answered
    (
        "strict-as-permissive",
        "strict_resets",
        "*AssertionError: nightly.batch -> http://ledger.shop:80/headers: HTTP 200*",
    ),
    # certificates name another service account: the identity test sees it
    ("wrong-spiffe-id", "spiffe_identity", "*sa/shop-ledger-impostor*"),
    # HBONE's server accepts TLS 1.2: the TLS 1.3-only test gets a ServerHello
    ("tls10-allowed", "tls13_only", "*AssertionError: TLS1.2: curl exit*ServerHello TLS1.2*"),
    # ztunnel's policies match any peer where they name principals: the cashier gets in
    (
        "authz-ignores-principals",
        "l4_authorization",
        "*assert denied.status is None and denied.exit_code in (52, 56)*",
    ),
]


@needs_local_mesh
@pytest.mark.parametrize(("fault", "selected", "line"), AMBIENT_FAULTS)
def test_the_ambient_tests_fail_on_a_broken_ztunnel(
    pytester: pytest.Pytester, fault: str, selected: str, line: str
) -> None:
    """No false greens: each test above fails when the local ztunnel breaks what it proves."""
    pytester.makefile(".yaml", shop=SHOP_TOPOLOGY)
    pytester.makepyfile(test_shop=SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "--mesh-topology=shop.yaml", f"--mesh-fault={fault}", "-k", selected
    )
    result.assert_outcomes(failed=1, deselected=7)
    result.stdout.fnmatch_lines([line])
    assert_runs_left_nothing(result.stdout.str())
