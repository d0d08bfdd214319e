"""The aiohttp.web middleware's promises where a handler or a client misbehaves: an answer
raised once the context has ended, a late write after the 504 while the request's body is
left unread, a client that leaves while the handler is writing or while its upload waits
unread, a handler that runs on past the deadline in a thread. A real aiohttp.web server on
127.0.0.1, driven by raw sockets so the test sees the bytes on the wire as they are."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import select
import socket
import struct
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from aiohttp import web

import gocontext
import gocontext.aiohttp
import gocontext.http

from .._servers import RID, sent_when, tcp_socket
from ..conftest import NEVER, FakeClock
from . import aiohttp_app
from .aiohttp_app import FINISHED, AiohttpServer, late_write, released, rid_of
from .conftest import BOARD, rid
from .test_aiohttp import errors_logged, raw_connection, read_to_close, read_until

T = TypeVar("T")

_LATE_ANSWER = "the handler's own late answer"


async def late_answer(request: web.Request) -> web.Response:
    """A last step that ignores its context (it blocks the loop) until the test lets it go,
    then answers as ``?how=`` says: ``return`` a 503, ``raise`` a 503 (aiohttp's own way to
    answer) or ``fail`` (raise an error of its own)."""
    name = rid_of(request)
    BOARD.enter(name)
    assert released(name).wait(NEVER)  # (the loop's thread waits: nothing else runs)
    BOARD.end(name, request["gocontext"])
    how = request.query["how"]
    if how == "raise":
        raise web.HTTPServiceUnavailable(text=_LATE_ANSWER)
    if how == "fail":
        raise RuntimeError("failed once its context had ended")
    return web.Response(status=503, text=_LATE_ANSWER)


async def raise_when_left(request: web.Request) -> web.Response:
    """Waits until its client leaves, then raises a 503 of its own."""
    with contextlib.suppress(asyncio.CancelledError):  # (the middleware's stop, if first)
        await BOARD.park()
    raise web.HTTPServiceUnavailable(text=_LATE_ANSWER)


async def late_upload(request: web.Request) -> web.Response:
    """Reads a little of the request's body, then does what ``late`` does: parks until its
    context ends, and a task it left behind writes to the request once the test lets it."""
    await request.content.readexactly(10)
    return await aiohttp_app.late(request)


async def write_after_left(request: web.Request) -> web.StreamResponse:
    """Writes a first chunk, then works on (a step that blocks the loop) until the test lets
    it go, once its client has gone; then writes on, never parked on its context: the
    client's leaving shows up as a write that fails, before the loop has told anyone that
    the connection was lost. Records how its context ended, whenever it does."""
    ctx = request["gocontext"]
    name = rid_of(request)
    ctx.done().add_callback(lambda: BOARD.end(name, ctx))
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"first chunk\n")
    BOARD.enter(name)
    assert released(name).wait(NEVER)  # (the loop's thread waits: nothing else runs)
    with contextlib.suppress(ConnectionError):  # (aiohttp would log it: the test's noise)
        while True:
            await response.write(b"z" * 16384)
    return response


async def in_thread(request: web.Request) -> web.StreamResponse:
    """Awaits ``gocontext.to_thread`` on a function that ignores its context and returns when
    the test lets it (the await waits for it, cancelled or not); with ``?started=1``, after
    writing a first chunk of its response."""
    ctx = request["gocontext"]
    name = rid_of(request)
    response = web.StreamResponse()
    if request.query.get("started"):
        await response.prepare(request)
        await response.write(b"first chunk\n")

    def work(_: gocontext.Context) -> None:
        BOARD.enter(name)
        assert released(name).wait(2 * NEVER)  # (longer than the test may wait for the 504)

    try:
        await gocontext.to_thread(ctx, work)
    finally:
        BOARD.end(name, ctx)
    return web.Response(text="too late")


TRANSPORTS: dict[str, asyncio.Transport] = {}  # the connection of each parked upload, by rid


async def park_unread(request: web.Request) -> web.Response:
    """Parks until its context ends, never reading the request's body."""
    TRANSPORTS[rid_of(request)] = request.transport  # type: ignore[assignment]  # a request's
    await BOARD.park()
    return web.Response(text="parked")


@pytest.fixture(scope="module")
def server() -> Iterator[AiohttpServer]:
    app = web.Application(middlewares=[gocontext.aiohttp.middleware()])
    app.router.add_get("/late-answer", late_answer)
    app.router.add_get("/raise-when-left", raise_when_left)
    app.router.add_post("/late-upload", late_upload)
    app.router.add_get("/write-after-left", write_after_left)
    app.router.add_get("/in-thread", in_thread)
    app.router.add_post("/park-unread", park_unread)
    with AiohttpServer(app) as s:
        yield s


def on_loop(server: AiohttpServer, fn: Callable[[], T]) -> T:
    """*fn*'s result, called on *server*'s loop."""

    async def call() -> T:
        return fn()

    return asyncio.run_coroutine_threadsafe(call(), server.loop).result(NEVER)


def request_head(method: str, path: str, name: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", f"baggage: {RID.name}={name}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- an answer that comes once the context has ended -----------------------------------------


@pytest.mark.parametrize("how", ["return", "raise"])
def test_an_answer_after_the_deadline_is_dropped_for_the_504_on_a_closed_connection(
    server: AiohttpServer, fake_clock: FakeClock, how: str
) -> None:
    """Returned or raised (an ``HTTPException``), the handler's answer comes too late: the
    client gets the 504, and the connection closes after it."""
    name = rid(f"late-{how}")
    with raw_connection(server) as conn:
        conn.sendall(request_head("GET", f"/late-answer?how={how}", name, "Grpc-Timeout: 1S"))
        BOARD.wait_entered(name)
        fake_clock.advance(2)  # the deadline passes in the handler's last step
        released(name).set()
        data, closed = read_to_close(conn)
    assert isinstance(BOARD.errors[name], gocontext.DeadlineExceeded), BOARD.causes[name]
    assert data.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"), data
    assert data.endswith(b"\r\n\r\ndeadline exceeded"), data
    assert closed, data
    assert FINISHED.wait(name) == 504


def test_an_error_raised_after_the_deadline_is_not_swallowed(
    server: AiohttpServer, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An error of the handler's own (not an answer) raised once the deadline has passed is
    the server's to report, as under ContextMiddleware: aiohttp logs it with its traceback
    and answers 500, on a connection then closed."""
    name = rid("late-fail")
    with caplog.at_level(logging.ERROR), raw_connection(server) as conn:
        conn.sendall(request_head("GET", "/late-answer?how=fail", name, "Grpc-Timeout: 1S"))
        BOARD.wait_entered(name)
        fake_clock.advance(2)
        released(name).set()
        data, closed = read_to_close(conn)
        assert FINISHED.wait(name) == 500
    assert isinstance(BOARD.errors[name], gocontext.DeadlineExceeded), BOARD.causes[name]
    assert data.startswith(b"HTTP/1.1 500 Internal Server Error\r\n"), data
    assert closed, data
    logged = [r.exc_info[1] for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert [type(e) for e in logged] == [RuntimeError], logged


def test_an_answer_raised_after_the_client_left_goes_nowhere(
    server: AiohttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The handler's answer, raised once its client has gone, is dropped as a returned one
    is: aiohttp finishes the request with the middleware's quiet 499, and logs nothing."""
    name = rid("left-raise")
    with caplog.at_level(logging.ERROR):
        with raw_connection(server) as conn:
            conn.sendall(request_head("GET", "/raise-when-left", name))
            BOARD.wait_entered(name)
        cause = BOARD.wait_ended(name)
        assert isinstance(cause, gocontext.http.ClientDisconnected), cause
        assert FINISHED.wait(name) == 499
    assert errors_logged(caplog) == []


# -- a late write after the 504, with the request's body left unread -------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_late_write_after_the_504_goes_nowhere_though_the_body_was_not_read(
    server: AiohttpServer, fake_clock: FakeClock, framing: str
) -> None:
    """aiohttp lingers on a connection whose request body is left unread, to drain it: after
    the 504 it must close at once instead, so a task the handler left behind, writing to the
    request, reaches nothing."""
    name = rid(f"late-upload-{framing}")
    if framing == "chunked":
        head = request_head(
            "POST", "/late-upload", name, "Grpc-Timeout: 1S", "Transfer-Encoding: chunked"
        )
        body = b"40\r\n" + b"u" * 64 + b"\r\n"
    else:
        head = request_head(
            "POST", "/late-upload", name, "Grpc-Timeout: 1S", "Content-Length: 1000000"
        )
        body = b"u" * 64
    with raw_connection(server) as conn:
        conn.sendall(head + body)
        BOARD.wait_entered(name)
        fake_clock.advance(2)
        answer = read_until(conn, b"deadline exceeded")
        BOARD.wait_ended(name)
        assert FINISHED.wait(name) == 504
        released(name).set()
        outcome = late_write(name)
        assert isinstance(outcome, ConnectionError), outcome
        rest, closed = read_to_close(conn)
    assert answer.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert (rest, closed) == (b"", True)


# -- a client that leaves while the handler is writing ---------------------------------------


def test_a_client_that_leaves_while_the_handler_writes_ends_the_context_as_disconnected(
    server: AiohttpServer,
) -> None:
    """The handler's write finds the connection closing before the loop tells the protocol it
    was lost: the context still ends with the ClientDisconnected cause."""
    name = rid("leaves-while-writing")
    with raw_connection(server) as conn:
        conn.sendall(request_head("GET", "/write-after-left", name))
        read_until(conn, b"first chunk\n\r\n")
        BOARD.wait_entered(name)
        # The client resets the connection as it goes (SO_LINGER 0: a RST, not a FIN).
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    released(name).set()
    cause = BOARD.wait_ended(name)
    FINISHED.wait(name)  # (aiohttp is done with it: nothing of it is left to log)
    assert isinstance(cause, gocontext.http.ClientDisconnected), cause


# -- a client that leaves while its upload waits unread --------------------------------------


def upload_until_paused(server: AiohttpServer, conn: socket.socket, name: str) -> None:
    """Send the body of *name*'s upload until aiohttp has stopped reading its connection (its
    buffer for the body the handler does not read is full): the loop no longer looks at the
    socket, and what the client does next reaches only the kernel."""
    transport = TRANSPORTS[name]
    chunk = b"u" * 65536
    for _ in range(1024):  # at most 64 MiB, the Content-Length sent
        conn.sendall(chunk)
        # Each chunk is in the server's kernel before the next goes, so what the client does
        # next (a FIN, queued behind unsent data, would wait for room that never comes) is
        # what the server's kernel sees at once.
        sent_when(conn)
        if not on_loop(server, transport.is_reading):
            return
    raise AssertionError("aiohttp read the whole upload: it never paused")


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def any_loop_server(request: pytest.FixtureRequest) -> Iterator[AiohttpServer]:
    """The server of ``server``, on an asyncio loop, then on a uvloop one."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    app = web.Application(middlewares=[gocontext.aiohttp.middleware()])
    app.router.add_post("/park-unread", park_unread)
    with AiohttpServer(app, loop) as s:
        yield s


@pytest.mark.skipif(not hasattr(select, "EPOLLRDHUP"), reason="the peer's end is seen on Linux")
@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_client_that_leaves_while_its_upload_waits_unread_ends_the_context(
    any_loop_server: AiohttpServer, how: str
) -> None:
    """aiohttp stops reading a connection while the body it holds waits for the handler, so
    the loop cannot see the client go: the middleware still ends the context, with the
    ClientDisconnected cause, whether the client closes (a FIN behind the unread body) or
    resets the connection."""
    server = any_loop_server
    name = rid(f"leaves-mid-upload-{how}")
    with raw_connection(server) as conn:
        head = request_head("POST", "/park-unread", name, f"Content-Length: {64 << 20}")
        conn.sendall(head)
        BOARD.wait_entered(name)
        upload_until_paused(server, conn, name)
        if how == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    cause = BOARD.wait_ended(name)
    assert isinstance(cause, gocontext.http.ClientDisconnected), cause
    FINISHED.wait(name)


@pytest.mark.skipif(not hasattr(select, "EPOLLRDHUP"), reason="the peer's end is seen on Linux")
def test_the_watch_on_the_peers_end_is_released_with_the_last_connection() -> None:
    """The loop's epoll of connections watched for their peer's end holds each connection
    only while it is open, and closes with the last one (no descriptor left behind), whoever
    ends the connection; a new connection opens it again."""
    from gocontext._hangups import Hangups

    app = web.Application(middlewares=[gocontext.aiohttp.middleware()])
    app.router.add_post("/park-unread", park_unread)
    app.router.add_get("/ok", aiohttp_app.ok)

    def watching(server: AiohttpServer) -> int | None:
        hangups = Hangups._of_loop.get(server.loop)
        return None if hangups is None else len(hangups._watches)

    def released_when(server: AiohttpServer, done: Callable[[], bool]) -> None:
        # (the server tells its loop's epoll of a closed connection a turn or two after the
        # client closed it: wait for the count, as long as a test may wait for anything)
        deadline = time.monotonic() + NEVER
        while not done():
            assert time.monotonic() < deadline, on_loop(server, lambda: watching(server))
            on_loop(server, lambda: None)

    with AiohttpServer(app) as server:
        assert on_loop(server, lambda: watching(server)) is None
        conns = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        try:
            for i, conn in enumerate(conns):
                conn.sendall(request_head("GET", "/ok", rid(f"hangups-{i}")))
                read_until(conn, b"\r\n\r\nok")
            assert on_loop(server, lambda: watching(server)) == 2
            conns.pop().close()
            released_when(server, lambda: on_loop(server, lambda: watching(server)) == 1)
        finally:
            for conn in conns:
                conn.close()
        released_when(server, lambda: on_loop(server, lambda: watching(server)) is None)
        # A connection the server ends (a 504 closes it) is released too.
        name = rid("hangups-504")
        with raw_connection(server) as conn:
            conn.sendall(request_head("POST", "/park-unread", name, "Grpc-Timeout: 100m"))
            read_until(conn, b"deadline exceeded")
            released_when(server, lambda: on_loop(server, lambda: watching(server)) is None)


@pytest.mark.skipif(not hasattr(select, "EPOLLRDHUP"), reason="the peer's end is seen on Linux")
@pytest.mark.filterwarnings("ignore::ResourceWarning")  # (what the abandoned loop left open)
def test_a_loop_abandoned_with_connections_open_is_not_kept_alive() -> None:
    """A loop closed with a connection still open and never cleaned up is garbage: the watch on
    its connections' peers keeps neither the loop nor them, and its epoll goes with them."""
    from aiohttp import web_app

    from gocontext._hangups import Hangups

    def abandoned() -> weakref.ref[asyncio.AbstractEventLoop]:
        loop = asyncio.new_event_loop()
        app = web.Application(middlewares=[gocontext.aiohttp.middleware()])
        app.router.add_get("/ok", aiohttp_app.ok)
        sock = tcp_socket()

        async def serve_one() -> None:  # (a client on the same loop, its connection kept open)
            runner = web.AppRunner(app, handle_signals=False)
            await runner.setup()
            await web.SockSite(runner, sock).start()
            reader, writer = await asyncio.open_connection(*sock.getsockname())
            writer.write(request_head("GET", "/ok", rid("abandoned")))
            await reader.readuntil(b"\r\n\r\nok")

        loop.run_until_complete(serve_one())
        assert len(Hangups._of_loop) == 1
        loop.close()  # and never cleaned up: its server and connections stay open
        return weakref.ref(loop)

    loop = abandoned()
    web_app._cached_build_middleware.cache_clear()  # (aiohttp's own cache holds the app)
    gc.collect()
    assert loop() is None
    assert len(Hangups._of_loop) == 0


@pytest.mark.skipif(not hasattr(select, "EPOLLRDHUP"), reason="the peer's end is seen on Linux")
def test_a_server_out_of_descriptors_still_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no descriptor left for the loop's epoll (EMFILE), requests are served as before,
    their clients' leaving seen as the loop sees it."""
    from gocontext import _hangups

    def no_descriptor() -> select.epoll:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(_hangups.select, "epoll", no_descriptor)
    app = web.Application(middlewares=[gocontext.aiohttp.middleware()])
    app.router.add_get("/ok", aiohttp_app.ok)
    app.router.add_get("/wait", aiohttp_app.wait)
    with AiohttpServer(app) as server:
        with raw_connection(server) as conn:
            conn.sendall(request_head("GET", "/ok", rid("no-epoll-ok")))
            assert read_until(conn, b"\r\n\r\nok").startswith(b"HTTP/1.1 200 OK")
        name = rid("no-epoll-left")
        with raw_connection(server) as conn:
            conn.sendall(request_head("GET", "/wait", name))
            BOARD.wait_entered(name)
        assert isinstance(BOARD.wait_ended(name), gocontext.http.ClientDisconnected)
        assert server.loop not in _hangups.Hangups._of_loop


# -- a handler that cannot be stopped at once ------------------------------------------------


@pytest.mark.parametrize("started", [False, True])
def test_the_answer_goes_out_at_the_deadline_while_the_handler_waits_on_a_thread(
    server: AiohttpServer, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture, started: bool
) -> None:
    """The handler's task is cancelled at the deadline, but the thread it awaits runs on: the
    client gets its 504 (or the cut of the response under way) then, not when the thread
    returns; the handler's end, later, adds nothing to the wire and nothing to the log."""
    name = rid(f"in-thread-{started}")
    path = "/in-thread?started=1" if started else "/in-thread"
    with caplog.at_level(logging.ERROR), raw_connection(server) as conn:
        conn.sendall(request_head("GET", path, name, "Grpc-Timeout: 1S"))
        if started:
            head = read_until(conn, b"first chunk\n\r\n")
        BOARD.wait_entered(name)
        fake_clock.advance(2)
        try:
            data, closed = read_to_close(conn)  # the thread still runs
        finally:
            released(name).set()
        BOARD.wait_ended(name)
        assert FINISHED.wait(name) == 504
    assert isinstance(BOARD.errors[name], gocontext.DeadlineExceeded), BOARD.causes[name]
    if started:
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert (data, closed) == (b"", True)
    else:
        assert data.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"), data
        assert data.endswith(b"\r\n\r\ndeadline exceeded"), data
        assert closed, data
    assert errors_logged(caplog) == []
