"""A service that drains on SIGTERM: stop taking requests, let the ones in flight finish (within
a drain budget), then exit cleanly. A second SIGTERM or Ctrl-C during the drain ends it at once.

Run: python examples/shutdown.py           (asyncio; sends itself a SIGTERM after 0.35s)
     python examples/shutdown.py trio
     python examples/shutdown.py asyncio --wait   (waits for a real one: kill -TERM <pid>)
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import anyio

import gocontext

START = time.monotonic()
DRAIN_BUDGET = 2.0  # seconds the requests in flight get once the signal arrives


def say(text: str) -> None:
    sys.stdout.write(f"{time.monotonic() - START:5.2f}s {text}\n")
    sys.stdout.flush()


async def handle(ctx: gocontext.Context, n: int) -> None:
    # A request: 0.3s of work, under the service's context (not the signal's), so a drain
    # lets it finish; the drain budget, if it runs out, cancels it.
    await gocontext.sleep(ctx, 0.3)
    say(f"  request {n} done")


async def serve() -> None:
    with gocontext.signal_context() as (stop_ctx, _):
        say(f"service up (pid {os.getpid()}); a request arrives every 0.1s")
        if "--wait" not in sys.argv:  # the demo sends itself the signal an operator would send,
            # once the handler is in place (before it, SIGTERM would kill the process outright)
            threading.Timer(0.35, os.kill, (os.getpid(), signal.SIGTERM)).start()
        with anyio.CancelScope() as drain:  # bounds the drain once it starts
            async with gocontext.TaskGroup(gocontext.background()) as g:
                n = 0
                try:
                    while True:  # the accept loop: ends when the signal arrives
                        n += 1
                        g.go(handle, n)
                        await gocontext.sleep(stop_ctx, 0.1)
                except gocontext.Canceled:
                    say(f"{gocontext.cause(stop_ctx)!r}: stop accepting, drain (budget 2s)")
                    drain.deadline = anyio.current_time() + DRAIN_BUDGET
        if drain.cancelled_caught:
            say("drain budget spent: the rest were cancelled")
        else:
            say("drained: every request in flight finished")
    say("shutdown done")


if __name__ == "__main__":
    backend = sys.argv[1] if len(sys.argv) > 1 else "asyncio"
    anyio.run(serve, backend=backend)
