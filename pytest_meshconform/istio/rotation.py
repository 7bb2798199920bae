"""When Istio's agent rotates a workload certificate (pure).

The agent's SecretManager (security/pkg/nodeagent/cache/secretcache.go, ``rotateTime``) renews a
certificate at a fraction of its lifetime, with jitter so that a mesh's proxies do not all ask
the CA at once. The local mesh's agent rotates by it; the suites' rotation fixture waits by
:func:`rotation_window`.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from pytest_meshconform.evidence.certs import CertError, aware_utc, checked_lifetime

__all__ = ["rotation_delay", "rotation_time", "rotation_window"]

_DEFAULT_RANDOM = random.Random()


def _rotation_lifetime(
    created: datetime, expires: datetime, grace_ratio: float, jitter: float
) -> tuple[datetime, timedelta]:
    """``expires`` in UTC and the lifetime, once the rotation inputs are checked."""
    _, end, lifetime = checked_lifetime(created, expires)
    for name, ratio in (("grace_ratio", grace_ratio), ("jitter", jitter)):
        if not 0.0 <= ratio <= 1.0:
            raise CertError(f"{name} must be within 0..1, got {ratio!r}")
    return end, lifetime


def rotation_time(
    created: datetime,
    expires: datetime,
    grace_ratio: float = 0.5,
    jitter: float = 0.01,
    rand: random.Random | None = None,
) -> datetime:
    """When Istio's agent rotates a certificate it obtained at ``created``.

    Mirrors ``rotateTime`` in istio/istio security/pkg/nodeagent/cache/secretcache.go (read at
    commit 30bb74c779f98f67e74d0798c434228d36ce496e): it draws ``rand.Float64()`` (uniform in
    [0, 1)) and then ``rand.IntN(2)*2-1`` (a fair sign, -1 or +1), sets
    ``ratio = grace_ratio + float * jitter * sign`` clamped to [0, 1], and rotates at
    ``expires - ratio * (expires - created)``. Here the same two draws are
    ``rand.random()`` then ``rand.randrange(2) * 2 - 1``, in that order (``rand`` defaults to
    a module-level ``random.Random``). Defaults are the agent's ``SECRET_GRACE_PERIOD_RATIO``
    (0.5) and ``SECRET_GRACE_PERIOD_RATIO_JITTER`` (0.01, Istio's release notes for
    istio/istio#52102: about +-15 minutes around the 12-hour mark of a 24-hour certificate).

    ``created`` is the agent's clock when the CA answered, which Istio does not publish; the
    secret's ``last_updated`` in Envoy's dump is a little later, and the certificate's
    not_before a little earlier (istiod backdates it by its 2-minute ClockSkewGracePeriod).
    Resolution is the microsecond (Go's is the nanosecond).
    """
    end, lifetime = _rotation_lifetime(created, expires, grace_ratio, jitter)
    draw = _DEFAULT_RANDOM if rand is None else rand
    magnitude = draw.random()
    sign = draw.randrange(2) * 2 - 1
    ratio = min(1.0, max(0.0, grace_ratio + magnitude * jitter * sign))
    return end - lifetime * ratio


def rotation_delay(
    created: datetime,
    expires: datetime,
    now: datetime,
    grace_ratio: float = 0.5,
    jitter: float = 0.01,
    rand: random.Random | None = None,
) -> timedelta:
    """How long after ``now`` the agent rotates: :func:`rotation_time` minus now, at least 0.

    This is the value ``rotateTime`` itself returns (it floors a negative delay at zero).
    """
    moment = aware_utc(now, "now")
    delay = rotation_time(created, expires, grace_ratio, jitter, rand) - moment
    return max(delay, timedelta(0))


def rotation_window(
    created: datetime, expires: datetime, grace_ratio: float = 0.5, jitter: float = 0.01
) -> tuple[datetime, datetime]:
    """Earliest and latest instant :func:`rotation_time` can return, whatever the draws."""
    end, lifetime = _rotation_lifetime(created, expires, grace_ratio, jitter)
    largest = min(1.0, grace_ratio + jitter)
    smallest = max(0.0, grace_ratio - jitter)
    return end - lifetime * largest, end - lifetime * smallest
