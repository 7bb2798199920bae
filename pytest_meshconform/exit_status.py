"""Exit statuses that always mean one thing, for a pytest run with the plugin and for every
``meshconform`` command (the table, one row per status: README, "Exit statuses").

The numbers are pytest's own (``pytest.ExitCode``), so a CI step reads them the same way
whichever of the two it ran: a negative verdict is 1, an interruption 2, no verdict 3, a usage
or input error 4. A usage or input error never shares a status with "regression" or "not
conforming"; an interruption (Ctrl-C, SIGTERM, SIGHUP) is 2 wherever it lands.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ExitStatus"]


class ExitStatus(IntEnum):
    """What a run or a command ended with."""

    OK = 0
    """Tests passed; no regression; every port conforms; a run can go; swept."""

    FAILED = 1
    """A negative verdict: a test failed or errored; a regression; a port does not conform; a
    finding would break a run."""

    INTERRUPTED = 2
    """Ctrl-C, SIGTERM or SIGHUP, whatever the window; what the run made is removed first."""

    NO_VERDICT = 3
    """No verdict: pytest's internal error, a command's own crash (a bug: the traceback is
    printed), or, for ``meshconform diff``, only infrastructure errors changed (run again)."""

    USAGE = 4
    """A usage or input error: an option, a missing or malformed file (named), nothing to
    check or audit."""

    NO_TESTS = 5
    """pytest only: no tests were collected."""
