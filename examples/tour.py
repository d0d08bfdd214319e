"""A short tour: one cancel crosses threads, asyncio and trio; a scope and a worker thread.

Run: python examples/tour.py
"""

from __future__ import annotations

import asyncio
import threading
import time

import trio

import gocontext

REQUEST_ID = gocontext.PropagatedKey("request-id")


def blocking_worker(ctx: gocontext.Context, name: str, seen: list[str]) -> None:
    # A plain thread polls or blocks on the context.
    ctx.done().wait()
    seen.append(f"{name}: {ctx.err()!r}")


async def asyncio_task(ctx: gocontext.Context, seen: list[str]) -> None:
    await ctx.done()
    seen.append(f"asyncio task: {ctx.err()!r}")


async def trio_task(ctx: gocontext.Context, seen: list[str]) -> None:
    await ctx.done()
    seen.append(f"trio task: {ctx.err()!r}")


def part_one() -> None:
    print("1. one cancel() reaches a thread, an asyncio loop and a trio run")
    request = gocontext.with_value(gocontext.background(), REQUEST_ID, "req-42")
    ctx, cancel = gocontext.with_cancel_cause(request)
    seen: list[str] = []
    workers = [
        threading.Thread(target=blocking_worker, args=(ctx, "thread", seen)),
        threading.Thread(target=asyncio.run, args=(asyncio_task(ctx, seen),)),
        threading.Thread(target=trio.run, args=(trio_task, ctx, seen)),
    ]
    for w in workers:
        w.start()
    cancel(ConnectionAbortedError("client went away"))
    for w in workers:
        w.join()
    for line in sorted(seen):
        print("   ", line)
    print("    cause:", repr(gocontext.cause(ctx)), "| request id:", ctx.value(REQUEST_ID))


def slow_lookup(ctx: gocontext.RichContext, key: str) -> str:
    # Runs in a worker thread; stops as soon as the context ends.
    for _ in range(100):
        ctx.check()
        ctx.done().wait(0.01)
    return key.upper()


async def part_two(library: str) -> None:
    print(f"2. a deadline ends an async scope and the thread it started ({library})")
    parent, cancel = gocontext.with_timeout(gocontext.background(), 0.2)
    started = time.monotonic()
    try:
        async with gocontext.scope(parent) as ctx:
            await gocontext.to_thread(ctx, slow_lookup, "user:1")
    except gocontext.DeadlineExceeded as e:
        print(f"    scope raised {e!r} after {time.monotonic() - started:.1f}s")
    finally:
        cancel()


if __name__ == "__main__":
    part_one()
    asyncio.run(part_two("asyncio"))
    trio.run(part_two, "trio")
    print("tour done")
