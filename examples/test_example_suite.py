"""An example suite, typed the way we recommend writing yours (mypy --strict checks it).

Each fixture's type is exported by `pytest_meshconform`; annotate with them and your editor
and mypy know what `cap`, `seen` or `cert` are. Run it on the local mesh (as root):
`pytest examples/test_example_suite.py`; on a cluster: `pytest --mesh-cluster=kind
examples/test_example_suite.py`. The payments suite (examples/payments/) has its own topology.
"""

from __future__ import annotations

import datetime as dt

import pytest

from pytest_meshconform import (
    MTLS,
    PLAINTEXT,
    RESET,
    Call,
    CallTable,
    Capturer,
    CertReader,
    Mesh,
    PolicyApplier,
    ServicePortLister,
    WorkloadHandle,
    WorkloadLookup,
    XfccReader,
    load_pem_chain,
    peer_authentication,
)


@pytest.mark.mesh_features("mtls", "peer-authentication", "capture", "xfcc")
def test_strict_namespace_refuses_plaintext(
    apply_policy: PolicyApplier,
    naked_sleep: WorkloadHandle,
    sleep: WorkloadHandle,
    httpbin: WorkloadHandle,
    capture: Capturer,
    xfcc: XfccReader,
) -> None:
    """A STRICT namespace refuses plaintext from a pod without a sidecar, and a sidecar client's
    mTLS arrives with its SPIFFE ID (the docstring is the test's description in the reports)."""
    apply_policy(peer_authentication("default", "foo", mode="STRICT"))
    with capture(httpbin) as cap:
        refused = naked_sleep.curl(httpbin)
    assert refused.reset, refused  # reset by the server's sidecar (not `refused`: nothing there)
    assert cap.flows_from(naked_sleep), cap  # the capture saw the attempt

    seen = xfcc(sleep, httpbin)
    assert seen is not None, "mTLS from a sidecar carries X-Forwarded-Client-Cert"
    assert seen[0].uri == (sleep.spiffe_id,)


@pytest.mark.mesh_features("mtls", "peer-authentication", "xfcc")
def test_a_table_of_calls_under_a_strict_namespace(call_table: CallTable) -> None:
    """Rows of calls with their literal outcomes, run by the same runner as the built-in
    reachability suite: applied, called, compared, kept in the reports. The outcomes are the
    built-in suites' own (MTLS: the server saw XFCC naming the client; PLAINTEXT; RESET: no
    filter chain matched, no response); spell out your own with `Outcome(...)`."""
    call_table(
        "foo STRICT, seen from each namespace",
        [
            Call("sleep.foo", "httpbin.foo", MTLS),
            Call("sleep.bar", "httpbin.foo", MTLS),
            Call("sleep.legacy", "httpbin.foo", RESET),
            Call("sleep.legacy", "httpbin.bar", PLAINTEXT),
        ],
        policies=[peer_authentication("default", "foo", mode="STRICT")],
    )


@pytest.mark.mesh_features("mtls", "peer-authentication")
def test_the_mesh_does_what_the_policy_model_predicts(
    apply_policy: PolicyApplier, mesh_service_ports: ServicePortLister, workload: WorkloadLookup
) -> None:
    """Predict with Istio's model (`mesh_service_ports`' `predicted`), then observe the mesh."""
    apply_policy(
        """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: bar}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin, namespace: bar}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: DISABLE}
"""
    )
    (port,) = (p for p in mesh_service_ports(namespaces=["bar"]) if p.key == "httpbin.bar:8000")
    assert port.predicted == "DISABLE", port
    plain = workload("sleep", "legacy").curl(workload("httpbin", "bar"))
    assert plain.ok, f"DISABLE on the workload should accept plaintext: {plain}"


@pytest.mark.mesh_features("mtls", "peer-authentication")
def test_every_service_port_of_a_strict_namespace_refuses_plaintext(
    apply_policy: PolicyApplier,
    mesh_service_ports: ServicePortLister,
    naked_sleep: WorkloadHandle,
) -> None:
    """Per-service assertions over every Service port the mesh has (`mesh_service_ports`),
    each with the mode Istio's policies in force predict."""
    apply_policy(peer_authentication("default", "foo", mode="STRICT"))
    for port in mesh_service_ports(namespaces=["foo"]):
        assert port.predicted == "STRICT", port
        if port.protocol.is_http:
            refused = naked_sleep.curl(port.url("/headers"))
            assert refused.reset, f"{port.key} did not reset plaintext: {refused}"


@pytest.mark.mesh_features("certificates")
def test_served_certificate_chains_to_the_mesh_root(
    mesh: Mesh, httpbin: WorkloadHandle, cert_of: CertReader
) -> None:
    """httpbin's sidecar serves its own SPIFFE ID, in a certificate that chains to the mesh root."""
    cert = cert_of(httpbin)
    assert str(cert.spiffe_id) == httpbin.spiffe_id
    cert.verify(load_pem_chain(mesh.root_cert), dt.datetime.now(dt.UTC))


def test_exec_in_a_pod(sleep: WorkloadHandle) -> None:
    """Commands run inside the workload's pod, as the app's user."""
    result = sleep.exec(["curl", "--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"curl "), result.stdout
