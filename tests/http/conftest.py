"""Real servers for the HTTP tests: uvicorn on 127.0.0.1 (a free port), Starlette and FastAPI
apps behind ContextMiddleware, and a second service for chains."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

import gocontext
import gocontext.http

from ..conftest import NEVER

RID = gocontext.PropagatedKey("test-rid")
SECRET = gocontext.Key[str]("secret")


@dataclass
class Board:
    """What the server saw, for tests to read: per request id, an entered event and the end."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    entered: dict[str, threading.Event] = field(default_factory=dict)
    ended: dict[str, threading.Event] = field(default_factory=dict)
    causes: dict[str, BaseException | None] = field(default_factory=dict)

    def event(self, table: dict[str, threading.Event], rid: str) -> threading.Event:
        with self.lock:
            return table.setdefault(rid, threading.Event())

    def enter(self, rid: str) -> None:
        self.event(self.entered, rid).set()

    def end(self, rid: str, ctx: gocontext.Context) -> None:
        self.causes[rid] = gocontext.cause(ctx)
        self.event(self.ended, rid).set()


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
    ctx = gocontext.current()
    rid = str(ctx.value(RID))
    BOARD.enter(rid)
    try:
        await ctx.done()
    finally:
        BOARD.end(rid, ctx)
    return PlainTextResponse("ended")


async def ignore(request: Request) -> Response:
    """Ignores its context: the middleware's scope must still stop it at the deadline."""
    await anyio.sleep(NEVER)
    return PlainTextResponse("slept")


async def stream(request: Request) -> Response:
    rid = str(gocontext.current().value(RID))

    async def body():  # type: ignore[no-untyped-def]
        yield b"first chunk\n"
        BOARD.enter(rid)
        await anyio.sleep(NEVER)
        yield b"never\n"

    return StreamingResponse(body())


async def upload(request: Request) -> Response:
    rid = str(gocontext.current().value(RID))
    BOARD.enter(rid)
    await anyio.sleep(NEVER)  # never reads the body: the client stays stuck sending it
    return PlainTextResponse("done")


async def call(request: Request) -> Response:
    """Calls the next service with the current context, and reports what it answered."""
    ctx = gocontext.current()
    here = _info(ctx)  # before the call, so the next hop must see less time left
    target = request.query_params["to"]
    async with httpx.AsyncClient(transport=gocontext.http.AsyncTransport()) as client:
        r = await client.get(target)
    return JSONResponse({"here": here, "next": r.json() if r.status_code == 200 else r.status_code})


def starlette_app(max_timeout: float | None = None) -> gocontext.http.ContextMiddleware:
    app = Starlette(
        routes=[
            Route("/info", info),
            Route("/wait", wait),
            Route("/ignore", ignore),
            Route("/stream", stream),
            Route("/upload", upload, methods=["POST"]),
            Route("/call", call),
        ]
    )
    return gocontext.http.ContextMiddleware(app, max_timeout=max_timeout)


def fastapi_app() -> gocontext.http.ContextMiddleware:
    api = FastAPI()

    @api.get("/info")
    async def fast_info() -> dict[str, object]:
        return _info(gocontext.current())

    @api.get("/sync-info")
    def sync_info() -> dict[str, object]:  # runs in a worker thread: the context follows
        return _info(gocontext.current())

    return gocontext.http.ContextMiddleware(api, max_timeout=60)


class Server:
    def __init__(self, app: object) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1
        )  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})

    def __enter__(self) -> Server:
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


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
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
    with Server(starlette_app()) as s:
        yield s
