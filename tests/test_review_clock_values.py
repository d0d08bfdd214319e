"""Review of the fake clock, values and the ambient context: hostile input, interrupts,
clocks used one after the other, and ``use()`` blocks left out of order."""

from __future__ import annotations

import contextvars
import functools
import math
import sys
import threading
from collections.abc import Generator

import anyio
import pytest

import gocontext
from gocontext.testing import fake_clock

from .conftest import NEVER, OtherContext

# --------------------------------------------------------------------------------------------
# The fake clock


def test_advance_refuses_a_step_that_would_take_the_clock_to_infinity() -> None:
    # Each step is finite, but the sum is not: a clock at inf makes every new deadline inf
    # (never fires) and every remaining() NaN.
    with fake_clock() as clock:
        clock.advance(sys.float_info.max)
        at = clock.now()
        with pytest.raises(ValueError, match=r"advance\(\)"):
            clock.advance(sys.float_info.max)
        assert clock.now() == at
        ctx, cancel = gocontext.with_timeout(gocontext.background(), 5)
        left = ctx.remaining()
        assert left is not None and math.isfinite(left)  # (not inf - inf)
        cancel()


@pytest.mark.parametrize(
    ("bad", "error"),
    [(True, TypeError), (False, TypeError), (None, TypeError), (b"1", TypeError),
     (10**400, ValueError), (-(10**400), ValueError)],
)  # fmt: skip
def test_advance_refuses_hostile_input_naming_the_call(bad: object, error: type) -> None:
    with fake_clock() as clock:
        start = clock.now()
        with pytest.raises(error, match=r"advance\(\)"):
            clock.advance(bad)  # type: ignore[arg-type]
        assert clock.now() == start


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_from_a_done_callback_goes_out_of_advance_after_every_end(
    interrupt: type[BaseException],
) -> None:
    """As from ``cancel()``: every due context still ends, then the interrupt reaches the
    caller of ``advance()`` (a Ctrl-C during a test is not swallowed into a log)."""
    ended: list[str] = []
    with fake_clock() as clock:
        bg = gocontext.background()
        a, _ = gocontext.with_timeout(bg, 1)
        b, _ = gocontext.with_timeout(bg, 2)
        late, cancel_late = gocontext.with_timeout(bg, 100)

        def boom() -> None:
            ended.append("a")
            raise interrupt

        a.done().add_callback(boom)
        b.done().add_callback(lambda: ended.append("b"))
        with pytest.raises(interrupt):
            clock.advance(5)
        assert ended == ["a", "b"]
        assert isinstance(a.err(), gocontext.DeadlineExceeded)
        assert isinstance(b.err(), gocontext.DeadlineExceeded)
        assert late.err() is None
        assert clock.advance(95) == 1  # the clock still works afterwards
        assert isinstance(late.err(), gocontext.DeadlineExceeded)
        cancel_late()


def test_advances_from_many_threads_end_each_context_once_in_deadline_order() -> None:
    threads, steps = 4, 50
    ended: list[float] = []
    with fake_clock() as clock:
        bg = gocontext.background()
        ctxs = []
        for i in range(1, threads * steps + 1):
            ctx, _ = gocontext.with_timeout(bg, i)
            d = ctx.deadline()
            assert d is not None
            ctx.done().add_callback(functools.partial(ended.append, d))
            ctxs.append(ctx)
        start = threading.Barrier(threads)
        counts: list[int] = []

        def advancer() -> None:
            start.wait(NEVER)
            n = 0
            for _ in range(steps):
                n += clock.advance(1)
            counts.append(n)

        workers = [threading.Thread(target=advancer) for _ in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(NEVER * 3)
        assert not any(t.is_alive() for t in workers)
        assert sum(counts) == threads * steps
        assert ended == sorted(ended)
        assert len(ended) == threads * steps
        assert all(isinstance(c.err(), gocontext.DeadlineExceeded) for c in ctxs)


def test_a_context_left_over_from_one_fake_clock_reads_real_time_under_the_next() -> None:
    """Leaving moves a live context to real time: a later fake clock must not move it."""
    with fake_clock():
        ctx, cancel = gocontext.with_timeout(gocontext.background(), 3600)
        child, _ = gocontext.with_cancel(ctx)
    with fake_clock() as second:
        assert second.advance(7200) == 0
        for c in (ctx, child):
            left = c.remaining()
            assert left is not None and 3000 < left <= 3600, left
            assert c.err() is None
        # A timeout made under it on the second clock takes the earlier deadline: its own.
        short, cancel_short = gocontext.with_timeout(ctx, 10)
        assert second.advance(10) == 1
        assert isinstance(short.err(), gocontext.DeadlineExceeded)
        cancel_short()
    cancel()
    assert isinstance(child.err(), gocontext.Canceled)


async def test_a_task_sleeping_on_a_left_over_deadline_is_not_woken_by_the_next_clock(
    anyio_backend: str,
) -> None:
    with fake_clock():
        ctx, cancel = gocontext.with_timeout(gocontext.background(), 3600)
    raised: list[BaseException] = []
    with fake_clock() as second:
        with anyio.fail_after(NEVER):
            async with anyio.create_task_group() as tg:

                async def sleeper() -> None:
                    try:
                        await gocontext.sleep(ctx, 3600 * 2)
                    except gocontext.ContextError as e:
                        raised.append(e)

                tg.start_soon(sleeper)
                while second._timer.pending() < 1:  # the sleep's own deadline, on this clock
                    await anyio.sleep(0)
                assert second.advance(3601) == 0  # ctx is on real time now: not due
                await anyio.wait_all_tasks_blocked()
                assert raised == []
                left = ctx.remaining()
                assert left is not None and left > 3000
                cancel()
    assert len(raised) == 1 and isinstance(raised[0], gocontext.Canceled)


# --------------------------------------------------------------------------------------------
# The ambient context: use() blocks left out of order


def _step(ctx: gocontext.Context) -> Generator[None, None, None]:
    with gocontext.use(ctx):
        yield


def test_use_blocks_in_generators_closed_out_of_order_leave_no_stale_context() -> None:
    a, _ = gocontext.with_cancel(gocontext.background())
    b, _ = gocontext.with_cancel(gocontext.background())
    first, second = _step(a), _step(b)
    next(first)
    next(second)
    assert gocontext.current() is b
    first.close()  # a's block ends; b's is still open
    assert gocontext.current() is b
    second.close()
    assert gocontext.current() is gocontext.background()


def test_use_exited_out_of_order_by_hand_restores_what_was_before_both() -> None:
    outer, _ = gocontext.with_cancel(gocontext.background())
    a = gocontext.with_value(outer, "k", "a")
    b = gocontext.with_value(outer, "k", "b")
    with gocontext.use(outer):
        ua, ub = gocontext.use(a), gocontext.use(b)
        ua.__enter__()
        ub.__enter__()
        ua.__exit__(None, None, None)
        assert gocontext.current() is b
        ub.__exit__(None, None, None)
        assert gocontext.current() is outer
        ub.__exit__(None, None, None)  # twice: nothing more
        assert gocontext.current() is outer
    assert gocontext.current() is gocontext.background()


def test_use_of_the_same_context_twice_exited_out_of_order() -> None:
    a, _ = gocontext.with_cancel(gocontext.background())
    u1, u2 = gocontext.use(a), gocontext.use(a)
    u1.__enter__()
    u2.__enter__()
    u1.__exit__(None, None, None)
    assert gocontext.current() is a
    u2.__exit__(None, None, None)
    assert gocontext.current() is gocontext.background()


def test_a_use_object_can_be_entered_again_after_it_was_left() -> None:
    a, _ = gocontext.with_cancel(gocontext.background())
    u = gocontext.use(a)
    for _ in range(2):
        with u:
            assert gocontext.current() is a
        assert gocontext.current() is gocontext.background()


def test_a_copied_context_keeps_the_ambient_context_after_the_original_leaves() -> None:
    a, _ = gocontext.with_cancel(gocontext.background())
    with gocontext.use(a):
        copied = contextvars.copy_context()
    assert gocontext.current() is gocontext.background()
    assert copied.run(gocontext.current) is a


async def test_use_in_a_task_does_not_leak_into_its_siblings_or_spawner(
    anyio_backend: str,
) -> None:
    a, _ = gocontext.with_cancel(gocontext.background())
    b = OtherContext(gocontext.with_value(gocontext.background(), "k", "b"))
    entered = anyio.Event()
    release = anyio.Event()
    seen: dict[str, object] = {}

    async def holder() -> None:
        with gocontext.use(a):
            entered.set()
            await release.wait()
            seen["holder"] = gocontext.current()

    async def other() -> None:
        seen["other-start"] = gocontext.current()
        with gocontext.use(b) as view:
            await anyio.sleep(0)
            seen["other"] = gocontext.current()
            seen["view"] = view

    with anyio.fail_after(NEVER):
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await entered.wait()
            tg.start_soon(other)
            await anyio.wait_all_tasks_blocked()
            assert gocontext.current() is gocontext.background()
            release.set()
    assert seen["holder"] is a
    assert seen["other-start"] is gocontext.background()
    assert seen["other"] is seen["view"]
    assert gocontext.current().value("k") is None
    assert seen["view"].value("k") == "b"  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# Values


def test_values_at_depth_through_merges_and_foreign_contexts() -> None:
    k1, k2, k3 = gocontext.Key[str]("k1"), gocontext.Key[str]("k2"), gocontext.Key[str]("k3")
    left = gocontext.with_value(gocontext.background(), k1, "left")
    right = gocontext.with_value(gocontext.background(), k1, "right")
    right = gocontext.with_value(right, k2, "right2")
    ctx: gocontext.Context = OtherContext(left)
    for i in range(300):
        ctx = gocontext.with_value(ctx, f"n{i}", i)
        if i % 50 == 0:
            ctx, _ = gocontext.merge(ctx, OtherContext(right))
    ctx = gocontext.with_value(ctx, k3, "top")
    assert ctx.value(k1) == "left"  # the first parent of each merge is asked first
    assert ctx.value(k2) == "right2"
    assert ctx.value(k3) == "top"
    assert ctx.value("n0") == 0 and ctx.value("n299") == 299
    assert ctx.value("missing") is None


def test_propagated_key_names_hostile_but_valid_and_invalid() -> None:
    from gocontext import _propagation

    long_name = "x" * 10_000
    key = gocontext.PropagatedKey(long_name)
    assert gocontext.PropagatedKey(long_name) is key
    ordinary = gocontext.Key[str]("review-dup")
    propagated = gocontext.PropagatedKey("review-dup")
    ctx = gocontext.with_value(gocontext.background(), ordinary, "secret")
    assert _propagation.outgoing_values(ctx).get("review-dup") is None  # same name, not sent
    ctx = gocontext.with_value(ctx, propagated, "sent")
    assert _propagation.outgoing_values(ctx)["review-dup"] == "sent"
    assert ctx.value(ordinary) == "secret"
    for bad in ("caf\u00e9", "a\nb", "a\x00", "k=v", "a,b", "a;b", " a", "a\t", "\u0661"):
        with pytest.raises(ValueError, match="token"):
            gocontext.PropagatedKey(bad)
    with pytest.raises(ValueError, match="token"):
        gocontext.PropagatedKey(b"bytes")  # type: ignore[arg-type]
    bad_values: list[object] = [b"bytes", 1, None]
    for value in bad_values:
        with pytest.raises(TypeError, match="str value"):
            gocontext.with_value(gocontext.background(), propagated, value)  # type: ignore[misc]


def test_a_key_whose_hash_raises_is_a_type_error_naming_with_value() -> None:
    class Hostile:
        def __hash__(self) -> int:
            raise RuntimeError("no hash")

    with pytest.raises(TypeError, match=r"with_value\(\)"):
        gocontext.with_value(gocontext.background(), Hostile(), 1)
