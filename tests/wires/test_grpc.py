"""gRPC, sync and grpc.aio: the deadline and values reach the handler, a cancel cancels the RPC
with a typed error, the handler's context ends with the RPC and says why, the channel stays
healthy. Servers: sync, grpc.aio with async handlers, grpc.aio with sync handlers (run in its
thread pool). grpc.aio runs on asyncio only: its tests have no trio twin."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import anyio
import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]
import pytest

import gocontext
import gocontext.grpc
import gocontext.http
from gocontext import _context
from gocontext.grpc import _server

from ..conftest import NEVER
from . import conftest as wires
from .conftest import BOARD, SECRET, cancel_when_entered, rid, with_rid
from .grpc_app import (  # the fixtures: used by name
    HOW,
    KEPT,
    GrpcServer,
    anyio_backend,  # noqa: F401
    method,
    new_aio_channel,
    on_the_modules_loop,
    one_loop_for_the_module,  # noqa: F401
    sync_channel,
)


@pytest.fixture(scope="module", params=["sync", "aio", "aio-sync"])
def server(request: pytest.FixtureRequest) -> Iterator[GrpcServer]:
    with GrpcServer(request.param) as s:
        yield s


@pytest.fixture
def channel(server: GrpcServer, sync_how: str) -> Iterator[Any]:
    ch = sync_channel(server.target, sync_how)
    yield ch
    ch.close()


def assert_healthy(channel: Any) -> None:
    assert channel.unary_unary(method("Ok"))(b"", timeout=NEVER) == b"ok"


# -- sync client ------------------------------------------------------------------------------


def test_deadline_and_propagated_values_reach_the_handler(channel: Any) -> None:
    ctx = gocontext.with_value(with_rid("r-1"), SECRET, "hunter2")
    with gocontext.with_timeout(ctx, 30) as (ctx, _), gocontext.use(ctx):
        body = json.loads(channel.unary_unary(method("Info"))(b""))
    assert 0 < body["remaining"] <= 31  # (gRPC rounds the timeout it sends up a little)
    assert body["rid"] == "r-1"
    assert body["secret"] is None
    assert body["same_as_context_of"] is True


@pytest.mark.parametrize("name", ["Info", "Fresh"])
def test_each_rpc_of_a_method_runs_under_its_own_context(channel: Any, name: str) -> None:
    # "Info": the server hands the same handler RPC after RPC (wrapped once); "Fresh": a new
    # one each time (wrapped each time). Either way each RPC has its own deadline and values.
    call = channel.unary_unary(method(name))
    seen = []
    for i, timeout in enumerate((30, 300, None)):
        ctx: gocontext.Context = with_rid(f"r-{i}")
        if timeout is not None:
            ctx, cancel = gocontext.with_timeout(ctx, timeout)
        with gocontext.use(ctx):
            seen.append(json.loads(call(b"")))
    assert [body["rid"] for body in seen] == ["r-0", "r-1", "r-2"]
    assert 0 < seen[0]["remaining"] <= 31 < seen[1]["remaining"] <= 301
    assert seen[2]["remaining"] is None
    assert all(body["same_as_context_of"] for body in seen)
    assert_no_server_context_left()


def test_client_streaming_and_bidirectional_calls_carry_the_deadline_and_values(
    channel: Any,
) -> None:
    with gocontext.with_timeout(with_rid("streams"), 30) as (ctx, _), gocontext.use(ctx):
        body = json.loads(channel.stream_unary(method("Collect"))(iter([b"a", b"b", b"c"])))
        echoed = list(channel.stream_stream(method("Echo"))(iter([b"x", b"y"])))
    assert body["count"] == 3
    assert body["rid"] == "streams"
    assert 0 < body["remaining"] <= 31
    assert echoed == [b"x streams", b"y streams"]


@on_the_modules_loop
async def test_aio_client_streaming_and_bidirectional_calls_carry_the_values(
    server: GrpcServer, aio_how: str
) -> None:
    async with new_aio_channel(server.target, aio_how) as ch:
        with gocontext.with_timeout(with_rid("aio-streams"), 30) as (ctx, _), gocontext.use(ctx):
            body = json.loads(await ch.stream_unary(method("Collect"))(iter([b"a", b"b"])))
            echoed = [r async for r in ch.stream_stream(method("Echo"))(iter([b"x"]))]
    assert body["count"] == 2
    assert body["rid"] == "aio-streams"
    assert echoed == [b"x aio-streams"]


def test_a_call_without_a_deadline_gives_the_handler_none(channel: Any) -> None:
    with gocontext.use(with_rid("none")):
        body = json.loads(channel.unary_unary(method("Info"))(b""))
    assert body["remaining"] is None
    assert body["rid"] == "none"


def test_cancel_from_another_thread_cancels_a_future_call(channel: Any) -> None:
    name = rid("future")
    ctx, cancel = gocontext.with_cancel(with_rid(name))
    with gocontext.use(ctx):
        fut = channel.unary_unary(method("Wait")).future(b"")
    t = cancel_when_entered(name, cancel)
    with pytest.raises(gocontext.Canceled):
        fut.result(NEVER)
    t.join(NEVER)
    assert isinstance(BOARD.wait_ended(name), gocontext.http.ClientDisconnected)
    assert _context.watcher_count(ctx) == 0
    assert_healthy(channel)


def test_cancel_from_another_thread_cancels_a_blocking_call(channel: Any) -> None:
    name = rid("blocking")
    ctx, cancel = gocontext.with_cancel(with_rid(name))
    t = cancel_when_entered(name, cancel)
    with gocontext.use(ctx), pytest.raises(gocontext.Canceled):
        channel.unary_unary(method("Wait"))(b"", timeout=5)  # (5 s: a bound if it fails)
    t.join(NEVER)
    assert isinstance(BOARD.wait_ended(name), gocontext.http.ClientDisconnected)
    assert _context.watcher_count(ctx) == 0
    assert_healthy(channel)


def test_a_cancel_reaches_every_blocking_call_of_a_kept_callable(channel: Any) -> None:
    """A stub keeps its method's callable: its calls after the first (made through what the
    first found and kept) are cancelled as the first is."""
    wait = channel.unary_unary(method("Wait"))
    for i in range(3):
        name = rid(f"kept-{i}")
        ctx, cancel = gocontext.with_cancel(with_rid(name))
        t = cancel_when_entered(name, cancel)
        with gocontext.use(ctx), pytest.raises(gocontext.Canceled):
            wait(b"", timeout=5)  # (5 s: a bound if it fails)
        t.join(NEVER)
        assert isinstance(BOARD.wait_ended(name), gocontext.http.ClientDisconnected)
        assert _context.watcher_count(ctx) == 0
    assert_healthy(channel)


@pytest.mark.parametrize("kind", ["unary", "stream-in"])
def test_a_blocking_call_that_a_cancel_can_reach_stays_in_the_callers_thread(
    channel: Any, kind: str
) -> None:
    """As grpc's own blocking call: the answer is read (deserialized) by the calling thread,
    not handed over from another one (a thread hop per call)."""
    readers: list[threading.Thread] = []

    def deserialize(data: bytes) -> bytes:
        readers.append(threading.current_thread())
        return data

    ctx, cancel = gocontext.with_cancel(with_rid(rid("in-thread")))
    with gocontext.use(ctx):
        if kind == "unary":
            answer = channel.unary_unary(method("Ok"), response_deserializer=deserialize)(b"")
            assert answer == b"ok"
        else:
            call = channel.stream_unary(method("Collect"), response_deserializer=deserialize)
            assert json.loads(call(iter([b"a"])))["count"] == 1
    cancel()
    assert readers == [threading.current_thread()]
    assert _context.watcher_count(ctx) == 0


def test_cancel_from_another_thread_cancels_a_streamed_response(channel: Any) -> None:
    name = rid("stream")
    ctx, cancel = gocontext.with_cancel(with_rid(name))
    with gocontext.use(ctx):
        responses = channel.unary_stream(method("WaitStream"))(b"")
    assert next(responses) == b"first"
    t = cancel_when_entered(name, cancel)
    with pytest.raises(gocontext.Canceled):
        next(responses)
    t.join(NEVER)
    assert isinstance(BOARD.wait_ended(name), gocontext.http.ClientDisconnected)
    assert_healthy(channel)
    assert_no_server_context_left()


def assert_no_server_context_left() -> None:
    """Every handler's context is unregistered (a handler does so just after it returns)."""
    end = time.monotonic() + NEVER
    while _server._contexts and time.monotonic() < end:
        time.sleep(0.01)
    assert not _server._contexts


def test_passed_deadline_raises_deadline_exceeded_and_ends_the_handler_with_it(
    channel: Any,
) -> None:
    name = rid("deadline")
    with gocontext.with_timeout(with_rid(name), 0.3) as (ctx, _), gocontext.use(ctx):
        with pytest.raises(gocontext.DeadlineExceeded):
            channel.unary_unary(method("Wait"))(b"")
    assert isinstance(BOARD.wait_ended(name), gocontext.DeadlineExceeded)
    assert_healthy(channel)


def test_the_callers_own_smaller_timeout_still_raises_rpc_error(channel: Any) -> None:
    name = rid("own")
    with gocontext.with_timeout(with_rid(name), 60) as (ctx, _), gocontext.use(ctx):
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(method("Wait"))(b"", timeout=0.2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    BOARD.wait_ended(name)
    assert_healthy(channel)


@pytest.mark.parametrize("made", HOW)
@pytest.mark.parametrize("how", ["canceled", "expired"])
def test_a_done_context_sends_nothing(how: str, made: str) -> None:
    ctx, expected = wires.done_context(how)
    with wires.unreached_port() as port:
        channel = sync_channel(f"127.0.0.1:{port}", made)
        with gocontext.use(ctx), pytest.raises(expected):
            channel.unary_unary(method("Ok"))(b"")
        channel.close()


@pytest.mark.parametrize("request_body", [b"", b"suspend"])
def test_the_handlers_context_ends_canceled_when_it_is_done(
    channel: Any, request_body: bytes
) -> None:
    name = rid("kept")
    with gocontext.use(with_rid(name)):
        assert channel.unary_unary(method("Kept"))(request_body, timeout=NEVER) == b"kept"
    ctx, servicer_context = KEPT.pop(name)
    assert isinstance(ctx.err(), gocontext.Canceled)
    assert isinstance(gocontext.cause(ctx), gocontext.Canceled)  # (not a client that left)
    with pytest.raises(LookupError):
        gocontext.grpc.context_of(servicer_context)


def test_context_of_an_unknown_servicer_context_is_a_lookup_error() -> None:
    with pytest.raises(LookupError, match="server_interceptor"):
        gocontext.grpc.context_of(object())


# -- grpc.aio client ------------------------------------------------------------------------


@on_the_modules_loop
async def test_aio_deadline_and_values_reach_the_handler(server: GrpcServer, aio_how: str) -> None:
    async with new_aio_channel(server.target, aio_how) as ch:
        with gocontext.with_timeout(with_rid("aio-1"), 30) as (ctx, _), gocontext.use(ctx):
            body = json.loads(await ch.unary_unary(method("Info"))(b""))
    assert 0 < body["remaining"] <= 31
    assert body["rid"] == "aio-1"


class _AddsMetadata(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """An interceptor after ours that adds to the call's metadata in place (grpc.aio hands the
    caller's own ``Metadata`` on: without values of ours to add, it is added to)."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if "x-later" not in details.metadata:
            details.metadata.add("x-later", "1")
        return await continuation(details, request)


@on_the_modules_loop
@pytest.mark.parametrize("given", ["none", "empty", "pairs", "metadata"])
@pytest.mark.parametrize("values", [True, False])
async def test_aio_metadata_carries_the_values_and_keeps_the_callers(
    server: GrpcServer, given: str, values: bool, aio_how: str
) -> None:
    name = rid("aio-md")
    parent = with_rid(name) if values else gocontext.background()
    pairs = (("x-extra", "a"), ("baggage", "other=1"))
    metadata: Any = {
        "none": None,
        "empty": grpc.aio.Metadata(),
        "pairs": pairs,
        "metadata": grpc.aio.Metadata(*pairs),
    }[given]
    async with new_aio_channel(server.target, aio_how, _AddsMetadata()) as ch:
        with gocontext.with_timeout(parent, 30) as (ctx, _), gocontext.use(ctx):
            for _ in range(2):  # (the second call sees nothing the first one left)
                body = json.loads(await ch.unary_unary(method("Info"))(b"", metadata=metadata))
                got = sorted(tuple(pair) for pair in body["metadata"])
                ours = [("baggage", f"{wires.RID.name}={name}")] if values else []
                if given in ("pairs", "metadata"):
                    merged = f"other=1,{wires.RID.name}={name}" if values else "other=1"
                    ours = [("baggage", merged), ("x-extra", "a")]
                assert got == sorted([*ours, ("x-later", "1")])
                assert body["rid"] == (name if values else None)
    if given == "empty":
        assert not metadata  # the caller's own is not added to
    if given == "metadata" and values:
        assert tuple(metadata) == pairs  # ours goes out in a Metadata of its own


Kind = Literal["unary", "stream-out", "stream-in", "stream-in-writes", "both-ways"]
KINDS = ["unary", "stream-out", "stream-in", "stream-in-writes", "both-ways"]


async def start_waiting_call(ch: Any, kind: Kind) -> Any:
    """A grpc.aio call of *kind* to a handler that waits for its context to end; not yet
    awaited or read. "stream-in-writes" sends its request with ``write()``, then
    ``done_writing()``."""
    if kind == "unary":
        return ch.unary_unary(method("Wait"))(b"")
    if kind == "stream-out":
        return ch.unary_stream(method("WaitStream"))(b"")
    if kind == "stream-in":
        return ch.stream_unary(method("WaitIn"))(iter([b"a"]))
    if kind == "both-ways":
        return ch.stream_stream(method("WaitBoth"))(iter([b"a"]))
    call = ch.stream_unary(method("WaitIn"))()
    with anyio.fail_after(NEVER):
        await call.write(b"a")
        await call.done_writing()
    return call


async def answer(call: Any, kind: Kind) -> object:
    """What *call* answers: awaited, or its streamed answers read to the end."""
    if kind in ("stream-out", "both-ways"):
        return [r async for r in call]
    return await call


@on_the_modules_loop
@pytest.mark.parametrize("kind", KINDS)
async def test_aio_cancel_from_another_thread_cancels_the_call(
    server: GrpcServer, kind: Kind, aio_how: str
) -> None:
    name = rid(f"aio-{kind}")
    ctx, cancel = gocontext.with_cancel(with_rid(name))
    async with new_aio_channel(server.target, aio_how) as ch:
        with gocontext.use(ctx), pytest.raises(gocontext.Canceled):
            call = await start_waiting_call(ch, kind)
            t = cancel_when_entered(name, cancel)
            await answer(call, kind)
        await anyio.to_thread.run_sync(t.join, NEVER)
        cause = await anyio.to_thread.run_sync(BOARD.wait_ended, name)
        assert isinstance(cause, gocontext.http.ClientDisconnected)
        with anyio.fail_after(NEVER):
            assert await ch.unary_unary(method("Ok"))(b"") == b"ok"
        await anyio.to_thread.run_sync(assert_no_server_context_left)


@on_the_modules_loop
@pytest.mark.parametrize("kind", KINDS)
async def test_aio_cancel_ends_a_call_whose_answer_nobody_reads_yet(
    server: GrpcServer, kind: Kind, aio_how: str
) -> None:
    """The call is cancelled when its context is, not when the caller next looks at it: the
    server's handler ends at once (a caller may be busy writing, or elsewhere)."""
    name = rid(f"aio-unread-{kind}")
    ctx, cancel = gocontext.with_cancel(with_rid(name))
    async with new_aio_channel(server.target, aio_how) as ch:
        with gocontext.use(ctx):
            call = await start_waiting_call(ch, kind)
        await anyio.to_thread.run_sync(BOARD.wait_entered, name)
        cancel()
        cause = await anyio.to_thread.run_sync(BOARD.wait_ended, name)
        assert isinstance(cause, gocontext.http.ClientDisconnected)
        with pytest.raises(gocontext.Canceled), anyio.fail_after(NEVER):
            await answer(call, kind)
        assert _context.watcher_count(ctx) == 0


@on_the_modules_loop
@pytest.mark.parametrize("kind", KINDS)
async def test_aio_passed_deadline_raises_deadline_exceeded(
    server: GrpcServer, kind: Kind, aio_how: str
) -> None:
    name = rid(f"aio-deadline-{kind}")
    async with new_aio_channel(server.target, aio_how) as ch:
        with gocontext.with_timeout(with_rid(name), 0.3) as (ctx, _), gocontext.use(ctx):
            with pytest.raises(gocontext.DeadlineExceeded):
                await answer(await start_waiting_call(ch, kind), kind)
        cause = await anyio.to_thread.run_sync(BOARD.wait_ended, name)
        # (the client's cancel at its deadline may reach the server a moment before the
        # server's own deadline: that is still the deadline's doing)
        assert isinstance(cause, gocontext.DeadlineExceeded), cause
        with anyio.fail_after(NEVER):
            assert await ch.unary_unary(method("Ok"))(b"") == b"ok"


def test_a_sync_handler_on_a_grpc_aio_server_runs_in_its_thread_pool() -> None:
    """As grpc.aio runs it without the interceptor: not on the server's loop (blocking it)."""
    with GrpcServer("aio-sync") as aio_server, grpc.insecure_channel(aio_server.target) as ch:
        name = ch.unary_unary(method("Thread"))(b"", timeout=NEVER).decode()
    assert aio_server.thread is not None
    assert name not in (aio_server.thread.name, ""), name


@on_the_modules_loop
async def test_an_aio_handler_runs_in_the_rpcs_own_task() -> None:
    """No task of ours per RPC: the handler runs in the task gRPC made for the RPC."""
    with GrpcServer("aio") as aio_server:
        async with grpc.aio.insecure_channel(aio_server.target) as ch:
            with anyio.fail_after(NEVER):
                name = await ch.unary_unary(method("Task"))(b"")
    assert name not in (b"aio_task", b""), name


@on_the_modules_loop
@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="Python 3.10 has no Task.cancelling(): a task.cancel() that meets the context's own "
    "cancel of the call cannot be told apart from it (as for scope())",
)
@pytest.mark.parametrize("kind", KINDS)
async def test_aio_a_framework_cancellation_passes_through_untouched(
    server: GrpcServer, kind: Kind, aio_how: str
) -> None:
    """A task cancelled at the same moment as its context ends cancelled: no Canceled takes
    the place of the task's own cancellation."""
    name = rid(f"aio-framework-{kind}")
    ctx, cancel = gocontext.with_cancel(with_rid(name))
    async with new_aio_channel(server.target, aio_how) as ch:

        async def call() -> None:
            with gocontext.use(ctx):
                await answer(await start_waiting_call(ch, kind), kind)

        await wires.cancel_task_and_context_when_entered(
            name, asyncio.ensure_future(call()), cancel
        )
        with anyio.fail_after(NEVER):
            assert await ch.unary_unary(method("Ok"))(b"") == b"ok"
