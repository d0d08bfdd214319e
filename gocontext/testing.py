"""Test your own deadlines without waiting for them: a fake clock for gocontext's deadlines.

``fake_clock()`` puts the deadlines of contexts created inside it on a clock that moves only
when the test says so, like trio's ``MockClock``, .NET's ``FakeTimeProvider`` or Go's
``testing/synctest``. It is the same seam the library's own tests use: one deadline timer and
one clock function, swapped whole for the length of the block.
"""

from __future__ import annotations

import gc
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from . import _context, _timer, _tree
from ._errors import check_real

__all__ = ["FakeClock", "fake_clock"]

_guard = threading.Lock()  # guards _active: entering and leaving a fake clock
_active: FakeClock | None = None


class FakeClock:
    """The deadline clock inside ``fake_clock()``: it moves only on ``advance()``.

    Example:
        >>> import gocontext
        >>> from gocontext.testing import fake_clock
        >>> with fake_clock() as clock:
        ...     ctx, cancel = gocontext.with_timeout(gocontext.background(), 5)
        ...     _ = clock.advance(4.5)
        ...     print(ctx.err(), round(ctx.remaining(), 6))
        ...     _ = clock.advance(0.5)
        ...     print(repr(ctx.err()))
        None 0.5
        DeadlineExceeded('context deadline exceeded')
    """

    __slots__ = ("_left", "_lock", "_real", "_t", "_timer")

    def __init__(self, start: float) -> None:
        self._t = start
        # Serialises advance(), so deadlines end in order; re-entrant for a deadline callback
        # that advances the clock itself.
        self._lock = threading.RLock()
        self._left = False
        self._timer = _FakeTimer(clock=self.now, fake=True)
        self._real: _timer.Timer | None = None  # the real timer, put back when the block ends

    def now(self) -> float:
        """The fake clock's reading, on the ``time.monotonic()`` scale.

        Example:
            >>> from gocontext.testing import fake_clock
            >>> with fake_clock() as clock:
            ...     start = clock.now()
            ...     _ = clock.advance(2.5)
            ...     round(clock.now() - start, 6)
            2.5
        """
        return self._t

    def advance(self, seconds: float) -> int:
        """Move the clock *seconds* forward; end every context then due, in deadline order,
        before returning; return how many ended.

        Threads and tasks waiting on those contexts wake as they would at a real deadline.
        *seconds* must be a finite number ``>= 0`` (else ``ValueError``). As from ``cancel()``,
        a ``KeyboardInterrupt`` or ``SystemExit`` raised by a done callback (or a Ctrl-C
        landing meanwhile) goes out of here once every due context has ended.

        Example:
            >>> import gocontext
            >>> from gocontext.testing import fake_clock
            >>> with fake_clock() as clock:
            ...     a, _ = gocontext.with_timeout(gocontext.background(), 1)
            ...     b, _ = gocontext.with_timeout(gocontext.background(), 2)
            ...     clock.advance(1.5)
            ...     (a.err() is not None, b.err() is not None)
            1
            (True, False)
        """
        seconds = check_real(seconds, "advance", "seconds", "a number")
        if math.isinf(seconds):
            raise ValueError(f"advance() needs a finite number of seconds, got {seconds!r}")
        if seconds < 0:
            raise ValueError(
                f"advance() needs seconds >= 0 (the clock never goes back), got {seconds!r}"
            )
        with self._lock:
            if self._left:
                raise RuntimeError("advance() on a fake clock whose fake_clock() block has ended")
            t = self._t + seconds
            if math.isinf(t):  # (each step finite, their sum not: every deadline would be inf)
                raise ValueError(
                    f"advance() would take the clock past the largest float, got {seconds!r}"
                )
            self._t = t
            return self._timer.fire_due()

    def __repr__(self) -> str:
        return f"<FakeClock now={self._t:.6f}>"


class _FakeTimer(_timer.Timer):
    """A fake clock's timer: once the block is left, what is still scheduled on it (by a thread
    that picked it up just before) goes to the real timer instead, shifted to real time."""

    __slots__ = ("_forward",)

    def __init__(self, *, clock: Callable[[], float], fake: bool) -> None:
        super().__init__(clock=clock, fake=fake)
        self._forward: tuple[_timer.Timer, float] | None = None  # guarded by _lock

    def schedule(self, deadline: float, target: _timer.Expirable) -> _timer.TimerEntry:
        with self._lock:
            forward = self._forward
            if forward is None:
                return super().schedule(deadline, target)  # (manual: takes no lock itself)
        real, shift = forward
        return real.schedule(deadline + shift, target)

    def forked(self) -> _FakeTimer:
        """The fake timer of a forked child (see ``Timer.forked``): still a fake clock's."""
        child = _FakeTimer(clock=self._clock, fake=True)  # type: ignore[arg-type]  # set: a fake clock's
        child._forward = self._forward
        self._give_live(child)
        return child

    def fire_due(self) -> int:
        """Expire what is due, in deadline order, in the caller's thread (``advance()``'s):
        unlike the real timer's thread, which has nobody to tell, the caller gets the first
        interrupt a target raised, once every due target has been expired."""
        clock = self._clock
        assert clock is not None  # (a fake clock's timer reads the fake clock)
        with self._lock:
            self._take_incoming_locked()
            due = self._pop_due_locked(clock())
        _tree.raise_first(_tree.call_all([t._expire for t in due], "expiring a deadline"))
        return len(due)

    def leave(self, real: _timer.Timer, shift: float) -> list[_timer.TimerEntry]:
        """From now on forward to *real*; return what was live here (see ``drain``)."""
        with self._lock:
            self._forward = (real, shift)
        return self.drain()


@contextmanager
def fake_clock() -> Iterator[FakeClock]:
    """Put the deadlines of contexts created inside the block on a fake clock; yield it.

    The clock starts at the real ``time.monotonic()`` of entry and moves only on
    ``clock.advance(seconds)``, which ends every context then due, in deadline order, before
    it returns. ``remaining()``, ``gocontext.sleep`` and deadline headers follow the fake clock;
    ``Done.wait(timeout)`` and anyio/trio's own deadlines stay real. Contexts created before
    entering keep real time (their ``remaining()`` too); one made inside under such a context
    has its own deadline on the fake clock, and still ends with its parent, in real time.
    Leaving restores the real clock: fake-clock contexts still live keep their remaining
    time, counted in real time from then on. Blocks do not nest (``RuntimeError``).

    Example:
        >>> import threading, gocontext
        >>> from gocontext.testing import fake_clock
        >>> with fake_clock() as clock:
        ...     ctx, cancel = gocontext.with_timeout(gocontext.background(), 3600)
        ...     waiter = threading.Thread(target=ctx.done().wait)
        ...     waiter.start()
        ...     _ = clock.advance(3600)
        ...     waiter.join(10)
        ...     print(waiter.is_alive(), repr(ctx.err()))
        False DeadlineExceeded('context deadline exceeded')
    """
    global _active  # the one block in use: guarded by _guard
    with _guard:
        if _active is not None or _timer.timer._fake:
            raise RuntimeError("fake_clock(): a fake clock is already in use; they do not nest")
        clock = FakeClock(time.monotonic())
        clock._real = real = _timer.timer
        real.pin_clock(time.monotonic)  # what it already holds keeps real time
        _timer.install(clock._timer, clock.now)
        _active = clock
    try:
        yield clock
    finally:
        with _guard:
            real = clock._real  # (a forked child's own: see _after_fork_in_child)
            assert real is not None
            _timer.install(real, None)
            real.pin_clock(None)
            _active = None
            with clock._lock:
                clock._left = True
                shift = time.monotonic() - clock._t
            _move_to_real(clock._timer.leave(real, shift), shift, real)


def _move_to_real(entries: list[_timer.TimerEntry], shift: float, real: _timer.Timer) -> None:
    """Give the real timer the contexts still live on a fake clock that was left, each with the
    time it had left on the fake clock, counted from now on the real one (*shift* converts).

    Descendants without a deadline of their own hold their ancestor's deadline object itself
    (copied down at creation); they are found by identity and moved with it.
    """
    moved: dict[int, tuple[float, float]] = {}  # id(old deadline) -> (old, new)
    for entry in entries:
        target = entry[2]
        if not isinstance(target, _context._DeadlineContext):
            continue
        with _tree._lock:
            # (_entry is None: the creating thread has not stored the entry yet; the new one
            # then goes unrecorded, and only expires a node that has ended, which is a no-op)
            if target._state is None and (target._entry is entry or target._entry is None):
                entry[2] = None  # this entry is spent; the real timer gets a new one
                old = target._deadline
                # A plain float: on real time from now on, wherever it is read (a FakeInstant
                # would be read on the next fake clock).
                target._deadline = float(entry[0] + shift)
                moved[id(old)] = (old, target._deadline)
                target._entry = real.schedule(target._deadline, target)
    if moved:
        for obj in gc.get_objects():
            if isinstance(obj, _context._CancelContext):
                d = getattr(obj, "_deadline", None)  # (None: a node still being made)
                pair = moved.get(id(d))
                if pair is not None and pair[0] is d:
                    obj._deadline = pair[1]


def _after_fork_in_child() -> None:
    """In a child forked inside a ``fake_clock()`` block, which goes on there: the clock fires
    the child's fake timer (the tree's own at-fork hook, which runs first, made it from the
    parent's live entries), with locks of its own; and the block, once left, puts back a real
    timer of the child's (the parent's thread does not exist there)."""
    global _guard  # renewed whole: a parent thread may have held it at the fork
    _guard = threading.Lock()
    clock = _active
    if clock is None:
        return
    clock._lock = threading.RLock()
    if isinstance(_timer.timer, _FakeTimer):
        clock._timer = _timer.timer
    if clock._real is not None:
        clock._real = clock._real.forked()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
