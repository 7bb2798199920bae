"""Identity: the SPIFFE IDs the server sees and the sidecars serve are the right ones.

Istio issues each workload `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`; the
server's sidecar writes `By=<its own ID>;...;URI=<the client's ID>` into
X-Forwarded-Client-Cert (APPEND_FORWARD with Subject, URI, DNS).

Ambient: XFCC exists only where an Envoy (a sidecar or a waypoint) adds it; ztunnel forwards
TCP and writes none. What the server's ztunnel saw of the client is its peer identity, the
SPIFFE ID of the client certificate on the HBONE connection (``identity_from_connection``,
ztunnel src/tls/certificate.rs), which its L4 authorization judges (``assert_rbac``): an
AuthorizationPolicy allowing exactly the client's principal lets it in, one naming another
principal of its namespace does not. ztunnel's own certificate (what ``cert_of`` returns, what
it presents on 15008) names the workload's SPIFFE ID as a sidecar's does.
"""

from __future__ import annotations

import datetime as dt

import pytest

from pytest_meshconform import (
    Capturer,
    CertReader,
    Mesh,
    PolicyApplier,
    WorkloadHandle,
    WorkloadLookup,
    XfccReader,
    authorization_policy,
    load_pem_chain,
)

from .wire import HBONE_TLS_VERSIONS, TLS_VERSIONS_ALLOWED, no_keepalive

pytestmark = pytest.mark.mesh_features("mtls", "xfcc", "certificates")

SPIFFE = "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


@pytest.mark.parametrize(
    ("client_ns", "server_ns"), [("foo", "foo"), ("bar", "foo"), ("foo", "bar")]
)
def test_xfcc_names_client_and_server(
    mesh: Mesh,
    workload: WorkloadLookup,
    xfcc: XfccReader,
    apply_policy: PolicyApplier,
    client_ns: str,
    server_ns: str,
) -> None:
    """The server's sidecar forwards X-Forwarded-Client-Cert with one element: the client's
    SPIFFE ID as URI, the server's as By, and the client certificate's SHA-256 hash. Between
    ambient pods: no XFCC, and the server's ztunnel authorizes the client by exactly its SPIFFE
    ID."""
    client = workload("sleep", client_ns, skip_if_missing=True)
    server = workload("httpbin", server_ns, skip_if_missing=True)
    seen = xfcc(client, server)
    if server.dataplane == "ambient" and client.dataplane == "ambient":
        assert seen is None, f"ztunnel writes no X-Forwarded-Client-Cert, the app saw {seen}"
        _assert_ztunnel_sees(mesh, apply_policy, client, server)
        return
    assert seen is not None and len(seen) == 1, f"expected one XFCC element, got {seen}"
    element = seen[0]
    want_client = SPIFFE.format(
        trust_domain=mesh.trust_domain, namespace=client.namespace, service_account="sleep"
    )
    want_server = SPIFFE.format(
        trust_domain=mesh.trust_domain, namespace=server.namespace, service_account="httpbin"
    )
    assert element.uri == (want_client,), f"XFCC URI {element.uri}, want {want_client}"
    assert element.by == (want_server,), f"XFCC By {element.by}, want {want_server}"
    assert element.hash is not None and len(element.hash) == 64, f"XFCC Hash {element.hash}"


def _assert_ztunnel_sees(
    mesh: Mesh, apply_policy: PolicyApplier, client: WorkloadHandle, server: WorkloadHandle
) -> None:
    """The server's ztunnel admits the client under an ALLOW of exactly the client's principal
    (`<trust domain>/ns/<namespace>/sa/<service account>`) and refuses it under one naming
    another service account of the same namespace: it saw the client's own SPIFFE ID. The
    server is called by its pod address: a Service's waypoint (the ambient built-in `bar` has
    one) would stand between them, and the server's ztunnel would see the waypoint's identity
    (istio.io "Use Layer 4 security policy"); a waypoint for Service traffic is not on the path
    to a pod address (ztunnel's ``build_request``)."""
    __tracebackhide__ = True
    principal = client.spiffe_id.removeprefix("spiffe://")
    other = f"{principal}-someone-else"
    port = server.workload.container_ports[0]
    url = f"http://{mesh.pod_ip(server.workload)}:{port}/headers"
    for allowed, admitted in ((principal, True), (other, False)):
        apply_policy(
            authorization_policy(
                "who-may-call",
                server.namespace,
                rules=[{"from": [{"source": {"principals": [allowed]}}]}],
                selector={"app": server.workload.app},
            )
        )
        result = client.curl(url)
        if admitted:
            assert result.ok, f"ztunnel refused {client} under ALLOW {allowed}: {result}"
        else:
            assert result.reset, (
                f"ztunnel let {client} in under ALLOW {allowed}, so it did not judge the"
                f" client's own identity {client.spiffe_id}: {result}"
            )


@pytest.mark.parametrize(("name", "namespace"), [("httpbin", "foo"), ("sleep", "bar")])
def test_served_certificate(
    mesh: Mesh,
    workload: WorkloadLookup,
    cert_of: CertReader,
    name: str,
    namespace: str,
) -> None:
    """The certificate a sidecar serves names its workload's SPIFFE ID
    (spiffe://<trust domain>/ns/<namespace>/sa/<service account>), is valid now and chains to
    the mesh's root."""
    target = workload(name, namespace, skip_if_missing=True)
    cert = cert_of(target)
    want = SPIFFE.format(
        trust_domain=mesh.trust_domain, namespace=target.namespace, service_account=name
    )
    assert str(cert.spiffe_id) == want, f"{target} serves {cert.spiffe_id}, want {want}"
    now = dt.datetime.now(dt.UTC)
    assert cert.not_before <= now <= cert.not_after, (
        f"{target}'s certificate is not valid now: {cert.not_before} .. {cert.not_after}"
    )
    cert.verify(load_pem_chain(mesh.root_cert), now)  # raises CertError with the reason


@pytest.mark.mesh_features("capture")
def test_tls_version_on_the_wire(
    apply_policy: PolicyApplier,
    sleep: WorkloadHandle,
    httpbin: WorkloadHandle,
    capture: Capturer,
) -> None:
    """The TLS version the sidecars negotiate, read off the ServerHello on the wire, is one
    Istio allows: TLS 1.2 or 1.3 between sidecars, TLS 1.3 over HBONE between ztunnels
    (``tls_versions``, src/tls/lib.rs)."""
    apply_policy(no_keepalive(httpbin.namespace))
    with capture(httpbin) as cap:
        result = sleep.curl(httpbin)
    assert result.ok, f"{result}"
    hellos = [f.tls for f in cap.flows_from(sleep) if f.tls and f.tls.server_hello]
    assert hellos, f"no TLS handshake from {sleep} on the wire ({cap})"
    versions = {t.server_hello.version for t in hellos if t.server_hello}
    allowed = HBONE_TLS_VERSIONS if sleep.dataplane == "ambient" else TLS_VERSIONS_ALLOWED
    assert versions <= set(allowed), f"negotiated {versions} ({cap})"
