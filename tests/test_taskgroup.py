"""TaskGroup: tasks (asyncio and trio) and threads under one context; one failure stops all."""

from __future__ import annotations

import contextvars
import os
import sys
import threading

import anyio
import pytest

import gocontext
from gocontext._async import FrameworkCancelled

from .conftest import NEVER

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

REQUEST = contextvars.ContextVar[str]("REQUEST")
STRESS = os.environ.get("GOCONTEXT_STRESS") == "1"  # heavier storms, for soak runs


class ThreadWaiter:
    """A function for ``go_thread``: it says it started, waits until its context ends, and
    records the cause it saw."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.saw: list[BaseException | None] = []

    def __call__(self, ctx: gocontext.Context) -> None:
        self.started.set()
        ctx.done().wait(NEVER)
        self.saw.append(gocontext.cause(ctx))


def wait_in_thread(ctx: gocontext.Context) -> None:
    assert ctx.done().wait(NEVER), "the group's context never reached the thread"
    ctx.check()


async def test_the_first_failure_cancels_tasks_and_threads_and_is_raised_itself() -> None:
    boom = LookupError("shard 2 is missing")
    in_finally: list[tuple[str, BaseException | None]] = []
    parked = threading.Event()

    async def sibling(ctx: gocontext.Context, name: str) -> None:
        try:
            await anyio.sleep(NEVER)  # ignores ctx: only the task's cancellation stops it
        finally:
            in_finally.append((name, gocontext.cause(ctx)))

    def thread(ctx: gocontext.Context) -> None:
        parked.set()
        try:
            wait_in_thread(ctx)
        finally:
            in_finally.append(("thread", gocontext.cause(ctx)))

    async def failing(ctx: gocontext.Context) -> None:
        await anyio.wait_all_tasks_blocked()
        await anyio.to_thread.run_sync(parked.wait, NEVER)
        raise boom

    with pytest.raises(LookupError) as raised:
        async with gocontext.TaskGroup(gocontext.background()) as g:
            g.go(sibling, "a")
            g.go(sibling, "b")
            g.go_thread(thread)
            g.go(failing)
    assert raised.value is boom  # the exception itself, never an ExceptionGroup
    assert sorted(in_finally, key=lambda x: x[0]) == [("a", boom), ("b", boom), ("thread", boom)]
    assert g.errors[0] is boom
    assert [type(e) for e in g.errors[1:]] == [gocontext.Canceled]  # the thread's check()


async def test_a_threads_failure_cancels_the_tasks() -> None:
    boom = OSError("disk gone")
    seen: list[BaseException | None] = []

    async def task(ctx: gocontext.Context) -> None:
        try:
            await gocontext.sleep(ctx, NEVER)
        finally:
            seen.append(gocontext.cause(ctx))

    def failing(ctx: gocontext.Context) -> None:
        raise boom

    with pytest.raises(OSError) as raised:
        async with gocontext.TaskGroup(gocontext.background()) as g:
            g.go(task)
            await anyio.wait_all_tasks_blocked()
            g.go_thread(failing)
    assert raised.value is boom
    assert seen == [boom]
    assert g.errors[0] is boom  # then perhaps the task's Canceled, if it woke before the cancel
    assert all(isinstance(e, gocontext.Canceled) for e in g.errors[1:])


async def test_functions_that_all_return_raise_nothing_even_if_the_parent_ended() -> None:
    parent, cancel = gocontext.with_cancel(gocontext.background())

    async def task(ctx: gocontext.Context) -> None:
        await ctx.done()

    def thread(ctx: gocontext.Context) -> None:
        ctx.done().wait(NEVER)

    async with gocontext.TaskGroup(parent) as g:
        g.go(task)
        g.go_thread(thread)
        await anyio.wait_all_tasks_blocked()
        cancel()
    assert g.errors == []
    assert isinstance(g.ctx.err(), gocontext.Canceled)


async def test_the_bodys_exception_cancels_everything_waits_and_propagates_itself() -> None:
    boom = RuntimeError("the body failed")
    seen: list[BaseException | None] = []
    thread_done = threading.Event()

    async def task(ctx: gocontext.Context) -> None:
        try:
            await anyio.sleep(NEVER)
        finally:
            seen.append(gocontext.cause(ctx))

    def thread(ctx: gocontext.Context) -> None:
        ctx.done().wait(NEVER)
        thread_done.set()

    with pytest.raises(RuntimeError) as raised:
        async with gocontext.TaskGroup(gocontext.background()) as g:
            g.go(task)
            g.go_thread(thread)
            await anyio.wait_all_tasks_blocked()
            raise boom
    assert raised.value is boom
    assert seen == [boom]
    assert thread_done.is_set()  # waited for, never abandoned
    assert gocontext.cause(g.ctx) is boom


def ctrl_c() -> None:
    """A done callback that stands for a Ctrl-C landing while the group cancels its context."""
    raise KeyboardInterrupt("in the exit's cancel")


async def stop_when_told(ctx: gocontext.Context, finished: list[BaseException | None]) -> None:
    """A task that only the group's context stops (not a cancel scope), at a checkpoint."""
    with anyio.CancelScope(shield=True):
        await ctx.done()
        await anyio.sleep(0)  # a step of cleanup the exit must wait for
    finished.append(gocontext.cause(ctx))


async def test_an_interrupt_out_of_the_exits_cancel_after_the_body_raised_still_waits() -> None:
    boom = RuntimeError("the body failed")
    finished: list[BaseException | None] = []
    thread = ThreadWaiter()

    with pytest.raises(KeyboardInterrupt, match="in the exit's cancel") as raised:
        async with gocontext.TaskGroup(gocontext.background()) as g:
            g.ctx.done().add_callback(ctrl_c)
            g.go(stop_when_told, finished)
            g.go_thread(thread)
            await anyio.to_thread.run_sync(thread.started.wait, NEVER)
            await anyio.wait_all_tasks_blocked()
            raise boom
    assert finished == [boom]  # the task was waited for
    assert thread.saw == [boom]  # and the thread
    assert raised.value.__context__ is boom  # the body's exception is not lost
    assert gocontext.cause(g.ctx) is boom


@pytest.mark.parametrize("member", ["task", "thread"])
async def test_an_interrupt_out_of_a_members_own_failure_leaves_the_block_bare(
    member: str,
) -> None:
    """The failing member's cancel of the group meets a Ctrl-C (a done callback stands for
    it): it goes out of the block as itself, not in an exception group, once every member is
    waited for; the failure is kept in ``g.errors``."""
    boom = ValueError("a member failed")
    finished: list[BaseException | None] = []

    async def failing_task(ctx: gocontext.Context) -> None:
        raise boom

    def failing_thread(ctx: gocontext.Context) -> None:
        raise boom

    with pytest.raises(KeyboardInterrupt, match="in the exit's cancel"):
        async with gocontext.TaskGroup(gocontext.background()) as g:
            g.ctx.done().add_callback(ctrl_c)
            g.go(stop_when_told, finished)
            await anyio.wait_all_tasks_blocked()
            if member == "task":
                g.go(failing_task)
            else:
                g.go_thread(failing_thread)
            await anyio.sleep(NEVER)
    assert finished == [boom]  # the sibling was stopped by the failure, and waited for
    assert boom in g.errors
    assert gocontext.cause(g.ctx) is boom


async def test_an_interrupt_out_of_the_exits_cancel_after_an_outer_cancel_still_waits() -> None:
    """Only the body is cancelled (the task is shielded): the exit's cancel meets the callback."""
    finished: list[BaseException | None] = []

    with pytest.raises(KeyboardInterrupt, match="in the exit's cancel") as raised:
        with anyio.CancelScope() as outer:
            async with gocontext.TaskGroup(gocontext.background()) as g:
                g.ctx.done().add_callback(ctrl_c)
                g.go(stop_when_told, finished)
                await anyio.wait_all_tasks_blocked()
                outer.cancel()
                await anyio.sleep(NEVER)
    assert [type(c) for c in finished] == [FrameworkCancelled]  # the task was waited for
    assert isinstance(raised.value.__context__, anyio.get_cancelled_exc_class())
    assert not outer.cancelled_caught


async def test_a_framework_cancellation_cancels_the_context_and_propagates_untouched() -> None:
    thread = ThreadWaiter()

    async def task(ctx: gocontext.Context) -> None:
        await anyio.sleep(NEVER)

    with anyio.CancelScope() as outer:
        async with gocontext.TaskGroup(gocontext.background()) as g:
            g.go(task)
            g.go_thread(thread)
            await anyio.to_thread.run_sync(thread.started.wait, NEVER)
            outer.cancel()
            await anyio.sleep(NEVER)
    assert outer.cancelled_caught  # the framework's own cancellation, untouched
    assert [type(c) for c in thread.saw] == [FrameworkCancelled]  # waited for, told why
    assert isinstance(gocontext.cause(g.ctx), FrameworkCancelled)
    assert g.errors == []


async def test_an_outer_cancel_while_the_exit_waits_also_reaches_the_threads() -> None:
    thread = ThreadWaiter()

    async def canceller(scope: anyio.CancelScope) -> None:
        await anyio.to_thread.run_sync(thread.started.wait, NEVER)
        scope.cancel()

    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as outer:
            tg.start_soon(canceller, outer)
            async with gocontext.TaskGroup(gocontext.background()) as g:
                g.go_thread(thread)
    assert outer.cancelled_caught
    assert [type(c) for c in thread.saw] == [FrameworkCancelled]


async def test_the_limit_is_shared_by_tasks_and_threads_and_holds_under_a_storm() -> None:
    limit, n = 3, 3000 if STRESS else 60
    lock = threading.Lock()
    running = peak = done = 0

    def enter() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)

    def leave() -> None:
        nonlocal running, done
        with lock:
            running -= 1
            done += 1

    async def task(ctx: gocontext.Context) -> None:
        enter()
        try:
            await anyio.sleep(0)
            await anyio.sleep(0)
        finally:
            leave()

    def thread(ctx: gocontext.Context) -> None:
        enter()
        leave()

    async with gocontext.TaskGroup(gocontext.background(), limit=limit) as g:
        for i in range(n):
            if i % 3:
                g.go(task)
            else:
                g.go_thread(thread)
    assert done == n
    assert 1 <= peak <= limit
    assert g.errors == []


async def test_beyond_the_limit_functions_wait_their_turn_in_order() -> None:
    order: list[int] = []

    async def task(ctx: gocontext.Context, i: int) -> None:
        order.append(i)
        await anyio.sleep(0)

    def thread(ctx: gocontext.Context, i: int) -> None:
        order.append(i)

    async with gocontext.TaskGroup(gocontext.background(), limit=1) as g:
        for i in range(10):
            if i % 2:
                g.go_thread(thread, i)
            else:
                g.go(task, i)  # never blocks
        assert order == []  # nothing ran yet: go() only scheduled
    assert order == list(range(10))


async def test_after_a_failure_waiting_functions_never_start() -> None:
    ran: list[int] = []

    async def failing(ctx: gocontext.Context) -> None:
        await anyio.sleep(0)
        raise ValueError("first")

    async def later(ctx: gocontext.Context, i: int) -> None:
        ran.append(i)

    with pytest.raises(ValueError, match="first"):
        async with gocontext.TaskGroup(gocontext.background(), limit=1) as g:
            g.go(failing)
            for i in range(5):
                g.go(later, i)
                g.go_thread(lambda ctx, i: ran.append(i), i)
    assert ran == []


async def test_tasks_and_threads_see_the_callers_context_variables() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    seen: list[object] = []

    async def task(_c: gocontext.Context) -> None:
        seen.append(("task", gocontext.current() is ctx, REQUEST.get()))

    def thread(_c: gocontext.Context) -> None:
        seen.append(("thread", gocontext.current() is ctx, REQUEST.get()))

    async with gocontext.TaskGroup(gocontext.background(), limit=1) as g:
        token = REQUEST.set("req-1")
        try:
            with gocontext.use(ctx):
                g.go(task)
                g.go_thread(thread)  # queued: still the submitter's variables
                g.go(task)
        finally:
            REQUEST.reset(token)
    cancel()
    assert sorted(seen, key=str) == [
        ("task", True, "req-1"),
        ("task", True, "req-1"),
        ("thread", True, "req-1"),
    ]


async def test_a_keyboard_interrupt_from_a_thread_is_a_failure_raised_on_exit() -> None:
    async def task(ctx: gocontext.Context) -> None:
        await gocontext.sleep(ctx, NEVER)

    def thread(ctx: gocontext.Context) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        async with gocontext.TaskGroup(gocontext.background()) as g:
            g.go(task)
            await anyio.wait_all_tasks_blocked()
            g.go_thread(thread)
    assert isinstance(gocontext.cause(g.ctx), KeyboardInterrupt)


async def test_an_exception_group_of_the_users_own_passes_as_the_failure() -> None:
    async def task(ctx: gocontext.Context) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(boom)

    async def boom() -> None:
        raise KeyError("inner")

    with pytest.raises(BaseExceptionGroup) as raised:
        async with gocontext.TaskGroup(gocontext.background()) as g:
            g.go(task)
    assert raised.value is g.errors[0]
    assert raised.value.split(KeyError)[0] is not None


async def test_no_thread_outlives_the_block() -> None:
    before = set(threading.enumerate())
    with pytest.raises(ZeroDivisionError):
        async with gocontext.TaskGroup(gocontext.background()) as g:
            for _ in range(10):
                g.go_thread(wait_in_thread)
            g.go_thread(lambda _c: 1 / 0)
    assert [t for t in threading.enumerate() if t not in before and "TaskGroup" in t.name] == []


async def test_bad_input_is_refused_at_the_call() -> None:
    with pytest.raises(TypeError, match=r"TaskGroup\(\) needs a Context as parent, got None"):
        gocontext.TaskGroup(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"TaskGroup\(\) needs limit=None or a positive int"):
        gocontext.TaskGroup(gocontext.background(), limit=-1)
    g = gocontext.TaskGroup(gocontext.background())
    with pytest.raises(RuntimeError, match=r"TaskGroup.go\(\) called outside"):
        g.go(gocontext.sleep, 1)
    async with g:
        with pytest.raises(TypeError, match=r"TaskGroup.go_thread\(\) needs a callable, got 1"):
            g.go_thread(1)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"got async function .* use TaskGroup.go\(\)"):
            g.go_thread(gocontext.sleep, 1)  # type: ignore[arg-type]
        raised: list[BaseException] = []

        def from_a_thread() -> None:
            try:
                g.go(gocontext.sleep, 1)
            except BaseException as e:
                raised.append(e)

        await anyio.to_thread.run_sync(from_a_thread)
        assert isinstance(raised[0], RuntimeError)
        assert "must be called from the thread of the group's event loop" in str(raised[0])
    with pytest.raises(RuntimeError, match="entered once"):
        await g.__aenter__()


async def test_a_blocking_function_given_to_go_is_a_failure_that_says_so() -> None:
    with pytest.raises(TypeError, match=r"needs an async function.*use TaskGroup.go_thread"):
        async with gocontext.TaskGroup(gocontext.background()) as g:
            g.go(lambda ctx: 42)  # type: ignore[arg-type, return-value]


async def test_entered_in_an_already_cancelled_scope_the_threads_are_told_and_waited_for() -> None:
    thread = ThreadWaiter()

    with anyio.CancelScope() as outer:
        outer.cancel()
        async with gocontext.TaskGroup(gocontext.background()) as g:
            g.go_thread(thread)
            await anyio.sleep(NEVER)
    assert outer.cancelled_caught
    assert len(thread.saw) <= 1  # the thread may never have been started: nothing to wait for
    assert all(isinstance(c, FrameworkCancelled) for c in thread.saw)
    assert isinstance(gocontext.cause(g.ctx), FrameworkCancelled)


async def test_a_failure_while_the_body_awaits_interrupts_it_and_is_raised_itself() -> None:
    boom = ValueError("while the body waited")
    body_saw: list[BaseException | None] = []

    async def failing(ctx: gocontext.Context) -> None:
        await anyio.wait_all_tasks_blocked()
        raise boom

    with pytest.raises(ValueError) as raised:
        async with gocontext.TaskGroup(gocontext.background()) as g:
            g.go(failing)
            try:
                await anyio.sleep(NEVER)  # the group's cancellation interrupts the body too
            finally:
                body_saw.append(gocontext.cause(g.ctx))
    assert raised.value is boom
    assert body_saw == [boom]


async def test_a_failure_is_not_lost_to_an_outer_cancellation_at_the_same_time() -> None:
    """As in anyio and trio task groups: an error wins over a cancellation."""
    boom = ValueError("failed while the outer scope was cancelled")
    raising = threading.Event()

    def failing(ctx: gocontext.Context) -> None:
        try:
            raise boom
        finally:
            raising.set()

    with pytest.raises(ValueError) as raised:
        with anyio.CancelScope() as outer:
            async with gocontext.TaskGroup(gocontext.background()) as g:
                g.go_thread(failing)
                await anyio.to_thread.run_sync(raising.wait, NEVER)
                outer.cancel()
                await anyio.sleep(NEVER)
    assert raised.value is boom


async def test_a_failure_racing_the_start_of_its_siblings_always_stops_them_all() -> None:
    for round_ in range(300 if STRESS else 20):
        boom = ValueError(f"round {round_}")
        causes: list[BaseException | None] = []

        async def task(ctx: gocontext.Context) -> None:
            try:
                await gocontext.sleep(ctx, NEVER)
            finally:
                causes.append(gocontext.cause(ctx))

        def thread(ctx: gocontext.Context) -> None:
            try:
                wait_in_thread(ctx)
            finally:
                causes.append(gocontext.cause(ctx))

        async def failing(ctx: gocontext.Context, boom: BaseException = boom) -> None:
            raise boom

        with pytest.raises(ValueError) as raised:
            async with gocontext.TaskGroup(gocontext.background(), limit=4) as g:
                for i in range(8):
                    if i == round_ % 4:  # within the limit: the others wait for it
                        g.go(failing)
                    elif i % 2:
                        g.go_thread(thread)
                    else:
                        g.go(task)
        assert raised.value is boom
        assert all(c is boom for c in causes)


@pytest.mark.parametrize("member", ["task", "thread"])
async def test_the_bodys_failure_is_not_lost_to_an_outer_cancel_while_the_exit_waits(
    member: str,
) -> None:
    """As in anyio and trio task groups: the body's error wins over a cancellation that
    reaches the exit while it waits for a member that takes a moment to stop."""
    boom = ValueError("the body failed")
    started = threading.Event()
    stopping = threading.Event()  # the member saw g.ctx end: the exit is waiting for it
    finish = threading.Event()

    def slow_thread(ctx: gocontext.Context) -> None:
        started.set()
        ctx.done().wait(NEVER)
        stopping.set()
        finish.wait(NEVER)

    async def slow_task(ctx: gocontext.Context) -> None:
        try:
            started.set()
            await gocontext.sleep(ctx, NEVER)
        finally:
            with anyio.CancelScope(shield=True):
                stopping.set()
                await anyio.to_thread.run_sync(finish.wait, NEVER)

    async def canceller(scope: anyio.CancelScope) -> None:
        await anyio.to_thread.run_sync(stopping.wait, NEVER)
        scope.cancel()  # (delivered to the exit at once: it waits on the member)
        finish.set()

    with pytest.raises(BaseExceptionGroup) as raised:  # (the outer anyio group's)
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as outer:
                tg.start_soon(canceller, outer)
                async with gocontext.TaskGroup(gocontext.background()) as g:
                    if member == "task":
                        g.go(slow_task)
                    else:
                        g.go_thread(slow_thread)
                    await anyio.to_thread.run_sync(started.wait, NEVER)
                    raise boom
    assert raised.value.exceptions == (boom,)
    assert not outer.cancelled_caught
    assert stopping.is_set()
    assert gocontext.cause(g.ctx) is boom


class AsyncCall:
    """A callable object whose ``__call__`` is an async function."""

    async def __call__(self, ctx: gocontext.Context) -> None:
        raise AssertionError("never runs")


async def never_runs(ctx: gocontext.Context) -> None:
    raise AssertionError("never runs")


async def test_an_async_callable_given_to_go_thread_is_refused_or_a_failure() -> None:
    """go_thread() refuses an object with an async ``__call__``, and a coroutine that its
    function returns fails it: never dropped unawaited."""
    async with gocontext.TaskGroup(gocontext.background()) as g:
        with pytest.raises(TypeError, match=r"got async function .* use TaskGroup.go\(\)"):
            g.go_thread(AsyncCall())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"returned a coroutine.*use TaskGroup.go\(\)") as raised:
        async with gocontext.TaskGroup(gocontext.background()) as g:
            g.go_thread(lambda ctx: never_runs(ctx))
    assert g.errors == [raised.value]
