"""The aiohttp.web middleware: each request runs under a context with the caller's deadline and
values, cancelled when the client goes away.

aiohttp (by default) keeps running a handler whose client has gone, and tells no one. To see a
disconnect at once, the middleware puts a thin protocol in front of the connection's own
(``transport.set_protocol``, as asyncio's sendfile fallback does): it forwards everything and,
when the connection is lost, cancels the context of the request it is serving.

The loop sees a connection's loss only while it reads the connection, and aiohttp stops
reading while a request's body waits unread (a large upload the handler does not read): a
client that leaves then would go unseen until the handler ends. On Linux, each connection's
socket is also watched for its peer's end alone (``EPOLLRDHUP``: a FIN or a reset, whatever
unread data is ahead of it) in one epoll per loop, which the loop watches (``gocontext._hangups``,
which ``ContextMiddleware`` shares).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Union

from aiohttp import web
from multidict import CIMultiDictProxy, istr

from .._ambient import _current
from .._context import Context, timeout_cancel_cause, with_cancel_cause
from .._errors import ContextError, DeadlineExceeded
from .._hangups import Hangups, each
from .._propagation import values_context
from ..http._headers import HeaderError, parse_grpc_timeout, parse_timeout_ms
from ..http._middleware import (
    _DEFAULT_MAX_TIMEOUT,
    _check_max_timeout,
    client_left,
    timeout_and_values,
)
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
    served on this connection, with their cancels. ``hangups`` watches the connection's
    socket (``fd``) for the peer's end, if any does; ``gone`` says the peer has ended the
    connection (so a request read from it afterwards ends at once).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lost = False
        self.gone = False
        self.hangups: Hangups | None = None
        self.fd = -1
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
        try:
            self.peer_gone()
        finally:
            try:
                if self.hangups is not None:  # (the socket is open: the transport closes it next)
                    self.hangups.forget(self)
            finally:
                self.inner.connection_lost(exc)

    def peer_gone(self) -> None:
        """The peer has ended the connection: every request being served on it ends, whatever
        a callback on one of their contexts raises (the first such error goes out after)."""
        self.gone = True
        listeners, self.listeners = self.listeners, {}
        each(lambda item: client_left(*item), listeners.items())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _watch(request: web.Request, ctx: Context, cancel: Cancel) -> _Watch | None:
    """End *ctx* with *cancel* as ``client_left`` does when the request's connection is lost,
    or its peer ends it (at once if it has); None if it has."""
    transport = request.transport
    if transport is None or transport.is_closing():
        client_left(ctx, cancel)
        return None
    proto: Any = transport.get_protocol()  # (ours: a protocol to the transport, duck-typed)
    if type(proto) is not _Watch:
        proto = _Watch(proto)
        transport.set_protocol(proto)
        Hangups.add(asyncio.get_running_loop(), transport, proto)
    elif proto.gone:
        client_left(ctx, cancel)
        return None
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


class _GatewayTimeout(web.HTTPGatewayTimeout):
    """The 504 of a request whose deadline passed: once written, its connection closes at
    once, so a write to the request by a task the handler left behind goes nowhere, never
    into the next response. (Its ``Connection: close`` is not enough: with the request's body
    left unread, aiohttp lingers on the connection, up to its ``lingering_time``, to drain it,
    and the transport stays open meanwhile.)"""

    def __init__(self, request: web.Request) -> None:
        super().__init__(text="deadline exceeded")
        self.force_close()
        self._gocontext_protocol = request.protocol

    async def write_eof(self, data: bytes = b"") -> None:
        try:
            await super().write_eof(data)
        finally:  # (written, or not at all: the client has gone)
            self._gocontext_protocol.force_close()


async def _answer(request: web.Request) -> None:
    """Write the 504 of a request whose handler runs on past the deadline; the connection
    closes after it (see ``_GatewayTimeout``), or at once if it cannot be written."""
    answer = _GatewayTimeout(request)
    try:
        await answer.prepare(request)
        await answer.write_eof()
    except ConnectionError:  # the client has gone: nobody to tell
        pass
    finally:
        request.protocol.force_close()


class _Stop(TaskCanceller):
    """Stops the handler's task when its context ends, and answers for a handler that runs on
    past the deadline (one that awaits a thread ignoring its context, say: the await waits
    for the thread): the client gets its 504, or the cut of the response under way, at the
    deadline, not once the handler ends.

    ``request`` and ``ctx`` are set by the middleware. When the context ends, ``early`` says
    whether this answered for the handler, and ``answer`` is the task writing the 504, if any
    (the middleware waits for it: nothing of aiohttp's may be written before it is out).
    """

    __slots__ = ("answer", "ctx", "early", "request")

    request: web.Request
    ctx: Context
    early: bool
    answer: asyncio.Task[None] | None

    def _fire(self) -> None:  # on the loop
        if self.armed and not self.fired:
            self.early = False
            self.answer = None
            super()._fire()
            # The cancel reaches the handler at its next step, which the loop runs before
            # this: a handler that lets it through at once has ended by then (and disarmed
            # this); one still running waits on what does not end with it (a thread, say).
            self._loop.call_soon(self._answer_if_running)

    def _answer_if_running(self) -> None:
        if not self.armed or not isinstance(self.ctx.err(), DeadlineExceeded):
            return  # the handler has ended, or its client has gone: nobody to answer
        self.early = True
        request = self.request
        if _started(request):
            _cut(request)
        else:
            self.answer = self._loop.create_task(_answer(request))


def _ended(request: web.Request, err: ContextError) -> web.StreamResponse:
    """The answer to a request whose context ended (*err*) before its handler did: a 504 for
    the deadline, on a connection then closed; a response under way is cut instead."""
    if _started(request):
        _cut(request)  # (the answer below then goes nowhere, quietly)
    if isinstance(err, DeadlineExceeded):
        raise _GatewayTimeout(request) from None
    # The client left: the connection goes at once (else aiohttp would linger on it, up to its
    # lingering_time, for the rest of an upload that cannot come), and nobody reads this
    # answer (aiohttp drops it quietly).
    request.protocol.force_close()
    return web.Response(status=499, text="client disconnected")


_WHERE = "gocontext.aiohttp.middleware"  # (the call bad input is said of)

MaxTimeout = Union[float, None, Callable[[web.Request], Union[float, None]]]  # noqa: UP007 - 3.10 runtime


def middleware(*, max_timeout: MaxTimeout = _DEFAULT_MAX_TIMEOUT) -> Any:
    """An ``aiohttp.web`` middleware that runs each request under its own context.

    The context carries the caller's deadline (``Grpc-Timeout``, ``Connect-Timeout-Ms`` or
    ``X-Envoy-Expected-Rq-Timeout-Ms``, the smallest) and its ``PropagatedKey`` values
    (``baggage``). *max_timeout* caps every deadline, and is the deadline of a request that
    sends none: 60 seconds by default, as with ``ContextMiddleware``; ``None`` leaves requests
    with no header unbounded; a function of the request chooses per request (a route that
    streams events can return ``None``). A deadline already passed on arrival
    (``Grpc-Timeout: 0n``) gets its 504 without running the handler. The context is ambient in
    the handler (``gocontext.current()``) and at ``request["gocontext"]``, and is cancelled with
    a ``gocontext.http.ClientDisconnected`` cause when the client goes away (within 250 ms of
    the deadline, a client leaves for it: the deadline ends the context), on Linux even while
    aiohttp has stopped reading the connection for an upload the handler leaves unread (the
    connection then closes at once). The handler is cancelled when its context ends: one that
    ignores its context is still stopped at the deadline, and the client gets a 504 then, even
    from a handler that runs on (one that awaits a thread ignoring its context, say), on a
    connection then closed at once, its request body read or not, so a late write by the handler
    or a task it left behind goes nowhere. A handler that returns once its context has ended, or
    raises an answer (an ``aiohttp.web.HTTPException``), is answered the same way: its response
    is dropped, as Go's ``TimeoutHandler`` drops a late one; any other error it raises is
    aiohttp's to log and answer with a 500. A response already under way (prepared, or partly
    written) is cut there instead: the connection closes, the client sees its body stop short,
    and nothing is logged. A malformed deadline header gets a 400 that says what was wrong. A
    bad *max_timeout* is a ``TypeError`` or ``ValueError``; a function that returns one fails
    the request (aiohttp logs it and answers 500).

    Example:
        >>> import aiohttp.web, gocontext.aiohttp
        >>> app = aiohttp.web.Application(middlewares=[gocontext.aiohttp.middleware()])
        >>> events = aiohttp.web.Application(middlewares=[gocontext.aiohttp.middleware(
        ...     max_timeout=lambda request: None if request.path == "/events" else 30
        ... )])
    """
    choose = max_timeout if callable(max_timeout) else None  # the cap, chosen per request
    fixed = None if choose is not None else _check_max_timeout(max_timeout, _WHERE)

    @web.middleware
    async def gocontext_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            timeout, baggage = _timeout_and_baggage(request)
        except HeaderError as e:
            raise web.HTTPBadRequest(text=f"bad deadline header: {e}") from None
        cap = fixed if choose is None else _check_max_timeout(choose(request), _WHERE, True)
        if cap is not None and (timeout is None or timeout > cap):
            timeout = cap
        if timeout is not None and timeout <= 0:  # gone on arrival: the handler never runs
            raise _GatewayTimeout(request)
        parent = _values_context(request, baggage)
        if timeout is None:
            ctx, cancel = with_cancel_cause(parent)
        else:  # one node: the deadline, and a cancel that takes the disconnect's cause
            ctx, cancel = timeout_cancel_cause(parent, timeout)
        watch = _watch(request, ctx, cancel)
        # (aiohttp warns once about a str key, asking for a web.RequestKey; the contract's key
        # is "gocontext", so it goes in the mapping underneath)
        request._state["gocontext"] = ctx
        stop = _Stop(ctx, True)  # a handler that ignores its context is stopped too
        stop.request, stop.ctx = request, ctx
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
        except web.HTTPException:
            # aiohttp's other way to answer, raised: as late as a returned answer once the
            # context has ended, and dropped the same way. (Any other error raised then is
            # the handler's own, for aiohttp to log and answer with a 500, as an ASGI server
            # does under ContextMiddleware.)
            if ctx._state is not None:  # type: ignore[attr-defined]  # (a node of ours)
                return _ended(request, ctx.err())  # type: ignore[arg-type]  # ended: an error
            raise
        except ConnectionError:
            # A write of the handler found the connection closed by the answer given for it
            # at the deadline: the handler's end, not its fault.
            if stop.fired and stop.early:
                return _ended(request, ctx.err())  # type: ignore[arg-type]  # ended: an error
            raise
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
                transport = request.transport
                if transport is not None and transport.is_closing():
                    # The client has gone, and a write of the handler found it before the
                    # loop told `watch` (a turn later); aiohttp's own close of a connection
                    # leaves no transport.
                    client_left(ctx, cancel)
            cancel(None)
            if stop.fired and stop.answer is not None:
                await stop.answer  # (the 504 given for the handler goes out first)
        return response

    return gocontext_middleware
