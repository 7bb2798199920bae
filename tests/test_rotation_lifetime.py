"""Where a certificate's lifetime starts for Istio's agent: when it got it, not at NotBefore.

Istio's agent rotates at `ExpireTime - ratio * (ExpireTime - CreatedTime)` (rotateTime,
security/pkg/nodeagent/cache/secretcache.go; CreatedTime is `time.Now()` when the CA answered),
while istiod backdates NotBefore by ClockSkewGracePeriod = 2 minutes
(security/pkg/pki/util/generate_cert.go, genCertTemplateFromCSR). The real dump below shows both:
NotBefore 01:30:52, Envoy's `last_updated` of the `default` secret 01:32:52.262, NotAfter 24 h
after 01:32:52. Measured from NotBefore, a 30 s certificate would rotate at 0.9 of its lifetime.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from conftest import TESTDATA

from pytest_meshconform.istio.sidecar_dump import parse_envoy_secrets
from pytest_meshconform.plugin.rotation import RotationResult

SECRETS = TESTDATA / "secrets"


def _result(dump: Path, observed_at: dt.datetime) -> RotationResult:
    if not dump.is_file():
        pytest.skip(f"shared test data absent: {dump}")
    secrets = parse_envoy_secrets(dump.read_text())
    default = secrets.secret("default")
    assert secrets.workload is not None and default is not None
    return RotationResult(
        workload="w.ns",
        old=secrets.workload,
        new=secrets.workload,
        observed_at=observed_at,
        poll_interval=0.05,
        requests_before=1,
        requests_after=1,
        old_received_at=default.last_updated,
    )


def test_istio_lifetime_starts_when_the_sidecar_got_the_certificate() -> None:
    received = dt.datetime(2023, 5, 15, 1, 32, 52, 262000, tzinfo=dt.UTC)  # the dump's
    seen = _result(SECRETS / "istio_config_dump.json", received + dt.timedelta(hours=12))
    assert seen.old.not_before == received.replace(microsecond=0) - dt.timedelta(minutes=2)
    assert seen.lifetime_start == received
    assert seen.lifetime == dt.timedelta(hours=24) - dt.timedelta(milliseconds=262)
    assert seen.fraction_elapsed == pytest.approx(0.5, abs=1e-5)
    # the lifetime in Go's words (24h), not as Python prints a timedelta (23:59:59.738000)
    assert "of the old lifetime 24h from 2023-05-15T01:32:52.262000+00:00)" in str(seen)


def test_a_time_outside_the_certificate_falls_back_to_not_before() -> None:
    # SPIRE's dump: the secret's last_updated (2024-10-25) predates the certificate (10-27).
    dump = SECRETS / "spire_config_dump.json"
    seen = _result(dump, dt.datetime(2024, 10, 27, 22, 14, 32, tzinfo=dt.UTC))
    assert seen.old_received_at is not None and seen.old_received_at < seen.old.not_before
    assert seen.lifetime_start == seen.old.not_before
    assert seen.lifetime == seen.old.lifetime
    assert seen.fraction_elapsed == pytest.approx(0.5)
