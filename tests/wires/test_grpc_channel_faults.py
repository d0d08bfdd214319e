"""``gocontext.grpc.channel()`` and ``aio_channel()`` tried as careful users and attackers
would: calls by keyword and by position, a server's error read after the context ended, a
future the caller cancelled, a cancel racing the call's start, ``wait_for_ready`` to a port
nobody listens on, calls never awaited, task cancellation, many threads on one callable,
metadata of every shape, writes after a cancel. Each scenario runs for the wrapper, for the
interceptors (the same promises) and, where it applies, for plain grpc (what a wrapper must
preserve). grpc.aio runs on asyncio only: its tests have no trio twin."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import anyio
import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]
import pytest

import gocontext
import gocontext.grpc
import gocontext.http
from gocontext import _context

from ..conftest import NEVER
from . import conftest as wires
from .conftest import BOARD, cancel_when_entered, rid, with_rid
from .grpc_app import (  # the fixtures: used by name
    HOW,
    GrpcServer,
    anyio_backend,  # noqa: F401
    method,
    new_aio_channel,
    on_the_modules_loop,
    one_loop_for_the_module,  # noqa: F401
    sync_channel,
)

HOW3 = [*HOW, "plain"]

# -- a server of our own: handlers that fail -----------------------------------------------

OWN = "gocontext.test.Attack"


def _fail(request: bytes, servicer_context: Any) -> bytes:
    servicer_context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def _fail_stream(request: bytes, servicer_context: Any) -> Iterator[bytes]:
    yield b"first"
    servicer_context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def _echo_md(request: bytes, servicer_context: Any) -> bytes:
    return json.dumps(
        [
            [k, v]
            for k, v in servicer_context.invocation_metadata()
            if not k.startswith("grpc-") and k != "user-agent"
        ]
    ).encode()


def _echo(requests: Iterator[bytes], servicer_context: Any) -> Iterator[bytes]:
    yield from requests


def _empty(request: bytes, servicer_context: Any) -> Iterator[bytes]:
    return iter(())


def _count_in(requests: Iterator[bytes], servicer_context: Any) -> bytes:
    return str(sum(1 for _ in requests)).encode()


def own(name: str) -> str:
    return f"/{OWN}/{name}"


@pytest.fixture(scope="module")
def own_server() -> Iterator[str]:
    table = {
        "Fail": grpc.unary_unary_rpc_method_handler(_fail),
        "FailStream": grpc.unary_stream_rpc_method_handler(_fail_stream),
        "EchoMd": grpc.unary_unary_rpc_method_handler(_echo_md),
        "CountIn": grpc.stream_unary_rpc_method_handler(_count_in),
        "Echo": grpc.stream_stream_rpc_method_handler(_echo),
        "Empty": grpc.unary_stream_rpc_method_handler(_empty),
    }
    server = grpc.server(futures.ThreadPoolExecutor(16))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(OWN, table),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None).wait(NEVER)


@pytest.fixture(scope="module")
def server() -> Iterator[GrpcServer]:
    with GrpcServer("sync") as s:
        yield s


def sync_ch(target: str, how: str) -> Any:
    if how == "plain":
        return grpc.insecure_channel(target)
    return sync_channel(target, how)


def aio_ch(target: str, how: str) -> Any:
    if how == "plain":
        return grpc.aio.insecure_channel(target)
    return new_aio_channel(target, how)


def cancelable() -> tuple[gocontext.Context, Any]:
    return gocontext.with_cancel(gocontext.background())


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(pred: Any, what: str) -> None:
    """Bounded wait for *pred* (a condition we cannot get an event for)."""
    ev = threading.Event()
    for _ in range(int(NEVER / 0.005)):
        if pred():
            return
        ev.wait(0.005)
    raise AssertionError(f"never: {what}")


# ==========================================================================================
# 1. calls by keyword: a stream-unary call's request_iterator=
# ==========================================================================================


@pytest.mark.parametrize("how", HOW3)
@pytest.mark.parametrize("form", ["call", "with_call", "future"])
def test_sync_stream_unary_request_iterator_by_keyword(
    own_server: str, how: str, form: str
) -> None:
    ctx, cancel = cancelable()
    with sync_ch(own_server, how) as ch, gocontext.use(ctx):
        callable_ = ch.stream_unary(own("CountIn"))
        it = iter([b"a", b"b"])
        if form == "call":
            answer = callable_(request_iterator=it, timeout=NEVER)
        elif form == "with_call":
            answer = callable_.with_call(request_iterator=it, timeout=NEVER)[0]
        else:
            answer = callable_.future(request_iterator=it, timeout=NEVER).result(NEVER)
    assert answer == b"2"
    cancel()


@on_the_modules_loop
@pytest.mark.parametrize("how", HOW3)
@pytest.mark.parametrize("kind", ["stream_unary", "stream_stream"])
async def test_aio_stream_request_iterator_by_keyword(own_server: str, how: str, kind: str) -> None:
    ctx, cancel = cancelable()
    async with aio_ch(own_server, how) as ch:
        with gocontext.use(ctx):
            if kind == "stream_unary":
                call = ch.stream_unary(own("CountIn"))(request_iterator=iter([b"a"]), timeout=NEVER)
            else:
                call = ch.stream_stream(own("Echo"))(request_iterator=iter([b"a"]), timeout=NEVER)
        with anyio.fail_after(NEVER):
            if kind == "stream_unary":
                assert await call == b"1"
            else:
                assert [r async for r in call] == [b"a"]
    cancel()


@on_the_modules_loop
@pytest.mark.parametrize("how", HOW3)
async def test_aio_stream_unary_timeout_positional(own_server: str, how: str) -> None:
    """grpc.aio's stream-request callables take timeout (and the rest) positionally."""
    ctx, cancel = cancelable()
    async with aio_ch(own_server, how) as ch:
        with gocontext.use(ctx):
            call = ch.stream_unary(own("CountIn"))(iter([b"a"]), NEVER)
        with anyio.fail_after(NEVER):
            assert await call == b"1"
    cancel()


# ==========================================================================================
# 2. an error the server gave before the context ended stays the server's
# ==========================================================================================


@pytest.mark.parametrize("how", HOW3)
def test_sync_future_error_before_cancel_stays_servers(own_server: str, how: str) -> None:
    ctx, cancel = cancelable()
    with sync_ch(own_server, how) as ch:
        with gocontext.use(ctx):
            fut = ch.unary_unary(own("Fail")).future(b"", timeout=NEVER)
        done = threading.Event()
        fut.add_done_callback(lambda _: done.set())
        assert done.wait(NEVER)
        cancel()  # the call was over, with the server's error, before this
        with pytest.raises(grpc.RpcError) as got:
            fut.result(NEVER)
        assert got.value.code() == grpc.StatusCode.NOT_FOUND
    assert _context.watcher_count(ctx) == 0


@pytest.mark.parametrize("how", HOW3)
def test_sync_stream_error_before_cancel_stays_servers(own_server: str, how: str) -> None:
    ctx, cancel = cancelable()
    with sync_ch(own_server, how) as ch:
        with gocontext.use(ctx):
            responses = ch.unary_stream(own("FailStream"))(b"", timeout=NEVER)
        assert next(responses) == b"first"
        ended = threading.Event()
        if not responses.add_callback(ended.set):
            ended.set()
        assert ended.wait(NEVER)
        cancel()  # the call was over, with the server's error, before this
        with pytest.raises(grpc.RpcError) as got:
            next(responses)
        assert got.value.code() == grpc.StatusCode.NOT_FOUND


@on_the_modules_loop
@pytest.mark.parametrize("how", HOW3)
async def test_aio_unary_error_before_cancel_stays_servers(own_server: str, how: str) -> None:
    ctx, cancel = cancelable()
    async with aio_ch(own_server, how) as ch:
        with gocontext.use(ctx):
            call = ch.unary_unary(own("Fail"))(b"", timeout=NEVER)
        done = asyncio.Event()
        call.add_done_callback(lambda _: done.set())
        with anyio.fail_after(NEVER):
            await done.wait()
        cancel()  # the call was over, with the server's error, before this
        with pytest.raises(grpc.RpcError) as got, anyio.fail_after(NEVER):
            await call
        assert got.value.code() == grpc.StatusCode.NOT_FOUND
    assert _context.watcher_count(ctx) == 0


@on_the_modules_loop
@pytest.mark.parametrize("how", HOW3)
async def test_aio_stream_error_before_cancel_stays_servers(own_server: str, how: str) -> None:
    ctx, cancel = cancelable()
    async with aio_ch(own_server, how) as ch:
        with gocontext.use(ctx):
            call = ch.unary_stream(own("FailStream"))(b"", timeout=NEVER)
        with anyio.fail_after(NEVER):
            assert await call.read() == b"first"
            assert await call.code() == grpc.StatusCode.NOT_FOUND  # over
        cancel()
        with pytest.raises(grpc.RpcError) as got, anyio.fail_after(NEVER):
            await call.read()
        assert got.value.code() == grpc.StatusCode.NOT_FOUND


# ==========================================================================================
# 3. a future the caller cancelled, then the context ends
# ==========================================================================================


@pytest.mark.parametrize("how", HOW)
def test_sync_future_caller_cancelled_then_context_canceled(server: GrpcServer, how: str) -> None:
    name = rid("attack-user-cancel")
    ctx, cancel = gocontext.with_cancel(with_rid(name))
    with sync_ch(server.target, how) as ch:
        with gocontext.use(ctx):
            fut = ch.unary_unary(method("Wait")).future(b"", timeout=NEVER)
        BOARD.wait_entered(name)
        assert fut.cancel()
        BOARD.wait_ended(name)
        cancel()
        with pytest.raises(grpc.FutureCancelledError):
            fut.result(NEVER)
        with pytest.raises(grpc.FutureCancelledError):
            fut.exception(NEVER)


# ==========================================================================================
# 4. a cancel racing the call's start (the request serializer runs after the wrapper's checks)
# ==========================================================================================


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("form", ["call", "with_call", "future", "stream"])
def test_sync_cancel_between_check_and_start(server: GrpcServer, how: str, form: str) -> None:
    name = rid(f"attack-race-start-{form}")
    ctx, cancel = gocontext.with_cancel(with_rid(name))

    def serializer(request: bytes) -> bytes:
        cancel()  # after the wrapper saw the context alive, before the call is made
        return request

    with sync_ch(server.target, how) as ch, gocontext.use(ctx):
        if form == "stream":
            callable_ = ch.unary_stream(method("WaitStream"), request_serializer=serializer)
        else:
            callable_ = ch.unary_unary(method("Wait"), request_serializer=serializer)

        def run() -> object:
            with gocontext.use(ctx):
                if form == "call":
                    return callable_(b"", timeout=NEVER)
                if form == "with_call":
                    return callable_.with_call(b"", timeout=NEVER)
                if form == "future":
                    return callable_.future(b"", timeout=NEVER).result(NEVER)
                return list(callable_(b"", timeout=NEVER))

        with pytest.raises(gocontext.Canceled):
            run()
    assert _context.watcher_count(ctx) == 0
    with sync_ch(server.target, how) as ch:
        assert ch.unary_unary(method("Ok"))(b"", timeout=NEVER) == b"ok"


# ==========================================================================================
# 5. wait_for_ready to a port nobody listens on: a cancel from another thread ends it
# ==========================================================================================


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("form", ["call", "with_call", "future", "stream", "stream-in"])
def test_sync_wait_for_ready_is_ended_by_a_cancel(how: str, form: str) -> None:
    ctx, cancel = cancelable()
    port = closed_port()
    with sync_ch(f"127.0.0.1:{port}", how) as ch:

        def cancel_once_watched() -> None:
            wait_until(lambda: _context.watcher_count(ctx) > 0, "the call is watched")
            cancel()

        t = threading.Thread(target=cancel_once_watched)
        t.start()
        with gocontext.use(ctx), pytest.raises(gocontext.Canceled):
            kw = {"timeout": NEVER, "wait_for_ready": True}
            if form == "call":
                ch.unary_unary(method("Ok"))(b"", **kw)
            elif form == "with_call":
                ch.unary_unary(method("Ok")).with_call(b"", **kw)
            elif form == "future":
                ch.unary_unary(method("Ok")).future(b"", **kw).result(NEVER)
            elif form == "stream":
                list(ch.unary_stream(method("WaitStream"))(b"", **kw))
            else:
                ch.stream_unary(method("Collect"))(iter([b"a"]), **kw)
        t.join(NEVER)
        assert _context.watcher_count(ctx) == 0


@on_the_modules_loop
@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("kind", ["unary", "stream", "stream-in"])
async def test_aio_wait_for_ready_is_ended_by_a_cancel(how: str, kind: str) -> None:
    ctx, cancel = cancelable()
    port = closed_port()
    async with aio_ch(f"127.0.0.1:{port}", how) as ch:
        with gocontext.use(ctx):
            if kind == "unary":
                call = ch.unary_unary(method("Ok"))(b"", timeout=NEVER, wait_for_ready=True)
            elif kind == "stream":
                call = ch.unary_stream(method("WaitStream"))(
                    b"", timeout=NEVER, wait_for_ready=True
                )
            else:
                call = ch.stream_unary(method("Collect"))(
                    iter([b"a"]), timeout=NEVER, wait_for_ready=True
                )

        async def cancel_soon() -> None:
            for _ in range(int(NEVER / 0.005)):
                if _context.watcher_count(ctx) > 0:
                    break
                await asyncio.sleep(0.005)
            await anyio.to_thread.run_sync(cancel)  # from another thread

        canceller = asyncio.ensure_future(cancel_soon())
        with pytest.raises(gocontext.Canceled), anyio.fail_after(NEVER):
            if kind == "stream":
                [r async for r in call]
            else:
                await call
        await canceller
    assert _context.watcher_count(ctx) == 0


# ==========================================================================================
# 6. aio calls never awaited, task cancellation, the call handed to callbacks
# ==========================================================================================


@on_the_modules_loop
@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("kind", ["unary", "stream-in", "stream", "both"])
async def test_aio_call_never_awaited_leaves_nothing_once_done(
    server: GrpcServer, own_server: str, how: str, kind: str
) -> None:
    ctx, cancel = cancelable()
    async with aio_ch(server.target, how) as ch, aio_ch(own_server, how) as own_ch:
        with gocontext.use(ctx):
            if kind == "unary":
                call = ch.unary_unary(method("Ok"))(b"")
            elif kind == "stream-in":
                call = ch.stream_unary(method("Collect"))(iter([b"a"]))
            elif kind == "stream":
                call = own_ch.unary_stream(own("Empty"))(b"x")  # (no message: ends unread)
            else:
                call = ch.stream_stream(method("Echo"))(iter([]))
        done = asyncio.Event()
        call.add_done_callback(lambda _: done.set())
        with anyio.fail_after(NEVER):
            await done.wait()
        await asyncio.sleep(0)
        assert _context.watcher_count(ctx) == 0
    cancel()


@on_the_modules_loop
@pytest.mark.parametrize("how", HOW3)
@pytest.mark.parametrize("kind", ["unary", "stream-in", "stream"])
async def test_aio_done_callback_gets_the_call_itself(
    server: GrpcServer, own_server: str, how: str, kind: str
) -> None:
    """grpc.aio hands a done-callback the call it was added to."""
    ctx, cancel = cancelable()
    async with aio_ch(server.target, how) as ch, aio_ch(own_server, how) as own_ch:
        with gocontext.use(ctx):
            if kind == "unary":
                call = ch.unary_unary(method("Ok"))(b"")
            elif kind == "stream-in":
                call = ch.stream_unary(method("Collect"))(iter([b"a"]))
            else:
                call = own_ch.unary_stream(own("Empty"))(b"x")
        got: list[Any] = []
        done = asyncio.Event()
        call.add_done_callback(lambda c: (got.append(c), done.set()))
        with anyio.fail_after(NEVER):
            await done.wait()
        assert got[0] is call
    cancel()


@on_the_modules_loop
@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("kind", ["unary", "stream-in", "stream"])
@pytest.mark.parametrize(
    "way",
    [
        "task.cancel",
        "wait_for",
        pytest.param(
            "timeout",
            marks=pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout: 3.11"),
        ),
    ],
)
async def test_aio_task_cancellation_stays_cancelled_error(
    server: GrpcServer, how: str, kind: str, way: str
) -> None:
    name = rid(f"attack-task-{kind}-{way}")
    ctx, cancel = gocontext.with_cancel(with_rid(name))
    async with aio_ch(server.target, how) as ch:

        async def run() -> None:
            with gocontext.use(ctx):
                if kind == "unary":
                    await ch.unary_unary(method("Wait"))(b"")
                elif kind == "stream-in":
                    await ch.stream_unary(method("WaitIn"))(iter([b"a"]))
                else:
                    [r async for r in ch.unary_stream(method("WaitStream"))(b"")]

        if way == "task.cancel":
            task = asyncio.ensure_future(run())
            await anyio.to_thread.run_sync(BOARD.wait_entered, name)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        elif way == "wait_for":
            loop = asyncio.get_running_loop()
            go = loop.create_future()
            cancel_when_entered(name, lambda: loop.call_soon_threadsafe(go.set_result, None))

            async def both() -> None:
                inner = asyncio.ensure_future(asyncio.wait_for(run(), NEVER))
                await go
                inner.cancel()
                await inner

            with pytest.raises(asyncio.CancelledError):
                await both()
        else:
            loop = asyncio.get_running_loop()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(None) as cm:
                    cancel_when_entered(
                        name, lambda: loop.call_soon_threadsafe(cm.reschedule, loop.time())
                    )
                    await run()
        cause = await anyio.to_thread.run_sync(BOARD.wait_ended, name)
        assert isinstance(cause, gocontext.http.ClientDisconnected)
        assert ctx.err() is None
        for _ in range(int(NEVER / 0.01)):
            if _context.watcher_count(ctx) == 0:
                break
            await asyncio.sleep(0.01)
        assert _context.watcher_count(ctx) == 0
    cancel()


# ==========================================================================================
# 7. many threads sharing one wrapped callable, some cancelled
# ==========================================================================================


@pytest.mark.parametrize("how", HOW)
def test_sync_threads_share_one_callable(server: GrpcServer, how: str) -> None:
    n = 16
    with sync_ch(server.target, how) as ch:
        wait = ch.unary_unary(method("Wait"))
        ok = ch.unary_unary(method("Info"))
        results: dict[int, object] = {}
        ctxs: dict[int, gocontext.Context] = {}
        threads = []

        def run(i: int) -> None:
            name = f"{base}-{i}"
            if i % 2:
                ctx, cancel = gocontext.with_cancel(with_rid(name))
                ctxs[i] = ctx
                t = cancel_when_entered(name, cancel)
                try:
                    with gocontext.use(ctx):
                        results[i] = (
                            wait.with_call(b"", timeout=NEVER)
                            if i % 4 == 1
                            else wait(b"", timeout=NEVER)
                        )
                except BaseException as e:  # the outcome
                    results[i] = e
                t.join(NEVER)
            else:
                ctx, cancel = gocontext.with_timeout(with_rid(name), 30)
                ctxs[i] = ctx
                try:
                    with gocontext.use(ctx):
                        results[i] = json.loads(ok(b""))["rid"]
                except BaseException as e:
                    results[i] = e
                cancel()

        base = rid("attack-threads")
        for i in range(n):
            th = threading.Thread(target=run, args=(i,))
            th.start()
            threads.append(th)
        for th in threads:
            th.join(NEVER)
        for i in range(n):
            if i % 2:
                assert isinstance(results[i], gocontext.Canceled), (i, results[i])
            else:
                assert results[i] == f"{base}-{i}", (i, results[i])
            assert _context.watcher_count(ctxs[i]) == 0


# ==========================================================================================
# 8. metadata shapes, compression, double wrapping
# ==========================================================================================

MD_SHAPES = ["tuple", "list", "aio-metadata", "empty-list", "none"]


def _md(shape: str) -> Any:
    pairs = [("x-extra", "a"), ("baggage", "other=1")]
    if shape == "tuple":
        return tuple(pairs)
    if shape == "list":
        return pairs
    if shape == "aio-metadata":
        return grpc.aio.Metadata(*pairs)
    if shape == "empty-list":
        return []
    return None


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("shape", ["tuple", "list", "empty-list", "none"])
@pytest.mark.parametrize("compression", [None, grpc.Compression.Gzip])
@pytest.mark.parametrize("form", ["call", "future"])
def test_sync_metadata_shapes(
    own_server: str, how: str, shape: str, compression: Any, form: str
) -> None:
    name = rid("attack-md")
    with gocontext.with_timeout(with_rid(name), 30) as (ctx, _):
        with sync_ch(own_server, how) as ch, gocontext.use(ctx):
            c = ch.unary_unary(own("EchoMd"))
            if form == "call":
                got = c(b"", metadata=_md(shape), compression=compression)
            else:
                got = c.future(b"", metadata=_md(shape), compression=compression).result(NEVER)
    md = dict(map(tuple, json.loads(got)))
    mine = f"{wires.RID.name}={name}"
    if shape in ("tuple", "list"):
        assert md["baggage"] == f"other=1,{mine}"
        assert md["x-extra"] == "a"
    else:
        assert md["baggage"] == mine


@on_the_modules_loop
@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("shape", MD_SHAPES)
@pytest.mark.parametrize("compression", [None, grpc.Compression.Gzip])
async def test_aio_metadata_shapes(own_server: str, how: str, shape: str, compression: Any) -> None:
    name = rid("attack-aio-md")
    with gocontext.with_timeout(with_rid(name), 30) as (ctx, _):
        async with aio_ch(own_server, how) as ch:
            with gocontext.use(ctx):
                call = ch.unary_unary(own("EchoMd"))(
                    b"", metadata=_md(shape), compression=compression
                )
            with anyio.fail_after(NEVER):
                got = await call
    md = dict(map(tuple, json.loads(got)))
    mine = f"{wires.RID.name}={name}"
    if shape in ("tuple", "list", "aio-metadata"):
        assert md["baggage"] == f"other=1,{mine}"
        assert md["x-extra"] == "a"
    else:
        assert md["baggage"] == mine


class _SeesMetadata(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """The caller's own grpc.aio interceptor: grpc.aio hands it a Metadata, always."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        details.metadata.add("x-later", "1")
        return await continuation(details, request)


@on_the_modules_loop
@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("shape", MD_SHAPES)
async def test_aio_callers_own_interceptor_gets_metadata(
    own_server: str, how: str, shape: str
) -> None:
    name = rid("attack-aio-md-own")
    with gocontext.with_timeout(with_rid(name), 30) as (ctx, _):
        async with new_aio_channel(own_server, how, _SeesMetadata()) as ch:
            with gocontext.use(ctx):
                call = ch.unary_unary(own("EchoMd"))(b"", metadata=_md(shape))
            with anyio.fail_after(NEVER):
                got = await call
    md = dict(map(tuple, json.loads(got)))
    assert md["x-later"] == "1"


def test_sync_double_wrapped_sends_one_baggage(own_server: str) -> None:
    name = rid("attack-double")
    inner = grpc.insecure_channel(own_server)
    with gocontext.grpc.channel(gocontext.grpc.channel(inner)) as ch:
        with gocontext.with_timeout(with_rid(name), 30) as (ctx, _), gocontext.use(ctx):
            got = ch.unary_unary(own("EchoMd"))(b"", metadata=(("baggage", "other=1"),))
            fut = ch.unary_unary(own("EchoMd")).future(b"")
            got2 = fut.result(NEVER)
        assert _context.watcher_count(ctx) == 0
    md = [tuple(p) for p in json.loads(got)]
    assert md == [("baggage", f"other=1,{wires.RID.name}={name}")]
    assert [tuple(p) for p in json.loads(got2)] == [("baggage", f"{wires.RID.name}={name}")]


def test_sync_channel_ready_future_on_the_wrapper(server: GrpcServer) -> None:
    with gocontext.grpc.channel(grpc.insecure_channel(server.target)) as ch:
        grpc.channel_ready_future(ch).result(NEVER)


# ==========================================================================================
# 9. aio client-streaming call written by hand; the context ends mid-write
# ==========================================================================================


@on_the_modules_loop
@pytest.mark.parametrize("how", HOW)
async def test_aio_write_after_a_cancel_raises_canceled(server: GrpcServer, how: str) -> None:
    name = rid("attack-aio-write")
    ctx, cancel = gocontext.with_cancel(with_rid(name))
    async with aio_ch(server.target, how) as ch:
        with gocontext.use(ctx):
            call = ch.stream_unary(method("WaitIn"))()
        with anyio.fail_after(NEVER):
            await call.write(b"a")
        await anyio.to_thread.run_sync(BOARD.wait_entered, name)
        await anyio.to_thread.run_sync(cancel)
        with pytest.raises(gocontext.Canceled), anyio.fail_after(NEVER):
            await call
        with (
            pytest.raises((gocontext.Canceled, asyncio.InvalidStateError)),
            anyio.fail_after(NEVER),
        ):
            await call.write(b"b")
        assert _context.watcher_count(ctx) == 0


@on_the_modules_loop
@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("kind", ["stream-in", "both"])
@pytest.mark.parametrize("op", ["write", "done_writing"])
async def test_aio_write_right_after_a_cancel_does_not_hang(
    server: GrpcServer, how: str, kind: str, op: str
) -> None:
    """The context canceled (in the loop's own thread), then the call written to at once: the
    write must end (Canceled, or grpc.aio's InvalidStateError), and the call raise Canceled."""
    name = rid("attack-aio-write-flight")
    ctx, cancel = gocontext.with_cancel(with_rid(name))
    async with aio_ch(server.target, how) as ch:
        with gocontext.use(ctx):
            if kind == "stream-in":
                call = ch.stream_unary(method("WaitIn"))()
            else:
                call = ch.stream_stream(method("WaitBoth"))()
        cancel()
        try:
            with anyio.fail_after(NEVER):
                if op == "write":
                    await call.write(b"a")
                else:
                    await call.done_writing()
        except TimeoutError:
            pytest.fail(f"{op}() hung after the context was canceled")
        except asyncio.CancelledError as e:
            pytest.fail(f"bare CancelledError from {op}(): {e!r}")
        except (gocontext.Canceled, asyncio.InvalidStateError):
            pass
        with pytest.raises(gocontext.Canceled), anyio.fail_after(NEVER):
            if kind == "stream-in":
                await call
            else:
                await call.read()
    assert _context.watcher_count(ctx) == 0


@on_the_modules_loop
@pytest.mark.parametrize("how", HOW)
async def test_aio_write_waiting_for_ready_is_ended_by_a_cancel(how: str) -> None:
    """wait_for_ready to a port nobody listens on: a write waits for the call to start; a
    cancel of the context from another thread must end it (and the call: Canceled)."""
    ctx, cancel = cancelable()
    port = closed_port()
    async with aio_ch(f"127.0.0.1:{port}", how) as ch:
        with gocontext.use(ctx):
            call = ch.stream_unary(method("Collect"))(timeout=NEVER, wait_for_ready=True)

        def cancel_once_watched() -> None:
            wait_until(lambda: _context.watcher_count(ctx) > 0, "the call is watched")
            cancel()

        t = threading.Thread(target=cancel_once_watched)
        t.start()
        try:
            with anyio.fail_after(NEVER):
                await call.write(b"a")
        except TimeoutError:
            pytest.fail("write() hung after the context was canceled")
        except asyncio.CancelledError as e:
            pytest.fail(f"bare CancelledError from write(): {e!r}")
        except (gocontext.Canceled, asyncio.InvalidStateError):
            pass
        await anyio.to_thread.run_sync(t.join, NEVER)
        with pytest.raises(gocontext.Canceled), anyio.fail_after(NEVER):
            await call
    assert _context.watcher_count(ctx) == 0


# ==========================================================================================
# 10. odds and ends that held up
# ==========================================================================================


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("form", ["call", "with_call", "future"])
def test_sync_stream_in_with_a_blocked_request_iterator_is_ended_by_a_cancel(
    server: GrpcServer, how: str, form: str
) -> None:
    name = rid(f"attack-blocked-iter-{form}")
    ctx, cancel = gocontext.with_cancel(with_rid(name))
    stop = threading.Event()

    def requests() -> Iterator[bytes]:
        yield b"a"
        stop.wait(NEVER)  # blocks: nothing more comes until the test ends

    with sync_ch(server.target, how) as ch:
        t = cancel_when_entered(name, cancel)
        try:
            with gocontext.use(ctx), pytest.raises(gocontext.Canceled):
                c = ch.stream_unary(method("WaitIn"))
                if form == "call":
                    c(requests())
                elif form == "with_call":
                    c.with_call(requests())
                else:
                    c.future(requests()).result(NEVER)
        finally:
            stop.set()
            t.join(NEVER)
        assert isinstance(BOARD.wait_ended(name), gocontext.http.ClientDisconnected)
        assert _context.watcher_count(ctx) == 0


@pytest.mark.parametrize("how", HOW3)
def test_sync_closed_channel_raises_as_grpc(server: GrpcServer, how: str) -> None:
    ctx, cancel = cancelable()
    ch = sync_ch(server.target, how)
    ch.close()
    with gocontext.use(ctx):
        for call in (
            lambda: ch.unary_unary(method("Ok"))(b""),
            lambda: ch.unary_unary(method("Ok")).with_call(b""),
            lambda: ch.unary_unary(method("Ok")).future(b"").result(NEVER),
        ):
            with pytest.raises(ValueError, match=r"[Cc]losed"):
                call()
    assert _context.watcher_count(ctx) == 0
    cancel()


@on_the_modules_loop
@pytest.mark.parametrize("how", HOW)
async def test_aio_read_after_eof_and_async_for_after_eof(server: GrpcServer, how: str) -> None:
    ctx, cancel = cancelable()
    async with aio_ch(server.target, how) as ch:
        with gocontext.use(ctx):
            call = ch.stream_stream(method("Echo"))(iter([b"x"]))
        with anyio.fail_after(NEVER):
            assert (await call.read()).split()[0] == b"x"
            assert await call.read() is grpc.aio.EOF
            assert await call.read() is grpc.aio.EOF
        cancel()
        with anyio.fail_after(NEVER):
            assert await call.read() is grpc.aio.EOF  # a whole stream stays whole
    assert _context.watcher_count(ctx) == 0


@on_the_modules_loop
@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("kind", ["unary", "stream-in"])
async def test_aio_call_the_caller_cancelled_stays_cancelled_error(
    server: GrpcServer, how: str, kind: str
) -> None:
    """The caller cancels its call itself, then the context ends: awaiting the call raises
    grpc.aio's own CancelledError (the caller's doing), not the context's Canceled."""
    name = rid(f"attack-aio-user-cancel-{kind}")
    ctx, cancel = gocontext.with_cancel(with_rid(name))
    async with aio_ch(server.target, how) as ch:
        with gocontext.use(ctx):
            if kind == "unary":
                call = ch.unary_unary(method("Wait"))(b"")
            else:
                call = ch.stream_unary(method("WaitIn"))(iter([b"a"]))
        await anyio.to_thread.run_sync(BOARD.wait_entered, name)
        assert call.cancel()
        cancel()
        with pytest.raises(asyncio.CancelledError), anyio.fail_after(NEVER):
            await call
        await anyio.to_thread.run_sync(BOARD.wait_ended, name)
    assert _context.watcher_count(ctx) == 0
