"""requests through RequestsAdapter: deadline, values and cancel cross the hop; the pool stays
healthy. Against uvicorn with ContextMiddleware on 127.0.0.1."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator

import anyio
import pytest
import requests

import gocontext
import gocontext.http
from gocontext import _context

from ..conftest import NEVER
from ..http._slownet import PEER, SlowNet, cancel_at_the_first_syn, serve
from ..http.test_transport_connect import (
    in_namespace,
    slownet,  # noqa: F401 - the fixture
)
from .conftest import (
    BOARD,
    SECRET,
    Uvicorn,
    cancel_when_entered,
    done_context,
    rid,
    tcp_socket,
    unreached_port,
    with_rid,
)


@pytest.fixture
def session() -> Iterator[requests.Session]:
    s = requests.Session()
    adapter = gocontext.http.RequestsAdapter(pool_maxsize=4)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    yield s
    s.close()


def assert_pool_healthy(session: requests.Session, server: Uvicorn) -> None:
    """The next request succeeds and no connection is left checked out of the pool."""
    r = gocontext.http.request(gocontext.background(), session, "GET", server.url + "/ok")
    assert r.text == "ok"
    adapter = session.get_adapter(server.url)
    assert isinstance(adapter, gocontext.http.RequestsAdapter)
    pool = adapter.poolmanager.connection_from_url(server.url)
    assert pool.pool is not None
    assert pool.pool.qsize() == pool.pool.maxsize, "a connection is still checked out"


def test_deadline_and_propagated_values_go_out(
    session: requests.Session, http_server: Uvicorn
) -> None:
    ctx = with_rid("r-1")
    ctx = gocontext.with_value(ctx, SECRET, "hunter2")
    with gocontext.with_timeout(ctx, 30) as (ctx, _):
        r = gocontext.http.request(ctx, session, "GET", http_server.url + "/info")
    body = r.json()
    assert 0 < body["remaining"] <= 30
    assert body["grpc-timeout"] is not None
    assert body["rid"] == "r-1"
    assert body["secret"] is None
    assert "hunter2" not in str(body["baggage"])


def test_ambient_context_is_used_by_plain_session_calls(
    session: requests.Session, http_server: Uvicorn
) -> None:
    ctx = with_rid("ambient")
    with gocontext.use(ctx):
        body = session.get(http_server.url + "/info").json()
    assert body["rid"] == "ambient"
    assert body["grpc-timeout"] is None
    assert body["remaining"] is None


def test_existing_baggage_is_kept(session: requests.Session, http_server: Uvicorn) -> None:
    ctx = with_rid("r-2")
    r = gocontext.http.request(
        ctx, session, "GET", http_server.url + "/info", headers={"baggage": "other=1"}
    )
    assert r.json()["baggage"] == "other=1,test-rid=r-2"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("where", ["headers", "body"])
def test_cancel_from_another_thread_aborts_the_request(
    session: requests.Session, http_server: Uvicorn, where: str, stream: bool
) -> None:
    """Waiting for headers (/wait) or reading the body (/body): the request ends with
    Canceled, the handler sees the client leave, the pool stays healthy."""
    name = rid(where)
    ctx, cancel = gocontext.with_cancel(with_rid(name))
    t = cancel_when_entered(name, cancel)
    path = "/wait" if where == "headers" else "/body"
    with pytest.raises(gocontext.Canceled) as info:
        r = gocontext.http.request(ctx, session, "GET", http_server.url + path, stream=stream)
        for _ in r.iter_content(1):
            pass
    t.join(NEVER)
    if where == "headers":
        assert isinstance(info.value.__cause__, requests.ConnectionError)
    assert isinstance(BOARD.wait_ended(name), gocontext.http.ClientDisconnected)
    assert _context.watcher_count(ctx) == 0
    assert_pool_healthy(session, http_server)


def test_cancel_aborts_a_request_stuck_sending_its_body(
    session: requests.Session, http_server: Uvicorn
) -> None:
    name = rid("upload")
    ctx, cancel = gocontext.with_cancel(with_rid(name))

    def endless() -> Iterator[bytes]:
        while True:
            yield b"x" * 65536

    t = cancel_when_entered(name, cancel)
    with pytest.raises(gocontext.Canceled):
        gocontext.http.request(ctx, session, "POST", http_server.url + "/upload", data=endless())
    t.join(NEVER)
    # (Not waiting for the handler: ContextMiddleware sees no disconnect while a handler
    # leaves a streamed request body unread.)
    assert_pool_healthy(session, http_server)


def test_passed_deadline_raises_deadline_exceeded_and_ends_the_server_handler(
    session: requests.Session, http_server: Uvicorn
) -> None:
    name = rid("deadline")
    ctx = with_rid(name)
    with gocontext.with_timeout(ctx, 0.3) as (ctx, _):
        with pytest.raises(gocontext.DeadlineExceeded):
            gocontext.http.request(ctx, session, "GET", http_server.url + "/wait")
    # The server's copy of the deadline and the client's leaving race: either ends it.
    assert isinstance(
        BOARD.wait_ended(name), (gocontext.DeadlineExceeded, gocontext.http.ClientDisconnected)
    )
    assert_pool_healthy(session, http_server)


def test_the_callers_own_smaller_timeout_still_raises_requests_timeout(
    session: requests.Session, http_server: Uvicorn
) -> None:
    name = rid("own-timeout")
    ctx, cancel = gocontext.with_timeout(with_rid(name), 60)
    with pytest.raises(requests.ReadTimeout):
        gocontext.http.request(ctx, session, "GET", http_server.url + "/wait", timeout=0.2)
    cancel()
    BOARD.wait_ended(name)
    assert_pool_healthy(session, http_server)


@pytest.mark.parametrize("how", ["canceled", "expired"])
def test_a_done_context_sends_nothing(session: requests.Session, how: str) -> None:
    ctx, expected = done_context(how)
    with unreached_port() as port, pytest.raises(expected):
        gocontext.http.request(ctx, session, "GET", f"http://127.0.0.1:{port}/")


def test_cancel_between_requests_reaches_a_connection_reused_later(
    session: requests.Session, http_server: Uvicorn
) -> None:
    """A connection returned to the pool is no longer the cancelled request's to shut down."""
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    assert gocontext.http.request(ctx, session, "GET", http_server.url + "/ok").text == "ok"
    assert _context.watcher_count(ctx) == 0  # released with the connection
    cancel()
    assert_pool_healthy(session, http_server)


async def test_cancelling_the_awaiting_task_aborts_a_request_in_a_worker_thread(
    http_server: Uvicorn, session: requests.Session
) -> None:
    name = rid("task")
    ctx = with_rid(name)
    raised: list[BaseException] = []

    def call(ctx: gocontext.Context) -> None:
        try:
            gocontext.http.request(ctx, session, "GET", http_server.url + "/wait")
        except BaseException as e:
            raised.append(e)
            raise

    async with anyio.create_task_group() as tg:

        async def run() -> None:
            await gocontext.to_thread(ctx, call)

        tg.start_soon(run)
        await anyio.to_thread.run_sync(BOARD.wait_entered, name)
        tg.cancel_scope.cancel()
    assert len(raised) == 1
    assert isinstance(raised[0], gocontext.Canceled)
    BOARD.wait_ended(name)
    assert_pool_healthy(session, http_server)


def test_request_rejects_bad_arguments(session: requests.Session) -> None:
    with pytest.raises(TypeError, match=r"request\(\) needs a Context"):
        gocontext.http.request(None, session, "GET", "http://x/")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"needs a requests.Session, got dict"):
        gocontext.http.request(gocontext.background(), {}, "GET", "http://x/")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="RequestsAdapter mounted"):
        gocontext.http.request(gocontext.background(), requests.Session(), "GET", "http://x/")
    with pytest.raises(ValueError, match=r"\(connect, read\) timeout tuple"):
        gocontext.http.request(
            gocontext.with_timeout(gocontext.background(), 5)[0],
            session,
            "GET",
            "http://127.0.0.1:9/",
            timeout=(1, 2, 3),
        )


def wait_until_in(thread: threading.Thread, function: str) -> bool:
    """Wait (bounded) until *thread* is inside a call of *function*, read from its stack."""
    end = time.monotonic() + NEVER
    while time.monotonic() < end and thread.is_alive():
        frame = sys._current_frames().get(thread.ident or 0)
        while frame is not None:
            if frame.f_code.co_name == function:
                return True
            frame = frame.f_back
        time.sleep(0.001)
    return False


def test_cancel_aborts_a_request_blocked_connecting_to_a_peer_that_never_answers(
    session: requests.Session,
) -> None:
    """A listener whose backlog is full drops SYNs: connecting to it blocks. A cancel must
    end that blocked connect too (its own timeout here is far beyond the bounded wait)."""
    listener = tcp_socket()
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):  # fill the backlog until a connect no longer completes
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        s.setblocking(False)
        fillers.append(s)
        if s.connect_ex(("127.0.0.1", port)) != 0:
            break
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    raised: list[BaseException] = []

    def call() -> None:
        try:
            gocontext.http.request(ctx, session, "GET", f"http://127.0.0.1:{port}/", timeout=60)
        except BaseException as e:
            raised.append(e)

    t = threading.Thread(target=call)
    t.start()
    assert wait_until_in(t, "_wait_connected"), "the request never started connecting"
    cancel()
    t.join(NEVER)
    alive = t.is_alive()
    for s in fillers:
        s.close()
    listener.close()
    assert not alive, "the cancel did not end a blocked connect"
    assert len(raised) == 1
    assert isinstance(raised[0], gocontext.Canceled)


# --------------------------------------------------------------------------------------------
# Connecting: a refused port, a slow handshake; failed requests; waiting for a pooled connection


def test_a_refused_connection_fails_at_once_as_with_the_plain_adapter(
    session: requests.Session,
) -> None:
    """No timeout and a far deadline: a refused connect is a ConnectionError, not a retry
    until the deadline."""
    refusing = tcp_socket()  # bound, not listening: a connect is refused
    port = refusing.getsockname()[1]
    ctx, cancel = gocontext.with_timeout(gocontext.background(), NEVER)
    with refusing, pytest.raises(requests.ConnectionError) as raised:
        gocontext.http.request(ctx, session, "GET", f"http://127.0.0.1:{port}/")
    cancel()
    assert not isinstance(raised.value, requests.Timeout), raised.value
    assert not isinstance(raised.value, gocontext.DeadlineExceeded)


def test_a_handshake_slower_than_a_slice_connects_with_one_attempt(
    slownet: tuple[SlowNet, int],  # noqa: F811 - the fixture
) -> None:
    """A peer 150 ms away (a 300 ms handshake) is reached, with one connection request. (The
    deadline, far off, only bounds the test.)"""
    net, port = slownet
    ctx, cancel = gocontext.with_timeout(gocontext.background(), NEVER)

    def get() -> int:
        with requests.Session() as s:
            s.mount("http://", gocontext.http.RequestsAdapter())
            return gocontext.http.request(ctx, s, "GET", f"http://{PEER}:{port}/").status_code

    assert in_namespace(net, get) == 200
    cancel()
    assert net.syns == 1


def test_a_cancel_from_another_thread_interrupts_a_slow_handshake(
    slownet: tuple[SlowNet, int],  # noqa: F811 - the fixture
) -> None:
    net, port = slownet
    net.drop_syn = True  # the peer never answers: only the cancel can end the connect
    ctx, cancel = gocontext.with_cancel(gocontext.background())

    canceller = cancel_at_the_first_syn(net, cancel, NEVER)
    with requests.Session() as s, pytest.raises(gocontext.Canceled):
        s.mount("http://", gocontext.http.RequestsAdapter())
        in_namespace(net, lambda: gocontext.http.request(ctx, s, "GET", f"http://{PEER}:{port}/"))
    canceller.join(NEVER)


def test_failed_requests_leave_nothing_registered_on_their_context(
    session: requests.Session,
) -> None:
    """A peer that closes without answering: each failure lets go of the context (its
    callback) and of the dropped connection."""
    listener = tcp_socket()
    listener.listen(16)
    stop = threading.Event()
    closer = serve(listener, stop, lambda conn: None)  # closed at once, unanswered
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    try:
        with requests.Session() as s:
            s.mount("http://", gocontext.http.RequestsAdapter(max_retries=0))
            for _ in range(20):
                with pytest.raises(requests.ConnectionError):
                    gocontext.http.request(ctx, s, "GET", url, timeout=NEVER)
            assert _context.watcher_count(ctx) == 0
    finally:
        stop.set()
        closer.join(NEVER)
        listener.close()
        cancel()


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_a_request_waiting_for_a_pooled_connection_ends_with_its_context(
    http_server: Uvicorn, how: str
) -> None:
    """pool_block=True, one connection, held by a streamed response: the second request waits
    for it until its context ends, not until the first lets go."""
    with requests.Session() as s:
        s.mount("http://", gocontext.http.RequestsAdapter(pool_maxsize=1, pool_block=True))
        holding = gocontext.http.request(
            gocontext.background(), s, "GET", http_server.url + "/ok", stream=True
        )
        if how == "cancel":
            ctx, cancel = gocontext.with_cancel(gocontext.background())
        else:
            ctx, cancel = gocontext.with_timeout(gocontext.background(), 0.2)
        raised: list[BaseException] = []

        def call() -> None:
            try:
                gocontext.http.request(ctx, s, "GET", http_server.url + "/ok")
            except BaseException as e:
                raised.append(e)

        t = threading.Thread(target=call)
        t.start()
        if how == "cancel":
            assert wait_until_in(t, "_get_conn"), "the request never waited for a connection"
            cancel()
        t.join(NEVER)
        alive = t.is_alive()
        holding.close()  # lets the connection go: a request still waiting gets it now
        t.join(NEVER)
        cancel()
        assert not alive, "the request waited for the connection, not for its context"
        expected = gocontext.Canceled if how == "cancel" else gocontext.DeadlineExceeded
        assert len(raised) == 1 and isinstance(raised[0], expected), raised
        assert _context.watcher_count(ctx) == 0
        r = gocontext.http.request(gocontext.background(), s, "GET", http_server.url + "/ok")
        assert r.text == "ok"  # the pool still serves


def test_the_requests_own_timeout_firing_is_no_deadline_exceeded(
    session: requests.Session, http_server: Uvicorn
) -> None:
    """A far deadline caps the connect timeout left unset, not the request's own 0.2 s read
    timeout: when that fires, it is the request's, a requests timeout."""
    ctx, cancel = gocontext.with_timeout(gocontext.background(), NEVER * 3)
    with pytest.raises(requests.ReadTimeout):
        gocontext.http.request(ctx, session, "GET", http_server.url + "/wait", timeout=(None, 0.2))
    assert ctx.err() is None
    cancel()
