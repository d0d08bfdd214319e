"""Real servers for the wire tests, on 127.0.0.1 and free ports: uvicorn (Starlette behind
ContextMiddleware) for the requests client; aiohttp and gRPC servers live in their test files.
A board records what each handler saw, keyed by the request id the client sent."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

import gocontext
import gocontext.http

from .._servers import RID, Board, Server
from .._servers import tcp_socket as tcp_socket  # the wire tests import it from here

SECRET = gocontext.Key[str]("secret")


BOARD = Board()
Uvicorn = Server  # the name the wire tests know it by


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
    await BOARD.park()
    return PlainTextResponse("ended")


async def body(request: Request) -> Response:
    """Sends a first chunk, then parks until its context ends."""
    ctx = gocontext.current()
    rid = str(ctx.value(RID))

    async def chunks() -> AsyncIterator[bytes]:
        yield b"first chunk\n"
        with BOARD.inside(rid, ctx):
            await ctx.done()
        yield b"never\n"

    return StreamingResponse(chunks())


async def upload(request: Request) -> Response:
    """Never reads the body: a large upload stays stuck sending."""
    await BOARD.park()
    return PlainTextResponse("done")


async def ok(request: Request) -> Response:
    return PlainTextResponse("ok")


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
def http_server() -> Iterator[Server]:
    with Server(starlette_app()) as s:
        yield s
