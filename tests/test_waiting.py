"""`poll`, the one wait loop: returns the first non-None value, or names what it waited for."""

from __future__ import annotations

import itertools

import pytest

from pytest_meshconform import WaitTimeout, poll


def test_returns_the_first_value_that_is_not_none() -> None:
    answers = iter([None, None, "ready"])
    assert poll(lambda: next(answers), timeout=10, interval=0.001, what="ready") == "ready"


def test_false_and_zero_are_values() -> None:
    assert poll(lambda: 0, timeout=0, interval=0.001, what="a number") == 0
    assert poll(lambda: False, timeout=0, interval=0.001, what="an answer") is False


def test_a_timeout_names_what_was_awaited() -> None:
    calls = itertools.count(1)

    def never() -> None:
        next(calls)

    with pytest.raises(
        WaitTimeout, match=r"^the sidecar ready: not so after 0\.05s \(looked \d+ times\)$"
    ):
        poll(
            never,
            timeout=0.05,
            interval=0.01,
            what="the sidecar ready",
        )
    assert next(calls) > 2  # it kept looking until the deadline


def test_looks_once_even_without_time() -> None:
    calls: list[int] = []
    with pytest.raises(WaitTimeout, match=r"\(looked 1 times\)"):
        poll(lambda: calls.append(1), timeout=0, interval=0.01, what="anything")
    assert calls == [1]


def test_a_failing_probe_is_not_not_yet() -> None:
    def probe() -> None:
        raise ConnectionRefusedError("admin socket gone")

    with pytest.raises(ConnectionRefusedError, match="admin socket gone"):
        poll(probe, timeout=10, interval=0.01, what="never")


class Flaky(Exception):
    """Stands for an error the caller knows may pass (an API server restarting)."""


def test_transient_errors_count_as_not_yet() -> None:
    answers = iter([Flaky("503"), Flaky("503"), "ready"])

    def probe() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert (
        poll(
            probe,
            timeout=10,
            interval=0.001,
            what="ready",
            transient=lambda error: isinstance(error, Flaky),
        )
        == "ready"
    )


def test_other_errors_still_propagate_at_once() -> None:
    with pytest.raises(ValueError, match="broken"):
        poll(
            lambda: (_ for _ in ()).throw(ValueError("broken")),
            timeout=10,
            interval=0.001,
            what="ready",
            transient=lambda error: isinstance(error, Flaky),
        )


def test_a_timeout_names_the_last_transient_error() -> None:
    count = itertools.count(1)

    def probe() -> None:
        raise Flaky(f"HTTP 503 number {next(count)}")

    with pytest.raises(WaitTimeout) as timed_out:
        poll(probe, timeout=0.05, interval=0.01, what="ready", transient=lambda e: True)
    errors = timed_out.value.transient_errors
    assert len(errors) > 2 and str(errors[-1]) == f"HTTP 503 number {len(errors)}"
    assert str(timed_out.value).endswith(
        f"; {len(errors)} transient errors, the last: HTTP 503 number {len(errors)}"
    )
