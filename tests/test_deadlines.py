"""Deadlines: the shared timer, exact firing on a fake clock, causes, and bad input."""

from __future__ import annotations

import math
import os
import threading
import time
from datetime import timedelta

import pytest

import gocontext

from .conftest import NEVER, FakeClock, NewTimerEntries


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


def test_a_request_context_ends_by_its_deadline_or_by_a_cancel_with_a_cause(
    fake_clock: FakeClock,
) -> None:
    """What a server makes per request: one node with a deadline whose cancel takes a cause."""
    from gocontext._context import timeout_cancel_cause

    before = NewTimerEntries()
    gone = ConnectionResetError("client went away")
    left, cancel_left = timeout_cancel_cause(gocontext.background(), 1.0)
    cancel_left(gone)
    assert gocontext.cause(left) is gone
    assert isinstance(left.err(), gocontext.Canceled)
    assert before.count() == 0  # the cancel took the timer entry with it
    timed, _ = timeout_cancel_cause(gocontext.background(), 1.0)
    fake_clock.advance(1.0)
    assert isinstance(timed.err(), gocontext.DeadlineExceeded)
    # Under a parent that ends first, the pair is a plain child whose cancel still takes one.
    parent, cancel_parent = gocontext.with_timeout(gocontext.background(), 0.5)
    child, cancel_child = timeout_cancel_cause(parent, 1.0)
    assert child.deadline() == parent.deadline()
    with pytest.raises(TypeError, match="cause"):
        cancel_child("gone")  # type: ignore[arg-type]
    cancel_child(gone)
    assert gocontext.cause(child) is gone
    cancel_parent()


def test_cancel_removes_the_timer_entry() -> None:
    before = NewTimerEntries()
    pairs = [gocontext.with_timeout(gocontext.background(), 3600) for _ in range(100)]
    assert before.count() == 100
    for _, cancel in pairs:
        cancel()
    assert before.count() == 0


@pytest.mark.parametrize("through_a_value", [False, True])
def test_with_timeout_under_each_kind_of_parent(through_a_value: bool) -> None:
    """with_timeout() builds its node itself under a live parent of ours; every other parent
    takes the general path: each way gives the same child, and a timer entry only when the
    child needs one."""
    key = gocontext.Key[int]("k")

    def under(p: gocontext.Context) -> gocontext.Context:
        return gocontext.with_value(p, key, 1) if through_a_value else p

    before = NewTimerEntries()
    # Live parents: the child holds an entry until cancelled, and keeps the parent's values.
    for parent, cancel_parent in (
        (gocontext.background(), lambda: None),
        gocontext.with_cancel(gocontext.background()),
        gocontext.with_timeout(gocontext.background(), 7200),  # a later deadline
    ):
        p = under(parent)
        child, cancel = gocontext.with_timeout(p, 3600)
        assert 3590 < child.remaining() <= 3600
        assert child.value(key) == (1 if through_a_value else None)
        assert child.err() is None and before.count() >= 1
        cancel()
        assert isinstance(child.err(), gocontext.Canceled)
        cancel_parent()
    assert before.count() == 0
    # An earlier deadline above: the child is a plain child, with no entry of its own.
    parent, cancel_parent = gocontext.with_timeout(gocontext.background(), 60)
    child, cancel = gocontext.with_timeout(under(parent), 3600)
    assert child.deadline() == parent.deadline() and before.count() == 1
    cancel()
    cancel_parent()
    # An ended parent: the child is ended at once and holds no entry.
    parent, cancel_parent = gocontext.with_cancel(gocontext.background())
    cancel_parent()
    child, cancel = gocontext.with_timeout(under(parent), 3600)
    assert isinstance(child.err(), gocontext.Canceled) and before.count() == 0
    # A parent that ended unknown to its nearest node (known by a walk): the same.
    top, cancel_top = gocontext.with_cancel(gocontext.background())
    low, _ = gocontext.with_cancel(gocontext.with_cancel(top)[0])
    cancel_top()
    assert low.err() is not None  # (the walk past low's parent writes the end it found on low)
    child, cancel = gocontext.with_timeout(under(low), 3600)
    assert isinstance(child.err(), gocontext.Canceled) and before.count() == 0
    # A deadline already gone, and one that never comes.
    child, _ = gocontext.with_timeout(under(gocontext.background()), -1.0)
    assert isinstance(child.err(), gocontext.DeadlineExceeded)
    child, cancel = gocontext.with_timeout(under(gocontext.background()), math.inf)
    assert child.err() is None and child.deadline() == math.inf and before.count() == 0
    cancel()


def test_parent_cancel_releases_watched_descendant_timers() -> None:
    parent, cancel = gocontext.with_cancel(gocontext.background())
    before = NewTimerEntries()
    child, _ = gocontext.with_timeout(parent, 3600)
    child.done().add_callback(lambda: None)
    assert before.count() == 1
    cancel()
    assert before.count() == 0


def test_real_timer_fires_and_many_timers_share_one_thread() -> None:
    """Thousands of live deadlines add at most one thread (the shared timer)."""
    before = set(threading.enumerate())  # (others' threads may end meanwhile: not counted)
    pairs = [gocontext.with_timeout(gocontext.background(), 3600 + i) for i in range(10_000)]
    soon, _ = gocontext.with_timeout(gocontext.background(), 0.01)
    assert soon.done().wait(NEVER)
    assert isinstance(soon.err(), gocontext.DeadlineExceeded)
    new = set(threading.enumerate()) - before
    assert len(new) <= 1 and all(t.name.startswith("gocontext-") for t in new), new
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
    before = NewTimerEntries()
    parent, cancel = gocontext.with_cancel(gocontext.background())
    child, cancel_child = gocontext.with_timeout(parent, 3600)
    assert before.count() == 1
    cancel()  # nothing watches child yet: it learns of this when asked
    ran: list[int] = []
    child.done().add_callback(lambda: ran.append(1))
    assert ran == [1]
    cancel_child()
    assert before.count() == 0


# ---- deadlines as aware datetimes, and the wall-clock float refused ----------------------------


def test_an_aware_datetime_deadline_is_converted_once_to_the_monotonic_clock(
    fake_clock: FakeClock,
) -> None:
    from datetime import datetime, timezone

    for zone in (timezone.utc, timezone(timedelta(hours=-7))):
        at = datetime.now(zone) + timedelta(seconds=30)
        ctx, cancel = gocontext.with_deadline(gocontext.background(), at)
        d = ctx.deadline()
        # 30 s from the wall clock's now, give or take the time the call took
        assert d is not None and fake_clock.t + 29 < d <= fake_clock.t + 30
        assert ctx.err() is None
        fake_clock.advance(31)
        assert isinstance(ctx.err(), gocontext.DeadlineExceeded)
        cancel()


def test_an_aware_datetime_in_the_past_gives_an_ended_context_with_the_cause() -> None:
    from datetime import datetime, timezone

    late = TimeoutError("late")
    past = datetime.now(timezone.utc) - timedelta(minutes=1)
    ctx, _ = gocontext.with_deadline_cause(gocontext.background(), past, late)
    assert isinstance(ctx.err(), gocontext.DeadlineExceeded)
    assert gocontext.cause(ctx) is late


@pytest.mark.parametrize("fname", ["with_deadline", "with_deadline_cause"])
def test_a_naive_datetime_is_refused(fname: str) -> None:
    from datetime import datetime

    naive = datetime.now() + timedelta(seconds=5)
    with pytest.raises(ValueError, match=rf"{fname}\(\).*naive datetime.*timezone"):
        if fname == "with_deadline":
            gocontext.with_deadline(gocontext.background(), naive)
        else:
            gocontext.with_deadline_cause(gocontext.background(), naive, None)


@pytest.mark.parametrize("fname", ["with_deadline", "with_deadline_cause"])
def test_a_wall_clock_float_is_refused_with_advice(fname: str) -> None:
    wall = time.time() + 1
    with pytest.raises(ValueError) as raised:
        if fname == "with_deadline":
            gocontext.with_deadline(gocontext.background(), wall)
        else:
            gocontext.with_deadline_cause(gocontext.background(), wall, None)
    msg = str(raised.value)
    assert f"{fname}()" in msg
    assert repr(wall) in msg
    assert "time.time()" in msg and "time.monotonic()" in msg and "datetime" in msg


def test_far_but_plausible_monotonic_deadlines_and_infinity_still_pass() -> None:
    bg = gocontext.background()
    nine_years = time.monotonic() + 9 * 365 * 86400
    ctx, cancel = gocontext.with_deadline(bg, nine_years)
    assert ctx.deadline() == nine_years
    cancel()
    ctx, cancel = gocontext.with_deadline(bg, math.inf)
    assert ctx.err() is None
    cancel()
    ctx, cancel = gocontext.with_timeout(bg, 1e12)  # a timeout is relative: no such doubt
    assert ctx.err() is None
    cancel()


def test_a_date_that_is_no_datetime_is_a_type_error() -> None:
    from datetime import date

    with pytest.raises(TypeError, match=r"with_deadline\(\).*datetime"):
        gocontext.with_deadline(gocontext.background(), date.today())  # type: ignore[arg-type]


def test_a_far_deadline_made_by_with_timeout_still_crosses_to_a_ray_worker() -> None:
    # with_timeout(ctx, 1e9) is legitimate; its receiving side must not take it for a
    # time.time() passed to with_deadline.
    pytest.importorskip("ray")
    from gocontext import _propagation
    from gocontext.ray import _serialize

    for boot in (_serialize._BOOT_ID, "another host"):
        at = time.monotonic() + 1e9
        values = _propagation.outgoing_values(gocontext.background())
        wire = _serialize.Wire(values, None, None, _serialize.Deadline(1e9, boot, at))
        ctx = _serialize.rebuild(wire)
        assert ctx.err() is None
        d = ctx.deadline()
        assert d is not None and d >= at - 1e6


async def test_a_far_anyio_deadline_still_reaches_the_scope(anyio_backend: str) -> None:
    # scope() turns the enclosing anyio/trio deadline into the child's; a far one is no
    # time.time() passed to with_deadline.
    import anyio

    with anyio.fail_after(1e9):
        async with gocontext.scope(gocontext.background()) as child:
            left = child.remaining()
            assert left is not None and 1e9 - 1e6 < left <= 1e9
