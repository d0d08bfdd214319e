"""A response body that the connection's close delimits (no length, no chunks), its context
ended mid-body: the request raises the context's error, never hands over a truncated body as a
whole one, and the pool stays healthy.

The blocking transport aborts a request by shutting its socket down, which reads as the
connection's close: for such a body, its end. The peers here are raw sockets on 127.0.0.1 that
send a part of a body and then nothing until the test ends.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import anyio
import httpx
import pytest

import gocontext
import gocontext.http

from ..conftest import NEVER
from .test_transport_cancel import assert_pool_idle

HEAD = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"  # no length: the close ends the body
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
SIZES = [0, 1000]  # bytes of the body sent before the peer goes quiet


class Peer:
    """An HTTP server of raw sockets on 127.0.0.1, one thread per connection.

    ``/ok`` answers at once (the connection stays open for more); ``/part/<n>`` sends the head
    of a body that the close delimits and *n* bytes of it, sets ``sent``, and then sends
    nothing more: it closes the connection, the body's end, once ``end`` is set (at the latest
    when the peer is closed).
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.sent = threading.Event()
        self.end = threading.Event()
        self._closing = False
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            conn, _ = self._listener.accept()
            with self._lock:
                self._conns.append(conn)
                if self._closing:
                    return
                t = threading.Thread(target=self._serve, args=(conn,))
                self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        data = b""
        try:
            while True:
                while b"\r\n\r\n" not in data:
                    more = conn.recv(65536)
                    if not more:
                        return
                    data += more
                head, data = data.split(b"\r\n\r\n", 1)
                path = head.split(b" ", 2)[1]
                if path == b"/ok":
                    conn.sendall(OK)
                    continue
                size = int(path.rsplit(b"/", 1)[1])
                conn.sendall(HEAD + b"A" * size)
                self.sent.set()
                self.end.wait(NEVER * 3)
                return
        except OSError:  # the client's abort, or the peer closing
            return
        finally:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            conns = list(self._conns)
        self.end.set()
        for conn in conns:  # wakes the threads that wait for a request
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        socket.create_connection(self._listener.getsockname()).close()  # wakes accept()
        for t in self._threads:
            t.join(NEVER)
        self._listener.close()
        for conn in self._conns:
            conn.close()


@pytest.fixture
def peer() -> Iterator[Peer]:
    p = Peer()
    try:
        yield p
    finally:
        p.close()


def cancel_when(event: threading.Event, cancel: Callable[[], None]) -> threading.Thread:
    """A thread that cancels once *event* is set (and fails the test's join if it never is)."""

    def run() -> None:
        if event.wait(NEVER):
            cancel()

    t = threading.Thread(target=run)
    t.start()
    return t


def in_another_thread(fn: Callable[[], None]) -> None:
    t = threading.Thread(target=fn)
    t.start()
    t.join(NEVER)
    assert not t.is_alive()


# --------------------------------------------------------------------------------------------
# blocking


@pytest.mark.parametrize("size", SIZES)
def test_sync_cancel_between_reads_of_a_body_the_close_delimits(peer: Peer, size: int) -> None:
    """Cancelled once the headers (and the first chunk, if any) are in: the next read finds
    the socket shut down, which is no end of the body."""
    transport = gocontext.http.Transport()
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    with httpx.Client(transport=transport, timeout=NEVER) as client:
        with client.stream("GET", f"{peer.url}/part/{size}", extensions={"gocontext": ctx}) as r:
            assert r.status_code == 200
            chunks = r.iter_raw()
            if size:
                assert next(chunks)
            in_another_thread(cancel)
            with pytest.raises(gocontext.Canceled):
                for _ in chunks:
                    pass
        assert_pool_idle(transport._inner._pool)  # type: ignore[attr-defined]
        assert client.get(f"{peer.url}/ok").text == "ok"


@pytest.mark.parametrize("size", SIZES)
def test_sync_cancel_while_reading_a_body_the_close_delimits(peer: Peer, size: int) -> None:
    """Cancelled from another thread once the peer has sent what it will: the request is
    reading the body, or about to."""
    transport = gocontext.http.Transport()
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    with httpx.Client(transport=transport, timeout=NEVER) as client:
        canceller = cancel_when(peer.sent, cancel)
        with pytest.raises(gocontext.Canceled):
            client.get(f"{peer.url}/part/{size}", extensions={"gocontext": ctx})
        canceller.join(NEVER)
        assert_pool_idle(transport._inner._pool)  # type: ignore[attr-defined]
        assert client.get(f"{peer.url}/ok").text == "ok"


def test_sync_deadline_while_reading_a_body_the_close_delimits(peer: Peer) -> None:
    transport = gocontext.http.Transport()
    ctx, cancel = gocontext.with_timeout(gocontext.background(), 0.2)
    with httpx.Client(transport=transport, timeout=NEVER) as client:
        with pytest.raises(gocontext.DeadlineExceeded):
            client.get(f"{peer.url}/part/4", extensions={"gocontext": ctx})
        cancel()
        assert_pool_idle(transport._inner._pool)  # type: ignore[attr-defined]
        assert client.get(f"{peer.url}/ok").text == "ok"


def test_sync_a_body_the_close_delimits_still_ends_cleanly(peer: Peer) -> None:
    """The peer's own close ends the body: a context that is still live sees it whole."""
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    with httpx.Client(transport=gocontext.http.Transport(), timeout=NEVER) as client:
        with client.stream("GET", f"{peer.url}/part/1000", extensions={"gocontext": ctx}) as r:
            chunks = r.iter_raw()
            got = next(chunks)
            while len(got) < 1000:
                got += next(chunks)
            peer.end.set()  # the peer closes the connection: the body's real end
            got += b"".join(chunks)
        assert got == b"A" * 1000
        cancel()


# --------------------------------------------------------------------------------------------
# async (asyncio and trio)


@pytest.mark.parametrize("size", SIZES)
async def test_async_cancel_between_reads_of_a_body_the_close_delimits(
    peer: Peer, size: int
) -> None:
    transport = gocontext.http.AsyncTransport()
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    async with httpx.AsyncClient(transport=transport, timeout=NEVER) as client:
        with anyio.fail_after(NEVER):
            url = f"{peer.url}/part/{size}"
            async with client.stream("GET", url, extensions={"gocontext": ctx}) as r:
                chunks = r.aiter_raw()
                if size:
                    assert await chunks.__anext__()
                await anyio.to_thread.run_sync(cancel)
                with pytest.raises(gocontext.Canceled):
                    async for _ in chunks:
                        pass
        assert_pool_idle(transport._inner._pool)  # type: ignore[attr-defined]
        assert (await client.get(f"{peer.url}/ok")).text == "ok"


@pytest.mark.parametrize("size", SIZES)
async def test_async_cancel_while_reading_a_body_the_close_delimits(peer: Peer, size: int) -> None:
    transport = gocontext.http.AsyncTransport()
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    async with httpx.AsyncClient(transport=transport, timeout=NEVER) as client:
        canceller = cancel_when(peer.sent, cancel)
        with anyio.fail_after(NEVER), pytest.raises(gocontext.Canceled):
            await client.get(f"{peer.url}/part/{size}", extensions={"gocontext": ctx})
        canceller.join(NEVER)
        assert_pool_idle(transport._inner._pool)  # type: ignore[attr-defined]
        assert (await client.get(f"{peer.url}/ok")).text == "ok"
