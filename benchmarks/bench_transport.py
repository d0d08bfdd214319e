"""What the gocontext.http transports add to each httpx request, in microseconds.

The inner transport answers at once from memory, so the difference between a client with our
transport around it and one without is our cost alone, not the network's: the whole request
(``client.get``, body read included) is timed both ways, in alternating batches, and the median
batch difference is reported. Times are the thread's CPU time, so a loaded machine skews
them less than wall-clock time would. Two contexts: ``background()`` (nothing to do: the fast path) and
one with a deadline and a propagated value (headers, timeouts, a watch for the whole request).

    python benchmarks/bench_transport.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import anyio
import httpx

import gocontext
import gocontext.http

TARGETS = {"background": 10.0, "deadline+baggage": 25.0}  # µs a request may gain


class _Canned(httpx.BaseTransport):
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        # A body to stream, as a network transport gives: read chunk by chunk, then its end.
        return httpx.Response(200, stream=httpx.ByteStream(b"hello"))


class _AsyncCanned(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=httpx.ByteStream(b"hello"))


def _contexts() -> dict[str, gocontext.Context]:
    key = gocontext.PropagatedKey("request-id")
    full, _ = gocontext.with_timeout(
        gocontext.with_value(gocontext.background(), key, "r-17"), 3600
    )
    return {"background": gocontext.background(), "deadline+baggage": full}


def _median_gain(
    plain: Callable[[int], float], ours: Callable[[int], float], n: int, rounds: int
) -> float:
    plain(n // 10)  # warm up both
    ours(n // 10)
    gains = []
    for _ in range(rounds):
        gains.append(ours(n) - plain(n))
    return statistics.median(gains)


def _sync_overhead(n: int, rounds: int) -> dict[str, float]:
    out = {}
    url = "http://127.0.0.1:9/"
    with (
        httpx.Client(transport=_Canned()) as plain_client,
        httpx.Client(transport=gocontext.http.Transport(_Canned())) as our_client,
    ):
        for name, ctx in _contexts().items():
            ext = {"gocontext": ctx}

            def plain(k: int) -> float:
                t = time.thread_time()
                for _ in range(k):
                    plain_client.get(url)
                return (time.thread_time() - t) / k * 1e6

            def ours(k: int, ext: dict[str, object] = ext) -> float:
                t = time.thread_time()
                for _ in range(k):
                    our_client.get(url, extensions=ext)
                return (time.thread_time() - t) / k * 1e6

            out[name] = _median_gain(plain, ours, n, rounds)

        # What any client pays to carry the same headers and timeouts, ours or not.
        full = {"grpc-timeout": "3599999m", "baggage": "request-id=r-17"}
        timeouts = {"timeout": {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}}

        def plain_full(k: int) -> float:
            t = time.thread_time()
            for _ in range(k):
                plain_client.get(url, headers=full, extensions=timeouts)
            return (time.thread_time() - t) / k * 1e6

        def plain_bare(k: int) -> float:
            t = time.thread_time()
            for _ in range(k):
                plain_client.get(url)
            return (time.thread_time() - t) / k * 1e6

        out["(httpx alone, same headers)"] = _median_gain(plain_bare, plain_full, n, rounds)
    return out


def _async_overhead(backend: str, n: int, rounds: int) -> dict[str, float]:
    async def main() -> dict[str, float]:
        out = {}
        url = "http://127.0.0.1:9/"
        async with (
            httpx.AsyncClient(transport=_AsyncCanned()) as plain_client,
            httpx.AsyncClient(transport=gocontext.http.AsyncTransport(_AsyncCanned())) as ours_c,
        ):
            for name, ctx in _contexts().items():
                ext = {"gocontext": ctx}
                samples: list[float] = []
                await plain_client.get(url)
                await ours_c.get(url, extensions=ext)
                for _ in range(rounds):
                    t = time.thread_time()
                    for _ in range(n):
                        await plain_client.get(url)
                    base = (time.thread_time() - t) / n * 1e6
                    t = time.thread_time()
                    for _ in range(n):
                        await ours_c.get(url, extensions=ext)
                    samples.append((time.thread_time() - t) / n * 1e6 - base)
                out[name] = statistics.median(samples)
        return out

    return anyio.run(main, backend=backend)


def transport_overhead(n: int = 2000, rounds: int = 9) -> dict[str, dict[str, float]]:
    """µs our transport adds per request: ``{"sync"|"asyncio"|"trio": {context: µs}}``.

    Example:
        >>> figures = transport_overhead(n=20, rounds=1)
        >>> sorted(figures), sorted(figures["asyncio"])
        (['asyncio', 'sync', 'trio'], ['background', 'deadline+baggage'])
    """
    return {
        "sync": _sync_overhead(n, rounds),
        "asyncio": _async_overhead("asyncio", n, rounds),
        "trio": _async_overhead("trio", n, rounds),
    }


def main() -> None:
    print("| transport | context | measured | target | met |\n|---|---|---:|---:|---|")
    for side, figures in transport_overhead().items():
        for name, us in figures.items():
            if name not in TARGETS:
                print(f"| {side} | {name} | {us:+.1f} µs | (for reference) | |")
                continue
            target = TARGETS[name]
            verdict = "met" if us <= target else "missed"
            print(f"| {side} | {name} | {us:+.1f} µs | <= {target:g} µs | {verdict} |")


if __name__ == "__main__":
    main()
