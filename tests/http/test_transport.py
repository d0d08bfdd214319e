"""The httpx transports against a real uvicorn server: headers out, cancels and deadlines in
flight, and a pool that stays healthy after many aborts."""

from __future__ import annotations

import http.server
import threading
import time
import uuid
from collections.abc import Iterator

import anyio
import httpx
import pytest

import gocontext
import gocontext.http

from ..conftest import NEVER
from .conftest import BOARD, RID, ROUNDING, SECRET, Server


def cancel_when_entered(rid: str, cancel: object) -> threading.Thread:
    """A thread that cancels once the server's handler for *rid* is running."""

    def run() -> None:
        assert BOARD.event(BOARD.entered, rid).wait(NEVER)
        cancel()  # type: ignore[operator]

    t = threading.Thread(target=run)
    t.start()
    return t


def request_ctx(parent: gocontext.Context | None = None) -> tuple[gocontext.Context, str]:
    rid = uuid.uuid4().hex
    return gocontext.with_value(parent or gocontext.background(), RID, rid), rid


def test_sync_request_carries_deadline_and_only_propagated_values(server: Server) -> None:
    ctx, rid = request_ctx()
    ctx = gocontext.with_value(ctx, SECRET, "hunter2")
    start = time.monotonic()
    ctx, cancel = gocontext.with_timeout(ctx, 5)
    with httpx.Client(transport=gocontext.http.Transport()) as client:
        r = client.get(f"{server.url}/info", extensions={"gocontext": ctx})
    cancel()
    body = r.json()
    assert body["rid"] == rid
    assert body["secret"] is None
    assert 5.0 - (time.monotonic() - start) - ROUNDING <= body["remaining"] <= 5.0


async def test_async_request_uses_the_ambient_context(server: Server) -> None:
    ctx, rid = request_ctx()
    start = time.monotonic()
    ctx, cancel = gocontext.with_timeout(ctx, 5)
    async with httpx.AsyncClient(transport=gocontext.http.AsyncTransport()) as client:
        with gocontext.use(ctx):
            r = await client.get(f"{server.url}/info")
    cancel()
    assert r.json()["rid"] == rid
    assert 5.0 - (time.monotonic() - start) - ROUNDING <= r.json()["remaining"] <= 5.0


def test_a_done_context_sends_nothing(server: Server) -> None:
    class Counting(httpx.BaseTransport):
        calls = 0

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            Counting.calls += 1
            return httpx.Response(200)

    ctx, cancel = gocontext.with_cancel(gocontext.background())
    cancel()
    with httpx.Client(transport=gocontext.http.Transport(Counting())) as client:
        with pytest.raises(gocontext.Canceled):
            client.get(f"{server.url}/info", extensions={"gocontext": ctx})
        expired, _ = gocontext.with_timeout(gocontext.background(), 0)
        with pytest.raises(gocontext.DeadlineExceeded):
            client.get(f"{server.url}/info", extensions={"gocontext": expired})
    assert Counting.calls == 0


def test_the_requests_own_timeout_stays_when_it_is_shorter(server: Server) -> None:
    seen: list[dict[str, float]] = []

    class Spy(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(request.extensions["timeout"])
            return httpx.Response(200)

    ctx, cancel = gocontext.with_timeout(gocontext.background(), 60)
    with httpx.Client(transport=gocontext.http.Transport(Spy()), timeout=2.0) as client:
        client.get(f"{server.url}/info", extensions={"gocontext": ctx})
    short, cancel_short = gocontext.with_timeout(gocontext.background(), 0.5)
    with httpx.Client(transport=gocontext.http.Transport(Spy()), timeout=2.0) as client:
        client.get(f"{server.url}/info", extensions={"gocontext": short})
    cancel()
    cancel_short()
    assert seen[0]["read"] == 2.0
    assert 0.4 < seen[1]["read"] <= 0.5


# A deadline far off caps the timeouts the request leaves unset (here connect: None), not its
# own 0.2 s read timeout: when that fires, it is the request's own, an httpx timeout.
_OWN_READ = httpx.Timeout(0.2, connect=None)


def test_the_requests_own_timeout_firing_is_no_deadline_exceeded(server: Server) -> None:
    ctx, cancel = gocontext.with_timeout(gocontext.background(), NEVER * 3)
    with (
        httpx.Client(transport=gocontext.http.Transport(), timeout=_OWN_READ) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.get(f"{server.url}/wait", extensions={"gocontext": ctx})
    assert ctx.err() is None
    cancel()


async def test_async_the_requests_own_timeout_firing_is_no_deadline_exceeded(
    server: Server,
) -> None:
    ctx, cancel = gocontext.with_timeout(gocontext.background(), NEVER * 3)
    transport = gocontext.http.AsyncTransport()
    async with httpx.AsyncClient(transport=transport, timeout=_OWN_READ) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(f"{server.url}/wait", extensions={"gocontext": ctx})
    assert ctx.err() is None
    cancel()


def test_sync_cancel_from_another_thread_aborts_a_request_waiting_for_headers(
    server: Server,
) -> None:
    with httpx.Client(transport=gocontext.http.Transport()) as client:
        for _ in range(10):
            parent, cancel = gocontext.with_cancel(gocontext.background())
            ctx, rid = request_ctx(parent)

            t = cancel_when_entered(rid, cancel)
            started = time.monotonic()
            with pytest.raises(gocontext.Canceled):
                client.get(f"{server.url}/wait", extensions={"gocontext": ctx})
            assert time.monotonic() - started < NEVER
            t.join(NEVER)
            assert BOARD.event(BOARD.ended, rid).wait(NEVER)  # the server's context ended too
        assert client.get(f"{server.url}/info").status_code == 200


def test_sync_deadline_aborts_a_stalled_body_and_the_pool_recovers(server: Server) -> None:
    with httpx.Client(transport=gocontext.http.Transport()) as client:
        for _ in range(10):
            ctx, rid = request_ctx()
            ctx, cancel = gocontext.with_timeout(ctx, 0.2)
            with pytest.raises(gocontext.DeadlineExceeded):
                with client.stream(
                    "GET", f"{server.url}/stream", extensions={"gocontext": ctx}
                ) as r:
                    assert r.status_code == 200
                    for _chunk in r.iter_bytes():
                        pass
            cancel()
        assert client.get(f"{server.url}/info").status_code == 200


def test_a_cancel_stops_a_body_read_in_another_thread(server: Server) -> None:
    # The body is read by a thread that did not send the request: the connection's socket
    # was registered with the request's aborter as it was sent, so the cancel reaches it. The
    # server sends nothing more until its client leaves (or for a minute), and the client has
    # no read timeout of its own.
    with httpx.Client(transport=gocontext.http.Transport(), timeout=None) as client:
        for _ in range(3):
            ctx, cancel = gocontext.with_cancel(gocontext.background())
            with client.stream(
                "GET", f"{server.url}/stream-until-gone", extensions={"gocontext": ctx}
            ) as r:
                assert r.status_code == 200
                reading = threading.Event()
                raised: list[BaseException] = []

                def read(r: httpx.Response = r, reading: threading.Event = reading) -> None:
                    try:
                        for _chunk in r.iter_bytes():
                            reading.set()
                    except BaseException as e:
                        raised.append(e)

                reader = threading.Thread(target=read, daemon=True)
                reader.start()
                assert reading.wait(NEVER)  # the body is flowing, then stalls
                cancel()
                reader.join(NEVER)
                assert not reader.is_alive(), "the cancel did not reach the read"
            assert [type(e) for e in raised] == [gocontext.Canceled]
        assert client.get(f"{server.url}/info").status_code == 200


class _Relay(http.server.BaseHTTPRequestHandler):
    """GET /download: a short body. POST /upload: reads the body, says so, then answers once
    released. GET /slow: says it is in, then answers once released. Records each request's
    client port (its connection)."""

    protocol_version = "HTTP/1.1"
    ports: dict[str, int]
    upload_read: threading.Event
    slow_entered: threading.Event
    release: threading.Event

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.ports[self.path] = self.client_address[1]
        if self.path == "/download":
            self._answer(b"x" * 10)
            return
        self.slow_entered.set()
        self.release.wait(NEVER)
        self._answer(b"slow-ok")

    def do_POST(self) -> None:
        while True:  # (chunked: httpx streams an iterator's body)
            size = int(self.rfile.readline().strip(), 16)
            self.rfile.read(size + 2)
            if size == 0:
                break
        self.upload_read.set()
        self.release.wait(NEVER)
        self._answer(b"ok")


@pytest.fixture
def relay() -> Iterator[tuple[str, type[_Relay]]]:
    handler = type(
        "Relay",
        (_Relay,),
        {
            "ports": {},
            "upload_read": threading.Event(),
            "slow_entered": threading.Event(),
            "release": threading.Event(),
        },
    )
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", handler
    finally:
        handler.release.set()
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("b_context", ["cancelable", "background"])
def test_a_body_piped_into_another_request_leaves_its_connection_to_its_next_user(
    relay: tuple[str, type[_Relay]], b_context: str
) -> None:
    # B's body is read inside C's transport call (it is C's body). Once B is done, its
    # connection serves D; C's cancel must not touch that connection.
    url, handler = relay
    ctx_b, cancel_b = gocontext.with_cancel(gocontext.background())
    if b_context == "background":  # (a context that never ends: no watch at all)
        ctx_b = gocontext.background()
    ctx_c, cancel_c = gocontext.with_cancel(gocontext.background())
    out: dict[str, object] = {}
    with httpx.Client(transport=gocontext.http.Transport(), base_url=url, timeout=None) as client:

        def pipe() -> None:
            try:
                with client.stream("GET", "/download", extensions={"gocontext": ctx_b}) as rb:
                    client.post("/upload", content=rb.iter_bytes(), extensions={"gocontext": ctx_c})
            except BaseException as e:
                out["C"] = e

        def d() -> None:
            try:
                out["D"] = client.get("/slow").text
            except BaseException as e:
                out["D"] = e

        t1 = threading.Thread(target=pipe)
        t1.start()
        assert handler.upload_read.wait(NEVER)  # B is read to its end: its connection is idle
        t2 = threading.Thread(target=d)
        t2.start()
        assert handler.slow_entered.wait(NEVER)
        cancel_c()
        t1.join(NEVER)
        handler.release.set()
        t2.join(NEVER)
    cancel_b()
    assert handler.ports["/slow"] == handler.ports["/download"]  # D had B's connection
    assert isinstance(out["C"], gocontext.Canceled)
    assert out["D"] == "slow-ok"


def test_sync_cancel_while_sending_a_body(server: Server) -> None:
    body = b"x" * (64 << 20)  # far more than socket buffers hold: the send blocks
    with httpx.Client(transport=gocontext.http.Transport()) as client:
        for _ in range(3):
            parent, cancel = gocontext.with_cancel(gocontext.background())
            ctx, rid = request_ctx(parent)

            t = cancel_when_entered(rid, cancel)
            with pytest.raises(gocontext.Canceled):
                client.post(f"{server.url}/upload", content=body, extensions={"gocontext": ctx})
            t.join(NEVER)
        assert client.get(f"{server.url}/info").status_code == 200


async def test_async_cancel_at_every_stage_leaves_the_pool_healthy(server: Server) -> None:
    async with httpx.AsyncClient(transport=gocontext.http.AsyncTransport()) as client:
        for path, method in [("/wait", "GET"), ("/stream", "GET"), ("/upload", "POST")]:
            for _ in range(5):
                parent, cancel = gocontext.with_cancel(gocontext.background())
                ctx, rid = request_ctx(parent)

                t = cancel_when_entered(rid, cancel)
                with anyio.fail_after(NEVER), pytest.raises(gocontext.Canceled):
                    if path == "/stream":
                        async with client.stream(
                            method, f"{server.url}{path}", extensions={"gocontext": ctx}
                        ) as r:
                            async for _chunk in r.aiter_bytes():
                                pass
                    else:
                        content = b"x" * (8 << 20) if method == "POST" else None
                        await client.request(
                            method,
                            f"{server.url}{path}",
                            content=content,
                            extensions={"gocontext": ctx},
                        )
                t.join(NEVER)
            r = await client.get(f"{server.url}/info")
            assert r.status_code == 200


async def test_async_deadline_raises_deadline_exceeded(server: Server) -> None:
    ctx, _ = request_ctx()
    ctx, cancel = gocontext.with_timeout(ctx, 0.1)
    async with httpx.AsyncClient(transport=gocontext.http.AsyncTransport()) as client:
        with anyio.fail_after(NEVER), pytest.raises(gocontext.DeadlineExceeded):
            await client.get(f"{server.url}/wait", extensions={"gocontext": ctx})
    cancel()


def test_a_connect_that_hangs_is_aborted_by_cancel() -> None:
    """A listener that never accepts and whose backlog is full: connect() blocks."""
    import socket

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):  # fill the accept queue so further connects stall
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        ctx, cancel = gocontext.with_cancel(gocontext.background())
        timer = threading.Timer(0.3, cancel)
        timer.start()
        with httpx.Client(transport=gocontext.http.Transport(), timeout=NEVER) as client:
            started = time.monotonic()
            with pytest.raises((gocontext.Canceled, httpx.ConnectError)) as info:
                client.get(f"http://127.0.0.1:{port}/", extensions={"gocontext": ctx})
            assert time.monotonic() - started < NEVER / 2
            if not isinstance(info.value, gocontext.Canceled):  # the kernel refused instead
                pytest.skip("this kernel refuses instead of stalling a full backlog")
        timer.join()
    finally:
        for s in fillers:
            s.close()
        listener.close()


def test_a_request_context_that_is_not_a_context_is_a_type_error(server: Server) -> None:
    with httpx.Client(transport=gocontext.http.Transport()) as client:
        with pytest.raises(TypeError, match="gocontext"):
            client.get(f"{server.url}/info", extensions={"gocontext": "nope"})
