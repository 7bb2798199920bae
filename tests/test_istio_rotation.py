"""Istio's agent rotation time (``istio/rotation.py``).

Expected values: hand arithmetic on Istio's ``rotateTime`` formula
(security/pkg/nodeagent/cache/secretcache.go), shown next to each case.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest

from pytest_meshconform.evidence.certs import CertError
from pytest_meshconform.istio.rotation import rotation_delay, rotation_time, rotation_window

UTC = dt.UTC


def _utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


class FixedDraws(random.Random):
    """Answers Istio's two draws with chosen values, recording the order they were asked in."""

    def __init__(self, magnitude: float, coin: int) -> None:
        super().__init__(0)
        self.magnitude, self.coin = magnitude, coin
        self.calls: list[str] = []

    def random(self) -> float:
        self.calls.append("random")
        return self.magnitude

    def randrange(self, *args: Any, **kwargs: Any) -> int:
        self.calls.append(f"randrange{args}")
        return self.coin


DAY_START = _utc(2024, 1, 1, 0, 0, 0)
DAY_END = _utc(2024, 1, 2, 0, 0, 0)


@pytest.mark.parametrize(
    ("magnitude", "coin", "grace_ratio", "jitter", "expected"),
    [
        # sign +1: ratio 0.5 + 0.5*0.01 = 0.505; grace 0.505*86400 s = 43632 s = 12:07:12;
        # rotate at 24:00 - 12:07:12 = 11:52:48.
        (0.5, 1, 0.5, 0.01, _utc(2024, 1, 1, 11, 52, 48)),
        # sign -1: ratio 0.495; grace 42768 s = 11:52:48; rotate at 12:07:12.
        (0.5, 0, 0.5, 0.01, _utc(2024, 1, 1, 12, 7, 12)),
        # no jitter: exactly half-way.
        (0.9, 1, 0.5, 0.0, _utc(2024, 1, 1, 12, 0, 0)),
        # ratio 1 + 0.99*0.01 clamps to 1: rotate at creation.
        (0.99, 1, 1.0, 0.01, DAY_START),
        # ratio 0 - 0.99*0.01 clamps to 0: rotate at expiry.
        (0.99, 0, 0.0, 0.01, DAY_END),
        # SECRET_GRACE_PERIOD_RATIO 0.1 (istio docs' example): 0.1 * 24h = 2:24 before expiry.
        (0.0, 1, 0.1, 0.01, _utc(2024, 1, 1, 21, 36, 0)),
    ],
)
def test_rotation_time_mirrors_istio(
    magnitude: float, coin: int, grace_ratio: float, jitter: float, expected: dt.datetime
) -> None:
    draws = FixedDraws(magnitude, coin)
    assert rotation_time(DAY_START, DAY_END, grace_ratio, jitter, rand=draws) == expected
    assert draws.calls == ["random", "randrange(2,)"]  # Float64() first, then IntN(2)


def test_rotation_delay_window_and_defaults() -> None:
    one_hour_in = _utc(2024, 1, 1, 1, 0, 0)
    # 11:52:48 - 01:00:00 = 10:52:48.
    assert rotation_delay(DAY_START, DAY_END, one_hour_in, rand=FixedDraws(0.5, 1)) == (
        dt.timedelta(hours=10, minutes=52, seconds=48)
    )
    assert rotation_delay(DAY_START, DAY_END, _utc(2024, 1, 1, 13), rand=FixedDraws(0.5, 1)) == (
        dt.timedelta(0)
    )
    # Defaults 0.5 +- 0.01: grace between 0.49*24h = 11:45:36 and 0.51*24h = 12:14:24.
    earliest, latest = rotation_window(DAY_START, DAY_END)
    assert (earliest, latest) == (_utc(2024, 1, 1, 11, 45, 36), _utc(2024, 1, 1, 12, 14, 24))
    seeded = random.Random(1234)
    for _ in range(200):
        assert earliest <= rotation_time(DAY_START, DAY_END, rand=seeded) <= latest
    assert earliest <= rotation_time(DAY_START, DAY_END) <= latest


def test_rotation_inputs_are_checked() -> None:
    with pytest.raises(CertError, match="expires 2024-01-01T00:00:00Z is not after created"):
        rotation_time(DAY_END, DAY_START)
    with pytest.raises(CertError, match="created must be timezone-aware"):
        rotation_time(dt.datetime(2024, 1, 1), DAY_END)
    with pytest.raises(CertError, match=r"grace_ratio must be within 0\.\.1, got 1\.5"):
        rotation_window(DAY_START, DAY_END, grace_ratio=1.5)
    with pytest.raises(CertError, match=r"jitter must be within 0\.\.1, got -0\.1"):
        rotation_time(DAY_START, DAY_END, jitter=-0.1)
