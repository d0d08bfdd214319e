"""The shared timer as an object: it shrinks when entries are cancelled, and its thread leaves
when it holds no live entry."""

from __future__ import annotations

import math
import threading
import time

import gocontext
from gocontext import _timer

from .conftest import NEVER, NewTimerEntries


class Target:
    def __init__(self) -> None:
        self.fired = threading.Event()

    def _expire(self) -> None:
        self.fired.set()


def wait_for(condition: object) -> None:
    deadline = time.monotonic() + NEVER
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.005)


def test_cancelled_entries_do_not_stay_in_the_heap() -> None:
    timer = _timer.Timer()
    start = time.monotonic()
    entries = [timer.schedule(start + 3600 + i, Target()) for i in range(100_000)]
    keep = entries[::1000]
    for e in entries:
        if e not in keep:  # identity: entries are lists, but never compared by value here
            timer.cancel(e)
    assert timer.pending() == len(keep)
    assert timer.size() <= 2 * len(keep) + 64, timer.size()
    for e in keep:
        timer.cancel(e)
    assert timer.pending() == 0
    assert timer.size() <= 64
    timer.close()


def test_the_thread_leaves_when_no_live_entry_is_left() -> None:
    timer = _timer.Timer(idle_exit=0.05)
    deadline = time.monotonic() + 3600
    entry = timer.schedule(deadline, Target())
    assert timer.threads() == 1
    wait_for(lambda: timer._wake_at < math.inf)  # the thread took the entry and sleeps
    timer.cancel(entry)
    wait_for(lambda: timer.threads() == 0)
    soon = Target()
    timer.schedule(time.monotonic() + 0.01, soon)  # and comes back for the next deadline
    assert soon.fired.wait(NEVER)
    wait_for(lambda: timer.threads() == 0)


def test_a_cancelled_long_timeout_lets_the_shared_thread_go(fake_clock: object) -> None:
    before = NewTimerEntries()
    ctx, cancel = gocontext.with_timeout(gocontext.background(), 3600)
    assert before.count() == 1
    cancel()
    assert before.count() == 0


def test_an_entry_due_after_the_thread_wakes_anyway_does_not_wake_it() -> None:
    """The thread sleeps at most idle_exit; entries due later are taken then, at no cost to
    the schedule() that made them (a server's per-request deadlines must not wake it)."""
    timer = _timer.Timer(idle_exit=10 * NEVER)
    far = timer.schedule(time.monotonic() + 3600, Target())
    wait_for(lambda: timer._wake_at < math.inf)  # asleep, until idle_exit at the latest
    wakes = []
    notify = timer._cond.notify
    timer._cond.notify = lambda n=1: (wakes.append(n), notify(n))  # type: ignore[method-assign]  # counting wrapper
    entries = [timer.schedule(time.monotonic() + 20 * NEVER + i, Target()) for i in range(50)]
    assert wakes == []
    soon = Target()
    timer.schedule(time.monotonic() + 0.01, soon)  # an entry due before that still wakes it
    assert soon.fired.wait(NEVER)
    assert len(wakes) == 1
    for e in [far, *entries]:
        timer.cancel(e)
    timer.close()
