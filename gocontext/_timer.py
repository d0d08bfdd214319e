"""The one shared deadline timer, and the clock seam that tests replace.

Every deadline in the process is an entry in one heap, served by one daemon thread that sleeps
until the earliest entry is due. No thread per timer: 100,000 live deadlines cost 100,000 heap
entries and one thread. The thread exits once it has held no live entry for a while, and is
started again by the next deadline.

The timer is one object, ``timer``: ``timer.schedule(deadline, target)`` returns an entry and
``timer.cancel(entry)`` forgets it. Both are on the path of every ``with_timeout``, so neither
takes the lock in the common case: ``schedule`` appends to ``_incoming`` (which the thread moves
into the heap) and wakes the thread only when the new entry is due before the thread means to
wake; ``cancel`` clears the entry's target. Cleared entries are dropped as they reach the top of
the heap, and the whole heap is rebuilt without them once they outnumber the live ones, so the
heap never holds more than about twice what is live.

A forked child gets a new timer (``after_fork_in_child``, called by the tree's at-fork hook
after it renewed the tree lock): the parent's thread does not exist there, and its lock may have
been held at fork time.

The seam: ``now()`` is the clock every deadline is measured on (``time.monotonic`` unless a test
installed a fake one with ``set_clock``). With a fake clock the thread never fires anything by
itself; the fake clock calls ``timer.fire_due()`` when it advances, so tests decide exactly when.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = [
    "Expirable",
    "FakeInstant",
    "Timer",
    "TimerEntry",
    "after_fork_in_child",
    "install",
    "now",
    "set_clock",
    "timer",
    "until",
]

_log = logging.getLogger("gocontext")

_IDLE_EXIT = 30.0  # seconds the thread lingers with no live entry before it exits
_COMPACT_MIN = 64  # cleared entries tolerated in the heap however few are live
_INF = float("inf")


class Expirable(Protocol):
    def _expire(self) -> None: ...


# An entry is [deadline, seq, target]: target becomes None when the entry is cancelled or
# fired. Lists compare by deadline, then by the unique seq (given as the entry enters the
# heap), so the target is never compared. Callers hold entries and hand them back to cancel().
TimerEntry = list[Any]

# The clock seam: a module attribute, read on every with_timeout, so it stays a plain function
# reference (no indirection on the hot path); only set_clock() replaces it.
now: Callable[[], float] = time.monotonic
_monotonic = time.monotonic


class FakeInstant(float):
    """A reading of a fake clock, and a deadline made from one: adding seconds keeps the kind,
    so a deadline made on a fake clock is told from one made on real time (a plain float) by
    its type, and each is read on its own clock (``until``).

    Example:
        >>> t = FakeInstant(100.0) + 5
        >>> type(t).__name__, t
        ('FakeInstant', 105.0)
    """

    __slots__ = ()

    def __add__(self, other: object) -> Any:
        r = float.__add__(self, other)  # type: ignore[operator]  # NotImplemented for a non-float
        return r if r is NotImplemented else FakeInstant(r)

    __radd__ = __add__


def until(deadline: float) -> float:
    """Seconds from now to *deadline*, read on the clock it was made on: under a fake clock, a
    deadline made before it (a plain float) is on real time.

    Example:
        >>> import time
        >>> 0 < until(time.monotonic() + 60) <= 60
        True
    """
    clock = now
    if clock is not _monotonic and type(deadline) is float:
        return deadline - _monotonic()
    return deadline - clock()


def _fake(clock: Callable[[], float]) -> Callable[[], float]:
    """*clock*, whose readings are ``FakeInstant``: deadlines made on it are told apart."""
    return lambda: FakeInstant(clock())


class Timer:
    """A heap of deadlines served by one daemon thread started on demand.

    Example:
        >>> import time
        >>> class Target:
        ...     def _expire(self): print("expired")
        >>> t = Timer()
        >>> entry = t.schedule(time.monotonic() + 3600, Target())
        >>> t.pending()
        1
        >>> t.cancel(entry)
        >>> t.pending()
        0
    """

    # _incoming: entries scheduled but not yet in the heap; appended to without the lock (a list
    # append is atomic), emptied by the thread under the lock.
    # Guarded by _lock: _heap, _thread, _wake_at (also read without it by schedule()).
    # _dead counts cleared entries still in the heap or incoming, without a lock: it only
    # decides when the heap is compacted, and compaction recounts it.
    __slots__ = (
        "_clock",
        "_cond",
        "_dead",
        "_fake",
        "_heap",
        "_idle_exit",
        "_incoming",
        "_lock",
        "_manual",
        "_seq",
        "_thread",
        "_wake_at",
    )

    def __init__(
        self,
        *,
        idle_exit: float = _IDLE_EXIT,
        fake: bool = False,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._incoming: list[TimerEntry] = []
        self._heap: list[TimerEntry] = []
        self._dead = 0
        self._thread: threading.Thread | None = None
        self._wake_at = _INF  # when the thread means to wake; inf while busy or idle
        self._seq = itertools.count()
        self._idle_exit = idle_exit
        self._fake = fake
        # The clock this timer reads: its own (a public fake clock's timer, or the real timer
        # pinned to time.monotonic while a fake clock is in use), else the module's now().
        self._clock = clock
        # A manual timer has no thread at all: only fire_due() expires its entries.
        self._manual = clock is not None and fake

    def schedule(self, deadline: float, target: Expirable) -> TimerEntry:
        """Have the timer call ``target._expire()`` once ``now() >= deadline``; return the entry.

        Lock-free unless the thread must be started or woken earlier than it planned.
        """
        entry = [deadline, 0, target]
        self._incoming.append(entry)
        if deadline < self._wake_at or self._thread is None:
            self._wake(deadline)
        return entry

    def cancel(self, entry: TimerEntry) -> None:
        """Forget *entry*: its target will not be expired by the timer. Idempotent, lock-free
        unless cleared entries now outnumber live ones (then the heap is rebuilt)."""
        if entry[2] is not None:
            entry[2] = None
            dead = self._dead = self._dead + 1
            if dead > _COMPACT_MIN and 2 * dead > len(self._heap) + len(self._incoming):
                self._compact()

    def fire_due(self) -> int:
        """Expire every entry that is due by ``now()``, in deadline order; return how many."""
        with self._lock:
            self._take_incoming_locked()
            clock = self._clock
            due = self._pop_due_locked(now() if clock is None else clock())
        for target in due:
            _expire(target)
        return len(due)

    def pending(self) -> int:
        """How many live entries the timer holds (for tests of clean-up)."""
        return len(self.live())

    def live(self) -> list[TimerEntry]:
        """The live entries the timer holds, in no order (for tests of clean-up)."""
        with self._lock:
            self._take_incoming_locked()
            return [e for e in self._heap if e[2] is not None]

    def size(self) -> int:
        """How many entries, live or cleared, the timer holds (for tests of clean-up)."""
        with self._lock:
            return len(self._heap) + len(self._incoming)

    def threads(self) -> int:
        """How many threads serve this timer: 0 or 1 (for tests)."""
        return 0 if self._thread is None else 1

    def set_fake(self, fake: bool) -> None:
        """With *fake* set the thread fires nothing by itself (a fake clock calls fire_due)."""
        with self._lock:
            self._fake = fake
            self._cond.notify_all()

    def drain(self) -> list[TimerEntry]:
        """Take every live entry out of the timer, in deadline order, and return them; their
        targets are no longer served here (a fake clock hands them to the real timer)."""
        with self._lock:
            self._take_incoming_locked()
            live = sorted(e for e in self._heap if e[2] is not None)
            self._heap = []
            self._dead = 0
            self._cond.notify_all()
        return live

    def pin_clock(self, clock: Callable[[], float] | None) -> None:
        """Have this timer read *clock* (None: the module's ``now()``); the thread re-reads it."""
        with self._lock:
            self._clock = clock
            self._cond.notify_all()

    def close(self) -> None:
        """Drop every entry; the thread then leaves (for timers made by tests)."""
        with self._lock:
            self._take_incoming_locked()
            for e in self._heap:
                e[2] = None
            self._heap.clear()
            self._dead = 0
            self._cond.notify_all()

    def forked(self) -> Timer:
        """A timer for a forked child: the live entries of this one, the clock it is pinned to
        (if any), a new lock, no thread.

        Reads this timer's lists without its lock, which a thread that does not exist in the
        child may have held at fork time (a list is never left half-changed: the interpreter
        lock was held across the fork).
        """
        child = Timer(idle_exit=self._idle_exit, fake=self._fake, clock=self._clock)
        self._give_live(child)
        return child

    def _give_live(self, child: Timer) -> None:
        """Hand this timer's live entries to *child*, a timer for a forked child (see
        ``forked``)."""
        live = [e for e in (*self._heap, *self._incoming) if e[2] is not None]
        if live:
            child._incoming = live
            child._wake(min(e[0] for e in live))

    def _wake(self, deadline: float) -> None:
        if self._manual:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="gocontext-timer", daemon=True
                )
                self._thread.start()
            elif deadline < self._wake_at:
                self._wake_at = deadline
                self._cond.notify()

    def _compact(self) -> None:
        with self._lock:
            self._take_incoming_locked()
            heap = [e for e in self._heap if e[2] is not None]
            heapq.heapify(heap)
            self._heap = heap
            self._dead = 0

    def _take_incoming_locked(self) -> None:
        incoming = self._incoming
        if incoming:
            # Copy, then delete what was copied: an append racing with this lands after the
            # copied part and stays for the next round (swapping the list would lose it).
            batch = incoming[:]
            del incoming[: len(batch)]
            live = [e for e in batch if e[2] is not None]
            self._dead -= len(batch) - len(live)  # those cancelled before they reached the heap
            heap = self._heap
            seq = self._seq
            for e in live:
                e[1] = next(seq)
                heapq.heappush(heap, e)

    def _pop_due_locked(self, t: float) -> list[Expirable]:
        due: list[Expirable] = []
        heap = self._heap
        while heap and heap[0][0] <= t:
            entry = heapq.heappop(heap)
            target = entry[2]
            if target is None:
                self._dead -= 1
            else:
                entry[2] = None  # consumed: a later cancel() is a no-op
                due.append(target)
        return due

    def _drop_cleared_top_locked(self) -> None:
        heap = self._heap
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
            self._dead -= 1

    def _run(self) -> None:
        me = threading.current_thread()
        try:
            self._serve(me)
        except BaseException:  # pragma: no cover - a bug; the next schedule() starts a thread
            _log.exception("gocontext: the timer thread failed")
            with self._lock:
                if self._thread is me:
                    self._thread = None
            raise

    def _serve(self, me: threading.Thread) -> None:
        cond = self._cond
        lock = self._lock
        with lock:
            while True:
                self._wake_at = _INF  # busy: a new entry wakes us (see schedule())
                self._take_incoming_locked()
                self._drop_cleared_top_locked()
                heap = self._heap
                if self._fake or not heap:
                    if not self._fake:  # the thread wakes then anyway: a later entry need not
                        clock = self._clock
                        self._wake_at = (now() if clock is None else clock()) + self._idle_exit
                    if not cond.wait(self._idle_exit) and not self._fake:
                        self._wake_at = _INF  # leaving: from here on, a new entry wakes us
                        self._take_incoming_locked()
                        self._drop_cleared_top_locked()
                        if not self._heap:  # nothing live came in meanwhile: leave
                            self._thread = None
                            return
                    continue
                clock = self._clock
                t = now() if clock is None else clock()
                if heap[0][0] > t:
                    # Wake at the deadline, or after idle_exit to drop what was cancelled
                    # meanwhile (so one cancelled hour-long timeout does not hold the thread).
                    # A new entry wakes us only if it is due before we wake anyway.
                    self._wake_at = min(heap[0][0], t + self._idle_exit)
                    if not self._incoming:  # (else loop at once: it may hold an earlier entry)
                        cond.wait(min(self._wake_at - t, threading.TIMEOUT_MAX))
                    continue
                due = self._pop_due_locked(t)
                lock.release()
                try:
                    for target in due:
                        _expire(target)
                finally:
                    lock.acquire()


def _expire(target: Expirable) -> None:
    # Runs in the timer thread (or a fake clock's caller): nothing a target's callbacks raise,
    # KeyboardInterrupt and SystemExit included, may stop the others from being served.
    try:
        target._expire()
    except BaseException:
        _log.exception("gocontext: error while expiring a deadline")


timer = Timer()


def set_clock(clock: Callable[[], float] | None) -> None:
    """Replace the clock (``None`` restores ``time.monotonic``); for tests.

    With a replaced clock nothing fires by itself: the caller calls ``timer.fire_due()``.

    Example:
        >>> from gocontext import _timer
        >>> _timer.set_clock(lambda: 5.0)
        >>> _timer.now()
        5.0
        >>> _timer.set_clock(None)
    """
    global now  # the one module binding that changes: the clock seam (see above)
    now = time.monotonic if clock is None else _fake(clock)
    timer.set_fake(clock is not None)


def after_fork_in_child() -> None:
    """Replace the timer in a forked child; the tree's at-fork hook calls it, after renewing the
    tree lock that the new timer's thread may take at once."""
    global timer  # replaced whole, never mutated through a global
    timer = timer.forked()


def install(new_timer: Timer, clock: Callable[[], float] | None) -> Timer:
    """Make *new_timer* the one new deadlines go to and *clock* (None: ``time.monotonic``) the
    one every deadline is read on; return the timer it replaces. For ``gocontext.testing``."""
    global timer, now  # the clock seam, switched whole (see above)
    old = timer
    timer = new_timer
    now = time.monotonic if clock is None else _fake(clock)
    return old
