"""The aiohttp.web middleware, tried as careful users and attackers would: its watch on each
connection's peer (the loop's epoll of sockets waiting for their peer's end), the 504 for a
deadline gone on arrival, and ``max_timeout`` chosen per request. Real aiohttp.web servers on
127.0.0.1 (asyncio and uvloop loops), raw sockets, no mocks. Linux only (EPOLLRDHUP)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

import gocontext
import gocontext.aiohttp
import gocontext.http
from gocontext._hangups import Hangups

from .._servers import read_response, tcp_socket
from ..conftest import NEVER, FakeClock
from . import aiohttp_app
from .aiohttp_app import FINISHED, AiohttpServer, released, rid_of
from .conftest import BOARD, rid
from .test_aiohttp import errors_logged, read_to_close
from .test_aiohttp_server_faults import (
    TRANSPORTS,
    on_loop,
    park_unread,
    request_head,
    sent_when,
    upload_until_paused,
)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(select, "EPOLLRDHUP"),
    reason="the peer's end is watched on Linux",
)

LOOPS = ["asyncio", "uvloop"]

PROTOCOLS: dict[str, Any] = {}  # the connection's protocol (the middleware's watch), by rid
FDS: dict[str, int] = {}  # the server-side descriptor of each request's connection, by rid


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.new_event_loop()  # type: ignore[no-any-return]
    return asyncio.new_event_loop()


def server_fd(request: web.Request) -> int:
    sock = request.transport.get_extra_info("socket")  # type: ignore[union-attr]
    return int(sock.fileno())


async def park(request: web.Request) -> web.Response:
    """Records its connection's descriptor and transport, then parks until its context ends."""
    name = rid_of(request)
    FDS[name] = server_fd(request)
    TRANSPORTS[name] = request.transport  # type: ignore[assignment]
    await BOARD.park()
    return web.Response(text="parked")


async def ok_fd(request: web.Request) -> web.Response:
    """Answers with its connection's server-side descriptor."""
    name = rid_of(request)
    FDS[name] = server_fd(request)
    PROTOCOLS[name] = request.transport.get_protocol()  # type: ignore[union-attr]  # a _Watch
    return web.Response(text=f"fd={FDS[name]}")


async def park_unread_fd(request: web.Request) -> web.Response:
    FDS[rid_of(request)] = server_fd(request)
    return await park_unread(request)


async def block_then_park(request: web.Request) -> web.Response:
    """Blocks the loop (a step that ignores its context) until the test lets it go, never
    reading the request's body, then parks until its context ends."""
    name = rid_of(request)
    TRANSPORTS[name] = request.transport  # type: ignore[assignment]
    BOARD.enter(name)
    assert released(name).wait(NEVER)
    ctx = request["gocontext"]
    try:
        await ctx.done()
    finally:
        BOARD.end(name, ctx)
    return web.Response(text="ended")


def make_app(max_timeout: Any = 60.0) -> web.Application:
    app = web.Application(middlewares=[gocontext.aiohttp.middleware(max_timeout=max_timeout)])
    app.router.add_get("/park", park)
    app.router.add_get("/ok", ok_fd)
    app.router.add_get("/info", aiohttp_app.info)
    app.router.add_post("/park-unread", park_unread_fd)
    app.router.add_post("/block-then-park", block_then_park)
    return app


class Server(AiohttpServer):
    """AiohttpServer whose shutdown does not wait a minute for a parked handler."""

    def __init__(
        self,
        app: web.Application,
        loop: asyncio.AbstractEventLoop | None = None,
        **handler_args: Any,
    ):
        super().__init__(app, loop)
        self.runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=logging.getLogger("tests.wires.aiohttp.access"),
            access_log_class=aiohttp_app._AccessLog,
            shutdown_timeout=0.2,
            **handler_args,
        )


@pytest.fixture(params=LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    return str(request.param)


@pytest.fixture
def server(loop_kind: str) -> Iterator[Server]:
    with Server(make_app(), new_loop(loop_kind)) as s:
        yield s


def watching(server: AiohttpServer) -> int | None:
    """How many connections the server loop's epoll holds (None: it has no epoll)."""

    def count() -> int | None:
        hangups = Hangups._of_loop.get(server.loop)
        return None if hangups is None else len(hangups._watches)

    return on_loop(server, count)


def wait_until(server: AiohttpServer, done: Callable[[], bool], what: str) -> None:
    """Poll *done* (with a turn of the server's loop in between) until it holds, for at most
    NEVER seconds."""
    deadline = time.monotonic() + NEVER
    while not done():
        assert time.monotonic() < deadline, what
        on_loop(server, lambda: None)
        time.sleep(0.002)


def turns(server: AiohttpServer, n: int = 3) -> None:
    """Let the server's loop run *n* full iterations (any readiness pending now is handled)."""
    for _ in range(n):

        async def two_steps() -> None:
            await asyncio.sleep(0)
            await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(two_steps(), server.loop).result(NEVER)


def connect(server: AiohttpServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=NEVER)


def reset(conn: socket.socket) -> None:
    """Close *conn* with a RST, not a FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def get_ok(conn: socket.socket, name: str) -> int:
    """GET /ok on *conn* (kept alive); the server-side descriptor of the connection."""
    conn.sendall(request_head("GET", "/ok", name))
    head, body = read_response(conn)
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    assert body.startswith(b"fd="), body
    return int(body[3:])


def ended_with_disconnect(name: str) -> None:
    cause = BOARD.wait_ended(name)
    assert isinstance(cause, gocontext.http.ClientDisconnected), (name, cause)


def open_fds() -> set[str]:
    """This process's open descriptors, each as number and target."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out.add(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
    return out


# -- descriptor reuse: a new connection on a closed one's fd is never told its peer left ------


def test_fd_churn_never_tells_a_live_connection_its_peer_left(server: Server) -> None:
    """Rounds of short connections closed (FIN or RST) interleaved with new ones that park: the
    new ones take the closed ones' descriptors on the server; none of them may be ended as if
    its peer had gone, and each is still seen leaving when it does."""
    closed_fds: set[int] = set()
    live: dict[str, socket.socket] = {}
    try:
        for r in range(12):
            shorts = [connect(server) for _ in range(6)]
            short_names = [rid(f"churn-ok-{r}-{i}") for i in range(len(shorts))]
            for conn, short in zip(shorts, short_names, strict=False):
                closed_fds.add(get_ok(conn, short))
            for i, conn in enumerate(shorts):  # each close followed at once by a new connection
                if i % 2:
                    reset(conn)
                else:
                    conn.close()
                if i % 3 == 0:  # (or once the server has closed its end: its fd is then reused)
                    watch = PROTOCOLS[short_names[i]]
                    wait_until(
                        server,
                        lambda w=watch: on_loop(server, lambda: w.lost),
                        "a short connection was never lost",
                    )
                    turns(server, 1)
                name = rid(f"churn-park-{r}-{i}")
                new = connect(server)
                live[name] = new
                new.sendall(request_head("GET", "/park", name))
            for name in live:
                BOARD.wait_entered(name)
            # Every short connection is released from the epoll: any event of theirs is handled.
            wait_until(
                server, lambda: watching(server) == len(live), f"watching {watching(server)}"
            )
            turns(server)
            early = {n: BOARD.causes.get(n) for n in live if BOARD.event(BOARD.ended, n).is_set()}
            assert early == {}, f"live connections ended as if their peer had left: {early}"
            gone = on_loop(server, lambda: [n for n in live if TRANSPORTS[n].get_protocol().gone])
            assert gone == [], gone
        reused = {FDS[n] for n in live} & closed_fds
        assert reused, "no descriptor was reused: the test proved nothing"
    finally:
        for conn in live.values():
            conn.close()
    for name in live:
        ended_with_disconnect(name)
    wait_until(server, lambda: watching(server) is None, "the epoll outlived its connections")


def test_a_connection_on_a_closed_ones_fd_still_sees_its_own_mid_upload_leave(
    server: Server,
) -> None:
    """A connection closed mid-upload (seen through the epoll), then a new one that takes the
    same server-side descriptor: its upload's leave is seen, and it was not born 'gone'."""
    first = rid("reuse-first")
    with connect(server) as conn:
        conn.sendall(request_head("POST", "/park-unread", first, f"Content-Length: {64 << 20}"))
        BOARD.wait_entered(first)
        upload_until_paused(server, conn, first)
    ended_with_disconnect(first)
    wait_until(server, lambda: watching(server) is None, "first connection never released")
    second = rid("reuse-second")
    with connect(server) as conn:
        conn.sendall(request_head("POST", "/park-unread", second, f"Content-Length: {64 << 20}"))
        BOARD.wait_entered(second)
        assert FDS[second] == FDS[first], "the descriptor was not reused: nothing proved"
        assert not BOARD.event(BOARD.ended, second).is_set(), BOARD.causes.get(second)
        upload_until_paused(server, conn, second)
        turns(server)
        assert not BOARD.event(BOARD.ended, second).is_set(), BOARD.causes.get(second)
    ended_with_disconnect(second)


def test_two_loops_churning_at_once_never_cross_their_watches() -> None:
    """Two servers on two loops (asyncio and, if present, uvloop) share the process's
    descriptor numbers: connections closed on one while the other accepts never end the
    other's live requests."""
    kinds = ["asyncio", "uvloop" if _has_uvloop() else "asyncio"]
    with Server(make_app(), new_loop(kinds[0])) as a, Server(make_app(), new_loop(kinds[1])) as b:
        live: dict[str, tuple[Server, socket.socket]] = {}
        try:
            for r in range(10):
                shorts = [(s, connect(s)) for s in (a, b) for _ in range(4)]
                for i, (_, conn) in enumerate(shorts):
                    get_ok(conn, rid(f"cross-ok-{r}-{i}"))
                for i, (s, conn) in enumerate(shorts):
                    (reset if i % 2 else socket.socket.close)(conn)
                    other = b if s is a else a
                    name = rid(f"cross-park-{r}-{i}")
                    new = connect(other)
                    live[name] = (other, new)
                    new.sendall(request_head("GET", "/park", name))
                for name in live:
                    BOARD.wait_entered(name)
                for s in (a, b):
                    n = sum(1 for srv, _ in live.values() if srv is s)
                    wait_until(s, lambda s=s, n=n: watching(s) == n, "short ones never released")
                    turns(s)
                early = {
                    n: BOARD.causes.get(n) for n in live if BOARD.event(BOARD.ended, n).is_set()
                }
                assert early == {}, early
        finally:
            for _, conn in live.values():
                conn.close()
        for name in live:
            ended_with_disconnect(name)


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def test_many_paused_uploads_left_at_once_are_all_seen(server: Server) -> None:
    """Several connections, each with an upload paused unread, closed together (FIN and RST
    mixed): one poll of the epoll reports several; every context ends as disconnected."""
    names = [rid(f"many-left-{i}") for i in range(5)]
    conns = [connect(server) for _ in names]
    try:
        for name, conn in zip(names, conns, strict=False):
            conn.sendall(request_head("POST", "/park-unread", name, f"Content-Length: {64 << 20}"))
            BOARD.wait_entered(name)
            upload_until_paused(server, conn, name)
    finally:
        for i, conn in enumerate(conns):
            (reset if i % 2 else socket.socket.close)(conn)
    for name in names:
        ended_with_disconnect(name)
    wait_until(server, lambda: watching(server) is None, "the epoll outlived its connections")


# -- a client that half-closes ---------------------------------------------------------------


@pytest.mark.parametrize("what", ["get", "paused-upload"])
def test_a_half_close_after_the_request_ends_the_context_quietly(
    server: Server, caplog: pytest.LogCaptureFixture, what: str
) -> None:
    """shutdown(SHUT_WR) once the request is sent, while the handler runs (with its upload
    unread and aiohttp paused, or with nothing to read): aiohttp closes on EOF, so the context
    ends with ClientDisconnected; the connection closes; nothing is logged at ERROR."""
    name = rid(f"half-close-{what}")
    with caplog.at_level(logging.ERROR), connect(server) as conn:
        if what == "get":
            conn.sendall(request_head("GET", "/park", name))
            BOARD.wait_entered(name)
        else:
            conn.sendall(request_head("POST", "/park-unread", name, f"Content-Length: {64 << 20}"))
            BOARD.wait_entered(name)
            upload_until_paused(server, conn, name)
        conn.shutdown(socket.SHUT_WR)
        ended_with_disconnect(name)
        FINISHED.wait(name)
        try:
            _, closed = read_to_close(conn)
        except ConnectionResetError:
            closed = True
        assert closed, "the server kept a half-closed connection open"
        wait_until(server, lambda: watching(server) is None, "connection never released")
    assert errors_logged(caplog) == []


def test_pipelined_requests_then_fin(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    """Two requests pipelined, then the client's FIN in the same breath: the first one's
    context ends as disconnected; the second never runs, or ends at once the same way; nothing
    is logged; the server keeps serving."""
    first, second = rid("pipelined-1"), rid("pipelined-2")
    with caplog.at_level(logging.ERROR):
        with connect(server) as conn:
            conn.sendall(request_head("GET", "/park", first) + request_head("GET", "/park", second))
            conn.shutdown(socket.SHUT_WR)
            with contextlib.suppress(ConnectionResetError):
                read_to_close(conn)
        if BOARD.event(BOARD.entered, first).wait(NEVER):
            ended_with_disconnect(first)
            FINISHED.wait(first)
        wait_until(server, lambda: watching(server) is None, "connection never released")
        if BOARD.event(BOARD.entered, second).is_set():
            ended_with_disconnect(second)
        with connect(server) as conn:
            get_ok(conn, rid("after-pipelined"))
    assert errors_logged(caplog) == []


# -- a peer's end around the deadline ----------------------------------------------------------


def test_a_peer_that_leaves_within_the_deadlines_slack_leaves_for_the_deadline(
    server: Server, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The client leaves (seen only by the epoll: its upload paused unread) 100 ms before the
    deadline: it left for the deadline, which ends the context; the 504 goes nowhere quietly;
    the server keeps serving."""
    name = rid("slack-leave")
    with caplog.at_level(logging.ERROR):
        with connect(server) as conn:
            conn.sendall(
                request_head(
                    "POST", "/park-unread", name, "Grpc-Timeout: 1S", f"Content-Length: {64 << 20}"
                )
            )
            BOARD.wait_entered(name)
            upload_until_paused(server, conn, name)
            fake_clock.advance(0.9)
        # The leave is told (the watch is gone from the epoll) and did not end the context.
        wait_until(
            server,
            lambda: (
                on_loop(server, lambda: TRANSPORTS[name].get_protocol().gone)
                if not TRANSPORTS[name].is_closing()
                else True
            ),
            "the leave was never seen",
        )
        turns(server)
        assert not BOARD.event(BOARD.ended, name).is_set(), BOARD.causes.get(name)
        fake_clock.advance(0.2)
        BOARD.wait_ended(name)
        assert isinstance(BOARD.errors[name], gocontext.DeadlineExceeded), BOARD.causes[name]
        FINISHED.wait(name)
        with connect(server) as conn:
            get_ok(conn, rid("after-slack"))
    assert errors_logged(caplog) == []


def test_a_reset_while_the_loop_is_blocked_past_the_deadline_keeps_the_deadline(
    server: Server, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The handler blocks the loop; meanwhile its deadline passes and then its client resets
    the connection: the context ended by the deadline first, and stays so; the answer goes
    nowhere, quietly."""
    name = rid("blocked-past-deadline")
    with caplog.at_level(logging.ERROR):
        conn = connect(server)
        conn.sendall(
            request_head(
                "POST", "/block-then-park", name, "Grpc-Timeout: 1S", "Content-Length: 100000"
            )
            + b"u" * 1000
        )
        BOARD.wait_entered(name)
        fake_clock.advance(2)  # (the deadline passes while the loop is blocked)
        sent_when(conn)
        reset(conn)
        released(name).set()
        BOARD.wait_ended(name)
        assert isinstance(BOARD.errors[name], gocontext.DeadlineExceeded), BOARD.causes[name]
        assert FINISHED.wait(name) == 504
        wait_until(server, lambda: watching(server) is None, "connection never released")
        with connect(server) as c:
            get_ok(c, rid("after-blocked"))
    assert errors_logged(caplog) == []


# -- keep-alive: the connection stays watched -------------------------------------------------


def test_a_kept_alive_connection_is_still_watched_for_a_later_mid_upload_leave(
    server: Server,
) -> None:
    """Requests whose client stayed (answered, kept alive), then an upload left unread on the
    same connection: its client's leave is still seen, though aiohttp has stopped reading."""
    name = rid("keepalive-leave")
    with connect(server) as conn:
        fds = {get_ok(conn, rid(f"keepalive-ok-{i}")) for i in range(3)}
        assert watching(server) == 1
        conn.sendall(request_head("POST", "/park-unread", name, f"Content-Length: {64 << 20}"))
        BOARD.wait_entered(name)
        assert {FDS[name]} == fds  # (the same connection)
        upload_until_paused(server, conn, name)
    ended_with_disconnect(name)
    FINISHED.wait(name)


def test_kept_alive_connections_one_after_another_are_each_watched(server: Server) -> None:
    """Connection after connection (each taking the last one's descriptor, the epoll opened
    afresh), each serving two requests before an upload it leaves unread: each leave (FIN,
    or RST) is seen."""
    for i in range(3):
        name = rid(f"keepalive-leave-{i}")
        with connect(server) as conn:
            get_ok(conn, rid(f"ka-{i}-a"))
            get_ok(conn, rid(f"ka-{i}-b"))
            conn.sendall(request_head("POST", "/park-unread", name, f"Content-Length: {64 << 20}"))
            BOARD.wait_entered(name)
            upload_until_paused(server, conn, name)
            if i == 1:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ended_with_disconnect(name)
        wait_until(server, lambda: watching(server) is None, "connection never released")


# -- the epoll opened and closed again and again ------------------------------------------------


def test_the_epoll_reopened_many_times_still_sees_a_leave(server: Server) -> None:
    """The loop's epoll closes with its last connection and opens with the next (often on the
    same descriptor number, which the loop's reader must take afresh): after many such
    cycles, a mid-upload leave is still seen."""
    for i in range(25):
        with connect(server) as conn:
            get_ok(conn, rid(f"cycle-{i}"))
            assert watching(server) == 1
        wait_until(server, lambda: watching(server) is None, "connection never released")
    name = rid("after-cycles")
    with connect(server) as conn:
        conn.sendall(request_head("POST", "/park-unread", name, f"Content-Length: {64 << 20}"))
        BOARD.wait_entered(name)
        upload_until_paused(server, conn, name)
    ended_with_disconnect(name)


def test_two_loops_opening_and_closing_their_epolls_at_once() -> None:
    """Two servers on two loops (two threads), each with its epoll closed and opened again
    and again at the same time as the other's (the class-wide table of epolls per loop is
    shared): each still sees a mid-upload leave afterwards."""
    kinds = ["asyncio", "uvloop" if _has_uvloop() else "asyncio"]
    errors: list[BaseException] = []
    with Server(make_app(), new_loop(kinds[0])) as a, Server(make_app(), new_loop(kinds[1])) as b:

        def cycle(server: Server, tag: str) -> None:
            try:
                for i in range(40):
                    with connect(server) as conn:
                        get_ok(conn, rid(f"two-cycles-{tag}-{i}"))
                    wait_until(server, lambda: watching(server) is None, "never released")
            except BaseException as e:  # (reported by the test's thread)
                errors.append(e)

        threads = [threading.Thread(target=cycle, args=(s, t)) for s, t in ((a, "a"), (b, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(4 * NEVER)
        assert not any(t.is_alive() for t in threads)
        assert errors == [], errors
        for s, tag in ((a, "a"), (b, "b")):
            name = rid(f"two-cycles-leave-{tag}")
            with connect(s) as conn:
                conn.sendall(
                    request_head("POST", "/park-unread", name, f"Content-Length: {64 << 20}")
                )
                BOARD.wait_entered(name)
                upload_until_paused(s, conn, name)
            ended_with_disconnect(name)


# -- shutdown and restart ---------------------------------------------------------------------


def test_cleanup_with_connections_open_leaves_no_epoll_and_no_descriptor(loop_kind: str) -> None:
    """runner.cleanup() with idle kept-alive connections, one that never sent a request, a
    parked request and a paused upload: afterwards the loop has no epoll, and every descriptor
    the server opened is closed."""
    before = open_fds()
    loop = new_loop(loop_kind)
    server = Server(make_app(), loop)
    conns: list[socket.socket] = []
    parked, upload = rid("cleanup-parked"), rid("cleanup-upload")
    try:
        with server:
            for i in range(3):
                conns.append(connect(server))
                get_ok(conns[-1], rid(f"cleanup-idle-{i}"))
            conns.append(connect(server))  # no request
            conns.append(connect(server))
            conns[-1].sendall(request_head("GET", "/park", parked))
            BOARD.wait_entered(parked)
            conns.append(connect(server))
            conns[-1].sendall(
                request_head("POST", "/park-unread", upload, f"Content-Length: {64 << 20}")
            )
            BOARD.wait_entered(upload)
            upload_until_paused(server, conns[-1], upload)
            assert watching(server) == 5
        BOARD.wait_ended(parked)
        BOARD.wait_ended(upload)
        assert loop not in Hangups._of_loop, "the epoll outlived the server"
    finally:
        for conn in conns:
            conn.close()
    left = set(open_fds() - before)
    assert left == set(), f"descriptors left open: {left}"


def test_a_server_restarted_on_the_same_loop_watches_again(loop_kind: str) -> None:
    """Two servers, one after the other, then side by side, on one loop: the epoll is shared,
    survives the cleanup of one server while the other's connections are watched, and closes
    with the last."""
    loop = new_loop(loop_kind)
    thread = threading.Thread(target=loop.run_forever)
    thread.start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(NEVER)

    class Site:
        def __init__(self) -> None:
            self.loop = loop
            self.sock = tcp_socket()
            self.port = self.sock.getsockname()[1]
            self.runner = web.AppRunner(make_app(), handle_signals=False, shutdown_timeout=0.2)

        async def start(self) -> None:
            await self.runner.setup()
            await web.SockSite(self.runner, self.sock).start()

        def stop(self) -> None:
            run(self.runner.cleanup())
            self.sock.close()

    def leave_mid_upload(site: Any, name: str) -> None:
        with connect(site) as conn:
            conn.sendall(request_head("POST", "/park-unread", name, f"Content-Length: {64 << 20}"))
            BOARD.wait_entered(name)
            upload_until_paused(site, conn, name)
        ended_with_disconnect(name)

    try:
        one = Site()
        run(one.start())
        leave_mid_upload(one, rid("restart-1"))
        one.stop()
        assert watching(one) is None
        two = Site()
        run(two.start())
        leave_mid_upload(two, rid("restart-2"))
        # Side by side: a watched connection on each; the first server goes away.
        three = Site()
        run(three.start())
        with connect(two) as kept:
            get_ok(kept, rid("restart-kept"))
            with connect(three) as other:
                get_ok(other, rid("restart-other"))
            two_count = watching(two)
            assert two_count is not None and two_count >= 1
            three.stop()
            leave_mid_upload(two, rid("restart-3"))
        wait_until(two, lambda: watching(two) is None, "epoll outlived the connections")
        two.stop()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(NEVER)
        loop.close()


# -- a deadline gone on arrival ----------------------------------------------------------------

GONE = {
    "grpc-0n": ["Grpc-Timeout: 0n"],
    "grpc-0S": ["Grpc-Timeout: 0S"],
    "grpc-0H": ["Grpc-Timeout: 0H"],
    "connect-0": ["Connect-Timeout-Ms: 0"],
    "envoy-0": ["X-Envoy-Expected-Rq-Timeout-Ms: 0"],
    "grpc-5S-then-0n": ["Grpc-Timeout: 5S", "Grpc-Timeout: 0n"],
    "grpc-0n-then-5S": ["Grpc-Timeout: 0n", "Grpc-Timeout: 5S"],
    "grpc-0n-x3": ["Grpc-Timeout: 0n", "Grpc-Timeout: 0n", "Grpc-Timeout: 0n"],
    "grpc-5S-connect-0": ["Grpc-Timeout: 5S", "Connect-Timeout-Ms: 0"],
    "connect-0-grpc-5S": ["Connect-Timeout-Ms: 0", "Grpc-Timeout: 5S"],
}


@pytest.mark.parametrize("headers", list(GONE.values()), ids=list(GONE))
def test_a_deadline_gone_on_arrival_never_runs_the_handler_on_a_kept_alive_connection(
    server: Server, headers: list[str]
) -> None:
    """The 504 comes without the handler; the connection then closes (the 504 says so), and
    the server keeps serving."""
    name = rid("doa-get")
    with connect(server) as conn:
        get_ok(conn, rid("doa-before"))  # (a kept-alive connection, watched)
        conn.sendall(request_head("GET", "/park", name, *headers))
        data, closed = read_to_close(conn)
    assert data.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"), data
    assert data.endswith(b"\r\n\r\ndeadline exceeded"), data
    assert b"connection: close" in data.lower(), data
    assert closed, data
    assert not BOARD.event(BOARD.entered, name).is_set()
    with connect(server) as conn:
        get_ok(conn, rid("doa-after"))


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("header", ["Grpc-Timeout: 0n", "Connect-Timeout-Ms: 0"])
def test_a_deadline_gone_on_arrival_with_an_upload_closes_without_the_handler(
    server: Server, caplog: pytest.LogCaptureFixture, framing: str, header: str
) -> None:
    """Head and the start of a large body: the 504 comes, no handler runs, the connection
    closes (the body is never drained), nothing is logged, the server keeps serving."""
    name = rid(f"doa-upload-{framing}")
    if framing == "chunked":
        head = request_head("POST", "/park-unread", name, header, "Transfer-Encoding: chunked")
        body = (b"8000\r\n" + b"u" * 0x8000 + b"\r\n") * 4
    else:
        head = request_head("POST", "/park-unread", name, header, f"Content-Length: {64 << 20}")
        body = b"u" * (128 << 10)
    with caplog.at_level(logging.ERROR):
        with connect(server) as conn:
            # (the server may close first: what it answered is still to be read)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                conn.sendall(head + body)
            data = b""
            try:
                while chunk := conn.recv(65536):
                    data += chunk
            except ConnectionResetError:
                pass  # (closed with the body unread: a RST after the 504)
        assert data.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"), data
        assert b"deadline exceeded" in data, data
        assert not BOARD.event(BOARD.entered, name).is_set()
        with connect(server) as conn:
            get_ok(conn, rid("doa-upload-after"))
        wait_until(server, lambda: watching(server) is None, "connection never released")
    assert errors_logged(caplog) == []


def test_a_malformed_header_after_a_gone_deadline_is_still_an_error(server: Server) -> None:
    """``Grpc-Timeout: 0n`` then garbage: whichever answer, 400 or 504, the handler never runs
    and the server keeps serving."""
    name = rid("doa-malformed")
    with connect(server) as conn:
        conn.sendall(request_head("GET", "/park", name, "Grpc-Timeout: 0n", "Grpc-Timeout: soon"))
        head, body = read_response(conn)
    assert head.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 504 ")), head + body
    assert not BOARD.event(BOARD.entered, name).is_set()
    with connect(server) as conn:
        get_ok(conn, rid("doa-malformed-after"))


# -- max_timeout chosen per request ------------------------------------------------------------


def _raises(request: web.Request) -> float:
    raise RuntimeError("max_timeout function failed")


BAD_CAPS: dict[str, tuple[Callable[[web.Request], Any], type[BaseException]]] = {
    "raises": (_raises, RuntimeError),
    "nan": (lambda r: float("nan"), ValueError),
    "negative": (lambda r: -1, ValueError),
    "zero": (lambda r: 0, ValueError),
    "negative-zero": (lambda r: -0.0, ValueError),
    "minus-inf": (lambda r: float("-inf"), ValueError),
    "true": (lambda r: True, TypeError),
    "false": (lambda r: False, TypeError),
    "huge-int": (lambda r: 10**400, ValueError),
    "str": (lambda r: "5", TypeError),
}


@pytest.mark.parametrize("case", list(BAD_CAPS))
def test_a_bad_max_timeout_function_fails_the_request_with_500_and_the_server_serves_on(
    loop_kind: str, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    """What the function returns (or raises) is no number of seconds: the request fails with
    a 500 before its handler runs, aiohttp logs the error (a TypeError or ValueError that names
    the call, or the function's own), and the next request is served."""
    fn, expected = BAD_CAPS[case]

    def cap(request: web.Request) -> Any:
        return 5 if request.path == "/ok" else fn(request)

    name = rid(f"bad-cap-{case}")
    with caplog.at_level(logging.ERROR), Server(make_app(cap), new_loop(loop_kind)) as server:
        with connect(server) as conn:
            conn.sendall(request_head("GET", "/park", name))
            head, body = read_response(conn)
            assert head.startswith(b"HTTP/1.1 500 Internal Server Error\r\n"), head + body
        assert not BOARD.event(BOARD.entered, name).is_set()
        with connect(server) as conn:
            get_ok(conn, rid(f"bad-cap-after-{case}"))
        logged = [
            r.exc_info[1] for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info
        ]
    assert [type(e) for e in logged] == [expected], logged
    if expected is not RuntimeError:
        assert "gocontext.aiohttp.middleware()" in str(logged[0]), logged[0]
        assert "max_timeout function" in str(logged[0]), logged[0]


GOOD_CAPS: dict[str, tuple[Any, dict[str, str], Callable[[Any], bool]]] = {
    "inf": (float("inf"), {}, lambda rem: rem is None or rem > 1e9),
    "huge-int": (10**20, {}, lambda rem: rem is not None and rem > 1e9),
    "huge-int-header-wins": (10**20, {"Grpc-Timeout": "7S"}, lambda rem: 0 < rem <= 7),
    "none-header-kept": (None, {"Grpc-Timeout": "7S"}, lambda rem: 0 < rem <= 7),
    "none-no-header": (None, {}, lambda rem: rem is None),
    "tiny": (1e-300, {}, None),  # (positive: gone at once, though not on arrival)
    "int-5": (5, {"Grpc-Timeout": "100S"}, lambda rem: 0 < rem <= 5),
}


@pytest.mark.parametrize("case", list(GOOD_CAPS))
def test_edge_max_timeout_function_values(loop_kind: str, case: str) -> None:
    """Odd but valid returns: infinity, an int too large for a deadline clock's comfort, None;
    the header's smaller deadline wins. The server answers each and keeps serving."""
    value, headers, check = GOOD_CAPS[case]
    name = rid(f"good-cap-{case}")
    app = make_app(lambda request: value if request.path == "/info" else 5)
    with Server(app, new_loop(loop_kind)) as server:
        with connect(server) as conn:
            lines = [f"{k}: {v}" for k, v in headers.items()]
            conn.sendall(request_head("GET", "/info", name, *lines))
            head, body = read_response(conn)
        if check is None:
            assert head.startswith((b"HTTP/1.1 200 ", b"HTTP/1.1 504 ")), head + body
        else:
            assert head.startswith(b"HTTP/1.1 200 OK"), head + body
            remaining = json.loads(body)["remaining"]
            assert check(remaining), remaining
        with connect(server) as conn:
            get_ok(conn, rid(f"good-cap-after-{case}"))


def test_the_server_lets_go_of_a_connection_whose_peer_left_mid_upload(loop_kind: str) -> None:
    """Once the epoll has told that the client left mid-upload, its request ends at once; the
    server must then let go of the connection, not linger on it (aiohttp's lingering_time,
    here 60 s) waiting for the rest of an upload that can never come."""
    with Server(make_app(), new_loop(loop_kind), lingering_time=60.0) as server:
        name = rid("linger")
        with connect(server) as conn:
            conn.sendall(request_head("POST", "/park-unread", name, f"Content-Length: {64 << 20}"))
            BOARD.wait_entered(name)
            upload_until_paused(server, conn, name)
        ended_with_disconnect(name)
        FINISHED.wait(name)
        # The connection itself is lost at once (its socket closed, out of the epoll) ...
        wait_until(server, lambda: watching(server) is None, "connection never released")

        async def pending() -> list[str]:
            this = asyncio.current_task()
            return [repr(t) for t in asyncio.all_tasks() if t is not this]

        deadline = time.monotonic() + NEVER
        while left := asyncio.run_coroutine_threadsafe(pending(), server.loop).result(NEVER):
            assert time.monotonic() < deadline, f"the connection's task lingers: {left}"
            time.sleep(0.01)
