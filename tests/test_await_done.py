"""Awaiting a Done from asyncio and trio tasks, on many loops at once, cancelled or not."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import threading
from collections.abc import Callable, Iterator

import anyio
import pytest
import trio

import gocontext
from gocontext import _context, _loops

from .conftest import NEVER


async def test_await_done_returns_once_cancelled_from_another_thread() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    with anyio.fail_after(NEVER):
        async with anyio.create_task_group() as tg:

            async def waiter() -> None:
                await ctx.done()

            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert _context.watcher_count(ctx) == 1
            threading.Thread(target=cancel).start()
    assert _context.watcher_count(ctx) == 0


async def test_await_done_on_a_done_context_returns_at_once() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    cancel()
    with anyio.fail_after(NEVER):
        await ctx.done()


async def test_a_cancelled_waiter_leaves_nothing_registered() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    with anyio.move_on_after(0.01) as scope:
        await ctx.done()
    assert scope.cancelled_caught
    assert _context.watcher_count(ctx) == 0
    cancel()


def test_one_cancel_wakes_tasks_on_several_loops_in_several_threads() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    parked = threading.Barrier(4)
    woke: list[str] = []

    async def on_asyncio() -> None:
        asyncio.get_running_loop().call_soon(parked.wait, NEVER)
        await ctx.done()
        woke.append("asyncio")

    async def on_trio() -> None:
        trio.lowlevel.current_trio_token().run_sync_soon(parked.wait, NEVER)
        await ctx.done()
        woke.append("trio")

    threads = [
        threading.Thread(target=asyncio.run, args=(on_asyncio(),)),
        threading.Thread(target=asyncio.run, args=(on_asyncio(),)),
        threading.Thread(target=trio.run, args=(on_trio,)),
    ]
    for t in threads:
        t.start()
    parked.wait(NEVER)
    cancel()
    for t in threads:
        t.join(NEVER)
        assert not t.is_alive()
    assert sorted(woke) == ["asyncio", "asyncio", "trio"]


@pytest.mark.parametrize("use_uvloop", [False, True])
def test_plain_asyncio_run_without_anyio_awaits_done_and_scopes(use_uvloop: bool) -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())

    async def main() -> str:
        loop = asyncio.get_running_loop()
        loop.call_soon(cancel)
        await ctx.done()
        other, cancel_other = gocontext.with_cancel(gocontext.background())
        loop.call_later(0.01, cancel_other)
        try:
            async with gocontext.scope(other):
                await asyncio.sleep(NEVER)
        except gocontext.Canceled:
            return type(loop).__module__
        return "not cancelled"

    if use_uvloop:
        uvloop = pytest.importorskip("uvloop")
        result = uvloop.run(main())
        assert result.startswith("uvloop")
    else:
        assert asyncio.run(main()) == "asyncio.unix_events"


def test_await_outside_any_event_loop_is_a_clear_error() -> None:
    ctx, _ = gocontext.with_cancel(gocontext.background())
    coro = gocontext._loops.wait_done(ctx.done())
    with pytest.raises(RuntimeError, match="no asyncio event loop or trio run"):
        coro.send(None)
    coro.close()


async def test_a_thousand_waiters_wake_on_one_cancel_and_leave_nothing_registered() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    woke = 0

    async def waiter() -> None:
        nonlocal woke
        await ctx.done()
        woke += 1

    with anyio.fail_after(NEVER):
        async with anyio.create_task_group() as tg:
            for _ in range(1000):
                tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert _context.watcher_count(ctx) == 1000
            threading.Thread(target=cancel).start()
    assert woke == 1000
    assert _context.watcher_count(ctx) == 0


async def test_waiters_cancelled_by_their_framework_as_the_context_ends() -> None:
    """Each waiter either wakes or is cancelled; none hangs and none stays registered."""
    rng = random.Random(5)
    for _ in range(20):
        ctx, cancel = gocontext.with_cancel(gocontext.background())
        outcomes = {"woke": 0, "cancelled": 0}
        scopes = [anyio.CancelScope() for _ in range(50)]

        async def waiter(cs: anyio.CancelScope, outcomes: dict[str, int] = outcomes) -> None:
            with cs:
                await ctx.done()
                outcomes["woke"] += 1
                return
            outcomes["cancelled"] += 1

        with anyio.fail_after(NEVER):
            async with anyio.create_task_group() as tg:
                for cs in scopes:
                    tg.start_soon(waiter, cs)
                await anyio.wait_all_tasks_blocked()
                threading.Timer(rng.random() / 1000, cancel).start()
                for cs in scopes:
                    cs.cancel()
                    if rng.random() < 0.2:
                        await anyio.sleep(0)
        assert sum(outcomes.values()) == 50
        assert _context.watcher_count(ctx) == 0
        assert ctx.done().wait(NEVER)


def test_trio_in_guest_mode_on_an_asyncio_loop_awaits_and_scopes_with_trio() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())

    async def guest() -> str:
        trio.lowlevel.current_trio_token().run_sync_soon(cancel)
        await ctx.done()
        other, cancel_other = gocontext.with_cancel(gocontext.background())
        trio.lowlevel.current_trio_token().run_sync_soon(cancel_other)
        try:
            async with gocontext.scope(other):
                await trio.sleep(NEVER)
        except gocontext.Canceled:
            return "trio guest: canceled"
        return "not cancelled"

    async def host() -> str:
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[str] = loop.create_future()
        trio.lowlevel.start_guest_run(
            guest,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            done_callback=lambda outcome: finished.set_result(outcome.unwrap()),
            host_uses_signal_set_wakeup_fd=True,
        )
        return await asyncio.wait_for(finished, NEVER)

    assert asyncio.run(host()) == "trio guest: canceled"


def test_ending_a_context_after_its_waiters_loop_closed_is_quiet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    loop = asyncio.new_event_loop()

    async def waiter() -> None:
        await ctx.done()

    task = loop.create_task(waiter())
    loop.run_until_complete(asyncio.sleep(0))  # the waiter is parked and registered
    assert _context.watcher_count(ctx) == 1
    loop.close()  # with the waiter still parked: nobody is left to wake
    cancel()
    cancel()
    assert not [r for r in caplog.records if r.name.startswith("gocontext")]
    assert not task.done()
    task._log_destroy_pending = False  # type: ignore[attr-defined]  # abandoned on purpose
    task.get_coro().close()


class InterruptedPost:
    """A loop's thread-safe entry (``call_soon_threadsafe``, ``run_sync_soon``) into which a
    Ctrl-C lands once: *lands* "before" it scheduled the call, or "after" it did."""

    def __init__(self, post: Callable[[Callable[[], object]], object], lands: str) -> None:
        self.post = post
        self.lands = lands
        self.armed = False

    def __call__(self, fn: Callable[[], object]) -> object:
        if not self.armed:
            return self.post(fn)
        self.armed = False
        if self.lands == "after":
            self.post(fn)
        raise KeyboardInterrupt


@pytest.mark.parametrize("lands", ["before", "after"])
async def test_a_ctrl_c_in_a_hand_off_to_the_loop_loses_no_wake_up(lands: str) -> None:
    """The interrupt goes out of cancel(); the wake-up it interrupted and every later one
    still reach the loop."""
    backend = _loops.backend()
    key = backend.here()
    post = InterruptedPost(backend.mailbox(key)._post, lands)
    _loops._mailboxes.last = _loops.Mailbox(key, post)  # the mailbox this loop's waits use
    woke: list[int] = []

    async def waiter(ctx: gocontext.Context, i: int, event: anyio.Event) -> None:
        await ctx.done()
        woke.append(i)
        event.set()

    def cancel_interrupted(cancel: Callable[[], None]) -> None:
        post.armed = True
        with pytest.raises(KeyboardInterrupt):
            cancel()
        assert not post.armed

    try:
        with anyio.fail_after(NEVER):
            async with anyio.create_task_group() as tg:
                events = []
                for i in range(4):
                    ctx, cancel = gocontext.with_cancel(gocontext.background())
                    events.append(anyio.Event())
                    tg.start_soon(waiter, ctx, i, events[-1])
                    await anyio.wait_all_tasks_blocked()
                    if i == 0:
                        await anyio.to_thread.run_sync(cancel_interrupted, cancel)
                    else:
                        await anyio.to_thread.run_sync(cancel)
                        await events[-1].wait()  # a later wake-up gets through
                await events[0].wait()  # and so does the interrupted one
    finally:
        _loops._mailboxes.last = None
    assert sorted(woke) == [0, 1, 2, 3]


def _batch_with_a_ctrl_c(box: _loops.Mailbox, ran: list[int]) -> None:
    """Hand *box* one batch: a real Ctrl-C (SIGINT, to Python's own handler) in its first
    call, then two calls that must still run."""
    box.put(lambda: signal.raise_signal(signal.SIGINT))
    box.put(lambda: ran.append(1))
    box.put(lambda: ran.append(2))


@pytest.fixture
def python_sigint_handler() -> Iterator[None]:
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@pytest.mark.usefixtures("python_sigint_handler")
def test_a_ctrl_c_in_a_batch_handed_to_an_asyncio_loop_loses_none_of_its_calls() -> None:
    """The interrupt goes out of the loop, after every other call of the batch has run."""
    loop = asyncio.new_event_loop()
    ran: list[int] = []
    _batch_with_a_ctrl_c(_loops.Mailbox(loop, loop.call_soon_threadsafe), ran)
    sleeper = loop.create_task(asyncio.sleep(NEVER))
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(sleeper)
        assert ran == [1, 2]
    finally:
        sleeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(sleeper)
        loop.close()


@pytest.mark.usefixtures("python_sigint_handler")
def test_a_ctrl_c_in_a_batch_handed_to_a_trio_run_loses_none_of_its_calls() -> None:
    """trio runs the calls with the interrupt held off, and raises it in the run after."""
    ran: list[int] = []

    async def main() -> None:
        backend = _loops.backend()
        _batch_with_a_ctrl_c(backend.mailbox(backend.here()), ran)
        await trio.sleep(NEVER)

    with pytest.raises(KeyboardInterrupt):
        trio.run(main)
    assert ran == [1, 2]
