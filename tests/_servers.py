"""uvicorn in a thread of the test process, on a free port of 127.0.0.1: the one way the HTTP
and wire tests run an ASGI app behind a real server."""

from __future__ import annotations

import socket
import threading

import uvicorn

from .conftest import NEVER


def tcp_socket() -> socket.socket:
    """A TCP socket bound to a free port on 127.0.0.1.

    IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only then, and without it every small
    response waits for the client's delayed ACK.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    return sock


class Server:
    """uvicorn in a thread, serving *app* on a free port of 127.0.0.1 (``url``, ``port``)."""

    def __init__(self, app: object) -> None:
        self.sock = tcp_socket()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,  # type: ignore[arg-type]  # any ASGI app; uvicorn's hint names a few types
            log_level="warning",
            lifespan="off",
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
