"""Per-call overhead of each wire (requests, aiohttp, gRPC sync and grpc.aio) over loopback,
against the same client and server without gocontext, measured in one run: rounds of plain
and wired calls alternate, and each side's median round is compared.

Run: python benchmarks/bench_wires.py [--quick]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent import futures
from typing import Any

import aiohttp
import grpc
import grpc.aio
import requests
from aiohttp import web

import gocontext
import gocontext.aiohttp
import gocontext.grpc
import gocontext.http

TARGET = 0.10  # at most 10% of a loopback no-op call
LATENCY_TARGET_MS = 50.0  # a cancel ends a call in flight within this, median
RID = gocontext.PropagatedKey("request-id")


def _ctx() -> gocontext.Context:
    return gocontext.with_timeout(gocontext.with_value(gocontext.background(), RID, "r1"), 3600)[0]


class _Loop:
    """An event loop in a thread, for the servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(60)


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


ENTERED = threading.Event()  # a waiting handler is in (for the cancel latency)


async def _wait(request: web.Request) -> web.Response:
    ctx = gocontext.current()
    ENTERED.set()
    await ctx.done()
    return web.Response(text="ended")


def _aiohttp_app(wired: bool) -> web.Application:
    app = web.Application(middlewares=[gocontext.aiohttp.middleware()] if wired else [])
    app.router.add_get("/", _hello)
    app.router.add_get("/wait", _wait)
    return app


async def _start_aiohttp(app: web.Application) -> tuple[str, web.AppRunner]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return f"http://127.0.0.1:{port}/", runner


def _rounds(
    plain: Callable[[], float], wired: Callable[[], float], rounds: int
) -> tuple[float, float]:
    a, b = [], []
    for _ in range(rounds):
        a.append(plain())
        b.append(wired())
    return statistics.median(a), statistics.median(b)


def _per_call_us(fn: Callable[[], object], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def bench_requests(servers: _Loop, n: int, rounds: int) -> tuple[float, float]:
    plain_url, r1 = servers.run(_start_aiohttp(_aiohttp_app(False)))
    wired_url, r2 = servers.run(_start_aiohttp(_aiohttp_app(True)))
    plain = requests.Session()
    wired = requests.Session()
    wired.mount("http://", gocontext.http.RequestsAdapter())
    ctx = _ctx()
    try:
        return _rounds(
            lambda: _per_call_us(lambda: plain.get(plain_url), n),
            lambda: _per_call_us(lambda: gocontext.http.request(ctx, wired, "GET", wired_url), n),
            rounds,
        )
    finally:
        plain.close()
        wired.close()
        servers.run(r1.cleanup())
        servers.run(r2.cleanup())


def bench_aiohttp(servers: _Loop, n: int, rounds: int) -> tuple[float, float]:
    plain_url, r1 = servers.run(_start_aiohttp(_aiohttp_app(False)))
    wired_url, r2 = servers.run(_start_aiohttp(_aiohttp_app(True)))
    ctx = _ctx()

    async def main() -> tuple[float, float]:
        async with aiohttp.ClientSession() as plain, gocontext.aiohttp.client_session() as wired:

            async def one(session: aiohttp.ClientSession, url: str, **kw: Any) -> float:
                t = time.perf_counter()
                for _ in range(n):
                    async with session.get(url, **kw) as r:
                        await r.read()
                return (time.perf_counter() - t) / n * 1e6

            a, b = [], []
            for _ in range(rounds):
                a.append(await one(plain, plain_url))
                b.append(await one(wired, wired_url, trace_request_ctx=ctx))
            return statistics.median(a), statistics.median(b)

    try:
        return asyncio.run(main())
    finally:
        servers.run(r1.cleanup())
        servers.run(r2.cleanup())


def _identity(x: bytes) -> bytes:
    return x


def _grpc_handlers(aio: bool) -> Any:
    if aio:

        async def hello(request: bytes, context: Any) -> bytes:
            return b"hello"

        async def wait(request: bytes, context: Any) -> bytes:
            ctx = gocontext.current()
            ENTERED.set()
            await ctx.done()
            return b"ended"

        handler = grpc.unary_unary_rpc_method_handler(hello)
        waiter = grpc.unary_unary_rpc_method_handler(wait)
    else:

        def sync_wait(request: bytes, context: Any) -> bytes:
            ctx = gocontext.current()
            ENTERED.set()
            ctx.done().wait(60)
            return b"ended"

        handler = grpc.unary_unary_rpc_method_handler(lambda request, context: b"hello")
        waiter = grpc.unary_unary_rpc_method_handler(sync_wait)
    return grpc.method_handlers_generic_handler("bench.Hello", {"Hello": handler, "Wait": waiter})


def _cancel_latency_ms(
    start: Callable[[gocontext.Context], Callable[[], float]], trials: int
) -> float:
    """Median time from cancel() to the caller holding Canceled. *start* begins a call under
    the context and returns a function that waits for it and returns when it raised."""
    out = []
    for _ in range(trials):
        ENTERED.clear()
        ctx, cancel = gocontext.with_cancel(gocontext.background())
        finish = start(ctx)
        assert ENTERED.wait(60), "the handler never started"
        t0 = time.perf_counter()
        cancel()
        out.append((finish() - t0) * 1e3)
    return statistics.median(out)


def _in_thread(call: Callable[[], object]) -> Callable[[], float]:
    raised: list[float] = []

    def run() -> None:
        try:
            call()
        except gocontext.Canceled:
            raised.append(time.perf_counter())

    t = threading.Thread(target=run)
    t.start()

    def finish() -> float:
        t.join(60)
        assert raised, "the call did not raise Canceled"
        return raised[0]

    return finish


def latency_requests(servers: _Loop, trials: int) -> float:
    url, runner = servers.run(_start_aiohttp(_aiohttp_app(True)))
    session = requests.Session()
    session.mount("http://", gocontext.http.RequestsAdapter())
    try:
        return _cancel_latency_ms(
            lambda ctx: _in_thread(
                lambda: gocontext.http.request(ctx, session, "GET", url + "wait")
            ),
            trials,
        )
    finally:
        session.close()
        servers.run(runner.cleanup())


def latency_grpc_sync(trials: int) -> float:
    server = grpc.server(
        futures.ThreadPoolExecutor(4), interceptors=[gocontext.grpc.server_interceptor()]
    )
    server.add_generic_rpc_handlers((_grpc_handlers(aio=False),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.intercept_channel(
        grpc.insecure_channel(f"127.0.0.1:{port}"), *gocontext.grpc.client_interceptors()
    )
    wait = channel.unary_unary("/bench.Hello/Wait")

    def start(ctx: gocontext.Context) -> Callable[[], float]:
        def call() -> object:
            with gocontext.use(ctx):
                return wait(b"")  # a blocking call

        return _in_thread(call)

    try:
        return _cancel_latency_ms(start, trials)
    finally:
        channel.close()
        server.stop(None).wait(60)


def latency_async(servers: _Loop, trials: int, kind: str) -> float:
    """aiohttp or grpc.aio: the call runs in a task on this thread's loop."""

    async def main() -> float:
        if kind == "aiohttp":
            url, runner = servers.run(_start_aiohttp(_aiohttp_app(True)))
            session = gocontext.aiohttp.client_session()

            async def call(ctx: gocontext.Context) -> None:
                async with session.get(url + "wait", trace_request_ctx=ctx) as r:
                    await r.read()

            async def close() -> None:
                await session.close()
                servers.run(runner.cleanup())
        else:

            async def make() -> tuple[Any, int]:  # (on the servers' loop)
                server = grpc.aio.server(interceptors=[gocontext.grpc.aio_server_interceptor()])
                server.add_generic_rpc_handlers((_grpc_handlers(aio=True),))
                port = server.add_insecure_port("127.0.0.1:0")
                await server.start()
                return server, port

            server, port = servers.run(make())
            channel = grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", interceptors=gocontext.grpc.aio_client_interceptors()
            )
            wait = channel.unary_unary("/bench.Hello/Wait")

            async def call(ctx: gocontext.Context) -> None:
                with gocontext.use(ctx):
                    await wait(b"")

            async def close() -> None:
                await channel.close()
                servers.run(server.stop(None))

        out = []
        try:
            for _ in range(trials):
                ENTERED.clear()
                ctx, cancel = gocontext.with_cancel(gocontext.background())
                raised: list[float] = []

                async def run(ctx: gocontext.Context = ctx, raised: list[float] = raised) -> None:
                    try:
                        await call(ctx)
                    except gocontext.Canceled:
                        raised.append(time.perf_counter())

                task = asyncio.ensure_future(run())
                assert await asyncio.to_thread(ENTERED.wait, 60), "the handler never started"
                t0 = time.perf_counter()
                cancel()
                await task
                assert raised, "the call did not raise Canceled"
                out.append((raised[0] - t0) * 1e3)
        finally:
            await close()
        return statistics.median(out)

    return asyncio.run(main())


def bench_grpc_sync(n: int, rounds: int) -> tuple[float, float]:
    servers = []
    targets = []
    for wired in (False, True):
        server = grpc.server(
            futures.ThreadPoolExecutor(4),
            interceptors=[gocontext.grpc.server_interceptor()] if wired else [],
        )
        server.add_generic_rpc_handlers((_grpc_handlers(aio=False),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        targets.append(f"127.0.0.1:{port}")
    plain = grpc.insecure_channel(targets[0])
    wired_ch = grpc.intercept_channel(
        grpc.insecure_channel(targets[1]), *gocontext.grpc.client_interceptors()
    )
    call_plain = plain.unary_unary("/bench.Hello/Hello")
    call_wired = wired_ch.unary_unary("/bench.Hello/Hello")
    ctx = _ctx()

    def wired_call() -> object:
        with gocontext.use(ctx):
            return call_wired(b"")

    try:
        return _rounds(
            lambda: _per_call_us(lambda: call_plain(b""), n),
            lambda: _per_call_us(wired_call, n),
            rounds,
        )
    finally:
        plain.close()
        wired_ch.close()
        for s in servers:
            s.stop(None).wait(60)


def bench_grpc_aio(servers: _Loop, n: int, rounds: int) -> tuple[float, float]:
    async def start(wired: bool) -> tuple[str, Any]:
        server = grpc.aio.server(
            interceptors=[gocontext.grpc.aio_server_interceptor()] if wired else []
        )
        server.add_generic_rpc_handlers((_grpc_handlers(aio=True),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return f"127.0.0.1:{port}", server

    t1, s1 = servers.run(start(False))
    t2, s2 = servers.run(start(True))
    ctx = _ctx()

    async def main() -> tuple[float, float]:
        async with (
            grpc.aio.insecure_channel(t1) as plain,
            grpc.aio.insecure_channel(
                t2, interceptors=gocontext.grpc.aio_client_interceptors()
            ) as wired,
        ):
            call_plain = plain.unary_unary("/bench.Hello/Hello")
            call_wired = wired.unary_unary("/bench.Hello/Hello")

            async def one(call: Any) -> float:
                t = time.perf_counter()
                for _ in range(n):
                    await call(b"")
                return (time.perf_counter() - t) / n * 1e6

            a, b = [], []
            with gocontext.use(ctx):
                for _ in range(rounds):
                    a.append(await one(call_plain))
                    b.append(await one(call_wired))
            return statistics.median(a), statistics.median(b)

    try:
        return asyncio.run(main())
    finally:
        servers.run(s1.stop(None))
        servers.run(s2.stop(None))


def main(quick: bool = False) -> None:
    n, rounds = (50, 3) if quick else (500, 5)
    servers = _Loop()
    rows = [
        (
            "requests (RequestsAdapter -> aiohttp.web + middleware)",
            bench_requests(servers, n, rounds),
        ),
        ("aiohttp (client_session -> aiohttp.web + middleware)", bench_aiohttp(servers, n, rounds)),
        ("gRPC sync (client_interceptors -> server_interceptor)", bench_grpc_sync(n, rounds)),
        (
            "grpc.aio (aio_client_interceptors -> aio_server_interceptor)",
            bench_grpc_aio(servers, n, rounds),
        ),
    ]
    trials = 5 if quick else 20
    latencies = [
        ("requests", latency_requests(servers, trials)),
        ("aiohttp", latency_async(servers, trials, "aiohttp")),
        ("gRPC sync (a blocking call)", latency_grpc_sync(trials)),
        ("grpc.aio", latency_async(servers, trials, "grpc.aio")),
    ]
    servers.stop()
    sys.stdout.write(
        f"\n### Wires: per-call overhead over loopback, client and server together  "
        f"(target: <= {TARGET:.0%} of a no-op call; {n} calls x {rounds} rounds, medians)\n"
    )
    sys.stdout.write(f"{'wire':<62} {'plain us':>10} {'wired us':>10} {'overhead':>9}  target\n")
    for name, (plain, wired) in rows:
        overhead = wired / plain - 1
        verdict = "met" if overhead <= TARGET else "missed"
        sys.stdout.write(f"{name:<62} {plain:>10.1f} {wired:>10.1f} {overhead:>+8.1%}  {verdict}\n")
    sys.stdout.write(
        f"\n### Wires: cancel() in another thread to Canceled in the caller, a call in flight  "
        f"(target: median <= {LATENCY_TARGET_MS:.0f} ms; {trials} trials)\n"
    )
    for name, ms in latencies:
        verdict = "met" if ms <= LATENCY_TARGET_MS else "missed"
        sys.stdout.write(f"{name:<62} {ms:>10.2f} ms  {verdict}\n")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
