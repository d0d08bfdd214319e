"""One request context fans out to tasks and threads; one deadline stops them all.

Run: python examples/fanout.py          (asyncio)
     python examples/fanout.py trio     (trio)
"""

from __future__ import annotations

import sys
import time

import anyio

import gocontext

REQUEST_ID = gocontext.PropagatedKey("request-id")
START = time.monotonic()


def say(text: str) -> None:
    # One write per line, so lines from threads never interleave.
    sys.stdout.write(f"{time.monotonic() - START:5.2f}s {text}\n")


async def poll_backend(ctx: gocontext.Context, name: str) -> None:
    # An async worker: sleeps between polls, interrupted the moment ctx ends.
    try:
        while True:
            await gocontext.sleep(ctx, 0.05)
    finally:
        say(f"task {name} stopped: {ctx.err()!r}")


def crunch(ctx: gocontext.Context, name: str) -> int:
    # A blocking worker in a thread: polls ctx.err() between chunks of work.
    chunks = 0
    while ctx.err() is None:
        sum(range(10_000))
        chunks += 1
    say(f"thread {name} stopped after {chunks} chunks: {ctx.err()!r}")
    return chunks


async def handle_request(parent: gocontext.Context) -> None:
    ctx, cancel = gocontext.with_timeout(parent, 0.3)
    try:
        async with gocontext.scope(ctx) as child, anyio.create_task_group() as tg:
            say(f"request {child.value(REQUEST_ID)} fans out, deadline in 0.3s")
            tg.start_soon(poll_backend, child, "A")
            tg.start_soon(poll_backend, child, "B")
            for name in ("X", "Y"):
                tg.start_soon(gocontext.to_thread, child, crunch, name)
    except gocontext.DeadlineExceeded as e:
        say(f"request ended: {e!r}")
    finally:
        cancel()


if __name__ == "__main__":
    backend = sys.argv[1] if len(sys.argv) > 1 else "asyncio"
    request = gocontext.with_value(gocontext.background(), REQUEST_ID, "req-7")
    anyio.run(handle_request, request, backend=backend)
    print("fanout done")
