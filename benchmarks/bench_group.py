"""Errgroups: latency from the first failure to the last sibling stopping, for a Group of threads
and a TaskGroup of tasks and threads (asyncio and trio). Median and 90th percentile over runs.

Run: python benchmarks/bench_group.py [--quick]
"""

from __future__ import annotations

import math
import statistics
import sys
import threading
import time

import anyio

import gocontext

SIBLINGS = 4


def _report(name: str, samples: list[float]) -> None:
    ms = sorted(s * 1000 for s in samples)
    p90 = ms[min(len(ms) - 1, math.ceil(0.9 * len(ms)) - 1)]
    print(f"{name:<44} median {statistics.median(ms):7.3f} ms   p90 {p90:7.3f} ms   n={len(ms)}")


def threads_once() -> float:
    """One Group: SIBLINGS threads park on g.ctx; one more fails once they all have."""
    parked = threading.Barrier(SIBLINGS + 1)
    stopped: list[float] = []
    failed_at: list[float] = []

    def sibling(ctx: gocontext.Context) -> None:
        parked.wait()
        ctx.done().wait()
        stopped.append(time.perf_counter())

    def failing(ctx: gocontext.Context) -> None:
        parked.wait()
        failed_at.append(time.perf_counter())
        raise RuntimeError("first failure")

    try:
        with gocontext.Group(gocontext.background()) as g:
            for _ in range(SIBLINGS):
                g.go(sibling)
            g.go(failing)
    except RuntimeError:
        pass
    return max(stopped) - failed_at[0]


async def tasks_once() -> float:
    """One TaskGroup: SIBLINGS-1 tasks and one thread park on g.ctx; a task fails."""
    stopped: list[float] = []
    failed_at: list[float] = []
    in_thread = threading.Event()

    async def sibling(ctx: gocontext.Context) -> None:
        try:
            await gocontext.sleep(ctx, math.inf)
        finally:
            stopped.append(time.perf_counter())

    def thread(ctx: gocontext.Context) -> None:
        in_thread.set()
        ctx.done().wait()
        stopped.append(time.perf_counter())

    async def failing(ctx: gocontext.Context) -> None:
        await anyio.to_thread.run_sync(in_thread.wait)
        await anyio.wait_all_tasks_blocked()
        failed_at.append(time.perf_counter())
        raise RuntimeError("first failure")

    try:
        async with gocontext.TaskGroup(gocontext.background()) as g:
            for _ in range(SIBLINGS - 1):
                g.go(sibling)
            g.go_thread(thread)
            g.go(failing)
    except RuntimeError:
        pass
    return max(stopped) - failed_at[0]


def main(quick: bool = False) -> None:
    runs = 10 if quick else 100
    print(f"Errgroups: first failure -> last of {SIBLINGS} siblings stopped ({runs} runs each)")
    _report("Group, threads", [threads_once() for _ in range(runs)])
    for backend in ("asyncio", "trio"):

        async def many() -> list[float]:
            return [await tasks_once() for _ in range(runs)]

        _report(f"TaskGroup ({backend}), 3 tasks + 1 thread", anyio.run(many, backend=backend))


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
