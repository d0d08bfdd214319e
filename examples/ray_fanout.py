"""A request fans out to a tree of Ray tasks; one deadline stops every one of them.

Starts a local Ray (2 CPUs, loopback), runs, and shuts it down by itself.
Run: python examples/ray_fanout.py
"""

from __future__ import annotations

import threading
import time

import ray

import gocontext
import gocontext.ray

REQUEST_ID = gocontext.PropagatedKey("request-id")


@ray.remote(num_cpus=0)
def leaf(ctx: gocontext.Context, name: str, started: float) -> str:
    # Busy in Python: ray.cancel() could not stop this cleanly; the context can.
    loops = 0
    while ctx.err() is None:
        sum(range(1000))
        loops += 1
    return f"{name} saw {ctx.err()!r} at {time.time() - started:.2f}s ({ctx.value(REQUEST_ID)})"


@ray.remote(num_cpus=0)
def branch(ctx: gocontext.Context, name: str, started: float) -> list[str]:
    # Remote code derives from the context and passes it on: the tree goes deeper.
    refs = [leaf.remote(ctx, f"{name}.{i}", started) for i in range(2)]
    ctx.done().wait()
    return [f"{name} saw {ctx.err()!r} at {time.time() - started:.2f}s", *ray.get(refs)]


def main() -> None:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        request = gocontext.with_value(gocontext.background(), REQUEST_ID, "req-3")
        started = time.time()
        print("1. a request fans out to 2 branches x 2 leaves, deadline in 1.0s")
        with gocontext.with_timeout(request, 1.0) as (ctx, _):
            refs = [branch.remote(ctx, f"branch-{b}", started) for b in range(2)]
            for lines in ray.get(refs):  # every task stops by itself at the deadline
                for line in lines:
                    print("   " + line)

        print("2. the driver cancels; get() raises at once and cancels the tree")
        ctx, cancel = gocontext.with_cancel(request)
        ref = branch.remote(ctx, "branch-x", started)
        threading.Timer(0.3, cancel).start()
        t = time.time()
        try:
            gocontext.ray.get(ctx, ref)
        except gocontext.Canceled as e:
            print(f"   driver: get() raised {e!r} {time.time() - t:.2f}s after the start")
    finally:
        ray.shutdown()
    print("ray fanout done")


if __name__ == "__main__":
    main()
