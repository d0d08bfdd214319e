"""A gRPC service behind gocontext's server interceptors, sync (a thread pool) or grpc.aio (on
one loop in a thread that every grpc.aio server shares; its handlers async, or sync ones that
grpc.aio runs in its thread pool), on a free port of 127.0.0.1. Generic handlers, bytes in and
out."""

from __future__ import annotations

import asyncio
import atexit
import json
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent import futures
from typing import Any

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]
import pytest

import gocontext
import gocontext.grpc

from ..conftest import NEVER
from .conftest import BOARD, RID, info_of

SERVICE = "gocontext.test.Wires"
METADATA_SHOWN = ("baggage", "x-extra", "x-later")  # the metadata Info answers with


def _rid() -> str:
    return str(gocontext.current().value(RID))


def _info(request: bytes, servicer_context: Any) -> bytes:
    ctx = gocontext.current()
    body = info_of(ctx)
    body["same_as_context_of"] = gocontext.grpc.context_of(servicer_context) is ctx
    body["metadata"] = [
        [k, v] for k, v in servicer_context.invocation_metadata() or () if k in METADATA_SHOWN
    ]
    return json.dumps(body).encode()


def sync_info(request: bytes, servicer_context: Any) -> bytes:
    return _info(request, servicer_context)


def _sync_until_the_rpc_ends(servicer_context: Any) -> None:
    """An answer after the context ended must not beat the client's own deadline: wait for
    gRPC to end the RPC. grpc.aio's sync servicer context says nothing when the RPC ends (its
    add_callback() returns None): answer a passed deadline as gRPC does instead."""
    ended = threading.Event()
    added = servicer_context.add_callback(ended.set)
    if added:
        ended.wait(NEVER)
    elif added is None and isinstance(gocontext.current().err(), gocontext.DeadlineExceeded):
        servicer_context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


async def _aio_until_the_rpc_ends(servicer_context: Any) -> None:
    ended = asyncio.Event()
    servicer_context.add_done_callback(lambda _: ended.set())
    if not servicer_context.done():
        await asyncio.wait_for(ended.wait(), NEVER)


def sync_wait(request: bytes, servicer_context: Any) -> bytes:
    ctx = gocontext.current()
    rid = _rid()
    with BOARD.inside(rid, ctx):
        ctx.done().wait(NEVER)
    _sync_until_the_rpc_ends(servicer_context)
    return b"ended"


def sync_wait_stream(request: bytes, servicer_context: Any) -> Iterator[bytes]:
    # Nothing is yielded once the context has ended: grpc.aio's thread would wait forever to
    # hand a second answer to a consumer its cancelled RPC no longer runs.
    ctx = gocontext.current()
    rid = _rid()
    yield b"first"
    with BOARD.inside(rid, ctx):
        ctx.done().wait(NEVER)
    _sync_until_the_rpc_ends(servicer_context)


def sync_wait_in(requests: Iterator[bytes], servicer_context: Any) -> bytes:
    return sync_wait(b"", servicer_context)


def sync_wait_both(requests: Iterator[bytes], servicer_context: Any) -> Iterator[bytes]:
    yield from sync_wait_stream(b"", servicer_context)


def sync_ok(request: bytes, servicer_context: Any) -> bytes:
    return b"ok"


def sync_thread(request: bytes, servicer_context: Any) -> bytes:
    """The name of the thread running this handler."""
    return threading.current_thread().name.encode()


async def aio_info(request: bytes, servicer_context: Any) -> bytes:
    return _info(request, servicer_context)


async def aio_wait(request: bytes, servicer_context: Any) -> bytes:
    await BOARD.park()
    await _aio_until_the_rpc_ends(servicer_context)
    return b"ended"


async def aio_wait_stream(request: bytes, servicer_context: Any) -> AsyncIterator[bytes]:
    ctx = gocontext.current()  # taken before the first yield, as the other streams do
    rid = _rid()
    yield b"first"
    with BOARD.inside(rid, ctx):
        await ctx.done()
    await _aio_until_the_rpc_ends(servicer_context)
    yield b"never"


async def aio_wait_in(requests: AsyncIterator[bytes], servicer_context: Any) -> bytes:
    return await aio_wait(b"", servicer_context)


async def aio_wait_both(
    requests: AsyncIterator[bytes], servicer_context: Any
) -> AsyncIterator[bytes]:
    async for response in aio_wait_stream(b"", servicer_context):
        yield response


async def aio_ok(request: bytes, servicer_context: Any) -> bytes:
    return b"ok"


# The context and servicer context of each Kept RPC, by its request id, as its handler saw them.
KEPT: dict[str, tuple[gocontext.Context, Any]] = {}


def sync_kept(request: bytes, servicer_context: Any) -> bytes:
    """Keeps its context (see ``KEPT``) and answers at once."""
    KEPT[_rid()] = (gocontext.current(), servicer_context)
    return b"kept"


async def aio_kept(request: bytes, servicer_context: Any) -> bytes:
    """Keeps its context (see ``KEPT``); answers at once, or after a turn of the loop when
    asked to (b"suspend")."""
    KEPT[_rid()] = (gocontext.current(), servicer_context)
    if request == b"suspend":
        await asyncio.sleep(0)
    return b"kept"


async def aio_task(request: bytes, servicer_context: Any) -> bytes:
    """What the task running this handler was made to run (a coroutine's name)."""
    task = asyncio.current_task()
    return getattr(task.get_coro() if task else None, "__qualname__", "").encode()


def sync_collect(requests: Iterator[bytes], servicer_context: Any) -> bytes:
    """Stream in, one answer: how many came, and what the context carried."""
    body = info_of(gocontext.current())
    body["count"] = sum(1 for _ in requests)
    return json.dumps(body).encode()


def sync_echo(requests: Iterator[bytes], servicer_context: Any) -> Iterator[bytes]:
    for r in requests:
        yield r + b" " + _rid().encode()


async def aio_collect(requests: AsyncIterator[bytes], servicer_context: Any) -> bytes:
    body = info_of(gocontext.current())
    body["count"] = len([r async for r in requests])
    return json.dumps(body).encode()


async def aio_echo(requests: AsyncIterator[bytes], servicer_context: Any) -> AsyncIterator[bytes]:
    async for r in requests:
        yield r + b" " + _rid().encode()


def _handlers(aio: bool) -> Any:
    unary = grpc.unary_unary_rpc_method_handler
    stream = grpc.unary_stream_rpc_method_handler
    if aio:
        table = {
            "Info": unary(aio_info),
            "Wait": unary(aio_wait),
            "WaitStream": stream(aio_wait_stream),
            "Ok": unary(aio_ok),
            "Task": unary(aio_task),
            "Kept": unary(aio_kept),
            "Collect": grpc.stream_unary_rpc_method_handler(aio_collect),
            "Echo": grpc.stream_stream_rpc_method_handler(aio_echo),
            "WaitIn": grpc.stream_unary_rpc_method_handler(aio_wait_in),
            "WaitBoth": grpc.stream_stream_rpc_method_handler(aio_wait_both),
        }
    else:
        table = {
            "Info": unary(sync_info),
            "Wait": unary(sync_wait),
            "WaitStream": stream(sync_wait_stream),
            "Ok": unary(sync_ok),
            "Thread": unary(sync_thread),
            "Kept": unary(sync_kept),
            "Collect": grpc.stream_unary_rpc_method_handler(sync_collect),
            "Echo": grpc.stream_stream_rpc_method_handler(sync_echo),
            "WaitIn": grpc.stream_unary_rpc_method_handler(sync_wait_in),
            "WaitBoth": grpc.stream_stream_rpc_method_handler(sync_wait_both),
        }
    return grpc.method_handlers_generic_handler(SERVICE, table)


class _Fresh(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc's classes are untyped (Any)
    """Serves ``Fresh`` with a handler made afresh for each RPC (as a server may)."""

    def __init__(self, aio: bool) -> None:
        self.behavior = aio_info if aio else sync_info

    def service(self, handler_call_details: Any) -> Any:
        if handler_call_details.method != f"/{SERVICE}/Fresh":
            return None
        return grpc.unary_unary_rpc_method_handler(self.behavior)


_loop_lock = threading.Lock()
_loop_and_thread: tuple[asyncio.AbstractEventLoop, threading.Thread] | None = None


def _server_loop() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """The one loop every grpc.aio server here runs on, in a thread, until the process exits.

    grpc.aio hands a completed operation to its call's loop with ``call_soon_threadsafe`` from
    whichever loop reads its process-wide completion queue, and an operation of a cancelled
    call may complete after its server stopped. Were each server's loop closed with it, that
    late completion would raise "Event loop is closed" inside whichever test's loop read it.
    """
    global _loop_and_thread
    with _loop_lock:
        if _loop_and_thread is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="grpc-aio-servers", daemon=True)
            thread.start()
            _loop_and_thread = loop, thread
            atexit.register(_close_server_loop)
        return _loop_and_thread


def _close_server_loop() -> None:
    assert _loop_and_thread is not None
    loop, thread = _loop_and_thread
    loop.call_soon_threadsafe(loop.stop)
    thread.join(NEVER)
    if not thread.is_alive():
        loop.close()


def run_and_keep_the_loop(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)`` for grpc.aio clients, but the loop is closed only when the process
    exits: a late completion of a call *main* cancelled is then queued on a loop nobody runs,
    not raised in another loop (see ``_server_loop``)."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        atexit.register(loop.close)


class GrpcServer:
    """The service until the block ends: "sync" (grpc.server), "aio" (grpc.aio.server, async
    handlers) or "aio-sync" (grpc.aio.server, the sync handlers, run in its thread pool)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.port = 0
        self.target = ""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.pool: futures.ThreadPoolExecutor | None = None
        self.server: Any = None

    def __enter__(self) -> GrpcServer:
        if self.kind == "sync":
            self.server = grpc.server(
                futures.ThreadPoolExecutor(16),
                interceptors=[gocontext.grpc.server_interceptor()],
            )
            self.server.add_generic_rpc_handlers((_handlers(aio=False), _Fresh(aio=False)))
            self.port = self.server.add_insecure_port("127.0.0.1:0")
            self.server.start()
        else:
            loop, self.thread = _server_loop()
            self.loop = loop

            aio = self.kind == "aio"
            self.pool = None if aio else futures.ThreadPoolExecutor(8)

            async def start() -> int:
                self.server = grpc.aio.server(
                    migration_thread_pool=self.pool,
                    interceptors=[gocontext.grpc.aio_server_interceptor()],
                )
                self.server.add_generic_rpc_handlers((_handlers(aio), _Fresh(aio)))
                port = self.server.add_insecure_port("127.0.0.1:0")
                await self.server.start()
                return int(port)

            self.port = asyncio.run_coroutine_threadsafe(start(), loop).result(NEVER)
        self.target = f"127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.kind == "sync":
            self.server.stop(None).wait(NEVER)
            return
        assert self.loop is not None and self.thread is not None
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(NEVER)
        if self.pool is not None:
            self.pool.shutdown()  # (a handler's thread left waiting fails the test: a timeout)


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


# -- clients ---------------------------------------------------------------------------------

HOW = ["interceptors", "channel"]  # the two ways a client takes its context


def sync_channel(target: str, how: str) -> Any:
    """A sync channel to *target* whose calls honour their context, made *how*: through
    ``client_interceptors()`` or ``channel()``."""
    if how == "channel":
        return gocontext.grpc.channel(grpc.insecure_channel(target))
    return grpc.intercept_channel(
        grpc.insecure_channel(target), *gocontext.grpc.client_interceptors()
    )


def new_aio_channel(target: str, how: str, *theirs: Any) -> Any:
    """A grpc.aio channel to *target* whose calls honour their context, made *how*: through
    ``aio_client_interceptors()`` or ``aio_channel()``; *theirs*: the caller's own
    interceptors, run after ours."""
    if how == "channel":
        inner = grpc.aio.insecure_channel(target, interceptors=list(theirs) or None)
        return gocontext.grpc.aio_channel(inner)
    return grpc.aio.insecure_channel(
        target, interceptors=[*gocontext.grpc.aio_client_interceptors(), *theirs]
    )


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # grpc.aio runs on asyncio only


@pytest.fixture(scope="module")
async def one_loop_for_the_module() -> AsyncIterator[None]:
    """A module's async tests share one loop, as a grpc.aio program does: an operation of a
    call cancelled in one test may complete after that test, and grpc.aio hands it to the
    call's loop with ``call_soon_threadsafe``, which raises in whichever loop reads it once the
    call's own loop is closed."""
    yield  # noqa: PT022 (anyio keeps its loop for as long as an async generator fixture lives)


on_the_modules_loop = pytest.mark.usefixtures("one_loop_for_the_module")
