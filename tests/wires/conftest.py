"""Real servers for the wire tests, on 127.0.0.1 and free ports: uvicorn (Starlette behind
ContextMiddleware) for the requests client; aiohttp and gRPC servers live in their test files.
A board records what each handler saw, keyed by the request id the client sent."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

import gocontext
import gocontext.http

from .._servers import RID, Board, Server
from .._servers import tcp_socket as tcp_socket  # the wire tests import it from here
from ..conftest import NEVER

SECRET = gocontext.Key[str]("secret")


BOARD = Board()
Uvicorn = Server  # the name the wire tests know it by


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


# -- gRPC: the two ways a client takes its context (see grpc_app.sync_channel) ----------------


@pytest.fixture(params=["interceptors", "channel"])
def sync_how(request: pytest.FixtureRequest) -> str:
    """How a sync gRPC client takes its context: ``client_interceptors()`` or ``channel()``."""
    return str(request.param)


@pytest.fixture(params=["interceptors", "channel"])
def aio_how(request: pytest.FixtureRequest) -> str:
    """How a grpc.aio client takes its context: ``aio_client_interceptors()`` or
    ``aio_channel()``."""
    return str(request.param)
