"""One deadline and one cancel across five wires:

    httpx -> FastAPI -> gRPC (grpc.aio client, sync server) -> aiohttp -> requests -> Starlette

Starts every service on 127.0.0.1 (free ports), runs a client twice (a deadline that every hop
sees shrink, then a cancel from the client that stops every hop), and stops by itself.
Run: python examples/wires.py
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import httpx
import requests
import uvicorn
from aiohttp import web
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import gocontext
import gocontext.aiohttp
import gocontext.grpc
import gocontext.http

REQUEST_ID = gocontext.PropagatedKey("request-id")
LEAF_ENTERED = threading.Event()
STOPPED: list[threading.Event] = [threading.Event() for _ in range(4)]
WAIT = 30.0  # seconds any step may take before the example gives up: never reached


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def where(hop: str, ctx: gocontext.Context) -> None:
    remaining = ctx.remaining()  # type: ignore[attr-defined]
    left = "no deadline" if remaining is None else f"{remaining:.2f}s left"
    say(f"  {hop}: request {ctx.value(REQUEST_ID)}, {left}")


def stopped(i: int, hop: str, ctx: gocontext.Context) -> None:
    if ctx.err() is not None:
        say(f"  {hop} stopped: {gocontext.cause(ctx)!r}")
        STOPPED[i].set()


def tcp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    return sock


# -- 5. the leaf: Starlette behind ContextMiddleware, called with requests ---------------------


async def leaf(request: Request) -> Response:
    ctx = gocontext.current()
    where("5 leaf (Starlette)", ctx)
    if request.query_params.get("mode") == "wait":
        LEAF_ENTERED.set()
        try:
            await ctx.done()
        finally:
            stopped(3, "5 leaf (Starlette)", ctx)
    return PlainTextResponse("leaf ok")


# -- 4. aiohttp.web, calling the leaf with requests in a worker thread -------------------------


def make_aiohttp_app(leaf_url: str) -> web.Application:
    session = requests.Session()
    session.mount("http://", gocontext.http.RequestsAdapter())

    async def handler(request: web.Request) -> web.Response:
        ctx = gocontext.current()
        where("4 aiohttp", ctx)
        mode = request.query.get("mode", "")
        try:
            r = await gocontext.to_thread(
                ctx,
                lambda c: gocontext.http.request(c, session, "GET", f"{leaf_url}?mode={mode}"),
            )
        finally:
            stopped(2, "4 aiohttp", ctx)
        return web.Response(text=r.text)

    app = web.Application(middlewares=[gocontext.aiohttp.middleware()])
    app.router.add_get("/hop", handler)
    return app


# -- 3. a sync gRPC server, calling aiohttp with gocontext's client session ---------------------


def make_grpc_handler(aiohttp_url: str) -> Any:
    def hop(request: bytes, servicer_context: Any) -> bytes:
        ctx = gocontext.current()
        where("3 gRPC server", ctx)

        async def call() -> str:
            url = f"{aiohttp_url}?mode={request.decode()}"
            async with gocontext.aiohttp.client_session() as session, session.get(url) as r:
                return await r.text()

        try:
            return asyncio.run(call()).encode()
        finally:
            stopped(1, "3 gRPC server", ctx)

    return grpc.method_handlers_generic_handler(
        "wires.Hop", {"Hop": grpc.unary_unary_rpc_method_handler(hop)}
    )


# -- 2. FastAPI, calling gRPC with the grpc.aio client -----------------------------------------


def make_fastapi(grpc_target: str) -> gocontext.http.ContextMiddleware:
    api = FastAPI()

    @api.get("/start")
    async def start(mode: str = "") -> PlainTextResponse:
        ctx = gocontext.current()
        where("2 FastAPI", ctx)
        try:
            async with gocontext.grpc.aio_channel(
                grpc.aio.insecure_channel(grpc_target)
            ) as channel:
                answer = await channel.unary_unary("/wires.Hop/Hop")(mode.encode())
        finally:
            stopped(0, "2 FastAPI", ctx)
        return PlainTextResponse(answer.decode())

    return gocontext.http.ContextMiddleware(api)


# -- plumbing: servers in threads --------------------------------------------------------------


class Uvicorn:
    def __init__(self, app: Any) -> None:
        self.sock = tcp_socket()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})

    def start(self) -> None:
        self.thread.start()
        while not self.server.started:
            self.thread.join(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT)


class Aiohttp:
    def __init__(self, app: web.Application) -> None:
        self.sock = tcp_socket()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hop"
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None)
        self.thread = threading.Thread(target=self.loop.run_forever)

    def start(self) -> None:
        self.thread.start()

        async def go() -> None:
            await self.runner.setup()
            await web.SockSite(self.runner, self.sock).start()

        asyncio.run_coroutine_threadsafe(go(), self.loop).result(WAIT)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(WAIT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()


def main() -> None:
    leaf_server = Uvicorn(
        gocontext.http.ContextMiddleware(Starlette(routes=[Route("/leaf", leaf)]))
    )
    leaf_server.start()
    aio_server = Aiohttp(make_aiohttp_app(leaf_server.url + "/leaf"))
    aio_server.start()
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(4), interceptors=[gocontext.grpc.server_interceptor()]
    )
    grpc_server.add_generic_rpc_handlers((make_grpc_handler(aio_server.url),))
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    api = Uvicorn(make_fastapi(f"127.0.0.1:{port}"))
    api.start()
    client = httpx.Client(transport=gocontext.http.Transport())
    try:
        say("1. a 5s deadline crosses five wires, shrinking at every hop")
        root = gocontext.with_value(gocontext.background(), REQUEST_ID, "req-1")
        with gocontext.with_timeout(root, 5.0) as (ctx, _):
            r = client.get(f"{api.url}/start", extensions={"gocontext": ctx})
        say(f"client: {r.text}")

        say("2. the client cancels; the cancel reaches every hop")
        root = gocontext.with_value(gocontext.background(), REQUEST_ID, "req-2")
        ctx, cancel = gocontext.with_cancel(root)

        def cancel_once_the_leaf_runs() -> None:
            LEAF_ENTERED.wait(WAIT)
            cancel()

        threading.Thread(target=cancel_once_the_leaf_runs).start()
        try:
            client.get(f"{api.url}/start?mode=wait", extensions={"gocontext": ctx})
        except gocontext.Canceled as e:
            say(f"client: {e!r}")
        for event in STOPPED:
            event.wait(WAIT)
        say("wires done")
    finally:
        client.close()
        api.stop()
        grpc_server.stop(None).wait(WAIT)
        aio_server.stop()
        leaf_server.stop()


if __name__ == "__main__":
    main()
