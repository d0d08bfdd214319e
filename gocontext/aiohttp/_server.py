"""The aiohttp.web middleware: each request runs under a context with the caller's deadline and
values, cancelled when the client goes away.

aiohttp (by default) keeps running a handler whose client has gone, and tells no one. To see a
disconnect at once, the middleware puts a thin protocol in front of the connection's own
(``transport.set_protocol``, as asyncio's sendfile fallback does): it forwards everything and,
when the connection is lost, cancels the context of the request it is serving.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy, istr

from .._ambient import _current
from .._context import Context, timeout_cancel_cause, with_cancel_cause
from .._errors import ContextError, DeadlineExceeded, check_real
from .._propagation import values_context
from ..http._headers import HeaderError, parse_grpc_timeout, parse_timeout_ms
from ..http._middleware import client_left, timeout_and_values
from ._task import TaskCanceller

__all__ = ["middleware"]

Handler = Callable[[web.Request], Any]
Cancel = Callable[[BaseException | None], None]

_GRPC_TIMEOUT = istr("Grpc-Timeout")
_MS_HEADERS = (istr("Connect-Timeout-Ms"), istr("X-Envoy-Expected-Rq-Timeout-Ms"))
_BAGGAGE = istr("baggage")


def _timeout_and_baggage(request: web.Request) -> tuple[float | None, str]:
    """The smallest timeout the request's headers ask for (seconds, or None) and its
    ``baggage`` value ("" when none), read from aiohttp's parsed headers: a lookup by name
    each, not a walk over every header. A malformed deadline raises the ``HeaderError`` that
    ``timeout_and_values`` raises for the raw headers."""
    headers: CIMultiDictProxy[str] = request.headers
    timeout: float | None = None
    try:
        for value in headers.getall(_GRPC_TIMEOUT, ()):
            t = parse_grpc_timeout(value)
            if timeout is None or t < timeout:
                timeout = t
        for name in _MS_HEADERS:
            for value in headers.getall(name, ()):
                t = parse_timeout_ms(name, value)
                if timeout is None or t < timeout:
                    timeout = t
    except HeaderError:
        timeout_and_values(request.raw_headers)  # (the same error, said of the first bad one)
        raise
    baggage = headers.getall(_BAGGAGE, ())
    return timeout, ",".join(baggage) if len(baggage) != 1 else baggage[0]


def _values_context(request: web.Request, baggage: str) -> Context:
    """The context of the request's propagated values (*baggage*, its ``baggage`` value),
    read from the bytes sent when the value is new (see ``values_context``)."""
    return values_context(baggage, lambda: timeout_and_values(request.raw_headers)[1])


class _Watch(asyncio.Protocol):
    """Stands in front of the connection's protocol: every event goes to it, straight (its
    own bound methods, set on this instance, where the transport finds them: no call in
    between), but the connection's loss, which this reports first.

    Only the loop's thread touches it; ``listeners`` holds the contexts of the requests being
    served on this connection, with their cancels.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lost = False
        self.listeners: dict[Context, Cancel] = {}
        vars(self).update(
            connection_made=inner.connection_made,
            data_received=inner.data_received,
            eof_received=inner.eof_received,
            pause_writing=inner.pause_writing,
            resume_writing=inner.resume_writing,
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        listeners, self.listeners = self.listeners, {}
        try:
            for ctx, cancel in listeners.items():
                client_left(ctx, cancel)
        finally:
            self.inner.connection_lost(exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _watch(request: web.Request, ctx: Context, cancel: Cancel) -> _Watch | None:
    """End *ctx* with *cancel* as ``client_left`` does when the request's connection is lost
    (at once if it is); None if it is."""
    transport = request.transport
    if transport is None or transport.is_closing():
        client_left(ctx, cancel)
        return None
    proto: Any = transport.get_protocol()  # (ours: a protocol to the transport, duck-typed)
    if type(proto) is not _Watch:
        proto = _Watch(proto)
        transport.set_protocol(proto)
    proto.listeners[ctx] = cancel
    return proto  # type: ignore[no-any-return]  # a _Watch


def _started(request: web.Request) -> bool:
    """Whether the handler's response is under way: prepared (its status and headers held by
    the writer until the first chunk, or sent) or partly written."""
    writer: Any = request.writer
    if writer.output_size:
        return True
    # (aiohttp holds a prepared response's head back to send it with the first chunk; an
    # aiohttp that keeps it elsewhere wrote it at once, and output_size counts it)
    return getattr(writer, "_headers_buf", None) is not None


def _cut(request: web.Request) -> None:
    """End a response under way where it stands: what was written goes out, then the
    connection closes, so the client sees the body stop short (no last chunk, or fewer bytes
    than its Content-Length), never a second response written into it."""
    send_headers = getattr(request.writer, "send_headers", None)
    if send_headers is not None:  # a head held back goes out: the response was under way
        with contextlib.suppress(ConnectionError):
            send_headers()
    request.protocol.force_close()


def _ended(request: web.Request, err: ContextError) -> web.StreamResponse:
    """The answer to a request whose context ended (*err*) before its handler did: a 504 for
    the deadline, on a connection then closed; a response under way is cut instead."""
    if _started(request):
        _cut(request)  # (the answer below then goes nowhere, quietly)
    if isinstance(err, DeadlineExceeded):
        answer = web.HTTPGatewayTimeout(text="deadline exceeded")
        # The connection closes after it: a write to the request by a task the handler left
        # behind goes nowhere, never into the next response.
        answer.force_close()
        raise answer from None
    # The client left: nobody reads this answer (aiohttp drops it quietly).
    return web.Response(status=499, text="client disconnected")


def middleware(*, max_timeout: float | None = None) -> Any:
    """An ``aiohttp.web`` middleware that runs each request under its own context.

    The context carries the caller's deadline (``Grpc-Timeout``, ``Connect-Timeout-Ms`` or
    ``X-Envoy-Expected-Rq-Timeout-Ms``, the smallest, capped by *max_timeout*, which also
    applies when none is sent) and its ``PropagatedKey`` values (``baggage``); it is ambient
    in the handler (``gocontext.current()``) and at ``request["gocontext"]``, and is cancelled
    with a ``gocontext.http.ClientDisconnected`` cause when the client goes away (within 250 ms
    of the deadline, a client leaves for it: the deadline ends the context). The handler
    is cancelled when its context ends: one that ignores its context is still stopped at
    the deadline, and the client gets a 504 (on a connection then closed, so a late write by
    a task the handler left behind goes nowhere). A handler that returns once its context has
    ended is answered the same way: its response is dropped, as Go's ``TimeoutHandler``
    drops a late one. A response already under way (prepared, or partly written) is cut
    there instead: the connection closes, the client sees its body stop short, and nothing
    is logged. A malformed deadline header gets a 400 that says what was wrong. A bad
    *max_timeout* is a ``ValueError``.

    Example:
        >>> import aiohttp.web, gocontext.aiohttp
        >>> app = aiohttp.web.Application(middlewares=[gocontext.aiohttp.middleware()])
    """
    cap: float | None = None  # max_timeout as a float (as every timeout below is)
    if max_timeout is not None:
        where = "gocontext.aiohttp.middleware"
        cap = check_real(max_timeout, where, "max_timeout", "seconds or None")
    if cap is not None and cap <= 0:
        raise ValueError(
            f"gocontext.aiohttp.middleware() needs max_timeout to be a positive number of "
            f"seconds, got {max_timeout!r}"
        )

    @web.middleware
    async def gocontext_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            timeout, baggage = _timeout_and_baggage(request)
        except HeaderError as e:
            raise web.HTTPBadRequest(text=f"bad deadline header: {e}") from None
        if cap is not None:
            timeout = cap if timeout is None else min(timeout, cap)
        parent = _values_context(request, baggage)
        if timeout is None:
            ctx, cancel = with_cancel_cause(parent)
        else:  # one node: the deadline, and a cancel that takes the disconnect's cause
            ctx, cancel = timeout_cancel_cause(parent, timeout)
        watch = _watch(request, ctx, cancel)
        # (aiohttp warns once about a str key, asking for a web.RequestKey; the contract's key
        # is "gocontext", so it goes in the mapping underneath)
        request._state["gocontext"] = ctx
        stop = TaskCanceller(ctx, True)  # a handler that ignores its context is stopped too
        token = _current.set(ctx)  # (use(ctx), written out: ctx is one of ours)
        try:
            response: web.StreamResponse = await handler(request)
        except (ContextError, asyncio.CancelledError) as e:
            if isinstance(e, asyncio.CancelledError) and not stop.owns(e):
                raise
            err = ctx.err()  # the first of the deadline and the client's leaving
            if err is None:
                raise
            return _ended(request, err)
        else:
            # A context that ended before the handler returned stops it all the same: its end
            # can wake the handler (``await ctx.done()``) before our cancel of the task comes
            # (an owner is told after the context's callbacks have run).
            if ctx._state is not None:  # type: ignore[attr-defined]  # (a node of ours)
                return _ended(request, ctx.err())  # type: ignore[arg-type]  # ended: an error
        finally:
            _current.reset(token)
            stop.release()
            stop.disarm()
            if watch is not None:
                watch.listeners.pop(ctx, None)
            cancel(None)
        return response

    return gocontext_middleware
