"""Checked by mypy --strict, never run: the public API type-checks the way users write it."""

from __future__ import annotations

import signal
from collections.abc import Hashable
from concurrent.futures import Future
from datetime import timedelta
from typing import TypeVar, overload

from typing_extensions import assert_type

import gocontext

T = TypeVar("T")
USER = gocontext.Key[str]("user")
PORT = gocontext.Key[int]("port")
RID = gocontext.PropagatedKey("request-id")


def typed_lookups(ctx: gocontext.Context) -> None:
    assert_type(ctx.value(USER), str | None)
    assert_type(ctx.value(PORT), int | None)
    assert_type(ctx.value(RID), str | None)
    assert_type(ctx.value("plain"), object)
    assert_type(ctx.err(), gocontext.ContextError | None)
    assert_type(ctx.deadline(), float | None)
    assert_type(ctx.done(), gocontext.Done)


def pairs(parent: gocontext.Context) -> None:
    ctx, cancel = gocontext.with_cancel(parent)
    assert_type(ctx, gocontext.Context)
    assert_type(cancel(), None)
    with gocontext.with_timeout(parent, timedelta(seconds=2)) as (ctx2, cancel2):
        assert_type(ctx2, gocontext.Context)
        cancel2()
    ctx3, cancel3 = gocontext.with_cancel_cause(parent)
    cancel3(ValueError("why"))
    cancel3()
    stop = gocontext.after_func(ctx3, lambda: None)
    assert_type(stop(), bool)
    assert_type(gocontext.cause(ctx3), BaseException | None)


class MyContext:
    """A user-written context satisfies the protocol structurally (with value()'s overloads)."""

    def __init__(self, inner: gocontext.Context) -> None:
        self.inner = inner

    def deadline(self) -> float | None:
        return self.inner.deadline()

    def done(self) -> gocontext.Done:
        return self.inner.done()

    def err(self) -> gocontext.ContextError | None:
        return self.inner.err()

    @overload
    def value(self, key: gocontext.Key[T], /) -> T | None: ...
    @overload
    def value(self, key: Hashable, /) -> object: ...
    def value(self, key: Hashable, /) -> object:
        return self.inner.value(key)


def foreign(parent: gocontext.Context) -> gocontext.Context:
    mine: gocontext.Context = MyContext(parent)
    return gocontext.with_value(mine, USER, "ada")


async def awaiting(ctx: gocontext.Context) -> None:
    await ctx.done()


def groups(parent: gocontext.Context) -> None:
    def work(ctx: gocontext.Context, n: int, name: str) -> int:
        return n

    with gocontext.Group(parent, limit=4) as g:
        assert_type(g.ctx, gocontext.Context)
        g.go(work, 1, "a")
        assert_type(g.try_go(work, 2, "b"), bool)
    assert_type(g.errors, list[BaseException])


async def task_groups(parent: gocontext.Context) -> None:
    async def fetch(ctx: gocontext.Context, url: str) -> bytes:
        return url.encode()

    def crunch(ctx: gocontext.Context, n: int) -> int:
        return n

    async with gocontext.TaskGroup(parent, limit=2) as g:
        g.go(fetch, "http://example.invalid")
        g.go_thread(crunch, 3)
        assert_type(g.ctx, gocontext.Context)


def programs() -> None:
    with gocontext.signal_context() as (ctx, stop):
        assert_type(ctx, gocontext.Context)
        stop()
    cause = gocontext.cause(ctx)
    if isinstance(cause, gocontext.SignalReceived):
        assert_type(cause.signum, signal.Signals)
    with gocontext.ContextExecutor(max_workers=2) as pool:
        assert_type(pool.submit(pow, 2, 3), Future[int])
        assert_type(pool.submit_ctx(ctx, lambda c, n: n * 2, 21), Future[int])
