"""ContextExecutor: a thread pool that carries context variables and drops ended work."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading

import anyio
import pytest

import gocontext
from gocontext import _context

from .conftest import NEVER

REQUEST = contextvars.ContextVar[str]("REQUEST")


def snapshot() -> tuple[gocontext.Context, str]:
    return gocontext.current(), REQUEST.get("unset")


def test_submit_and_map_run_with_the_submitters_variables() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    token = REQUEST.set("req-1")
    try:
        with gocontext.use(ctx), gocontext.ContextExecutor(max_workers=2) as pool:
            assert pool.submit(snapshot).result(NEVER) == (ctx, "req-1")
            assert list(pool.map(lambda _: snapshot(), range(3))) == [(ctx, "req-1")] * 3
            # What users get without it: the worker's own variables.
            with concurrent.futures.ThreadPoolExecutor(1) as plain:
                plain_seen = plain.submit(snapshot).result(NEVER)
    finally:
        REQUEST.reset(token)
        cancel()
    assert plain_seen == (gocontext.background(), "unset")


async def test_run_in_executor_and_awaited_futures_carry_the_tasks_variables(
    anyio_backend: str,
) -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    token = REQUEST.set("req-2")
    try:
        with gocontext.use(ctx), gocontext.ContextExecutor(max_workers=1) as pool:
            if anyio_backend == "asyncio":
                seen = await asyncio.get_running_loop().run_in_executor(pool, snapshot)
            else:  # trio has no run_in_executor: wait for the future in a thread
                future = pool.submit(snapshot)
                seen = await anyio.to_thread.run_sync(future.result, NEVER)
    finally:
        REQUEST.reset(token)
        cancel()
    assert seen == (ctx, "req-2")


def test_a_queued_submit_ctx_whose_context_ends_never_starts() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    release = threading.Event()
    busy = threading.Event()
    ran: list[str] = []

    def block() -> None:
        busy.set()
        release.wait(NEVER)

    with gocontext.ContextExecutor(max_workers=1) as pool:
        blocker = pool.submit(block)
        assert busy.wait(NEVER)  # the only worker is taken: the next one queues
        queued = pool.submit_ctx(ctx, lambda c: ran.append("started"))
        assert not queued.done()
        cancel()
        assert queued.cancelled()  # at the cancel, not when a worker frees up
        release.set()
        blocker.result(NEVER)
    assert ran == []
    with pytest.raises(concurrent.futures.CancelledError):
        queued.result(0)
    assert _context.watcher_count(ctx) == 0


def test_submit_ctx_with_a_done_context_never_starts() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    cancel()
    with gocontext.ContextExecutor(max_workers=1) as pool:
        future = pool.submit_ctx(ctx, lambda c: "ran")
    assert future.cancelled()


def test_a_started_function_runs_on_and_sees_its_context_end() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    started = threading.Event()

    def work(c: gocontext.Context, label: str) -> str:
        started.set()
        c.done().wait(NEVER)
        return f"{label}: {c.err()!r}"

    with gocontext.ContextExecutor(max_workers=1) as pool:
        future = pool.submit_ctx(ctx, work, "work")
        assert started.wait(NEVER)
        cancel()
        assert future.result(NEVER) == "work: Canceled('context canceled')"


def test_the_hook_on_the_context_goes_when_the_future_finishes() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    with gocontext.ContextExecutor(max_workers=2) as pool:
        futures = [pool.submit_ctx(ctx, lambda c, i: i * 2, i) for i in range(50)]
        assert [f.result(NEVER) for f in futures] == [i * 2 for i in range(50)]
    assert _context.watcher_count(ctx) == 0
    cancel()


def test_bad_input_is_refused_at_the_call() -> None:
    with gocontext.ContextExecutor(max_workers=1) as pool:
        with pytest.raises(
            TypeError, match=r"ContextExecutor.submit_ctx\(\) needs a Context as ctx, got None"
        ):
            pool.submit_ctx(None, lambda c: None)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"submit_ctx\(\) needs a callable, got 3"):
            pool.submit_ctx(gocontext.background(), 3)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"submit\(\) needs a callable, got 3"):
            pool.submit(3)  # type: ignore[arg-type]
