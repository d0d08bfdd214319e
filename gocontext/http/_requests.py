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
(``_connect``: one handshake, however long it takes), so an abort interrupts a connect too, and
a TLS handshake after it. A request waiting for a free connection of a full blocking pool
(``pool_block=True``) is woken by the abort as well, and so is one waiting to retry (the
adapter's ``Retry`` waits on the context).

A response that will close its connection (``Connection: close``, HTTP/1.0, a body that ends
with the connection) takes the connection's socket over from ``http.client``, which closes the
connection object: the socket stays the request's to shut down until the body is done, and a
body cut short by the abort is not taken for complete.

The body is read through ``response.raw`` (urllib3's response, given a class of ours): by
``iter_content`` (``content``, ``text``, ``iter_lines``) and by a caller's own
``raw.read()``, ``raw.stream()``, ``shutil.copyfileobj(response.raw, f)`` alike, a read the
context ended raises its error, never urllib3's, and never returns a body cut short as whole.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import math
import socket
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any, TypeVar, cast
from urllib.parse import urljoin

import requests
import urllib3
import urllib3.response
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    EmptyPoolError,
    NameResolutionError,
    NewConnectionError,
)
from urllib3.util import Retry, Timeout
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
        self.conns: set[_ConnMixin] = set()
        self.connecting: set[socket.socket] = set()
        self.waiting: Any = None
        self.handle: CallbackHandle | None = None

    def attach(self, conn: _ConnMixin) -> bool:
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

    def detach(self, conn: _ConnMixin) -> None:
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
            socks = [conn.sock or conn._gocontext_body_sock for conn in self.conns]
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
# The session ``request()`` sends through, while it follows redirects: each URL a redirect leads
# to must be served by a RequestsAdapter too (``_check_redirect``).
_following: contextvars.ContextVar[requests.Session | None] = contextvars.ContextVar(
    "gocontext.http.requests_following", default=None
)


class _ConnMixin:
    """A connection whose connect an abort interrupts, that lets go of its request's aborter
    when urllib3 closes it, and that checks once connected whether its request was aborted
    meanwhile (where the connect was not ours to interrupt).

    ``_gocontext_body_sock`` is the socket a response reads its body from once ``http.client``
    has handed the connection over to it (``getresponse()`` closes a connection that will not
    be reused, so ``sock`` is None then); ``_gocontext_handshake`` a duplicate of a new TLS
    connection's socket, the request's to shut down until the handshake is over."""

    _gocontext_aborter: _Aborter | None = None
    _gocontext_body_sock: socket.socket | None = None
    _gocontext_handing_over = False
    _gocontext_handshake: tuple[_Aborter, socket.socket] | None = None
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

    def _gocontext_hold_for_handshake(self, sock: socket.socket) -> None:
        """TLS wraps *sock* in a new socket object and detaches this one (its descriptor moves
        to the new object): a duplicate of the descriptor, registered as a connecting socket,
        lets an abort shut the connection down during the handshake. ``connect`` lets it go."""
        aborter = self._gocontext_aborter
        if aborter is None:
            return
        held = sock.dup()
        try:
            aborter.attach_socket(held)
        except _connect.ConnectAborted as e:
            held.close()
            sock.close()
            raise NewConnectionError(self, "the request's context ended") from e  # type: ignore[arg-type]  # urllib3 types the pool, we are its connection
        self._gocontext_handshake = (aborter, held)

    def connect(self) -> None:
        try:
            super().connect()  # type: ignore[misc]  # urllib3's connection classes are partly typed
        finally:
            handshake = self._gocontext_handshake
            if handshake is not None:
                self._gocontext_handshake = None
                handshake[0].detach_socket(handshake[1])
                handshake[1].close()
        aborter = self._gocontext_aborter
        if aborter is not None:
            with aborter.lock:
                if aborter.aborted and self.sock is not None:
                    with contextlib.suppress(OSError):
                        self.sock.shutdown(socket.SHUT_RDWR)

    def getresponse(self) -> Any:
        self._gocontext_handing_over = True
        try:
            return super().getresponse()  # type: ignore[misc]  # urllib3's connection classes are partly typed
        finally:
            self._gocontext_handing_over = False

    def close(self) -> None:
        if self._gocontext_handing_over:
            # http.client hands the connection over to a response that will close it: the
            # body is read from this socket still (the response holds it open), so the request
            # keeps it until urllib3 lets the connection go (after the body, or a failure).
            if self._gocontext_aborter is not None:
                self._gocontext_body_sock = self.sock
            super().close()  # type: ignore[misc]  # urllib3's connection classes are partly typed
            return
        try:
            super().close()  # type: ignore[misc]  # urllib3's connection classes are partly typed
        finally:
            self._gocontext_let_go()  # a failed connection, dropped: urllib3 puts back None

    def _gocontext_let_go(self) -> None:
        """The request no longer holds this connection: each forgets the other."""
        aborter = self._gocontext_aborter
        self._gocontext_body_sock = None
        if aborter is not None:
            self._gocontext_aborter = None
            aborter.detach(self)


class _Conn(_ConnMixin, HTTPConnection):
    pass


class _HTTPSConn(_ConnMixin, HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        self._gocontext_hold_for_handshake(sock)
        return sock


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
        if isinstance(conn, _ConnMixin):
            conn._gocontext_let_go()
        super()._put_conn(conn)  # type: ignore[misc]  # urllib3's pool classes are partly typed

    def urlopen(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        """urllib3's ``urlopen``, whose ``Retry`` (5th argument) waits on the request's context."""
        if _current.get() is not None:
            if len(args) > 2:
                args = (*args[:2], _waiting_on_the_context(args[2]), *args[3:])
            elif "retries" in kwargs:
                kwargs["retries"] = _waiting_on_the_context(kwargs["retries"])
        return super().urlopen(method, url, *args, **kwargs)  # type: ignore[misc]  # urllib3's pool classes are partly typed


class _ContextRetry(Retry):
    """A ``Retry`` whose waits between attempts (a ``Retry-After``, a backoff) end when the
    request's context does, raising its error. (``Retry.new()`` keeps the class, so every
    later attempt's ``Retry`` waits so too.)"""

    def sleep_for_retry(self, response: Any) -> bool:
        retry_after = self.get_retry_after(response)
        if retry_after:
            _wait(retry_after)
            return True
        return False

    def sleep(self, response: Any = None) -> None:
        if self.respect_retry_after_header and response and self.sleep_for_retry(response):
            return
        _wait(self.get_backoff_time())


def _wait(seconds: float) -> None:
    """Wait *seconds*, or until the current request's context ends (then raise its error)."""
    held = _current.get()
    if held is None:
        if seconds > 0:
            time.sleep(seconds)
        return
    ctx = held[1]
    if seconds > 0:
        ctx.done().wait(seconds)
    err = ctx.err()
    if err is not None:
        raise err


_RETRY_CLASSES: dict[type[Retry], type[Retry]] = {Retry: _ContextRetry}


def _waiting_on_the_context(retries: Any) -> Any:
    """*retries*, when a ``Retry``, as a copy whose waits end with the request's context (a
    subclass of its class); as it is when its class waits its own way (a ``sleep`` or
    ``sleep_for_retry`` of its own), or is no ``Retry`` (urllib3 makes a plain one of that)."""
    cls = type(retries)
    if cls is Retry and type(retries.total) is int and retries.total == 0:
        return retries  # never retries, never waits: requests' default (no copy per request)
    if not issubclass(cls, Retry) or issubclass(cls, _ContextRetry):
        return retries
    if cls.sleep is not Retry.sleep or cls.sleep_for_retry is not Retry.sleep_for_retry:
        return retries
    waiting_cls = _RETRY_CLASSES.get(cls)
    if waiting_cls is None:  # (made twice in a race: either serves)
        made = type(cls.__name__, (_ContextRetry, cls), {"__module__": cls.__module__})
        waiting_cls = _RETRY_CLASSES.setdefault(cls, made)
    waiting = copy.copy(retries)
    try:
        waiting.__class__ = waiting_cls
    except TypeError:  # a class laid out otherwise (slots): its waits stay as they are
        return retries
    return waiting


class _Pool(_PoolMixin, HTTPConnectionPool):
    ConnectionCls = _Conn


class _HTTPSPool(_PoolMixin, HTTPSConnectionPool):
    ConnectionCls = _HTTPSConn


_POOLS = {"http": _Pool, "https": _HTTPSPool}


def _bad_timeout(timeout: object) -> ValueError:
    return ValueError(
        f"RequestsAdapter.send() needs a (connect, read) timeout tuple or a number, got {timeout!r}"
    )


def _parts(timeout: Any) -> tuple[Any, Any]:
    """The (connect, read) parts of *timeout* (as ``requests`` takes it), each a number (as
    given) or None (unset). A part that urllib3 would refuse as no number (a string, a bool, a
    list...), and NaN, raise ``ValueError`` here: a deadline capping the timeout must not put
    its own time in their place, nor let them fail deep in a connect."""
    if isinstance(timeout, Timeout):  # (validated by urllib3; a part unset is its sentinel)
        connect: Any = timeout.connect_timeout
        read: Any = timeout.read_timeout
        return (
            connect if isinstance(connect, (int, float)) else None,
            read if isinstance(read, (int, float)) else None,
        )
    if isinstance(timeout, tuple):
        if len(timeout) != 2:
            raise _bad_timeout(timeout)
        parts = timeout
    else:
        parts = (timeout, timeout)
    for part in parts:
        if part is None:
            continue
        if isinstance(part, (bool, str, bytes, bytearray)):
            raise _bad_timeout(timeout)
        try:
            value = float(part)
        except (TypeError, ValueError):
            raise _bad_timeout(timeout) from None
        if math.isnan(value):
            raise _bad_timeout(timeout)
    return parts


def _cap(timeout: Any, left: float) -> tuple[Timeout, bool]:
    """*timeout* (as ``requests`` takes it) with each part capped by *left*; and whether the
    cap is what binds (so a timeout then means the deadline passed)."""
    binding = False
    capped: list[Any] = []
    for own in _parts(timeout):
        if own is None or float(own) > left:
            capped.append(left)
            binding = True
        else:
            capped.append(own)
    return Timeout(connect=capped[0], read=capped[1]), binding


class _ContextResponse(requests.Response):
    """A response whose body reads raise the context's error when the context ended them."""

    _gocontext: Context
    _gocontext_binding: bool
    _gocontext_aborter: _Aborter

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
                # A body that ends with its connection ends too when the abort shuts it down.
                ended = ctx.err()
                if ended is not None and self._gocontext_aborter.aborted:
                    raise ended from None
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
    if binding and isinstance(e, _TIMEOUTS) and deadline_passed(ctx):
        return DeadlineExceeded()  # (a timeout of the request's own, shorter, stays as it is)
    return e


_T = TypeVar("_T")
_TIMEOUTS = (requests.Timeout, urllib3.exceptions.TimeoutError)
_READ_ERRORS = (urllib3.exceptions.HTTPError, OSError)


class _ContextRaw(urllib3.response.HTTPResponse):
    """urllib3's response (``response.raw``) whose reads end as the request's context does.

    What reads the body reads it here: ``iter_content`` (so ``content``, ``text``,
    ``iter_lines``), and ``raw.read()``, ``raw.read1()``, ``raw.stream()``, ``readinto``, a
    ``shutil.copyfileobj(response.raw, f)``. A read the abort made fail raises the context's
    error, never urllib3's; and once the abort has shut the connection down, a read that
    returns raises it too: a body that ends with its connection ends when the abort shuts it
    down, and must not be taken for complete. (``aborted`` is never set for a response whose
    body was whole before the context ended: the request let go of the context then.)"""

    _gocontext: Context
    _gocontext_aborter: _Aborter
    _gocontext_binding: bool

    def _gocontext_cut_short(self) -> None:
        """Raise the context's error if the abort cut the body short, letting the connection
        go as urllib3 does after a failed read."""
        if not self._gocontext_aborter.aborted:
            return
        err = self._gocontext.err()
        if err is None:
            return
        with contextlib.suppress(Exception):
            if self._original_response is not None:
                self._original_response.close()
            if self._connection is not None:
                self._connection.close()
            self.release_conn()
        raise err

    def _gocontext_failed(self, e: BaseException) -> BaseException:
        return _translate(e, self._gocontext, self._gocontext_binding)

    def _gocontext_read(self, step: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``step(*args, **kwargs)``, a read of the body: a failure the context caused raises
        the context's error, and so does a read that returns once the abort cut the body."""
        try:
            data = step(*args, **kwargs)
        except _READ_ERRORS as e:
            err = self._gocontext_failed(e)
            if err is e:
                raise
            raise err from e
        self._gocontext_cut_short()
        return data

    def read(self, *args: Any, **kwargs: Any) -> bytes:
        return self._gocontext_read(super().read, *args, **kwargs)

    def read1(self, *args: Any, **kwargs: Any) -> bytes:
        return self._gocontext_read(super().read1, *args, **kwargs)

    def read_chunked(self, *args: Any, **kwargs: Any) -> Generator[bytes]:
        chunks = super().read_chunked(*args, **kwargs)
        while True:
            try:
                chunk = self._gocontext_read(next, chunks)
            except StopIteration:  # (the body's end: cut short by the abort, or whole)
                self._gocontext_cut_short()
                return
            yield chunk


class RequestsAdapter(HTTPAdapter):
    """A ``requests`` transport adapter that makes each request honour its context.

    Takes ``HTTPAdapter``'s arguments. Mount it for ``http://`` and ``https://``; a request's
    context is the one given to ``gocontext.http.request()``, else ``gocontext.current()``.
    A done context sends nothing; the time left caps the timeouts and goes out as
    ``Grpc-Timeout``, ``PropagatedKey`` values in ``baggage``. A cancel from any thread aborts
    the request in flight (connecting, in the TLS handshake, sending, waiting, reading the body,
    ``response.raw`` included, or waiting to retry as ``max_retries`` says) with ``Canceled``, a
    passed deadline with ``DeadlineExceeded``; the pool stays healthy. A timeout that is no
    number (or NaN) is a ``ValueError``, with or without a deadline. Thread-safe, as
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
            timeout, binding = _cap(timeout, left)
            request.headers["Grpc-Timeout"] = format_grpc_timeout(left)
        elif timeout is not None:
            _parts(timeout)  # (a bad one is refused as with a deadline)
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
        raw = response.raw
        if type(raw) is urllib3.response.HTTPResponse:  # (an adapter's own kind stays as it is)
            raw.__class__ = _ContextRaw
            ours = cast(_ContextRaw, raw)
            ours._gocontext = ctx
            ours._gocontext_aborter = aborter
            ours._gocontext_binding = binding
        response.__class__ = _ContextResponse
        response._gocontext = ctx  # type: ignore[attr-defined]  # our own attribute on the response
        response._gocontext_binding = binding  # type: ignore[attr-defined]  # our own attribute on the response
        response._gocontext_aborter = aborter  # type: ignore[attr-defined]  # our own attribute on the response
        session = _following.get()
        if session is not None and response.is_redirect:
            _check_redirect(session, self, response)
        return response


def _not_mounted(url: str, adapter: object, why: str = "") -> TypeError:
    scheme = url.partition("://")[0].lower() or "http"
    return TypeError(
        f"gocontext.http.request() needs a gocontext.http.RequestsAdapter mounted for "
        f"{url!r}{why}, got {type(adapter).__name__}: "
        f'session.mount("{scheme}://", gocontext.http.RequestsAdapter())'
    )


def _check_redirect(
    session: requests.Session, adapter: RequestsAdapter, response: requests.Response
) -> None:
    """Raise ``TypeError`` (having let go of *response*) when the redirect *response* leads to
    a URL whose adapter in *session* is no RequestsAdapter: ``request()`` would send there with
    its context ignored. Only for a response of *session*'s own (*adapter* serves its URL)."""
    try:
        if session.get_adapter(response.url) is not adapter:
            return  # sent through another session, while request() runs (from a hook, say)
        target = session.get_redirect_target(response)
        if target is None:
            return
        url = urljoin(response.url, target)  # (as requests resolves it: relative, "//host/")
        next_adapter = session.get_adapter(url)
    except requests.exceptions.InvalidSchema:
        return  # no adapter at all: requests itself refuses to follow
    if not isinstance(next_adapter, RequestsAdapter):
        response.close()
        raise _not_mounted(url, next_adapter, f" (where {response.url!r} redirects to)")


def request(
    ctx: Context, session: requests.Session, method: str, url: str, **kwargs: Any
) -> requests.Response:
    """``session.request(method, url, **kwargs)`` under *ctx*, through a ``RequestsAdapter``.

    The adapter mounted for *url*, and for each URL a redirect leads to, must be a
    ``RequestsAdapter`` (else ``TypeError``, before anything is sent there: the context would
    be silently ignored). *url* and *method* are strings (or bytes, as ``requests`` takes them;
    else ``TypeError``). Raises ``Canceled`` / ``DeadlineExceeded`` when *ctx* ends the
    request, sending nothing if it already has.

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
    if isinstance(url, bytes):  # (as requests takes it)
        url = url.decode("utf-8")
    elif not isinstance(url, str):
        raise TypeError(
            f"gocontext.http.request() needs a URL (str or bytes), got {type(url).__name__}: "
            f"{url!r}"
        )
    if not isinstance(method, (str, bytes)):
        raise TypeError(
            f"gocontext.http.request() needs an HTTP method (str or bytes), got "
            f"{type(method).__name__}: {method!r}"
        )
    adapter = session.get_adapter(url)
    if not isinstance(adapter, RequestsAdapter):
        raise _not_mounted(url, adapter)
    token = _ambient.set(as_rich(ctx))  # (use(ctx), written out: ctx is checked above)
    following = _following.set(session if kwargs.get("allow_redirects", True) else None)
    try:
        return session.request(method, url, **kwargs)
    finally:
        _following.reset(following)
        _ambient.reset(token)
