"""ContextMiddleware sees a client leave while the body it holds for a handler that does not
read it is full: the server (uvicorn) has stopped reading the connection then, so only the
socket itself can tell. A real uvicorn server on 127.0.0.1, on asyncio and on uvloop, driven
by raw sockets. uvicorn runs on asyncio alone: there is no trio twin of a uvicorn server."""

from __future__ import annotations

import asyncio
import gc
import select
import socket
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any, ClassVar, TypeVar

import anyio
import pytest

import gocontext
import gocontext.http
from gocontext import _loops
from gocontext._hangups import Hangups
from gocontext.http._middleware import _MAX_UNREAD

from .._servers import RID, Server, on_loop
from ..conftest import NEVER
from .conftest import BOARD, Peer, upload_until_held_full

T = TypeVar("T")

linux_only = pytest.mark.skipif(
    not hasattr(select, "EPOLLRDHUP"), reason="the peer's end is seen on Linux"
)


class Seen:
    """What the parked handlers left for the test, by request id: the exchange the middleware
    gave them (its ``receive``'s owner), and their loop."""

    exchanges: ClassVar[dict[str, Any]] = {}
    loops: ClassVar[dict[str, asyncio.AbstractEventLoop]] = {}


async def park_unread(scope: Any, receive: Any, send: Any) -> None:
    """Never reads its body; waits for its context to end, then answers."""
    ctx = gocontext.current()
    name = str(ctx.value(RID))
    Seen.exchanges[name] = receive.__self__
    Seen.loops[name] = asyncio.get_running_loop()
    with BOARD.inside(name, ctx), anyio.move_on_after(NEVER):
        await ctx.done()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"done"})


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def loop_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """uvicorn on an asyncio loop, then on a uvloop one; the default cap (60 s), far beyond
    ``NEVER``: only the client's leaving can end a request in time."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    with Server(gocontext.http.ContextMiddleware(park_unread), loop=request.param) as s:
        yield s


@linux_only
@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_client_that_leaves_while_the_held_body_is_full_ends_the_context(
    loop_server: Server, how: str
) -> None:
    """Past the body the middleware holds for a handler that does not read it, uvicorn stops
    reading the connection; a client that leaves then, by a FIN behind the unread body or by
    a reset, still ends the request's context with the ClientDisconnected cause."""
    name = f"hangup-{how}-{time.monotonic_ns()}"
    with socket.create_connection(("127.0.0.1", loop_server.port), timeout=NEVER) as conn:
        head = (
            f"POST /upload HTTP/1.1\r\nhost: test\r\ncontent-length: {64 << 20}\r\n"
            f"baggage: {RID.name}={name}\r\n\r\n"
        )
        conn.sendall(head.encode())
        BOARD.wait_entered(name)
        upload_until_held_full(conn, Seen.exchanges[name], Seen.loops[name])
        if how == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    cause = BOARD.wait_ended(name)
    assert isinstance(cause, gocontext.http.ClientDisconnected), cause
    # The socket leaves the watch with its request, and the loop's epoll closes with it.
    loop = Seen.loops[name]
    deadline = time.monotonic() + NEVER
    while on_loop(loop, lambda: loop in Hangups._of_loop):
        assert time.monotonic() < deadline, "the socket stayed watched after its request"
        time.sleep(0.001)


# -- the same, with the test playing the server ----------------------------------------------


def _held_full_body(peer: Peer) -> bytes:
    """Push a body the middleware holds only in part (more than it holds for an app that
    does not read); return it."""
    chunk = b"b" * 65536
    n = _MAX_UNREAD // len(chunk) + 4
    for i in range(n):
        peer.push({"type": "http.request", "body": chunk, "more_body": i < n - 1})
    return chunk * n


async def _until_held_full(exchange: Any) -> None:
    """Wait until the watcher holds all it will of the body (and has looked for a socket)."""
    with anyio.fail_after(NEVER):
        while exchange._peer is None:
            await anyio.sleep(0.001)


class NoSocket:
    """A transport with no socket to give (a pipe's, say)."""

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> object:
        return None


class Broken:
    """A transport that fails whatever is asked of it."""

    def is_closing(self) -> bool:
        raise RuntimeError("broken transport")

    def get_extra_info(self, name: str) -> object:
        raise RuntimeError("broken transport")


@pytest.mark.parametrize("transport", [None, 42, NoSocket(), Broken()], ids=repr)
async def test_a_server_whose_socket_cannot_be_watched_still_serves_the_held_body(
    transport: object,
) -> None:
    """Another server's ``receive`` (its owner has no asyncio transport with a socket, or
    one that fails, or the loop is trio's): the body is held and handed over as before."""
    got: list[bytes] = []

    async def late_reader(scope: Any, receive: Any, send: Any) -> None:
        await _until_held_full(receive.__self__)
        more = True
        while more:
            message = await receive()
            got.append(message.get("body", b""))
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    peer = Peer()
    peer.transport = transport  # type: ignore[attr-defined]  # where uvicorn keeps its own
    body = _held_full_body(peer)
    with anyio.fail_after(NEVER):
        await gocontext.http.ContextMiddleware(late_reader)(peer.scope, peer.receive, peer.send)
    assert b"".join(got) == body
    assert peer.status == 200
    if _loops.backend_here()[0] is _loops.ASYNCIO:
        assert asyncio.get_running_loop() not in Hangups._of_loop


class SocketTransport(NoSocket):
    """A transport whose socket is one end of a socket pair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> object:
        return self.sock if name == "socket" else None


@linux_only
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # (under trio no socket is watched)
async def test_the_peer_of_a_watched_socket_leaving_ends_the_context() -> None:
    """Any server that keeps its asyncio transport where uvicorn does gets the same watch."""
    app_ctx: list[gocontext.Context] = []
    full = anyio.Event()

    async def parked(scope: Any, receive: Any, send: Any) -> None:
        app_ctx.append(gocontext.current())
        await _until_held_full(receive.__self__)
        full.set()
        await gocontext.current().done()

    ours, theirs = socket.socketpair()
    with ours, theirs:
        peer = Peer()
        peer.transport = SocketTransport(ours)  # type: ignore[attr-defined]
        _held_full_body(peer)
        middleware = gocontext.http.ContextMiddleware(parked, max_timeout=None)
        with anyio.fail_after(NEVER):
            async with anyio.create_task_group() as tg:
                tg.start_soon(middleware, peer.scope, peer.receive, peer.send)
                await full.wait()
                assert asyncio.get_running_loop() in Hangups._of_loop
                theirs.close()  # the client leaves
        assert isinstance(gocontext.cause(app_ctx[0]), gocontext.http.ClientDisconnected)
        assert asyncio.get_running_loop() not in Hangups._of_loop


async def test_the_body_held_for_an_app_that_never_read_it_is_let_go_with_the_request() -> None:
    """Once the request is over, nothing of the held body (4 MiB) stays referenced, even
    while the garbage collector does not run: on asyncio, the exchange that held it outlives
    the request in a cycle of anyio's (a watcher's cancelled task) until the collector runs."""

    async def answers_unread(scope: Any, receive: Any, send: Any) -> None:
        await _until_held_full(receive.__self__)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    chunk = bytes(65536)  # one object, in every message: its references count what is held
    before = sys.getrefcount(chunk)
    peer = Peer()
    n = _MAX_UNREAD // len(chunk) + 4
    for i in range(n):
        peer.push({"type": "http.request", "body": chunk, "more_body": i < n - 1})
    gc.collect()
    gc.disable()
    try:
        with anyio.fail_after(NEVER):
            await gocontext.http.ContextMiddleware(answers_unread)(
                peer.scope, peer.receive, peer.send
            )
        assert peer.status == 200
        peer._inbox.clear()  # (what the server never handed over)
        assert sys.getrefcount(chunk) == before
    finally:
        gc.enable()
