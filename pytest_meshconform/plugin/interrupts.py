"""Exit status 2 whatever the window: a signal ends a mesh run as interrupted, never as a pass.

pytest turns a KeyboardInterrupt into exit status 2 only while its tests run. A signal the
`mesh` fixture held while the mesh was torn down (after the last test) reached pytest too late
to change the outcome ("40 passed", exit 0), and Ctrl-C once the tests were done (the report
being built) ended in a traceback. So, for a session with mesh tests:

- from the end of collection to the end of the session, the run owns the signals
  (`signals.acquire`): SIGTERM and SIGHUP interrupt like Ctrl-C, also between tests;
- a signal a teardown held during the tests (`note`) is raised as a KeyboardInterrupt once the
  tests' loop is over, every teardown done: pytest's own way to exit status 2, its
  "KeyboardInterrupt" summary line naming the signal;
- from the end of that loop to the end of the session (session fixtures torn down, the report
  built and written, the JUnit file, the summary) every signal is held: the run finishes its
  files, then says so and exits 2; the conformance report records exit status 2.
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Final

import pytest

from pytest_meshconform import signals
from pytest_meshconform.signals import signal_name

__all__ = ["interrupted", "note", "own_signals"]


@dataclass
class _Run:
    """What this session knows of signals."""

    owner: bool = False  # holds a `signals.acquire()` until the session ends
    signum: int | None = None  # the first signal a teardown held, and where
    where: str = ""
    raised: bool = False  # turned into pytest's KeyboardInterrupt already
    holding: ExitStack = field(default_factory=ExitStack)
    caught: signals.Held | None = None

    def message(self) -> str:
        assert self.signum is not None
        return (
            f"{signal_name(self.signum)} during {self.where}: held until it was done; the run"
            " ends as interrupted"
        )


_run_key: Final = pytest.StashKey[_Run]()


def _run(config: pytest.Config) -> _Run:
    run = config.stash.get(_run_key, None)
    if run is None:
        run = config.stash[_run_key] = _Run()
    return run


def own_signals(config: pytest.Config) -> None:
    """The session runs mesh tests: SIGTERM and SIGHUP interrupt it until it ends (idempotent)."""
    run = _run(config)
    if not run.owner:
        run.owner = signals.acquire()


def note(config: pytest.Config, signum: int, where: str) -> None:
    """A teardown held this signal until it was done: the run ends as interrupted."""
    run = _run(config)
    if run.signum is None:
        run.signum, run.where = signum, where


def interrupted(config: pytest.Config) -> bool:
    """Whether a signal has ended this run (noted, or held while the run ends)."""
    run = config.stash.get(_run_key, None)
    return run is not None and (run.signum is not None or signals.pending() is not None)


def _start_holding(run: _Run) -> None:
    if run.owner and run.caught is None:
        run.caught = run.holding.enter_context(signals.held(deliver=False))


def _stop_holding(run: _Run) -> int | None:
    """End the hold; the first signal it caught, or None."""
    caught, run.caught = run.caught, None
    run.holding.close()
    return None if caught is None else caught.signum


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Generator[None, object, object]:
    run = _run(session.config)
    try:
        return (yield)
    finally:
        _start_holding(run)  # from here to the session's end, signals wait
        if run.signum is not None and not run.raised:
            run.raised = True
            raise KeyboardInterrupt(run.message())


@pytest.hookimpl(wrapper=True, tryfirst=True)  # around every other plugin's end of the run
def pytest_sessionfinish(session: pytest.Session) -> Generator[None, None, None]:
    run = _run(session.config)
    _start_holding(run)
    try:
        yield
    finally:
        held = _stop_holding(run)
        if held is not None and run.signum is None:
            note(session.config, held, "the end of the run (teardown, reports, summary)")
        if run.signum is not None and not run.raised:
            run.raised = True
            if session.exitstatus != pytest.ExitCode.INTERRUPTED:
                session.exitstatus = pytest.ExitCode.INTERRUPTED
                reporter = session.config.pluginmanager.get_plugin("terminalreporter")
                if reporter is not None:
                    reporter.write_line(f"meshconform: {run.message()} (exit status 2)", red=True)
            _end_report_as(session.config, pytest.ExitCode.INTERRUPTED)
        if run.owner:
            run.owner = False
            signals.release()


def _end_report_as(config: pytest.Config, status: int) -> None:
    """The conformance report, written before the signal came, records how the run ended."""
    end_as = getattr(config.pluginmanager.get_plugin("meshconform-report"), "end_as", None)
    if callable(end_as):
        end_as(status)


def pytest_unconfigure(config: pytest.Config) -> None:
    """A session that never reached its end (an error before it) lets go of the signals."""
    run = config.stash.get(_run_key, None)
    if run is None:
        return
    _stop_holding(run)
    if run.owner:
        run.owner = False
        signals.release()
