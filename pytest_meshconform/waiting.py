"""One way to wait: poll a condition with a deadline (built on tenacity, the project's choice).

Tests and fixtures never sleep a fixed time; they wait for a fact (a new certificate serial,
processes gone, enough requests made) and give up at a deadline with a message saying what
was awaited. `poll` is that loop; tenacity gives it the stop and wait policies.

Every wait of both backends goes through it (docs/architecture.md, "Waiting"); a wait that
prints progress does so from its probe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import tenacity

__all__ = ["WaitTimeout", "poll"]

_T = TypeVar("_T")


class WaitTimeout(TimeoutError):
    """A condition did not hold before the deadline; the message names what was awaited.

    ``transient_errors``: the errors the probe raised that ``poll`` let pass, oldest first.
    """

    def __init__(self, message: str, transient_errors: Sequence[Exception] = ()) -> None:
        super().__init__(message)
        self.transient_errors = tuple(transient_errors)

    @property
    def transient_note(self) -> str:
        """``; N transient errors, the last: ...`` (empty without any), for a caller's own
        timeout message."""
        if not self.transient_errors:
            return ""
        count = len(self.transient_errors)
        return f"; {count} transient errors, the last: {self.transient_errors[-1]}"


def poll(
    probe: Callable[[], _T | None],
    *,
    timeout: float,
    interval: float,
    what: str,
    transient: Callable[[Exception], bool] | None = None,
) -> _T:
    """Call `probe` every `interval` seconds until it returns something other than None.

    Returns that value; raises WaitTimeout (naming `what`) once `timeout` seconds have passed
    without one. The probe is always called at least once, even with `timeout <= 0`.
    Exceptions from `probe` propagate at once: a failing probe is not "not yet" - unless
    `transient` says the error may pass (an API server restarting, a dropped connection):
    then it counts as "not yet", and the WaitTimeout names the last such error.
    """
    errors: list[Exception] = []

    def attempt() -> _T | None:
        try:
            return probe()
        except Exception as error:
            if transient is None or not transient(error):
                raise
            errors.append(error)
            return None

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(max(timeout, 0.0)),
        wait=tenacity.wait_fixed(interval),
        retry=tenacity.retry_if_result(lambda value: value is None),
        retry_error_callback=lambda state: _timed_out(what, timeout, state, errors),
        reraise=True,
    )
    result = retrying(attempt)
    assert result is not None  # tenacity retries on None, and gives up by raising
    return result


def _timed_out(
    what: str, timeout: float, state: tenacity.RetryCallState, errors: list[Exception]
) -> None:
    timed_out = WaitTimeout("", errors)
    message = f"{what}: not so after {timeout:.3g}s (looked {state.attempt_number} times)"
    raise WaitTimeout(message + timed_out.transient_note, errors)
