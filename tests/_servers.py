"""The test servers' common parts: uvicorn in a thread of the test process, on a free port of
127.0.0.1 (the one way the HTTP and wire tests run an ASGI app behind a real server), and the
board on which handlers record what they saw."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn

import gocontext

from .conftest import NEVER

RID = gocontext.PropagatedKey("test-rid")  # the request id every test handler records under


def tcp_socket() -> socket.socket:
    """A TCP socket bound to a free port on 127.0.0.1.

    IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only then, and without it every small
    response waits for the client's delayed ACK.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    return sock


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
            loop=loop,  # type: ignore[arg-type]  # one of uvicorn's names
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
