"""The aiohttp client reviewed against hostile raw peers: a connect the peer never completes, an
upload of bytes or behind ``Expect: 100-continue`` that the peer never reads, a response
left unread when the context ends, the caller's own ``ClientTimeout`` against the context's
deadline, a ``raise_for_status`` that reads the body, the caller's own ``Grpc-Timeout`` lines,
and the task's own cancellation at the same moment as the context's while the body is read.
Raw asyncio servers on 127.0.0.1, real sessions, real threads."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

import gocontext
import gocontext.aiohttp
from gocontext import _context

from ..conftest import NEVER, FakeClock
from .test_aiohttp_client_faults import cancelling, guard


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiohttp runs on asyncio only


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Peer:
    """A raw HTTP peer on 127.0.0.1 running *handler* per connection, on the test's loop.
    ``headers_in`` (a threading.Event, for a cancelling thread) is set once a request's head
    has arrived; ``gone`` once the client's side of a connection has closed."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.headers_in = threading.Event()
        self.gone = asyncio.Event()
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.connections = 0

    async def read_head(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        self.headers_in.set()
        return head

    async def wait_gone(self, reader: asyncio.StreamReader) -> None:
        """Reads (and drops) whatever comes until the client's side closes."""
        with contextlib.suppress(ConnectionError):
            while await reader.read(1 << 20):
                pass
        self.gone.set()

    async def __aenter__(self) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            finally:
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), NEVER)


def in_thread(fn: Callable[[], object], after: threading.Event) -> threading.Thread:
    """A started thread that calls *fn* once *after* is set."""

    def run() -> None:
        assert after.wait(NEVER)
        fn()

    t = threading.Thread(target=run)
    t.start()
    return t


# -- connecting: a peer whose accept queue is full never completes the handshake ------------


async def test_a_cancel_from_a_thread_while_the_tcp_connect_hangs_raises_canceled() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        # Fill the accept queue: a further SYN is dropped, the connect hangs.
        for _ in range(8):
            f = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            f.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                f.connect(("127.0.0.1", port))
            fillers.append(f)
        starting = threading.Event()

        async def on_create_start(*_: object) -> None:
            starting.set()

        mine = aiohttp.TraceConfig()
        mine.on_connection_create_start.append(on_create_start)
        ctx, cancel = gocontext.with_cancel(gocontext.background())
        t = in_thread(cancel, starting)
        async with gocontext.aiohttp.client_session(trace_configs=[mine]) as s:
            with pytest.raises(gocontext.Canceled):
                async with guard(NEVER):
                    await s.get(f"http://127.0.0.1:{port}/", trace_request_ctx=ctx)
            assert not s.connector._acquired  # type: ignore[union-attr]
        await asyncio.to_thread(t.join, NEVER)
        assert cancelling() == 0
        assert _context.watcher_count(ctx) == 0
    finally:
        for f in fillers:
            f.close()
        listener.close()


# -- sending: uploads the peer never reads --------------------------------------------------


@pytest.mark.parametrize("expect100", [False, True])
async def test_a_cancel_while_a_bytes_upload_is_stuck_drops_the_connection(
    expect100: bool,
) -> None:
    """The peer reads the head, then neither reads the body nor answers (nor sends 100
    Continue): the cancel raises Canceled and the peer sees the connection go at once."""
    peer: Peer

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await peer.read_head(reader)
        await peer.gone.wait()  # (set by the test once the client is gone, below)

    peer = Peer(handler)
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    t = in_thread(cancel, peer.headers_in)
    async with peer as url, gocontext.aiohttp.client_session() as s:
        with pytest.raises(gocontext.Canceled):
            async with guard(NEVER):
                await s.post(
                    url,
                    data=io.BytesIO(b"u" * (64 << 20)),
                    expect100=expect100,
                    trace_request_ctx=ctx,
                )
        await asyncio.to_thread(t.join, NEVER)
        assert not s.connector._acquired  # type: ignore[union-attr]
        assert cancelling() == 0
        peer.gone.set()


# -- a response left unread when the context ends ------------------------------------------


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
async def test_a_cancel_after_the_headers_before_any_read_aborts_the_body(framing: str) -> None:
    peer: Peer
    head = {
        "length": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
        "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
        "close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n0123456789",
    }[framing]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await peer.read_head(reader)
        writer.write(head)
        await writer.drain()
        await peer.wait_gone(reader)

    peer = Peer(handler)
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    async with peer as url, gocontext.aiohttp.client_session() as s:
        async with s.get(url, trace_request_ctx=ctx) as r:
            assert r.status == 200
            t = threading.Thread(target=cancel)
            t.start()
            await asyncio.to_thread(t.join, NEVER)
            async with guard(NEVER):
                await peer.gone.wait()  # the connection is dropped, unread
            with pytest.raises(gocontext.Canceled):
                async with guard(NEVER):
                    await r.read()
        assert not s.connector._acquired  # type: ignore[union-attr]
    assert _context.watcher_count(ctx) == 0
    assert cancelling() == 0


# -- the caller's own ClientTimeout and the context's deadline -----------------------------


async def test_the_callers_sock_read_timeout_on_a_live_context_stays_aiohttps() -> None:
    peer: Peer

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await peer.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()
        await peer.wait_gone(reader)

    peer = Peer(handler)
    with gocontext.with_timeout(gocontext.background(), 10 * NEVER) as (ctx, _):
        async with peer as url, gocontext.aiohttp.client_session() as s:
            async with s.get(
                url, trace_request_ctx=ctx, timeout=aiohttp.ClientTimeout(sock_read=0.05)
            ) as r:
                with pytest.raises(aiohttp.ServerTimeoutError) as caught:
                    async with guard(NEVER):
                        await r.read()
            assert not isinstance(caught.value, gocontext.ContextError)
            assert ctx.err() is None
            assert not s.connector._acquired  # type: ignore[union-attr]
    assert cancelling() == 0


@pytest.mark.parametrize("phase", ["headers", "body"])
async def test_the_contexts_deadline_inside_the_callers_timeout_is_deadline_exceeded(
    fake_clock: FakeClock, phase: str
) -> None:
    peer: Peer
    sent_head = threading.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if phase == "body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            await writer.drain()
        sent_head.set()
        await peer.wait_gone(reader)

    peer = Peer(handler)
    ctx, cancel = gocontext.with_timeout(gocontext.background(), 5)
    t = in_thread(lambda: fake_clock.advance(6), sent_head)
    timeout = aiohttp.ClientTimeout(total=10 * NEVER, sock_read=10 * NEVER)
    async with peer as url, gocontext.aiohttp.client_session(timeout=timeout) as s:
        with pytest.raises(gocontext.DeadlineExceeded):
            async with guard(NEVER):
                async with s.get(url, trace_request_ctx=ctx) as r:
                    await r.read()
        assert not s.connector._acquired  # type: ignore[union-attr]
    await asyncio.to_thread(t.join, NEVER)
    assert cancelling() == 0
    cancel()


# -- raise_for_status that reads the body ---------------------------------------------------


async def test_a_cancel_while_raise_for_status_reads_the_body_raises_canceled() -> None:
    peer: Peer

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 500 Oops\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()
        await peer.wait_gone(reader)

    peer = Peer(handler)
    reading = threading.Event()

    async def check(resp: aiohttp.ClientResponse) -> None:
        reading.set()
        await resp.read()  # stalls: 90 bytes never come

    ctx, cancel = gocontext.with_cancel(gocontext.background())
    t = in_thread(cancel, reading)
    async with peer as url, gocontext.aiohttp.client_session(raise_for_status=check) as s:
        with pytest.raises(gocontext.Canceled):
            async with guard(NEVER):
                await s.get(url, trace_request_ctx=ctx)
        assert not s.connector._acquired  # type: ignore[union-attr]
    await asyncio.to_thread(t.join, NEVER)
    assert cancelling() == 0


# -- the caller's own Grpc-Timeout lines ----------------------------------------------------


@pytest.mark.parametrize("client", ["client_session", "trace_config"])
@pytest.mark.parametrize("deadline", [True, False])
async def test_the_callers_own_grpc_timeout_lines(client: str, deadline: bool) -> None:
    peer: Peer

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await peer.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    peer = Peer(handler)
    if client == "trace_config":
        made = aiohttp.ClientSession(trace_configs=[gocontext.aiohttp.trace_config()])
    else:
        made = gocontext.aiohttp.client_session()
    ctx, cancel = (
        gocontext.with_timeout(gocontext.background(), 30)
        if deadline
        else gocontext.with_cancel(gocontext.background())
    )
    async with peer as url, made as s:
        async with s.get(
            url,
            trace_request_ctx=ctx,
            headers=[("Grpc-Timeout", "1S"), ("Grpc-Timeout", "2S")],
        ) as r:
            assert await r.read() == b"ok"
    lines = [
        line.split(b":", 1)[1].strip()
        for line in peer.heads[0].split(b"\r\n")
        if line.lower().startswith(b"grpc-timeout:")
    ]
    if deadline:
        assert len(lines) == 1 and lines[0] not in (b"1S", b"2S")
    else:
        assert lines == [b"1S", b"2S"]
    cancel()


# -- the task's own cancellation with the context's, while the body is read -----------------


@pytest.mark.parametrize("order", ["task-first", "context-first"])
async def test_a_task_cancel_and_a_context_cancel_together_while_reading_the_body(
    order: str,
) -> None:
    peer: Peer
    sent = threading.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()
        await peer.wait_gone(reader)

    peer = Peer(handler)
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    loop = asyncio.get_running_loop()
    async with peer as url, gocontext.aiohttp.client_session() as s:

        async def call() -> bytes:
            async with s.get(url, trace_request_ctx=ctx) as r:
                assert await r.content.readexactly(10) == b"0123456789"
                sent.set()
                return await r.read()

        task = asyncio.ensure_future(call())

        def both() -> None:
            if order == "task-first":
                task.cancel()
                cancel()
            else:
                cancel()
                task.cancel()

        t = in_thread(lambda: loop.call_soon_threadsafe(both), sent)
        await asyncio.wait({task}, timeout=NEVER)
        await asyncio.to_thread(t.join, NEVER)
        assert task.cancelled(), f"the task ended with {task.exception()!r}"
        assert not s.connector._acquired  # type: ignore[union-attr]
    assert _context.watcher_count(ctx) == 0


# -- a crowd queued on one connection, half cancelled: each task's own count ---------------


async def test_a_queue_on_one_connection_half_cancelled_leaves_every_tasks_count_alone() -> None:
    """Forty requests queue for one pooled connection to a peer that answers each only once
    the test lets it; half their contexts end from a thread while most are still queued or
    waiting for headers. Every task sees its answer or Canceled, and afterwards its own
    cancelling() count is 0 (a context's cancel taken back, never left behind), and no
    connection or waiter is left behind."""
    go = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await go.wait()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()

    peer = Peer(handler)
    n = 40
    contexts = [gocontext.with_cancel(gocontext.background()) for _ in range(n)]
    async with (
        peer as url,
        gocontext.aiohttp.client_session(connector=aiohttp.TCPConnector(limit=1)) as s,
    ):

        async def one(ctx: gocontext.Context) -> tuple[str, int]:
            try:
                async with s.get(url, trace_request_ctx=ctx) as r:
                    outcome = (await r.text()) if r.status == 200 else str(r.status)
            except gocontext.Canceled:
                outcome = "canceled"
            return outcome, cancelling()

        tasks = [asyncio.ensure_future(one(ctx)) for ctx, _ in contexts]
        connector: Any = s.connector
        async with guard(NEVER):
            while sum(len(w) for w in connector._waiters.values()) < n - 1:
                await asyncio.sleep(0)  # all but one queued for the connection

        def cancel_half() -> None:
            for _, cancel in contexts[::2]:
                cancel()

        t = threading.Thread(target=cancel_half)
        t.start()
        await asyncio.to_thread(t.join, NEVER)
        go.set()
        async with guard(4 * NEVER):
            results = await asyncio.gather(*tasks)
        assert sorted({o for o, _ in results}) <= ["canceled", "ok"]
        assert [o for o, _ in results[1::2]] == ["ok"] * (n // 2)
        assert [c for _, c in results] == [0] * n
        assert not connector._acquired
        assert not any(connector._waiters.values())
    for ctx, cancel in contexts:
        assert _context.watcher_count(ctx) == 0
        cancel()


# -- an upload still going out after the headers came back ----------------------------------


async def test_a_cancel_while_reading_an_early_answer_to_a_stuck_upload_drops_the_connection() -> (
    None
):
    """The peer answers as soon as the head is in (part of a body, as a streaming echo or an
    early error does) and never reads the upload: the headers are in while the upload is stuck
    going out. The context's end raises Canceled from the body and drops the connection at
    once: a close would wait for the unsent upload to go out, which never happens."""
    peer: Peer
    stop = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await peer.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()
        await stop.wait()  # (never reads the upload)

    peer = Peer(handler)
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    try:
        async with peer as url, gocontext.aiohttp.client_session() as s:
            async with s.post(url, data=io.BytesIO(b"u" * (64 << 20)), trace_request_ctx=ctx) as r:
                assert await r.content.readexactly(10) == b"0123456789"
                assert r.connection is not None
                assert r.connection.transport is not None
                transport = r.connection.transport
                sock = transport.get_extra_info("socket")
                async with guard(NEVER):
                    while transport.get_write_buffer_size() == 0:  # the upload is stuck
                        await asyncio.sleep(0)
                t = threading.Thread(target=cancel)
                t.start()
                with pytest.raises(gocontext.Canceled):
                    async with guard(NEVER):
                        await r.read()
                await asyncio.to_thread(t.join, NEVER)
            assert not s.connector._acquired  # type: ignore[union-attr]
            for _ in range(100):  # (the loop closes an aborted socket a step later)
                if sock.fileno() == -1:
                    break
                await asyncio.sleep(0)
            assert sock.fileno() == -1, "the connection of a cancelled upload stayed open"
    finally:
        stop.set()
    assert cancelling() == 0
