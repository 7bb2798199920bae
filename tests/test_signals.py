"""`signals`: SIGTERM and SIGHUP interrupt while a run owns something; `held` defers them.

Real signals to this very process (the handlers run in the main thread, as pytest's tests do).
A SIGTERM is only ever sent while this test owns the handlers: the default would end pytest.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from pytest_meshconform import signals


def _spin() -> None:
    for _ in range(10_000):  # every chance for Python to run a pending handler here
        pass


@pytest.fixture(autouse=True)
def _defaults() -> Iterator[None]:
    """Each test starts from the process's own handlers. A session with mesh tests owns the
    signals until it ends (`plugin/interrupts.py`; this suite's test_local_mesh.py has its own
    `mesh` fixture): its ownership is set aside during the test and taken back after."""
    set_aside = 0
    while signals.owned():
        signals.release()
        set_aside += 1
    # a run started with some of them ignored (SIGINT in a background job, SIGHUP under
    # nohup) keeps them ignored: the tests start from the defaults, and the run gets its own back
    before = {signum: signal.getsignal(signum) for signum in signals.HELD}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    yield
    assert not signals.owned()
    for signum, handler in before.items():
        signal.signal(signum, handler)
    for _ in range(set_aside):
        assert signals.acquire()


def test_sigterm_and_sighup_interrupt_only_while_owned() -> None:
    owner = signals.acquire()
    assert owner and signals.owned()
    try:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            with pytest.raises(KeyboardInterrupt, match=signal.Signals(signum).name):
                os.kill(os.getpid(), signum)
                _spin()
    finally:
        signals.release(owner)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
    assert not signals.owned()


def test_owners_nest() -> None:
    outer = signals.acquire()
    inner = signals.acquire()
    signals.release(inner)
    assert signals.owned()  # the outer owner still owns: SIGTERM still interrupts
    try:
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
            _spin()
    finally:
        signals.release(outer)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_held_defers_every_signal_to_the_end_of_the_block() -> None:
    """A teardown under SIGTERM, then SIGINT and SIGHUP: it runs to its end, then the first
    signal interrupts (the owner has not released yet)."""
    owner = signals.acquire()
    reached_end = False
    try:
        held_term = pytest.raises(KeyboardInterrupt, match=r"SIGTERM \(held until now\)")
        with held_term, signals.held():
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                os.kill(os.getpid(), signum)
                _spin()
            with signals.held():  # nested: still held when the inner block ends
                _spin()
            reached_end = True
    finally:
        signals.release(owner)
    assert reached_end
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_held_without_an_owner_hands_the_signal_to_the_old_handler() -> None:
    """A close() of a script's mesh: once nothing is owned, the held Ctrl-C goes to Python's
    own handler (and a held SIGTERM to SIG_DFL, which ends the process: tested in a
    subprocess by test_local_hardening)."""
    reached_end = False
    with pytest.raises(KeyboardInterrupt) as caught, signals.held():
        os.kill(os.getpid(), signal.SIGINT)
        _spin()
        reached_end = True
    assert reached_end
    assert "held" not in str(caught.value)  # Python's default handler raised it
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_handlers_set_by_someone_else_are_left_alone() -> None:
    def mine(signum: int, frame: object) -> None:
        raise RuntimeError("mine")

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        owner = signals.acquire()
        try:
            assert signal.getsignal(signal.SIGTERM) is mine
        finally:
            signals.release(owner)
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_held_can_hand_the_signal_to_the_caller() -> None:
    """pytest's session teardown cannot take a KeyboardInterrupt: the `mesh` fixture takes the
    held signal and ends the run as interrupted instead."""
    owner = signals.acquire()
    try:
        with signals.held(deliver=False) as held:
            os.kill(os.getpid(), signal.SIGHUP)
            _spin()
            with signals.held():  # an inner block (the mesh's own close) does not deliver
                os.kill(os.getpid(), signal.SIGTERM)
                _spin()
        assert held.signum == signal.SIGHUP
        assert signals.signal_name(held.signum) == "SIGHUP"
    finally:
        signals.release(owner)
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL


def test_a_nested_block_also_tells_what_it_held() -> None:
    """The mesh's teardown inside the session's end: both say which signal came meanwhile; the
    outermost block takes it."""
    owner = signals.acquire()
    try:
        with signals.held(deliver=False) as outer:
            with signals.held(deliver=False) as before:
                _spin()
            with signals.held(deliver=False) as inner:
                os.kill(os.getpid(), signal.SIGTERM)
                _spin()
            assert (before.signum, inner.signum) == (None, signal.SIGTERM)
            assert signals.pending() == signal.SIGTERM
        assert outer.signum == signal.SIGTERM
        assert signals.pending() is None
    finally:
        signals.release(owner)
