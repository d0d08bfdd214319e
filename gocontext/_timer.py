"""The one shared deadline timer, and the clock seam that tests replace.

Every deadline in the process is an entry in one heap, served by one daemon thread that sleeps
until the earliest entry is due. No thread per timer: 100,000 live deadlines cost 100,000 heap
entries and one thread. The thread exits after a while with nothing to do and is started again
by the next deadline, and a forked child process starts its own on demand.

The seam: ``now()`` is the clock every deadline is measured on (``time.monotonic`` unless a test
installed a fake one with ``set_clock``). With a fake clock the thread never fires anything by
itself; the fake clock calls ``fire_due()`` when it advances, so tests decide exactly when.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Expirable", "TimerEntry", "cancel_entry", "fire_due", "now", "schedule", "set_clock"]

_log = logging.getLogger("gocontext")

_IDLE_EXIT = 30.0  # seconds the thread lingers with an empty heap before it exits


class Expirable(Protocol):
    def _expire(self) -> None: ...


# An entry is [deadline, seq, target]; target becomes None when the entry is cancelled, and the
# thread drops such entries lazily. Lists compare by deadline, then by the unique seq, so the
# target is never compared.
TimerEntry = list[Any]  # [deadline: float, seq: int, target: Expirable | None]

now: Callable[[], float] = time.monotonic
_fake = False

# Guarded by _lock: _heap, _dead, _thread, _wake_at. _dead counts cancelled entries still in the
# heap; when they outnumber the live ones the heap is rebuilt without them.
_lock = threading.Lock()
_cond = threading.Condition(_lock)
_heap: list[TimerEntry] = []
_dead = 0
_thread: threading.Thread | None = None
_wake_at = float("inf")  # the deadline the thread sleeps until; inf when it waits for work
_seq = itertools.count()


def set_clock(clock: Callable[[], float] | None) -> None:
    """Replace the clock (``None`` restores ``time.monotonic``); for tests.

    With a replaced clock nothing fires by itself: the caller calls ``fire_due()``.
    """
    global now, _fake
    with _lock:
        now = time.monotonic if clock is None else clock
        _fake = clock is not None
        _cond.notify_all()


def schedule(deadline: float, target: Expirable) -> TimerEntry:
    """Call ``target._expire()`` from the timer thread once ``now() >= deadline``."""
    global _thread, _wake_at
    entry: TimerEntry = [deadline, next(_seq), target]
    with _lock:
        heapq.heappush(_heap, entry)
        if _thread is None:
            _start_locked()
        elif deadline < _wake_at:
            _wake_at = deadline
            _cond.notify()
    return entry


def cancel_entry(entry: TimerEntry) -> None:
    """Forget *entry*; its target will not be expired by the timer. Idempotent."""
    global _dead, _heap
    with _lock:
        if entry[2] is None:
            return
        entry[2] = None
        _dead += 1
        if _dead > 1024 and _dead * 2 > len(_heap):
            _heap = [e for e in _heap if e[2] is not None]
            heapq.heapify(_heap)
            _dead = 0


def fire_due() -> int:
    """Expire every entry that is due by ``now()``, in deadline order; return how many fired."""
    with _lock:
        due = _pop_due_locked(now())
    for target in due:
        _expire(target)
    return len(due)


def pending() -> int:
    """How many live entries the heap holds (for tests of clean-up)."""
    with _lock:
        return len(_heap) - _dead


def _pop_due_locked(t: float) -> list[Expirable]:
    global _dead
    due: list[Expirable] = []
    heap = _heap
    while heap and heap[0][0] <= t:
        target = heapq.heappop(heap)[2]
        if target is None:
            _dead -= 1
        else:
            due.append(target)
    return due


def _expire(target: Expirable) -> None:
    try:
        target._expire()
    except Exception:  # pragma: no cover - _expire only runs our code and quick callbacks
        _log.exception("gocontext: error while expiring a deadline")


def _start_locked() -> None:
    global _thread
    _thread = threading.Thread(target=_run, name="gocontext-timer", daemon=True)
    _thread.start()


def _run() -> None:
    global _thread, _wake_at, _dead
    me = threading.current_thread()
    with _lock:
        while True:
            heap = _heap
            while heap and heap[0][2] is None:  # drop cancelled entries at the top
                heapq.heappop(heap)
                _dead -= 1
            if _fake or not heap:
                _wake_at = float("inf")
                if not _cond.wait(_IDLE_EXIT) and not _heap and not _fake:
                    if _thread is me:
                        _thread = None
                    return
                continue
            t = now()
            if heap[0][0] > t:
                _wake_at = heap[0][0]
                _cond.wait(_wake_at - t)
                continue
            due = _pop_due_locked(t)
            _wake_at = float("-inf")  # busy firing: no need to be notified
            _lock.release()
            try:
                for target in due:
                    _expire(target)
            finally:
                _lock.acquire()


def _after_fork_in_child() -> None:
    # The parent's timer thread does not exist in the child: forget it, renew the locks (they
    # may have been held by a parent thread at fork time), and start afresh if work is pending.
    global _lock, _cond, _thread, _wake_at
    _lock = threading.Lock()
    _cond = threading.Condition(_lock)
    _thread = None
    _wake_at = float("inf")
    if _heap:
        with _lock:
            _start_locked()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
