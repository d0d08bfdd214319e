"""RequestsAdapter, reviewed as a user and an attacker would use it, against servers on raw
sockets on 127.0.0.1: a body read through ``response.raw`` (as ``shutil.copyfileobj`` does),
hostile arguments, a context that ends between retries or between redirects, uploads to a
peer that never reads, callbacks that raise ``BaseException``."""

from __future__ import annotations

import gc
import io
import os
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from urllib3.util import Retry

import gocontext
import gocontext.http
from gocontext import _context

from ..conftest import NEVER
from .conftest import Uvicorn, unreached_port
from .test_requests import wait_until_in
from .test_requests_faults import (
    OK,
    RawServer,
    assert_pool_healthy,
    ended_with,
    run,
    url_of,
)


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        adapter = gocontext.http.RequestsAdapter(pool_maxsize=2)
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        yield s


@pytest.fixture
def serve() -> Iterator[Callable[..., RawServer]]:
    """``serve(answer, wrap=...)``: a started RawServer, stopped after the test."""
    servers: list[RawServer] = []

    def start(
        answer: Callable[[socket.socket, str], None],
        wrap: Callable[[socket.socket], socket.socket] = lambda c: c,
    ) -> RawServer:
        server = RawServer(answer, wrap)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def open_fds() -> int:
    gc.collect()  # (a socket dropped by a failed request is closed once collected)
    return len(os.listdir("/proc/self/fd"))


# --------------------------------------------------------------------------------------------
# The body read through response.raw (urllib3's response): read(), read(n), stream(),
# shutil.copyfileobj. A body the context cut short is never taken for complete, and the error
# is the context's, never a bare urllib3 ProtocolError / ReadTimeoutError.

HEADS = {
    "content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n",
    "connection-close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2000\r\n\r\n",
    "until-close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
}


def read_all(raw: Any) -> bytes:
    return bytes(raw.read())


def read_in_pieces(raw: Any) -> bytes:
    data = b""
    while piece := raw.read(100):
        data += piece
    return data


def read_stream(raw: Any) -> bytes:
    return b"".join(raw.stream(100))


def copy_to_a_file(raw: Any) -> bytes:
    out = io.BytesIO()
    shutil.copyfileobj(raw, out)
    return out.getvalue()


READERS: dict[str, Callable[[Any], bytes]] = {
    "read": read_all,
    "read-n": read_in_pieces,
    "stream": read_stream,
    "copyfileobj": copy_to_a_file,
}


def half_a_body(head: str, server: Callable[[], RawServer]) -> Callable[[socket.socket, str], None]:
    """Send *head* and half of a 2000-byte body, then stall until the server stops."""

    def answer(conn: socket.socket, _: str) -> None:
        conn.sendall(HEADS[head] + b"A" * 1000)
        server().release.wait()

    return answer


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("head", list(HEADS))
def test_a_cancel_ends_a_body_read_through_raw_with_canceled(
    session: requests.Session, serve: Callable[..., RawServer], head: str, reader: str
) -> None:
    server = serve(half_a_body(head, lambda: server))
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    got: list[bytes] = []
    first_half = threading.Event()

    def call() -> None:
        r = gocontext.http.request(ctx, session, "GET", url_of(server) + "/body", stream=True)
        first = r.raw.read(1000)
        first_half.set()
        got.append(first + READERS[reader](r.raw))

    t, raised = run(call)
    assert first_half.wait(NEVER), raised
    assert wait_until_in(t, "readinto"), "the request never waited for the rest of the body"
    cancel()
    ended_with(t, raised, gocontext.Canceled)
    assert not got, f"a body cut short by the cancel was taken for whole: {len(got[0])} bytes"
    assert _context.watcher_count(ctx) == 0
    assert_pool_healthy(session, url_of(server))


@pytest.mark.parametrize("reader", ["read", "stream"])
@pytest.mark.parametrize("head", ["content-length", "until-close"])
def test_a_passed_deadline_ends_a_body_read_through_raw_with_deadline_exceeded(
    session: requests.Session, serve: Callable[..., RawServer], head: str, reader: str
) -> None:
    server = serve(half_a_body(head, lambda: server))
    ctx, cancel = gocontext.with_timeout(gocontext.background(), 1.0)
    got: list[bytes] = []

    def call() -> None:
        r = gocontext.http.request(ctx, session, "GET", url_of(server) + "/body", stream=True)
        got.append(READERS[reader](r.raw))

    t, raised = run(call)
    ended_with(t, raised, gocontext.DeadlineExceeded)
    cancel()
    assert not got, f"a body cut short by the deadline was taken for whole: {len(got[0])} bytes"
    assert _context.watcher_count(ctx) == 0
    assert_pool_healthy(session, url_of(server))


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("head", list(HEADS))
def test_a_whole_body_read_through_raw_is_whole_and_a_later_cancel_changes_nothing(
    session: requests.Session, serve: Callable[..., RawServer], head: str, reader: str
) -> None:
    def answer(conn: socket.socket, _: str) -> None:
        body = b"A" * 2000 + (b"\r\n0\r\n\r\n" if head == "chunked" else b"")
        conn.sendall(HEADS[head] + body)
        if head in ("connection-close", "until-close"):
            conn.shutdown(socket.SHUT_RDWR)

    server = serve(answer)
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    r = gocontext.http.request(ctx, session, "GET", url_of(server) + "/body", stream=True)
    assert READERS[reader](r.raw) == b"A" * 2000
    assert _context.watcher_count(ctx) == 0
    cancel()
    assert r.raw.read() == b""
    assert_pool_healthy(session, url_of(server))


# --------------------------------------------------------------------------------------------
# Hostile arguments: typed errors that name the call, before anything is sent


@pytest.mark.parametrize("url", [None, 5, ["http://127.0.0.1/"]])
def test_a_url_that_is_no_string_is_a_type_error_naming_the_call(
    session: requests.Session, url: object
) -> None:
    with pytest.raises(TypeError, match=r"gocontext\.http\.request\(\) needs a URL"):
        gocontext.http.request(gocontext.background(), session, "GET", url)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", [None, 1])
def test_a_method_that_is_no_string_is_a_type_error_naming_the_call(
    session: requests.Session, method: object
) -> None:
    with unreached_port() as port, pytest.raises(TypeError, match=r"request\(\) needs an HTTP"):
        gocontext.http.request(gocontext.background(), session, method, f"http://127.0.0.1:{port}/")  # type: ignore[arg-type]


def test_a_bytes_url_is_sent_as_requests_sends_it(
    session: requests.Session, http_server: Uvicorn
) -> None:
    url = (http_server.url + "/ok").encode()
    assert requests.get(url).text == "ok"  # (requests itself takes it)
    r = gocontext.http.request(gocontext.background(), session, "GET", url)  # type: ignore[arg-type]
    assert r.text == "ok"


BAD_TIMEOUTS: list[object] = [
    "5",
    b"5",
    [1, 2],
    ("1", 2),
    (1, "2"),
    float("nan"),
    (float("nan"), 1),
    {"connect": 1},
    True,
]


@pytest.mark.parametrize("deadline", [True, False], ids=["deadline", "no-deadline"])
@pytest.mark.parametrize("timeout", BAD_TIMEOUTS, ids=repr)
def test_a_timeout_that_is_no_number_is_a_value_error_with_or_without_a_deadline(
    session: requests.Session, timeout: object, deadline: bool
) -> None:
    """requests refuses these (a ValueError from urllib3's Timeout); a deadline, capping the
    timeout, must not silently put its own time in their place, nor fail deep in a connect."""
    if deadline:
        ctx, cancel = gocontext.with_timeout(gocontext.background(), NEVER * 6)
    else:
        ctx, cancel = gocontext.with_cancel(gocontext.background())
    with unreached_port() as port, pytest.raises(ValueError, match=r"[Tt]imeout"):
        gocontext.http.request(ctx, session, "GET", f"http://127.0.0.1:{port}/", timeout=timeout)
    cancel()
    assert _context.watcher_count(ctx) == 0


# --------------------------------------------------------------------------------------------
# Retries and redirects: nothing goes out once the context has ended


@pytest.mark.parametrize("failure", ["hang-up", "503"])
def test_no_retry_goes_out_once_the_context_ended_during_an_attempt(
    serve: Callable[..., RawServer], failure: str
) -> None:
    """The server ends the client's context and then fails the attempt in a way the adapter's
    Retry retries at once (no backoff): no second attempt reaches the server."""
    attempts: list[str] = []
    ctx, cancel = gocontext.with_cancel(gocontext.background())

    def answer(conn: socket.socket, head: str) -> None:
        attempts.append(head)
        cancel()
        if failure == "hang-up":
            conn.shutdown(socket.SHUT_RDWR)
        else:
            conn.sendall(b"HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n")

    server = serve(answer)
    with requests.Session() as s:
        retry = Retry(total=5, status_forcelist=[503], backoff_factor=0)
        s.mount("http://", gocontext.http.RequestsAdapter(max_retries=retry))
        with pytest.raises(gocontext.Canceled):
            gocontext.http.request(ctx, s, "GET", url_of(server) + "/x")
        assert len(attempts) == 1, attempts
        assert _context.watcher_count(ctx) == 0
        assert_pool_healthy(s, url_of(server))


def test_a_context_that_ends_on_a_redirect_follows_it_nowhere(
    session: requests.Session, serve: Callable[..., RawServer]
) -> None:
    """The response hook of the 302 cancels the context: the next hop is never sent."""
    with unreached_port() as port:
        location = f"http://127.0.0.1:{port}/next"

        def answer(conn: socket.socket, _: str) -> None:
            conn.sendall(
                f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode()
            )

        server = serve(answer)
        ctx, cancel = gocontext.with_cancel(gocontext.background())
        seen: list[int] = []

        def hook(r: requests.Response, **_: object) -> None:
            seen.append(r.status_code)
            cancel()

        with pytest.raises(gocontext.Canceled):
            gocontext.http.request(
                ctx, session, "GET", url_of(server) + "/away", hooks={"response": hook}
            )
        assert seen == [302]
    assert _context.watcher_count(ctx) == 0
    assert_pool_healthy(session, url_of(server))


def test_each_redirect_hop_is_sent_the_time_left_and_the_callers_headers_are_remade(
    session: requests.Session, serve: Callable[..., RawServer]
) -> None:
    """Every hop carries a Grpc-Timeout of the context's (the caller's own is replaced) and
    the caller's baggage merged with the context's values, exactly once."""
    heads: list[str] = []

    def answer(conn: socket.socket, head: str) -> None:
        heads.append(head)
        if len(heads) < 3:
            location = f"Location: /hop{len(heads)}\r\n"
            conn.sendall(f"HTTP/1.1 307 Again\r\n{location}Content-Length: 0\r\n\r\n".encode())
        else:
            conn.sendall(OK)

    server = serve(answer)
    key = gocontext.PropagatedKey("review-rid")
    ctx = gocontext.with_value(gocontext.background(), key, "r1")
    ctx, cancel = gocontext.with_timeout(ctx, NEVER * 6)
    r = gocontext.http.request(
        ctx,
        session,
        "GET",
        url_of(server) + "/start",
        headers={"Grpc-Timeout": "1n", "baggage": "mine=1"},
    )
    cancel()
    assert r.text == "ok" and len(r.history) == 2
    assert len(heads) == 3
    for head in heads:
        lines = [line.lower() for line in head.split("\r\n")]
        timeouts = [line for line in lines if line.startswith("grpc-timeout:")]
        assert len(timeouts) == 1 and timeouts[0] != "grpc-timeout: 1n", head
        assert [line for line in lines if line.startswith("baggage:")] == [
            "baggage: mine=1,review-rid=r1"
        ], head


# --------------------------------------------------------------------------------------------
# Uploads to a peer that accepts and never reads; no descriptor is left behind


def test_a_cancel_ends_a_file_upload_to_a_peer_that_never_reads_and_leaks_no_socket(
    session: requests.Session, serve: Callable[..., RawServer], tmp_path: Any
) -> None:
    reading = threading.Event()

    def answer(conn: socket.socket, head: str) -> None:
        reading.set()
        server.release.wait()  # never reads the body

    server = serve(answer)
    assert_pool_healthy(session, url_of(server))  # (the pool's first connection, made)
    path = tmp_path / "upload"
    path.write_bytes(b"x" * (64 << 20))  # far beyond what the socket buffers hold
    before = open_fds()
    ctx, cancel = gocontext.with_cancel(gocontext.background())

    def call() -> None:
        with path.open("rb") as f:
            gocontext.http.request(ctx, session, "POST", url_of(server) + "/up", data=f)

    t, raised = run(call)
    assert reading.wait(NEVER), raised
    assert wait_until_in(t, "sendall") or wait_until_in(t, "send"), raised
    cancel()
    ended_with(t, raised, gocontext.Canceled)
    assert _context.watcher_count(ctx) == 0
    assert_pool_healthy(session, url_of(server))
    assert open_fds() <= before + 1  # (at most the pool's new connection)


# --------------------------------------------------------------------------------------------
# Callbacks that raise BaseException: nothing stays registered, the pool stays whole


class Stop(BaseException):
    pass


def test_a_body_generator_that_raises_base_exception_leaves_nothing_behind(
    session: requests.Session, serve: Callable[..., RawServer]
) -> None:
    server: RawServer = serve(lambda conn, head: server.release.wait())
    assert_pool_healthy(session, url_of(server))
    before = open_fds()
    ctx, cancel = gocontext.with_cancel(gocontext.background())

    def body() -> Iterator[bytes]:
        yield b"x" * 1000
        raise Stop

    with pytest.raises(Stop):
        gocontext.http.request(ctx, session, "POST", url_of(server) + "/up", data=body())
    assert _context.watcher_count(ctx) == 0
    assert_pool_healthy(session, url_of(server))
    assert open_fds() <= before + 1
    cancel()


@pytest.mark.parametrize("stream", [False, True], ids=["preload", "stream"])
def test_a_response_hook_that_raises_base_exception_leaves_nothing_behind(
    session: requests.Session, serve: Callable[..., RawServer], stream: bool
) -> None:
    server = serve(lambda conn, head: conn.sendall(OK))
    assert_pool_healthy(session, url_of(server))
    before = open_fds()
    ctx, cancel = gocontext.with_cancel(gocontext.background())

    def hook(r: requests.Response, **_: object) -> None:
        raise Stop

    with pytest.raises(Stop):
        gocontext.http.request(
            ctx, session, "GET", url_of(server) + "/x", hooks={"response": hook}, stream=stream
        )
    gc.collect()  # (the response the hook dropped: as with requests' own adapter)
    assert _context.watcher_count(ctx) == 0
    cancel()
    assert_pool_healthy(session, url_of(server))
    assert open_fds() <= before + 1
