"""Checked by mypy --strict, never run: the public API type-checks the way users write it."""

from __future__ import annotations

import signal
from collections.abc import Hashable
from concurrent.futures import Future
from datetime import timedelta
from typing import TypeVar, overload

from typing_extensions import assert_type

import gocontext
import gocontext.grpc
from tests.typing.contexts import OtherContext

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
    assert_type(ctx, gocontext.RichContext)
    assert_type(cancel(), None)
    with gocontext.with_timeout(parent, timedelta(seconds=2)) as (ctx2, cancel2):
        assert_type(ctx2, gocontext.RichContext)
        cancel2()
    assert_type(ctx.remaining(), float | None)
    assert_type(ctx.check(), None)
    ctx3, cancel3 = gocontext.with_cancel_cause(parent)
    cancel3(ValueError("why"))
    cancel3()
    stop = gocontext.after_func(ctx3, lambda: None)
    assert_type(stop(), bool)
    assert_type(gocontext.cause(ctx3), BaseException | None)


class MyContext(OtherContext):
    """A user-written context satisfies the protocol structurally (with value()'s overloads)."""

    @overload
    def value(self, key: gocontext.Key[T], /) -> T | None: ...
    @overload
    def value(self, key: Hashable, /) -> object: ...
    def value(self, key: object, /) -> object:
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
        assert_type(g.ctx, gocontext.RichContext)
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
        assert_type(g.ctx, gocontext.RichContext)


async def threads(parent: gocontext.Context) -> None:
    def lookup(ctx: gocontext.RichContext, key: str) -> str:
        ctx.check()  # the child context a worker gets is a rich one
        return key

    def plain(ctx: gocontext.Context, n: int) -> int:
        return n

    assert_type(await gocontext.to_thread(parent, lookup, "k"), str)
    assert_type(await gocontext.to_thread(parent, plain, 1), int)


def programs() -> None:
    with gocontext.signal_context() as (ctx, stop):
        assert_type(ctx, gocontext.RichContext)
        stop()
    cause = gocontext.cause(ctx)
    if isinstance(cause, gocontext.SignalReceived):
        assert_type(cause.signum, signal.Signals)

    def double(c: gocontext.Context, n: int) -> int:
        return n * 2

    with gocontext.ContextExecutor(max_workers=2) as pool:
        assert_type(pool.submit(pow, 2, 3), Future[int])
        assert_type(pool.submit_ctx(ctx, double, 21), Future[int])


def rich_everywhere(parent: gocontext.Context) -> None:
    """Every context the library hands out has check() and remaining(); Key[T] types values."""
    plain = OtherContext(parent)  # four methods, value untyped
    as_parent: gocontext.Context = plain
    ctx = gocontext.with_value(as_parent, USER, "ada")
    assert_type(ctx, gocontext.RichContext)
    assert_type(ctx.value(USER), str | None)
    assert_type(gocontext.with_value(plain, PORT, 8080).remaining(), float | None)
    assert_type(gocontext.with_value(plain, RID, "r-1").check(), None)
    assert_type(gocontext.with_value(plain, "any hashable", object()), gocontext.RichContext)
    assert_type(gocontext.without_cancel(plain).check(), None)
    assert_type(gocontext.merge(plain, ctx).ctx.remaining(), float | None)
    assert_type(gocontext.background().remaining(), float | None)
    assert_type(gocontext.todo().check(), None)
    assert_type(gocontext.current().remaining(), float | None)
    with gocontext.with_deadline(plain, 1.0) as (c, cancel):
        c.check()
    with gocontext.Group(plain) as g:
        g.ctx.check()
    with gocontext.signal_context(plain) as (s, stop):
        assert_type(s.remaining(), float | None)
    rich: gocontext.RichContext = gocontext.with_cancel(plain).ctx
    also_plain: gocontext.Context = rich
    assert_type(also_plain.value(PORT), int | None)


async def rich_in_tasks(parent: gocontext.Context) -> None:
    async with gocontext.scope(parent) as child:
        assert_type(child.remaining(), float | None)
        child.check()
    async with gocontext.TaskGroup(parent) as g:
        g.ctx.check()

        async def job(ctx: gocontext.RichContext) -> None:
            ctx.check()

        g.go(job)


def rich_from_integrations(servicer_context: object) -> None:
    assert_type(gocontext.grpc.context_of(servicer_context).remaining(), float | None)
