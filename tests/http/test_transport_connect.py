"""The blocking transport's connect: one handshake per attempt however long it takes, and a
cancel or deadline from another thread interrupts it.

The handshakes here really take longer than any slice the transport waits in: a network
namespace whose peer answers every packet 150 ms late (``_slownet``), or, where namespaces are
not available, a network backend whose connect blocks for the round trip.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpcore
import httpx
import pytest

import gocontext
import gocontext.http

from ..conftest import NEVER
from ._slownet import LOCAL, PEER, SlowNet, cancel_at_the_first_syn, serve_http

T = TypeVar("T")
DELAY = 0.15  # seconds each packet spends on the way: a 300 ms handshake


@pytest.fixture
def slownet() -> Iterator[tuple[SlowNet, int]]:
    """The slow network, and the port of an HTTP server behind it."""
    reason = SlowNet.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    net = SlowNet(DELAY)
    try:
        net.__enter__()
    except (OSError, subprocess.CalledProcessError) as e:  # root, but not allowed here
        pytest.skip(f"cannot make a network namespace with a TUN device: {e}")
    try:
        listener = in_namespace(net, listening_socket)
        stop = threading.Event()
        server = serve_http(listener, stop)
        try:
            yield net, listener.getsockname()[1]
        finally:
            stop.set()
            server.join(NEVER)
            listener.close()
    finally:
        net.__exit__()


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind((LOCAL, 0))
    sock.listen(16)
    return sock


def in_namespace(net: SlowNet, fn: Callable[[], T]) -> T:
    """``fn()`` run by a thread inside the namespace; fails the test if it does not return."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            net.enter()
            out["value"] = fn()
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join(NEVER * 3)
    assert not t.is_alive(), "the request never returned"
    if "error" in out:
        raise out["error"]
    return out["value"]  # type: ignore[no-any-return]


def get(port: int, ctx: gocontext.Context, timeout: float | None) -> int:
    with httpx.Client(transport=gocontext.http.Transport(), timeout=timeout) as client:
        r = client.get(f"http://{PEER}:{port}/", extensions={"gocontext": ctx})
        return r.status_code


def test_a_handshake_slower_than_a_slice_connects_with_one_attempt(
    slownet: tuple[SlowNet, int],
) -> None:
    net, port = slownet
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    assert in_namespace(net, lambda: get(port, ctx, NEVER)) == 200
    cancel()
    assert net.syns == 1


def test_a_slow_handshake_under_a_deadline_connects(slownet: tuple[SlowNet, int]) -> None:
    net, port = slownet
    ctx, cancel = gocontext.with_timeout(gocontext.background(), NEVER)
    assert in_namespace(net, lambda: get(port, ctx, None)) == 200
    cancel()
    assert net.syns == 1


def test_with_no_timeout_and_no_deadline_a_slow_handshake_still_connects(
    slownet: tuple[SlowNet, int],
) -> None:
    net, port = slownet
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    assert in_namespace(net, lambda: get(port, ctx, None)) == 200
    cancel()
    assert net.syns == 1


def test_a_cancel_from_another_thread_interrupts_a_handshake(
    slownet: tuple[SlowNet, int],
) -> None:
    net, port = slownet
    net.drop_syn = True  # the peer never answers: only the cancel can end the connect
    ctx, cancel = gocontext.with_cancel(gocontext.background())

    canceller = cancel_at_the_first_syn(net, cancel, NEVER)
    with pytest.raises(gocontext.Canceled):
        in_namespace(net, lambda: get(port, ctx, None))
    canceller.join(NEVER)
    net.drop_syn = False
    plain = gocontext.background()
    assert in_namespace(net, lambda: get(port, plain, NEVER)) == 200


def test_a_deadline_interrupts_a_handshake(slownet: tuple[SlowNet, int]) -> None:
    net, port = slownet
    net.drop_syn = True
    ctx, cancel = gocontext.with_timeout(gocontext.background(), 0.3)
    with pytest.raises(gocontext.DeadlineExceeded):
        in_namespace(net, lambda: get(port, ctx, None))
    cancel()


# --------------------------------------------------------------------------------------------
# Portable: a network backend whose connect blocks for the round trip


class SlowBackend(httpcore.NetworkBackend):
    """httpcore's own backend behind a round trip of *rtt* seconds, honouring the timeout as a
    real connect does: a timeout shorter than the round trip fails, and each call starts over."""

    def __init__(self, rtt: float) -> None:
        self.rtt = rtt
        self.calls = 0
        self.inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        self.calls += 1
        if timeout is not None and timeout < self.rtt:
            threading.Event().wait(timeout)
            raise httpcore.ConnectTimeout("timed out")
        threading.Event().wait(self.rtt)
        return self.inner.connect_tcp(host, port, timeout, local_address, socket_options)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:  # pragma: no cover - not used
        raise NotImplementedError

    def sleep(self, seconds: float) -> None:  # pragma: no cover - not used
        self.inner.sleep(seconds)


@pytest.mark.parametrize("timeout", [NEVER, None], ids=["timeout", "no-timeout"])
def test_a_backend_whose_connect_takes_a_round_trip_is_called_once(
    server: Any, timeout: float | None
) -> None:
    backend = SlowBackend(rtt=0.3)
    inner = httpx.HTTPTransport()
    inner._pool._network_backend = backend
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    out: list[int] = []

    def run() -> None:
        with httpx.Client(transport=gocontext.http.Transport(inner), timeout=timeout) as client:
            out.append(client.get(f"{server.url}/info", extensions={"gocontext": ctx}).status_code)

    t = threading.Thread(target=run)
    t.start()
    t.join(NEVER * 3)
    cancel()
    assert not t.is_alive(), "the request never returned"
    assert out == [200]
    assert backend.calls == 1


# --------------------------------------------------------------------------------------------
# The TLS handshake: a peer that accepts the connection and never answers its ClientHello


@pytest.fixture
def mute_tls_peer() -> Iterator[tuple[int, threading.Event]]:
    """The port of a peer on 127.0.0.1 that reads a connection's ClientHello and never
    answers, and an event set once a ClientHello arrived."""
    listener = socket.create_server(("127.0.0.1", 0))
    hello = threading.Event()
    closing = threading.Event()
    conns: list[socket.socket] = []

    def serve() -> None:
        while True:
            conn, _ = listener.accept()
            conns.append(conn)
            if closing.is_set():
                return
            with contextlib.suppress(OSError):
                if conn.recv(65536):
                    hello.set()

    t = threading.Thread(target=serve)
    t.start()
    try:
        yield listener.getsockname()[1], hello
    finally:
        closing.set()
        for conn in conns:  # wakes a recv()
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        socket.create_connection(listener.getsockname()).close()  # wakes accept()
        t.join(NEVER)
        listener.close()
        for conn in conns:
            conn.close()


def test_a_cancel_from_another_thread_interrupts_a_tls_handshake(
    server: Any, mute_tls_peer: tuple[int, threading.Event]
) -> None:
    """Only the cancel can end the handshake within the test's hang guard (the caller's
    timeout is longer): it raises Canceled, and the pool serves the next request."""
    port, hello = mute_tls_peer
    ctx, cancel = gocontext.with_cancel(gocontext.background())

    def cancel_once_hello() -> None:
        if hello.wait(NEVER):
            cancel()

    canceller = threading.Thread(target=cancel_once_hello)
    canceller.start()
    transport = gocontext.http.Transport()
    with httpx.Client(transport=transport, timeout=NEVER * 3) as client:
        out: list[BaseException] = []

        def handshake() -> None:
            try:
                client.get(f"https://127.0.0.1:{port}/", extensions={"gocontext": ctx})
            except BaseException as e:
                out.append(e)

        t = threading.Thread(target=handshake)
        t.start()
        t.join(NEVER)
        canceller.join(NEVER)
        assert not t.is_alive(), "the handshake went on after the cancel"
        assert len(out) == 1 and isinstance(out[0], gocontext.Canceled), out
        pool = transport._inner._pool  # type: ignore[attr-defined]
        assert [c for c in pool.connections if not (c.is_idle() or c.is_closed())] == []
        assert pool._requests == []
        assert client.get(f"{server.url}/info").status_code == 200
