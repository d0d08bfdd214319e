"""The aiohttp client: a session whose client middleware stamps each request with its context
and aborts it when the context ends, and a trace config for sessions made elsewhere.

A request's context is ``trace_request_ctx=ctx`` when that is a context, else the ambient one.
``client_session()`` needs no trace config: once a session has any, aiohttp makes a trace
object per request and awaits its signals at every step (about a fifth of a loopback
request's CPU), where a client middleware costs a call per hop. The session is a
``ClientSession`` whose ``_request`` hands ``trace_request_ctx`` to the middleware through a
context variable (the request runs in the caller's task, the middleware inside it); the
middleware runs for each hop (each redirect, and a retry of a GET whose kept-alive connection
was dropped), and each hop's headers are made afresh from the request's: so it refuses a done
context and stamps the time left as ``Grpc-Timeout`` and ``PropagatedKey`` values in
``baggage`` on every hop. It then registers once per hop on the context: while connecting,
sending and waiting for headers, the context's end cancels the request's task; once headers
are in, it makes every read of the body raise its error and closes the connection, so the pool
keeps only healthy connections.

``trace_config()`` stamps the same headers from aiohttp's trace signals, for a session the
caller makes (at the start, and again at each redirect). aiohttp's trace signals cannot
replace an exception, so a trace config alone cannot raise ``Canceled``.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import warnings
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp.client_middlewares import ClientHandlerType, ClientMiddlewareType
from multidict import istr

from .._ambient import current
from .._context import _NEVER, _OURS, Context
from .._errors import ContextError, DeadlineExceeded
from ..http._headers import format_grpc_timeout
from ..http._outgoing import baggage, time_left
from ._task import TaskCanceller

__all__ = ["client_session", "trace_config"]

# The header names as multidict keys, made once (a str key is made into one at every use).
_GRPC_TIMEOUT = istr("Grpc-Timeout")
_BAGGAGE = istr("baggage")

# The context given as the request's trace_request_ctx, from the session's _request to its
# middleware (both run in the caller's task); None: the ambient one.
_pending: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "gocontext.aiohttp.pending", default=None
)


def _given(trace_request_ctx: object) -> Context | None:
    """*trace_request_ctx* if it is a context, else None."""
    if type(trace_request_ctx) in _OURS:  # (the protocol check is slow: only for the rest)
        return trace_request_ctx  # type: ignore[return-value]  # one of ours, told by its type
    if trace_request_ctx is not None and isinstance(trace_request_ctx, Context):
        return trace_request_ctx
    return None


def _context_of(trace_request_ctx: object) -> Context:
    ctx = _given(trace_request_ctx)
    return current() if ctx is None else ctx


def _stamp(ctx: Context, headers: Any) -> None:
    """Put *ctx*'s time left and values in *headers*; raise its error if it is done. The
    caller's own ``baggage`` lines, however many, are merged into one with ours."""
    left = time_left(ctx)
    if left is not None:
        headers[_GRPC_TIMEOUT] = format_grpc_timeout(left)
    value = baggage(ctx, ",".join(headers.getall(_BAGGAGE, ())) or None)
    if value is not None:
        headers[_BAGGAGE] = value  # (replaces every line)


async def _on_request_start(
    session: aiohttp.ClientSession,
    trace_config_ctx: SimpleNamespace,
    params: aiohttp.TraceRequestStartParams,
) -> None:
    # (aiohttp makes every hop of the request from these headers)
    _stamp(_context_of(trace_config_ctx.trace_request_ctx), params.headers)


async def _on_request_redirect(
    session: aiohttp.ClientSession,
    trace_config_ctx: SimpleNamespace,
    params: aiohttp.TraceRequestRedirectParams,
) -> None:
    """The time left now, for the hop the redirect leads to."""
    left = time_left(_context_of(trace_config_ctx.trace_request_ctx))
    if left is not None:
        params.headers[_GRPC_TIMEOUT] = format_grpc_timeout(left)


def trace_config() -> aiohttp.TraceConfig:
    """An aiohttp ``TraceConfig`` that sends each request's deadline and values.

    A request's context is ``trace_request_ctx=ctx``, else ``gocontext.current()``; a done
    context raises its error and sends nothing. The time left is sent again at each redirect
    (not with aiohttp's retry of a GET on a new connection: it tells traces nothing there, so
    that retry goes out even if the context ended meanwhile). On its own it cannot abort a
    request in flight (use ``client_session()`` for that, which also sends the time left with
    every hop and refuses the retry of an ended context).

    Example:
        >>> import aiohttp, gocontext.aiohttp
        >>> config = gocontext.aiohttp.trace_config()
        >>> # aiohttp.ClientSession(trace_configs=[config])
    """
    config = _TraceConfig()
    config.on_request_start.append(_on_request_start)
    config.on_request_redirect.append(_on_request_redirect)
    return config


class _TraceConfig(aiohttp.TraceConfig):
    """Ours, told apart from the caller's trace configs by its type: ``client_session()``
    leaves it out (its middleware does the same work, and more)."""


if sys.version_info < (3, 11):  # pragma: no cover - Python 3.10 only

    class _PassingDeadlineExceeded(DeadlineExceeded, asyncio.TimeoutError):
        """A ``DeadlineExceeded`` that aiohttp lets through as a timeout on Python 3.10.

        There ``asyncio.TimeoutError`` is not the builtin ``TimeoutError``, and aiohttp turns
        any other ``OSError`` leaving a client middleware (ours is one) into ``ClientOSError``.
        """

    _PassingDeadlineExceeded.__name__ = _PassingDeadlineExceeded.__qualname__ = "DeadlineExceeded"
    _PassingDeadlineExceeded.__module__ = "gocontext"

    def _passing(err: ContextError) -> ContextError:
        if type(err) is not DeadlineExceeded:
            return err
        passing = _PassingDeadlineExceeded(*err.args)
        passing.__cause__ = err.__cause__
        return passing

else:

    def _passing(err: ContextError) -> ContextError:
        return err


class _Request(TaskCanceller):
    """One request's watch on its context: until headers are in it cancels the request's task
    (``armed``) and aborts the connection the request is on, if any; then, with ``resp`` set,
    it aborts the body and the connection (an upload may still be going out). Removed when the
    connection is released or closed."""

    __slots__ = ("ctx", "req", "resp")

    def __init__(self, ctx: Context, req: aiohttp.ClientRequest) -> None:
        self.ctx = ctx
        self.req = req
        self.resp: aiohttp.ClientResponse | None = None
        super().__init__(ctx)

    def _fire(self) -> None:  # on the loop
        if self.armed:
            super()._fire()
            if not self.fired:
                return
            # The request is sent, or being sent: drop its connection at once. aiohttp closes
            # it once the cancel reaches the task, and a close waits for what is still unsent
            # to go out (an upload the server does not read never does: the socket stayed
            # open, and the server never saw the client leave).
            sent: Any = getattr(self.req, "response", None)
            conn = None if sent is None else sent.connection
            protocol = None if conn is None else conn.protocol
            if protocol is not None:
                protocol.abort()
            return
        resp = self.resp
        if resp is None or resp.closed or resp.content.exception() is not None:
            return  # (an error of the body's own, a server that left, stays the one raised)
        err = self.ctx.err()
        resp.content.set_exception(err if err is not None else DeadlineExceeded())
        # The connection is dropped, never reused; aborted, not closed: the upload may still be
        # going out (a server that answers before it reads the body), and a close would wait
        # for the rest of it to go out, which it may never do.
        conn = resp.connection
        protocol = None if conn is None else conn.protocol
        if protocol is not None:
            protocol.abort()
        resp.close()


def _error_for(e: BaseException, watch: _Request) -> BaseException | None:
    """What the middleware raises for *e*, if not *e* itself: the context's error when the
    context ended the request (a cancel of the task by anyone else passes through)."""
    if isinstance(e, ContextError):
        passing = _passing(e)
        return None if passing is e else passing
    if isinstance(e, asyncio.CancelledError) and not watch.owns(e):
        return None
    if not isinstance(e, (aiohttp.ClientError, OSError, asyncio.CancelledError)):
        return None  # (asyncio.TimeoutError is an OSError)
    err = watch.ctx.err()
    return None if err is None else _passing(err)


async def _middleware(
    req: aiohttp.ClientRequest, handler: ClientHandlerType
) -> aiohttp.ClientResponse:
    ctx = _pending.get()
    if ctx is None:
        ctx = current()
    # Every hop's headers are made afresh from the request's: each gets the time left now and
    # the values (a done context sends nothing).
    try:
        _stamp(ctx, req.headers)
    except ContextError as e:
        passing = _passing(e)
        if passing is e:
            raise
        raise passing from e.__cause__
    if ctx.done() is _NEVER:  # it can never end: nothing to watch, nothing to translate
        return await handler(req)
    watch = _Request(ctx, req)
    try:
        resp = await handler(req)
    except BaseException as e:
        watch.release()
        err = _error_for(e, watch)
        watch.disarm()
        if err is None:
            raise
        raise err from (e.__cause__ if isinstance(e, ContextError) else e)
    watch.disarm()
    conn = resp.connection
    if conn is None or resp.status == 101:
        # The body is in and the connection released already; or the connection was upgraded
        # (a websocket): it is the caller's from here on, as Go hands it over.
        watch.release()
    else:  # (a context that ends from here on aborts the body: see _Request._fire)
        watch.resp = resp
        conn.add_callback(watch.release)
    return resp


with warnings.catch_warnings():  # (aiohttp discourages subclassing its session, with a warning)
    warnings.simplefilter("ignore", DeprecationWarning)

    class _Session(aiohttp.ClientSession):
        """A session that hands each request's ``trace_request_ctx`` to our middleware."""

        async def _request(  # (aiohttp's keywords, passed on)
            self, method: str, str_or_url: Any, **kwargs: Any
        ) -> aiohttp.ClientResponse:
            theirs = kwargs.get("middlewares")
            if theirs is not None and _middleware not in theirs:
                # aiohttp lets a request's own middlewares replace the session's: ours stays
                kwargs["middlewares"] = (_middleware, *theirs)
            given = kwargs.get("trace_request_ctx")
            if given is None and _pending.get() is None:  # the ambient context: nothing to hand
                return await super()._request(method, str_or_url, **kwargs)
            # (None: a request made within another's takes its own)
            token = _pending.set(_given(given))
            try:
                return await super()._request(method, str_or_url, **kwargs)
            finally:
                _pending.reset(token)


def client_session(**kwargs: Any) -> aiohttp.ClientSession:
    """An ``aiohttp.ClientSession`` whose requests honour their context.

    Takes ``ClientSession``'s arguments; adds a client middleware ahead of any given (and no
    trace config: a ``trace_config()`` given is left out, the middleware does its work). A
    request's context is ``trace_request_ctx=ctx``, else ``gocontext.current()``. A done
    context sends nothing; the deadline and ``PropagatedKey`` values go out, with every hop;
    a cancel from any thread or task aborts the request in flight, while connecting, waiting
    for headers or reading the body, with ``Canceled``, a passed deadline with
    ``DeadlineExceeded``; the connection pool stays healthy. A request given its own
    ``middlewares=`` replaces the session's but ours, which stays in front. A connection
    upgraded by the server (a websocket) is the caller's once the upgrade is answered: the
    context no longer ends it, as in Go. Call it with a running loop.

    Example:
        >>> import asyncio, gocontext, gocontext.aiohttp
        >>> async def main() -> None:
        ...     ctx, cancel = gocontext.with_cancel(gocontext.background())
        ...     cancel()
        ...     async with gocontext.aiohttp.client_session() as session:
        ...         await session.get("http://127.0.0.1:9/", trace_request_ctx=ctx)
        >>> asyncio.run(main())
        Traceback (most recent call last):
          ...
        gocontext.Canceled: context canceled
    """
    traces = [t for t in kwargs.pop("trace_configs", None) or () if type(t) is not _TraceConfig]
    middlewares: Sequence[ClientMiddlewareType] = kwargs.pop("middlewares", None) or ()
    return _Session(trace_configs=traces or None, middlewares=(_middleware, *middlewares), **kwargs)
