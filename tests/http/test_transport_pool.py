"""The async transport's connection pool after many requests whose contexts end mid-flight,
under asyncio and trio: nothing stays checked out, nothing stays queued, the next request works.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import anyio
import httpcore
import httpx

import gocontext
import gocontext.http

from ..conftest import NEVER
from .conftest import Server

REQUESTS = 300


def pool_of(transport: gocontext.http.AsyncTransport) -> httpcore.AsyncConnectionPool:
    inner = transport._inner
    assert isinstance(inner, httpx.AsyncHTTPTransport)
    return inner._pool


def assert_idle(pool: httpcore.AsyncConnectionPool) -> None:
    """No connection checked out and no request waiting for one."""
    busy = [c for c in pool.connections if not (c.is_idle() or c.is_closed())]
    assert busy == [], f"connections still in use: {busy}"
    assert pool._requests == [], f"requests still queued: {pool._requests}"


async def fire_requests(
    client: httpx.AsyncClient, url: str, arm: Callable[[Callable[[], None], float], object]
) -> dict[str, int]:
    """REQUESTS requests, each with a context that *arm* cancels 0 to 5 ms in."""
    outcomes: dict[str, int] = {}
    rng = random.Random(9)
    for _ in range(REQUESTS):
        ctx, cancel = gocontext.with_cancel(gocontext.background())
        waiter = arm(cancel, rng.uniform(0, 0.005))
        try:
            r = await client.get(f"{url}/info", extensions={"gocontext": ctx})
            outcome = str(r.status_code)
        except gocontext.Canceled:
            outcome = "Canceled"
        finally:
            if isinstance(waiter, threading.Thread):
                waiter.join(NEVER)
            cancel()
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


async def test_requests_cancelled_from_another_thread_leave_the_pool_idle(server: Server) -> None:
    def arm(cancel: Callable[[], None], after: float) -> threading.Thread:
        t = threading.Timer(after, cancel)
        t.start()
        return t

    transport = gocontext.http.AsyncTransport()
    async with httpx.AsyncClient(transport=transport) as client:
        with anyio.fail_after(NEVER * 6):
            outcomes = await fire_requests(client, server.url, arm)
        assert set(outcomes) <= {"200", "Canceled"}, outcomes
        assert_idle(pool_of(transport))
        with anyio.fail_after(NEVER):
            r = await client.get(f"{server.url}/info")
        assert r.status_code == 200
        assert_idle(pool_of(transport))


async def test_requests_cancelled_from_another_task_leave_the_pool_idle(server: Server) -> None:
    transport = gocontext.http.AsyncTransport()
    async with httpx.AsyncClient(transport=transport) as client, anyio.create_task_group() as tg:

        async def cancel_after(cancel: Callable[[], None], after: float) -> None:
            await anyio.sleep(after)
            cancel()

        def arm(cancel: Callable[[], None], after: float) -> None:
            tg.start_soon(cancel_after, cancel, after)

        with anyio.fail_after(NEVER * 6):
            outcomes = await fire_requests(client, server.url, arm)
        assert set(outcomes) <= {"200", "Canceled"}, outcomes
        assert_idle(pool_of(transport))
        with anyio.fail_after(NEVER):
            r = await client.get(f"{server.url}/info")
        assert r.status_code == 200
        assert_idle(pool_of(transport))


async def test_concurrent_requests_cancelled_while_queued_do_not_strand_connections(
    server: Server,
) -> None:
    """Requests queued for a small pool, cancelled 0 to 10 ms in: a request cancelled just
    after the pool made it a new connection, before it began connecting, must not leave that
    connection in the pool for ever (httpcore keeps it, neither idle nor closed nor usable, and
    a pool whose every slot is such a connection answers nothing)."""
    limits = httpx.Limits(max_connections=4)
    transport = gocontext.http.AsyncTransport(httpx.AsyncHTTPTransport(limits=limits))
    rng = random.Random(5)
    outcomes: dict[str, int] = {}
    async with httpx.AsyncClient(transport=transport, timeout=None) as client:

        async def one() -> None:
            ctx, cancel = gocontext.with_cancel(gocontext.background())
            t = threading.Timer(rng.uniform(0, 0.01), cancel)
            t.start()
            try:
                await client.get(f"{server.url}/info", extensions={"gocontext": ctx})
                outcome = "200"
            except gocontext.Canceled:
                outcome = "Canceled"
            finally:
                t.join(NEVER)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

        with anyio.fail_after(NEVER * 6):
            for _ in range(10):
                async with anyio.create_task_group() as tg:
                    for _ in range(40):
                        tg.start_soon(one)
        assert sum(outcomes.values()) == 400
        assert_idle(pool_of(transport))
        with anyio.fail_after(NEVER):
            r = await client.get(f"{server.url}/info")
        assert r.status_code == 200
