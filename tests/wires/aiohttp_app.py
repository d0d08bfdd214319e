"""An aiohttp.web service behind gocontext.aiohttp.middleware, run in a thread with its own loop
on a free port of 127.0.0.1; the handlers report to the shared board."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

import gocontext
import gocontext.aiohttp

from ..conftest import NEVER
from .conftest import BOARD, info_of, tcp_socket


async def info(request: web.Request) -> web.Response:
    ctx = gocontext.current()
    body = info_of(ctx)
    body["same_as_request"] = request["gocontext"] is ctx
    body["grpc-timeout"] = request.headers.get("grpc-timeout")
    body["baggage"] = request.headers.get("baggage")
    return web.json_response(body)


async def wait(request: web.Request) -> web.Response:
    ctx = gocontext.current()
    rid = str(ctx.value(gocontext.PropagatedKey("test-rid")))
    await BOARD.park(rid, ctx)
    return web.Response(text="ended")


async def body(request: web.Request) -> web.StreamResponse:
    ctx = gocontext.current()
    rid = str(ctx.value(gocontext.PropagatedKey("test-rid")))
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"first chunk\n")
    await BOARD.park(rid, ctx)
    return response


async def ignore(request: web.Request) -> web.Response:
    """Ignores its context: the middleware's scope must still stop it at the deadline."""
    await asyncio.sleep(NEVER)
    return web.Response(text="slept")


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app(max_timeout: float | None = None) -> web.Application:
    app = web.Application(middlewares=[gocontext.aiohttp.middleware(max_timeout=max_timeout)])
    app.router.add_get("/info", info)
    app.router.add_get("/wait", wait)
    app.router.add_get("/body", body)
    app.router.add_get("/ignore", ignore)
    app.router.add_get("/ok", ok)
    return app


class AiohttpServer:
    """*app* served by aiohttp.web in a thread with its own event loop."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.sock = tcp_socket()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None)
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
