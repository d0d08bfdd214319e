"""The one shared deadline timer, and the clock seam that tests replace.

Every deadline in the process is an entry in one heap, served by one daemon thread that sleeps
until the earliest entry is due. No thread per timer: 100,000 live deadlines cost 100,000 heap
entries and one thread. The thread exits after a while with nothing to do and is started again
by the next deadline; a forked child process starts its own on demand.

Scheduling and cancelling are on the path of every ``with_timeout``, so neither takes the lock
in the common case: ``schedule`` appends to ``_incoming`` (which the thread moves into the heap)
and wakes the thread only when the new entry is due before the thread means to wake;
``cancel_entry`` clears the entry's target, and the thread skips cleared entries.

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

__all__ = [
    "Expirable",
    "TimerEntry",
    "cancel_entry",
    "fire_due",
    "now",
    "pending",
    "schedule",
    "set_clock",
    "threads",
]

_log = logging.getLogger("gocontext")

_IDLE_EXIT = 30.0  # seconds the thread lingers with nothing to do before it exits
_INF = float("inf")


class Expirable(Protocol):
    def _expire(self) -> None: ...


# An entry is [deadline, seq, target]: target becomes None when the entry is cancelled or
# fired. Lists compare by deadline, then by the unique seq (given as the entry enters the
# heap), so the target is never compared.
TimerEntry = list[Any]

now: Callable[[], float] = time.monotonic
_fake = False

# _incoming: entries scheduled but not yet in the heap; appended to without the lock (a list
# append is atomic), emptied by the thread under the lock.
# Guarded by _lock: _heap, _thread, _wake_at (also read without it by schedule()).
# _dead counts cleared entries still in the heap, without a lock: it only decides when the heap
# is compacted, and compaction recounts it.
_lock = threading.Lock()
_cond = threading.Condition(_lock)
_incoming: list[TimerEntry] = []
_heap: list[TimerEntry] = []
_dead = 0
_compact_at = 1024
_thread: threading.Thread | None = None
_wake_at = _INF  # when the thread means to wake; inf while it is busy or has nothing to do
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


def schedule(entry: TimerEntry) -> None:
    """Have the timer call ``target._expire()`` once ``now() >= deadline``.

    *entry* is ``[deadline, 0, target]``. Lock-free unless the thread must be started or woken
    earlier than it planned.
    """
    _incoming.append(entry)
    if entry[0] < _wake_at or _thread is None:
        _wake(entry[0])


def _wake(deadline: float) -> None:
    global _wake_at
    with _lock:
        if _thread is None:
            _start_locked()
        elif deadline < _wake_at:
            _wake_at = deadline
            _cond.notify()


def cancel_entry(entry: TimerEntry) -> None:
    """Forget *entry*: its target will not be expired by the timer. Idempotent, lock-free."""
    global _dead
    if entry[2] is not None:
        entry[2] = None
        _dead += 1
        if _dead > _compact_at:
            _compact()


def _compact() -> None:
    global _dead, _heap, _compact_at
    with _lock:
        _take_incoming_locked()
        _heap = [e for e in _heap if e[2] is not None]
        heapq.heapify(_heap)
        _dead = 0
        _compact_at = max(1024, len(_heap))


def fire_due() -> int:
    """Expire every entry that is due by ``now()``, in deadline order; return how many fired."""
    with _lock:
        _take_incoming_locked()
        due = _pop_due_locked(now())
    for target in due:
        _expire(target)
    return len(due)


def pending() -> int:
    """How many live entries the timer holds (for tests of clean-up)."""
    with _lock:
        _take_incoming_locked()
        return sum(1 for e in _heap if e[2] is not None)


def threads() -> int:
    """How many timer threads are running: 0 or 1 (for tests)."""
    return 0 if _thread is None else 1


def _take_incoming_locked() -> None:
    incoming = _incoming
    if incoming:
        # Copy, then delete what was copied: an append racing with this lands after the copied
        # part and stays for the next round (swapping the list would lose it).
        batch = incoming[:]
        del incoming[: len(batch)]
        heap = _heap
        seq = _seq
        for e in batch:
            e[1] = next(seq)
            heapq.heappush(heap, e)


def _pop_due_locked(t: float) -> list[Expirable]:
    global _dead
    due: list[Expirable] = []
    heap = _heap
    while heap and heap[0][0] <= t:
        entry = heapq.heappop(heap)
        target = entry[2]
        if target is None:
            _dead -= 1
        else:
            entry[2] = None  # consumed: a later cancel_entry() is a no-op
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
    global _thread
    try:
        _serve()
    except BaseException:  # pragma: no cover - a bug; the next schedule() starts a new thread
        _log.exception("gocontext: the timer thread failed")
        with _lock:
            if _thread is threading.current_thread():
                _thread = None
        raise


def _serve() -> None:
    global _thread, _wake_at
    me = threading.current_thread()
    with _lock:
        while True:
            _wake_at = _INF  # busy: a new entry wakes us (see schedule())
            _take_incoming_locked()
            heap = _heap
            # Cleared entries stay until due: waiting for one costs a wake-up, while dropping
            # it could leave the heap empty, and then every schedule() would have to wake us.
            if _fake or not heap:
                if not _cond.wait(_IDLE_EXIT) and not _fake:
                    _thread = None  # leave, unless work came in meanwhile
                    if _incoming or _heap:
                        _thread = me
                        continue
                    return
                continue
            t = now()
            if heap[0][0] > t:
                _wake_at = heap[0][0]
                if not _incoming:  # (else loop at once: it may hold an earlier entry)
                    _cond.wait(min(_wake_at - t, threading.TIMEOUT_MAX))
                continue
            due = _pop_due_locked(t)
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
    _wake_at = _INF
    if _heap or _incoming:
        with _lock:
            _start_locked()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
