"""Per-request overhead of gocontext.http (transport + middleware) over loopback, against the
same client and app without them."""

from __future__ import annotations

import socket
import statistics
import threading
import time

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import gocontext
import gocontext.http


async def hello(request: object) -> PlainTextResponse:
    return PlainTextResponse("hello")


def _serve(app: object) -> tuple[str, uvicorn.Server, threading.Thread]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.01)
    return f"http://127.0.0.1:{sock.getsockname()[1]}/", server, thread


def per_request_us(client: httpx.Client, url: str, n: int, ext: dict[str, object]) -> float:
    t = time.perf_counter()
    for _ in range(n):
        client.get(url, extensions=ext)
    return (time.perf_counter() - t) / n * 1e6


def main(quick: bool = False) -> None:
    n = 100 if quick else 2000
    app = Starlette(routes=[Route("/", hello)])
    plain_url, s1, t1 = _serve(app)
    ctx_url, s2, t2 = _serve(gocontext.http.ContextMiddleware(app))
    ctx, cancel = gocontext.with_timeout(
        gocontext.with_value(gocontext.background(), gocontext.PropagatedKey("request-id"), "r1"),
        3600,
    )
    try:
        with httpx.Client() as plain, httpx.Client(transport=gocontext.http.Transport()) as ours:
            per_request_us(plain, plain_url, 50, {})  # warm up both
            per_request_us(ours, ctx_url, 50, {"gocontext": ctx})
            # Alternate short batches, so drift in the machine's load hits both sides alike.
            bases, fulls = [], []
            for _ in range(20):
                bases.append(per_request_us(plain, plain_url, n // 20, {}))
                fulls.append(per_request_us(ours, ctx_url, n // 20, {"gocontext": ctx}))
            base, full = statistics.median(bases), statistics.median(fulls)
    finally:
        cancel()
        for s, t in ((s1, t1), (s2, t2)):
            s.should_exit = True
            t.join(5)
    print(
        "\n### HTTP: per-request overhead of Transport + ContextMiddleware over loopback  (target: < 5%)\n"
    )
    print("| setup | µs per request |\n|---|---:|")
    print(f"| plain httpx.Client + Starlette | {base:,.0f} |")
    print(f"| gocontext.http.Transport + ContextMiddleware (deadline + baggage) | {full:,.0f} |")
    print(f"\noverhead: {(full / base - 1) * 100:+.1f}%")


if __name__ == "__main__":
    main()
