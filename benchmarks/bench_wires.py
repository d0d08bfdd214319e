"""Per-call overhead of each wire (requests, aiohttp, gRPC sync and grpc.aio) over loopback,
against the same client and server without gocontext, measured in one run.

Each server runs in a process of its own, as a client and a server are deployed (in one
process they would take turns on one GIL, and a handoff between them costs more than either
side's work). Short rounds of plain, hollow and wired calls alternate (their order turning
each round), and the overhead is the median of the rounds' wired/plain ratios: a machine
shared with other work slows rounds, not one side. "Hollow" is the library's own price for the
hooks we use, with hooks that do nothing (aiohttp: a client and a server middleware, as
client_session() uses no trace config; requests to aiohttp.web: the server middleware; gRPC:
a server interceptor, and a client interceptor for the interceptor rows; ``channel()`` and
``aio_channel()`` wrap a channel, using no hook of grpc's); "ours" is what gocontext adds on
top of it (wired over hollow). gRPC has a row for each way a client takes the context.
Beside each row but requests', in the same rounds, the same calls by hand, as a user without
gocontext writes them: the caller sends the time left and its values (aiohttp: with a
``ClientTimeout``; gRPC: as ``timeout=`` and ``baggage`` metadata); the server reads them (aiohttp:
a middleware that runs the handler under the timeout, ``_by_hand_middleware``; gRPC, which keeps
the deadline itself: an interceptor that reads the values, ``_ByHandServer``).

Run: python -m benchmarks.bench_wires [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import anyio
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


@web.middleware
async def _hollow_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    return await handler(request)  # type: ignore[no-any-return]


_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


@web.middleware
async def _by_hand_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """What a server without gocontext writes to honour a caller's deadline and values: the
    ``Grpc-Timeout`` (capped at 60 s, the default of ours) read and the handler run under it,
    the ``baggage`` members split into ``request["values"]``; no disconnect watch, no 504."""
    timeout = 60.0
    value = request.headers.get("Grpc-Timeout")
    if value:
        with contextlib.suppress(KeyError, ValueError):
            timeout = min(timeout, int(value[:-1]) * _GRPC_UNITS[value[-1]])
    baggage = request.headers.get("baggage")
    request["values"] = (
        dict(m.split("=", 1) for m in baggage.split(",") if "=" in m) if baggage else {}
    )
    if _TIMEOUT is not None:
        async with _TIMEOUT(timeout):
            return await handler(request)  # type: ignore[no-any-return]
    with anyio.fail_after(timeout):
        return await handler(request)  # type: ignore[no-any-return]


_TIMEOUT = getattr(asyncio, "timeout", None)  # (3.11+; anyio's on 3.10)


def _aiohttp_app(kind: str) -> web.Application:
    """*kind*: "plain" (no middleware), "hollow" (one that does nothing), "wired" (ours) or
    "by hand" (``_by_hand_middleware``)."""
    middlewares = {
        "plain": [],
        "hollow": [_hollow_middleware],
        "wired": [gocontext.aiohttp.middleware()],
        "by hand": [_by_hand_middleware],
    }[kind]
    app = web.Application(middlewares=middlewares)
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


class Row(NamedTuple):
    """One wire's figures: medians of per-call microseconds and of per-round ratios."""

    plain_us: float
    hollow_us: float
    wired_us: float
    overhead: float  # wired / plain - 1
    floor: float  # hollow / plain - 1: the library's own price for its hooks
    ours: float  # wired / hollow - 1: what gocontext adds on top
    by_hand: float | None = None  # by hand / plain - 1, where measured (see bench_aiohttp)


def _rounds(sides: dict[str, Callable[[], float]], rounds: int) -> Row:
    """Run *sides* ("plain", "hollow", "wired": each times a round of calls and returns
    microseconds per call) in alternating rounds, turning their order each time."""
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            times[name].append(sides[name]())

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True)) - 1

    return Row(
        statistics.median(times["plain"]),
        statistics.median(times["hollow"]),
        statistics.median(times["wired"]),
        ratio("wired", "plain"),
        ratio("hollow", "plain"),
        ratio("wired", "hollow"),
        ratio("by hand", "plain") if "by hand" in times else None,
    )


def _per_call_us(fn: Callable[[], object], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def bench_requests(urls: dict[str, str], n: int, rounds: int) -> Row:
    plain, hollow, wired = requests.Session(), requests.Session(), requests.Session()
    wired.mount("http://", gocontext.http.RequestsAdapter())
    ctx = _ctx()
    try:
        return _rounds(
            {
                "plain": lambda: _per_call_us(lambda: plain.get(urls["plain"]), n),
                "hollow": lambda: _per_call_us(lambda: hollow.get(urls["hollow"]), n),
                "wired": lambda: _per_call_us(
                    lambda: gocontext.http.request(ctx, wired, "GET", urls["wired"]), n
                ),
            },
            rounds,
        )
    finally:
        for session in (plain, hollow, wired):
            session.close()


async def _hollow_client_middleware(req: Any, handler: Any) -> Any:
    return await handler(req)


def bench_aiohttp(urls: dict[str, str], n: int, rounds: int) -> Row:
    ctx = _ctx()
    loop = asyncio.new_event_loop()

    async def sessions() -> dict[str, aiohttp.ClientSession]:
        return {
            "plain": aiohttp.ClientSession(),
            "hollow": aiohttp.ClientSession(middlewares=(_hollow_client_middleware,)),
            "wired": gocontext.aiohttp.client_session(),
            "by hand": aiohttp.ClientSession(),
        }

    made = loop.run_until_complete(sessions())
    deadline = time.monotonic() + 3600  # the by-hand caller's deadline, as ctx's

    async def one(kind: str) -> float:
        session, url = made[kind], urls[kind]
        kw: dict[str, Any] = {"trace_request_ctx": ctx} if kind == "wired" else {}
        t = time.perf_counter()
        if kind == "by hand":  # the time left and the values sent, a timeout set, per call
            for _ in range(n):
                left = deadline - time.monotonic()
                async with session.get(
                    url,
                    headers={"Grpc-Timeout": f"{int(left * 1000)}m", "baggage": "request-id=r1"},
                    timeout=aiohttp.ClientTimeout(total=left),
                ) as r:
                    await r.read()
                if r.status != 200:
                    raise RuntimeError(f"the by-hand server answered {r.status}")
        else:
            for _ in range(n):
                async with session.get(url, **kw) as r:
                    await r.read()
        return (time.perf_counter() - t) / n * 1e6

    try:
        return _rounds(
            {kind: lambda kind=kind: loop.run_until_complete(one(kind)) for kind in made}, rounds
        )
    finally:
        for session in made.values():
            loop.run_until_complete(session.close())
        loop.close()


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
    url, runner = servers.run(_start_aiohttp(_aiohttp_app("wired")))
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


def latency_grpc_sync(trials: int, way: str) -> float:
    server = grpc.server(
        futures.ThreadPoolExecutor(4), interceptors=[gocontext.grpc.server_interceptor()]
    )
    server.add_generic_rpc_handlers((_grpc_handlers(aio=False),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = _sync_channel(f"127.0.0.1:{port}", "wired", way)
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


def latency_async(servers: _Loop, trials: int, kind: str, way: str = "channel") -> float:
    """aiohttp or grpc.aio (its channel made *way*): the call runs in a task on this thread's
    loop."""

    async def main() -> float:
        if kind == "aiohttp":
            url, runner = servers.run(_start_aiohttp(_aiohttp_app("wired")))
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
            channel = _aio_channel(f"127.0.0.1:{port}", "wired", way)
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


class _HollowClient(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(details, request)


class _HollowServer(grpc.ServerInterceptor):  # type: ignore[misc]
    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        return continuation(handler_call_details)


class _HollowAioClient(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(details, request)


class _HollowAioServer(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        return await continuation(handler_call_details)


def _baggage_by_hand(metadata: Any) -> dict[str, str]:
    """The values a server without gocontext reads from a call's ``baggage`` by hand."""
    for key, value in metadata or ():
        if key == "baggage":
            return dict(m.split("=", 1) for m in value.split(",") if "=" in m)
    return {}


class _ByHandServer(grpc.ServerInterceptor):  # type: ignore[misc]
    """The by-hand server: gRPC keeps the deadline itself; the values are read by hand."""

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        _baggage_by_hand(handler_call_details.invocation_metadata)
        return continuation(handler_call_details)


class _ByHandAioServer(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        _baggage_by_hand(handler_call_details.invocation_metadata)
        return await continuation(handler_call_details)


def _server_interceptors(aio: bool, kind: str) -> list[Any]:
    if kind == "plain":
        return []
    if kind == "hollow":
        return [_HollowAioServer() if aio else _HollowServer()]
    if kind == "by hand":
        return [_ByHandAioServer() if aio else _ByHandServer()]
    return [gocontext.grpc.aio_server_interceptor() if aio else gocontext.grpc.server_interceptor()]


def _client_interceptors(aio: bool, kind: str) -> list[Any]:
    if kind == "plain":
        return []
    if kind == "hollow":
        return [_HollowAioClient() if aio else _HollowClient()]
    return gocontext.grpc.aio_client_interceptors() if aio else gocontext.grpc.client_interceptors()


# How a client's calls are made to honour their context: "channel" (``channel()`` and
# ``aio_channel()``, wrappers of a channel, which use no hook of grpc's: their hollow is the
# plain channel) or "interceptors" (``client_interceptors()`` and ``aio_client_interceptors()``).


def _sync_channel(target: str, kind: str, way: str) -> Any:
    inner = grpc.insecure_channel(target)
    if kind in ("plain", "by hand") or (kind == "hollow" and way == "channel"):
        return inner
    if kind == "wired" and way == "channel":
        return gocontext.grpc.channel(inner)
    return grpc.intercept_channel(inner, *_client_interceptors(False, kind))


def _aio_channel(target: str, kind: str, way: str) -> Any:
    if kind in ("plain", "by hand") or (kind == "hollow" and way == "channel"):
        return grpc.aio.insecure_channel(target)
    if kind == "wired" and way == "channel":
        return gocontext.grpc.aio_channel(grpc.aio.insecure_channel(target))
    return grpc.aio.insecure_channel(target, interceptors=_client_interceptors(True, kind))


def _grpc_sync_server(kind: str) -> tuple[Any, str]:
    server = grpc.server(
        futures.ThreadPoolExecutor(4), interceptors=_server_interceptors(False, kind)
    )
    server.add_generic_rpc_handlers((_grpc_handlers(aio=False),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


async def _start_grpc_aio(kind: str) -> tuple[Any, str]:
    server = grpc.aio.server(interceptors=_server_interceptors(True, kind))
    server.add_generic_rpc_handlers((_grpc_handlers(aio=True),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def bench_grpc_sync(targets: dict[str, str], n: int, rounds: int, way: str) -> Row:
    channels, calls = [], {}
    for kind, target in targets.items():
        channel = _sync_channel(target, kind, way)
        channels.append(channel)
        calls[kind] = channel.unary_unary("/bench.Hello/Hello")
    ctx = _ctx()
    deadline = time.monotonic() + 3600  # the by-hand caller's deadline, as ctx's

    def by_hand(call: Any) -> object:  # the time left and the values, sent by the caller
        return call(b"", timeout=deadline - time.monotonic(), metadata=_BAGGAGE_BY_HAND)

    def one(kind: str) -> float:
        call = calls[kind]
        if kind == "by hand":
            return _per_call_us(lambda: by_hand(call), n)
        with gocontext.use(ctx):  # (only the wired client reads it)
            return _per_call_us(lambda: call(b""), n)

    try:
        return _rounds({kind: lambda kind=kind: one(kind) for kind in calls}, rounds)
    finally:
        for channel in channels:
            channel.close()


def bench_grpc_aio(targets: dict[str, str], n: int, rounds: int, way: str) -> Row:
    ctx = _ctx()
    loop = asyncio.new_event_loop()

    async def open_channels() -> dict[str, Any]:
        return {kind: _aio_channel(target, kind, way) for kind, target in targets.items()}

    channels = loop.run_until_complete(open_channels())
    calls = {kind: channel.unary_unary("/bench.Hello/Hello") for kind, channel in channels.items()}

    deadline = time.monotonic() + 3600  # the by-hand caller's deadline, as ctx's

    async def one(kind: str) -> float:
        call = calls[kind]
        t = time.perf_counter()
        if kind == "by hand":  # the time left and the values, sent by the caller
            for _ in range(n):
                await call(b"", timeout=deadline - time.monotonic(), metadata=_BAGGAGE_BY_HAND)
            return (time.perf_counter() - t) / n * 1e6
        with gocontext.use(ctx):  # (only the wired client reads it)
            for _ in range(n):
                await call(b"")
            return (time.perf_counter() - t) / n * 1e6

    try:
        return _rounds(
            {kind: lambda kind=kind: loop.run_until_complete(one(kind)) for kind in calls}, rounds
        )
    finally:
        for channel in channels.values():
            loop.run_until_complete(channel.close())
        loop.close()


_BAGGAGE_BY_HAND = (("baggage", "request-id=r1"),)  # what a by-hand gRPC caller sends
_SERVE_FLAG = "--serve"
_ROOT = Path(__file__).resolve().parent.parent
KINDS = ("plain", "hollow", "wired")


def _serve_here(wire: str, kind: str) -> None:
    """Run one benchmark server (*wire*: ``aiohttp``, ``grpc`` or ``grpc.aio``) in this
    process, its address printed on stdout, until stdin closes (the benchmark is over)."""
    if wire == "grpc":
        server, address = _grpc_sync_server(kind)
        print(address, flush=True)
        sys.stdin.read()
        server.stop(None).wait(60)
        return

    async def main() -> None:
        stop: Callable[[], Awaitable[Any]]
        if wire == "aiohttp":
            address, runner = await _start_aiohttp(_aiohttp_app(kind))
            stop = runner.cleanup
        else:
            server, address = await _start_grpc_aio(kind)
            stop = lambda: server.stop(None)  # noqa: E731 - one line
        print(address, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await stop()

    asyncio.run(main())


@contextlib.contextmanager
def _servers(wire: str, kinds: tuple[str, ...] = KINDS) -> Iterator[dict[str, str]]:
    """The servers of *wire* of each of *kinds* (plain, hollow and wired; aiohttp's also by
    hand), each in a process of its own: their addresses, by kind, until the block ends."""
    procs = {
        kind: subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_wires", _SERVE_FLAG, wire, kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(_ROOT),
        )
        for kind in kinds
    }
    try:
        addresses = {kind: p.stdout.readline().strip() for kind, p in procs.items()}  # type: ignore[union-attr]  # piped
        if not all(addresses.values()):
            raise RuntimeError(f"a {wire} benchmark server did not start")
        yield addresses
    finally:
        for p in procs.values():
            p.stdin.close()  # type: ignore[union-attr]  # piped
        for p in procs.values():
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main(quick: bool = False) -> None:
    n, rounds = (50, 5) if quick else (300, 31)
    with _servers("aiohttp", (*KINDS, "by hand")) as urls:
        rows = [
            (
                "requests (RequestsAdapter -> aiohttp.web + middleware)",
                bench_requests(urls, n, rounds),
            ),
            (
                "aiohttp (client_session -> aiohttp.web + middleware)",
                bench_aiohttp(urls, n, rounds),
            ),
        ]
    with _servers("grpc", (*KINDS, "by hand")) as targets:
        rows += [
            (
                "gRPC sync (channel() -> server_interceptor)",
                bench_grpc_sync(targets, n, rounds, "channel"),
            ),
            (
                "gRPC sync (client_interceptors -> server_interceptor)",
                bench_grpc_sync(targets, n, rounds, "interceptors"),
            ),
        ]
    with _servers("grpc.aio", (*KINDS, "by hand")) as targets:
        rows += [
            (
                "grpc.aio (aio_channel() -> aio_server_interceptor)",
                bench_grpc_aio(targets, n, rounds, "channel"),
            ),
            (
                "grpc.aio (aio_client_interceptors -> aio_server_interceptor)",
                bench_grpc_aio(targets, n, rounds, "interceptors"),
            ),
        ]
    servers = _Loop()
    trials = 5 if quick else 20
    latencies = [
        ("requests", latency_requests(servers, trials)),
        ("aiohttp", latency_async(servers, trials, "aiohttp")),
        ("gRPC sync, channel() (a blocking call)", latency_grpc_sync(trials, "channel")),
        (
            "gRPC sync, client_interceptors (a blocking call)",
            latency_grpc_sync(trials, "interceptors"),
        ),
        ("grpc.aio, aio_channel()", latency_async(servers, trials, "grpc.aio", "channel")),
        (
            "grpc.aio, aio_client_interceptors",
            latency_async(servers, trials, "grpc.aio", "interceptors"),
        ),
    ]
    servers.stop()
    out = sys.stdout.write
    out(
        f"\n### Wires: per-call overhead over loopback, client and server together, each server "
        f"in a process of its own  "
        f"(target: <= {TARGET:.0%} of a no-op call; {rounds} rounds of {n} calls, medians of "
        f"per-round ratios)\n"
    )
    out(
        f"{'wire':<62} {'plain us':>9} {'hollow us':>9} {'wired us':>9} "
        f"{'overhead':>9} {'hollow':>8} {'ours':>8}  target\n"
    )
    for name, row in rows:
        verdict = "met" if row.overhead <= TARGET else "missed"
        out(
            f"{name:<62} {row.plain_us:>9.1f} {row.hollow_us:>9.1f} {row.wired_us:>9.1f} "
            f"{row.overhead:>+9.1%} {row.floor:>+8.1%} {row.ours:>+8.1%}  {verdict}\n"
        )
    out(
        "(overhead: wired over plain; hollow: the library's hooks that we use, doing nothing, "
        "over plain; ours: wired over hollow)\n"
    )
    out(
        "by hand: the same calls as a user without gocontext writes them, in the same rounds "
        "(no cancel from another thread, no disconnect watch, no 504; see the module)\n"
    )
    for name, row in rows:
        if row.by_hand is not None:
            out(
                f"  {name:<60} by hand {row.by_hand:>+7.1%} over plain, wired {row.overhead:>+7.1%}\n"
            )
    out(
        f"\n### Wires: cancel() in another thread to Canceled in the caller, a call in flight  "
        f"(target: median <= {LATENCY_TARGET_MS:.0f} ms; {trials} trials)\n"
    )
    for name, ms in latencies:
        verdict = "met" if ms <= LATENCY_TARGET_MS else "missed"
        out(f"{name:<62} {ms:>10.2f} ms  {verdict}\n")


if __name__ == "__main__":
    if sys.argv[1:2] == [_SERVE_FLAG]:
        _serve_here(sys.argv[2], sys.argv[3])
    else:
        main(quick="--quick" in sys.argv)
