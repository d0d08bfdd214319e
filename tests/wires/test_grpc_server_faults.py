"""gRPC server interceptors at the edges: gRPC's own threads are never held, a client's cancel
near the deadline is still a client's cancel, an RPC cancelled while it was queued or while its
async generator was paused at ``yield`` ends the handler's context as a client that left, a
custom ``RpcMethodHandler`` is served, and a handler that stops at its deadline ends the RPC
with ``DEADLINE_EXCEEDED``. Real sync and grpc.aio servers on 127.0.0.1, real channels."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from typing import Any

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]
import pytest

import gocontext
import gocontext.grpc
import gocontext.http
from gocontext._tree import end_with
from gocontext.grpc import _server
from gocontext.testing import fake_clock

from ..conftest import NEVER
from .grpc_app import _server_loop

SERVICE = "gocontext.test.Faults"
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # grpc.aio runs on asyncio only


@pytest.fixture(scope="module")
async def one_loop_for_the_module() -> AsyncIterator[None]:
    """The module's async tests share one loop, as in test_grpc.py: a late completion of a
    cancelled grpc.aio call is handed to its call's loop, which must still be open."""
    yield  # noqa: PT022 (anyio keeps its loop for as long as an async generator fixture lives)


class Server:
    """A server behind gocontext's interceptor (after *outer* ones) until the block ends:
    "sync" (grpc.server, *workers* threads) or "aio" (grpc.aio.server, on the one loop every
    grpc.aio server of the tests runs on; its sync handlers in a pool of *workers*)."""

    def __init__(
        self, kind: str, handlers: tuple[Any, ...], workers: int = 8, outer: tuple[Any, ...] = ()
    ) -> None:
        self.kind = kind
        self.handlers = handlers
        self.workers = workers
        self.outer = outer
        self.server: Any = None
        self.pool: futures.ThreadPoolExecutor | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.target = ""

    def __enter__(self) -> Server:
        if self.kind == "sync":
            self.server = grpc.server(
                futures.ThreadPoolExecutor(self.workers),
                interceptors=[*self.outer, gocontext.grpc.server_interceptor()],
            )
            self.server.add_generic_rpc_handlers(self.handlers)
            port = self.server.add_insecure_port("127.0.0.1:0")
            self.server.start()
        else:
            self.loop = loop = _server_loop()[0]
            self.pool = futures.ThreadPoolExecutor(self.workers)

            async def start() -> int:
                self.server = grpc.aio.server(
                    migration_thread_pool=self.pool,
                    interceptors=[*self.outer, gocontext.grpc.aio_server_interceptor()],
                )
                self.server.add_generic_rpc_handlers(self.handlers)
                port = self.server.add_insecure_port("127.0.0.1:0")
                await self.server.start()
                return int(port)

            port = asyncio.run_coroutine_threadsafe(start(), loop).result(NEVER)
        self.target = f"127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.kind == "sync":
            self.server.stop(None).wait(NEVER)
            return
        assert self.loop is not None and self.pool is not None
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(NEVER)
        self.pool.shutdown()


def generic(table: dict[str, Any]) -> tuple[Any, ...]:
    return (grpc.method_handlers_generic_handler(SERVICE, table),)


class Ended:
    """What a handler saw when its context ended: set once, from the handler."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.event = threading.Event()
        self.err: BaseException | None = None
        self.cause: BaseException | None = None
        self.left: float | None = None  # gRPC's time left for the RPC, seen then

    def record(self, ctx: gocontext.Context, left: float | None = None) -> None:
        self.err, self.cause, self.left = ctx.err(), gocontext.cause(ctx), left
        self.event.set()

    def wait(self) -> BaseException | None:
        assert self.event.wait(NEVER), "the handler's context never ended"
        return self.cause


def waiting_handler(kind: str, ended: Ended) -> Any:
    """A unary handler that waits for its context to end, then records how it ended."""

    def wait(request: bytes, servicer_context: Any) -> bytes:
        ctx = gocontext.current()
        done = threading.Event()  # (not ctx.done().wait(): its waiter watches the deadline too)
        ctx.done().add_callback(done.set)
        ended.entered.set()
        if done.wait(NEVER):
            ended.record(ctx, servicer_context.time_remaining())
        return b""

    async def await_(request: bytes, servicer_context: Any) -> bytes:
        ctx = gocontext.current()
        ended.entered.set()
        try:
            await ctx.done()
        finally:
            ended.record(ctx, servicer_context.time_remaining())
        return b""

    return grpc.unary_unary_rpc_method_handler(await_ if kind == "aio" else wait)


def server_kind(kind: str) -> str:
    return "sync" if kind == "sync" else "aio"


# -- 1: gRPC's deadline, our timer late: the context ends at once, in no thread of gRPC's held


@pytest.fixture
def our_clock_stopped() -> Iterator[None]:
    """gocontext's clock stands still (gRPC's does not): no deadline of ours passes by itself
    while the test runs."""
    with fake_clock():
        yield


@pytest.mark.usefixtures("our_clock_stopped")
@pytest.mark.parametrize("kind", ["sync", "aio", "aio-sync"])
def test_a_passed_deadline_ends_the_context_without_waiting_for_our_timer(kind: str) -> None:
    """At gRPC's deadline the handler's context ends with DeadlineExceeded then and there:
    nothing (gRPC's polling thread on the sync server) waits for gocontext's own timer, which
    may fire a moment later (here: never)."""
    ended = Ended()
    with (
        Server(server_kind(kind), generic({"Wait": waiting_handler(kind, ended)})) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(method("Wait"))(b"", timeout=0.3)
        assert info.value.code() == DEADLINE_EXCEEDED
        ended.wait()
        assert isinstance(ended.err, gocontext.DeadlineExceeded)


# -- 2: a client's cancel a little before the deadline is the client's ---------------------


class TimeLeft:
    """What the end-of-RPC callback asks of gRPC's servicer context: the time left, as gRPC
    reads it at that moment (a stand-in: a real server cannot be told when a cancel lands)."""

    def __init__(self, left: float | None) -> None:
        self.left = left

    def time_remaining(self) -> float | None:
        return self.left


@pytest.mark.parametrize(
    ("timeout", "left", "deadline"),
    [
        (1.0, 0.2, False),  # a cancel 0.2 s before a 1 s deadline: the client's own
        (1.0, 0.1, False),
        (30.0, 0.5, False),
        (1.0, 0.0, True),  # gRPC's deadline has passed
        (1.0, 0.025, True),  # within the RPC's transit: the client's deadline, not a cancel
        (30.0, 0.3, True),  # within gRPC's rounding up of a 30 s timeout it sent
        (None, 0.01, True),
        (None, 5.0, False),
    ],
)
def test_only_a_cancel_within_moments_of_the_deadline_is_taken_for_it(
    timeout: float | None, left: float, deadline: bool
) -> None:
    """A client's cancel is the client's unless gRPC's deadline has passed, or is so close
    that the client's own deadline (which falls a moment before the server's) explains it:
    never a quarter of a second of the handler's time."""
    ctx, cancel = gocontext.with_cancel_cause(gocontext.background())
    rpc = _server._Rpc(TimeLeft(left), (ctx, cancel), timeout)
    assert rpc.deadline_passed() is deadline
    rpc.ended()
    expected = gocontext.DeadlineExceeded if deadline else gocontext.http.ClientDisconnected
    assert isinstance(gocontext.cause(ctx), expected)


# -- 3: a client-streaming RPC cancelled while it waited for a worker ----------------------


def test_an_rpc_cancelled_while_queued_runs_with_its_context_ended() -> None:
    held, go = threading.Event(), threading.Event()
    probed = threading.Event()
    ended = Ended()

    def hold(request: bytes, servicer_context: Any) -> bytes:
        held.set()
        go.wait(NEVER)
        return b"held"

    def collect(requests: Iterator[bytes], servicer_context: Any) -> bytes:
        ctx = gocontext.current()
        ctx.done().wait(NEVER)
        ended.record(ctx)
        return b""

    class Probe(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc's classes are untyped (Any)
        """Sees, in the server's polling thread, a call made after the cancel: the server has
        read the cancel by then (one connection, read in order)."""

        def service(self, handler_call_details: Any) -> Any:
            if handler_call_details.method == method("Probe"):
                probed.set()
            return None

    table = {
        "Hold": grpc.unary_unary_rpc_method_handler(hold),
        "Collect": grpc.stream_unary_rpc_method_handler(collect),
    }
    with (
        Server("sync", (*generic(table), Probe()), workers=1) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        first = channel.unary_unary(method("Hold")).future(b"")
        try:
            assert held.wait(NEVER)
            queued = channel.stream_unary(method("Collect")).future(iter([b"x"]))
            assert queued.cancel()
            with pytest.raises(grpc.RpcError):
                channel.unary_unary(method("Probe"))(b"", timeout=NEVER)  # (unimplemented)
            assert probed.is_set()
        finally:
            go.set()
        assert first.result(NEVER) == b"held"
        cause = ended.wait()
    assert isinstance(cause, gocontext.http.ClientDisconnected)


# -- 4: grpc.aio, an async generator paused at its yield when the client cancels -------------


@pytest.mark.usefixtures("one_loop_for_the_module")
async def test_aio_a_cancel_while_the_generator_is_paused_at_yield_is_the_clients() -> None:
    at_big_yield = threading.Event()
    ended = Ended()
    big = b"x" * (16 << 20)  # more than the client lets in before it reads

    async def stream(request: bytes, servicer_context: Any) -> AsyncIterator[bytes]:
        ctx = gocontext.current()
        ctx.done().add_callback(lambda: ended.record(ctx))
        yield b"first"
        at_big_yield.set()
        yield big  # (held in gRPC's write: the client reads no more)

    table = {"Stream": grpc.unary_stream_rpc_method_handler(stream)}
    with (
        Server("aio", generic(table)) as server,
        grpc.insecure_channel(
            server.target, options=[("grpc.max_receive_message_length", -1)]
        ) as plain,
    ):
        channel = grpc.intercept_channel(plain, *gocontext.grpc.client_interceptors())
        ctx, cancel = gocontext.with_cancel(gocontext.background())
        with gocontext.use(ctx):
            responses = channel.unary_stream(method("Stream"))(b"")
            assert next(responses) == b"first"
        assert await asyncio.to_thread(at_big_yield.wait, NEVER)
        cancel()
        with pytest.raises(gocontext.Canceled):
            next(responses)
        cause = await asyncio.to_thread(ended.wait)
    assert isinstance(cause, gocontext.http.ClientDisconnected)


# -- 5: a custom grpc.RpcMethodHandler ---------------------------------------------------------


class OwnHandler(grpc.RpcMethodHandler):  # type: ignore[misc]  # grpc's classes are untyped (Any)
    """A method handler of its own (not grpc's namedtuple), as grpc's API allows."""

    request_streaming = False
    response_streaming = False
    request_deserializer = None
    response_serializer = None
    unary_stream = stream_unary = stream_stream = None

    def __init__(self, behavior: Callable[[bytes, Any], Any]) -> None:
        self.unary_unary = behavior


class OwnGeneric(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc's classes are untyped (Any)
    def __init__(self, aio: bool) -> None:
        self.aio = aio

    def service(self, handler_call_details: Any) -> Any:
        def answer(request: bytes, servicer_context: Any) -> bytes:
            return str(gocontext.current().remaining()).encode()

        async def aio_answer(request: bytes, servicer_context: Any) -> bytes:
            return answer(request, servicer_context)

        return OwnHandler(aio_answer if self.aio else answer)


@pytest.mark.parametrize("kind", ["sync", "aio", "aio-sync"])
def test_a_custom_method_handler_is_served(kind: str) -> None:
    with (
        Server(server_kind(kind), (OwnGeneric(kind == "aio"),)) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        for _ in range(2):  # (the second one through the wrapped handler kept)
            left = float(channel.unary_unary(method("Own"))(b"", timeout=30))
            assert 0 < left <= 31


# -- 6: a handler that stops at its deadline: the RPC ends with DEADLINE_EXCEEDED -------------


def stopping_at_the_deadline(kind: str, shape: str) -> Any:
    """A handler whose context's deadline passes (ended here as its timer would, a moment
    before gRPC's own deadline), and which then returns, or ends its stream."""

    def expire() -> None:
        end_with(gocontext.current(), gocontext.DeadlineExceeded, None)

    def unary(request: bytes, servicer_context: Any) -> bytes:
        expire()
        return b"late"

    def stream(request: bytes, servicer_context: Any) -> Iterator[bytes]:
        yield b"first"
        expire()

    async def aunary(request: bytes, servicer_context: Any) -> bytes:
        await asyncio.sleep(0)
        expire()
        return b"late"

    async def astream(request: bytes, servicer_context: Any) -> AsyncIterator[bytes]:
        yield b"first"
        expire()

    if shape == "unary":
        return grpc.unary_unary_rpc_method_handler(aunary if kind == "aio" else unary)
    return grpc.unary_stream_rpc_method_handler(astream if kind == "aio" else stream)


@pytest.mark.parametrize("shape", ["unary", "stream"])
@pytest.mark.parametrize("kind", ["sync", "aio", "aio-sync"])
def test_a_handler_that_stops_at_its_deadline_ends_the_rpc_with_deadline_exceeded(
    kind: str, shape: str
) -> None:
    """The late answer is not sent as a success (nor a stream cut short as complete). The
    client sets no deadline of its own: the status it gets is the server's."""
    table = {"Stop": stopping_at_the_deadline(kind, shape)}
    with (
        Server(server_kind(kind), generic(table)) as server,
        grpc.insecure_channel(server.target) as channel,
        futures.ThreadPoolExecutor(1) as reader,
    ):

        def call() -> list[bytes]:
            if shape == "unary":
                return [channel.unary_unary(method("Stop"))(b"")]
            return list(channel.unary_stream(method("Stop"))(b""))

        error = reader.submit(call).exception(NEVER)
    assert isinstance(error, grpc.RpcError), error
    assert error.code() == DEADLINE_EXCEEDED, error
