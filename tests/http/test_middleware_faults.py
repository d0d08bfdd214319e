"""ContextMiddleware under faults: clients that leave mid-upload or mid-stream, handlers blocked
in threads, deadlines that pass as the client leaves, deadlines already gone, hostile headers.

Each fault is shown on a real uvicorn server (asyncio), and again with the test playing the
server (``Peer``) so the middleware also runs under trio.
"""

from __future__ import annotations

import contextvars
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

import gocontext
import gocontext.http
from gocontext.http._middleware import _DEADLINE_SLACK, _Exchange

from ..conftest import NEVER, FakeClock
from .conftest import (
    BOARD,
    RID,
    LogRecords,
    Message,
    Peer,
    Server,
    starlette_app,
    wait_until,
)


class Parked:
    """A plain ASGI app that records its context and waits for it to end, reading nothing."""

    def __init__(self) -> None:
        self.contexts: list[gocontext.Context] = []
        self.entered = anyio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        ctx = gocontext.current()
        self.contexts.append(ctx)
        self.entered.set()
        with anyio.move_on_after(NEVER):
            await ctx.done()

    @property
    def ctx(self) -> gocontext.Context:
        return self.contexts[0]


def _rid_header(rid: str) -> tuple[bytes, bytes]:
    return (b"baggage", f"test-rid={rid}".encode())


# -- a client that leaves mid-upload ----------------------------------------------------------


def test_a_client_that_leaves_mid_upload_cancels_a_handler_that_never_reads(
    server: Server,
) -> None:
    rid = uuid.uuid4().hex
    with socket.create_connection(("127.0.0.1", server.port), timeout=NEVER) as sock:
        head = (
            "POST /upload HTTP/1.1\r\nhost: test\r\ncontent-length: 1000000\r\n"
            f"baggage: test-rid={rid}\r\n\r\n"
        )
        sock.sendall(head.encode() + b"x" * 300_000)  # many reads' worth, then leave
        assert BOARD.event(BOARD.entered, rid).wait(NEVER)
    assert BOARD.event(BOARD.ended, rid).wait(NEVER), "the handler never saw the client leave"
    assert isinstance(BOARD.causes[rid], gocontext.http.ClientDisconnected)


async def test_the_watcher_keeps_reading_a_body_nobody_takes_and_sees_the_client_leave() -> None:
    app = Parked()
    peer = Peer()
    for _ in range(5):
        peer.push({"type": "http.request", "body": b"x" * 65536, "more_body": True})
    peer.push({"type": "http.disconnect"})
    middleware = gocontext.http.ContextMiddleware(app, max_timeout=None)
    with anyio.fail_after(NEVER):
        await middleware(peer.scope, peer.receive, peer.send)
    assert isinstance(app.ctx.err(), gocontext.Canceled)
    assert isinstance(gocontext.cause(app.ctx), gocontext.http.ClientDisconnected)


async def test_a_body_read_late_arrives_whole_and_in_order() -> None:
    chunks = [bytes([i]) * 70000 for i in range(4)]
    got: list[bytes] = []
    started = anyio.Event()

    async def late_reader(scope: Any, receive: Any, send: Any) -> None:
        started.set()
        await anyio.sleep(0.05)  # long enough for the watcher to take over the reading
        while True:
            message = await receive()
            got.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    peer = Peer()
    for i, chunk in enumerate(chunks):
        peer.push({"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1})
    with anyio.fail_after(NEVER):
        await gocontext.http.ContextMiddleware(late_reader)(peer.scope, peer.receive, peer.send)
    assert b"".join(got) == b"".join(chunks)
    assert peer.status == 200


# -- a handler blocked in a thread ------------------------------------------------------------


def test_a_blocked_sync_handler_gets_its_504_at_the_deadline(server: Server) -> None:
    rid = uuid.uuid4().hex
    release = BOARD.event(BOARD.release, rid)
    try:
        r = httpx.get(
            f"{server.url}/blocked",
            headers={"grpc-timeout": "300m", "baggage": f"test-rid={rid}"},
            timeout=NEVER,
        )
        assert r.status_code == 504
        assert r.text == "deadline exceeded"
        assert not BOARD.event(BOARD.ended, rid).is_set(), "the 504 waited for the handler"
    finally:
        release.set()
    assert BOARD.event(BOARD.ended, rid).wait(NEVER)  # the thread runs on until it returns
    assert isinstance(BOARD.errors[rid], gocontext.DeadlineExceeded)
    assert httpx.get(f"{server.url}/info", timeout=NEVER).status_code == 200


async def test_a_blocked_sync_handler_s_late_response_is_discarded() -> None:
    release = threading.Event()
    returned = threading.Event()

    def blocked(request: Request) -> Response:
        release.wait(NEVER)
        returned.set()
        return PlainTextResponse("late")

    app = Starlette(routes=[Route("/", blocked)])
    peer = Peer([(b"grpc-timeout", b"100m")])
    middleware = gocontext.http.ContextMiddleware(app)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(middleware, peer.scope, peer.receive, peer.send)
            await peer.wait_for(lambda: peer.complete)
            assert peer.status == 504
            assert not returned.is_set()
            release.set()
    finally:
        release.set()
    assert returned.is_set()
    assert [m["type"] for m in peer.sent] == ["http.response.start", "http.response.body"]
    assert peer.body == b"deadline exceeded"


# -- the deadline wins when the client leaves because of it -----------------------------------


def test_every_hop_records_the_deadline_when_the_client_s_deadline_ends_the_call(
    server: Server, second_server: Server
) -> None:
    for _ in range(3):
        rid = uuid.uuid4().hex
        ctx, cancel = gocontext.with_timeout(
            gocontext.with_value(gocontext.background(), RID, rid), 1.0
        )
        with (
            httpx.Client(transport=gocontext.http.Transport(), timeout=NEVER) as client,
            pytest.raises(gocontext.DeadlineExceeded),
        ):
            client.get(
                f"{server.url}/relay",
                params={"to": f"{second_server.url}/wait"},
                extensions={"gocontext": ctx},
            )
        cancel()
        client_deadline = ctx.deadline()
        assert client_deadline is not None
        for hop in (f"{rid}-relay", rid):
            if not BOARD.event(BOARD.entered, hop).is_set():
                continue  # the deadline passed before the request got there
            assert BOARD.event(BOARD.ended, hop).wait(NEVER), hop
            err, hop_deadline = BOARD.errors[hop], BOARD.deadlines[hop]
            assert hop_deadline is not None
            # A hop's deadline is the client's plus the request's transit to it. Within the
            # slack, the rule is certain: the client left for the deadline. (A machine so
            # loaded that the transit is longer is told apart from a client that left.)
            if hop_deadline - client_deadline <= _DEADLINE_SLACK:
                assert isinstance(err, gocontext.DeadlineExceeded), (hop, BOARD.causes[hop])
            else:
                assert isinstance(err, (gocontext.DeadlineExceeded, gocontext.Canceled))


async def test_a_client_that_leaves_as_the_deadline_passes_leaves_for_the_deadline() -> None:
    app = Parked()
    peer = Peer([(b"grpc-timeout", b"50m")])
    async with anyio.create_task_group() as tg:
        tg.start_soon(gocontext.http.ContextMiddleware(app), peer.scope, peer.receive, peer.send)
        with anyio.fail_after(NEVER):
            await app.entered.wait()
        peer.push({"type": "http.disconnect"})  # 50 ms before the deadline: its doing
    assert isinstance(app.ctx.err(), gocontext.DeadlineExceeded)


async def test_a_client_that_leaves_long_before_the_deadline_is_recorded_as_gone() -> None:
    app = Parked()
    peer = Peer([(b"grpc-timeout", b"10S")])
    async with anyio.create_task_group() as tg:
        tg.start_soon(gocontext.http.ContextMiddleware(app), peer.scope, peer.receive, peer.send)
        with anyio.fail_after(NEVER):
            await app.entered.wait()
        peer.push({"type": "http.disconnect"})
    assert isinstance(app.ctx.err(), gocontext.Canceled)
    assert isinstance(gocontext.cause(app.ctx), gocontext.http.ClientDisconnected)


async def test_the_rule_reads_the_deadline_clock(fake_clock: FakeClock) -> None:
    app = Parked()
    peer = Peer([(b"grpc-timeout", b"10S")])  # ten seconds on the fake clock: far off
    async with anyio.create_task_group() as tg:
        tg.start_soon(gocontext.http.ContextMiddleware(app), peer.scope, peer.receive, peer.send)
        with anyio.fail_after(NEVER):
            await app.entered.wait()
        peer.push({"type": "http.disconnect"})
    assert isinstance(gocontext.cause(app.ctx), gocontext.http.ClientDisconnected)


# -- streams ----------------------------------------------------------------------------------


@pytest.fixture
def short_server() -> Iterator[Server]:
    """Its own server, so that its log holds only what a test caused (a server's logging is set
    up when it is made: ask for this fixture before ``server_logs``); streams get 0.5 s."""
    with Server(starlette_app(max_timeout=0.5)) as s:
        yield s


def _served_all(server: Server) -> bool:
    return not server.server.server_state.tasks  # uvicorn logs a request's end before this


def test_a_stream_cut_at_the_deadline_ends_cleanly_with_no_error_logged(
    short_server: Server, server_logs: LogRecords
) -> None:
    rid = uuid.uuid4().hex
    with httpx.Client(timeout=NEVER) as client:
        with client.stream(
            "GET", f"{short_server.url}/stream", headers={"baggage": f"test-rid={rid}"}
        ) as r:
            body = r.read()  # the deadline ends it: no RemoteProtocolError
        assert r.status_code == 200
        assert body == b"first chunk\n"
        assert client.get(f"{short_server.url}/info").status_code == 200
    wait_until(lambda: _served_all(short_server), "the server finished its requests")
    assert server_logs.errors() == []


def test_a_body_of_declared_length_cut_at_the_deadline_is_closed_not_left_hanging() -> None:
    async def download(request: Request) -> Response:
        async def body():  # type: ignore[no-untyped-def]
            yield b"x" * 10
            await anyio.sleep(NEVER)
            yield b"y" * 10

        return StreamingResponse(body(), headers={"content-length": "20"})

    app = Starlette(routes=[Route("/", download)])
    with (
        Server(gocontext.http.ContextMiddleware(app, max_timeout=0.3)) as own,
        httpx.Client(timeout=NEVER) as client,
        client.stream("GET", f"{own.url}/") as r,
        pytest.raises(httpx.RemoteProtocolError, match="complete message body"),
    ):
        r.read()  # the server closes the connection: no wait for the rest of the body


async def test_a_body_of_declared_length_is_left_unfinished_at_the_deadline() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"Content-Length", b"20")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x" * 10, "more_body": True})
        await anyio.sleep(NEVER)

    peer = Peer([(b"grpc-timeout", b"100m")])
    with anyio.fail_after(NEVER):
        await gocontext.http.ContextMiddleware(app)(peer.scope, peer.receive, peer.send)
    assert peer.body == b"x" * 10
    assert not peer.complete  # left for the server to close the connection


@pytest.fixture
def own_server() -> Iterator[Server]:
    """Its own server, so that its log holds only what a test caused."""
    with Server(starlette_app(max_timeout=None)) as s:
        yield s


@pytest.mark.parametrize("path", ["/stream", "/raw-stream"])
def test_a_client_that_closes_a_stream_early_causes_no_error_log(
    own_server: Server, server_logs: LogRecords, path: str
) -> None:
    rid = uuid.uuid4().hex
    with httpx.Client(timeout=NEVER) as client:
        url = f"{own_server.url}{path}"
        with client.stream("GET", url, headers={"baggage": f"test-rid={rid}"}) as r:
            assert next(r.iter_raw()) == b"first chunk\n"
            assert BOARD.event(BOARD.entered, rid).wait(NEVER)
    assert BOARD.event(BOARD.ended, rid).wait(NEVER)
    wait_until(lambda: _served_all(own_server), "the server finished its requests")
    assert server_logs.errors() == []
    assert isinstance(BOARD.causes[rid], gocontext.http.ClientDisconnected)


async def _stream_app() -> Starlette:
    async def stream(request: Request) -> Response:
        async def body():  # type: ignore[no-untyped-def]
            yield b"first chunk\n"
            await anyio.sleep(NEVER)
            yield b"never\n"

        return StreamingResponse(body())

    return Starlette(routes=[Route("/stream", stream)])


async def test_a_stream_cut_at_the_deadline_is_ended_by_the_middleware() -> None:
    peer = Peer(path="/stream")
    middleware = gocontext.http.ContextMiddleware(await _stream_app(), max_timeout=0.2)
    with anyio.fail_after(NEVER):
        await middleware(peer.scope, peer.receive, peer.send)  # returns, raises nothing
    assert peer.status == 200
    assert peer.complete
    assert peer.body == b"first chunk\n"


async def test_a_stream_the_client_leaves_ends_quietly() -> None:
    peer = Peer(path="/stream")
    middleware = gocontext.http.ContextMiddleware(await _stream_app(), max_timeout=None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(middleware, peer.scope, peer.receive, peer.send)  # raises nothing
        await peer.wait_for(lambda: peer.body == b"first chunk\n")
        peer.push({"type": "http.disconnect"})


async def test_max_timeout_can_be_chosen_per_request() -> None:
    deadlines: dict[str, float | None] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        deadlines[scope["path"]] = gocontext.current().deadline()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = gocontext.http.ContextMiddleware(
        app, max_timeout=lambda scope: None if scope["path"].startswith("/events") else 0.5
    )
    for path in ("/events/feed", "/orders"):
        peer = Peer(path=path)
        await middleware(peer.scope, peer.receive, peer.send)
        assert peer.status == 200
    assert deadlines["/events/feed"] is None
    orders = deadlines["/orders"]
    assert orders is not None
    assert orders - time.monotonic() <= 0.5

    for wrong in ("soon", lambda: 5, -1.0):
        bad = gocontext.http.ContextMiddleware(app, max_timeout=lambda scope, w=wrong: w)  # type: ignore[arg-type, misc]
        peer = Peer()
        with pytest.raises((TypeError, ValueError), match=r"max_timeout.*got"):
            await bad(peer.scope, peer.receive, peer.send)
        assert peer.sent == []


# -- bounds on what comes in ------------------------------------------------------------------


def test_the_default_cap_bounds_requests_with_no_or_absurd_deadlines(
    default_server: Server, server: Server
) -> None:
    remaining = httpx.get(f"{default_server.url}/info").json()["remaining"]
    assert 50 < remaining <= 60
    r = httpx.get(f"{default_server.url}/info", headers={"grpc-timeout": "99999999H"})
    assert r.status_code == 200
    assert r.json()["remaining"] <= 60
    r = httpx.get(f"{server.url}/info", headers={"grpc-timeout": "99999999H"})  # unbounded
    assert r.status_code == 200
    assert 0 < r.json()["remaining"] <= 366 * 86400


@pytest.mark.parametrize("value", ["0S", "0n", "0m"])
def test_a_deadline_gone_on_arrival_gets_a_504_without_running_the_handler(
    server: Server, value: str
) -> None:
    rid = uuid.uuid4().hex
    r = httpx.get(
        f"{server.url}/wait", headers={"grpc-timeout": value, "baggage": f"test-rid={rid}"}
    )
    assert r.status_code == 504
    assert not BOARD.event(BOARD.entered, rid).is_set()
    r = httpx.get(f"{server.url}/wait", headers={"connect-timeout-ms": "0"})
    assert r.status_code == 504


async def test_an_expired_deadline_never_calls_the_app() -> None:
    called = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope)

    peer = Peer([(b"grpc-timeout", b"0n")])
    await gocontext.http.ContextMiddleware(app)(peer.scope, peer.receive, peer.send)
    assert peer.status == 504
    assert called == []


@pytest.mark.parametrize("junk", [b"\x85", b"\xa0", b"\x1c", b"\x0b"])
async def test_only_http_whitespace_may_surround_a_deadline_header(junk: bytes) -> None:
    app = Parked()
    peer = Peer([(b"grpc-timeout", junk + b"5S")])
    await gocontext.http.ContextMiddleware(app)(peer.scope, peer.receive, peer.send)
    assert peer.status == 400
    assert app.contexts == []


@pytest.mark.parametrize("junk", [b"\x85", b"\xa0"])
def test_a_real_server_rejects_non_http_whitespace_too(server: Server, junk: bytes) -> None:
    r = httpx.get(f"{server.url}/info", headers={"grpc-timeout": b"5S" + junk})
    assert r.status_code == 400


async def test_a_400_echoes_only_the_start_of_a_huge_header() -> None:
    peer = Peer([(b"connect-timeout-ms", b"9" * 65536)])
    await gocontext.http.ContextMiddleware(Parked())(peer.scope, peer.receive, peer.send)
    assert peer.status == 400
    assert len(peer.body) < 300
    assert peer.body.decode().endswith("…")


def test_raw_utf8_baggage_reaches_the_handler_as_text(server: Server) -> None:
    r = httpx.get(f"{server.url}/info", headers={"baggage": "test-rid=Genève".encode()})
    assert r.json()["rid"] == "Genève"
    r = httpx.get(f"{server.url}/info", headers={"baggage": "test-rid=two words"})
    assert r.json()["rid"] is None


async def test_a_response_sent_whole_by_pathsend_is_not_ended_again_at_the_deadline() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": "/etc/hostname"})
        with anyio.CancelScope(shield=True):  # works on past the deadline
            await gocontext.current().done()

    peer = Peer([(b"grpc-timeout", b"50m")])
    with anyio.fail_after(NEVER):
        await gocontext.http.ContextMiddleware(app)(peer.scope, peer.receive, peer.send)
    assert [m["type"] for m in peer.sent] == ["http.response.start", "http.response.pathsend"]


# -- the end of a request ---------------------------------------------------------------------


@pytest.mark.parametrize("max_timeout", [60.0, None])
async def test_a_requests_context_ends_with_it_and_wakes_what_waits_on_it(
    max_timeout: float | None,
) -> None:
    """With a deadline (the default cap) and without one (no cap, no header): whatever the
    handler left registered on its context, or on a context derived from it, is woken."""
    woken = threading.Event()
    seen: list[gocontext.Context] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        ctx = gocontext.current()
        seen.append(ctx)
        below, _ = gocontext.with_cancel(ctx)  # never cancelled by the handler
        seen.append(below)
        below.done().add_callback(woken.set)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    peer = Peer()
    with anyio.fail_after(NEVER):
        await gocontext.http.ContextMiddleware(app, max_timeout=max_timeout)(
            peer.scope, peer.receive, peer.send
        )
    assert peer.status == 200
    assert woken.wait(NEVER), "a callback on the request's context never ran"
    assert all(isinstance(c.err(), gocontext.Canceled) for c in seen)
    assert type(gocontext.cause(seen[0])) is gocontext.Canceled  # no cause: not a disconnect


def test_one_middleware_serves_one_event_loop_after_another() -> None:
    """Each run (asyncio, trio, asyncio again) gets watchers of its own: a handler that never
    reads still learns that its client left."""
    app = Parked()
    middleware = gocontext.http.ContextMiddleware(app, max_timeout=None)

    async def one_request() -> None:
        app.contexts.clear()
        peer = Peer()
        peer.push({"type": "http.request", "body": b"x" * 65536, "more_body": True})
        peer.push({"type": "http.disconnect"})
        with anyio.fail_after(NEVER):
            await middleware(peer.scope, peer.receive, peer.send)
        assert isinstance(gocontext.cause(app.ctx), gocontext.http.ClientDisconnected)

    for backend in ("asyncio", "trio", "asyncio"):
        anyio.run(one_request, backend=backend)


_REQUEST_TAG: contextvars.ContextVar[str] = contextvars.ContextVar("request_tag", default="")


async def test_the_504_goes_out_in_the_requests_own_context_variables() -> None:
    """The watcher that answers at the deadline sends in a copy of its request's context
    variables (what a tracing layer around the middleware set), not those of a request before."""
    release = threading.Event()
    middleware = gocontext.http.ContextMiddleware(
        lambda scope, receive, send: anyio.to_thread.run_sync(release.wait), max_timeout=0.2
    )
    for tag in ("first", "second"):
        _REQUEST_TAG.set(tag)
        release.clear()
        peer = Peer()
        seen: list[str] = []

        async def send(message: Any, peer: Peer = peer, seen: list[str] = seen) -> None:
            seen.append(_REQUEST_TAG.get())
            if message["type"] == "http.response.body":
                release.set()  # the 504 is out: let the handler go
            await peer.send(message)

        with anyio.fail_after(NEVER):
            await middleware(peer.scope, peer.receive, send)
        assert peer.status == 504
        assert seen == [tag, tag]


# -- a handler that answers once its deadline has passed -------------------------------------


async def _answers_after_its_deadline(request: Request) -> Response:
    await gocontext.current().done()  # woken by the deadline, before any cancel reaches it
    return PlainTextResponse("late")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_handler_that_answers_once_its_deadline_passed_is_answered_with_the_504(
    loop: str,
) -> None:
    """The handler wakes at its deadline and answers at once: uvicorn's ``send`` never yields,
    so no cancel can reach the handler before its answer is out. The 504 goes out instead."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    app = Starlette(routes=[Route("/", _answers_after_its_deadline)])
    with Server(gocontext.http.ContextMiddleware(app), loop=loop) as server:
        with httpx.Client(timeout=NEVER) as client:
            for _ in range(5):
                r = client.get(server.url, headers={"grpc-timeout": "50m"})
                assert (r.status_code, r.text) == (504, "deadline exceeded")


async def test_a_response_begun_once_the_deadline_passed_is_replaced_by_the_504(
    fake_clock: FakeClock,
) -> None:
    """The middleware's ``send`` itself, as the app calls it once the deadline has ended the
    request's context (before any cancel reaches the app): the 504 goes out in place of the
    response begun, and what the app sends after goes nowhere."""
    sent: list[Message] = []

    async def server_send(message: Message) -> None:
        sent.append(message)

    async def server_receive() -> Message:
        raise AssertionError("nothing is read")

    ctx, cancel = gocontext.with_timeout(gocontext.background(), 1)
    fake_clock.advance(2)
    assert isinstance(ctx.err(), gocontext.DeadlineExceeded)
    exchange = _Exchange(server_receive, server_send, ctx, lambda cause: cancel())
    await exchange.send({"type": "http.response.start", "status": 200, "headers": []})
    await exchange.send({"type": "http.response.body", "body": b"late"})
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert (sent[0]["status"], sent[1]["body"]) == (504, b"deadline exceeded")
