"""httpx transports that make every request honour its context.

A request's context is ``request.extensions["gocontext"]`` when given, else the ambient one.
Before sending: a done context sends nothing; the time left becomes a ``Grpc-Timeout`` header
and caps every httpx timeout; ``PropagatedKey`` values go out in ``baggage``. While in flight:

- ``AsyncTransport`` runs each step (headers, then every body chunk) in ``gocontext.scope``,
  so a cancel from any thread interrupts it at once and httpcore drops the connection.
- ``Transport`` (blocking) registers on the context for the request's lifetime; a cancel or a
  deadline shuts down the sockets the request is using, which wakes the blocked thread with an
  error that is raised as ``Canceled`` / ``DeadlineExceeded``. The connection is discarded, so
  the pool stays healthy. This needs the pool's network backend, so it works with the default
  inner transport or any ``httpx.HTTPTransport``; other inner transports get the headers, the
  timeouts and the check before sending.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import socket
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import httpcore
import httpx

from .. import _timer
from .._ambient import current
from .._async import scope
from .._context import _OURS, Context, _check_foreign
from .._errors import ContextError, DeadlineExceeded
from .._propagation import outgoing_values
from ._headers import format_baggage, format_grpc_timeout

__all__ = ["AsyncTransport", "Transport"]

EXTENSION = "gocontext"


def _request_context(request: httpx.Request) -> Context:
    ctx = request.extensions.get(EXTENSION)
    if ctx is None:
        return current()
    if type(ctx) not in _OURS:  # (the protocol check is slow: only for foreign contexts)
        _check_foreign(ctx, "an httpx request", 'extensions["gocontext"]')
    return ctx  # type: ignore[no-any-return]


def _prepare(request: httpx.Request, ctx: Context) -> bool:
    """Stamp *request* with what *ctx* carries; return True if its deadline caps a timeout.

    Raises ``ctx.err()`` if the context is done: nothing is sent.
    """
    err = ctx.err()
    if err is not None:
        raise err
    binding = False
    deadline = ctx.deadline()
    if deadline is not None and deadline != math.inf:
        left = deadline - _timer.now()
        if left <= 0:
            raise DeadlineExceeded()
        request.headers["grpc-timeout"] = format_grpc_timeout(left)
        timeouts = dict(request.extensions.get("timeout") or {})
        for k in ("connect", "read", "write", "pool"):
            own = timeouts.get(k)
            if own is None or own > left:
                timeouts[k] = left
                binding = True
        request.extensions = {**request.extensions, "timeout": timeouts}
    values = outgoing_values(ctx)
    if values:
        request.headers["baggage"] = format_baggage(values, request.headers.get("baggage"))
    return binding


def _translate(e: BaseException, ctx: Context, binding: bool) -> BaseException:
    """The error to raise for a transport failure: the context's, if it caused it."""
    err = ctx.err()
    if err is not None:
        return err
    if binding and isinstance(e, httpx.TimeoutException):
        return DeadlineExceeded()
    return e


# --------------------------------------------------------------------------------------------
# async


class AsyncTransport(httpx.AsyncBaseTransport):
    """An httpx async transport (asyncio and trio) that makes each request honour its context.

    Wraps *inner* (default: ``httpx.AsyncHTTPTransport()``). A cancel raises ``Canceled``, a
    passed deadline ``DeadlineExceeded``, promptly and with the pool left healthy, whether the
    request is connecting, sending, waiting for headers or streaming its body.

    Example:
        >>> import httpx, gocontext, gocontext.http
        >>> client = httpx.AsyncClient(transport=gocontext.http.AsyncTransport())
        >>> # await client.get(url, extensions={"gocontext": ctx})
    """

    __module__ = "gocontext.http"

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self._inner = inner if inner is not None else httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        ctx = _request_context(request)
        binding = _prepare(request, ctx)
        try:
            async with scope(ctx):
                response = await self._inner.handle_async_request(request)
        except ContextError:
            raise
        except httpx.HTTPError as e:
            err = _translate(e, ctx, binding)
            if err is e:
                raise
            raise err from e
        response.stream = _AsyncBoundedStream(response.stream, ctx, binding)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _AsyncBoundedStream(httpx.AsyncByteStream):
    """A response body whose every read is bounded by the context."""

    def __init__(self, inner: Any, ctx: Context, binding: bool) -> None:
        self._inner = inner
        self._ctx = ctx
        self._binding = binding

    async def __aiter__(self) -> AsyncIterator[bytes]:
        it = self._inner.__aiter__()
        while True:
            try:
                async with scope(self._ctx):
                    chunk = await it.__anext__()
            except StopAsyncIteration:
                return
            except ContextError:
                raise
            except httpx.HTTPError as e:
                err = _translate(e, self._ctx, self._binding)
                if err is e:
                    raise
                raise err from e
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


# --------------------------------------------------------------------------------------------
# sync


class _Aborter:
    """The sockets one blocking request is using, and the switch that shuts them down.

    ``lock`` guards ``aborted``, ``finished`` and ``streams``. Once the response is closed
    (``finished``), aborting does nothing: the connection may already serve another request.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.aborted = False
        self.finished = False
        self.streams: set[_AbortableStream] = set()

    def attach(self, stream: _AbortableStream) -> None:
        with self.lock:
            if self.aborted:
                raise httpcore.ReadError("the request's context ended")
            self.streams.add(stream)

    def abort(self) -> None:
        with self.lock:
            if self.finished or self.aborted:
                return
            self.aborted = True
            streams = list(self.streams)
        for s in streams:
            s.shutdown()

    def finish(self) -> None:
        with self.lock:
            self.finished = True
            self.streams.clear()


_current: contextvars.ContextVar[_Aborter | None] = contextvars.ContextVar(
    "gocontext.http.aborter", default=None
)
_CONNECT_SLICE = 0.1  # a blocked connect is retried in slices this long, checking for a cancel


class _AbortableStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def _enter(self) -> None:
        aborter = _current.get()
        if aborter is not None:
            aborter.attach(self)

    def shutdown(self) -> None:
        sock = self._inner.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._enter()
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._enter()
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        self._enter()
        return _AbortableStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AbortableBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        aborter = _current.get()
        if aborter is None:
            return _AbortableStream(
                self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
            )
        # A blocked connect cannot be shut down from another thread: try in slices.
        end = None if timeout is None else _timer.now() + timeout
        while True:
            if aborter.aborted:
                raise httpcore.ConnectError("the request's context ended")
            left = None if end is None else end - _timer.now()
            if left is not None and left <= 0:
                raise httpcore.ConnectTimeout("connect timed out")
            slice_ = _CONNECT_SLICE if left is None else min(left, _CONNECT_SLICE)
            try:
                stream = self._inner.connect_tcp(host, port, slice_, local_address, socket_options)
            except httpcore.ConnectTimeout:
                continue
            wrapped = _AbortableStream(stream)
            try:
                aborter.attach(wrapped)
            except httpcore.ReadError:
                stream.close()
                raise httpcore.ConnectError("the request's context ended") from None
            return wrapped

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _AbortableStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class Transport(httpx.BaseTransport):
    """An httpx transport (blocking) that makes each request honour its context.

    Wraps *inner* (default: ``httpx.HTTPTransport()``). A cancel from any thread aborts the
    request in flight and raises ``Canceled``; a passed deadline raises ``DeadlineExceeded``;
    the connection pool stays healthy.

    Example:
        >>> import httpx, gocontext, gocontext.http
        >>> client = httpx.Client(transport=gocontext.http.Transport())
        >>> ctx, cancel = gocontext.with_cancel(gocontext.background())
        >>> cancel()
        >>> client.get("http://127.0.0.1:9/", extensions={"gocontext": ctx})
        Traceback (most recent call last):
          ...
        gocontext.Canceled: context canceled
    """

    __module__ = "gocontext.http"

    def __init__(self, inner: httpx.BaseTransport | None = None) -> None:
        self._inner = inner if inner is not None else httpx.HTTPTransport()
        pool = getattr(self._inner, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if isinstance(backend, httpcore.NetworkBackend) and not isinstance(
            backend, _AbortableBackend
        ):
            pool._network_backend = _AbortableBackend(backend)  # type: ignore[union-attr]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        ctx = _request_context(request)
        binding = _prepare(request, ctx)
        aborter = _Aborter()
        handle = ctx.done().add_callback(aborter.abort)
        token = _current.set(aborter)
        try:
            response = self._inner.handle_request(request)
        except BaseException as e:
            aborter.finish()
            handle.cancel()
            if not isinstance(e, Exception) or isinstance(e, ContextError):
                raise
            err = _translate(e, ctx, binding)
            if err is e:
                raise
            raise err from e
        finally:
            _current.reset(token)
        response.stream = _SyncBoundedStream(response.stream, ctx, binding, aborter, handle)
        return response

    def close(self) -> None:
        self._inner.close()


class _SyncBoundedStream(httpx.SyncByteStream):
    def __init__(
        self, inner: Any, ctx: Context, binding: bool, aborter: _Aborter, handle: Any
    ) -> None:
        self._inner = inner
        self._ctx = ctx
        self._binding = binding
        self._aborter = aborter
        self._handle = handle

    def __iter__(self) -> Iterator[bytes]:
        it = iter(self._inner)
        while True:
            token = _current.set(self._aborter)  # around each read: the reader may switch
            try:
                chunk = next(it)
            except StopIteration:
                return
            except httpx.HTTPError as e:
                err = _translate(e, self._ctx, self._binding)
                if err is e:
                    raise
                raise err from e
            finally:
                _current.reset(token)
            done = self._ctx.err()
            if done is not None:
                raise done
            yield chunk

    def close(self) -> None:
        # Finish first: from here on a cancel must not touch the connection, which closing the
        # stream may hand back to the pool for another request.
        self._aborter.finish()
        self._handle.cancel()
        self._inner.close()
