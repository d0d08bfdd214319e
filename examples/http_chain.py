"""A deadline and a cancel crossing two HTTP hops: client -> service A -> service B.

Starts both services (uvicorn on 127.0.0.1, free ports), runs a client, and stops by itself.
Run: python examples/http_chain.py
"""

from __future__ import annotations

import socket
import sys
import threading
import time

import anyio
import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import gocontext
import gocontext.http

REQUEST_ID = gocontext.PropagatedKey("request-id")
B_ENTERED = threading.Event()
B_STOPPED = threading.Event()


def left(ctx: gocontext.RichContext) -> str:
    remaining = ctx.remaining()
    return "no deadline" if remaining is None else f"{remaining:.2f}s left"


def say(text: str) -> None:
    sys.stdout.write(text + "\n")


async def service_b(request: Request) -> Response:
    ctx = gocontext.current()
    say(f"  B: request {ctx.value(REQUEST_ID)}, {left(ctx)}")
    B_ENTERED.set()
    try:
        await anyio.sleep(float(request.query_params.get("work", "0")))
    finally:
        if ctx.err() is not None:
            say(f"  B: stopped, {gocontext.cause(ctx)!r}")
            B_STOPPED.set()
    return JSONResponse({"left_at_b": ctx.remaining()})


def make_service_a(b_url: str) -> Starlette:
    async def service_a(request: Request) -> Response:
        ctx = gocontext.current()
        say(f"  A: request {ctx.value(REQUEST_ID)}, {left(ctx)}")
        async with httpx.AsyncClient(transport=gocontext.http.AsyncTransport()) as client:
            r = await client.get(f"{b_url}/b", params=request.query_params)
        return JSONResponse(r.json())

    return Starlette(routes=[Route("/a", service_a)])


def serve(app: object) -> tuple[str, uvicorn.Server, threading.Thread]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.01)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


def main() -> None:
    b_url, b_server, b_thread = serve(
        gocontext.http.ContextMiddleware(Starlette(routes=[Route("/b", service_b)]), max_timeout=10)
    )
    a_url, a_server, a_thread = serve(gocontext.http.ContextMiddleware(make_service_a(b_url)))
    client = httpx.Client(transport=gocontext.http.Transport())
    request = gocontext.with_value(gocontext.background(), REQUEST_ID, "req-1")

    say("1. a 1.5s deadline crosses both hops")
    with gocontext.with_timeout(request, 1.5) as (ctx, _):
        r = client.get(f"{a_url}/a", extensions={"gocontext": ctx})
        say(f"client: B answered with {r.json()['left_at_b']:.2f}s left")

    say("2. the deadline passes while B works")
    with gocontext.with_timeout(request, 0.5) as (ctx, _):
        try:
            client.get(f"{a_url}/a", params={"work": "5"}, extensions={"gocontext": ctx})
        except gocontext.DeadlineExceeded as e:
            B_STOPPED.wait(10)
            say(f"client: {e!r}")

    say("3. the client cancels; the cancel reaches B")
    B_ENTERED.clear()
    B_STOPPED.clear()
    ctx, cancel = gocontext.with_cancel(request)

    def cancel_once_b_runs() -> None:
        if B_ENTERED.wait(10):
            cancel()

    threading.Thread(target=cancel_once_b_runs).start()
    started = time.monotonic()
    try:
        client.get(f"{a_url}/a", params={"work": "5"}, extensions={"gocontext": ctx})
    except gocontext.Canceled as e:
        B_STOPPED.wait(10)
        say(f"client: {e!r} after {time.monotonic() - started:.1f}s")

    client.close()
    for server, thread in ((a_server, a_thread), (b_server, b_thread)):
        server.should_exit = True
        thread.join(5)
    say("http chain done")


if __name__ == "__main__":
    main()
