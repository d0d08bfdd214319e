"""Many concurrent requests through the transports, a random half cancelled from other threads
at random moments: every request ends as 200 or Canceled, the pool is left idle, and the next
request works. Modest by default; ``GOCONTEXT_STRESS=1`` runs it at full size."""

from __future__ import annotations

import os
import random
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import httpx
import pytest

import gocontext
import gocontext.http

from ..conftest import NEVER
from ..http.conftest import RID, Server, starlette_app

STRESS = os.environ.get("GOCONTEXT_STRESS") == "1"
REQUESTS = 2000 if STRESS else 120
CONCURRENCY = 100 if STRESS else 20


@pytest.fixture(scope="module")
def server() -> Any:
    with Server(starlette_app()) as s:
        yield s


def assert_pool_idle(pool: Any) -> None:
    busy = [c for c in pool.connections if not (c.is_idle() or c.is_closed())]
    assert busy == [], busy
    assert pool._requests == []


def plan(seed: int) -> list[tuple[str, float | None]]:
    """Per request: the path, and when (seconds in) another thread cancels it, if it does."""
    rng = random.Random(seed)
    return [
        (rng.choice(["/info", "/wait", "/stream"]), rng.uniform(0, 0.05))
        if i % 2
        else ("/info", None)
        for i in range(REQUESTS)
    ]


def arm(cancel: Any, after: float | None) -> threading.Timer | None:
    if after is None:
        return None
    t = threading.Timer(after, cancel)
    t.start()
    return t


async def test_async_load_with_random_cancels(server: Server) -> None:
    limits = httpx.Limits(max_connections=CONCURRENCY)
    transport = gocontext.http.AsyncTransport(httpx.AsyncHTTPTransport(limits=limits))
    outcomes: Counter[str] = Counter()
    timers: list[threading.Timer] = []
    async with httpx.AsyncClient(transport=transport, timeout=None) as client:
        limiter = anyio.CapacityLimiter(CONCURRENCY)

        async def one(path: str, after: float | None) -> None:
            rid = uuid.uuid4().hex
            ctx, cancel = gocontext.with_cancel(
                gocontext.with_value(gocontext.background(), RID, rid)
            )
            async with limiter:
                timer = arm(cancel, after)
                if timer is not None:
                    timers.append(timer)
                try:
                    if path == "/stream":
                        async with client.stream(
                            "GET", f"{server.url}{path}", extensions={"gocontext": ctx}
                        ) as r:
                            async for _ in r.aiter_bytes():
                                pass
                    else:
                        await client.get(f"{server.url}{path}", extensions={"gocontext": ctx})
                    outcomes["ok"] += 1
                except gocontext.Canceled:
                    outcomes["canceled"] += 1
                finally:
                    cancel()

        with anyio.fail_after(NEVER * 12):
            async with anyio.create_task_group() as tg:
                for path, after in plan(1):
                    tg.start_soon(one, path, after)
        for t in timers:
            t.join(NEVER)
        assert sum(outcomes.values()) == REQUESTS
        assert outcomes["canceled"] > 0
        assert_pool_idle(transport._inner._pool)  # type: ignore[attr-defined]
        with anyio.fail_after(NEVER):
            assert (await client.get(f"{server.url}/info")).status_code == 200


def test_sync_load_with_random_cancels(server: Server) -> None:
    limits = httpx.Limits(max_connections=CONCURRENCY)
    transport = gocontext.http.Transport(httpx.HTTPTransport(limits=limits))
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    with httpx.Client(transport=transport, timeout=None) as client:

        def one(path: str, after: float | None) -> None:
            ctx, cancel = gocontext.with_cancel(
                gocontext.with_value(gocontext.background(), RID, uuid.uuid4().hex)
            )
            timer = arm(cancel, after)
            try:
                if path == "/stream":
                    with client.stream(
                        "GET", f"{server.url}{path}", extensions={"gocontext": ctx}
                    ) as r:
                        for _ in r.iter_bytes():
                            pass
                else:
                    client.get(f"{server.url}{path}", extensions={"gocontext": ctx})
                outcome = "ok"
            except gocontext.Canceled:
                outcome = "canceled"
            finally:
                cancel()
                if timer is not None:
                    timer.join(NEVER)
            with lock:
                outcomes[outcome] += 1

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            futures = [pool.submit(one, path, after) for path, after in plan(2)]
            for f in futures:
                f.result(timeout=NEVER * 12)
        assert sum(outcomes.values()) == REQUESTS
        assert outcomes["canceled"] > 0
        assert_pool_idle(transport._inner._pool)  # type: ignore[attr-defined]
        assert client.get(f"{server.url}/info").status_code == 200
