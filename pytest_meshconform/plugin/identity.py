"""Who is who, as the mesh shows it: `xfcc` (`XfccReader`), the X-Forwarded-Client-Cert a server
saw, and `cert_of` (`CertReader`), the workload certificate a sidecar serves now (read from its
Envoy admin `/config_dump`).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, final

import pytest

from pytest_meshconform.evidence.curl import HttpError, header_from_httpbin
from pytest_meshconform.mesh import Mesh, MeshError, Workload, ZtunnelCertificates
from pytest_meshconform.plugin.session import evidence_window
from pytest_meshconform.plugin.workloads import WorkloadHandle
from pytest_meshconform.report.exhibits import Evidence

if TYPE_CHECKING:
    from pytest_meshconform.evidence.certs import WorkloadCert
    from pytest_meshconform.evidence.xfcc import XfccElement

__all__ = ["CertReader", "XfccReader", "cert_of", "current_cert", "served_cert", "utc_text", "xfcc"]


@final
class XfccReader:
    """What `xfcc` returns: `xfcc(client, server, port=None)` requests the server's /headers
    from the client and returns the parsed X-Forwarded-Client-Cert the server saw, or None
    without one. `port` is a port of the server's Service, by number or name (by default its
    only HTTP port); one it does not expose raises `ServicePortError` before any request."""

    def __call__(
        self, client: WorkloadHandle, server: WorkloadHandle, *, port: int | str | None = None
    ) -> tuple[XfccElement, ...] | None:
        __tracebackhide__ = True
        from pytest_meshconform.evidence.xfcc import parse_xfcc

        result = client.curl(server, port=port, path="/headers")
        if not result.ok:
            raise HttpError(f"cannot read X-Forwarded-Client-Cert: {result}")
        header = header_from_httpbin(result.json(), "X-Forwarded-Client-Cert")
        if header is None:
            return None
        client.evidence.add_text(f"xfcc seen by {server.key}", header)
        elements = parse_xfcc(header)
        for element in elements:
            uris = ", ".join(element.uri) or "no URI"
            client.evidence.observed.identities.append(
                f"XFCC at {server.key} from {client.key}: URI={uris}"
                + (f" By={', '.join(element.by)}" if element.by else "")
            )
        return elements


@pytest.fixture
def xfcc() -> XfccReader:
    """`xfcc(client, server, port=None)`: request server's /headers (at a port of its Service)
    from client; the XFCC the server saw."""
    return XfccReader()


@final
class CertReader:
    """What `cert_of` returns: `cert_of(workload)` -> the `WorkloadCert` its sidecar serves now
    (read from the sidecar's Envoy admin `/config_dump`)."""

    def __init__(self, mesh: Mesh, evidence: Evidence) -> None:
        self._mesh = mesh
        self._evidence = evidence

    def __call__(self, target: WorkloadHandle | Workload) -> WorkloadCert:
        __tracebackhide__ = True
        return current_cert(self._mesh, target, self._evidence)


@pytest.fixture
def cert_of(mesh: Mesh, request: pytest.FixtureRequest) -> CertReader:
    """`cert_of(workload)`: the workload certificate its sidecar serves right now."""
    return CertReader(mesh, evidence_window(mesh, request))


def current_cert(
    mesh: Mesh, target: WorkloadHandle | Workload, evidence: Evidence | None
) -> WorkloadCert:
    __tracebackhide__ = True
    return served_cert(mesh, target, evidence)[0]


def served_cert(
    mesh: Mesh, target: WorkloadHandle | Workload, evidence: Evidence | None
) -> tuple[WorkloadCert, dt.datetime | None]:
    """The workload certificate the sidecar serves (an ambient workload's: the one its
    ztunnel holds for it), and when the proxy got it (Envoy's `last_updated` of its `default`
    secret; None when the dump does not say)."""
    __tracebackhide__ = True
    from pytest_meshconform.evidence.certs import CertError, WorkloadCert
    from pytest_meshconform.istio.envoy import WORKLOAD_SECRET
    from pytest_meshconform.istio.sidecar_dump import parse_envoy_secrets

    w = target.workload if isinstance(target, WorkloadHandle) else target
    if w.dataplane == "none":
        raise MeshError(f"{w.key} has no sidecar and is not ambient, so no workload certificate")
    if w.dataplane == "ambient" and isinstance(mesh, ZtunnelCertificates):
        # ztunnel's own dump: its `certificates` for the workload's identity (no Envoy there,
        # so no time of delivery either)
        try:
            held: WorkloadCert | None = WorkloadCert.from_pem(mesh.ztunnel_certificate_pem(w))
        except CertError as error:
            raise MeshError(f"the certificate ztunnel holds for {w.key}: {error}") from None
        got: dt.datetime | None = None
    else:
        secrets = parse_envoy_secrets(mesh.envoy_admin(w, "/config_dump"))
        held = secrets.workload
        served = secrets.secret(WORKLOAD_SECRET)
        got = served.last_updated if served is not None else None
    if held is None:
        raise MeshError(
            f"the sidecar of {w.key} serves no workload certificate (no 'default' secret)"
        )
    if evidence is not None:
        cert = held
        evidence.observed.touch(w.key)
        evidence.observed.identities.append(
            f"certificate of {w.key}: {cert.spiffe_id} serial {cert.serial[:16]} valid"
            f" {utc_text(cert.not_before)} to {utc_text(cert.not_after)}"
        )
        evidence.add_text(
            f"cert of {w.key}",
            f"{cert.spiffe_id} serial={cert.serial} not_before={cert.not_before.isoformat()}"
            f" not_after={cert.not_after.isoformat()}",
        )
    return held, got


def utc_text(moment: dt.datetime) -> str:
    """A time as users read it: with its date, in UTC (`2026-12-02 16:45:00 UTC`)."""
    return f"{moment.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC"
