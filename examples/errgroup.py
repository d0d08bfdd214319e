"""Go's errgroup in threads, in asyncio or trio tasks, and over Ray tasks: the first failure
stops the rest, and it is the exception you get back.

Run: python examples/errgroup.py          (asyncio; Ray part if ray is installed)
     python examples/errgroup.py trio     (trio)
"""

from __future__ import annotations

import sys
import time

import anyio

import gocontext

START = time.monotonic()


def say(text: str) -> None:
    # One write per line, so lines from threads never interleave.
    sys.stdout.write(f"{time.monotonic() - START:5.2f}s {text}\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------
# 1. Threads: gocontext.Group


def fetch_shard(ctx: gocontext.RichContext, n: int) -> int:
    # A blocking worker: does its work in chunks, checking the context between them.
    chunks = 0
    try:
        while chunks < 20:
            if n == 3 and chunks == 5:
                raise LookupError(f"shard {n} is missing")
            ctx.done().wait(0.01)  # stands for a chunk of blocking work
            ctx.check()
            chunks += 1
        return chunks
    finally:
        say(f"  thread shard {n} stopped after {chunks} chunks: {ctx.err()!r}")


def threads() -> None:
    say("1. threads: 6 shards, 3 at a time; shard 3 fails")
    try:
        with gocontext.Group(gocontext.background(), limit=3) as g:
            for n in range(6):
                g.go(fetch_shard, n)  # waits for a free slot; refuses once the group failed
    except LookupError as e:
        say(f"  group raised {e!r}; g.ctx's cause is it: {gocontext.cause(g.ctx) is e}")


# --------------------------------------------------------------------------------------------
# 2. Tasks and threads together: gocontext.TaskGroup


async def slow_backend(ctx: gocontext.Context, name: str) -> None:
    try:
        await gocontext.sleep(ctx, 30)  # a slow backend; the group's failure ends it
    finally:
        # The group's context is already cancelled here, with the failure as its cause.
        say(f"  task {name} stopped; cause: {gocontext.cause(ctx)!r}")


async def failing_backend(ctx: gocontext.Context, name: str) -> None:
    await gocontext.sleep(ctx, 0.1)
    raise ConnectionError(f"backend {name} refused")


def resize_images(ctx: gocontext.Context) -> None:
    done = 0
    while ctx.err() is None:
        ctx.done().wait(0.01)  # stands for a chunk of CPU work
        done += 1
    say(f"  thread resize stopped after {done} chunks: {ctx.err()!r}")


async def tasks() -> None:
    say("2. tasks and a thread in one group; backend B fails")
    try:
        async with gocontext.TaskGroup(gocontext.background()) as g:
            g.go(slow_backend, "A")
            g.go(failing_backend, "B")
            g.go_thread(resize_images)
    except ConnectionError as e:  # the failure itself, never an ExceptionGroup
        say(f"  group raised {e!r}")


# --------------------------------------------------------------------------------------------
# 3. Ray tasks: a Group of threads, each waiting on one task with gocontext.ray.get


def ray_part() -> None:
    try:
        import ray

        import gocontext.ray
    except ImportError:
        say("3. (ray is not installed: skipped)")
        return

    @ray.remote(num_cpus=0)
    def shard(ctx: gocontext.Context, n: int) -> str:
        if n == 1:
            time.sleep(0.2)
            raise ValueError(f"ray shard {n} has bad data")
        while ctx.err() is None:  # stops as soon as the group's context is cancelled
            ctx.done().wait(0.05)
        return f"ray shard {n} stopped: {ctx.err()!r}"

    def wait_for(ctx: gocontext.Context, ref: ray.ObjectRef[str], n: int) -> None:
        try:
            # Cancels the Ray task if ctx ends first; the task may also see the cancel
            # through its own context, stop, and return first.
            say(f"  {gocontext.ray.get(ctx, ref)}")
        except gocontext.Canceled:
            say(f"  ray shard {n}: get() raised Canceled and cancelled the task")

    say("3. Ray: 3 tasks; shard 1 fails")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        try:
            with gocontext.Group(gocontext.background()) as g:
                for n in range(3):
                    g.go(wait_for, shard.remote(g.ctx, n), n)
        except ValueError as e:
            say(f"  group raised {type(e).__name__}: {str(e).splitlines()[-1]}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    backend = sys.argv[1] if len(sys.argv) > 1 else "asyncio"
    threads()
    anyio.run(tasks, backend=backend)
    ray_part()
    say("errgroup done")
