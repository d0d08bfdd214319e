"""The async bridge: entering and leaving ``scope(ctx)``, and how fast a cancel reaches a task.

Run: python -m benchmarks.bench_async [--quick]

Every function returns its figures (ns or µs) so ``bench.py`` can fold them into its tables:
- ``scope_enter_exit(backend)``: ns to enter and leave ``gocontext.scope(ctx)`` on a live
  context, beside ``anyio.CancelScope()``, ``trio.CancelScope()`` and ``asyncio.timeout(None)``
  (target: within 2x of anyio's scope);
- ``interrupt_latency(backend)``: µs from ``cancel()`` in another thread to the scope body's
  ``await`` being interrupted (target: median under 300 µs), and to the scope having raised;
- ``await_done_latency(backend)``: µs from ``cancel()`` in another thread to ``await
  ctx.done()`` returning;
- ``fan_in_cancel(backend)``: ms for one ``cancel()`` in another thread to return, and until
  all of 10,000 scopes watching that context have raised.
Backends: "asyncio", "uvloop", "trio". Times are the best of a few runs (enter/exit) or
percentiles over many rounds (latency), all in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import trio

import gocontext

from ._latency import NEVER, RemoteCanceller, percentiles


def _run(backend: str, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
    if backend == "trio":
        return trio.run(fn, *args)
    if backend == "uvloop":
        import uvloop

        return uvloop.run(fn(*args))
    return asyncio.run(fn(*args))


def scope_enter_exit(backend: str, n: int = 20_000, repeat: int = 5) -> dict[str, float]:
    """ns to enter and leave a scope with an empty body, best of *repeat* runs of *n*."""
    ctx, cancel = gocontext.with_cancel(gocontext.background())

    async def gocontext_scope() -> None:
        for _ in range(n):
            async with gocontext.scope(ctx):
                pass

    async def anyio_scope() -> None:
        for _ in range(n):
            with anyio.CancelScope():
                pass

    async def trio_scope() -> None:
        for _ in range(n):
            with trio.CancelScope():
                pass

    async def asyncio_timeout() -> None:
        if sys.version_info >= (3, 11):
            for _ in range(n):
                async with asyncio.timeout(None):
                    pass

    kinds: dict[str, Callable[[], Awaitable[None]]] = {
        "gocontext.scope(ctx)": gocontext_scope,
        "anyio.CancelScope()": anyio_scope,
    }
    if backend == "trio":
        kinds["trio.CancelScope()"] = trio_scope
    elif sys.version_info >= (3, 11):
        kinds["asyncio.timeout(None)"] = asyncio_timeout

    async def measure(body: Callable[[], Awaitable[None]]) -> float:
        t = time.perf_counter_ns()
        await body()
        return (time.perf_counter_ns() - t) / n

    async def all_kinds() -> dict[str, float]:
        # Interleaved, so a noisy moment on the machine hits every kind alike.
        best = dict.fromkeys(kinds, float("inf"))
        for _ in range(repeat):
            for name, body in kinds.items():
                best[name] = min(best[name], await measure(body))
        return best

    try:
        return dict(_run(backend, all_kinds))
    finally:
        cancel()


def _post_to_loop(backend: str) -> Callable[[Callable[[], object]], object]:
    """Schedule a callback on the running loop: it runs once the current task has parked."""
    if backend == "trio":
        return trio.lowlevel.current_trio_token().run_sync_soon
    return asyncio.get_running_loop().call_soon


def interrupt_latency(backend: str, rounds: int = 500) -> dict[str, float]:
    """µs from cancel() in another thread to the scope body's await raising (median, p90,
    p99), and the median to the scope having raised ``Canceled`` ("scope raised")."""
    interrupted: list[float] = []
    raised: list[float] = []

    async def main(canceller: RemoteCanceller) -> None:
        post = _post_to_loop(backend)
        cancelled_exc = anyio.get_cancelled_exc_class()
        for _ in range(rounds):
            ctx, cancel = gocontext.with_cancel(gocontext.background())
            canceller.arm(cancel)
            try:
                async with gocontext.scope(ctx):
                    try:
                        post(canceller.parked)
                        await anyio.sleep(NEVER)
                    except cancelled_exc:
                        interrupted.append(canceller.since_fire_us())
                        raise
            except gocontext.Canceled:
                raised.append(canceller.since_fire_us())

    with RemoteCanceller(rounds) as canceller:
        _run(backend, main, canceller)
    figures = percentiles(interrupted)
    figures["scope raised, median"] = statistics.median(raised)
    return figures


def await_done_latency(backend: str, rounds: int = 500) -> dict[str, float]:
    """µs from cancel() in another thread to ``await ctx.done()`` returning."""
    woke: list[float] = []

    async def main(canceller: RemoteCanceller) -> None:
        post = _post_to_loop(backend)
        for _ in range(rounds):
            ctx, cancel = gocontext.with_cancel(gocontext.background())
            canceller.arm(cancel)
            post(canceller.parked)
            await ctx.done()
            woke.append(canceller.since_fire_us())

    with RemoteCanceller(rounds) as canceller:
        _run(backend, main, canceller)
    return percentiles(woke)


def fan_in_cancel(backend: str, n: int = 10_000) -> dict[str, float]:
    """ms for one cancel() in another thread, watched by *n* parked scopes, to return, and
    until every scope has raised ``Canceled``."""
    root, cancel = gocontext.with_cancel(gocontext.background())
    figures: dict[str, float] = {}

    async def main() -> None:
        entered = 0
        ended = 0
        all_in = anyio.Event()

        async def one() -> None:
            nonlocal entered, ended
            try:
                async with gocontext.scope(root):
                    entered += 1
                    if entered == n:
                        all_in.set()
                    await anyio.sleep_forever()
            except gocontext.Canceled:
                ended += 1

        def cancel_and_time() -> float:
            t0 = time.perf_counter()
            cancel()
            figures["cancel() returned"] = (time.perf_counter() - t0) * 1000
            return t0

        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(one)
            await all_in.wait()
            await anyio.wait_all_tasks_blocked()
            t0 = await anyio.to_thread.run_sync(cancel_and_time)
        figures["all scopes raised"] = (time.perf_counter() - t0) * 1000
        assert ended == n

    _run(backend, main)
    return figures


def main(quick: bool = False) -> None:
    """Print every figure, per backend, in markdown tables."""
    n, rounds = (500, 50) if quick else (20_000, 1000)
    backends = ["asyncio", "uvloop", "trio"]
    try:
        import uvloop  # noqa: F401
    except ImportError:
        backends.remove("uvloop")
    print("\n### enter + leave an empty scope on a live context  (target: within 2x of anyio)\n")
    print("| loop | scope | ns | ratio to anyio.CancelScope() |\n|---|---|---:|---:|")
    for backend in backends:
        figures = scope_enter_exit(backend, n)
        base = figures["anyio.CancelScope()"]
        for name, ns in figures.items():
            print(f"| {backend} | {name} | {ns:,.0f} | {ns / base:.2f}x |")
    print("\n### cancel() in another thread to the task  (target: median < 300 µs)\n")
    print("| loop | what | median µs | p90 µs | p99 µs |\n|---|---|---:|---:|---:|")
    for backend in backends:
        lat = interrupt_latency(backend, rounds)
        print(
            f"| {backend} | scope body's await interrupted | {lat['median']:.0f} | "
            f"{lat['p90']:.0f} | {lat['p99']:.0f} |"
        )
        print(f"| {backend} | scope raised Canceled | {lat['scope raised, median']:.0f} | | |")
        done = await_done_latency(backend, rounds)
        print(
            f"| {backend} | await ctx.done() returned | {done['median']:.0f} | "
            f"{done['p90']:.0f} | {done['p99']:.0f} |"
        )
    fan = 500 if quick else 10_000
    print(f"\n### one cancel() in another thread ends {fan:,} parked scopes\n")
    print("| loop | cancel() returned, ms | all scopes raised, ms |\n|---|---:|---:|")
    for backend in backends:
        f = fan_in_cancel(backend, fan)
        print(f"| {backend} | {f['cancel() returned']:.0f} | {f['all scopes raised']:.0f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    main(quick=parser.parse_args().quick)
