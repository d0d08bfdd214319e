"""Cancels at every stage of a request (connecting, sending the body, waiting for the headers,
streaming the body), from another thread and from another task, under asyncio and trio and
with the blocking transport; after each batch the pool is idle and the next request works."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpcore
import httpx
import pytest

import gocontext
import gocontext.http

from ..conftest import NEVER, OtherContext
from ._slownet import PEER, SlowNet
from .conftest import BOARD, RID, Server
from .test_transport_connect import slownet  # noqa: F401 - the fixture

STAGES = ["/wait", "/stream", "/upload"]  # waiting for headers, streaming the body, sending it
BATCH = 4


def request_ctx() -> tuple[gocontext.Context, Callable[[], None], str]:
    rid = uuid.uuid4().hex
    ctx, cancel = gocontext.with_cancel(gocontext.with_value(gocontext.background(), RID, rid))
    return ctx, cancel, rid


def assert_pool_idle(pool: Any) -> None:
    busy = [c for c in pool.connections if not (c.is_idle() or c.is_closed())]
    assert busy == [], busy
    assert pool._requests == []


async def async_stage(client: httpx.AsyncClient, url: str, ctx: gocontext.Context) -> None:
    ext = {"gocontext": ctx}
    if url.endswith("/stream"):
        async with client.stream("GET", url, extensions=ext) as r:
            async for _ in r.aiter_bytes():
                pass
    elif url.endswith("/upload"):
        await client.post(url, content=b"x" * (8 << 20), extensions=ext)
    else:
        await client.get(url, extensions=ext)


def sync_stage(client: httpx.Client, url: str, ctx: gocontext.Context) -> None:
    ext = {"gocontext": ctx}
    if url.endswith("/stream"):
        with client.stream("GET", url, extensions=ext) as r:
            for _ in r.iter_bytes():
                pass
    elif url.endswith("/upload"):
        client.post(url, content=b"x" * (64 << 20), extensions=ext)
    else:
        client.get(url, extensions=ext)


@pytest.mark.parametrize("path", STAGES)
async def test_async_cancel_from_another_task_at_every_stage(server: Server, path: str) -> None:
    transport = gocontext.http.AsyncTransport()
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(BATCH):
            ctx, cancel, rid = request_ctx()

            async def cancel_once_entered(rid: str = rid, cancel: Any = cancel) -> None:
                entered = BOARD.event(BOARD.entered, rid)
                assert await anyio.to_thread.run_sync(entered.wait, NEVER)
                cancel()  # in this task, on the request's own loop

            with anyio.fail_after(NEVER):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(cancel_once_entered)
                    with pytest.raises(gocontext.Canceled):
                        await async_stage(client, f"{server.url}{path}", ctx)
            if path == "/wait":  # the server's context ended too
                assert BOARD.event(BOARD.ended, rid).wait(NEVER)
        assert_pool_idle(transport._inner._pool)  # type: ignore[attr-defined]
        assert (await client.get(f"{server.url}/info")).status_code == 200


@pytest.mark.parametrize("path", STAGES)
def test_sync_cancel_from_another_thread_at_every_stage(server: Server, path: str) -> None:
    transport = gocontext.http.Transport()
    with httpx.Client(transport=transport) as client:
        for _ in range(BATCH):
            ctx, cancel, rid = request_ctx()

            def cancel_once_entered(rid: str = rid, cancel: Any = cancel) -> None:
                assert BOARD.event(BOARD.entered, rid).wait(NEVER)
                cancel()

            t = threading.Thread(target=cancel_once_entered)
            t.start()
            with pytest.raises(gocontext.Canceled):
                sync_stage(client, f"{server.url}{path}", ctx)
            t.join(NEVER)
            if path == "/wait":  # the server's context ended too
                assert BOARD.event(BOARD.ended, rid).wait(NEVER)
        assert_pool_idle(transport._inner._pool)  # type: ignore[attr-defined]
        assert client.get(f"{server.url}/info").status_code == 200


# --------------------------------------------------------------------------------------------
# Connecting: a peer that never answers the SYN, in a network namespace (see _slownet)


def run_in_namespace(net: SlowNet, fn: Callable[[], Awaitable[None]], backend: str) -> None:
    out: list[BaseException] = []

    def run() -> None:
        try:
            net.enter()
            anyio.run(fn, backend=backend)
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(NEVER * 3)
    assert not t.is_alive(), "the request never returned"
    if out:
        raise out[0]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("canceller", ["thread", "task"])
def test_async_cancel_while_connecting(
    slownet: tuple[SlowNet, int],  # noqa: F811 - the fixture
    backend: str,
    canceller: str,
) -> None:
    net, port = slownet
    net.drop_syn = True
    outcomes: list[str] = []

    async def main() -> None:
        transport = gocontext.http.AsyncTransport()
        async with httpx.AsyncClient(transport=transport, timeout=None) as client:
            for _ in range(BATCH):
                net.syn_seen.clear()
                ctx, cancel = gocontext.with_cancel(gocontext.background())

                async def cancel_from_task(cancel: Any = cancel) -> None:
                    assert await anyio.to_thread.run_sync(net.syn_seen.wait, NEVER)
                    cancel()

                def cancel_from_thread(cancel: Any = cancel) -> None:
                    assert net.syn_seen.wait(NEVER)
                    cancel()

                t = threading.Thread(target=cancel_from_thread)
                async with anyio.create_task_group() as tg:
                    if canceller == "task":
                        tg.start_soon(cancel_from_task)
                    else:
                        t.start()
                    try:
                        await client.get(f"http://{PEER}:{port}/", extensions={"gocontext": ctx})
                    except gocontext.Canceled:
                        outcomes.append("Canceled")
                if t.is_alive():
                    t.join(NEVER)
            assert_pool_idle(transport._inner._pool)  # type: ignore[attr-defined]
            net.drop_syn = False
            r = await client.get(f"http://{PEER}:{port}/")
            assert r.status_code == 200

    run_in_namespace(net, main, backend)
    assert outcomes == ["Canceled"] * BATCH


def test_sync_cancel_while_connecting_leaves_the_pool_idle(
    slownet: tuple[SlowNet, int],  # noqa: F811 - the fixture
) -> None:
    net, port = slownet
    net.drop_syn = True
    outcomes: list[str] = []

    async def main() -> None:  # (run by anyio only to share run_in_namespace)
        transport = gocontext.http.Transport()
        with httpx.Client(transport=transport, timeout=None) as client:
            for _ in range(BATCH):
                net.syn_seen.clear()
                ctx, cancel = gocontext.with_cancel(gocontext.background())

                def cancel_from_thread(cancel: Any = cancel) -> None:
                    assert net.syn_seen.wait(NEVER)
                    cancel()

                t = threading.Thread(target=cancel_from_thread)
                t.start()
                try:
                    client.get(f"http://{PEER}:{port}/", extensions={"gocontext": ctx})
                except gocontext.Canceled:
                    outcomes.append("Canceled")
                t.join(NEVER)
            pool = transport._inner._pool  # type: ignore[attr-defined]
            assert isinstance(pool, httpcore.ConnectionPool)
            assert_pool_idle(pool)
            net.drop_syn = False
            assert client.get(f"http://{PEER}:{port}/").status_code == 200

    run_in_namespace(net, main, "asyncio")
    assert outcomes == ["Canceled"] * BATCH


async def test_async_a_foreign_context_cancelled_from_another_thread(server: Server) -> None:
    ctx, cancel, rid = request_ctx()
    foreign = OtherContext(ctx)

    def cancel_once_entered() -> None:
        assert BOARD.event(BOARD.entered, rid).wait(NEVER)
        cancel()

    t = threading.Thread(target=cancel_once_entered)
    t.start()
    async with httpx.AsyncClient(transport=gocontext.http.AsyncTransport()) as client:
        with anyio.fail_after(NEVER), pytest.raises(gocontext.Canceled):
            await client.get(f"{server.url}/wait", extensions={"gocontext": foreign})
        t.join(NEVER)
        assert (await client.get(f"{server.url}/info")).status_code == 200


def test_sync_a_foreign_context_cancelled_from_another_thread(server: Server) -> None:
    ctx, cancel, rid = request_ctx()
    foreign = OtherContext(ctx)

    def cancel_once_entered() -> None:
        assert BOARD.event(BOARD.entered, rid).wait(NEVER)
        cancel()

    t = threading.Thread(target=cancel_once_entered)
    t.start()
    with httpx.Client(transport=gocontext.http.Transport()) as client:
        with pytest.raises(gocontext.Canceled):
            client.get(f"{server.url}/wait", extensions={"gocontext": foreign})
        t.join(NEVER)
        assert client.get(f"{server.url}/info").status_code == 200


@pytest.mark.parametrize("timeout", [None, NEVER * 3], ids=["no-timeout", "timeout"])
def test_sync_cancel_of_a_request_queued_for_a_full_pool(
    server: Server, timeout: float | None
) -> None:
    """A request waiting for a free connection (all taken by requests that run on) is
    cancelled from another thread: it raises Canceled at once, not when a connection frees up
    or the pool's timeout passes (with no timeout: never)."""
    transport = gocontext.http.Transport(
        httpx.HTTPTransport(limits=httpx.Limits(max_connections=1))
    )
    with httpx.Client(transport=transport, timeout=timeout) as client:
        holder_ctx, release_holder, holder_rid = request_ctx()

        def hold() -> None:
            with pytest.raises(gocontext.Canceled):
                sync_stage(client, f"{server.url}/wait", holder_ctx)

        holder = threading.Thread(target=hold)
        holder.start()
        assert BOARD.event(BOARD.entered, holder_rid).wait(NEVER)  # the one connection is taken
        pool = transport._inner._pool  # type: ignore[attr-defined]
        ctx, cancel = gocontext.with_cancel(gocontext.background())
        queued = threading.Event()

        def cancel_once_queued() -> None:
            while not any(r.connection is None for r in list(pool._requests)):
                if queued.wait(0.005):  # (polls the pool: httpcore has no queue event)
                    return
            cancel()

        canceller = threading.Thread(target=cancel_once_queued)
        canceller.start()
        out: list[BaseException] = []

        def queued_request() -> None:
            try:
                client.get(f"{server.url}/info", extensions={"gocontext": ctx})
            except BaseException as e:
                out.append(e)

        waiter = threading.Thread(target=queued_request)
        waiter.start()
        waiter.join(NEVER)
        finished = not waiter.is_alive()
        queued.set()
        release_holder()  # frees the connection: a request still queued now ends too
        waiter.join(NEVER)
        canceller.join(NEVER)
        holder.join(NEVER)
        assert finished, "the cancelled request stayed queued until a connection freed up"
        assert len(out) == 1 and isinstance(out[0], gocontext.Canceled), out
        assert_pool_idle(pool)
        assert client.get(f"{server.url}/info").status_code == 200
