"""aiohttp client and server: deadline, values and cancel cross the hop, a disconnect reaches
the handler, the pool stays healthy. aiohttp runs on asyncio only: these tests have no trio twin
(a trio program uses gocontext.http with httpx)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import gocontext
import gocontext.aiohttp
import gocontext.http
from gocontext import _context
from gocontext.aiohttp import _server
from gocontext.aiohttp._task import TaskCanceller
from gocontext.http._headers import parse_grpc_timeout
from gocontext.http._middleware import _DEADLINE_SLACK

from ..conftest import NEVER, FakeClock
from .aiohttp_app import (
    FINISHED,
    SEEN,
    AiohttpServer,
    assert_pool_clean,
    info,
    late_write,
    make_app,
    released,
    session_fixture,  # noqa: F401 - the fixture "session"
)
from .conftest import (
    BOARD,
    RID,
    SECRET,
    cancel_task_and_context_when_entered,
    cancel_when_entered,
    done_context,
    rid,
    unreached_port,
    with_rid,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiohttp runs on asyncio only


@pytest.fixture(scope="module")
def server() -> Iterator[AiohttpServer]:
    with AiohttpServer(make_app()) as s:
        yield s


@pytest.fixture(scope="module")
def capped_server() -> Iterator[AiohttpServer]:
    with AiohttpServer(make_app(max_timeout=5)) as s:
        yield s


async def test_deadline_and_propagated_values_reach_the_handler(
    session: aiohttp.ClientSession, server: AiohttpServer
) -> None:
    ctx = gocontext.with_value(with_rid("r-1"), SECRET, "hunter2")
    with gocontext.with_timeout(ctx, 30) as (ctx, _):
        async with session.get(server.url + "/info", trace_request_ctx=ctx) as r:
            body = await r.json()
    assert 0 < body["remaining"] <= 30
    assert body["grpc-timeout"] is not None
    assert body["rid"] == "r-1"
    assert body["secret"] is None
    assert "hunter2" not in str(body["baggage"])
    assert body["same_as_request"] is True


async def test_the_ambient_context_is_used_without_trace_request_ctx(
    session: aiohttp.ClientSession, server: AiohttpServer
) -> None:
    with gocontext.use(with_rid("ambient")):
        async with session.get(server.url + "/info") as r:
            body = await r.json()
    assert body["rid"] == "ambient"
    assert body["remaining"] is None


async def test_client_session_reads_trace_request_ctx_without_a_trace_config(
    server: AiohttpServer,
) -> None:
    # A trace config costs every request a trace object and its signals: the session hands
    # trace_request_ctx to its middleware itself (and leaves out a trace_config() given).
    given = gocontext.aiohttp.trace_config()
    async with gocontext.aiohttp.client_session(
        trace_configs=[given], headers={"baggage": "user=ada"}
    ) as session:
        assert session.trace_configs == []
        with gocontext.use(with_rid("ambient")):
            async with session.get(server.url + "/info", trace_request_ctx=with_rid("given")) as r:
                body = await r.json()
    assert body["rid"] == "given"
    assert body["baggage"].count("user=ada") == 1


async def test_a_request_made_within_another_takes_its_own_context(server: AiohttpServer) -> None:
    # The outer request's trace_request_ctx is handed to its own hops only: a request that a
    # middleware makes while it is under way, without one, goes with the ambient context.
    inner: list[Any] = []

    async def fetch_first(req: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        if req.url.path == "/ok":
            async with session.get(server.url + "/info") as r:
                inner.append(await r.json())
        return await handler(req)  # type: ignore[no-any-return]

    with gocontext.use(with_rid("ambient")):
        async with gocontext.aiohttp.client_session(middlewares=(fetch_first,)) as session:
            async with session.get(server.url + "/ok", trace_request_ctx=with_rid("outer")) as r:
                assert await r.text() == "ok"
            async with session.get(server.url + "/info", trace_request_ctx=with_rid("after")) as r:
                assert (await r.json())["rid"] == "after"
    assert [body["rid"] for body in inner] == ["ambient"]


async def test_a_trace_config_alone_sends_the_deadline_and_values(server: AiohttpServer) -> None:
    config = gocontext.aiohttp.trace_config()
    async with aiohttp.ClientSession(trace_configs=[config]) as plain:
        with gocontext.with_timeout(with_rid("traced"), 30) as (ctx, _):
            async with plain.get(server.url + "/info", trace_request_ctx=ctx) as r:
                body = await r.json()
    assert body["rid"] == "traced"
    assert 0 < body["remaining"] <= 30


@pytest.mark.parametrize("ending", ["answered", "cancelled"])
async def test_the_callers_own_trace_configs_see_every_event_of_the_request(
    server: AiohttpServer, ending: str
) -> None:
    # The session's middleware does our work: the caller's traces see the request start, its
    # headers go, its end (or its exception) and the same trace_request_ctx that told us the
    # request's context.
    seen: list[tuple[str, object]] = []

    def record(name: str) -> Any:
        async def on(session: object, trace_ctx: Any, params: object) -> None:
            seen.append((name, trace_ctx.trace_request_ctx))

        return on

    config = aiohttp.TraceConfig()
    for name in ("request_start", "request_headers", "request_end", "request_exception"):
        signal = getattr(config, f"on_{name}_sent" if name == "request_headers" else f"on_{name}")
        signal.append(record(name))
    async with gocontext.aiohttp.client_session(trace_configs=[config]) as session:
        if ending == "answered":
            ctx = with_rid("traced")
            async with session.get(server.url + "/info", trace_request_ctx=ctx) as r:
                assert (await r.json())["rid"] == "traced"
            last = "request_end"
        else:
            name = rid("traced")
            ctx, cancel = gocontext.with_cancel(with_rid(name))
            t = cancel_when_entered(name, cancel)
            with pytest.raises(gocontext.Canceled):
                await session.get(server.url + "/wait", trace_request_ctx=ctx)
            await asyncio.to_thread(t.join, NEVER)
            last = "request_exception"
        assert seen == [(name, ctx) for name in ("request_start", "request_headers", last)]
        async with session.get(server.url + "/ok") as r:  # and again, on the same session
            assert await r.text() == "ok"
    assert [name for name, _ in seen[3:]] == ["request_start", "request_headers", "request_end"]


@pytest.mark.parametrize("where", ["headers", "body"])
async def test_cancel_from_another_thread_aborts_the_request_and_the_handler_sees_a_disconnect(
    session: aiohttp.ClientSession, server: AiohttpServer, where: str
) -> None:
    name = rid(where)
    ctx, cancel = gocontext.with_cancel(with_rid(name))
    t = cancel_when_entered(name, cancel)
    path = "/wait" if where == "headers" else "/body"
    with pytest.raises(gocontext.Canceled):
        async with session.get(server.url + path, trace_request_ctx=ctx) as r:
            await r.read()
    await asyncio.to_thread(t.join, NEVER)
    cause = await asyncio.to_thread(BOARD.wait_ended, name)
    assert isinstance(cause, gocontext.http.ClientDisconnected)
    assert _context.watcher_count(ctx) == 0
    # The task goes on as any other: the context's cancel of it is taken back.
    task: Any = asyncio.current_task()
    assert getattr(task, "cancelling", lambda: 0)() == 0
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.Event().wait(), 0.01)
    await assert_pool_clean(session, server)


async def test_cancel_from_another_task_aborts_the_request(
    session: aiohttp.ClientSession, server: AiohttpServer
) -> None:
    name = rid("task")
    ctx, cancel = gocontext.with_cancel(with_rid(name))

    async def canceller() -> None:
        await asyncio.to_thread(BOARD.wait_entered, name)
        cancel()

    task = asyncio.create_task(canceller())
    with pytest.raises(gocontext.Canceled):
        await session.get(server.url + "/wait", trace_request_ctx=ctx)
    await task
    await asyncio.to_thread(BOARD.wait_ended, name)
    await assert_pool_clean(session, server)


async def test_a_framework_cancellation_passes_through_untouched(
    session: aiohttp.ClientSession, server: AiohttpServer
) -> None:
    """A task cancelled at the same moment as its context ends cancelled: no Canceled takes
    the place of the task's own cancellation."""
    name = rid("framework")
    ctx, cancel = gocontext.with_cancel(with_rid(name))

    async def call() -> None:
        await session.get(server.url + "/wait", trace_request_ctx=ctx)

    await cancel_task_and_context_when_entered(name, asyncio.ensure_future(call()), cancel)
    assert _context.watcher_count(ctx) == 0
    await assert_pool_clean(session, server)


async def test_passed_deadline_raises_deadline_exceeded(
    session: aiohttp.ClientSession, server: AiohttpServer
) -> None:
    name = rid("deadline")
    with gocontext.with_timeout(with_rid(name), 0.3) as (ctx, _):
        with pytest.raises(gocontext.DeadlineExceeded):
            await session.get(server.url + "/wait", trace_request_ctx=ctx)
    await asyncio.to_thread(BOARD.wait_ended, name)
    client_deadline, server_deadline = ctx.deadline(), BOARD.deadlines[name]
    assert client_deadline is not None and server_deadline is not None
    # The server's deadline is the client's plus the request's transit. Within the slack the
    # rule is certain: the client left for the deadline. (A machine so loaded that the transit
    # is longer is told apart from a client that left.)
    if server_deadline - client_deadline <= _DEADLINE_SLACK:
        assert isinstance(BOARD.errors[name], gocontext.DeadlineExceeded), BOARD.causes[name]
    await assert_pool_clean(session, server)


async def test_a_client_that_leaves_as_its_deadline_passes_leaves_for_the_deadline(
    server: AiohttpServer,
) -> None:
    """The header carries the time left when the caller sent it, so the server's deadline falls
    after the caller's by the request's transit: a caller that gives up at its deadline is
    seen leaving a moment before the server's. A disconnect that close to the deadline is the
    deadline's doing, as with ContextMiddleware."""
    name = rid("leaves-for-deadline")
    headers = {"grpc-timeout": "200m", "baggage": f"{RID.name}={name}"}
    async with aiohttp.ClientSession() as plain:  # no gocontext: the test decides when it leaves
        call = asyncio.ensure_future(plain.get(server.url + "/wait", headers=headers))
        await asyncio.to_thread(BOARD.wait_entered, name)
        call.cancel()  # leaves now: at most 200 ms before the server's deadline
        with pytest.raises(asyncio.CancelledError):
            await call
    await asyncio.to_thread(BOARD.wait_ended, name)
    assert isinstance(BOARD.errors[name], gocontext.DeadlineExceeded), BOARD.causes[name]


@pytest.mark.parametrize("how", ["canceled", "expired"])
async def test_a_done_context_sends_nothing(session: aiohttp.ClientSession, how: str) -> None:
    ctx, expected = done_context(how)
    with unreached_port() as port, pytest.raises(expected):
        await session.get(f"http://127.0.0.1:{port}/", trace_request_ctx=ctx)


async def test_the_callers_own_smaller_timeout_still_raises_aiohttps_timeout(
    session: aiohttp.ClientSession, server: AiohttpServer
) -> None:
    name = rid("own-timeout")
    ctx, cancel = gocontext.with_timeout(with_rid(name), 60)
    with pytest.raises(asyncio.TimeoutError):
        await session.get(
            server.url + "/wait", trace_request_ctx=ctx, timeout=aiohttp.ClientTimeout(total=0.2)
        )
    cancel()
    await asyncio.to_thread(BOARD.wait_ended, name)
    await assert_pool_clean(session, server)


async def plain_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """The status and body of a GET by a plain aiohttp client (no gocontext on its side)."""
    async with aiohttp.ClientSession() as plain, plain.get(url, headers=headers) as r:
        return r.status, await r.text()


async def test_a_malformed_deadline_gets_400_and_the_server_keeps_serving(
    server: AiohttpServer,
) -> None:
    status, text = await plain_get(server.url + "/info", {"Grpc-Timeout": "soon"})
    assert status == 400
    assert "Grpc-Timeout" in text
    assert await plain_get(server.url + "/ok") == (200, "ok")


async def test_max_timeout_caps_the_callers_deadline_and_applies_without_one(
    capped_server: AiohttpServer,
) -> None:
    for headers in ({"Grpc-Timeout": "100S"}, {}):
        _, text = await plain_get(capped_server.url + "/info", headers)
        assert 0 < json.loads(text)["remaining"] <= 5


async def test_a_handler_that_ignores_its_context_is_stopped_with_504(
    server: AiohttpServer,
) -> None:
    status, _ = await plain_get(server.url + "/ignore", {"Grpc-Timeout": "200m"})
    assert status == 504


def test_middleware_rejects_a_bad_max_timeout() -> None:
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="max_timeout"):
            gocontext.aiohttp.middleware(max_timeout=bad)
    for wrong in ("5", True):
        with pytest.raises(TypeError, match=r"gocontext.aiohttp.middleware\(\).*max_timeout"):
            gocontext.aiohttp.middleware(max_timeout=wrong)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "headers", [{"Grpc-Timeout": "0S"}, {"Grpc-Timeout": "0n"}, {"Connect-Timeout-Ms": "0"}]
)
async def test_a_deadline_gone_on_arrival_gets_a_504_without_running_the_handler(
    server: AiohttpServer, headers: dict[str, str]
) -> None:
    """A request whose deadline has passed when it arrives is answered 504 at once: its
    handler, which might act on it before looking at its context, never runs."""
    name = rid("gone-on-arrival")
    headers = {**headers, "baggage": f"{RID.name}={name}"}
    assert await plain_get(server.url + "/wait", headers) == (504, "deadline exceeded")
    assert not BOARD.event(BOARD.entered, name).is_set()
    assert await plain_get(server.url + "/ok") == (200, "ok")


def remaining_of(text: str) -> float | None:
    remaining: float | None = json.loads(text)["remaining"]
    return remaining


async def test_max_timeout_is_60_seconds_unless_told() -> None:
    """As with ContextMiddleware: a request that sends no deadline gets 60 seconds, and one
    that sends a longer one is capped there; ``None`` leaves it unbounded."""
    for max_timeout, expected in ((60.0, 60.0), (None, None)):
        kwargs = {} if max_timeout == 60.0 else {"max_timeout": max_timeout}
        app = web.Application(middlewares=[gocontext.aiohttp.middleware(**kwargs)])
        app.router.add_get("/info", info)
        with AiohttpServer(app) as s:
            for headers in ({}, {"Grpc-Timeout": "3600S"}):
                status, text = await plain_get(s.url + "/info", headers)
                assert status == 200, text
                remaining = remaining_of(text)
                if expected is None:
                    assert remaining == (None if not headers else pytest.approx(3600, abs=30))
                else:
                    assert remaining is not None and 30 < remaining <= expected, text


async def test_max_timeout_may_be_chosen_per_request() -> None:
    """A function of the request chooses its cap (a route that streams events lifts it); one
    that returns no number of seconds fails the request, as aiohttp fails a handler that
    raises, and the server keeps serving."""

    def cap(request: web.Request) -> float | None:
        return {"/events": None, "/info": 5, "/bad": "soon"}[request.path]  # type: ignore[return-value]

    app = web.Application(middlewares=[gocontext.aiohttp.middleware(max_timeout=cap)])
    for path in ("/events", "/info", "/bad"):
        app.router.add_get(path, info)
    with AiohttpServer(app) as s:
        status, text = await plain_get(s.url + "/events")
        assert (status, remaining_of(text)) == (200, None), text
        status, text = await plain_get(s.url + "/info", {"Grpc-Timeout": "100S"})
        remaining = remaining_of(text)
        assert remaining is not None and 0 < remaining <= 5, text
        assert (await plain_get(s.url + "/bad"))[0] == 500
        assert (await plain_get(s.url + "/info"))[0] == 200


# -- a response under way at the context's end, on the wire --------------------------------


@contextlib.contextmanager
def raw_connection(server: AiohttpServer) -> Iterator[socket.socket]:
    """A plain socket to *server*: the test sees the bytes on the wire as they are."""
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=NEVER)
    try:
        yield conn
    finally:
        conn.close()


def raw_get(path: str, name: str, grpc_timeout: str | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: test", f"baggage: {RID.name}={name}"]
    if grpc_timeout is not None:
        lines.append(f"Grpc-Timeout: {grpc_timeout}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_until(conn: socket.socket, end: bytes) -> bytes:
    """What the server sent up to and including *end* (which must come within NEVER)."""
    data = b""
    while end not in data:
        chunk = conn.recv(65536)
        assert chunk, f"the server closed the connection after {data!r}"
        data += chunk
    assert data.endswith(end), f"more than expected: {data!r}"
    return data


def read_to_close(conn: socket.socket) -> tuple[bytes, bool]:
    """What the server sends until it closes the connection, and whether it did (within
    NEVER: a connection left open is a failure the caller reports with what came)."""
    data = b""
    try:
        while chunk := conn.recv(65536):
            data += chunk
    except TimeoutError:
        return data, False
    return data, True


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("path", ["/body", "/prepared"])
def test_a_started_stream_is_cut_at_the_deadline_without_a_second_response(
    server: AiohttpServer, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    """The response is prepared, a first chunk written or not: at the deadline the body stops
    and the connection closes, so the client sees an incomplete body (no last chunk), not a
    504 written into it; the handler's context ends with DeadlineExceeded; nothing is logged."""
    name = rid("cut")
    with caplog.at_level(logging.ERROR), raw_connection(server) as conn:
        conn.sendall(raw_get(path, name, "1S"))
        if path == "/body":
            head = read_until(conn, b"first chunk\n\r\n")
        BOARD.wait_entered(name)  # parked on its context's end: the deadline is next
        fake_clock.advance(2)
        if path == "/prepared":  # (aiohttp held the head back: it goes out with the cut)
            head = read_until(conn, b"\r\n\r\n")
        rest, closed = read_to_close(conn)
        assert (rest, closed) == (b"", True)
        BOARD.wait_ended(name)
        assert FINISHED.wait(name) == 504  # aiohttp is done with it
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert isinstance(BOARD.errors[name], gocontext.DeadlineExceeded), BOARD.causes[name]
    assert errors_logged(caplog) == []


async def test_an_aiohttp_client_sees_the_cut_stream_as_an_incomplete_body(
    server: AiohttpServer, fake_clock: FakeClock
) -> None:
    name = rid("cut-aiohttp")
    headers = {"grpc-timeout": "1S", "baggage": f"{RID.name}={name}"}
    async with aiohttp.ClientSession() as plain:  # no gocontext: the server alone cuts it
        async with plain.get(server.url + "/body", headers=headers) as r:
            assert r.status == 200
            with anyio.fail_after(NEVER):
                assert await r.content.readline() == b"first chunk\n"
            await asyncio.to_thread(BOARD.wait_entered, name)
            fake_clock.advance(2)
            with anyio.fail_after(NEVER), pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
    await asyncio.to_thread(BOARD.wait_ended, name)
    assert isinstance(BOARD.errors[name], gocontext.DeadlineExceeded), BOARD.causes[name]


def test_a_client_that_leaves_mid_stream_ends_the_context_and_nothing_is_logged(
    server: AiohttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    name = rid("leaves-mid-stream")
    with caplog.at_level(logging.ERROR):
        with raw_connection(server) as conn:
            conn.sendall(raw_get("/body", name))
            read_until(conn, b"first chunk\n\r\n")
            BOARD.wait_entered(name)
        cause = BOARD.wait_ended(name)
        FINISHED.wait(name)
    assert isinstance(cause, gocontext.http.ClientDisconnected)
    assert errors_logged(caplog) == []


def test_a_late_response_after_the_504_goes_nowhere(
    server: AiohttpServer, fake_clock: FakeClock
) -> None:
    """A handler's task that outlives it and writes to the request after the middleware's 504
    has gone out: those bytes must never reach the connection (the next response on it would
    be a stranger's)."""
    name = rid("late")
    with raw_connection(server) as conn:
        conn.sendall(raw_get("/late", name, "1S"))
        BOARD.wait_entered(name)
        fake_clock.advance(2)
        answer = read_until(conn, b"deadline exceeded")
        BOARD.wait_ended(name)
        assert FINISHED.wait(name) == 504
        released(name).set()
        outcome = late_write(name)
        rest, closed = read_to_close(conn)
    assert answer.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert (rest, closed) == (b"", True)
    assert isinstance(outcome, ConnectionError), outcome


# -- every hop of a request is sent the time left when it goes ------------------------------


@pytest.mark.parametrize("how", ["client_session", "trace_config"])
async def test_each_hop_of_a_redirect_is_sent_the_time_left_then(
    server: AiohttpServer, fake_clock: FakeClock, how: str
) -> None:
    name = rid("redirect")
    ctx, cancel = gocontext.with_timeout(with_rid(name), 3)
    if how == "client_session":
        made = gocontext.aiohttp.client_session()
    else:
        made = aiohttp.ClientSession(trace_configs=[gocontext.aiohttp.trace_config()])
    async with made as session:

        async def call() -> Any:
            async with session.get(server.url + "/redirect", trace_request_ctx=ctx) as r:
                return await r.json()

        task = asyncio.ensure_future(call())
        await asyncio.to_thread(BOARD.wait_entered, name)
        fake_clock.advance(1.5)  # the first hop took 1.5 s: 1.5 s are left
        released(name).set()
        with anyio.fail_after(NEVER):
            body = await task
    cancel()
    first = SEEN[name][0]
    assert first is not None and parse_grpc_timeout(first) == 3
    assert body["grpc-timeout"] is not None
    assert parse_grpc_timeout(body["grpc-timeout"]) == 1.5
    assert body["remaining"] == 1.5


async def test_a_retry_on_a_dropped_connection_is_sent_the_time_left_then(
    session: aiohttp.ClientSession, server: AiohttpServer, fake_clock: FakeClock
) -> None:
    """aiohttp sends a GET again, on a new connection, when the server drops the one it went on
    unanswered; the second attempt is a hop of its own."""
    await assert_pool_clean(session, server)  # a kept-alive connection for the GET to take
    name = rid("retry")
    ctx, cancel = gocontext.with_timeout(with_rid(name), 3)

    async def call() -> str:
        async with session.get(server.url + "/drop-once", trace_request_ctx=ctx) as r:
            return await r.text()

    task = asyncio.ensure_future(call())
    await asyncio.to_thread(BOARD.wait_entered, name)
    fake_clock.advance(1.5)
    released(name).set()
    with anyio.fail_after(NEVER):
        await task
    cancel()
    first, again = SEEN[name]
    assert first is not None and parse_grpc_timeout(first) == 3
    assert again is not None and parse_grpc_timeout(again) == 1.5
    await assert_pool_clean(session, server)


# The middleware's stop of the handler: told as the owner of a request context that nothing
# else can end, registered on any other.


async def _stopped(ctx: gocontext.Context, end: Any = None, told: int = 1) -> TaskCanceller:
    """A TaskCanceller(ctx, own=True) made in a task of its own, which then waits; *end*, run
    in another thread, ends ctx (or ctx has ended already, or ends with *told* - 1 more calls
    of its owner). Its task must be stopped by it, and by it alone."""

    async def body() -> TaskCanceller:
        stop = TaskCanceller(ctx, True)
        for _ in range(told - 1):
            stop._on_done()
        thread = threading.Thread(target=end or (lambda: None))
        try:
            thread.start()
            with pytest.raises(asyncio.CancelledError) as caught:
                await asyncio.sleep(NEVER)
            assert stop.owns(caught.value)
        finally:
            thread.join(NEVER)
            stop.release()
            stop.disarm()
        return stop

    task = asyncio.create_task(body())
    stop = await asyncio.wait_for(task, NEVER)
    assert not task.cancelled()
    return stop


async def test_the_owner_path_a_cancel_from_a_thread_still_stops_the_handler() -> None:
    ctx, cancel = _context.timeout_cancel_cause(gocontext.background(), 3600.0)
    stop = await _stopped(ctx, lambda: cancel(ConnectionResetError("gone")))
    assert stop.handle is None and stop._owned is ctx  # told as the owner: no registration
    assert ctx._owner is None  # type: ignore[attr-defined]  # released
    assert isinstance(gocontext.cause(ctx), ConnectionResetError)


async def test_the_owner_path_the_deadline_from_the_timer_thread_stops_the_handler() -> None:
    ctx, cancel = _context.timeout_cancel_cause(gocontext.background(), 0.05)
    stop = await _stopped(ctx)
    cancel(None)
    assert stop._owned is ctx and isinstance(ctx.err(), gocontext.DeadlineExceeded)


async def test_the_owner_path_a_context_ended_already_stops_the_handler_at_once() -> None:
    ctx, _ = _context.timeout_cancel_cause(gocontext.background(), 0.0)
    stop = await _stopped(ctx)
    assert stop._owned is ctx


async def test_the_owner_told_twice_cancels_the_task_once() -> None:
    """Each ender may tell the owner, and at the same moment: one cancellation all the same,
    so the task's count still says it is ours alone."""
    ctx, cancel = _context.timeout_cancel_cause(gocontext.background(), 3600.0)
    stop = await _stopped(ctx, lambda: cancel(None), told=2)
    assert stop._owned is ctx


@pytest.mark.parametrize("how", ["parent node", "no deadline"])
async def test_a_context_the_owner_cannot_watch_falls_back_to_registering(how: str) -> None:
    parent, cancel_parent = gocontext.with_cancel(gocontext.background())
    if how == "parent node":  # the parent's cancel ends it too, unknown to an owner
        ctx, cancel = _context.timeout_cancel_cause(parent, 3600.0)
        end = cancel_parent
    else:
        ctx, cancel = gocontext.with_cancel_cause(gocontext.background())
        end = cancel
    stop = await _stopped(ctx, end)
    assert stop._owned is None and stop.handle is not None
    assert _context.watcher_count(ctx) == 0  # released
    cancel(None)
    cancel_parent()


def test_the_owner_told_once_its_loop_is_closed_is_quiet() -> None:
    ctx, cancel = _context.timeout_cancel_cause(gocontext.background(), 3600.0)

    async def arm() -> None:
        TaskCanceller(ctx, True)  # never released: the loop goes first

    asyncio.run(arm())
    cancel(ConnectionResetError("gone"))  # the owner finds the loop closed
    assert isinstance(gocontext.cause(ctx), ConnectionResetError)


async def test_a_context_that_ends_before_the_handler_returns_answers_504(
    fake_clock: FakeClock,
) -> None:
    """The deadline passes in the handler's last step, its end on its way to the task when
    the handler returns: the answer is the 504 all the same, not the handler's."""

    async def expires(request: web.Request) -> web.Response:
        fake_clock.advance(2)  # (the timer ends the context here, in this thread)
        assert isinstance(request["gocontext"].err(), gocontext.DeadlineExceeded)
        return web.Response(text="too late")

    app = web.Application(middlewares=[gocontext.aiohttp.middleware()])
    app.router.add_get("/expires", expires)
    async with TestServer(app) as srv:
        status, text = await plain_get(str(srv.make_url("/expires")), {"Grpc-Timeout": "1S"})
    assert (status, text) == (504, "deadline exceeded")


def test_the_disconnect_watch_hands_every_event_to_the_connections_protocol() -> None:
    """Straight (its own bound methods), but the loss, which ends each request's context
    first."""

    class Inner(asyncio.Protocol):
        def __init__(self) -> None:
            self.events: list[object] = []

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.events.append("made")

        def data_received(self, data: bytes) -> None:
            self.events.append(data)

        def eof_received(self) -> bool:
            self.events.append("eof")
            return True

        def pause_writing(self) -> None:
            self.events.append("pause")

        def resume_writing(self) -> None:
            self.events.append("resume")

        def connection_lost(self, exc: Exception | None) -> None:
            self.events.append(("lost", gocontext.cause(ctx)))

    inner = Inner()
    watch = _server._Watch(inner)
    assert isinstance(watch, asyncio.Protocol)
    assert watch.data_received == inner.data_received  # (no call in between)
    ctx, cancel = _context.timeout_cancel_cause(gocontext.background(), 3600.0)
    watch.listeners[ctx] = cancel
    watch.connection_made(None)  # type: ignore[arg-type]  # (unused by Inner)
    watch.data_received(b"x")
    assert watch.eof_received() is True
    watch.pause_writing()
    watch.resume_writing()
    watch.connection_lost(None)
    lost = inner.events.pop()
    assert inner.events == ["made", b"x", "eof", "pause", "resume"]
    assert isinstance(lost, tuple) and isinstance(lost[1], gocontext.http.ClientDisconnected)
    assert watch.listeners == {}
