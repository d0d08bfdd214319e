"""A ``requests`` transport adapter that makes every request honour its context.

The request's context is the one ``request(ctx, session, ...)`` was given, else the ambient
one. Before sending: a done context sends nothing; the time left caps the connect and read
timeouts and goes out as ``Grpc-Timeout``; ``PropagatedKey`` values go out in ``baggage``.

While in flight, a cancel or a passed deadline from any thread must wake a thread blocked in a
socket call. The adapter's connection pools remember which connections each request holds
(from the moment the pool hands one out until it takes it back, or until urllib3 closes it
after a failure); the context's done-callback shuts those sockets down, the blocked call
fails, and the failure is raised as the context's error. urllib3 drops a connection that
failed, so the pool stays healthy. A new connection's socket is registered before it connects
(``_connect``: one handshake, however long it takes), so an abort interrupts a connect too. A
request waiting for a free connection of a full blocking pool (``pool_block=True``) is woken
by the abort as well.
"""

from __future__ import annotations

import contextlib
import contextvars
import socket
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    EmptyPoolError,
    NameResolutionError,
    NewConnectionError,
)
from urllib3.util import Timeout
from urllib3.util.connection import allowed_gai_family

from .. import _timer
from .._ambient import _current as _ambient
from .._ambient import current
from .._context import Context, as_rich, check_context
from .._done import CallbackHandle
from .._errors import ContextError, DeadlineExceeded
from . import _connect
from ._headers import format_grpc_timeout
from ._outgoing import baggage, deadline_passed, time_left

__all__ = ["RequestsAdapter", "request"]


class _Aborter:
    """The connections one request holds, and the switch that shuts their sockets down.

    ``lock`` guards every field. ``conns`` holds a connection from the pool's ``_get_conn`` to
    its ``_put_conn``, or to its ``close()`` (urllib3 closes a connection that failed and puts
    back None): once back in the pool the connection may serve another request, so it is
    forgotten (under the lock) before the pool can hand it out again. ``connecting`` holds the
    sockets of new connections still connecting; ``waiting`` the pool queue the request waits
    on for a free connection, if any. The context's callback is removed when the last
    connection is let go and ``send`` has returned.
    """

    __slots__ = ("aborted", "connecting", "conns", "handle", "lock", "sending", "waiting")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.aborted = False
        self.sending = True
        self.conns: set[HTTPConnection] = set()
        self.connecting: set[socket.socket] = set()
        self.waiting: Any = None
        self.handle: CallbackHandle | None = None

    def attach(self, conn: HTTPConnection) -> bool:
        with self.lock:
            if self.aborted:
                return False
            self.conns.add(conn)
            return True

    def attach_socket(self, sock: socket.socket) -> None:
        """Register a new connection's socket before it connects (``_connect.connect``)."""
        with self.lock:
            if not self.aborted:
                self.connecting.add(sock)
                return
        raise _connect.ConnectAborted("the request's context ended")

    def detach_socket(self, sock: socket.socket) -> None:
        with self.lock:
            self.connecting.discard(sock)

    def detach(self, conn: HTTPConnection) -> None:
        with self.lock:
            self.conns.discard(conn)
            self._maybe_release_locked()

    def sent(self) -> None:
        with self.lock:
            self.sending = False
            self._maybe_release_locked()

    def _maybe_release_locked(self) -> None:
        if not self.sending and not self.conns and self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def abort(self) -> None:
        # Shut down under the lock: a connection cannot go back to the pool (and on to
        # another request) between the check and the shutdown.
        with self.lock:
            self.aborted = True
            socks = [conn.sock for conn in self.conns]
            socks.extend(self.connecting)
            for sock in socks:
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            waiting = self.waiting
        if waiting is not None:  # wake the wait for a free connection (see _PoolMixin)
            with waiting.not_empty:
                waiting.not_empty.notify_all()


_current: contextvars.ContextVar[tuple[_Aborter, Context] | None] = contextvars.ContextVar(
    "gocontext.http.requests_aborter", default=None
)


class _ConnMixin:
    """A connection whose connect an abort interrupts, that lets go of its request's aborter
    when urllib3 closes it, and that checks once connected whether its request was aborted
    meanwhile (where the connect was not ours to interrupt)."""

    _gocontext_aborter: _Aborter | None = None
    sock: socket.socket | None
    timeout: Any
    host: str
    port: int
    source_address: tuple[str, int] | None
    socket_options: Any
    _dns_host: str

    def _new_conn(self) -> socket.socket:
        aborter = self._gocontext_aborter
        if aborter is None or not _connect.HAS_POLL:
            return super()._new_conn()  # type: ignore[misc, no-any-return]  # urllib3's connection classes are partly typed
        own = self.timeout
        limit = own if isinstance(own, (int, float)) else None
        host = self._dns_host
        if host.startswith("["):  # as urllib3's create_connection
            host = host.strip("[]")
        sock: socket.socket | None = None

        def attach(s: socket.socket) -> None:
            nonlocal sock
            if sock is not None:
                aborter.detach_socket(sock)
            sock = s
            aborter.attach_socket(s)

        try:
            connected = _connect.connect(
                host,
                self.port,
                limit,
                attach=attach,
                aborted=lambda: aborter.aborted,
                family=allowed_gai_family(),
                source_address=self.source_address,
                socket_options=self.socket_options,
            )
        except _connect.ConnectAborted as e:
            raise NewConnectionError(self, "the request's context ended") from e  # type: ignore[arg-type]  # urllib3 types the pool, we are its connection
        except socket.gaierror as e:
            raise NameResolutionError(self.host, self, e) from e  # type: ignore[arg-type]  # as above
        except TimeoutError as e:
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={own})"
            ) from e
        except OSError as e:
            raise NewConnectionError(self, f"Failed to establish a new connection: {e}") from e  # type: ignore[arg-type]  # as above
        finally:
            if sock is not None:
                aborter.detach_socket(sock)
        connected.settimeout(limit if limit is not None else socket.getdefaulttimeout())
        sys.audit("http.client.connect", self, self.host, self.port)
        return connected

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]  # urllib3's connection classes are partly typed
        aborter = self._gocontext_aborter
        if aborter is not None:
            with aborter.lock:
                if aborter.aborted and self.sock is not None:
                    with contextlib.suppress(OSError):
                        self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        try:
            super().close()  # type: ignore[misc]  # urllib3's connection classes are partly typed
        finally:
            aborter = self._gocontext_aborter
            if aborter is not None:  # a failed connection, dropped: urllib3 puts back None
                self._gocontext_aborter = None
                aborter.detach(self)  # type: ignore[arg-type]  # we are its HTTPConnection


class _Conn(_ConnMixin, HTTPConnection):
    pass


class _HTTPSConn(_ConnMixin, HTTPSConnection):
    pass


class _NoConnection(EmptyPoolError):
    """The request's context ended before it got a connection of the pool. urllib3 takes an
    ``EmptyPoolError`` to mean that nothing was taken, and so puts nothing back: from any other
    error it would put back a slot it never took (and a blocking pool then refuses the next
    connection given back with ``FullPoolError``). ``send`` raises the context's error."""


class _PoolMixin:
    """Connection pools that tell the current request's aborter which connections it holds."""

    block: bool
    pool: Any

    def _get_conn(self, timeout: float | None = None) -> Any:
        held = _current.get()
        if held is not None and self.block:
            self._wait_for_a_free_slot(held[0], timeout)
        conn = super()._get_conn(timeout)  # type: ignore[misc]  # urllib3's pool classes are partly typed
        if held is not None:
            aborter = held[0]
            if not aborter.attach(conn):
                self._put_conn(conn)
                raise _NoConnection(self, "the request's context ended")  # type: ignore[arg-type]  # the mixin is a pool
            conn._gocontext_aborter = aborter
        return conn

    def _wait_for_a_free_slot(self, aborter: _Aborter, timeout: float | None) -> None:
        """A full blocking pool: wait, as its queue's ``get()`` would, until a connection (or
        a slot for a new one) is free, the pool timeout passes, or the request is aborted
        (``abort()`` wakes this wait). The slot itself is taken by urllib3's ``_get_conn``
        after: another request may take it first, and that one then waits as urllib3 does."""
        q = self.pool
        if q is None or not hasattr(q, "not_empty"):  # closed, or a queue laid out otherwise
            return
        end = None if timeout is None else _timer.now() + timeout
        with aborter.lock:
            aborter.waiting = q
        try:
            with q.not_empty:
                while not q._qsize():
                    if aborter.aborted:
                        raise _NoConnection(self, "the request's context ended")  # type: ignore[arg-type]  # the mixin is a pool
                    left = None if end is None else end - _timer.now()
                    if left is not None and left <= 0:
                        return  # urllib3's own get() raises EmptyPoolError
                    q.not_empty.wait(left)
        finally:
            with aborter.lock:
                aborter.waiting = None

    def _put_conn(self, conn: Any) -> None:
        aborter = getattr(conn, "_gocontext_aborter", None)
        if aborter is not None:
            conn._gocontext_aborter = None
            aborter.detach(conn)
        super()._put_conn(conn)  # type: ignore[misc]  # urllib3's pool classes are partly typed


class _Pool(_PoolMixin, HTTPConnectionPool):
    ConnectionCls = _Conn


class _HTTPSPool(_PoolMixin, HTTPSConnectionPool):
    ConnectionCls = _HTTPSConn


_POOLS = {"http": _Pool, "https": _HTTPSPool}


def _cap(timeout: Any, left: float) -> tuple[Timeout, bool]:
    """*timeout* (as ``requests`` takes it) with each part capped by *left*; and whether the
    cap is what binds (so a timeout then means the deadline passed)."""
    if isinstance(timeout, Timeout):
        connect, read = timeout.connect_timeout, timeout.read_timeout
    elif isinstance(timeout, tuple):
        if len(timeout) != 2:
            raise ValueError(
                f"RequestsAdapter.send() needs a (connect, read) timeout tuple or a number, "
                f"got {timeout!r}"
            )
        connect, read = timeout
    else:
        connect = read = timeout
    binding = False
    capped: list[float] = []
    for own in (connect, read):
        if not isinstance(own, (int, float)) or own > left:
            capped.append(left)
            binding = True
        else:
            capped.append(own)
    return Timeout(connect=capped[0], read=capped[1]), binding


class _ContextResponse(requests.Response):
    """A response whose body reads raise the context's error when the context ended them."""

    _gocontext: Context
    _gocontext_binding: bool

    def iter_content(
        self, chunk_size: int | None = 1, decode_unicode: bool = False
    ) -> Iterator[Any]:
        ctx = self._gocontext
        # (requests overloads iter_content on a Literal decode_unicode; we pass ours through)
        it = super().iter_content(chunk_size, decode_unicode)  # type: ignore[call-overload]  # requests' overloads do not cover a passed-through flag
        while True:
            try:
                chunk = next(it)
            except StopIteration:
                return
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
                err = _translate(e, ctx, self._gocontext_binding)
                if err is e:
                    raise
                raise err from e
            yield chunk


def _translate(e: BaseException, ctx: Context, binding: bool) -> BaseException:
    err = ctx.err()
    if err is not None:
        return err
    if binding and isinstance(e, requests.Timeout) and deadline_passed(ctx):
        return DeadlineExceeded()  # (a timeout of the request's own, shorter, stays as it is)
    return e


class RequestsAdapter(HTTPAdapter):
    """A ``requests`` transport adapter that makes each request honour its context.

    Takes ``HTTPAdapter``'s arguments. Mount it for ``http://`` and ``https://``; a request's
    context is the one given to ``gocontext.http.request()``, else ``gocontext.current()``.
    A done context sends nothing; the time left caps the timeouts and goes out as
    ``Grpc-Timeout``, ``PropagatedKey`` values in ``baggage``. A cancel from any thread aborts
    the request in flight (connecting, sending, waiting or reading the body) with ``Canceled``,
    a passed deadline with ``DeadlineExceeded``; the pool stays healthy. Thread-safe, as
    ``HTTPAdapter`` is.

    Example:
        >>> import requests, gocontext, gocontext.http
        >>> session = requests.Session()
        >>> session.mount("http://", gocontext.http.RequestsAdapter())
        >>> ctx, cancel = gocontext.with_cancel(gocontext.background())
        >>> cancel()
        >>> gocontext.http.request(ctx, session, "GET", "http://127.0.0.1:9/")
        Traceback (most recent call last):
          ...
        gocontext.Canceled: context canceled
    """

    __module__ = "gocontext.http"

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is urllib3.ProxyManager:  # (SOCKS proxies keep their own pools)
            manager.pool_classes_by_scheme = _POOLS
        return manager

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        ctx = current()
        binding = False
        left = time_left(ctx)
        if left is not None:
            request.headers["Grpc-Timeout"] = format_grpc_timeout(left)
            timeout, binding = _cap(timeout, left)
        existing = request.headers.get("baggage")
        if isinstance(existing, bytes):
            existing = existing.decode("latin-1")
        value = baggage(ctx, existing)
        if value is not None:
            request.headers["baggage"] = value
        aborter = _Aborter()
        # (no lock: the handle is read only once ``sent()`` has run, in this thread)
        aborter.handle = ctx.done().add_callback(aborter.abort)
        token = _current.set((aborter, ctx))
        try:
            response = super().send(request, stream, timeout, verify, cert, proxies)  # type: ignore[arg-type]  # requests types these loosely
        except ContextError:
            raise
        except Exception as e:
            err2 = _translate(e, ctx, binding)
            if err2 is e:
                raise
            raise err2 from e
        finally:
            _current.reset(token)
            aborter.sent()
        response.__class__ = _ContextResponse
        response._gocontext = ctx  # type: ignore[attr-defined]  # our own attribute on the response
        response._gocontext_binding = binding  # type: ignore[attr-defined]  # our own attribute on the response
        return response


def request(
    ctx: Context, session: requests.Session, method: str, url: str, **kwargs: Any
) -> requests.Response:
    """``session.request(method, url, **kwargs)`` under *ctx*, through a ``RequestsAdapter``.

    The adapter mounted for *url* must be a ``RequestsAdapter`` (else ``TypeError``: the
    context would be silently ignored). Raises ``Canceled`` / ``DeadlineExceeded`` when *ctx*
    ends the request, sending nothing if it already has.

    Example:
        >>> import requests, gocontext, gocontext.http
        >>> session = requests.Session()
        >>> session.mount("http://", gocontext.http.RequestsAdapter())
        >>> ctx, cancel = gocontext.with_timeout(gocontext.background(), 0)
        >>> gocontext.http.request(ctx, session, "GET", "http://127.0.0.1:9/")
        Traceback (most recent call last):
          ...
        gocontext.DeadlineExceeded: context deadline exceeded
    """
    check_context(ctx, "gocontext.http.request", "ctx")
    if not isinstance(session, requests.Session):
        raise TypeError(
            f"gocontext.http.request() needs a requests.Session, got {type(session).__name__}: "
            f"{session!r}"
        )
    adapter = session.get_adapter(url)
    if not isinstance(adapter, RequestsAdapter):
        raise TypeError(
            f"gocontext.http.request() needs a gocontext.http.RequestsAdapter mounted for "
            f"{url!r}, got {type(adapter).__name__}: "
            f'session.mount("http://", gocontext.http.RequestsAdapter())'
        )
    token = _ambient.set(as_rich(ctx))  # (use(ctx), written out: ctx is checked above)
    try:
        return session.request(method, url, **kwargs)
    finally:
        _ambient.reset(token)
