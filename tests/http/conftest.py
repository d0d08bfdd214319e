"""Real servers for the HTTP tests: uvicorn on 127.0.0.1 (a free port), Starlette and FastAPI
apps behind ContextMiddleware, and a second service for chains; and a hand-driven ASGI peer,
to run the middleware under trio as well as asyncio."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

import gocontext
import gocontext.http
from gocontext.http._middleware import _MAX_UNREAD

from .._servers import RID, Board, Server, on_loop, sent_when
from ..conftest import NEVER

SECRET = gocontext.Key[str]("secret")
ROUNDING = 0.001  # seconds a deadline may lose crossing the wire (its header is in whole units)


BOARD = Board()


def _info(ctx: gocontext.Context) -> dict[str, object]:
    return {
        "remaining": ctx.remaining(),  # type: ignore[attr-defined]
        "rid": ctx.value(RID),
        "secret": ctx.value(SECRET),
        "same_as_scope": True,
    }


async def info(request: Request) -> Response:
    ctx = gocontext.current()
    assert request.scope["gocontext"] is ctx
    return JSONResponse(_info(ctx))


async def wait(request: Request) -> Response:
    """Parks until the context ends; records the end."""
    await BOARD.park()
    return PlainTextResponse("ended")


async def ignore(request: Request) -> Response:
    """Ignores its context: the middleware's scope must still stop it at the deadline."""
    await anyio.sleep(NEVER)
    return PlainTextResponse("slept")


async def stream(request: Request) -> Response:
    ctx = gocontext.current()
    rid = str(ctx.value(RID))

    async def body():  # type: ignore[no-untyped-def]
        yield b"first chunk\n"
        with BOARD.inside(rid, ctx):
            await anyio.sleep(NEVER)
        yield b"never\n"

    return StreamingResponse(body())


async def stream_until_gone(request: Request) -> Response:
    """A first chunk, then nothing until the request's context ends (its client left)."""
    ctx = gocontext.current()

    async def body():  # type: ignore[no-untyped-def]
        yield b"first chunk\n"
        await ctx.done()
        yield b"after the end\n"

    return StreamingResponse(body())


def blocked(request: Request) -> Response:
    """A sync endpoint (a worker thread) blocked until the test releases it."""
    rid = str(gocontext.current().value(RID))
    BOARD.enter(rid)
    BOARD.event(BOARD.release, rid).wait(NEVER)
    BOARD.end(rid, gocontext.current())
    return PlainTextResponse("late")


async def relay(request: Request) -> Response:
    """Calls the next service with the current context, which must end the call; records how
    its own context ended."""
    ctx = gocontext.current()
    rid = str(ctx.value(RID))
    BOARD.enter(f"{rid}-relay")
    try:
        async with httpx.AsyncClient(transport=gocontext.http.AsyncTransport()) as client:
            r = await client.get(request.query_params["to"])
        return PlainTextResponse(r.text, status_code=r.status_code)
    finally:
        with anyio.move_on_after(NEVER, shield=True):
            await ctx.done()  # the call can fail by its timeout a moment before ctx's timer fires
        BOARD.end(f"{rid}-relay", ctx)


class RawStream:
    """A bare ASGI stream (no framework between it and the middleware) that ignores its context:
    one chunk, then it parks until the middleware's scope interrupts it."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        ctx = gocontext.current()
        rid = str(ctx.value(RID))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first chunk\n", "more_body": True})
        with BOARD.inside(rid, ctx):
            await anyio.sleep(NEVER)
        await send({"type": "http.response.body", "body": b"never\n"})


async def upload(request: Request) -> Response:
    rid = str(gocontext.current().value(RID))
    ctx = gocontext.current()
    with BOARD.inside(rid, ctx):
        with anyio.move_on_after(NEVER):
            await ctx.done()  # never reads the body: the client stays stuck sending it
    return PlainTextResponse("done")


async def call(request: Request) -> Response:
    """Calls the next service with the current context, and reports what it answered."""
    ctx = gocontext.current()
    here = _info(ctx)  # before the call, so the next hop must see less time left
    target = request.query_params["to"]
    async with httpx.AsyncClient(transport=gocontext.http.AsyncTransport()) as client:
        r = await client.get(target)
    return JSONResponse({"here": here, "next": r.json() if r.status_code == 200 else r.status_code})


def starlette_app(**options: Any) -> gocontext.http.ContextMiddleware:
    app = Starlette(
        routes=[
            Route("/info", info),
            Route("/wait", wait),
            Route("/ignore", ignore),
            Route("/stream", stream),
            Route("/stream-until-gone", stream_until_gone),
            Route("/upload", upload, methods=["POST"]),
            Route("/call", call),
            Route("/blocked", blocked),
            Route("/relay", relay),
            Route("/raw-stream", RawStream()),
        ]
    )
    return gocontext.http.ContextMiddleware(_counted(app), **options)


def _counted(app: Any) -> Any:
    """*app*, counting in ``BOARD.in_flight`` the requests inside it."""

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        BOARD.in_flight += 1  # only ever changed on a server's event loop thread, under the GIL
        try:
            await app(scope, receive, send)
        finally:
            BOARD.in_flight -= 1

    return counted


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Wait (at most NEVER seconds) until *condition* holds, else fail naming *what*."""
    end = time.monotonic() + NEVER
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"still not true after {NEVER} s: {what}")
        time.sleep(0.005)


def fastapi_app() -> gocontext.http.ContextMiddleware:
    api = FastAPI()

    @api.get("/info")
    async def fast_info() -> dict[str, object]:
        return _info(gocontext.current())

    @api.get("/sync-info")
    def sync_info() -> dict[str, object]:  # runs in a worker thread: the context follows
        return _info(gocontext.current())

    return gocontext.http.ContextMiddleware(api, max_timeout=60)


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """No cap: requests with no deadline header have no deadline."""
    with Server(starlette_app(max_timeout=None)) as s:
        yield s


@pytest.fixture(scope="session")
def default_server() -> Iterator[Server]:
    with Server(starlette_app()) as s:
        yield s


@pytest.fixture(scope="session")
def capped_server() -> Iterator[Server]:
    with Server(starlette_app(max_timeout=5)) as s:
        yield s


@pytest.fixture(scope="session")
def fastapi_server() -> Iterator[Server]:
    with Server(fastapi_app()) as s:
        yield s


@pytest.fixture(scope="session")
def second_server() -> Iterator[Server]:
    with Server(starlette_app(max_timeout=None)) as s:
        yield s


class LogRecords(logging.Handler):
    """Every record at WARNING or above that the server's and our loggers emit."""

    NAMES = ("uvicorn", "gocontext", "asyncio", "starlette")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def errors(self) -> list[str]:
        return [
            f"{r.name}: {r.getMessage()} {r.exc_info[1]!r}" if r.exc_info else r.getMessage()
            for r in self.records
            if r.levelno >= logging.ERROR
        ]


@pytest.fixture
def server_logs() -> Iterator[LogRecords]:
    handler = LogRecords()
    loggers = [logging.getLogger(name) for name in LogRecords.NAMES]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


Message = MutableMapping[str, Any]


class Peer:
    """The server and client of one ASGI request, played by a test, under asyncio or trio.

    ``push()`` hands the app a message (``http.request`` chunks, then ``http.disconnect`` for a
    client that leaves); ``sent`` collects what the app sends. As uvicorn does, once the client
    is gone or the response complete, every read says ``http.disconnect``.
    """

    def __init__(self, headers: list[tuple[bytes, bytes]] | None = None, path: str = "/") -> None:
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"test"), *(headers or [])],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 2),
        }
        self._inbox: deque[Message] = deque()
        self.sent: list[Message] = []
        self.reads = 0
        self.gone = False
        self._changed = anyio.Event()

    def push(self, message: Message) -> None:
        self._inbox.append(message)
        self._changed.set()
        self._changed = anyio.Event()

    async def receive(self) -> Message:
        self.reads += 1
        await anyio.lowlevel.checkpoint()
        while not (self.gone or self.complete or self._inbox):
            await self._changed.wait()
        if self.gone or self.complete:
            return {"type": "http.disconnect"}
        message = self._inbox.popleft()
        if message["type"] == "http.disconnect":
            self.gone = True
        return message

    async def send(self, message: Message) -> None:
        await anyio.lowlevel.checkpoint()
        if self.complete:
            raise RuntimeError(f"{message['type']} sent after the response completed")
        self.sent.append(message)
        self._changed.set()
        self._changed = anyio.Event()

    @property
    def complete(self) -> bool:
        return any(
            m["type"] == "http.response.body" and not m.get("more_body", False) for m in self.sent
        )

    @property
    def status(self) -> int | None:
        starts = [m["status"] for m in self.sent if m["type"] == "http.response.start"]
        return starts[0] if starts else None

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        with anyio.fail_after(NEVER):
            while not condition():
                await self._changed.wait()


def upload_until_held_full(conn: Any, exchange: Any, loop: Any) -> int:
    """Send the body of the request *exchange* serves (ContextMiddleware's, on uvicorn's
    *loop*) until the middleware holds all it will for the handler, uvicorn has stopped
    reading the connection and the socket is watched: what the client does next reaches
    only the kernel. The bytes sent."""
    transport = exchange._receive.__self__.transport  # uvicorn's (its cycle's)

    def full() -> bool:
        return bool(
            exchange._unread > _MAX_UNREAD
            and not transport.is_reading()
            and exchange._peer is not None
        )

    chunk = b"u" * 65536
    sent = 0
    for _ in range(1024):  # at most 64 MiB, what the tests' Content-Length says
        conn.sendall(chunk)
        sent += len(chunk)
        sent_when(conn)
        if on_loop(loop, full):
            return sent
    raise AssertionError("the whole upload was read: the server never stopped reading")
