"""An aiohttp.web service behind gocontext.aiohttp.middleware, run in a thread with its own loop
on a free port of 127.0.0.1; the handlers report to the shared board."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

import gocontext
import gocontext.aiohttp

from .._servers import RID, tcp_socket
from ..conftest import NEVER
from .conftest import BOARD, info_of

# What the handlers below that take part in a test's steps saw, per request id (in arrival
# order for a request sent more than once), and what a late writer's write ended with.
SEEN: dict[str, list[str | None]] = {}
LATE: dict[str, BaseException | None] = {}
_LATE_DONE: dict[str, threading.Event] = {}
_detached: set[asyncio.Task[None]] = set()  # (the loop holds its tasks weakly)


def rid_of(request: web.Request) -> str:
    return str(request["gocontext"].value(RID))


def released(rid: str) -> threading.Event:
    """Set by a test to let handler *rid* go on."""
    return BOARD.event(BOARD.release, rid)


async def info(request: web.Request) -> web.Response:
    ctx = gocontext.current()
    body = info_of(ctx)
    body["same_as_request"] = request["gocontext"] is ctx
    body["grpc-timeout"] = request.headers.get("grpc-timeout")
    body["baggage"] = request.headers.get("baggage")
    return web.json_response(body)


async def wait(request: web.Request) -> web.Response:
    await BOARD.park()
    return web.Response(text="ended")


async def body(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"first chunk\n")
    await BOARD.park()
    return response


async def prepared(request: web.Request) -> web.StreamResponse:
    """Prepares its response (aiohttp holds the head back until a first chunk), then parks."""
    response = web.StreamResponse()
    await response.prepare(request)
    await BOARD.park()
    return response


async def ignore(request: web.Request) -> web.Response:
    """Ignores its context: the middleware's scope must still stop it at the deadline."""
    await asyncio.sleep(NEVER)
    return web.Response(text="slept")


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def redirect(request: web.Request) -> web.Response:
    """Records the deadline header it got, waits for the test, then redirects to /info."""
    rid = rid_of(request)
    SEEN.setdefault(rid, []).append(request.headers.get("grpc-timeout"))
    BOARD.enter(rid)
    await asyncio.to_thread(released(rid).wait, NEVER)
    raise web.HTTPFound("/info")


async def drop_once(request: web.Request) -> web.Response:
    """The first time (per request id): records the deadline header, waits for the test, then
    drops the connection unanswered, as a keep-alive connection closed by the server under a
    request does. Again: answers with the deadline header it got."""
    rid = rid_of(request)
    seen = SEEN.setdefault(rid, [])
    seen.append(request.headers.get("grpc-timeout"))
    if len(seen) > 1:
        return web.Response(text=str(seen[-1]))
    BOARD.enter(rid)
    await asyncio.to_thread(released(rid).wait, NEVER)
    request.protocol.force_close()
    return web.Response(text="never sent")


async def late(request: web.Request) -> web.Response:
    """Parks until its context ends; a task it started writes a response to the request once
    the test lets it, after the middleware answered (a late response, that must go nowhere)."""
    rid = rid_of(request)

    async def write_late() -> None:
        await asyncio.to_thread(released(rid).wait, NEVER)
        try:
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(b"late chunk\n")
            await response.write_eof()
        except Exception as e:
            LATE[rid] = e
        else:
            LATE[rid] = None
        BOARD.event(_LATE_DONE, rid).set()

    task = asyncio.ensure_future(write_late())
    _detached.add(task)
    task.add_done_callback(_detached.discard)
    await BOARD.park()
    return web.Response(text="ended")


def late_write(rid: str) -> BaseException | None:
    """What the late write of handler *rid* ended with (None: it went out), once it has."""
    assert BOARD.event(_LATE_DONE, rid).wait(NEVER), f"the late write of {rid} never ended"
    return LATE[rid]


class Finished:
    """The status each request's response was logged with, once aiohttp is done with it
    (written, or dropped with its connection): aiohttp's access log, keyed by request id."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.status: dict[str, int] = {}

    def record(self, rid: str, status: int) -> None:
        with self.lock:
            self.status[rid] = status
        BOARD.event(_FINISHED, rid).set()

    def wait(self, rid: str) -> int:
        assert BOARD.event(_FINISHED, rid).wait(NEVER), f"request {rid} never finished"
        with self.lock:
            return self.status[rid]


_FINISHED: dict[str, threading.Event] = {}
FINISHED = Finished()


class _AccessLog(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        ctx = request.get("gocontext")
        if ctx is not None:
            FINISHED.record(str(ctx.value(RID)), response.status)


def make_app(max_timeout: float | None = None) -> web.Application:
    app = web.Application(middlewares=[gocontext.aiohttp.middleware(max_timeout=max_timeout)])
    app.router.add_get("/info", info)
    app.router.add_get("/wait", wait)
    app.router.add_get("/body", body)
    app.router.add_get("/prepared", prepared)
    app.router.add_get("/ignore", ignore)
    app.router.add_get("/ok", ok)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/drop-once", drop_once)
    app.router.add_get("/late", late)
    return app


class AiohttpServer:
    """*app* served by aiohttp.web in a thread with its own event loop (*loop*, else a new
    asyncio loop)."""

    def __init__(self, app: web.Application, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.app = app
        self.sock = tcp_socket()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop() if loop is None else loop
        self.runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=logging.getLogger("tests.wires.aiohttp.access"),
            access_log_class=_AccessLog,
        )
        self.thread = threading.Thread(target=self.loop.run_forever)

    def __enter__(self) -> AiohttpServer:
        self.thread.start()

        async def start() -> None:
            await self.runner.setup()
            await web.SockSite(self.runner, self.sock).start()

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(NEVER)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(NEVER)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(NEVER)
        self.loop.close()
        self.sock.close()


@pytest.fixture(name="session")
async def session_fixture() -> AsyncIterator[aiohttp.ClientSession]:
    """A client_session() of one connection: a connection left busy would make the next
    request wait forever."""
    async with gocontext.aiohttp.client_session(connector=aiohttp.TCPConnector(limit=1)) as s:
        yield s


async def assert_pool_clean(session: aiohttp.ClientSession, server: AiohttpServer) -> None:
    """No connection left acquired or waited for, and the next request on the session
    succeeds (and gives its connection back)."""
    connector: Any = session.connector
    assert not connector._acquired, connector._acquired
    assert not any(connector._waiters.values())
    with anyio.fail_after(NEVER):
        async with session.get(server.url + "/ok") as r:
            assert await r.text() == "ok"
    assert not connector._acquired
