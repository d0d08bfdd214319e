"""A storm: contexts created, sent and cancelled from several threads while tasks run.

Every task must end with its own context's error, the channel must return to its baseline and
no watcher thread may be left. 1,000 contexts by default; ``GOCONTEXT_STRESS=1`` sends 5,000.
"""

from __future__ import annotations

import asyncio
import gc
import os
import queue
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import gocontext

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
import gocontext.ray  # noqa: E402
from gocontext.ray import _channel  # noqa: E402

from ..ray.conftest import init_local_ray  # noqa: E402

pytestmark = pytest.mark.slow

N = 5000 if os.environ.get("GOCONTEXT_STRESS") == "1" else 1000
BOUND = 600.0  # seconds: only turns a hang into a failure, never reached on a healthy run
SYNC_TASKS, PER_SYNC_TASK = 4, 25  # plain tasks, each receiving a list of contexts


@pytest.fixture(scope="module", autouse=True)
def ray_cluster() -> Iterator[None]:
    """One local Ray for this module (or the one the session already started)."""
    started = not ray.is_initialized()
    if started:
        init_local_ray("gocontext-stress")
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _watcher_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("gocontext-ray-watcher")]


@ray.remote(num_cpus=0, max_concurrency=10_000)
class Receiver:
    async def hold(self, ctx: gocontext.Context, i: int) -> tuple[int, str]:
        garbage: list[Any] = [[] for _ in range(20)]
        garbage.append(garbage)  # cycles: the collector runs often, as in a real service
        await asyncio.wait_for(ctx.done(), BOUND)  # type: ignore[arg-type]
        return i, type(ctx.err()).__name__

    def watcher_threads(self) -> list[str]:
        return _watcher_threads()


@ray.remote(num_cpus=0)
def hold_all(ctxs: list[gocontext.Context], first: int) -> list[tuple[int, str]]:
    out = []
    for i, ctx in enumerate(ctxs, first):
        ctx.done().wait(BOUND)
        out.append((i, type(ctx.err()).__name__))
    return out


def _until(check: Any, bound: float) -> Any:
    give_up = time.monotonic() + bound
    got = check()
    while not got and time.monotonic() < give_up:
        time.sleep(0.2)
        got = check()
    return got


def test_a_storm_of_contexts_ends_every_task_and_leaves_nothing_behind() -> None:
    rng = random.Random(7)
    receivers = [Receiver.remote() for _ in range(2)]  # type: ignore[attr-defined]
    ray.get([r.watcher_threads.remote() for r in receivers], timeout=BOUND)  # started
    retained_before = ray.get(_channel.sender_channel().retained.remote(), timeout=BOUND)
    expected: dict[int, str] = {}
    cancels: queue.SimpleQueue[Any] = queue.SimpleQueue()
    sent: list[Any] = []

    def canceller() -> None:
        while (cancel := cancels.get()) is not None:
            cancel()

    def sender(first: int, count: int) -> None:
        for i in range(first, first + count):
            if i % 10 == 9:  # a short deadline: ends by itself, anywhere on the way
                ctx, cancel = gocontext.with_timeout(gocontext.background(), rng.random() / 10)
                expected[i] = "DeadlineExceeded"
            else:
                ctx, cancel = gocontext.with_cancel(gocontext.background())
                expected[i] = "Canceled"
                if i % 10 == 3:
                    cancel()  # ended before it is sent
            sent.append(receivers[i % 2].hold.remote(ctx, i))
            if expected[i] == "Canceled":
                cancels.put(cancel)  # cancelled by another thread, racing the arrival
            del ctx  # the sender lets go at once: finalizers run all through the storm

    threads = [threading.Thread(target=canceller) for _ in range(2)]
    for t in threads:
        t.start()
    senders = [threading.Thread(target=sender, args=(k * N // 2, N // 2)) for k in range(2)]
    for t in senders:
        t.start()
    batches = []
    for b in range(SYNC_TASKS):  # plain tasks too: one thread blocked per context, in turn
        first = N + b * PER_SYNC_TASK
        pairs = [gocontext.with_cancel(gocontext.background()) for _ in range(PER_SYNC_TASK)]
        batches.append(hold_all.remote([ctx for ctx, _ in pairs], first))
        for i, (_, cancel) in enumerate(pairs, first):
            expected[i] = "Canceled"
            cancels.put(cancel)
        del pairs
    for t in senders:
        t.join(BOUND)
    for _ in threads:
        cancels.put(None)
    for t in threads:
        t.join(BOUND)
    gc.collect()

    results = dict(ray.get(sent, timeout=BOUND))
    for batch in ray.get(batches, timeout=BOUND):
        results.update(batch)
    assert results == expected  # every task ended, each with its own context's error

    sent.clear()
    batches.clear()
    gc.collect()
    channel = _channel.sender_channel()
    assert _until(lambda: ray.get(channel.size.remote(), timeout=BOUND) == 0, BOUND)
    retained = ray.get(channel.retained.remote(), timeout=BOUND)  # bounded: kept for late tasks
    assert retained <= retained_before + len(expected)
    assert _until(
        lambda: not any(ray.get([r.watcher_threads.remote() for r in receivers], timeout=BOUND)),
        BOUND,
    ), "a watcher thread was left in a receiving worker"
    assert _until(lambda: not _watcher_threads(), BOUND)
    for r in receivers:
        ray.kill(r)
