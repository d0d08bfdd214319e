"""scope() and sleep(): contexts drive framework cancellation and follow it, both ways."""

from __future__ import annotations

import asyncio
import math
import random
import sys
import threading
import time

import anyio
import pytest

import gocontext
from gocontext import _context
from gocontext._async import FrameworkCancelled

from .conftest import NEVER

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup


async def test_cancel_from_another_thread_interrupts_the_body_and_raises_canceled() -> None:
    ctx, cancel = gocontext.with_cancel_cause(gocontext.background())
    why = ConnectionResetError("client left")
    reached_after = False
    with pytest.raises(gocontext.Canceled) as info:
        async with gocontext.scope(ctx) as child:
            threading.Thread(target=cancel, args=(why,)).start()
            await anyio.sleep(NEVER)
            reached_after = True
    assert not reached_after
    assert info.value.__cause__ is why
    assert isinstance(child.err(), gocontext.Canceled)
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
    assert ctx.err() is None
    cancel()


async def test_an_already_done_context_interrupts_at_the_first_checkpoint() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    cancel()
    with pytest.raises(gocontext.Canceled):
        async with gocontext.scope(ctx):
            await anyio.sleep(NEVER)


async def test_the_bodys_own_exception_is_never_replaced() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    with pytest.raises(KeyError, match="mine"):
        async with gocontext.scope(ctx):
            cancel()
            raise KeyError("mine")


async def test_exception_groups_from_task_groups_keep_their_members() -> None:
    ctx, _ = gocontext.with_cancel(gocontext.background())

    async def fail(exc: Exception) -> None:
        raise exc

    with pytest.raises(ExceptionGroup) as info:
        async with gocontext.scope(ctx), anyio.create_task_group() as tg:
            tg.start_soon(fail, ValueError("a"))
            tg.start_soon(fail, KeyError("b"))
    assert sorted(type(e).__name__ for e in info.value.exceptions) == ["KeyError", "ValueError"]


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


async def test_the_child_inherits_the_enclosing_effective_deadline() -> None:
    ctx, _ = gocontext.with_timeout(gocontext.background(), 3600)
    with anyio.fail_after(2):
        async with gocontext.scope(ctx) as child:
            remaining = child.remaining()  # type: ignore[attr-defined]
    assert remaining is not None
    assert 1.5 < remaining <= 2.0  # translated from the loop's clock, not compared raw
    async with gocontext.scope(ctx) as child:
        assert child.deadline() == ctx.deadline()


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_the_enclosing_deadline_is_translated_from_trios_offset_clock() -> None:
    import trio

    assert abs(trio.current_time() - time.monotonic()) > 1  # trio's clock is offset
    with trio.fail_after(5):
        async with gocontext.scope(gocontext.background()) as child:
            remaining = child.remaining()  # type: ignore[attr-defined]
    assert remaining is not None
    assert 4.5 < remaining <= 5.0


async def test_a_shielded_region_is_not_interrupted_and_learns_when_it_ends() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    steps: list[str] = []
    with pytest.raises(gocontext.Canceled):
        async with gocontext.scope(ctx):
            with anyio.CancelScope(shield=True):
                cancel()
                await anyio.sleep(0.01)
                steps.append("shield finished")
            steps.append("after shield")
            await anyio.sleep(NEVER)
    assert steps == ["shield finished", "after shield"]


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


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_timeout_outside_and_inside_a_scope() -> None:
    if sys.version_info < (3, 11):
        pytest.skip("asyncio.timeout needs Python 3.11")
    ctx, _ = gocontext.with_cancel(gocontext.background())
    with pytest.raises(TimeoutError) as info:
        async with asyncio.timeout(0.01), gocontext.scope(ctx):
            await asyncio.sleep(NEVER)
    assert not isinstance(info.value, gocontext.ContextError)
    inner, cancel_inner = gocontext.with_cancel(gocontext.background())
    with pytest.raises(gocontext.Canceled):
        async with gocontext.scope(inner):
            async with asyncio.timeout(NEVER):
                asyncio.get_running_loop().call_soon(cancel_inner)
                await asyncio.sleep(NEVER)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_native_task_cancel_is_never_swallowed() -> None:
    """task.cancel() landing with our own cancellation still cancels the task."""
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
        cancel()  # schedules the scope's cancellation on this loop
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_native_cancel_alone_propagates_and_can_be_uncancelled() -> None:
    ctx, _ = gocontext.with_cancel(gocontext.background())
    entered = asyncio.Event()
    caught: list[gocontext.Context] = []

    async def body() -> None:
        async with gocontext.scope(ctx) as child:
            caught.append(child)
            entered.set()
            await asyncio.sleep(NEVER)

    task = asyncio.get_running_loop().create_task(body())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert isinstance(gocontext.cause(caught[0]), FrameworkCancelled)


async def test_ctx_cancelled_while_the_body_runs_its_cleanup() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    cleaned = False
    with pytest.raises(gocontext.Canceled):
        async with gocontext.scope(ctx):
            try:
                cancel()
                await anyio.sleep(NEVER)
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(0)
                cleaned = True
    assert cleaned


async def test_ten_thousand_scopes_cancelled_at_random_from_another_thread() -> None:
    """Each scope ends in exactly one of: returned, our error, framework cancellation; nothing
    hangs and nothing stays registered."""
    n = 10_000
    root, cancel_root = gocontext.with_cancel(gocontext.background())
    pairs = [gocontext.with_cancel(root) for _ in range(n)]
    outcomes = {"returned": 0, "ours": 0, "framework": 0}
    rng = random.Random(7)
    started = anyio.Event()
    count = 0

    async def one(i: int, ctx: gocontext.Context) -> None:
        nonlocal count
        try:
            with anyio.CancelScope() as cs:
                if i % 7 == 0:
                    cs.cancel()  # some are cancelled by the framework instead
                async with gocontext.scope(ctx):
                    count += 1
                    if count == n:
                        started.set()
                    await anyio.sleep(0 if i % 3 == 0 else NEVER)
                outcomes["returned"] += 1
                return
            outcomes["framework"] += 1
        except gocontext.Canceled:
            outcomes["ours"] += 1

    def canceller() -> None:
        order = list(range(n))
        rng.shuffle(order)
        for i in order:
            pairs[i][1]()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for i, (ctx, _) in enumerate(pairs):
                tg.start_soon(one, i, ctx)
            await started.wait()
            await anyio.to_thread.run_sync(canceller)
    assert sum(outcomes.values()) == n
    assert outcomes["ours"] > 0
    assert outcomes["framework"] > 0
    assert all(_context.watcher_count(ctx) == 0 for ctx, _ in pairs)
    assert _context.watcher_count(root) == 0
    cancel_root()


async def test_sleep_sleeps_or_raises_the_error_at_once() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    await gocontext.sleep(ctx, 0.001)
    threading.Timer(0.01, cancel).start()
    with anyio.fail_after(NEVER), pytest.raises(gocontext.Canceled):
        await gocontext.sleep(ctx, NEVER)
    with pytest.raises(gocontext.Canceled):
        await gocontext.sleep(ctx, 0)
    with pytest.raises(ValueError, match="NaN"):
        await gocontext.sleep(gocontext.background(), math.nan)
    with pytest.raises(TypeError, match="Context"):
        await gocontext.sleep(None, 1)  # type: ignore[arg-type]


async def test_scope_needs_a_context_and_is_entered_once() -> None:
    with pytest.raises(TypeError, match="Context"):
        gocontext.scope("ctx")  # type: ignore[arg-type]
    s = gocontext.scope(gocontext.background())
    async with s:
        with pytest.raises(RuntimeError, match="entered once"):
            async with s:
                pass
