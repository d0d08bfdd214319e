"""scope() and sleep(): contexts drive framework cancellation and follow it, both ways."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import random
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest
import sniffio
from anyio.lowlevel import get_async_backend  # type: ignore[attr-defined]  # (anyio 4.10+)

import gocontext
from gocontext import _context, _loops
from gocontext._async import FrameworkCancelled

from ._loops import on_trio, post_from_thread
from .conftest import NEVER

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup


@pytest.fixture(autouse=True, params=["native", "anyio"])
def asyncio_cancel_scope(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test on both cancel scopes a scope runs on under asyncio: the native one (Python
    3.11+, where anyio's task state can be read) and anyio's own (Python 3.10, or an anyio
    laid out otherwise)."""
    backend = _loops.ASYNCIO
    saved = backend._parts or backend._load()
    if request.param == "native":
        if saved[0] is not _loops.NativeCancelScope:
            pytest.skip("no native cancel scope on this Python")
    else:
        anyio_backend = get_async_backend("asyncio")
        cs_type = type(anyio_backend.create_cancel_scope())
        backend._parts = cs_type, anyio_backend.current_effective_deadline
    try:
        yield request.param
    finally:
        backend._parts = saved


def in_thread(fn: Callable[[], object]) -> None:
    """Run *fn* in a new thread and wait for it."""
    t = threading.Thread(target=fn)
    t.start()
    t.join(NEVER)
    assert not t.is_alive()


# --------------------------------------------------------------------------------------------
# ctx ends the body


async def test_cancel_from_another_thread_interrupts_the_body_and_raises_canceled(
    make_parent: Callable[..., tuple[gocontext.Context, Callable[..., None]]],
) -> None:
    ctx, cancel = make_parent()
    why = ConnectionResetError("client left")
    reached_after = False
    with anyio.fail_after(NEVER), pytest.raises(gocontext.Canceled) as info:
        async with gocontext.scope(ctx) as child:
            threading.Thread(target=cancel, args=(why,)).start()
            await anyio.sleep(NEVER)
            reached_after = True
    assert not reached_after
    assert info.value.__cause__ is why
    assert isinstance(child.err(), gocontext.Canceled)
    assert gocontext.cause(child) is why
    assert _context.watcher_count(ctx) == 0


async def test_a_deadline_ends_the_body_with_deadline_exceeded() -> None:
    ctx, _ = gocontext.with_timeout(gocontext.background(), 0.01)
    with anyio.fail_after(NEVER), pytest.raises(gocontext.DeadlineExceeded):
        async with gocontext.scope(ctx):
            await anyio.sleep(NEVER)


async def test_a_body_that_completes_returns_and_its_child_is_cancelled() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    async with gocontext.scope(ctx) as child:
        assert child.err() is None
        await anyio.sleep(0)
    assert isinstance(child.err(), gocontext.Canceled)
    assert child.err().__cause__ is None  # type: ignore[union-attr]
    assert ctx.err() is None
    assert _context.watcher_count(ctx) == 0
    cancel()


async def test_an_already_done_context_interrupts_at_the_first_checkpoint() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    cancel()
    steps: list[str] = []
    with pytest.raises(gocontext.Canceled):
        async with gocontext.scope(ctx) as child:
            steps.append("entered")
            assert isinstance(child.err(), gocontext.Canceled)
            await anyio.sleep(NEVER)
    assert steps == ["entered"]


async def test_ctx_cancelled_by_the_body_itself_ends_the_block_with_its_error() -> None:
    ctx, cancel = gocontext.with_cancel_cause(gocontext.background())
    why = RuntimeError("enough")
    with pytest.raises(gocontext.Canceled) as info:
        async with gocontext.scope(ctx):
            cancel(why)
            await anyio.sleep(NEVER)
    assert info.value.__cause__ is why


async def test_the_child_is_the_ambient_context_inside_the_block_and_restored_after() -> None:
    outer, _ = gocontext.with_cancel(gocontext.background())
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    with gocontext.use(outer):
        async with gocontext.scope(ctx) as child:
            assert gocontext.current() is child
            seen = await anyio.to_thread.run_sync(gocontext.current)
            assert seen is child
        assert gocontext.current() is outer
        with pytest.raises(gocontext.Canceled):
            async with gocontext.scope(ctx):
                cancel()
                await anyio.sleep(NEVER)
        assert gocontext.current() is outer


# --------------------------------------------------------------------------------------------
# the body's own exceptions


async def test_the_bodys_own_exception_is_never_replaced() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    with pytest.raises(KeyError, match="mine"):
        async with gocontext.scope(ctx):
            cancel()
            raise KeyError("mine")
    with pytest.raises(ValueError, match="in cleanup"):
        async with gocontext.scope(ctx):
            try:
                await anyio.sleep(NEVER)
            finally:
                raise ValueError("in cleanup")


async def test_exception_groups_from_task_groups_keep_their_members() -> None:
    ctx, _ = gocontext.with_cancel(gocontext.background())

    async def fail(exc: Exception) -> None:
        raise exc

    with pytest.raises(ExceptionGroup) as info:
        async with gocontext.scope(ctx), anyio.create_task_group() as tg:
            tg.start_soon(fail, ValueError("a"))
            tg.start_soon(fail, KeyError("b"))
    assert sorted(type(e).__name__ for e in info.value.exceptions) == ["KeyError", "ValueError"]


async def test_a_group_with_an_error_of_the_body_passes_when_ctx_ends_too() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())

    async def fail() -> None:
        cancel()
        raise ValueError("a bug")

    async def wait() -> None:
        await anyio.sleep(NEVER)

    with anyio.fail_after(NEVER), pytest.raises(ExceptionGroup) as info:
        async with gocontext.scope(ctx), anyio.create_task_group() as tg:
            tg.start_soon(wait)
            tg.start_soon(fail)
    assert info.value.subgroup(ValueError) is not None
    assert ctx.err() is not None


async def test_tasks_raising_ctxs_error_first_still_end_the_block_with_ctxs_error() -> None:
    """A task that saw ctx end raises its error before the scope's cancellation arrives: the
    block ends with ctx.err(), the task group's group kept as __context__."""
    ctx, cancel = gocontext.with_cancel_cause(gocontext.background())
    why = TimeoutError("upstream gave up")

    async def notice() -> None:
        cancel(why)
        raise ctx.err()  # type: ignore[misc]  # at once: no checkpoint in between

    with anyio.fail_after(NEVER), pytest.raises(gocontext.Canceled) as info:
        async with gocontext.scope(ctx), anyio.create_task_group() as tg:
            tg.start_soon(notice)
            await anyio.sleep(NEVER)
    assert info.value.__cause__ is why
    assert isinstance(info.value.__context__, BaseExceptionGroup)


# --------------------------------------------------------------------------------------------
# the framework cancels the task


async def test_an_outer_framework_cancellation_passes_through_and_cancels_the_child() -> None:
    ctx, _ = gocontext.with_cancel(gocontext.background())
    with anyio.CancelScope() as outer:
        async with gocontext.scope(ctx) as child:
            outer.cancel()
            await anyio.sleep(NEVER)
    assert outer.cancelled_caught
    assert isinstance(child.err(), gocontext.Canceled)
    assert isinstance(gocontext.cause(child), FrameworkCancelled)
    assert ctx.err() is None


async def test_a_failing_sibling_cancels_the_scope_child_so_its_thread_stops() -> None:
    """The child ends as the cancellation leaves the block (after the body's own finally
    blocks); a body that must wait for its threads uses to_thread(), which cancels its own
    child at once."""
    ctx, _ = gocontext.with_cancel(gocontext.background())
    thread_saw: list[BaseException | None] = []
    entered = anyio.Event()
    threads: list[threading.Thread] = []

    def blocking(c: gocontext.Context) -> None:
        c.done().wait(NEVER)
        thread_saw.append(gocontext.cause(c))

    async def body() -> None:
        async with gocontext.scope(ctx) as child:
            threads.append(threading.Thread(target=blocking, args=(child,)))
            threads[0].start()
            entered.set()
            await anyio.sleep(NEVER)

    async def failing() -> None:
        await entered.wait()
        raise RuntimeError("sibling failed")

    with pytest.raises(ExceptionGroup) as info:
        async with anyio.create_task_group() as tg:
            tg.start_soon(body)
            tg.start_soon(failing)
    assert [type(e) for e in info.value.exceptions] == [RuntimeError]
    threads[0].join(NEVER)
    assert len(thread_saw) == 1
    assert isinstance(thread_saw[0], FrameworkCancelled)


async def test_an_enclosing_scope_already_cancelled_gives_a_cancelled_child() -> None:
    ctx, _ = gocontext.with_cancel(gocontext.background())
    with anyio.CancelScope() as outer:
        outer.cancel()
        async with gocontext.scope(ctx) as child:
            assert isinstance(child.err(), gocontext.Canceled)
            assert isinstance(gocontext.cause(child), FrameworkCancelled)
            await anyio.sleep(NEVER)
    assert outer.cancelled_caught
    assert ctx.err() is None


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_native_task_cancel_is_never_swallowed() -> None:
    """task.cancel() landing in the same loop iteration as our own cancellation still cancels
    the task (anyio can fold both into one CancelledError)."""
    for _ in range(50):
        ctx, cancel = gocontext.with_cancel(gocontext.background())
        entered = asyncio.Event()

        async def body(ctx: gocontext.Context = ctx, entered: asyncio.Event = entered) -> str:
            try:
                async with gocontext.scope(ctx):
                    entered.set()
                    await asyncio.sleep(NEVER)
            except gocontext.Canceled:
                return "our error"
            return "returned"

        task = asyncio.get_running_loop().create_task(body())
        await entered.wait()
        cancel()  # posts the scope's cancellation to this loop
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_native_cancel_propagates_and_can_be_uncancelled() -> None:
    if sys.version_info < (3, 11):
        pytest.skip("Task.uncancel() needs Python 3.11")
    ctx, _ = gocontext.with_cancel(gocontext.background())
    entered = asyncio.Event()
    caught: list[gocontext.Context] = []

    async def body() -> str:
        task = asyncio.current_task()
        assert task is not None
        try:
            async with gocontext.scope(ctx) as child:
                caught.append(child)
                entered.set()
                await asyncio.sleep(NEVER)
        except asyncio.CancelledError:
            assert task.uncancel() == 0
        await asyncio.sleep(0)  # nothing stale left: the task runs on
        return "recovered"

    task = asyncio.get_running_loop().create_task(body())
    await entered.wait()
    task.cancel("shutting down")
    assert await asyncio.wait_for(task, NEVER) == "recovered"
    assert isinstance(gocontext.cause(caught[0]), FrameworkCancelled)
    assert ctx.err() is None


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_timeout_outside_and_inside_a_scope() -> None:
    if sys.version_info < (3, 11):
        pytest.skip("asyncio.timeout needs Python 3.11")
    ctx, _ = gocontext.with_cancel(gocontext.background())
    with pytest.raises(TimeoutError) as info:
        async with asyncio.timeout(0.01), gocontext.scope(ctx) as child:
            await asyncio.sleep(NEVER)
    assert not isinstance(info.value, gocontext.ContextError)
    assert isinstance(gocontext.cause(child), FrameworkCancelled)
    inner, cancel_inner = gocontext.with_cancel(gocontext.background())
    with pytest.raises(gocontext.Canceled):
        async with gocontext.scope(inner):
            async with asyncio.timeout(NEVER):
                asyncio.get_running_loop().call_soon(cancel_inner)
                await asyncio.sleep(NEVER)


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_cancel_scopes_nest_both_ways() -> None:
    import trio

    ctx, _ = gocontext.with_cancel(gocontext.background())
    with trio.move_on_after(0.01) as outer:
        async with gocontext.scope(ctx) as child:
            await trio.sleep(NEVER)
    assert outer.cancelled_caught
    assert child.err() is not None  # its inherited deadline, or the cancellation: which first
    with trio.CancelScope() as outer:
        async with gocontext.scope(ctx) as child:
            outer.cancel()
            await trio.sleep(NEVER)
    assert outer.cancelled_caught
    assert isinstance(gocontext.cause(child), FrameworkCancelled)
    inner_ctx, cancel_inner = gocontext.with_cancel(gocontext.background())
    with pytest.raises(gocontext.Canceled):
        async with gocontext.scope(inner_ctx):
            with trio.move_on_after(NEVER) as inner:
                in_thread(cancel_inner)
                await trio.sleep(NEVER)
    assert not inner.cancelled_caught


# --------------------------------------------------------------------------------------------
# deadlines


async def test_the_child_inherits_the_enclosing_effective_deadline() -> None:
    ctx, _ = gocontext.with_timeout(gocontext.background(), 3600)
    with anyio.fail_after(2):
        async with gocontext.scope(ctx) as child:
            remaining = child.remaining()  # type: ignore[attr-defined]
    assert remaining is not None
    assert 1.5 < remaining <= 2.0  # translated from the loop's clock, not compared raw
    async with gocontext.scope(ctx) as child:
        assert child.deadline() == ctx.deadline()
    with anyio.fail_after(NEVER * 1000):  # later than ctx's: ctx's stays
        async with gocontext.scope(ctx) as child:
            assert child.deadline() == ctx.deadline()


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_the_enclosing_deadline_is_translated_from_trios_offset_clock() -> None:
    import trio

    assert abs(trio.current_time() - time.monotonic()) > 1  # trio's clock is offset
    start = time.monotonic()
    with trio.fail_after(5):
        async with gocontext.scope(gocontext.background()) as child:
            remaining = child.remaining()  # type: ignore[attr-defined]
    assert remaining is not None
    assert 5.0 - (time.monotonic() - start) - 1e-6 <= remaining <= 5.0


async def test_the_enclosing_deadline_ends_the_child_while_the_framework_ends_the_body() -> None:
    ctx, _ = gocontext.with_cancel(gocontext.background())
    with anyio.move_on_after(0.02) as outer:
        async with gocontext.scope(ctx) as child:
            assert child.done().wait(NEVER)  # a thread would see it end, at the deadline
            assert isinstance(child.err(), gocontext.DeadlineExceeded)
            await anyio.sleep(NEVER)
    assert outer.cancelled_caught  # the framework's own timeout, not our error
    assert ctx.err() is None


# --------------------------------------------------------------------------------------------
# shields and nesting


async def test_a_shielded_scope_inside_an_outer_cancellation_still_obeys_its_own_ctx() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    with anyio.CancelScope() as outer:
        outer.cancel()
        with anyio.CancelScope(shield=True):
            with pytest.raises(gocontext.Canceled):
                async with gocontext.scope(ctx) as child:
                    assert child.err() is None  # the shield hides the outer cancellation
                    in_thread(cancel)
                    await anyio.sleep(NEVER)
        await anyio.sleep(NEVER)
    assert outer.cancelled_caught


async def test_a_shielded_region_is_not_interrupted_and_the_first_checkpoint_after_it_is() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    steps: list[str] = []
    with pytest.raises(gocontext.Canceled):
        async with gocontext.scope(ctx):
            with anyio.CancelScope(shield=True):
                in_thread(cancel)
                for _ in range(5):  # bare yields and a wait on a future, all shielded
                    await anyio.sleep(0)
                await anyio.sleep(0.001)
                steps.append("shield finished")
            steps.append("after shield")
            await anyio.sleep(0)
            steps.append("checkpoint passed")
    assert steps == ["shield finished", "after shield"]


async def test_a_shield_inside_a_nested_anyio_scope_holds_the_cancellation_too() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    steps: list[str] = []
    with pytest.raises(gocontext.Canceled):
        async with gocontext.scope(ctx):
            with anyio.CancelScope():
                with anyio.CancelScope(shield=True):
                    in_thread(cancel)
                    await anyio.sleep(0.001)
                    steps.append("shielded")
                await anyio.sleep(NEVER)
    assert steps == ["shielded"]


async def test_a_body_that_catches_the_cancellation_is_cancelled_again() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    steps: list[str] = []
    with pytest.raises(gocontext.Canceled):
        async with gocontext.scope(ctx):
            try:
                cancel()
                await anyio.sleep(NEVER)
            except anyio.get_cancelled_exc_class():
                steps.append("caught")
            try:
                await anyio.sleep(NEVER)  # level-triggered: cancelled again
            finally:
                steps.append("cancelled again")
    assert steps == ["caught", "cancelled again"]


async def test_the_task_is_left_with_no_cancellation_pending_after_any_ending() -> None:
    cancelled = anyio.get_cancelled_exc_class()
    task: Any = None  # asyncio (3.11+): the task whose count of cancel requests is checked
    if sniffio.current_async_library() == "asyncio" and sys.version_info >= (3, 11):
        task = asyncio.current_task()
        assert task is not None

    async def interrupted(cancel: Callable[[], object]) -> None:
        cancel()
        await anyio.sleep(NEVER)

    async def caught_and_completed(cancel: Callable[[], object]) -> None:
        cancel()
        with contextlib.suppress(cancelled):
            await anyio.sleep(NEVER)

    async def completed_before_its_checkpoint(cancel: Callable[[], object]) -> None:
        cancel()

    async def done_at_entry(cancel: Callable[[], object]) -> None:
        pass

    async def shielded_to_the_end(cancel: Callable[[], object]) -> None:
        with anyio.CancelScope(shield=True):
            in_thread(cancel)
            await anyio.sleep(0)

    for body in (
        interrupted,
        caught_and_completed,
        completed_before_its_checkpoint,
        done_at_entry,
        shielded_to_the_end,
    ):
        ctx, cancel = gocontext.with_cancel(gocontext.background())
        if body is done_at_entry:
            cancel()
        try:
            async with gocontext.scope(ctx):
                await body(cancel)
        except gocontext.Canceled:
            pass
        if task is not None:
            assert task.cancelling() == 0, body.__name__
        for _ in range(3):  # nothing of ours reaches the task after the block
            await anyio.sleep(0)


@contextlib.asynccontextmanager
async def own_task_group() -> AsyncIterator[Callable[..., object]]:
    """The running framework's own task group (asyncio's TaskGroup, trio's nursery), as a
    function that starts ``fn(*args)`` in it."""
    if sniffio.current_async_library() == "trio":
        import trio

        async with trio.open_nursery() as nursery:
            yield nursery.start_soon
    else:
        if sys.version_info < (3, 11):
            pytest.skip("asyncio.TaskGroup needs Python 3.11")
        async with asyncio.TaskGroup() as tg:
            yield lambda fn, *args: tg.create_task(fn(*args))


async def test_the_frameworks_own_task_groups_inside_a_scope_are_cancelled_with_it() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    started = anyio.Event()
    ended: list[str] = []

    async def child(name: str) -> None:
        try:
            started.set()
            await anyio.sleep(NEVER)
        finally:
            ended.append(name)

    with pytest.raises(gocontext.Canceled):
        async with gocontext.scope(ctx):
            async with own_task_group() as start:
                start(child, "a")
                start(child, "b")
                await started.wait()
                in_thread(cancel)
    assert sorted(ended) == ["a", "b"]


async def test_scopes_nest_with_anyio_timeouts_both_ways() -> None:
    ctx, _ = gocontext.with_cancel(gocontext.background())
    with anyio.move_on_after(0.01) as outer:
        async with gocontext.scope(ctx):
            await anyio.sleep(NEVER)
    assert outer.cancelled_caught
    inner_ctx, cancel_inner = gocontext.with_cancel(gocontext.background())
    with anyio.move_on_after(NEVER) as outer2:
        with pytest.raises(gocontext.Canceled):
            async with gocontext.scope(inner_ctx):
                cancel_inner()
                await anyio.sleep(NEVER)
    assert not outer2.cancelled_caught


async def test_nested_scopes_end_with_the_outer_contexts_error() -> None:
    parent, cancel = gocontext.with_cancel_cause(gocontext.background())
    why = ConnectionResetError("gone")
    with anyio.fail_after(NEVER), pytest.raises(gocontext.Canceled) as info:
        async with gocontext.scope(parent) as outer_child:
            inner_ctx, _ = gocontext.with_timeout(outer_child, NEVER)
            async with gocontext.scope(inner_ctx) as inner_child:
                threading.Thread(target=cancel, args=(why,)).start()
                await anyio.sleep(NEVER)
    assert info.value.__cause__ is why
    assert gocontext.cause(inner_child) is why
    assert gocontext.cause(outer_child) is why


# --------------------------------------------------------------------------------------------
# races


async def test_ctx_cancelled_as_the_body_finishes() -> None:
    """Returned or our error, never both, never a cancellation left over for later."""
    outcomes = {"returned": 0, "ours": 0}
    post = post_from_thread()
    for i in range(300):
        ctx, cancel = gocontext.with_cancel(gocontext.background())
        delay = (i % 10) / 10_000
        fired = threading.Event()

        def later(
            cancel: Callable[[], None] = cancel,
            delay: float = delay,
            fired: threading.Event = fired,
        ) -> None:
            time.sleep(delay)
            cancel()
            fired.set()

        try:
            async with gocontext.scope(ctx):
                post(lambda: None)  # the loop has one more thing to run; the body one step
                threading.Thread(target=later).start()
                await anyio.sleep(0)
            outcomes["returned"] += 1
        except gocontext.Canceled:
            outcomes["ours"] += 1
        assert await anyio.to_thread.run_sync(fired.wait, NEVER)
        await anyio.sleep(0)  # no stale cancellation reaches code after the block
        await anyio.sleep(0)
        assert _context.watcher_count(ctx) == 0
    assert sum(outcomes.values()) == 300


async def test_a_body_that_completes_after_ctx_ended_returns_normally() -> None:
    """ctx ends during the body, the scope's cancel scope is cancelled, and the body then
    completes without another checkpoint: it returns, as the docstring promises."""
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    completed = False
    with anyio.fail_after(NEVER):
        async with gocontext.scope(ctx) as child:
            in_thread(cancel)  # the cancel is handed to this loop ...
            await anyio.lowlevel.cancel_shielded_checkpoint()  # ... which runs it here
            completed = True
    assert completed
    assert isinstance(child.err(), gocontext.Canceled)
    await anyio.sleep(0)  # no cancellation is left over for code after the block


async def test_ctx_cancelled_at_random_as_the_body_completes() -> None:
    """Whatever the moment, a body that completed returned, and one that did not raised ctx's
    error: the two outcomes agree with what the body did."""
    n = 300
    rng = random.Random(5)
    wrong: list[tuple[int, bool, str]] = []
    for i in range(n):
        ctx, cancel = gocontext.with_cancel(gocontext.background())
        go = threading.Event()
        t = threading.Thread(target=lambda go=go, cancel=cancel: (go.wait(NEVER), cancel()))
        t.start()
        completed = False
        try:
            async with gocontext.scope(ctx):
                go.set()
                for _ in range(rng.randrange(4)):
                    await anyio.lowlevel.cancel_shielded_checkpoint()
                await anyio.lowlevel.checkpoint_if_cancelled()
                completed = True
            outcome = "returned"
        except gocontext.Canceled:
            outcome = "ours"
        t.join(NEVER)
        if completed != (outcome == "returned"):
            wrong.append((i, completed, outcome))
    assert wrong == []


async def test_ctx_cancelled_while_the_body_runs_its_cleanup() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    cleaned: list[str] = []
    with anyio.fail_after(NEVER), pytest.raises(gocontext.Canceled):
        async with gocontext.scope(ctx):
            try:
                await anyio.sleep(0)
            finally:
                with anyio.CancelScope(shield=True):
                    in_thread(cancel)
                    await anyio.sleep(0)
                    cleaned.append("shielded cleanup ran")
                await anyio.sleep(NEVER)  # unshielded cleanup: interrupted
    assert cleaned == ["shielded cleanup ran"]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_native_cancels_and_ctx_cancels_from_another_thread_at_random() -> None:
    """Every task.cancel() ends its task cancelled (none is swallowed), whatever our scope
    was doing when it landed."""
    if sys.version_info < (3, 11):
        pytest.skip("on 3.10 a task.cancel() folded into a scope's own cannot be told apart")
    n = 500
    rng = random.Random(3)
    loop = asyncio.get_running_loop()
    ctxs = [gocontext.with_cancel(gocontext.background()) for _ in range(n)]
    outcomes: list[str | None] = [None] * n
    parked = 0
    all_parked = asyncio.Event()

    async def one(i: int) -> None:
        nonlocal parked
        try:
            async with gocontext.scope(ctxs[i][0]):
                for _ in range(i % 4):
                    await asyncio.sleep(0)
                parked += 1
                if parked == n:
                    all_parked.set()
                await asyncio.sleep(0 if i % 2 else NEVER)
            outcomes[i] = "returned"
        except gocontext.Canceled:
            outcomes[i] = "ours"
        await asyncio.Event().wait()  # only a task.cancel() ends this task

    tasks = [loop.create_task(one(i)) for i in range(n)]
    await asyncio.wait_for(all_parked.wait(), NEVER)

    def storm() -> None:
        order = [("ctx", i) for i in range(n)] + [("task", i) for i in range(n)]
        rng.shuffle(order)
        for kind, i in order:
            if kind == "ctx":
                ctxs[i][1]()
            else:
                loop.call_soon_threadsafe(tasks[i].cancel)
            if rng.random() < 0.05:
                time.sleep(0)

    await asyncio.to_thread(storm)
    done, pending = await asyncio.wait(tasks, timeout=NEVER)
    assert not pending
    assert all(t.cancelled() for t in tasks)
    assert all(_context.watcher_count(c) == 0 for c, _ in ctxs)
    assert set(outcomes) <= {None, "returned", "ours"}


async def test_ten_thousand_scopes_cancelled_at_random_from_another_thread() -> None:
    """Each scope ends in exactly one of: returned, our error, framework cancellation; nothing
    hangs and nothing stays registered, on our side or in the loop's queue."""
    n = 10_000
    rng = random.Random(7)
    post = post_from_thread()
    pairs = [gocontext.with_cancel(gocontext.background()) for _ in range(n)]
    scopes = [anyio.CancelScope() for _ in range(n)]
    # per scope: does the body return by itself, and who cancels (ctx, framework, both)
    quick = [i % 5 == 0 for i in range(n)]
    who = [("ctx", "framework", "both")[rng.randrange(3)] for _ in range(n)]
    outcomes: list[str | None] = [None] * n
    count = 0
    started = anyio.Event()

    async def one(i: int) -> None:
        nonlocal count
        result = None
        try:
            with scopes[i]:
                async with gocontext.scope(pairs[i][0]):
                    count += 1
                    if count == n:
                        started.set()
                    await anyio.sleep(0 if quick[i] else NEVER)
                result = "returned"
        except gocontext.Canceled:
            result = "ours"
        if result is None:
            assert scopes[i].cancelled_caught
            result = "framework"
        assert outcomes[i] is None
        outcomes[i] = result

    def canceller() -> None:
        order = list(range(n))
        rng.shuffle(order)
        for i in order:
            if who[i] != "framework":
                pairs[i][1]()
            if who[i] != "ctx":
                post(scopes[i].cancel)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
            await started.wait()
            await anyio.to_thread.run_sync(canceller)
    assert None not in outcomes
    for i in range(n):
        if not quick[i]:
            assert outcomes[i] == {"ctx": "ours", "framework": "framework"}.get(
                who[i], outcomes[i]
            ), (i, who[i], outcomes[i])
            assert outcomes[i] != "returned"
    assert outcomes.count("ours") > n // 10
    assert outcomes.count("framework") > n // 10
    assert all(_context.watcher_count(ctx) == 0 for ctx, _ in pairs)
    await settle_the_loop()


async def settle_the_loop() -> None:
    """Let the loop run what is queued, then check that nothing of ours stays queued."""
    for _ in range(3):
        await anyio.sleep(0)
    if on_trio():
        import trio
        import trio.testing

        await trio.testing.wait_all_tasks_blocked()
        assert trio.lowlevel.current_statistics().run_sync_soon_queue_size == 0
    else:
        await anyio.wait_all_tasks_blocked()
        ready = getattr(asyncio.get_running_loop(), "_ready", ())  # the stock loop's queue
        assert not [h for h in ready if "CancelScope" in repr(h) and not h.cancelled()]


# --------------------------------------------------------------------------------------------
# sleep() and bad input


async def test_sleep_sleeps_or_raises_the_error_at_once() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    await gocontext.sleep(ctx, 0.001)
    await gocontext.sleep(ctx, 0)
    await gocontext.sleep(ctx, -1)
    timer = threading.Timer(0.01, cancel)
    timer.start()
    with anyio.fail_after(NEVER), pytest.raises(gocontext.Canceled):
        await gocontext.sleep(ctx, NEVER)
    timer.join(NEVER)
    with pytest.raises(gocontext.Canceled):
        await gocontext.sleep(ctx, 0)
    assert _context.watcher_count(ctx) == 0


async def test_sleep_until_the_deadline_and_infinite_sleep() -> None:
    ctx, _ = gocontext.with_timeout(gocontext.background(), 0.01)
    with anyio.fail_after(NEVER), pytest.raises(gocontext.DeadlineExceeded):
        await gocontext.sleep(ctx, math.inf)


async def test_sleep_is_cancelled_by_its_framework_and_unregisters() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    with anyio.move_on_after(0.01) as outer:
        await gocontext.sleep(ctx, NEVER)
    assert outer.cancelled_caught
    assert _context.watcher_count(ctx) == 0
    cancel()


async def test_sleep_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN"):
        await gocontext.sleep(gocontext.background(), math.nan)
    with pytest.raises(TypeError, match="seconds"):
        await gocontext.sleep(gocontext.background(), "1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Context"):
        await gocontext.sleep(None, 1)  # type: ignore[arg-type]


async def test_sleep_with_numbers_no_float_holds_is_a_value_error_naming_the_call() -> None:
    for huge in (10**400, -(10**400), 10**5000):  # 10**5000 has no str() either
        with pytest.raises(ValueError, match=r"sleep\(\) got a number of seconds too large"):
            await gocontext.sleep(gocontext.background(), huge)

    class BrokenFloat(float):
        def __float__(self) -> float:
            raise RuntimeError("no float here")

    with pytest.raises(TypeError, match=r"sleep\(\) needs a number of seconds"):
        await gocontext.sleep(gocontext.background(), BrokenFloat(1.0))


async def test_scope_needs_a_context_and_is_entered_once() -> None:
    with pytest.raises(TypeError, match="Context"):
        gocontext.scope("ctx")  # type: ignore[arg-type]
    s = gocontext.scope(gocontext.background())
    async with s:
        with pytest.raises(RuntimeError, match="entered once"):
            async with s:
                pass
    with pytest.raises(RuntimeError, match="entered once"):
        async with s:
            pass


def test_scope_outside_an_event_loop_is_a_clear_error() -> None:
    s = gocontext.scope(gocontext.background())
    coro = s.__aenter__()
    with pytest.raises(RuntimeError, match="no asyncio event loop or trio run"):
        coro.send(None)
    coro.close()


async def test_nothing_of_a_finished_scope_is_kept_alive() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    async with gocontext.scope(ctx) as child:
        await anyio.sleep(0)
    refs = [weakref.ref(child)]
    other, cancel_other = gocontext.with_cancel(ctx)
    try:
        async with gocontext.scope(other) as child:
            cancel_other()
            # (an event, not a sleep: asyncio's timer handles keep a copy of the context
            # variables, the ambient child included, until the loop drops them)
            await anyio.Event().wait()
    except gocontext.Canceled:
        pass
    refs.append(weakref.ref(child))
    del child, other, cancel_other
    await settle_the_loop()  # callbacks still queued hold a copy of the context variables
    gc.collect()
    assert [r() for r in refs] == [None, None]
    assert _context.watcher_count(ctx) == 0
    cancel()


# --------------------------------------------------------------------------------------------
# A scope that owns its context (a server's request): told of the end by the context itself


def owned(parent: gocontext.Context | None = None, timeout: float = 3600.0) -> Any:
    """A request's context and its cancel, as a server makes them."""
    return _context.timeout_cancel_cause(parent or gocontext.background(), timeout)


async def test_an_owned_context_cancelled_from_another_thread_interrupts_the_body() -> None:
    # (No fail_after around the block: an enclosing deadline would make the scope a child of
    # its own. The body's sleep is the bound: a body not interrupted reaches the assert.)
    ctx, cancel = owned()
    why = ConnectionResetError("client left")
    reached_after = False
    with pytest.raises(gocontext.Canceled) as info:
        async with gocontext.scope._owning(ctx, cancel) as child:
            assert child is ctx
            threading.Thread(target=cancel, args=(why,)).start()
            await anyio.sleep(NEVER)
            reached_after = True
    assert not reached_after
    assert info.value.__cause__ is why
    assert ctx._owner is None  # nothing of the scope stays reachable from ctx
    assert ctx._done is None  # nothing was registered on ctx


async def test_an_owned_contexts_deadline_interrupts_the_body() -> None:
    ctx, cancel = owned(timeout=0.02)
    reached_after = False
    with pytest.raises(gocontext.DeadlineExceeded):
        async with gocontext.scope._owning(ctx, cancel):
            await anyio.sleep(NEVER)
            reached_after = True
    assert not reached_after
    assert ctx._owner is None


async def test_an_owned_context_ended_before_the_block_interrupts_its_first_checkpoint() -> None:
    ctx, cancel = owned()
    cancel(ConnectionResetError("gone before the handler ran"))
    reached_after = False
    with pytest.raises(gocontext.Canceled):
        async with gocontext.scope._owning(ctx, cancel):
            await anyio.sleep(0)
            reached_after = True
    assert not reached_after


async def test_deadlines_landing_as_owned_blocks_begin_always_interrupt_them() -> None:
    # The timer thread ends each context around the moment the block sets itself as owner:
    # every ordering must interrupt the body (a lost end would reach the assert).
    for i in range(100):
        ctx, cancel = owned(timeout=random.random() * 0.002)
        reached_after = False
        with pytest.raises(gocontext.DeadlineExceeded):
            async with gocontext.scope._owning(ctx, cancel):
                await anyio.sleep(NEVER)
                reached_after = True
        assert not reached_after, i


async def test_what_the_handler_registers_on_an_owned_context_sees_its_end_too() -> None:
    ctx, cancel = owned()
    seen: list[object] = []
    with pytest.raises(gocontext.Canceled):
        async with gocontext.scope._owning(ctx, cancel) as child:
            inner, _ = gocontext.with_cancel(child)
            started = anyio.Event()

            async def watch() -> None:
                started.set()
                with anyio.CancelScope(shield=True):  # (sees the end, not the interruption)
                    await inner.done()
                seen.append(inner.err())

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await started.wait()
                threading.Thread(target=cancel, args=(None,)).start()
                await anyio.sleep(NEVER)
    assert len(seen) == 1 and isinstance(seen[0], gocontext.Canceled)
    assert _context.watcher_count(ctx) == 0


async def test_an_owned_context_under_a_parent_that_can_end_is_watched_as_usual() -> None:
    # Its parent's end reaches it through the tree, not through its own cancel or timer: the
    # scope registers on it instead of being its owner.
    parent, cancel_parent = gocontext.with_cancel(gocontext.background())
    ctx, cancel = owned(parent)
    reached_after = False
    with pytest.raises(gocontext.Canceled):
        async with gocontext.scope._owning(ctx, cancel):
            threading.Thread(target=cancel_parent).start()
            await anyio.sleep(NEVER)
            reached_after = True
    assert not reached_after
    assert ctx._owner is None
    cancel(None)
