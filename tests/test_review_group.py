"""Review of Group and TaskGroup at their edges: cancellations that are not the group's own,
a member's answer to a cancellation, exceptions of another framework, long-lived groups."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import weakref
from collections.abc import AsyncIterator

import anyio
import pytest
import trio

import gocontext
from gocontext._async import FrameworkCancelled

from .conftest import NEVER

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup


# --------------------------------------------------------------------------------------------
# An outer cancellation propagates untouched, even when members answer it with g.ctx's error


@pytest.mark.parametrize("member", ["task", "thread"])
async def test_an_outer_cancel_is_not_replaced_by_a_members_answer_to_it(member: str) -> None:
    """The idiom of a thread (``ctx.done().wait(); ctx.check()``), or a task that checks
    ``ctx`` as it cleans up, answers the group's stop with ``g.ctx``'s own error: that is no
    failure of its own, so the framework's cancellation goes on (``move_on_after`` moves on,
    ``fail_after`` raises TimeoutError), never a ``Canceled`` in its place."""
    started = threading.Event()

    def thread(ctx: gocontext.Context) -> None:
        started.set()
        assert ctx.done().wait(NEVER)
        ctx.check()

    async def task(ctx: gocontext.Context) -> None:
        started.set()
        try:
            await anyio.sleep(NEVER)
        finally:
            with anyio.CancelScope(shield=True):
                await ctx.done()  # the group's exit cancels g.ctx
            ctx.check()

    with anyio.CancelScope() as outer:
        async with gocontext.TaskGroup(gocontext.background()) as g:
            if member == "task":
                g.go(task)
            else:
                g.go_thread(thread)
            await anyio.to_thread.run_sync(started.wait, NEVER)
            outer.cancel()
            await anyio.sleep(NEVER)
    assert outer.cancelled_caught  # the framework's own cancellation, untouched
    assert isinstance(gocontext.cause(g.ctx), FrameworkCancelled)
    assert [type(e) for e in g.errors] == [gocontext.Canceled]  # still listed


async def test_fail_after_still_raises_timeout_error_over_a_thread_that_checks_its_context() -> (
    None
):
    started = threading.Event()

    def thread(ctx: gocontext.Context) -> None:
        started.set()
        assert ctx.done().wait(NEVER)
        ctx.check()

    with pytest.raises(TimeoutError) as raised:
        with anyio.fail_after(NEVER * 10) as scope:
            async with gocontext.TaskGroup(gocontext.background()) as g:
                g.go_thread(thread)
                await anyio.to_thread.run_sync(started.wait, NEVER)
                scope.deadline = anyio.current_time()  # the deadline passes now
                await anyio.sleep(NEVER)
    assert not isinstance(raised.value, gocontext.ContextError)
    assert [type(e) for e in g.errors] == [gocontext.Canceled]


async def test_a_real_failure_after_an_outer_cancel_still_wins() -> None:
    """What the answer rule leaves alone: an error that is not ``g.ctx``'s wins over the
    cancellation, as in anyio's and trio's task groups."""
    boom = OSError("the disk went away while stopping")
    started = threading.Event()

    def thread(ctx: gocontext.Context) -> None:
        started.set()
        assert ctx.done().wait(NEVER)
        raise boom

    with pytest.raises(OSError) as raised:
        with anyio.CancelScope() as outer:
            async with gocontext.TaskGroup(gocontext.background()) as g:
                g.go_thread(thread)
                await anyio.to_thread.run_sync(started.wait, NEVER)
                outer.cancel()
                await anyio.sleep(NEVER)
    assert raised.value is boom
    assert g.errors == [boom]


# --------------------------------------------------------------------------------------------
# Cancellations raised by hand, or by another framework


async def test_a_cancellation_nobody_asked_for_is_the_members_failure_raised_itself(
    anyio_backend: str,
) -> None:
    """A member task ends with its framework's cancellation although nothing cancelled it (it
    awaited a future someone else cancelled; trio's raised by hand): a failure like any other,
    raised itself, never swapped for a sibling's ``Canceled`` nor dropped."""
    seen: list[BaseException | None] = []
    mine: list[BaseException] = []

    async def failing(ctx: gocontext.Context) -> None:
        await anyio.wait_all_tasks_blocked()
        if anyio_backend == "asyncio":
            fut = asyncio.get_running_loop().create_future()
            fut.cancel()  # cancelled by someone else: this task is not
            try:
                await fut
            except BaseException as e:
                mine.append(e)
                raise
        else:
            e = trio.Cancelled._create()
            mine.append(e)
            raise e

    async def sibling(ctx: gocontext.Context) -> None:
        try:
            await gocontext.sleep(ctx, NEVER)  # raises g.ctx's error when the group stops
        finally:
            seen.append(gocontext.cause(ctx))

    with pytest.raises(anyio.get_cancelled_exc_class()) as raised:
        async with gocontext.TaskGroup(gocontext.background()) as g:
            g.go(sibling)
            g.go(failing)
    assert raised.value is mine[0]
    assert g.errors[0] is mine[0]
    assert seen == [mine[0]]
    assert gocontext.cause(g.ctx) is mine[0]


async def test_another_frameworks_cancellation_is_an_ordinary_failure(anyio_backend: str) -> None:
    """Under trio an ``asyncio.CancelledError`` is an exception like any other (and a
    ``trio.Cancelled`` under asyncio): it is raised itself, never inside an exception group of
    the task group's making, and never told to the siblings as a cancellation."""
    other = trio.Cancelled._create() if anyio_backend == "asyncio" else asyncio.CancelledError()
    seen: list[BaseException | None] = []

    async def failing(ctx: gocontext.Context) -> None:
        await anyio.wait_all_tasks_blocked()
        raise other

    async def sibling(ctx: gocontext.Context) -> None:
        try:
            await anyio.sleep(NEVER)
        finally:
            seen.append(gocontext.cause(ctx))

    with pytest.raises(BaseException) as raised:  # (which one: checked just below)
        async with gocontext.TaskGroup(gocontext.background()) as g:
            g.go(sibling)
            g.go(failing)
    assert raised.value is other
    assert g.errors == [other]
    assert seen == [other]


async def test_a_group_of_the_members_own_holding_another_frameworks_cancellation_passes(
    anyio_backend: str,
) -> None:
    other = trio.Cancelled._create() if anyio_backend == "asyncio" else asyncio.CancelledError()
    group = BaseExceptionGroup("mine", [other])

    async def failing(ctx: gocontext.Context) -> None:
        raise group

    with pytest.raises(BaseExceptionGroup) as raised:
        async with gocontext.TaskGroup(gocontext.background()) as g:
            g.go(failing)
    assert raised.value is group
    assert g.errors == [group]


# --------------------------------------------------------------------------------------------
# A long-lived group (a server's) keeps no record of every thread it ever ran


async def test_a_long_lived_task_group_forgets_its_finished_threads() -> None:
    rounds = 300
    refs: list[weakref.ref[threading.Thread]] = []

    def member(ctx: gocontext.Context, done: threading.Event) -> None:
        refs.append(weakref.ref(threading.current_thread()))
        done.set()

    async with gocontext.TaskGroup(gocontext.background()) as g:
        for _ in range(rounds):  # one at a time: nothing but the group keeps them
            done = threading.Event()
            g.go_thread(member, done)
            assert await anyio.to_thread.run_sync(done.wait, NEVER)
        gc.collect()
        kept = sum(r() is not None for r in refs)
    assert kept < rounds // 2, f"{kept} of {rounds} finished threads are still held"


def test_a_long_lived_group_forgets_its_finished_threads() -> None:
    """Coverage: the thread Group already does (the TaskGroup's twin above did not)."""
    rounds = 300
    refs: list[weakref.ref[threading.Thread]] = []

    def member(ctx: gocontext.Context, done: threading.Event) -> None:
        refs.append(weakref.ref(threading.current_thread()))
        done.set()

    with gocontext.Group(gocontext.background()) as g:
        for _ in range(rounds):
            done = threading.Event()
            g.go(member, done)
            assert done.wait(NEVER)
        gc.collect()
        kept = sum(r() is not None for r in refs)
    assert kept < rounds // 2, f"{kept} of {rounds} finished threads are still held"


# --------------------------------------------------------------------------------------------
# The body's answer to a failure: g.ctx's own error gives way to the failure, as go()'s does


def feed_until_stopped(ctx: gocontext.Context) -> None:
    """A body's feeding loop: it stops with ``ctx``'s error once ``ctx`` ends."""
    assert ctx.done().wait(NEVER), "the group's context never ended"
    ctx.check()


def test_the_bodys_check_of_the_groups_context_gives_way_to_the_failure_that_ended_it() -> None:
    """Leaving the block raises the failure, not the ``Canceled`` it caused in the body (as when
    ``go()`` refuses for it): ``except LookupError`` works whichever the body noticed first."""
    boom = LookupError("shard 3 is missing")

    def failing(ctx: gocontext.Context) -> None:
        raise boom

    with pytest.raises(LookupError) as raised:
        with gocontext.Group(gocontext.background()) as g:
            g.go(failing)
            feed_until_stopped(g.ctx)
    assert raised.value is boom
    assert isinstance(raised.value.__context__, gocontext.Canceled)  # the body's, kept
    assert g.errors == [boom]


def test_the_bodys_own_error_still_propagates_after_a_failure() -> None:
    """What the rule leaves alone: an error of the body's own is raised, not the failure."""
    boom = LookupError("shard 3 is missing")
    mine = ValueError("the body's own")

    def failing(ctx: gocontext.Context) -> None:
        raise boom

    with pytest.raises(ValueError) as raised:
        with gocontext.Group(gocontext.background()) as g:
            g.go(failing)
            assert g.ctx.done().wait(NEVER)
            raise mine
    assert raised.value is mine
    assert g.errors == [boom]


def test_the_bodys_check_after_the_parent_ended_is_raised_itself() -> None:
    """The parent ended g.ctx before any failure: the body's ``Canceled`` is no answer to one."""
    parent, cancel = gocontext.with_cancel(gocontext.background())
    failed = threading.Event()

    def failing(ctx: gocontext.Context) -> None:
        assert ctx.done().wait(NEVER)
        try:
            raise LookupError("after the parent ended")
        finally:
            failed.set()

    with pytest.raises(gocontext.Canceled):
        with gocontext.Group(parent) as g:
            g.go(failing)
            cancel()
            assert failed.wait(NEVER)
            g.ctx.check()


@pytest.mark.parametrize("member", ["task", "thread"])
async def test_the_bodys_check_gives_way_to_the_failure_in_a_task_group(member: str) -> None:
    boom = LookupError("shard 3 is missing")

    async def failing_task(ctx: gocontext.Context) -> None:
        raise boom

    def failing_thread(ctx: gocontext.Context) -> None:
        raise boom

    with pytest.raises(LookupError) as raised:
        async with gocontext.TaskGroup(gocontext.background()) as g:
            if member == "task":
                g.go(failing_task)
            else:
                g.go_thread(failing_thread)
            # A blocking feeder in a worker thread, which the body waits for to the end
            # (shielded: it stops with g.ctx's error, not the task's cancellation).
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(feed_until_stopped, g.ctx)
    assert raised.value is boom
    assert isinstance(raised.value.__context__, gocontext.Canceled)
    assert g.errors == [boom]


class _HostileInt(int):
    """An int whose comparisons and repr raise: a limit is taken by its value alone."""

    def __lt__(self, other: object) -> bool:
        raise RuntimeError("compared")

    def __ge__(self, other: object) -> bool:
        raise RuntimeError("compared")

    def __gt__(self, other: object) -> bool:
        raise RuntimeError("compared")

    def __le__(self, other: object) -> bool:
        raise RuntimeError("compared")

    def __repr__(self) -> str:
        raise RuntimeError("repr")


def test_a_limit_is_taken_by_its_value_and_a_bad_one_is_refused_by_name() -> None:
    with gocontext.Group(gocontext.background(), limit=_HostileInt(2)) as g:
        for _ in range(3):
            g.go(lambda ctx: None)
    with pytest.raises(ValueError, match=r"Group\(\) needs limit=None or a positive int"):
        gocontext.Group(gocontext.background(), limit=_HostileInt(0))
    with pytest.raises(ValueError, match=r"int of \d+ bits"):
        gocontext.Group(gocontext.background(), limit=-(10**400))
    with pytest.raises(TypeError, match=r"TaskGroup\(\) needs limit=None or a positive int"):
        gocontext.TaskGroup(gocontext.background(), limit=2.0)  # type: ignore[arg-type]


async def _never_iterated(ctx: gocontext.Context) -> AsyncIterator[int]:
    raise AssertionError("never runs")
    yield 0  # (an async generator function)


def test_an_async_generator_returned_to_a_group_is_a_failure_not_dropped() -> None:
    """An async generator, like a coroutine, handed back by a thread's function would never
    run: the function has failed, and the block says why."""
    with pytest.raises(TypeError, match=r"returned an async generator") as raised:
        with gocontext.Group(gocontext.background()) as g:
            g.go(lambda ctx: _never_iterated(ctx))
    assert g.errors == [raised.value]


async def test_an_async_generator_handed_back_to_to_thread_is_refused() -> None:
    with pytest.raises(TypeError, match=r"to_thread\(\).*returned an async generator"):
        await gocontext.to_thread(gocontext.background(), lambda ctx: _never_iterated(ctx))
