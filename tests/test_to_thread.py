"""to_thread(): blocking code under a child context, never an abandoned thread."""

from __future__ import annotations

import contextvars
import functools
import queue
import random
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

import gocontext
from gocontext import _context
from gocontext._async import FrameworkCancelled

from .conftest import NEVER

REQUEST = contextvars.ContextVar[str]("REQUEST")


def run_bounded(backend: str, main: Callable[[], Awaitable[object]]) -> None:
    """``anyio.run(main)`` in a thread of its own, failing (not hanging) if it never returns.

    A to_thread() that waits shielded for nothing can be interrupted by no cancel scope, so the
    bound is a join with a timeout; a failure leaves that run's thread behind, parked.
    """
    raised: list[BaseException] = []

    def run() -> None:
        try:
            anyio.run(main, backend=backend)
        except BaseException as e:  # handed to the test's thread
            raised.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(NEVER)
    assert not t.is_alive(), "the run never returned: a to_thread() hangs"
    if raised:
        raise raised[0]


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


class AsyncCall:
    """A callable object whose ``__call__`` is an async function."""

    ran = False

    async def __call__(self, ctx: gocontext.Context) -> None:
        AsyncCall.ran = True


async def async_job(ctx: gocontext.Context) -> None:
    AsyncCall.ran = True


@pytest.mark.parametrize(
    "fn", [async_job, functools.partial(async_job), AsyncCall()], ids=["fn", "partial", "object"]
)
async def test_an_async_callable_is_refused_not_handed_back_unawaited(fn: Any) -> None:
    AsyncCall.ran = False
    with pytest.raises(TypeError, match=r"to_thread\(\) runs functions in threads, got async"):
        await gocontext.to_thread(gocontext.background(), fn)
    assert not AsyncCall.ran


# --------------------------------------------------------------------------------------------
# cancelled before fn runs: the cancellation goes on at once


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_an_already_cancelled_task_goes_on_at_once(anyio_backend: str) -> None:
    ran: list[str] = []

    async def main() -> None:
        with anyio.CancelScope() as cs:
            cs.cancel()
            await gocontext.to_thread(gocontext.background(), lambda _c: ran.append("ran"))
        assert cs.cancelled_caught

    run_bounded(anyio_backend, main)
    assert ran in ([], ["ran"])  # fn may or may not have run; it is not running now


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_a_call_cancelled_while_it_waits_for_a_worker_goes_on_at_once(anyio_backend: str) -> None:
    """Cancelled while queued behind the thread limiter: fn never runs, nothing waits for it."""
    ran: list[str] = []

    async def main() -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 1
        release = threading.Event()
        cs = anyio.CancelScope()

        async def queued() -> None:
            with cs:
                await gocontext.to_thread(gocontext.background(), lambda _c: ran.append("ran"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, release.wait)  # holds the only token
            await anyio.wait_all_tasks_blocked()
            async with anyio.create_task_group() as waiting:
                waiting.start_soon(queued)
                await anyio.wait_all_tasks_blocked()
                cs.cancel()  # the call still waits for the token: this task group must end
            release.set()
        assert cs.cancelled_caught

    run_bounded(anyio_backend, main)
    assert ran == []


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_calls_cancelled_at_random_moments_all_return(anyio_backend: str) -> None:
    """400 calls cancelled at random: each returns, and a fn that started was waited for."""
    n = 400
    rng = random.Random(11)
    delays = [rng.randrange(4) for _ in range(n)]  # checkpoints before the cancel
    started = [False] * n
    finished = [False] * n
    ended_before_fn: list[int] = []

    def work(child: gocontext.Context, i: int) -> None:
        started[i] = True
        child.done().wait(NEVER * (i % 2))  # half wait for the cancel, half return at once
        finished[i] = True

    async def one(i: int, cs: anyio.CancelScope) -> None:
        with cs:
            try:
                await gocontext.to_thread(gocontext.background(), work, i)
            finally:
                if started[i] and not finished[i]:
                    ended_before_fn.append(i)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(n):
                cs = anyio.CancelScope()
                tg.start_soon(one, i, cs)
                if i % 10 == 9:
                    # A moment during fn for certain, whatever the machine's speed: the cancel
                    # waits for fn to have started (run_bounded bounds the wait).
                    while not started[i]:
                        await anyio.lowlevel.checkpoint()
                else:
                    for _ in range(delays[i]):
                        await anyio.lowlevel.checkpoint()
                cs.cancel()

    run_bounded(anyio_backend, main)
    assert ended_before_fn == []
    assert all(started[9::10])  # the moments during fn were hit
    assert not all(started)  # and moments before it (the call cancelled before fn ran)
