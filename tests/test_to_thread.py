"""to_thread(): blocking code under a child context, never an abandoned thread."""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable

import anyio
import pytest

import gocontext
from gocontext import _context
from gocontext._async import FrameworkCancelled

from .conftest import NEVER

REQUEST = contextvars.ContextVar[str]("REQUEST")


async def test_returns_the_result_and_passes_a_live_child_that_ends_after() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    children: list[gocontext.Context] = []

    def work(child: gocontext.Context, a: int, b: int) -> tuple[int, bool]:
        children.append(child)
        return a + b, child.err() is None and child.value("k") == "v"

    ctx2 = gocontext.with_value(ctx, "k", "v")
    assert await gocontext.to_thread(ctx2, work, 1, 2) == (3, True)
    assert isinstance(children[0].err(), gocontext.Canceled)  # released once fn returned
    assert ctx.err() is None
    assert _context.watcher_count(ctx) == 0
    cancel()


async def test_the_functions_exception_is_raised_unchanged() -> None:
    def boom(child: gocontext.Context) -> None:
        raise LookupError("from the thread")

    with pytest.raises(LookupError, match="from the thread"):
        await gocontext.to_thread(gocontext.background(), boom)


async def test_the_ambient_context_and_other_variables_are_copied_into_the_thread() -> None:
    ctx, _ = gocontext.with_cancel(gocontext.background())
    token = REQUEST.set("req-1")
    try:
        with gocontext.use(ctx):
            seen = await gocontext.to_thread(
                gocontext.background(), lambda _c: (gocontext.current(), REQUEST.get())
            )
    finally:
        REQUEST.reset(token)
    assert seen == (ctx, "req-1")


async def test_a_cancelled_task_cancels_the_child_and_waits_for_the_thread() -> None:
    started = threading.Event()
    finished = threading.Event()
    saw: list[BaseException | None] = []

    def work(child: gocontext.Context) -> None:
        started.set()
        child.done().wait(NEVER)
        saw.append(gocontext.cause(child))
        finished.set()

    with anyio.fail_after(NEVER):
        with anyio.CancelScope() as cs:
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    await gocontext.to_thread(gocontext.background(), work)

                tg.start_soon(run)
                await anyio.to_thread.run_sync(started.wait, NEVER)
                cs.cancel()
        assert cs.cancelled_caught
    assert finished.is_set()  # the await returned only after the thread did
    assert isinstance(saw[0], FrameworkCancelled)


async def test_a_thread_that_takes_its_time_to_stop_is_waited_for() -> None:
    """The cancelled await holds until fn returns, however long the test makes it take."""
    started = threading.Event()
    saw_cancel = threading.Event()
    release: queue.Queue[None] = queue.Queue()
    steps: list[str] = []
    cs = anyio.CancelScope()

    def work(child: gocontext.Context) -> None:
        started.set()
        assert child.done().wait(NEVER)
        steps.append("thread saw the cancel")
        saw_cancel.set()
        release.get(timeout=NEVER)  # held here until the test lets go
        steps.append("thread returned")

    async def awaiting() -> None:
        with cs:
            try:
                await gocontext.to_thread(gocontext.background(), work)
            finally:
                steps.append("await ended")

    with anyio.fail_after(NEVER):
        async with anyio.create_task_group() as tg:
            tg.start_soon(awaiting)
            await anyio.to_thread.run_sync(started.wait, NEVER)
            cs.cancel()
            await anyio.to_thread.run_sync(saw_cancel.wait, NEVER)
            await anyio.wait_all_tasks_blocked()
            assert steps == ["thread saw the cancel"]  # the await still holds
            release.put(None)
    assert steps == ["thread saw the cancel", "thread returned", "await ended"]
    assert cs.cancelled_caught


async def test_an_error_raised_while_cancelled_is_raised_not_dropped() -> None:
    with anyio.CancelScope() as cs:

        def work(child: gocontext.Context) -> None:
            anyio.from_thread.run_sync(cs.cancel)
            assert child.done().wait(NEVER)
            raise OSError("cleanup failed")

        with anyio.fail_after(NEVER), pytest.raises(OSError, match="cleanup failed") as info:
            await gocontext.to_thread(gocontext.background(), work)
    assert isinstance(info.value.__context__, anyio.get_cancelled_exc_class())


async def test_a_context_error_raised_in_answer_to_the_cancel_lets_it_go_on() -> None:
    started = threading.Event()
    raised: list[BaseException] = []

    def work(child: gocontext.Context) -> None:
        started.set()
        child.done().wait(NEVER)
        try:
            child.check()  # type: ignore[attr-defined]
        except gocontext.Canceled as e:
            raised.append(e)
            raise

    with anyio.fail_after(NEVER):
        with anyio.CancelScope() as cs:
            async with anyio.create_task_group() as tg:
                tg.start_soon(gocontext.to_thread, gocontext.background(), work)
                await anyio.to_thread.run_sync(started.wait, NEVER)
                cs.cancel()
    assert cs.cancelled_caught  # the framework's cancellation, not the thread's Canceled
    assert isinstance(raised[0].__cause__, FrameworkCancelled)


async def test_the_parent_context_ending_reaches_the_thread() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())

    def work(child: gocontext.Context) -> str:
        threading.Thread(target=cancel).start()
        child.done().wait(NEVER)
        child.check()  # type: ignore[attr-defined]
        return "not reached"

    with anyio.fail_after(NEVER), pytest.raises(gocontext.Canceled):
        await gocontext.to_thread(ctx, work)


async def test_inside_a_scope_one_cancel_stops_the_thread_and_ends_the_scope() -> None:
    ctx, cancel = gocontext.with_cancel_cause(gocontext.background())
    why = ConnectionAbortedError("client went away")
    stopped: list[BaseException | None] = []

    def work(child: gocontext.Context) -> None:
        threading.Thread(target=cancel, args=(why,)).start()
        child.done().wait(NEVER)
        stopped.append(gocontext.cause(child))

    with anyio.fail_after(NEVER), pytest.raises(gocontext.Canceled) as info:
        async with gocontext.scope(ctx) as child:
            await gocontext.to_thread(child, work)
            await anyio.sleep(NEVER)
    assert info.value.__cause__ is why
    assert stopped == [why]


async def test_bad_arguments_are_type_errors() -> None:
    with pytest.raises(TypeError, match="Context"):
        await gocontext.to_thread(None, print)  # type: ignore[arg-type]
    not_callable: Callable[[gocontext.Context], None] = 42  # type: ignore[assignment]
    with pytest.raises(TypeError, match="callable"):
        await gocontext.to_thread(gocontext.background(), not_callable)
