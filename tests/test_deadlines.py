"""Deadlines: the shared timer, exact firing on a fake clock, causes, and bad input."""

from __future__ import annotations

import math
import os
import threading
import time
from datetime import timedelta

import pytest

import gocontext
from gocontext import _timer

from .conftest import NEVER, FakeClock


def test_timeout_fires_exactly_at_the_deadline_not_a_tick_early(fake_clock: FakeClock) -> None:
    ctx, cancel = gocontext.with_timeout(gocontext.background(), 2.0)
    assert ctx.deadline() == fake_clock.t + 2.0
    assert ctx.remaining() == 2.0  # type: ignore[attr-defined]
    fake_clock.advance(1.999)
    assert ctx.err() is None
    fake_clock.advance(0.001)
    err = ctx.err()
    assert isinstance(err, gocontext.DeadlineExceeded)
    assert isinstance(err, TimeoutError)
    cancel()
    assert isinstance(ctx.err(), gocontext.DeadlineExceeded)


def test_deadline_wakes_waiters_and_descendants(fake_clock: FakeClock) -> None:
    parent, _ = gocontext.with_deadline(gocontext.background(), fake_clock.t + 1)
    child, _ = gocontext.with_cancel(gocontext.with_value(parent, "k", 1))
    fired = threading.Event()
    child.done().add_callback(fired.set)
    assert not fired.is_set()
    fake_clock.advance(1)
    assert fired.is_set()
    assert isinstance(child.err(), gocontext.DeadlineExceeded)


def test_earlier_parent_deadline_wins(fake_clock: FakeClock) -> None:
    parent, _ = gocontext.with_timeout(gocontext.background(), 1)
    child, _ = gocontext.with_timeout(parent, 10)
    assert child.deadline() == parent.deadline()
    later_parent, _ = gocontext.with_timeout(gocontext.background(), 10)
    earlier_child, _ = gocontext.with_timeout(gocontext.with_value(later_parent, "k", 1), 1)
    assert earlier_child.deadline() == fake_clock.t + 1
    fake_clock.advance(1)
    assert isinstance(child.err(), gocontext.DeadlineExceeded)
    assert isinstance(earlier_child.err(), gocontext.DeadlineExceeded)
    assert later_parent.err() is None


@pytest.mark.parametrize("timeout", [0, -1, 0.0, -0.5, timedelta(0), timedelta(seconds=-3)])
def test_zero_or_negative_timeout_is_already_done(timeout: float | timedelta) -> None:
    ctx, _ = gocontext.with_timeout(gocontext.background(), timeout)
    assert isinstance(ctx.err(), gocontext.DeadlineExceeded)
    assert ctx.done().is_set()
    assert ctx.done().wait(0)


def test_expired_deadline_is_already_done() -> None:
    ctx, _ = gocontext.with_deadline(gocontext.background(), time.monotonic() - 1)
    assert isinstance(ctx.err(), gocontext.DeadlineExceeded)


def test_timedelta_timeout(fake_clock: FakeClock) -> None:
    ctx, _ = gocontext.with_timeout(gocontext.background(), timedelta(milliseconds=1500))
    assert ctx.deadline() == fake_clock.t + 1.5


def test_infinite_timeout_never_fires(fake_clock: FakeClock) -> None:
    ctx, cancel = gocontext.with_timeout(gocontext.background(), math.inf)
    fake_clock.advance(1e12)
    assert ctx.err() is None
    cancel()


@pytest.mark.parametrize(
    "call",
    [
        lambda: gocontext.with_timeout(gocontext.background(), math.nan),
        lambda: gocontext.with_timeout_cause(gocontext.background(), math.nan, None),
        lambda: gocontext.with_deadline(gocontext.background(), math.nan),
        lambda: gocontext.with_deadline_cause(gocontext.background(), math.nan, None),
        lambda: gocontext.background().done().wait(math.nan),
    ],
)
def test_nan_is_a_value_error(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="NaN"):
        call()


@pytest.mark.parametrize("bad", ["1", None, [1], True])
def test_a_timeout_that_is_not_a_number_is_a_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match="timeout"):
        gocontext.with_timeout(gocontext.background(), bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="deadline"):
        gocontext.with_deadline(gocontext.background(), bad)  # type: ignore[arg-type]


def test_deadline_cause_is_recorded_only_when_the_deadline_ends_it(fake_clock: FakeClock) -> None:
    slow = TimeoutError("backend slow")
    a, _ = gocontext.with_timeout_cause(gocontext.background(), 1, slow)
    b, cancel_b = gocontext.with_deadline_cause(gocontext.background(), fake_clock.t + 1, slow)
    cancel_b()
    fake_clock.advance(1)
    assert gocontext.cause(a) is slow
    assert a.err().__cause__ is slow  # type: ignore[union-attr]
    assert isinstance(a.err(), gocontext.DeadlineExceeded)
    assert isinstance(gocontext.cause(b), gocontext.Canceled)
    with pytest.raises(TypeError, match="cause"):
        gocontext.with_timeout_cause(gocontext.background(), 1, "slow")  # type: ignore[arg-type]


def test_cancel_removes_the_timer_entry() -> None:
    before = _timer.timer.pending()
    pairs = [gocontext.with_timeout(gocontext.background(), 3600) for _ in range(100)]
    assert _timer.timer.pending() == before + 100
    for _, cancel in pairs:
        cancel()
    assert _timer.timer.pending() == before


def test_parent_cancel_releases_watched_descendant_timers() -> None:
    parent, cancel = gocontext.with_cancel(gocontext.background())
    before = _timer.timer.pending()
    child, _ = gocontext.with_timeout(parent, 3600)
    child.done().add_callback(lambda: None)
    assert _timer.timer.pending() == before + 1
    cancel()
    assert _timer.timer.pending() == before


def test_real_timer_fires_and_many_timers_share_one_thread() -> None:
    """Thousands of live deadlines add at most one thread (the shared timer)."""
    threads_before = threading.active_count() - _timer.timer.threads()
    pairs = [gocontext.with_timeout(gocontext.background(), 3600 + i) for i in range(10_000)]
    soon, _ = gocontext.with_timeout(gocontext.background(), 0.01)
    assert soon.done().wait(NEVER)
    assert isinstance(soon.err(), gocontext.DeadlineExceeded)
    assert threading.active_count() <= threads_before + 1
    for _, cancel in pairs:
        cancel()


def test_timers_fire_in_deadline_order() -> None:
    order: list[int] = []
    lock = threading.Lock()
    done = threading.Event()
    pairs = []
    for i in (3, 1, 2):
        ctx, cancel = gocontext.with_timeout(gocontext.background(), 0.01 * i)
        pairs.append((ctx, cancel))

        def record(i: int = i) -> None:
            with lock:
                order.append(i)
                if len(order) == 3:
                    done.set()

        ctx.done().add_callback(record)
    assert done.wait(NEVER)
    assert order == [1, 2, 3]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_process_times_out_contexts() -> None:
    # Start the timer in this process first, so the child inherits a dead timer thread.
    warm, _ = gocontext.with_timeout(gocontext.background(), 0.001)
    assert warm.done().wait(NEVER)
    long_lived, cancel_long = gocontext.with_timeout(gocontext.background(), 3600)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: we handle it
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            ctx, _ = gocontext.with_timeout(gocontext.background(), 0.01)
            parent, cancel = gocontext.with_cancel(gocontext.background())
            child, _ = gocontext.with_cancel(parent)
            w = threading.Thread(target=cancel)
            w.start()
            ok = (
                ctx.done().wait(NEVER)
                and isinstance(ctx.err(), gocontext.DeadlineExceeded)
                and child.done().wait(NEVER)
            )
            w.join()
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    cancel_long()
    assert isinstance(long_lived.err(), gocontext.Canceled)


def test_watching_a_timer_child_of_an_ended_parent_then_cancelling_it_releases_the_entry() -> None:
    before = _timer.timer.pending()
    parent, cancel = gocontext.with_cancel(gocontext.background())
    child, cancel_child = gocontext.with_timeout(parent, 3600)
    assert _timer.timer.pending() == before + 1
    cancel()  # nothing watches child yet: it learns of this when asked
    ran: list[int] = []
    child.done().add_callback(lambda: ran.append(1))
    assert ran == [1]
    cancel_child()
    assert _timer.timer.pending() == before
