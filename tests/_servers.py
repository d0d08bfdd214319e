"""The test servers' common parts: uvicorn in a thread of the test process, on a free port of
127.0.0.1 (the one way the HTTP and wire tests run an ASGI app behind a real server), and the
board on which handlers record what they saw."""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import uvicorn

import gocontext

from .conftest import NEVER

RID = gocontext.PropagatedKey("test-rid")  # the request id every test handler records under

T = TypeVar("T")


def tcp_socket() -> socket.socket:
    """A TCP socket bound to a free port on 127.0.0.1.

    IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only then, and without it every small
    response waits for the client's delayed ACK.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    return sock


def on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], T]) -> T:
    """*fn*'s result, called on *loop* (a server's, in its thread)."""

    async def call() -> T:
        return fn()

    return asyncio.run_coroutine_threadsafe(call(), loop).result(NEVER)


def sent_when(conn: socket.socket) -> None:
    """Wait until the kernel has sent all that *conn* was given (its send queue is empty):
    a FIN sent next is not queued behind unsent data (where no server could see it)."""
    deadline = time.monotonic() + NEVER
    while struct.unpack("i", fcntl.ioctl(conn.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]:
        assert time.monotonic() < deadline, "the server's kernel never took the upload"
        time.sleep(0.001)


def read_response(conn: socket.socket) -> tuple[bytes, bytes]:
    """The head and body of one response on *conn* (framed by its Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"the server closed the connection after {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, f"the server closed the connection after {head + body!r}"
        body += chunk
    assert len(body) == length, (head, body)
    return head, body


class Server:
    """uvicorn in a thread, serving *app* on a free port of 127.0.0.1 (``url``, ``port``), on
    the event loop *loop* names (uvicorn's ``"auto"``: uvloop when it is installed)."""

    def __init__(self, app: object, loop: str = "auto") -> None:
        self.sock = tcp_socket()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,  # type: ignore[arg-type]  # any ASGI app; uvicorn's hint names a few types
            log_level="warning",
            lifespan="off",
            loop=loop,
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})

    def __enter__(self) -> Server:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            self.thread.join(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(NEVER)
        self.sock.close()


@dataclass
class Board:
    """What the handlers saw, for tests to read, per request id: an entered event, an ended
    event, and the context's cause, error and deadline at its end."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    entered: dict[str, threading.Event] = field(default_factory=dict)
    ended: dict[str, threading.Event] = field(default_factory=dict)
    causes: dict[str, BaseException | None] = field(default_factory=dict)
    errors: dict[str, BaseException | None] = field(default_factory=dict)
    deadlines: dict[str, float | None] = field(default_factory=dict)
    release: dict[str, threading.Event] = field(default_factory=dict)
    in_flight: int = 0  # requests inside the app behind the middleware, on every test server

    def event(self, table: dict[str, threading.Event], rid: str) -> threading.Event:
        with self.lock:
            return table.setdefault(rid, threading.Event())

    def enter(self, rid: str) -> None:
        self.event(self.entered, rid).set()

    def end(self, rid: str, ctx: gocontext.Context) -> None:
        with self.lock:
            self.causes[rid] = gocontext.cause(ctx)
            self.errors[rid] = ctx.err()
            self.deadlines[rid] = ctx.deadline()
        self.event(self.ended, rid).set()

    @contextmanager
    def inside(self, rid: str, ctx: gocontext.Context) -> Iterator[None]:
        """Record that handler *rid* entered, and how *ctx* ended once the block is left
        (however it is left)."""
        self.enter(rid)
        try:
            yield
        finally:
            self.end(rid, ctx)

    async def park(self) -> None:
        """In a handler: record that it entered, wait until its context ends, record how."""
        ctx = gocontext.current()
        with self.inside(str(ctx.value(RID)), ctx):
            await ctx.done()

    def wait_entered(self, rid: str) -> None:
        assert self.event(self.entered, rid).wait(NEVER), f"handler {rid} never started"

    def wait_ended(self, rid: str) -> BaseException | None:
        assert self.event(self.ended, rid).wait(NEVER), f"handler {rid} never ended"
        with self.lock:
            return self.causes[rid]
