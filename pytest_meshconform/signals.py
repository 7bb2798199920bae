"""Signals while a run owns something on the machine (namespaces, processes, files).

From the moment a run is about to own anything (before its run directory exists) until its
last file is gone, SIGTERM (a CI job cancelled, `kill`) and SIGHUP (a closed terminal) end the
run the way Ctrl-C does: a `KeyboardInterrupt` in the main thread, so the code that owns things
unwinds and removes them. Outside that time the process's own handlers apply (by default these
signals end it at once, which is right when it owns nothing).

`held()` defers SIGINT, SIGTERM and SIGHUP until the block ends, so a teardown is never cut in
half by a second Ctrl-C or a CI runner's repeated SIGTERM; the first deferred signal is
delivered when the outermost held block ends (a `KeyboardInterrupt` while something is still
owned, else the handler the process had before).

Owners nest: `acquire()` / `release()` count them (the `mesh` fixture and the local mesh both
own). Handlers are changed only where nobody else has set one: SIGINT while it is Python's
default, SIGTERM and SIGHUP while they are SIG_DFL (a SIGHUP ignored by `nohup` stays ignored).
Only the main thread may set signal handlers: elsewhere `acquire` returns False and `held` does
nothing (the main thread's handlers still apply).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Final

__all__ = ["HELD", "Held", "acquire", "held", "owned", "pending", "release", "signal_name"]

HELD: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Deferred inside `held()`."""

_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None

_owners = 0
_holding = 0
_pending: list[int] = []
_saved: dict[int, _Handler] = {}


def signal_name(signum: int) -> str:
    """`SIGTERM` for 15."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _holding:
        _pending.append(signum)
        return
    name = signal.Signals(signum).name
    raise KeyboardInterrupt(f"{name}: ending the run, removing what it made")


def _is_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _install() -> None:
    for signum in HELD:
        current = signal.getsignal(signum)
        default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
        if current is default or current == default:
            _saved[signum] = current
            signal.signal(signum, _on_signal)


def _restore() -> None:
    for signum, previous in _saved.items():
        if signal.getsignal(signum) is _on_signal:
            signal.signal(signum, previous)
    _saved.clear()


def acquire() -> bool:
    """A run is about to own something: from now on SIGTERM and SIGHUP interrupt it.

    Returns whether this call counts as an owner (False off the main thread); pass that to
    `release()`.
    """
    global _owners
    if not _is_main_thread():
        return False
    if _owners == 0 and _holding == 0:
        _install()
    _owners += 1
    return True


def release(acquired: bool = True) -> None:
    """The run owns nothing any more (its last file is gone).

    When the last owner releases, the handlers the process had before are back, and a signal
    deferred by `held()` is delivered to them. Off the main thread only the count changes; the
    handlers are put back by the main thread's next `acquire`/`release`/`held`.
    """
    global _owners
    if not acquired or _owners == 0:
        return
    _owners -= 1
    if _is_main_thread():
        _settle()


def _settle() -> None:
    """With no owner and nothing held: the old handlers back, a deferred signal delivered."""
    if _owners or _holding:
        return
    _restore()
    if _pending:
        signum = _pending[0]
        _pending.clear()
        signal.raise_signal(signum)  # to the handler the process had (SIG_DFL ends it)


def owned() -> bool:
    """Whether some run owns something now (SIGTERM and SIGHUP interrupt)."""
    return _owners > 0


def pending() -> int | None:
    """The first signal a `held()` block has deferred so far (None: none yet, or none held)."""
    return _pending[0] if _pending else None


@dataclass
class Held:
    """What `held(deliver=False)` caught: the first signal received in the block, or None."""

    signum: int | None = None


@contextmanager
def held(*, deliver: bool = True) -> Iterator[Held]:
    """Defer SIGINT, SIGTERM and SIGHUP until the block ends (a teardown runs to its end).

    The first signal received meanwhile is delivered when the outermost block ends: as a
    KeyboardInterrupt while a run still owns something, else to the process's old handler.
    With `deliver=False` the block tells the caller the first signal received while it ran
    (`Held.signum`), for code that ends the run its own way (pytest's session teardown cannot
    take an exception); the outermost such block takes it from the pending ones.
    """
    global _holding
    caught = Held()
    if not _is_main_thread():
        yield caught
        return
    _holding += 1  # before the handlers: a signal in between is deferred, not raised
    before = len(_pending)
    if len(_saved) == 0:
        _install()
    try:
        yield caught
    finally:
        _holding -= 1
        if not deliver and len(_pending) > before:
            caught.signum = _pending[before]
        if _holding == 0 and _pending and not deliver:
            caught.signum = _pending[0]
            _pending.clear()
        if _holding == 0 and _pending and _owners:
            signum = _pending[0]
            _pending.clear()
            raise KeyboardInterrupt(
                f"{signal.Signals(signum).name} (held until now): ending the run,"
                " removing what it made"
            )
        _settle()
