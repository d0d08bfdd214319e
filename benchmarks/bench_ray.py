"""Ray: latency from cancel() on the driver to a remote task observing ctx.err(), the cost of
passing a context to a task, and how soon a fan-out's first failure stops its siblings
(``gocontext.ray.get(..., fail_fast=True)``), on a local cluster."""

from __future__ import annotations

import asyncio
import statistics
import time

import ray

import gocontext
import gocontext.ray


@ray.remote(num_cpus=0)
class _Signal:
    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def set(self) -> None:
        self.event.set()

    async def wait(self) -> None:
        await self.event.wait()


@ray.remote(num_cpus=0)
def _poll(ctx: gocontext.Context, signal: object) -> float:
    ray.get(signal.set.remote())  # type: ignore[attr-defined]
    while ctx.err() is None:
        pass
    return time.time()


@ray.remote(num_cpus=0)
def _noop(ctx: object) -> None:
    return None


@ray.remote(num_cpus=0)
class _Gate:
    def __init__(self) -> None:
        self.n = 0

    def arrive(self) -> None:
        self.n += 1

    def count(self) -> int:
        return self.n


@ray.remote(num_cpus=0)
def _sibling(ctx: gocontext.Context, gate: object) -> float:
    ray.get(gate.arrive.remote())  # type: ignore[attr-defined]
    ctx.done().wait(60)
    return time.time()


@ray.remote(num_cpus=0)
def _failer(ctx: gocontext.Context, gate: object, siblings: int) -> None:
    while ray.get(gate.count.remote()) < siblings:  # type: ignore[attr-defined]
        time.sleep(0.001)
    raise ValueError(repr(time.time()))


def _fail_fast_latency(runs: int) -> list[float]:
    """Milliseconds from the first failure to the last of three siblings seeing ctx end."""
    lat = []
    for _ in range(runs):
        gate = _Gate.remote()  # type: ignore[attr-defined]
        with gocontext.with_cancel(gocontext.background()) as (fan, _):
            sibs = [_sibling.remote(fan, gate) for _ in range(3)]
            try:
                gocontext.ray.get(fan, [*sibs, _failer.remote(fan, gate, 3)])
            except ValueError as e:
                failed_at = float(str(e.cause).strip("'\""))  # type: ignore[attr-defined]
            lat.append((max(ray.get(sibs)) - failed_at) * 1000)
        ray.kill(gate)
    return sorted(lat)


def main(quick: bool = False) -> None:
    rounds, calls = (5, 20) if quick else (40, 300)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1"
        )
    try:
        lat = []
        for _ in range(rounds):
            signal = _Signal.remote()  # type: ignore[attr-defined]
            ctx, cancel = gocontext.with_cancel(gocontext.background())
            ref = _poll.remote(ctx, signal)
            ray.get(signal.wait.remote())
            t0 = time.time()
            cancel()
            lat.append((ray.get(ref) - t0) * 1000)
            ray.kill(signal)
        ray.get([_noop.remote(None) for _ in range(20)])  # warm the workers
        ctx, cancel = gocontext.with_timeout(gocontext.background(), 3600)
        plain, with_ctx = [], []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(calls // 5):
                ray.get(_noop.remote(None))
            plain.append((time.perf_counter() - t) / (calls // 5) * 1000)
            t = time.perf_counter()
            for _ in range(calls // 5):
                ray.get(_noop.remote(ctx))
            with_ctx.append((time.perf_counter() - t) / (calls // 5) * 1000)
        cancel()
        fail_fast = _fail_fast_latency(10 if quick else 100)
    finally:
        if started_here:
            ray.shutdown()
    lat.sort()
    print(
        "\n### Ray: cancel() on the driver to the remote task seeing ctx.err()  (target: median < 20 ms)\n"
    )
    print(
        f"median {statistics.median(lat):.1f} ms, p99 {lat[min(len(lat) - 1, int(len(lat) * 0.99))]:.1f} ms over {rounds} rounds"
    )
    p, w = statistics.median(plain), statistics.median(with_ctx)
    print("\n### Ray: passing a context to a task  (target: < 1 ms overhead per task)\n")
    print(
        f"task round trip without a context {p:.2f} ms, with one {w:.2f} ms: overhead {w - p:+.2f} ms"
    )
    print(
        "\n### Ray: first failure to the last of 3 siblings stopped, get(fail_fast=True)  (target: median < 50 ms)\n"
    )
    print(
        f"median {statistics.median(fail_fast):.1f} ms, p90 {fail_fast[int(len(fail_fast) * 0.9) - 1]:.1f} ms over {len(fail_fast)} runs"
    )


if __name__ == "__main__":
    main()
