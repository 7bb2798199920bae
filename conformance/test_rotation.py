"""Certificates rotate before they expire, near half their lifetime, without dropping requests.

Istio's agent rotates at `expire - SECRET_GRACE_PERIOD_RATIO * lifetime`, ratio 0.5 with a jitter
of 0.01 (security/pkg/nodeagent/cache/secretcache.go, rotateTime): between 0.49 and 0.51 of the
lifetime, counted from when the agent got the certificate (rotateTime's CreatedTime; istiod
backdates NotBefore by 2 minutes, so NotBefore is not where the lifetime starts). What we measure
adds two bounded errors: X.509 times have one-second resolution, and
the new serial is seen at most one poll (plus SDS propagation, tens of ms) after it is served.

Ambient: ztunnel renews halfway through the certificate's validity, counted from NotBefore,
without jitter (``WorkloadCertificate::refresh_at``, ztunnel src/tls/certificate.rs:
``not_before + valid_for / 2``).
"""

from __future__ import annotations

import datetime as dt

import pytest

from pytest_meshconform import Mesh, RotationWatcher, WorkloadHandle, load_pem_chain

pytestmark = pytest.mark.mesh_features("certificates", "rotation")

GRACE_RATIO = 0.5  # SECRET_GRACE_PERIOD_RATIO
JITTER = 0.01  # SECRET_GRACE_PERIOD_RATIO_JITTER


def test_rotation_before_expiry(
    mesh: Mesh,
    rotation: RotationWatcher,
    sleep: WorkloadHandle,
    httpbin: WorkloadHandle,
) -> None:
    """A workload certificate is rotated before it expires, at Istio's grace period (half the
    lifetime, 1 % jitter; ztunnel: half of NotBefore..NotAfter), and requests keep succeeding
    across the switch."""
    # Skips at once, naming the TTL in force, when a rotation would take longer than
    # LONGEST_ROTATION_WATCH (the built-in suites default to 10 s certificates, see conftest.py).
    seen = rotation.watch(httpbin, client=sleep)
    assert seen.observed_at < seen.old.not_after, f"rotated only after expiry: {seen}"
    if httpbin.dataplane == "ambient":
        # ztunnel: from NotBefore, halfway, no jitter
        lifetime = seen.old.not_after - seen.old.not_before
        fraction = (seen.observed_at - seen.old.not_before) / lifetime
        seconds, jitter, who = lifetime.total_seconds(), 0.0, "ztunnel renews"
    else:
        # The lifetime as Istio's agent counts it: from when it got the certificate, not from
        # NotBefore, which istiod backdates by 2 minutes (RotationResult.lifetime_start).
        fraction = seen.fraction_elapsed
        seconds, jitter, who = seen.lifetime.total_seconds(), JITTER, "Istio rotates"
    measurement = (1.0 + seen.poll_interval + 0.1) / seconds  # X.509 second, poll, SDS
    low, high = GRACE_RATIO - jitter - measurement, GRACE_RATIO + jitter + measurement
    assert low <= fraction <= high, (
        f"rotated at {fraction:.3f} of the lifetime, {who} at"
        f" {GRACE_RATIO}±{jitter} (measurement slack {measurement:.3f}): {seen}"
    )
    seen.new.verify(load_pem_chain(mesh.root_cert), dt.datetime.now(dt.UTC))
    assert seen.requests_before > 0 and seen.requests_after > 0, (
        f"the request loop did not span the switch: {seen}"
    )
    assert seen.failures == [], "requests failed during rotation: " + seen.describe_failures()
