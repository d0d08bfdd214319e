"""The public fake clock: deadlines that move only when the test says so."""

from __future__ import annotations

import math
import threading

import anyio
import pytest

import gocontext
from gocontext import _timer
from gocontext.http._outgoing import time_left
from gocontext.testing import FakeClock, fake_clock

from .conftest import NEVER


def test_advance_ends_what_is_due_in_deadline_order() -> None:
    ended: list[str] = []
    with fake_clock() as clock:
        bg = gocontext.background()
        ctxs = {}
        for name, timeout in (("c", 3.0), ("a", 1.0), ("b", 2.0), ("late", 10.0)):
            ctx, _ = gocontext.with_timeout(bg, timeout)
            ctx.done().add_callback(lambda name=name: ended.append(name))
            ctxs[name] = ctx
        assert clock.advance(0.999) == 0
        assert ended == []
        assert ctxs["a"].remaining() == pytest.approx(0.001)
        assert clock.advance(2.001) == 3
        assert ended == ["a", "b", "c"]
        assert isinstance(ctxs["a"].err(), gocontext.DeadlineExceeded)
        assert ctxs["late"].err() is None
        assert ctxs["late"].remaining() == pytest.approx(7.0)


def test_clock_starts_at_the_real_monotonic_time_and_deadlines_read_on_it() -> None:
    import time

    before = time.monotonic()
    with fake_clock() as clock:
        after = time.monotonic()
        assert before <= clock.now() <= after
        ctx, _ = gocontext.with_timeout(gocontext.background(), 5)
        assert ctx.deadline() == clock.now() + 5
        clock.advance(2)
        assert ctx.remaining() == pytest.approx(3.0)


def test_advance_wakes_a_thread_waiting_on_done() -> None:
    with fake_clock() as clock:
        ctx, _ = gocontext.with_timeout(gocontext.background(), 3600)
        woke = threading.Event()
        started = threading.Event()

        def waiter() -> None:
            started.set()
            if ctx.done().wait(NEVER * 10):
                woke.set()

        t = threading.Thread(target=waiter)
        t.start()
        assert started.wait(NEVER)
        clock.advance(3600)
        assert woke.wait(NEVER)
        t.join(NEVER)


async def test_advance_wakes_a_task_awaiting_done(anyio_backend: str) -> None:
    with fake_clock() as clock:
        ctx, _ = gocontext.with_timeout(gocontext.background(), 3600)
        woke = anyio.Event()
        with anyio.fail_after(NEVER):
            async with anyio.create_task_group() as tg:

                async def waiter() -> None:
                    await ctx.done()
                    woke.set()

                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                assert not woke.is_set()
                clock.advance(3600)
                await woke.wait()
        assert isinstance(ctx.err(), gocontext.DeadlineExceeded)


async def _until_pending(clock: FakeClock, n: int) -> None:
    # The sleeping task registers its deadline on the fake clock; wait until it has, so the
    # advance that follows is sure to concern it (bounded by the caller's fail_after).
    while clock._timer.pending() < n:
        await anyio.sleep(0)


async def test_advance_wakes_a_task_in_gocontext_sleep(anyio_backend: str) -> None:
    with fake_clock() as clock:
        bg = gocontext.background()
        slept = anyio.Event()
        with anyio.fail_after(NEVER):
            async with anyio.create_task_group() as tg:

                async def sleeper() -> None:
                    await gocontext.sleep(bg, 3600)
                    slept.set()

                tg.start_soon(sleeper)
                await _until_pending(clock, 1)
                clock.advance(3599)
                await anyio.wait_all_tasks_blocked()
                assert not slept.is_set()
                clock.advance(1)
                await slept.wait()


async def test_gocontext_sleep_on_the_fake_clock_still_raises_when_ctx_ends(
    anyio_backend: str,
) -> None:
    with fake_clock() as clock:
        ctx, _ = gocontext.with_timeout(gocontext.background(), 10)
        with anyio.fail_after(NEVER):
            async with anyio.create_task_group() as tg:
                raised: list[BaseException] = []

                async def sleeper() -> None:
                    try:
                        await gocontext.sleep(ctx, 3600)
                    except gocontext.DeadlineExceeded as e:
                        raised.append(e)

                tg.start_soon(sleeper)
                await anyio.wait_all_tasks_blocked()
                clock.advance(10)
        assert len(raised) == 1


def test_contexts_made_before_entry_keep_real_time() -> None:
    bg = gocontext.background()
    soon, _ = gocontext.with_timeout(bg, 0.05)
    hour, cancel_hour = gocontext.with_timeout(bg, 3600)
    with fake_clock() as clock:
        clock.advance(10**6)
        assert hour.err() is None  # the fake clock does not move real deadlines
        assert soon.done().wait(NEVER)  # and real ones still fire in real time
        assert isinstance(soon.err(), gocontext.DeadlineExceeded)
    cancel_hour()


def test_contexts_made_before_entry_read_their_time_left_in_real_time() -> None:
    hour, cancel_hour = gocontext.with_timeout(gocontext.background(), 3600)
    with fake_clock() as clock:
        clock.advance(7200)
        left = hour.remaining()
        assert left is not None and 3500 < left <= 3600  # not the fake clock's -3600
        assert 3500 < time_left(hour) <= 3600  # (what a deadline header says)
    cancel_hour()


def test_a_timeout_made_inside_under_a_real_deadline_runs_on_the_fake_clock() -> None:
    """A child made inside, under a context made before entry with less real time left than
    the child's own timeout, still ends when the fake clock reaches its own deadline (its
    parent's real deadline ends it too, in real time: whichever comes first)."""
    parent, cancel_parent = gocontext.with_timeout(gocontext.background(), 30)
    with fake_clock() as clock:
        child, cancel_child = gocontext.with_timeout(parent, 60)
        assert clock.advance(45) == 0
        left = child.remaining()
        # (45 s on: the fake clock's own 15 s left, give or take a rounding of its start)
        assert left is not None and left == pytest.approx(15)
        assert child.err() is None
        assert clock.advance(15) == 1
        assert isinstance(child.err(), gocontext.DeadlineExceeded)
        assert parent.err() is None
        cancel_child()
    cancel_parent()
    assert isinstance(child.err(), gocontext.DeadlineExceeded)


async def test_gocontext_sleep_follows_the_fake_clock_under_a_real_deadline(
    anyio_backend: str,
) -> None:
    budget, cancel = gocontext.with_timeout(gocontext.background(), NEVER * 3)
    with fake_clock() as clock:
        with anyio.fail_after(NEVER):
            async with anyio.create_task_group() as tg:
                slept = anyio.Event()

                async def sleeper() -> None:
                    await gocontext.sleep(budget, NEVER * 6)  # longer than budget's real time
                    slept.set()

                tg.start_soon(sleeper)
                await _until_pending(clock, 1)
                clock.advance(NEVER * 6)
                await slept.wait()
    assert budget.err() is None
    cancel()


def test_leaving_counts_the_time_left_in_real_time() -> None:
    with fake_clock() as clock:
        bg = gocontext.background()
        short, _ = gocontext.with_timeout(bg, 100)
        long, cancel_long = gocontext.with_timeout(bg, 3600)
        clock.advance(99.99)
        assert short.err() is None
    assert _timer.now is not clock.now
    # The short one had 10 ms left on the fake clock: it ends in real time, by itself.
    assert short.done().wait(NEVER)
    assert isinstance(short.err(), gocontext.DeadlineExceeded)
    left = long.remaining()
    assert left is not None and 3400 < left <= 3600 - 99.99
    assert long.err() is None
    with pytest.raises(RuntimeError, match="advance"):
        clock.advance(1)
    cancel_long()


def test_fake_clocks_do_not_nest() -> None:
    with fake_clock():
        with pytest.raises(RuntimeError, match="fake_clock"), fake_clock():
            pass  # pragma: no cover
    with fake_clock():  # the failed attempt left nothing behind
        pass


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan, math.inf, -math.inf])
def test_advance_refuses_what_is_no_step_forward(bad: float) -> None:
    with fake_clock() as clock:
        start = clock.now()
        with pytest.raises(ValueError, match=r"advance\(\)"):
            clock.advance(bad)
        assert clock.now() == start


def test_advance_refuses_what_is_no_number() -> None:
    with fake_clock() as clock, pytest.raises(TypeError, match=r"advance\(\)"):
        clock.advance("1")  # type: ignore[arg-type]


def test_a_deadline_scheduled_on_a_fake_clock_just_as_it_is_left_still_fires() -> None:
    # A thread that picked up the fake clock's timer just before the block ended schedules on
    # it just after: the deadline must reach the real timer, not sit on a clock nobody moves.
    fired = threading.Event()

    class Target:
        def _expire(self) -> None:
            fired.set()

    with fake_clock() as clock:
        late_timer = _timer.timer
        fake_deadline = clock.now() + 0.01
    late_timer.schedule(fake_deadline, Target())
    assert fired.wait(NEVER)


def test_leaving_also_moves_the_deadline_children_inherited() -> None:
    with fake_clock() as clock:
        parent, cancel = gocontext.with_timeout(gocontext.background(), 3600)
        child, _ = gocontext.with_cancel(parent)
        grandchild = gocontext.with_value(child, "k", 1)
        clock.advance(100)
    assert child.deadline() == parent.deadline() == grandchild.deadline()
    left = child.remaining()
    assert left is not None and 3400 < left <= 3500
    cancel()


def test_advance_called_from_a_deadline_callback_does_not_deadlock() -> None:
    with fake_clock() as clock:
        bg = gocontext.background()
        first, _ = gocontext.with_timeout(bg, 1)
        second, _ = gocontext.with_timeout(bg, 2)
        first.done().add_callback(lambda: clock.advance(1))
        t = threading.Thread(target=clock.advance, args=(1,), daemon=True)
        t.start()
        t.join(NEVER)
        assert not t.is_alive()
        assert isinstance(second.err(), gocontext.DeadlineExceeded)
        assert clock.now() == pytest.approx(first.deadline() + 1)  # type: ignore[operator]
