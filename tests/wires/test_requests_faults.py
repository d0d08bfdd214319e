"""RequestsAdapter against servers that misbehave on purpose, written on raw sockets on
127.0.0.1: bodies on connections the server closes, a TLS handshake that never finishes,
retries that wait between attempts, a redirect to a URL no RequestsAdapter serves. Each time
the context ends the request promptly with its own error, and the pool stays healthy."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
import requests
from urllib3.util import Retry

import gocontext
import gocontext.http
from gocontext import _context

from ..conftest import NEVER
from .conftest import tcp_socket, unreached_port
from .test_requests import wait_until_in

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

Answer = Callable[[socket.socket, str], None]


def read_head(conn: socket.socket) -> str | None:
    """The next request's head (line and headers), or None once the client has gone."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    return data.decode("latin-1")


class RawServer:
    """An HTTP/1.1 server on raw sockets. ``GET /ok`` is answered ``200 ok``, any other
    request by ``answer(conn, head)``; the connection serves requests until the client (or an
    answer) shuts it down. Each new connection is first passed through ``wrap``. ``release``
    is set when the server stops: answers that wait on it end then."""

    def __init__(self, answer: Answer, wrap: Callable[[socket.socket], socket.socket]) -> None:
        self.answer = answer
        self.wrap = wrap
        self.release = threading.Event()
        self.listener = tcp_socket()
        self.listener.listen(16)
        self.listener.settimeout(0.05)
        self.port: int = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.accepting = threading.Thread(target=self._accept)
        self.accepting.start()

    def _accept(self) -> None:
        while not self.release.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            t = threading.Thread(target=self._serve, args=(conn,))
            with self.lock:
                self.conns.append(conn)
                self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            conn = self.wrap(conn)
            with conn:
                while (head := read_head(conn)) is not None:
                    if head.startswith("GET /ok "):
                        conn.sendall(OK)
                        continue
                    self.answer(conn, head)

    def stop(self) -> None:
        self.release.set()
        self.accepting.join(NEVER)
        self.listener.close()
        with self.lock:
            conns, threads = list(self.conns), list(self.threads)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(NEVER)


@pytest.fixture
def serve() -> Iterator[Callable[..., RawServer]]:
    """``serve(answer, wrap=...)``: a started RawServer, stopped after the test."""
    servers: list[RawServer] = []

    def start(
        answer: Answer, wrap: Callable[[socket.socket], socket.socket] = lambda c: c
    ) -> RawServer:
        server = RawServer(answer, wrap)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def url_of(server: RawServer, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{server.port}"


def assert_pool_healthy(session: requests.Session, url: str, **kwargs: object) -> None:
    """The next request succeeds and no connection is left checked out of the pool."""
    r = gocontext.http.request(gocontext.background(), session, "GET", url + "/ok", **kwargs)
    assert r.text == "ok"
    adapter = session.get_adapter(url)
    assert isinstance(adapter, gocontext.http.RequestsAdapter)
    pool = adapter.poolmanager.connection_from_url(url)
    assert pool.pool is not None
    assert pool.pool.qsize() == pool.pool.maxsize, "a connection is still checked out"


def run(call: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    """*call* started in a thread; what it raised is collected in the list."""
    raised: list[BaseException] = []

    def body() -> None:
        try:
            call()
        except BaseException as e:
            raised.append(e)

    t = threading.Thread(target=body)
    t.start()
    return t, raised


def ended_with(t: threading.Thread, raised: list[BaseException], expected: type) -> None:
    t.join(NEVER)
    assert not t.is_alive(), "the request did not end with its context"
    assert len(raised) == 1, raised
    assert isinstance(raised[0], expected), repr(raised[0])


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        adapter = gocontext.http.RequestsAdapter(pool_maxsize=2)
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        yield s


# --------------------------------------------------------------------------------------------
# A body read from a connection the response closes (Connection: close, HTTP/1.0, a body that
# ends with the connection): http.client hands the connection over to the response.

HEADS = {
    "connection-close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2000\r\n\r\n",
    "http-1.0": b"HTTP/1.0 200 OK\r\nContent-Length: 2000\r\n\r\n",
    "until-close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "preload"])
@pytest.mark.parametrize("head", list(HEADS))
def test_a_cancel_ends_the_body_read_of_a_response_that_closes_its_connection(
    session: requests.Session, serve: Callable[..., RawServer], head: str, stream: bool
) -> None:
    """Half the body comes, the rest never: a cancel from another thread ends the read with
    Canceled (a body that ends with the connection is not taken for complete)."""

    def answer(conn: socket.socket, _: str) -> None:
        conn.sendall(HEADS[head] + b"A" * 1000)
        server.release.wait()

    server = serve(answer)
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    first_chunk = threading.Event()

    def call() -> None:
        r = gocontext.http.request(ctx, session, "GET", url_of(server) + "/body", stream=stream)
        chunks = r.iter_content(1000)
        next(chunks)
        first_chunk.set()
        for _ in chunks:
            pass

    t, raised = run(call)
    if stream:
        assert first_chunk.wait(NEVER), raised
    else:  # requests reads the whole body before the response is handed over
        assert wait_until_in(t, "iter_content"), "the request never read its body"
    cancel()
    ended_with(t, raised, gocontext.Canceled)
    assert _context.watcher_count(ctx) == 0
    assert_pool_healthy(session, url_of(server))


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "preload"])
@pytest.mark.parametrize("head", list(HEADS))
def test_a_whole_body_on_a_connection_the_response_closes_lets_go_of_the_context(
    session: requests.Session, serve: Callable[..., RawServer], head: str, stream: bool
) -> None:
    """The body read to its end: the request lets go of the context's callback (a later
    cancel is nobody's business), and nothing is cut short."""

    def answer(conn: socket.socket, _: str) -> None:
        conn.sendall(HEADS[head] + b"A" * 2000)
        conn.shutdown(socket.SHUT_RDWR)

    server = serve(answer)
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    r = gocontext.http.request(ctx, session, "GET", url_of(server) + "/body", stream=stream)
    assert r.content == b"A" * 2000
    assert _context.watcher_count(ctx) == 0
    cancel()
    assert_pool_healthy(session, url_of(server))


def test_a_deadline_ends_a_body_that_trickles_in_on_a_connection_the_response_closes(
    session: requests.Session, serve: Callable[..., RawServer]
) -> None:
    """A byte now and then keeps every read within its timeout: the deadline itself must end
    the body read."""

    def answer(conn: socket.socket, _: str) -> None:
        conn.sendall(HEADS["connection-close"])
        while not server.release.wait(0.05):
            conn.sendall(b"x")

    server = serve(answer)
    ctx, cancel = gocontext.with_timeout(gocontext.background(), 0.5)
    t, raised = run(lambda: gocontext.http.request(ctx, session, "GET", url_of(server) + "/"))
    ended_with(t, raised, gocontext.DeadlineExceeded)
    cancel()
    assert _context.watcher_count(ctx) == 0
    assert_pool_healthy(session, url_of(server))


# --------------------------------------------------------------------------------------------
# A TLS handshake the server never answers


def test_a_cancel_interrupts_a_tls_handshake(
    session: requests.Session, serve: Callable[..., RawServer]
) -> None:
    """The server reads the ClientHello and never answers: a cancel from another thread ends
    the handshake with Canceled, long before the request's own timeout, and no connection is
    left checked out of the pool."""
    hello = threading.Event()

    def mute(conn: socket.socket) -> socket.socket:
        if conn.recv(65536):
            hello.set()
        server.release.wait()
        raise OSError("never answered")

    server = serve(lambda conn, head: None, mute)
    url = url_of(server, "https")
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    t, raised = run(
        lambda: gocontext.http.request(
            ctx, session, "GET", url + "/", timeout=NEVER * 6, verify=False
        )
    )
    assert hello.wait(NEVER), raised
    cancel()
    ended_with(t, raised, gocontext.Canceled)
    assert _context.watcher_count(ctx) == 0
    adapter = session.get_adapter(url)
    assert isinstance(adapter, gocontext.http.RequestsAdapter)
    pool = adapter.poolmanager.connection_from_url(url)
    assert pool.pool is not None
    assert pool.pool.qsize() == pool.pool.maxsize, "a connection is still checked out"
    plain = serve(lambda conn, head: None)
    assert_pool_healthy(session, url_of(plain))


# --------------------------------------------------------------------------------------------
# Retries: the wait between attempts ends with the context

WAIT_LONG = 60.0  # a Retry-After, a backoff: far beyond the bound a test waits


def answer_503(retry_after: bool) -> Answer:
    def answer(conn: socket.socket, _: str) -> None:
        extra = f"Retry-After: {WAIT_LONG:.0f}\r\n".encode() if retry_after else b""
        conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\n" + extra + b"Content-Length: 0\r\n\r\n")

    return answer


def hang_up(conn: socket.socket, _: str) -> None:
    """Close the connection without answering."""
    conn.shutdown(socket.SHUT_RDWR)


RETRIES = {
    # server's answer, the adapter's Retry
    "retry-after": (answer_503(True), Retry(total=3, status_forcelist=[503])),
    "backoff": (
        answer_503(False),
        Retry(total=5, status_forcelist=[503], backoff_factor=WAIT_LONG, backoff_max=WAIT_LONG),
    ),
    "connection-errors": (hang_up, Retry(total=5, backoff_factor=WAIT_LONG, backoff_max=WAIT_LONG)),
}


@pytest.mark.parametrize("how", ["cancel", "deadline"])
@pytest.mark.parametrize("case", list(RETRIES))
def test_the_wait_between_retries_ends_with_the_context(
    serve: Callable[..., RawServer], case: str, how: str
) -> None:
    answer, retry = RETRIES[case]
    server = serve(answer)
    with requests.Session() as s:
        s.mount("http://", gocontext.http.RequestsAdapter(max_retries=retry))
        if how == "cancel":
            ctx, cancel = gocontext.with_cancel(gocontext.background())
        else:
            ctx, cancel = gocontext.with_timeout(gocontext.background(), 0.5)
        t, raised = run(lambda: gocontext.http.request(ctx, s, "GET", url_of(server) + "/"))
        if how == "cancel":
            assert wait_until_in(t, "sleep"), "the request never waited to retry"
            cancel()
        expected = gocontext.Canceled if how == "cancel" else gocontext.DeadlineExceeded
        ended_with(t, raised, expected)
        cancel()
        assert _context.watcher_count(ctx) == 0
        assert_pool_healthy(s, url_of(server))


def test_retries_still_wait_and_retry_under_a_live_context(
    serve: Callable[..., RawServer],
) -> None:
    """A first 503 with a short Retry-After, then the answer: retried, and the wait is kept."""
    attempts: list[str] = []

    def answer(conn: socket.socket, head: str) -> None:
        attempts.append(head)
        if len(attempts) == 1:
            conn.sendall(b"HTTP/1.1 503 Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n")
        else:
            conn.sendall(OK)

    server = serve(answer)
    with requests.Session() as s:
        retry = Retry(total=2, status_forcelist=[503])
        s.mount("http://", gocontext.http.RequestsAdapter(max_retries=retry))
        ctx, cancel = gocontext.with_timeout(gocontext.background(), NEVER)
        r = gocontext.http.request(ctx, s, "GET", url_of(server) + "/")
        cancel()
    assert r.text == "ok"
    assert len(attempts) == 2


# --------------------------------------------------------------------------------------------
# Redirects


def test_a_redirect_to_a_url_without_a_requests_adapter_raises_type_error(
    serve: Callable[..., RawServer],
) -> None:
    """request() promises TypeError where its context would be ignored: that holds for the URL
    a redirect leads to as for the first (nothing is sent there). Redirects that stay on a
    RequestsAdapter are followed; with allow_redirects=False there is nothing to check."""
    with unreached_port() as port:
        target = f"https://127.0.0.1:{port}/"

        def answer(conn: socket.socket, head: str) -> None:
            location = "/ok" if head.startswith("GET /here ") else target
            conn.sendall(
                f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode()
            )

        server = serve(answer)
        with requests.Session() as s:
            s.mount("http://", gocontext.http.RequestsAdapter())
            ctx, cancel = gocontext.with_timeout(gocontext.background(), NEVER)
            with pytest.raises(TypeError, match=r"RequestsAdapter mounted for 'https://"):
                gocontext.http.request(ctx, s, "GET", url_of(server) + "/away")
            r = gocontext.http.request(
                ctx, s, "GET", url_of(server) + "/away", allow_redirects=False
            )
            assert r.status_code == 302
            r = gocontext.http.request(ctx, s, "GET", url_of(server) + "/here")
            assert (r.text, len(r.history)) == ("ok", 1)
            cancel()
            assert _context.watcher_count(ctx) == 0
            assert_pool_healthy(s, url_of(server))
