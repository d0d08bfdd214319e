"""Real servers for the wire tests, on 127.0.0.1 and free ports: uvicorn (Starlette behind
ContextMiddleware) for the requests client; aiohttp and gRPC servers live in their test files.
A board records what each handler saw, keyed by the request id the client sent."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

import gocontext
import gocontext.http

from ..conftest import NEVER

RID = gocontext.PropagatedKey("test-rid")
SECRET = gocontext.Key[str]("secret")


def tcp_socket() -> socket.socket:
    """A listening-ready TCP socket bound to a free port on 127.0.0.1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class Board:
    """What the servers saw, per request id: an entered event, an ended event and the cause."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    entered: dict[str, threading.Event] = field(default_factory=dict)
    ended: dict[str, threading.Event] = field(default_factory=dict)
    causes: dict[str, BaseException | None] = field(default_factory=dict)
    running: int = 0

    def event(self, table: dict[str, threading.Event], rid: str) -> threading.Event:
        with self.lock:
            return table.setdefault(rid, threading.Event())

    def enter(self, rid: str) -> None:
        with self.lock:
            self.running += 1
        self.event(self.entered, rid).set()

    def end(self, rid: str, ctx: gocontext.Context) -> None:
        with self.lock:
            self.running -= 1
            self.causes[rid] = gocontext.cause(ctx)
        self.event(self.ended, rid).set()

    async def park(self, rid: str, ctx: gocontext.Context) -> None:
        """Report handler *rid* in, wait until *ctx* ends, report how (on the loop)."""
        self.enter(rid)
        try:
            await ctx.done()
        finally:
            self.end(rid, ctx)

    def park_thread(self, rid: str, ctx: gocontext.Context) -> None:
        """As ``park``, blocking this thread."""
        self.enter(rid)
        try:
            ctx.done().wait(NEVER)
        finally:
            self.end(rid, ctx)

    def wait_entered(self, rid: str) -> None:
        assert self.event(self.entered, rid).wait(NEVER), f"handler {rid} never started"

    def wait_ended(self, rid: str) -> BaseException | None:
        assert self.event(self.ended, rid).wait(NEVER), f"handler {rid} never ended"
        with self.lock:
            return self.causes[rid]


BOARD = Board()


_ids = itertools.count()


def rid(name: str) -> str:
    """A request id no other test uses: *name* and a number."""
    return f"{name}-{next(_ids)}"


def with_rid(name: str) -> gocontext.Context:
    """A context carrying *name* as the request id the handlers report under."""
    return gocontext.with_value(gocontext.background(), RID, name)


def cancel_when_entered(name: str, cancel: Callable[[], object]) -> threading.Thread:
    """A started thread that calls *cancel* once handler *name* is in."""

    def run() -> None:
        BOARD.wait_entered(name)
        cancel()

    t = threading.Thread(target=run)
    t.start()
    return t


async def cancel_task_and_context_when_entered(
    name: str, task: asyncio.Task[None], cancel: Callable[[], None]
) -> None:
    """Once handler *name* is in, cancel *task* and its context in one step of the loop;
    then the task must end cancelled, its own cancellation untouched by the context's."""
    loop = asyncio.get_running_loop()

    def both() -> None:
        task.cancel()
        cancel()

    t = cancel_when_entered(name, lambda: loop.call_soon_threadsafe(both))
    await asyncio.wait({task})
    await asyncio.to_thread(t.join, NEVER)
    assert task.cancelled(), f"the task ended with {task.exception()!r}"
    await asyncio.to_thread(BOARD.wait_ended, name)


def done_context(how: str) -> tuple[gocontext.Context, type[Exception]]:
    """A context that is done already ("canceled" or "expired"), and the error it raises."""
    if how == "canceled":
        ctx, cancel = gocontext.with_cancel(gocontext.background())
        cancel()
        return ctx, gocontext.Canceled
    ctx, _ = gocontext.with_timeout(gocontext.background(), -1)
    return ctx, gocontext.DeadlineExceeded


@contextlib.contextmanager
def unreached_port() -> Iterator[int]:
    """A listening port on 127.0.0.1 that nobody may connect to while the block runs."""
    listener = tcp_socket()
    try:
        listener.listen(8)
        yield listener.getsockname()[1]
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    finally:
        listener.close()


def info_of(ctx: gocontext.Context) -> dict[str, object]:
    return {
        "remaining": ctx.remaining(),  # type: ignore[attr-defined]
        "rid": ctx.value(RID),
        "secret": ctx.value(SECRET),
    }


async def info(request: Request) -> Response:
    body = info_of(gocontext.current())
    body["grpc-timeout"] = request.headers.get("grpc-timeout")
    body["baggage"] = request.headers.get("baggage")
    return JSONResponse(body)


async def wait(request: Request) -> Response:
    """Parks until its context ends; records how."""
    ctx = gocontext.current()
    rid = str(ctx.value(RID))
    await BOARD.park(rid, ctx)
    return PlainTextResponse("ended")


async def body(request: Request) -> Response:
    """Sends a first chunk, then parks until its context ends."""
    ctx = gocontext.current()
    rid = str(ctx.value(RID))

    async def chunks() -> AsyncIterator[bytes]:
        yield b"first chunk\n"
        await BOARD.park(rid, ctx)
        yield b"never\n"

    return StreamingResponse(chunks())


async def upload(request: Request) -> Response:
    """Never reads the body: a large upload stays stuck sending (then as ``wait``)."""
    return await wait(request)


async def ok(request: Request) -> Response:
    return PlainTextResponse("ok")


class Uvicorn:
    """uvicorn in a thread, serving *app* on a free port of 127.0.0.1."""

    def __init__(self, app: object) -> None:
        self.sock = tcp_socket()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,  # type: ignore[arg-type]
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})

    def __enter__(self) -> Uvicorn:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            self.thread.join(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(NEVER)
        self.sock.close()


def starlette_app() -> gocontext.http.ContextMiddleware:
    routes = [
        Route("/info", info),
        Route("/wait", wait),
        Route("/body", body),
        Route("/upload", upload, methods=["POST"]),
        Route("/ok", ok),
    ]
    # No cap: the handler reports exactly the deadline the client sent (or None).
    return gocontext.http.ContextMiddleware(Starlette(routes=routes), max_timeout=None)


@pytest.fixture(scope="session")
def http_server() -> Iterator[Uvicorn]:
    with Uvicorn(starlette_app()) as s:
        yield s
