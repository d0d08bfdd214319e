"""ContextMiddleware's watch on a request's socket once the body it holds is full, tried as
careful users and attackers would: descriptors reused, requests one after another on a
connection, many clients leaving at once, a handler that reads late, the deadline, callbacks
that raise, server shutdown. Real uvicorn servers on 127.0.0.1 (asyncio and uvloop loops),
raw sockets, no mocks. uvicorn runs on asyncio alone: the uvicorn tests are sync tests
driving a server in a thread. Two tests play the server themselves (tests/http/conftest.py's
Peer on one end of a socket pair): one on a loop of its own, one under anyio's asyncio (under
trio no socket is watched, so it has no trio twin)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

import anyio
import pytest

import gocontext
import gocontext.http
from gocontext._hangups import Hangups
from gocontext.http._middleware import _MAX_UNREAD, _PeerWatch

from .._servers import RID, Server, on_loop, sent_when
from .._servers import read_response as read_head_and_body
from ..conftest import NEVER, FakeClock
from .conftest import BOARD, Peer, upload_until_held_full

T = TypeVar("T")

pytestmark = pytest.mark.skipif(
    not hasattr(select, "EPOLLRDHUP"), reason="the peer's end is watched on Linux"
)

BIG = 64 << 20  # the Content-Length of an upload: far more than anything here sends


class Seen:
    """What the handlers left for the test, by request id: the middleware's exchange (its
    ``receive``'s owner), the loop, and events the test sets to move a handler on."""

    exchanges: ClassVar[dict[str, Any]] = {}
    loops: ClassVar[dict[str, asyncio.AbstractEventLoop]] = {}
    lock = threading.Lock()
    go: ClassVar[dict[str, threading.Event]] = {}
    results: ClassVar[dict[str, object]] = {}

    @classmethod
    def event(cls, name: str) -> threading.Event:
        with cls.lock:
            return cls.go.setdefault(name, threading.Event())

    @classmethod
    def clear(cls) -> None:
        for name in list(cls.go):
            cls.go[name].set()  # (nothing stays parked on a test that failed)
        cls.exchanges.clear()
        cls.loops.clear()
        cls.go.clear()
        cls.results.clear()


@pytest.fixture(autouse=True)
def _forget_seen() -> Iterator[None]:
    yield
    Seen.clear()  # (each exchange holds its 4 MiB: let them go)


def _record(receive: Any) -> tuple[gocontext.Context, str]:
    ctx = gocontext.current()
    name = str(ctx.value(RID))
    Seen.exchanges[name] = receive.__self__
    Seen.loops[name] = asyncio.get_running_loop()
    return ctx, name


async def _until(event: threading.Event) -> None:
    """Wait (polling, in a handler) until the test sets *event*, for at most NEVER seconds."""
    with anyio.move_on_after(NEVER):
        while not event.is_set():
            await anyio.sleep(0.001)


async def _answer(send: Any, body: bytes, status: int = 200) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope: Any, receive: Any, send: Any) -> None:
    """The routes, behind ContextMiddleware:

    ``/park``: never reads its body; waits for its context's end, then answers.
    ``/early``: never reads its body; answers when the test says (``go[name]``), then runs on
    (background work after the response, as Starlette's BackgroundTasks do) until the test
    says ``go[name-done]``.
    ``/late``: waits until its socket is watched, then reads its whole body and answers how
    many bytes it got.
    ``/raise-<kind>``: a done callback on its context raises; then it parks as ``/park``.
    ``/ignore``: never reads its body, ignores its context (sleeps).
    ``/quick``: answers at once.
    """
    path = scope["path"]
    if path == "/quick":
        await _answer(send, b"quick")
        return
    ctx, name = _record(receive)
    if path == "/early":
        BOARD.enter(name)
        await _until(Seen.event(name))
        await _answer(send, b"early")
        await _until(Seen.event(f"{name}-done"))
        BOARD.end(name, ctx)
        return
    if path == "/late":
        BOARD.enter(name)
        exchange = receive.__self__
        with anyio.fail_after(NEVER):
            while exchange._peer is None or exchange._peer.hangups is None:
                await anyio.sleep(0.001)
        Seen.event(f"{name}-watched").set()
        await _until(Seen.event(name))
        got, more = 0, True
        while more:
            message = await receive()
            assert message["type"] == "http.request", message
            got += len(message.get("body", b""))
            more = message.get("more_body", False)
        BOARD.end(name, ctx)
        await _answer(send, str(got).encode())
        return
    if path.startswith("/raise-"):
        kind = path.removeprefix("/raise-")

        def raiser() -> None:
            raise RuntimeError("a callback fails") if kind == "error" else Odd("odd")

        ctx.done().add_callback(raiser)
    if path == "/ignore":  # (the deadline's scope interrupts it: the middleware answers)
        with BOARD.inside(name, ctx):
            await anyio.sleep(NEVER)
    with BOARD.inside(name, ctx), anyio.move_on_after(NEVER):
        await ctx.done()
    await _answer(send, b"done")


class Odd(BaseException):
    """A BaseException that is not an interrupt."""


LOOPS = ["asyncio", "uvloop"]


@pytest.fixture(scope="module", params=LOOPS)
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """uvicorn on an asyncio loop, then on a uvloop one; the default cap (60 s), far beyond
    ``NEVER``: only the client's leaving can end a request in time."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    with Server(gocontext.http.ContextMiddleware(app), loop=request.param) as s:
        yield s


# -- helpers ----------------------------------------------------------------------------------


def rid(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns()}"


def head(path: str, name: str, length: int = BIG, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {length}\r\n"
        f"baggage: {RID.name}={name}\r\n{extra}\r\n"
    ).encode()


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=NEVER)


def reset(conn: socket.socket) -> None:
    """Close *conn* with a RST, not a FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def server_loop(server: Server) -> asyncio.AbstractEventLoop:
    """The server's loop (asked of a request through it)."""
    name = rid("loop")
    with connect(server) as conn:
        conn.sendall(head("/early", name, 0))
        BOARD.wait_entered(name)
        Seen.event(name).set()
        Seen.event(f"{name}-done").set()
        assert read_response(conn) == (200, b"early")
    return Seen.loops[name]


def watched(loop: asyncio.AbstractEventLoop) -> int:
    """How many sockets the loop's epoll holds (0: it has none)."""

    def count() -> int:
        hangups = Hangups._of_loop.get(loop)
        return 0 if hangups is None else len(hangups._watches)

    return on_loop(loop, count)


def wait_until(loop: asyncio.AbstractEventLoop, done: Callable[[], bool], what: str) -> None:
    """Poll *done* on *loop* until it holds, for at most NEVER seconds."""
    deadline = time.monotonic() + NEVER
    while not on_loop(loop, done):
        assert time.monotonic() < deadline, what
        time.sleep(0.002)


def nothing_watched(loop: asyncio.AbstractEventLoop) -> None:
    wait_until(loop, lambda: loop not in Hangups._of_loop, "a socket stayed watched")


def is_watched(name: str) -> bool:
    """Whether request *name*'s socket is in its loop's epoll (read on the loop)."""

    def check() -> bool:
        peer = Seen.exchanges[name]._peer
        return peer is not None and peer.hangups is not None

    return on_loop(Seen.loops[name], check)


def server_fd(name: str) -> int:
    """The server-side descriptor of request *name*'s connection."""
    transport = Seen.exchanges[name]._receive.__self__.transport
    return on_loop(Seen.loops[name], lambda: int(transport.get_extra_info("socket").fileno()))


def upload_until_full(conn: socket.socket, name: str) -> int:
    """Send *name*'s body until the middleware holds all it will for the handler and uvicorn
    has stopped reading the connection (the socket is watched then); the bytes sent."""
    BOARD.wait_entered(name)
    return upload_until_held_full(conn, Seen.exchanges[name], Seen.loops[name])


def read_response(conn: socket.socket) -> tuple[int, bytes]:
    """The status and body of one response on *conn* (framed by its Content-Length)."""
    head, body = read_head_and_body(conn)
    return int(head.split(b" ")[1]), body


def quick(server: Server) -> None:
    """The server still answers a new connection."""
    with connect(server) as conn:
        conn.sendall(b"GET /quick HTTP/1.1\r\nhost: test\r\n\r\n")
        assert read_response(conn) == (200, b"quick")


# -- a connection's next request --------------------------------------------------------------


def test_the_next_request_on_a_connection_is_watched_while_the_first_still_runs(
    server: Server,
) -> None:
    """A handler answers without reading its upload and runs on after its response (work in
    the background, as Starlette's BackgroundTasks do), its socket still in the epoll. uvicorn
    reads the rest of that body and takes the connection's next request: that one's held body
    fills too, and its client leaving must end it, as on a fresh connection."""
    first, second = rid("first"), rid("second")
    try:
        with connect(server) as conn:
            conn.sendall(head("/early", first, 16 << 20))
            sent = upload_until_full(conn, first)
            assert is_watched(first)
            Seen.event(first).set()  # answer (the body unread), then run on
            assert read_response(conn) == (200, b"early")
            rest = b"r" * ((16 << 20) - sent)  # the first body's rest: uvicorn reads it, drops it
            conn.sendall(rest)
            conn.sendall(head("/park", second, BIG))
            upload_until_full(conn, second)
            assert is_watched(second), "the second request's socket is not watched"
        cause = BOARD.wait_ended(second)
        assert isinstance(cause, gocontext.http.ClientDisconnected), cause
    finally:
        Seen.event(f"{first}-done").set()
    BOARD.wait_ended(first)
    nothing_watched(Seen.loops[second])


def test_a_reused_descriptor_keeps_its_new_watch_when_the_old_request_ends(
    server: Server,
) -> None:
    """Request A's socket is watched; A answers (its body unread) and runs on, its watch still
    held, while its client leaves and uvicorn closes the socket. A new connection gets A's
    descriptor and its own held-full upload is watched: A's end (its forget) must not take
    the new socket out of the epoll, and A must never be told the new client left."""
    a = rid("reuse-a")
    spares = [socket.socket() for _ in range(8)]  # (made now: they take no descriptor later)
    conn_a = connect(server)
    try:
        conn_a.sendall(head("/early", a, 16 << 20))
        upload_until_full(conn_a, a)
        fd = server_fd(a)
        inode = os.fstat(fd).st_ino
        Seen.event(a).set()
        assert read_response(conn_a) == (200, b"early")
        conn_a.shutdown(socket.SHUT_RDWR)  # (its descriptor here stays taken)
        loop = Seen.loops[a]

        def closed() -> bool:
            try:
                return os.fstat(fd).st_ino != inode
            except OSError:
                return True

        wait_until(loop, closed, "uvicorn never closed the left client's socket")
        b = ""
        for i, conn in enumerate(spares):
            conn.settimeout(NEVER)
            conn.connect(("127.0.0.1", server.port))
            name = rid(f"reuse-b{i}")
            conn.sendall(head("/park", name))
            BOARD.wait_entered(name)
            if server_fd(name) == fd:
                b, conn_b = name, conn
                break
        assert b, "no new connection got the descriptor back"
        upload_until_full(conn_b, b)
        assert is_watched(b)
        Seen.event(f"{a}-done").set()  # A ends: its watch is forgotten
        BOARD.wait_ended(a)
        wait_until(loop, lambda: Seen.exchanges[a].watcher_ended.is_set(), "A's watcher ran on")
        assert is_watched(b), "A's end took B's socket out of the epoll"
        assert watched(loop) == 1
        assert not BOARD.event(BOARD.ended, b).is_set()
        reset(conn_b)
        cause = BOARD.wait_ended(b)
        assert isinstance(cause, gocontext.http.ClientDisconnected), cause
    finally:
        Seen.event(f"{a}-done").set()
        conn_a.close()
        for conn in spares:
            conn.close()
    nothing_watched(loop)


def test_connections_churned_past_a_watched_request_never_end_it(server: Server) -> None:
    """While a request's socket is watched, a hundred connections come and go (FIN or reset,
    some on descriptors the churn frees and reuses): the watched request is never told its
    client left, the epoll holds its one socket, and the client's real leaving still ends it."""
    name = rid("churn")
    with connect(server) as conn:
        conn.sendall(head("/park", name))
        upload_until_full(conn, name)
        loop = Seen.loops[name]
        for i in range(100):
            other = connect(server)
            other.sendall(b"GET /quick HTTP/1.1\r\nhost: test\r\n\r\n")
            assert read_response(other) == (200, b"quick")
            if i % 2:
                reset(other)
            else:
                other.close()
        # Every churned connection's end has reached the server: the watched one is left.
        wait_until(
            loop,
            lambda: len(server.server.server_state.connections) == 1,
            "the churned connections never ended",
        )
        assert not BOARD.event(BOARD.ended, name).is_set(), BOARD.causes.get(name)
        assert watched(loop) == 1
        assert is_watched(name)
    cause = BOARD.wait_ended(name)
    assert isinstance(cause, gocontext.http.ClientDisconnected), cause
    nothing_watched(loop)


def test_many_held_uploads_left_at_once_each_end_with_the_client(server: Server) -> None:
    """Six uploads held full at once, their clients leaving together, by FIN and by reset:
    each request ends with ClientDisconnected, and nothing stays watched."""
    names = [rid(f"many{i}") for i in range(6)]
    conns = [connect(server) for _ in names]
    try:
        for conn, name in zip(conns, names, strict=True):
            conn.sendall(head("/park", name))
            upload_until_full(conn, name)
        loop = Seen.loops[names[0]]
        assert watched(loop) == len(names)
    finally:
        for i, conn in enumerate(conns):
            reset(conn) if i % 2 else conn.close()
    for name in names:
        cause = BOARD.wait_ended(name)
        assert isinstance(cause, gocontext.http.ClientDisconnected), (name, cause)
    nothing_watched(loop)
    quick(server)


@pytest.mark.parametrize("when", ["partway", "after-the-body", "small-body"])
def test_a_client_that_half_closes_is_seen_as_gone_whatever_the_body(
    server: Server, when: str
) -> None:
    """A client shuts its sending side (SHUT_WR): partway through a held-full body, after
    the whole of it (chunked: its last chunk sent), or after a small body the middleware read
    whole. uvicorn takes a reading connection's EOF for the client's leaving; the watch must
    say the same for a held-full one, whether the body was complete or not."""
    name = rid(f"half-{when}")
    with connect(server) as conn:
        if when == "small-body":
            conn.sendall(head("/park", name, 5) + b"hello")
            BOARD.wait_entered(name)
            loop = Seen.loops[name]
            wait_until(loop, lambda: Seen.exchanges[name]._watching, "no watcher started")
        elif when == "partway":
            conn.sendall(head("/park", name))
            upload_until_full(conn, name)
            loop = Seen.loops[name]
        else:
            top = head("/park", name).replace(
                f"content-length: {BIG}".encode(), b"transfer-encoding: chunked"
            )
            conn.sendall(top)
            BOARD.wait_entered(name)
            loop = Seen.loops[name]
            exchange = Seen.exchanges[name]
            chunk = b"10000\r\n" + b"c" * 0x10000 + b"\r\n"
            for _ in range(1024):
                conn.sendall(chunk)
                sent_when(conn)
                if on_loop(loop, lambda: exchange._peer is not None):
                    break
            assert is_watched(name)
            conn.sendall(b"0\r\n\r\n")
            sent_when(conn)
        conn.shutdown(socket.SHUT_WR)
        cause = BOARD.wait_ended(name)
    assert isinstance(cause, gocontext.http.ClientDisconnected), cause
    nothing_watched(loop)


def test_a_handler_that_reads_the_held_body_late_answers_and_the_connection_goes_on(
    server: Server,
) -> None:
    """The handler reads its body only after its socket is watched: it gets every byte, the
    client its 200, the watch is released, and the connection's next requests are served; a
    next held-full upload on it is watched on its own, and its client leaving ends it."""
    name, after = rid("late"), rid("late-next")
    length = 12 << 20
    with connect(server) as conn:
        conn.sendall(head("/late", name, length))
        sent = upload_until_full(conn, name)
        assert Seen.event(f"{name}-watched").wait(NEVER)
        loop = Seen.loops[name]
        Seen.event(name).set()  # read it all now
        conn.sendall(b"l" * (length - sent))
        assert read_response(conn) == (200, str(length).encode())
        BOARD.wait_ended(name)
        nothing_watched(loop)
        conn.sendall(b"GET /quick HTTP/1.1\r\nhost: test\r\n\r\n")
        assert read_response(conn) == (200, b"quick")
        conn.sendall(head("/park", after))
        upload_until_full(conn, after)
        assert is_watched(after)
        assert watched(loop) == 1
    cause = BOARD.wait_ended(after)
    assert isinstance(cause, gocontext.http.ClientDisconnected), cause
    nothing_watched(loop)


@pytest.mark.parametrize("client", ["stays", "leaves-in-the-slack"])
def test_the_deadline_passing_while_the_held_body_is_full_is_the_cause(
    server: Server, fake_clock: FakeClock, client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline passes while the held body is full: the cause is the deadline, the client
    gets its 504 and the watch is released. A client that leaves just before its deadline
    (within the slack, as one giving up at its own deadline does) is not recorded as having
    left: the request still ends by the deadline."""
    name = rid(f"deadline-{client}")
    with connect(server) as conn:
        conn.sendall(head("/ignore", name, extra="grpc-timeout: 5S\r\n"))
        upload_until_full(conn, name)
        loop = Seen.loops[name]
        assert is_watched(name)
        if client == "stays":
            fake_clock.advance(6)
            assert read_response(conn) == (504, b"deadline exceeded")
        else:
            told = threading.Event()
            peer_gone = _PeerWatch.peer_gone

            def telling(watch: _PeerWatch) -> None:
                peer_gone(watch)
                told.set()

            monkeypatch.setattr(_PeerWatch, "peer_gone", telling)
            fake_clock.advance(4.9)
            conn.shutdown(socket.SHUT_RDWR)
            assert told.wait(NEVER), "the watch never told the client's end"
            assert not BOARD.event(BOARD.ended, name).is_set(), BOARD.causes.get(name)
            fake_clock.advance(0.2)
        BOARD.wait_ended(name)
    assert isinstance(BOARD.errors[name], gocontext.DeadlineExceeded), BOARD.errors[name]
    assert not isinstance(BOARD.causes[name], gocontext.http.ClientDisconnected)
    nothing_watched(loop)


def test_done_callbacks_that_raise_when_the_client_leaves_stop_nothing(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """Done callbacks on requests' contexts raise (an Exception, a BaseException that is no
    interrupt) as the epoll tells their clients left, together with another's: every request
    still ends with ClientDisconnected, what raised is logged, the server serves on."""
    names = [rid("raise-error"), rid("raise-odd"), rid("raise-none")]
    paths = ["/raise-error", "/raise-odd", "/park"]
    conns = [connect(server) for _ in names]
    with caplog.at_level(logging.ERROR, logger="gocontext"):
        try:
            for conn, name, path in zip(conns, names, paths, strict=True):
                conn.sendall(head(path, name))
                upload_until_full(conn, name)
        finally:
            for conn in conns:
                reset(conn)
        for name in names:
            cause = BOARD.wait_ended(name)
            assert isinstance(cause, gocontext.http.ClientDisconnected), (name, cause)
        nothing_watched(Seen.loops[names[0]])
        quick(server)
    raised = [r.exc_info[1] for r in caplog.records if r.exc_info and r.name == "gocontext"]
    assert any(isinstance(e, RuntimeError) for e in raised), caplog.records
    assert any(isinstance(e, Odd) for e in raised), caplog.records


def test_uvicorns_httptools_parser_gets_the_same_watch() -> None:
    """uvicorn's other HTTP/1.1 parser keeps its transport where h11's does."""
    pytest.importorskip("httptools")
    s = Server(gocontext.http.ContextMiddleware(app), loop="asyncio")
    s.server.config.http = "httptools"
    with s:
        name = rid("httptools")
        with connect(s) as conn:
            conn.sendall(head("/park", name))
            upload_until_full(conn, name)
            assert is_watched(name)
        cause = BOARD.wait_ended(name)
        assert isinstance(cause, gocontext.http.ClientDisconnected), cause
        nothing_watched(Seen.loops[name])


# -- an interrupt among the told; server shutdown -------------------------------------------


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.new_event_loop()  # type: ignore[no-any-return]
    return asyncio.new_event_loop()


class SocketTransport:
    """A transport whose socket is one end of a socket pair (where uvicorn keeps its own)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> object:
        return self.sock if name == "socket" else None


class Interrupt(KeyboardInterrupt):
    """A KeyboardInterrupt of this test's own."""


@pytest.mark.parametrize("kind", LOOPS)
def test_an_interrupt_raised_as_one_client_leaves_still_tells_the_others(kind: str) -> None:
    """Two requests' sockets are watched; both clients leave in one turn of the loop, and a
    done callback on the first request's context raises KeyboardInterrupt as it is told. The
    interrupt leaves the loop (as any interrupt does), but the second request has been told
    too: both end with ClientDisconnected once the loop runs on, and nothing stays watched.
    (The server is played by the test on a loop of its own, so that the interrupt leaves a
    loop the test owns.)"""
    loop = new_loop(kind)
    pairs = [socket.socketpair() for _ in range(2)]
    ctxs: list[gocontext.Context] = []

    async def parked(scope: Any, receive: Any, send: Any) -> None:
        ctxs.append(gocontext.current())
        exchange = receive.__self__
        with anyio.fail_after(NEVER):
            while exchange._peer is None:
                await anyio.sleep(0.001)
        with anyio.move_on_after(NEVER):
            await gocontext.current().done()

    async def main() -> None:
        middleware = gocontext.http.ContextMiddleware(parked, max_timeout=None)
        async with anyio.create_task_group() as tg:
            for ours, _ in pairs:
                peer = Peer()
                peer.transport = SocketTransport(ours)  # type: ignore[attr-defined]
                chunk = b"b" * 65536
                n = _MAX_UNREAD // len(chunk) + 4
                for i in range(n):
                    peer.push({"type": "http.request", "body": chunk, "more_body": i < n - 1})
                tg.start_soon(middleware, peer.scope, peer.receive, peer.send)
            here = asyncio.get_running_loop()
            with anyio.fail_after(NEVER):
                while here not in Hangups._of_loop or len(Hangups._of_loop[here]._watches) < 2:
                    await anyio.sleep(0.001)

            def interrupt() -> None:
                raise Interrupt

            ctxs[0].done().add_callback(interrupt)
            for _, theirs in pairs:  # both leave before the loop looks again
                theirs.close()

    try:
        task = loop.create_task(main())
        with pytest.raises(Interrupt):
            loop.run_until_complete(task)
        loop.run_until_complete(task)
        for ctx in ctxs:
            assert isinstance(gocontext.cause(ctx), gocontext.http.ClientDisconnected), ctx
        assert loop not in Hangups._of_loop
    finally:
        loop.close()
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


def epolls() -> int:
    """How many epoll descriptors this process holds."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # (one closed meanwhile)
            n += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventpoll]"
    return n


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize("kind", LOOPS)
def test_a_server_shut_down_with_a_watched_request_leaks_no_epoll(kind: str) -> None:
    """uvicorn shuts down while a request's socket is watched (its client still there): the
    loop's hangup epoll is closed with the request, no descriptor is left behind, and nothing
    but uvicorn's own word on the request it cancelled is logged as an error."""
    if kind == "uvloop":
        pytest.importorskip("uvloop")
    before = epolls()
    s = Server(gocontext.http.ContextMiddleware(app), loop=kind)
    records = Records()
    loggers = [logging.getLogger(n) for n in ("uvicorn.error", "asyncio", "gocontext")]
    for logger in loggers:
        logger.addHandler(records)
    name = rid(f"shutdown-{kind}")
    try:
        with connect(s.__enter__()) as conn:
            try:
                conn.sendall(head("/park", name))
                upload_until_full(conn, name)
                loop = Seen.loops[name]
                epoll = on_loop(loop, lambda: Hangups._of_loop[loop]._epoll)
                assert not epoll.closed
            finally:
                s.__exit__(None, None, None)
            assert not s.thread.is_alive()
    finally:
        for logger in loggers:
            logger.removeHandler(records)
    assert epoll.closed
    assert epolls() == before
    for r in records.records:  # (uvicorn says it cancelled the request: its own word)
        if r.levelno >= logging.ERROR:
            assert r.name == "uvicorn.error", r
            assert r.exc_info is None or r.exc_info[0] is asyncio.CancelledError, r


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # (under trio no socket is watched)
async def test_a_request_on_a_socket_still_watched_for_an_earlier_one_is_watched() -> None:
    """The server-free form of the first test: two requests, one after the other on one
    socket (one transport); the first has answered but runs on, its watch held, when the
    second's held body fills. The second must be watched all the same: its client leaving
    ends it."""
    full = {"/first": anyio.Event(), "/second": anyio.Event()}
    release = anyio.Event()
    ctxs: dict[str, gocontext.Context] = {}
    exchanges: dict[str, Any] = {}

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        ctxs[path] = gocontext.current()
        exchange = exchanges[path] = receive.__self__
        with anyio.fail_after(NEVER):
            while exchange._peer is None:
                await anyio.sleep(0.001)
        full[path].set()
        if path == "/first":
            await _answer(send, b"first")
            with anyio.move_on_after(NEVER):
                await release.wait()  # (work in the background, after the response)
        else:
            with anyio.move_on_after(NEVER):
                await gocontext.current().done()

    def peer(path: str, sock: socket.socket) -> Peer:
        p = Peer(path=path)
        p.transport = SocketTransport(sock)  # type: ignore[attr-defined]
        chunk = b"b" * 65536
        n = _MAX_UNREAD // len(chunk) + 4
        for i in range(n):
            p.push({"type": "http.request", "body": chunk, "more_body": i < n - 1})
        return p

    ours, theirs = socket.socketpair()
    with ours, theirs:
        middleware = gocontext.http.ContextMiddleware(handler, max_timeout=None)
        first, second = peer("/first", ours), peer("/second", ours)
        try:
            with anyio.fail_after(NEVER):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(middleware, first.scope, first.receive, first.send)
                    await full["/first"].wait()
                    assert exchanges["/first"]._peer.hangups is not None
                    tg.start_soon(middleware, second.scope, second.receive, second.send)
                    await full["/second"].wait()
                    second_watched = exchanges["/second"]._peer.hangups is not None
                    if second_watched:
                        theirs.close()  # the client leaves
                        await ctxs["/second"].done()
                    release.set()
                    tg.cancel_scope.cancel()
        finally:
            release.set()
        assert second_watched, "the second request's socket is not watched"
        assert isinstance(gocontext.cause(ctxs["/second"]), gocontext.http.ClientDisconnected)
        assert asyncio.get_running_loop() not in Hangups._of_loop
