"""gRPC client interceptors at the edges: what a grpc.aio unary call says (metadata, code,
details) through them, a response stream or future the caller drops or cancels itself, an answer
that ends after the context's deadline, a deadline passed on ``gocontext.testing``'s fake clock.
Sync servers only; the grpc.aio client's tests run on asyncio alone (grpc.aio has no trio)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
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
from gocontext.testing import fake_clock

from ..conftest import NEVER
from .conftest import BOARD, cancel_when_entered, rid, with_rid
from .grpc_app import (  # the fixtures: used by name
    GrpcServer,
    anyio_backend,  # noqa: F401
    method,
    new_aio_channel,
    on_the_modules_loop,
    one_loop_for_the_module,  # noqa: F401
    sync_channel,
)

# -- a sync server of handlers of our own, keyed by the request (a name) ----------------------

OWN = "gocontext.test.Faults"
_events_lock = threading.Lock()
_ENTERED: dict[str, threading.Event] = {}
_RELEASED: dict[str, threading.Event] = {}


def _event(table: dict[str, threading.Event], name: str) -> threading.Event:
    with _events_lock:
        return table.setdefault(name, threading.Event())


def entered(name: str) -> threading.Event:
    """Set once handler *name* is in (a streaming one: past its first answer)."""
    return _event(_ENTERED, name)


def released(name: str) -> threading.Event:
    """Set to let handler *name* answer and end."""
    return _event(_RELEASED, name)


def _meta(request: bytes, servicer_context: Any) -> bytes:
    servicer_context.send_initial_metadata((("x-init", "i1"),))
    servicer_context.set_trailing_metadata((("x-trail", "t1"),))
    return b"ok"


def _until_released(request: bytes, servicer_context: Any) -> bytes:
    entered(request.decode()).set()
    released(request.decode()).wait(NEVER)
    return b"partial"


def _until_released_in(requests: Iterator[bytes], servicer_context: Any) -> bytes:
    return _until_released(b"".join(requests), servicer_context)


def _until_released_stream(request: bytes, servicer_context: Any) -> Iterator[bytes]:
    yield b"first"
    entered(request.decode()).set()
    released(request.decode()).wait(NEVER)  # then ends, status OK


def _until_the_rpc_ends(servicer_context: Any) -> None:
    """Wait for the client to end the RPC: nothing else ends it in a test's time (not the
    handler's own context, which a fake clock may end too)."""
    ended = threading.Event()
    if servicer_context.add_callback(ended.set):
        ended.wait(3 * NEVER)


def _hold(request: bytes, servicer_context: Any) -> bytes:
    entered(request.decode()).set()
    _until_the_rpc_ends(servicer_context)
    return b"late"


def _hold_stream(request: bytes, servicer_context: Any) -> Iterator[bytes]:
    yield b"first"
    entered(request.decode()).set()
    _until_the_rpc_ends(servicer_context)
    yield b"late"


def own(name: str) -> str:
    return f"/{OWN}/{name}"


@pytest.fixture(scope="module")
def own_server() -> Iterator[str]:
    """The target of a sync server (behind gocontext's interceptor) of the handlers above."""
    unary, stream = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
    table = {
        "Meta": unary(_meta),
        "UntilReleased": unary(_until_released),
        "UntilReleasedStream": stream(_until_released_stream),
        "UntilReleasedIn": grpc.stream_unary_rpc_method_handler(_until_released_in),
        "Hold": unary(_hold),
        "HoldStream": stream(_hold_stream),
    }
    server = grpc.server(
        futures.ThreadPoolExecutor(16), interceptors=[gocontext.grpc.server_interceptor()]
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(OWN, table),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None).wait(NEVER)


@pytest.fixture(scope="module")
def sync_server() -> Iterator[GrpcServer]:
    with GrpcServer("sync") as s:
        yield s


@pytest.fixture
def intercepted(sync_how: str) -> Callable[[str], Any]:
    """Makes a sync channel whose calls honour their context (see ``sync_channel``)."""
    return lambda target: sync_channel(target, sync_how)


def outcome_in_a_thread(fn: Callable[[], object]) -> object:
    """What *fn* returns or raises, run in a thread of its own that must end in NEVER."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(fn())
        except BaseException as e:  # (the outcome is the error)
            outcome.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(NEVER)
    assert not t.is_alive(), "the call went on"
    return outcome[0]


# -- 1. a grpc.aio unary call says what it says without the interceptors ---------------------


@on_the_modules_loop
@pytest.mark.parametrize("cancelable", [True, False])
async def test_aio_unary_call_keeps_the_servers_metadata_code_and_details(
    own_server: str, cancelable: bool, aio_how: str
) -> None:
    ctx = gocontext.with_cancel(gocontext.background())[0] if cancelable else gocontext.background()
    async with new_aio_channel(own_server, aio_how) as ch:
        with gocontext.use(ctx):
            call = ch.unary_unary(own("Meta"))(b"")
        with anyio.fail_after(NEVER):
            assert await call == b"ok"
            assert ("x-init", "i1") in tuple(await call.initial_metadata() or ())
            assert ("x-trail", "t1") in tuple(await call.trailing_metadata() or ())
            assert await call.code() == grpc.StatusCode.OK
    assert call.done()
    assert not call.cancelled()
    if cancelable:
        assert _context.watcher_count(ctx) == 0


@on_the_modules_loop
async def test_aio_unary_call_a_cancel_ended_says_cancelled(
    sync_server: GrpcServer, aio_how: str
) -> None:
    name = rid("aio-says-cancelled")
    ctx, cancel = gocontext.with_cancel(with_rid(name))
    async with new_aio_channel(sync_server.target, aio_how) as ch:
        with gocontext.use(ctx):
            call = ch.unary_unary(method("Wait"))(b"")
        t = cancel_when_entered(name, cancel)
        with pytest.raises(gocontext.Canceled), anyio.fail_after(NEVER):
            await call
        with pytest.raises(gocontext.Canceled), anyio.fail_after(NEVER):
            await call  # (again: the same)
        with anyio.fail_after(NEVER):
            assert await call.code() == grpc.StatusCode.CANCELLED
            assert await call.details()
        assert call.cancelled()
        assert call.done()
        await anyio.to_thread.run_sync(t.join, NEVER)
        cause = await anyio.to_thread.run_sync(BOARD.wait_ended, name)
        assert isinstance(cause, gocontext.http.ClientDisconnected)
        assert _context.watcher_count(ctx) == 0


@on_the_modules_loop
async def test_aio_unary_call_a_passed_deadline_ended_says_deadline_exceeded(
    sync_server: GrpcServer, aio_how: str
) -> None:
    name = rid("aio-says-deadline")
    async with new_aio_channel(sync_server.target, aio_how) as ch:
        with gocontext.with_timeout(with_rid(name), 0.2) as (ctx, _), gocontext.use(ctx):
            call = ch.unary_unary(method("Wait"))(b"")
            with pytest.raises(gocontext.DeadlineExceeded), anyio.fail_after(NEVER):
                await call
        with anyio.fail_after(NEVER):
            assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert not call.cancelled()
        await anyio.to_thread.run_sync(BOARD.wait_ended, name)


# -- 2. a response stream the caller drops ---------------------------------------------------


@pytest.mark.parametrize("kind", ["stream-out", "both-ways"])
def test_a_dropped_response_stream_is_cancelled_while_its_context_lives(
    sync_server: GrpcServer, kind: str, intercepted: Callable[[str], Any]
) -> None:
    """As gRPC's own iterator: dropped midway, it cancels its call (the server's handler ends),
    and nothing of it is left on the caller's context."""
    name = rid(f"dropped-{kind}")
    ctx, cancel = gocontext.with_cancel(with_rid(name))
    ch = intercepted(sync_server.target)
    with gocontext.use(ctx):
        if kind == "stream-out":
            responses = ch.unary_stream(method("WaitStream"))(b"")
        else:
            responses = ch.stream_stream(method("WaitBoth"))(iter([b"a"]))
    first = next(responses)
    assert first == b"first"
    BOARD.wait_entered(name)
    del responses
    assert isinstance(BOARD.wait_ended(name), gocontext.http.ClientDisconnected)
    assert _context.watcher_count(ctx) == 0
    assert ctx.err() is None
    cancel()
    ch.close()


# -- 3. a future the caller cancels ----------------------------------------------------------


def test_a_future_the_caller_cancelled_raises_future_cancelled_error(
    sync_server: GrpcServer, intercepted: Callable[[str], Any]
) -> None:
    """As grpc.Future: ``exception()`` of a cancelled future raises ``FutureCancelledError``."""
    name = rid("user-cancel")
    ctx, cancel = gocontext.with_cancel(with_rid(name))
    ch = intercepted(sync_server.target)
    with gocontext.use(ctx):
        fut = ch.unary_unary(method("Wait")).future(b"")
    BOARD.wait_entered(name)
    assert fut.cancel()
    assert fut.cancelled()
    with pytest.raises(grpc.FutureCancelledError):
        fut.exception(NEVER)
    with pytest.raises(grpc.FutureCancelledError):
        fut.result(NEVER)
    assert isinstance(BOARD.wait_ended(name), gocontext.http.ClientDisconnected)
    assert _context.watcher_count(ctx) == 0
    cancel()
    ch.close()


# -- 4. an answer that ends after the context's deadline ------------------------------------

SYNC_SHAPES = ["stream", "unary", "future"]


@pytest.mark.parametrize("shape", [*SYNC_SHAPES, "stream-in"])
def test_an_answer_ending_after_the_deadline_raises_deadline_exceeded(
    own_server: str, shape: str, intercepted: Callable[[str], Any]
) -> None:
    """The handler answers (status OK) only once the caller's deadline has passed (as one that
    stops at its own deadline): a stream is not taken for whole, an answer not for in time."""
    name = rid(f"late-{shape}")
    ch = intercepted(own_server)
    with gocontext.with_timeout(gocontext.background(), 0.2) as (ctx, _), gocontext.use(ctx):
        ctx.done().add_callback(released(name).set)
        with pytest.raises(gocontext.DeadlineExceeded):
            if shape == "stream":
                responses = ch.unary_stream(own("UntilReleasedStream"))(name.encode())
                list(responses)
            elif shape == "unary":
                ch.unary_unary(own("UntilReleased"))(name.encode())
            elif shape == "stream-in":
                ch.stream_unary(own("UntilReleasedIn"))(iter([name.encode()]))
            else:
                ch.unary_unary(own("UntilReleased")).future(name.encode()).result(NEVER)
    assert _context.watcher_count(ctx) == 0
    ch.close()


@on_the_modules_loop
@pytest.mark.parametrize("shape", ["stream", "unary", "stream-in"])
async def test_aio_an_answer_ending_after_the_deadline_raises_deadline_exceeded(
    own_server: str, shape: str, aio_how: str
) -> None:
    name = rid(f"aio-late-{shape}")
    async with new_aio_channel(own_server, aio_how) as ch:
        with gocontext.with_timeout(gocontext.background(), 0.2) as (ctx, _), gocontext.use(ctx):
            ctx.done().add_callback(released(name).set)
            with pytest.raises(gocontext.DeadlineExceeded), anyio.fail_after(NEVER):
                if shape == "stream":
                    call = ch.unary_stream(own("UntilReleasedStream"))(name.encode())
                    [r async for r in call]
                elif shape == "stream-in":
                    await ch.stream_unary(own("UntilReleasedIn"))(iter([name.encode()]))
                else:
                    await ch.unary_unary(own("UntilReleased"))(name.encode())
    assert _context.watcher_count(ctx) == 0


def test_an_answer_whole_before_the_deadline_is_read_after_it(
    own_server: str, intercepted: Callable[[str], Any]
) -> None:
    """A stream that ended (status OK) before the deadline is whole, however late it is read."""
    name = rid("whole")
    released(name).set()
    ch = intercepted(own_server)
    with fake_clock() as clock:
        ctx, _ = gocontext.with_timeout(gocontext.background(), 30)
        with gocontext.use(ctx):
            responses = ch.unary_stream(own("UntilReleasedStream"))(name.encode())
        assert next(responses) == b"first"
        ended = threading.Event()
        if not responses.add_callback(ended.set):  # (it has ended already)
            ended.set()
        assert ended.wait(NEVER)
        clock.advance(31)
        assert isinstance(ctx.err(), gocontext.DeadlineExceeded)
        assert list(responses) == []
    ch.close()


# -- 5. a deadline passed on the fake clock ---------------------------------------------------


@pytest.mark.parametrize("shape", SYNC_SHAPES)
def test_a_deadline_passed_on_the_fake_clock_ends_the_call(
    own_server: str, shape: str, intercepted: Callable[[str], Any]
) -> None:
    """gRPC's own deadline is an hour of real time off: the call ends when the fake clock
    passes the context's, with ``DeadlineExceeded`` (the handler holds on until it does)."""
    name = rid(f"fake-{shape}")
    ch = intercepted(own_server)
    with fake_clock() as clock:
        ctx, _ = gocontext.with_timeout(gocontext.background(), 3600)
        with gocontext.use(ctx):
            if shape == "stream":
                responses = ch.unary_stream(own("HoldStream"))(name.encode())
                assert next(responses) == b"first"
            elif shape == "future":
                fut = ch.unary_unary(own("Hold")).future(name.encode())

        def call() -> object:
            if shape == "stream":
                return next(responses)
            if shape == "future":
                return fut.result(NEVER)
            with gocontext.use(ctx):  # (this thread's own ambient context)
                return ch.unary_unary(own("Hold"))(name.encode())

        def advance_once_in() -> None:
            assert entered(name).wait(NEVER)
            clock.advance(3601)

        t = threading.Thread(target=advance_once_in)
        t.start()
        outcome = outcome_in_a_thread(call)
        t.join(NEVER)
    assert isinstance(outcome, gocontext.DeadlineExceeded), repr(outcome)
    assert _context.watcher_count(ctx) == 0
    ch.close()


@on_the_modules_loop
@pytest.mark.parametrize("shape", ["stream", "unary"])
async def test_aio_a_deadline_passed_on_the_fake_clock_ends_the_call(
    own_server: str, shape: str, aio_how: str
) -> None:
    name = rid(f"aio-fake-{shape}")
    async with new_aio_channel(own_server, aio_how) as ch:
        with fake_clock() as clock:
            ctx, _ = gocontext.with_timeout(gocontext.background(), 3600)
            with gocontext.use(ctx):
                if shape == "stream":
                    call = ch.unary_stream(own("HoldStream"))(name.encode())
                else:
                    call = ch.unary_unary(own("Hold"))(name.encode())
            await anyio.to_thread.run_sync(entered(name).wait, NEVER)
            clock.advance(3601)
            with pytest.raises(gocontext.DeadlineExceeded), anyio.fail_after(NEVER):
                if shape == "stream":
                    [r async for r in call]
                else:
                    await call
    assert _context.watcher_count(ctx) == 0
