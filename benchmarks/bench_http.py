"""What gocontext.http adds to each request, in one run, against its targets.

- middleware: the server CPU ``ContextMiddleware`` adds per request (default ``max_timeout``),
  the ASGI app driven directly on an asyncio loop, so only our code is measured: CPU time of
  the loop's thread with and without the middleware, in alternating rounds, median difference;
  beside it, in the same rounds, what a server without gocontext writes for a deadline alone
  (the app under ``anyio.fail_after(60)``, or ``asyncio.timeout(60)``);
- transport: what ``Transport`` adds to an httpx request (``bench_transport.transport_overhead``
  when it is there, else the same measure for the blocking client here);
- end to end: plain ``httpx.Client`` + plain Starlette against ``Transport`` +
  ``ContextMiddleware`` with a deadline and baggage, over loopback, alternating batches of 20
  requests (their order turning each round; the overhead is the median of the 100 rounds'
  ratios: with batches of 100, five runs in a row spread over 6 points), each uvicorn
  server in a process of its own, as a client and a server are deployed, parsing HTTP with
  h11 (pure Python: each header a request carries costs the server about 19,000
  instructions); then the same with uvicorn's httptools parser (as ``uvicorn[standard]``
  installs it), when it is installed. Beside each, the server process's CPU per request in
  each (a real server's share, which the middleware row, driving the app alone on a warm
  loop, understates), and a third side in the same rounds: plain httpx sending our two
  headers, written by hand, to plain Starlette (what carrying them costs httpx, h11 and
  uvicorn, whoever sends them). For reference, the same with both servers in this process: client and
  servers then take turns on one GIL, handed between threads several times per request, so
  both columns carry the harness's costs too.

    python benchmarks/bench_http.py [--quick]
"""

from __future__ import annotations

import asyncio
import importlib.util
import pathlib
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import anyio
import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import gocontext
import gocontext.http

# What each row may cost: µs per request, or % over plain httpx + Starlette end to end.
TARGETS: dict[str, tuple[float, str]] = {
    "middleware, no context headers": (10.0, "µs"),
    "middleware, Grpc-Timeout + baggage": (20.0, "µs"),
    "transport, background()": (10.0, "µs"),
    "transport, deadline + baggage": (25.0, "µs"),
    "end to end, deadline + baggage": (10.0, "%"),
}

_HEADERS = [  # what httpx sends with every request
    (b"host", b"127.0.0.1:8000"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"connection", b"keep-alive"),
    (b"user-agent", b"python-httpx/0.28.1"),
]
_CONTEXT_ONLY = [(b"grpc-timeout", b"3599999m"), (b"baggage", b"request-id=r1")]  # what ours send
_CONTEXT_HEADERS = [*_HEADERS, *_CONTEXT_ONLY]
_KEY = gocontext.PropagatedKey("request-id")
_ROOT = pathlib.Path(__file__).resolve().parent.parent  # where `-m benchmarks.bench_http` runs


async def _bare(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def _peer_deadlines() -> dict[str, Callable[[Any], Any]]:
    """What a server without gocontext writes for a request's deadline: the app run under a
    60-second timeout (``ContextMiddleware``'s default cap), by anyio or by asyncio (3.11+),
    and nothing else (no header read, no disconnect watch, no values)."""

    def anyio_fail_after(app: Any) -> Any:
        async def peer(scope: Any, receive: Any, send: Any) -> None:
            with anyio.fail_after(60):
                await app(scope, receive, send)

        return peer

    peers: dict[str, Callable[[Any], Any]] = {"anyio.fail_after(60)": anyio_fail_after}
    timeout = getattr(asyncio, "timeout", None)
    if timeout is not None:

        def asyncio_timeout(app: Any) -> Any:
            async def peer(scope: Any, receive: Any, send: Any) -> None:
                async with timeout(60):
                    await app(scope, receive, send)

            return peer

        peers["asyncio.timeout(60)"] = asyncio_timeout
    return peers


def middleware_overhead(n: int = 2000, rounds: int = 15) -> dict[str, float]:
    """µs of CPU ``ContextMiddleware`` adds per request, without and with context headers;
    and, beside the first, what each hand-made deadline of ``_peer_deadlines`` adds to the
    same requests, measured in the same rounds (keys ``peer: ...``).

    Example:
        >>> rows = middleware_overhead(n=10, rounds=1)
        >>> sorted(row for row in rows if not row.startswith("peer: "))
        ['middleware, Grpc-Timeout + baggage', 'middleware, no context headers']
        >>> "peer: anyio.fail_after(60)" in rows
        True
    """
    message: MutableMapping[str, Any] = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> MutableMapping[str, Any]:
        return message

    async def send(_: MutableMapping[str, Any]) -> None:
        return None

    async def cpu_us(app: Any, headers: list[tuple[bytes, bytes]]) -> float:
        t = time.thread_time()
        for _ in range(n):
            scope = {"type": "http", "method": "GET", "path": "/", "headers": headers}
            await app(scope, receive, send)
        return (time.thread_time() - t) / n * 1e6

    async def main() -> dict[str, float]:
        ours = gocontext.http.ContextMiddleware(_bare)
        peers = {f"peer: {name}": wrap(_bare) for name, wrap in _peer_deadlines().items()}
        out: dict[str, float] = {}
        for name, headers, others in (
            ("middleware, no context headers", _HEADERS, peers),
            ("middleware, Grpc-Timeout + baggage", _CONTEXT_HEADERS, {}),
        ):
            apps = {name: ours, **others}
            await cpu_us(_bare, headers)  # warm up every one
            for app in apps.values():
                await cpu_us(app, headers)
            gains: dict[str, list[float]] = {row: [] for row in apps}
            for _ in range(rounds):
                base = await cpu_us(_bare, headers)
                for row, app in apps.items():
                    gains[row].append(await cpu_us(app, headers) - base)
            out.update((row, statistics.median(g)) for row, g in gains.items())
        return out

    return asyncio.run(main())


def transport_overhead(n: int = 2000, rounds: int = 9) -> dict[str, float]:
    """µs ``Transport`` adds per blocking httpx request, for ``background()`` and for a context
    with a deadline and a propagated value (the figures of ``bench_transport`` if present)."""
    try:
        from .bench_transport import transport_overhead as measured  # type: ignore[import-not-found]
    except ImportError:
        measured = None
    if measured is not None:
        sync = measured(n=n, rounds=rounds)["sync"]
        return {
            "transport, background()": sync["background"],
            "transport, deadline + baggage": sync["deadline+baggage"],
        }

    class Canned(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, content=b"hello")

    full, cancel = gocontext.with_timeout(
        gocontext.with_value(gocontext.background(), _KEY, "r1"), 3600
    )
    url = "http://127.0.0.1:9/"
    out = {}
    try:
        with (
            httpx.Client(transport=Canned()) as plain,
            httpx.Client(transport=gocontext.http.Transport(Canned())) as ours,
        ):
            for name, ctx in (
                ("transport, background()", gocontext.background()),
                ("transport, deadline + baggage", full),
            ):
                ext = {"gocontext": ctx}
                gains = []
                for _ in range(rounds):  # all in this thread: its CPU time is the cost
                    base = _per_request_us(lambda: plain.get(url), n // 4, time.thread_time)
                    ours_us = _per_request_us(
                        lambda: ours.get(url, extensions=ext), n // 4, time.thread_time
                    )
                    gains.append(ours_us - base)
                out[name] = statistics.median(gains)
    finally:
        cancel()
    return out


def _per_request_us(
    call: Callable[[], object], n: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    t = clock()
    for _ in range(n):
        call()
    return (clock() - t) / n * 1e6


async def _hello(request: object) -> PlainTextResponse:
    return PlainTextResponse("hello")


def _serve(app: object) -> tuple[str, uvicorn.Server, threading.Thread]:
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only then; without it every response
    # waits ≈ 40 ms for a delayed ACK and both sides measure the same stall.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off", http="h11")  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.01)
    return f"http://127.0.0.1:{sock.getsockname()[1]}/", server, thread


def _cpu_clock(thread: threading.Thread) -> Callable[[], float]:
    """The CPU time of *thread* so far, in seconds (where the system can tell: else 0.0)."""
    if thread.ident is None or not hasattr(time, "pthread_getcpuclockid"):
        return lambda: 0.0
    clock = time.pthread_getcpuclockid(thread.ident)
    return lambda: time.clock_gettime(clock)


# Batches per side in an end-to-end run: short batches, so that the two sides of each ratio
# run a few milliseconds apart (a shared machine's speed drifts over longer spans).
_ROUNDS = 100

_SERVE_FLAG = "--serve"


def _serve_here(kind: str, http: str) -> None:
    """Run the benchmark's server (``plain`` Starlette, or ``ours`` under ContextMiddleware)
    in this process, on an ephemeral loopback port printed on stdout, until killed; *http*:
    uvicorn's HTTP parser ("h11" or "httptools")."""
    app: Any = Starlette(routes=[Route("/", _hello)])
    if kind == "ours":
        app = gocontext.http.ContextMiddleware(app)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # before the port is told: a client that connects early waits, not refused
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="off", http=http)
    uvicorn.Server(config).run(sockets=[sock])


def _process_cpu(pid: int) -> Callable[[], float]:
    """The CPU time of *pid*'s main thread so far, in seconds, where Linux tells it (else 0)."""
    path = f"/proc/{pid}/schedstat"

    def read() -> float:
        try:
            with open(path) as f:
                return int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0

    return read


def end_to_end_processes(
    n: int = 2000, http: str = "h11"
) -> tuple[float, float, float, float, float, float, float, float]:
    """``end_to_end``, each server in a process of its own (see the module), uvicorn parsing
    HTTP with *http* (its "h11" or "httptools"); then ``_same_client_cpu`` against the same
    two servers."""
    import subprocess

    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_http", _SERVE_FLAG, kind, http],
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(_ROOT),
        )
        for kind in ("plain", "ours")
    ]
    try:
        ports = [p.stdout.readline().strip() for p in procs]  # type: ignore[union-attr]  # piped
        if not all(ports):
            raise RuntimeError("a benchmark server did not start")
        plain_url, ctx_url = (f"http://127.0.0.1:{port}/" for port in ports)
        cpu1, cpu2 = _process_cpu(procs[0].pid), _process_cpu(procs[1].pid)
        return (
            *_alternate(plain_url, ctx_url, n, cpu1, cpu2),
            *_same_client_cpu(plain_url, ctx_url, n, cpu1, cpu2),
        )
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _same_client_cpu(
    plain_url: str,
    ctx_url: str,
    n: int,
    cpu1: Callable[[], float],
    cpu2: Callable[[], float],
) -> tuple[float, float]:
    """Server CPU µs per request of plain Starlette and of Starlette under ContextMiddleware,
    both sent the same requests (``Grpc-Timeout`` and ``baggage`` included) by one plain httpx
    client, in alternating batches (medians): what the middleware costs a real server, where
    it runs among uvicorn's and Starlette's own work, with cold caches, unlike the hot loop of
    ``middleware_overhead``."""
    headers = dict(_CONTEXT_ONLY)
    out: tuple[list[float], list[float]] = ([], [])
    with httpx.Client() as client:
        sides = ((plain_url, cpu1, out[0]), (ctx_url, cpu2, out[1]))
        for url, _, _ in sides:  # warm up both
            _per_request_us(lambda url=url: client.get(url, headers=headers), 50)  # type: ignore[misc]
        k = max(n // 20, 1)
        for _ in range(20):
            for url, cpu, figures in sides:
                c = cpu()
                _per_request_us(lambda url=url: client.get(url, headers=headers), k)  # type: ignore[misc]
                figures.append((cpu() - c) / k * 1e6)
    return statistics.median(out[0]), statistics.median(out[1])


def end_to_end(n: int = 2000) -> tuple[float, float, float, float, float, float]:
    """µs per request over loopback: plain httpx + Starlette, then ours with a deadline and
    baggage (medians of alternating batches); and the server thread's CPU µs per request in
    each (what a real server pays, ``middleware_overhead`` measuring the middleware alone)."""
    app = Starlette(routes=[Route("/", _hello)])
    plain_url, s1, t1 = _serve(app)
    ctx_url, s2, t2 = _serve(gocontext.http.ContextMiddleware(app))
    try:
        return _alternate(plain_url, ctx_url, n, _cpu_clock(t1), _cpu_clock(t2))
    finally:
        for s, t in ((s1, t1), (s2, t2)):
            s.should_exit = True
            t.join(5)


def _alternate(
    plain_url: str,
    ctx_url: str,
    n: int,
    cpu1: Callable[[], float],
    cpu2: Callable[[], float],
) -> tuple[float, float, float, float, float, float]:
    """µs per request: plain httpx to *plain_url*, ours with a deadline and baggage to
    *ctx_url*, in alternating batches whose order turns each round; the servers' CPU µs per
    request, read from *cpu1* and *cpu2* (medians of the batches); the median of the
    rounds' ours/plain ratios, the overhead: a machine whose load drifts slows a round, both
    sides alike, where a ratio of medians would compare batches run under different loads;
    and the same median for plain httpx sending our two headers, written by hand, to
    *plain_url*: what carrying them through httpx and the server's parser costs by itself,
    as any client and server that propagate a deadline and values pay."""
    ctx, cancel = gocontext.with_timeout(
        gocontext.with_value(gocontext.background(), _KEY, "r1"), 3600
    )
    ext = {"gocontext": ctx}
    try:
        with httpx.Client() as plain, httpx.Client(transport=gocontext.http.Transport()) as ours:
            _per_request_us(lambda: plain.get(plain_url), 50)  # warm up both
            _per_request_us(lambda: ours.get(ctx_url, extensions=ext), 50)
            bases: list[float] = []
            fulls: list[float] = []
            base_cpu: list[float] = []
            full_cpu: list[float] = []
            ratios: list[float] = []
            carried: list[float] = []
            k = max(n // _ROUNDS, 1)
            by_hand = dict(_CONTEXT_ONLY)

            def plain_round() -> None:
                c = cpu1()
                bases.append(_per_request_us(lambda: plain.get(plain_url), k))
                base_cpu.append((cpu1() - c) / k * 1e6)

            def ours_round() -> None:
                c = cpu2()
                fulls.append(_per_request_us(lambda: ours.get(ctx_url, extensions=ext), k))
                full_cpu.append((cpu2() - c) / k * 1e6)

            def headers_round() -> None:
                carried.append(_per_request_us(lambda: plain.get(plain_url, headers=by_hand), k))

            sides = (plain_round, ours_round, headers_round)
            for i in range(_ROUNDS):
                for side in sides[i % 3 :] + sides[: i % 3]:
                    side()
                ratios.append(fulls[-1] / bases[-1])
                carried[-1] /= bases[-1]
    finally:
        cancel()
    return (
        statistics.median(bases),
        statistics.median(fulls),
        statistics.median(base_cpu),
        statistics.median(full_cpu),
        statistics.median(ratios),
        statistics.median(carried),
    )


def main(quick: bool = False) -> None:
    n = 200 if quick else 2000
    figures = {
        **middleware_overhead(n, 5 if quick else 15),
        **transport_overhead(n, 3 if quick else 9),
    }
    base, full, base_cpu, full_cpu, ratio, carried, same_plain, same_ours = end_to_end_processes(n)
    figures["end to end, deadline + baggage"] = (ratio - 1) * 100
    fast = end_to_end_processes(n, "httptools") if importlib.util.find_spec("httptools") else None
    one = end_to_end(n)
    print("\n### HTTP: what gocontext.http adds per request\n")
    print("| what | measured | target | met |\n|---|---:|---:|---|")
    for name, (target, unit) in TARGETS.items():
        value = figures[name]
        shown = f"{value:+.1f} %" if unit == "%" else f"{value:.1f} µs"
        verdict = "met" if value <= target else "missed"
        print(f"| {name} | {shown} | <= {target:g} {unit} | {verdict} |")
    ours_us = figures["middleware, no context headers"]
    beside = "; ".join(
        f"{name[len('peer: ') :]} {us:.1f} µs (ours/peer {ours_us / us:.2f}x)"
        for name, us in figures.items()
        if name.startswith("peer: ") and us > 0
    )
    print(
        f"\nthe middleware beside what a server without gocontext writes, no context headers "
        f"(a 60 s timeout around the app, and nothing else: no header read, no disconnect "
        f"watch, no values), same rounds: ContextMiddleware {ours_us:.1f} µs; {beside}"
    )
    print(
        f"end to end, servers in processes of their own: plain httpx + Starlette {base:,.0f} "
        f"µs, gocontext.http {full:,.0f} µs; server CPU under uvicorn {base_cpu:,.0f} µs and "
        f"{full_cpu:,.0f} µs ({full_cpu - base_cpu:+,.0f} µs); of the {(ratio - 1) * 100:+.1f} %, "
        f"plain httpx sending the same two headers by hand to plain Starlette: "
        f"{(carried - 1) * 100:+.1f} % (what carrying them costs httpx, h11 and uvicorn)"
    )
    print(
        f"the middleware in a real server: one plain httpx client sends the same requests, "
        f"Grpc-Timeout + baggage included, to both; server CPU {same_plain:,.0f} µs plain and "
        f"{same_ours:,.0f} µs under ContextMiddleware ({same_ours - same_plain:+,.0f} µs, "
        f"against the middleware row's hot loop)"
    )
    if fast is None:
        print("end to end with uvicorn's httptools parser: httptools is not installed")
    else:
        print(
            f"end to end with uvicorn's httptools parser (uvicorn[standard]) in place of h11: "
            f"{fast[0]:,.0f} µs and {fast[1]:,.0f} µs ({(fast[4] - 1) * 100:+.1f} %); server "
            f"CPU {fast[2]:,.0f} µs and {fast[3]:,.0f} µs ({fast[3] - fast[2]:+,.0f} µs)"
        )
    print(
        f"for reference, servers in this process (one GIL for client and servers): "
        f"{one[0]:,.0f} µs and {one[1]:,.0f} µs ({(one[4] - 1) * 100:+.1f} %); server "
        f"thread CPU {one[2]:,.0f} µs and {one[3]:,.0f} µs ({one[3] - one[2]:+,.0f} µs)"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == [_SERVE_FLAG]:
        _serve_here(*sys.argv[2:4])
    else:
        main(quick="--quick" in sys.argv[1:])
